//! Verifying a library against its signature file, the trust store and the local policy.
//!
//! [`verify_library`] is the only way to get a [`Verified`], the proof type the loader demands
//! before mapping a library (as rustls' `HandshakeSignatureValid`): its fields are private and it
//! has no public constructor. The checks run in a fixed order, each failure its own [`Error`]
//! variant:
//!
//! 1. the signing key (by the signature file's key id) is trusted -> `UntrustedKey`
//! 2. the key is not revoked -> `KeyRevoked`
//! 3. the signature verifies over the exact manifest bytes, *before* they are parsed
//!    -> `BadSignature`
//! 4. the manifest parses, its kind is right, its key id is the signature file's
//!    -> `MalformedManifest`, `KeyIdMismatch`
//! 5. the library hash is not revoked -> `HashRevoked`
//! 6. size and SHA-256 of the bytes match -> `SizeMismatch`, `DigestMismatch`
//! 7. target triple -> `WrongTarget`
//! 8. ABI: same major version (and same minor for 0.x) -> `AbiMismatch`
//! 9. not expired -> `Expired`
//! 10. the key's scope allows the plugin name -> `OutOfScope`
//! 11. no rollback below the highest version seen, unless allowed -> `Rollback`
//!
//! What is NOT checked: `issued_at` against the clock, the customer binding, that the library
//! really is the named plugin (the loader compares what the loaded plugin reports), file
//! ownership and permissions (the loader's job), online revocation.

use std::time::SystemTime;

use crate::keys::KeyId;
use crate::manifest::{parse_timestamp, sha256_hex, Manifest};
use crate::rollback::SeenVersions;
use crate::sigfile::SignatureFile;
use crate::trust::TrustStore;
use crate::Error;

/// The local rules a library must meet besides a valid signature.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The current time (for expiry).
    pub now: SystemTime,
    /// The target triple km runs on ([`crate::target_triple`]).
    pub target: &'a str,
    /// km's plugin ABI version (`km_abi::ABI_VERSION`).
    pub abi_version: &'a str,
    /// Accept a version older than the highest seen.
    pub allow_downgrade: bool,
    /// Highest versions seen; `None` skips the rollback check.
    pub seen: Option<&'a SeenVersions>,
}

/// Proof that a library passed [`verify_library`]: only that function constructs it.
///
/// Its fields are private and it has no constructor, so code outside this crate cannot forge one:
///
/// ```compile_fail
/// let forged = km_signing::Verified {
///     manifest: todo!(),
///     key_id: todo!(),
///     key_label: String::new(),
///     sha256: String::new(),
/// };
/// ```
#[derive(Debug, Clone)]
pub struct Verified {
    manifest: Manifest,
    key_id: KeyId,
    key_label: String,
    sha256: String,
}

impl Verified {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The trust store label of that key.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// SHA-256 (lower-case hex) of the verified bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Verifies library `bytes` against `sig` (see the module docs for the checks and their order).
/// Load exactly these bytes afterwards, never the path again.
pub fn verify_library(
    bytes: &[u8],
    sig: &SignatureFile,
    trust: &TrustStore,
    policy: &Policy<'_>,
) -> Result<Verified, Error> {
    let key = trust.find(&sig.key_id).ok_or_else(|| Error::UntrustedKey {
        key_id: sig.key_id.to_string(),
    })?;
    if let Some(r) = trust.revocation(sig.key_id.as_str()) {
        return Err(Error::KeyRevoked {
            key_id: sig.key_id.to_string(),
            reason: r.reason.clone(),
        });
    }
    // The trusted key decides the algorithm; a signature file claiming another one is just a
    // signature that does not verify.
    if sig.algorithm != key.public_key.algorithm() {
        return Err(Error::BadSignature);
    }
    key.public_key.verify(&sig.manifest_bytes, &sig.signature)?;

    // `parse` accepts only the manifest kinds this version can enforce.
    let manifest = Manifest::parse(&sig.manifest_bytes)?;
    if manifest.key_id != sig.key_id.as_str() {
        return Err(Error::KeyIdMismatch {
            manifest: manifest.key_id,
            signature: sig.key_id.to_string(),
        });
    }
    if let Some(r) = trust.revocation(&manifest.sha256) {
        return Err(Error::HashRevoked {
            sha256: manifest.sha256,
            reason: r.reason.clone(),
        });
    }
    let size = bytes.len() as u64;
    if size != manifest.size {
        return Err(Error::SizeMismatch {
            expected: manifest.size,
            actual: size,
        });
    }
    let sha256 = sha256_hex(bytes);
    if sha256 != manifest.sha256 {
        return Err(Error::DigestMismatch {
            expected: manifest.sha256,
            actual: sha256,
        });
    }
    if manifest.target != policy.target {
        return Err(Error::WrongTarget {
            expected: policy.target.to_owned(),
            actual: manifest.target,
        });
    }
    if !abi_compatible(policy.abi_version, &manifest.abi_version) {
        return Err(Error::AbiMismatch {
            expected: policy.abi_version.to_owned(),
            actual: manifest.abi_version,
        });
    }
    if let Some(expires_at) = &manifest.expires_at {
        // Validated by `Manifest::parse`; an unparsable value would still be refused here.
        let expired = parse_timestamp(expires_at).map_or(true, |t| policy.now >= t);
        if expired {
            return Err(Error::Expired {
                expires_at: expires_at.clone(),
            });
        }
    }
    if !key.allows(&manifest.name) {
        return Err(Error::OutOfScope {
            name: manifest.name,
            key_id: key.key_id.to_string(),
        });
    }
    if !policy.allow_downgrade {
        if let Some(highest) = policy.seen.and_then(|s| s.highest(&manifest.name)) {
            let version = manifest.semver()?;
            if &version < highest {
                return Err(Error::Rollback {
                    name: manifest.name,
                    version: manifest.version,
                    highest: highest.to_string(),
                });
            }
        }
    }
    Ok(Verified {
        manifest,
        key_id: key.key_id.clone(),
        key_label: key.label.clone(),
        sha256,
    })
}

/// Whether a plugin built against ABI `plugin` can be loaded by km with ABI `host`: the same
/// major version, and for 0.x (where minor releases may break) the same minor.
pub fn abi_compatible(host: &str, plugin: &str) -> bool {
    match (semver::Version::parse(host), semver::Version::parse(plugin)) {
        (Ok(h), Ok(p)) => h.major == p.major && (h.major != 0 || h.minor == p.minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
