//! SOC 2 and GDPR reports from the trail: the evidence grouped by criterion, in HTML, JSON or
//! Markdown, each carrying the signed checkpoint it was built from and signed itself.
//!
//! A report is built only from a trail that verifies, and only from the records a signed
//! checkpoint covers (the command signs one first if records are unsigned). The criteria:
//!
//! | report | section | evidence |
//! |---|---|---|
//! | SOC 2 | CC6.1 logical access | who (OS user, host, team member) called which tools of which servers, how often, with what outcome; the sessions |
//! | SOC 2 | CC6.7 data transmission | blocked and redacted calls with their rules and plugins; findings by category and tool |
//! | SOC 2 | CC7.2 monitoring | refused and disabled plugins, anomalies, gaps, repaired torn records, sessions that ended abnormally, checkpoints the API refused, relay errors; the trail's own verification |
//! | SOC 2 | CC8.1 change management | tool definition changes and approvals; plugin installs, updates and removals |
//! | GDPR | Art. 30 record of processing | which servers and tools processed which categories of personal data, when, for how many actors |
//! | GDPR | Art. 32 security of processing | the measures in force, each with its evidence in the trail |
//! | GDPR | Art. 33 incident candidates | events that may be personal-data breaches to assess within 72 hours |
//! | GDPR | Art. 17 erasure log | erasures (crypto-shredding) and retention pruning |
//!
//! The embedded checkpoint is the JSON `{"checkpoint": TEXT, "signature": B64}`: the `checkpoint`
//! member of a JSON report, and in HTML and Markdown a comment line
//! `<!-- km-audit-checkpoint {...} -->` (its text is also shown). The detached signature is
//! `FILE.sig`: `{"km_audit_report_signature": 1, "key_id", "public_key", "sha256", "signature"}`,
//! Ed25519 over the domain prefix and the SHA-256 of the file's bytes (see km-audit).
//!
//! The HTML page is self-contained: inline CSS, no script, no external resource; every value that
//! came from a server or a client is escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use km_audit::SignedCheckpointJson;
use serde::{Deserialize, Serialize};

use crate::record::{self, Record};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// SOC 2 (Trust Services Criteria).
    Soc2,
    /// GDPR.
    Gdpr,
}

impl Framework {
    /// From the command line.
    pub fn parse(text: &str) -> Option<Framework> {
        match text.to_ascii_lowercase().as_str() {
            "soc2" | "soc-2" => Some(Framework::Soc2),
            "gdpr" => Some(Framework::Gdpr),
            _ => None,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Framework::Soc2 => "soc2",
            Framework::Gdpr => "gdpr",
        }
    }
}

/// The output format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A self-contained HTML page.
    Html,
    /// JSON.
    Json,
    /// Markdown.
    Markdown,
}

impl Format {
    /// `.html`/`.htm`, `.json`, `.md`/`.markdown`.
    pub fn of(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "html" | "htm" => Some(Format::Html),
            "json" => Some(Format::Json),
            "md" | "markdown" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// A table of evidence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Table {
    /// What it shows.
    pub caption: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, as text.
    pub rows: Vec<Vec<String>>,
    /// What to say when there is no row.
    pub empty: String,
}

/// One criterion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Section {
    /// `CC6.1`, `Art. 30`, ...
    pub id: String,
    /// Its name.
    pub title: String,
    /// What the evidence says, in a sentence or two.
    pub summary: String,
    /// The evidence.
    pub tables: Vec<Table>,
}

/// The facts a report states about itself and its trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    /// The audit key id.
    pub key_id: String,
    /// The installation's host and user.
    pub installation: String,
    /// The customer of the subscription.
    pub customer: String,
    /// When the report was made.
    pub generated: String,
    /// The period asked for.
    pub since: Option<String>,
    /// The period asked for.
    pub until: Option<String>,
    /// What `verify` said.
    pub verification: String,
    /// Checkpoints the API holds that were compared.
    pub witnessed: usize,
    /// The retention policy.
    pub retention: String,
    /// Whether content capture is on.
    pub capture: bool,
    /// Finding categories treated as personal data.
    pub personal_data_categories: Vec<String>,
}

