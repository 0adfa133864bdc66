//! Events in the database, deduplicated by id, and their JSON-lines export (`--events FILE`).
//!
//! The database is the store; the export is a copy for people and tests to read: every accepted
//! event is appended to it as one JSON line (with the `customer_id` it was accepted for) inside
//! the transaction that stores it, synced before the commit, so the file never lacks an event the
//! database has accepted since the file was attached. It is a [`km_durable::AppendFile`]: a batch
//! goes in as one record, and a batch the kernel took only part of is cut off again, so the file
//! always ends on a whole line. At start the lines already in the file are imported (ids already
//! stored are skipped), which keeps what the original server did without a database: with
//! `--events FILE` alone, deduplication survives a restart. Lines that are not JSON objects with
//! a string `id` (a torn last line after a crash, say) are skipped and counted; a last line
//! without its newline gets one, so that no event is ever glued onto it.
//!
//! If a commit fails after its lines were written, those lines are in the file but not in the
//! database; the client gets an error and retries, and the retried events are appended again.
//! The file can so hold a line twice in that one case; the database never holds an id twice.

use std::io::Read as _;
use std::path::Path;

use km_durable::AppendFile;

use serde_json::Value;

use super::{now, Error, Store};

/// The open export file.
pub(crate) struct Export {
    file: AppendFile,
}

/// What importing an export file found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImportReport {
    /// Events stored that the database did not have.
    pub(crate) imported: u64,
    /// Events the database already had.
    pub(crate) known: u64,
    /// Lines that are not events.
    pub(crate) skipped: u64,
}

/// What ingesting a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IngestReport {
    pub(crate) accepted: u64,
    pub(crate) duplicates: u64,
}

/// The id of an event: a string `id` member.
pub(crate) fn event_id(event: &Value) -> Option<&str> {
    event.get("id").and_then(Value::as_str)
}

impl Store {
    /// Imports the events already in `path` (if it exists) and appends accepted events to it
    /// from now on.
    pub(crate) fn export_events_to(&self, path: &Path) -> Result<ImportReport, Error> {
        // Private: events carry the messages of MCP sessions.
        let mut file = match AppendFile::create_new(path, km_durable::PRIVATE) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                AppendFile::open_existing(path)
            }
            created => created,
        }?;
        let mut existing = Vec::new();
        file.file()
            .read_to_end(&mut existing)
            .map_err(|source| Error::EventsRead {
                path: path.display().to_string(),
                source,
            })?;
        if existing.last().is_some_and(|b| *b != b'\n') {
            file.append_durable(b"\n")?;
        }
        let report = self.write(|tx| {
            let mut report = ImportReport::default();
            let received_at = now();
            for line in existing.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event = serde_json::from_slice::<Value>(line).ok();
                let Some((event, id)) = event.as_ref().and_then(|e| event_id(e).map(|id| (e, id)))
                else {
                    report.skipped += 1;
                    continue;
                };
                let customer = event.get("customer_id").and_then(Value::as_str);
                let stored = tx.execute(
                    "INSERT INTO events (id, customer_id, received_at, event)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                    (id, customer, received_at, event.to_string()),
                )?;
                if stored == 1 {
                    report.imported += 1;
                } else {
                    report.known += 1;
                }
            }
            Ok(report)
        })?;
        self.lock().export = Some(Export { file });
        Ok(report)
    }

    /// Stores the events of one batch for `customer_id`, each unless its id is already stored,
    /// and appends the accepted ones to the export. Every event must be an object with a string
    /// `id` (the handler checks this first; here it is an error that stores nothing).
    pub(crate) fn ingest_events(
        &self,
        customer_id: &str,
        events: &[Value],
    ) -> Result<IngestReport, Error> {
        let mut inner = self.lock();
        let super::Inner { conn, export } = &mut *inner;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut report = IngestReport::default();
        let mut lines = String::new();
        let received_at = now();
        for event in events {
            let (Some(id), Some(object)) = (event_id(event), event.as_object()) else {
                return Err(Error::Invalid("every event needs a string id".into()));
            };
            let mut stored = object.clone();
            stored.insert("customer_id".into(), customer_id.into());
            let stored = Value::Object(stored).to_string();
            let inserted = tx.execute(
                "INSERT INTO events (id, customer_id, received_at, event)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                (id, customer_id, received_at, &stored),
            )?;
            if inserted == 1 {
                report.accepted += 1;
                lines.push_str(&stored);
                lines.push('\n');
            } else {
                report.duplicates += 1;
            }
        }
        if let Some(export) = export.as_mut() {
            if !lines.is_empty() {
                export.file.append_durable(lines.as_bytes())?;
            }
        }
        tx.commit()?;
        Ok(report)
    }

    /// How many events are stored.
    pub(crate) fn event_count(&self) -> Result<u64, Error> {
        self.read(|conn| super::count(conn, "SELECT count(*) FROM events"))
    }

    /// The stored event with `id`, as stored (with its `customer_id`).
    #[cfg(test)]
    pub(crate) fn event(&self, id: &str) -> Result<Option<Value>, Error> {
        use rusqlite::OptionalExtension as _;
        let text: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row("SELECT event FROM events WHERE id = ?1", [id], |r| r.get(0))
                .optional()?)
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }
}
