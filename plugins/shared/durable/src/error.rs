//! The one error type of the crate: what was being done, to which path, and the OS's answer.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong. Every variant names the path.
///
/// The OS error is part of the message (`writing /x/.f.km-tmp-1-0: File too large (os error
/// 27)`) rather than a separate `source()`, so that an error chain printed with `{:#}` says it
/// once; [`Error::os_error`] and [`Error::kind`] give it to code.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "writing", "renaming into", "locking", ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path ends in no file name (`/`, `..`, an empty path).
    #[error("{} does not name a file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// Another process held the lock for longer than the caller was willing to wait.
    #[error(
        "{} is locked by another process (waited {} ms)",
        path.display(),
        waited.as_millis()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. } | Error::NotAFile { path } | Error::LockTimeout { path, .. } => {
                path
            }
        }
    }

    /// The OS error, when a system call failed.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::NotAFile { .. } | Error::LockTimeout { .. } => None,
        }
    }

    /// The kind of the failure, as [`io::ErrorKind`] (`AlreadyExists` for [`crate::write_new`]
    /// onto an existing file, `TimedOut` for a lock timeout, `InvalidInput` for a path that
    /// names no file).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. } => source.kind(),
            Error::NotAFile { .. } => io::ErrorKind::InvalidInput,
            Error::LockTimeout { .. } => io::ErrorKind::TimedOut,
        }
    }

    /// The OS error itself (kind and error number kept) for [`Error::Io`], or one made of the
    /// message for the others: for callers whose own error type carries the path separately.
    pub fn into_os_error(self) -> io::Error {
        match self {
            Error::Io { source, .. } => source,
            other => io::Error::new(other.kind(), other.to_string()),
        }
    }
}

/// For code that works in `io::Result`: the kind is kept, the message names the path.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.kind(), e.to_string())
    }
}
