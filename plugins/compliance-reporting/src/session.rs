//! One `km monitor` session's recording: the recorder's effects carried out on the trail, the
//! session's journal, content sealing, syncs and checkpoints, and what goes to the witness.
//!
//! Everything here runs under the plugin's recording lock, from the handler thread or the
//! background thread; what goes to the witness is handed to its sender after the lock is released
//! (see [`crate::witness`]). An ended recording stays in its slot until the plugin is dropped, so
//! that the sender can still prove the last checkpoint from what the API acknowledged.

use std::time::Instant;

use km_audit::AuditKey;
use km_plugin_sdk::{Direction, Message, MessageKind, SessionInfo, StreamEvent, StreamEventKind};
use serde_json::{json, Map, Value};

use crate::batch::Batch;
use crate::content::KeyStore;
use crate::policy::Policy;
use crate::record::{self, Record};
use crate::recorder::{Effect, Line, Recorder};
use crate::trail::{self, SessionJournal, Upkeep, Writer};
use crate::witness::{Submission, WitnessState};
use crate::{keys, local_actor, Shared, NAME};

/// A line, copied out of km's buffer (only while the first authentication is pending: once the
/// subscription is known, lines are recorded from km's buffer).
#[derive(Debug, Clone)]
pub(crate) struct OwnedLine {
    seq: u64,
    direction: Direction,
    kind: MessageKind,
    is_error: bool,
    bytes: Vec<u8>,
    corr: String,
    method: String,
    timestamp_us: u64,
    latency_us: Option<u64>,
}

/// What the plugin is handed, owned (it may wait for the first authentication).
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Begin(SessionInfo),
    Line(OwnedLine),
    Event {
        kind: StreamEventKind,
        data: Value,
        timestamp_ms: i64,
    },
}

impl Input {
    pub(crate) fn line(m: &Message<'_>) -> Input {
        Input::Line(OwnedLine {
            seq: m.seq,
            direction: m.direction,
            kind: m.kind,
            is_error: m.is_error,
            bytes: m.bytes().to_vec(),
            corr: m.correlation_id.to_string(),
            method: m.method.to_string(),
            timestamp_us: m.timestamp_us,
            latency_us: m.latency_us.into_option(),
        })
    }

    pub(crate) fn event(e: &StreamEvent) -> Input {
        Input::Event {
            kind: e.kind,
            data: serde_json::from_str(e.data.as_str()).unwrap_or(Value::Null),
            timestamp_ms: e.timestamp_ms,
        }
    }

    /// The input, borrowed.
    pub(crate) fn as_ref(&self) -> InputRef<'_> {
        match self {
            Input::Begin(info) => InputRef::Begin(info),
            Input::Line(l) => InputRef::Line(Line {
                seq: l.seq,
                direction: l.direction,
                kind: l.kind,
                is_error: l.is_error,
                bytes: &l.bytes,
                corr: &l.corr,
                method: &l.method,
                timestamp_us: l.timestamp_us,
                latency_us: l.latency_us,
            }),
            Input::Event {
                kind,
                data,
                timestamp_ms,
            } => InputRef::Event {
                kind: *kind,
                data,
                timestamp_ms: *timestamp_ms,
            },
        }
    }
}

