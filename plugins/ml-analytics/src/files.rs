//! The file primitives of the store, on the workspace's `km-durable`: its lock file, atomic
//! replace and durable append, plus the private directories the store lives in.
//!
//! - [`lock`]: km-durable's exclusive `flock` on `store.lock`, waited for at most
//!   [`LOCK_WAIT`]. Writers (a session's flush, retention) and readers (reports) alike take it:
//!   a merge is a read-modify-write of a few small files that takes milliseconds, so readers
//!   waiting for it cost nothing noticeable, and a report never sees half of a compaction. The
//!   kernel drops the lock when its holder dies, so a killed km never leaves the store locked.
//! - [`write_atomic`]: temporary beside the target, fsync, rename, directory fsync (mode 0600):
//!   readers see the old file or the new one, never half of one, even across a crash.
//! - [`append_line`]: whole records on an `O_APPEND` file, undone if not written whole, synced.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use km_durable::{AppendFile, Lock, PRIVATE};

use crate::error::{Error, Result};

/// The longest a flush or a report waits for the store's lock.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the store's lock at `path`.
pub(crate) fn lock(path: &Path) -> Result<Lock> {
    Ok(Lock::acquire(path, Some(LOCK_WAIT))?)
}

/// Creates `dir` (and its parents) private to the user, if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating", dir, e))
}

/// Replaces `path` with `bytes` atomically (mode 0600).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(km_durable::write_atomic(path, bytes, PRIVATE)?)
}

/// Whether `name` is a temporary left by [`write_atomic`] (a crash between write and rename).
pub(crate) fn is_temporary(name: &str) -> bool {
    km_durable::is_temporary(OsStr::new(name))
}

/// Appends `records` (whole lines) to `path`, created 0600 if missing, and syncs. The caller
/// holds the store's lock: one writer at a time.
pub(crate) fn append_line(path: &Path, records: &[u8]) -> Result<()> {
    let mut file = if path.exists() {
        AppendFile::open_existing(path)?
    } else {
        AppendFile::create_new(path, PRIVATE)?
    };
    Ok(file.append_durable(records)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json"]);
        assert!(!is_temporary("a.json"));
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("a.json");
        let error = write_atomic(&path, b"x").expect_err("no directory");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }

    #[test]
    fn appends_add_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        append_line(&path, b"{\"a\":1}\n").expect("first");
        append_line(&path, b"{\"a\":2}\n").expect("second");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"{\"a\":1}\n{\"a\":2}\n"
        );
    }
}
