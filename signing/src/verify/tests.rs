//! Each check of `verify_library` met by the attack it stops.

use std::time::{Duration, SystemTime};

use km_abi::Tier;

use super::*;
use crate::keys::{Algorithm, PrivateKey};
use crate::manifest::{format_timestamp, parse_date, MANIFEST_KIND};

const TARGET: &str = "x86_64-unknown-linux-gnu";
const LIB: &[u8] = b"\x7fELF pretend this is a plugin library";

struct Fixture {
    key: PrivateKey,
    trust: TrustStore,
    manifest: Manifest,
    now: SystemTime,
}

impl Fixture {
    fn new() -> Self {
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
        let mut trust = TrustStore::default();
        trust
            .add_builtin("test", &key.public_key().to_pem())
            .expect("trusts");
        let manifest = manifest_for(&key, LIB);
        Fixture {
            key,
            trust,
            manifest,
            now: parse_date("2026-12-01").expect("date"),
        }
    }

    fn sign(&self) -> SignatureFile {
        sign_with(&self.key, &self.manifest)
    }

    fn policy(&self) -> Policy<'_> {
        Policy {
            now: self.now,
            target: TARGET,
            abi_version: "1.0.0",
            allow_downgrade: false,
            seen: None,
        }
    }

    fn verify(&self, bytes: &[u8], sig: &SignatureFile) -> Result<Verified, Error> {
        verify_library(bytes, sig, &self.trust, &self.policy())
    }
}

fn manifest_for(key: &PrivateKey, lib: &[u8]) -> Manifest {
    Manifest {
        kind: MANIFEST_KIND.to_owned(),
        name: "api-logger".to_owned(),
        version: "1.2.3".to_owned(),
        tier: Tier::Pro,
        target: TARGET.to_owned(),
        abi_version: "1.0.0".to_owned(),
        sha256: sha256_hex(lib),
        size: lib.len() as u64,
        issued_at: "2026-11-25T06:21:20Z".to_owned(),
        expires_at: Some("2027-01-01T00:00:00Z".to_owned()),
        customer: None,
        capabilities: Vec::new(),
        fail_open: false,
        key_id: key.public_key().key_id().to_string(),
    }
}

fn sign_with(key: &PrivateKey, manifest: &Manifest) -> SignatureFile {
    let manifest_bytes = manifest.to_bytes();
    SignatureFile {
        algorithm: key.algorithm(),
        key_id: key.public_key().key_id(),
        signature: key.sign(&manifest_bytes).expect("signs"),
        manifest_bytes,
    }
}

#[test]
fn a_good_signature_verifies_and_the_proof_carries_the_manifest() {
    let f = Fixture::new();
    let v = f.verify(LIB, &f.sign()).expect("verifies");
    assert_eq!(v.manifest(), &f.manifest);
    assert_eq!(v.key_id(), &f.key.public_key().key_id());
    assert_eq!(v.key_label(), "test");
    assert_eq!(v.sha256(), sha256_hex(LIB));
}

#[test]
fn rsa_signatures_verify_too() {
    let key = crate::keys::tests::rsa_key();
    let mut trust = TrustStore::default();
    trust
        .add_builtin("rsa", &key.public_key().to_pem())
        .expect("trusts");
    let sig = sign_with(key, &manifest_for(key, LIB));
    assert_eq!(sig.algorithm, Algorithm::RsaPkcs1Sha256);
    let f = Fixture::new();
    verify_library(LIB, &sig, &trust, &f.policy()).expect("verifies");
}

#[test]
fn one_flipped_byte_in_the_library_is_a_digest_mismatch() {
    let f = Fixture::new();
    let mut lib = LIB.to_vec();
    lib[10] ^= 1;
    let err = f.verify(&lib, &f.sign()).expect_err("refused");
    assert!(
        matches!(&err, Error::DigestMismatch { expected, actual } if *expected == sha256_hex(LIB) && *actual == sha256_hex(&lib))
    );
    assert_eq!(err.check(), crate::Check::Digest);
}

#[test]
fn a_longer_library_is_a_size_mismatch() {
    let f = Fixture::new();
    let mut lib = LIB.to_vec();
    lib.push(0);
    assert!(
        matches!(f.verify(&lib, &f.sign()), Err(Error::SizeMismatch { expected, actual }) if actual == expected + 1)
    );
}

