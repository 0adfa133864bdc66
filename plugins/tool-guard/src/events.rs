//! How findings leave tool-guard: a `drift` event through km's event service (for the audit
//! trail and telemetry) and a line on km's log, and the reason a blocked call carries.
//!
//! Neither ever holds a definition's content: names, hashes, the names of the members that
//! changed, and the detectors' rule ids only (a description that smuggles an instruction must
//! not be copied into every log that records the finding).

use km_plugin_sdk::LogLevel;
use serde_json::{json, Value};

use crate::definition::Kind;
use crate::guard::{Found, Hold, Report};
use crate::poison::rule_ids;
use crate::policy::Action;
use crate::store::Change;

/// The event kind.
pub(crate) const DRIFT: &str = "drift";

/// Who the findings are about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server<'a> {
    pub(crate) id: &'a str,
    pub(crate) label: &'a str,
    /// `serverInfo.name`, when the server reported one: how a team names a server across
    /// machines (ids, hashes of command lines, differ between them).
    pub(crate) info_name: Option<&'a str>,
    pub(crate) session_id: &'a str,
}

/// The `drift` event of a report.
pub(crate) fn event(server: &Server<'_>, report: &Report) -> Value {
    let mut data = json!({
        "server_id": server.id,
        "server": server.label,
        "kind": report.kind.as_str(),
        "name": report.name,
        "change": report.found.as_str(),
        "action": report.action.as_str(),
        "decided_by": report.decided_by.as_str(),
    });
    let object = data.as_object_mut();
    if let Some(object) = object {
        if !server.session_id.is_empty() {
            object.insert("session_id".into(), server.session_id.into());
        }
        if let Some(name) = server.info_name {
            object.insert("server_name".into(), name.into());
        }
        if let Some(sha) = &report.sha256 {
            object.insert("sha256".into(), sha.as_str().into());
        }
        if let Some(sha) = &report.pinned_sha256 {
            object.insert("pinned_sha256".into(), sha.as_str().into());
        }
        if !report.fields.is_empty() {
            object.insert("fields".into(), json!(report.fields));
        }
        if !report.flags.is_empty() {
            object.insert("rules".into(), json!(rule_ids(&report.flags)));
        }
        if let Some(from) = &report.from {
            object.insert("from".into(), from.as_str().into());
        }
        if let Some(by) = &report.by {
            object.insert("approved_by".into(), by.as_str().into());
        }
    }
    data
}

/// The rule id a verdict carries for a report.
pub(crate) fn rule(report: &Report) -> &'static str {
    if !report.flags.is_empty() {
        return "poisoned";
    }
    match report.found {
        Found::FirstUse => "pin-first-use",
        Found::New | Found::Renamed => "pin-new",
        Found::Changed => "pin-changed",
        Found::Malformed => "malformed-definition",
        Found::Unadvertised => "unadvertised",
        Found::Removed | Found::Approved => "pin",
    }
}

/// What a held definition is, in a few words.
fn held_what(change: Change, flagged: bool) -> &'static str {
    if flagged {
        "was flagged as possibly poisoned"
    } else {
        match change {
            Change::Changed => "changed since it was pinned",
            Change::New | Change::FirstUse => "is new and awaits approval",
        }
    }
}

/// How to review and approve `name`.
pub(crate) fn how_to_approve(server_id: &str, name: &str) -> String {
    format!("review: km plugin tool-guard diff {server_id} {name}, then approve {server_id} {name}")
}

/// The reason a blocked call of a held definition carries (km caps it at 200 characters).
pub(crate) fn held_reason(kind: Kind, name: &str, hold: &Hold, server_id: &str) -> String {
    format!(
        "{kind} {name} {}; {}",
        held_what(hold.change, !hold.flags.is_empty()),
        how_to_approve(server_id, name)
    )
}

/// The rule id of a blocked call of a held definition.
pub(crate) fn held_rule(hold: &Hold) -> &'static str {
    if !hold.flags.is_empty() {
        "poisoned"
    } else {
        match hold.change {
            Change::Changed => "pin-changed",
            Change::New => "pin-new",
            Change::FirstUse => "pin-first-use",
        }
    }
}

/// The log line of a report; `None` for the quiet ones (first-use pins are summed up by the
/// caller).
pub(crate) fn log_line(server: &Server<'_>, report: &Report) -> Option<(LogLevel, String)> {
    let what = format!(
        "{} {} of server {} ({})",
        report.kind,
        if report.name.is_empty() {
            "(unnamed)"
        } else {
            &report.name
        },
        server.label,
        server.id
    );
    let fields = if report.fields.is_empty() {
        String::new()
    } else {
        format!(" ({})", report.fields.join(", "))
    };
    let flags = if report.flags.is_empty() {
        String::new()
    } else {
        format!("; flagged by the detectors: {}", report.flags.join(", "))
    };
    let approve = how_to_approve(server.id, &report.name);
    let line = match (report.found, report.action) {
        (Found::FirstUse, Action::Approve) if report.flags.is_empty() => return None,
        (Found::Removed, _) => (LogLevel::Warn, format!("{what} is no longer listed")),
        (Found::Malformed, _) => (
            LogLevel::Warn,
            format!(
                "a {} list element of server {} ({}) is not a definition (no string name): taken out of the list",
                report.kind, server.label, server.id
            ),
        ),
        (Found::Unadvertised, action) => (
            LogLevel::Warn,
            format!(
                "a call to {what}, which the server did not list in this session{}",
                if action == Action::Block {
                    ": blocked by policy"
                } else {
                    ""
                }
            ),
        ),
        (Found::Approved, _) => (
            LogLevel::Info,
            format!(
                "{what} approved by {}",
                report.by.as_deref().unwrap_or("the user")
            ),
        ),
        (found, Action::Approve) => {
            let change = match found {
                Found::Changed => format!("changed{fields}"),
                Found::Renamed => format!(
                    "is {} renamed (identical definition)",
                    report.from.as_deref().unwrap_or("?")
                ),
                _ => "is new".to_owned(),
            };
            let level = if found == Found::New && report.flags.is_empty() {
                LogLevel::Info
            } else {
                LogLevel::Warn
            };
            (
                level,
                format!(
                    "{what} {change}{flags}: pinned ({})",
                    report.by.as_deref().unwrap_or("policy")
                ),
            )
        }
        (found, action) => {
            let change = match found {
                Found::Changed => format!("changed since it was pinned{fields}"),
                Found::Renamed => format!(
                    "is {} renamed (identical definition), and new",
                    report.from.as_deref().unwrap_or("?")
                ),
                Found::FirstUse => "is seen for the first time".to_owned(),
                _ => "is new".to_owned(),
            };
            let done = if action == Action::Block {
                "taken out of the list and its calls blocked until approved"
            } else {
                "let through (policy: warn), not pinned"
            };
            (LogLevel::Warn, format!("{what} {change}{flags}: {done}; {approve}"))
        }
    };
    Some(line)
}
