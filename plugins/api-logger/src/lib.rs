//! api-logger (Pro tier): sends every MCP message as an event to the Kilometers API
//! (`POST {api}/api/events/batch`), in batches, losing none.
//!
//! - A batch goes out once 10 events wait, or every 5 seconds with whatever waits. It carries
//!   every event waiting, up to [`MAX_BATCH_EVENTS`] or [`MAX_BATCH_BYTES`]: while a backlog
//!   builds (a busy session, the API slow or back after an outage) each request carries many
//!   events, so the fixed cost per request (its `fdatasync`, the acknowledged offset's atomic
//!   rewrite, the HTTP exchange) does not set the pace; with batches of 10 it did, and the
//!   plugin fell behind km and was dropped messages.
//! - Every event has an id (`<session id>:<seq>`), so the API stores a retried batch once.
//! - Events are written to an append-only journal in the plugin's data directory before they
//!   are sent, and leave it only when the API acknowledges them: nothing is lost while the API is
//!   down or km is stopped; the backlog is sent at the next start. Each session has its own
//!   journal, so that several km monitors can run side by side (see [`journal`]). An event
//!   reaches the journal's file within 2 ms of being handed to the plugin (a journal writer
//!   thread writes what gathered, one `write(2)` per burst instead of one per message), so that
//!   a km killed outright loses at most the last 2 ms of events (never 64 KiB of them), where its
//!   own queue to the plugin can hold 8 192 messages (see [`journal`], "What a kill can lose").
//! - Failed sends back off exponentially (1 s doubling to 60 s). The backlog on disk is capped
//!   at 256 MiB: beyond it, new events are dropped with one warning.
//! - Without a valid Pro subscription it sends nothing and keeps nothing: it checks its
//!   subscription through the SDK's [`Subscription`] on every message. Messages that arrive
//!   before the first authentication of a session are held in memory (bounded) until the answer
//!   is known.
//!
//! Settings (`[plugins.api-logger]` in km's config.toml): `batch_size` (10),
//! `flush_interval_ms` (5000), `retry_base_ms` (1000), `retry_max_ms` (60000),
//! `max_payload_bytes` (262144: larger messages are sent without their payload).
//!
//! It never writes to stdout, and it logs through km.

#![deny(unsafe_code)]

mod journal;
mod valid;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{
    AuthResponse, Host, HttpRequest, Message, Plugin, PluginConfig, PluginError, Subscription,
    SubscriptionState, Tier,
};
use serde_json::Value;

use crate::journal::Journal;

km_plugin_sdk::credentials_region!();

const NAME: &str = "api-logger";
const BATCH_PATH: &str = "/api/events/batch";
/// Events held in memory while the first authentication is pending.
const MAX_PENDING_IN_MEMORY: usize = 10_000;
/// How often the sender looks for journals of ended sessions to deliver.
const ADOPTION_INTERVAL: Duration = Duration::from_secs(30);
/// The most events one request carries.
const MAX_BATCH_EVENTS: usize = 1000;
/// The most bytes of events one request carries (beyond its first event): half of what the
/// Kilometers API takes in one body (8 MiB).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The largest backlog kept on disk while the API is unreachable; newer events are dropped
/// (with one warning) beyond it, so that a long outage cannot fill the disk.
const MAX_BACKLOG_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Settings {
    batch_size: usize,
    flush_interval: Duration,
    retry_base: Duration,
    retry_max: Duration,
    max_payload: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: 10,
            flush_interval: Duration::from_secs(5),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_payload: 256 * 1024,
        }
    }
}

impl Settings {
    fn from_json(text: &str) -> Settings {
        let mut s = Settings::default();
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            return s;
        };
        let num = |k: &str| map.get(k).and_then(Value::as_u64).filter(|&n| n > 0);
        if let Some(n) = num("batch_size") {
            s.batch_size = n.min(1000) as usize;
        }
        if let Some(n) = num("flush_interval_ms") {
            s.flush_interval = Duration::from_millis(n);
        }
        if let Some(n) = num("retry_base_ms") {
            s.retry_base = Duration::from_millis(n);
        }
        if let Some(n) = num("retry_max_ms") {
            s.retry_max = Duration::from_millis(n);
        }
        if let Some(n) = num("max_payload_bytes") {
            s.max_payload = n as usize;
        }
        s
    }
}

