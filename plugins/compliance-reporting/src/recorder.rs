//! From what km hands the plugin (lines, verdicts, other plugins' events, host events) to the
//! records of the trail. Pure: no I/O, no clock of its own, so every rule is unit-tested.
//!
//! - A request waits for its response (keyed by km's correlation id); the pair becomes one `call`
//!   record when the response is handled. Requests the server never answers become `unanswered`
//!   after the policy's timeout or at the end of the session (`cancelled` when the client
//!   cancelled them).
//! - Verdicts and findings of interceptors may reach the plugin before or after the line they
//!   concern (km delivers the forwarded line and the events of the interceptors on different
//!   threads): annotations that come first are kept by correlation id (bounded), and a call is
//!   written only once it has settled, [`SETTLE_US`] after its response, so that those that come
//!   later join it. A blocked request is never forwarded: its call is made from the verdict, and
//!   the error km answers the client with becomes its response (whichever of the two comes first).
//! - team-collaboration's `member` event sets the actor's member id for the rest of the session.
//! - Every table is bounded, whatever the peers send. At most [`MAX_PENDING`] requests wait for
//!   their responses: beyond it the oldest is written at once as an `unanswered` call whose
//!   `detail.why` says so, and `session.end` counts them (`detail.pending_evicted`), so that a
//!   server that never answers costs records, not memory. Calls settle in the order they are
//!   due, so writing the settled ones costs nothing per line while none is due.
//!
//! # The `member` event (for team-collaboration)
//!
//! Emit `host.emit("member", {"member": ID, "team": TEAM, "role": ROLE})` (ID required, the rest
//! optional, all strings). Every record after it names the member in `actor.member`, and an
//! `actor` record keeps the announcement.
//!
//! # Other plugins' events this plugin understands
//!
//! - `finding` (advanced-filters): `{"category", "rule", "correlation_id", ...}` or
//!   `{"findings": [{"category", "rule"}...], "correlation_id", ...}`: merged into the call;
//!   without a call, its own `finding` record.
//! - `drift`, `change`, `approval` (tool-guard): a `change` record (SOC 2 CC8.1).
//! - `anomaly` (ml-analytics): an `anomaly` record (CC7.2).
//! - anything else: a `plugin-event` record. Of every event only short scalar fields are kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use km_plugin_sdk::{Direction, MessageKind, StreamEventKind};
use serde_json::{json, Map, Value};

use crate::policy::Policy;
use crate::record::{self, Actor, Part, Record, Server};

/// Annotations kept for lines not yet seen.
const MAX_EARLY: usize = 4096;
/// Requests awaiting their responses, at most. km's own table of pending requests holds as many
/// (`MAX_PENDING` of km-cli's correlator) and forgets the oldest beyond it: the response to a
/// request km forgot carries no correlation id and could never be paired here, so holding more
/// would keep records that cannot complete. Beyond the bound the oldest request is recorded
/// `unanswered` at once (its record says why) and counted in the session's end record.
pub const MAX_PENDING: usize = 4096;
/// `detail.why` of a request recorded unanswered because [`MAX_PENDING`] others came after it.
pub const EVICTED_WHY: &str =
    "more requests awaited their responses than the recording holds (4096); the oldest is recorded unanswered";
/// Correlation ids of blocked requests remembered, to ignore km's made-up answers to them.
const MAX_CLOSED: usize = 1024;
/// How long a call waits after its response for the verdicts and findings km delivers after the
/// line (microseconds). Part of the durability point: see [`crate::trail`].
pub const SETTLE_US: u64 = 100_000;
/// Calls written recently, remembered so that an annotation arriving after its call was
/// written still reaches the trail (as its own record).
const MAX_WRITTEN: usize = 1024;

/// One line as the recorder needs it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// km's sequence number.
    pub seq: u64,
    /// Which way it went.
    pub direction: Direction,
    /// What it is.
    pub kind: MessageKind,
    /// A response carrying `error`.
    pub is_error: bool,
    /// Its bytes.
    pub bytes: &'a [u8],
    /// km's correlation id.
    pub corr: &'a str,
    /// The method, when it has one.
    pub method: &'a str,
    /// When km read it.
    pub timestamp_us: u64,
    /// For a response, the time since its request.
    pub latency_us: Option<u64>,
}

