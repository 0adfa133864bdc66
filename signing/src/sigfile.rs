//! The `.kmsig` signature file written beside a library (`LIB` -> `LIB.kmsig`).
//!
//! It carries the exact signed manifest bytes (base64) and the signature, so the verifier checks
//! the signature over precisely what the signer signed and only then parses it: nothing is ever
//! re-serialised before verification. The algorithm and key id are repeated outside the manifest
//! so that the key can be found before anything signed is trusted; the manifest's own `key_id`
//! must agree (checked by `verify_library`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Replace};
use crate::keys::{Algorithm, KeyId, PrivateKey};
use crate::manifest::Manifest;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::Error;

/// The `format` field of version-1 signature files.
pub const SIGFILE_FORMAT: &str = "kmsig/1";
/// The suffix appended to a library's file name.
pub const SIGFILE_SUFFIX: &str = ".kmsig";
/// The largest signature file read (real ones are about 1-2 KiB).
pub const MAX_SIGFILE_BYTES: u64 = 64 * 1024;
/// The largest signature accepted (an 8192-bit RSA signature).
const MAX_SIGNATURE_BYTES: usize = 1024;

/// A parsed signature file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    /// The algorithm the signature claims (the trusted key decides; a mismatch does not verify).
    pub algorithm: Algorithm,
    /// The id of the signing key.
    pub key_id: KeyId,
    /// The exact signed manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The signature over `manifest_bytes`.
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    algorithm: String,
    key_id: String,
    manifest: String,
    signature: String,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::MalformedSignatureFile {
        reason: reason.into(),
    }
}

impl SignatureFile {
    /// Signs `manifest` with `key` and checks the signature before returning it. The manifest
    /// must name `key` (its `key_id`).
    pub fn sign(key: &PrivateKey, manifest: &Manifest) -> Result<Self, Error> {
        let public = key.public_key();
        let key_id = public.key_id();
        if manifest.key_id != key_id.as_str() {
            return Err(Error::KeyIdMismatch {
                manifest: manifest.key_id.clone(),
                signature: key_id.to_string(),
            });
        }
        let manifest_bytes = manifest.to_bytes();
        let signature = key.sign(&manifest_bytes)?;
        public.verify(&manifest_bytes, &signature)?;
        Ok(SignatureFile {
            algorithm: key.algorithm(),
            key_id,
            manifest_bytes,
            signature,
        })
    }

