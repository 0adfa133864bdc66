//! The plugin's policy: `KM_HOME/policies/compliance-reporting.toml`, read through km (which
//! checks it like every file that decides trust).
//!
//! ```toml
//! retention = "365d"              # prune segments whose records are all older (default: keep)
//! checkpoint_interval = "60s"     # signed checkpoints while a session runs (and at its end)
//! checkpoint_records = 1000       # ... and after this many records of a session, whichever first
//! sync_interval = "1s"            # how often appended records are fdatasync'ed
//! pending_timeout = "300s"        # a request without a response by then is recorded unanswered
//! segment_records = 100000        # records per segment file (retention prunes whole segments)
//! skip_notifications = ["notifications/progress"]   # notifications not recorded (this default)
//! personal_data_categories = ["pii"]                # finding categories GDPR reports treat as personal data
//! write_ahead = false             # record every line before km forwards it (see below)
//!
//! [capture]                       # content capture, encrypted per data subject (default off)
//! enabled = true
//! max_bytes = 1048576             # larger pairs are recorded without their content
//!
//! [[capture.subject]]             # who a message is about; first match wins, else the actor
//! server = "node crm.js"          # the server's label or id (optional)
//! tool = "lookup_customer"        # the tool (optional)
//! method = "tools/call"           # the method (optional)
//! path = "$.arguments.customer_id"  # where in the request's params the subject id is
//! ```
//!
//! A path is a small subset of JSONPath, evaluated against the request's `params`: `$` (optional)
//! then `.name`, `["any name"]` or `[index]` steps. The value found must be a string or a number;
//! when the path finds nothing, the subject is the actor (member id, else `user@host`). The
//! subset is hand-written (40 lines) because that is all a subject rule needs, and a general
//! JSONPath engine would bring filter expressions nobody can audit in a policy.
//!
//! `write_ahead = true` makes the plugin record each line from km's interception hook, before
//! the line is forwarded, instead of after (it passes every line, last in the chain, so it records
//! what goes out): then no line reaches the client or the server that a SIGKILL of km could keep
//! out of the trail, and a line the trail cannot take is blocked (km fails closed). It needs the
//! `intercept` capability in the plugin's signed manifest, and costs each line the time of one
//! append to the session's journal. Lines that arrive before km has the subscription's first
//! answer are held in memory until it comes, as without write-ahead.
//!
//! Durations use humantime's syntax (`90s`, `15m`, `365d`). Unknown keys are refused, naming the
//! key, so that a typo cannot silently turn capture or retention off.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The policy file's name under `KM_HOME/policies/`.
pub const POLICY_FILE: &str = "compliance-reporting.toml";

/// The validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long records are kept; `None` for ever.
    pub retention: Option<Duration>,
    /// How often a running session signs a checkpoint.
    pub checkpoint_interval: Duration,
    /// After how many records of its own a session signs one anyway.
    pub checkpoint_records: u64,
    /// How often appended records are flushed to disk (fdatasync).
    pub sync_interval: Duration,
    /// Notification methods not recorded.
    pub skip_notifications: Vec<String>,
    /// Finding categories that are personal data (GDPR reports).
    pub personal_data_categories: Vec<String>,
    /// How long a request waits for its response before it is recorded as unanswered.
    pub pending_timeout: Duration,
    /// The largest number of records in one segment before a new one starts.
    pub segment_records: u64,
    /// Record lines before km forwards them (from the interception hook).
    pub write_ahead: bool,
    /// Content capture.
    pub capture: Capture,
}

/// Content capture settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Capture {
    /// Whether content is captured.
    pub enabled: bool,
    /// The largest pair captured, in bytes.
    pub max_bytes: usize,
    /// Who a message is about.
    pub subjects: Vec<SubjectRule>,
}