/// Content to encrypt into a record before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The data subject.
    pub subject: String,
    /// The request line and the response line, separated by a newline.
    pub text: Vec<u8>,
}

/// What the plugin must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append this record (sealing the content first, if any).
    Write(Record, Option<Captured>),
    /// Append this record, whose JSON ([`record::to_json`]'s) is already made: a settled call
    /// that has not changed since its last journal note, which is that JSON, so that the call
    /// is not serialised a second time.
    WriteNoted(Record, Vec<u8>),
    /// Note in the session's journal the record this call would be if km died now: the
    /// `unanswered` call while its request waits, the complete call while it settles. The next
    /// session writes the last one noted for each call a killed km did not write. The record's
    /// JSON ([`record::to_json`]'s: one line, without its newline).
    Journal(Vec<u8>),
}

#[derive(Debug, Default, Clone)]
struct Notes {
    rules: Vec<String>,
    plugins: Vec<String>,
    findings: Vec<String>,
    finding_rules: Vec<String>,
    blocked: bool,
    redacted: bool,
}

impl Notes {
    fn merge(&mut self, other: Notes) {
        for r in other.rules {
            Record::add_unique(&mut self.rules, &r);
        }
        for p in other.plugins {
            Record::add_unique(&mut self.plugins, &p);
        }
        for f in other.findings {
            Record::add_unique(&mut self.findings, &f);
        }
        for f in other.finding_rules {
            Record::add_unique(&mut self.finding_rules, &f);
        }
        self.blocked |= other.blocked;
        self.redacted |= other.redacted;
    }

    fn apply(&self, record: &mut Record) {
        for r in &self.rules {
            Record::add_unique(&mut record.rules, r);
        }
        for p in &self.plugins {
            Record::add_unique(&mut record.plugins, p);
        }
        for f in &self.findings {
            Record::add_unique(&mut record.findings, f);
        }
        for f in &self.finding_rules {
            Record::add_unique(&mut record.finding_rules, f);
        }
    }
}

/// A call whose response was handled, waiting for late annotations.
#[derive(Debug)]
struct Settling {
    due_us: u64,
    record: Record,
    notes: Notes,
    captured: Option<Captured>,
    is_error: bool,
    /// A response to no request km saw (yet): km's answer to a blocked request, until its
    /// verdict arrives.
    unmatched: bool,
    /// The JSON of its journal note while the call is still as noted (and has no content to
    /// seal): written as it is once the call settles. Cleared by whatever changes the call.
    noted: Option<Vec<u8>>,
}

/// The JSON of `record` as the call it would be with `outcome` and `notes` applied, without
/// copying the record (see [`with_noted`]).
fn noted_json(record: &mut Record, outcome: &str, notes: &Notes) -> Vec<u8> {
    with_noted(record, outcome, notes, record::to_json)
}

/// `f` of `record` as the call it would be with `outcome` and `notes` applied, without copying
/// the record: they are applied, `f` called, and the record put back as it was (`notes` only
/// ever add to its lists).
fn with_noted<T>(
    record: &mut Record,
    outcome: &str,
    notes: &Notes,
    f: impl FnOnce(&Record) -> T,
) -> T {
    let kept = std::mem::replace(&mut record.outcome, outcome.to_owned());
    let lens = [
        record.rules.len(),
        record.plugins.len(),
        record.findings.len(),
        record.finding_rules.len(),
    ];
    notes.apply(record);
    let made = f(record);
    record.outcome = kept;
    record.rules.truncate(lens[0]);
    record.plugins.truncate(lens[1]);
    record.findings.truncate(lens[2]);
    record.finding_rules.truncate(lens[3]);
    made
}

fn outcome(notes: &Notes, is_error: bool) -> &'static str {
    if notes.blocked {
        "blocked"
    } else if notes.redacted {
        "redacted"
    } else if is_error {
        "error"
    } else {
        "ok"
    }
}

