//! The telemetry thread: turns what the relay forwarded into spans and metrics, off the relay's
//! path.
//!
//! The relay hands over each forwarded line with the time it was read and the time it was
//! forwarded; this thread pairs nothing itself (the monitor's correlation ids do that) and keeps
//! one entry per open request. When the answer comes the entry *settles* for [`SETTLE`], so that
//! what arrives right behind the answer (the verdict an interceptor gave the response, a finding
//! a plugin emitted about it) still joins its span, and then becomes two spans:
//!
//! ```text
//! tools/call get-weather  SERVER  read from the client .. answer forwarded to the client
//! └ tools/call get-weather  CLIENT  forwarded to the server .. answer read from the server
//! ```
//!
//! so that the time km spent (its interceptors) is the difference. A request the server sent
//! (sampling, elicitation, roots) is the mirror image: SERVER from the server's side, CLIENT
//! towards the client. A request an interceptor blocked has only its SERVER span, ending with
//! km's error answer. Notifications get one SERVER span (read .. forwarded). The SERVER span's
//! parent is the trace context in `params._meta`, when there is a valid one; every request span
//! links to the session's span, which is never a parent (a session can last for hours and would
//! make one trace of everything).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use km_abi::{Direction, MessageKind};
use opentelemetry::metrics::{BoundHistogram, Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceId,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use super::export::{self, Delivery};
use super::wire::{self, Answer, Call};
use super::{Record, Verdict};
use crate::monitor::dispatch::Envelope;

/// How long an answered request waits for late verdicts and events before its spans are made.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// The most requests followed at once (as many as the monitor correlates).
const MAX_OPEN: usize = 4096;

/// How long an idle telemetry thread sleeps before it looks at its queue again, and how many
/// looks it makes before it blocks.
const POLL: Duration = Duration::from_millis(1);
const POLLS_BEFORE_BLOCKING: u32 = 20;

/// The conventions' bucket boundaries for the MCP duration histograms, in seconds.
pub(crate) const MCP_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets for plugin load times (verify + map + create: tenths of a millisecond to a second).
const LOAD_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets for authentication (a cached token in microseconds, the API in tens of ms to s).
const AUTH_BUCKETS: [f64; 14] = [
    0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A request's key: the side that sent it and its sequence number (the monitor's correlation
/// id).
type Key = (Direction, u64);

/// A span event waiting for its span.
#[derive(Debug, Clone)]
struct Event {
    name: &'static str,
    at: SystemTime,
    attributes: Vec<KeyValue>,
}

/// How a request ended.
#[derive(Debug, Clone, Default)]
struct End {
    /// When the answer was read from the peer (none: km answered itself, or nobody did).
    read_us: Option<u64>,
    /// When the answer (or the end) was forwarded back.
    forwarded_us: u64,
    answer: Answer,
    /// An end without an answer: `cancelled`, `unanswered`, `timeout`.
    without_answer: Option<&'static str>,
}

/// A request being followed.
#[derive(Debug)]
struct Open {
    call: Call,
    /// The side that sent it (`Request`: the client).
    sender: Direction,
    read_us: u64,
    /// When it was forwarded; none when an interceptor blocked it.
    forwarded_us: Option<u64>,
    parent: Option<SpanContext>,
    /// Ids already written into the forwarded request (trace, SERVER span, CLIENT span).
    ids: Option<(TraceId, SpanId, SpanId)>,
    events: Vec<Event>,
    end: Option<End>,
    since: Instant,
}

#[derive(Debug)]
enum Entry {
    Request(Box<Open>),
    /// An answer whose request was not (yet) seen: an interceptor blocked the request and km
    /// answered; the block verdict follows.
    Orphan(End),
}

/// How many attribute sets of a duration histogram keep a bound handle (see [`Durations`]).
const BOUND_SETS: usize = 16;

/// A duration histogram that records through handles bound to the attribute sets it recorded
/// last (the SDK's bound instruments), most recent first.
///
/// Recording with attributes makes the SDK hash the whole set (every key and value) to find
/// its data point, twice per request (SERVER and CLIENT duration); a session's requests have a
/// handful of sets (method, tool, error type), so comparing with the last few finds the handle
/// for less. A bound handle updates the same data point `record` would: the exported histogram
/// is the same (a unit test checks it). A set is bound when it is first recorded, never before
/// (a bound set is exported even with no value in it); past [`BOUND_SETS`] sets the oldest
/// handle is dropped and its set is bound again if it comes back.
pub(crate) struct Durations {
    histogram: Histogram<f64>,
    bound: Vec<(Vec<KeyValue>, BoundHistogram<f64>)>,
}

impl Durations {
    pub(crate) fn new(histogram: Histogram<f64>) -> Self {
        Durations {
            histogram,
            bound: Vec::with_capacity(BOUND_SETS),
        }
    }

    /// Records `value` in the data point of `attributes`.
    pub(crate) fn record(&mut self, value: f64, attributes: &[KeyValue]) {
        if let Some(i) = self
            .bound
            .iter()
            .position(|(set, _)| set.as_slice() == attributes)
        {
            self.bound[i].1.record(value);
            if i > 0 {
                self.bound.swap(0, i);
            }
            return;
        }
        let handle = self.histogram.bind(attributes);
        handle.record(value);
        if self.bound.len() == BOUND_SETS {
            self.bound.pop();
        }
        self.bound.insert(0, (attributes.to_vec(), handle));
    }
}

/// The instruments of a session.
struct Instruments {
    server_duration: Durations,
    client_duration: Durations,
    session_duration: Histogram<f64>,
    load_duration: Histogram<f64>,
    refusals: Counter<u64>,
    auth_attempts: Counter<u64>,
    auth_duration: Histogram<f64>,
    token_cache: Counter<u64>,
    messages: Counter<u64>,
    verdicts: Counter<u64>,
    relay_bytes: Counter<u64>,
    telemetry_dropped: Counter<u64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        Instruments {
            server_duration: Durations::new(seconds(
                "mcp.server.operation.duration",
                "MCP request or notification duration as observed on the receiver from the time it was received until the result or ack is sent.",
                &MCP_BUCKETS,
            )),
            client_duration: Durations::new(seconds(
                "mcp.client.operation.duration",
                "The duration of the MCP request or notification as observed on the sender from the time it was sent until the response or ack is received.",
                &MCP_BUCKETS,
            )),
            session_duration: seconds(
                "mcp.server.session.duration",
                "The duration of the MCP session as observed on the MCP server.",
                &MCP_BUCKETS,
            ),
            load_duration: seconds(
                "km.plugin.load.duration",
                "Time to verify, map and create a plugin.",
                &LOAD_BUCKETS,
            ),
            refusals: counter(
                "km.plugin.refusals",
                "{plugin}",
                "Plugins km refused to load, by the check that failed.",
            ),
            auth_attempts: counter(
                "km.auth.attempts",
                "{attempt}",
                "Subscription authentications, by outcome.",
            ),
            auth_duration: seconds(
                "km.auth.duration",
                "How long a plugin's authentication took.",
                &AUTH_BUCKETS,
            ),
            token_cache: counter(
                "km.auth.token_cache.lookups",
                "{lookup}",
                "Authentications answered from a cached token (hit) or by asking the API (miss).",
            ),
            messages: counter(
                "km.plugin.messages",
                "{message}",
                "Messages handed to each plugin, and dropped for it.",
            ),
            verdicts: counter(
                "km.intercept.verdicts",
                "{verdict}",
                "Interceptors' verdicts other than pass, by plugin and action.",
            ),
            relay_bytes: counter("km.relay.bytes", "By", "Bytes relayed, by direction."),
            telemetry_dropped: counter(
                "km.telemetry.dropped",
                "{record}",
                "Messages km's telemetry could not follow (its queue was full).",
            ),
        }
    }
}

/// What the worker reports when it is done.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Done {
    /// Requests whose spans were made.
    pub(crate) requests: u64,
}

