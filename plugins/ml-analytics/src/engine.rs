//! One session's analytics: pairs requests with their outcomes, counts them into minute
//! buckets, feeds the anomaly model, and hands the store what to merge at each flush.
//!
//! Everything here is synchronous, allocation-light and free of I/O, so that it can run on
//! km's worker thread for every line, and so that tests drive it with made-up timestamps. Time
//! is the messages' own (`timestamp_us`, when km read the line), never the clock, except in
//! [`Engine::tick`], which the plugin calls with the clock to find overdue requests.
//!
//! Memory is bounded whatever the peers send: at most [`MAX_PENDING`] requests in flight (the
//! oldest is counted as unanswered beyond that), [`MAX_SERIES`] series per session (later ones
//! are counted under the tool `(other)`), target names cut to [`MAX_TARGET`] bytes, and the
//! anomalies of one session capped by `max_anomalies_per_session`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};

use km_plugin_sdk::{Direction, Message, MessageKind};

use crate::anomaly::{self, Anomaly, Expected, Kind};
use crate::clock::{self, MINUTE};
use crate::model::{Judgement, Live, SeriesModel, Thresholds};
use crate::parse;
use crate::stats::{CallRecord, Outcome, SeriesKey, SeriesStats};
use crate::store::{FlushBatch, Models, ServerDelta};

/// Requests in flight at once.
pub(crate) const MAX_PENDING: usize = 4096;
/// Series one session counts separately.
pub(crate) const MAX_SERIES: usize = 1000;
/// The longest tool, prompt or URI kept (bytes).
pub(crate) const MAX_TARGET: usize = 200;
/// The tool name that series past [`MAX_SERIES`] are counted under.
pub(crate) const OTHER: &str = "(other)";
/// The server id used before km says which server this is (a km older than ABI 1.1 that sent
/// no start event).
pub(crate) const UNKNOWN_SERVER: &str = "unknown";

#[derive(Debug)]
struct Pending {
    slot: u32,
    direction: Direction,
    start_us: u64,
    request_bytes: u64,
    progress: u64,
    token: Option<String>,
    overdue: bool,
}

/// Everything the session keeps about one series, in one place, so that a line finds it with
/// one lookup (by method, then tool: no key is built for it) and a finished call touches it
/// through its index.
#[derive(Debug)]
struct Slot {
    key: SeriesKey,
    model: SeriesModel,
    live: Live,
    /// Whether the model changed since the last flush.
    dirty: bool,
    /// Counts since the last flush, by minute (usually one or two entries).
    delta: Vec<(i64, SeriesStats)>,
}

impl Slot {
    fn stats_at(&mut self, minute: i64) -> &mut SeriesStats {
        let at = match self.delta.iter().rposition(|(m, _)| *m == minute) {
            Some(at) => at,
            None => {
                self.delta.push((minute, SeriesStats::default()));
                self.delta.len() - 1
            }
        };
        &mut self.delta[at].1
    }
}

/// Counters of the session that belong to no series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) messages: u64,
    /// Responses whose request was not seen (or was already over).
    pub(crate) unpaired: u64,
    /// JSON-RPC batches (not broken down).
    pub(crate) batches: u64,
    /// Anomalies past the session's cap, not recorded.
    pub(crate) suppressed: u64,
}

/// One session.
#[derive(Debug)]
pub(crate) struct Engine {
    th: Thresholds,
    max_anomalies: u32,
    session_id: String,
    server: String,
    server_label: String,
    /// What the store knew when the session began: (sessions, calls) of this server.
    server_before: (u64, u64),
    pending: HashMap<String, Pending>,
    /// The pending keys in the order they came, for evicting the oldest in constant time
    /// (answered ones are skipped when met, and swept when they outnumber the pending).
    order: VecDeque<String>,
    tokens: HashMap<(bool, String), String>,
    slots: Vec<Slot>,
    /// method -> tool -> slot.
    index: HashMap<String, HashMap<String, u32>>,
    /// Series this session added (the rest came from the store).
    new_series: usize,
    server_delta: ServerDelta,
    flushed_once: bool,
    new_anomalies: Vec<Anomaly>,
    unwritten_anomalies: Vec<Anomaly>,
    anomaly_count: u32,
    counters: Counters,
}