#[derive(Debug)]
struct Pending {
    /// km's sequence number of the request: its place in [`Recorder::order`].
    seq: u64,
    record: Record,
    notes: Notes,
    request_line: Option<Vec<u8>>,
    subject: String,
    since_us: u64,
    cancelled: bool,
}

/// The state of one session's recording.
#[derive(Debug)]
pub struct Recorder {
    policy: Policy,
    /// Shared with every record made (not copied into each).
    session: Arc<str>,
    actor: Arc<Actor>,
    server: Option<Arc<Server>>,
    started: bool,
    /// Boxed: the table keeps about twice as many slots as entries, and a slot of an unboxed
    /// request (920 bytes) cost more than the request's strings; a box costs a pointer.
    pending: HashMap<String, Box<Pending>>,
    /// The pending requests by km's sequence number (oldest first), for the bound and expiry.
    order: BTreeMap<u64, String>,
    /// Requests recorded unanswered because of the bound.
    evicted: u64,
    early: HashMap<String, Notes>,
    early_order: VecDeque<String>,
    closed: VecDeque<String>,
    /// Calls settling, in the order they are due.
    settling: VecDeque<Settling>,
    written: VecDeque<String>,
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// km names a verdict's direction by the way the line went; records name it by the kind of
/// line that goes that way, like the lines they record.
fn direction_of(value: &Value) -> String {
    match str_of(value, &["direction"]) {
        "client_to_server" | "request" => "request",
        "server_to_client" | "response" => "response",
        other => other,
    }
    .to_owned()
}

fn str_of<'a>(value: &'a Value, keys: &[&str]) -> &'a str {
    keys.iter()
        .find_map(|k| value.get(*k).and_then(Value::as_str))
        .unwrap_or("")
}

impl Recorder {
    /// A recorder for `session` acting as `actor`, following `policy`.
    pub fn new(policy: Policy, session: &str, actor: Actor) -> Recorder {
        Recorder {
            policy,
            session: Arc::from(session),
            actor: Arc::new(actor),
            server: None,
            started: false,
            pending: HashMap::new(),
            order: BTreeMap::new(),
            evicted: 0,
            early: HashMap::new(),
            early_order: VecDeque::new(),
            closed: VecDeque::new(),
            settling: VecDeque::new(),
            written: VecDeque::new(),
        }
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The current actor.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Requests awaiting their responses.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Requests recorded unanswered because [`MAX_PENDING`] others were awaited.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Calls whose response was handled, not yet written.
    pub fn settling(&self) -> usize {
        self.settling.len()
    }

    /// Appends to `out` what the session's journal must hold now, as its lines (each record's
    /// JSON, as [`record::to_json`] makes it, and a newline): the last note of every call not yet written
    /// (a pending request as the `unanswered` call it would be, oldest first, then the settling
    /// calls as they stand), for rewriting the journal without the calls already written. Made
    /// without copying the records: with 4 096 requests awaited, copies of them all were the
    /// largest transient of a long session.
    pub fn journal_lines(&mut self, out: &mut Vec<u8>) {
        let mut line = |record: &Record| {
            // A struct of strings, numbers and JSON values always serialises.
            let _ = serde_json::to_writer(&mut *out, record);
            out.push(b'\n');
        };
        for corr in self.order.values() {
            if let Some(p) = self.pending.get_mut(corr) {
                with_noted(&mut p.record, "unanswered", &p.notes, &mut line);
            }
        }
        // A response to no request was never journalled: it waits for a verdict to name it.
        for s in self.settling.iter_mut().filter(|s| !s.unmatched) {
            let outcome = outcome(&s.notes, s.is_error);
            with_noted(&mut s.record, outcome, &s.notes, &mut line);
        }
    }

    /// Takes the pending request `corr` out of both tables.
    fn take_pending(&mut self, corr: &str) -> Option<Pending> {
        let pending = self.pending.remove(corr)?;
        self.order.remove(&pending.seq);
        Some(*pending)
    }

    /// Queues a settling call in the order calls are due (almost always at the end: responses
    /// come in the order km read them).
    fn push_settling(&mut self, settling: Settling) {
        let at = self
            .settling
            .iter()
            .rposition(|s| s.due_us <= settling.due_us)
            .map_or(0, |p| p + 1);
        self.settling.insert(at, settling);
    }

    fn base(&self, kind: &str, t_us: u64) -> Record {
        let mut r = Record::shared(kind, record::rfc3339_us(t_us), &self.session, &self.actor);
        r.server.clone_from(&self.server);
        r
    }

    /// The session starts, with the server's command line: the `session.start` record (once).
    pub fn start(
        &mut self,
        command: &[String],
        detail: Map<String, Value>,
        t_us: u64,
    ) -> Vec<Effect> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        if !command.is_empty() {
            self.server = Some(Arc::new(Server {
                id: km_plugin_sdk::server_id(command),
                label: km_plugin_sdk::server_label(command),
            }));
        }
        let mut r = self.base("session.start", t_us);
        r.detail = detail;
        vec![Effect::Write(r, None)]
    }

