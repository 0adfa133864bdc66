//! The policy: `KM_HOME/policies/advanced-filters.toml`, read through km (which checks it like
//! every file that decides trust), parsed strictly (a misspelt key is an error that names it),
//! and compiled into what [`crate::filter`] asks per finding.
//!
//! ```toml
//! [defaults]
//! secrets = "redact"        # allow | log | redact | block
//! pii = "log"
//! injection = "block"
//! examples = "log"          # documentation examples (AKIAIOSFODNN7EXAMPLE, 4111 1111 1111 1111): allow | log
//! uninspectable = "block"   # lines not inspected completely (too long, too deep): block | log
//! marker = "rule"           # what redaction writes: rule ([REDACTED:rule-id]) | keyed ([REDACTED:rule-id:hmac8])
//!
//! [rules]                   # per rule id (`km plugin advanced-filters rules`)
//! ipv4-address = "allow"
//! generic-secret-assignment = "log"
//!
//! [[override]]              # in order; of those that match a finding, the last one decides
//! server = "npx server-github"   # glob on the server's label, id or command line
//! tool = "create_*"         # glob on the tool (prompt, resource URI) of the request
//! method = "tools/call"     # glob on the method (for a response: its request's)
//! direction = "request"     # request (client to server) | response (server to client)
//! path = "params.arguments.body*"  # glob on the finding's JSON path
//! categories = ["pii"]      # secrets | pii | injection
//! rules = ["email-address"]
//! values = ["hmac:…"]       # keyed hashes of exact values (`km plugin advanced-filters hash`)
//! patterns = ["sk_test_*"]  # globs on the matched value
//! action = "block"
//!
//! [allow]                   # allowlists, applied after everything else
//! values = ["hmac:…"]
//! patterns = ["*@example.org"]
//! paths = ["params.arguments.commit_sha"]
//!
//! [risk]
//! flag = 50                 # a session whose score reaches this is flagged (log line, `risk` event)
//! block_calls_at = 0        # 0: never; else tools/call of tools that are not read-only is blocked from this score
//! exfiltration = "log"      # an open-world tool called after secrets or personal data reached the client: log | block
//!
//! [limits]
//! max_line_bytes = 8388608  # longer lines are not scanned: they are uninspectable
//! ```
//!
//! Actions are ordered `allow < log < redact < block`, so that policies combine by taking the
//! stricter. There are two layers, read by the shared km-policy crate ([`load`]): the local
//! file, and the team's policy (`policies/team/advanced-filters.toml`, the same keys, signed
//! by a team admin key and verified by km-policy, rollbacks refused). The decision for a
//! finding is made in each layer on its own (its defaults, then its `[rules]`, then its
//! overrides in order, then its `[allow]`), and the answers are combined by km-policy's
//! `Layered`: the stricter wins, and a looser local answer is reported as overruled. So a local
//! override or allowlist can tighten the team's policy, never loosen it; the team may loosen
//! the built-in defaults. A layer that cannot be used (a local file that does not parse, a
//! team policy this build cannot apply) is replaced by one that blocks every finding.
//!
//! Values are never written in clear in a policy: an exact value is allowed by its keyed hash
//! (`hmac:` and 32 hex digits: HMAC-SHA256 under this installation's key, whose first 8 digits
//! are the `hmac8` that findings show), or by a pattern.

use std::collections::BTreeMap;
use std::fmt;

use std::cmp::Reverse;

use km_detect::{Category, Detector, Finding};
use km_policy::{Decided, Layer, Layered};
use serde::Deserialize;

use crate::glob::Glob;

/// The policy's name for km-policy: `KM_HOME/policies/advanced-filters.toml` and the team's
/// `policies/team/advanced-filters.toml`.
pub(crate) const NAME: &str = "advanced-filters";

/// The local policy file's name under `KM_HOME/policies/`.
pub(crate) const FILE: &str = "advanced-filters.toml";

/// The team policy file's name under `KM_HOME/policies/`.
pub(crate) const TEAM_FILE: &str = "team/advanced-filters.toml";

/// What is done about a finding. Ordered: greater is stricter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// Nothing: not logged, not reported, not counted.
    Allow,
    /// The message passes as it is; the finding is logged and reported.
    Log,
    /// The matched part is replaced by a marker.
    Redact,
    /// The message is stopped (a request is answered with an error).
    Block,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What redaction writes in place of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MarkerKind {
    /// `[REDACTED:rule-id]`.
    #[default]
    Rule,
    /// `[REDACTED:rule-id:hmac8]`: equal values give equal markers.
    Keyed,
}