/// A rule naming the data subject of matching requests.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRule {
    /// The server's label or id; `None` for any.
    pub server: Option<String>,
    /// The tool; `None` for any.
    pub tool: Option<String>,
    /// The method; `None` for any.
    pub method: Option<String>,
    /// Where the subject id is in `params`.
    pub path: JsonPath,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retention: None,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_records: 1000,
            sync_interval: Duration::from_secs(1),
            skip_notifications: vec!["notifications/progress".to_owned()],
            personal_data_categories: vec!["pii".to_owned()],
            pending_timeout: Duration::from_secs(300),
            segment_records: 100_000,
            write_ahead: false,
            capture: Capture {
                enabled: false,
                max_bytes: 1024 * 1024,
                subjects: Vec::new(),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    retention: Option<String>,
    checkpoint_interval: Option<String>,
    checkpoint_records: Option<u64>,
    sync_interval: Option<String>,
    skip_notifications: Option<Vec<String>>,
    personal_data_categories: Option<Vec<String>>,
    pending_timeout: Option<String>,
    segment_records: Option<u64>,
    write_ahead: Option<bool>,
    capture: Option<RawCapture>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    #[serde(default)]
    enabled: bool,
    max_bytes: Option<usize>,
    #[serde(default)]
    subject: Vec<RawSubject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    server: Option<String>,
    tool: Option<String>,
    method: Option<String>,
    path: String,
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("{key} = {text:?} is not a duration ({e}); write e.g. \"90s\", \"365d\"")
    })?;
    if d.is_zero() {
        return Err(format!("{key} = {text:?} must be longer than zero"));
    }
    Ok(d)
}

