//! The plugin object, the host-services object and the root module a plugin library exports.
//!
//! Growth rules (what keeps plugins built against an older km-abi loading):
//! - the km-abi crate version is the ABI version; abi_stable refuses a library whose major
//!   version differs from km's;
//! - new methods are appended after the ones marked `#[sabi(last_prefix_field)]` (the marker
//!   never moves within a major version), always with a default body, which is what an older
//!   plugin's object answers;
//! - new root-module fields are appended after `new`, and read as `Option` by the host.
//!
//! abi_stable's own layout check accepts a library whose vtables have *more* fields than the
//! host's (a newer plugin in an older km), not fewer; km's loader checks a library built for an
//! older minor version the other way round, proving its types a prefix of km's, so that an older
//! plugin loads too (see `km-cli/src/loader.rs`, `root_module`).
//!
//! ABI 1.1 appended, to the plugin: `interest`, `begin_session`, `intercept`, `command_help` and
//! `run_command`; to the host services: `emit`, `read_stdin`, `read_policy` and `write_policy`.
//! Their default bodies are what the other side gets from a 1.0 peer: a 1.0 plugin observes and
//! never intercepts, has no commands; a 1.0 host answers the new services with
//! [`ErrorKind::UNSUPPORTED`](crate::ErrorKind::UNSUPPORTED).

// abi_stable's `StableAbi` derive and `#[sabi_trait]` expand to `unsafe impl`s and `unsafe`
// blocks of their own; this module writes none by hand.
#![allow(unsafe_code, non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::intercept::{CommandOutput, InterceptContext, InterestRef, Verdict};
use crate::types::{
    AuthResponse, ErrorKind, HttpRequest, HttpResponse, LogLevel, Message, PluginConfig,
    PluginError, StreamEvent, Tier,
};

/// The plugin instance as km sees it. Plugin authors do not implement this directly: they
/// implement the author SDK's `km_plugin_sdk::Plugin` trait and call its
/// `km_plugin_sdk::export_plugin!` macro (the SDK crate, `plugins/sdk`, depends on this one, so
/// these are not links), which wraps every method so that a panic becomes an [`ErrorKind::PANICKED`](crate::ErrorKind::PANICKED) error value.
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

    /// A lifecycle event: start, end, error (and, from ABI 1.1, events of other plugins,
    /// verdicts, host events and gaps).
    #[sabi(last_prefix_field)]
    fn handle_stream_event(&self, event: &StreamEvent) -> RResult<(), PluginError>;

    /// ABI 1.1: what the plugin wants to intercept and how it wants to be fed. Asked once, after
    /// `initialize`.
    fn interest(&self) -> InterestRef {
        InterestRef::OBSERVER
    }

    /// ABI 1.1: a `km monitor` session begins; called after `interest` and before any line, on
    /// the thread that starts the session. `info` is a JSON object: `session_id` (unique per
    /// session), `command` (the server's argv), `cwd`, `km_version`.
    fn begin_session(&self, info: RStr<'_>) -> RResult<(), PluginError> {
        let _ = info;
        ROk(())
    }

    /// ABI 1.1: decides about one line the plugin asked to intercept, before it is forwarded.
    /// Called on the relay's threads (both directions may call at once), within the plugin's
    /// time budget; an error, a panic or an overrun blocks the line and disables the plugin for
    /// the session.
    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> RResult<Verdict, PluginError> {
        let _ = (message, context);
        ROk(Verdict::pass())
    }

    /// ABI 1.1: the usage of the plugin's commands (`km plugin NAME --help`); empty when it has
    /// none.
    fn command_help(&self) -> RString {
        RString::new()
    }

    /// ABI 1.1: runs `km plugin NAME ARGS...` with `args` (not including NAME). Standard input is
    /// available through the host's `read_stdin`.
    fn run_command(&self, args: RSlice<'_, RString>) -> RResult<CommandOutput, PluginError> {
        let _ = args;
        RErr(PluginError::new(
            ErrorKind::UNSUPPORTED,
            "this plugin has no commands",
        ))
    }
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

    /// ABI 1.1: emits an event: `kind` names it (`[a-z0-9_.-]{1,64}`, e.g. `finding`), `data`
    /// is a JSON object (at most 64 KiB). km hands it to every other plugin as a
    /// [`StreamEventKind::PLUGIN`](crate::StreamEventKind::PLUGIN) event and to its telemetry.
    /// Never put matched secrets in an event.
    fn emit(&self, kind: RStr<'_>, data: RStr<'_>) -> RResult<(), PluginError> {
        let _ = (kind, data);
        RErr(unsupported("emitting events"))
    }

    /// ABI 1.1: the whole standard input of a `km plugin` command, read on first use (later
    /// calls return what is left: nothing). Unsupported during `km monitor`, whose standard
    /// input is the MCP stream.
    fn read_stdin(&self) -> RResult<RVec<u8>, PluginError> {
        RErr(unsupported("reading standard input"))
    }

    /// ABI 1.1: the text of the policy file `name` under `KM_HOME/policies/` (a relative path
    /// such as `advanced-filters.toml` or `team/tool-guard.toml`), checked by km like every file
    /// that decides trust (owner, mode, no links, size); `None` when it does not exist.
    fn read_policy(&self, name: RStr<'_>) -> RResult<ROption<RString>, PluginError> {
        let _ = name;
        RErr(unsupported("reading policies"))
    }

    /// ABI 1.1: replaces the policy file `name` under `KM_HOME/policies/` with `text`,
    /// atomically, private to the user.
    fn write_policy(&self, name: RStr<'_>, text: RStr<'_>) -> RResult<(), PluginError> {
        let _ = (name, text);
        RErr(unsupported("writing policies"))
    }
}

fn unsupported(what: &str) -> PluginError {
    PluginError::new(
        ErrorKind::UNSUPPORTED,
        format!("{what} needs a km with plugin ABI 1.1 or later"),
    )
}

/// The host services as passed to a plugin.
pub type HostBox = HostServices_TO<'static, RArc<()>>;

/// The root module every plugin library exports (with the SDK's `km_plugin_sdk::export_plugin!`).
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
