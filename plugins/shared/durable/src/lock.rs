//! An exclusive advisory lock on a lock file, for state that several processes write: the
//! plugin installer, and plugins whose state every `km monitor` session updates at once.
//!
//! The lock is `flock(2)` on the whole file. It belongs to the open file, so it is released
//! when the [`Lock`] is dropped and, whatever happens, when the process exits: a killed holder
//! never leaves a stale lock, and there is no pid file to clean up. The lock file stays in
//! place on purpose: removing it would let a process that already opened it and one that opens
//! the new file both believe they hold the lock. Two [`Lock`]s on the same path exclude each
//! other even within one process, so a thread must not take a lock it already holds.
//!
//! `flock` has no timeout of its own. [`Lock::acquire`] with a timeout tries without blocking
//! and sleeps between tries (1 ms, doubling to 50 ms): interrupting a blocking `flock` with a
//! timer signal would need a signal handler, which a library must not install.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation, Mode, OFlags};

use crate::{Error, Result};

/// The longest pause between two tries of a lock taken with a timeout.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// An exclusive lock on a lock file, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock on `path` (created with mode 0600 if missing; a symbolic link is
    /// refused), waiting for another holder to release it: for ever with `None`, at most
    /// `timeout` otherwise ([`Error::LockTimeout`]).
    pub fn acquire(path: &Path, timeout: Option<Duration>) -> Result<Lock> {
        let file = open_lock_file(path)?;
        match timeout {
            None => loop {
                match flock(&file, FlockOperation::LockExclusive) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(Error::io("locking", path, e.into())),
                }
            },
            Some(timeout) => {
                let start = Instant::now();
                let mut pause = Duration::from_millis(1);
                while !try_flock(&file, path)? {
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(Error::LockTimeout {
                            path: path.to_path_buf(),
                            waited,
                        });
                    }
                    std::thread::sleep(pause.min(timeout - waited));
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
        Ok(Lock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock on `path` if no one holds it; `None` if another holder does.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        let file = open_lock_file(path)?;
        Ok(try_flock(&file, path)?.then(|| Lock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| Error::io("opening the lock file", path, e.into()))?;
    Ok(File::from(fd))
}

/// One non-blocking try for the exclusive lock on an open file: `false` if another open file
/// holds it. Shared with [`crate::AppendFile::try_lock`].
pub(crate) fn try_flock(file: &File, path: &Path) -> Result<bool> {
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("locking", path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_held_lock_excludes_others_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.lock");
        let held = Lock::try_acquire(&path).expect("opens").expect("free");
        assert_eq!(held.path(), path);
        assert!(
            Lock::try_acquire(&path).expect("opens").is_none(),
            "taken twice"
        );
        let err = Lock::acquire(&path, Some(Duration::from_millis(20))).expect_err("times out");
        assert!(
            matches!(&err, Error::LockTimeout { path: p, .. } if *p == path),
            "{err}"
        );
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("state.lock"), "{err}");
        drop(held);
        // Not a try: a child another test forks now holds the descriptor until it execs, and
        // with it the lock (see `append`'s test of the same).
        let again = Lock::acquire(&path, Some(Duration::from_secs(5))).expect("free again");
        drop(again);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("kept").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "the lock file is private: {mode:o}");
    }

    #[test]
    fn a_blocking_acquire_waits_for_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.lock");
        let held = Lock::acquire(&path, None).expect("free");
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (path, released) = (path.clone(), Arc::clone(&released));
            std::thread::spawn(move || {
                let _lock = Lock::acquire(&path, None).expect("acquired once released");
                released.load(Ordering::SeqCst)
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        released.store(true, Ordering::SeqCst);
        drop(held);
        assert!(
            waiter.join().expect("no panic"),
            "the waiter got the lock while it was held"
        );
    }

    #[test]
    fn a_lock_file_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        let path = file.join("state.lock");
        let err = Lock::acquire(&path, None).expect_err("the parent is a file");
        assert!(
            matches!(&err, Error::Io { path: p, .. } if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("plain/state.lock"), "{err}");
        let err = Lock::try_acquire(&path).expect_err("the parent is a file");
        assert_eq!(err.path(), path);

        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).expect("symlink");
        Lock::acquire(&link, None).expect_err("a symbolic link is refused");
        assert!(
            !dir.path().join("elsewhere").exists(),
            "the link was followed"
        );
    }
}