/// What the plugin is handed, borrowed: a line straight from km's buffer, or an [`Input`] kept.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InputRef<'a> {
    Begin(&'a SessionInfo),
    Line(Line<'a>),
    Event {
        kind: StreamEventKind,
        data: &'a Value,
        timestamp_ms: i64,
    },
}

/// The recorder's view of a line km handed the plugin.
pub(crate) fn line_of<'a>(m: &'a Message<'_>) -> Line<'a> {
    Line {
        seq: m.seq,
        direction: m.direction,
        kind: m.kind,
        is_error: m.is_error,
        bytes: m.bytes(),
        corr: m.correlation_id.as_str(),
        method: m.method.as_str(),
        timestamp_us: m.timestamp_us,
        latency_us: m.latency_us.into_option(),
    }
}

/// A session being recorded.
pub(crate) struct Recording {
    recorder: Recorder,
    writer: Writer,
    journal: Option<SessionJournal>,
    key: AuditKey,
    keystore: Option<KeyStore>,
    policy: Policy,
    last_sync: Instant,
    last_checkpoint: Instant,
    ended: bool,
    /// Records and notes not yet written.
    batch: Batch,
    /// Whether the warning that the pending bound was reached was given.
    warned_evicted: bool,
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut h = state.build_hasher();
    h.write_u64(record::now_us());
    h.write_u32(std::process::id());
    let a = h.finish();
    let mut h2 = state.build_hasher();
    h2.write_u64(a);
    format!("{a:016x}{:016x}", h2.finish())
}

fn session_id_of(input: &InputRef<'_>) -> String {
    let id = match input {
        InputRef::Begin(info) => info.session_id.clone(),
        InputRef::Event { data, .. } => data
            .get("session_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        InputRef::Line(_) => String::new(),
    };
    if km_audit::checkpoint::is_word(&id) {
        id
    } else {
        random_id()
    }
}

fn upkeep(policy: &Policy) -> Upkeep {
    Upkeep {
        segment_records: policy.segment_records,
        retention: policy.retention,
    }
}

fn now_ms() -> i64 {
    i64::try_from(record::now_us() / 1000).unwrap_or(i64::MAX)
}

fn start(shared: &Shared, input: &InputRef<'_>) -> Result<Recording, crate::Error> {
    let policy = shared.policy();
    let session = session_id_of(input);
    let actor = local_actor();
    let data_dir = &shared.data_dir;
    let key = keys::load_or_create(data_dir)?;
    let mut writer = Writer::open(data_dir, &session, &actor)?;
    let recovered = trail::recover_dead_sessions(data_dir, |r| writer.append(r).map(drop))?;
    if recovered > 0 {
        shared.host.info(&format!(
            "{NAME}: recorded the end of {recovered} session(s) whose km was killed"
        ));
    }
    let journal = SessionJournal::create(data_dir, &session, writer.size(), &actor)?;
    let keystore = if policy.capture.enabled {
        Some(KeyStore::open(data_dir)?)
    } else {
        None
    };
    let write_ahead = policy.write_ahead;
    Ok(Recording {
        recorder: Recorder::new(policy.clone(), &session, actor),
        writer,
        journal: Some(journal),
        key,
        keystore,
        policy,
        last_sync: Instant::now(),
        last_checkpoint: Instant::now(),
        ended: false,
        batch: Batch::new(write_ahead),
        warned_evicted: false,
    })
}

impl Recording {
    /// Gathers the recorder's effects for the next write ([`crate::batch`] says when that is).
    fn apply(&mut self, shared: &Shared, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Write(mut record, captured) => {
                    if let Some(captured) = captured {
                        self.seal(shared, &mut record, &captured.subject, &captured.text);
                    }
                    self.batch.record(record);
                }
                Effect::WriteNoted(record, json) => self.batch.noted(record, json),
                Effect::Journal(json) => {
                    if self.journal.is_some() {
                        self.batch.note(&json);
                    }
                }
            }
        }
    }

    /// Writes what is gathered if it is due; else, when something is left, makes sure the
    /// background thread will write it in time.
    fn turn(&mut self, shared: &Shared, was_empty: bool) {
        if self.batch.is_empty() {
            // Nothing of this input to write: nothing of it failed.
            shared
                .failing
                .store(false, std::sync::atomic::Ordering::Relaxed);
        } else if self.batch.due(Instant::now()) {
            self.write(shared);
        } else if let Some(due) = self.batch.due_at().filter(|_| was_empty) {
            shared.nudge(due);
        }
    }

    /// Writes everything gathered, and says what failed.
    fn write(&mut self, shared: &Shared) {
        if self.batch.is_empty() {
            return;
        }
        let written = self.batch.write(
            &mut self.writer,
            self.journal.as_mut(),
            self.recorder.session(),
            self.recorder.actor(),
        );
        // Whether this write reached the files (write-ahead blocks the line if not).
        let failed = written.trail.is_some() || written.journal.is_some();
        shared
            .failing
            .store(failed, std::sync::atomic::Ordering::Relaxed);
        if let Some(e) = written.journal {
            shared.host.debug(&format!("{NAME}: session journal: {e}"));
        }
        if let Some(e) = written.trail {
            let lost = self.batch.lost();
            // The first failure after records were written, then once per thousand lost.
            if lost == written.lost || lost / 1000 > (lost - written.lost) / 1000 {
                shared.host.warn(&format!(
                    "{NAME}: cannot write the audit trail ({e}); {lost} record(s) lost so far"
                ));
            }
        }
    }

    /// Rewrites the session's journal without the calls already written, once it has grown.
    fn compact_journal(&mut self, shared: &Shared) {
        if !self
            .journal
            .as_ref()
            .is_some_and(SessionJournal::needs_compaction)
        {
            return;
        }
        // The rewrite keeps only the calls not yet written: those gathered are no longer
        // awaited, so they go to the trail first.
        self.write(shared);
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let recorder = &mut self.recorder;
        if let Err(e) = journal.compact_with(|out| recorder.journal_lines(out)) {
            // The journal as it was still holds everything: appending goes on.
            shared
                .host
                .debug(&format!("{NAME}: cannot rewrite the session journal: {e}"));
        }
    }

    fn seal(&mut self, shared: &Shared, record: &mut Record, subject: &str, text: &[u8]) {
        if self.keystore.is_none() {
            match KeyStore::open(&shared.data_dir) {
                Ok(store) => self.keystore = Some(store),
                Err(e) => {
                    record
                        .detail
                        .insert("content_omitted".into(), json!(e.to_string()));
                    return;
                }
            }
        }
        let Some(store) = &self.keystore else { return };
        match store.seal(subject, &record.session, &record.t, text, now_ms()) {
            Ok(content) => record.content = Some(content),
            Err(e) => {
                record
                    .detail
                    .insert("content_omitted".into(), json!(e.to_string()));
            }
        }
    }

    /// Signs a checkpoint (unless the trail has not grown) and makes its witness submission.
    fn checkpoint(&mut self, shared: &Shared, reason: &str) -> Option<Submission> {
        // What the session handled so far is in the tree it signs.
        self.write(shared);
        self.last_checkpoint = Instant::now();
        let session = self.recorder.session().to_owned();
        let made = match self.writer.checkpoint(
            &self.key,
            reason,
            Some(&session),
            now_ms(),
            upkeep(&self.policy),
            false,
        ) {
            Ok(Some(made)) => made,
            Ok(None) => return None,
            Err(e) => {
                shared
                    .host
                    .warn(&format!("{NAME}: cannot sign a checkpoint: {e}"));
                return None;
            }
        };
        self.last_sync = Instant::now();
        let size = made.signed.checkpoint().size;
        let acked = WitnessState::load(&shared.data_dir).acked;
        let (from, proof) = match self.writer.consistency_proof(acked, size) {
            Some(proof) => (acked, proof),
            None => (made.line.from, made.line.proof_hashes().unwrap_or_default()),
        };
        Some(Submission::new(
            &self.key,
            self.recorder.actor(),
            &made.signed,
            from,
            &proof,
        ))
    }

    fn end(&mut self, shared: &Shared) -> Vec<Submission> {
        self.ended = true;
        // Writes everything gathered first.
        let submission = self.checkpoint(shared, "end");
        let _ = self.writer.sync();
        if let Some(journal) = self.journal.take() {
            journal.finish();
        }
        submission.into_iter().collect()
    }
}