/// A report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Format version, 1.
    pub km_audit_report: u32,
    /// `soc2` or `gdpr`.
    pub framework: String,
    /// The title.
    pub title: String,
    /// About the report and the trail.
    pub facts: Facts,
    /// The checkpoint it was built from.
    pub checkpoint: SignedCheckpointJson,
    /// Records in the period (of those the checkpoint covers).
    pub records: u64,
    /// The first and last record index in the period.
    pub record_range: Option<(u64, u64)>,
    /// The evidence.
    pub sections: Vec<Section>,
}

fn server_of(r: &Record) -> String {
    r.server
        .as_ref()
        .map_or_else(|| "-".to_owned(), |s| format!("{} ({})", s.label, s.id))
}

fn tool_of(r: &Record) -> String {
    if r.tool.is_empty() {
        r.method.clone()
    } else if r.method == "tools/call" || r.method.is_empty() {
        r.tool.clone()
    } else {
        format!("{} {}", r.method, r.tool)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn detail_text(r: &Record) -> String {
    let mut parts = Vec::new();
    for (k, v) in &r.detail {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{k}: {value}"));
    }
    parts.join("; ")
}

fn table(caption: &str, columns: &[&str], rows: Vec<Vec<String>>, empty: &str) -> Table {
    Table {
        caption: caption.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows,
        empty: empty.to_owned(),
    }
}

#[derive(Default)]
struct Usage {
    calls: u64,
    errors: u64,
    blocked: u64,
    redacted: u64,
    first: String,
    last: String,
}

impl Usage {
    fn add(&mut self, r: &Record) {
        self.calls += 1;
        match r.outcome.as_str() {
            "error" => self.errors += 1,
            "blocked" => self.blocked += 1,
            "redacted" => self.redacted += 1,
            _ => {}
        }
        if self.first.is_empty() {
            self.first = r.t.clone();
        }
        self.last = r.t.clone();
    }
}

/// Builds a report from the records a checkpoint covers (`(index, record)`, in order, already
/// restricted to the period).
pub fn build(
    framework: Framework,
    facts: Facts,
    checkpoint: SignedCheckpointJson,
    records: &[(u64, Record)],
) -> Report {
    let sections = match framework {
        Framework::Soc2 => soc2(records, &facts),
        Framework::Gdpr => gdpr(records, &facts),
    };
    Report {
        km_audit_report: 1,
        framework: framework.id().to_owned(),
        title: match framework {
            Framework::Soc2 => "SOC 2 evidence: MCP tool use".to_owned(),
            Framework::Gdpr => "GDPR evidence: processing by MCP tools".to_owned(),
        },
        facts,
        checkpoint,
        records: records.len() as u64,
        record_range: records.first().zip(records.last()).map(|(a, b)| (a.0, b.0)),
        sections,
    }
}

fn calls(records: &[(u64, Record)]) -> impl Iterator<Item = &(u64, Record)> {
    records.iter().filter(|(_, r)| r.kind == "call")
}

fn incident_row(i: u64, r: &Record) -> Vec<String> {
    vec![
        format!("#{i}"),
        r.t.clone(),
        r.actor.display(),
        server_of(r),
        tool_of(r),
        r.direction.clone(),
        r.outcome.clone(),
        list(&r.rules),
        list(&r.plugins),
        list(&r.findings),
    ]
}

const INCIDENT_COLUMNS: [&str; 10] = [
    "Record",
    "Time",
    "Actor",
    "Server",
    "Tool",
    "Direction",
    "Outcome",
    "Rules",
    "Plugins",
    "Findings",
];

fn access(records: &[(u64, Record)]) -> (Table, Table) {
    let mut usage: BTreeMap<(String, String, String), Usage> = BTreeMap::new();
    for (_, r) in calls(records) {
        usage
            .entry((r.actor.display(), server_of(r), tool_of(r)))
            .or_default()
            .add(r);
    }
    let rows = usage
        .into_iter()
        .map(|((actor, server, tool), u)| {
            vec![
                actor,
                server,
                tool,
                u.calls.to_string(),
                u.errors.to_string(),
                u.blocked.to_string(),
                u.redacted.to_string(),
                u.first,
                u.last,
            ]
        })
        .collect();
    let access = table(
        "Who called which tools",
        &[
            "Actor", "Server", "Tool", "Calls", "Errors", "Blocked", "Redacted", "First", "Last",
        ],
        rows,
        "No calls in the period.",
    );
    let mut sessions: BTreeMap<String, (String, String, String, String, u64, String)> =
        BTreeMap::new();
    for (_, r) in records {
        let entry = sessions.entry(r.session.to_string()).or_insert_with(|| {
            (
                r.actor.display(),
                server_of(r),
                r.t.clone(),
                String::new(),
                0,
                String::new(),
            )
        });
        match r.kind.as_str() {
            "call" => entry.4 += 1,
            "session.end" => {
                entry.3 = r.t.clone();
                if r.detail.get("abnormal").is_some_and(|a| a == true) {
                    entry.5 = "abnormal: km was killed or crashed".to_owned();
                }
            }
            _ => {}
        }
        if entry.1 == "-" && r.server.is_some() {
            entry.1 = server_of(r);
        }
    }
    let rows = sessions
        .into_iter()
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, (actor, server, start, end, n, note))| {
            vec![s, actor, server, start, end, n.to_string(), note]
        })
        .collect();
    let sessions = table(
        "Sessions",
        &[
            "Session",
            "Actor",
            "Server",
            "First record",
            "Ended",
            "Calls",
            "Note",
        ],
        rows,
        "No sessions in the period.",
    );
    (access, sessions)
}

