//! The one error type of km-policy. Every variant names the file it is about (a policy name
//! under `KM_HOME/policies/`, or a path in the plugin's data directory) and what is wrong with
//! it, in words a user can act on. Verification failures say which check failed, never why the
//! cryptography refused (one opaque [`Error::BadSignature`]).

use std::path::PathBuf;

/// What went wrong while reading, verifying or recording a policy.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A policy name is not one km accepts (`NAME.toml` or `team/NAME.toml`, of `[a-z0-9._-]`).
    #[error("policy name {name:?} is not valid: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// km could not read the policy file (it refused its owner or mode, or an I/O error).
    #[error("reading policy {file}: {message}")]
    Read {
        /// The file, relative to `KM_HOME/policies/`.
        file: String,
        /// km's answer.
        message: String,
    },
    /// The file is not valid TOML, or does not have the shape the policy needs (an unknown
    /// key, a value of the wrong type). The message carries TOML's line and column.
    #[error("policy {file} is not valid: {message}")]
    Parse {
        /// The file, relative to `KM_HOME/policies/` (for a team bundle: its payload).
        file: String,
        /// What the parser said.
        message: String,
    },
    /// The team trust file (`team/trust.toml`) is not usable.
    #[error("team trust file {file} is not valid: {reason}")]
    Trust {
        /// The file, relative to `KM_HOME/policies/`.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A team bundle is not a well-formed envelope (payload type, base64, signature list).
    #[error("team policy {file} is malformed: {reason}")]
    Envelope {
        /// The file, relative to `KM_HOME/policies/`.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// No signature of the bundle is by an admin key of the team's trust file.
    #[error(
        "team policy {file} is not signed by an admin key of team {team} (signed by: {signers})"
    )]
    UntrustedSigner {
        /// The file.
        file: String,
        /// The team of the trust file.
        team: String,
        /// The key ids the bundle names, comma-separated (`none` when it names none).
        signers: String,
    },
    /// A signature by a trusted key does not verify: the payload was altered, or the signature
    /// is not one.
    #[error("team policy {file}: the signature of admin key {key_id} does not verify")]
    BadSignature {
        /// The file.
        file: String,
        /// The trusted key whose signature failed.
        key_id: String,
    },
    /// The signed payload's `bundle` header is missing or invalid.
    #[error("team policy {file}: {reason}")]
    Header {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The bundle is for another team than the trust file's.
    #[error("team policy {file} is for team {found}, but this machine is in team {expected}")]
    WrongTeam {
        /// The file.
        file: String,
        /// The trust file's team.
        expected: String,
        /// The bundle's.
        found: String,
    },
    /// The bundle is for another policy than the file it was found in (a bundle for one
    /// plugin copied over another's).
    #[error("team policy {file} holds the policy {found:?}, not {expected:?}")]
    WrongPolicy {
        /// The file.
        file: String,
        /// The policy the file name says.
        expected: String,
        /// The policy the signed header says.
        found: String,
    },
    /// The bundle is older than one already applied on this machine (rollback).
    #[error(
        "team policy {file} is version {offered}, older than version {applied} already applied: refused (rollback)"
    )]
    Rollback {
        /// The file.
        file: String,
        /// The highest version applied so far.
        applied: u64,
        /// The bundle's version.
        offered: u64,
    },
    /// The bundle has the version of one already applied, with other content: two different
    /// policies were signed under one version number.
    #[error(
        "team policy {file} is version {version} but differs from the version {version} already applied: refused"
    )]
    Equivocation {
        /// The file.
        file: String,
        /// The version.
        version: u64,
    },
    /// A team policy applied before has disappeared from `KM_HOME/policies/team/`; the last
    /// verified version stays in force (a deletion must not loosen the team's rules).
    #[error("team policy {file} is missing; version {version} applied before stays in force")]
    Missing {
        /// The file.
        file: String,
        /// The version that stays in force.
        version: u64,
    },
    /// The record of applied team policies in the plugin's data directory could not be read
    /// or written.
    #[error("team policy state {}: {message}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file of shared approvals exists but no verified roster (`team/roster.toml`) says whose
    /// keys may sign them.
    #[error("team approvals {file} cannot be verified: the team has no verified roster (team/roster.toml)")]
    NoRoster {
        /// The approvals file.
        file: String,
    },
    /// A shared approval is not signed by a roster member with the role it needs.
    #[error(
        "approval {index} of {file} is not signed by a team member with the {role} role (signed by: {signers})"
    )]
    NotApproved {
        /// The approvals file.
        file: String,
        /// The approval's place in the file (from 0).
        index: usize,
        /// The role it needs.
        role: String,
        /// The key ids it names.
        signers: String,
    },
    /// A shared approval is malformed, its member's signature does not verify, or it is for
    /// another team, policy or member than its signer.
    #[error("approval {index} of {file} is refused: {reason}")]
    BadApproval {
        /// The approvals file.
        file: String,
        /// The approval's place in the file (from 0).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Sealing a bundle failed (the signer refused, or the payload is not what a bundle needs).
    #[error("sealing team policy: {reason}")]
    Seal {
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// The policy file (relative to `KM_HOME/policies/`) or state path the error is about.
    pub fn file(&self) -> String {
        match self {
            Error::BadName { name, .. } => name.clone(),
            Error::Read { file, .. }
            | Error::Parse { file, .. }
            | Error::Trust { file, .. }
            | Error::Envelope { file, .. }
            | Error::UntrustedSigner { file, .. }
            | Error::BadSignature { file, .. }
            | Error::Header { file, .. }
            | Error::WrongTeam { file, .. }
            | Error::WrongPolicy { file, .. }
            | Error::Rollback { file, .. }
            | Error::Equivocation { file, .. }
            | Error::Missing { file, .. }
            | Error::NoRoster { file }
            | Error::NotApproved { file, .. }
            | Error::BadApproval { file, .. } => file.clone(),
            Error::State { path, .. } => path.display().to_string(),
            Error::Seal { .. } => String::new(),
        }
    }
}