#[test]
fn edited_manifest_bytes_are_a_bad_signature() {
    let f = Fixture::new();
    let mut sig = f.sign();
    // Raise the tier without re-signing.
    let text = String::from_utf8(sig.manifest_bytes.clone()).expect("utf-8");
    sig.manifest_bytes = text.replace("\"pro\"", "\"enterprise\"").into_bytes();
    assert!(matches!(f.verify(LIB, &sig), Err(Error::BadSignature)));
    // Even whitespace counts: the exact bytes are signed.
    let mut sig = f.sign();
    sig.manifest_bytes.push(b' ');
    assert!(matches!(f.verify(LIB, &sig), Err(Error::BadSignature)));
}

#[test]
fn a_signature_by_another_key_claiming_the_trusted_id_is_refused() {
    let f = Fixture::new();
    let other = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    let mut sig = sign_with(&other, &f.manifest); // manifest names the trusted key id
    sig.key_id = f.key.public_key().key_id();
    assert!(matches!(f.verify(LIB, &sig), Err(Error::BadSignature)));
}

#[test]
fn an_algorithm_other_than_the_keys_is_a_bad_signature() {
    let f = Fixture::new();
    let mut sig = f.sign();
    sig.algorithm = Algorithm::RsaPkcs1Sha256;
    assert!(matches!(f.verify(LIB, &sig), Err(Error::BadSignature)));
}

#[test]
fn an_untrusted_key_is_refused_by_id() {
    let f = Fixture::new();
    let other = PrivateKey::generate(Algorithm::Ed25519).expect("generates");
    let sig = sign_with(&other, &manifest_for(&other, LIB));
    let err = f.verify(LIB, &sig).expect_err("refused");
    assert!(
        matches!(&err, Error::UntrustedKey { key_id } if *key_id == other.public_key().key_id().to_string())
    );
    assert_eq!(err.check(), crate::Check::Trust);
}

#[test]
fn a_revoked_key_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new();
    let mut trust = TrustStore::load(home.path()).expect("loads");
    trust
        .add_builtin("test", &f.key.public_key().to_pem())
        .expect("trusts");
    trust
        .revoke(f.key.public_key().key_id().as_str(), Some("leaked".into()))
        .expect("revokes");
    f.trust = trust;
    let err = f.verify(LIB, &f.sign()).expect_err("refused");
    assert!(matches!(&err, Error::KeyRevoked { reason: Some(r), .. } if r == "leaked"));
    assert_eq!(err.check(), crate::Check::Revocation);
}

#[test]
fn a_revoked_hash_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new();
    let mut trust = TrustStore::load(home.path()).expect("loads");
    trust
        .add_builtin("test", &f.key.public_key().to_pem())
        .expect("trusts");
    trust.revoke(&sha256_hex(LIB), None).expect("revokes");
    f.trust = trust;
    assert!(
        matches!(f.verify(LIB, &f.sign()), Err(Error::HashRevoked { sha256, .. }) if sha256 == sha256_hex(LIB))
    );
}

#[test]
fn a_manifest_naming_another_key_is_a_mismatch() {
    let mut f = Fixture::new();
    f.manifest.key_id = "f".repeat(32);
    assert!(matches!(
        f.verify(LIB, &f.sign()),
        Err(Error::KeyIdMismatch { .. })
    ));
}

#[test]
fn a_signed_manifest_of_another_kind_is_malformed() {
    let mut f = Fixture::new();
    f.manifest.kind = "km-plugin-manifest/v0".into();
    assert!(matches!(
        f.verify(LIB, &f.sign()),
        Err(Error::MalformedManifest { .. })
    ));
    // A signed non-manifest (some other JSON this key signed) is refused the same way.
    let mut sig = f.sign();
    sig.manifest_bytes = b"{\"hello\": 1}\n".to_vec();
    sig.signature = f.key.sign(&sig.manifest_bytes).expect("signs");
    assert!(matches!(
        f.verify(LIB, &sig),
        Err(Error::MalformedManifest { .. })
    ));
}

#[test]
fn expired_signatures_are_refused() {
    let mut f = Fixture::new();
    f.now = parse_date("2027-01-01").expect("date");
    assert!(
        matches!(f.verify(LIB, &f.sign()), Err(Error::Expired { expires_at }) if expires_at == "2027-01-01T00:00:00Z")
    );
    f.now -= Duration::from_secs(1);
    f.verify(LIB, &f.sign()).expect("one second before is fine");
    f.manifest.expires_at = None;
    f.now = SystemTime::now() + Duration::from_secs(100 * 365 * 86400);
    f.verify(LIB, &f.sign()).expect("no expiry never expires");
    assert!(format_timestamp(f.now).ends_with('Z'));
}

