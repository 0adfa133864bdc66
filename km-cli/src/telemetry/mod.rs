//! km's own telemetry: OpenTelemetry export of the MCP sessions `km monitor` relays, following
//! the semantic conventions for MCP, and km's self-monitoring figures for `km stats`.
//!
//! # Conventions followed
//!
//! The OpenTelemetry semantic conventions for the Model Context Protocol, status Development, as
//! published in the GenAI semantic conventions repository (`semantic-conventions-genai` v0.1.0,
//! `docs/gen-ai/mcp.md`; the same `mcp.*` names semantic-conventions 1.39 introduced):
//!
//! - spans named `{mcp.method.name} {target}` (target: `gen_ai.tool.name` or
//!   `gen_ai.prompt.name`; a resource URI is never in a name), SERVER for the side that receives
//!   a request, CLIENT for the side that sends it, with `mcp.method.name`,
//!   `jsonrpc.request.id`, `gen_ai.tool.name`, `gen_ai.prompt.name`, `mcp.resource.uri`,
//!   `gen_ai.operation.name` (`execute_tool` for `tools/call`), `mcp.protocol.version` (from
//!   the answer to `initialize`), `mcp.session.id` (km's session id), `network.transport`
//!   `pipe`, `error.type` and `rpc.response.status_code`; status ERROR with the JSON-RPC error
//!   message when there is an `error.type`;
//! - context propagation through `params._meta` (`traceparent`, `tracestate`, W3C Trace
//!   Context): extracted and used as the SERVER span's parent; injection is opt-in;
//! - `gen_ai.tool.call.arguments` and `gen_ai.tool.call.result` are opt-in;
//! - metrics `mcp.server.operation.duration`, `mcp.client.operation.duration` and
//!   `mcp.server.session.duration`: histograms in seconds with the conventions' explicit bucket
//!   boundaries `[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]`.
//!
//! # What km reports, as a proxy
//!
//! km is the server its client talks to and the client of the server it starts, so each
//! request gets both spans: a SERVER span from reading the request to forwarding its answer,
//! with a CLIENT child from forwarding the request to reading the answer; the difference is the
//! time spent in km (its interceptors). Requests the server sends (sampling, elicitation,
//! roots) are the mirror image. See [`worker`] for the details, including the span of the
//! session (`km monitor`, INTERNAL), which request spans link to. `error.type` is the JSON-RPC
//! error code, `tool_error` for a tool result with `isError: true`, and for requests without an
//! answer `cancelled` (a `notifications/cancelled` named it), `unanswered` (the session ended
//! first) or `timeout` (no answer within the monitor's correlation timeout, 15 minutes).
//!
//! Verdicts (`km.verdict`: `km.plugin.name`, `km.verdict.action`, `km.verdict.rules`,
//! `km.verdict.reason`) and the events plugins emit (`km.plugin.event`: `km.plugin.name`,
//! `km.event.kind`, `km.event.data` as JSON) are span events: on the request they concern (by
//! correlation id), else on the session's span, which also carries `km.plugin.refused` events.
//! Captured arguments and results are what km *forwarded*, so after any redaction.
//!
//! km's own metrics: `km.plugin.load.duration` (by `km.plugin.name`), `km.plugin.refusals`
//! (by `km.plugin.check`: tampering shows up as `digest` or `signature`), `km.auth.attempts`
//! and `km.auth.duration` (by plugin and `km.auth.outcome`), `km.auth.token_cache.lookups` (by
//! `km.token_cache.result`: `hit` when an authentication needed no HTTP request through the
//! host, `miss` otherwise; authentications count for Pro and Enterprise plugins only, a Free
//! plugin having no subscription to check), `km.plugin.messages` (by plugin and
//! `km.message.outcome` `handled`/`dropped`), `km.intercept.verdicts` (by plugin and action),
//! `km.relay.bytes` (by `km.relay.direction`) and `km.telemetry.dropped`.
//!
//! # Configuration
//!
//! The standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` and the per-signal ones, `..._HEADERS`,
//! `..._PROTOCOL` (http/protobuf only), `..._TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`/
//! `OTEL_METRICS_EXPORTER` `none`, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`,
//! `OTEL_TRACES_SAMPLER`) over `[telemetry]` in `config.toml` ([`settings`]). With no endpoint
//! anywhere nothing is started: no thread, no allocation per message; the relay's hooks are
//! one atomic load each.
//!
//! # Never in the way
//!
//! The relay's hooks run on the pumps; they only put what was forwarded (shared bytes, no copy)
//! into a bounded queue ([`Pipeline::push`]), and drop it, counted, when the queue is full. The
//! telemetry thread does the parsing and the SDK work; the SDK's batch processor and periodic
//! reader batch and encode on threads of their own, and the requests run on km's runtime
//! (why not everything does: see [`export`]). The telemetry thread and the SDK's threads run at
//! the lowest CPU priority (`SCHED_IDLE` on Linux, see [`lower_priority`]): a pump that wakes
//! takes its core back at once. A Collector that is down or hangs changes
//! nothing in the MCP stream: exports fail or time out off the path, and the end of the session
//! waits for the last export at most `flush_timeout` (1 s by default). What was lost is reported
//! on stderr at the end of the session and counted in `km stats`.
//!
//! The self-monitoring figures ([`stats`]) are kept whether or not anything is exported.

