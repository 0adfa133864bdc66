//! console-logger (Free tier): one line per MCP message, on stderr or in a file, readable or as
//! JSON lines.
//!
//! Settings (`[plugins.console-logger]` in km's config.toml, or the environment, which wins):
//!
//! | setting  | env                         | values                                  |
//! |----------|-----------------------------|-----------------------------------------|
//! | `output` | `KM_CONSOLE_LOGGER_OUTPUT`  | `stderr` (default) or a file path        |
//! | `format` | `KM_CONSOLE_LOGGER_FORMAT`  | `pretty` (default) or `json`             |
//!
//! A pretty line: `06:21:20.123 → request      tools/call  id=3  212 B  corr=7`; a response also
//! shows the method of its request and the latency. A JSON line has the fields `ts`, `seq`,
//! `direction`, `kind`, `method`, `id`, `size`, `correlation_id`, `latency_us`, `error`.
//! It never writes to stdout: stdout carries the MCP stream.
//!
//! # Keeping up with the relay
//!
//! A relay moves hundreds of thousands of small messages a second; a logger that makes one
//! `write(2)` per message (and several allocations to format it) falls behind, and km then drops
//! what its queue cannot hold (a busy session once lost half its messages that way).
//! So lines are formatted into one reused buffer, without allocating, and written out in large
//! pieces: when the buffer holds [`FLUSH_AT`] bytes, and otherwise by a flusher thread at most
//! [`FLUSH_DELAY`] after the first line that is waiting, so a quiet session's lines still show
//! at once to a person reading them. The flusher blocks while nothing waits (no timer runs in an
//! idle session) and is woken only when a line arrives to an empty buffer while it is blocked,
//! so a busy stream costs no wake-up per line. Written to stderr, each `write` carries whole lines
//! and at most `PIPE_BUF` bytes, so that a line is never torn by what km or the server writes to
//! the same stderr (a pipe keeps such writes whole). Events, errors and the end of the session
//! write at once.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use km_plugin_sdk::{
    Host, Message, MessageKind, Plugin, PluginConfig, PluginError, StreamEvent, StreamEventKind,
    Tier,
};
use serde_json::{json, Value};

/// How many request methods are remembered to label responses.
const METHOD_MEMORY: usize = 4096;

/// Buffered bytes that are written at once, without waiting for the flusher.
const FLUSH_AT: usize = 64 * 1024;

/// The longest a line waits in the buffer.
const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// The most bytes written to stderr in one `write`: writes of at most `PIPE_BUF` bytes to a pipe
/// are never interleaved with other writers' (POSIX).
const STDERR_PIECE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pretty,
    Json,
}

enum Sink {
    Stderr,
    File(std::fs::File),
}

impl Sink {
    /// Writes `bytes` (whole lines) out.
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => {
                let mut stderr = io::stderr().lock();
                let mut rest = bytes;
                while !rest.is_empty() {
                    let piece = stderr_piece(rest);
                    stderr.write_all(&rest[..piece])?;
                    rest = &rest[piece..];
                }
                Ok(())
            }
            Sink::File(file) => file.write_all(bytes),
        }
    }
}

/// How much of `rest` (whole lines) the next write to stderr takes: whole lines up to
/// [`STDERR_PIECE`] bytes; a line longer than that goes whole (it cannot be kept whole against
/// other writers anyway).
fn stderr_piece(rest: &[u8]) -> usize {
    if rest.len() <= STDERR_PIECE {
        return rest.len();
    }
    match rest[..STDERR_PIECE].iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1),
    }
}

/// A correlation id as km makes them (`c12`, `s7`: the side that sent the request and a
/// number) packed into an integer, so that remembering a request's method allocates nothing
/// for the key; any other id is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CorrKey {
    Packed(u64),
    Text(Box<str>),
}

