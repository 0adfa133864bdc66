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

use std::collections::{BTreeMap, HashMap};

use km_plugin_sdk::{Direction, Message, MessageKind};

use crate::anomaly::{self, Anomaly, Expected, Kind};
use crate::clock::{self, MINUTE};
use crate::model::{Judgement, Live, SeriesModel, Thresholds};
use crate::parse;
use crate::stats::{CallRecord, Outcome, SeriesKey};
use crate::store::{Buckets, FlushBatch, Models, ServerDelta};

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
    key: SeriesKey,
    direction: Direction,
    start_us: u64,
    request_bytes: u64,
    progress: u64,
    token: Option<String>,
    overdue: bool,
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
    tokens: HashMap<(bool, String), String>,
    delta: Buckets,
    models: BTreeMap<SeriesKey, SeriesModel>,
    live: HashMap<SeriesKey, Live>,
    /// Series touched since the last flush (their models are merged).
    dirty: BTreeMap<SeriesKey, ()>,
    series_seen: usize,
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
            tokens: HashMap::new(),
            delta: Buckets::new(),
            models: BTreeMap::new(),
            live: HashMap::new(),
            dirty: BTreeMap::new(),
            series_seen: 0,
            server_delta: ServerDelta::default(),
            flushed_once: false,
            new_anomalies: Vec::new(),
            unwritten_anomalies: Vec::new(),
            anomaly_count: 0,
            counters: Counters::default(),
        }
    }

    /// Says which server the session talks to, with what the store learned about it before.
    pub(crate) fn begin(&mut self, server: &str, label: &str, models: Models) {
        self.server = server.to_owned();
        self.server_label = label.to_owned();
        self.server_before = models
            .servers
            .get(server)
            .map_or((0, 0), |s| (s.sessions, s.calls));
        self.models = models
            .series
            .into_iter()
            .filter(|(key, _)| key.server == server)
            .collect();
        self.server_delta.label = label.to_owned();
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
    fn pairing_key(message: &Message<'_>, sender: Direction) -> Option<String> {
        if !message.correlation_id.is_empty() {
            return Some(message.correlation_id.as_str().to_owned());
        }
        if message.id.is_empty() {
            return None;
        }
        let side = match sender {
            Direction::Request => 'c',
            Direction::Response => 's',
        };
        Some(format!("{side}:{}", message.id))
    }

    fn series_key(&mut self, method: &str, target: Option<&str>) -> SeriesKey {
        let mut tool = target.unwrap_or_default();
        if tool.len() > MAX_TARGET {
            let mut end = MAX_TARGET;
            while !tool.is_char_boundary(end) {
                end -= 1;
            }
            tool = &tool[..end];
        }
        let key = SeriesKey {
            server: self.server.clone(),
            method: method.to_owned(),
            tool: tool.to_owned(),
        };
        if self.live.contains_key(&key) {
            return key;
        }
        if self.series_seen >= MAX_SERIES {
            return SeriesKey {
                tool: OTHER.to_owned(),
                ..key
            };
        }
        self.series_seen += 1;
        self.live.insert(key.clone(), Live::default());
        key
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
        let key = self.series_key(method, fields.target.as_deref());
        let t_ms = (message.timestamp_us / 1000) as i64;
        let model_known = self.models.contains_key(&key);
        let model = self
            .models
            .entry(key.clone())
            .or_insert_with(|| SeriesModel {
                first_seen_ms: t_ms,
                ..SeriesModel::default()
            });
        model.last_seen_ms = model.last_seen_ms.max(t_ms);
        if method == "tools/call" && !model_known && key.tool != OTHER {
            // A new tool on a server known from earlier sessions (a server seen for the first
            // time has only new tools: that is its warm-up).
            let (sessions, calls) = self.server_before;
            if sessions >= 1 && calls >= self.th.warmup_calls {
                self.raise(
                    Kind::FirstTimeTool,
                    &key,
                    t_ms,
                    Judgement {
                        observed: 1.0,
                        low: 0.0,
                        high: 0.0,
                    },
                );
            }
        }
        if method == "tools/call" {
            let live = self.live.entry(key.clone()).or_default();
            let model = self.models.entry(key.clone()).or_default();
            if let Some(j) = model.observe_call(live, t_ms, &self.th) {
                self.raise(Kind::CallRate, &key, t_ms, j);
            }
        }
        self.dirty.insert(key.clone(), ());
        if self.pending.len() >= MAX_PENDING {
            self.evict_oldest();
        }
        let sender_is_client = message.direction == Direction::Request;
        if let Some(token) = &fields.progress_token {
            self.tokens
                .insert((sender_is_client, token.clone()), pairing.clone());
        }
        let replaced = self.pending.insert(
            pairing,
            Pending {
                key,
                direction: message.direction,
                start_us: message.timestamp_us,
                request_bytes: message.data.len() as u64,
                progress: 0,
                token: fields.progress_token,
                overdue: false,
            },
        );
        // An id reused while its first request was pending: the first is over, unanswered.
        if let Some(old) = replaced {
            self.finish(old, Outcome::Unanswered, None, None, message.timestamp_us);
        }
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.start_us)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            if let Some(p) = self.pending.remove(&key) {
                let at = p.start_us;
                self.finish(p, Outcome::Unanswered, None, None, at);
            }
        }
    }

    fn response(&mut self, message: &Message<'_>) {
        let request_sender = match message.direction {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        };
        let Some(pairing) = Self::pairing_key(message, request_sender) else {
            self.counters.unpaired += 1;
            return;
        };
        let Some(pending) = self.pending.remove(&pairing) else {
            self.counters.unpaired += 1;
            return;
        };
        let outcome = if message.is_error {
            Outcome::RpcError(parse::error_code(message.bytes()))
        } else if pending.key.method == "tools/call" && parse::tool_result_is_error(message.bytes())
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
                let by_correlation = (!message.correlation_id.is_empty())
                    .then(|| message.correlation_id.as_str())
                    .filter(|c| self.pending.contains_key(*c))
                    .map(str::to_owned);
                let pairing = by_correlation.or_else(|| {
                    let token = parse::progress_token(message.bytes())?;
                    // Progress travels against its request: a server's progress is for a
                    // client's request.
                    let for_client_request = message.direction == Direction::Response;
                    self.tokens.get(&(for_client_request, token)).cloned()
                });
                if let Some(p) = pairing.and_then(|k| self.pending.get_mut(&k)) {
                    p.progress += 1;
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
        if let Some(token) = &pending.token {
            self.tokens
                .remove(&(pending.direction == Direction::Request, token.clone()));
        }
        let start_secs = (pending.start_us / 1_000_000) as i64;
        let bucket = clock::floor(start_secs, MINUTE);
        self.delta
            .entry(bucket)
            .or_default()
            .entry(pending.key.clone())
            .or_default()
            .record(&CallRecord {
                outcome,
                latency_us,
                request_bytes: pending.request_bytes,
                response_bytes,
                progress: pending.progress,
            });
        let now_ms = (now_us / 1000) as i64;
        self.server_delta.calls += 1;
        if self.server_delta.first_seen_ms == 0 {
            self.server_delta.first_seen_ms = (pending.start_us / 1000) as i64;
        }
        self.server_delta.last_seen_ms = self.server_delta.last_seen_ms.max(now_ms);
        self.dirty.insert(pending.key.clone(), ());
        let key = pending.key;
        let model = self.models.entry(key.clone()).or_default();
        model.last_seen_ms = model.last_seen_ms.max(now_ms);
        let mut verdicts = Vec::new();
        if let (Outcome::Ok, Some(us)) = (outcome, latency_us) {
            if let Some(j) = model.observe_latency(us as f64 / 1000.0, &self.th) {
                verdicts.push((Kind::Latency, j));
            }
        }
        if matches!(
            outcome,
            Outcome::Ok | Outcome::RpcError(_) | Outcome::ToolError
        ) {
            let live = self.live.entry(key.clone()).or_default();
            if let Some(j) = model.observe_outcome(live, outcome.is_failure(), &self.th) {
                verdicts.push((Kind::ErrorRate, j));
            }
        }
        for (kind, j) in verdicts {
            self.raise(kind, &key, now_ms, j);
        }
    }

    fn raise(&mut self, kind: Kind, key: &SeriesKey, t_ms: i64, j: Judgement) {
        if self.anomaly_count >= self.max_anomalies {
            self.counters.suppressed += 1;
            return;
        }
        self.anomaly_count += 1;
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
            let limit = self
                .models
                .get(&p.key)
                .map_or(self.th.unanswered_after_ms, |m| {
                    m.overdue_after_ms(&self.th)
                });
            if waited as f64 > limit {
                p.overdue = true;
                overdue.push((p.key.clone(), waited as f64, limit));
            }
        }
        for (key, waited, limit) in overdue {
            self.raise(
                Kind::Unanswered,
                &key,
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
        self.tokens.clear();
        let mut left: BTreeMap<SeriesKey, (u64, bool)> = BTreeMap::new();
        for p in pending {
            let entry = left.entry(p.key.clone()).or_default();
            entry.0 += 1;
            entry.1 |= !p.overdue;
            self.finish(p, Outcome::Unanswered, None, None, now_us);
        }
        let now_ms = (now_us / 1000) as i64;
        for (key, (count, unflagged)) in left {
            if unflagged {
                self.raise(
                    Kind::Unanswered,
                    &key,
                    now_ms,
                    Judgement {
                        observed: count as f64,
                        low: 0.0,
                        high: 0.0,
                    },
                );
            }
        }
        for (key, live) in &mut self.live {
            if let Some(model) = self.models.get_mut(key) {
                model.fold_window(live);
                model.fold_minute(live, &self.th);
                self.dirty.insert(key.clone(), ());
            }
        }
    }

    /// What to merge into the store now; counts leave the engine (give them back with
    /// [`Engine::restore`] if the flush fails).
    pub(crate) fn take_flush(&mut self) -> FlushBatch {
        let mut batch = FlushBatch {
            stats: std::mem::take(&mut self.delta),
            anomalies: std::mem::take(&mut self.unwritten_anomalies),
            ..FlushBatch::default()
        };
        for key in std::mem::take(&mut self.dirty).into_keys() {
            if let Some(model) = self.models.get(&key) {
                batch.models.insert(key, model.clone());
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
    pub(crate) fn restore(&mut self, mut batch: FlushBatch) {
        let newer = FlushBatch {
            stats: std::mem::take(&mut self.delta),
            anomalies: std::mem::take(&mut self.unwritten_anomalies),
            ..FlushBatch::default()
        };
        batch.absorb(newer);
        self.delta = batch.stats;
        self.unwritten_anomalies = batch.anomalies;
        for (key, _) in batch.models {
            self.dirty.insert(key, ());
        }
        if let Some(delta) = batch.servers.remove(&self.server) {
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
