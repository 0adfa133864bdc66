//! Team policies: signed files under `KM_HOME/policies/team/` that team-collaboration writes
//! and every plugin with a policy verifies for itself before applying them.
//!
//! - [`trust`]: `team/trust.toml`, the team and its admin keys (the only trust anchor);
//! - [`envelope`]: the signed file, DSSE-shaped TOML (payload bytes and Ed25519 signatures);
//! - [`bundle`]: the payload (a `bundle` header, then the policy) and [`verify`];
//! - `state`: each plugin's own record of what it applied (rollback floor, last verified copy);
//! - [`roster`]: the admin-signed list of members whose own keys may sign for the team;
//! - [`approvals`]: what those members sign (shared approvals), verified against the roster.
//!
//! [`load_team`] puts them together the way every plugin needs: verify the file, refuse a
//! rollback, record what was applied, and when the file is missing or refused keep the last
//! verified version in force, reporting why. [`accept_offered`] is the same check for a bundle
//! that arrives from elsewhere (the API), before team-collaboration writes it.

pub mod approvals;
pub mod bundle;
pub mod envelope;
pub mod keys;
pub mod roster;
mod state;
pub mod trust;

use serde::de::DeserializeOwned;

pub use approvals::{
    approval_payload, approvals_file, load_approvals, seal_approval_ed25519, verify_approval,
    ApprovalHeader, ApprovalLoad, MemberApproval, SignedApproval, APPROVAL_PAYLOAD_TYPE,
};
pub use bundle::{payload, verify, BundleHeader, TeamBundle, Verified};
pub use envelope::{seal, seal_ed25519, signing_input, PAYLOAD_TYPE};
pub use keys::AdminKey;
pub use roster::{Roster, RosterEntry, RosterFile, ROSTER};
pub use trust::{valid_team, TeamTrust, TRUST_FILE};

use crate::source::{check_name, PolicyHost};
use crate::Error;
use state::{Applied, StateFile};

/// A verified team policy in force.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamPolicy<T> {
    /// The verified bundle (team, version, signer).
    pub bundle: Verified<TeamBundle>,
    /// Its policy, parsed.
    pub policy: T,
    /// Whether it is the last verified version from the plugin's own record, because the file
    /// was missing or refused (see [`TeamLoad::problems`]).
    pub from_record: bool,
}

/// The outcome of [`load_team`]: the team policy in force, if any, and what went wrong on the
/// way. Problems do not stop a plugin: they are reported, and the last verified policy stays.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamLoad<T> {
    /// The team policy in force.
    pub applied: Option<TeamPolicy<T>>,
    /// Everything that was refused or could not be read or recorded.
    pub problems: Vec<Error>,
}

impl<T> Default for TeamLoad<T> {
    fn default() -> Self {
        TeamLoad {
            applied: None,
            problems: Vec::new(),
        }
    }
}

/// The name of the team file of `policy` under `KM_HOME/policies/`.
pub fn team_file(policy: &str) -> String {
    format!("team/{policy}.toml")
}

/// Loads the team policy `policy` (the plugin's policy name, e.g. `tool-guard`), parsed as `T`.
///
/// Without `team/trust.toml` the machine is in no team: no policy, no problem. Otherwise the
/// file `team/POLICY.toml` must verify against the trust file, be for its team and this policy,
/// parse as `T`, and not be older than the version recorded in the plugin's data directory (nor
/// of the same version with other content). A newer version is recorded. When the file is
/// missing or refused, the recorded version (verified again) stays in force.
pub fn load_team<T: DeserializeOwned>(host: &impl PolicyHost, policy: &str) -> TeamLoad<T> {
    let mut load = TeamLoad::default();
    if let Err(e) = check_name(&format!("{policy}.toml")) {
        load.problems.push(e);
        return load;
    }
    let trust = match host.read_policy(TRUST_FILE) {
        Ok(None) => return load,
        Ok(Some(text)) => match TeamTrust::parse(&text) {
            Ok(trust) => trust,
            Err(e) => {
                load.problems.push(e);
                return load;
            }
        },
        Err(message) => {
            load.problems.push(Error::Read {
                file: TRUST_FILE.to_owned(),
                message,
            });
            return load;
        }
    };
    let file = team_file(policy);
    let text = match host.read_policy(&file) {
        Ok(text) => text,
        Err(message) => {
            load.problems.push(Error::Read {
                file: file.clone(),
                message,
            });
            None
        }
    };
    let state = StateFile::new(&host.state_dir(), policy);
    // Without the lock the record is still read (its writes are atomic), only not updated.
    let lock = state.lock().map_err(|e| load.problems.push(e)).ok();
    let record = match state.read() {
        Ok(record) => record.filter(|r| r.team == trust.team()),
        Err(e) => {
            load.problems.push(e);
            None
        }
    };

    let had_file = text.is_some();
    if let Some(text) = text {
        match accept::<T>(&file, &text, &trust, policy, record.as_ref()) {
            Ok((bundle, parsed)) => {
                let newer = record.as_ref().is_none_or(|r| bundle.version() > r.version);
                if newer && lock.is_some() {
                    let applied = Applied {
                        team: bundle.team().to_owned(),
                        version: bundle.version(),
                        payload_sha256: bundle.payload_sha256().to_owned(),
                        envelope: bundle.envelope().to_owned(),
                    };
                    if let Err(e) = state.write(&applied) {
                        load.problems.push(e);
                    }
                }
                load.applied = Some(TeamPolicy {
                    bundle,
                    policy: parsed,
                    from_record: false,
                });
                return load;
            }
            Err(e) => load.problems.push(e),
        }
    }
    let Some(record) = record else {
        return load;
    };
    if !had_file {
        load.problems.push(Error::Missing {
            file: file.clone(),
            version: record.version,
        });
    }
    let recorded = verify(&file, &record.envelope, &trust, policy).and_then(|bundle| {
        let parsed = bundle.parse::<T>()?;
        Ok((bundle, parsed))
    });
    match recorded {
        Ok((bundle, parsed)) if bundle.payload_sha256() == record.payload_sha256 => {
            load.applied = Some(TeamPolicy {
                bundle,
                policy: parsed,
                from_record: true,
            });
        }
        Ok(_) => load.problems.push(Error::State {
            path: host
                .state_dir()
                .join("team-policy")
                .join(format!("{policy}.toml")),
            message: "the recorded envelope does not match its own record".to_owned(),
        }),
        Err(e) => load.problems.push(Error::State {
            path: host
                .state_dir()
                .join("team-policy")
                .join(format!("{policy}.toml")),
            message: format!("the recorded team policy no longer verifies: {e}"),
        }),
    }
    load
}

