//! ml-analytics (Pro tier): what an agent's tools cost and when they misbehave.
//!
//! - **Statistics** per (server, method, tool): calls, errors by type (JSON-RPC error code,
//!   tool results with `isError`, cancelled, never answered), latency distribution (DDSketch,
//!   1% relative error, see [`sketch`]), request and response sizes, progress notifications.
//!   Counted in memory and merged into the data directory every 10 s and at the end of the
//!   session, in minute, hour and day buckets with a bounded retention ([`store`]).
//! - **Anomalies**, online and in constant memory per series, after a warm-up ([`model`]):
//!   latency far outside a tool's learned distribution, error-rate spikes, call-rate bursts, a
//!   tool used for the first time on a known server, requests left unanswered. Each is a record
//!   in the data directory, an `anomaly` event through km (ABI 1.1), and a warning on km's log.
//! - **Reports**: `km plugin ml-analytics report [--since DURATION] [--server S] [--json |
//!   --html FILE]` ([`command`], [`report`]).
//!
//! Without a valid Pro subscription it records nothing: no counts, no anomalies, no files (the
//! SDK's [`Subscription`] says why in `km plugin-status`). Until the first authentication of a
//! session has answered it counts in memory only, and drops everything if the answer is no.
//!
//! Cost on km's worker thread: one scan of the fields it needs (see [`parse`]), one lookup of
//! the series and a few floating-point operations per line, about 3,400 instructions on
//! km-bench's mix (BENCHMARKS.md); no I/O, no clock (the line's own timestamp), two small
//! allocations per request and none for other lines. It observes
//! without lossless delivery on purpose: statistics must never slow the relay, and a line km
//! could not queue shows up as a response without its request, counted as `unpaired`.
//!
//! Settings: `[plugins.ml-analytics]` in km's config.toml (see [`settings`]).

#![deny(unsafe_code)]

mod anomaly;
mod clock;
mod command;
mod engine;
mod error;
mod files;
mod model;
mod parse;
mod report;
mod settings;
mod sketch;
mod stats;
mod store;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use km_plugin_sdk::{
    AuthResponse, CommandOutput, ErrorKind, Host, Interest, KindSet, Message, MessageKind, Plugin,
    PluginConfig, PluginError, SessionInfo, StreamEvent, StreamEventKind, Subscription, Tier,
};
use serde_json::Value;

use crate::anomaly::Anomaly;
use crate::engine::Engine;
use crate::settings::Settings;
use crate::store::Store;

km_plugin_sdk::credentials_region!();

const NAME: &str = "ml-analytics";

/// How often retention runs while a session lasts.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// What the handler thread, the flusher thread and km's refresh thread share.
struct Shared {
    host: Host,
    subscription: Subscription,
    /// Until when (seconds since the epoch) the last authentication grants Pro; 0 for never.
    active_until: AtomicI64,
    /// Whether an authentication has answered in this process.
    decided: AtomicBool,
    settings: Mutex<Settings>,
    engine: Mutex<Option<Engine>>,
    /// Whether `engine` is `Some` (checked without the lock on degraded lines).
    has_engine: AtomicBool,
    /// Whether the session began (its server is known) and the flusher runs.
    started: AtomicBool,
    /// Whether the session's end was counted.
    ended: AtomicBool,
    stop: (Mutex<bool>, Condvar),
    /// Whether `emit` said the host cannot (a km before ABI 1.1): not asked again.
    emit_unsupported: AtomicBool,
    /// The last flush error logged, so a lasting failure is logged once.
    last_error: Mutex<String>,
}

