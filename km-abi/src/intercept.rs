//! What ABI 1.1 adds for plugins that act: their interest (what to intercept, how to be fed),
//! verdicts on intercepted lines, and the output of plugin commands.
//!
//! Growth: every value that may gain cases is an open integer newtype ([`VerdictAction`],
//! [`Directions`], [`KindSet`]), and the interest is a prefix type ([`Interest`], passed as
//! [`InterestRef`]) so that later versions append fields to it. A [`Verdict`] is a plain struct
//! that will not change: a later ABI that needs more from a verdict adds a method returning a new
//! type, as COM does, rather than a field abi_stable's layout check would refuse.

// abi_stable's `StableAbi` derive expands to `unsafe impl`s of its own; this module writes none
// by hand.
#![allow(unsafe_code)]

use std::fmt;

use abi_stable::prefix_type::{PrefixTypeTrait, WithMetadata};
use abi_stable::std_types::{ROption, RSlice, RStr, RString, RVec};
use abi_stable::{staticref, StableAbi};

use crate::types::{Direction, MessageKind};

/// A set of directions. An open bit set: bits km does not know are ignored.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Directions(pub u32);

impl Directions {
    /// Neither direction.
    pub const NONE: Directions = Directions(0);
    /// Client to server ([`Direction::Request`]).
    pub const CLIENT_TO_SERVER: Directions = Directions(1);
    /// Server to client ([`Direction::Response`]).
    pub const SERVER_TO_CLIENT: Directions = Directions(2);
    /// Both directions.
    pub const BOTH: Directions = Directions(3);

    /// The set holding only `direction`.
    pub const fn of(direction: Direction) -> Directions {
        match direction {
            Direction::Request => Self::CLIENT_TO_SERVER,
            Direction::Response => Self::SERVER_TO_CLIENT,
        }
    }

    /// Whether `direction` is in the set.
    pub const fn contains(self, direction: Direction) -> bool {
        self.0 & Self::of(direction).0 != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 & Self::BOTH.0 == 0
    }
}

impl fmt::Debug for Directions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match (
            self.contains(Direction::Request),
            self.contains(Direction::Response),
        ) {
            (true, true) => "both",
            (true, false) => "client-to-server",
            (false, true) => "server-to-client",
            (false, false) => "none",
        };
        f.write_str(text)
    }
}

/// A set of [`MessageKind`]s: bit `1 << kind` for each kind. [`KindSet::ALL`] also holds every
/// kind a later km may add; a set built from named kinds holds only those.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KindSet(pub u32);

impl KindSet {
    /// No kind.
    pub const NONE: KindSet = KindSet(0);
    /// Every kind, including kinds not yet defined.
    pub const ALL: KindSet = KindSet(u32::MAX);
    /// Requests, responses and notifications: what JSON-RPC filters usually want.
    pub const JSON_RPC: KindSet = KindSet(
        Self::bit(MessageKind::REQUEST)
            | Self::bit(MessageKind::RESPONSE)
            | Self::bit(MessageKind::NOTIFICATION),
    );

    const fn bit(kind: MessageKind) -> u32 {
        if kind.0 < 31 {
            1 << kind.0
        } else {
            1 << 31
        }
    }

    /// The set holding only `kind`.
    pub const fn of(kind: MessageKind) -> KindSet {
        KindSet(Self::bit(kind))
    }

    /// The set with `kind` added.
    pub const fn with(self, kind: MessageKind) -> KindSet {
        KindSet(self.0 | Self::bit(kind))
    }

    /// Whether `kind` is in the set (kinds numbered 31 and above share the top bit).
    pub const fn contains(self, kind: MessageKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            return f.write_str("all");
        }
        let kinds = [
            MessageKind::REQUEST,
            MessageKind::RESPONSE,
            MessageKind::NOTIFICATION,
            MessageKind::BATCH,
            MessageKind::NON_JSON,
        ];
        let mut list = f.debug_list();
        for kind in kinds.into_iter().filter(|k| self.contains(*k)) {
            list.entry(&kind);
        }
        list.finish()
    }
}

