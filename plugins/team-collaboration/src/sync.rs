//! One sync with the team: what the API has for this member is verified and put where the
//! plugins read it, and what this machine owes the team is sent.
//!
//! In order, under the sync lock (one sync at a time across km processes):
//!
//! 1. `team/trust.toml` says which team (no trust file: no team, nothing to do);
//! 2. the membership (`GET me`): member id and role, for `status` and for what to try; the
//!    member's key is registered again if the API does not have it;
//! 3. every policy the API serves (`GET policies`) is verified with km-policy's
//!    [`accept_offered`](km_policy::team::accept_offered) before it is written to
//!    `team/POLICY.toml`: signed by an admin key of the trust file, for this team and policy,
//!    not older than the version applied before (rollback), not that version with other
//!    content. team-collaboration's own policy must also parse. A refused bundle is reported
//!    and the file that is there stays; so does everything when the API cannot be reached.
//!    Each plugin verifies its file again when it loads it, against its own record;
//! 4. the team's shared approvals (`GET approvals`) are written as received to
//!    `team/POLICY.approvals.toml` (each is verified by the plugin it is for, against the
//!    admin-signed roster: an approval is only as good as its signer's role there);
//! 5. the outbox is sent: session summaries, and approvals this member made with tool-guard,
//!    signed with the member's key when the role allows (the API checks the role again, and
//!    every member's tool-guard checks the roster).
//!
//! A policy the API stops serving is not removed: km-policy keeps the last verified version in
//! force, and only a newer version replaces it.

use std::collections::BTreeMap;
use std::path::Path;

use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::Host;
use km_policy::team::approvals::approvals_text;
use km_policy::team::{accept_offered, approvals_file, team_file, TeamTrust, TRUST_FILE};

use crate::api::Api;
use crate::member_key::MemberKey;
use crate::outbox::{Item, Outbox};
use crate::rules::Rules;
use crate::state::{self, State};
use crate::{Error, POLICY};

/// The policies whose approvals the team shares.
pub(crate) const APPROVAL_POLICIES: [&str; 1] = ["tool-guard"];

/// How long sending one session summary may take during a sync.
const SEND_TIMEOUT_MS: u32 = 5000;

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) team: String,
    pub(crate) member: String,
    pub(crate) role: String,
    /// Policies applied in this sync (newer than before): name and version.
    pub(crate) applied: Vec<(String, u64)>,
    /// The versions in force after it.
    pub(crate) versions: BTreeMap<String, u64>,
    /// What was refused (bundles, approvals, summaries).
    pub(crate) problems: Vec<String>,
    /// Things worth a line in km's log: approvals shared, kept local...
    pub(crate) notes: Vec<String>,
    /// Session summaries sent.
    pub(crate) sessions_sent: usize,
}

/// The trust file, if the machine is in a team.
pub(crate) fn trust(host: &Host) -> Result<Option<TeamTrust>, Error> {
    match host.read_policy(TRUST_FILE) {
        Ok(Some(text)) => Ok(Some(TeamTrust::parse(&text)?)),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Policy(km_policy::Error::Read {
            file: TRUST_FILE.to_owned(),
            message: e.message.into_string(),
        })),
    }
}

/// Writes `text` to the policy file `name` unless it holds exactly that already.
fn write_if_changed(host: &Host, name: &str, text: &str) -> Result<bool, Error> {
    let current = host.read_policy(name).ok().flatten();
    if current.as_deref() == Some(text) {
        return Ok(false);
    }
    host.write_policy(name, text)
        .map_err(|e| Error::WritePolicy {
            file: name.to_owned(),
            message: e.message.into_string(),
        })
        .map(|()| true)
}

/// Syncs with the team through the API with the subscription `token`.
pub(crate) fn run(host: &Host, data_dir: &Path, token: &str) -> Result<Report, Error> {
    let _lock = state::lock(data_dir)?;
    let Some(trust) = trust(host)? else {
        let mut state = State::load(data_dir);
        if state.team.is_some() {
            state = State::default();
            state.save(data_dir)?;
        }
        return Err(Error::NoTeam);
    };
    let mut state = State::load(data_dir);
    if state.team.as_deref() != Some(trust.team()) {
        // Another team than last time: nothing of the old one's record applies.
        state = State {
            team: Some(trust.team().to_owned()),
            ..State::default()
        };
    }
    state.last_attempt = Some(now_unix());
    let outcome = sync_with(host, data_dir, token, &trust, &mut state);
    match &outcome {
        Ok(report) => {
            state.last_success = state.last_attempt;
            state.last_error = None;
            state.problems.clone_from(&report.problems);
        }
        Err(e) => state.last_error = Some(e.to_string()),
    }
    state.save(data_dir)?;
    outcome
}