mod export;
pub(crate) mod inject;
mod otlp;
pub(crate) mod settings;
pub mod stats;
mod wire;
pub(crate) mod worker;

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use km_abi::{Direction, MessageKind, VerdictAction};

use crate::events::PluginEvent;
use crate::home::KmHome;
use crate::monitor::correlate::CorrelationId;
use crate::monitor::dispatch::{Batch, Envelope, Item, LaneTotals};
use crate::runtime::Handle;

/// The nice value of km's telemetry threads where `SCHED_IDLE` is not to be had (see
/// [`lower_priority`]).
const NICE: i32 = 19;

/// The most bytes of lines waiting for the telemetry thread: past it lines are not traced,
/// whatever the count. The lines are the framer's read buffers, shared: while a read waits here
/// the framer cannot write into its buffer again, and moves to another (see "Reusing read
/// buffers" in `monitor::frame`). 4 MiB is sixteen of the tee path's 256 KiB reads, as many as
/// the framer keeps to move between; with 64 MiB (the plugins' bound) the queue held whole
/// benchmark runs while the `SCHED_IDLE` thread waited for a core, and every read took fresh
/// memory: 1.7 times the page faults of export off, the relay 1.25x slower. A burst larger than
/// this while the thread is starved is counted as reads not traced (reported at the end).
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// A verdict, for its span event and the verdict counter.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) plugin: String,
    pub(crate) action: &'static str,
    pub(crate) rules: Vec<String>,
    pub(crate) reason: String,
    pub(crate) kind: MessageKind,
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) id: Option<String>,
    pub(crate) correlation: Option<CorrelationId>,
    /// When the judged line was read.
    pub(crate) read_us: u64,
    /// When the verdict was given.
    pub(crate) at_us: u64,
}

/// What the hooks hand the telemetry thread.
pub(crate) enum Record {
    /// A forwarded line, and when it was forwarded (µs since the epoch).
    Line(Envelope, u64),
    /// Forwarded lines of a direction that nothing intercepts: each went out right after it was
    /// read, so its read time (`timestamp_us`) is when it was forwarded (see [`forwarded`]).
    Lines(Arc<Batch>),
    Verdict(Box<Verdict>),
    PluginEvent {
        plugin: Arc<str>,
        kind: String,
        data: serde_json::Map<String, serde_json::Value>,
        timestamp_ms: i64,
    },
    Refused {
        file: String,
        check: String,
        reason: String,
    },
    Loaded {
        plugin: String,
        seconds: f64,
    },
    Auth {
        plugin: String,
        outcome: String,
        seconds: f64,
        cache_hit: bool,
    },
    Lanes(Vec<LaneTotals>),
    Relayed {
        direction: Direction,
        bytes: u64,
    },
    /// Ids written into a request's `_meta` before it was forwarded (see [`inject`]).
    Assigned {
        key: (Direction, u64),
        trace: opentelemetry::trace::TraceId,
        server: opentelemetry::trace::SpanId,
        client: opentelemetry::trace::SpanId,
        /// The context the request came with (read before it was edited).
        parent: Option<opentelemetry::trace::SpanContext>,
    },
    Ended {
        exit_code: u8,
        failed: bool,
        dropped: u64,
    },
    /// The session is over: make every span, then answer; the instant is the session's
    /// deadline for its last exports.
    Finish(mpsc::Sender<worker::Done>, Instant),
}

