//! An observer for km's tests: it writes every message and stream event it receives to
//! `seen.jsonl` in its data directory (one JSON object per line; the message's bytes as a
//! SHA-256 and length, so that tests can check what was forwarded), and can be slow and ask for
//! lossless delivery. Settings (`[plugins.test-observer]` in `config.toml`):
//!
//! ```toml
//! [plugins.test-observer]
//! lossless = true     # ask for lossless delivery
//! slow_us = 200       # take this long per message
//! lines = true        # also record each line's text (for small tests)
//! ```
//!
//! Commands (`km plugin test-observer ...`): `echo ARGS...` prints its arguments, `cat` copies
//! standard input to standard output, `exit N` exits with N after writing to standard error,
//! `where` prints its data directory.

#![deny(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;
use std::time::Duration;

use km_plugin_sdk::{
    CommandOutput, Host, Interest, Message, Plugin, PluginConfig, PluginError, SessionInfo,
    StreamEvent, Tier,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Settings {
    lossless: bool,
    slow_us: u64,
    lines: bool,
}

/// See the crate documentation.
pub struct TestObserver {
    host: Host,
    settings: Mutex<Settings>,
    out: Mutex<Option<BufWriter<File>>>,
}

impl TestObserver {
    fn record(&self, value: serde_json::Value) -> Result<(), PluginError> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| PluginError::failed("poisoned"))?;
        if let Some(out) = out.as_mut() {
            writeln!(out, "{value}").map_err(|e| PluginError::failed(e.to_string()))?;
        }
        Ok(())
    }
}

impl Plugin for TestObserver {
    const NAME: &'static str = "test-observer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(TestObserver {
            host,
            settings: Mutex::new(Settings::default()),
            out: Mutex::new(None),
        })
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let settings: Settings = serde_json::from_str(config.settings_json.as_str())
            .map_err(|e| PluginError::failed(format!("bad settings: {e}")))?;
        *self
            .settings
            .lock()
            .map_err(|_| PluginError::failed("poisoned"))? = settings;
        Ok(())
    }

    fn interest(&self) -> Interest {
        let lossless = self.settings.lock().map(|s| s.lossless).unwrap_or(false);
        Interest::observer().lossless(lossless)
    }

    fn begin_session(&self, session: &SessionInfo) -> Result<(), PluginError> {
        let path = self.host.data_dir().join("seen.jsonl");
        let file = File::create(&path)
            .map_err(|e| PluginError::failed(format!("{}: {e}", path.display())))?;
        *self
            .out
            .lock()
            .map_err(|_| PluginError::failed("poisoned"))? = Some(BufWriter::new(file));
        self.record(json!({"begin": session.session_id, "command": session.command}))
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        let (slow_us, lines) = self
            .settings
            .lock()
            .map(|s| (s.slow_us, s.lines))
            .unwrap_or((0, false));
        if slow_us > 0 {
            std::thread::sleep(Duration::from_micros(slow_us));
        }
        let mut value = json!({
            "seq": message.seq,
            "direction": message.direction.as_str(),
            "kind": message.kind.as_str(),
            "method": message.method.as_str(),
            "id": message.id.as_str(),
            "correlation": message.correlation_id.as_str(),
            "len": message.data.len(),
        });
        if lines {
            value["line"] = String::from_utf8_lossy(message.bytes()).into_owned().into();
        }
        self.record(value)
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        let data: serde_json::Value =
            serde_json::from_str(event.data.as_str()).unwrap_or(serde_json::Value::Null);
        self.record(json!({"event": event.kind.as_str(), "data": data}))
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        if let Ok(mut out) = self.out.lock() {
            if let Some(mut out) = out.take() {
                out.flush()
                    .map_err(|e| PluginError::failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn command_help(&self) -> Option<String> {
        Some("usage: km plugin test-observer <echo ARGS... | cat | exit N | where>\n".to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        match args.first().map(String::as_str) {
            Some("echo") => Ok(CommandOutput::ok(format!("{}\n", args[1..].join(" ")))),
            Some("cat") => Ok(CommandOutput::ok(self.host.read_stdin()?)),
            Some("where") => Ok(CommandOutput::ok(format!(
                "{}\n",
                self.host.data_dir().display()
            ))),
            Some("exit") => {
                let code = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(3);
                Ok(CommandOutput::failed(
                    code,
                    format!("exiting with {code}\n"),
                ))
            }
            _ => Ok(CommandOutput::failed(
                2,
                "usage: km plugin test-observer <echo ARGS... | cat | exit N | where>\n",
            )),
        }
    }
}

km_plugin_sdk::export_plugin!(TestObserver);
