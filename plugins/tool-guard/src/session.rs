//! One `km monitor` session as tool-guard follows it: what the server advertised, what is held,
//! and the verdicts on the lines tool-guard intercepts.
//!
//! - the `initialize` result: its `serverInfo` is recorded with the pins;
//! - a list request: whether it asks for a later page (`cursor`), so that a removal is only
//!   reported once the whole list was seen;
//! - a list result: checked ([`crate::guard`]) under the server's lock; held definitions are
//!   taken out of the line (replace), other lines pass byte for byte;
//! - `tools/call` and `prompts/get`: blocked when they use a held definition (the server never
//!   sees them), reported (or blocked, by policy) when they use one this session never listed;
//! - `notifications/*/list_changed`: noted; the list the client fetches next is checked like
//!   every list.
//!
//! Fail closed: when the server's pin file is corrupt, or the policy invalid, its lists and
//! calls are blocked with an error naming the file, and nothing is written.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use km_plugin_sdk::{Host, LogLevel, Message, SessionInfo, Verdict};
use serde_json::Value;

use crate::definition::{Definition, Kind};
use crate::events::{self, Server};
use crate::guard::{self, Context, Found, Hold, Report};
use crate::list::ListResult;
use crate::poison::Scanner;
use crate::policy::{Action, Policy, ServerNames, Situation};
use crate::store::{ServerPins, Store};
use crate::Error;

/// How long a list check waits for another session (or a command) holding the server's lock.
const LOCK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Now, RFC 3339 to the second.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What tool-guard knows of the session.
#[derive(Debug, Default)]
pub(crate) struct Session {
    session_id: String,
    server_id: String,
    label: String,
    command: Vec<String>,
    /// Whether the server had no pin file when the session began.
    first_session: bool,
    server_info: Option<Value>,
    /// Why every list and call is blocked (corrupt pins, invalid policy).
    broken: Option<(&'static str, String)>,
    /// The policy in force, from the last list check (or the session's start).
    policy: Policy,
    /// What the client was shown in this session.
    advertised: HashSet<(Kind, String)>,
    /// What is held, and why.
    held: HashMap<(Kind, String), Hold>,
    /// For each list request in flight (by correlation id): whether it asks for a later page.
    cursors: HashMap<String, bool>,
    /// The names seen so far of a list that comes in pages.
    pages: HashMap<Kind, HashSet<String>>,
    /// Findings and notes already reported in this session.
    reported: HashSet<String>,
}

impl Session {
    /// A session of the server `info` describes, with what the pin file says.
    pub(crate) fn begin(info: &SessionInfo, host: &Host, store: &Store) -> Session {
        let mut session = Session {
            session_id: info.session_id.clone(),
            server_id: info.server_id(),
            label: info.server_label(),
            command: info.command.clone(),
            ..Session::default()
        };
        match store.read(&session.server_id) {
            Ok(None) => session.first_session = true,
            Ok(Some(pins)) => {
                session.server_info.clone_from(&pins.server.server_info);
                session.held = held_of(&pins);
                host.debug(&format!(
                    "server {} ({}): {} definitions pinned, {} held",
                    session.label,
                    session.server_id,
                    pins.all().filter(|(_, _, p)| p.trusted.is_some()).count(),
                    session.held.len()
                ));
            }
            Err(e) => session.break_with(host, "pins-unreadable", e.to_string()),
        }
        match Policy::load(host) {
            Ok(policy) => session.policy = policy,
            Err(e) => session.break_with(host, "policy-invalid", format!("tool-guard's {e}")),
        }
        session
    }

    fn break_with(&mut self, host: &Host, rule: &'static str, reason: String) {
        host.log(
            LogLevel::Error,
            &format!(
                "{reason}; server {} ({}): its lists and calls are blocked",
                self.label, self.server_id
            ),
        );
        self.broken = Some((rule, reason));
    }