/// The worker's state.
pub(crate) struct Worker {
    tracer: Option<SdkTracer>,
    /// The provider, to flush its queue while the end of a session makes many spans at once.
    provider: Option<SdkTracerProvider>,
    /// The batch processor's span queue (what it holds before it drops).
    span_queue: usize,
    instruments: Option<Instruments>,
    delivery: Arc<Delivery>,
    /// `mcp.session.id`, shared by every span (a reference count, not a copy, per span).
    session_id: Value,
    session: Option<opentelemetry_sdk::trace::Span>,
    session_context: SpanContext,
    started: SystemTime,
    protocol_version: Option<Value>,
    entries: HashMap<Key, Entry>,
    /// Keys in the order they came, for the bound.
    order: VecDeque<Key>,
    /// Answered requests (and orphan answers) in the order they are due.
    settling: VecDeque<(Instant, Key)>,
    capture: bool,
    propagator: TraceContextPropagator,
    done: Done,
}

/// Microseconds since the epoch as a time.
fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Now in microseconds since the epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn key(correlation: crate::monitor::correlate::CorrelationId) -> Key {
    (correlation.sender, correlation.seq)
}

/// The side a request's answer travels from: the opposite of its sender.
fn initiator_name(sender: Direction) -> &'static str {
    match sender {
        Direction::Request => "client",
        Direction::Response => "server",
    }
}

