//! The plugin-author SDK: a safe trait to implement and the glue that exports it.
//!
//! The glue is the only place where author code meets the ABI. Every entry point runs inside
//! `catch_unwind`: abi_stable's generated functions turn an escaping panic into an abort of the
//! whole process, and a plugin must never take km down, so a panic is turned into an
//! [`ErrorKind::PANICKED`] error value here, before it can reach the boundary. The plugin's
//! destructor is no exception: km drops a plugin object through abi_stable's `extern "C"`
//! destructor glue, so a panic in the author's `Drop` is caught by the adapter's own `Drop`.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;

use abi_stable::library::{
    __call_root_module_loader, CheckTypeLayout, LibHeader, RootModule, RootModuleResult,
};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString};

use km_abi::{
    AuthResponse, CommandOutput, ErrorKind, HttpRequest, HttpResponse, InterceptContext,
    InterestRef, LogLevel, Message, PluginConfig, PluginError, StreamEvent, Tier, Verdict,
};
use km_abi::{HostBox, KmPlugin, KmPlugin_TO, PluginBox, PluginMod, PluginModRef};

use crate::interest::{Interest, SessionInfo};

/// A plugin, as its author writes it. Implement this and call [`export_plugin!`].
///
/// Methods take `&self`: km may call `authenticate` from one thread while another delivers
/// messages, so keep mutable state behind a `Mutex` or atomics. Returning an error from a
/// handler is reported by km and the session goes on; so is a panic.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The plugin's name, as its manifest will be signed (e.g. `console-logger`).
    const NAME: &'static str;
    /// The plugin's version, as its manifest will be signed (usually `env!("CARGO_PKG_VERSION")`).
    const VERSION: &'static str;
    /// The tier the plugin needs for its full features.
    const REQUIRED_TIER: Tier;

    /// Creates the plugin. `host` is the plugin's handle on km's services.
    fn new(host: Host) -> Result<Self, PluginError>;

    /// Checks the subscription. The default suits a Free plugin: always authorized.
    fn authenticate(&self, _api_key: &str) -> Result<AuthResponse, PluginError> {
        Ok(AuthResponse::free())
    }

    /// Called once before any message.
    fn initialize(&self, _config: &PluginConfig) -> Result<(), PluginError> {
        Ok(())
    }

    /// Called once at the end of the session.
    fn shutdown(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// One line of the MCP stream, as km forwarded it (for plugins whose [`Interest`] observes).
    fn handle_message(&self, _message: &Message<'_>) -> Result<(), PluginError> {
        Ok(())
    }

    /// An error of the relay.
    fn handle_error(&self, _error: &PluginError) -> Result<(), PluginError> {
        Ok(())
    }

    /// A lifecycle event of the session; from ABI 1.1 also other plugins' events, verdicts, host
    /// events and gaps (see [`StreamEventKind`](crate::StreamEventKind)). Ignore kinds you do
    /// not know.
    fn handle_stream_event(&self, _event: &StreamEvent) -> Result<(), PluginError> {
        Ok(())
    }

    /// What the plugin wants to intercept and how it is fed; asked once, after `initialize`.
    /// The default observes everything and intercepts nothing. Intercepting also needs the
    /// `intercept` capability in the plugin's signed manifest (`km-sign sign --capability
    /// intercept`).
    fn interest(&self) -> Interest {
        Interest::observer()
    }

    /// A `km monitor` session begins (after `interest`, before any line).
    fn begin_session(&self, _session: &SessionInfo) -> Result<(), PluginError> {
        Ok(())
    }

    /// Decides about a line the plugin intercepts, before km forwards it. Runs on the relay's
    /// threads, possibly on both directions at once, within the plugin's time budget: keep it
    /// fast. An error or a panic blocks the line and disables the plugin for the session (fail
    /// closed). Never put what you matched in the verdict's reason or rules.
    fn intercept(
        &self,
        _message: &Message<'_>,
        _context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        Ok(Verdict::pass())
    }

    /// The usage text of `km plugin NAME` (shown for `--help`); `None` when the plugin has no
    /// commands.
    fn command_help(&self) -> Option<String> {
        None
    }

    /// Runs `km plugin NAME ARGS...` (`args` without NAME). Read standard input, if the command
    /// takes any, with [`Host::read_stdin`].
    fn run_command(&self, _args: &[String]) -> Result<CommandOutput, PluginError> {
        Err(PluginError::new(
            ErrorKind::UNSUPPORTED,
            format!("plugin {} has no commands", Self::NAME),
        ))
    }
}

/// A plugin's handle on km's services. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Host(HostBox);

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