impl Policy {
    /// Parses the policy text; the error names the file and what is wrong.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let fail = |e: String| format!("policies/{POLICY_FILE}: {e}");
        let raw: RawPolicy = toml::from_str(text).map_err(|e| fail(e.message().to_owned()))?;
        let mut policy = Policy::default();
        if let Some(r) = raw.retention {
            policy.retention = Some(duration("retention", &r).map_err(fail)?);
        }
        if let Some(c) = raw.checkpoint_interval {
            policy.checkpoint_interval = duration("checkpoint_interval", &c).map_err(fail)?;
        }
        if let Some(n) = raw.checkpoint_records {
            policy.checkpoint_records = n.max(1);
        }
        if let Some(s) = raw.sync_interval {
            policy.sync_interval = duration("sync_interval", &s).map_err(fail)?;
        }
        if let Some(list) = raw.skip_notifications {
            policy.skip_notifications = list;
        }
        if let Some(list) = raw.personal_data_categories {
            policy.personal_data_categories = list;
        }
        if let Some(p) = raw.pending_timeout {
            policy.pending_timeout = duration("pending_timeout", &p).map_err(fail)?;
        }
        if let Some(n) = raw.segment_records {
            policy.segment_records = n.max(1);
        }
        policy.write_ahead = raw.write_ahead.unwrap_or(false);
        if let Some(capture) = raw.capture {
            policy.capture.enabled = capture.enabled;
            if let Some(max) = capture.max_bytes {
                policy.capture.max_bytes = max;
            }
            for (n, rule) in capture.subject.into_iter().enumerate() {
                let path = JsonPath::parse(&rule.path).map_err(|e| {
                    fail(format!("capture.subject[{n}].path = {:?}: {e}", rule.path))
                })?;
                policy.capture.subjects.push(SubjectRule {
                    server: rule.server,
                    tool: rule.tool,
                    method: rule.method,
                    path,
                });
            }
        }
        Ok(policy)
    }

    /// The data subject of a request to `server` (its id and label) calling `method` on
    /// `tool` with `params`: the first rule that matches and finds a value, else `None` (the
    /// actor).
    pub fn subject_of(
        &self,
        server: (&str, &str),
        method: &str,
        tool: &str,
        params: Option<&Value>,
    ) -> Option<String> {
        let params = params?;
        self.capture.subjects.iter().find_map(|rule| {
            let server_ok = rule
                .server
                .as_deref()
                .is_none_or(|s| s == server.0 || s == server.1);
            let tool_ok = rule.tool.as_deref().is_none_or(|t| t == tool);
            let method_ok = rule.method.as_deref().is_none_or(|m| m == method);
            if !(server_ok && tool_ok && method_ok) {
                return None;
            }
            match rule.path.find(params)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        })
    }

    /// Whether any subject rule needs a request's params.
    pub fn needs_params(&self) -> bool {
        self.capture.enabled && !self.capture.subjects.is_empty()
    }
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path into a JSON value: `$.a.b`, `a["b c"][0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parses the subset described in the module documentation.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut rest = text.trim();
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut steps = Vec::new();
        let mut first = true;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("[\"") {
                let end = r.find("\"]").ok_or("an unclosed [\"...\"]")?;
                steps.push(Step::Key(r[..end].to_owned()));
                rest = &r[end + 2..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or("an unclosed [...]")?;
                let index = r[..end]
                    .parse()
                    .map_err(|_| format!("[{}] is not an index", &r[..end]))?;
                steps.push(Step::Index(index));
                rest = &r[end + 1..];
            } else {
                let r = match rest.strip_prefix('.') {
                    Some(r) => r,
                    None if first => rest,
                    None => return Err(format!("expected . or [ at {rest:?}")),
                };
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err("an empty name".to_owned());
                }
                if r[..end].contains([']', '"', ' ']) {
                    return Err(format!(
                        "{:?} is not a name (quote it: [\"...\"])",
                        &r[..end]
                    ));
                }
                steps.push(Step::Key(r[..end].to_owned()));
                rest = &r[end..];
            }
            first = false;
        }
        if steps.is_empty() {
            return Err("the path names nothing".to_owned());
        }
        Ok(JsonPath(steps))
    }

    /// The value at the path, if there is one.
    pub fn find<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(value, |v, step| match step {
            Step::Key(k) => v.get(k.as_str()),
            Step::Index(i) => v.get(*i),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_policy_parses() {
        let p = Policy::parse(
            r#"
            retention = "365d"
            checkpoint_interval = "15s"
            [capture]
            enabled = true
            [[capture.subject]]
            server = "node crm.js"
            tool = "lookup_customer"
            path = "$.arguments.customer_id"
            "#,
        )
        .expect("parses");
        assert_eq!(p.retention, Some(Duration::from_secs(365 * 86400)));
        assert_eq!(p.checkpoint_interval, Duration::from_secs(15));
        assert!(p.capture.enabled && p.needs_params());
        let params = json!({"name": "lookup_customer", "arguments": {"customer_id": "c-42"}});
        assert_eq!(
            p.subject_of(
                ("0123", "node crm.js"),
                "tools/call",
                "lookup_customer",
                Some(&params)
            ),
            Some("c-42".to_owned())
        );
        // Another tool, another server or no value: the actor.
        assert_eq!(
            p.subject_of(
                ("0123", "node crm.js"),
                "tools/call",
                "other",
                Some(&params)
            ),
            None
        );
        assert_eq!(
            p.subject_of(
                ("0123", "node x.js"),
                "tools/call",
                "lookup_customer",
                Some(&params)
            ),
            None
        );
        let empty = json!({"arguments": {}});
        assert_eq!(
            p.subject_of(
                ("0123", "node crm.js"),
                "tools/call",
                "lookup_customer",
                Some(&empty)
            ),
            None
        );
        assert_eq!(
            Policy::parse("").expect("empty is the default"),
            Policy::default()
        );
    }

    #[test]
    fn mistakes_are_named() {
        let e = Policy::parse("retension = \"1d\"").expect_err("unknown key");
        assert!(e.contains("retension") && e.contains(POLICY_FILE), "{e}");
        let e = Policy::parse("retention = \"a year\"").expect_err("bad duration");
        assert!(e.contains("retention"), "{e}");
        let e = Policy::parse("retention = \"0s\"").expect_err("zero");
        assert!(e.contains("longer than zero"), "{e}");
        let e =
            Policy::parse("[capture]\n[[capture.subject]]\npath = \"a[x]\"").expect_err("bad path");
        assert!(e.contains("capture.subject[0].path"), "{e}");
    }

    #[test]
    fn paths_walk_names_quoted_names_and_indices() {
        let v = json!({"a": {"b c": [{"id": 7}, {"id": "x"}]}});
        let find = |p: &str| JsonPath::parse(p).expect("parses").find(&v).cloned();
        assert_eq!(find("$.a[\"b c\"][1].id"), Some(json!("x")));
        assert_eq!(find("a[\"b c\"][0].id"), Some(json!(7)));
        assert_eq!(find("$.a.missing"), None);
        assert_eq!(find("$.a[\"b c\"][9]"), None);
        for bad in ["", "$", "a..b", "a[", "a[\"x", "a.b]x"] {
            assert!(JsonPath::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
