//! What happened outside any `km monitor` session that plugins should hear of: installs,
//! updates and removals of plugins (host events), and events plugins emitted from their commands
//! (an approval made with `km plugin tool-guard approve`). An audit trail must learn of them,
//! and no session was running to hand them over.
//!
//! They are appended to `KM_HOME/state/events.jsonl` under a lock, each with an id and a
//! sequence number, and each `km monitor` session hands every plugin the entries it has not been
//! handed yet (its cursor is kept in `state/events-cursors.json`), before the first message:
//! host entries as `host` stream events, plugin entries as `plugin` stream events, both with
//! their `id` and `time` added to the data. Delivery is at least once (two sessions starting at
//! once may both deliver an entry); plugins that must not count twice deduplicate by `id`. The
//! file keeps the last [`KEEP`] entries.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::home::KmHome;

/// Entries kept once the file grows past twice this many.
pub const KEEP: usize = 1000;

/// The largest journal read.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique id (hex).
    pub id: String,
    /// Increasing number in this `KM_HOME`.
    pub seq: u64,
    /// When: milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// `host` or `plugin`.
    pub kind: String,
    /// For `plugin`: who emitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// For `plugin`: the event's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_kind: Option<String>,
    /// The event's data (for `host`, with its `event`).
    pub data: Map<String, Value>,
}

impl Entry {
    /// The stream event's data: the entry's data with `id` and `time` (for plugin events,
    /// wrapped like a live one: `{plugin, kind, data, id, time}`).
    pub fn event_data(&self) -> Value {
        match self.kind.as_str() {
            "plugin" => serde_json::json!({
                "plugin": self.plugin,
                "kind": self.event_kind,
                "data": self.data,
                "id": self.id,
                "time": self.time_ms,
            }),
            _ => {
                let mut data = self.data.clone();
                data.insert("id".into(), self.id.clone().into());
                data.insert("time".into(), self.time_ms.into());
                Value::Object(data)
            }
        }
    }
}

fn file(home: &KmHome) -> PathBuf {
    home.state_dir().join("events.jsonl")
}

fn cursors_file(home: &KmHome) -> PathBuf {
    home.state_dir().join("events-cursors.json")
}

fn lock(home: &KmHome) -> Result<km_durable::Lock> {
    KmHome::ensure_private_dir(&home.state_dir())?;
    Ok(km_durable::Lock::acquire(
        &home.state_dir().join("events.lock"),
        Some(std::time::Duration::from_secs(10)),
    )?)
}

/// Reads every entry; lines that do not parse (a torn last line) are skipped. The journal is
/// read with StrictModes (see `crate::strict`): plugins act on what it says.
fn read(home: &KmHome) -> Result<Vec<Entry>> {
    let path = file(home);
    let Some(bytes) = crate::strict::read_file(&path, MAX_BYTES, "event journal")? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// Appends an entry (`kind`, `plugin`, `event_kind`, `data`), keeping the last `keep` once
/// there are twice as many.
fn append(
    home: &KmHome,
    kind: &str,
    plugin: Option<&str>,
    event_kind: Option<&str>,
    data: Map<String, Value>,
    keep: usize,
) -> Result<()> {
    let _lock = lock(home)?;
    let mut entries = read(home)?;
    let seq = entries.last().map_or(1, |e| e.seq + 1);
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| anyhow::anyhow!("no system randomness for an event id"))?;
    entries.push(Entry {
        id: km_durable::digest::hex(&random),
        seq,
        time_ms: crate::monitor::now_ms(),
        kind: kind.to_owned(),
        plugin: plugin.map(str::to_owned),
        event_kind: event_kind.map(str::to_owned),
        data,
    });
    if entries.len() > 2 * keep {
        entries.drain(..entries.len() - keep);
    }
    let mut text = String::new();
    for entry in &entries {
        text.push_str(&serde_json::to_string(entry)?);
        text.push('\n');
    }
    km_durable::write_atomic(&file(home), text.as_bytes(), km_durable::PRIVATE)?;
    Ok(())
}

/// Records a host event (`data` has its `event`: installed, updated, uninstalled).
pub fn host(home: &KmHome, data: Value) -> Result<()> {
    let Value::Object(data) = data else {
        anyhow::bail!("a host event is a JSON object");
    };
    append(home, "host", None, None, data, KEEP)
}

/// Records an event `plugin` emitted outside a session.
pub fn plugin(home: &KmHome, plugin: &str, kind: &str, data: Map<String, Value>) -> Result<()> {
    append(home, "plugin", Some(plugin), Some(kind), data, KEEP)
}

/// The bus's sink outside a session: what plugins emit is journaled for the next one.
#[derive(Debug)]
pub struct JournalSink {
    home: KmHome,
}

impl JournalSink {
    /// Journals into `home`.
    pub fn new(home: KmHome) -> std::sync::Arc<Self> {
        std::sync::Arc::new(JournalSink { home })
    }
}

impl crate::events::EventSink for JournalSink {
    fn plugin_event(&self, event: crate::events::PluginEvent) {
        if let Err(e) = plugin(&self.home, &event.plugin, &event.kind, event.data) {
            eprintln!(
                "km: warning: cannot journal an event of plugin {}: {e:#}",
                event.plugin
            );
        }
    }
}

/// The entries `plugin` has not been handed yet, and marks them handed. Entries `plugin`
/// emitted itself are not handed back to it.
pub fn take_pending(home: &KmHome, plugin: &str) -> Result<Vec<Entry>> {
    let _lock = lock(home)?;
    let entries = read(home)?;
    let path = cursors_file(home);
    let mut cursors: BTreeMap<String, u64> =
        match crate::strict::read_file(&path, MAX_BYTES, "event journal cursors")? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => BTreeMap::new(),
        };
    let cursor = cursors.get(plugin).copied().unwrap_or(0);
    let pending: Vec<Entry> = entries
        .into_iter()
        .filter(|e| e.seq > cursor && e.plugin.as_deref() != Some(plugin))
        .collect();
    let last = read(home)?.last().map_or(cursor, |e| e.seq);
    if last != cursor {
        cursors.insert(plugin.to_owned(), last);
        km_durable::write_atomic(&path, &serde_json::to_vec(&cursors)?, km_durable::PRIVATE)?;
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_plugin_hears_each_entry_once_and_not_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        host(
            &home,
            serde_json::json!({"event": "installed", "plugin": "a"}),
        )
        .expect("host");
        let mut data = Map::new();
        data.insert("tool".into(), "x".into());
        plugin(&home, "guard", "approved", data).expect("plugin");
        let audit = take_pending(&home, "audit").expect("pending");
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[0].event_data()["event"], "installed");
        assert_eq!(audit[1].event_data()["kind"], "approved");
        assert!(take_pending(&home, "audit").expect("again").is_empty());
        let guard = take_pending(&home, "guard").expect("guard");
        assert_eq!(guard.len(), 1, "not its own event");
        assert_ne!(audit[0].id, audit[1].id);
    }

    #[test]
    fn the_journal_stays_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        for i in 0..11 {
            let mut data = Map::new();
            data.insert("n".into(), i.into());
            append(&home, "host", None, None, data, 3).expect("append");
        }
        let entries = read(&home).expect("read");
        assert!(entries.len() <= 6, "{}", entries.len());
        assert_eq!(entries.last().map(|e| e.seq), Some(11));
    }
}