impl Engine {
    /// A session with `session_id`, judged by `th`.
    pub(crate) fn new(session_id: &str, th: Thresholds, max_anomalies: u32) -> Self {
        Engine {
            th,
            max_anomalies,
            session_id: session_id.to_owned(),
            server: UNKNOWN_SERVER.to_owned(),
            server_label: UNKNOWN_SERVER.to_owned(),
            server_before: (0, 0),
            pending: HashMap::new(),
            order: VecDeque::new(),
            tokens: HashMap::new(),
            slots: Vec::new(),
            index: HashMap::new(),
            new_series: 0,
            server_delta: ServerDelta::default(),
            flushed_once: false,
            new_anomalies: Vec::new(),
            unwritten_anomalies: Vec::new(),
            anomaly_count: 0,
            counters: Counters::default(),
        }
    }

    /// Says which server the session talks to, with what the store learned about it before.
    /// (Lines seen before, if any, stay counted under the server they were seen with.)
    pub(crate) fn begin(&mut self, server: &str, label: &str, models: Models) {
        self.server = server.to_owned();
        self.server_label = label.to_owned();
        self.server_before = models
            .servers
            .get(server)
            .map_or((0, 0), |s| (s.sessions, s.calls));
        self.index.clear();
        for (key, model) in models.series {
            if key.server == server {
                self.add_slot(key, model);
            }
        }
        self.new_series = 0;
        self.server_delta.label = label.to_owned();
    }

    fn add_slot(&mut self, key: SeriesKey, model: SeriesModel) -> u32 {
        let at = self.slots.len() as u32;
        self.index
            .entry(key.method.clone())
            .or_default()
            .insert(key.tool.clone(), at);
        self.slots.push(Slot {
            key,
            model,
            live: Live::default(),
            dirty: false,
            delta: Vec::new(),
        });
        at
    }

    fn lookup(&self, method: &str, tool: &str) -> Option<u32> {
        self.index.get(method)?.get(tool).copied()
    }

    /// The slot of (method, tool), and whether it is new (not known from the store nor seen in
    /// this session).
    fn slot_for(&mut self, method: &str, target: Option<&str>, t_ms: i64) -> (u32, bool) {
        let mut tool = target.unwrap_or_default();
        if tool.len() > MAX_TARGET {
            let mut end = MAX_TARGET;
            while !tool.is_char_boundary(end) {
                end -= 1;
            }
            tool = &tool[..end];
        }
        if let Some(at) = self.lookup(method, tool) {
            return (at, false);
        }
        if self.new_series >= MAX_SERIES {
            tool = OTHER;
            if let Some(at) = self.lookup(method, tool) {
                return (at, false);
            }
        } else {
            self.new_series += 1;
        }
        let key = SeriesKey {
            server: self.server.clone(),
            method: method.to_owned(),
            tool: tool.to_owned(),
        };
        let model = SeriesModel {
            first_seen_ms: t_ms,
            ..SeriesModel::default()
        };
        (self.add_slot(key, model), tool != OTHER)
    }

    /// The session's counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Anomalies raised since the last call, for the plugin to emit and log.
    pub(crate) fn take_new_anomalies(&mut self) -> Vec<Anomaly> {
        std::mem::take(&mut self.new_anomalies)
    }

    /// Whether anomalies wait to be taken.
    pub(crate) fn has_new_anomalies(&self) -> bool {
        !self.new_anomalies.is_empty()
    }

    /// Counts one line.
    pub(crate) fn observe(&mut self, message: &Message<'_>) {
        self.counters.messages += 1;
        match message.kind {
            MessageKind::REQUEST => self.request(message),
            MessageKind::RESPONSE => self.response(message),
            MessageKind::NOTIFICATION => self.notification(message),
            MessageKind::BATCH => self.counters.batches += 1,
            _ => {}
        }
    }

