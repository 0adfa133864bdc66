//! What one turn of a session's writer puts in the files: the trail records and the journal
//! notes gathered since its last write, each file in one `write(2)`.
//!
//! # Why
//!
//! Written one by one, every call (a request and its response) cost the kernel eight system
//! calls: two journal notes (one `write` each), and for its record a turn of the trail's lock
//! (the lock file opened, `flock`ed and closed), the catch-up on the other writers (the segment
//! and the checkpoints `fstat`ed) and the line's `write`. On the small mix that was most of what
//! the plugin cost km beyond its own instructions. Gathered, a busy session pays them once per
//! [`BATCH_WAIT`], whatever the number of calls.
//!
//! # When what is gathered is written
//!
//! - At once, when the last write is at least [`BATCH_WAIT`] old: a session of a line now and
//!   then writes each line's records and notes when it handles the line, as before.
//! - Otherwise when [`BATCH_WAIT`] has passed since the last write, by the next line or event or,
//!   if none comes, by the plugin's background thread (nudged when something is left gathered);
//!   or sooner, once [`MAX_RECORDS`] records or [`MAX_BYTES`] bytes are gathered.
//! - Always at once with write-ahead (`write_ahead = true`): a line's notes and records are in
//!   the files before km forwards the line.
//! - Before a checkpoint is signed, before the session's journal is rewritten (the rewrite keeps
//!   only the calls not yet written, and a call gathered is no longer awaited), and at the
//!   session's end (km's end event, or the plugin's shutdown).
//!
//! # Order
//!
//! Records are written in the order the recorder made them, journal notes first (so that a call
//! whose settled record is in the trail had its notes written before). One write of one batch
//! under the lock: another session's records come before the batch or after it, never inside it,
//! and the hash chain and the tree run through the batch as through records written one by one
//! (the same bytes: each line is numbered and chained as it is encoded).
//!
//! # What a kill (SIGKILL, a crash) can lose
//!
//! Beyond what km's own queue to the plugin holds (see [`crate::trail`]'s durability): what was
//! gathered and not yet written, that is, what the plugin handled in the last [`BATCH_WAIT`]
//! (2 ms) of a busy session (longer only while the plugin gets no CPU), and nothing of a session
//! that is idle between lines. Of that: a request or response whose note was gathered is not in
//! the journal, so the next session cannot recover that call; a settled call's record can be
//! recovered from its journal note (written at least [`SETTLE_US`](crate::recorder::SETTLE_US)
//! before); the other records (notifications, verdicts, events) gathered are lost. What was
//! written is the kernel's: a kill cannot take it.
//!
//! # A failed write
//!
//! A write that fails leaves nothing of itself in the file ([`km_durable::AppendFile`] cuts off
//! what the kernel took), so none of the batch's records is in the trail: they are counted, and
//! the next write that succeeds begins with a `gap` record saying how many were lost
//! (`detail.lost`), in the place where they would have been. A journal write that fails loses
//! those notes (the calls are still written to the trail when they settle); both failures are
//! reported to the caller, which warns and, with write-ahead, blocks the line.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::record::{self, Actor, Record};
use crate::trail::{Entry, SessionJournal, Writer};
use crate::Error;

/// How long records and notes may be gathered after the last write before they are written.
pub const BATCH_WAIT: Duration = Duration::from_millis(2);
/// Records gathered at most before they are written.
pub const MAX_RECORDS: usize = 1024;
/// Bytes gathered at most (notes and the records' known sizes) before they are written.
pub const MAX_BYTES: usize = 1024 * 1024;
/// `detail.why` of the `gap` record written after a failed write.
pub const LOST_WHY: &str = "records could not be written to the trail";

/// A record gathered: with its JSON when already made.
#[derive(Debug)]
struct Item {
    record: Record,
    json: Option<Vec<u8>>,
}

/// What [`Batch::write`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// Records appended to the trail (a `gap` record among them).
    pub appended: usize,
    /// Records of this write lost because the trail's write failed (the next write's `gap`
    /// record counts them).
    pub lost: u64,
    /// Why the trail's write failed.
    pub trail: Option<Error>,
    /// Why the journal's write failed.
    pub journal: Option<Error>,
}

