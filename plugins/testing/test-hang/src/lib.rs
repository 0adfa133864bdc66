//! A plugin that never returns from `handle_message`, to prove that a hung plugin cannot slow
//! the relay or keep km from exiting.

#![deny(unsafe_code)]

use std::time::Duration;

use km_plugin_sdk::{Host, Message, Plugin, PluginError, Tier};

/// Hangs on the first message.
pub struct Hang;

impl Plugin for Hang {
    const NAME: &'static str = "test-hang";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(_host: Host) -> Result<Self, PluginError> {
        Ok(Hang)
    }

    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

km_plugin_sdk::export_plugin!(Hang);
