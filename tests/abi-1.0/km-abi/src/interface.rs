//! The plugin object, the host-services object and the root module a plugin library exports.
//!
//! Growth rules (what keeps plugins built against an older km-abi loading):
//! - the km-abi crate version is the ABI version; abi_stable refuses a library whose major
//!   version differs from km's;
//! - new methods are appended after the ones marked `#[sabi(last_prefix_field)]`, always with a
//!   default body, which is what an older plugin's object answers (for example a later
//!   `intercept(&Message) -> Verdict` hook defaults to "pass");
//! - new root-module fields are appended after `new`, and read as `Option` by the host.

// abi_stable's `StableAbi` derive and `#[sabi_trait]` expand to `unsafe impl`s and `unsafe`
// blocks of their own; this module writes none by hand.
#![allow(unsafe_code, non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::types::{
    AuthResponse, HttpRequest, HttpResponse, LogLevel, Message, PluginConfig, PluginError,
    StreamEvent, Tier,
};

/// The plugin instance as km sees it. Plugin authors do not implement this directly: they
/// implement [`crate::Plugin`] and call [`crate::export_plugin!`], which wraps every method so
/// that a panic becomes an [`ErrorKind::PANICKED`](crate::ErrorKind::PANICKED) error value.
///
/// km calls `handle_*` from one worker thread per plugin, and `authenticate` from its refresh
/// thread, so the object is `Send + Sync`.
#[sabi_trait]
pub trait KmPlugin: Send + Sync {
    /// The plugin's name; must equal the name its signed manifest carries.
    fn name(&self) -> RString;

    /// The plugin's version; must equal the version its signed manifest carries.
    fn version(&self) -> RString;

    /// The subscription tier the plugin needs for its full features.
    fn required_tier(&self) -> Tier;

    /// Checks the user's subscription (through the host's HTTP service) and caches the outcome.
    /// `api_key` is the user's Kilometers API key, empty when none is configured.
    fn authenticate(&self, api_key: RStr<'_>) -> RResult<AuthResponse, PluginError>;

    /// Called once after loading, before any message.
    fn initialize(&self, config: &PluginConfig) -> RResult<(), PluginError>;

    /// Called once at the end of the session, after the last message.
    fn shutdown(&self) -> RResult<(), PluginError>;

    /// One line of the MCP stream.
    fn handle_message(&self, message: &Message<'_>) -> RResult<(), PluginError>;

    /// An error of the relay (I/O failure, child spawn failure).
    fn handle_error(&self, error: &PluginError) -> RResult<(), PluginError>;

    /// A lifecycle event: start, end, error.
    #[sabi(last_prefix_field)]
    fn handle_stream_event(&self, event: &StreamEvent) -> RResult<(), PluginError>;
}

/// What a plugin library hands km: the plugin object, boxed.
pub type PluginBox = KmPlugin_TO<'static, RBox<()>>;

/// Services km offers each plugin. One object per plugin (it knows whose log lines and data
/// directory it serves); cheap to clone and usable from any thread.
#[sabi_trait]
pub trait HostServices: Send + Sync + Clone {
    /// Writes a line into km's log (stderr or km's log file, never stdout), prefixed with the
    /// plugin's name.
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// The plugin's own data directory (absolute path, exists, mode 0700).
    fn data_dir(&self) -> RString;

    /// Performs an HTTP request against the configured Kilometers API, with km's timeouts and
    /// retries. Errors: no API configured, an absolute URL, network failure, timeout.
    #[sabi(last_prefix_field)]
    fn http(&self, request: HttpRequest) -> RResult<HttpResponse, PluginError>;
}

/// The host services as passed to a plugin.
pub type HostBox = HostServices_TO<'static, RArc<()>>;

/// The root module every plugin library exports (with [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// Creates the plugin instance. Called once per load.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(host: HostBox) -> RResult<PluginBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}

    const BASE_NAME: &'static str = "km_plugin";
    const NAME: &'static str = "km_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The ABI version: the version of the km-abi crate a library was built against.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");
