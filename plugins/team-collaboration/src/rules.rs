//! What may be called: the servers and tools a team (and the local policy) blocks or allows, and
//! the decision for one server or one tool call.
//!
//! The same keys in the team's signed `team/team-collaboration.toml` and in the local
//! `KM_HOME/policies/team-collaboration.toml`:
//!
//! ```toml
//! blocked_servers = ["shell"]                  # never this server: every request is refused
//! allowed_servers = ["github", "filesystem"]   # only these (absent: any)
//! blocked_tools = ["delete_*"]                 # on every server
//! allowed_tools = ["read_*", "search"]         # only these, on every server (absent: any)
//!
//! [servers."github"]                           # the server's serverInfo name, label or id
//! blocked_tools = ["merge_pull_request"]
//! allowed_tools = ["create_issue", "search_*"]
//! ```
//!
//! A server is named by its `serverInfo` name (what it calls itself in `initialize`, the same on
//! every machine), its label (`npx server-github`) or its id (the hash of its command line, per
//! machine); a pattern is a name with `*` standing for any run of characters. Unknown keys are
//! refused: a team setting this plugin does not know must not be dropped silently.
//!
//! **A local policy can only tighten the team's.** Each layer decides on its own (its own
//! per-server entries and lists), and a call is refused when either layer refuses it: the
//! blocked lists are the union of both, the allowed lists the intersection (km-policy's rule for
//! denials and allowances, applied per decision). A local entry for a server cannot let through
//! what the team blocks everywhere.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One layer's rules, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rules {
    #[serde(default)]
    blocked_servers: Vec<String>,
    #[serde(default)]
    allowed_servers: Option<Vec<String>>,
    #[serde(default)]
    blocked_tools: Vec<String>,
    #[serde(default)]
    allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    servers: BTreeMap<String, ServerRules>,
}

/// The rules for one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerRules {
    #[serde(default)]
    blocked_tools: Vec<String>,
    #[serde(default)]
    allowed_tools: Option<Vec<String>>,
}

/// How a server can be named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerNames {
    pub(crate) id: String,
    pub(crate) label: String,
    /// `serverInfo.name`, once the server answered `initialize`.
    pub(crate) info_name: Option<String>,
}

impl ServerNames {
    fn all(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.id.as_str()),
            Some(self.label.as_str()),
            self.info_name.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether `pattern` names this server.
    fn matches(&self, pattern: &str) -> bool {
        self.all().any(|name| glob(pattern, name))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none
/// included). Hand-written: one wildcard over short names needs no regex or glob crate; the
/// greedy backtracking below is linear in practice for such patterns.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Why something is refused, within one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server is in `blocked_servers`.
    BlockedServer,
    /// The server is not in `allowed_servers`.
    ServerNotAllowed,
    /// The tool is in a `blocked_tools` list.
    BlockedTool,
    /// The tool is not in an `allowed_tools` list that applies.
    ToolNotAllowed,
}

impl Refusal {
    /// The rule id verdicts carry.
    pub(crate) fn rule(self) -> &'static str {
        match self {
            Refusal::BlockedServer => "team-blocked-server",
            Refusal::ServerNotAllowed => "team-server-not-allowed",
            Refusal::BlockedTool => "team-blocked-tool",
            Refusal::ToolNotAllowed => "team-tool-not-allowed",
        }
    }

    /// What it says, for people.
    pub(crate) fn says(self) -> &'static str {
        match self {
            Refusal::BlockedServer => "blocks this server",
            Refusal::ServerNotAllowed => "does not allow this server",
            Refusal::BlockedTool => "blocks this tool",
            Refusal::ToolNotAllowed => "does not allow this tool",
        }
    }
}

impl Rules {
    /// Whether this layer refuses the server.
    pub(crate) fn server(&self, server: &ServerNames) -> Option<Refusal> {
        if self.blocked_servers.iter().any(|p| server.matches(p)) {
            return Some(Refusal::BlockedServer);
        }
        match &self.allowed_servers {
            Some(allowed) if !allowed.iter().any(|p| server.matches(p)) => {
                Some(Refusal::ServerNotAllowed)
            }
            _ => None,
        }
    }

    /// Whether this layer refuses a call of `tool` on the server.
    pub(crate) fn tool(&self, server: &ServerNames, tool: &str) -> Option<Refusal> {
        let entries: Vec<&ServerRules> = self
            .servers
            .iter()
            .filter(|(name, _)| server.matches(name))
            .map(|(_, rules)| rules)
            .collect();
        let blocked = self
            .blocked_tools
            .iter()
            .chain(entries.iter().flat_map(|e| &e.blocked_tools))
            .any(|p| glob(p, tool));
        if blocked {
            return Some(Refusal::BlockedTool);
        }
        let allowed_lists = self
            .allowed_tools
            .iter()
            .chain(entries.iter().filter_map(|e| e.allowed_tools.as_ref()));
        for list in allowed_lists {
            if !list.iter().any(|p| glob(p, tool)) {
                return Some(Refusal::ToolNotAllowed);
            }
        }
        None
    }

    /// Whether this layer says anything at all.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Rules::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(info: Option<&str>) -> ServerNames {
        ServerNames {
            id: "0123456789abcdef".into(),
            label: "npx server-github".into(),
            info_name: info.map(str::to_owned),
        }
    }

    fn rules(text: &str) -> Rules {
        toml::from_str(text).expect("valid rules")
    }

    #[test]
    fn globs_match_runs_of_characters() {
        for (pattern, name, expected) in [
            ("delete_*", "delete_repo", true),
            ("delete_*", "delete_", true),
            ("delete_*", "undelete_repo", false),
            ("*_repo", "delete_repo", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("**x", "yx", true),
        ] {
            assert_eq!(glob(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn servers_are_named_by_info_name_label_or_id() {
        let r = rules("blocked_servers = [\"github*\"]\n");
        assert_eq!(r.server(&names(None)), None);
        assert_eq!(
            r.server(&names(Some("github-mcp"))),
            Some(Refusal::BlockedServer)
        );
        let r = rules("allowed_servers = [\"npx server-*\"]\n");
        assert_eq!(r.server(&names(None)), None);
        let r = rules("allowed_servers = [\"filesystem\"]\n");
        assert_eq!(
            r.server(&names(Some("github"))),
            Some(Refusal::ServerNotAllowed)
        );
        let r = rules("blocked_servers = [\"0123456789abcdef\"]\n");
        assert_eq!(r.server(&names(None)), Some(Refusal::BlockedServer));
    }

    #[test]
    fn tools_are_refused_by_any_list_that_applies() {
        let r = rules(
            "blocked_tools = [\"delete_*\"]\n[servers.github]\nblocked_tools = [\"merge\"]\nallowed_tools = [\"merge\", \"search_*\", \"delete_repo\"]\n",
        );
        let gh = names(Some("github"));
        assert_eq!(r.tool(&gh, "delete_repo"), Some(Refusal::BlockedTool));
        assert_eq!(r.tool(&gh, "merge"), Some(Refusal::BlockedTool));
        assert_eq!(r.tool(&gh, "search_code"), None);
        assert_eq!(r.tool(&gh, "create_issue"), Some(Refusal::ToolNotAllowed));
        let other = names(Some("filesystem"));
        assert_eq!(r.tool(&other, "create_issue"), None);
        assert_eq!(r.tool(&other, "delete_file"), Some(Refusal::BlockedTool));
        assert!(!r.is_empty());
        assert!(Rules::default().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Rules>("blocked_tool = [\"x\"]\n").is_err());
        assert!(toml::from_str::<Rules>("[servers.x]\nblocked = []\n").is_err());
    }
}
