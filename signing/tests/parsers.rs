//! Property tests of every parser of the signing library that reads outside input: the signed
//! manifest, the `.kmsig` signature file, public and private keys (PEM and DER), and `.kmpkg`
//! packages. Each gets arbitrary bytes and mutations of a valid input (the inputs a fuzzer finds
//! interesting: valid up to one changed, inserted, removed or truncated byte). The property is
//! the same everywhere: an answer (`Ok` or a typed error), never a panic, and nothing allocated
//! beyond the input's own order of size (packages are read with small limits, so a size field
//! that claims gigabytes must be refused, not honoured).
//!
//! The case budget is proptest's: 256 cases per property by default (all properties of the
//! workspace stay well under a minute); `PROPTEST_CASES=100000 cargo test -p km-signing --test
//! parsers` runs them longer (see FUZZING.md for the coverage-guided fuzz targets).

use std::time::SystemTime;

use km_signing::package::{read_package, write_package, Limits};
use km_signing::{
    format_timestamp, sha256_hex, target_triple, Algorithm, Manifest, PrivateKey, PublicKey,
    SignatureFile, MANIFEST_KIND,
};
use proptest::prelude::*;

/// How a valid input is changed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len().max(1);
        match *m {
            Mutation::Flip(i, b) if !out.is_empty() => out[i % len] ^= b | 1,
            Mutation::Insert(i, b) => out.insert(i % (out.len() + 1), b),
            Mutation::Remove(i) if !out.is_empty() => {
                out.remove(i % len);
            }
            Mutation::Truncate(i) => out.truncate(i % (out.len() + 1)),
            Mutation::Duplicate(i, n) if !out.is_empty() => {
                let start = i % len;
                let end = (start + n % 64).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(start..start, piece);
            }
            _ => {}
        }
    }
    out
}

fn manifest(lib: &[u8], key: &PrivateKey) -> Manifest {
    Manifest {
        kind: MANIFEST_KIND.to_owned(),
        name: "demo".to_owned(),
        version: "1.2.3".to_owned(),
        tier: km_abi::Tier::Pro,
        target: target_triple().to_owned(),
        abi_version: km_abi::ABI_VERSION.to_owned(),
        sha256: sha256_hex(lib),
        size: lib.len() as u64,
        issued_at: format_timestamp(SystemTime::UNIX_EPOCH),
        expires_at: None,
        customer: None,
        capabilities: Vec::new(),
        fail_open: false,
        key_id: key.public_key().key_id().to_string(),
    }
}

/// A valid signed manifest, signature file, key pair and package, made once per process.
struct Valid {
    manifest: Vec<u8>,
    sigfile: Vec<u8>,
    public_pem: String,
    public_der: Vec<u8>,
    private_pem: String,
    package: Vec<u8>,
}

fn valid() -> &'static Valid {
    static VALID: std::sync::OnceLock<Valid> = std::sync::OnceLock::new();
    VALID.get_or_init(|| {
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("key");
        let lib = b"\x7fELF a library".to_vec();
        let manifest_bytes = manifest(&lib, &key).to_bytes();
        let sig = SignatureFile {
            algorithm: key.algorithm(),
            key_id: key.public_key().key_id(),
            signature: key.sign(&manifest_bytes).expect("sign"),
            manifest_bytes: manifest_bytes.clone(),
        };
        let sigfile = sig.to_bytes();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("p.kmpkg");
        write_package(&out, "libdemo.so", &lib, &sigfile).expect("package");
        Valid {
            manifest: manifest_bytes,
            sigfile,
            public_pem: key.public_key().to_pem(),
            public_der: key.public_key().spki_der().to_vec(),
            private_pem: key.to_pem(),
            package: std::fs::read(&out).expect("read"),
        }
    })
}

/// Small limits: a package claiming more is refused, whatever its headers say.
fn limits() -> Limits {
    Limits::for_library(64 * 1024)
}

proptest! {
    #[test]
    fn manifests_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::parse(&bytes);
    }

    #[test]
    fn manifests_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let bytes = apply(&valid().manifest, &mutations);
        if let Ok(m) = Manifest::parse(&bytes) {
            // What parses is valid by the manifest's own rules, and round-trips.
            prop_assert!(m.validate().is_ok());
            prop_assert_eq!(Manifest::parse(&m.to_bytes()).ok(), Some(m));
        }
    }

    #[test]
    fn signature_files_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = SignatureFile::parse(&bytes);
    }

    #[test]
    fn signature_files_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let bytes = apply(&valid().sigfile, &mutations);
        if let Ok(sig) = SignatureFile::parse(&bytes) {
            prop_assert_eq!(SignatureFile::parse(&sig.to_bytes()).ok().map(|s| s.to_bytes()), Some(sig.to_bytes()));
        }
    }

    #[test]
    fn public_keys_from_arbitrary_text(text in "(?s)(-----BEGIN PUBLIC KEY-----\n)?[A-Za-z0-9+/=\n-]{0,512}(-----END PUBLIC KEY-----\n)?") {
        let _ = PublicKey::from_pem(&text);
    }

    #[test]
    fn public_keys_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let pem = apply(valid().public_pem.as_bytes(), &mutations);
        if let Ok(text) = std::str::from_utf8(&pem) {
            if let Ok(key) = PublicKey::from_pem(text) {
                prop_assert_eq!(PublicKey::from_pem(&key.to_pem()).ok().map(|k| k.key_id()), Some(key.key_id()));
            }
        }
        let der = apply(&valid().public_der, &mutations);
        let _ = PublicKey::from_spki_der(&der);
    }

    #[test]
    fn der_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = PublicKey::from_spki_der(&bytes);
        let _ = PrivateKey::from_pkcs8(&bytes);
    }

    #[test]
    fn private_keys_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let pem = apply(valid().private_pem.as_bytes(), &mutations);
        if let Ok(text) = std::str::from_utf8(&pem) {
            let _ = PrivateKey::from_pem(text);
        }
    }

    #[test]
    fn packages_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = read_package(&bytes[..], limits());
    }

    #[test]
    fn packages_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let bytes = apply(&valid().package, &mutations);
        if let Ok(pkg) = read_package(&bytes[..], limits()) {
            prop_assert!(pkg.library.len() as u64 <= limits().max_entry);
        }
    }
}

/// The package reader honours its limits against a gzip bomb: a tiny archive that inflates to
/// far more than the limit is refused without inflating it all.
#[test]
fn a_package_that_inflates_past_the_limit_is_refused() {
    use std::io::Write as _;
    let mut tar = tar::Builder::new(Vec::new());
    let big = vec![0u8; 8 * 1024 * 1024];
    let mut header = tar::Header::new_gnu();
    header.set_size(big.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "libdemo.so", &big[..])
        .expect("entry");
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).expect("gzip");
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    assert!(read_package(&bomb[..], limits()).is_err());
}
