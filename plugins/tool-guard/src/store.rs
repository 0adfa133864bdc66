//! The pins, one JSON file per server in the plugin's data directory:
//! `servers/SERVER_ID.json`, beside its lock file `servers/SERVER_ID.lock`.
//!
//! One file per server keeps servers apart: a corrupt file stops only its own server (whose
//! lists are then blocked, with an error naming the file) and never costs another server its
//! pins. Every change is a read-modify-write under the server's lock, written with
//! `km_durable::write_atomic` (a reader sees the old file or the new one), so two `km monitor`
//! sessions of one server, or a session and `km plugin tool-guard approve`, never lose each
//! other's updates. Readers that only look (the start of a session, `list`, `diff`) read without
//! the lock.
//!
//! A file is checked whole when read: its format, that it is the server its name says, and that
//! every stored hash is the hash of its stored definition. A file that fails is reported as
//! corrupt and left exactly as it is, never overwritten (the user may repair it, or start that
//! server over with `forget`).
//!
//! ```json
//! {
//!   "format": "km-tool-guard-pins/1",
//!   "server": {
//!     "id": "9f86d081884c7d65", "label": "node server.js", "command": ["node", "server.js"],
//!     "server_info": {"name": "demo", "version": "1.2.0"},
//!     "first_seen": "2025-06-01T12:00:00Z", "last_seen": "2025-06-02T09:30:00Z"
//!   },
//!   "tools": {
//!     "echo": {
//!       "trusted": {"sha256": "...", "body_sha256": "...", "definition": {...},
//!                   "since": "2025-06-01T12:00:00Z", "by": "first use"},
//!       "pending": {"sha256": "...", "body_sha256": "...", "definition": {...},
//!                   "seen": "...", "change": "changed", "fields": ["description"],
//!                   "flags": [], "action": "block"}
//!     }
//!   },
//!   "prompts": {},
//!   "resource_templates": {}
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{Definition, Kind};
use crate::policy::Action;
use crate::Error;

/// The format of a pin file.
pub(crate) const FORMAT: &str = "km-tool-guard-pins/1";

/// The largest pin file read (a server with thousands of large tools stays far below).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Who or what made a definition trusted.
pub(crate) const BY_FIRST_USE: &str = "first use";
pub(crate) const BY_USER: &str = "user";
pub(crate) const BY_POLICY: &str = "policy";

/// What kind of change a pending definition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Change {
    /// Seen in the server's first session.
    FirstUse,
    /// Added to a known server.
    New,
    /// Differs from its pin.
    Changed,
}

impl Change {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Change::FirstUse => "first-use",
            Change::New => "new",
            Change::Changed => "changed",
        }
    }
}

/// A trusted definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pinned {
    pub(crate) sha256: String,
    pub(crate) body_sha256: String,
    pub(crate) definition: Value,
    /// When it became trusted (RFC 3339).
    pub(crate) since: String,
    /// `first use`, `user`, `policy`, or the team approval.
    pub(crate) by: String,
}

/// A definition seen but not trusted: held (`action` block) or let through with a warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pending {
    pub(crate) sha256: String,
    pub(crate) body_sha256: String,
    pub(crate) definition: Value,
    /// When it was last seen.
    pub(crate) seen: String,
    pub(crate) change: Change,
    /// The members that differ from the trusted definition.
    #[serde(default)]
    pub(crate) fields: Vec<String>,
    /// What the detectors flagged (`rule at path`).
    #[serde(default)]
    pub(crate) flags: Vec<String>,
    pub(crate) action: Action,
}

/// Everything known about one definition name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trusted: Option<Pinned>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pending: Option<Pending>,
    /// Since when the server no longer lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) missing_since: Option<String>,
}

impl Pin {
    /// Whether it is held: a pending change that policy blocks.
    pub(crate) fn is_held(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.action == Action::Block)
    }
}

/// What identifies the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerRecord {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_info: Option<Value>,
    pub(crate) first_seen: String,
    pub(crate) last_seen: String,
}

impl ServerRecord {
    /// `serverInfo.name`, if the server reported one.
    pub(crate) fn info_name(&self) -> Option<&str> {
        self.server_info.as_ref()?.get("name")?.as_str()
    }
}

/// One server's pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerPins {
    pub(crate) format: String,
    pub(crate) server: ServerRecord,
    #[serde(default)]
    pub(crate) tools: BTreeMap<String, Pin>,
    #[serde(default)]
    pub(crate) prompts: BTreeMap<String, Pin>,
    #[serde(default)]
    pub(crate) resource_templates: BTreeMap<String, Pin>,
}