    fn remember_written(&mut self, corr: &str) {
        if corr.is_empty() {
            return;
        }
        if self.written.len() >= MAX_WRITTEN {
            self.written.pop_front();
        }
        self.written.push_back(corr.to_owned());
    }

    /// An annotation for a call already written: its own record, naming the call.
    fn late(&self, kind: &str, corr: &str, notes: &Notes, data: &Value, t_us: u64) -> Vec<Effect> {
        let mut r = self.base(kind, t_us);
        r.corr = corr.to_owned();
        r.outcome = if notes.blocked {
            "blocked"
        } else if notes.redacted {
            "redacted"
        } else {
            ""
        }
        .to_owned();
        notes.apply(&mut r);
        r.detail = record::summary(data);
        r.detail.insert(
            "late".into(),
            json!("arrived after its call was written; the call is the record with the same corr"),
        );
        vec![Effect::Write(r, None)]
    }

    fn remember_early(&mut self, corr: &str, notes: Notes) {
        if let Some(existing) = self.early.get_mut(corr) {
            existing.merge(notes);
            return;
        }
        if self.early_order.len() >= MAX_EARLY {
            if let Some(old) = self.early_order.pop_front() {
                self.early.remove(&old);
            }
        }
        self.early_order.push_back(corr.to_owned());
        self.early.insert(corr.to_owned(), notes);
    }

    fn take_early(&mut self, corr: &str) -> Notes {
        match self.early.remove(corr) {
            Some(notes) => {
                self.early_order.retain(|c| c != corr);
                notes
            }
            None => Notes::default(),
        }
    }

    fn close(&mut self, corr: &str) {
        if self.closed.len() >= MAX_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back(corr.to_owned());
    }

    /// A line km forwarded.
    pub fn line(&mut self, line: &Line<'_>) -> Vec<Effect> {
        let mut out = self.flush(line.timestamp_us);
        if out.is_empty() {
            // Most lines settle nothing: their effects are returned as they are made.
            return self.take_line(line);
        }
        out.extend(self.take_line(line));
        out
    }

    fn take_line(&mut self, line: &Line<'_>) -> Vec<Effect> {
        match line.kind {
            MessageKind::REQUEST if !line.corr.is_empty() => self.request(line),
            MessageKind::RESPONSE => self.response(line),
            MessageKind::NOTIFICATION => self.notification(line),
            MessageKind::BATCH => {
                let mut r = self.base("batch", line.timestamp_us);
                r.direction = line.direction.as_str().to_owned();
                r.request = Some(Part {
                    seq: Some(line.seq),
                    at: String::new(),
                    bytes: line.bytes.len() as u64,
                    sha256: Some(record::sha256_hex(line.bytes)),
                });
                if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(line.bytes) {
                    let methods: Vec<Value> = items
                        .iter()
                        .filter_map(|i| i.get("method").cloned())
                        .collect();
                    r.detail.insert("elements".into(), json!(items.len()));
                    r.detail.insert("methods".into(), Value::Array(methods));
                }
                vec![Effect::Write(r, None)]
            }
            _ => {
                let mut r = self.base("non-json", line.timestamp_us);
                r.direction = line.direction.as_str().to_owned();
                r.request = Some(Part {
                    seq: Some(line.seq),
                    at: String::new(),
                    bytes: line.bytes.len() as u64,
                    sha256: Some(record::sha256_hex(line.bytes)),
                });
                vec![Effect::Write(r, None)]
            }
        }
    }