/// What happens to documentation examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExampleAction {
    Allow,
    Log,
}

/// What happens to a line that could not be inspected completely (and to an exfiltration
/// signal). Ordered: greater is stricter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UninspectableAction {
    Log,
    Block,
}

/// Which way a message goes, as a policy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DirectionName {
    Request,
    Response,
    #[serde(alias = "client-to-server")]
    ClientToServer,
    #[serde(alias = "server-to-client")]
    ServerToClient,
}

impl DirectionName {
    fn is_request(self) -> bool {
        matches!(self, DirectionName::Request | DirectionName::ClientToServer)
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefaults {
    secrets: Option<Action>,
    pii: Option<Action>,
    injection: Option<Action>,
    examples: Option<ExampleAction>,
    uninspectable: Option<UninspectableAction>,
    marker: Option<MarkerKind>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOverride {
    server: Option<String>,
    tool: Option<String>,
    method: Option<String>,
    direction: Option<DirectionName>,
    path: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    action: Action,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAllow {
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRisk {
    flag: Option<u32>,
    block_calls_at: Option<u32>,
    exfiltration: Option<UninspectableAction>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_line_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default)]
    rules: BTreeMap<String, Action>,
    #[serde(default, rename = "override")]
    overrides: Vec<FileOverride>,
    #[serde(default)]
    allow: FileAllow,
    #[serde(default)]
    risk: FileRisk,
    #[serde(default)]
    limits: FileLimits,
}

// ---- errors --------------------------------------------------------------------------------

/// Why a policy is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PolicyError {
    /// km-policy could not read or parse it (its message names the file, the key and the line).
    #[error("{0}")]
    Load(km_policy::Error),
    /// Not valid TOML, or not this policy's shape.
    #[error("policies/{file}: {message}")]
    Parse { file: String, message: String },
    /// A value that parses but means nothing (an unknown rule id, a bad hash).
    #[error("policies/{file}: {what}")]
    Invalid { file: String, what: String },
}

// ---- compiled ------------------------------------------------------------------------------

/// A keyed hash of a value, as a policy allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ValueHash(pub(crate) [u8; 16]);

impl ValueHash {
    fn parse(text: &str) -> Option<ValueHash> {
        let hex = text.strip_prefix("hmac:")?;
        let bytes = hex::decode(hex).ok()?;
        Some(ValueHash(bytes.try_into().ok()?))
    }
}

impl fmt::Display for ValueHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hmac:{}", hex::encode(self.0))
    }
}

/// What matchers of values need to know about a matched value: its keyed hash and its text.
pub(crate) trait ValueProbe {
    /// The keyed hash of the value (None when no key is available).
    fn hash(&self) -> Option<ValueHash>;
    /// The value as text (lossy for bytes that are not UTF-8).
    fn text(&self) -> Option<&str>;
}

/// The facts about one finding that scopes can match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) server: &'a ServerNames,
    pub(crate) tool: &'a str,
    pub(crate) method: &'a str,
    pub(crate) request: bool,
}

/// The names a server goes by in a policy's `server` glob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerNames {
    pub(crate) label: String,
    pub(crate) id: String,
    pub(crate) command: String,
}

#[derive(Debug, Clone)]
struct Override {
    server: Option<Glob>,
    tool: Option<Glob>,
    method: Option<Glob>,
    request: Option<bool>,
    path: Option<Glob>,
    categories: Vec<Category>,
    rules: Vec<String>,
    values: Vec<ValueHash>,
    patterns: Vec<Glob>,
    action: Action,
}

impl Override {
    fn matches(&self, f: &Finding, s: &Subject<'_>, probe: &dyn ValueProbe) -> bool {
        if let Some(g) = &self.server {
            if !(g.matches(&s.server.label)
                || g.matches(&s.server.id)
                || g.matches(&s.server.command))
            {
                return false;
            }
        }
        let glob_ok = |g: &Option<Glob>, v: &str| g.as_ref().is_none_or(|g| g.matches(v));
        if !glob_ok(&self.tool, s.tool)
            || !glob_ok(&self.method, s.method)
            || !glob_ok(&self.path, &f.path)
            || self.request.is_some_and(|r| r != s.request)
        {
            return false;
        }
        if !self.categories.is_empty() && !self.categories.contains(&f.category) {
            return false;
        }
        if !self.rules.is_empty() && !self.rules.iter().any(|r| r == f.rule) {
            return false;
        }
        values_match(&self.values, &self.patterns, probe)
    }
}