/// A bundle offered from outside `KM_HOME`, verified by [`accept_offered`].
#[derive(Debug, Clone, PartialEq)]
pub struct Offered<T> {
    /// The verified bundle.
    pub bundle: Verified<TeamBundle>,
    /// Its policy, parsed.
    pub policy: T,
    /// Whether it is newer than the version the caller applied before (`false`: that same
    /// version again).
    pub newer: bool,
}

/// Verifies `text`, offered as the team policy `policy` from outside `KM_HOME` (the API), with
/// the checks [`load_team`] makes of the file: signed by an admin key of the trust file, for
/// its team and this policy, not older than the version the caller applied before, nor that
/// version with other content, and its policy parses as `T` (a plugin forwarding another
/// plugin's policy, whose settings it does not know, uses `toml::Table`; the plugin it is for
/// checks them when it loads the file). A newer version is recorded in the caller's state, so
/// that a later offer of an older one is refused even if the file was deleted meanwhile.
///
/// What team-collaboration calls before it writes a bundle to `team/POLICY.toml`: a lying or
/// compromised API can then neither install a policy nor roll one back.
pub fn accept_offered<T: DeserializeOwned>(
    host: &impl PolicyHost,
    policy: &str,
    text: &str,
) -> Result<Offered<T>, Error> {
    check_name(&format!("{policy}.toml"))?;
    let trust = match host.read_policy(TRUST_FILE) {
        Ok(Some(text)) => TeamTrust::parse(&text)?,
        Ok(None) => {
            return Err(Error::Trust {
                file: TRUST_FILE.to_owned(),
                reason: "there is none: this machine is in no team".to_owned(),
            })
        }
        Err(message) => {
            return Err(Error::Read {
                file: TRUST_FILE.to_owned(),
                message,
            })
        }
    };
    let file = format!("{} (offered)", team_file(policy));
    let state = StateFile::new(&host.state_dir(), policy);
    let _lock = state.lock()?;
    let record = state.read()?.filter(|r| r.team == trust.team());
    let (bundle, parsed) = accept::<T>(&file, text, &trust, policy, record.as_ref())?;
    let newer = record.as_ref().is_none_or(|r| bundle.version() > r.version);
    if newer {
        state.write(&Applied {
            team: bundle.team().to_owned(),
            version: bundle.version(),
            payload_sha256: bundle.payload_sha256().to_owned(),
            envelope: bundle.envelope().to_owned(),
        })?;
    }
    Ok(Offered {
        bundle,
        policy: parsed,
        newer,
    })
}

/// Verifies and parses one envelope, and checks it against the record.
fn accept<T: DeserializeOwned>(
    file: &str,
    text: &str,
    trust: &TeamTrust,
    policy: &str,
    record: Option<&Applied>,
) -> Result<(Verified<TeamBundle>, T), Error> {
    let bundle = verify(file, text, trust, policy)?;
    if let Some(record) = record {
        if bundle.version() < record.version {
            return Err(Error::Rollback {
                file: file.to_owned(),
                applied: record.version,
                offered: bundle.version(),
            });
        }
        if bundle.version() == record.version && bundle.payload_sha256() != record.payload_sha256 {
            return Err(Error::Equivocation {
                file: file.to_owned(),
                version: bundle.version(),
            });
        }
    }
    let parsed = bundle.parse::<T>()?;
    Ok((bundle, parsed))
}

#[cfg(test)]
mod tests;