/// Rules (or categories), records and actors of one group of findings; with the first and last
/// time for the record of processing.
#[derive(Default)]
struct Tally(BTreeSet<String>, u64, BTreeSet<String>, String, String);

fn findings_table(records: &[(u64, Record)], only: Option<&[String]>, caption: &str) -> Table {
    let mut by: BTreeMap<(String, String, String), Tally> = BTreeMap::new();
    for (_, r) in records {
        for category in &r.findings {
            if only.is_some_and(|o| !o.contains(category)) {
                continue;
            }
            let e = by
                .entry((category.clone(), server_of(r), tool_of(r)))
                .or_default();
            e.0.extend(r.finding_rules.iter().cloned());
            e.1 += 1;
            e.2.insert(r.actor.display());
        }
    }
    let rows = by
        .into_iter()
        .map(|((category, server, tool), Tally(rules, n, actors, ..))| {
            vec![
                category,
                if rules.is_empty() {
                    "-".to_owned()
                } else {
                    rules.into_iter().collect::<Vec<_>>().join(", ")
                },
                server,
                tool,
                n.to_string(),
                actors.len().to_string(),
            ]
        })
        .collect();
    table(
        caption,
        &["Category", "Rules", "Server", "Tool", "Records", "Actors"],
        rows,
        "No findings in the period.",
    )
}

fn is_monitoring_event(r: &Record) -> bool {
    match r.kind.as_str() {
        "host" => matches!(
            r.detail.get("event").and_then(|e| e.as_str()),
            Some("refused" | "disabled") | None
        ),
        "anomaly" | "gap" | "repair" | "witness" | "session.error" => true,
        "session.end" => r.detail.get("abnormal").is_some_and(|a| a == true),
        _ => false,
    }
}

fn event_row(i: u64, r: &Record) -> Vec<String> {
    vec![
        format!("#{i}"),
        r.t.clone(),
        r.kind.clone(),
        list(&r.plugins),
        server_of(r),
        detail_text(r),
    ]
}

const EVENT_COLUMNS: [&str; 6] = ["Record", "Time", "Kind", "Plugin", "Server", "Details"];