fn sync_with(
    host: &Host,
    data_dir: &Path,
    token: &str,
    trust: &TeamTrust,
    state: &mut State,
) -> Result<Report, Error> {
    let api = Api::new(host, token.to_owned(), trust.team());
    let me = api.me()?;
    state.member = Some(me.member.clone());
    state.role = Some(me.role.clone());
    let mut report = Report {
        team: trust.team().to_owned(),
        member: me.member.clone(),
        role: me.role.clone(),
        ..Report::default()
    };
    if let Some(key) = MemberKey::load(data_dir)? {
        if me.key_id.as_deref() != Some(key.public().key_id()) {
            match api.register_key(&key.public().to_pem()) {
                Ok(()) => state.registered_key = Some(key.public().key_id().to_owned()),
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => report
                    .problems
                    .push(format!("registering the member key: {e}")),
            }
        } else {
            state.registered_key = me.key_id.clone();
        }
    }

    for served in api.policies()? {
        let name = team_file(&served.policy);
        let accepted = if served.policy == POLICY {
            accept_offered::<Rules>(host, &served.policy, &served.envelope)
                .map(|o| (o.bundle, o.newer))
        } else {
            accept_offered::<toml::Table>(host, &served.policy, &served.envelope)
                .map(|o| (o.bundle, o.newer))
        };
        match accepted {
            Ok((bundle, newer)) => {
                write_if_changed(host, &name, &served.envelope)?;
                state
                    .versions
                    .insert(served.policy.clone(), bundle.version());
                if newer {
                    report
                        .applied
                        .push((served.policy.clone(), bundle.version()));
                }
            }
            Err(e) => report.problems.push(format!("refused: {e}")),
        }
    }

    for policy in APPROVAL_POLICIES {
        let served = api.approvals(policy)?;
        let mut envelopes = Vec::with_capacity(served.len());
        for (i, approval) in served.iter().enumerate() {
            // A malformed entry would make the whole file unreadable: it is left out here
            // (whether the well-formed ones verify is for the plugin they are for).
            if approvals_text(trust.team(), policy, &[&approval.envelope]).is_ok() {
                envelopes.push(approval.envelope.as_str());
            } else {
                report.problems.push(format!(
                    "refused: approval {i} for {policy} (by {}) served by the API is not a signed approval",
                    approval.member
                ));
            }
        }
        let file = approvals_file(policy);
        let exists = host.read_policy(&file).ok().flatten().is_some();
        if !envelopes.is_empty() || exists {
            let text = approvals_text(trust.team(), policy, &envelopes)?;
            write_if_changed(host, &file, &text)?;
        }
        state.approvals.insert(policy.to_owned(), envelopes.len());
    }

    flush(&api, data_dir, state, &mut report)?;
    report.versions.clone_from(&state.versions);
    Ok(report)
}

/// Sends what waits in the outbox. Stops at the first "cannot reach" (the rest waits).
fn flush(api: &Api<'_>, data_dir: &Path, state: &State, report: &mut Report) -> Result<(), Error> {
    let outbox = Outbox::new(data_dir);
    let team = state.team.clone().unwrap_or_default();
    let member = state.member.clone().unwrap_or_default();
    for (path, item) in outbox.items() {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                report.problems.push(format!("outbox: {e}"));
                continue;
            }
        };
        let sent = match &item {
            Item::Session { summary } => api.send_session(summary, SEND_TIMEOUT_MS).map(|()| {
                report.sessions_sent += 1;
            }),
            Item::Approval {
                policy,
                body,
                issued_at,
                what,
            } => {
                if !state.may_approve() {
                    report.notes.push(format!(
                        "your approval of {what} stays on this machine: member {member} of team {team} has the {} role, and only approvers approve for the team",
                        state.role.as_deref().unwrap_or("member")
                    ));
                    outbox.remove(&path);
                    continue;
                }
                let (key, _) = MemberKey::load_or_create(data_dir)?;
                let envelope = key.sign_approval(&team, policy, &member, issued_at, body)?;
                api.approve(policy, &envelope).map(|_| {
                    report
                        .notes
                        .push(format!("shared your approval of {what} with team {team}"));
                })
            }
        };
        match sent {
            Ok(()) => outbox.remove(&path),
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => {
                // The API said no: sending it again would get the same answer.
                report.problems.push(format!("not sent: {e}"));
                outbox.remove(&path);
            }
        }
    }
    Ok(())
}
