//! Team admin keys: Ed25519 public keys as PEM SubjectPublicKeyInfo (what `km-sign keygen`
//! writes as `NAME.pub`, and `openssl pkey -pubout`), and their key ids.
//!
//! A key id is the first 16 bytes of the SHA-256 of the key's SPKI DER, in lower-case hex: the
//! same derivation km's signing library uses for plugin signing keys, so one admin key has one
//! id everywhere. Only Ed25519 is accepted (the team issue's choice; a fixed allow-list of one).
//! The PEM reader is written here rather than taken from the signing library so that plugins
//! verifying team files do not link RSA key generation and package handling; for one key type
//! with a fixed 12-byte DER prefix it is a few lines.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } around the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const END: &str = "-----END PUBLIC KEY-----";

/// An admin's Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    raw: [u8; 32],
    key_id: String,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKey({})", self.key_id)
    }
}

impl AdminKey {
    /// The key with these 32 raw bytes.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        let key_id = key_id_of(&spki(&raw));
        AdminKey { raw, key_id }
    }

    /// Reads a `BEGIN PUBLIC KEY` PEM holding an Ed25519 key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let body = text
            .strip_prefix(BEGIN)
            .and_then(|rest| rest.strip_suffix(END))
            .ok_or_else(|| format!("not a PEM public key ({BEGIN} ... {END})"))?;
        let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("the PEM body is not base64: {e}"))?;
        let raw = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .ok_or("not an Ed25519 public key (team admin keys are Ed25519)")?;
        Ok(AdminKey::from_raw(raw))
    }

    /// The key as PEM, as `km-sign keygen` writes it.
    pub fn to_pem(&self) -> String {
        format!("{BEGIN}\n{}\n{END}\n", STANDARD.encode(spki(&self.raw)))
    }

    /// The key's id (32 hex digits).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

fn spki(raw: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    der
}

fn key_id_of(spki: &[u8]) -> String {
    km_durable::digest::hex(&km_durable::digest::sha256(spki)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_from_the_signing_library_reads_with_the_same_id() {
        let key =
            km_signing::PrivateKey::generate(km_signing::Algorithm::Ed25519).expect("generates");
        let public = key.public_key();
        let admin = AdminKey::from_pem(&public.to_pem()).expect("reads km-sign's PEM");
        assert_eq!(admin.key_id(), public.key_id().as_str());
        assert_eq!(
            AdminKey::from_pem(&admin.to_pem()).expect("round trip"),
            admin
        );
        let message = b"a message";
        let signature = key.sign(message).expect("signs");
        assert!(admin.verifies(message, &signature));
        assert!(!admin.verifies(b"another message", &signature));
    }

    #[test]
    fn other_keys_and_garbage_are_refused_with_a_reason() {
        let rsa = km_signing::PrivateKey::generate_rsa(2048).expect("generates");
        let err = AdminKey::from_pem(&rsa.public_key().to_pem()).expect_err("RSA");
        assert!(err.contains("Ed25519"), "{err}");
        assert!(AdminKey::from_pem("hello").is_err());
        assert!(AdminKey::from_pem(&format!("{BEGIN}\n!!!\n{END}")).is_err());
    }
}
