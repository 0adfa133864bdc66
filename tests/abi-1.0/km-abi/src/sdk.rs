//! The plugin-author SDK: a safe trait to implement and the glue that exports it.
//!
//! The glue is the only place where author code meets the ABI. Every entry point runs inside
//! `catch_unwind`: abi_stable's generated functions turn an escaping panic into an abort of the
//! whole process, and a plugin must never take km down, so a panic is turned into an
//! [`ErrorKind::PANICKED`] error value here, before it can reach the boundary.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use abi_stable::library::{
    __call_root_module_loader, CheckTypeLayout, LibHeader, RootModule, RootModuleResult,
};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};

use crate::interface::{HostBox, KmPlugin, KmPlugin_TO, PluginBox, PluginMod, PluginModRef};
use crate::types::{
    AuthResponse, ErrorKind, HttpRequest, HttpResponse, LogLevel, Message, PluginConfig,
    PluginError, StreamEvent, Tier,
};

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

    /// One line of the MCP stream.
    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError>;

    /// An error of the relay.
    fn handle_error(&self, _error: &PluginError) -> Result<(), PluginError> {
        Ok(())
    }

    /// A lifecycle event of the session.
    fn handle_stream_event(&self, _event: &StreamEvent) -> Result<(), PluginError> {
        Ok(())
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

/// The author's plugin behind the ABI trait.
struct Adapter<P: Plugin>(P);

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
        guard("authenticate", || self.0.authenticate(api_key.as_str()))
    }

    fn initialize(&self, config: &PluginConfig) -> RResult<(), PluginError> {
        guard("initialize", || self.0.initialize(config))
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        guard("shutdown", || self.0.shutdown())
    }

    fn handle_message(&self, message: &Message<'_>) -> RResult<(), PluginError> {
        guard("handle_message", || self.0.handle_message(message))
    }

    fn handle_error(&self, error: &PluginError) -> RResult<(), PluginError> {
        guard("handle_error", || self.0.handle_error(error))
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> RResult<(), PluginError> {
        guard("handle_stream_event", || self.0.handle_stream_event(event))
    }
}

/// Creates `P` behind the ABI. Called by the code [`export_plugin!`] generates.
#[doc(hidden)]
pub fn __new_plugin<P: Plugin>(host: HostBox) -> RResult<PluginBox, PluginError> {
    guard("new", || {
        let plugin = P::new(Host::from_raw(host))?;
        Ok(KmPlugin_TO::from_value(Adapter(plugin), TD_Opaque))
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
/// km_abi::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            extern "C" fn __km_new(
                host: $crate::HostBox,
            ) -> $crate::__private::RResult<$crate::PluginBox, $crate::PluginError> {
                $crate::__private::new_plugin::<$plugin>(host)
            }

            fn __km_root() -> $crate::PluginModRef {
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