/// Whether full features are on, by the last authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Pending,
    Active,
    Degraded,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is caught by the SDK; the state it left is still counts.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn access(&self, now_secs: i64) -> Access {
        if now_secs < self.active_until.load(Ordering::Acquire) {
            Access::Active
        } else if !self.decided.load(Ordering::Acquire) {
            Access::Pending
        } else {
            Access::Degraded
        }
    }

    fn store(&self) -> Store {
        Store::new(
            &self.host.data_dir(),
            lock(&self.settings).retention.clone(),
        )
    }

    fn new_engine(&self, session_id: &str) -> Engine {
        let settings = lock(&self.settings);
        Engine::new(
            session_id,
            settings.thresholds.clone(),
            settings.max_anomalies_per_session,
        )
    }

    /// Logs and emits anomalies (only while Pro is active: the caller checks).
    fn publish(&self, anomalies: Vec<Anomaly>) {
        for anomaly in anomalies {
            let label = if anomaly.server_label.is_empty() {
                anomaly.server.clone()
            } else {
                anomaly.server_label.clone()
            };
            self.host.warn(&format!(
                "anomaly ({}): {} [{label}]",
                anomaly.kind.as_str(),
                anomaly.detail
            ));
            if self.emit_unsupported.load(Ordering::Relaxed) {
                continue;
            }
            let data = serde_json::to_value(&anomaly).unwrap_or(Value::Null);
            match self.host.emit("anomaly", &data) {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::UNSUPPORTED => {
                    self.emit_unsupported.store(true, Ordering::Relaxed);
                }
                Err(e) => self
                    .host
                    .debug(&format!("could not emit an anomaly event: {e}")),
            }
        }
    }

    /// Merges what the engine counted into the store; on failure the counts stay in memory.
    fn flush(&self) {
        let now_ms = clock::now_ms();
        if self.access(now_ms / 1000) != Access::Active {
            return;
        }
        let mut batch = match lock(&self.engine).as_mut() {
            Some(engine) => engine.take_flush(),
            None => return,
        };
        if batch.is_empty() {
            return;
        }
        match self.store().flush(&mut batch, now_ms / 1000) {
            Ok(warnings) => {
                for w in warnings {
                    self.host.warn(&w);
                }
                lock(&self.last_error).clear();
            }
            Err(e) => {
                let text = e.to_string();
                let mut last = lock(&self.last_error);
                if *last != text {
                    self.host.warn(&format!(
                        "cannot save statistics ({text}); keeping them in memory and retrying"
                    ));
                    *last = text;
                }
                drop(last);
                if let Some(engine) = lock(&self.engine).as_mut() {
                    engine.restore(batch);
                }
            }
        }
    }

    fn maintain(&self) {
        let now_ms = clock::now_ms();
        if self.access(now_ms / 1000) != Access::Active {
            return;
        }
        match self.store().maintain(now_ms / 1000) {
            Ok(warnings) => {
                for w in warnings {
                    self.host.warn(&w);
                }
            }
            Err(e) => self.host.warn(&format!("retention: {e}")),
        }
    }

    /// Finds overdue requests and publishes what the engine raised, if Pro is active.
    fn tick(&self) {
        let now_ms = clock::now_ms();
        let access = self.access(now_ms / 1000);
        let anomalies = match lock(&self.engine).as_mut() {
            Some(engine) => {
                engine.tick(now_ms);
                if access == Access::Active {
                    engine.take_new_anomalies()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        self.publish(anomalies);
    }

    /// The flusher thread: flushes every interval, applies retention hourly, until stopped.
    fn run_flusher(self: Arc<Self>) {
        let interval = Duration::from_millis(lock(&self.settings).flush_interval_ms);
        let mut last_maintenance: Option<Instant> = None;
        loop {
            {
                let (stopped, cv) = &self.stop;
                let guard = lock(stopped);
                let (guard, _) = cv
                    .wait_timeout_while(guard, interval, |stop| !*stop)
                    .unwrap_or_else(PoisonError::into_inner);
                if *guard {
                    return;
                }
            }
            self.tick();
            self.flush();
            if last_maintenance.is_none_or(|t| t.elapsed() >= MAINTENANCE_INTERVAL) {
                self.maintain();
                last_maintenance = Some(Instant::now());
            }
        }
    }
}

/// The plugin.
pub struct MlAnalytics {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn random_id() -> String {
    // RandomState is seeded from the OS per instance: enough to keep sessions apart.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl MlAnalytics {
    /// Begins the session: the server it talks to, the model the store learned, the flusher.
    fn start(&self, session_id: &str, command: &[String]) {
        if self.shared.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let server = km_plugin_sdk::server_id(command);
        let label = km_plugin_sdk::server_label(command);
        let models = match self.shared.store().load_models() {
            Ok(models) => models,
            Err(e) => {
                self.shared.host.warn(&format!(
                    "cannot read what was learned before ({e}); learning afresh"
                ));
                store::Models::default()
            }
        };
        {
            let mut engine = lock(&self.shared.engine);
            let session = if session_id.is_empty() {
                random_id()
            } else {
                session_id.to_owned()
            };
            let engine = engine.get_or_insert_with(|| self.shared.new_engine(&session));
            engine.begin(&server, &label, models);
            self.shared.has_engine.store(true, Ordering::Release);
        }
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("ml-analytics-flush".into())
            .spawn(move || shared.run_flusher())
        {
            Ok(handle) => *lock(&self.flusher) = Some(handle),
            Err(e) => self.shared.host.warn(&format!(
                "cannot start the flusher thread ({e}); statistics are saved at the end of the session only"
            )),
        }
    }

    /// The session is over: unanswered requests are counted, what is left is saved.
    fn end(&self) {
        if self.shared.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let now_ms = clock::now_ms();
        let access = self.shared.access(now_ms / 1000);
        let anomalies = match lock(&self.shared.engine).as_mut() {
            Some(engine) => {
                engine.end((now_ms as u64).saturating_mul(1000));
                let c = engine.counters();
                self.shared.host.debug(&format!(
                    "session over: {} lines, {} responses without their request, {} batches, \
                     {} anomalies past the session's cap",
                    c.messages, c.unpaired, c.batches, c.suppressed
                ));
                if access == Access::Active {
                    engine.take_new_anomalies()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        self.shared.publish(anomalies);
    }
}

impl Plugin for MlAnalytics {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Pro;

    fn new(host: Host) -> Result<Self, PluginError> {
        let subscription = Subscription::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            Tier::Pro,
            km_credentials_region(),
        );
        subscription.cache_in(host.data_dir());
        // Nothing starts here: `km plugin-refresh` creates the plugin only to authenticate it,
        // and `km plugin ml-analytics report` only to run a command.
        Ok(MlAnalytics {
            shared: Arc::new(Shared {
                host,
                subscription,
                active_until: AtomicI64::new(0),
                decided: AtomicBool::new(false),
                settings: Mutex::new(Settings::default()),
                engine: Mutex::new(None),
                has_engine: AtomicBool::new(false),
                started: AtomicBool::new(false),
                ended: AtomicBool::new(false),
                stop: (Mutex::new(false), Condvar::new()),
                emit_unsupported: AtomicBool::new(false),
                last_error: Mutex::new(String::new()),
            }),
            flusher: Mutex::new(None),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginError> {
        let shared = &self.shared;
        let response = shared.subscription.authenticate(&shared.host, api_key);
        let until = shared
            .subscription
            .current(km_plugin_sdk::auth::now_unix())
            .map_or(0, |claims| claims.expires_at);
        shared.active_until.store(until, Ordering::Release);
        shared.decided.store(true, Ordering::Release);
        if until > 0 {
            // What was counted while the answer was pending is now recorded and announced.
            let anomalies = lock(&shared.engine)
                .as_mut()
                .map(Engine::take_new_anomalies)
                .unwrap_or_default();
            shared.publish(anomalies);
        }
        Ok(response)
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let (settings, refused) = Settings::from_json(config.settings_json.as_str());
        for what in refused {
            self.shared
                .host
                .warn(&format!("ignoring the setting {what} (using the default)"));
        }
        *lock(&self.shared.settings) = settings;
        Ok(())
    }

    fn interest(&self) -> Interest {
        // JSON-RPC lines only; no interception, and no lossless delivery (see the crate doc).
        Interest::observer().kinds(KindSet::JSON_RPC.with(MessageKind::BATCH))
    }

    fn begin_session(&self, session: &SessionInfo) -> Result<(), PluginError> {
        self.start(&session.session_id, &session.command);
        Ok(())
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        let shared = &self.shared;
        let now_secs = (message.timestamp_us / 1_000_000) as i64;
        let access = shared.access(now_secs);
        if access == Access::Degraded {
            // Free behaviour: nothing is counted, and what was counted before is dropped.
            if shared.has_engine.swap(false, Ordering::AcqRel) {
                if let Some(engine) = lock(&shared.engine).as_mut() {
                    let _ = engine.take_flush();
                    let _ = engine.take_new_anomalies();
                }
            }
            return Ok(());
        }
        let mut guard = lock(&shared.engine);
        let engine = guard.get_or_insert_with(|| shared.new_engine(&random_id()));
        shared.has_engine.store(true, Ordering::Release);
        engine.observe(message);
        if access == Access::Active && engine.has_new_anomalies() {
            let anomalies = engine.take_new_anomalies();
            drop(guard);
            shared.publish(anomalies);
        }
        Ok(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        if event.kind == StreamEventKind::START {
            // The server's command line (and, from ABI 1.1, the session id); begin_session
            // says the same first when km has it.
            let data: Value = serde_json::from_str(event.data.as_str()).unwrap_or(Value::Null);
            let command: Vec<String> = data["command"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let session = data["session_id"].as_str().unwrap_or_default();
            self.start(session, &command);
        } else if event.kind == StreamEventKind::END {
            self.end();
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        {
            let (stopped, cv) = &self.shared.stop;
            *lock(stopped) = true;
            cv.notify_all();
        }
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
        if self.shared.started.load(Ordering::Acquire) {
            self.end();
            self.shared.flush();
        }
        Ok(())
    }

    fn command_help(&self) -> Option<String> {
        Some(command::HELP.to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        let now_ms = clock::now_ms();
        let mut output = command::run(&self.shared.store(), args, now_ms);
        if output.exit_code == 0 && self.shared.access(now_ms / 1000) == Access::Degraded {
            let note =
                "note: ml-analytics has no valid Pro subscription now (see `km plugin-status`): \
                        nothing new is being recorded\n";
            let mut stderr = note.as_bytes().to_vec();
            stderr.extend_from_slice(output.stderr.as_slice());
            output.stderr = stderr.into();
        }
        Ok(output)
    }
}

km_plugin_sdk::export_plugin!(MlAnalytics);
