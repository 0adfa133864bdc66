//! What `km wrap` keeps of each file it changes, so that `km unwrap` can put the file back
//! exactly: the file as it was (the backup, written before the file is changed) and the
//! SHA-256 of what km wrote. When the file still has that digest, nobody edited it since, and
//! `unwrap` restores the backup byte for byte; otherwise it takes km's wrapper off km's own
//! entries only, keeping the edits.
//!
//! Records live in `KM_HOME/state/wrap/`, one pair of files per configuration file (named by the
//! SHA-256 of its absolute path), private to the user.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::home::KmHome;

/// The record of one wrapped file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The configuration file.
    pub(crate) path: PathBuf,
    /// SHA-256 of the file as km wrote it.
    pub(crate) wrapped_sha256: String,
    /// When: milliseconds since the Unix epoch.
    pub(crate) time_ms: i64,
}

fn dir(home: &KmHome) -> PathBuf {
    home.state_dir().join("wrap")
}

fn stem(home: &KmHome, path: &Path) -> PathBuf {
    let digest = km_durable::digest::sha256_hex(path.to_string_lossy().as_bytes());
    dir(home).join(&digest[..32])
}

/// The backup (the file before `km wrap` changed it) and the record, if km keeps them.
pub(crate) fn load(home: &KmHome, path: &Path) -> Result<Option<(Record, String)>> {
    let stem = stem(home, path);
    let record_path = stem.with_extension("json");
    let record: Record = match std::fs::read(&record_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", record_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", record_path.display())),
    };
    let backup_path = stem.with_extension("orig");
    let backup = std::fs::read_to_string(&backup_path)
        .with_context(|| format!("reading the backup {}", backup_path.display()))?;
    Ok(Some((record, backup)))
}

/// Writes the backup of `path` (its text `original`) before the file is changed; returns where.
pub(crate) fn save_backup(home: &KmHome, path: &Path, original: &str) -> Result<PathBuf> {
    KmHome::ensure_private_dir(&dir(home))?;
    let backup = stem(home, path).with_extension("orig");
    km_durable::write_atomic(&backup, original.as_bytes(), km_durable::PRIVATE)?;
    Ok(backup)
}

/// Records what km wrote to `path`.
pub(crate) fn save(home: &KmHome, path: &Path, written: &str) -> Result<()> {
    let record = Record {
        path: path.to_path_buf(),
        wrapped_sha256: km_durable::digest::sha256_hex(written.as_bytes()),
        time_ms: crate::monitor::now_ms(),
    };
    let file = stem(home, path).with_extension("json");
    km_durable::write_atomic(
        &file,
        &serde_json::to_vec_pretty(&record)?,
        km_durable::PRIVATE,
    )?;
    Ok(())
}

/// Forgets `path` (after `unwrap`).
pub(crate) fn forget(home: &KmHome, path: &Path) -> Result<()> {
    let stem = stem(home, path);
    for file in [stem.with_extension("json"), stem.with_extension("orig")] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}