    fn request(&mut self, line: &Line<'_>) -> Vec<Effect> {
        let payload = record::payload(line.bytes, line.method, self.policy.needs_params());
        let mut r = self.base("call", line.timestamp_us);
        r.method = line.method.to_owned();
        r.tool = payload.target.clone();
        r.corr = line.corr.to_owned();
        r.direction = line.direction.as_str().to_owned();
        r.request = Some(Part {
            seq: Some(line.seq),
            at: r.t.clone(), // the same instant: formatted once
            bytes: line.bytes.len() as u64,
            sha256: payload.sha256,
        });
        let capture = self.policy.capture.enabled;
        let subject = if capture {
            let server = self
                .server
                .as_ref()
                .map_or(("", ""), |s| (s.id.as_str(), s.label.as_str()));
            self.policy
                .subject_of(
                    server,
                    line.method,
                    &payload.target,
                    payload.params.as_ref(),
                )
                .unwrap_or_else(|| self.actor.subject())
        } else {
            String::new()
        };
        let notes = self.take_early(line.corr);
        let awaiting = noted_json(&mut r, "unanswered", &notes);
        let mut out = Vec::new();
        while self.pending.len() >= MAX_PENDING {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(effect) = self.unanswered(&oldest, EVICTED_WHY) {
                self.evicted += 1;
                self.remember_written(&oldest);
                out.push(effect);
            }
        }
        self.order.insert(line.seq, line.corr.to_owned());
        let replaced = self.pending.insert(
            line.corr.to_owned(),
            Box::new(Pending {
                seq: line.seq,
                record: r,
                notes,
                request_line: (capture && line.bytes.len() <= self.policy.capture.max_bytes)
                    .then(|| line.bytes.to_vec()),
                subject,
                since_us: line.timestamp_us,
                cancelled: false,
            }),
        );
        if let Some(old) = replaced.filter(|old| old.seq != line.seq) {
            // km never gives two requests one correlation id; should it, the order follows
            // the newer one.
            self.order.remove(&old.seq);
        }
        out.push(Effect::Journal(awaiting));
        out
    }

    fn response(&mut self, line: &Line<'_>) -> Vec<Effect> {
        let due_us = line.timestamp_us.saturating_add(SETTLE_US);
        let Some(pending) = self.take_pending(line.corr) else {
            if !line.corr.is_empty() && self.closed.iter().any(|c| c == line.corr) {
                // km's answer to a request a verdict blocked: already recorded.
                return Vec::new();
            }
            let payload = record::payload(line.bytes, "", false);
            let mut r = self.base("call", line.timestamp_us);
            r.corr = line.corr.to_owned();
            r.response = Some(Part {
                seq: Some(line.seq),
                at: record::rfc3339_us(line.timestamp_us),
                bytes: line.bytes.len() as u64,
                sha256: payload.sha256,
            });
            r.error_code = payload.error_code;
            r.detail
                .insert("unmatched".into(), json!("a response to no request km saw"));
            let notes = self.take_early(line.corr);
            self.push_settling(Settling {
                due_us,
                record: r,
                notes,
                captured: None,
                is_error: line.is_error,
                unmatched: true,
                noted: None,
            });
            return Vec::new();
        };
        let payload = record::payload(line.bytes, &pending.record.method, false);
        let Pending {
            mut record,
            mut notes,
            request_line,
            subject,
            ..
        } = pending;
        notes.merge(self.take_early(line.corr));
        record.response = Some(Part {
            seq: Some(line.seq),
            at: record::rfc3339_us(line.timestamp_us),
            bytes: line.bytes.len() as u64,
            sha256: payload.sha256,
        });
        record.latency_us = line.latency_us;
        record.error_code = payload.error_code;
        let captured = request_line.and_then(|mut text| {
            if text.len() + line.bytes.len() + 1 > self.policy.capture.max_bytes {
                record.detail.insert(
                    "content_omitted".into(),
                    json!("larger than capture.max_bytes"),
                );
                return None;
            }
            text.push(b'\n');
            text.extend_from_slice(line.bytes);
            Some(Captured { subject, text })
        });
        let provisional = noted_json(&mut record, outcome(&notes, line.is_error), &notes);
        self.push_settling(Settling {
            due_us,
            record,
            notes,
            noted: captured.is_none().then(|| provisional.clone()),
            captured,
            is_error: line.is_error,
            unmatched: false,
        });
        vec![Effect::Journal(provisional)]
    }