    fn server(&self) -> Server<'_> {
        Server {
            id: &self.server_id,
            label: &self.label,
            info_name: self
                .server_info
                .as_ref()
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str),
            session_id: &self.session_id,
        }
    }

    fn names(&self) -> ServerNames<'_> {
        ServerNames {
            id: &self.server_id,
            label: &self.label,
            info_name: self
                .server_info
                .as_ref()
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str),
        }
    }

    /// The `initialize` result: records `serverInfo`.
    pub(crate) fn initialized(&mut self, message: &Message<'_>) {
        #[derive(serde::Deserialize)]
        struct Init {
            result: InitResult,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct InitResult {
            server_info: Option<Value>,
        }
        if let Ok(init) = serde_json::from_slice::<Init>(message.bytes()) {
            if init.result.server_info.is_some() {
                self.server_info = init.result.server_info;
            }
        }
    }

    /// A list request: remembers whether it asks for a later page.
    pub(crate) fn list_requested(&mut self, message: &Message<'_>) {
        let cursor = serde_json::from_slice::<Value>(message.bytes())
            .ok()
            .and_then(|v| v.get("params")?.get("cursor").cloned())
            .is_some_and(|c| !c.is_null());
        // Bounded: a client that never gets answers must not grow this without end.
        if self.cursors.len() >= 1024 {
            self.cursors.clear();
        }
        self.cursors
            .insert(message.correlation_id.as_str().to_owned(), cursor);
    }

    /// A list result of `kind`.
    pub(crate) fn list_result(
        &mut self,
        kind: Kind,
        message: &Message<'_>,
        host: &Host,
        store: &Store,
        scanner: &Scanner,
    ) -> Verdict {
        let asked_for_page = self
            .cursors
            .remove(message.correlation_id.as_str())
            .unwrap_or(false);
        match Policy::load(host) {
            Ok(policy) => self.policy = policy,
            Err(e) => {
                let reason = format!("tool-guard's {e}");
                self.note(host, LogLevel::Error, &reason);
                return Verdict::block(&["policy-invalid"], &reason);
            }
        }
        self.note_policy(host);
        if let Some((rule, reason)) = &self.broken {
            return Verdict::block(&[rule], reason);
        }
        let list = match ListResult::parse(kind, message.bytes()) {
            Ok(list) => list,
            Err(malformed) => {
                let reason = format!(
                    "the {} result of server {} is not acceptable: {malformed}",
                    kind.list_method(),
                    self.label
                );
                self.note(host, LogLevel::Warn, &reason);
                return Verdict::block(&["malformed-list"], &reason);
            }
        };
        let definitions: Vec<Option<Definition>> =
            list.elements.iter().map(|e| e.definition.clone()).collect();
        let complete = self.pages_seen(kind, asked_for_page, list.has_next_page, &definitions);

        let now = now();
        let record = guard::record(
            &self.server_id,
            &self.label,
            &self.command,
            self.server_info.clone(),
            &now,
        );
        let checked = {
            let ctx = Context {
                record: &record,
                first_session: self.first_session,
                policy: &self.policy,
                scanner,
                now: &now,
            };
            let check = |pins: &mut Option<ServerPins>| {
                guard::check_list(pins, &ctx, kind, &definitions, complete.as_ref())
            };
            match store.update(&self.server_id, LOCK_TIMEOUT, check) {
                Ok(outcome) => Checked::Saved(outcome),
                Err(e @ Error::Corrupt { .. }) => Checked::Corrupt(e.to_string()),
                // The pins could not be locked or written: decide on what the file says now,
                // without saving (what would have been pinned is pinned at the next list).
                Err(e) => match store.read(&self.server_id) {
                    Ok(mut pins) => Checked::Unsaved(check(&mut pins), e.to_string()),
                    Err(e) => Checked::Failed(e.to_string()),
                },
            }
        };
        let outcome = match checked {
            Checked::Saved(outcome) => outcome,
            Checked::Unsaved(outcome, why) => {
                self.note(
                    host,
                    LogLevel::Warn,
                    &format!("{why}; checked against the pins as they are, not saved"),
                );
                outcome
            }
            Checked::Corrupt(reason) => {
                self.break_with(host, "pins-unreadable", reason.clone());
                return Verdict::block(&["pins-unreadable"], &reason);
            }
            Checked::Failed(reason) => {
                self.note(host, LogLevel::Error, &reason);
                return Verdict::block(&["pins-unreadable"], &reason);
            }
        };

        for name in &outcome.passed {
            self.held.remove(&(kind, name.clone()));
            self.advertised.insert((kind, name.clone()));
        }
        for (name, hold) in &outcome.held {
            self.advertised.remove(&(kind, name.clone()));
            self.held.insert((kind, name.clone()), hold.clone());
        }
        self.report_all(host, &outcome.reports);

        if outcome.remove.is_empty() {
            return Verdict::pass();
        }
        let mut rules: Vec<&str> = outcome
            .reports
            .iter()
            .filter(|r| r.action == Action::Block)
            .map(events::rule)
            .collect();
        rules.sort_unstable();
        rules.dedup();
        let mut verdict = Verdict::replace(list.without(&outcome.remove), &rules);
        verdict.reason = format!(
            "{} of {} {} definitions held until approved (see km's log)",
            outcome.remove.len(),
            list.elements.len(),
            kind
        )
        .into();
        verdict
    }

    /// The names of the whole list when this result ends it, `None` while pages are to come.
    fn pages_seen(
        &mut self,
        kind: Kind,
        asked_for_page: bool,
        has_next_page: bool,
        definitions: &[Option<Definition>],
    ) -> Option<HashSet<String>> {
        let names = definitions.iter().flatten().map(|d| d.name.clone());
        if !asked_for_page {
            // A listing starts over with its first page.
            self.pages.remove(&kind);
            if !has_next_page {
                return Some(names.collect());
            }
            self.pages.insert(kind, names.collect());
            return None;
        }
        // A later page of a listing whose first page was seen; otherwise nothing is complete.
        let seen = self.pages.get_mut(&kind)?;
        seen.extend(names);
        if has_next_page {
            None
        } else {
            self.pages.remove(&kind)
        }
    }

    /// A `tools/call` or `prompts/get` of `name`.
    pub(crate) fn used(&mut self, kind: Kind, name: &str, host: &Host) -> Verdict {
        if let Some((rule, reason)) = &self.broken {
            return Verdict::block(&[rule], reason);
        }
        if name.is_empty() {
            // Not a valid call; the server answers it with its own error.
            return Verdict::pass();
        }
        let key = (kind, name.to_owned());
        if let Some(hold) = self.held.get(&key) {
            return Verdict::block(
                &[events::held_rule(hold)],
                &events::held_reason(kind, name, hold, &self.server_id),
            );
        }
        if self.advertised.contains(&key) {
            return Verdict::pass();
        }
        let decided = self.policy.decide(&self.names(), Situation::Unadvertised);
        let mut report = Report::new(kind, name, Found::Unadvertised, decided.value);
        report.decided_by = decided.from;
        report.overruled = decided
            .overruled
            .map(|a| (a, Situation::Unadvertised.key()));
        if decided.value != Action::Approve {
            self.report_all(host, &[report]);
        }
        if decided.value == Action::Block {
            return Verdict::block(
                &["unadvertised"],
                &format!(
                    "{kind} {name} was not listed by server {} in this session (tool-guard policy: unadvertised = block)",
                    self.label
                ),
            );
        }
        Verdict::pass()
    }

    /// `notifications/*/list_changed` from the server.
    pub(crate) fn list_changed(&mut self, method: &str, host: &Host) {
        host.debug(&format!(
            "server {} ({}) sent {method}: the next list is checked against the pins",
            self.label, self.server_id
        ));
    }

    /// Emits and logs each report once per session.
    fn report_all(&mut self, host: &Host, reports: &[Report]) {
        let mut first_use = HashMap::<Kind, usize>::new();
        for report in reports {
            let key = format!(
                "{}/{}/{}/{}/{}",
                report.kind,
                report.name,
                report.found.as_str(),
                report.sha256.as_deref().unwrap_or(""),
                report.action
            );
            if !self.reported.insert(key) {
                continue;
            }
            let server = self.server();
            if let Err(e) = host.emit(events::DRIFT, &events::event(&server, report)) {
                host.debug(&format!("the drift event was not delivered: {e}"));
            }
            match events::log_line(&server, report) {
                Some((level, line)) => host.log(level, &line),
                None => *first_use.entry(report.kind).or_default() += 1,
            }
            if let Some((looser, key)) = report.overruled {
                let note = format!(
                    "the local policy's {key} = {looser:?} is looser than the team's {:?}: the team's applies",
                    report.action.as_str(),
                    looser = looser.as_str()
                );
                self.note(host, LogLevel::Info, &note);
            }
        }
        for (kind, count) in first_use {
            host.info(&format!(
                "pinned {count} {kind} definition{} of server {} ({}) on first use",
                if count == 1 { "" } else { "s" },
                self.label,
                self.server_id
            ));
        }
    }

    /// Logs `line` once per session.
    fn note(&mut self, host: &Host, level: LogLevel, line: &str) {
        if self.reported.insert(format!("note/{line}")) {
            host.log(level, line);
        }
    }

    /// Reports what was refused about the team's files, once per session each.
    fn note_policy(&mut self, host: &Host) {
        let problems: Vec<String> = self
            .policy
            .team_problems()
            .iter()
            .map(|p| format!("team policy: {p}"))
            .collect();
        for problem in problems {
            self.note(host, LogLevel::Warn, &problem);
        }
    }
}

/// How a list check went.
enum Checked {
    Saved(guard::Outcome),
    Unsaved(guard::Outcome, String),
    Corrupt(String),
    Failed(String),
}

/// What a pin file holds back: the names with a pending change that policy blocked.
fn held_of(pins: &ServerPins) -> HashMap<(Kind, String), Hold> {
    pins.all()
        .filter(|(_, _, pin)| pin.is_held())
        .filter_map(|(kind, name, pin)| {
            pin.pending
                .as_ref()
                .map(|p| ((kind, name.clone()), Hold::of(p)))
        })
        .collect()
}