    /// Parses signature file bytes. Never panics on hostile input.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() as u64 > MAX_SIGFILE_BYTES {
            return Err(malformed(format!(
                "{} bytes, larger than {MAX_SIGFILE_BYTES}",
                bytes.len()
            )));
        }
        let disk: OnDisk = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not a kmsig JSON object: {e}")))?;
        if disk.format != SIGFILE_FORMAT {
            return Err(malformed(format!(
                "format is {:?}, expected {SIGFILE_FORMAT:?}",
                disk.format
            )));
        }
        let algorithm: Algorithm = disk.algorithm.parse()?;
        let key_id: KeyId = disk
            .key_id
            .parse()
            .map_err(|_| malformed(format!("key_id {:?} is not a key id", disk.key_id)))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let manifest_bytes = b64
            .decode(&disk.manifest)
            .map_err(|e| malformed(format!("manifest is not base64: {e}")))?;
        let signature = b64
            .decode(&disk.signature)
            .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
        if manifest_bytes.is_empty() || manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(malformed(format!(
                "manifest of {} bytes",
                manifest_bytes.len()
            )));
        }
        if signature.is_empty() || signature.len() > MAX_SIGNATURE_BYTES {
            return Err(malformed(format!("signature of {} bytes", signature.len())));
        }
        Ok(SignatureFile {
            algorithm,
            key_id,
            manifest_bytes,
            signature,
        })
    }

    /// The file's bytes: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let disk = OnDisk {
            format: SIGFILE_FORMAT.to_owned(),
            algorithm: self.algorithm.as_str().to_owned(),
            key_id: self.key_id.to_string(),
            manifest: b64.encode(&self.manifest_bytes),
            signature: b64.encode(&self.signature),
        };
        // Plain strings always serialise.
        let mut bytes =
            serde_json::to_vec_pretty(&disk).expect("a signature file always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Reads and parses `path`, at most [`MAX_SIGFILE_BYTES`]; [`Error::NoSignature`] when it does
    /// not exist.
    pub fn read(path: &Path) -> Result<Self, Error> {
        match fsutil::read_capped(path, MAX_SIGFILE_BYTES) {
            Ok(Some(bytes)) if bytes.len() as u64 > MAX_SIGFILE_BYTES => Err(malformed(format!(
                "{}: larger than {MAX_SIGFILE_BYTES} bytes",
                path.display()
            ))),
            Ok(Some(bytes)) => Self::parse(&bytes).map_err(|e| match e {
                Error::MalformedSignatureFile { reason } => Error::MalformedSignatureFile {
                    reason: format!("{}: {reason}", path.display()),
                },
                other => other,
            }),
            Ok(None) => Err(Error::NoSignature {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes `path` atomically (temporary file in the same directory, fsync, rename), mode 0644.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        fsutil::write_atomic(path, &self.to_bytes(), 0o644, Replace::Yes)
    }

    /// The signature file of library `lib`: `lib` with `.kmsig` appended to its file name.
    pub fn path_for(lib: &Path) -> PathBuf {
        let mut name = lib.as_os_str().to_os_string();
        name.push(SIGFILE_SUFFIX);
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SignatureFile {
        SignatureFile {
            algorithm: Algorithm::Ed25519,
            key_id: "0123456789abcdef0123456789abcdef".parse().expect("key id"),
            manifest_bytes: b"{\"kind\":\"x\"}\n".to_vec(),
            signature: vec![7; 64],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("libx.so");
        let path = SignatureFile::path_for(&lib);
        assert_eq!(path, dir.path().join("libx.so.kmsig"));
        sample().write(&path).expect("writes");
        assert_eq!(SignatureFile::read(&path).expect("reads"), sample());
        let text = std::fs::read_to_string(&path).expect("text");
        assert!(text.contains("\"format\": \"kmsig/1\""), "{text}");
    }

    #[test]
    fn missing_file_is_no_signature() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nothing.kmsig");
        assert!(
            matches!(SignatureFile::read(&path), Err(Error::NoSignature { path: p }) if p == path)
        );
    }

    #[test]
    fn truncated_garbage_and_oversized_files_are_malformed() {
        let good = sample().to_bytes();
        for len in [0, 1, good.len() / 2, good.len() - 3] {
            assert!(
                matches!(
                    SignatureFile::parse(&good[..len]),
                    Err(Error::MalformedSignatureFile { .. })
                ),
                "truncated to {len}"
            );
        }
        for bytes in [&b"garbage"[..], b"{}", b"[1,2]", &[0u8, 159, 146, 150]] {
            assert!(matches!(
                SignatureFile::parse(bytes),
                Err(Error::MalformedSignatureFile { .. })
            ));
        }
        let text = String::from_utf8(good).expect("utf-8");
        let wrong_format = text.replace("kmsig/1", "kmsig/2");
        assert!(matches!(
            SignatureFile::parse(wrong_format.as_bytes()),
            Err(Error::MalformedSignatureFile { .. })
        ));
        let bad_b64 = text.replace("\"signature\": \"", "\"signature\": \"!!");
        assert!(matches!(
            SignatureFile::parse(bad_b64.as_bytes()),
            Err(Error::MalformedSignatureFile { .. })
        ));
        let alg = text.replace("\"ed25519\"", "\"dsa\"");
        assert!(
            matches!(SignatureFile::parse(alg.as_bytes()), Err(Error::UnsupportedAlgorithm { name }) if name == "dsa")
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.kmsig");
        std::fs::write(&big, vec![b' '; MAX_SIGFILE_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            SignatureFile::read(&big),
            Err(Error::MalformedSignatureFile { .. })
        ));
    }
}