impl Worker {
    /// A worker exporting through `tracer` and `meter` (either may be absent); `span_queue` is
    /// the size of the tracer's batch queue.
    pub(crate) fn new(
        tracer: Option<&SdkTracerProvider>,
        span_queue: usize,
        meter: Option<&opentelemetry_sdk::metrics::SdkMeterProvider>,
        delivery: Arc<Delivery>,
        session_id: String,
        command: &str,
        capture: bool,
    ) -> Self {
        let scope = || {
            opentelemetry::InstrumentationScope::builder("km")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        };
        let provider = tracer.cloned();
        let tracer = tracer.map(|p| p.tracer_with_scope(scope()));
        let instruments = meter.map(|p| Instruments::new(&p.meter_with_scope(scope())));
        let started = SystemTime::now();
        let session = tracer.as_ref().map(|tracer| {
            tracer
                .span_builder("km monitor")
                .with_kind(SpanKind::Internal)
                .with_start_time(started)
                .with_attributes([
                    KeyValue::new("mcp.session.id", shared(&session_id)),
                    KeyValue::new("network.transport", "pipe"),
                    KeyValue::new("km.server.command", command.to_owned()),
                ])
                .start_with_context(tracer, &Context::new())
        });
        let session_context = session
            .as_ref()
            .map(|s| s.span_context().clone())
            .unwrap_or_else(SpanContext::empty_context);
        Worker {
            tracer,
            provider,
            span_queue,
            instruments,
            delivery,
            session_id: shared(&session_id),
            session,
            session_context,
            started,
            protocol_version: None,
            entries: HashMap::new(),
            order: VecDeque::new(),
            settling: VecDeque::new(),
            capture,
            propagator: TraceContextPropagator::new(),
            done: Done::default(),
        }
    }

    /// Runs until `Finish`, taking records from `rx`; `queued` is the relay's count of bytes
    /// in the queue, released as records are taken.
    ///
    /// While records come, an empty queue is looked at again every [`POLL`] instead of waited
    /// on, for [`POLLS_BEFORE_BLOCKING`] looks (as the plugins' workers do): a sender only has to
    /// wake a receiver that blocks, and a wake-up is a system call on the relay's path.
    pub(crate) fn run(
        mut self,
        rx: std::sync::mpsc::Receiver<Record>,
        queued: &std::sync::atomic::AtomicUsize,
    ) {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        let mut idle = 0u32;
        loop {
            let next = match rx.try_recv() {
                Ok(record) => Ok(record),
                Err(TryRecvError::Empty) if idle < POLLS_BEFORE_BLOCKING => {
                    idle += 1;
                    std::thread::sleep(POLL);
                    self.settle(Instant::now());
                    continue;
                }
                Err(TryRecvError::Empty) => {
                    let wait = self
                        .settling
                        .front()
                        .map_or(Duration::from_secs(1), |(due, _)| {
                            due.saturating_duration_since(Instant::now())
                        });
                    rx.recv_timeout(wait)
                }
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(Record::Finish(reply, deadline)) => {
                    let done = self.finish(deadline);
                    let _ = reply.send(done);
                    return;
                }
                Ok(record) => {
                    idle = 0;
                    let bytes = record.weight();
                    if bytes > 0 {
                        queued.fetch_sub(bytes, Ordering::Relaxed);
                    }
                    self.take(record);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Nobody waits for this end: no time for pacing.
                    self.finish(Instant::now());
                    return;
                }
            }
            self.settle(Instant::now());
        }
    }