/// What a plugin decided about an intercepted line. An open set: km treats a value it does not
/// know as [`VerdictAction::BLOCK`], so a newer plugin's new action can never let a line through
/// that its author meant to stop.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerdictAction(pub u32);

impl VerdictAction {
    /// Forward the line as it is.
    pub const PASS: VerdictAction = VerdictAction(0);
    /// Forward [`Verdict::data`] instead of the line (one line; km keeps the original ending).
    pub const REPLACE: VerdictAction = VerdictAction(1);
    /// Do not forward the line. A request is answered with a JSON-RPC error carrying its id,
    /// sent back to the side that sent it; a response is replaced by an error response for its
    /// id; a notification is dropped.
    pub const BLOCK: VerdictAction = VerdictAction(2);

    /// A lower-case name for logs and events (`block` for values km does not know).
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            0 => "pass",
            1 => "replace",
            _ => "block",
        }
    }

    /// The action km carries out: an unknown value is [`VerdictAction::BLOCK`].
    pub const fn effective(self) -> VerdictAction {
        match self.0 {
            0 | 1 => self,
            _ => Self::BLOCK,
        }
    }
}

impl fmt::Debug for VerdictAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for VerdictAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin's decision about one intercepted line.
///
/// `reason` and `rules` end up in the JSON-RPC error a blocked peer receives, in km's log and in
/// verdict events: they name what fired, never what it matched. Keep secrets out of them.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub action: VerdictAction,
    /// For [`VerdictAction::REPLACE`]: the new line, without a line ending.
    pub data: RVec<u8>,
    /// Stable ids of the rules that decided (for example `aws-access-key-id`); may be empty.
    pub rules: RVec<RString>,
    /// A short reason for people (for example `a secret was found`), without matched content.
    pub reason: RString,
}

impl Verdict {
    /// Forward the line unchanged.
    pub fn pass() -> Self {
        Verdict {
            action: VerdictAction::PASS,
            data: RVec::new(),
            rules: RVec::new(),
            reason: RString::new(),
        }
    }

    /// Forward `line` instead (without its line ending), because of `rules`.
    pub fn replace(line: Vec<u8>, rules: &[&str]) -> Self {
        Verdict {
            action: VerdictAction::REPLACE,
            data: line.into(),
            rules: rules.iter().map(|r| RString::from(*r)).collect(),
            reason: RString::new(),
        }
    }

    /// Stop the line, because of `rules`, for `reason`.
    pub fn block(rules: &[&str], reason: &str) -> Self {
        Verdict {
            action: VerdictAction::BLOCK,
            data: RVec::new(),
            rules: rules.iter().map(|r| RString::from(*r)).collect(),
            reason: RString::from(reason),
        }
    }
}

// Debug without the replacement bytes: they may be a redacted copy of a secret-bearing line, and
// a verdict is the kind of value that ends up in a log.
impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verdict")
            .field("action", &self.action)
            .field("data_len", &self.data.len())
            .field("rules", &self.rules)
            .field("reason", &self.reason)
            .finish()
    }
}

