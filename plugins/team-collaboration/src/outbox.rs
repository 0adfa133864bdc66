//! What waits to be sent to the API: session summaries and this member's approvals, one file
//! each in the data directory's `outbox/`, written before anything is sent and removed once the
//! API has answered. A session that ends while the API is down, or whose end km does not wait
//! for, loses nothing: the next sync (at the next start or refresh, or command) sends it. The
//! API stores each summary and approval once (by member and session id, by signed payload), so
//! sending one twice (two km processes flushing at once) is harmless.
//!
//! Bounded: at most [`MAX_ITEMS`] files wait; beyond that, new ones are dropped with a warning
//! (a machine cut off from the API for months must not fill its disk).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The most files that wait.
pub(crate) const MAX_ITEMS: usize = 1000;

/// One thing to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Item {
    /// A session summary.
    Session {
        /// The summary (`id`, `ended_at`, ...).
        summary: Value,
    },
    /// An approval this member made locally (with tool-guard), to sign and share if the
    /// member's role allows.
    Approval {
        /// The policy (plugin) it is for.
        policy: String,
        /// What is approved: the plugin's approval fields.
        body: String,
        /// When it was made (RFC 3339): part of the signed payload, so that signing it again
        /// gives the same approval.
        issued_at: String,
        /// For the log: what it approves.
        what: String,
    },
}

/// The outbox directory.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox in `data_dir`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Outbox {
            dir: data_dir.join("outbox"),
        }
    }

    fn error(&self, path: &Path, e: impl std::fmt::Display) -> Error {
        let _ = self;
        Error::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Puts `item` in the outbox as `name` (a file name stem of `[a-z0-9-]`); the same name
    /// twice is one item. `Ok(false)` when the outbox is full.
    pub(crate) fn put(&self, name: &str, item: &Item) -> Result<bool, Error> {
        if self.list_paths().len() >= MAX_ITEMS {
            return Ok(false);
        }
        create_private_dir(&self.dir).map_err(|e| self.error(&self.dir, e))?;
        let path = self.dir.join(format!("{name}.json"));
        let bytes = serde_json::to_vec(item).map_err(|e| self.error(&path, e))?;
        km_durable::write_atomic(&path, &bytes, km_durable::PRIVATE)
            .map_err(|e| self.error(&path, e))?;
        Ok(true)
    }

    fn list_paths(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
    }

    /// Everything waiting, oldest name first; files that do not read are returned as errors
    /// (and left in place for a person to look at).
    pub(crate) fn items(&self) -> Vec<(PathBuf, Result<Item, Error>)> {
        self.list_paths()
            .into_iter()
            .map(|path| {
                let item = std::fs::read(&path)
                    .map_err(|e| self.error(&path, e))
                    .and_then(|bytes| {
                        serde_json::from_slice(&bytes).map_err(|e| self.error(&path, e))
                    });
                (path, item)
            })
            .collect()
    }

    /// Removes a sent item.
    pub(crate) fn remove(&self, path: &Path) {
        // Another process may have sent and removed it already.
        let _ = std::fs::remove_file(path);
    }

    /// How many session summaries and approvals wait.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for (_, item) in self.items() {
            match item {
                Ok(Item::Session { .. }) => counts.0 += 1,
                Ok(Item::Approval { .. }) => counts.1 += 1,
                Err(_) => {}
            }
        }
        counts
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_wait_in_name_order_once_each_and_leave_when_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::new(dir.path());
        assert!(outbox.items().is_empty());
        let session = Item::Session {
            summary: serde_json::json!({"id": "s1", "ended_at": 1}),
        };
        assert!(outbox.put("session-s1", &session).expect("puts"));
        assert!(outbox.put("session-s1", &session).expect("puts again"));
        let approval = Item::Approval {
            policy: "tool-guard".into(),
            body: "name = \"x\"\n".into(),
            issued_at: "2025-06-01T00:00:00Z".into(),
            what: "tool x".into(),
        };
        assert!(outbox.put("approval-0a", &approval).expect("puts"));
        assert_eq!(outbox.counts(), (1, 1));
        let items = outbox.items();
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[0].1, Ok(Item::Approval { .. })));
        std::fs::write(dir.path().join("outbox/zz.json"), "{").expect("write");
        assert!(outbox.items()[2].1.is_err());
        outbox.remove(&items[0].0);
        outbox.remove(&items[0].0);
        assert_eq!(outbox.counts(), (1, 0));
    }
}
