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
//!
//! Shared approvals come two ways, both verified here: `[[approvals]]` in the team's file
//! (signed by an admin key), and `team/tool-guard.approvals.toml`, approvals each signed by the
//! team member who made it, accepted only when the team's roster (`team/roster.toml`, signed by
//! an admin key) gives that member's key the `approver` role
//! ([`km_policy::team::load_approvals`]). team-collaboration collects the latter from the API.

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

/// A shared approval signed by the member who made it (the member and the time are in its
/// signed header).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberApproval {
    /// The server's serverInfo name or label; `*` for any server.
    server: String,
    #[serde(default = "tool_kind")]
    kind: Kind,
    name: String,
    sha256: String,
}

/// The role a roster member needs for their approvals to count.
pub(crate) const APPROVER_ROLE: &str = "approver";

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
    /// The team, and the approvals its members signed.
    member_approvals: km_policy::team::ApprovalLoad<MemberApproval>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            policies: Policies {
                local: None,
                team: None,
                team_problems: Vec::new(),
            },
            member_approvals: km_policy::team::ApprovalLoad::default(),
        }
    }
}

impl Policy {
    /// Reads the local and the team policy, and the team members' approvals. An invalid local
    /// policy is an error (tool-guard then fails closed); problems with team files are in
    /// [`Policy::team_problems`].
    pub(crate) fn load(host: &impl PolicyHost) -> Result<Policy, km_policy::Error> {
        let mut policies = km_policy::load(host, POLICY)?;
        let mut member_approvals =
            km_policy::team::load_approvals::<MemberApproval>(host, POLICY, APPROVER_ROLE);
        policies
            .team_problems
            .append(&mut member_approvals.problems);
        Ok(Policy {
            policies,
            member_approvals,
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
        self.admin_approval(server, kind, name, sha256)
            .or_else(|| self.member_approval(server, kind, name, sha256))
    }

    /// An approval in the admin-signed team file.
    fn admin_approval(
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

    /// An approval a team approver signed.
    fn member_approval(
        &self,
        server: &ServerNames<'_>,
        kind: Kind,
        name: &str,
        sha256: &str,
    ) -> Option<String> {
        let team = self.member_approvals.team.as_deref()?;
        let found = self.member_approvals.approvals.iter().find(|a| {
            let v = &a.value;
            (v.server == "*" || server.matches(&v.server))
                && v.kind == kind
                && v.name == name
                && v.sha256.eq_ignore_ascii_case(sha256)
        })?;
        let header = found.approval.header();
        let mut by = format!("team {team}, approved by {}", header.member);
        if let Some(at) = &header.issued_at {
            by.push_str(&format!(" at {at}"));
        }
        Some(by)
    }

    /// What was refused about the team files.
    pub(crate) fn team_problems(&self) -> &[km_policy::Error] {
        &self.policies.team_problems
    }
}

// The path is explicit so that the fuzz target, which compiles this file with `#[path]`, finds
// it too (there a child module would be looked up beside this file, not in `policy/`).
#[cfg(test)]
#[path = "policy/proptests.rs"]
mod proptests;

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

    /// A team directory with the admin's trust file and a roster (alice: approver, bob: none).
    struct Team {
        dir: tempfile::TempDir,
        alice: ring::signature::Ed25519KeyPair,
        bob: ring::signature::Ed25519KeyPair,
    }

    fn keypair() -> ring::signature::Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generates");
        ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parses")
    }

    fn public(key: &ring::signature::Ed25519KeyPair) -> km_policy::team::AdminKey {
        use ring::signature::KeyPair as _;
        km_policy::team::AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32"))
    }

    impl Team {
        fn new() -> Team {
            use km_policy::team::{payload, seal_ed25519, BundleHeader, TeamTrust};
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("team")).expect("mkdir");
            let admin = keypair();
            let team = Team {
                dir,
                alice: keypair(),
                bob: keypair(),
            };
            let trust = TeamTrust::new("acme", vec![(None, public(&admin))]).expect("trust");
            team.write("team/trust.toml", &trust.to_toml());
            let roster = format!(
                "[[members]]\nid = \"alice\"\nroles = [\"approver\"]\npublic_key = \"\"\"\n{}\"\"\"\n\n[[members]]\nid = \"bob\"\npublic_key = \"\"\"\n{}\"\"\"\n",
                public(&team.alice).to_pem(),
                public(&team.bob).to_pem()
            );
            let header = BundleHeader {
                team: "acme".into(),
                policy: "roster".into(),
                version: 1,
                issued_at: None,
                issued_by: None,
            };
            let text = payload(&header, &roster).expect("payload");
            team.write(
                "team/roster.toml",
                &seal_ed25519(text.as_bytes(), &admin).expect("seal"),
            );
            team
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).expect("write");
        }

        fn approval(
            &self,
            key: &ring::signature::Ed25519KeyPair,
            member: &str,
            name: &str,
        ) -> String {
            use km_policy::team::{approval_payload, seal_approval_ed25519, ApprovalHeader};
            let header = ApprovalHeader {
                team: "acme".into(),
                policy: POLICY.into(),
                member: member.into(),
                issued_at: Some("2025-06-01T12:00:00Z".into()),
            };
            let body = format!("server = \"demo\"\nname = \"{name}\"\nsha256 = \"ABCDEF\"\n");
            let text = approval_payload(&header, &body).expect("payload");
            seal_approval_ed25519(text.as_bytes(), key).expect("seal")
        }

        fn policy(&self) -> Policy {
            let host = PolicyDir::new(self.dir.path(), self.dir.path().join("state"));
            Policy::load(&host).expect("loads")
        }
    }

    #[test]
    fn an_approvers_signed_approval_counts_for_the_team_and_a_members_does_not() {
        let team = Team::new();
        let by_alice = team.approval(&team.alice, "alice", "echo");
        let by_bob = team.approval(&team.bob, "bob", "rm");
        let text =
            km_policy::team::approvals::approvals_text("acme", POLICY, &[&by_alice, &by_bob])
                .expect("file");
        team.write("team/tool-guard.approvals.toml", &text);
        let policy = team.policy();
        assert_eq!(
            policy
                .team_approval(&SERVER, Kind::Tool, "echo", "abcdef")
                .as_deref(),
            Some("team acme, approved by alice at 2025-06-01T12:00:00Z")
        );
        assert_eq!(
            policy.team_approval(&SERVER, Kind::Tool, "rm", "abcdef"),
            None
        );
        assert_eq!(
            policy.team_approval(&SERVER, Kind::Tool, "echo", "abcde0"),
            None,
            "another definition"
        );
        let problems: Vec<String> = policy
            .team_problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("approval 1") && p.contains("approver role")),
            "{problems:?}"
        );
    }
}