/// Whether a value matcher (hashes or patterns, either) holds; true when there is none.
fn values_match(values: &[ValueHash], patterns: &[Glob], probe: &dyn ValueProbe) -> bool {
    if values.is_empty() && patterns.is_empty() {
        return true;
    }
    if !values.is_empty() {
        if let Some(h) = probe.hash() {
            if values.contains(&h) {
                return true;
            }
        }
    }
    if !patterns.is_empty() {
        if let Some(t) = probe.text() {
            if patterns.iter().any(|g| g.matches(t)) {
                return true;
            }
        }
    }
    false
}

/// One layer of policy, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    secrets: Option<Action>,
    pii: Option<Action>,
    injection: Option<Action>,
    examples: Option<ExampleAction>,
    uninspectable: Option<UninspectableAction>,
    marker: Option<MarkerKind>,
    rules: BTreeMap<String, Action>,
    overrides: Vec<Override>,
    allow_values: Vec<ValueHash>,
    allow_patterns: Vec<Glob>,
    allow_paths: Vec<Glob>,
    flag: Option<u32>,
    block_calls_at: Option<u32>,
    exfiltration: Option<UninspectableAction>,
    max_line_bytes: Option<u64>,
}

fn category(name: &str) -> Option<Category> {
    match name {
        "secret" | "secrets" => Some(Category::SECRET),
        "pii" => Some(Category::PII),
        "injection" => Some(Category::INJECTION),
        _ => None,
    }
}

