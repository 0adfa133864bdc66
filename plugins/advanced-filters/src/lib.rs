//! advanced-filters (Pro tier): secrets, personal data and tool poisoning, found in MCP
//! messages on the path and logged, redacted or blocked by policy, in both directions.
//!
//! - **Detection** is km-detect's: every JSON string and key of a line, decoded, JSON nested in
//!   strings, strings split into fragments; 187 rules.
//! - **Policy** (`KM_HOME/policies/advanced-filters.toml`, [`policy`]) gives each finding an
//!   action: `allow`, `log`, `redact` or `block`, by category, rule, server, tool, method,
//!   direction, JSON path and value (keyed hashes and patterns, never values in clear).
//! - **On the wire** ([`filter`]): a line without findings passes byte for byte (the plugin
//!   answers "pass"; km forwards the bytes it read); `redact` replaces only the matched bytes of
//!   their JSON strings with a marker and the line stays valid JSON; `block` stops the line (km
//!   answers a request with an error carrying its id); `log` leaves it alone.
//! - **Risk** ([`risk`]) per message and per session, from the findings and the tools'
//!   annotations learned from `tools/list`: an open-world tool called after secrets or personal
//!   data reached the client is flagged, and can be blocked.
//! - **Reports** ([`report`]): every finding goes to km's log and, as a `finding` event, to the
//!   other plugins, in every mode; never the matched value, at most its keyed hash.
//! - **Commands** ([`command`]): `km plugin advanced-filters rules | check | hash | policy`.
//!
//! Without a valid Pro subscription it passes every line untouched without looking at it (the
//! SDK's [`Subscription`] tells `km plugin-status` why). While the first authentication of a
//! session is still under way, the first lines wait for its answer (at most [`AUTH_WAIT`] in
//! all); if none has come by then, lines are judged by the policy until it comes: a security
//! filter errs on the side of protecting the data, and the wait is long enough for any
//! reachable API.
//!
//! Policy errors fail closed: a policy that does not parse is reported in km's log and by
//! `km plugin advanced-filters policy`, and until it is fixed every finding blocks its line.

#![deny(unsafe_code)]

mod command;
mod filter;
mod glob;
mod key;
mod policy;
mod report;
mod risk;

pub mod eval;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{
    AuthResponse, CommandOutput, Direction, Directions, Host, InterceptContext, Interest, KindSet,
    Message, MessageKind, Plugin, PluginConfig, PluginError, SessionInfo, Subscription, Tier,
    Verdict, VerdictAction,
};

use crate::filter::{Filter, Judgement, Outcome};
use crate::policy::{PolicyError, ServerNames, Subject};
use crate::report::Place;
use crate::risk::{RiskPolicy, Session};

km_plugin_sdk::credentials_region!();

const NAME: &str = "advanced-filters";

/// How long the first lines of a session wait for the first authentication, in all.
pub const AUTH_WAIT: Duration = Duration::from_secs(5);

/// The time budget the plugin asks per line: well above what scanning the longest line it
/// inspects costs on a loaded machine, and above [`AUTH_WAIT`].
const BUDGET_MS: u64 = 10_000;

/// Whether the subscription allows full features, without a lock per line.
struct Gate {
    /// Until when (seconds since the epoch) the last authentication grants Pro; 0: it does not.
    active_until: AtomicI64,
    /// Whether an authentication has answered in this process.
    decided: AtomicBool,
    wait: (Mutex<()>, Condvar),
    /// Until when lines wait for the first answer: [`AUTH_WAIT`] after the first line that
    /// found none, once per process (a slow or unreachable API delays the start of a session,
    /// not every line of it).
    wait_until: OnceLock<Instant>,
}

/// The policy in force, and what was wrong with the file if it was.
struct Engine {
    filter: Filter,
    policy_error: Option<PolicyError>,
    policy_found: bool,
    /// The team policy in force, for people: `team acme version 7`.
    team: Option<String>,
    /// What was refused about the team's policy (the last verified one stays in force).
    team_problems: Vec<String>,
    risk: RiskPolicy,
}

/// The session's names and state.
#[derive(Default)]
struct SessionNames {
    id: String,
    server: ServerNames,
}

/// The plugin.
pub struct AdvancedFilters {
    host: Host,
    subscription: Subscription,
    gate: Gate,
    engine: OnceLock<Engine>,
    names: OnceLock<SessionNames>,
    session: Mutex<Session>,
}

