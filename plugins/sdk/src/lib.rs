//! The SDK for writing km plugins.
//!
//! km sits between an MCP client and an MCP server and hands every JSON-RPC line to plugins:
//! native `cdylib` libraries loaded in-process, after km has verified their signature. The
//! contract between the two sides is the `km-abi` crate; this SDK sits on the plugin's side of it,
//! so that an author writes a safe trait impl and one macro line.
//!
//! A complete plugin (its `Cargo.toml` has `crate-type = ["cdylib"]` and depends on `km-plugin-sdk`):
//!
//! ```no_run
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use km_plugin_sdk::{Host, Message, Plugin, PluginError, StreamEvent, StreamEventKind, Tier};
//!
//! /// Counts requests by direction and logs each method it sees.
//! pub struct MethodCounter {
//!     host: Host,
//!     seen: AtomicU64,
//! }
//!
//! impl Plugin for MethodCounter {
//!     const NAME: &'static str = "method-counter";
//!     const VERSION: &'static str = "1.0.0";
//!     const REQUIRED_TIER: Tier = Tier::Free;
//!
//!     fn new(host: Host) -> Result<Self, PluginError> {
//!         Ok(MethodCounter { host, seen: AtomicU64::new(0) })
//!     }
//!
//!     fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
//!         self.seen.fetch_add(1, Ordering::Relaxed);
//!         if !message.method.is_empty() {
//!             self.host.debug(&format!(
//!                 "{} {} (correlation {})",
//!                 message.direction.arrow(),
//!                 message.method,
//!                 message.correlation_id
//!             ));
//!         }
//!         Ok(())
//!     }
//!
//!     fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
//!         if event.kind == StreamEventKind::END {
//!             let seen = self.seen.load(Ordering::Relaxed);
//!             self.host.info(&format!("session over after {seen} messages"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! km_plugin_sdk::export_plugin!(MethodCounter);
//! # fn main() {}
//! ```
//!
//! Then sign it (`km-sign sign --key dev.key --name method-counter --version 1.0.0 --tier free
//! target/release/libmethod_counter.so`), trust the key (`km trust add dev.pub`) and copy the
//! library and its `.kmsig` into `~/.km/plugins`.
//!
//! # Rules of the boundary
//!
//! - Entry points are synchronous and run on km's worker threads (one per plugin, plus km's
//!   refresh thread for `authenticate`). A plugin's copy of tokio is not km's: reach the network
//!   through [`Host::http`], never your own runtime.
//! - A panic in any entry point becomes an error value; km disables the plugin and carries on.
//! - Never write to stdout: it carries the MCP stream. Log through [`Host::log`].
//! - The ABI version is `km-abi`'s version ([`ABI_VERSION`]), not this crate's. Within one major
//!   version, km appends fields and defaulted methods only, so plugins built against an older
//!   minor version keep loading.
//!
//! # Premium plugins
//!
//! A plugin that needs a subscription reserves a credentials region with
//! [`credentials_region!`] (stamped per customer by `km-sign build-plugin`, see [`credentials`]),
//! keeps a [`Subscription`] built from it, answers `authenticate` with
//! [`Subscription::authenticate`], and asks [`Subscription::current`] (cheap) in its handlers,
//! behaving as on the Free tier when there is no valid token. Tokens and their checks are in
//! [`auth`]; `plugins/api-logger` is a complete example.
//!
//! What is NOT checked here: abi_stable's layout check catches build mistakes, not attacks. The
//! security of loading is the signature check km performs before mapping a library.

pub mod auth;
pub mod credentials;
mod interest;
mod plugin;
pub mod request;

pub use auth::{verify_token, Subscription, SubscriptionState, TokenClaims, TokenError};
pub use credentials::{Credentials, CredentialsError};
pub use interest::{server_id, server_label, Interest, SessionInfo};
pub use plugin::{Host, Plugin};

/// The ABI this SDK builds plugins for, re-exported whole for what the SDK does not wrap.
pub use km_abi as abi;
/// The abi_stable the ABI is built with (its FFI-safe `RString`, `RVec`, ...).
pub use km_abi::abi_stable;
pub use km_abi::{
    AuthResponse, CommandOutput, Direction, Directions, ErrorKind, HttpRequest, HttpResponse,
    InterceptContext, KindSet, LogLevel, Message, MessageKind, PluginConfig, PluginError,
    StreamEvent, StreamEventKind, Tier, UnknownTier, Verdict, VerdictAction, ABI_VERSION,
};

/// Items the macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{
        __call_loader as call_loader, __lib_header as lib_header, __new_plugin as new_plugin,
        __root_module as root_module,
    };
    pub use abi_stable::library::{LibHeader, RootModuleResult};
    pub use abi_stable::std_types::RResult;
    pub use km_abi::{HostBox, PluginBox, PluginError, PluginModRef};
}
