//! What the plugin remembers between sessions, in its data directory: the membership the API
//! last confirmed, the outcome of the last sync, the policy versions in force. For `status`, for
//! the `member` event at the start of a session, and for deciding whether a local approval is
//! worth signing; never for a trust decision (those are the team files', verified every time).
//!
//! `state.json` (0600), replaced atomically; syncs take `sync.lock` first, so two km processes
//! never interleave a read and a write of it, nor of the team files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How long a sync waits for another process's.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The remembered state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct State {
    /// The team of the trust file at the last sync.
    pub(crate) team: Option<String>,
    /// The member id and role the API confirmed.
    pub(crate) member: Option<String>,
    pub(crate) role: Option<String>,
    /// The id of the member key the API has for this member.
    pub(crate) registered_key: Option<String>,
    /// When the last sync was tried, and when one last succeeded (seconds since the epoch).
    pub(crate) last_attempt: Option<i64>,
    pub(crate) last_success: Option<i64>,
    /// Why the last sync failed, if it did.
    pub(crate) last_error: Option<String>,
    /// The version of each team policy in force on this machine (as this plugin wrote it).
    pub(crate) versions: BTreeMap<String, u64>,
    /// How many shared approvals each approvals file holds.
    pub(crate) approvals: BTreeMap<String, usize>,
    /// What the last sync refused (a bundle by another key, an older version...).
    pub(crate) problems: Vec<String>,
}

fn file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl State {
    /// The state in `dir`; the default when there is none or it does not read (it is a record
    /// for people, rebuilt by the next sync).
    pub(crate) fn load(dir: &Path) -> State {
        std::fs::read(file(dir))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Replaces the state in `dir`.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = file(dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        km_durable::write_atomic(&path, &bytes, km_durable::PRIVATE).map_err(|e| Error::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Whether the remembered role may approve for the team.
    pub(crate) fn may_approve(&self) -> bool {
        matches!(self.role.as_deref(), Some("approver" | "admin"))
    }
}

/// Takes the sync lock of `dir`.
pub(crate) fn lock(dir: &Path) -> Result<km_durable::Lock, Error> {
    let path = dir.join("sync.lock");
    km_durable::Lock::acquire(&path, Some(LOCK_TIMEOUT)).map_err(|e| Error::File {
        path: path.display().to_string(),
        message: format!("another km is syncing with the team ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_broken_file_reads_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(State::load(dir.path()), State::default());
        let state = State {
            team: Some("acme".into()),
            role: Some("approver".into()),
            versions: [("tool-guard".to_owned(), 3)].into(),
            ..State::default()
        };
        state.save(dir.path()).expect("saves");
        assert_eq!(State::load(dir.path()), state);
        assert!(state.may_approve());
        std::fs::write(dir.path().join("state.json"), "{").expect("write");
        assert_eq!(State::load(dir.path()), State::default());
        let _held = lock(dir.path()).expect("locks");
    }
}
