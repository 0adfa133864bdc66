//! A plugin that panics while being created, to prove that km refuses it with a readable error
//! and goes on without it.

#![deny(unsafe_code)]

use km_plugin_sdk::{Host, Message, Plugin, PluginError, Tier};

/// Never gets created.
pub struct PanicOnNew;

impl Plugin for PanicOnNew {
    const NAME: &'static str = "test-panic-on-new";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(_host: Host) -> Result<Self, PluginError> {
        panic!("test-panic-on-new panics on purpose while being created");
    }

    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}

km_plugin_sdk::export_plugin!(PanicOnNew);