impl Host {
    /// Wraps the object km passed in.
    pub fn from_raw(host: HostBox) -> Self {
        Host(host)
    }

    /// Writes a line to km's log (never to stdout).
    pub fn log(&self, level: LogLevel, message: &str) {
        self.0.log(level, RStr::from_str(message));
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at warning level.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Logs at debug level (shown with `km -v`).
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// The plugin's own data directory.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.0.data_dir().into_string())
    }

    /// An HTTP request to the configured Kilometers API, performed by km.
    pub fn http(&self, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        self.0.http(request).into_result()
    }

    /// Emits an event (`kind` such as `finding`, `anomaly`, `drift`; `data` a JSON object) to
    /// the other plugins and km's telemetry. Never put matched secrets in it. Fails with
    /// [`ErrorKind::UNSUPPORTED`] on a km older than ABI 1.1.
    pub fn emit(&self, kind: &str, data: &serde_json::Value) -> Result<(), PluginError> {
        let data = data.to_string();
        self.0
            .emit(RStr::from_str(kind), RStr::from_str(&data))
            .into_result()
    }

    /// The standard input of a `km plugin` command, read whole on first use.
    pub fn read_stdin(&self) -> Result<Vec<u8>, PluginError> {
        self.0.read_stdin().into_result().map(Into::into)
    }

    /// The policy file `name` under `KM_HOME/policies/` (`advanced-filters.toml`,
    /// `team/tool-guard.toml`), checked by km; `None` when there is none.
    pub fn read_policy(&self, name: &str) -> Result<Option<String>, PluginError> {
        self.0
            .read_policy(RStr::from_str(name))
            .into_result()
            .map(|text| text.into_option().map(RString::into_string))
    }

    /// Replaces the policy file `name` under `KM_HOME/policies/`, atomically.
    pub fn write_policy(&self, name: &str, text: &str) -> Result<(), PluginError> {
        self.0
            .write_policy(RStr::from_str(name), RStr::from_str(text))
            .into_result()
    }
}

/// Runs `f`, turning a panic into an error value. Used by the glue around every entry point.
fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(error)) => RErr(error),
        Err(payload) => RErr(PluginError::new(
            ErrorKind::PANICKED,
            format!(
                "plugin panicked in {what}: {}",
                panic_message(payload.as_ref())
            ),
        )),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The author's plugin behind the ABI trait, with its interest in the ABI's form once asked.
/// The plugin is dropped by hand (see `Drop`), so that a panic in its destructor is contained.
struct Adapter<P: Plugin> {
    plugin: ManuallyDrop<P>,
    interest: OnceLock<InterestRef>,
}

impl<P: Plugin> Drop for Adapter<P> {
    fn drop(&mut self) {
        let plugin = &mut self.plugin;
        // The destructor runs inside abi_stable's `extern "C"` drop glue, where an escaping
        // panic aborts km: the plugin is gone either way, so the panic stops here (the panic
        // hook has already reported it on stderr).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `ManuallyDrop::drop` requires that the value is not used again and not
            // dropped twice. This is the adapter's destructor: nothing uses `self.plugin` after
            // it, and this is the only place that drops it.
            #[allow(unsafe_code)]
            unsafe {
                ManuallyDrop::drop(plugin)
            }
        }));
    }
}

impl<P: Plugin> KmPlugin for Adapter<P> {
    fn name(&self) -> RString {
        RString::from(P::NAME)
    }

    fn version(&self) -> RString {
        RString::from(P::VERSION)
    }

    fn required_tier(&self) -> Tier {
        P::REQUIRED_TIER
    }

    fn authenticate(&self, api_key: RStr<'_>) -> RResult<AuthResponse, PluginError> {
        guard("authenticate", || {
            self.plugin.authenticate(api_key.as_str())
        })
    }

    fn initialize(&self, config: &PluginConfig) -> RResult<(), PluginError> {
        guard("initialize", || self.plugin.initialize(config))
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        guard("shutdown", || self.plugin.shutdown())
    }

    fn handle_message(&self, message: &Message<'_>) -> RResult<(), PluginError> {
        guard("handle_message", || self.plugin.handle_message(message))
    }