impl Policy {
    /// Parses and checks a local policy's text; `detector` knows the rule ids.
    pub(crate) fn parse(text: &str, detector: &Detector) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: FILE.to_owned(),
            message: toml_message(text, &e),
        })?;
        Policy::compile(&file, detector, Layer::Local)
    }

    /// Checks and compiles one layer. In the local file an unknown rule id is an error (a
    /// typo must not go unnoticed); in the team's it matches nothing (a newer version of the
    /// plugin may know it), and the rest of the team's policy applies.
    pub(crate) fn compile(
        file: &PolicyFile,
        detector: &Detector,
        layer: Layer,
    ) -> Result<Policy, PolicyError> {
        let file_name = match layer {
            Layer::Team => TEAM_FILE,
            _ => FILE,
        };
        let invalid = |what: String| PolicyError::Invalid {
            file: file_name.to_owned(),
            what,
        };
        let known = |id: &str| layer == Layer::Team || detector.rule(id).is_some();
        for id in file.rules.keys() {
            if !known(id) {
                return Err(invalid(format!(
                    "[rules]: no rule is called {id:?} (see `km plugin advanced-filters rules`)"
                )));
            }
        }
        let hashes = |list: &[String], place: &str| -> Result<Vec<ValueHash>, PolicyError> {
            list.iter()
                .map(|v| {
                    ValueHash::parse(v).ok_or_else(|| {
                        invalid(format!(
                            "{place}: {:?} is not a keyed hash (\"hmac:\" and 32 hex digits, from `km plugin advanced-filters hash`); values are never written in clear",
                            abbreviate(v)
                        ))
                    })
                })
                .collect()
        };
        let mut overrides = Vec::new();
        for (n, o) in file.overrides.iter().enumerate() {
            let place = format!("[[override]] #{}", n + 1);
            let mut categories = Vec::new();
            for c in &o.categories {
                categories.push(category(c).ok_or_else(|| {
                    invalid(format!(
                        "{place}: unknown category {c:?} (secrets, pii or injection)"
                    ))
                })?);
            }
            for r in &o.rules {
                if !known(r) {
                    return Err(invalid(format!(
                        "{place}: no rule is called {r:?} (see `km plugin advanced-filters rules`)"
                    )));
                }
            }
            overrides.push(Override {
                server: o.server.as_deref().map(|g| Glob::new(g, true)),
                tool: o.tool.as_deref().map(|g| Glob::new(g, true)),
                method: o.method.as_deref().map(|g| Glob::new(g, true)),
                request: o.direction.map(DirectionName::is_request),
                path: o.path.as_deref().map(|g| Glob::new(g, false)),
                categories,
                rules: o.rules.clone(),
                values: hashes(&o.values, &place)?,
                patterns: o.patterns.iter().map(|g| Glob::new(g, false)).collect(),
                action: o.action,
            });
        }
        let risk = &file.risk;
        if risk.flag == Some(0) {
            return Err(invalid(
                "[risk] flag = 0 would flag every session; leave it out for the default (50)"
                    .into(),
            ));
        }
        if let Some(limit) = file.limits.max_line_bytes {
            if limit < 1024 {
                return Err(invalid(format!(
                    "[limits] max_line_bytes = {limit} is too small to hold an MCP message (at least 1024)"
                )));
            }
        }
        Ok(Policy {
            secrets: file.defaults.secrets,
            pii: file.defaults.pii,
            injection: file.defaults.injection,
            examples: file.defaults.examples,
            uninspectable: file.defaults.uninspectable,
            marker: file.defaults.marker,
            rules: file.rules.clone(),
            overrides,
            allow_values: hashes(&file.allow.values, "[allow] values")?,
            allow_patterns: file
                .allow
                .patterns
                .iter()
                .map(|g| Glob::new(g, false))
                .collect(),
            allow_paths: file
                .allow
                .paths
                .iter()
                .map(|g| Glob::new(g, false))
                .collect(),
            flag: risk.flag,
            block_calls_at: risk.block_calls_at.filter(|&n| n > 0),
            exfiltration: risk.exfiltration,
            max_line_bytes: file.limits.max_line_bytes,
        })
    }

    /// The policy that stands in for one that cannot be used: every finding, and every line
    /// that cannot be inspected completely, blocks its message.
    pub(crate) fn blocking() -> Policy {
        Policy {
            secrets: Some(Action::Block),
            pii: Some(Action::Block),
            injection: Some(Action::Block),
            examples: None,
            uninspectable: Some(UninspectableAction::Block),
            marker: None,
            rules: BTreeMap::new(),
            overrides: Vec::new(),
            allow_values: Vec::new(),
            allow_patterns: Vec::new(),
            allow_paths: Vec::new(),
            flag: None,
            block_calls_at: None,
            exfiltration: None,
            max_line_bytes: None,
        }
    }

    /// This layer's action for a finding; `None` when the layer says nothing about it.
    fn action(&self, f: &Finding, s: &Subject<'_>, probe: &dyn ValueProbe) -> Option<Action> {
        if f.example {
            return self.examples.map(|e| match e {
                ExampleAction::Allow => Action::Allow,
                ExampleAction::Log => Action::Log,
            });
        }
        let mut action = match f.category {
            Category::SECRET => self.secrets,
            Category::PII => self.pii,
            Category::INJECTION => self.injection,
            // An open category: a new kind of finding is treated like a secret.
            _ => self.secrets,
        };
        if let Some(&a) = self.rules.get(f.rule) {
            action = Some(a);
        }
        for o in &self.overrides {
            if o.matches(f, s, probe) {
                action = Some(o.action);
            }
        }
        let allowed = self.allow_paths.iter().any(|g| g.matches(&f.path))
            || ((!self.allow_values.is_empty() || !self.allow_patterns.is_empty())
                && values_match(&self.allow_values, &self.allow_patterns, probe));
        if allowed {
            action = Some(Action::Allow);
        }
        action
    }
}

/// The built-in action of a category when no layer says anything.
fn builtin(category: Category) -> Action {
    match category {
        Category::PII => Action::Log,
        Category::INJECTION => Action::Block,
        // Secrets, and categories this build does not know (treated as the most sensitive).
        _ => Action::Redact,
    }
}

/// The layers in force: the team's verified policy and the local one, either or both absent.
/// Every decision is made in each layer on its own and combined by km-policy's [`Layered`]:
/// the stricter answer wins, a looser local answer is reported as overruled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layers {
    team: Option<Policy>,
    local: Option<Policy>,
}

impl Layers {
    /// Both layers.
    pub(crate) fn new(team: Option<Policy>, local: Option<Policy>) -> Layers {
        Layers { team, local }
    }

    /// A local policy alone.
    pub(crate) fn local(policy: Policy) -> Layers {
        Layers::new(None, Some(policy))
    }

