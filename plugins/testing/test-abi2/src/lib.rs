//! A plugin library from the future: km's root module, with km's own layout, but declared as
//! plugin ABI 2.0.0, as a library built against a km-abi 2.x would be. km must refuse it with a
//! readable message (abi_stable's major-version check) rather than call into it.

// abi_stable's export machinery expands to `unsafe` of its own.
#![allow(unsafe_code, non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RErr;
use abi_stable::{declare_root_module_statics, export_root_module, StableAbi};
use km_abi::{HostBox, PluginBox, PluginError};

/// km's root module, as ABI 2.0 might have it (same first field).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = FutureModRef)))]
#[sabi(missing_field(option))]
pub struct FutureMod {
    /// Creates the plugin.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(host: HostBox) -> abi_stable::std_types::RResult<PluginBox, PluginError>,
}

impl RootModule for FutureModRef {
    declare_root_module_statics! {FutureModRef}
    const BASE_NAME: &'static str = "km_plugin";
    const NAME: &'static str = "km_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("2.0.0");
}

extern "C" fn new(_host: HostBox) -> abi_stable::std_types::RResult<PluginBox, PluginError> {
    RErr(PluginError::failed("never called"))
}

/// The exported root module.
#[export_root_module]
pub fn get_library() -> FutureModRef {
    FutureMod { new }.leak_into_prefix()
}