impl CorrKey {
    fn of(corr: &str) -> CorrKey {
        let bytes = corr.as_bytes();
        let side = match bytes.first() {
            Some(b'c') => 0u64,
            Some(b's') => 1,
            _ => return CorrKey::Text(corr.into()),
        };
        match corr[1..].parse::<u64>() {
            Ok(n) if n < (1 << 62) && !corr[1..].starts_with('+') => CorrKey::Packed(n << 1 | side),
            _ => CorrKey::Text(corr.into()),
        }
    }
}

struct State {
    format: Format,
    sink: Sink,
    /// Formatted lines not yet written.
    buf: Vec<u8>,
    /// correlation id -> method of the request, to label responses.
    methods: HashMap<CorrKey, Arc<str>>,
    /// Each distinct method's text once (MCP has a few dozen), shared by `methods`.
    names: HashMap<Box<str>, Arc<str>>,
    /// The first write error not yet reported (reported with the next message).
    failed: Option<io::Error>,
    /// Whether the flusher is blocked waiting for a line (then it must be woken).
    flusher_idle: bool,
    /// Whether the flusher thread runs.
    flusher_started: bool,
    /// Set at shutdown: the flusher ends.
    stop: bool,
}

impl State {
    /// Writes out what is buffered; a failure is kept for the next message to report.
    fn flush_buffer(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.sink.write_lines(&self.buf) {
            self.failed.get_or_insert(e);
        }
        self.buf.clear();
    }

