//! The two file primitives the store needs: an advisory lock file and an atomic replace.
//!
//! Hand-written because the workspace's shared durable-file crate (`km-durable`) has not landed
//! yet; both are the textbook sequences and small. When it lands, these two functions are what
//! it replaces.
//!
//! - [`Lock`]: `flock(2)` on a lock file beside the data. Exclusive for writers (the flush of a
//!   `km monitor` session, compaction), shared for readers (reports), so that two sessions never
//!   merge into the same file at once and a report never sees half of a compaction. The kernel
//!   drops the lock when its process dies, so a killed km never leaves the store locked.
//! - [`write_atomic`]: a temporary file in the same directory (created with `O_EXCL`, mode 0600),
//!   written, fsynced, renamed over the target, then the directory fsynced: readers see the old
//!   file or the new one, never half of one, even across a crash.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// A held `flock`; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for the exclusive lock on `path` (created 0600 if missing).
    pub(crate) fn exclusive(path: &Path) -> Result<Lock> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Waits for a shared lock on `path` (created 0600 if missing).
    pub(crate) fn shared(path: &Path) -> Result<Lock> {
        Self::take(path, FlockOperation::LockShared)
    }

    fn take(path: &Path, operation: FlockOperation) -> Result<Lock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| Error::io("opening the lock file", path, e))?;
        flock(&file, operation).map_err(|e| Error::io("locking", path, e.into()))?;
        Ok(Lock { _file: file })
    }
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

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically (mode 0600).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp: PathBuf = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| Error::io("creating", &temp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("writing", &temp, e))?;
        std::fs::rename(&temp, path).map_err(|e| Error::io("replacing", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    // The new name must survive a crash too; a failure here leaves the new content in place.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing the directory", dir, e))
}

/// Whether `name` is a temporary left by [`write_atomic`] (a crash between create and rename).
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Appends `record` to `path` (created 0600) in one `write` on an `O_APPEND` file, then syncs:
/// records of concurrent writers never interleave, and a crash leaves at worst a torn last line,
/// which readers skip.
pub(crate) fn append_line(path: &Path, record: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    file.write_all(record)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("appending to", path, e))
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
        assert!(is_temporary(".a.json.tmp-12-0"));
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
    fn exclusive_locks_exclude_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let held = Lock::exclusive(&path).expect("first lock");
        let file = File::open(&path).expect("open");
        assert!(flock(&file, FlockOperation::NonBlockingLockExclusive).is_err());
        drop(held);
        assert!(flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok());
    }
}
