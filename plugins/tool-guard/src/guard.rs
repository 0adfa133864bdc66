//! The decisions: a list result checked against a server's pins and the policy, and the pins
//! updated. No I/O here: the caller reads the pins under the server's lock, calls [`check_list`],
//! and writes them back.
//!
//! For each definition in the list:
//! - the same as its trusted pin: it passes (a pending change that the server took back is
//!   cleared);
//! - otherwise it is a first use (the server's first session), a new definition, or a change of
//!   the trusted one; it is scanned for poisoning; and the policy decides, the stricter of the
//!   situation's and (when flagged) `poisoned`'s action, unless the team approved this exact
//!   definition: `approve` pins it, `warn` lets it through as pending, `block` holds it (taken
//!   out of the list, its calls blocked) as pending;
//! - an element that is not a definition (no string `name`) is taken out.
//!
//! When the list is complete (not one page of several), every trusted pin it lacks is reported
//! removed, once; if a new definition in the same list is that pin's definition under another
//! name, the new one is reported as a rename instead.

use std::collections::{BTreeSet, HashSet};

use km_policy::Layer;
use serde_json::Value;

use crate::definition::{changed_fields, Definition, Kind};
use crate::poison::{Flag, Scanner};
use crate::policy::{Action, Policy, ServerNames, Situation};
use crate::store::{
    Change, Pending, Pin, Pinned, ServerPins, ServerRecord, BY_FIRST_USE, BY_POLICY,
};

/// What tool-guard found, for events and km's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Found {
    /// Seen in the server's first session.
    FirstUse,
    /// Added to a known server.
    New,
    /// Differs from its pin.
    Changed,
    /// A new name for a pinned definition (otherwise identical).
    Renamed,
    /// A pinned definition the server no longer lists.
    Removed,
    /// A list element that is not a definition.
    Malformed,
    /// A call to something the server did not list in this session.
    Unadvertised,
    /// A pending change approved with `km plugin tool-guard approve`.
    Approved,
}

impl Found {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Found::FirstUse => "first-use",
            Found::New => "new",
            Found::Changed => "changed",
            Found::Renamed => "renamed",
            Found::Removed => "removed",
            Found::Malformed => "malformed",
            Found::Unadvertised => "unadvertised",
            Found::Approved => "approved",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) found: Found,
    pub(crate) action: Action,
    /// Which policy layer decided (`team` for a team approval too).
    pub(crate) decided_by: Layer,
    /// A local setting looser than the team's that was not applied, and its policy key.
    pub(crate) overruled: Option<(Action, &'static str)>,
    /// The definition's hash as the server sent it.
    pub(crate) sha256: Option<String>,
    pub(crate) body_sha256: Option<String>,
    /// The trusted pin's hash.
    pub(crate) pinned_sha256: Option<String>,
    /// The members that changed.
    pub(crate) fields: Vec<String>,
    /// What the detectors flagged (`rule at path`).
    pub(crate) flags: Vec<String>,
    /// Who approved it, for approvals.
    pub(crate) by: Option<String>,
    /// The old name, for a rename.
    pub(crate) from: Option<String>,
}

impl Report {
    pub(crate) fn new(kind: Kind, name: &str, found: Found, action: Action) -> Self {
        Report {
            kind,
            name: name.to_owned(),
            found,
            action,
            decided_by: Layer::Default,
            overruled: None,
            sha256: None,
            body_sha256: None,
            pinned_sha256: None,
            fields: Vec::new(),
            flags: Vec::new(),
            by: None,
            from: None,
        }
    }
}

/// Why a definition is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    pub(crate) change: Change,
    pub(crate) fields: Vec<String>,
    pub(crate) flags: Vec<String>,
}

impl Hold {
    pub(crate) fn of(pending: &Pending) -> Self {
        Hold {
            change: pending.change,
            fields: pending.fields.clone(),
            flags: pending.flags.clone(),
        }
    }
}