/// Reads the policies through `host` and compiles them ([`policy::load`]), with the
/// installation's key; reports problems in km's log.
fn load_engine(host: &Host, data_dir: &std::path::Path) -> Engine {
    let key = match key::load_or_create(data_dir) {
        Ok(key) => Some(key),
        Err(e) => {
            host.warn(&format!(
                "no fingerprint key ({e}): findings carry no keyed hash and keyed allowlist entries cannot match"
            ));
            None
        }
    };
    let detector = km_detect::Detector::new();
    let loaded = policy::load(host, &detector);
    if let Some(e) = &loaded.error {
        host.log(
            km_plugin_sdk::LogLevel::Error,
            &format!("{e}; until it is fixed, every finding blocks its message"),
        );
    }
    for p in &loaded.team_problems {
        host.warn(p);
    }
    let layers = loaded.layers;
    let risk = RiskPolicy {
        flag_at: layers.flag_at(),
        block_calls_at: layers.block_calls_at(),
        block_exfiltration: layers.blocks_exfiltration(),
    };
    Engine {
        filter: Filter::new(layers, key.as_deref()),
        policy_error: loaded.error,
        policy_found: loaded.found,
        team: loaded.team,
        team_problems: loaded.team_problems,
        risk,
    }
}

impl AdvancedFilters {
    fn engine(&self) -> &Engine {
        self.engine
            .get_or_init(|| load_engine(&self.host, &self.host.data_dir()))
    }

    /// Whether full features are on for this line (waits for the first authentication).
    fn active(&self) -> bool {
        let now = now_unix();
        if now < self.gate.active_until.load(Ordering::Acquire) {
            return true;
        }
        if self.gate.decided.load(Ordering::Acquire) {
            return false;
        }
        let (lock, cv) = &self.gate.wait;
        let deadline = *self
            .gate
            .wait_until
            .get_or_init(|| Instant::now() + AUTH_WAIT);
        let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.gate.decided.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // No answer yet: judge the line (see the crate documentation).
                return true;
            }
            guard = cv
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(guard);
        now_unix() < self.gate.active_until.load(Ordering::Acquire)
    }

    fn judge(&self, message: &Message<'_>, context: &InterceptContext<'_>) -> Verdict {
        let engine = self.engine();
        let names = self.names.get_or_init(SessionNames::default);
        let request = message.direction == Direction::Request;
        let method = context.request_method.as_str();
        let tool = context.target.as_str();
        let subject = Subject {
            server: &names.server,
            tool,
            method,
            request,
        };
        let line = message.bytes();
        let judgement = engine.filter.judge(line, &subject);
        let is_list = !request && method == "tools/list" && message.kind == MessageKind::RESPONSE;
        let is_call = request
            && message.kind == MessageKind::REQUEST
            && message.method.as_str() == "tools/call";
        if judgement.findings.is_empty() && judgement.incomplete.is_none() && !is_list && !is_call {
            return Verdict::pass();
        }
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if is_list {
            session.learn_tools(line);
        }
        let call = is_call.then(|| session.call(tool, &engine.risk));
        let (message_risk, notices) = session.record(
            &judgement,
            !request,
            call.as_ref().map(|c| (tool, c)),
            &engine.risk,
        );
        let session_risk = session.score();
        drop(session);
        let correlation = message.correlation_id.as_str();
        let place = Place {
            direction: message.direction.as_str(),
            kind: message.kind.as_str(),
            method,
            tool,
            id: message.id.as_str(),
            correlation_id: correlation,
            batch_index: context.batch_index.into_option(),
            session_id: &names.id,
            server: &names.server.label,
            server_id: &names.server.id,
        };
        self.tell(&judgement, &place, message_risk, session_risk);
        for n in &notices {
            let (event, line) = report::notice(n, &place, session_risk);
            self.host.warn(&line);
            // Best effort: an event km cannot take (an older km, a full bus) is not a reason to
            // change what happens to the line.
            let _ = self.host.emit("risk", &event);
        }
        if let Some((rule, reason)) = call.and_then(|c| c.block) {
            return Verdict::block(&[rule], &reason);
        }
        verdict(judgement.outcome)
    }

    fn tell(&self, judgement: &Judgement, place: &Place<'_>, message_risk: u32, session_risk: u32) {
        let mut lines = 0;
        let mut more = 0;
        for j in judgement.reported() {
            if lines < report::MAX_LOG_LINES {
                let line = report::finding_line(j, place);
                if report::is_warning(j) {
                    self.host.warn(&line);
                } else {
                    self.host.info(&line);
                }
                lines += 1;
            } else {
                more += 1;
            }
            let _ = self.host.emit(
                "finding",
                &report::finding_event(j, place, message_risk, session_risk),
            );
        }
        if more > 0 {
            self.host
                .info(&format!("… and {more} more findings in the same message"));
        }
        for j in judgement
            .findings
            .iter()
            .filter(|j| j.action == policy::Action::Allow)
        {
            self.host.debug(&format!(
                "allowed by policy: {} {} at {}",
                j.finding.category, j.finding.rule, j.finding.path
            ));
        }
        if let Some(why) = &judgement.incomplete {
            self.host.warn(&format!(
                "{}: {why} ({} {})",
                if matches!(judgement.outcome, Outcome::Block { .. }) {
                    "blocked"
                } else {
                    "passed uninspected"
                },
                place.direction,
                place.method
            ));
        }
    }
}

fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Pass => Verdict::pass(),
        Outcome::Replace { line, rules } => {
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            Verdict::replace(line, &rules)
        }
        Outcome::Block { rules, reason } => {
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            Verdict::block(&rules, &reason)
        }
    }
}

impl Plugin for AdvancedFilters {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Pro;

    fn new(host: Host) -> Result<Self, PluginError> {
        let subscription = Subscription::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            Tier::Pro,
            km_credentials_region(),
        );
        subscription.cache_in(host.data_dir());
        // Nothing else yet: `km plugin-refresh` makes the plugin only to authenticate it.
        Ok(AdvancedFilters {
            host,
            subscription,
            gate: Gate {
                active_until: AtomicI64::new(0),
                decided: AtomicBool::new(false),
                wait: (Mutex::new(()), Condvar::new()),
                wait_until: OnceLock::new(),
            },
            engine: OnceLock::new(),
            names: OnceLock::new(),
            session: Mutex::new(Session::default()),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginError> {
        let response = self.subscription.authenticate(&self.host, api_key);
        let until = self
            .subscription
            .current(now_unix())
            .map_or(0, |claims| claims.expires_at);
        self.gate.active_until.store(until, Ordering::Release);
        let (lock, cv) = &self.gate.wait;
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.gate.decided.store(true, Ordering::Release);
        drop(guard);
        cv.notify_all();
        Ok(response)
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let dir = std::path::PathBuf::from(config.data_dir.as_str());
        let _ = self.engine.set(load_engine(&self.host, &dir));
        Ok(())
    }

    fn interest(&self) -> Interest {
        // Lines longer than km inspects never reach the plugin: km applies this answer to them,
        // asked once at start, before the subscription is known (see the README).
        let oversize = if self.engine().filter.layers().blocks_uninspectable() {
            VerdictAction::BLOCK
        } else {
            VerdictAction::PASS
        };
        Interest::interceptor(Directions::BOTH)
            .kinds(KindSet::ALL)
            .priority(500)
            .budget_ms(BUDGET_MS)
            .max_line(0, oversize)
    }

    fn begin_session(&self, session: &SessionInfo) -> Result<(), PluginError> {
        let _ = self.names.set(SessionNames {
            id: session.session_id.clone(),
            server: ServerNames {
                label: session.server_label(),
                id: session.server_id(),
                command: session.command.join(" "),
            },
        });
        Ok(())
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        if !self.active() {
            // Free behaviour: every line passes untouched, unread.
            return Ok(Verdict::pass());
        }
        Ok(self.judge(message, context))
    }

    fn command_help(&self) -> Option<String> {
        Some(command::HELP.to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        let engine = self.engine();
        let now = now_unix();
        let subscription = command::SubscriptionView {
            active: now < self.gate.active_until.load(Ordering::Acquire),
            decided: self.gate.decided.load(Ordering::Acquire),
        };
        Ok(command::run(
            args,
            &command::Context {
                host: &self.host,
                filter: &engine.filter,
                policy_error: engine.policy_error.as_ref(),
                policy_found: engine.policy_found,
                team: engine.team.as_deref(),
                team_problems: &engine.team_problems,
                subscription,
            },
        ))
    }
}

km_plugin_sdk::export_plugin!(AdvancedFilters);