#[test]
fn the_wrong_target_is_refused() {
    let mut f = Fixture::new();
    f.manifest.target = "aarch64-apple-darwin".into();
    assert!(
        matches!(f.verify(LIB, &f.sign()), Err(Error::WrongTarget { expected, actual })
        if expected == TARGET && actual == "aarch64-apple-darwin")
    );
}

#[test]
fn another_abi_major_is_refused() {
    let mut f = Fixture::new();
    f.manifest.abi_version = "2.0.0".into();
    assert!(matches!(
        f.verify(LIB, &f.sign()),
        Err(Error::AbiMismatch { .. })
    ));
    f.manifest.abi_version = "1.4.0".into();
    f.verify(LIB, &f.sign()).expect("same major is compatible");
    assert!(abi_compatible("0.3.1", "0.3.0"));
    assert!(!abi_compatible("0.3.1", "0.4.0"));
    assert!(!abi_compatible("1.0.0", "garbage"));
}

#[test]
fn a_name_outside_the_keys_scope_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new();
    let mut trust = TrustStore::load(home.path()).expect("loads");
    trust
        .add(
            f.key.public_key(),
            Some("vendor".into()),
            Some(vec!["console-logger".into()]),
        )
        .expect("adds");
    f.trust = trust;
    let err = f.verify(LIB, &f.sign()).expect_err("refused");
    assert!(matches!(&err, Error::OutOfScope { name, .. } if name == "api-logger"));
    f.manifest.name = "console-logger".into();
    let v = f.verify(LIB, &f.sign()).expect("in scope");
    assert_eq!(v.key_label(), "vendor");
}

#[test]
fn rollback_is_refused_unless_allowed() {
    let home = tempfile::tempdir().expect("tempdir");
    let f = Fixture::new();
    let mut seen = SeenVersions::load(&home.path().join("seen.json")).expect("loads");
    seen.record("api-logger", &semver::Version::new(1, 3, 0))
        .expect("records");
    let sig = f.sign();
    let mut policy = Policy {
        seen: Some(&seen),
        ..f.policy()
    };
    let err = verify_library(LIB, &sig, &f.trust, &policy).expect_err("refused");
    assert!(
        matches!(&err, Error::Rollback { version, highest, .. } if version == "1.2.3" && highest == "1.3.0")
    );
    assert_eq!(err.check(), crate::Check::Rollback);
    policy.allow_downgrade = true;
    verify_library(LIB, &sig, &f.trust, &policy).expect("downgrade allowed");
    let mut seen_same = SeenVersions::load(&home.path().join("seen2.json")).expect("loads");
    seen_same
        .record("api-logger", &semver::Version::new(1, 2, 3))
        .expect("records");
    let policy = Policy {
        seen: Some(&seen_same),
        ..f.policy()
    };
    verify_library(LIB, &sig, &f.trust, &policy).expect("the same version is not a rollback");
}

#[test]
fn checks_run_in_order_signature_before_manifest() {
    // Garbage manifest bytes with a garbage signature: the signature check answers first, so
    // unauthenticated bytes are never parsed.
    let f = Fixture::new();
    let mut sig = f.sign();
    sig.manifest_bytes = b"not json".to_vec();
    assert!(matches!(f.verify(LIB, &sig), Err(Error::BadSignature)));
}

#[test]
fn every_single_bit_flip_of_the_signature_file_or_library_is_refused() {
    // No panics on hostile input, and no change anywhere slips through: JSON syntax, field names,
    // base64 (including unused trailing bits), key id, signature and manifest bytes.
    let f = Fixture::new();
    let sig = f.sign();
    let file = sig.to_bytes();
    f.verify(LIB, &SignatureFile::parse(&file).expect("parses"))
        .expect("the original verifies");
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 1;
        let accepted = SignatureFile::parse(&bad).ok().map(|s| f.verify(LIB, &s));
        assert!(
            !matches!(accepted, Some(Ok(_))),
            "flipping byte {i} ({:?}) was accepted",
            file[i] as char
        );
    }
    for i in 0..LIB.len() {
        let mut lib = LIB.to_vec();
        lib[i] ^= 0x80;
        assert!(
            matches!(f.verify(&lib, &sig), Err(Error::DigestMismatch { .. })),
            "byte {i}"
        );
    }
    for len in 0..LIB.len() {
        assert!(
            matches!(f.verify(&LIB[..len], &sig), Err(Error::SizeMismatch { .. })),
            "truncated to {len}"
        );
    }
}