/// What a list check decided.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Indices of the elements to take out of the list.
    pub(crate) remove: BTreeSet<usize>,
    /// Names that pass (advertised to the client).
    pub(crate) passed: Vec<String>,
    /// Names held, and why.
    pub(crate) held: Vec<(String, Hold)>,
    pub(crate) reports: Vec<Report>,
}

/// What a check needs besides the pins and the list.
pub(crate) struct Context<'a> {
    /// The server as this session knows it (with the serverInfo of its initialize result).
    pub(crate) record: &'a ServerRecord,
    /// Whether this is the server's first session (no pin file when it began).
    pub(crate) first_session: bool,
    pub(crate) policy: &'a Policy,
    pub(crate) scanner: &'a Scanner,
    /// Now, RFC 3339.
    pub(crate) now: &'a str,
}

impl Context<'_> {
    fn names(&self) -> ServerNames<'_> {
        ServerNames {
            id: &self.record.id,
            label: &self.record.label,
            info_name: self.record.info_name(),
        }
    }
}

/// Checks the definitions of one list result (`elements`, one per array element, `None` for
/// an element that is not a definition) against `pins`, updating them. `complete` is every name
/// of the whole list when this result ends it (one page alone, or the last page of several),
/// `None` for a page with more to come.
pub(crate) fn check_list(
    pins: &mut Option<ServerPins>,
    ctx: &Context<'_>,
    kind: Kind,
    elements: &[Option<Definition>],
    complete: Option<&HashSet<String>>,
) -> Outcome {
    let pins = pins.get_or_insert_with(|| ServerPins::new(ctx.record.clone()));
    refresh_record(&mut pins.server, ctx);
    let server = ctx.names();
    let mut outcome = Outcome::default();
    let map = pins.of_mut(kind);
    for (index, element) in elements.iter().enumerate() {
        let Some(definition) = element else {
            outcome.remove.insert(index);
            outcome
                .reports
                .push(Report::new(kind, "", Found::Malformed, Action::Block));
            continue;
        };
        let pin = map.entry(definition.name.clone()).or_default();
        pin.missing_since = None;
        if pin.trusted.as_ref().map(|t| &t.sha256) == Some(&definition.sha256) {
            pin.pending = None;
            outcome.passed.push(definition.name.clone());
            continue;
        }
        let report = judge(pin, definition, ctx, &server);
        match report.action {
            Action::Block => {
                outcome.remove.insert(index);
                if let Some(pending) = &pin.pending {
                    outcome
                        .held
                        .push((definition.name.clone(), Hold::of(pending)));
                }
            }
            Action::Warn | Action::Approve => outcome.passed.push(definition.name.clone()),
        }
        outcome.reports.push(report);
    }
    if let Some(all) = complete {
        find_removed(map, all, kind, ctx.now, &mut outcome.reports);
    }
    outcome
}