impl ServerPins {
    /// An empty record for `server`.
    pub(crate) fn new(server: ServerRecord) -> Self {
        ServerPins {
            format: FORMAT.to_owned(),
            server,
            tools: BTreeMap::new(),
            prompts: BTreeMap::new(),
            resource_templates: BTreeMap::new(),
        }
    }

    pub(crate) fn of(&self, kind: Kind) -> &BTreeMap<String, Pin> {
        match kind {
            Kind::Tool => &self.tools,
            Kind::Prompt => &self.prompts,
            Kind::ResourceTemplate => &self.resource_templates,
        }
    }

    pub(crate) fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Pin> {
        match kind {
            Kind::Tool => &mut self.tools,
            Kind::Prompt => &mut self.prompts,
            Kind::ResourceTemplate => &mut self.resource_templates,
        }
    }

    /// Every pin, with its kind.
    pub(crate) fn all(&self) -> impl Iterator<Item = (Kind, &String, &Pin)> {
        Kind::ALL
            .into_iter()
            .flat_map(move |kind| self.of(kind).iter().map(move |(n, p)| (kind, n, p)))
    }

    /// Checks what [`Store::read`] promises about a file.
    fn check(&self, id: &str) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format is {:?}, this tool-guard reads {FORMAT:?}",
                self.format
            ));
        }
        if self.server.id != id {
            return Err(format!("it holds server {:?}, not {id:?}", self.server.id));
        }
        for (kind, name, pin) in self.all() {
            let stored = pin
                .trusted
                .iter()
                .map(|t| ("trusted", &t.definition, &t.sha256, &t.body_sha256))
                .chain(
                    pin.pending
                        .iter()
                        .map(|p| ("pending", &p.definition, &p.sha256, &p.body_sha256)),
                );
            for (which, definition, sha256, body_sha256) in stored {
                let computed = Definition::from_stored(kind, definition).ok_or_else(|| {
                    format!("{kind} {name:?}: the {which} definition has no name")
                })?;
                if computed.name != *name {
                    return Err(format!(
                        "{kind} {name:?}: the {which} definition is named {:?}",
                        computed.name
                    ));
                }
                if computed.sha256 != *sha256 || computed.body_sha256 != *body_sha256 {
                    return Err(format!(
                        "{kind} {name:?}: the {which} hash is not the hash of its definition"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` is a server id as the SDK makes them: 16 lower-case hex digits.
pub(crate) fn is_server_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pin files.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    /// The pins under `data_dir/servers`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Store {
            dir: data_dir.join("servers"),
        }
    }

    /// The pin file of server `id`.
    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    /// Server `id`'s pins; `None` when it has no file.
    pub(crate) fn read(&self, id: &str) -> Result<Option<ServerPins>, Error> {
        let path = self.path(id);
        let bytes = match read_capped(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    path,
                    message: e.to_string(),
                })
            }
        };
        let pins: ServerPins = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        pins.check(id)
            .map_err(|reason| Error::Corrupt { path, reason })?;
        Ok(Some(pins))
    }

    /// Changes server `id`'s pins under its lock: `change` gets what the file holds now and
    /// changes it in place; the file is replaced when the value changed (`None` afterwards
    /// removes it). A corrupt file is an error and is left alone.
    pub(crate) fn update<R>(
        &self,
        id: &str,
        timeout: Duration,
        change: impl FnOnce(&mut Option<ServerPins>) -> R,
    ) -> Result<R, Error> {
        create_private_dir(&self.dir).map_err(|e| Error::Io {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        let _lock = km_durable::Lock::acquire(&self.lock_path(id), Some(timeout))?;
        let before = self.read(id)?;
        let mut pins = before.clone();
        let result = change(&mut pins);
        if pins != before {
            let path = self.path(id);
            match &pins {
                Some(pins) => {
                    let mut text = serde_json::to_vec_pretty(pins).map_err(|e| Error::Io {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                    text.push(b'\n');
                    km_durable::write_atomic(&path, &text, km_durable::PRIVATE)?;
                }
                None => match std::fs::remove_file(&path) {
                    Ok(()) => km_durable::sync_dir(&self.dir)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::Io {
                            path,
                            message: e.to_string(),
                        })
                    }
                },
            }
        }
        Ok(result)
    }

    /// Removes server `id`'s pin file, corrupt or not; whether there was one.
    pub(crate) fn forget(&self, id: &str, timeout: Duration) -> Result<bool, Error> {
        if !self.dir.exists() {
            return Ok(false);
        }
        let _lock = km_durable::Lock::acquire(&self.lock_path(id), Some(timeout))?;
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                km_durable::sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// The ids of every server with a pin file, sorted.
    pub(crate) fn ids(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Io {
                    path: self.dir.clone(),
                    message: e.to_string(),
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                is_server_id(id).then(|| id.to_owned())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests;
