//! The audit trail on disk: segments of records, the signed checkpoints, one writer at a time
//! across every `km monitor` of the installation, and what is done about a writer that died.
//!
//! # Files (`trail/` in the plugin's data directory, mode 0700)
//!
//! - `seg-<start>.jsonl` (16 digits): a segment. Its first line is a header
//!   `{"km_audit_segment":1,"start":N,"peaks":[hex...],"last":hex,"created":RFC3339}`: the index
//!   of its first record, the compact range of the tree before it, and the leaf hash of the
//!   record before it. Then one record per line (see [`crate::record`]). A segment that is
//!   complete ends with `{"km_audit_segment_end":M}`, M being the start of the next one. A new
//!   segment starts only right after a checkpoint, so that every segment boundary is covered by a
//!   signed checkpoint: retention deletes whole segments from the oldest, and the oldest one left
//!   is anchored by that checkpoint.
//! - `checkpoints.jsonl`: one signed checkpoint per line,
//!   `{"checkpoint":TEXT,"signature":B64,"from":M,"proof":[hex...]}`, with the RFC 6962
//!   consistency proof from the previous checkpoint (size M), so that the chain of checkpoints
//!   verifies even where the records are gone.
//! - `lock`: every writer holds this lock (km-durable's `Lock`) while it appends, checkpoints,
//!   rotates or prunes, and first reads what the others appended since its last turn. So several
//!   sessions write one tree, in one order, without a daemon.
//! - `torn/`: the bytes of torn records that were cut off, kept as evidence.
//! - `sessions/<session>.lock` and `.pending`: each running session holds its lock and appends
//!   the calls it has not written yet (metadata only: a request waiting for its response, a call
//!   settling). A session that finds another's lock free (its km was killed) writes that
//!   session's calls from it, the unanswered ones as such, and its abnormal end. The journal
//!   is rewritten with only the calls still unwritten whenever it has grown by
//!   [`JOURNAL_COMPACT_BYTES`] (or by three times what that left, if more), so that a session
//!   of any length keeps a journal of about the size of what it awaits.
//!
//! # Durability
//!
//! Records reach the segment in `write(2)`s on an `O_APPEND` file of whole records, each write
//! holding what the session gathered since its last one ([`Writer::append_all`]): at once when
//! the plugin handles a line of a session that is idle between lines, and always with
//! write-ahead; within [`BATCH_WAIT`](crate::batch::BATCH_WAIT) (2 ms) of the last write while
//! lines come faster (see [`crate::batch`], which says exactly what a kill can lose of what is
//! gathered). A call settles first, [`SETTLE_US`](crate::recorder::SETTLE_US) (100 ms) after
//! its response, so that the verdicts and findings km delivers after the line join it, and is
//! written with the first write after that (at a line, an event or the background thread's
//! turn); meanwhile the session's journal holds it whole, so a killed km loses none of it (the
//! next session writes it). Once written, a SIGKILL of km cannot lose it: the kernel has it. It
//! reaches the disk with the next `fdatasync`, at most
//! [`Policy::sync_interval`](crate::policy::Policy) later (1 s) and before every checkpoint is
//! written, so a power loss costs at most that interval (the journal is not synced: it serves a
//! killed km, not a lost machine). A request whose response never came is
//! recorded as `unanswered` when the session ends, or, if km was killed, by the next session.
//!
//! # Torn records versus truncation
//!
//! A writer killed inside `write(2)` can leave part of a record at the end of the last segment:
//! bytes after its last newline. Only the last segment can have them (every other one ends with
//! its end marker, written under the lock), and only a dead writer can have left them (the
//! living ones write under the lock the reader holds). The next writer cuts them off, keeps them
//! in `torn/`, and appends a `repair` record naming the offset, the length and their SHA-256: the
//! repair is itself in the signed tree. `verify` reports a torn tail it finds as a warning: it was
//! never a whole record, so no checkpoint covers it. Truncation by someone else removes whole
//! records, and every record a checkpoint covers is counted: `verify` names the missing ones. What
//! no local check can catch is the removal of records after the last checkpoint together with the
//! checkpoints themselves; the copy of the checkpoints at the API catches that.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use km_audit::{leaf_hash, AuditKey, Checkpoint, Frontier, Hash, SignedCheckpoint, Tree};
use km_durable::{AppendFile, Lock, PRIVATE};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::record::{self, Actor, Record, MAX_RECORD_BYTES, ZERO_HASH};
use crate::Error;

/// How long a writer waits for the lock before giving up on one operation.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// The marker that starts a segment's end line.
const END_PREFIX: &[u8] = b"{\"km_audit_segment_end\":";

/// A segment's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version, 1.
    pub km_audit_segment: u32,
    /// The index of its first record.
    pub start: u64,
    /// The compact range of the tree of the records before it.
    pub peaks: Vec<String>,
    /// The leaf hash of record `start - 1` (zeros for the first segment).
    pub last: String,
    /// When it was started.
    pub created: String,
}