    fn method_name(&mut self, method: &str) -> Arc<str> {
        if let Some(name) = self.names.get(method) {
            return name.clone();
        }
        let name: Arc<str> = method.into();
        // Bounded like the methods: a peer inventing methods cannot grow it for ever.
        if self.names.len() < METHOD_MEMORY {
            self.names.insert(method.into(), name.clone());
        }
        name
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher when a line arrives to an empty buffer, or at shutdown.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means an earlier call panicked mid-line; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flusher: blocks while nothing waits; once a line waits, lets more gather for
    /// [`FLUSH_DELAY`] and writes them out.
    fn flusher(&self) {
        let mut state = self.lock();
        loop {
            while state.buf.is_empty() && !state.stop {
                state.flusher_idle = true;
                state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.flusher_idle = false;
            if state.stop {
                return;
            }
            drop(state);
            std::thread::sleep(FLUSH_DELAY);
            state = self.lock();
            state.flush_buffer();
        }
    }
}

/// The plugin.
pub struct ConsoleLogger {
    host: Host,
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

fn setting(settings: &Value, key: &str, env: &str) -> Option<String> {
    std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| settings.get(key).and_then(Value::as_str).map(str::to_owned))
}

impl Plugin for ConsoleLogger {
    const NAME: &'static str = "console-logger";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(ConsoleLogger {
            host,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    format: Format::Pretty,
                    sink: Sink::Stderr,
                    buf: Vec::with_capacity(FLUSH_AT + 1024),
                    methods: HashMap::new(),
                    names: HashMap::new(),
                    failed: None,
                    flusher_idle: false,
                    flusher_started: false,
                    stop: false,
                }),
                wake: Condvar::new(),
            }),
            flusher: Mutex::new(None),
        })
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let settings: Value =
            serde_json::from_str(config.settings_json.as_str()).unwrap_or(Value::Null);
        let format = match setting(&settings, "format", "KM_CONSOLE_LOGGER_FORMAT").as_deref() {
            None | Some("pretty") => Format::Pretty,
            Some("json") => Format::Json,
            Some(other) => {
                return Err(PluginError::failed(format!(
                    "console-logger: unknown format {other:?} (expected pretty or json)"
                )))
            }
        };
        let sink =
            match setting(&settings, "output", "KM_CONSOLE_LOGGER_OUTPUT").as_deref() {
                None | Some("stderr") => Sink::Stderr,
                Some("stdout") => return Err(PluginError::failed(
                    "console-logger: output stdout is not allowed: stdout carries the MCP stream",
                )),
                Some(path) => {
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            PluginError::failed(format!("console-logger: cannot open {path}: {e}"))
                        })?;
                    Sink::File(file)
                }
            };
        let mut state = self.shared.lock();
        state.flush_buffer();
        state.format = format;
        state.sink = sink;
        Ok(())
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if let Some(e) = state.failed.take() {
            return Err(PluginError::new(
                km_plugin_sdk::ErrorKind::IO,
                format!("console-logger: {e}"),
            ));
        }
        let corr = message.correlation_id.as_str();
        let request_method = if message.kind == MessageKind::REQUEST && !corr.is_empty() {
            if state.methods.len() >= METHOD_MEMORY {
                state.methods.clear();
            }
            let name = state.method_name(message.method.as_str());
            state.methods.insert(CorrKey::of(corr), name);
            None
        } else if message.kind == MessageKind::RESPONSE && !corr.is_empty() {
            state.methods.remove(&CorrKey::of(corr))
        } else {
            None
        };
        let was_empty = state.buf.is_empty();
        match state.format {
            Format::Pretty => pretty_line(&mut state.buf, message, request_method.as_deref()),
            Format::Json => json_line(&mut state.buf, message, request_method.as_deref()),
        }
        if state.buf.len() >= FLUSH_AT {
            state.flush_buffer();
        } else if was_empty {
            if !state.flusher_started {
                state.flusher_started = true;
                drop(guard);
                self.start_flusher();
                return Ok(());
            }
            if state.flusher_idle {
                self.shared.wake.notify_one();
            }
        }
        Ok(())
    }

    fn handle_error(&self, error: &PluginError) -> Result<(), PluginError> {
        let mut state = self.shared.lock();
        let line = format!("{} ! relay error: {}\n", clock(now_us()), error.message);
        state.buf.extend_from_slice(line.as_bytes());
        state.flush_buffer();
        match state.failed.take() {
            Some(e) => Err(PluginError::failed(e.to_string())),
            None => Ok(()),
        }
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        let mut state = self.shared.lock();
        let line = if state.format == Format::Json {
            let data: Value = serde_json::from_str(event.data.as_str()).unwrap_or(Value::Null);
            let line = json!({
                "ts": rfc3339(u64::try_from(event.timestamp_ms).unwrap_or(0) * 1000),
                "event": event.kind.as_str(),
                "data": data,
            });
            format!("{line}\n")
        } else {
            format!(
                "{} • session {}: {}\n",
                clock(u64::try_from(event.timestamp_ms).unwrap_or(0) * 1000),
                event.kind.as_str(),
                event.data
            )
        };
        // Events are rare and mark the session's course: written at once, after what waits.
        state.buf.extend_from_slice(line.as_bytes());
        state.flush_buffer();
        if event.kind == StreamEventKind::END {
            if let Some(e) = state.failed.take() {
                self.host.warn(&format!("cannot write the log: {e}"));
            }
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            self.shared.wake.notify_one();
        }
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(flusher) = flusher {
            let _ = flusher.join();
        }
        let mut state = self.shared.lock();
        state.flush_buffer();
        if let Sink::File(file) = &mut state.sink {
            if let Err(e) = file.flush() {
                state.failed.get_or_insert(e);
            }
        }
        match state.failed.take() {
            Some(e) => {
                self.host.warn(&format!("cannot write the log: {e}"));
                Err(PluginError::failed(e.to_string()))
            }
            None => Ok(()),
        }
    }
}

impl ConsoleLogger {
    /// Starts the flusher thread (once, on the first buffered line). Without a thread (the
    /// system refuses one) lines are written as they come instead.
    fn start_flusher(&self) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("console-logger-flush".into())
            .spawn(move || shared.flusher());
        match spawned {
            Ok(handle) => {
                *self.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            }
            Err(e) => {
                self.host.warn(&format!(
                    "no flusher thread ({e}): writing every line at once"
                ));
                let mut state = self.shared.lock();
                state.flush_buffer();
            }
        }
    }
}