impl Record {
    /// The bytes of lines it holds (for the queue's byte bound).
    fn weight(&self) -> usize {
        match self {
            Record::Line(envelope, _) => envelope.line.len(),
            Record::Lines(batch) => batch.bytes,
            _ => 0,
        }
    }
}

/// The running telemetry of this process's `km monitor` session.
pub(crate) struct Pipeline {
    tx: SyncSender<Record>,
    closed: AtomicBool,
    queued_bytes: Arc<AtomicUsize>,
    /// Records the queue had no room for.
    dropped: AtomicU64,
    settings: settings::Resolved,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// The session's telemetry, if it exports anything.
fn active() -> Option<&'static Pipeline> {
    PIPELINE.get().filter(|p| !p.closed.load(Ordering::Relaxed))
}

impl Pipeline {
    /// Queues `record` without ever waiting: when the queue (or its byte budget) is full the
    /// record is dropped and counted.
    fn push(&self, record: Record) {
        let bytes = record.weight();
        if bytes > 0 {
            let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            if before > 0 && before + bytes > MAX_QUEUED_BYTES {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if bytes > 0 {
                    self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a session must frame and number its lines for telemetry even without plugins.
pub(crate) fn follows_messages() -> bool {
    active().is_some()
}

/// Whether forwarded requests get the trace context written into them.
pub(crate) fn propagates() -> bool {
    active().is_some_and(|p| p.settings.propagate && p.settings.traces.is_some())
}

/// The relay forwarded the lines of `item` (called once per read, under the session lock).
///
/// Each line went out right after it was read, and is handed over here later: after the read's
/// framing, or after a hold (a response that overtook its request). Its read time, taken before
/// the forward, is therefore when it was forwarded, and keeps the order of cause and effect across
/// the two directions: the time of an answer that a pump is slow to hand over here would fall
/// after that of the server's reply to it, read and handed over by the other pump meanwhile (the
/// span of a server's request ending after the client's call it was made within).
pub(crate) fn forwarded(item: &Item) {
    if let Some(pipeline) = active() {
        let record = match item {
            Item::One(envelope) => Record::Line(envelope.clone(), envelope.timestamp_us),
            Item::Messages(batch) => Record::Lines(batch.clone()),
            Item::Event(_) | Item::Error(_) => return,
        };
        pipeline.push(record);
    }
}

/// The relay forwarded one line that interceptors judged (or km's answer to a blocked one).
pub(crate) fn forwarded_one(envelope: &Envelope) {
    if let Some(pipeline) = active() {
        pipeline.push(Record::Line(envelope.clone(), worker::now_us()));
    }
}

/// An interceptor's verdict other than pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verdict(
    plugin: &str,
    action: VerdictAction,
    rules: &[String],
    reason: &str,
    kind: MessageKind,
    method: &str,
    target: &str,
    id: Option<&[u8]>,
    correlation: Option<CorrelationId>,
    read_us: u64,
) {
    if plugin == inject::NAME {
        // km's own edit, not a plugin's verdict.
        return;
    }
    stats::verdict(plugin, action.as_str());
    if let Some(pipeline) = active() {
        let id = id.and_then(|raw| {
            let raw = std::str::from_utf8(raw).ok()?;
            if raw.starts_with('"') {
                serde_json::from_str::<String>(raw).ok()
            } else {
                Some(raw.to_owned())
            }
        });
        pipeline.push(Record::Verdict(Box::new(Verdict {
            plugin: plugin.to_owned(),
            action: action.as_str(),
            rules: rules.to_vec(),
            reason: reason.to_owned(),
            kind,
            method: method.to_owned(),
            target: target.to_owned(),
            id,
            correlation,
            read_us,
            at_us: worker::now_us(),
        })));
    }
}

/// A plugin emitted an event (already checked by the event bus).
pub(crate) fn plugin_event(event: &PluginEvent) {
    if let Some(pipeline) = active() {
        pipeline.push(Record::PluginEvent {
            plugin: event.plugin.clone(),
            kind: event.kind.clone(),
            data: event.data.clone(),
            timestamp_ms: event.timestamp_ms,
        });
    }
}

/// The loader verified, mapped and created plugin `name` in `took`.
pub(crate) fn plugin_loaded(name: &str, took: Duration) {
    stats::plugin_loaded(took);
    if let Some(pipeline) = active() {
        pipeline.push(Record::Loaded {
            plugin: name.to_owned(),
            seconds: took.as_secs_f64(),
        });
    }
}

/// The loader refused `file` because `check` failed.
pub(crate) fn plugin_refused(file: &std::path::Path, check: crate::verifier::Check, reason: &str) {
    let check = check.as_str();
    stats::plugin_refused(check);
    if let Some(pipeline) = active() {
        pipeline.push(Record::Refused {
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            check: check.to_owned(),
            reason: reason.to_owned(),
        });
    }
}

thread_local! {
    /// HTTP requests plugins made through the host on this thread (see [`AuthProbe`]).
    static HTTP_REQUESTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A plugin asked the host for an HTTP request (the host's API service).
pub(crate) fn http_request() {
    HTTP_REQUESTS.with(|n| n.set(n.get() + 1));
}

/// One authentication being timed. A plugin's `authenticate` runs on the calling thread and
/// reaches the API only through the host, on that same thread; an authentication during which
/// the host made no HTTP request was answered from the plugin's token cache.
#[derive(Debug)]
pub(crate) struct AuthProbe {
    started: Instant,
    requests_before: u64,
}

impl AuthProbe {
    /// Starts timing an authentication on this thread.
    pub(crate) fn start() -> Self {
        AuthProbe {
            started: Instant::now(),
            requests_before: HTTP_REQUESTS.with(std::cell::Cell::get),
        }
    }

    /// The authentication of `plugin` (which needs `tier`) ended with `outcome`. A Free plugin
    /// needs no subscription: its (trivial) authentications are not counted.
    pub(crate) fn finish(self, plugin: &str, tier: km_abi::Tier, outcome: &str) {
        if tier == km_abi::Tier::Free {
            return;
        }
        let took = self.started.elapsed();
        let cache_hit = HTTP_REQUESTS.with(std::cell::Cell::get) == self.requests_before;
        stats::auth(outcome, took, cache_hit);
        if let Some(pipeline) = active() {
            pipeline.push(Record::Auth {
                plugin: plugin.to_owned(),
                outcome: outcome.to_owned(),
                seconds: took.as_secs_f64(),
                cache_hit,
            });
        }
    }
}

/// What each plugin handled and missed in the session that ended.
pub(crate) fn lanes(totals: &[LaneTotals]) {
    stats::lanes(totals);
    if let Some(pipeline) = active() {
        pipeline.push(Record::Lanes(totals.to_vec()));
    }
}

/// A pump ended after relaying `bytes`.
pub(crate) fn relayed(direction: Direction, bytes: u64) {
    stats::relayed(direction, bytes);
    if let Some(pipeline) = active() {
        pipeline.push(Record::Relayed { direction, bytes });
    }
}

/// The session ended with km's exit code `code`; `failed` when km itself could not run it (the
/// server did not start, the relay failed).
pub(crate) fn session_ended(code: u8, failed: bool) {
    stats::session();
    if let Some(pipeline) = active() {
        let dropped = pipeline.dropped.load(Ordering::Relaxed);
        // Not dropped when the queue is full: this one is worth a short wait.
        let _ = pipeline.tx.send(Record::Ended {
            exit_code: code,
            failed,
            dropped,
        });
    }
}

/// The session's telemetry; ending it (drop) makes the last spans, exports them within the
/// flush deadline and reports what was lost.
#[must_use = "the telemetry ends when this is dropped"]
pub struct Session {
    running: Option<Running>,
    quiet: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("exporting", &self.running.is_some())
            .finish()
    }
}

struct Running {
    pipeline: export::Pipeline,
    /// km's runtime: the exports' requests and the providers' shutdowns run there.
    runtime: Handle,
    worker: std::thread::JoinHandle<()>,
    flush_timeout: Duration,
    endpoints: Vec<String>,
}

/// Starts the telemetry of a `km monitor` session of `command`, if `KM_HOME/config.toml` or
/// the environment asks for export, its exports running on `runtime`. Problems are warnings (on
/// stderr unless `quiet`): km's telemetry never stops a session.
pub fn start(runtime: &Handle, home: &KmHome, command: &[OsString], quiet: bool) -> Session {
    let warn = |message: &str| {
        if !quiet {
            eprintln!("km: warning: telemetry: {message}");
        }
    };
    let file = match crate::config::Config::load(home) {
        Ok(config) => config.telemetry,
        Err(e) => {
            warn(&format!("{e:#}; nothing is exported"));
            return Session {
                running: None,
                quiet,
            };
        }
    };
    let outcome = settings::resolve(&file, &|name| std::env::var(name).ok());
    for warning in &outcome.warnings {
        warn(warning);
    }
    let Some(resolved) = outcome.resolved else {
        return Session {
            running: None,
            quiet,
        };
    };
    let (tx, rx) = mpsc::sync_channel(resolved.queue_size);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let program = command
        .first()
        .map(|p| {
            std::path::Path::new(p)
                .file_name()
                .unwrap_or(p.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    // The exporters are built on the telemetry thread, after it lowered its CPU priority: the
    // threads they start (the batch processor's, the periodic reader's) inherit it, so that on
    // a busy machine the relay is served first and telemetry takes what is left (its queue
    // drops, counted, if that is not enough). That is also why the telemetry thread is a thread
    // of its own and not one of the runtime's blocking pool: a pooled thread, niced, would go
    // back to the pool at the end of the session and serve whatever comes next at the lowest
    // priority.
    let (ready, built) = mpsc::channel();
    let queued = queued_bytes.clone();
    let for_thread = resolved.clone();
    let for_exports = runtime.clone();
    let spawned = std::thread::Builder::new()
        .name("km-telemetry".into())
        .spawn(move || {
            lower_priority();
            let pipeline = match export::build(&for_thread, &for_exports) {
                Ok(pipeline) => pipeline,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let worker = worker::Worker::new(
                pipeline.tracer.as_ref(),
                pipeline.span_queue,
                pipeline.meter.as_ref(),
                pipeline.delivery.clone(),
                session_id(),
                &program,
                for_thread.capture_content,
            );
            if ready.send(Ok(pipeline)).is_ok() {
                worker.run(rx, &queued);
            }
        });
    let worker = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            warn(&format!(
                "cannot start its thread: {e}; nothing is exported"
            ));
            return Session {
                running: None,
                quiet,
            };
        }
    };
    let pipeline = match built.recv() {
        Ok(Ok(pipeline)) => pipeline,
        Ok(Err(e)) => {
            warn(&format!("{e}; nothing is exported"));
            return Session {
                running: None,
                quiet,
            };
        }
        Err(_) => {
            warn("its thread ended at once; nothing is exported");
            return Session {
                running: None,
                quiet,
            };
        }
    };
    let endpoints = [&resolved.traces, &resolved.metrics]
        .into_iter()
        .flatten()
        .map(|s| s.shown.clone())
        .collect();
    let flush_timeout = resolved.flush_timeout;
    let installed = PIPELINE.set(Pipeline {
        tx,
        closed: AtomicBool::new(false),
        queued_bytes,
        dropped: AtomicU64::new(0),
        settings: resolved,
    });
    if installed.is_err() {
        // One session per process: a second one (never the case for `km monitor`) exports
        // nothing rather than mixing with the first.
        warn("a session is already exporting in this process; nothing more is exported");
        return Session {
            running: None,
            quiet,
        };
    }
    Session {
        running: Some(Running {
            pipeline,
            runtime: runtime.clone(),
            worker,
            flush_timeout,
            endpoints,
        }),
        quiet,
    }
}

/// Puts the calling thread (and the threads it starts, which inherit it) at the lowest CPU
/// priority there is, so that export only takes what the relay (and everything else on the
/// machine) leaves. On a saturated machine the queue fills and drops, counted and reported,
/// rather than the relay slowing down.
///
/// On Linux that is the `SCHED_IDLE` policy, not only nice 19: under the EEVDF scheduler a
/// nice-19 thread that got a core keeps it until its slice is used up (`RUN_TO_PARITY`), so a
/// pump woken by new input waited behind span encoding for up to a slice, many times per
/// second (the relay ran 1.3-1.7x slower with export on, with its own instructions up by under
/// 5%: BENCHMARKS.md). A normal thread that wakes preempts a `SCHED_IDLE` one at once. An
/// unprivileged thread may always lower its own policy; it can never raise it again, which is
/// why this runs on km's own telemetry thread only.
fn lower_priority() {
    if !idle_policy() {
        let _ = rustix::process::setpriority_process(None, NICE);
    }
}

/// Sets the calling thread's policy to `SCHED_IDLE`; whether that worked.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn idle_policy() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes the calling thread's policy only; it reads
    // the `sched_param` it is given (a valid, initialised local that outlives the call) and
    // writes no memory of ours. SCHED_IDLE requires priority 0.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn idle_policy() -> bool {
    false
}

/// An id for the session's `mcp.session.id`: random hex, like the monitor's session ids.
fn session_id() -> String {
    let mut random = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        random[..8].copy_from_slice(&worker::now_us().to_le_bytes());
        random[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    km_durable::digest::hex(&random)
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let Some(pipeline) = PIPELINE.get() else {
            return;
        };
        let started = Instant::now();
        let deadline = started + running.flush_timeout;
        // The worker makes the last spans (it is never blocked by the exporter: the batch
        // processor's queue drops instead).
        let (reply, done) = mpsc::channel();
        let _ = pipeline.tx.send(Record::Finish(reply, deadline));
        pipeline.closed.store(true, Ordering::Relaxed);
        let finished = done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok();
        if finished {
            let _ = running.worker.join();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let flushed = finished && export::shutdown(&running.pipeline, left, &running.runtime);
        let delivery = running.pipeline.delivery.clone();
        let ended = delivery.spans_ended.load(Ordering::Relaxed);
        let exported = delivery.spans_exported.load(Ordering::Relaxed);
        let lost_spans = ended.saturating_sub(exported);
        let untraced = pipeline.dropped.load(Ordering::Relaxed);
        let metric_failures = delivery.metric_failures.load(Ordering::Relaxed);
        stats::telemetry(exported, lost_spans, untraced);
        let mut problems = Vec::new();
        if lost_spans > 0 {
            problems.push(format!("{lost_spans} of {ended} spans were not exported"));
        }
        if metric_failures > 0 {
            problems.push(format!("{metric_failures} metric exports failed"));
        }
        if untraced > 0 {
            problems.push(format!(
                "{untraced} reads were not traced (km's telemetry queue was full)"
            ));
        }
        if !flushed {
            problems.push(format!(
                "the last export did not finish within {} ms",
                running.flush_timeout.as_millis()
            ));
        }
        if !flushed {
            // Dropping providers that did not shut down would try again and wait; km is about
            // to exit, and the threads still exporting go with it.
            std::mem::forget(running.pipeline);
        }
        if !problems.is_empty() && !self.quiet {
            let error = delivery
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            eprintln!(
                "km: warning: telemetry to {}: {}{}",
                running.endpoints.join(", "),
                problems.join("; "),
                error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
        }
    }
}
#[cfg(test)]
mod tests;