/// Handles one input, starting the recording on the first.
pub(crate) fn process(
    shared: &Shared,
    slot: &mut Option<Recording>,
    input: InputRef<'_>,
) -> Vec<Submission> {
    if slot.is_none() {
        if shared.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        match start(shared, &input) {
            Ok(recording) => *slot = Some(recording),
            Err(e) => {
                shared
                    .broken
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                shared.host.warn(&format!(
                    "{NAME}: cannot open the audit trail in {}: {e}; this session is not recorded",
                    shared.data_dir.display()
                ));
                return Vec::new();
            }
        }
    }
    let Some(rec) = slot.as_mut() else {
        return Vec::new();
    };
    if rec.ended {
        return Vec::new();
    }
    let mut end = false;
    let effects = match input {
        InputRef::Begin(info) => {
            let mut detail = Map::new();
            detail.insert("km_version".into(), json!(info.km_version));
            detail.insert("cwd".into(), json!(info.cwd));
            rec.recorder.start(&info.command, detail, record::now_us())
        }
        InputRef::Line(line) => rec.recorder.line(&line),
        InputRef::Event {
            kind,
            data,
            timestamp_ms,
        } => {
            end = kind == StreamEventKind::END;
            rec.recorder.event(kind, data, timestamp_ms)
        }
    };
    if !rec.warned_evicted && rec.recorder.evicted() > 0 {
        rec.warned_evicted = true;
        shared.host.warn(&format!(
            "{NAME}: more than {} requests await their responses; from now on the oldest is recorded as unanswered at once (the session's end record counts them)",
            crate::recorder::MAX_PENDING
        ));
    }
    rec.writer.set_actor(rec.recorder.actor());
    let was_empty = rec.batch.is_empty();
    rec.apply(shared, effects);
    rec.turn(shared, was_empty);
    rec.compact_journal(shared);
    if end {
        return rec.end(shared);
    }
    if rec.writer.appended_since_checkpoint() >= rec.policy.checkpoint_records {
        return rec.checkpoint(shared, "periodic").into_iter().collect();
    }
    Vec::new()
}