/// Appends a readable line: `06:21:20.123 → request      tools/call  id=3  212 B  corr=7`.
fn pretty_line(out: &mut Vec<u8>, message: &Message<'_>, request_method: Option<&str>) {
    let method = if message.method.is_empty() {
        request_method.unwrap_or("")
    } else {
        message.method.as_str()
    };
    write_clock(out, message.timestamp_us);
    out.push(b' ');
    out.extend_from_slice(message.direction.arrow().as_bytes());
    out.push(b' ');
    let kind = if message.is_error {
        "error"
    } else {
        message.kind.as_str()
    };
    out.extend_from_slice(kind.as_bytes());
    // `{:<12}`: padded to 12 characters.
    out.extend(std::iter::repeat_n(
        b' ',
        12usize.saturating_sub(kind.len()),
    ));
    if !method.is_empty() {
        out.push(b' ');
        out.extend_from_slice(method.as_bytes());
    }
    if !message.id.is_empty() {
        out.extend_from_slice(b"  id=");
        out.extend_from_slice(message.id.as_str().as_bytes());
    }
    out.extend_from_slice(b"  ");
    write_size(out, message.data.len());
    if !message.correlation_id.is_empty() {
        out.extend_from_slice(b"  corr=");
        out.extend_from_slice(message.correlation_id.as_str().as_bytes());
    }
    if let Some(latency) = message.latency_us.into_option() {
        let _ = write!(out, "  ({:.1} ms)", latency as f64 / 1000.0);
    }
    out.push(b'\n');
}

