//! The one error type of the crate.
//!
//! Every variant carries what a user needs to act (which file, which key id, which hash, which
//! versions) and [`Error::check`] names the failing [`Check`], for tables and JSON. Crypto
//! internals never leak: every signature failure is the same [`Error::BadSignature`].
//!
//! [`Check`] is shared with km's loader, which adds the checks that happen around this crate
//! (file modes and owners, links, ELF format, loading): one typed, non-exhaustive list, so that
//! code branches on a variant and never on a string, and `--json` output shows the same words
//! ([`Check::as_str`]) everywhere.

use std::path::PathBuf;

/// Which check refused a plugin (a library, its signature, a package, or a file km reads to
/// decide trust). Serialised (and displayed) as the word in [`Check::as_str`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// A file or directory others may write to.
    Permissions,
    /// A file or directory owned by another user than you or root.
    Owner,
    /// A symbolic link where km accepts only the file itself.
    Symlink,
    /// Over a size cap, or not the signed size.
    Size,
    /// The `.kmsig` file is missing or malformed, or names an algorithm km does not accept.
    SignatureFile,
    /// The signing key is not trusted.
    Trust,
    /// The key or the library's hash is revoked.
    Revocation,
    /// The signature does not verify.
    Signature,
    /// The signed manifest is malformed or names another key.
    Manifest,
    /// The library's SHA-256 is not the signed one.
    Digest,
    /// Signed for another target triple.
    Target,
    /// Built against an incompatible plugin ABI.
    Abi,
    /// The signature has expired.
    Expiry,
    /// The key may not sign this plugin.
    Scope,
    /// Older than a version already seen.
    Rollback,
    /// Not a regular file, not a shared library for this machine, or not text where text is due.
    Format,
    /// The dynamic loader refused the library.
    Load,
    /// The plugin failed to start.
    Create,
    /// The loaded library is not the plugin its manifest signed.
    Identity,
    /// Another library in the directory is already that plugin.
    Duplicate,
    /// A file could not be read or written.
    Io,
    /// A key that cannot be read or used.
    Key,
    /// A value given by the caller is not acceptable.
    Input,
    /// The file does not exist.
    Missing,
    /// A package (`.kmpkg`) that is not acceptable as a whole.
    Package,
    /// A download whose checksum is not the one announced.
    Checksum,
}