fn soc2(records: &[(u64, Record)], facts: &Facts) -> Vec<Section> {
    let (access, sessions) = access(records);
    let n_calls = calls(records).count();
    let actors: BTreeSet<String> = calls(records).map(|(_, r)| r.actor.display()).collect();
    let stopped: Vec<Vec<String>> = records
        .iter()
        .filter(|(_, r)| {
            matches!(r.kind.as_str(), "call" | "verdict" | "notification")
                && matches!(r.outcome.as_str(), "blocked" | "redacted")
        })
        .map(|(i, r)| incident_row(*i, r))
        .collect();
    let n_stopped = stopped.len();
    let monitoring: Vec<Vec<String>> = records
        .iter()
        .filter(|(_, r)| is_monitoring_event(r))
        .map(|(i, r)| event_row(*i, r))
        .collect();
    let changes: Vec<Vec<String>> = records
        .iter()
        .filter(|(_, r)| r.kind == "change")
        .map(|(i, r)| {
            vec![
                format!("#{i}"),
                r.t.clone(),
                list(&r.plugins),
                server_of(r),
                r.tool.clone(),
                r.detail
                    .get("event")
                    .and_then(|e| e.as_str())
                    .unwrap_or("change")
                    .to_owned(),
                detail_text(r),
            ]
        })
        .collect();
    let installs: Vec<Vec<String>> = records
        .iter()
        .filter(|(_, r)| {
            r.kind == "host"
                && matches!(
                    r.detail.get("event").and_then(|e| e.as_str()),
                    Some("installed" | "updated" | "uninstalled")
                )
        })
        .map(|(i, r)| event_row(*i, r))
        .collect();
    vec![
        Section {
            id: "CC6.1".into(),
            title: "Logical access: who called which tools".into(),
            summary: format!(
                "{n_calls} calls by {} actor(s) in the period, every one recorded with its actor, server, tool and outcome.",
                actors.len()
            ),
            tables: vec![access, sessions],
        },
        Section {
            id: "CC6.7".into(),
            title: "Data transmission: what was blocked or redacted on the way".into(),
            summary: format!(
                "{n_stopped} line(s) were blocked or redacted by plugins on the path; findings are listed by category and tool."
            ),
            tables: vec![
                table(
                    "Blocked and redacted calls",
                    &INCIDENT_COLUMNS,
                    stopped,
                    "Nothing was blocked or redacted in the period.",
                ),
                findings_table(records, None, "Findings by category"),
            ],
        },
        Section {
            id: "CC7.2".into(),
            title: "Monitoring: anomalies, refused or tampered plugins, gaps".into(),
            summary: format!(
                "The audit trail verifies ({}); {} checkpoint(s) held by the Kilometers API were compared. {} monitoring event(s) in the period.",
                facts.verification,
                facts.witnessed,
                monitoring.len()
            ),
            tables: vec![table(
                "Monitoring events",
                &EVENT_COLUMNS,
                monitoring,
                "No anomalies, refused plugins, gaps or repairs in the period.",
            )],
        },
        Section {
            id: "CC8.1".into(),
            title: "Change management: tool definitions and plugins".into(),
            summary: format!(
                "{} tool definition change(s) or approval(s), {} plugin install(s), update(s) or removal(s).",
                changes.len(),
                installs.len()
            ),
            tables: vec![
                table(
                    "Tool definition changes and approvals",
                    &["Record", "Time", "Plugin", "Server", "Tool", "Event", "Details"],
                    changes,
                    "No tool definition changed in the period.",
                ),
                table(
                    "Plugin installs and updates",
                    &EVENT_COLUMNS,
                    installs,
                    "No plugin was installed, updated or removed in the period.",
                ),
            ],
        },
    ]
}

