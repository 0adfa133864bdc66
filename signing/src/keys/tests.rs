//! Tests of keys: round trips through PEM, key id stability, weak and garbage keys.

use std::sync::OnceLock;

use super::*;

/// One RSA key per test run: generating one takes a moment.
pub(crate) fn rsa_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        PrivateKey::generate(Algorithm::RsaPkcs1Sha256).expect("generates an RSA key")
    })
}

#[test]
fn ed25519_sign_verify_and_pem_round_trip() {
    let key = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    assert_eq!(key.algorithm(), Algorithm::Ed25519);
    let sig = key.sign(b"hello").expect("signs");
    let public = key.public_key();
    public.verify(b"hello", &sig).expect("verifies");
    assert!(matches!(
        public.verify(b"hellO", &sig),
        Err(Error::BadSignature)
    ));

    let again = PrivateKey::from_pem(&key.to_pem()).expect("reads its own PEM");
    assert_eq!(again.public_key(), public);
    let public_again = PublicKey::from_pem(&public.to_pem()).expect("reads public PEM");
    assert_eq!(public_again, public);
    assert_eq!(public_again.key_id(), public.key_id());
    public_again
        .verify(b"hello", &sig)
        .expect("verifies after round trip");
}

#[test]
fn rsa_sign_verify_and_pem_round_trip() {
    let key = rsa_key();
    assert_eq!(key.algorithm(), Algorithm::RsaPkcs1Sha256);
    let sig = key.sign(b"hello").expect("signs");
    assert_eq!(sig.len(), 256);
    let public = key.public_key();
    public.verify(b"hello", &sig).expect("verifies");
    let again = PrivateKey::from_pem(&key.to_pem()).expect("reads its own PEM");
    assert_eq!(again.public_key().key_id(), public.key_id());
    assert_eq!(
        PublicKey::from_pem(&public.to_pem()).expect("public PEM"),
        public
    );
}

#[test]
fn rsa_pkcs1_private_key_is_accepted() {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    let key = rsa_key();
    let parsed =
        rsa::RsaPrivateKey::from_pkcs8_der(&key.pkcs8()).expect("rsa crate reads ring's key");
    let pkcs1 = parsed.to_pkcs1_der().expect("pkcs1");
    let pem_text = crate::pem::encode("RSA PRIVATE KEY", pkcs1.as_bytes()).expect("pem");
    let from_pkcs1 = PrivateKey::from_pem(&pem_text).expect("reads PKCS#1");
    assert_eq!(from_pkcs1.public_key(), key.public_key());
    // Re-exported as PKCS#8, it reads back to the same key.
    assert_eq!(
        PrivateKey::from_pem(&from_pkcs1.to_pem())
            .expect("pkcs8")
            .public_key(),
        key.public_key()
    );
}

#[test]
fn key_id_is_stable_and_canonical() {
    // A fixed Ed25519 public key: its id must never change, or every trust store breaks.
    let spki = asn1::spki(asn1::ED25519, &[0x11; 32]).expect("spki");
    let public = PublicKey::from_spki_der(&spki).expect("parses");
    let expected = hex::encode(&ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()[..16]);
    assert_eq!(public.key_id().as_str(), expected);
    // Pinned: the first 32 hex characters of `sha256sum` of this SPKI DER, computed once.
    assert_eq!(public.key_id().as_str(), "9067da37b36d6e9d9a6b86e593983cf0");
    // Same key, PEM with other line lengths and leading text: same id.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &spki);
    let odd = format!(
        "comment\n-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &b64[..10],
        &b64[10..]
    );
    assert_eq!(
        PublicKey::from_pem(&odd).expect("parses").key_id(),
        public.key_id()
    );
    assert_eq!(public.key_id().as_str().len(), 32);
}

#[test]
fn key_id_parsing() {
    let id: KeyId = "ABCDEF0123456789abcdef0123456789".parse().expect("parses");
    assert_eq!(id.as_str(), "abcdef0123456789abcdef0123456789");
    assert_eq!(id.to_string(), id.as_str());
    for bad in ["", "abc", &"g".repeat(32), &"a".repeat(64)] {
        assert!(
            matches!(bad.parse::<KeyId>(), Err(Error::InvalidInput { .. })),
            "{bad}"
        );
    }
}