impl Check {
    /// The word for the check, as `--json` output and tables show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Permissions => "permissions",
            Check::Owner => "owner",
            Check::Symlink => "symlink",
            Check::Size => "size",
            Check::SignatureFile => "signature-file",
            Check::Trust => "trust",
            Check::Revocation => "revocation",
            Check::Signature => "signature",
            Check::Manifest => "manifest",
            Check::Digest => "digest",
            Check::Target => "target",
            Check::Abi => "abi",
            Check::Expiry => "expiry",
            Check::Scope => "scope",
            Check::Rollback => "rollback",
            Check::Format => "format",
            Check::Load => "load",
            Check::Create => "create",
            Check::Identity => "identity",
            Check::Duplicate => "duplicate",
            Check::Io => "io",
            Check::Key => "key",
            Check::Input => "input",
            Check::Missing => "missing",
            Check::Package => "package",
            Check::Checksum => "checksum",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong while reading, signing or verifying. Tests can match the exact variant.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The library has no `.kmsig` file beside it.
    #[error("no signature file {} (the library is not signed)", path.display())]
    NoSignature {
        /// The `.kmsig` path that does not exist.
        path: PathBuf,
    },
    /// The `.kmsig` file is not a valid signature file.
    #[error("malformed signature file: {reason}")]
    MalformedSignatureFile {
        /// What is wrong with it.
        reason: String,
    },
    /// An algorithm name that is not on the allow-list.
    #[error("unsupported signature algorithm {name:?} (km accepts ed25519 and rsa-pkcs1-sha256)")]
    UnsupportedAlgorithm {
        /// The name found.
        name: String,
    },
    /// The signing key is not in the trust store.
    #[error("the signing key {key_id} is not trusted (add it with `km trust add KEY.pub`)")]
    UntrustedKey {
        /// Id of the unknown key.
        key_id: String,
    },
    /// The signing key has been revoked.
    #[error("the signing key {key_id} has been revoked{}", reason_suffix(reason))]
    KeyRevoked {
        /// Id of the revoked key.
        key_id: String,
        /// Why, if the revocation says.
        reason: Option<String>,
    },
    /// The signature does not verify. Deliberately says nothing more.
    #[error("the signature does not verify")]
    BadSignature,
    /// The signed manifest is not a valid manifest.
    #[error("malformed manifest: {reason}")]
    MalformedManifest {
        /// What is wrong with it.
        reason: String,
    },
    /// The manifest names another key than the signature file.
    #[error("the manifest names key {manifest} but the signature file names key {signature}")]
    KeyIdMismatch {
        /// Key id in the manifest.
        manifest: String,
        /// Key id in the signature file.
        signature: String,
    },
    /// The library's hash has been revoked.
    #[error(
        "the library with sha256 {sha256} has been revoked{}",
        reason_suffix(reason)
    )]
    HashRevoked {
        /// The revoked hash.
        sha256: String,
        /// Why, if the revocation says.
        reason: Option<String>,
    },
    /// The library's size is not the signed size.
    #[error("the library is {actual} bytes but the manifest signed {expected} bytes")]
    SizeMismatch {
        /// Signed size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// The library's SHA-256 is not the signed one.
    #[error("the library's sha256 is {actual} but the manifest signed {expected}")]
    DigestMismatch {
        /// Signed hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
    /// The library was signed for another target triple.
    #[error("the library was signed for target {actual}, this km runs on {expected}")]
    WrongTarget {
        /// The triple km needs.
        expected: String,
        /// The triple in the manifest.
        actual: String,
    },
    /// The library was built against an incompatible plugin ABI.
    #[error("the library was built against plugin ABI {actual}, not compatible with km's ABI {expected}")]
    AbiMismatch {
        /// km's ABI version.
        expected: String,
        /// The manifest's ABI version.
        actual: String,
    },
    /// The signature has expired.
    #[error("the signature expired at {expires_at}")]
    Expired {
        /// When it expired (RFC 3339).
        expires_at: String,
    },
    /// The signing key may not sign this plugin.
    #[error("the key {key_id} is not trusted to sign plugin {name:?} (outside its scope)")]
    OutOfScope {
        /// The plugin name.
        name: String,
        /// The signing key.
        key_id: String,
    },
    /// A version older than one already seen.
    #[error(
        "plugin {name:?} version {version} is older than version {highest} seen before \
         (rollback refused; allow it explicitly to downgrade)"
    )]
    Rollback {
        /// The plugin name.
        name: String,
        /// The version offered.
        version: String,
        /// The highest version seen before.
        highest: String,
    },
    /// A key that cannot be read or used.
    #[error("bad key: {reason}")]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too weak (km needs at least 2048 bits)")]
    WeakKey {
        /// The modulus length.
        bits: usize,
    },
    /// A built-in key cannot be changed or removed (it is compiled into km); revoke it instead.
    #[error("key {key_id} is built into km and cannot be changed or removed (revoke it instead)")]
    BuiltinKey {
        /// The key id.
        key_id: String,
    },
    /// A value given by the caller is not acceptable (a plugin name, a version, a date, a
    /// revocation target).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What the value is ("plugin name", "version", ...).
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A trust store or state file that others may write to.
    #[error("{} is writable by group or others (mode {mode:o}); fix it with chmod go-w", path.display())]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl Error {
    /// The failing check.
    pub fn check(&self) -> Check {
        match self {
            Error::NoSignature { .. }
            | Error::MalformedSignatureFile { .. }
            | Error::UnsupportedAlgorithm { .. } => Check::SignatureFile,
            Error::UntrustedKey { .. } | Error::BuiltinKey { .. } => Check::Trust,
            Error::KeyRevoked { .. } | Error::HashRevoked { .. } => Check::Revocation,
            Error::BadSignature => Check::Signature,
            Error::MalformedManifest { .. } | Error::KeyIdMismatch { .. } => Check::Manifest,
            Error::SizeMismatch { .. } => Check::Size,
            Error::DigestMismatch { .. } => Check::Digest,
            Error::WrongTarget { .. } => Check::Target,
            Error::AbiMismatch { .. } => Check::Abi,
            Error::Expired { .. } => Check::Expiry,
            Error::OutOfScope { .. } => Check::Scope,
            Error::Rollback { .. } => Check::Rollback,
            Error::BadKey { .. } | Error::WeakKey { .. } => Check::Key,
            Error::InvalidInput { .. } => Check::Input,
            Error::InsecurePermissions { .. } => Check::Permissions,
            Error::Io { .. } => Check::Io,
        }
    }

    /// Whether this is a verification answer ("the library is not acceptable") rather than a
    /// failure to carry out the check (bad key file, I/O, invalid input). `km-sign` exits 1 for
    /// the former and 2 for the latter.
    pub fn is_verification_failure(&self) -> bool {
        !matches!(
            self,
            Error::BadKey { .. }
                | Error::WeakKey { .. }
                | Error::BuiltinKey { .. }
                | Error::InvalidInput { .. }
                | Error::InsecurePermissions { .. }
                | Error::Io { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_key(reason: impl Into<String>) -> Error {
        Error::BadKey {
            reason: reason.into(),
        }
    }
}

/// A failed write keeps its path and its OS error (kind and number), as every other I/O error
/// of this crate.
impl From<km_durable::Error> for Error {
    fn from(e: km_durable::Error) -> Error {
        Error::Io {
            path: e.path().to_path_buf(),
            source: e.into_os_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_values_and_hide_crypto() {
        let e = Error::KeyRevoked {
            key_id: "ab".repeat(16),
            reason: Some("leaked".into()),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "the signing key {} has been revoked (leaked)",
                "ab".repeat(16)
            )
        );
        assert_eq!(e.check(), Check::Revocation);
        assert_eq!(e.check().to_string(), "revocation");
        assert_eq!(
            Error::BadSignature.to_string(),
            "the signature does not verify"
        );
        let e = Error::Rollback {
            name: "x".into(),
            version: "1.0.0".into(),
            highest: "2.0.0".into(),
        };
        assert!(e.to_string().contains("1.0.0") && e.to_string().contains("2.0.0"));
        assert!(Error::BadSignature.is_verification_failure());
        assert!(!Error::WeakKey { bits: 1024 }.is_verification_failure());
    }

    /// `--json` output carries these words (tests of km assert them): the serialised form and
    /// `as_str` must agree for every check.
    #[test]
    fn checks_serialise_as_their_words() {
        for check in [
            Check::Permissions,
            Check::Owner,
            Check::Symlink,
            Check::Size,
            Check::SignatureFile,
            Check::Trust,
            Check::Revocation,
            Check::Signature,
            Check::Manifest,
            Check::Digest,
            Check::Target,
            Check::Abi,
            Check::Expiry,
            Check::Scope,
            Check::Rollback,
            Check::Format,
            Check::Load,
            Check::Create,
            Check::Identity,
            Check::Duplicate,
            Check::Io,
            Check::Key,
            Check::Input,
            Check::Missing,
            Check::Package,
            Check::Checksum,
        ] {
            assert_eq!(
                serde_json::to_value(check).expect("serialises"),
                serde_json::Value::String(check.as_str().to_owned())
            );
        }
    }
}
