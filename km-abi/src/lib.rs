//! The stable plugin ABI of km, the Kilometers CLI: the contract between km and its plugins, and
//! nothing else.
//!
//! km sits between an MCP client and an MCP server and hands every JSON-RPC line to plugins:
//! native `cdylib` libraries loaded in-process, after km has verified their signature. This crate
//! holds only what crosses the boundary: the plain data ([`Message`], [`StreamEvent`], ...), the
//! plugin object ([`KmPlugin`]), the services km offers plugins ([`HostServices`]) and the root
//! module a library exports ([`PluginMod`]). It does no I/O.
//!
//! Plugin authors do not use this crate directly: the SDK (`km-plugin-sdk`, in `plugins/sdk`)
//! gives them a safe `Plugin` trait, an `export_plugin!` macro, a `Host` handle and the
//! subscription helper, and re-exports what they need from here. Keeping the SDK apart means a fix
//! to, say, the token cache does not change the ABI version.
//!
//! # Versioning
//!
//! The ABI version is this crate's version ([`ABI_VERSION`]); a library records the version it
//! was built against, and abi_stable refuses one whose major version differs from km's. Within
//! one major version km only appends:
//! - methods after the ones marked `#[sabi(last_prefix_field)]`, each with a default body, which
//!   is what an older plugin's object answers;
//! - fields of prefix types (the root module), read as `Option` by the host;
//! - constants of the open integer newtypes ([`MessageKind`], [`ErrorKind`], ...): a value one
//!   side does not know is treated as documented on the type, never as an error.
//!
//! What is NOT checked here: abi_stable's layout check catches build mistakes, not attacks. The
//! security of loading is the signature check km performs before mapping a library.

mod intercept;
mod interface;
mod types;

pub use intercept::{
    CommandOutput, Directions, InterceptContext, Interest, InterestPrefix, InterestRef, KindSet,
    Verdict, VerdictAction,
};
pub use interface::{
    HostBox, HostServices, HostServices_TO, KmPlugin, KmPlugin_TO, PluginBox, PluginMod,
    PluginModRef, ABI_VERSION,
};
pub use types::{
    AuthResponse, Direction, ErrorKind, HttpRequest, HttpResponse, LogLevel, Message, MessageKind,
    PluginConfig, PluginError, StreamEvent, StreamEventKind, Tier, UnknownTier,
};

/// Re-exported so that hosts and plugins use the exact abi_stable km-abi was built with.
pub use abi_stable;
