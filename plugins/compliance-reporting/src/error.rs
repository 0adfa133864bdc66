//! The plugin's one error type: what failed, on which file, and why.

use std::path::{Path, PathBuf};

/// What went wrong in the trail, the key store, the policy or a report.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A durable-file operation failed (km-durable names the path).
    #[error(transparent)]
    Durable(#[from] km_durable::Error),
    /// A file of the plugin's data directory is not what it must be.
    #[error("{} {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Encryption or decryption failed.
    #[error("{0}")]
    Crypto(&'static str),
    /// A tree, proof, checkpoint or key problem.
    #[error(transparent)]
    Audit(#[from] km_audit::Error),
    /// The policy file is invalid.
    #[error("{0}")]
    Policy(String),
    /// Something the user asked for cannot be done.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An I/O error on `path` while doing `action`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
