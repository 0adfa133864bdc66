//! The installation's fingerprint key: 32 random bytes in the plugin's data directory
//! (`KM_HOME/state/plugins/advanced-filters/fingerprint.key`, mode 0600), made on first use.
//!
//! Every keyed hash the plugin shows or accepts is an HMAC-SHA256 under it: the `hmac8` of
//! findings and keyed markers (first 4 bytes) and the `hmac:` allowlist entries (first 16), so
//! equal values correlate within one installation and nowhere else, and nobody without the key
//! can test a guess against a hash. Two km processes starting at once both try to create it;
//! the file is created atomically without replacing an existing one, and the loser reads the
//! winner's.

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

/// The key file's name in the data directory.
pub(crate) const FILE: &str = "fingerprint.key";

/// Reads the key, or makes it. The error is a message for km's log.
pub(crate) fn load_or_create(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join(FILE);
    match read(&path) {
        Ok(Some(key)) => return Ok(key),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    match km_durable::write_new(&path, hex::encode(&key).as_bytes(), km_durable::PRIVATE) {
        Ok(()) => Ok(key),
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path)?
            .ok_or_else(|| format!("{} vanished while it was being made", path.display())),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() >= 16)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{} is not a key of at least 16 hex-encoded bytes",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let key = load_or_create(dir.path()).expect("made");
        assert_eq!(key.len(), 32);
        assert_eq!(load_or_create(dir.path()).expect("read"), key);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE), "not hex").expect("write");
        let e = load_or_create(dir.path()).expect_err("garbage is refused");
        assert!(e.contains(FILE), "{e}");
    }
}