fn gdpr(records: &[(u64, Record)], facts: &Facts) -> Vec<Section> {
    let personal = &facts.personal_data_categories;
    let is_personal = |r: &Record| r.findings.iter().any(|c| personal.contains(c));
    // Art. 30: server and tool by categories of personal data.
    let mut processing: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for (_, r) in records.iter().filter(|(_, r)| is_personal(r)) {
        let e = processing
            .entry((server_of(r), tool_of(r)))
            .or_insert_with(|| {
                Tally(
                    BTreeSet::new(),
                    0,
                    BTreeSet::new(),
                    r.t.clone(),
                    String::new(),
                )
            });
        if r.finding_rules.is_empty() {
            e.0.extend(r.findings.iter().filter(|c| personal.contains(c)).cloned());
        } else {
            e.0.extend(r.finding_rules.iter().cloned());
        }
        e.1 += 1;
        e.2.insert(r.actor.display());
        e.4 = r.t.clone();
    }
    let rows: Vec<Vec<String>> = processing
        .into_iter()
        .map(|((server, tool), Tally(cats, n, actors, first, last))| {
            vec![
                server,
                tool,
                cats.into_iter().collect::<Vec<_>>().join(", "),
                n.to_string(),
                actors.into_iter().collect::<Vec<_>>().join(", "),
                first,
                last,
            ]
        })
        .collect();
    let n_processing = rows.len();
    // Art. 32: measures, with their evidence.
    let verdict_plugins: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| !r.rules.is_empty())
        .flat_map(|(_, r)| r.plugins.iter().cloned())
        .collect();
    let change_plugins: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| r.kind == "change")
        .flat_map(|(_, r)| r.plugins.iter().cloned())
        .collect();
    let stopped = records
        .iter()
        .filter(|(_, r)| matches!(r.outcome.as_str(), "blocked" | "redacted"))
        .count();
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    let measures = vec![
        vec![
            "Tamper-evident audit trail".to_owned(),
            format!(
                "Every call recorded in an RFC 6962 Merkle tree with Ed25519-signed checkpoints (audit key {}); verification: {}.",
                facts.key_id, facts.verification
            ),
        ],
        vec![
            "External copy of the checkpoints".to_owned(),
            if facts.witnessed > 0 {
                format!("{} checkpoint(s) held by the Kilometers API agree with the trail.", facts.witnessed)
            } else {
                "Not compared: no Kilometers API checkpoints were available.".to_owned()
            },
        ],
        vec![
            "Data minimisation in the trail".to_owned(),
            if facts.capture {
                "Content capture is on: request and response lines are encrypted (AES-256-GCM) per data subject, erasable by destroying the subject's key.".to_owned()
            } else {
                "Content capture is off: only sizes and SHA-256 digests of parameters and results are recorded.".to_owned()
            },
        ],
        vec!["Retention".to_owned(), facts.retention.clone()],
        vec![
            "Filtering on the path".to_owned(),
            if verdict_plugins.is_empty() {
                "No plugin blocked or redacted anything in the period.".to_owned()
            } else {
                format!("{stopped} line(s) blocked or redacted by {}.", join(&verdict_plugins))
            },
        ],
        vec![
            "Pinned tool definitions".to_owned(),
            if change_plugins.is_empty() {
                "No tool definition change was reported in the period.".to_owned()
            } else {
                format!("Changes reported by {}.", join(&change_plugins))
            },
        ],
    ];
    // Art. 33: incident candidates.
    let incidents: Vec<Vec<String>> = records
        .iter()
        .filter_map(|(i, r)| {
            let why = if matches!(r.outcome.as_str(), "blocked" | "redacted")
                && (is_personal(r) || r.findings.iter().any(|c| c == "secret"))
            {
                format!(
                    "{} with {} on the way ({})",
                    r.outcome,
                    list(&r.findings),
                    list(&r.rules)
                )
            } else if is_personal(r) && r.outcome == "ok" && r.direction == "request" {
                format!(
                    "personal data ({}) sent to the server",
                    list(&r.finding_rules)
                )
            } else if is_monitoring_event(r) {
                format!("{}: {}", r.kind, detail_text(r))
            } else {
                return None;
            };
            Some(vec![
                format!("#{i}"),
                r.t.clone(),
                r.actor.display(),
                server_of(r),
                tool_of(r),
                why,
            ])
        })
        .collect();
    let erasures: Vec<Vec<String>> = records
        .iter()
        .filter(|(_, r)| matches!(r.kind.as_str(), "erasure" | "retention"))
        .map(|(i, r)| {
            vec![
                format!("#{i}"),
                r.t.clone(),
                r.kind.clone(),
                r.actor.display(),
                detail_text(r),
            ]
        })
        .collect();
    vec![
        Section {
            id: "Art. 30".into(),
            title: "Record of processing activities".into(),
            summary: format!(
                "{n_processing} server/tool combination(s) processed personal data ({}) in the period.",
                list(personal)
            ),
            tables: vec![
                table(
                    "Servers and tools by category of personal data",
                    &["Server", "Tool", "Categories", "Records", "Actors", "First", "Last"],
                    rows,
                    "No personal data was found in the period.",
                ),
                findings_table(records, Some(personal), "Personal-data findings"),
            ],
        },
        Section {
            id: "Art. 32".into(),
            title: "Security of processing: measures in force".into(),
            summary: "The technical measures km enforced, with the evidence the trail holds.".into(),
            tables: vec![table("Measures", &["Measure", "Evidence"], measures, "")],
        },
        Section {
            id: "Art. 33".into(),
            title: "Incident candidates".into(),
            summary: format!(
                "{} event(s) to assess: a personal-data breach must be notified within 72 hours of becoming aware of it.",
                incidents.len()
            ),
            tables: vec![table(
                "Incident candidates",
                &["Record", "Time", "Actor", "Server", "Tool", "Why"],
                incidents,
                "No incident candidates in the period.",
            )],
        },
        Section {
            id: "Art. 17".into(),
            title: "Erasure log".into(),
            summary: format!(
                "{} erasure(s) and retention pruning(s) in the period. Erasure destroys the data subject's key: the trail keeps verifying, the content is unreadable.",
                erasures.len()
            ),
            tables: vec![table(
                "Erasures and retention",
                &["Record", "Time", "Kind", "Actor", "Details"],
                erasures,
                "No erasure or pruning in the period.",
            )],
        },
    ]
}

