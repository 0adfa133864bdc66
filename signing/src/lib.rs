//! Signed plugin manifests, signing keys, the trust store and the rollback record of km; the
//! `km-sign` tool (its own crate, `signing/km-sign/`, so that this library needs neither clap nor
//! anyhow) is built on top of this crate.
//!
//! km loads plugins as native libraries into its own process, so a library must be proven to come
//! from a trusted signer *before* it is mapped. The proof is a `.kmsig` file beside the library
//! ([`SignatureFile`]) holding a small JSON [`Manifest`] (name, version, tier, target, ABI version,
//! SHA-256 and size of the library, issue and expiry dates, key id) and a signature over the exact
//! manifest bytes. [`verify_library`] checks everything against a [`TrustStore`] and a [`Policy`]
//! and returns the proof type [`Verified`], which nothing else can construct.
//!
//! Algorithms come from a static allow-list ([`Algorithm`]): Ed25519 (the default) and RSA
//! (2048 bits or more) PKCS#1 v1.5 with SHA-256, so that `openssl dgst -sha256 -sign` signatures
//! verify. All signing and verifying is done by `ring`; the `rsa` crate is used only to generate
//! RSA keys, which ring cannot do.
//!
//! The file formats are documented in `FORMATS.md` beside this crate's `Cargo.toml`.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use km_signing::*;
//!
//! # fn main() -> Result<(), Error> {
//! let lib = b"the bytes of libdemo.so";
//! let key = PrivateKey::generate(Algorithm::Ed25519)?;
//! let manifest = Manifest {
//!     kind: MANIFEST_KIND.to_owned(),
//!     name: "demo".to_owned(),
//!     version: "1.0.0".to_owned(),
//!     tier: km_abi::Tier::Free,
//!     target: target_triple().to_owned(),
//!     abi_version: km_abi::ABI_VERSION.to_owned(),
//!     sha256: sha256_hex(lib),
//!     size: lib.len() as u64,
//!     issued_at: format_timestamp(SystemTime::now()),
//!     expires_at: None,
//!     customer: None,
//!     capabilities: Vec::new(),
//!     fail_open: false,
//!     key_id: key.public_key().key_id().to_string(),
//! };
//! let manifest_bytes = manifest.to_bytes();
//! let sig = SignatureFile {
//!     algorithm: key.algorithm(),
//!     key_id: key.public_key().key_id(),
//!     signature: key.sign(&manifest_bytes)?,
//!     manifest_bytes,
//! };
//!
//! let mut trust = TrustStore::default();
//! trust.add_builtin("example", &key.public_key().to_pem())?;
//! let policy = Policy {
//!     now: SystemTime::now(),
//!     target: target_triple(),
//!     abi_version: km_abi::ABI_VERSION,
//!     allow_downgrade: false,
//!     seen: None,
//! };
//! let verified = verify_library(lib, &sig, &trust, &policy)?;
//! assert_eq!(verified.manifest().name, "demo");
//! assert!(matches!(
//!     verify_library(b"other bytes", &sig, &trust, &policy),
//!     Err(Error::SizeMismatch { .. })
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # What is NOT checked
//!
//! - The customer binding (`customer`) is carried and signed but not compared with anything:
//!   the plugin checks it against the subscription.
//! - `issued_at` is not compared with the clock (a signer's clock error should not brick a
//!   plugin); only `expires_at` is.
//! - Revocations are only those in the local trust store: nothing is fetched online.
//! - The loaded library reporting the name and version the manifest signed is the loader's check.
//! - File ownership and permissions of the library itself are the loader's check.

#![forbid(unsafe_code)]

pub mod device;
mod error;
mod fsutil;
pub mod keys;
pub mod manifest;
pub mod package;
mod pem;
pub mod rollback;
pub mod sigfile;
pub mod stamp;
pub mod trust;
pub mod verify;

pub use error::{Check, Error};
pub use keys::{Algorithm, KeyId, PrivateKey, PublicKey};
pub use manifest::{
    check_name, format_timestamp, parse_date, parse_timestamp, sha256_hex, target_triple, Claims,
    Manifest, CAPABILITY_INTERCEPT, KNOWN_CAPABILITIES, MANIFEST_KIND, MANIFEST_KIND_V2,
};
pub use package::{
    library_file_name, read_package, write_package, Limits, Package, PackageError, PACKAGE_SUFFIX,
};
pub use rollback::SeenVersions;
pub use sigfile::SignatureFile;
pub use stamp::{customer_build_file_name, stamp_library};
pub use trust::{Revocation, TrustStore, TrustedKey};
pub use verify::{verify_library, Policy, Verified};