    fn handle_error(&self, error: &PluginError) -> RResult<(), PluginError> {
        guard("handle_error", || self.plugin.handle_error(error))
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> RResult<(), PluginError> {
        guard("handle_stream_event", || {
            self.plugin.handle_stream_event(event)
        })
    }

    fn interest(&self) -> InterestRef {
        *self.interest.get_or_init(|| {
            // A panic here must not cross the boundary either; a plugin that cannot say what it
            // wants is treated as an observer.
            catch_unwind(AssertUnwindSafe(|| self.plugin.interest()))
                .map_or(InterestRef::OBSERVER, |interest| {
                    interest.into_abi().into_ref()
                })
        })
    }

    fn begin_session(&self, info: RStr<'_>) -> RResult<(), PluginError> {
        guard("begin_session", || {
            self.plugin
                .begin_session(&SessionInfo::parse(info.as_str()))
        })
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> RResult<Verdict, PluginError> {
        guard("intercept", || self.plugin.intercept(message, context))
    }

    fn command_help(&self) -> RString {
        catch_unwind(AssertUnwindSafe(|| self.plugin.command_help()))
            .ok()
            .flatten()
            .map(RString::from)
            .unwrap_or_default()
    }

    fn run_command(&self, args: RSlice<'_, RString>) -> RResult<CommandOutput, PluginError> {
        guard("run_command", || {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            self.plugin.run_command(&args)
        })
    }
}

/// Creates `P` behind the ABI. Called by the code [`export_plugin!`] generates.
#[doc(hidden)]
pub fn __new_plugin<P: Plugin>(host: HostBox) -> RResult<PluginBox, PluginError> {
    guard("new", || {
        let plugin = P::new(Host::from_raw(host))?;
        let adapter = Adapter {
            plugin: ManuallyDrop::new(plugin),
            interest: OnceLock::new(),
        };
        Ok(KmPlugin_TO::from_value(adapter, TD_Opaque))
    })
}

/// Builds the root module for a `new` function. Called by the code [`export_plugin!`] generates.
#[doc(hidden)]
pub fn __root_module(
    new: extern "C" fn(HostBox) -> RResult<PluginBox, PluginError>,
) -> PluginModRef {
    PluginMod { new }.leak_into_prefix()
}

/// The symbol abi_stable looks up in a library (`abi_stable::library::ROOT_MODULE_LOADER_NAME`);
/// [`export_plugin!`] needs it as a literal. A unit test pins the two together.
#[doc(hidden)]
pub(crate) const __ROOT_MODULE_LOADER_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Builds the library header for a root-module loader. Called by the code [`export_plugin!`]
/// generates.
#[doc(hidden)]
pub const fn __lib_header(loader: extern "C" fn() -> RootModuleResult) -> LibHeader {
    // SAFETY: `from_constructor::<M>` requires that the loader's result was made from an `M`.
    // The only loaders passed here are the ones `export_plugin!` generates, which call
    // `__call_root_module_loader` on a function returning `PluginModRef`, the `M` named here.
    #[allow(unsafe_code)]
    unsafe {
        LibHeader::from_constructor::<PluginModRef>(loader, CheckTypeLayout::Yes)
    }
}

/// Calls a root-module function the way abi_stable's loader expects (panics become errors).
#[doc(hidden)]
pub fn __call_loader(root: fn() -> PluginModRef) -> RootModuleResult {
    __call_root_module_loader(root)
}

// Keeps the RootModule import meaningful for readers: PluginModRef is the root module type.
const _: fn() = || {
    fn assert_root_module<M: RootModule>() {}
    assert_root_module::<PluginModRef>();
};

/// Exports a [`Plugin`] implementation as km's root module. Write it once, at the top level of a
/// `cdylib` crate:
///
/// ```ignore
/// km_plugin_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            extern "C" fn __km_new(
                host: $crate::__private::HostBox,
            ) -> $crate::__private::RResult<
                $crate::__private::PluginBox,
                $crate::__private::PluginError,
            > {
                $crate::__private::new_plugin::<$plugin>(host)
            }

            fn __km_root() -> $crate::__private::PluginModRef {
                $crate::__private::root_module(__km_new)
            }

            extern "C" fn __km_loader() -> $crate::__private::RootModuleResult {
                $crate::__private::call_loader(__km_root)
            }

            // The symbol abi_stable looks up; see `__ROOT_MODULE_LOADER_SYMBOL`.
            #[allow(unsafe_code)]
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static __KM_PLUGIN_LIB_HEADER: $crate::__private::LibHeader =
                $crate::__private::lib_header(__km_loader);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_symbol_matches_abi_stable() {
        assert_eq!(
            __ROOT_MODULE_LOADER_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn guard_turns_a_panic_into_an_error_value() {
        let result: RResult<(), PluginError> = guard("test", || panic!("boom"));
        let error = result
            .into_result()
            .expect_err("a panic must become an error");
        assert_eq!(error.kind, ErrorKind::PANICKED);
        assert!(error.message.as_str().contains("boom"), "{}", error.message);
    }
}