/// A segment's last line, once the next one exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentEnd {
    /// The start of the next segment.
    pub km_audit_segment_end: u64,
}

/// A line of `checkpoints.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointLine {
    /// The signed text.
    pub checkpoint: String,
    /// Its signature, base64.
    pub signature: String,
    /// The size of the checkpoint before it (0 for none).
    pub from: u64,
    /// The consistency proof from `from`, hex.
    pub proof: Vec<String>,
}

impl CheckpointLine {
    /// The signed checkpoint it holds (signature not checked).
    pub fn signed(&self) -> Result<SignedCheckpoint, km_audit::Error> {
        SignedCheckpoint::from_json(&km_audit::SignedCheckpointJson {
            checkpoint: self.checkpoint.clone(),
            signature: self.signature.clone(),
        })
    }

    /// The proof's hashes.
    pub fn proof_hashes(&self) -> Option<Vec<Hash>> {
        self.proof.iter().map(|h| km_audit::parse_hash(h)).collect()
    }
}

/// A checkpoint just made: what to send to the witness.
#[derive(Debug, Clone)]
pub struct MadeCheckpoint {
    /// The signed checkpoint.
    pub signed: SignedCheckpoint,
    /// The stored line (with its proof from the previous checkpoint).
    pub line: CheckpointLine,
}

/// The trail's directory in a data directory.
pub fn trail_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("trail")
}

/// The file name of the segment starting at `start`.
pub fn segment_name(start: u64) -> String {
    format!("seg-{start:016}.jsonl")
}

/// The segments in `dir`, by start.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(number) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        if number.len() == 16 && number.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(start) = number.parse() {
                out.push((start, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Splits `bytes` into complete lines (without `\n`) and what follows the last newline.
pub fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let lines = if complete == 0 {
        Vec::new()
    } else {
        bytes[..complete - 1].split(|&b| b == b'\n').collect()
    };
    (lines, &bytes[complete..])
}

/// Whether a segment line is its end marker; the next start if so.
pub fn end_marker(line: &[u8]) -> Option<Result<u64, ()>> {
    line.starts_with(END_PREFIX).then(|| {
        serde_json::from_slice::<SegmentEnd>(line)
            .map(|e| e.km_audit_segment_end)
            .map_err(|_| ())
    })
}

/// Parses a hex hash list into a frontier of `size`.
pub fn frontier_of(size: u64, peaks: &[String]) -> Option<Frontier> {
    let peaks: Option<Vec<Hash>> = peaks.iter().map(|p| km_audit::parse_hash(p)).collect();
    Frontier::from_peaks(size, peaks?).ok()
}

fn hex_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn read_all(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::io("reading", path, e))
}

/// What [`each_line`] reads at a time: what another writer appended, or a whole segment when a
/// session opens the trail, is read in pieces of this size, never whole (a segment of the
/// default 100 000 records is about 80 MB, and was read whole at every start).
const READ_CHUNK: usize = 1024 * 1024;

/// Reads `path` (open as `file`) from `from` to `to`, [`READ_CHUNK`] bytes at a time, and hands
/// `line` every complete line in order, without its newline, until it returns `false`. Holds
/// at most a chunk and the line being read. Returns the bytes after the last newline (a torn
/// tail, usually empty) when every line up to `to` was handed over, `None` when `line` stopped.
fn each_line(
    file: &fs::File,
    path: &Path,
    from: u64,
    to: u64,
    chunk: usize,
    mut line: impl FnMut(&[u8]) -> Result<bool, Error>,
) -> Result<Option<Vec<u8>>, Error> {
    let mut buf: Vec<u8> = Vec::new();
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).map_or(chunk, |left| left.min(chunk));
        // What `buf` holds before the new bytes is part of one line: no newline in it.
        let start = buf.len();
        buf.resize(start + want, 0);
        file.read_exact_at(&mut buf[start..], at)
            .map_err(|e| Error::io("reading", path, e))?;
        at += want as u64;
        let mut done = 0;
        let mut search = start;
        while let Some(p) = buf[search..].iter().position(|&b| b == b'\n') {
            let end = search + p;
            if !line(&buf[done..end])? {
                return Ok(None);
            }
            done = end + 1;
            search = done;
        }
        buf.drain(..done);
    }
    Ok(Some(buf))
}

/// Takes the trail's writer lock.
pub fn lock(dir: &Path) -> Result<Lock, Error> {
    Ok(Lock::acquire(&dir.join("lock"), Some(LOCK_TIMEOUT))?)
}

/// What rotation and pruning follow (from the policy).
#[derive(Debug, Clone, Copy)]
pub struct Upkeep {
    /// A segment holding this many records is closed at the next checkpoint.
    pub segment_records: u64,
    /// How long records are kept; `None` for ever.
    pub retention: Option<Duration>,
}

impl Upkeep {
    /// A segment older than this is closed at the next checkpoint: an eighth of the retention
    /// (at most a day), so that pruning happens within about an eighth of the retention period.
    fn segment_age(&self) -> Option<Duration> {
        self.retention
            .map(|r| (r / 8).min(Duration::from_secs(86_400)))
    }
}

