//! What a plugin remembers of the team policies it applied: per policy, the highest version (the
//! rollback floor) and the envelope of the last one it verified, kept so that a team policy
//! stays in force when its file goes missing, is replaced by an older one, or stops verifying.
//!
//! One file per policy in the plugin's data directory, `team-policy/NAME.toml`, replaced
//! atomically under the lock `team-policy/NAME.lock` (several `km monitor` sessions apply the
//! same team policy at once). Each plugin keeps its own record, so that no plugin has to trust
//! another's; the envelope is verified again whenever it is used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How long a session waits for another one that is recording the same policy.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The record of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Applied {
    pub(crate) team: String,
    pub(crate) version: u64,
    pub(crate) payload_sha256: String,
    pub(crate) envelope: String,
}

/// The record's file and lock in `state_dir`.
pub(crate) struct StateFile {
    path: PathBuf,
    lock: PathBuf,
}

impl StateFile {
    pub(crate) fn new(state_dir: &Path, policy: &str) -> Self {
        let dir = state_dir.join("team-policy");
        StateFile {
            path: dir.join(format!("{policy}.toml")),
            lock: dir.join(format!("{policy}.lock")),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::State {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Takes the record's lock (creating its directory, 0700).
    pub(crate) fn lock(&self) -> Result<km_durable::Lock, Error> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir).map_err(|e| self.error(e))?;
        }
        km_durable::Lock::acquire(&self.lock, Some(LOCK_TIMEOUT)).map_err(|e| self.error(e))
    }

    /// The record, `None` when there is none yet.
    pub(crate) fn read(&self) -> Result<Option<Applied>, Error> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| self.error(format!("not a valid record ({e})"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Replaces the record.
    pub(crate) fn write(&self, applied: &Applied) -> Result<(), Error> {
        let text = toml::to_string(applied).map_err(|e| self.error(e))?;
        km_durable::write_atomic(&self.path, text.as_bytes(), km_durable::PRIVATE)
            .map_err(|e| self.error(e))
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