/// What a plugin wants from km: asked once, after `initialize`. A prefix type: later ABI versions
/// append fields after [`Interest::max_line_bytes`], and km reads those it finds missing in an
/// older plugin's answer as their documented defaults.
///
/// A plugin only intercepts when its signed manifest grants the `intercept` capability; km never
/// asks one without it, whatever it answers here.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
#[sabi(kind(Prefix(prefix_ref = InterestRef, prefix_fields = InterestPrefix)))]
#[sabi(missing_field(default))]
pub struct Interest {
    /// The directions whose lines the plugin intercepts; [`Directions::NONE`] for an observer.
    pub intercept: Directions,
    /// The kinds of lines it intercepts. A response's kind is [`MessageKind::RESPONSE`].
    pub kinds: KindSet,
    /// The methods it intercepts; empty for every method. A response matches the method of the
    /// request it answers; a line without a method (and no request) matches only an empty list.
    pub methods: RSlice<'static, RStr<'static>>,
    /// The methods whose responses it intercepts, when that differs from `methods` (a guard
    /// judging `tools/call` requests and `tools/list` results, not `tools/call` results); empty
    /// for the same as `methods`.
    pub response_methods: RSlice<'static, RStr<'static>>,
    /// Its default place in the chain of interceptors: lower runs first (`config.toml` may
    /// override it). Guards that pin what a server sent use about 100, content filters 500.
    pub priority: i32,
    /// How long one `intercept` call may take, in microseconds; 0 for km's default. Past it the
    /// line is blocked and the plugin disabled for the session (fail closed).
    pub budget_us: u64,
    /// Whether the plugin wants `handle_message` for the lines km forwards (and stream events).
    pub observe: bool,
    /// Whether no observed message may be dropped for it: its queue applies back-pressure to the
    /// relay instead (or, where configuration refuses that, it receives a gap event).
    pub lossless: bool,
    /// The longest line it inspects, in bytes; 0 for km's limit. A longer line on a direction it
    /// intercepts gets `oversize`.
    pub max_line_bytes: u64,
    /// What happens to a line longer than it inspects: [`VerdictAction::BLOCK`] (fail closed)
    /// or [`VerdictAction::PASS`].
    #[sabi(last_prefix_field)]
    pub oversize: VerdictAction,
}

impl Default for VerdictAction {
    /// [`VerdictAction::BLOCK`]: the fail-closed choice.
    fn default() -> Self {
        Self::BLOCK
    }
}

impl Interest {
    /// What a plugin built on ABI 1.0 gets: it observes every line, intercepts nothing, and may
    /// lose messages when it falls behind.
    pub const OBSERVER: Interest = Interest {
        intercept: Directions::NONE,
        kinds: KindSet::ALL,
        methods: RSlice::from_slice(&[]),
        response_methods: RSlice::from_slice(&[]),
        priority: 1000,
        budget_us: 0,
        observe: true,
        lossless: false,
        max_line_bytes: 0,
        oversize: VerdictAction::BLOCK,
    };

    /// Whether a line of `direction` and `kind`, for `method` (a response: its request's
    /// method), is one this plugin intercepts.
    pub fn wants(&self, direction: Direction, kind: MessageKind, method: &str) -> bool {
        let methods = if kind == MessageKind::RESPONSE && !self.response_methods.is_empty() {
            &self.response_methods
        } else {
            &self.methods
        };
        self.intercept.contains(direction)
            && self.kinds.contains(kind)
            && (methods.is_empty() || methods.iter().any(|m| m.as_str() == method))
    }

    /// Hands the interest to km. The value is leaked: it is asked for once per load, and its
    /// method names must live as long as the library.
    pub fn into_ref(self) -> InterestRef {
        self.leak_into_prefix()
    }
}

impl Interest {
    staticref! {
        const OBSERVER_WM: WithMetadata<Interest> = WithMetadata::new(Interest::OBSERVER);
    }
}

impl InterestRef {
    /// [`Interest::OBSERVER`], without allocating: what km answers for an ABI 1.0 plugin.
    pub const OBSERVER: InterestRef = InterestRef(Interest::OBSERVER_WM.as_prefix());

    /// The interest as a plain value, with fields an older plugin did not have at their defaults.
    pub fn get(self) -> Interest {
        Interest {
            intercept: self.intercept(),
            kinds: self.kinds(),
            methods: self.methods(),
            response_methods: self.response_methods(),
            priority: self.priority(),
            budget_us: self.budget_us(),
            observe: self.observe(),
            lossless: self.lossless(),
            max_line_bytes: self.max_line_bytes(),
            oversize: self.oversize(),
        }
    }
}

