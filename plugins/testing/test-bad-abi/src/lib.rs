//! A plugin built against an incompatible ABI: it exports a root module under km's name and
//! version, but with a different layout (as a plugin built from a diverged km-abi would), to
//! prove that km refuses it with a readable error instead of calling into it.

// abi_stable's derive and export macros expand to `unsafe` of their own.
#![allow(unsafe_code, non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RString;
use abi_stable::{declare_root_module_statics, export_root_module, StableAbi};

/// A root module whose only field has a different signature from km's `new`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BadModRef)))]
#[sabi(missing_field(option))]
pub struct BadMod {
    /// Not km's `new(HostBox) -> RResult<PluginBox, PluginError>`.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(u64) -> RString,
}

impl RootModule for BadModRef {
    declare_root_module_statics! {BadModRef}
    const BASE_NAME: &'static str = "km_plugin";
    const NAME: &'static str = "km_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

extern "C" fn new(x: u64) -> RString {
    RString::from(x.to_string())
}

/// The exported root module.
#[export_root_module]
pub fn get_library() -> BadModRef {
    BadMod { new }.leak_into_prefix()
}