/// What the handler thread, the sender thread and the journal writer share.
struct Shared {
    host: Host,
    subscription: Subscription,
    /// The plugin's data directory, where journals live.
    data_dir: std::path::PathBuf,
    /// This session's journal (opened by `initialize`).
    journal: Mutex<Option<Journal>>,
    /// Journals of sessions that ended with events undelivered, oldest first; sent before this
    /// session's own events.
    adopted: Mutex<Vec<Journal>>,
    /// Events seen before the first authentication answer.
    early: Mutex<Vec<Vec<u8>>>,
    /// Set when an event is held in `early`, so that the path of every message need not lock it.
    early_waiting: AtomicBool,
    settings: Mutex<Settings>,
    /// `settings.max_payload` and `settings.batch_size`, read on every message without a lock.
    max_payload: AtomicUsize,
    batch_size: AtomicUsize,
    /// Number of events appended since the sender last looked: counted without a lock, and the
    /// sender woken (under the lock of `wake`, which it waits with) when it reaches a batch.
    appended: AtomicUsize,
    wake: (Mutex<()>, Condvar),
    stop: AtomicBool,
    /// The journal writer thread, woken when an event finds none waiting in memory.
    writer: OnceLock<std::thread::Thread>,
    /// Whether the "backlog full" warning was given.
    warned_full: AtomicBool,
}

/// The plugin.
pub struct ApiLogger {
    shared: Arc<Shared>,
    session_id: String,
    sender: Mutex<Option<(std::thread::JoinHandle<()>, mpsc::Receiver<()>)>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
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
    let a = h.finish();
    let mut h2 = RandomState::new().build_hasher();
    h2.write_u64(a);
    format!("{:016x}{:016x}", a, h2.finish())
}

impl Shared {
    fn active(&self) -> bool {
        self.subscription.is_active(now_unix())
    }

    fn record(&self, mut line: Vec<u8>) {
        let Ok(mut guard) = self.journal.lock() else {
            return;
        };
        let Some(journal) = guard.as_mut() else {
            return;
        };
        if journal.backlog_bytes() > MAX_BACKLOG_BYTES {
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                self.host.warn(&format!(
                    "api-logger: {} MiB of events await the API; dropping new events until it answers",
                    MAX_BACKLOG_BYTES / (1024 * 1024)
                ));
            }
            return;
        }
        line.push(b'\n');
        let first_waiting = match journal.append(&line) {
            Ok(first) => first,
            Err(e) => {
                self.host
                    .warn(&format!("api-logger: cannot write its journal: {e}"));
                return;
            }
        };
        drop(guard);
        if first_waiting {
            // The writer writes it within `WRITE_WITHIN`; an unpark costs a syscall only when
            // the writer is parked, once per burst of events.
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
        let n = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.batch_size.load(Ordering::Relaxed) {
            // Taking the lock the sender checks the count under means it is either before its
            // check (and sees the count) or waiting (and gets the notification).
            let (lock, cv) = &self.wake;
            let _held = lock.lock();
            cv.notify_one();
        }
    }