impl fmt::Debug for InterestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// What km knows about an intercepted line beyond the line itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct InterceptContext<'a> {
    /// The method of the request this line belongs to: the line's own for a request or a
    /// notification; for a response, the method of the request it answers (empty when km has not
    /// seen that request).
    pub request_method: RStr<'a>,
    /// What the request acts on: the tool name of `tools/call`, the prompt name of `prompts/get`,
    /// the URI of `resources/read` (and of their responses); empty otherwise.
    pub target: RStr<'a>,
    /// For an element of a JSON-RPC batch: its index in the batch array.
    pub batch_index: ROption<u32>,
    /// The session this line belongs to (the `session_id` of `begin_session`).
    pub session_id: RStr<'a>,
}

/// What a plugin command (`km plugin NAME ARGS...`) produced. km writes `stdout` to its standard
/// output, `stderr` to its standard error, and exits with `exit_code` (clamped to 0..=255).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status: 0 success, 1 "the check said no", 2 usage or other errors, by km's
    /// convention.
    pub exit_code: i32,
    /// Bytes for standard output.
    pub stdout: RVec<u8>,
    /// Bytes for standard error.
    pub stderr: RVec<u8>,
}

impl CommandOutput {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        CommandOutput {
            exit_code: 0,
            stdout: stdout.into().into(),
            stderr: RVec::new(),
        }
    }

    /// Exit `code` with `stderr`.
    pub fn failed(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        CommandOutput {
            exit_code: code,
            stdout: RVec::new(),
            stderr: stderr.into().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_verdict_actions_block() {
        assert_eq!(VerdictAction(7).effective(), VerdictAction::BLOCK);
        assert_eq!(VerdictAction(7).as_str(), "block");
        assert_eq!(VerdictAction::PASS.effective(), VerdictAction::PASS);
        assert_eq!(VerdictAction::REPLACE.effective(), VerdictAction::REPLACE);
    }

    #[test]
    fn kind_sets_and_directions() {
        assert!(KindSet::ALL.contains(MessageKind(77)));
        assert!(!KindSet::JSON_RPC.contains(MessageKind::NON_JSON));
        assert!(KindSet::JSON_RPC.contains(MessageKind::RESPONSE));
        assert!(KindSet::of(MessageKind::BATCH).contains(MessageKind::BATCH));
        assert!(Directions::BOTH.contains(Direction::Request));
        assert!(!Directions::SERVER_TO_CLIENT.contains(Direction::Request));
        assert!(Directions(4).is_empty());
    }

    #[test]
    fn interest_round_trips_through_its_prefix_ref() {
        static METHODS: [RStr<'static>; 2] =
            [RStr::from_str("tools/call"), RStr::from_str("tools/list")];
        let interest = Interest {
            intercept: Directions::BOTH,
            kinds: KindSet::JSON_RPC,
            methods: RSlice::from_slice(&METHODS),
            response_methods: RSlice::from_slice(&METHODS[1..]),
            priority: 100,
            budget_us: 5_000,
            observe: false,
            lossless: true,
            max_line_bytes: 1 << 20,
            oversize: VerdictAction::PASS,
        }
        .into_ref()
        .get();
        assert!(interest.wants(Direction::Response, MessageKind::RESPONSE, "tools/list"));
        assert!(interest.wants(Direction::Request, MessageKind::REQUEST, "tools/call"));
        assert!(
            !interest.wants(Direction::Response, MessageKind::RESPONSE, "tools/call"),
            "responses match response_methods"
        );
        assert!(!interest.wants(Direction::Request, MessageKind::REQUEST, "ping"));
        assert_eq!(interest.priority, 100);
        assert!(interest.lossless && !interest.observe);
        let observer = InterestRef::OBSERVER.get();
        assert!(observer.intercept.is_empty() && observer.observe && !observer.lossless);
    }

    #[test]
    fn verdict_debug_hides_the_replacement() {
        let verdict = Verdict::replace(b"{\"secret\":\"hunter2\"}".to_vec(), &["password"]);
        let text = format!("{verdict:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password"));
    }
}
