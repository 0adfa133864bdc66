//! A plugin whose destructor panics, to prove that km drops a plugin object without being taken
//! down: the SDK's adapter catches the panic in its own `Drop` (abi_stable's destructor glue is
//! `extern "C"`, where an escaping panic aborts the process).

#![deny(unsafe_code)]

use km_plugin_sdk::{Host, Message, Plugin, PluginError, Tier};

/// Works normally; panics when dropped.
pub struct PanicOnDrop;

impl Plugin for PanicOnDrop {
    const NAME: &'static str = "test-panic-on-drop";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(_host: Host) -> Result<Self, PluginError> {
        Ok(PanicOnDrop)
    }

    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("test-panic-on-drop panics in its destructor on purpose");
    }
}

km_plugin_sdk::export_plugin!(PanicOnDrop);