    /// Calls whose settle time has come (all of them with `u64::MAX`), written.
    pub fn flush(&mut self, now_us: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        while self.settling.front().is_some_and(|s| s.due_us <= now_us) {
            let Some(s) = self.settling.pop_front() else {
                break;
            };
            self.remember_written(&s.record.corr);
            let mut record = s.record;
            record.outcome = outcome(&s.notes, s.is_error).to_owned();
            s.notes.apply(&mut record);
            out.push(match s.noted {
                Some(json) => Effect::WriteNoted(record, json),
                None => Effect::Write(record, s.captured),
            });
        }
        out
    }

    fn notification(&mut self, line: &Line<'_>) -> Vec<Effect> {
        if line.method == "notifications/cancelled" {
            if let Some(p) = self.pending.get_mut(line.corr) {
                p.cancelled = true;
            }
        }
        if self
            .policy
            .skip_notifications
            .iter()
            .any(|m| m == line.method)
        {
            return Vec::new();
        }
        let payload = record::payload(line.bytes, line.method, false);
        let mut r = self.base("notification", line.timestamp_us);
        r.method = line.method.to_owned();
        r.direction = line.direction.as_str().to_owned();
        r.corr = line.corr.to_owned();
        r.request = Some(Part {
            seq: Some(line.seq),
            at: String::new(),
            bytes: line.bytes.len() as u64,
            sha256: payload.sha256,
        });
        vec![Effect::Write(r, None)]
    }

    /// A stream event: verdicts, other plugins' events, host events, gaps, the session's end.
    pub fn event(&mut self, kind: StreamEventKind, data: &Value, timestamp_ms: i64) -> Vec<Effect> {
        let t_us = u64::try_from(timestamp_ms)
            .unwrap_or(0)
            .saturating_mul(1000);
        let mut out = if kind == StreamEventKind::END {
            Vec::new() // `end` writes everything, in order
        } else {
            self.flush(t_us)
        };
        out.extend(self.take_event(kind, data, t_us));
        out
    }

    fn take_event(&mut self, kind: StreamEventKind, data: &Value, t_us: u64) -> Vec<Effect> {
        match kind {
            StreamEventKind::START => {
                let command = strings(data.get("command").unwrap_or(&Value::Null));
                let mut detail = Map::new();
                if let Some(pid) = data.get("pid") {
                    detail.insert("pid".into(), pid.clone());
                }
                self.start(&command, detail, t_us)
            }
            StreamEventKind::END => self.end(data, t_us),
            StreamEventKind::ERROR => {
                let mut r = self.base("session.error", t_us);
                r.detail = record::summary(data);
                vec![Effect::Write(r, None)]
            }
            StreamEventKind::VERDICT => self.verdict(data, t_us),
            StreamEventKind::PLUGIN => self.plugin_event(data, t_us),
            StreamEventKind::HOST => {
                let mut r = self.base("host", t_us);
                r.detail = record::summary(data);
                vec![Effect::Write(r, None)]
            }
            StreamEventKind::GAP => {
                let mut r = self.base("gap", t_us);
                r.detail = record::summary(data);
                // km's gap events say how many; the plugin's own (inputs it could not hold
                // before its first authentication) also say why.
                r.detail.entry("why").or_insert_with(|| {
                    json!("km could not deliver these messages to the audit trail")
                });
                vec![Effect::Write(r, None)]
            }
            _ => Vec::new(),
        }
    }