/// Appends a JSON line with the fields in the order `serde_json` gave them before (sorted):
/// `correlation_id`, `direction`, `error`, `id`, `kind`, `latency_us`, `method`, `seq`, `size`,
/// `ts`. Written directly: a `json!` map per message cost more than the rest of the handler.
fn json_line(out: &mut Vec<u8>, message: &Message<'_>, request_method: Option<&str>) {
    let method = if message.method.is_empty() {
        request_method
    } else {
        Some(message.method.as_str())
    };
    out.extend_from_slice(b"{\"correlation_id\":");
    json_string(out, message.correlation_id.as_str());
    out.extend_from_slice(b",\"direction\":\"");
    out.extend_from_slice(message.direction.as_str().as_bytes());
    out.extend_from_slice(b"\",\"error\":");
    out.extend_from_slice(if message.is_error { b"true" } else { b"false" });
    out.extend_from_slice(b",\"id\":");
    write_id(out, message.id.as_str());
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(message.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"latency_us\":");
    match message.latency_us.into_option() {
        Some(us) => {
            let _ = write!(out, "{us}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    match method {
        Some(method) => json_string(out, method),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"seq\":{},\"size\":{},\"ts\":\"",
        message.seq,
        message.data.len()
    );
    write_rfc3339(out, message.timestamp_us);
    out.extend_from_slice(b"\"}\n");
}

/// A JSON string, escaped by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        // The common case (methods, correlation ids): nothing to escape.
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// The request id as JSON: km hands the raw id text; a number or a plain string is written as
/// it is, anything else is parsed and re-written (or kept as a string if it is not JSON).
fn write_id(out: &mut Vec<u8>, id: &str) {
    if id.is_empty() {
        out.extend_from_slice(b"null");
    } else if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0')
        || id == "0"
    {
        out.extend_from_slice(id.as_bytes());
    } else {
        match serde_json::from_str::<Value>(id) {
            Ok(value) => {
                let _ = serde_json::to_writer(&mut *out, &value);
            }
            Err(_) => json_string(out, id),
        }
    }
}

/// `212 B`, `20.0 KiB`, `1.5 MiB`.
fn write_size(out: &mut Vec<u8>, bytes: usize) {
    if bytes < 10 * 1024 {
        let _ = write!(out, "{bytes} B");
    } else if bytes < 10 * 1024 * 1024 {
        let _ = write!(out, "{:.1} KiB", bytes as f64 / 1024.0);
    } else {
        let _ = write!(out, "{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    }
}

#[cfg(test)]
fn size(bytes: usize) -> String {
    let mut out = Vec::new();
    write_size(&mut out, bytes);
    String::from_utf8_lossy(&out).into_owned()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Appends `n` as exactly `width` decimal digits (zero-padded; `n` fits).
fn digits(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// Appends `HH:MM:SS.mmm` (UTC) of a timestamp in microseconds since the epoch.
fn write_clock(out: &mut Vec<u8>, us: u64) {
    let secs = us / 1_000_000;
    let day = secs % 86_400;
    digits(out, day / 3600, 2);
    out.push(b':');
    digits(out, (day / 60) % 60, 2);
    out.push(b':');
    digits(out, day % 60, 2);
    out.push(b'.');
    digits(out, (us / 1000) % 1000, 3);
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp in microseconds since the epoch.
fn clock(us: u64) -> String {
    let mut out = Vec::with_capacity(12);
    write_clock(&mut out, us);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends RFC 3339 UTC with microseconds.
fn write_rfc3339(out: &mut Vec<u8>, us: u64) {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let day = secs % 86_400;
    if (0..10_000).contains(&y) {
        digits(out, y as u64, 4);
    } else {
        let _ = write!(out, "{y:04}");
    }
    out.push(b'-');
    digits(out, u64::from(m), 2);
    out.push(b'-');
    digits(out, u64::from(d), 2);
    out.push(b'T');
    digits(out, day / 3600, 2);
    out.push(b':');
    digits(out, (day / 60) % 60, 2);
    out.push(b':');
    digits(out, day % 60, 2);
    out.push(b'.');
    digits(out, us % 1_000_000, 6);
    out.push(b'Z');
}

/// RFC 3339 UTC with microseconds.
fn rfc3339(us: u64) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339(&mut out, us);
    String::from_utf8_lossy(&out).into_owned()
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

km_plugin_sdk::export_plugin!(ConsoleLogger);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(
            rfc3339(1_764_051_680_123_456),
            "2025-11-25T06:21:20.123456Z"
        );
    }

    #[test]
    fn clock_is_padded() {
        assert_eq!(clock(1_764_051_680_123_456), "06:21:20.123");
        assert_eq!(clock(0), "00:00:00.000");
    }

    #[test]
    fn correlation_ids_pack_or_stay_text() {
        assert_eq!(CorrKey::of("c12"), CorrKey::Packed(24));
        assert_eq!(CorrKey::of("s12"), CorrKey::Packed(25));
        assert_eq!(CorrKey::of("c+1"), CorrKey::Text("c+1".into()));
        assert_eq!(CorrKey::of("x7"), CorrKey::Text("x7".into()));
        assert_eq!(CorrKey::of("c"), CorrKey::Text("c".into()));
    }

    #[test]
    fn ids_are_written_as_json() {
        for (id, want) in [
            ("", "null"),
            ("0", "0"),
            ("17", "17"),
            ("\"a\\\"b\"", "\"a\\\"b\""),
            ("-1.5", "-1.5"),
            ("007", "\"007\""),
            ("not json", "\"not json\""),
        ] {
            let mut out = Vec::new();
            write_id(&mut out, id);
            assert_eq!(String::from_utf8_lossy(&out), want, "{id}");
        }
    }

    #[test]
    fn stderr_pieces_end_at_line_ends() {
        let lines: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        let mut cut = Vec::new();
        let mut rest = &lines[..];
        while !rest.is_empty() {
            let piece = stderr_piece(rest);
            assert!(piece <= STDERR_PIECE);
            cut.push(&rest[..piece]);
            rest = &rest[piece..];
        }
        assert!(cut.iter().all(|p| p.ends_with(b"\n")));
        assert!(cut.len() > 1);
        assert_eq!(cut.concat(), lines);
        let long = [vec![b'x'; 2 * STDERR_PIECE], b"\nrest\n".to_vec()].concat();
        assert_eq!(stderr_piece(&long), 2 * STDERR_PIECE + 1);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(212), "212 B");
        assert_eq!(size(20 * 1024), "20.0 KiB");
    }
}