/// Decides about a definition that is not its trusted pin, and records the decision in `pin`.
fn judge(
    pin: &mut Pin,
    definition: &Definition,
    ctx: &Context<'_>,
    server: &ServerNames<'_>,
) -> Report {
    let (change, fields, situation) = match &pin.trusted {
        Some(trusted) => (
            Change::Changed,
            changed_fields(&trusted.definition, &definition.value),
            Situation::Changed,
        ),
        None if ctx.first_session => (Change::FirstUse, Vec::new(), Situation::FirstUse),
        None => (Change::New, Vec::new(), Situation::New),
    };
    let flags: Vec<String> = ctx
        .scanner
        .scan(definition)
        .iter()
        .map(Flag::describe)
        .collect();
    let found = match change {
        Change::FirstUse => Found::FirstUse,
        Change::New => Found::New,
        Change::Changed => Found::Changed,
    };
    let mut report = Report::new(definition.kind, &definition.name, found, Action::Block);
    report.sha256 = Some(definition.sha256.clone());
    report.body_sha256 = Some(definition.body_sha256.clone());
    report.pinned_sha256 = pin.trusted.as_ref().map(|t| t.sha256.clone());
    report.fields = fields.clone();
    report.flags = flags.clone();

    let team = ctx.policy.team_approval(
        server,
        definition.kind,
        &definition.name,
        &definition.sha256,
    );
    let by = if let Some(team) = team {
        report.action = Action::Approve;
        report.decided_by = Layer::Team;
        report.by = Some(team.clone());
        team
    } else {
        let mut decided = ctx.policy.decide(server, situation);
        let mut decisive = situation;
        if !flags.is_empty() {
            let poisoned = ctx.policy.decide(server, Situation::Poisoned);
            if poisoned.value > decided.value {
                decided = poisoned;
                decisive = Situation::Poisoned;
            }
        }
        report.action = decided.value;
        report.decided_by = decided.from;
        report.overruled = decided.overruled.map(|a| (a, decisive.key()));
        match (change, decided.from) {
            (Change::FirstUse | Change::New, Layer::Default) => BY_FIRST_USE.to_owned(),
            _ => BY_POLICY.to_owned(),
        }
    };
    if report.action == Action::Approve {
        pin.trusted = Some(Pinned {
            sha256: definition.sha256.clone(),
            body_sha256: definition.body_sha256.clone(),
            definition: definition.value.clone(),
            since: ctx.now.to_owned(),
            by: by.clone(),
        });
        pin.pending = None;
        report.by = Some(by);
    } else {
        pin.pending = Some(Pending {
            sha256: definition.sha256.clone(),
            body_sha256: definition.body_sha256.clone(),
            definition: definition.value.clone(),
            seen: ctx.now.to_owned(),
            change,
            fields,
            flags,
            action: report.action,
        });
    }
    report
}

/// Reports the trusted pins a complete list lacks (once: they are marked missing), as renames
/// where a new definition of this list has the same body.
fn find_removed(
    map: &mut std::collections::BTreeMap<String, Pin>,
    all: &HashSet<String>,
    kind: Kind,
    now: &str,
    reports: &mut Vec<Report>,
) {
    let absent: Vec<String> = map
        .keys()
        .filter(|name| !all.contains(*name))
        .cloned()
        .collect();
    for name in absent {
        let Some(pin) = map.get_mut(&name) else {
            continue;
        };
        let Some(trusted) = &pin.trusted else {
            // Never trusted and no longer offered: nothing left to protect.
            map.remove(&name);
            continue;
        };
        if pin.missing_since.is_some() {
            continue;
        }
        pin.missing_since = Some(now.to_owned());
        let renamed = reports.iter_mut().find(|r| {
            r.kind == kind
                && matches!(r.found, Found::New | Found::FirstUse)
                && r.body_sha256.as_deref() == Some(trusted.body_sha256.as_str())
        });
        match renamed {
            Some(report) => {
                report.found = Found::Renamed;
                report.from = Some(name.clone());
                report.pinned_sha256 = Some(trusted.sha256.clone());
            }
            None => {
                let mut report = Report::new(kind, &name, Found::Removed, Action::Warn);
                report.pinned_sha256 = Some(trusted.sha256.clone());
                reports.push(report);
            }
        }
    }
}

fn refresh_record(record: &mut ServerRecord, ctx: &Context<'_>) {
    record.label.clone_from(&ctx.record.label);
    record.command.clone_from(&ctx.record.command);
    if ctx.record.server_info.is_some() && record.server_info != ctx.record.server_info {
        record.server_info.clone_from(&ctx.record.server_info);
    }
    record.last_seen = ctx.now.to_owned();
}

/// The server record a session starts from.
pub(crate) fn record(
    id: &str,
    label: &str,
    command: &[String],
    server_info: Option<Value>,
    now: &str,
) -> ServerRecord {
    ServerRecord {
        id: id.to_owned(),
        label: label.to_owned(),
        command: command.to_vec(),
        server_info,
        first_seen: now.to_owned(),
        last_seen: now.to_owned(),
    }
}

#[cfg(test)]
mod tests;