/// Records and journal notes gathered for one write each.
#[derive(Debug)]
pub struct Batch {
    items: Vec<Item>,
    /// The notes' lines, each ended by a newline.
    notes: Vec<u8>,
    bytes: usize,
    last_write: Option<Instant>,
    /// Records lost to failed writes since the last `gap` record.
    lost: u64,
    /// Write-ahead: every turn writes.
    at_once: bool,
}

impl Batch {
    /// An empty batch; with `at_once` (write-ahead), every turn writes what it gathered.
    pub fn new(at_once: bool) -> Batch {
        Batch {
            items: Vec::new(),
            notes: Vec::new(),
            bytes: 0,
            last_write: None,
            lost: 0,
            at_once,
        }
    }

    /// Gathers a record for the trail.
    pub fn record(&mut self, record: Record) {
        self.bytes += record::TYPICAL_RECORD_BYTES;
        self.items.push(Item { record, json: None });
    }

    /// Gathers a record whose JSON ([`record::to_json`]'s) is already made.
    pub fn noted(&mut self, record: Record, json: Vec<u8>) {
        self.bytes += json.len();
        self.items.push(Item {
            record,
            json: Some(json),
        });
    }

    /// Gathers a journal note: the JSON of a record ([`record::to_json`]'s, one line).
    pub fn note(&mut self, json: &[u8]) {
        self.bytes += json.len() + 1;
        self.notes.extend_from_slice(json);
        self.notes.push(b'\n');
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.notes.is_empty()
    }

    /// Records gathered.
    pub fn records(&self) -> usize {
        self.items.len()
    }

    /// Records lost to failed writes that no `gap` record has counted yet.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// When what is gathered is due to be written (`None` when nothing is).
    pub fn due_at(&self) -> Option<Instant> {
        if self.is_empty() {
            return None;
        }
        match self.last_write {
            Some(last) if !self.at_once && !self.full() => Some(last + BATCH_WAIT),
            // Never written, write-ahead, or full: now.
            _ => Some(Instant::now()),
        }
    }

    /// Whether what is gathered is due to be written at `now`.
    pub fn due(&self, now: Instant) -> bool {
        if self.is_empty() {
            return false;
        }
        self.at_once
            || self.full()
            || self
                .last_write
                .is_none_or(|last| now.saturating_duration_since(last) >= BATCH_WAIT)
    }

    fn full(&self) -> bool {
        self.items.len() >= MAX_RECORDS || self.bytes >= MAX_BYTES
    }

    /// Writes everything gathered: the notes to `journal` (dropped when there is none: the
    /// session ended), then the records to the trail, after a `gap` record if earlier writes
    /// lost some (named as `session` and `actor`).
    pub fn write(
        &mut self,
        writer: &mut Writer,
        journal: Option<&mut SessionJournal>,
        session: &str,
        actor: &Actor,
    ) -> Written {
        let mut written = Written::default();
        self.last_write = Some(Instant::now());
        self.bytes = 0;
        if !self.notes.is_empty() {
            if let Some(journal) = journal {
                if let Err(e) = journal.note_lines(&self.notes) {
                    written.journal = Some(e);
                }
            }
            self.notes.clear();
        }
        if self.items.is_empty() {
            return written;
        }
        let gap = (self.lost > 0).then(|| {
            let mut gap = Record::new("gap", record::rfc3339_us(record::now_us()), session, actor);
            gap.detail.insert("lost".into(), json!(self.lost));
            gap.detail.insert("why".into(), json!(LOST_WHY));
            gap
        });
        let mut entries = Vec::with_capacity(self.items.len() + 1);
        if let Some(gap) = &gap {
            entries.push(Entry {
                record: gap,
                json: None,
            });
        }
        entries.extend(self.items.iter().map(|item| Entry {
            record: &item.record,
            json: item.json.as_deref(),
        }));
        match writer.append_all(&entries) {
            Ok(_) => {
                written.appended = entries.len();
                self.lost = 0;
            }
            Err(e) => {
                written.lost = self.items.len() as u64;
                self.lost += written.lost;
                written.trail = Some(e);
            }
        }
        self.items.clear();
        written
    }
}

#[cfg(test)]
mod tests;