    fn layered(&self) -> Layered<'_, Policy> {
        Layered::new(self.team.as_ref(), self.local.as_ref())
    }

    fn all(&self) -> impl Iterator<Item = &Policy> {
        self.team.iter().chain(self.local.iter())
    }

    /// The action for a finding: each layer decides on its own, the stricter answer wins; the
    /// built-in default when no layer says anything. Examples are never redacted or blocked.
    pub(crate) fn decide(
        &self,
        f: &Finding,
        s: &Subject<'_>,
        probe: &dyn ValueProbe,
    ) -> Decided<Action> {
        let builtin = if f.example {
            Action::Log
        } else {
            builtin(f.category)
        };
        let mut decided = self.layered().decide(builtin, |l| l.action(f, s, probe));
        if f.example {
            decided.value = decided.value.min(Action::Log);
        }
        decided
    }

    /// Whether a line that could not be inspected completely is blocked.
    pub(crate) fn blocks_uninspectable(&self) -> bool {
        self.layered()
            .decide(UninspectableAction::Block, |p| p.uninspectable)
            .value
            == UninspectableAction::Block
    }

    /// The marker redaction writes (keyed if any layer asks for it).
    pub(crate) fn marker(&self) -> MarkerKind {
        if self.all().any(|p| p.marker == Some(MarkerKind::Keyed)) {
            MarkerKind::Keyed
        } else {
            MarkerKind::Rule
        }
    }

    /// The session score at which a session is flagged (lower is stricter; 50).
    pub(crate) fn flag_at(&self) -> u32 {
        self.layered()
            .decide(Reverse(50), |p| p.flag.map(Reverse))
            .value
            .0
    }

    /// The session score from which calls of tools that are not read-only are blocked (a
    /// score is stricter than none, a lower one stricter than a higher one).
    pub(crate) fn block_calls_at(&self) -> Option<u32> {
        self.layered()
            .decide(None, |p| p.block_calls_at.map(|n| Some(Reverse(n))))
            .value
            .map(|r| r.0)
    }

    /// Whether an open-world call after exposure is blocked (else logged).
    pub(crate) fn blocks_exfiltration(&self) -> bool {
        self.layered()
            .decide(UninspectableAction::Log, |p| p.exfiltration)
            .value
            == UninspectableAction::Block
    }

    /// The longest line scanned. A smaller limit makes more lines uninspectable, which is
    /// stricter only while uninspectable lines are blocked: the local policy may lower the
    /// team's limit then, never otherwise.
    pub(crate) fn max_line_bytes(&self) -> usize {
        let default = 8u64 << 20;
        let team = self.team.as_ref().and_then(|p| p.max_line_bytes);
        let local = self.local.as_ref().and_then(|p| p.max_line_bytes);
        let limit = match (team, local) {
            (Some(t), Some(l)) if l < t && self.blocks_uninspectable() => l,
            (Some(t), _) => t,
            (None, Some(l)) if self.team.is_none() || self.blocks_uninspectable() => l,
            _ => default,
        };
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    /// What a rule gets by default (no scope, a value no allowlist names): for `rules`.
    pub(crate) fn rule_default(&self, rule: &str, category: Category) -> Action {
        self.layered()
            .decide(builtin(category), |p| {
                p.rules.get(rule).copied().or(match category {
                    Category::SECRET => p.secrets,
                    Category::PII => p.pii,
                    Category::INJECTION => p.injection,
                    _ => p.secrets,
                })
            })
            .value
    }

    /// How many overrides and allowlist entries the layers hold (for `check`'s summary).
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.all().fold((0, 0), |(o, a), p| {
            (
                o + p.overrides.len(),
                a + p.allow_values.len() + p.allow_patterns.len() + p.allow_paths.len(),
            )
        })
    }
}

/// The policies in force, as [`load`] found them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) layers: Layers,
    /// Why the local policy could not be used (it is then [`Policy::blocking`]).
    pub(crate) error: Option<PolicyError>,
    /// Whether the local file exists.
    pub(crate) found: bool,
    /// The team policy in force, for people: `team acme version 7`.
    pub(crate) team: Option<String>,
    /// What was refused about the team's files (km-policy keeps the last verified version).
    pub(crate) team_problems: Vec<String>,
}

