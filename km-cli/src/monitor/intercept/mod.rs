//! Acting on the path (ABI 1.1): the chain of interceptors a line passes before it is forwarded.
//!
//! A plugin intercepts only when its signed manifest grants the `intercept` capability and its
//! [`Interest`] asks for a direction; the chain holds those plugins in order of priority (the
//! plugin's default, overridable in `config.toml`), then name. Each interceptor that wants a line
//! (direction, kind, and method: for a response, its request's) sees the previous one's output.
//!
//! Verdicts: pass; replace (one line; km keeps the original ending); block. What km does with a
//! block is in [`reply`]. Fail closed: an interceptor that errs, panics, returns an unknown
//! action, a replacement that is not one line, or overruns its time budget blocks that line and
//! is disabled for the session; from then on every line it asked for is blocked, so that one slow
//! line cannot switch a filter off. A manifest or `config.toml` may opt a plugin into failing
//! open instead (its lines then pass it by). A line longer than an interceptor inspects gets that
//! interceptor's `oversize` action, blocked by default.
//!
//! The time budget is enforced without a thread hop on the path: the pump calls the plugin
//! itself, after leaving its whole state with a [`baton::Baton`]; a watchdog thread that finds a
//! call past its deadline takes that state and carries on the pump on a new thread, leaving the
//! stuck call behind ([`baton`]). The pump ([`pump`]) is written so that it can be resumed
//! between any two interceptor calls.

pub(crate) mod baton;
pub(crate) mod pump;
pub(crate) mod reply;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use km_abi::{Direction, Directions, Interest, MessageKind, VerdictAction};

use crate::gateway::LoadedPlugin;

/// km's inspection limit when `config.toml` does not set one: lines longer than this on an
/// intercepted direction are not inspected but get the interceptors' `oversize` action.
pub(crate) const DEFAULT_INSPECT_LIMIT: usize = 16 * 1024 * 1024;

/// The budget of an interceptor that names none.
pub(crate) const DEFAULT_BUDGET: Duration = Duration::from_secs(1);

/// Budgets are kept within these bounds, whatever a plugin or the configuration asks.
const MIN_BUDGET: Duration = Duration::from_millis(1);
const MAX_BUDGET: Duration = Duration::from_secs(60);

/// How one interceptor is set up: what the plugin asked, and what `config.toml` overrode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) priority: Option<i32>,
    pub(crate) budget: Option<Duration>,
    pub(crate) fail_open: Option<bool>,
}

/// One plugin in the chain.
#[derive(Debug)]
pub(crate) struct Interceptor {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) interest: Interest,
    pub(crate) priority: i32,
    pub(crate) budget: Duration,
    /// Let lines through (instead of blocking them) once the plugin failed.
    pub(crate) fail_open: bool,
    /// The longest line it inspects.
    pub(crate) max_line: usize,
    /// Set once it failed: it is not called again this session.
    disabled: AtomicBool,
}

impl Interceptor {
    /// Whether it wants a line of `direction` and `kind` whose (request's) method is `method`.
    pub(crate) fn wants(&self, direction: Direction, kind: MessageKind, method: &str) -> bool {
        self.interest.wants(direction, kind, method)
    }

    /// Whether it failed earlier in the session.
    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Disables it; `true` the first time (so that its failure is reported once).
    pub(crate) fn disable(&self) -> bool {
        !self.disabled.swap(true, Ordering::Relaxed)
    }

    /// What it does with a line longer than it inspects: block unless it said pass.
    pub(crate) fn oversize(&self) -> VerdictAction {
        match self.interest.oversize.effective() {
            VerdictAction::PASS => VerdictAction::PASS,
            _ => VerdictAction::BLOCK,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.plugin.name()
    }
}

/// The interceptors of a session, in the order they run.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    interceptors: Vec<Interceptor>,
    /// km's inspection limit.
    limit: usize,
}

impl Chain {
    /// The chain of `plugins` that may and want to intercept, ordered; `limit` is km's
    /// inspection limit. `overrides` gives each plugin's configured overrides.
    pub(crate) fn new(
        plugins: Vec<(Arc<LoadedPlugin>, Interest, Overrides)>,
        limit: usize,
    ) -> Self {
        let limit = limit.max(1);
        let mut interceptors: Vec<Interceptor> = plugins
            .into_iter()
            .filter(|(_, interest, _)| !interest.intercept.is_empty())
            .map(|(plugin, interest, overrides)| {
                let asked = Duration::from_micros(interest.budget_us);
                let budget = overrides
                    .budget
                    .unwrap_or(if asked.is_zero() {
                        DEFAULT_BUDGET
                    } else {
                        asked
                    })
                    .clamp(MIN_BUDGET, MAX_BUDGET);
                let max_line = match usize::try_from(interest.max_line_bytes) {
                    Ok(0) | Err(_) => limit,
                    Ok(n) => n.min(limit),
                };
                Interceptor {
                    fail_open: overrides.fail_open.unwrap_or(false) || plugin.fail_open(),
                    priority: overrides.priority.unwrap_or(interest.priority),
                    plugin,
                    interest,
                    budget,
                    max_line,
                    disabled: AtomicBool::new(false),
                }
            })
            .collect();
        interceptors
            .sort_by(|a, b| (a.priority, a.plugin.name()).cmp(&(b.priority, b.plugin.name())));
        Chain {
            interceptors,
            limit,
        }
    }

    /// Whether no plugin intercepts anything.
    pub(crate) fn is_empty(&self) -> bool {
        self.interceptors.is_empty()
    }

    /// The directions some interceptor asked for.
    pub(crate) fn directions(&self) -> Directions {
        Directions(
            self.interceptors
                .iter()
                .fold(0, |all, i| all | i.interest.intercept.0),
        )
    }

    /// Whether some interceptor asked for `direction`.
    pub(crate) fn intercepts(&self, direction: Direction) -> bool {
        self.directions().contains(direction)
    }

    /// The interceptors, in order.
    pub(crate) fn interceptors(&self) -> &[Interceptor] {
        &self.interceptors
    }

    /// km's inspection limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether any interceptor wants this line.
    pub(crate) fn any_wants(&self, direction: Direction, kind: MessageKind, method: &str) -> bool {
        self.interceptors
            .iter()
            .any(|i| i.wants(direction, kind, method))
    }

    /// The shortest budget, for the watchdog's tick.
    pub(crate) fn shortest_budget(&self) -> Option<Duration> {
        self.interceptors.iter().map(|i| i.budget).min()
    }
}