/// The marker of the embedded checkpoint in HTML and Markdown.
const MARKER: &str = "<!-- km-audit-checkpoint ";

fn checkpoint_comment(cp: &SignedCheckpointJson) -> String {
    format!(
        "{MARKER}{} -->",
        serde_json::to_string(cp).unwrap_or_default()
    )
}

/// The checkpoint a report embeds.
pub fn embedded_checkpoint(bytes: &[u8]) -> Option<SignedCheckpointJson> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.trim_start().starts_with('{') {
        let report: serde_json::Value = serde_json::from_str(text).ok()?;
        return serde_json::from_value(report.get("checkpoint")?.clone()).ok();
    }
    let at = text.find(MARKER)? + MARKER.len();
    let end = text[at..].find(" -->")?;
    serde_json::from_str(&text[at..at + end]).ok()
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn md_cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fact_rows(report: &Report) -> Vec<(&'static str, String)> {
    let f = &report.facts;
    let cp = km_audit::Checkpoint::parse(&report.checkpoint.checkpoint).ok();
    let period = format!(
        "{} to {}",
        f.since
            .clone()
            .unwrap_or_else(|| "the start of the trail".into()),
        f.until.clone().unwrap_or_else(|| "the checkpoint".into())
    );
    vec![
        ("Generated", f.generated.clone()),
        ("Customer", f.customer.clone()),
        ("Installation", f.installation.clone()),
        ("Audit key", f.key_id.clone()),
        ("Period", period),
        (
            "Records",
            match report.record_range {
                Some((a, b)) => format!("{} (#{a} to #{b})", report.records),
                None => "none".to_owned(),
            },
        ),
        (
            "Built from checkpoint",
            cp.map_or_else(String::new, |c| {
                format!(
                    "{} records, root {}, signed {}",
                    c.size,
                    hex::encode(c.root),
                    record::rfc3339_ms(c.time_ms)
                )
            }),
        ),
        ("Verification", f.verification.clone()),
    ]
}