/// A torn record found and cut off.
#[derive(Debug, Clone)]
struct Torn {
    file: String,
    offset: u64,
    bytes: Vec<u8>,
}

/// A record for [`Writer::append_all`], with its JSON ([`record::to_json`]'s) when that is
/// already made (a settled call's journal note), so that it is not serialised again.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The record.
    pub record: &'a Record,
    /// Its JSON, if made.
    pub json: Option<&'a [u8]>,
}

/// One writer of the trail (one per session; several sessions write at once).
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    tree: Tree,
    last_leaf: Option<Hash>,
    seg: AppendFile,
    seg_start: u64,
    seg_created_us: u64,
    read_len: u64,
    cps: AppendFile,
    cps_len: u64,
    last_cp: Option<(u64, Hash)>,
    session: String,
    actor: Actor,
    unsynced: bool,
    appended: u64,
    torn: Vec<Torn>,
}

impl Writer {
    /// Opens the trail in `data_dir` (creating it if needed) for `session` acting as `actor`;
    /// cuts off a torn record a dead writer left, and records the repair.
    pub fn open(data_dir: &Path, session: &str, actor: &Actor) -> Result<Writer, Error> {
        let dir = trail_dir(data_dir);
        for d in [&dir, &dir.join("torn"), &dir.join("sessions")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| Error::io("creating", d, e))?;
        }
        let _lock = lock(&dir)?;
        let segments = list_segments(&dir)?;
        let (start, path) = match segments.last() {
            Some(last) => last.clone(),
            None => {
                let path = dir.join(segment_name(0));
                write_header(&path, 0, &Frontier::new(), None)?;
                (0, path)
            }
        };
        let cps_path = dir.join("checkpoints.jsonl");
        let cps = match AppendFile::open_existing(&cps_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                AppendFile::create_new(&cps_path, PRIVATE)?
            }
            Err(e) => return Err(e.into()),
        };
        let (seg, header) = open_segment(&path, start)?;
        let frontier = frontier_of(header.start, &header.peaks).ok_or_else(|| Error::Corrupt {
            path: path.clone(),
            what: "has a header whose compact range does not fit its start".to_owned(),
        })?;
        let last_leaf = km_audit::parse_hash(&header.last).filter(|_| header.start > 0);
        let seg_created_us = record::parse_rfc3339_us(&header.created).unwrap_or(0);
        let mut writer = Writer {
            dir,
            tree: Tree::from_base(frontier),
            last_leaf,
            read_len: header_len(&header),
            seg,
            seg_start: start,
            seg_created_us,
            cps,
            cps_len: 0,
            last_cp: None,
            session: session.to_owned(),
            actor: actor.clone(),
            unsynced: false,
            appended: 0,
            torn: Vec::new(),
        };
        writer.catch_up()?;
        writer.record_repairs()?;
        Ok(writer)
    }

    /// The number of records in the trail (as of this writer's last turn).
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Records this writer appended since its last checkpoint.
    pub fn appended_since_checkpoint(&self) -> u64 {
        self.appended
    }

    /// The size of the last checkpoint (by anyone), as of this writer's last turn.
    pub fn last_checkpoint_size(&self) -> Option<u64> {
        self.last_cp.map(|(s, _)| s)
    }

    /// The actor subsequent records of this writer's own (repairs, recoveries) name.
    pub fn set_actor(&mut self, actor: &Actor) {
        // Called for every input: a copy only when the actor changed.
        if self.actor != *actor {
            self.actor = actor.clone();
        }
    }

    /// The trail directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads what other writers appended since this writer's last turn (under the lock).
    fn catch_up(&mut self) -> Result<(), Error> {
        loop {
            let path = self.seg.path().to_path_buf();
            let len = self
                .seg
                .file()
                .metadata()
                .map_err(|e| Error::io("reading the size of", &path, e))?
                .len();
            let mut next = None;
            if len > self.read_len {
                let (tree, last_leaf, read_len) =
                    (&mut self.tree, &mut self.last_leaf, &mut self.read_len);
                let tail = each_line(self.seg.file(), &path, *read_len, len, READ_CHUNK, |line| {
                    if let Some(marker) = end_marker(line) {
                        next = Some(marker.map_err(|()| Error::Corrupt {
                            path: path.clone(),
                            what: "has a malformed end line".to_owned(),
                        })?);
                        return Ok(false);
                    }
                    let leaf = leaf_hash(line);
                    tree.push(leaf);
                    *last_leaf = Some(leaf);
                    *read_len += line.len() as u64 + 1;
                    Ok(true)
                })?;
                if let Some(tail) = tail.filter(|t| !t.is_empty()) {
                    self.cut_torn(&path, tail)?;
                }
            }
            self.catch_up_checkpoints()?;
            let Some(next) = next else {
                return Ok(());
            };
            if next != self.tree.size() {
                return Err(Error::Corrupt {
                    path,
                    what: format!(
                        "ends at record #{next}, but holds records up to #{}",
                        self.tree.size()
                    ),
                });
            }
            self.switch_to(next)?;
        }
    }

    /// Moves on to the segment that starts at `start` (making it, if a writer died between
    /// closing the previous segment and starting this one).
    fn switch_to(&mut self, start: u64) -> Result<(), Error> {
        let path = self.dir.join(segment_name(start));
        if !path.exists() {
            write_header(&path, start, self.tree.frontier(), self.last_leaf)?;
        }
        let (seg, header) = open_segment(&path, start)?;
        let expected = hex_hashes(self.tree.frontier().peaks());
        if header.peaks != expected {
            return Err(Error::Corrupt {
                path,
                what: "has a header that does not continue the trail before it".to_owned(),
            });
        }
        self.read_len = header_len(&header);
        self.seg_created_us = record::parse_rfc3339_us(&header.created).unwrap_or(0);
        self.seg = seg;
        self.seg_start = start;
        self.tree = Tree::from_base(self.tree.frontier().clone());
        Ok(())
    }

    fn catch_up_checkpoints(&mut self) -> Result<(), Error> {
        let path = self.cps.path().to_path_buf();
        let len = self
            .cps
            .file()
            .metadata()
            .map_err(|e| Error::io("reading the size of", &path, e))?
            .len();
        if len <= self.cps_len {
            return Ok(());
        }
        let (cps_len, last_cp) = (&mut self.cps_len, &mut self.last_cp);
        let tail = each_line(self.cps.file(), &path, *cps_len, len, READ_CHUNK, |line| {
            *cps_len += line.len() as u64 + 1;
            let parsed = serde_json::from_slice::<CheckpointLine>(line)
                .ok()
                .and_then(|l| l.signed().ok());
            if let Some(signed) = parsed {
                let c = signed.checkpoint();
                *last_cp = Some((c.size, c.root));
            }
            Ok(true)
        })?;
        if let Some(tail) = tail.filter(|t| !t.is_empty()) {
            // A checkpoint line a dead writer did not finish was never a checkpoint.
            self.cut_torn(&path, tail)?;
        }
        Ok(())
    }

    /// Cuts off a torn tail of `path` (segment or checkpoints), keeping the bytes in `torn/`.
    fn cut_torn(&mut self, path: &Path, bytes: Vec<u8>) -> Result<(), Error> {
        let is_segment = path == self.seg.path();
        let offset = if is_segment {
            self.read_len
        } else {
            self.cps_len
        };
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let saved = self.dir.join("torn").join(format!("{file}.{offset}"));
        km_durable::write_atomic(&saved, &bytes, PRIVATE)?;
        if is_segment {
            self.seg.truncate(offset)?;
            self.seg.sync()?;
        } else {
            self.cps.truncate(offset)?;
            self.cps.sync()?;
        }
        self.torn.push(Torn {
            file,
            offset,
            bytes,
        });
        Ok(())
    }

    /// Appends a `repair` record for every torn tail cut off (under the lock).
    fn record_repairs(&mut self) -> Result<(), Error> {
        let torn = std::mem::take(&mut self.torn);
        for t in torn {
            let mut r = Record::new(
                "repair",
                record::rfc3339_us(record::now_us()),
                &self.session,
                &self.actor,
            );
            let detail = json!({
                "file": t.file,
                "offset": t.offset,
                "bytes": t.bytes.len(),
                "sha256": record::sha256_hex(&t.bytes),
                "saved_as": format!("torn/{}.{}", t.file, t.offset),
                "why": "a writer was killed inside a record; the partial record was cut off",
            });
            if let serde_json::Value::Object(map) = detail {
                r.detail = map;
            }
            self.append_locked(&r)?;
        }
        Ok(())
    }

    /// Appends a record; returns its index.
    pub fn append(&mut self, record: &Record) -> Result<u64, Error> {
        self.append_all(&[Entry { record, json: None }])
    }

    /// [`Writer::append`] of `record` whose JSON ([`record::to_json`]'s) is `json`: the same
    /// line, without serialising the record again.
    pub fn append_noted(&mut self, record: &Record, json: &[u8]) -> Result<u64, Error> {
        self.append_all(&[Entry {
            record,
            json: Some(json),
        }])
    }

    /// Appends `entries` in their order, in one turn of the lock (one catch-up on the other
    /// writers) and one `write(2)`; returns the index of the first. Another writer's records come
    /// before them all or after them all. On an error none of them is in the trail: the writer
    /// counts only what the write took whole, and a write the kernel took in part is cut off
    /// ([`AppendFile::append`]).
    pub fn append_all(&mut self, entries: &[Entry<'_>]) -> Result<u64, Error> {
        if entries.is_empty() {
            return Ok(self.tree.size());
        }
        let _lock = lock(&self.dir)?;
        self.catch_up()?;
        self.record_repairs()?;
        self.append_lines(entries)
    }

    fn append_locked(&mut self, record: &Record) -> Result<u64, Error> {
        self.append_lines(&[Entry { record, json: None }])
    }

    fn append_lines(&mut self, entries: &[Entry<'_>]) -> Result<u64, Error> {
        let first = self.tree.size();
        let mut last = self.last_leaf;
        let mut leaves = Vec::with_capacity(entries.len());
        // The lines are made where they are written, one after the other (not made apart and
        // copied), and a record without its JSON is serialised into one reused buffer.
        let weight: usize = entries
            .iter()
            .map(|e| e.json.map_or(record::TYPICAL_RECORD_BYTES, <[u8]>::len) + 100)
            .sum();
        let mut bytes: Vec<u8> = Vec::with_capacity(weight);
        let mut json = Vec::new();
        let mut prev = [0u8; 64];
        for (index, entry) in (first..).zip(entries) {
            let prev = match &last {
                Some(h) => {
                    // Hex digits are ASCII.
                    let _ = hex::encode_to_slice(h, &mut prev);
                    std::str::from_utf8(&prev).unwrap_or(ZERO_HASH)
                }
                None => ZERO_HASH,
            };
            let record = entry.record;
            let start = bytes.len();
            let own = match entry.json {
                Some(own) => own,
                None => {
                    json.clear();
                    // A struct of strings, numbers and JSON values always serialises.
                    let _ = serde_json::to_writer(&mut json, record);
                    &json
                }
            };
            record.encode_into(own, index, prev, &mut bytes);
            if bytes.len() - start > MAX_RECORD_BYTES {
                bytes.truncate(start);
                let mut lean = record.clone();
                lean.content = None;
                lean.detail.insert(
                    "content_omitted".into(),
                    json!("larger than a record may be"),
                );
                bytes.extend_from_slice(&lean.encode(index, prev));
            }
            let leaf = leaf_hash(&bytes[start..]);
            bytes.push(b'\n');
            leaves.push(leaf);
            last = Some(leaf);
        }
        // The AppendFile counts only its own appends; the other writers' records (read in
        // `catch_up`) are whole, so its idea of the length is brought up to date (a no-op
        // truncate at the real length) before it may have to undo a partial write.
        if self.seg.len() != self.read_len {
            self.seg.truncate(self.read_len)?;
        }
        self.seg.append(&bytes)?;
        // Only now, the write whole: the tree takes the leaves.
        self.read_len += bytes.len() as u64;
        for leaf in leaves {
            self.tree.push(leaf);
        }
        self.last_leaf = last;
        self.unsynced = true;
        self.appended += entries.len() as u64;
        Ok(first)
    }

    /// The consistency proof from `old` to `new` records, if this writer holds what it needs.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        self.tree.consistency_proof(old, new).ok()
    }

    /// Flushes appended records to disk if any are unsynced.
    pub fn sync(&mut self) -> Result<(), Error> {
        if self.unsynced {
            self.seg.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Signs a checkpoint of the whole trail (everyone's records) unless the last checkpoint
    /// already covers it and `force` is false; then rotates and prunes as `upkeep` says.
    pub fn checkpoint(
        &mut self,
        key: &AuditKey,
        reason: &str,
        session: Option<&str>,
        now_ms: i64,
        upkeep: Upkeep,
        force: bool,
    ) -> Result<Option<MadeCheckpoint>, Error> {
        let _lock = lock(&self.dir)?;
        self.catch_up()?;
        self.record_repairs()?;
        let size = self.tree.size();
        if !force && self.last_cp.map(|(s, _)| s) == Some(size) {
            return Ok(None);
        }
        let made = self.checkpoint_locked(key, reason, session, now_ms)?;
        self.upkeep_locked(key, session, now_ms, upkeep)?;
        Ok(Some(made))
    }

    fn checkpoint_locked(
        &mut self,
        key: &AuditKey,
        reason: &str,
        session: Option<&str>,
        now_ms: i64,
    ) -> Result<MadeCheckpoint, Error> {
        let size = self.tree.size();
        let root = self.tree.root();
        let (from, proof) = match self.last_cp {
            Some((m, _)) if m >= self.tree.base_size() && m <= size => {
                (m, self.tree.consistency_proof(m, size)?)
            }
            _ => (0, Vec::new()),
        };
        let session = session.filter(|s| km_audit::checkpoint::is_word(s));
        let checkpoint = Checkpoint {
            key_id: key.id().to_owned(),
            size,
            root,
            time_ms: now_ms,
            reason: reason.to_owned(),
            session: session.map(str::to_owned),
        };
        let signed = key.sign_checkpoint(&checkpoint)?;
        let json = signed.to_json();
        let line = CheckpointLine {
            checkpoint: json.checkpoint,
            signature: json.signature,
            from,
            proof: hex_hashes(&proof),
        };
        // The records a checkpoint names reach the disk before it does.
        self.seg.sync()?;
        self.unsynced = false;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        if self.cps.len() != self.cps_len {
            self.cps.truncate(self.cps_len)?;
        }
        self.cps.append_durable(&bytes)?;
        self.cps_len += bytes.len() as u64;
        self.last_cp = Some((size, root));
        self.appended = 0;
        Ok(MadeCheckpoint { signed, line })
    }

    /// Right after a checkpoint (under the lock): closes a full or old segment, then prunes
    /// segments past retention.
    fn upkeep_locked(
        &mut self,
        key: &AuditKey,
        session: Option<&str>,
        now_ms: i64,
        upkeep: Upkeep,
    ) -> Result<(), Error> {
        let size = self.tree.size();
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        let records = size - self.seg_start;
        let old = upkeep.segment_age().is_some_and(|age| {
            now_us.saturating_sub(self.seg_created_us)
                >= u64::try_from(age.as_micros()).unwrap_or(u64::MAX)
        });
        if records > 0 && (records >= upkeep.segment_records || old) {
            // The end line first: a writer that dies before the next segment exists leaves a
            // trail the next one completes (`switch_to` makes the missing segment).
            let mut end = serde_json::to_vec(&SegmentEnd {
                km_audit_segment_end: size,
            })
            .unwrap_or_default();
            end.push(b'\n');
            if self.seg.len() != self.read_len {
                self.seg.truncate(self.read_len)?;
            }
            self.seg.append_durable(&end)?;
            self.switch_to(size)?;
        }
        let Some(retention) = upkeep.retention else {
            return Ok(());
        };
        let cutoff =
            now_us.saturating_sub(u64::try_from(retention.as_micros()).unwrap_or(u64::MAX));
        let segments = list_segments(&self.dir)?;
        let mut pruned: Vec<(u64, u64)> = Vec::new();
        for pair in segments.windows(2) {
            let [(start, path), (next, _)] = pair else {
                break;
            };
            let newest = newest_time(path)?;
            if newest.is_some_and(|t| t < cutoff) {
                fs::remove_file(path).map_err(|e| Error::io("removing", path, e))?;
                pruned.push((*start, *next));
            } else {
                break;
            }
        }
        if let (Some(first), Some(last)) = (pruned.first(), pruned.last()) {
            km_durable::sync_dir(&self.dir)?;
            let mut r = Record::new(
                "retention",
                record::rfc3339_ms(now_ms),
                session.unwrap_or(""),
                &self.actor,
            );
            let detail = json!({
                "pruned_from": first.0,
                "pruned_to": last.1,
                "segments": pruned.len(),
                "retention": humantime::format_duration(retention).to_string(),
                "older_than": record::rfc3339_us(cutoff),
            });
            if let serde_json::Value::Object(map) = detail {
                r.detail = map;
            }
            self.append_locked(&r)?;
            // The pruning is itself evidence: sign it at once.
            self.checkpoint_locked(key, "prune", session, now_ms)?;
        }
        Ok(())
    }
}

/// What [`newest_time`] reads of a segment's end first: a few records.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The time of the newest record of a segment file: read from its end, a window at a time
/// (doubled until a whole record is in it), not whole: retention asks this of the oldest
/// segment after every checkpoint, and a checkpoint comes every 1 000 records of a busy session.
fn newest_time(path: &Path) -> Result<Option<u64>, Error> {
    newest_time_from(path, TAIL_WINDOW)
}

fn newest_time_from(path: &Path, first_window: u64) -> Result<Option<u64>, Error> {
    let file = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading the size of", path, e))?
        .len();
    let mut window = first_window.max(1);
    loop {
        let from = len.saturating_sub(window);
        let mut bytes = vec![0u8; usize::try_from(len - from).unwrap_or(0)];
        file.read_exact_at(&mut bytes, from)
            .map_err(|e| Error::io("reading", path, e))?;
        let (lines, _) = split_lines(&bytes);
        // The first line is the header where the window starts at the file's start, and may
        // be the end of a line cut by the window elsewhere: neither is a record to read.
        let newest = lines
            .iter()
            .skip(1)
            .rev()
            .filter(|l| end_marker(l).is_none())
            .find_map(|l| serde_json::from_slice::<Record>(l).ok());
        if let Some(r) = newest {
            return Ok(record::parse_rfc3339_us(&r.t));
        }
        if from == 0 {
            return Ok(None);
        }
        window = window.saturating_mul(2);
    }
}

fn header_line(start: u64, frontier: &Frontier, last: Option<Hash>) -> Vec<u8> {
    let header = SegmentHeader {
        km_audit_segment: 1,
        start,
        peaks: hex_hashes(frontier.peaks()),
        last: last.map_or_else(|| ZERO_HASH.to_owned(), hex::encode),
        created: record::rfc3339_us(record::now_us()),
    };
    let mut line = serde_json::to_vec(&header).unwrap_or_default();
    line.push(b'\n');
    line
}

fn header_len(header: &SegmentHeader) -> u64 {
    serde_json::to_vec(header).map_or(0, |l| l.len() as u64 + 1)
}

/// Creates a segment whole (header included) or not at all.
fn write_header(
    path: &Path,
    start: u64,
    frontier: &Frontier,
    last: Option<Hash>,
) -> Result<(), Error> {
    match km_durable::write_new(path, &header_line(start, frontier, last), PRIVATE) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens a segment for appending and reads its header.
fn open_segment(path: &Path, start: u64) -> Result<(AppendFile, SegmentHeader), Error> {
    let seg = AppendFile::open_existing(path)?;
    let header = read_header(seg.file(), path)?;
    if header.start != start {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("says it starts at #{}, its name at #{start}", header.start),
        });
    }
    Ok((seg, header))
}

/// Reads and parses the header line of an open segment.
pub fn read_header(file: &fs::File, path: &Path) -> Result<SegmentHeader, Error> {
    let mut buf = vec![0u8; 8192];
    let n = file
        .read_at(&mut buf, 0)
        .map_err(|e| Error::io("reading", path, e))?;
    let line = buf[..n].split(|&b| b == b'\n').next().unwrap_or_default();
    if n == line.len() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: "has no complete header line".to_owned(),
        });
    }
    let header: SegmentHeader = serde_json::from_slice(line).map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        what: "has a header line that is not a segment header".to_owned(),
    })?;
    // The header must be exactly what the writer wrote: its length is where records begin.
    if header_len(&header) != line.len() as u64 + 1 || header.km_audit_segment != 1 {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: "has a header line that was altered".to_owned(),
        });
    }
    Ok(header)
}

