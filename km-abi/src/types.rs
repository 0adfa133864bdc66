//! The plain data that crosses the plugin boundary.
//!
//! Everything here is `#[repr(C)]` (or a `#[repr(u8)]`/`#[repr(transparent)]` value) and derives
//! `StableAbi`, so abi_stable can compare its layout when a plugin is loaded. Only FFI-safe types
//! are used (`RString`, `RVec`, `RSlice`, `RStr`, `ROption`); never std's `String`, `Vec` or `Box`.
//!
//! Values that are likely to grow new cases (error kinds, stream event kinds) are open newtypes
//! over an integer with associated constants rather than closed enums: a plugin built against an
//! older ABI must keep loading when km learns a new kind, and must cope with a value it does not
//! know.

// abi_stable's `StableAbi` derive and `#[sabi_trait]` expand to `unsafe impl`s and `unsafe`
// blocks of their own; this module writes none by hand.
#![allow(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use abi_stable::std_types::{ROption, RSlice, RStr, RString, RVec, Tuple2};
use abi_stable::StableAbi;

/// A subscription tier. Ordered: `Free < Pro < Enterprise`.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Available to everyone; no subscription check.
    Free = 0,
    /// Needs a Pro (or Enterprise) subscription.
    Pro = 1,
    /// Needs an Enterprise subscription.
    Enterprise = 2,
}

impl Tier {
    /// All tiers, lowest first.
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Enterprise];

    /// The canonical spelling used in manifests, tokens and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    /// The spelling people read: `Free`, `Pro`, `Enterprise`.
    pub const fn display_name(self) -> &'static str {
        match self {
            Tier::Free => "Free",
            Tier::Pro => "Pro",
            Tier::Enterprise => "Enterprise",
        }
    }

    /// Whether a subscription of this tier grants what `required` asks for.
    pub fn satisfies(self, required: Tier) -> bool {
        self >= required
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// The error of [`Tier::from_str`]: names the value that is not a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier(pub String);

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown tier {:?} (expected free, pro or enterprise)",
            self.0
        )
    }
}

impl std::error::Error for UnknownTier {}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "free" => Ok(Tier::Free),
            "pro" => Ok(Tier::Pro),
            "enterprise" => Ok(Tier::Enterprise),
            _ => Err(UnknownTier(s.to_owned())),
        }
    }
}

/// Which way a message travels.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the MCP client to the MCP server (km's stdin to the child's stdin).
    Request = 0,
    /// From the MCP server to the MCP client (the child's stdout to km's stdout).
    Response = 1,
}

impl Direction {
    /// `request` or `response`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }

    /// `→` for client to server, `←` for server to client.
    pub const fn arrow(self) -> &'static str {
        match self {
            Direction::Request => "→",
            Direction::Response => "←",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a line turned out to be. An open set: compare with the constants, and treat an unknown
/// value like [`MessageKind::NON_JSON`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKind(pub u32);

impl MessageKind {
    /// A JSON-RPC request: has `method` and `id`.
    pub const REQUEST: MessageKind = MessageKind(0);
    /// A JSON-RPC response: has `id` and `result` or `error`.
    pub const RESPONSE: MessageKind = MessageKind(1);
    /// A JSON-RPC notification: has `method`, no `id`.
    pub const NOTIFICATION: MessageKind = MessageKind(2);
    /// A JSON array (a JSON-RPC batch).
    pub const BATCH: MessageKind = MessageKind(3);
    /// Anything else: not JSON, or JSON that is not JSON-RPC.
    pub const NON_JSON: MessageKind = MessageKind(4);

    /// A lower-case name for logs.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            0 => "request",
            1 => "response",
            2 => "notification",
            3 => "batch",
            _ => "non-json",
        }
    }
}

