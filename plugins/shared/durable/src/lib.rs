//! Durable files for km and its plugins: the one way in this workspace to replace a file, to
//! take a lock file, to append a journal record, and to name bytes by their SHA-256.
//!
//! km keeps its state in small files that several processes read and write at once (one
//! `km monitor` per MCP server, plus `km install-plugin`, plus every plugin's own state in its
//! data directory). Each of those files must survive a crash or a full disk whole: a reader sees
//! the old content or the new, never half of either, and never a secret that was briefly
//! readable by others. This crate holds the mechanisms, so that every writer gets the same
//! guarantees:
//!
//! - [`write_atomic`] / [`write_new`]: a temporary file in the same directory, created with
//!   `O_CREAT | O_EXCL` and an explicit mode, written, fsynced, renamed over the target (or
//!   linked, when an existing file must not be replaced), then the directory fsynced. The
//!   temporary is removed on every failure. [`stage`] splits the same steps for a caller that
//!   commits several files in an order of its own (the plugin installer).
//! - [`Lock`]: an exclusive advisory `flock` on a lock file, blocking (with an optional timeout)
//!   or tried once.
//! - [`AppendFile`]: an `O_APPEND` file that takes whole records, each in one `write`, undone if
//!   it could not be written whole, synced with `fdatasync` when the caller asks.
//! - [`digest`]: SHA-256 in lower-case hex, and the plain hex encoder, so that no crate writes
//!   its own.
//!
//! The crate is small and free of the signing library on purpose: km, `km-sign` and the plugin
//! cdylibs (through the SDK) all link it. Errors are one [`Error`] enum that names the path and
//! what was being done to it.
//!
//! Unix only (rename, link, flock and fsync semantics as Linux and the BSDs give them).
//!
//! # What is NOT guaranteed
//!
//! - A file system that does not honour fsync (some network and FUSE file systems) gives only
//!   what it gives; a directory fsync refused as unsupported (`EINVAL`) is not an error.
//! - Locks are advisory: they exclude only processes that take the same lock.
//! - Temporary files of a process that was killed mid-write stay behind (never under the
//!   target's name); [`is_temporary`] recognises them so that their owner can sweep them up
//!   under its lock.

#![forbid(unsafe_code)]

mod append;
mod atomic;
pub mod digest;
mod error;
mod lock;
/// Test support (running one test in a child process with a file size limit), for km-durable's
/// tests and, through the `test-support` feature, those of crates that write through it.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;

pub use append::AppendFile;
pub use atomic::{is_temporary, stage, sync_dir, write_atomic, write_new, Staged};
pub use error::Error;
pub use lock::Lock;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Mode of files only the user may read: secrets, state, lock files.
pub const PRIVATE: u32 = 0o600;
/// Mode of files anyone may read but only the user may write: public keys, signatures,
/// libraries.
pub const PUBLIC: u32 = 0o644;
