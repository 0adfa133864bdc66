//! The one error type of tool-guard: each variant names the file, server or definition it is
//! about, so that a command can print it as it is and a blocked line can carry it as reason.

use std::path::PathBuf;

/// What went wrong.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A pin file cannot be used: not JSON, not this format, or hashes that do not match the
    /// definitions. It is left as it is.
    #[error("pin file {} is corrupt ({reason}); repair it, or start this server over with `km plugin tool-guard forget`", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// Reading or writing a pin file failed.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A lock, an atomic write.
    #[error(transparent)]
    Durable(#[from] km_durable::Error),
    /// The policy could not be read.
    #[error(transparent)]
    Policy(#[from] km_policy::Error),
    /// No pinned server matches what the user named.
    #[error("no pinned server matches {server:?} ({known})")]
    UnknownServer { server: String, known: String },
    /// Several pinned servers match what the user named.
    #[error("{server:?} matches several servers: {matches}; name one by its id")]
    AmbiguousServer { server: String, matches: String },
    /// The server has no definition of that name.
    #[error("server {server} has no {what} named {name:?}")]
    UnknownDefinition {
        server: String,
        what: String,
        name: String,
    },
    /// The name is a definition of several kinds.
    #[error("{name:?} is a {kinds} of server {server}: say which with --kind")]
    AmbiguousDefinition {
        server: String,
        name: String,
        kinds: String,
    },
    /// Nothing to approve.
    #[error("{what} has no pending change to approve")]
    NothingPending { what: String },
    /// The pending change is not the one the user reviewed.
    #[error(
        "the pending change of {what} is {actual}, not {expected}: review it again with `diff`"
    )]
    NotReviewed {
        what: String,
        expected: String,
        actual: String,
    },
    /// Bad command-line arguments.
    #[error("{0}")]
    Usage(String),
}