impl fmt::Debug for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the MCP stream, as a plugin sees it.
///
/// The bytes are borrowed from km for the duration of the call; copy what you keep.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Global sequence number of the line in this session (both directions share one counter).
    pub seq: u64,
    /// Which way the line travels.
    pub direction: Direction,
    /// What the line is.
    pub kind: MessageKind,
    /// For a response: whether it carries `error` rather than `result`.
    pub is_error: bool,
    /// The line without its line terminator (`\n` or `\r\n`). Not necessarily UTF-8.
    pub data: RSlice<'a, u8>,
    /// Shared by a request and its response (and a cancellation naming the request); empty for
    /// lines that belong to no request.
    pub correlation_id: RStr<'a>,
    /// The JSON-RPC `id` as JSON text (`7`, `"abc"`), empty when there is none.
    pub id: RStr<'a>,
    /// The JSON-RPC `method`, empty when there is none.
    pub method: RStr<'a>,
    /// When km read the line: microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// For a response: microseconds since its request was seen.
    pub latency_us: ROption<u64>,
}

impl<'a> Message<'a> {
    /// The bytes of the line.
    pub fn bytes(&self) -> &'a [u8] {
        self.data.as_slice()
    }

    /// The line as text, if it is UTF-8.
    pub fn text(&self) -> Option<&'a str> {
        std::str::from_utf8(self.data.as_slice()).ok()
    }
}

/// The kind of a [`PluginError`]. An open set, like [`MessageKind`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The operation failed for a reason given in the message.
    pub const FAILED: ErrorKind = ErrorKind(0);
    /// Plugin code panicked; the SDK caught it at the boundary.
    pub const PANICKED: ErrorKind = ErrorKind(1);
    /// The operation is not supported by this plugin or host.
    pub const UNSUPPORTED: ErrorKind = ErrorKind(2);
    /// An I/O error (relay, files).
    pub const IO: ErrorKind = ErrorKind(3);
    /// The network or the Kilometers API could not be reached or answered badly.
    pub const NETWORK: ErrorKind = ErrorKind(4);
    /// A deadline passed.
    pub const TIMEOUT: ErrorKind = ErrorKind(5);
    /// The request was refused (bad credentials, not allowed by configuration).
    pub const DENIED: ErrorKind = ErrorKind(6);

    /// A lower-case name for logs.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            0 => "failed",
            1 => "panicked",
            2 => "unsupported",
            3 => "io",
            4 => "network",
            5 => "timeout",
            6 => "denied",
            _ => "unknown",
        }
    }
}

/// An error value crossing the boundary, in either direction.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: RString,
}

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// A [`ErrorKind::FAILED`] error.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FAILED, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// The outcome of [`authenticate`](crate::KmPlugin::authenticate).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AuthResponse {
    /// Whether the plugin runs with the features of its required tier.
    pub authorized: bool,
    /// The tier the subscription grants (Free when unknown).
    pub tier: Tier,
    /// Feature flags granted, e.g. `api_logging`.
    pub features: RVec<RString>,
    /// When the authorization ends: seconds since the Unix epoch; 0 for never.
    pub expires_at: i64,
    /// The API's signed token, as received (opaque to km; kept in km's state for restarts).
    pub token: RString,
    /// Why the plugin is not (fully) authorized, for `km plugin-status`; empty when it is.
    pub reason: RString,
}

impl AuthResponse {
    /// The answer of a Free plugin, which needs no subscription: authorized, never expires.
    pub fn free() -> Self {
        AuthResponse {
            authorized: true,
            tier: Tier::Free,
            features: RVec::new(),
            expires_at: 0,
            token: RString::new(),
            reason: RString::new(),
        }
    }

    /// A degraded answer: not authorized, with the reason the user will see.
    pub fn degraded(reason: impl Into<String>) -> Self {
        AuthResponse {
            authorized: false,
            tier: Tier::Free,
            features: RVec::new(),
            expires_at: 0,
            token: RString::new(),
            reason: RString::from(reason.into()),
        }
    }

    /// Whether `feature` was granted.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f.as_str() == feature)
    }
}