/// Reads the local policy and the team's verified one through km-policy and compiles both.
/// A layer that cannot be used is replaced by [`Policy::blocking`]: a broken policy never
/// lets through what a working one might have stopped.
pub(crate) fn load(host: &impl km_policy::PolicyHost, detector: &Detector) -> Loaded {
    let loaded = match km_policy::load::<PolicyFile, PolicyFile>(host, NAME) {
        Ok(loaded) => loaded,
        Err(e) => {
            return Loaded {
                layers: Layers::local(Policy::blocking()),
                error: Some(PolicyError::Load(e)),
                found: true,
                team: None,
                team_problems: Vec::new(),
            }
        }
    };
    let mut team_problems: Vec<String> = loaded
        .team_problems
        .iter()
        .map(|p| format!("team policy: {p}"))
        .collect();
    let team_label = loaded.team.as_ref().map(|t| {
        format!(
            "team {} version {}{}",
            t.bundle.team(),
            t.bundle.version(),
            if t.from_record {
                " (as last verified)"
            } else {
                ""
            }
        )
    });
    let team = loaded.team.as_ref().map(|t| {
        Policy::compile(&t.policy, detector, Layer::Team).unwrap_or_else(|e| {
            team_problems.push(format!(
                "team policy: {e}; until it is fixed, every finding blocks its message"
            ));
            Policy::blocking()
        })
    });
    let (local, error) = match loaded
        .local
        .as_ref()
        .map(|l| Policy::compile(l, detector, Layer::Local))
    {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (Some(Policy::blocking()), Some(e)),
        None => (None, None),
    };
    Loaded {
        layers: Layers::new(team, local),
        error,
        found: loaded.local.is_some(),
        team: team_label,
        team_problems,
    }
}

/// toml's error on one line, without the excerpt of the file it quotes (a line of a policy
/// might hold something its author should not have written there, and this goes to km's log).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// The first characters of something a user wrote, for an error message (a value meant as a
/// hash might be the secret itself: show only its start).
fn abbreviate(s: &str) -> String {
    let mut out: String = s.chars().take(6).collect();
    if s.chars().count() > 6 {
        out.push('…');
    }
    out
}