    /// Handles one record.
    pub(crate) fn take(&mut self, record: Record) {
        match record {
            Record::Line(envelope, forwarded_us) => self.line(&envelope, forwarded_us),
            Record::Lines(batch) => {
                for envelope in &batch.envelopes {
                    self.line(envelope, envelope.timestamp_us);
                }
            }
            Record::Verdict(verdict) => self.verdict(*verdict),
            Record::PluginEvent {
                plugin,
                kind,
                data,
                timestamp_ms,
            } => {
                let correlation = data
                    .get("correlation_id")
                    .and_then(|c| c.as_str())
                    .and_then(parse_correlation);
                let event = Event {
                    name: "km.plugin.event",
                    at: UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(timestamp_ms).unwrap_or(0)),
                    attributes: vec![
                        KeyValue::new("km.plugin.name", plugin.to_string()),
                        KeyValue::new("km.event.kind", kind),
                        KeyValue::new("km.event.data", serde_json::Value::Object(data).to_string()),
                    ],
                };
                self.attach(correlation, event);
            }
            Record::Refused {
                file,
                check,
                reason,
            } => {
                if let Some(i) = &self.instruments {
                    i.refusals
                        .add(1, &[KeyValue::new("km.plugin.check", check.clone())]);
                }
                self.session_event(Event {
                    name: "km.plugin.refused",
                    at: SystemTime::now(),
                    attributes: vec![
                        KeyValue::new("km.plugin.file", file),
                        KeyValue::new("km.plugin.check", check),
                        KeyValue::new("km.plugin.reason", reason),
                    ],
                });
            }
            Record::Loaded { plugin, seconds } => {
                if let Some(i) = &self.instruments {
                    i.load_duration
                        .record(seconds, &[KeyValue::new("km.plugin.name", plugin)]);
                }
            }
            Record::Auth {
                plugin,
                outcome,
                seconds,
                cache_hit,
            } => {
                if let Some(i) = &self.instruments {
                    let plugin = KeyValue::new("km.plugin.name", plugin);
                    let outcome = KeyValue::new("km.auth.outcome", outcome);
                    i.auth_attempts.add(1, &[plugin.clone(), outcome.clone()]);
                    i.auth_duration.record(seconds, &[plugin.clone(), outcome]);
                    let result = if cache_hit { "hit" } else { "miss" };
                    i.token_cache
                        .add(1, &[plugin, KeyValue::new("km.token_cache.result", result)]);
                }
            }
            Record::Lanes(totals) => {
                if let Some(i) = &self.instruments {
                    for lane in totals {
                        let plugin = KeyValue::new("km.plugin.name", lane.plugin.clone());
                        i.messages.add(
                            lane.handled,
                            &[
                                plugin.clone(),
                                KeyValue::new("km.message.outcome", "handled"),
                            ],
                        );
                        i.messages.add(
                            lane.dropped,
                            &[plugin, KeyValue::new("km.message.outcome", "dropped")],
                        );
                    }
                }
            }
            Record::Relayed { direction, bytes } => {
                if let Some(i) = &self.instruments {
                    i.relay_bytes.add(
                        bytes,
                        &[KeyValue::new(
                            "km.relay.direction",
                            direction_name(direction),
                        )],
                    );
                }
            }
            Record::Assigned {
                key,
                trace,
                server,
                client,
                parent,
            } => self.assigned(key, (trace, server, client), parent),
            Record::Ended {
                exit_code,
                failed,
                dropped,
            } => self.ended(exit_code, failed, dropped),
            Record::Finish(..) => {}
        }
    }

    fn line(&mut self, envelope: &Envelope, forwarded_us: u64) {
        match envelope.kind {
            MessageKind::REQUEST => {
                let Some(correlation) = envelope.correlation else {
                    return;
                };
                let Some(call) = wire::call(&envelope.line, self.capture) else {
                    return;
                };
                let key = key(correlation);
                // What came before the line: the verdicts on it, and the ids the propagation
                // wrote into it with the context it came with (the forwarded line holds km's
                // own now).
                let (parent, ids, events) = match self.entries.remove(&key) {
                    Some(Entry::Request(early)) if early.forwarded_us.is_none() => {
                        let parent = match early.ids {
                            Some(_) => early.parent,
                            None => self.parent(&call),
                        };
                        (parent, early.ids, early.events)
                    }
                    _ => (self.parent(&call), None, Vec::new()),
                };
                self.open(
                    key,
                    Open {
                        call,
                        sender: envelope.direction,
                        read_us: envelope.timestamp_us,
                        forwarded_us: Some(forwarded_us),
                        parent,
                        ids,
                        events,
                        end: None,
                        since: Instant::now(),
                    },
                );
            }
            MessageKind::RESPONSE => {
                let Some(correlation) = envelope.correlation else {
                    return;
                };
                let key = key(correlation);
                // Most answers need no reading: only errors (which may answer a request km
                // blocked), tool results that may say `isError`, the answer to `initialize`,
                // and captured results do.
                let method = match self.entries.get(&key) {
                    Some(Entry::Request(open)) => Some(open.call.method.as_str()),
                    _ => None,
                };
                let needs_reading = envelope.is_error
                    || match method {
                        Some("initialize") => true,
                        Some("tools/call") => {
                            self.capture
                                || memchr::memmem::find(&envelope.line, b"\"isError\"").is_some()
                        }
                        Some(_) => false,
                        None => return,
                    };
                let answer = if needs_reading {
                    wire::answer(&envelope.line, self.capture)
                } else {
                    Answer::default()
                };
                let end = End {
                    read_us: Some(envelope.timestamp_us),
                    forwarded_us,
                    answer,
                    without_answer: None,
                };
                self.answered(key, end);
            }
            MessageKind::NOTIFICATION => self.notification(envelope, forwarded_us),
            _ => {}
        }
    }

    /// The trace context in a call's `_meta`, when it is valid.
    fn parent(&self, call: &Call) -> Option<SpanContext> {
        let traceparent = call.traceparent.as_ref()?;
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent.clone());
        if let Some(state) = &call.tracestate {
            carrier.insert("tracestate".to_owned(), state.clone());
        }
        let cx = self.propagator.extract(&carrier);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    fn open(&mut self, key: Key, open: Open) {
        while self.entries.len() >= MAX_OPEN {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.give_up(oldest, "unanswered");
        }
        self.order.push_back(key);
        self.entries.insert(key, Entry::Request(Box::new(open)));
        if self.order.len() > 2 * MAX_OPEN {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    /// Ends an open request that will not be answered.
    fn give_up(&mut self, key: Key, why: &'static str) {
        if let Some(Entry::Request(mut open)) = self.entries.remove(&key) {
            let end = open.end.take().unwrap_or(End {
                read_us: None,
                forwarded_us: now_us(),
                answer: Answer::default(),
                without_answer: Some(why),
            });
            self.spans(*open, end);
        }
    }

    fn answered(&mut self, key: Key, end: End) {
        let due = Instant::now() + SETTLE;
        match self.entries.get_mut(&key) {
            Some(Entry::Request(open)) if open.end.is_none() => {
                if open.call.method == "initialize" {
                    if let Some(version) = &end.answer.protocol_version {
                        self.protocol_version = Some(shared(version));
                    }
                }
                open.end = Some(end);
                self.settling.push_back((due, key));
            }
            Some(_) => {}
            None => {
                self.entries.insert(key, Entry::Orphan(end));
                self.order.push_back(key);
                self.settling.push_back((due, key));
            }
        }
    }

    fn notification(&mut self, envelope: &Envelope, forwarded_us: u64) {
        let Some(call) = wire::call(&envelope.line, false) else {
            return;
        };
        if call.method == "notifications/cancelled" {
            if let Some(correlation) = envelope.correlation {
                let key = key(correlation);
                if let Some(Entry::Request(open)) = self.entries.get_mut(&key) {
                    if open.end.is_none() {
                        open.end = Some(End {
                            read_us: Some(envelope.timestamp_us),
                            forwarded_us,
                            answer: Answer::default(),
                            without_answer: Some("cancelled"),
                        });
                        self.settling.push_back((Instant::now() + SETTLE, key));
                    }
                }
            }
        }
        let parent = self.parent(&call);
        let open = Open {
            call,
            sender: envelope.direction,
            read_us: envelope.timestamp_us,
            // One span only: the notification's leg to the peer has no answer to end it.
            forwarded_us: None,
            parent,
            ids: None,
            events: Vec::new(),
            end: None,
            since: Instant::now(),
        };
        let end = End {
            read_us: None,
            forwarded_us,
            answer: Answer::default(),
            without_answer: None,
        };
        self.spans(open, end);
    }

    fn verdict(&mut self, verdict: Verdict) {
        let event = Event {
            name: "km.verdict",
            at: at(verdict.at_us),
            attributes: vec![
                KeyValue::new("km.plugin.name", verdict.plugin.clone()),
                KeyValue::new("km.verdict.action", verdict.action),
                KeyValue::new(
                    "km.verdict.rules",
                    Value::Array(
                        verdict
                            .rules
                            .iter()
                            .map(|r| opentelemetry::StringValue::from(r.clone()))
                            .collect::<Vec<_>>()
                            .into(),
                    ),
                ),
                KeyValue::new("km.verdict.reason", verdict.reason.clone()),
            ],
        };
        if let Some(i) = &self.instruments {
            i.verdicts.add(
                1,
                &[
                    KeyValue::new("km.plugin.name", verdict.plugin.clone()),
                    KeyValue::new("km.verdict.action", verdict.action),
                ],
            );
        }
        let key = verdict.correlation.map(key);
        let (Some(key), MessageKind::REQUEST) = (key, verdict.kind) else {
            self.attach(key, event);
            return;
        };
        // A verdict on a request comes before the request is forwarded, or before km's answer
        // when it blocked it (and, for a line over the inspection limit, after that answer).
        match self.entries.remove(&key) {
            Some(Entry::Request(mut open)) => {
                open.events.push(event);
                self.entries.insert(key, Entry::Request(open));
            }
            Some(Entry::Orphan(mut end)) if verdict.action == "block" => {
                // km's answer already came: the request ends with it.
                end.read_us = None;
                let mut open = Self::early(&verdict, key, event);
                open.end = Some(end);
                // Still in the settling queue under its key.
                self.entries.insert(key, Entry::Request(Box::new(open)));
            }
            Some(orphan @ Entry::Orphan(_)) => {
                self.entries.insert(key, orphan);
                self.session_event(event);
            }
            None => {
                // The request (or km's answer to it) follows: it joins this entry.
                let open = Self::early(&verdict, key, event);
                self.order.push_back(key);
                self.entries.insert(key, Entry::Request(Box::new(open)));
            }
        }
    }

    /// A request known so far only by a verdict on it.
    fn early(verdict: &Verdict, key: Key, event: Event) -> Open {
        let target = Some(verdict.target.clone()).filter(|t| !t.is_empty());
        Open {
            call: Call {
                method: verdict.method.clone(),
                id: verdict.id.clone(),
                name: matches!(verdict.method.as_str(), "tools/call" | "prompts/get")
                    .then(|| target.clone())
                    .flatten(),
                uri: verdict
                    .method
                    .starts_with("resources/")
                    .then_some(target)
                    .flatten(),
                ..Call::default()
            },
            sender: key.0,
            read_us: verdict.read_us,
            forwarded_us: None,
            parent: None,
            ids: None,
            events: vec![event],
            end: None,
            since: Instant::now(),
        }
    }

    /// Puts `event` on the span of request `key` if it is still being followed, else on the
    /// session's span.
    fn attach(&mut self, key: Option<Key>, event: Event) {
        if let Some(Entry::Request(open)) = key.and_then(|k| self.entries.get_mut(&k)) {
            open.events.push(event);
            return;
        }
        self.session_event(event);
    }

    fn session_event(&mut self, event: Event) {
        if let Some(session) = &mut self.session {
            session.add_event_with_timestamp(event.name, event.at, event.attributes);
        }
    }

    fn assigned(&mut self, key: Key, ids: (TraceId, SpanId, SpanId), parent: Option<SpanContext>) {
        // Recorded before the request itself arrives (it is forwarded right after).
        let placeholder = Open {
            call: Call::default(),
            sender: key.0,
            read_us: 0,
            forwarded_us: None,
            parent,
            ids: Some(ids),
            events: Vec::new(),
            end: None,
            since: Instant::now(),
        };
        self.entries
            .insert(key, Entry::Request(Box::new(placeholder)));
        self.order.push_back(key);
    }

    /// Makes the spans of the requests whose settling time is over (all of them with a `now`
    /// far enough ahead), drops orphan answers nobody claimed, and gives up on requests older
    /// than the monitor's correlation timeout.
    pub(crate) fn settle(&mut self, now: Instant) {
        while let Some(&(due, key)) = self.settling.front() {
            if due > now {
                break;
            }
            self.settling.pop_front();
            match self.entries.remove(&key) {
                Some(Entry::Request(mut open)) => match open.end.take() {
                    Some(end) => self.spans(*open, end),
                    None => {
                        self.entries.insert(key, Entry::Request(open));
                    }
                },
                Some(Entry::Orphan(_)) | None => {}
            }
        }
        let timeout = crate::monitor::correlate::PENDING_TIMEOUT;
        while let Some(&key) = self.order.front() {
            match self.entries.get(&key) {
                None => {
                    self.order.pop_front();
                }
                Some(Entry::Request(open)) if open.end.is_none() => {
                    if now.saturating_duration_since(open.since) < timeout {
                        break;
                    }
                    self.order.pop_front();
                    self.give_up(key, "timeout");
                }
                Some(_) => break,
            }
        }
    }

    /// The attributes of a call's spans and metrics.
    fn attributes(&self, open: &Open, end: &End) -> (Vec<KeyValue>, Vec<KeyValue>, Option<String>) {
        let call = &open.call;
        let method = call.method.as_str();
        // Values are shared (`Arc<str>`) or static, so that the copies below (metric to span,
        // SERVER to CLIENT span) only count references: the SDK copies each value once more
        // when it encodes the span, whatever it holds.
        let mut metric = Vec::with_capacity(8);
        metric.push(KeyValue::new("mcp.method.name", method_value(method)));
        metric.push(KeyValue::new("network.transport", "pipe"));
        match (method, &call.name) {
            ("tools/call", Some(name)) => {
                metric.push(KeyValue::new("gen_ai.tool.name", shared(name)));
            }
            ("prompts/get", Some(name)) => {
                metric.push(KeyValue::new("gen_ai.prompt.name", shared(name)));
            }
            _ => {}
        }
        if method == "tools/call" {
            metric.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
        }
        if let Some(version) = &self.protocol_version {
            metric.push(KeyValue::new("mcp.protocol.version", version.clone()));
        }
        let mut status = None;
        if let Some((code, message)) = &end.answer.error {
            metric.push(KeyValue::new("error.type", code.clone()));
            metric.push(KeyValue::new("rpc.response.status_code", code.clone()));
            status = Some(message.clone());
        } else if end.answer.tool_error {
            metric.push(KeyValue::new("error.type", "tool_error"));
            status = Some("tool_error".to_owned());
        } else if let Some(why) = end.without_answer {
            metric.push(KeyValue::new("error.type", why));
            status = Some(why.to_owned());
        }
        let mut span = Vec::with_capacity(metric.len() + 6);
        span.extend(metric.iter().cloned());
        span.push(KeyValue::new("mcp.session.id", self.session_id.clone()));
        span.push(KeyValue::new("km.initiator", initiator_name(open.sender)));
        if let Some(id) = &call.id {
            span.push(KeyValue::new("jsonrpc.request.id", shared(id)));
        }
        let names_resource = matches!(
            method,
            "resources/read"
                | "resources/subscribe"
                | "resources/unsubscribe"
                | "notifications/resources/updated"
        );
        if let (true, Some(uri)) = (names_resource, &call.uri) {
            span.push(KeyValue::new("mcp.resource.uri", shared(uri)));
        }
        if method == "tools/call" {
            if let Some(arguments) = &call.arguments {
                span.push(KeyValue::new(
                    "gen_ai.tool.call.arguments",
                    arguments.clone(),
                ));
            }
            if let (Some(result), None) = (&end.answer.result, &status) {
                span.push(KeyValue::new("gen_ai.tool.call.result", result.clone()));
            }
        }
        (span, metric, status)
    }

    /// Makes the spans of a finished call and records its durations.
    fn spans(&mut self, open: Open, end: End) {
        if open.call.method.is_empty() {
            // A propagation placeholder whose request never came.
            return;
        }
        let (span_attributes, metric_attributes, status) = self.attributes(&open, &end);
        let server = (at(open.read_us), at(end.forwarded_us.max(open.read_us)));
        let client = open.forwarded_us.map(|from| {
            let until = end.read_us.unwrap_or(end.forwarded_us).max(from);
            (at(from), at(until))
        });
        if let Some(i) = &mut self.instruments {
            let seconds = |(a, b): (SystemTime, SystemTime)| {
                b.duration_since(a).unwrap_or_default().as_secs_f64()
            };
            i.server_duration
                .record(seconds(server), &metric_attributes);
            if let (Some(client), Some(_)) = (client, end.read_us) {
                i.client_duration
                    .record(seconds(client), &metric_attributes);
            }
        }
        self.done.requests += 1;
        let Some(tracer) = &self.tracer else {
            return;
        };
        let name = match (open.call.method.as_str(), &open.call.name) {
            ("tools/call" | "prompts/get", Some(target)) => {
                format!("{} {target}", open.call.method)
            }
            _ => open.call.method.clone(),
        };
        let parent = match &open.parent {
            Some(sc) => Context::new().with_remote_span_context(sc.clone()),
            None => Context::new(),
        };
        let (trace, server_id, client_id) = match open.ids {
            Some((t, s, c)) => (Some(t), Some(s), Some(c)),
            None => (None, None, None),
        };
        let mut links = Vec::new();
        if self.session_context.is_valid() {
            links.push(Link::with_context(self.session_context.clone()));
        }
        let builder = tracer
            .span_builder(name.clone())
            .with_kind(SpanKind::Server)
            .with_start_time(server.0)
            .with_attributes(span_attributes.clone())
            .with_links(links);
        let mut server_span = export::with_ids(trace, server_id, || {
            builder.start_with_context(tracer, &parent)
        });
        for event in open.events {
            server_span.add_event_with_timestamp(event.name, event.at, event.attributes);
        }
        if let Some(message) = &status {
            server_span.set_status(Status::error(message.clone()));
        }
        let sampled = server_span.span_context().is_sampled();
        let cx = Context::new().with_span(server_span);
        if let Some((from, until)) = client {
            let builder = tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_start_time(from)
                .with_attributes(span_attributes);
            let mut client_span =
                export::with_ids(None, client_id, || builder.start_with_context(tracer, &cx));
            if let Some(message) = &status {
                client_span.set_status(Status::error(message.clone()));
            }
            client_span.end_with_timestamp(until);
            if sampled {
                self.delivery.spans_ended.fetch_add(1, Ordering::Relaxed);
            }
        }
        cx.span().end_with_timestamp(server.1);
        if sampled {
            self.delivery.spans_ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ended(&mut self, exit_code: u8, failed: bool, dropped: u64) {
        if let Some(session) = &mut self.session {
            session.set_attribute(KeyValue::new("km.exit_code", i64::from(exit_code)));
            if failed {
                session.set_attribute(KeyValue::new("error.type", "km_error"));
                session.set_status(Status::error("km could not run the session"));
            }
        }
        if let Some(i) = &self.instruments {
            if dropped > 0 {
                i.telemetry_dropped.add(dropped, &[]);
            }
            let mut attributes = vec![KeyValue::new("network.transport", "pipe")];
            if let Some(version) = &self.protocol_version {
                attributes.push(KeyValue::new("mcp.protocol.version", version.clone()));
            }
            if failed {
                attributes.push(KeyValue::new("error.type", "km_error"));
            }
            let seconds = SystemTime::now()
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs_f64();
            i.session_duration.record(seconds, &attributes);
        }
    }

    /// The session is over: every request still followed gets its spans now (unanswered ones
    /// end with `error.type` `unanswered`), then the session's span ends.
    ///
    /// That can be thousands of spans at once (up to [`MAX_OPEN`] requests, two spans each),
    /// more than the batch processor's queue holds: it would drop the burst (it did, in
    /// km-bench's stream, whose requests are never answered). So the queue is flushed first and
    /// again each time half of it has been filled, until `deadline` (the session's flush
    /// timeout): past it, or with a Collector that fails, what does not fit is dropped and
    /// counted as before.
    pub(crate) fn finish(&mut self, deadline: Instant) -> Done {
        let pace = (self.span_queue / 2).max(1) as u64;
        let mut flushed_at = self.flush(deadline);
        self.settle(Instant::now() + SETTLE + SETTLE);
        let open: Vec<Key> = self.order.drain(..).collect();
        for key in open {
            if let Some(at) = flushed_at {
                if self.delivery.spans_ended.load(Ordering::Relaxed) - at >= pace {
                    flushed_at = self.flush(deadline);
                }
            }
            self.give_up(key, "unanswered");
        }
        self.entries.clear();
        if let Some(mut session) = self.session.take() {
            if let Some(version) = &self.protocol_version {
                session.set_attribute(KeyValue::new("mcp.protocol.version", version.clone()));
            }
            let sampled = session.span_context().is_sampled();
            session.end();
            if sampled {
                self.delivery.spans_ended.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.done
    }
}

impl Worker {
    /// Exports what the batch processor holds, waiting for it; the count of spans ended then,
    /// or `None` when pacing should stop (past `deadline`, no tracer, or an export that failed
    /// or timed out: waiting again would only spend the time the session's end has).
    fn flush(&self, deadline: Instant) -> Option<u64> {
        let provider = self.provider.as_ref()?;
        if Instant::now() >= deadline {
            return None;
        }
        provider.force_flush().ok()?;
        Some(self.delivery.spans_ended.load(Ordering::Relaxed))
    }
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Request => "client_to_server",
        Direction::Response => "server_to_client",
    }
}

/// `c12` / `s7` (the monitor's correlation ids as plugins see them) as a key.
pub(crate) fn parse_correlation(text: &str) -> Option<Key> {
    let (side, seq) = text.split_at_checked(1)?;
    let direction = match side {
        "c" => Direction::Request,
        "s" => Direction::Response,
        _ => return None,
    };
    Some((direction, seq.parse().ok()?))
}

/// A string attribute value that clones by reference count.
fn shared(text: &str) -> Value {
    Value::from(Arc::<str>::from(text))
}

/// `mcp.method.name`: the methods of the MCP specification as static text (no allocation per
/// span), any other as a shared copy.
fn method_value(method: &str) -> Value {
    const KNOWN: [&str; 27] = [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/roots/list_changed",
        "notifications/elicitation/complete",
        "tasks/get",
    ];
    match KNOWN.iter().find(|known| **known == method) {
        Some(known) => Value::from(*known),
        None => shared(method),
    }
}
