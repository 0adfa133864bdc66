//! A plugin that panics in `handle_message` (every message), to prove that a panic becomes an
//! error value at the boundary and that km disables the plugin and carries on.

#![deny(unsafe_code)]

use km_plugin_sdk::{Host, Message, Plugin, PluginError, Tier};

/// Panics on every message.
pub struct Panicky;

impl Plugin for Panicky {
    const NAME: &'static str = "test-panicky";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(_host: Host) -> Result<Self, PluginError> {
        Ok(Panicky)
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        panic!("test-panicky panics on purpose (message {})", message.seq);
    }
}

km_plugin_sdk::export_plugin!(Panicky);
