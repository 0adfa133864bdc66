//! What a plugin tells km it wants (ABI 1.1), in owned, builder form, and what km tells it when a
//! session begins.
//!
//! The ABI's [`km_abi::Interest`] is a prefix type holding `'static` slices, because km asks for
//! it once per load and reads it for the whole session; [`Interest`] here is the plain value an
//! author builds, which the SDK turns into the ABI's form once (leaking one small allocation per
//! load, by design).

use km_abi::abi_stable::std_types::{RSlice, RStr};
use km_abi::{Direction, Directions, KindSet, MessageKind, VerdictAction};
use serde::Deserialize;

/// What a plugin wants from km: to observe, to intercept, how it is fed. Build it with
/// [`Interest::observer`] or [`Interest::interceptor`] and the setters.
///
/// ```
/// use km_plugin_sdk::{abi::Directions, Interest};
///
/// let guard = Interest::interceptor(Directions::BOTH)
///     .methods(["tools/list", "tools/call"])
///     .priority(100)
///     .budget_ms(250);
/// assert!(guard.wants(km_plugin_sdk::Direction::Response, km_plugin_sdk::MessageKind::RESPONSE, "tools/list"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// The directions whose lines the plugin intercepts.
    pub intercept: Directions,
    /// The kinds of lines it intercepts.
    pub kinds: KindSet,
    /// The methods it intercepts (a response: its request's method); empty for all.
    pub methods: Vec<String>,
    /// The methods whose responses it intercepts, when not the same as `methods`; empty for
    /// the same.
    pub response_methods: Vec<String>,
    /// Its default place among interceptors (lower first).
    pub priority: i32,
    /// Its time budget per `intercept` call, in microseconds (0: km's default).
    pub budget_us: u64,
    /// Whether it wants `handle_message` for forwarded lines.
    pub observe: bool,
    /// Whether it must not miss an observed message (back-pressure instead of drops).
    pub lossless: bool,
    /// The longest line it inspects (0: km's limit).
    pub max_line_bytes: u64,
    /// What happens to longer lines: block (the default) or pass.
    pub oversize: VerdictAction,
}

impl Interest {
    /// Observes every line, intercepts nothing: what every plugin gets unless it says otherwise.
    pub fn observer() -> Self {
        Interest::from_abi(&km_abi::Interest::OBSERVER)
    }

    /// Intercepts JSON-RPC requests, responses and notifications in `directions`, and does not
    /// observe (add [`Interest::observe`] to also get `handle_message`).
    pub fn interceptor(directions: Directions) -> Self {
        Interest {
            intercept: directions,
            kinds: KindSet::JSON_RPC,
            priority: 500,
            observe: false,
            ..Interest::observer()
        }
    }

    /// Only these methods (for a response: the method of its request).
    pub fn methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Responses only to these methods (requests and notifications still by
    /// [`Interest::methods`]): a guard that judges `tools/call` requests and `tools/list` results
    /// need not hold up every `tools/call` result.
    pub fn response_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.response_methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Only these kinds of lines.
    pub fn kinds(mut self, kinds: KindSet) -> Self {
        self.kinds = kinds;
        self
    }

    /// Its default priority (lower runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Its time budget per line.
    pub fn budget_ms(mut self, ms: u64) -> Self {
        self.budget_us = ms.saturating_mul(1000);
        self
    }

    /// Whether it also wants `handle_message` for forwarded lines.
    pub fn observe(mut self, observe: bool) -> Self {
        self.observe = observe;
        self
    }

    /// Asks for lossless delivery of observed messages.
    pub fn lossless(mut self, lossless: bool) -> Self {
        self.lossless = lossless;
        self
    }

    /// The longest line it inspects, and what happens to longer ones.
    pub fn max_line(mut self, bytes: u64, oversize: VerdictAction) -> Self {
        self.max_line_bytes = bytes;
        self.oversize = oversize;
        self
    }

    /// Whether a line of `direction` and `kind` for `method` is one it intercepts.
    pub fn wants(&self, direction: Direction, kind: MessageKind, method: &str) -> bool {
        let methods = if kind == MessageKind::RESPONSE && !self.response_methods.is_empty() {
            &self.response_methods
        } else {
            &self.methods
        };
        self.intercept.contains(direction)
            && self.kinds.contains(kind)
            && (methods.is_empty() || methods.iter().any(|m| m == method))
    }

    fn from_abi(interest: &km_abi::Interest) -> Self {
        Interest {
            intercept: interest.intercept,
            kinds: interest.kinds,
            methods: interest.methods.iter().map(|m| m.to_string()).collect(),
            response_methods: interest
                .response_methods
                .iter()
                .map(|m| m.to_string())
                .collect(),
            priority: interest.priority,
            budget_us: interest.budget_us,
            observe: interest.observe,
            lossless: interest.lossless,
            max_line_bytes: interest.max_line_bytes,
            oversize: interest.oversize,
        }
    }

    /// The ABI's form. Leaks the method names: called once per load by the glue.
    pub(crate) fn into_abi(self) -> km_abi::Interest {
        let leak = |names: Vec<String>| -> RSlice<'static, RStr<'static>> {
            let names: Vec<RStr<'static>> = names
                .into_iter()
                .map(|m| RStr::from_str(Box::leak(m.into_boxed_str())))
                .collect();
            RSlice::from_slice(Box::leak(names.into_boxed_slice()))
        };
        km_abi::Interest {
            intercept: self.intercept,
            kinds: self.kinds,
            methods: leak(self.methods),
            response_methods: leak(self.response_methods),
            priority: self.priority,
            budget_us: self.budget_us,
            observe: self.observe,
            lossless: self.lossless,
            max_line_bytes: self.max_line_bytes,
            oversize: self.oversize,
        }
    }
}

/// What km says when a `km monitor` session begins (the JSON of the ABI's `begin_session`).
/// Fields km adds later are ignored by older plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SessionInfo {
    /// Unique per session; the `session_id` of every [`km_abi::InterceptContext`].
    pub session_id: String,
    /// The MCP server's command line.
    pub command: Vec<String>,
    /// km's working directory.
    pub cwd: String,
    /// The version of km.
    pub km_version: String,
}

