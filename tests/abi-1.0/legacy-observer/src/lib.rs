//! A plugin written against km-abi 1.0.0 (the frozen copy beside it), exactly as a plugin author
//! wrote one before ABI 1.1: it records every call km makes into it in `legacy-seen.jsonl` in
//! its data directory, so that the test can tell its handlers were called.

#![deny(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;

use km_abi::{Host, Message, Plugin, PluginConfig, PluginError, StreamEvent, StreamEventKind, Tier};

/// See the crate documentation.
pub struct LegacyObserver {
    host: Host,
    out: Mutex<Option<BufWriter<File>>>,
}

impl LegacyObserver {
    fn record(&self, value: serde_json::Value) -> Result<(), PluginError> {
        let mut out = self.out.lock().map_err(|_| PluginError::failed("poisoned"))?;
        if let Some(out) = out.as_mut() {
            writeln!(out, "{value}").map_err(|e| PluginError::failed(e.to_string()))?;
        }
        Ok(())
    }
}

impl Plugin for LegacyObserver {
    const NAME: &'static str = "legacy-observer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(LegacyObserver {
            host,
            out: Mutex::new(None),
        })
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let path = std::path::Path::new(config.data_dir.as_str()).join("legacy-seen.jsonl");
        let file = File::create(&path).map_err(|e| PluginError::failed(e.to_string()))?;
        *self.out.lock().map_err(|_| PluginError::failed("poisoned"))? =
            Some(BufWriter::new(file));
        self.record(serde_json::json!({"call": "initialize", "host": config.host_version.as_str()}))
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        self.record(serde_json::json!({
            "call": "handle_message",
            "direction": message.direction.as_str(),
            "kind": message.kind.as_str(),
            "method": message.method.as_str(),
            "len": message.data.len(),
        }))
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        // Kinds added after ABI 1.0 arrive as numbers this plugin does not know.
        self.record(serde_json::json!({"call": "handle_stream_event", "kind": event.kind.0}))?;
        if event.kind == StreamEventKind::END {
            self.host.info("legacy-observer saw the end of the session");
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.record(serde_json::json!({"call": "shutdown"}))?;
        if let Ok(mut out) = self.out.lock() {
            if let Some(mut out) = out.take() {
                out.flush().map_err(|e| PluginError::failed(e.to_string()))?;
            }
        }
        Ok(())
    }
}

km_abi::export_plugin!(LegacyObserver);