/// Calls `f` with every record line of the trail from index `from` on (and its index), in order.
/// Reads without the lock: the files only grow, and a segment pruned meanwhile ends the walk.
pub fn for_each_record(
    data_dir: &Path,
    from: u64,
    mut f: impl FnMut(u64, &[u8]),
) -> Result<(), Error> {
    let dir = trail_dir(data_dir);
    let segments = list_segments(&dir)?;
    for (n, (start, path)) in segments.iter().enumerate() {
        if let Some((next, _)) = segments.get(n + 1) {
            if *next <= from {
                continue;
            }
        }
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        let (lines, _) = split_lines(&bytes);
        let records = lines.iter().skip(1).take_while(|l| end_marker(l).is_none());
        for (index, line) in (*start..).zip(records) {
            if index >= from {
                f(index, line);
            }
        }
    }
    Ok(())
}

/// A session journal is rewritten with what it must still hold once it has grown by this much
/// since it last was (see [`SessionJournal::needs_compaction`]).
pub const JOURNAL_COMPACT_BYTES: u64 = 4 * 1024 * 1024;

/// A running session's journal of the requests it awaits, and the lock that says it is alive.
#[derive(Debug)]
pub struct SessionJournal {
    _lock: Lock,
    file: AppendFile,
    /// Where the journal is (`file` was opened under another name when it was rewritten).
    path: PathBuf,
    lock_path: PathBuf,
    /// The header line, newline included (the first line of every rewrite).
    header: Vec<u8>,
    /// Where a note's line is put together (kept, so that a note costs no allocation).
    line: Vec<u8>,
    /// The journal's length after it was last written whole.
    compacted_len: u64,
}

