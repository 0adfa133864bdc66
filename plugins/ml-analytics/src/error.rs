//! The one error type of the plugin's storage and reports: what failed, on which file, and why,
//! so that a message on km's log or a report's stderr names the file a user can look at.

use std::path::PathBuf;

/// What can go wrong outside the hot path (files, reports, arguments).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// An I/O operation on `path` failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`reading`, `replacing`, `locking`...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file of the store does not hold what it should.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A durable-file operation failed (it names the file).
    #[error(transparent)]
    Durable(#[from] km_durable::Error),
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An [`Error::Io`] for `what` on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// The plugin's results.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
