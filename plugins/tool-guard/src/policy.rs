//! tool-guard's policy: what it does with each kind of change, per server or for all, from
//! `KM_HOME/policies/tool-guard.toml` and the team's signed `team/tool-guard.toml`.
//!
//! ```toml
//! [defaults]                 # every key is optional; these are the built-in defaults
//! first_use = "approve"      # definitions of a server seen for the first time (trust on first use)
//! new = "approve"            # a definition added to a known server
//! changed = "block"          # a pinned definition that changed (any member: text, schema, annotations)
//! poisoned = "block"         # a definition the detectors flag, first seen or changed
//! unadvertised = "warn"      # a call to a tool (or prompt) the server did not list in this session
//!
//! [servers."node server.js"] # by server id, label (as `list` shows them) or serverInfo name
//! new = "block"
//! ```
//!
//! Actions, from the loosest: `approve` (accept it and pin it; for `unadvertised`: let the call
//! through quietly), `warn` (let it through and report it, without pinning it), `block` (hold it:
//! it is taken out of the list, its calls get an error, until someone approves it with
//! `km plugin tool-guard approve`). Within one file a server's entry wins over `[defaults]`, key
//! by key. The team's file has the same keys, plus `[[approvals]]`; a local setting looser than
//! the team's is not applied ([`km_policy::Layered`]).

use std::collections::BTreeMap;
use std::fmt;

use km_policy::{Decided, Layered, Policies, PolicyHost};
use serde::{Deserialize, Serialize};

use crate::definition::Kind;

/// The policy's name: `KM_HOME/policies/tool-guard.toml`, `team/tool-guard.toml`.
pub(crate) const POLICY: &str = "tool-guard";

/// What to do, from the loosest to the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// Accept (and pin) it.
    Approve,
    /// Let it through and report it; do not pin it.
    Warn,
    /// Hold it until approved.
    Block,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Warn => "warn",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The situations a policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Situation {
    FirstUse,
    New,
    Changed,
    Poisoned,
    Unadvertised,
}

impl Situation {
    fn default_action(self) -> Action {
        match self {
            Situation::FirstUse | Situation::New => Action::Approve,
            Situation::Changed | Situation::Poisoned => Action::Block,
            Situation::Unadvertised => Action::Warn,
        }
    }

    /// The policy key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Situation::FirstUse => "first_use",
            Situation::New => "new",
            Situation::Changed => "changed",
            Situation::Poisoned => "poisoned",
            Situation::Unadvertised => "unadvertised",
        }
    }
}

/// The keys of `[defaults]` and of each `[servers.X]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rules {
    first_use: Option<Action>,
    new: Option<Action>,
    changed: Option<Action>,
    poisoned: Option<Action>,
    unadvertised: Option<Action>,
}

impl Rules {
    fn get(&self, situation: Situation) -> Option<Action> {
        match situation {
            Situation::FirstUse => self.first_use,
            Situation::New => self.new,
            Situation::Changed => self.changed,
            Situation::Poisoned => self.poisoned,
            Situation::Unadvertised => self.unadvertised,
        }
    }
}

/// A policy file's rules: the local file is exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSet {
    #[serde(default)]
    defaults: Rules,
    #[serde(default)]
    servers: BTreeMap<String, Rules>,
}

/// How a server can be named in a policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerNames<'a> {
    pub(crate) id: &'a str,
    pub(crate) label: &'a str,
    /// `serverInfo.name` from the server's initialize result.
    pub(crate) info_name: Option<&'a str>,
}

impl ServerNames<'_> {
    /// Whether `key` names this server: its id, its label or its serverInfo name.
    pub(crate) fn matches(&self, key: &str) -> bool {
        key == self.id || key == self.label || self.info_name == Some(key)
    }
}

impl RuleSet {
    /// This file's answer for `server`: the most specific entry that sets the key (id, then
    /// label, then serverInfo name), else `[defaults]`.
    fn resolve(&self, server: &ServerNames<'_>, situation: Situation) -> Option<Action> {
        [Some(server.id), Some(server.label), server.info_name]
            .into_iter()
            .flatten()
            .filter_map(|name| self.servers.get(name))
            .find_map(|rules| rules.get(situation))
            .or_else(|| self.defaults.get(situation))
    }
}

/// A shared approval in the team's file: the definition with this hash, of this name, on this
/// server, is approved for every member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Approval {
    /// The server's id, label or serverInfo name; `*` for any server.
    server: String,
    #[serde(default = "tool_kind")]
    kind: Kind,
    name: String,
    /// The SHA-256 of the definition's canonical form (`km plugin tool-guard diff` shows it).
    sha256: String,
    #[serde(default)]
    approved_by: Option<String>,
    #[serde(default)]
    approved_at: Option<String>,
}

fn tool_kind() -> Kind {
    Kind::Tool
}

/// The team's file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamFileRaw {
    #[serde(default)]
    defaults: Rules,
    #[serde(default)]
    servers: BTreeMap<String, Rules>,
    #[serde(default)]
    approvals: Vec<Approval>,
}