    fn verdict(&mut self, data: &Value, t_us: u64) -> Vec<Effect> {
        let action = str_of(data, &["action"]);
        let plugin = str_of(data, &["plugin"]).to_owned();
        let corr = str_of(data, &["correlation_id"]).to_owned();
        let line_kind = match str_of(data, &["kind"]) {
            "" => str_of(data, &["direction"]),
            k => k,
        };
        let blocked = action != "replace"; // anything but replace is a block (fail closed)
        let notes = Notes {
            rules: strings(data.get("rules").unwrap_or(&Value::Null)),
            plugins: vec![plugin.clone()],
            blocked,
            redacted: !blocked,
            ..Notes::default()
        };
        if corr.is_empty() || line_kind == "notification" {
            let mut r = self.base("verdict", t_us);
            r.method = str_of(data, &["method"]).to_owned();
            r.tool = str_of(data, &["target"]).to_owned();
            r.direction = direction_of(data);
            r.outcome = if blocked { "blocked" } else { "redacted" }.to_owned();
            notes.apply(&mut r);
            r.detail = record::summary(data);
            return vec![Effect::Write(r, None)];
        }
        if let Some(settling) = self.settling.iter_mut().find(|s| s.record.corr == corr) {
            if settling.unmatched && line_kind == "request" && blocked {
                // km's answer to this blocked request came first: it is the call's response.
                let r = &mut settling.record;
                r.method = str_of(data, &["method"]).to_owned();
                r.tool = str_of(data, &["target"]).to_owned();
                r.direction = direction_of(data);
                r.detail.remove("unmatched");
                if let Some(reason) = data.get("reason").and_then(Value::as_str) {
                    r.detail.insert("reason".into(), json!(reason));
                }
                settling.unmatched = false;
            }
            settling.notes.merge(notes);
            settling.noted = None;
            return Vec::new();
        }
        if line_kind == "request" && blocked && !self.pending.contains_key(&corr) {
            // Never forwarded: the call ends here.
            let mut notes = notes;
            notes.merge(self.take_early(&corr));
            let mut r = self.base("call", t_us);
            r.method = str_of(data, &["method"]).to_owned();
            r.tool = str_of(data, &["target"]).to_owned();
            r.corr = corr.clone();
            r.direction = direction_of(data);
            r.outcome = "blocked".to_owned();
            r.request = Some(Part {
                seq: None,
                at: record::rfc3339_us(t_us),
                bytes: 0,
                sha256: None,
            });
            if let Some(reason) = data.get("reason").and_then(Value::as_str) {
                r.detail.insert("reason".into(), json!(reason));
            }
            notes.apply(&mut r);
            self.close(&corr);
            return vec![Effect::Write(r, None)];
        }
        if let Some(p) = self.pending.get_mut(&corr) {
            p.notes.merge(notes);
        } else if self.written.contains(&corr) {
            return self.late("verdict", &corr, &notes, data, t_us);
        } else {
            self.remember_early(&corr, notes);
        }
        Vec::new()
    }

    fn plugin_event(&mut self, event: &Value, t_us: u64) -> Vec<Effect> {
        let plugin = str_of(event, &["plugin"]).to_owned();
        let kind = str_of(event, &["kind"]).to_owned();
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        match kind.as_str() {
            "member" => {
                let member = str_of(&data, &["member", "member_id", "id"]);
                if member.is_empty() {
                    return Vec::new();
                }
                // The records made before keep the actor they were made with.
                Arc::make_mut(&mut self.actor).member = Some(member.chars().take(128).collect());
                let mut r = self.base("actor", t_us);
                r.plugins = vec![plugin];
                r.detail = record::summary(&data);
                vec![Effect::Write(r, None)]
            }
            "finding" => self.finding(&plugin, &data, t_us),
            _ => {
                let record_kind = match kind.as_str() {
                    "drift" | "change" | "approval" | "tool-change" => "change",
                    "anomaly" => "anomaly",
                    _ => "plugin-event",
                };
                let mut r = self.base(record_kind, t_us);
                r.plugins = vec![plugin];
                r.tool = str_of(&data, &["tool", "name"]).to_owned();
                r.detail = record::summary(&data);
                r.detail.insert("event".into(), json!(kind));
                vec![Effect::Write(r, None)]
            }
        }
    }