/// What km tells a plugin once, after loading it and before any message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's own directory for state (created by km, mode 0700).
    pub data_dir: RString,
    /// The base URL of the Kilometers API (empty when none is configured).
    pub api_url: RString,
    /// The plugin's settings from km's configuration, as a JSON object (`{}` when none).
    pub settings_json: RString,
    /// The version of km.
    pub host_version: RString,
    /// Whether km runs with `-v`.
    pub verbose: bool,
}

/// The kind of a [`StreamEvent`]. An open set: ignore kinds you do not know.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamEventKind(pub u32);

impl StreamEventKind {
    /// The server was started. `data`: `{"command": [...], "pid": N}` (from ABI 1.1 also
    /// `"session_id"`).
    pub const START: StreamEventKind = StreamEventKind(0);
    /// The session ended. `data`: `{"exit_code": N, "signal": N|null, "messages": {...}, "drops": N}`.
    pub const END: StreamEventKind = StreamEventKind(1);
    /// Something went wrong in the relay. `data`: `{"error": "...", "context": "..."}`.
    pub const ERROR: StreamEventKind = StreamEventKind(2);
    /// ABI 1.1: an event another plugin emitted (its host's `emit`). `data`:
    /// `{"plugin": "...", "kind": "...", "data": {...}}`.
    pub const PLUGIN: StreamEventKind = StreamEventKind(3);
    /// ABI 1.1: an interceptor did not let a line pass unchanged. `data`: `{"plugin", "action"
    /// (replace, block), "rules": [...], "reason", "direction", "kind", "method", "target",
    /// "id", "correlation_id"}`; never the line or what matched. An observer receives it before
    /// the line as forwarded (and before the answer to a blocked request).
    pub const VERDICT: StreamEventKind = StreamEventKind(4);
    /// ABI 1.1: something km did with plugins. `data`: `{"event": "refused" | "disabled" |
    /// "installed" | "updated" | "uninstalled", "plugin", ...}` (installs and updates happened
    /// since the previous session and carry their own `time` and `id`).
    pub const HOST: StreamEventKind = StreamEventKind(5);
    /// ABI 1.1: messages a lossless plugin did not receive because back-pressure is refused by
    /// configuration. `data`: `{"missed": N}`.
    pub const GAP: StreamEventKind = StreamEventKind(6);

    /// A lower-case name for logs.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            0 => "start",
            1 => "end",
            2 => "error",
            3 => "plugin",
            4 => "verdict",
            5 => "host",
            6 => "gap",
            _ => "unknown",
        }
    }
}

/// A lifecycle event of the MCP session.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// What happened.
    pub kind: StreamEventKind,
    /// When: milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Details as a JSON object (see the kinds).
    pub data: RString,
}

/// The level of a log line a plugin writes through the host.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Failures.
    Error = 0,
    /// Problems that do not stop the plugin.
    Warn = 1,
    /// Normal operation.
    Info = 2,
    /// Detail, shown with `-v`.
    Debug = 3,
}

/// An HTTP request to the configured Kilometers API, performed by km.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: RString,
    /// The path below the API base URL, starting with `/` (e.g. `/api/plugins/authenticate`).
    /// km refuses absolute URLs: plugins reach only the configured API.
    pub path: RString,
    /// Extra request headers.
    pub headers: RVec<Tuple2<RString, RString>>,
    /// The request body.
    pub body: RVec<u8>,
    /// Overall deadline in milliseconds; 0 for km's default.
    pub timeout_ms: u32,
}

impl HttpRequest {
    /// A `POST` of a JSON body to `path`.
    pub fn post_json(path: &str, body: Vec<u8>) -> Self {
        HttpRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![Tuple2(
                RString::from("content-type"),
                RString::from("application/json"),
            )]
            .into(),
            body: body.into(),
            timeout_ms: 0,
        }
    }
}

/// The answer to an [`HttpRequest`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers (names in lower case).
    pub headers: RVec<Tuple2<RString, RString>>,
    /// The response body (km caps its size).
    pub body: RVec<u8>,
}
