//! The installation's audit key: made on first use, kept private, published for auditors.
//!
//! - `audit.key`: the Ed25519 key as a PKCS#8 document, mode 0600, created with `O_EXCL` (two
//!   sessions starting at once agree on one key: the second reads the first's).
//! - `audit.pub`: the raw public key in base64, mode 0644, so that an auditor can be handed it
//!   (`km plugin compliance-reporting key` prints it too).
//!
//! A key file readable or writable by others is refused: whoever can replace it can sign a
//! rewritten trail.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_audit::AuditKey;

use crate::Error;

/// Where the key lives in the data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.key")
}

/// Where the public key lives.
pub fn public_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.pub")
}

/// Loads the audit key, making it if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<AuditKey, Error> {
    if let Some(key) = load(data_dir)? {
        return Ok(key);
    }
    let (pkcs8, key) = AuditKey::generate()?;
    match km_durable::write_new(&key_path(data_dir), &pkcs8, km_durable::PRIVATE) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return load(data_dir)?.ok_or_else(|| Error::Corrupt {
                path: key_path(data_dir),
                what: "vanished while it was made".to_owned(),
            })
        }
        Err(e) => return Err(e.into()),
    }
    km_durable::write_atomic(
        &public_path(data_dir),
        format!("{}\n", STANDARD.encode(key.public_key())).as_bytes(),
        km_durable::PUBLIC,
    )?;
    Ok(key)
}

/// Loads the audit key if there is one.
pub fn load(data_dir: &Path) -> Result<Option<AuditKey>, Error> {
    let path = key_path(data_dir);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Corrupt {
            path,
            what: format!(
                "must be a regular file only its owner can read (mode {:o})",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    let bytes = fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    AuditKey::from_pkcs8(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            path,
            what: e.to_string(),
        })
}

/// Reads a public key file: base64 of the raw 32 bytes (as `audit.pub` holds it).
pub fn read_public(path: &Path) -> Result<Vec<u8>, Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    STANDARD
        .decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            what: "is not a base64 Ed25519 public key".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_installation_private_and_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("reads").is_none());
        let key = load_or_create(dir.path()).expect("made");
        let again = load_or_create(dir.path()).expect("loaded");
        assert_eq!(key.id(), again.id());
        let mode = fs::metadata(key_path(dir.path()))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = read_public(&public_path(dir.path())).expect("published");
        assert_eq!(public, key.public_key());
        fs::set_permissions(key_path(dir.path()), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = load(dir.path()).expect_err("readable by others");
        assert!(err.to_string().contains("audit.key"), "{err}");
    }
}