    /// Moves events held during the first authentication into the journal, or drops them.
    fn settle_early(&self) {
        if !self.early_waiting.swap(false, Ordering::AcqRel) {
            return;
        }
        let early = match self.early.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => return,
        };
        if self.active() {
            for line in early {
                self.record(line);
            }
        }
    }

    /// Sends one batch if there is one. Ok(true): sent something; Ok(false): nothing to send.
    fn send_one_batch(&self, timeout_ms: u32) -> Result<bool, String> {
        let Some(token) = self.subscription.current_token(now_unix()) else {
            return Ok(false);
        };
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(b"{\"events\":[");
        let Some((from_adopted, end)) = self.next_batch(&mut body)? else {
            return Ok(false);
        };
        body.extend_from_slice(b"]}");
        let mut request = HttpRequest::post_json(BATCH_PATH, body);
        request.headers.push(abi_stable_tuple(
            "authorization",
            &format!("Bearer {token}"),
        ));
        request.timeout_ms = timeout_ms;
        let response = self.host.http(request).map_err(|e| e.to_string())?;
        if !(200..300).contains(&response.status) {
            return Err(format!("HTTP {}", response.status));
        }
        self.acknowledge(from_adopted, end)
            .map_err(|e| format!("recording the acknowledgement: {e}"))?;
        Ok(true)
    }

    /// Appends the next batch's events to `body`: from the oldest adopted journal, else from
    /// this session's. `(from_adopted, offset that acknowledges them)`, `None` when nothing
    /// waits. This session's journal is locked only to write out what waits in memory: the
    /// sync and the read go through the sender's own handle, so the handler never waits for
    /// them.
    fn next_batch(&self, body: &mut Vec<u8>) -> Result<Option<(bool, u64)>, String> {
        let read_error = |e: std::io::Error| format!("reading a journal: {e}");
        if let Ok(mut adopted) = self.adopted.lock() {
            while let Some(journal) = adopted.first_mut() {
                let window = journal.window().map_err(read_error)?;
                let (n, end) = window
                    .read_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, body)
                    .map_err(read_error)?;
                if n > 0 {
                    return Ok(Some((true, end)));
                }
                adopted.remove(0).delete();
            }
        }
        let window = {
            let Ok(mut guard) = self.journal.lock() else {
                return Ok(None);
            };
            let Some(journal) = guard.as_mut() else {
                return Ok(None);
            };
            journal.window().map_err(read_error)?
        };
        let _ = window.sync();
        let (n, end) = window
            .read_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, body)
            .map_err(read_error)?;
        Ok((n > 0).then_some((false, end)))
    }

    fn acknowledge(&self, from_adopted: bool, end: u64) -> std::io::Result<()> {
        if from_adopted {
            if let Ok(mut adopted) = self.adopted.lock() {
                if let Some(journal) = adopted.first_mut() {
                    if journal.ack(end)? {
                        adopted.remove(0).delete();
                    }
                }
            }
            return Ok(());
        }
        // The offset file is rewritten (fsyncs and a rename) without holding the journal, which
        // the handler appends under; only emptying a fully delivered journal needs it held.
        let planned = match self.journal.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(journal) => match journal.ack_outside(end) {
                    Some(plan) => plan,
                    None => {
                        journal.ack(end)?;
                        return Ok(());
                    }
                },
                None => return Ok(()),
            },
            Err(_) => return Ok(()),
        };
        journal::write_acked(&planned.0, planned.1)?;
        if let Ok(mut guard) = self.journal.lock() {
            if let Some(journal) = guard.as_mut() {
                journal.acked_to(planned.1);
            }
        }
        Ok(())
    }

    /// Adopts the journals of sessions that have ended (their lock is free).
    fn adopt_orphans(&self) {
        let own = self
            .journal
            .lock()
            .ok()
            .and_then(|j| j.as_ref().map(|j| j.path().to_path_buf()));
        let Ok(mut adopted) = self.adopted.lock() else {
            return;
        };
        for path in Journal::list(&self.data_dir) {
            if Some(&path) == own.as_ref() || adopted.iter().any(|j| j.path() == path) {
                continue;
            }
            match Journal::adopt(&path) {
                Ok(Some(journal)) => adopted.push(journal),
                Ok(None) => {} // another session is alive and owns it
                Err(e) => self
                    .host
                    .debug(&format!("api-logger: cannot adopt {}: {e}", path.display())),
            }
        }
    }

    /// The journal writer thread: woken by the handler when an event finds none waiting in
    /// memory, it lets more gather for [`journal::WRITE_WITHIN`], then writes them all in one
    /// `write(2)`, so that an event reaches the file (and survives a kill of km) within that
    /// bound whatever the sender is doing.
    fn run_writer(self: Arc<Self>) {
        loop {
            std::thread::park();
            if self.stop.load(Ordering::SeqCst) {
                // The sender's last flush and `shutdown` write what is left.
                return;
            }
            std::thread::sleep(journal::WRITE_WITHIN);
            let Ok(mut guard) = self.journal.lock() else {
                return;
            };
            if let Some(journal) = guard.as_mut() {
                if let Err(e) = journal.write_pending() {
                    drop(guard);
                    self.host
                        .warn(&format!("api-logger: cannot write its journal: {e}"));
                }
            }
        }
    }

    /// The sender thread: flushes on a full batch or every flush interval, backs off on failure.
    fn run_sender(self: Arc<Self>, done: mpsc::Sender<()>) {
        let mut backoff: Option<Duration> = None;
        let mut last_adoption: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) {
            if !matches!(last_adoption, Some(t) if t.elapsed() < ADOPTION_INTERVAL) {
                self.adopt_orphans();
                last_adoption = Some(Instant::now());
            }
            let settings = self.settings.lock().map(|s| s.clone()).unwrap_or_default();
            let wait = backoff.unwrap_or(settings.flush_interval);
            {
                let (lock, cv) = &self.wake;
                let Ok(mut held) = lock.lock() else { break };
                let started = Instant::now();
                // Wait for a full batch (unless backing off), the interval, or stop.
                while !self.stop.load(Ordering::SeqCst)
                    && (backoff.is_some()
                        || self.appended.load(Ordering::Acquire) < settings.batch_size)
                {
                    let left = wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    match cv.wait_timeout(held, left) {
                        Ok((guard, _)) => held = guard,
                        Err(_) => return,
                    }
                }
                self.appended.store(0, Ordering::Release);
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            loop {
                match self.send_one_batch(0) {
                    Ok(true) => backoff = None,
                    Ok(false) => {
                        backoff = None;
                        break;
                    }
                    Err(e) => {
                        let next = backoff
                            .map_or(settings.retry_base, |b| (b * 2).min(settings.retry_max));
                        self.host.debug(&format!(
                            "api-logger: sending events failed ({e}); retrying in {} ms",
                            next.as_millis()
                        ));
                        backoff = Some(next);
                        break;
                    }
                }
            }
        }
        // Last chance before km exits: deliver what we can, quickly. What is left stays in the
        // journal for the next start.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.send_one_batch(1500) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if let Ok(mut guard) = self.journal.lock() {
            if let Some(j) = guard.as_mut() {
                let _ = j.sync();
            }
        }
        let _ = done.send(());
    }
}