    /// The key a line is paired by: km's correlation id, or (sender, id) when km gave none.
    fn pairing_key<'m>(message: &Message<'m>, sender: Direction) -> Option<Cow<'m, str>> {
        if !message.correlation_id.is_empty() {
            return Some(Cow::Borrowed(message.correlation_id.as_str()));
        }
        if message.id.is_empty() {
            return None;
        }
        let side = match sender {
            Direction::Request => 'c',
            Direction::Response => 's',
        };
        Some(Cow::Owned(format!("{side}:{}", message.id)))
    }

    fn request(&mut self, message: &Message<'_>) {
        let method = message.method.as_str();
        if method.is_empty() {
            return;
        }
        let Some(pairing) = Self::pairing_key(message, message.direction) else {
            return;
        };
        let fields = parse::request(message.bytes(), method);
        let t_ms = (message.timestamp_us / 1000) as i64;
        let (slot, is_new) = self.slot_for(method, fields.target.as_deref(), t_ms);
        let th = &self.th;
        let s = &mut self.slots[slot as usize];
        s.model.last_seen_ms = s.model.last_seen_ms.max(t_ms);
        s.dirty = true;
        let mut raised = Vec::new();
        if method == "tools/call" {
            // A new tool on a server known from earlier sessions (a server seen for the first
            // time has only new tools: that is its warm-up).
            let (sessions, calls) = self.server_before;
            if is_new && sessions >= 1 && calls >= th.warmup_calls {
                raised.push((
                    Kind::FirstTimeTool,
                    Judgement {
                        observed: 1.0,
                        low: 0.0,
                        high: 0.0,
                    },
                ));
            }
            if let Some(j) = s.model.observe_call(&mut s.live, t_ms, th) {
                raised.push((Kind::CallRate, j));
            }
        }
        for (kind, j) in raised {
            self.raise(kind, slot, t_ms, j);
        }
        if self.pending.len() >= MAX_PENDING {
            self.evict_oldest();
        }
        let token = fields.progress_token.map(Cow::into_owned);
        if let Some(token) = &token {
            let sender_is_client = message.direction == Direction::Request;
            self.tokens
                .insert((sender_is_client, token.clone()), pairing.to_string());
        }
        let pairing = pairing.into_owned();
        self.order.push_back(pairing.clone());
        if self.order.len() > 2 * MAX_PENDING.max(self.pending.len()) {
            let pending = &self.pending;
            self.order.retain(|k| pending.contains_key(k));
        }
        let replaced = self.pending.insert(
            pairing,
            Pending {
                slot,
                direction: message.direction,
                start_us: message.timestamp_us,
                request_bytes: message.data.len() as u64,
                progress: 0,
                token,
                overdue: false,
            },
        );
        // An id reused while its first request was pending: the first is over, unanswered.
        if let Some(old) = replaced {
            self.finish(old, Outcome::Unanswered, None, None, message.timestamp_us);
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(key) = self.order.pop_front() {
            if let Some(p) = self.pending.remove(&key) {
                let at = p.start_us;
                self.finish(p, Outcome::Unanswered, None, None, at);
                return;
            }
        }
    }

    fn response(&mut self, message: &Message<'_>) {
        let request_sender = match message.direction {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        };
        let Some(pending) = Self::pairing_key(message, request_sender)
            .and_then(|pairing| self.pending.remove(pairing.as_ref()))
        else {
            self.counters.unpaired += 1;
            return;
        };
        let outcome = if message.is_error {
            Outcome::RpcError(parse::error_code(message.bytes()))
        } else if self.slots[pending.slot as usize].key.method == "tools/call"
            && parse::tool_result_is_error(message.bytes())
        {
            Outcome::ToolError
        } else {
            Outcome::Ok
        };
        let latency = message
            .latency_us
            .into_option()
            .unwrap_or_else(|| message.timestamp_us.saturating_sub(pending.start_us));
        self.finish(
            pending,
            outcome,
            Some(latency),
            Some(message.data.len() as u64),
            message.timestamp_us,
        );
    }

    fn notification(&mut self, message: &Message<'_>) {
        match message.method.as_str() {
            "notifications/progress" => {
                let correlation = message.correlation_id.as_str();
                if let Some(p) = self.pending.get_mut(correlation) {
                    p.progress += 1;
                    return;
                }
                let Some(token) = parse::progress_token(message.bytes()) else {
                    return;
                };
                // Progress travels against its request: a server's progress is for a client's
                // request.
                let for_client_request = message.direction == Direction::Response;
                if let Some(pairing) = self.tokens.get(&(for_client_request, token.into_owned())) {
                    if let Some(p) = self.pending.get_mut(pairing) {
                        p.progress += 1;
                    }
                }
            }
            "notifications/cancelled" => {
                if message.correlation_id.is_empty() {
                    return;
                }
                if let Some(p) = self.pending.remove(message.correlation_id.as_str()) {
                    self.finish(p, Outcome::Cancelled, None, None, message.timestamp_us);
                }
            }
            _ => {}
        }
    }

    fn finish(
        &mut self,
        pending: Pending,
        outcome: Outcome,
        latency_us: Option<u64>,
        response_bytes: Option<u64>,
        now_us: u64,
    ) {
        if let Some(token) = pending.token {
            self.tokens
                .remove(&(pending.direction == Direction::Request, token));
        }
        let minute = clock::floor((pending.start_us / 1_000_000) as i64, MINUTE);
        let now_ms = (now_us / 1000) as i64;
        self.server_delta.calls += 1;
        if self.server_delta.first_seen_ms == 0 {
            self.server_delta.first_seen_ms = (pending.start_us / 1000) as i64;
        }
        self.server_delta.last_seen_ms = self.server_delta.last_seen_ms.max(now_ms);
        let th = &self.th;
        let s = &mut self.slots[pending.slot as usize];
        s.stats_at(minute).record(&CallRecord {
            outcome,
            latency_us,
            request_bytes: pending.request_bytes,
            response_bytes,
            progress: pending.progress,
        });
        s.dirty = true;
        s.model.last_seen_ms = s.model.last_seen_ms.max(now_ms);
        let mut raised = Vec::new();
        if let (Outcome::Ok, Some(us)) = (outcome, latency_us) {
            if let Some(j) = s.model.observe_latency(us as f64 / 1000.0, th) {
                raised.push((Kind::Latency, j));
            }
        }
        if matches!(
            outcome,
            Outcome::Ok | Outcome::RpcError(_) | Outcome::ToolError
        ) {
            if let Some(j) = s
                .model
                .observe_outcome(&mut s.live, outcome.is_failure(), th)
            {
                raised.push((Kind::ErrorRate, j));
            }
        }
        for (kind, j) in raised {
            self.raise(kind, pending.slot, now_ms, j);
        }
    }

    fn raise(&mut self, kind: Kind, slot: u32, t_ms: i64, j: Judgement) {
        if self.anomaly_count >= self.max_anomalies {
            self.counters.suppressed += 1;
            return;
        }
        self.anomaly_count += 1;
        let key = &self.slots[slot as usize].key;
        let expected = Expected {
            low: j.low,
            high: j.high,
        };
        let subject = anomaly::subject(&key.method, &key.tool);
        let record = Anomaly {
            id: format!("{}-{}", self.session_id, self.anomaly_count),
            time: clock::rfc3339(t_ms),
            time_ms: t_ms,
            kind,
            server: key.server.clone(),
            server_label: self.server_label.clone(),
            method: key.method.clone(),
            tool: key.tool.clone(),
            observed: round(j.observed),
            expected: Expected {
                low: round(expected.low),
                high: round(expected.high),
            },
            unit: kind.unit().to_owned(),
            session_id: self.session_id.clone(),
            detail: anomaly::describe(kind, &subject, j.observed, expected),
        };
        self.unwritten_anomalies.push(record.clone());
        self.new_anomalies.push(record);
    }

    /// Raises `unanswered` for requests pending longer than their series allows, at `now_ms`.
    pub(crate) fn tick(&mut self, now_ms: i64) {
        let mut overdue = Vec::new();
        for p in self.pending.values_mut() {
            if p.overdue {
                continue;
            }
            let waited = now_ms - (p.start_us / 1000) as i64;
            let limit = self.slots[p.slot as usize].model.overdue_after_ms(&self.th);
            if waited as f64 > limit {
                p.overdue = true;
                overdue.push((p.slot, waited as f64, limit));
            }
        }
        for (slot, waited, limit) in overdue {
            self.raise(
                Kind::Unanswered,
                slot,
                now_ms,
                Judgement {
                    observed: waited,
                    low: 0.0,
                    high: limit,
                },
            );
        }
    }

    /// The session is over at `now_us`: what is still pending was never answered, and the
    /// session's windows are folded into the model.
    pub(crate) fn end(&mut self, now_us: u64) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        self.order.clear();
        self.tokens.clear();
        let mut left: BTreeMap<u32, (u64, bool)> = BTreeMap::new();
        for p in pending {
            let entry = left.entry(p.slot).or_default();
            entry.0 += 1;
            entry.1 |= !p.overdue;
            self.finish(p, Outcome::Unanswered, None, None, now_us);
        }
        let now_ms = (now_us / 1000) as i64;
        for (slot, (count, unflagged)) in left {
            if unflagged {
                self.raise(
                    Kind::Unanswered,
                    slot,
                    now_ms,
                    Judgement {
                        observed: count as f64,
                        low: 0.0,
                        high: 0.0,
                    },
                );
            }
        }
        let th = &self.th;
        for s in &mut self.slots {
            if s.live.is_active() {
                s.model.fold_window(&mut s.live);
                s.model.fold_minute(&mut s.live, th);
                s.dirty = true;
            }
        }
    }

    /// What to merge into the store now; counts leave the engine (give them back with
    /// [`Engine::restore`] if the flush fails).
    pub(crate) fn take_flush(&mut self) -> FlushBatch {
        let mut batch = FlushBatch {
            anomalies: std::mem::take(&mut self.unwritten_anomalies),
            ..FlushBatch::default()
        };
        for s in &mut self.slots {
            for (minute, stats) in s.delta.drain(..) {
                batch
                    .stats
                    .entry(minute)
                    .or_default()
                    .entry(s.key.clone())
                    .or_default()
                    .merge(&stats);
            }
            if s.dirty {
                s.dirty = false;
                batch.models.insert(s.key.clone(), s.model.clone());
            }
        }
        let mut delta = std::mem::take(&mut self.server_delta);
        self.server_delta.label = delta.label.clone();
        if !self.flushed_once && (delta.calls > 0 || !batch.stats.is_empty()) {
            delta.sessions = 1;
            self.flushed_once = true;
        }
        if delta.calls > 0 || delta.sessions > 0 {
            batch.servers.insert(self.server.clone(), delta);
        }
        batch
    }

    /// Takes back what a failed flush did not write.
    pub(crate) fn restore(&mut self, batch: FlushBatch) {
        for (minute, series) in batch.stats {
            for (key, stats) in series {
                let slot = match self.lookup(&key.method, &key.tool) {
                    Some(at) if self.slots[at as usize].key == key => at,
                    _ => self.add_slot(key, SeriesModel::default()),
                };
                self.slots[slot as usize].stats_at(minute).merge(&stats);
            }
        }
        for key in batch.models.into_keys() {
            if let Some(at) = self.lookup(&key.method, &key.tool) {
                self.slots[at as usize].dirty = true;
            }
        }
        let mut anomalies = batch.anomalies;
        anomalies.append(&mut self.unwritten_anomalies);
        self.unwritten_anomalies = anomalies;
        for (server, delta) in batch.servers {
            if server != self.server {
                continue;
            }
            self.server_delta.calls += delta.calls;
            if delta.sessions > 0 {
                // The first flush did not happen after all.
                self.flushed_once = false;
            }
            if self.server_delta.first_seen_ms == 0 {
                self.server_delta.first_seen_ms = delta.first_seen_ms;
            }
            self.server_delta.last_seen_ms = self.server_delta.last_seen_ms.max(delta.last_seen_ms);
        }
    }
}

/// Four significant decimals are plenty for a record, and keep it readable.
fn round(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e4).round() / 1e4
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests;
