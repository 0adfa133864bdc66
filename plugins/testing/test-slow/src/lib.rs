//! A slow consumer: 20 ms per message, to prove that a full queue drops that plugin's messages
//! (and counts them) instead of slowing the relay, and that `--lossless` waits instead.

#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use km_plugin_sdk::{Host, Message, Plugin, PluginError, StreamEvent, StreamEventKind, Tier};

/// Sleeps 20 ms per message and reports how many it handled at the end.
pub struct Slow {
    host: Host,
    handled: AtomicU64,
}

impl Plugin for Slow {
    const NAME: &'static str = "test-slow";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(Slow {
            host,
            handled: AtomicU64::new(0),
        })
    }

    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        std::thread::sleep(Duration::from_millis(20));
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        if event.kind == StreamEventKind::END {
            let handled = self.handled.load(Ordering::Relaxed);
            self.host
                .info(&format!("test-slow handled {handled} messages"));
        }
        Ok(())
    }
}

km_plugin_sdk::export_plugin!(Slow);