/// The report as a self-contained HTML page.
pub fn to_html(report: &Report) -> String {
    let mut out = String::new();
    let title = html_escape(&report.title);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n\
         body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1f24;line-height:1.45}}\n\
         h1{{font-size:1.6rem;margin-bottom:.2rem}} h2{{margin-top:2.2rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}}\n\
         .id{{display:inline-block;background:#0b5cad;color:#fff;border-radius:4px;padding:0 .45rem;margin-right:.5rem;font-size:.95rem}}\n\
         dl{{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}} dt{{font-weight:600}} dd{{margin:0;word-break:break-all}}\n\
         table{{border-collapse:collapse;width:100%;margin:.6rem 0 1.2rem;font-size:.9rem}} caption{{text-align:left;font-weight:600;padding:.3rem 0}}\n\
         th,td{{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}} th{{background:#f3f5f7}}\n\
         tr:nth-child(even) td{{background:#fafbfc}} .empty{{color:#57606a;font-style:italic}}\n\
         pre{{background:#f6f8fa;border:1px solid #d0d7de;padding:.7rem;overflow-x:auto;font-size:.85rem}}\n\
         </style>\n</head>\n<body>\n{}\n<h1>{title}</h1>\n<dl>\n",
        checkpoint_comment(&report.checkpoint)
    );
    for (k, v) in fact_rows(report) {
        let _ = writeln!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            html_escape(k),
            html_escape(&v)
        );
    }
    out.push_str("</dl>\n");
    for section in &report.sections {
        let _ = writeln!(
            out,
            "<section>\n<h2><span class=\"id\">{}</span>{}</h2>\n<p>{}</p>",
            html_escape(&section.id),
            html_escape(&section.title),
            html_escape(&section.summary)
        );
        for t in &section.tables {
            let _ = write!(
                out,
                "<table>\n<caption>{}</caption>\n<thead><tr>",
                html_escape(&t.caption)
            );
            for c in &t.columns {
                let _ = write!(out, "<th>{}</th>", html_escape(c));
            }
            out.push_str("</tr></thead>\n<tbody>\n");
            if t.rows.is_empty() && !t.empty.is_empty() {
                let _ = writeln!(
                    out,
                    "<tr><td class=\"empty\" colspan=\"{}\">{}</td></tr>",
                    t.columns.len(),
                    html_escape(&t.empty)
                );
            }
            for row in &t.rows {
                out.push_str("<tr>");
                for cell in row {
                    let _ = write!(out, "<td>{}</td>", html_escape(cell));
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</tbody>\n</table>\n");
        }
        out.push_str("</section>\n");
    }
    let _ = write!(
        out,
        "<h2>The checkpoint this report was built from</h2>\n<pre>{}signature {}</pre>\n\
         <p>Check it with <code>km plugin compliance-reporting verify-report FILE</code>; the detached signature is <code>FILE.sig</code>.</p>\n</body>\n</html>\n",
        html_escape(&report.checkpoint.checkpoint),
        html_escape(&report.checkpoint.signature)
    );
    out
}

/// The report in Markdown.
pub fn to_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", checkpoint_comment(&report.checkpoint));
    let _ = writeln!(out, "# {}\n", md_cell(&report.title));
    for (k, v) in fact_rows(report) {
        let _ = writeln!(out, "- **{k}:** {}", md_cell(&v));
    }
    for section in &report.sections {
        let _ = writeln!(
            out,
            "\n## {} {}\n\n{}\n",
            md_cell(&section.id),
            md_cell(&section.title),
            md_cell(&section.summary)
        );
        for t in &section.tables {
            let _ = writeln!(out, "**{}**\n", md_cell(&t.caption));
            if t.rows.is_empty() {
                let _ = writeln!(out, "_{}_\n", md_cell(&t.empty));
                continue;
            }
            let _ = writeln!(
                out,
                "| {} |",
                t.columns
                    .iter()
                    .map(|c| md_cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(out, "|{}", "---|".repeat(t.columns.len()));
            for row in &t.rows {
                let _ = writeln!(
                    out,
                    "| {} |",
                    row.iter()
                        .map(|c| md_cell(c))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\n## The checkpoint this report was built from\n\n```text\n{}signature {}\n```",
        report.checkpoint.checkpoint, report.checkpoint.signature
    );
    out
}

/// The report in the format asked for.
pub fn render(report: &Report, format: Format) -> Vec<u8> {
    match format {
        Format::Html => to_html(report).into_bytes(),
        Format::Markdown => to_markdown(report).into_bytes(),
        Format::Json => {
            let mut bytes = serde_json::to_vec_pretty(report).unwrap_or_default();
            bytes.push(b'\n');
            bytes
        }
    }
}

/// A report's detached signature file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportSignature {
    /// Format version, 1.
    pub km_audit_report_signature: u32,
    /// The audit key id.
    pub key_id: String,
    /// The audit public key, base64 (for reading; verification uses the key the verifier trusts).
    pub public_key: String,
    /// SHA-256 of the report's bytes.
    pub sha256: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Actor, Server};

    fn facts() -> Facts {
        Facts {
            key_id: "k1".into(),
            installation: "alice@laptop".into(),
            customer: "cust".into(),
            generated: "2026-01-01T00:00:00Z".into(),
            since: None,
            until: None,
            verification: "ok".into(),
            witnessed: 2,
            retention: "365d".into(),
            capture: false,
            personal_data_categories: vec!["pii".into()],
        }
    }

    fn records() -> Vec<(u64, Record)> {
        let actor = Actor {
            user: "alice".into(),
            host: "laptop".into(),
            member: Some("m-1".into()),
        };
        let server = Some(std::sync::Arc::new(Server {
            id: "0123456789abcdef".into(),
            label: "node <evil>.js".into(),
        }));
        let mut out = Vec::new();
        let mut call = Record::new("call", "2026-01-01T10:00:00.000000Z".into(), "s1", &actor);
        call.server = server.clone();
        call.method = "tools/call".into();
        call.tool = "send_email".into();
        call.outcome = "blocked".into();
        call.direction = "request".into();
        call.rules = vec!["aws-access-key-id".into()];
        call.plugins = vec!["advanced-filters".into()];
        call.findings = vec!["secret".into()];
        out.push((0, call.clone()));
        call.outcome = "redacted".into();
        call.findings = vec!["pii".into()];
        call.finding_rules = vec!["email".into()];
        call.rules = vec!["email".into()];
        out.push((1, call.clone()));
        call.outcome = "ok".into();
        call.findings.clear();
        call.rules.clear();
        call.plugins.clear();
        out.push((2, call));
        let mut change = Record::new("change", "2026-01-01T10:01:00.000000Z".into(), "s1", &actor);
        change.server = server;
        change.plugins = vec!["tool-guard".into()];
        change.tool = "send_email".into();
        change.detail.insert("event".into(), "drift".into());
        out.push((3, change));
        let mut gap = Record::new("gap", "2026-01-01T10:02:00.000000Z".into(), "s1", &actor);
        gap.detail.insert("missed".into(), 3.into());
        out.push((4, gap));
        out
    }

    fn checkpoint() -> SignedCheckpointJson {
        SignedCheckpointJson {
            checkpoint: "km-audit-checkpoint v1\nkey k1\nsize 5\nroot 00\ntime 1\nreason report\nsession -\n".into(),
            signature: "c2ln".into(),
        }
    }

    #[test]
    fn soc2_shows_blocks_redactions_changes_and_gaps_under_their_criteria() {
        let report = build(Framework::Soc2, facts(), checkpoint(), &records());
        let ids: Vec<&str> = report.sections.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["CC6.1", "CC6.7", "CC7.2", "CC8.1"]);
        let cc67 = &report.sections[1].tables[0];
        assert_eq!(cc67.rows.len(), 2, "{cc67:?}");
        assert!(cc67.rows[0].contains(&"aws-access-key-id".to_owned()));
        assert_eq!(report.sections[0].tables[0].rows[0][3], "3");
        assert_eq!(report.sections[2].tables[0].rows.len(), 1);
        assert_eq!(report.sections[3].tables[0].rows.len(), 1);
        let html = to_html(&report);
        assert!(html.contains("node &lt;evil&gt;.js"), "values are escaped");
        assert!(!html.contains("<evil>"));
        assert!(
            !html.contains("<script") && !html.contains("http"),
            "self-contained"
        );
        assert_eq!(embedded_checkpoint(html.as_bytes()), Some(checkpoint()));
        let md = to_markdown(&report);
        assert!(md.contains("## CC6.7"));
        assert_eq!(embedded_checkpoint(md.as_bytes()), Some(checkpoint()));
        let json = render(&report, Format::Json);
        assert_eq!(embedded_checkpoint(&json), Some(checkpoint()));
        let back: Report = serde_json::from_slice(&json).expect("parses");
        assert_eq!(back, report);
    }

    #[test]
    fn gdpr_maps_personal_data_and_incidents() {
        let report = build(Framework::Gdpr, facts(), checkpoint(), &records());
        let ids: Vec<&str> = report.sections.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["Art. 30", "Art. 32", "Art. 33", "Art. 17"]);
        let art30 = &report.sections[0].tables[0];
        assert_eq!(art30.rows.len(), 1);
        assert_eq!(art30.rows[0][2], "email");
        let art33 = &report.sections[2].tables[0];
        assert_eq!(art33.rows.len(), 3, "{art33:?}"); // the block, the redaction, the gap
        assert!(to_html(&report).contains("Art. 32"));
    }

    #[test]
    fn formats_come_from_the_extension() {
        use std::path::Path;
        assert_eq!(Format::of(Path::new("r.HTML")), Some(Format::Html));
        assert_eq!(Format::of(Path::new("r.md")), Some(Format::Markdown));
        assert_eq!(Format::of(Path::new("r.json")), Some(Format::Json));
        assert_eq!(Format::of(Path::new("r.pdf")), None);
        assert_eq!(Framework::parse("SOC2"), Some(Framework::Soc2));
        assert_eq!(Framework::parse("hipaa"), None);
    }
}