// The path is explicit so that the fuzz target, which compiles this file with `#[path]`, finds
// it too (there a child module would be looked up beside this file, not in `policy/`).
#[cfg(test)]
#[path = "policy/proptests.rs"]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn act(layers: &Layers, f: &Finding, s: &Subject<'_>, probe: &dyn ValueProbe) -> Action {
        layers.decide(f, s, probe).value
    }

    struct NoValue;
    impl ValueProbe for NoValue {
        fn hash(&self) -> Option<ValueHash> {
            None
        }
        fn text(&self) -> Option<&str> {
            None
        }
    }

    struct Value(&'static str, ValueHash);
    impl ValueProbe for Value {
        fn hash(&self) -> Option<ValueHash> {
            Some(self.1)
        }
        fn text(&self) -> Option<&str> {
            Some(self.0)
        }
    }

    fn finding(detector: &Detector, line: &str) -> Finding {
        detector
            .scan_line(line.as_bytes())
            .findings
            .into_iter()
            .next()
            .expect("a finding")
    }

    fn subject(server: &ServerNames) -> Subject<'_> {
        Subject {
            server,
            tool: "send_email",
            method: "tools/call",
            request: true,
        }
    }

    const EMAIL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"jane.doe@acme-corp.io"}}}"#;
    const KEY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"http","arguments":{"key":"AKIAZ7QW3RT5YU2IOP4N"}}}"#;

    #[test]
    fn the_minimal_shape_and_the_builtin_defaults() {
        let d = Detector::new();
        let server = ServerNames::default();
        let none = Layers::default();
        assert_eq!(
            act(&none, &finding(&d, KEY), &subject(&server), &NoValue),
            Action::Redact
        );
        assert_eq!(
            act(&none, &finding(&d, EMAIL), &subject(&server), &NoValue),
            Action::Log
        );
        let p = Policy::parse(
            "[defaults]\nsecrets = \"block\"\npii = \"redact\"\ninjection = \"log\"\n",
            &d,
        )
        .expect("the minimal shape");
        let layers = Layers::local(p);
        assert_eq!(
            act(&layers, &finding(&d, KEY), &subject(&server), &NoValue),
            Action::Block
        );
        assert_eq!(
            act(&layers, &finding(&d, EMAIL), &subject(&server), &NoValue),
            Action::Redact
        );
        assert!(layers.blocks_uninspectable());
        assert_eq!(layers.marker(), MarkerKind::Rule);
    }

    #[test]
    fn rules_then_overrides_in_order_then_allowlists() {
        let d = Detector::new();
        let server = ServerNames {
            label: "npx server-mail".into(),
            id: "0123456789abcdef".into(),
            command: "npx -y @acme/server-mail".into(),
        };
        let text = r#"
[rules]
email-address = "redact"

[[override]]
server = "npx server-*"
tool = "send_*"
direction = "request"
categories = ["pii"]
action = "block"

[[override]]
path = "params.arguments.cc"
action = "log"
"#;
        let layers = Layers::local(Policy::parse(text, &d).expect("valid"));
        let f = finding(&d, EMAIL);
        assert_eq!(act(&layers, &f, &subject(&server), &NoValue), Action::Block);
        let response = Subject {
            request: false,
            ..subject(&server)
        };
        assert_eq!(act(&layers, &f, &response, &NoValue), Action::Redact);
        let other = ServerNames::default();
        assert_eq!(act(&layers, &f, &subject(&other), &NoValue), Action::Redact);

        let hash = ValueHash([7; 16]);
        let text = format!(
            "[defaults]\npii = \"block\"\n[allow]\nvalues = [\"{hash}\"]\npatterns = [\"*@example.org\"]\n"
        );
        let layers = Layers::local(Policy::parse(&text, &d).expect("valid"));
        assert_eq!(
            act(
                &layers,
                &f,
                &subject(&server),
                &Value("jane.doe@acme-corp.io", hash)
            ),
            Action::Allow
        );
        assert_eq!(
            act(
                &layers,
                &f,
                &subject(&server),
                &Value("jane.doe@acme-corp.io", ValueHash([8; 16]))
            ),
            Action::Block
        );
        assert_eq!(
            act(
                &layers,
                &f,
                &subject(&server),
                &Value("bob@example.org", ValueHash([8; 16]))
            ),
            Action::Allow
        );
    }

    #[test]
    fn the_stricter_layer_wins_and_examples_are_never_acted_on() {
        let d = Detector::new();
        let server = ServerNames::default();
        let loose = Policy::parse("[defaults]\nsecrets = \"allow\"\n", &d).expect("valid");
        let strict = Policy::parse("[defaults]\nsecrets = \"block\"\n", &d).expect("valid");
        let layers = Layers::new(Some(strict), Some(loose));
        assert_eq!(
            act(&layers, &finding(&d, KEY), &subject(&server), &NoValue),
            Action::Block
        );
        let example = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"key":"AKIAIOSFODNN7EXAMPLE"}}}"#;
        let f = finding(&d, example);
        assert!(f.example);
        assert_eq!(act(&layers, &f, &subject(&server), &NoValue), Action::Log);
        let quiet =
            Layers::local(Policy::parse("[defaults]\nexamples = \"allow\"\n", &d).expect("valid"));
        assert_eq!(act(&quiet, &f, &subject(&server), &NoValue), Action::Allow);
    }

    #[test]
    fn a_looser_local_answer_is_overruled_by_the_team() {
        let d = Detector::new();
        let server = ServerNames::default();
        let team = Policy::parse("[defaults]\nsecrets = \"block\"\n", &d).expect("valid");
        let local = Policy::parse("[[override]]\ntool = \"send_*\"\naction = \"allow\"\n", &d)
            .expect("valid");
        let layers = Layers::new(Some(team), Some(local));
        let decided = layers.decide(&finding(&d, KEY), &subject(&server), &NoValue);
        assert_eq!(decided.value, Action::Block);
        assert_eq!(decided.overruled, Some(Action::Allow));
    }

    /// A real team bundle, signed with an admin key the trust file lists, read by km-policy.
    #[test]
    fn the_teams_signed_policy_is_a_layer_the_local_one_cannot_loosen() {
        use km_policy::team::{
            payload, seal_ed25519, AdminKey, BundleHeader, TeamTrust, TRUST_FILE,
        };
        use ring::signature::KeyPair as _;
        let d = Detector::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(policies.join("team")).expect("policies/team");
        let host = km_policy::PolicyDir::new(&policies, dir.path().join("state"));
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("a key");
        let admin = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("a key");
        let public: [u8; 32] = admin.public_key().as_ref().try_into().expect("32 bytes");
        let trust =
            TeamTrust::new("acme", vec![(None, AdminKey::from_raw(public))]).expect("trust");
        std::fs::write(policies.join(TRUST_FILE), trust.to_toml()).expect("trust file");
        let header = BundleHeader {
            team: "acme".into(),
            policy: NAME.into(),
            version: 3,
            issued_at: None,
            issued_by: None,
        };
        let body = "[defaults]\npii = \"block\"\n[rules]\nsome-rule-of-a-newer-version = \"log\"\n";
        let sealed = seal_ed25519(payload(&header, body).expect("payload").as_bytes(), &admin)
            .expect("sealed");
        std::fs::write(policies.join(TEAM_FILE), sealed).expect("team file");
        std::fs::write(
            policies.join(FILE),
            "[defaults]\npii = \"allow\"\nsecrets = \"block\"\n",
        )
        .expect("local file");
        let loaded = load(&host, &d);
        assert!(loaded.error.is_none(), "{:?}", loaded.error);
        assert_eq!(loaded.team.as_deref(), Some("team acme version 3"));
        assert!(
            loaded.team_problems.is_empty(),
            "{:?}",
            loaded.team_problems
        );
        let server = ServerNames::default();
        let email = loaded
            .layers
            .decide(&finding(&d, EMAIL), &subject(&server), &NoValue);
        assert_eq!(
            (email.value, email.overruled),
            (Action::Block, Some(Action::Allow))
        );
        assert_eq!(
            act(
                &loaded.layers,
                &finding(&d, KEY),
                &subject(&server),
                &NoValue
            ),
            Action::Block
        );

        // A local file that does not parse: km-policy's error, and the blocking policy.
        std::fs::write(policies.join(FILE), "[defaults]\nsecrets = \"redcat\"\n").expect("local");
        let loaded = load(&host, &d);
        assert!(
            loaded
                .error
                .as_ref()
                .is_some_and(|e| e.to_string().contains("redcat")),
            "{:?}",
            loaded.error
        );
        assert_eq!(
            act(
                &loaded.layers,
                &finding(&d, KEY),
                &subject(&server),
                &NoValue
            ),
            Action::Block
        );
        // An altered team file: refused, the last verified version stays in force.
        std::fs::write(policies.join(FILE), "").expect("local");
        let mut tampered = std::fs::read_to_string(policies.join(TEAM_FILE)).expect("team file");
        tampered = tampered.replacen("payload = \"\"\"\n", "payload = \"\"\"\nAAAA", 1);
        std::fs::write(policies.join(TEAM_FILE), tampered).expect("team file");
        let loaded = load(&host, &d);
        assert!(!loaded.team_problems.is_empty());
        assert!(
            loaded
                .team
                .as_deref()
                .is_some_and(|t| t.contains("as last verified")),
            "{:?}",
            loaded.team
        );
        assert_eq!(
            act(
                &loaded.layers,
                &finding(&d, EMAIL),
                &subject(&server),
                &NoValue
            ),
            Action::Block
        );
    }

    #[test]
    fn mistakes_are_errors_that_name_them_without_echoing_values() {
        let d = Detector::new();
        let cases = [
            ("[defaults]\nsecret = \"block\"\n", "secret"),
            ("[defaults]\nsecrets = \"drop\"\n", "drop"),
            ("[rules]\nno-such-rule = \"log\"\n", "no-such-rule"),
            (
                "[[override]]\ncategories = [\"pi\"]\naction = \"log\"\n",
                "pi",
            ),
            (
                "[[override]]\nrules = [\"emial-address\"]\naction = \"log\"\n",
                "emial-address",
            ),
            ("[[override]]\npath = \"x\"\n", "action"),
            ("[risk]\nflag = 0\n", "flag"),
            ("[limits]\nmax_line_bytes = 10\n", "max_line_bytes"),
            ("[defaults\n", "line 1, column 10"),
        ];
        for (text, named) in cases {
            let e = Policy::parse(text, &d).expect_err(text).to_string();
            assert!(e.contains(named), "{text:?}: {e}");
            assert!(e.contains(FILE), "{e}");
        }
        let e = Policy::parse("[allow]\nvalues = [\"AKIAZ7QW3RT5YU2IOP4N\"]\n", &d)
            .expect_err("a value in clear")
            .to_string();
        assert!(!e.contains("AKIAZ7QW3RT5YU2IOP4N"), "{e}");
        assert!(e.contains("never written in clear"), "{e}");
    }
}
