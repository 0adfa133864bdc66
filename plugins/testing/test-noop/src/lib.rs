//! A plugin that does nothing but count: the floor for dispatch benchmarks, and a second,
//! distinct plugin for tests that load several side by side.

#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use km_plugin_sdk::{Host, Message, Plugin, PluginError, StreamEvent, StreamEventKind, Tier};

/// Counts messages; logs the count when the session ends.
pub struct Noop {
    host: Host,
    seen: AtomicU64,
}

impl Plugin for Noop {
    const NAME: &'static str = "test-noop";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(Noop {
            host,
            seen: AtomicU64::new(0),
        })
    }

    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        if event.kind == StreamEventKind::END {
            let seen = self.seen.load(Ordering::Relaxed);
            self.host.info(&format!("test-noop saw {seen} messages"));
        }
        Ok(())
    }
}

km_plugin_sdk::export_plugin!(Noop);