fn abi_stable_tuple(
    k: &str,
    v: &str,
) -> km_plugin_sdk::abi_stable::std_types::Tuple2<
    km_plugin_sdk::abi_stable::std_types::RString,
    km_plugin_sdk::abi_stable::std_types::RString,
> {
    km_plugin_sdk::abi_stable::std_types::Tuple2(k.into(), v.into())
}

impl ApiLogger {
    fn event(&self, message: &Message<'_>, max_payload: usize) -> Vec<u8> {
        event_json(&self.session_id, message, max_payload)
    }
}

/// One event: the message's metadata, and its payload as JSON, text or base64 (or left out
/// beyond `max_payload`). The id `<session>:<seq>` is what makes a retried batch harmless.
///
/// Written straight into its buffer, the payload as the bytes that crossed: building a
/// `serde_json::Value` of the event and of the whole message, then serialising both, cost most
/// of the plugin's time per message. The payload is checked to be JSON as a `Value` would read
/// it, so that the API, which reads it so, never gets a batch it refuses: by [`valid`]'s fast
/// proof, and where that is not sure by serde_json itself ([`JsonChecked`]).
fn event_json(session_id: &str, message: &Message<'_>, max_payload: usize) -> Vec<u8> {
    let bytes = message.bytes();
    // Room for the metadata and the journal's newline: one allocation per event.
    let mut out = Vec::with_capacity(bytes.len() + 384);
    out.extend_from_slice(b"{\"id\":\"");
    // A session id is 32 hex digits (`random_id`): nothing to escape.
    out.extend_from_slice(session_id.as_bytes());
    out.push(b':');
    push_u64(&mut out, message.seq);
    out.extend_from_slice(b"\",\"session_id\":");
    json_str(&mut out, session_id);
    out.extend_from_slice(b",\"seq\":");
    push_u64(&mut out, message.seq);
    out.extend_from_slice(b",\"timestamp_us\":");
    push_u64(&mut out, message.timestamp_us);
    out.extend_from_slice(b",\"direction\":");
    json_str(&mut out, message.direction.as_str());
    out.extend_from_slice(b",\"kind\":");
    json_str(&mut out, message.kind.as_str());
    out.extend_from_slice(b",\"method\":");
    json_str(&mut out, message.method.as_str());
    out.extend_from_slice(b",\"jsonrpc_id\":");
    json_str(&mut out, message.id.as_str());
    out.extend_from_slice(b",\"correlation_id\":");
    json_str(&mut out, message.correlation_id.as_str());
    out.extend_from_slice(b",\"is_error\":");
    out.extend_from_slice(if message.is_error { b"true" } else { b"false" });
    out.extend_from_slice(b",\"size\":");
    push_u64(&mut out, bytes.len() as u64);
    if let Some(latency) = message.latency_us.into_option() {
        out.extend_from_slice(b",\"latency_us\":");
        push_u64(&mut out, latency);
    }
    let json = bytes.trim_ascii();
    if bytes.len() > max_payload {
        out.extend_from_slice(b",\"truncated\":true");
    } else if valid::surely_json(json)
        || !json.contains(&b'\n') && serde_json::from_slice::<JsonChecked>(json).is_ok()
    {
        // One line of the journal per event: a payload with a newline between its tokens (km
        // frames on newlines, so it has none) goes through the `Value` below.
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(json);
    } else if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        out.extend_from_slice(b",\"payload\":");
        // A Value always serialises.
        let _ = serde_json::to_writer(&mut out, &value);
    } else if let Ok(text) = std::str::from_utf8(bytes) {
        out.extend_from_slice(b",\"payload_text\":");
        json_str(&mut out, text);
    } else {
        out.extend_from_slice(b",\"payload_b64\":\"");
        out.extend_from_slice(STANDARD.encode(bytes).as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    out
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // The common case (methods, ids, kinds): nothing to escape.
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // A string always serialises.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// `n` in decimal, without going through `fmt`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Reads any JSON value and keeps nothing: through `deserialize_any`, as `serde_json::Value`
/// reads one, so it accepts exactly what a `Value` accepts (numbers in range, strings without
/// lone surrogates, the same nesting limit) without building it.
struct JsonChecked;

impl<'de> serde::Deserialize<'de> for JsonChecked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonChecked)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonChecked {
    type Value = JsonChecked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(JsonChecked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<JsonChecked>()?.is_some() {}
        Ok(JsonChecked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<JsonChecked, JsonChecked>()?.is_some() {}
        Ok(JsonChecked)
    }
}

/// The event as the plugin built it before writing it directly (serde_json `Value`s): the
/// reference the direct writer is tested against.
#[cfg(test)]
fn event_json_by_value(session_id: &str, message: &Message<'_>, max_payload: usize) -> Vec<u8> {
    use serde_json::json;
    let bytes = message.bytes();
    let mut event = json!({
        "id": format!("{}:{}", session_id, message.seq),
        "session_id": session_id,
        "seq": message.seq,
        "timestamp_us": message.timestamp_us,
        "direction": message.direction.as_str(),
        "kind": message.kind.as_str(),
        "method": message.method.as_str(),
        "jsonrpc_id": message.id.as_str(),
        "correlation_id": message.correlation_id.as_str(),
        "is_error": message.is_error,
        "size": bytes.len(),
    });
    if let Some(latency) = message.latency_us.into_option() {
        event["latency_us"] = json!(latency);
    }
    if bytes.len() > max_payload {
        event["truncated"] = json!(true);
    } else if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        event["payload"] = value;
    } else if let Ok(text) = std::str::from_utf8(bytes) {
        event["payload_text"] = json!(text);
    } else {
        event["payload_b64"] = json!(STANDARD.encode(bytes));
    }
    serde_json::to_vec(&event).unwrap_or_default()
}

impl Plugin for ApiLogger {
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
        let data_dir = host.data_dir();
        subscription.cache_in(data_dir.clone());
        // No journal yet: `km plugin-refresh` creates the plugin only to authenticate it, and
        // must not touch the journals of running sessions.
        let shared = Arc::new(Shared {
            host,
            subscription,
            data_dir,
            journal: Mutex::new(None),
            adopted: Mutex::new(Vec::new()),
            early: Mutex::new(Vec::new()),
            early_waiting: AtomicBool::new(false),
            settings: Mutex::new(Settings::default()),
            max_payload: AtomicUsize::new(Settings::default().max_payload),
            batch_size: AtomicUsize::new(Settings::default().batch_size),
            appended: AtomicUsize::new(0),
            wake: (Mutex::new(()), Condvar::new()),
            stop: AtomicBool::new(false),
            writer: OnceLock::new(),
            warned_full: AtomicBool::new(false),
        });
        Ok(ApiLogger {
            shared,
            session_id: random_id(),
            sender: Mutex::new(None),
            writer: Mutex::new(None),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginError> {
        let response = self
            .shared
            .subscription
            .authenticate(&self.shared.host, api_key);
        self.shared.settle_early();
        // Wake the sender: a backlog from an earlier run may now be sendable.
        self.shared.wake.1.notify_one();
        Ok(response)
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let settings = Settings::from_json(config.settings_json.as_str());
        self.shared
            .max_payload
            .store(settings.max_payload, Ordering::Relaxed);
        self.shared
            .batch_size
            .store(settings.batch_size, Ordering::Relaxed);
        if let Ok(mut s) = self.shared.settings.lock() {
            *s = settings;
        }
        let Ok(mut slot) = self.sender.lock() else {
            return Ok(());
        };
        if slot.is_none() {
            match Journal::create(&self.shared.data_dir, &self.session_id) {
                Ok(journal) => {
                    if let Ok(mut own) = self.shared.journal.lock() {
                        *own = Some(journal);
                    }
                }
                Err(e) => self.shared.host.warn(&format!(
                    "api-logger: cannot create its journal in {}: {e}; events will not be sent",
                    self.shared.data_dir.display()
                )),
            }
            let shared = self.shared.clone();
            let writer = std::thread::Builder::new()
                .name("api-logger-journal".into())
                .spawn(move || shared.run_writer())
                .map_err(|e| {
                    PluginError::failed(format!("cannot start the journal writer thread: {e}"))
                })?;
            let _ = self.shared.writer.set(writer.thread().clone());
            if let Ok(mut slot) = self.writer.lock() {
                *slot = Some(writer);
            }
            let shared = self.shared.clone();
            let (tx, rx) = mpsc::channel();
            let handle = std::thread::Builder::new()
                .name("api-logger-sender".into())
                .spawn(move || shared.run_sender(tx))
                .map_err(|e| PluginError::failed(format!("cannot start the sender thread: {e}")))?;
            *slot = Some((handle, rx));
        }
        Ok(())
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        let max_payload = self.shared.max_payload.load(Ordering::Relaxed);
        // The common case without copying the subscription's claims.
        if self.shared.active() {
            self.shared.settle_early();
            self.shared.record(self.event(message, max_payload));
            return Ok(());
        }
        match self.shared.subscription.state(now_unix()) {
            SubscriptionState::Active(_) => {
                self.shared.settle_early();
                self.shared.record(self.event(message, max_payload));
            }
            SubscriptionState::Pending => {
                let event = self.event(message, max_payload);
                if let Ok(mut early) = self.shared.early.lock() {
                    if early.len() < MAX_PENDING_IN_MEMORY {
                        early.push(event);
                        self.shared.early_waiting.store(true, Ordering::Release);
                    }
                }
            }
            // Free behaviour: nothing is sent and nothing is kept.
            SubscriptionState::Degraded => {}
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.1.notify_all();
        let taken = self.sender.lock().ok().and_then(|mut s| s.take());
        if let Some((handle, done)) = taken {
            // Bounded: the sender's last flush gives up after a few seconds.
            if done.recv_timeout(Duration::from_secs(6)).is_ok() {
                let _ = handle.join();
            }
        }
        // The writer only ever waits for the journal's lock, which nothing holds for long.
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            writer.thread().unpark();
            let _ = writer.join();
        }
        // Release the journals (and their locks): a delivered one is removed, one with events
        // left is adopted by the next session.
        if let Some(mut own) = self.shared.journal.lock().ok().and_then(|mut j| j.take()) {
            if own.backlog_bytes() == 0 {
                own.delete();
            } else {
                let _ = own.sync();
            }
        }
        if let Ok(mut adopted) = self.shared.adopted.lock() {
            adopted.clear();
        }
        Ok(())
    }
}

km_plugin_sdk::export_plugin!(ApiLogger);

#[cfg(test)]
mod tests {
    use km_plugin_sdk::abi_stable::std_types::{ROption, RSlice, RStr};
    use km_plugin_sdk::{Direction, MessageKind};

    use super::*;

    #[test]
    fn settings_come_from_json_with_defaults_for_the_rest() {
        let s = Settings::from_json(r#"{"batch_size": 3, "flush_interval_ms": 250, "bogus": 1}"#);
        assert_eq!(s.batch_size, 3);
        assert_eq!(s.flush_interval, Duration::from_millis(250));
        assert_eq!(s.retry_max, Duration::from_secs(60));
        let d = Settings::from_json("not json");
        assert_eq!(d.batch_size, 10);
        assert_eq!(d.flush_interval, Duration::from_secs(5));
        assert_eq!(Settings::from_json(r#"{"batch_size": 0}"#).batch_size, 10);
    }

    fn message(data: &[u8]) -> Message<'_> {
        Message {
            seq: 42,
            direction: Direction::Response,
            kind: MessageKind::RESPONSE,
            is_error: false,
            data: RSlice::from_slice(data),
            correlation_id: RStr::from_str("c1"),
            id: RStr::from_str("7"),
            method: RStr::from_str(""),
            timestamp_us: 5,
            latency_us: ROption::RSome(12),
        }
    }

    fn event(data: &[u8], max_payload: usize) -> Value {
        let line = event_json("sess", &message(data), max_payload);
        serde_json::from_slice(&line).expect("an event is JSON")
    }

    #[test]
    fn events_written_directly_say_what_the_value_built_ones_said() {
        let deep = format!("{{\"deep\":{}{}}}", "[".repeat(130), "]".repeat(130));
        let lines: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"a\"b\\c\u00e9"}]}}"#,
            br#"  {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1.5e3,"t":-0}}  "#,
            b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{\"s\":\"caf\xc3\xa9 \xe2\x9c\x93\"}}\r",
            br#"{"z":1,"a":[true,false,null,{}],"m":{"b":2,"a":1}}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            br#"{"big":1e400}"#,
            br#"{"lone":"\ud800"}"#,
            deep.as_bytes(),
            br#"{"id":1,"method":"x"} trailing"#,
            b"not json at all",
            b"{\"a\":\"\xff\"}",
            &[0xff, 0xfe],
            b"",
            &[b'x'; 100],
        ];
        for line in lines {
            for max in [1024, 10] {
                let direct: Value =
                    serde_json::from_slice(&event_json("sess", &message(line), max))
                        .expect("the event is JSON");
                let by_value: Value =
                    serde_json::from_slice(&event_json_by_value("sess", &message(line), max))
                        .expect("JSON");
                assert_eq!(direct, by_value, "{}", String::from_utf8_lossy(line));
            }
        }
        // One line of the journal per event.
        assert!(!event_json("sess", &message(br#"{"a":"x\ny"}"#), 1024).contains(&b'\n'));
    }

    #[test]
    fn events_carry_an_idempotent_id_and_the_payload_in_the_best_form() {
        let e = event(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#, 1024);
        assert_eq!(e["id"], "sess:42");
        assert_eq!(e["direction"], "response");
        assert_eq!(e["latency_us"], 12);
        assert_eq!(e["payload"]["id"], 7);
        assert_eq!(event(b"plain text", 1024)["payload_text"], "plain text");
        assert_eq!(event(&[0xff, 0xfe], 1024)["payload_b64"], "//4=");
        let big = event(&[b'x'; 100], 10);
        assert_eq!(big["truncated"], true);
        assert!(big.get("payload_text").is_none());
        assert_eq!(big["size"], 100);
    }
}