impl SessionInfo {
    /// Parses what km sent; an unparsable value gives the defaults (km always sends an object).
    pub(crate) fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }

    /// A stable id of the MCP server: the first 16 hex digits of the SHA-256 of its command
    /// line (arguments joined by NUL). The same command is the same server across sessions and
    /// plugins, so every plugin keys its per-server state (pins, statistics, audit records) by it.
    pub fn server_id(&self) -> String {
        server_id(&self.command)
    }

    /// A short name of the server for people: the program's file name and its first argument
    /// that is not an option (as a file name when it is a path), e.g. `npx server-github` or
    /// `node index.js`. Later arguments are left out: command lines can carry tokens.
    pub fn server_label(&self) -> String {
        server_label(&self.command)
    }
}

/// [`SessionInfo::server_id`] of a command line.
pub fn server_id(command: &[String]) -> String {
    let joined = command.join("\0");
    let digest = ring::digest::digest(&ring::digest::SHA256, joined.as_bytes());
    hex::encode(&digest.as_ref()[..8])
}

/// [`SessionInfo::server_label`] of a command line.
pub fn server_label(command: &[String]) -> String {
    let base = |arg: &str| -> String {
        let trimmed = arg.trim_end_matches('/');
        trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
    };
    let mut words = Vec::new();
    if let Some(program) = command.first() {
        words.push(base(program));
    }
    if let Some(first) = command
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-') && !a.contains('='))
    {
        words.push(base(first));
    }
    if words.is_empty() {
        "unknown".to_owned()
    } else {
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interest_survives_the_trip_through_the_abi() {
        let interest = Interest::interceptor(Directions::SERVER_TO_CLIENT)
            .methods(["tools/list"])
            .priority(100)
            .budget_ms(250)
            .lossless(true);
        let back = interest.clone().into_abi().into_ref().get();
        assert_eq!(Interest::from_abi(&back), interest);
        assert!(back.wants(Direction::Response, MessageKind::RESPONSE, "tools/list"));
        assert!(!back.wants(Direction::Request, MessageKind::REQUEST, "tools/list"));
        assert_eq!(back.budget_us, 250_000);
    }

    #[test]
    fn session_info_ignores_what_it_does_not_know() {
        let info = SessionInfo::parse(
            r#"{"session_id":"s1","command":["srv","--x"],"cwd":"/w","km_version":"0.1.0","new":1}"#,
        );
        assert_eq!(info.session_id, "s1");
        assert_eq!(info.command, ["srv", "--x"]);
        assert_eq!(SessionInfo::parse("garbage"), SessionInfo::default());
    }

    #[test]
    fn servers_are_named_by_their_command_without_its_secrets() {
        let info = SessionInfo {
            command: [
                "/usr/bin/node",
                "--inspect",
                "/srv/mcp/index.js",
                "--token",
                "s3cr3t",
            ]
            .map(String::from)
            .to_vec(),
            ..SessionInfo::default()
        };
        assert_eq!(info.server_label(), "node index.js");
        assert_eq!(info.server_id().len(), 16);
        assert_eq!(info.server_id(), server_id(&info.command));
        assert_ne!(info.server_id(), server_id(&["node".to_owned()]));
        assert!(!info.server_label().contains("s3cr3t"));
        assert_eq!(server_label(&[]), "unknown");
    }
}
