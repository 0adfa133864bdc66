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

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Mutex;

use km_plugin_sdk::{
    Host, Message, MessageKind, Plugin, PluginConfig, PluginError, StreamEvent, StreamEventKind,
    Tier,
};
use serde_json::{json, Value};

/// How many request methods are remembered to label responses.
const METHOD_MEMORY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pretty,
    Json,
}

enum Sink {
    Stderr,
    File(BufWriter<std::fs::File>),
}

impl Sink {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            // One write per line: lines of several threads do not interleave.
            Sink::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(file) => file.write_all(line.as_bytes()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr => Ok(()),
            Sink::File(file) => file.flush(),
        }
    }
}

struct State {
    format: Format,
    sink: Sink,
    /// correlation id -> method of the request, to label responses.
    methods: HashMap<String, String>,
}

/// The plugin.
pub struct ConsoleLogger {
    host: Host,
    state: Mutex<State>,
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
            state: Mutex::new(State {
                format: Format::Pretty,
                sink: Sink::Stderr,
                methods: HashMap::new(),
            }),
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
                    Sink::File(BufWriter::new(file))
                }
            };
        let mut state = self.lock();
        state.format = format;
        state.sink = sink;
        Ok(())
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        let mut state = self.lock();
        let corr = message.correlation_id.as_str();
        let request_method = if message.kind == MessageKind::REQUEST && !corr.is_empty() {
            if state.methods.len() >= METHOD_MEMORY {
                state.methods.clear();
            }
            state
                .methods
                .insert(corr.to_owned(), message.method.as_str().to_owned());
            None
        } else if message.kind == MessageKind::RESPONSE && !corr.is_empty() {
            state.methods.remove(corr)
        } else {
            None
        };
        let line = match state.format {
            Format::Pretty => pretty_line(message, request_method.as_deref()),
            Format::Json => json_line(message, request_method.as_deref()),
        };
        state.sink.write_line(&line).map_err(|e| {
            PluginError::new(km_plugin_sdk::ErrorKind::IO, format!("console-logger: {e}"))
        })
    }

    fn handle_error(&self, error: &PluginError) -> Result<(), PluginError> {
        let line = format!("{} ! relay error: {}\n", clock(now_us()), error.message);
        self.lock()
            .sink
            .write_line(&line)
            .map_err(|e| PluginError::failed(e.to_string()))
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        let mut state = self.lock();
        if state.format == Format::Json {
            let data: Value = serde_json::from_str(event.data.as_str()).unwrap_or(Value::Null);
            let line = json!({
                "ts": rfc3339(u64::try_from(event.timestamp_ms).unwrap_or(0) * 1000),
                "event": event.kind.as_str(),
                "data": data,
            });
            let _ = state.sink.write_line(&format!("{line}\n"));
        } else {
            let line = format!(
                "{} • session {}: {}\n",
                clock(u64::try_from(event.timestamp_ms).unwrap_or(0) * 1000),
                event.kind.as_str(),
                event.data
            );
            let _ = state.sink.write_line(&line);
        }
        if event.kind == StreamEventKind::END {
            let _ = state.sink.flush();
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.lock().sink.flush().map_err(|e| {
            self.host.warn(&format!("cannot flush the log: {e}"));
            PluginError::failed(e.to_string())
        })
    }
}

impl ConsoleLogger {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means an earlier call panicked mid-line; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pretty_line(message: &Message<'_>, request_method: Option<&str>) -> String {
    let method = if message.method.is_empty() {
        request_method.unwrap_or("")
    } else {
        message.method.as_str()
    };
    let mut line = format!(
        "{} {} {:<12}",
        clock(message.timestamp_us),
        message.direction.arrow(),
        if message.is_error {
            "error"
        } else {
            message.kind.as_str()
        }
    );
    if !method.is_empty() {
        line.push(' ');
        line.push_str(method);
    }
    if !message.id.is_empty() {
        line.push_str("  id=");
        line.push_str(message.id.as_str());
    }
    line.push_str("  ");
    line.push_str(&size(message.data.len()));
    if !message.correlation_id.is_empty() {
        line.push_str("  corr=");
        line.push_str(message.correlation_id.as_str());
    }
    if let Some(latency) = message.latency_us.into_option() {
        line.push_str(&format!("  ({:.1} ms)", latency as f64 / 1000.0));
    }
    line.push('\n');
    line
}

fn json_line(message: &Message<'_>, request_method: Option<&str>) -> String {
    let id: Value = if message.id.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(message.id.as_str())
            .unwrap_or_else(|_| Value::String(message.id.as_str().to_owned()))
    };
    let method = if message.method.is_empty() {
        request_method
    } else {
        Some(message.method.as_str())
    };
    let line = json!({
        "ts": rfc3339(message.timestamp_us),
        "seq": message.seq,
        "direction": message.direction.as_str(),
        "kind": message.kind.as_str(),
        "method": method,
        "id": id,
        "size": message.data.len(),
        "correlation_id": message.correlation_id.as_str(),
        "latency_us": message.latency_us.into_option(),
        "error": message.is_error,
    });
    format!("{line}\n")
}

fn size(bytes: usize) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else if bytes < 10 * 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp in microseconds since the epoch.
fn clock(us: u64) -> String {
    let secs = us / 1_000_000;
    let ms = (us / 1000) % 1000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        day / 3600,
        (day / 60) % 60,
        day % 60
    )
}

/// RFC 3339 UTC with microseconds.
fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let day = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        day / 3600,
        (day / 60) % 60,
        day % 60,
        us % 1_000_000
    )
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
    fn sizes_read_well() {
        assert_eq!(size(212), "212 B");
        assert_eq!(size(20 * 1024), "20.0 KiB");
    }
}