/// The first line of a session journal.
#[derive(Debug, Serialize, Deserialize)]
struct JournalHeader {
    session: String,
    start: u64,
    actor: Actor,
}

fn safe_name(session: &str) -> String {
    session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect()
}

impl SessionJournal {
    /// Starts the journal of `session`, whose first record will be at `start`.
    pub fn create(
        data_dir: &Path,
        session: &str,
        start: u64,
        actor: &Actor,
    ) -> Result<Self, Error> {
        let dir = trail_dir(data_dir).join("sessions");
        let name = safe_name(session);
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = Lock::try_acquire(&lock_path)?
            .ok_or_else(|| Error::Usage(format!("session {session} is already being recorded")))?;
        let path = dir.join(format!("{name}.pending"));
        let mut file = match AppendFile::create_new(&path, PRIVATE) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
                AppendFile::create_new(&path, PRIVATE)?
            }
            Err(e) => return Err(e.into()),
        };
        let header = JournalHeader {
            session: session.to_owned(),
            start,
            actor: actor.clone(),
        };
        let mut line = serde_json::to_vec(&header).unwrap_or_default();
        line.push(b'\n');
        file.append(&line)?;
        Ok(SessionJournal {
            _lock: lock,
            file,
            path,
            lock_path,
            compacted_len: line.len() as u64,
            header: line,
            line: Vec::new(),
        })
    }

    /// Whether the journal has grown enough since it was last written whole to be rewritten:
    /// by [`JOURNAL_COMPACT_BYTES`], or by three times its size then if that is more (so that
    /// rewriting costs at most a third of a byte per byte noted, however much is awaited).
    pub fn needs_compaction(&self) -> bool {
        let grown = self.file.len().saturating_sub(self.compacted_len);
        grown > JOURNAL_COMPACT_BYTES.max(3 * self.compacted_len)
    }

    /// Rewrites the journal with `live` only: the last state of every call the session has not
    /// written to the trail (as [`crate::recorder::Recorder::journal_lines`] gives them). Replaced
    /// whole by a rename, so a km killed meanwhile leaves the old journal or the new one.
    pub fn compact(&mut self, live: &[Record]) -> Result<(), Error> {
        let mut lines = Vec::new();
        for record in live {
            // A record always serialises.
            let _ = serde_json::to_writer(&mut lines, record);
            lines.push(b'\n');
        }
        self.compact_with(|bytes| bytes.extend_from_slice(&lines))
    }

    /// [`SessionJournal::compact`] with the records' lines made by `lines`, which appends them
    /// (each record's JSON and a newline: what [`crate::recorder::Recorder::journal_lines`]
    /// does) after the header, so that they are not copied once more.
    pub fn compact_with(&mut self, lines: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
        let mut bytes = self.header.clone();
        lines(&mut bytes);
        // Should the rewrite fail, the journal as it was still holds everything; it is tried
        // again only once it has grown as much again.
        self.compacted_len = self.file.len();
        let staged = km_durable::stage(&self.path, &bytes, PRIVATE)?;
        // Opened before it is put in place: once renamed, appends must go to the new file.
        let file = AppendFile::open_existing(staged.temp_path())?;
        staged.commit()?;
        self.file = file;
        self.compacted_len = bytes.len() as u64;
        Ok(())
    }

    /// The journal's size in bytes.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether the journal holds nothing (never: it has its header).
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Notes a request the session awaits: the call record it would be, were no response to
    /// come.
    pub fn open(&mut self, pending: &Record) -> Result<(), Error> {
        self.note(&record::to_json(pending))
    }

    /// [`SessionJournal::open`] of the record whose JSON ([`record::to_json`]'s) is `json`.
    pub fn note(&mut self, json: &[u8]) -> Result<(), Error> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend_from_slice(json);
        line.push(b'\n');
        let appended = self.file.append(&line);
        self.line = line;
        Ok(appended?)
    }

    /// Appends several notes in one `write(2)`: `lines` is their JSON ([`record::to_json`]'s),
    /// each followed by a newline. On an error none of them is in the journal.
    pub fn note_lines(&mut self, lines: &[u8]) -> Result<(), Error> {
        Ok(self.file.append(lines)?)
    }

    /// The session ended cleanly: removes the journal and its lock file.
    pub fn finish(self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// The records to write for sessions whose km died: their unanswered requests and an abnormal
/// end. Removes their journals once `write` succeeded for all of a session's records.
pub fn recover_dead_sessions(
    data_dir: &Path,
    mut write: impl FnMut(&Record) -> Result<(), Error>,
) -> Result<usize, Error> {
    let dir = trail_dir(data_dir).join("sessions");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut recovered = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pending") {
            continue;
        }
        let lock_path = path.with_extension("lock");
        let Some(_lock) = Lock::try_acquire(&lock_path)? else {
            continue; // alive
        };
        let bytes = read_all(&path)?;
        let (lines, _) = split_lines(&bytes);
        let Some(header) = lines
            .first()
            .and_then(|l| serde_json::from_slice::<JournalHeader>(l).ok())
        else {
            let _ = fs::remove_file(&path);
            continue;
        };
        // The last state noted for each call: unanswered while it waited, complete once its
        // response was handled.
        let mut pending: Vec<Record> = Vec::new();
        let mut place: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for record in lines[1..]
            .iter()
            .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        {
            match place.get(&record.corr) {
                Some(&at) => pending[at] = record,
                None => {
                    place.insert(record.corr.clone(), pending.len());
                    pending.push(record);
                }
            }
        }
        // What the dead session did record: its calls and whether it ended.
        let mut done = std::collections::HashSet::new();
        let mut ended = false;
        let mut last_time = String::new();
        for_each_record(data_dir, header.start, |_, line| {
            if let Ok(r) = serde_json::from_slice::<Record>(line) {
                if *r.session == *header.session {
                    if r.kind == "call" {
                        done.insert(r.corr.clone());
                    }
                    ended |= r.kind == "session.end";
                    last_time = r.t.clone();
                }
            }
        })?;
        pending.retain(|r| !done.contains(&r.corr));
        let mut unanswered = 0;
        for r in &mut pending {
            let why = if r.response.is_some() {
                "km ended before this call was written; recorded from the session's journal"
            } else {
                unanswered += 1;
                r.outcome = "unanswered".to_owned();
                "km ended before the response; recorded from the session's journal"
            };
            r.detail.insert("recovered".into(), json!(why));
            write(r)?;
        }
        if !ended {
            let t = if last_time.is_empty() {
                record::rfc3339_us(record::now_us())
            } else {
                last_time
            };
            let mut end = Record::new("session.end", t, &header.session, &header.actor);
            end.detail.insert("abnormal".into(), json!(true));
            end.detail.insert(
                "why".into(),
                json!("km ended without closing the session (killed or crashed)"),
            );
            end.detail.insert("unanswered".into(), json!(unanswered));
            write(&end)?;
        }
        fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        let _ = fs::remove_file(&lock_path);
        recovered += 1;
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests;
