//! Events in the database, deduplicated by id, and their JSON-lines export (`--events FILE`).
//!
//! The database is the store; the export is a copy for people and tests to read: every accepted
//! event is appended to it as one JSON line (with the `customer_id` it was accepted for) inside
//! the transaction that stores it, fsynced before the commit, so the file never lacks an event the
//! database has accepted since the file was attached. At start the lines already in the file are
//! imported (ids already stored are skipped), which keeps what the original server did without a
//! database: with `--events FILE` alone, deduplication survives a restart. Lines that are not
//! JSON objects with a string `id` (a torn last line after a crash, say) are skipped and counted.
//!
//! If a commit fails after its lines were written, those lines are in the file but not in the
//! database; the client gets an error and retries, and the retried events are appended again.
//! The file can so hold a line twice in that one case; the database never holds an id twice.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{now, Error, Store};

/// The open export file.
pub(crate) struct Export {
    file: File,
    path: PathBuf,
    /// The file does not end with a newline (a torn line, or a failed write): the next append
    /// starts with one, so that no event is glued onto a broken line.
    needs_newline: bool,
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

fn events_file_error(path: &Path, source: std::io::Error) -> Error {
    Error::EventsFile {
        path: path.display().to_string(),
        source,
    }
}

/// The id of an event: a string `id` member.
pub(crate) fn event_id(event: &Value) -> Option<&str> {
    event.get("id").and_then(Value::as_str)
}

impl Store {
    /// Imports the events already in `path` (if it exists) and appends accepted events to it
    /// from now on.
    pub(crate) fn export_events_to(&self, path: &Path) -> Result<ImportReport, Error> {
        let mut existing = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut existing)
                    .map_err(|e| events_file_error(path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(events_file_error(path, e)),
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| events_file_error(path, e))?;
        self.lock().export = Some(Export {
            file,
            path: path.to_path_buf(),
            needs_newline: existing.last().is_some_and(|b| *b != b'\n'),
        });
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
                export.append(&lines)?;
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

impl Export {
    fn append(&mut self, lines: &str) -> Result<(), Error> {
        let mut bytes = Vec::with_capacity(lines.len() + 1);
        if self.needs_newline {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(lines.as_bytes());
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        // After a failure the file may end in a partial line, whatever was written before.
        self.needs_newline = written.is_err();
        written.map_err(|e| events_file_error(&self.path, e))
    }
}
