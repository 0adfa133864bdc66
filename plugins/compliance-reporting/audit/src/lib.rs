//! The formats of km's audit trail that more than one party must agree on: the RFC 6962 Merkle
//! tree over the records ([`merkle`]) and the signed checkpoints of that tree ([`checkpoint`]).
//!
//! The compliance-reporting plugin writes the trail and signs checkpoints; the Kilometers API
//! (and the reference API server of the tests) witnesses them: it keeps each installation's
//! checkpoints, checks their signatures and checks, with a consistency proof, that each new one
//! extends the last one it holds, so a rewrite of the whole local trail is caught against a copy
//! the rewriter cannot reach. An auditor's tool needs the same two modules and nothing else.
//!
//! No I/O here: the plugin owns its files, the API its database.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod merkle;

pub use checkpoint::{
    key_id, parse_hash, verify_report, AuditKey, Checkpoint, SignedCheckpoint, SignedCheckpointJson,
};
pub use merkle::{
    empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion, Frontier, Hash, Tree,
};

/// What went wrong with a tree, a proof, a checkpoint or a key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request needs records before the tree's pruned (or unread) prefix.
    #[error("the tree holds only records from #{base} on (#{requested} was pruned)")]
    Pruned {
        /// The size or index asked for.
        requested: u64,
        /// The size of the prefix known only by its compact range.
        base: u64,
    },
    /// The request goes beyond the tree.
    #[error("the tree has {size} records (asked for {requested})")]
    BeyondTree {
        /// The size or index asked for.
        requested: u64,
        /// The tree's size.
        size: u64,
    },
    /// A compact range with the wrong number of peaks for its size.
    #[error("a compact range of {size} records has {expected} peaks, not {actual}")]
    BadFrontier {
        /// Its size.
        size: u64,
        /// The peaks it must have.
        expected: usize,
        /// The peaks it has.
        actual: usize,
    },
    /// A proof that does not verify.
    #[error("the proof does not verify: {0}")]
    BadProof(&'static str),
    /// A checkpoint text that is not in the exact form.
    #[error("not a valid checkpoint ({0})")]
    BadCheckpoint(&'static str),
    /// A signature that does not verify with the key.
    #[error("the signature does not verify with the audit key")]
    BadSignature,
    /// A checkpoint names another key than the one it is checked with.
    #[error("signed by audit key {actual}, not {expected}")]
    WrongKey {
        /// The id of the key checked with.
        expected: String,
        /// The id the checkpoint names.
        actual: String,
    },
    /// A key that cannot be made or read.
    #[error("audit key: {0}")]
    Key(&'static str),
}