/// The team's file: the same rules as a local file, and shared approvals.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "TeamFileRaw")]
pub(crate) struct TeamFile {
    rules: RuleSet,
    approvals: Vec<Approval>,
}

impl From<TeamFileRaw> for TeamFile {
    fn from(raw: TeamFileRaw) -> Self {
        TeamFile {
            rules: RuleSet {
                defaults: raw.defaults,
                servers: raw.servers,
            },
            approvals: raw.approvals,
        }
    }
}

/// The policies in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    policies: Policies<RuleSet, TeamFile>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            policies: Policies {
                local: None,
                team: None,
                team_problems: Vec::new(),
            },
        }
    }
}

impl Policy {
    /// Reads the local and the team policy. An invalid local policy is an error (tool-guard
    /// then fails closed); problems with team files are in [`Policy::team_problems`].
    pub(crate) fn load(host: &impl PolicyHost) -> Result<Policy, km_policy::Error> {
        Ok(Policy {
            policies: km_policy::load(host, POLICY)?,
        })
    }

    fn layered(&self) -> Layered<'_, RuleSet> {
        self.policies.layers(|local| local, |team| &team.rules)
    }

    /// What to do in `situation` on `server`.
    pub(crate) fn decide(&self, server: &ServerNames<'_>, situation: Situation) -> Decided<Action> {
        self.layered().decide(situation.default_action(), |rules| {
            rules.resolve(server, situation)
        })
    }

    /// The team's approval of this exact definition, described for people (`team acme v7,
    /// approved by alice`).
    pub(crate) fn team_approval(
        &self,
        server: &ServerNames<'_>,
        kind: Kind,
        name: &str,
        sha256: &str,
    ) -> Option<String> {
        let team = self.policies.team.as_ref()?;
        let approval = team.policy.approvals.iter().find(|a| {
            (a.server == "*" || server.matches(&a.server))
                && a.kind == kind
                && a.name == name
                && a.sha256.eq_ignore_ascii_case(sha256)
        })?;
        let mut by = format!("team {} v{}", team.bundle.team(), team.bundle.version());
        if let Some(who) = &approval.approved_by {
            by.push_str(&format!(", approved by {who}"));
        }
        if let Some(at) = &approval.approved_at {
            by.push_str(&format!(" at {at}"));
        }
        Some(by)
    }

    /// What was refused about the team files.
    pub(crate) fn team_problems(&self) -> &[km_policy::Error] {
        &self.policies.team_problems
    }
}

#[cfg(test)]
mod tests {
    use km_policy::{Layer, PolicyDir};

    use super::*;

    const SERVER: ServerNames<'static> = ServerNames {
        id: "0123456789abcdef",
        label: "node server.js",
        info_name: Some("demo"),
    };

    fn with_local(text: &str) -> (tempfile::TempDir, Result<Policy, km_policy::Error>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tool-guard.toml"), text).expect("write");
        let host = PolicyDir::new(dir.path(), dir.path().join("state"));
        let policy = Policy::load(&host);
        (dir, policy)
    }

    #[test]
    fn the_built_in_defaults_trust_on_first_use_and_block_changes() {
        let policy = Policy::default();
        let action = |s| policy.decide(&SERVER, s).value;
        assert_eq!(action(Situation::FirstUse), Action::Approve);
        assert_eq!(action(Situation::New), Action::Approve);
        assert_eq!(action(Situation::Changed), Action::Block);
        assert_eq!(action(Situation::Poisoned), Action::Block);
        assert_eq!(action(Situation::Unadvertised), Action::Warn);
    }

    #[test]
    fn a_server_entry_wins_over_the_defaults_by_id_label_or_name() {
        let (_d, policy) = with_local(
            "[defaults]\nnew = \"warn\"\n[servers.demo]\nnew = \"block\"\nchanged = \"warn\"\n[servers.\"node server.js\"]\nchanged = \"approve\"\n",
        );
        let policy = policy.expect("valid");
        let new = policy.decide(&SERVER, Situation::New);
        assert_eq!((new.value, new.from), (Action::Block, Layer::Local));
        // The label is more specific than the serverInfo name.
        assert_eq!(
            policy.decide(&SERVER, Situation::Changed).value,
            Action::Approve
        );
        let other = ServerNames {
            id: "ffffffffffffffff",
            label: "other",
            info_name: None,
        };
        assert_eq!(policy.decide(&other, Situation::New).value, Action::Warn);
        assert_eq!(
            policy.decide(&other, Situation::Changed).value,
            Action::Block
        );
    }

    #[test]
    fn a_misspelt_key_or_action_is_an_error_naming_the_file() {
        for text in [
            "[defaults]\nchagned = \"warn\"\n",
            "[defaults]\nchanged = \"allow\"\n",
            "[default]\nchanged = \"warn\"\n",
        ] {
            let (_d, policy) = with_local(text);
            let err = policy.expect_err(text);
            assert!(err.to_string().contains("tool-guard.toml"), "{err}");
        }
    }
}
