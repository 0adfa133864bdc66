//! Signing keys: the algorithm allow-list, key ids, and PEM private and public keys.
//!
//! Two algorithms, fixed at compile time ([`Algorithm`]): Ed25519 (the default, small and fast)
//! and RSA PKCS#1 v1.5 with SHA-256, 2048 to 8192 bits, because that is what
//! `openssl dgst -sha256 -sign` produces and what the original design used. ring does all signing
//! and verifying; the `rsa` crate only generates RSA keys.
//!
//! Keys are PEM, as openssl writes them: private keys PKCS#8 (`BEGIN PRIVATE KEY`, also the
//! PKCS#8 v1 Ed25519 keys of `openssl genpkey`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`); public keys
//! SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`). A [`KeyId`] is the first 16 bytes of the SHA-256
//! of the public key's SPKI DER, re-encoded canonically, so it does not depend on how the PEM was
//! formatted.

use std::fmt;
use std::str::FromStr;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _, RsaKeyPair};

use std::path::Path;

use crate::fsutil::{self, Replace};
use crate::pem;
use crate::Error;

mod asn1;

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted (ring's limit for verification).
pub const MAX_RSA_BITS: usize = 8192;

/// A signature algorithm on km's allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8032). The default.
    Ed25519,
    /// RSA PKCS#1 v1.5 with SHA-256, 2048 bits or more.
    RsaPkcs1Sha256,
}

impl Algorithm {
    /// Every accepted algorithm.
    pub const ALL: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::RsaPkcs1Sha256];

    /// The name used in files and on the command line: `ed25519`, `rsa-pkcs1-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Exact names only (`ed25519`, `rsa-pkcs1-sha256`): this parses files, not user input.
    fn from_str(s: &str) -> Result<Self, Error> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Error::UnsupportedAlgorithm { name: s.to_owned() })
    }
}

/// The id of a public key: 32 lower-case hex characters, the first 16 bytes of the SHA-256 of
/// its SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn of_spki(spki: &[u8]) -> KeyId {
        KeyId(km_durable::digest::hex(
            &km_durable::digest::sha256(spki)[..16],
        ))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = Error;

    /// Accepts 32 hex characters in either case and stores them lower-case.
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(KeyId(s.to_ascii_lowercase()))
        } else {
            Err(Error::InvalidInput {
                what: "key id",
                value: s.to_owned(),
                reason: "a key id is 32 hexadecimal characters".to_owned(),
            })
        }
    }
}

/// A public key that can verify signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    /// Canonical SubjectPublicKeyInfo DER (what the key id hashes and the PEM holds).
    spki: Vec<u8>,
    /// What ring verifies with: 32 raw bytes (Ed25519) or the PKCS#1 `RSAPublicKey` DER.
    raw: Vec<u8>,
    /// The SPKI as `BEGIN PUBLIC KEY` PEM, encoded once when the key is made.
    pem: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id().0)
            .finish()
    }
}