#[test]
fn rsa_1024_is_refused_as_weak() {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::pkcs8::EncodePrivateKey as _;
    let small = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).expect("1024-bit key");
    let pkcs8 = small.to_pkcs8_der().expect("pkcs8");
    let pem_text = crate::pem::encode("PRIVATE KEY", pkcs8.as_bytes()).expect("pem");
    assert!(matches!(
        PrivateKey::from_pem(&pem_text),
        Err(Error::WeakKey { bits: 1024 })
    ));
    let pkcs1 = small.to_public_key().to_pkcs1_der().expect("pkcs1");
    let spki = asn1::spki(asn1::RSA, pkcs1.as_bytes()).expect("spki");
    let pub_pem = crate::pem::encode("PUBLIC KEY", &spki).expect("pem");
    assert!(matches!(
        PublicKey::from_pem(&pub_pem),
        Err(Error::WeakKey { bits: 1024 })
    ));
}

#[test]
fn garbage_pem_is_a_bad_key() {
    let ed = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    let cases = [
        "".to_owned(),
        "not a key".to_owned(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
            .to_owned(),
        ed.public_key().to_pem(),
    ];
    for text in &cases {
        assert!(
            matches!(PrivateKey::from_pem(text), Err(Error::BadKey { .. })),
            "{text:?}"
        );
    }
    assert!(matches!(
        PublicKey::from_pem(&ed.to_pem()),
        Err(Error::BadKey { .. })
    ));
    assert!(matches!(
        PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n"),
        Err(Error::BadKey { .. })
    ));
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let a = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    let b = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    let sig = b.sign(b"msg").expect("signs");
    assert!(matches!(
        a.public_key().verify(b"msg", &sig),
        Err(Error::BadSignature)
    ));
    // An RSA signature checked with an Ed25519 key and the reverse: the same opaque error.
    let rsa_sig = rsa_key().sign(b"msg").expect("signs");
    assert!(matches!(
        a.public_key().verify(b"msg", &rsa_sig),
        Err(Error::BadSignature)
    ));
    assert!(matches!(
        rsa_key().public_key().verify(b"msg", &sig),
        Err(Error::BadSignature)
    ));
}

#[test]
fn algorithm_names() {
    for alg in Algorithm::ALL {
        assert_eq!(alg.as_str().parse::<Algorithm>().expect("parses"), alg);
    }
    assert!(matches!(
        "rsa".parse::<Algorithm>(),
        Err(Error::UnsupportedAlgorithm { .. })
    ));
    assert!(matches!(
        "ED25519".parse::<Algorithm>(),
        Err(Error::UnsupportedAlgorithm { .. })
    ));
}

#[test]
fn key_files_are_private_and_not_overwritten_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k.key");
    let key = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    key.write_pem_file(&path, false).expect("writes");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let other = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    assert!(matches!(
        other.write_pem_file(&path, false),
        Err(Error::Io { .. })
    ));
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        PrivateKey::from_pem(&text).expect("reads").public_key(),
        key.public_key()
    );
    other
        .write_pem_file(&path, true)
        .expect("overwrites when asked");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        PrivateKey::from_pem(&text).expect("reads").public_key(),
        other.public_key()
    );
}

#[test]
fn ed25519_keys_are_written_as_pkcs8_v1_for_openssl() {
    let key = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    // PKCS#8 v1 Ed25519: a fixed 16-byte header, then the 32-byte seed.
    assert_eq!(key.pkcs8().len(), 48);
    assert_eq!(
        hex::encode(&key.pkcs8()[..16]),
        "302e020100300506032b657004220420"
    );
    assert_eq!(
        PrivateKey::from_pkcs8(&key.pkcs8())
            .expect("reads")
            .public_key(),
        key.public_key()
    );
}
