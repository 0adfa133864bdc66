//! km-policy: how km's plugins read their policies, verify the policies their team signed, and
//! combine the two so that a local policy can only tighten the team's.
//!
//! A plugin's policy is a TOML file `KM_HOME/policies/NAME.toml`, read through km (which checks
//! it like every file that decides trust). A machine in a team also has
//! `KM_HOME/policies/team/trust.toml` (the team and its admin keys) and, per plugin,
//! `KM_HOME/policies/team/NAME.toml`: the team's policy for that plugin, signed by an admin key.
//! team-collaboration writes the team files; every plugin verifies them itself ([`team`]), so
//! that no plugin has to trust another.
//!
//! ```no_run
//! use km_policy::{load, Layered, PolicyDir};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Rules {
//!     secrets: Option<Level>,
//! }
//!
//! #[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
//! #[serde(rename_all = "lowercase")]
//! enum Level { Log, Redact, Block } // greater is stricter
//!
//! # fn main() -> Result<(), km_policy::Error> {
//! // In a plugin the host is the SDK's `Host`; here a directory.
//! let host = PolicyDir::new("/home/me/.km/policies", "/home/me/.km/state/plugins/x");
//! let policies = load::<Rules, Rules>(&host, "advanced-filters")?;
//! for problem in &policies.team_problems {
//!     eprintln!("team policy: {problem}"); // the last verified team policy stays in force
//! }
//! let secrets = policies.layered().decide(Level::Redact, |rules| rules.secrets);
//! if let Some(looser) = secrets.overruled {
//!     eprintln!("the local policy's {looser:?} is looser than the team's: not applied");
//! }
//! # Ok(()) }
//! ```
//!
//! The parts: [`load_local`] (the local file, parsed strictly), [`team::load_team`] (verify,
//! refuse rollbacks, keep the last verified version), [`Layered`] (decisions made per layer,
//! then combined: the stricter wins). The formats are in the crate's README.
//!
//! What is NOT checked here: the owner and mode of the files (km does that before handing
//! their text over; [`PolicyDir`] does not), and the freshness of a team policy (see
//! [`team::bundle`]).

#![forbid(unsafe_code)]

mod error;
mod layered;
mod source;
pub mod team;

use serde::de::DeserializeOwned;

pub use error::Error;
pub use layered::{Decided, Layer, Layered};
pub use source::{check_name, PolicyDir, PolicyHost};
pub use team::{TeamLoad, TeamPolicy};

/// The name of the local policy file of `policy` under `KM_HOME/policies/`.
pub fn local_file(policy: &str) -> String {
    format!("{policy}.toml")
}

/// The local policy `policy` (`KM_HOME/policies/POLICY.toml`) parsed as `P`; `None` when the
/// file does not exist. Use `#[serde(deny_unknown_fields)]` on `P`: a misspelt key must be an
/// error naming it, not a setting silently not applied.
pub fn load_local<P: DeserializeOwned>(
    host: &impl PolicyHost,
    policy: &str,
) -> Result<Option<P>, Error> {
    let file = local_file(policy);
    check_name(&file)?;
    let Some(text) = host.read_policy(&file).map_err(|message| Error::Read {
        file: file.clone(),
        message,
    })?
    else {
        return Ok(None);
    };
    toml::from_str(&text).map(Some).map_err(|e| Error::Parse {
        file,
        message: e.to_string(),
    })
}

/// A plugin's policies: its local one (`L`) and its team's (`T`, which may have sections a
/// local policy cannot have, such as shared approvals).
#[derive(Debug, Clone, PartialEq)]
pub struct Policies<L, T = L> {
    /// `KM_HOME/policies/NAME.toml`, if it exists.
    pub local: Option<L>,
    /// The verified team policy in force, if any.
    pub team: Option<TeamPolicy<T>>,
    /// What was refused about the team files (the last verified team policy stays in force).
    pub team_problems: Vec<Error>,
}

impl<L, T> Policies<L, T> {
    /// Both policies as layers of one shape `R`, for [`Layered::decide`]: `local` and `team`
    /// pick the part of each that holds the rules (a team policy type usually holds the local
    /// one's rules beside sections of its own).
    pub fn layers<'a, R>(
        &'a self,
        local: impl FnOnce(&'a L) -> &'a R,
        team: impl FnOnce(&'a T) -> &'a R,
    ) -> Layered<'a, R> {
        Layered::new(
            self.team.as_ref().map(|t| team(&t.policy)),
            self.local.as_ref().map(local),
        )
    }
}

impl<P> Policies<P, P> {
    /// Both policies as layers, when the team's has the local one's shape.
    pub fn layered(&self) -> Layered<'_, P> {
        self.layers(|l| l, |t| t)
    }
}

/// Loads both policies of `policy`. An unreadable or invalid local policy is an error (the
/// plugin decides how to fail closed); problems with the team files are not, and are returned.
pub fn load<L: DeserializeOwned, T: DeserializeOwned>(
    host: &impl PolicyHost,
    policy: &str,
) -> Result<Policies<L, T>, Error> {
    let local = load_local(host, policy)?;
    let team = team::load_team::<T>(host, policy);
    Ok(Policies {
        local,
        team: team.applied,
        team_problems: team.problems,
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        level: Option<u8>,
    }

    #[test]
    fn a_local_policy_is_parsed_strictly_and_named_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = PolicyDir::new(dir.path(), dir.path().join("state"));
        assert_eq!(load_local::<Rules>(&host, "p").expect("no file"), None);
        std::fs::write(dir.path().join("p.toml"), "level = 3\n").expect("write");
        assert_eq!(
            load_local::<Rules>(&host, "p").expect("parses"),
            Some(Rules { level: Some(3) })
        );
        std::fs::write(dir.path().join("p.toml"), "levle = 3\n").expect("write");
        let err = load_local::<Rules>(&host, "p").expect_err("typo");
        assert!(
            matches!(&err, Error::Parse { file, .. } if file == "p.toml"),
            "{err}"
        );
        assert!(err.to_string().contains("levle"), "{err}");
        assert!(load_local::<Rules>(&host, "../p").is_err());
    }

    #[test]
    fn load_gives_both_layers_without_a_team() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = PolicyDir::new(dir.path(), dir.path().join("state"));
        std::fs::write(dir.path().join("p.toml"), "level = 3\n").expect("write");
        let policies = load::<Rules, Rules>(&host, "p").expect("loads");
        assert_eq!(policies.team, None);
        assert!(policies.team_problems.is_empty());
        let level = policies.layered().decide(0, |r| r.level);
        assert_eq!((level.value, level.from), (3, Layer::Local));
    }
}