impl PublicKey {
    /// Reads a `BEGIN PUBLIC KEY` PEM (as `openssl pkey -pubout` writes).
    pub fn from_pem(pem_text: &str) -> Result<Self, Error> {
        let (label, der) = pem::decode(pem_text).map_err(Error::bad_key)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_rsa_pkcs1(&der),
            l if l.contains("PRIVATE KEY") => Err(Error::bad_key(
                "this is a private key; a public key (BEGIN PUBLIC KEY) is needed here",
            )),
            other => Err(Error::bad_key(format!(
                "expected a BEGIN PUBLIC KEY block, found BEGIN {other}"
            ))),
        }
    }

    /// Reads a SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self, Error> {
        let (oid, key) = asn1::parse_spki(der_bytes).map_err(Error::bad_key)?;
        if oid == asn1::ED25519 {
            Self::from_ed25519_raw(key)
        } else if oid == asn1::RSA {
            Self::from_rsa_pkcs1(key)
        } else {
            Err(unsupported_key(oid))
        }
    }

    fn from_ed25519_raw(raw: &[u8]) -> Result<Self, Error> {
        if raw.len() != 32 {
            return Err(Error::bad_key(format!(
                "an Ed25519 public key is 32 bytes, not {}",
                raw.len()
            )));
        }
        Self::new(Algorithm::Ed25519, raw)
    }

    fn from_rsa_pkcs1(pkcs1: &[u8]) -> Result<Self, Error> {
        check_rsa_bits(asn1::rsa_public_bits(pkcs1).map_err(Error::bad_key)?)?;
        Self::new(Algorithm::RsaPkcs1Sha256, pkcs1)
    }

    /// The key from what ring verifies with (checked by the caller), its canonical SPKI and PEM.
    fn new(algorithm: Algorithm, raw: &[u8]) -> Result<Self, Error> {
        let oid = match algorithm {
            Algorithm::Ed25519 => asn1::ED25519,
            Algorithm::RsaPkcs1Sha256 => asn1::RSA,
        };
        let spki = asn1::spki(oid, raw).map_err(Error::bad_key)?;
        let pem = pem::encode("PUBLIC KEY", &spki).map_err(Error::bad_key)?;
        Ok(PublicKey {
            algorithm,
            spki,
            raw: raw.to_vec(),
            pem,
        })
    }

    /// The key as `BEGIN PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        self.pem.clone()
    }

    /// Writes the PEM to `path` atomically, mode 0644; an existing file is replaced only when
    /// `overwrite` is set.
    pub fn write_pem_file(&self, path: &Path, overwrite: bool) -> Result<(), Error> {
        let replace = if overwrite { Replace::Yes } else { Replace::No };
        fsutil::write_atomic(path, self.to_pem().as_bytes(), 0o644, replace)
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of_spki(&self.spki)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks `sig` over `msg`. Every failure (wrong key, wrong bytes, malformed signature,
    /// unusable key) is the same opaque [`Error::BadSignature`].
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), Error> {
        let alg: &dyn signature::VerificationAlgorithm = match self.algorithm {
            Algorithm::Ed25519 => &signature::ED25519,
            Algorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        signature::UnparsedPublicKey::new(alg, &self.raw)
            .verify(msg, sig)
            .map_err(|_| Error::BadSignature)
    }
}

enum PrivateInner {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key that can sign. Its `Debug` never shows key material.
pub struct PrivateKey {
    inner: PrivateInner,
    /// The PKCS#8 DER (v1 for Ed25519) as `BEGIN PRIVATE KEY` PEM, encoded once when the key is
    /// read, so that writing it cannot fail.
    pem: String,
    /// The matching public key, made once when the key is read.
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.public.key_id().0)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new random key: Ed25519 via ring, RSA (2048 bits) via the `rsa` crate.
    pub fn generate(alg: Algorithm) -> Result<Self, Error> {
        match alg {
            Algorithm::Ed25519 => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| {
                    Error::bad_key("cannot generate an Ed25519 key (no system randomness?)")
                })?;
                Self::from_pkcs8(doc.as_ref())
            }
            Algorithm::RsaPkcs1Sha256 => Self::generate_rsa(MIN_RSA_BITS),
        }
    }

    /// A new random RSA key of `bits` bits (2048, 3072 or 4096).
    pub fn generate_rsa(bits: usize) -> Result<Self, Error> {
        use rsa::pkcs8::EncodePrivateKey as _;
        if ![2048, 3072, 4096].contains(&bits) {
            return Err(Error::InvalidInput {
                what: "RSA key size",
                value: bits.to_string(),
                reason: "use 2048, 3072 or 4096 bits".to_owned(),
            });
        }
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| Error::bad_key(format!("cannot generate an RSA key: {e}")))?;
        let doc = key
            .to_pkcs8_der()
            .map_err(|e| Error::bad_key(format!("cannot encode the RSA key: {e}")))?;
        Self::from_pkcs8(doc.as_bytes())
    }

    /// Reads a private key PEM: `BEGIN PRIVATE KEY` (PKCS#8, Ed25519 or RSA) or
    /// `BEGIN RSA PRIVATE KEY` (PKCS#1). Encrypted keys are refused.
    pub fn from_pem(pem_text: &str) -> Result<Self, Error> {
        let (label, der_bytes) = pem::decode(pem_text).map_err(Error::bad_key)?;
        match label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(&der_bytes),
            "RSA PRIVATE KEY" => Self::from_rsa_pkcs1(&der_bytes),
            "ENCRYPTED PRIVATE KEY" => Err(Error::bad_key(
                "encrypted private keys are not supported; decrypt it with `openssl pkey -in KEY -out PLAIN.key`",
            )),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                Err(Error::bad_key("this is a public key; a private key (BEGIN PRIVATE KEY) is needed here"))
            }
            other => Err(Error::bad_key(format!("expected a BEGIN PRIVATE KEY block, found BEGIN {other}"))),
        }
    }

    /// Reads a PKCS#8 DER private key (v1 or v2).
    pub fn from_pkcs8(der_bytes: &[u8]) -> Result<Self, Error> {
        let (oid, key) = asn1::parse_pkcs8(der_bytes).map_err(Error::bad_key)?;
        if oid == asn1::ED25519 {
            // openssl writes PKCS#8 v1 (no public key inside), which `from_pkcs8` refuses.
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der_bytes)
                .map_err(|e| Error::bad_key(format!("unusable Ed25519 private key ({e})")))?;
            // Kept as v1 whatever was read: OpenSSL 3.0 cannot read ring's v2 documents.
            let v1 = asn1::pkcs8_v1(asn1::ED25519, key).map_err(Error::bad_key)?;
            let public = PublicKey::new(Algorithm::Ed25519, pair.public_key().as_ref())?;
            Self::with_parts(PrivateInner::Ed25519(pair), v1, public)
        } else if oid == asn1::RSA {
            check_rsa_bits(asn1::rsa_private_bits(key).map_err(Error::bad_key)?)?;
            let pair = RsaKeyPair::from_pkcs8(der_bytes)
                .map_err(|e| Error::bad_key(format!("unusable RSA private key ({e})")))?;
            Self::rsa(pair, der_bytes.to_vec())
        } else {
            Err(unsupported_key(oid))
        }
    }

    fn from_rsa_pkcs1(pkcs1: &[u8]) -> Result<Self, Error> {
        check_rsa_bits(asn1::rsa_private_bits(pkcs1).map_err(Error::bad_key)?)?;
        let pair = RsaKeyPair::from_der(pkcs1)
            .map_err(|e| Error::bad_key(format!("unusable RSA private key ({e})")))?;
        Self::rsa(
            pair,
            asn1::pkcs8_v1(asn1::RSA, pkcs1).map_err(Error::bad_key)?,
        )
    }

    fn rsa(pair: RsaKeyPair, pkcs8: Vec<u8>) -> Result<Self, Error> {
        let public = PublicKey::new(Algorithm::RsaPkcs1Sha256, pair.public_key().as_ref())?;
        Self::with_parts(PrivateInner::Rsa(pair), pkcs8, public)
    }

    fn with_parts(inner: PrivateInner, pkcs8: Vec<u8>, public: PublicKey) -> Result<Self, Error> {
        let pem = pem::encode("PRIVATE KEY", &pkcs8).map_err(Error::bad_key)?;
        Ok(PrivateKey { inner, pem, public })
    }

    /// The key as PKCS#8 `BEGIN PRIVATE KEY` PEM, which openssl reads too.
    pub fn to_pem(&self) -> String {
        self.pem.clone()
    }

    /// The PKCS#8 DER, for tests.
    #[cfg(test)]
    pub(crate) fn pkcs8(&self) -> Vec<u8> {
        pem::decode(&self.pem).expect("km's own PEM").1
    }

    /// Writes the PEM to `path` atomically, created with mode 0600 (never briefly readable by
    /// others); an existing file is replaced only when `overwrite` is set.
    pub fn write_pem_file(&self, path: &Path, overwrite: bool) -> Result<(), Error> {
        let replace = if overwrite { Replace::Yes } else { Replace::No };
        fsutil::write_atomic(path, self.to_pem().as_bytes(), 0o600, replace)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            PrivateInner::Ed25519(_) => Algorithm::Ed25519,
            PrivateInner::Rsa(_) => Algorithm::RsaPkcs1Sha256,
        }
    }

    /// Signs `msg` (Ed25519, or RSA PKCS#1 v1.5 over SHA-256 of `msg`).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner {
            PrivateInner::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
            PrivateInner::Rsa(pair) => {
                let rng = ring::rand::SystemRandom::new();
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| Error::bad_key("RSA signing failed"))?;
                Ok(sig)
            }
        }
    }
}

fn check_rsa_bits(bits: usize) -> Result<(), Error> {
    if bits < MIN_RSA_BITS {
        return Err(Error::WeakKey { bits });
    }
    if bits > MAX_RSA_BITS {
        return Err(Error::bad_key(format!(
            "RSA key of {bits} bits is larger than the {MAX_RSA_BITS} bits km accepts"
        )));
    }
    Ok(())
}

fn unsupported_key(oid: spki::ObjectIdentifier) -> Error {
    Error::bad_key(format!(
        "unsupported key type (algorithm {oid}); km accepts Ed25519 and RSA keys"
    ))
}

#[cfg(test)]
pub(crate) mod tests;