    fn finding(&mut self, plugin: &str, data: &Value, t_us: u64) -> Vec<Effect> {
        let corr = str_of(data, &["correlation_id"]).to_owned();
        let items: Vec<&Value> = match data.get("findings") {
            Some(Value::Array(list)) => list.iter().collect(),
            _ => vec![data],
        };
        let mut notes = Notes {
            plugins: vec![plugin.to_owned()],
            ..Notes::default()
        };
        for item in items {
            Record::add_unique(&mut notes.findings, str_of(item, &["category"]));
            Record::add_unique(&mut notes.finding_rules, str_of(item, &["rule", "rule_id"]));
        }
        if corr.is_empty() {
            let mut r = self.base("finding", t_us);
            r.method = str_of(data, &["method"]).to_owned();
            r.tool = str_of(data, &["tool", "target"]).to_owned();
            r.direction = direction_of(data);
            notes.apply(&mut r);
            r.detail = record::summary(data);
            return vec![Effect::Write(r, None)];
        }
        if let Some(p) = self.pending.get_mut(&corr) {
            p.notes.merge(notes);
        } else if let Some(s) = self.settling.iter_mut().find(|s| s.record.corr == corr) {
            s.notes.merge(notes);
            s.noted = None;
        } else if self.written.contains(&corr) {
            return self.late("finding", &corr, &notes, data, t_us);
        } else {
            self.remember_early(&corr, notes);
        }
        Vec::new()
    }

    fn unanswered(&mut self, corr: &str, why: &str) -> Option<Effect> {
        let Pending {
            mut record,
            notes,
            cancelled,
            ..
        } = self.take_pending(corr)?;
        record.outcome = if notes.blocked {
            "blocked"
        } else if cancelled {
            "cancelled"
        } else {
            "unanswered"
        }
        .to_owned();
        notes.apply(&mut record);
        record.detail.insert("why".into(), json!(why));
        Some(Effect::Write(record, None))
    }

    /// Requests that waited longer than the policy's timeout, as `unanswered` calls.
    pub fn expire(&mut self, now_us: u64) -> Vec<Effect> {
        let mut out = self.flush(now_us);
        let limit = u64::try_from(self.policy.pending_timeout.as_micros()).unwrap_or(u64::MAX);
        // Oldest first, by km's sequence number (the order it read them, so the order of their
        // times): the walk stops at the first request still within the timeout.
        let old: Vec<String> = self
            .order
            .values()
            .take_while(|c| {
                self.pending
                    .get(*c)
                    .is_some_and(|p| now_us.saturating_sub(p.since_us) >= limit)
            })
            .cloned()
            .collect();
        out.extend(
            old.into_iter()
                .filter_map(|c| self.unanswered(&c, "no response within the pending timeout")),
        );
        out
    }

    /// The session ends: what is still pending, then `session.end`.
    pub fn end(&mut self, data: &Value, t_us: u64) -> Vec<Effect> {
        let left: Vec<String> = self.order.values().cloned().collect();
        let mut out = self.flush(u64::MAX);
        out.extend(
            left.into_iter()
                .filter_map(|c| self.unanswered(&c, "the session ended before the response")),
        );
        let mut r = self.base("session.end", t_us);
        r.detail = record::summary(data);
        if self.evicted > 0 {
            r.detail
                .insert("pending_evicted".into(), json!(self.evicted));
        }
        if let Some(messages) = data.get("messages").filter(|m| m.is_object()) {
            r.detail.insert("messages".into(), messages.clone());
        }
        out.push(Effect::Write(r, None));
        out
    }
}

#[cfg(test)]
mod tests;