/// The background thread's turn: expired requests, syncs, periodic checkpoints.
pub(crate) fn tick(shared: &Shared, slot: &mut Option<Recording>) -> Vec<Submission> {
    let Some(rec) = slot.as_mut() else {
        return Vec::new();
    };
    if rec.ended {
        return Vec::new();
    }
    let expired = rec.recorder.expire(record::now_us());
    rec.apply(shared, expired);
    // The background thread's turn writes whatever is gathered.
    rec.write(shared);
    if rec.last_sync.elapsed() >= rec.policy.sync_interval {
        rec.last_sync = Instant::now();
        if let Err(e) = rec.writer.sync() {
            shared
                .host
                .warn(&format!("{NAME}: cannot sync the audit trail: {e}"));
        }
    }
    if rec.last_checkpoint.elapsed() >= rec.policy.checkpoint_interval {
        return rec.checkpoint(shared, "periodic").into_iter().collect();
    }
    Vec::new()
}

/// The background thread's look at what is gathered, when the recording nudged it: written if
/// it is due; else when it will be (`None`: nothing is left gathered).
pub(crate) fn write_due(shared: &Shared, slot: &mut Option<Recording>) -> Option<Instant> {
    let rec = slot.as_mut().filter(|r| !r.ended)?;
    let due = rec.batch.due_at()?;
    if due > Instant::now() {
        return Some(due);
    }
    rec.write(shared);
    None
}

/// The plugin shuts down: a session km did not end is ended here.
pub(crate) fn close(shared: &Shared, slot: &mut Option<Recording>) -> Vec<Submission> {
    let Some(rec) = slot.as_mut() else {
        return Vec::new();
    };
    if rec.ended {
        return Vec::new();
    }
    let effects = rec.recorder.end(
        &json!({"why": "km shut the plugin down without an end event"}),
        record::now_us(),
    );
    rec.apply(shared, effects);
    rec.end(shared)
}

/// A consistency proof from `old` to `new` records of the trail, for the witness.
pub(crate) fn consistency_proof(
    slot: &Option<Recording>,
    old: u64,
    new: u64,
) -> Option<Vec<km_audit::Hash>> {
    slot.as_ref()?.writer.consistency_proof(old, new)
}

/// The witness refused a checkpoint: that is evidence too.
pub(crate) fn note_refusal(shared: &Shared, slot: &mut Option<Recording>, size: u64, why: &str) {
    // After the session's end the refusal is in km's log only: a record after `session.end`
    // would be outside its last checkpoint.
    let Some(rec) = slot.as_mut().filter(|r| !r.ended) else {
        return;
    };
    let mut r = Record::new(
        "witness",
        record::rfc3339_us(record::now_us()),
        rec.recorder.session(),
        rec.recorder.actor(),
    );
    r.outcome = "refused".to_owned();
    r.detail.insert("size".into(), json!(size));
    r.detail.insert("why".into(), json!(why));
    let was_empty = rec.batch.is_empty();
    rec.apply(shared, vec![Effect::Write(r, None)]);
    rec.turn(shared, was_empty);
}
