//! Reports: what the store holds for a time range and a server, summed per series, with
//! percentiles from the merged sketches, a timeline per series, and the anomalies of the range.
//! Rendered as a table ([`table`]), JSON (this module), or a self-contained HTML page
//! ([`html`]).
//!
//! The JSON (`--json`):
//!
//! ```json
//! {"generated": "…", "since": "…" | null, "until": "…",
//!  "servers": [{"server": "a1b2…", "label": "node index.js"}],
//!  "tools": [{"server", "server_label", "tool", "calls", "ok", "errors", "error_rate",
//!             "errors_by_type": {"rpc": {"-32602": 1}, "tool": 0, "cancelled": 0, "unanswered": 0},
//!             "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms",
//!             "request_bytes": {"mean", "max"}, "response_bytes": {"mean", "max"},
//!             "progress": {"notifications", "calls"}}],
//!  "methods": [ the same for methods other than tools/call, with "method" and "target" ],
//!  "anomalies": [ records, see crate::anomaly ],
//!  "relative_error": 0.01, "warnings": [...]}
//! ```
//!
//! Percentiles are `null` for a series without answered calls. `--since` is applied to whole
//! buckets: a bucket is in the range when any part of it is, so with minute buckets the range
//! is exact to the minute, and older data (kept by the hour or the day) to the hour or day.

pub(crate) mod html;
pub(crate) mod table;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::anomaly::Anomaly;
use crate::clock;
use crate::error::Result;
use crate::sketch::{Latency, RELATIVE_ERROR};
use crate::stats::{Errors, SeriesKey, SeriesStats};
use crate::store::Store;

/// What to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    /// From when (seconds since the epoch); `None` for everything kept.
    pub(crate) since: Option<i64>,
    /// Until when (seconds since the epoch), usually now.
    pub(crate) until: i64,
    /// Only servers matching this (see [`server_matches`]).
    pub(crate) server: Option<String>,
}

/// Means and maxima of sizes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct SizeSummary {
    pub(crate) mean: f64,
    pub(crate) max: u64,
}

/// The progress notifications of a series.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct ProgressSummary {
    pub(crate) notifications: u64,
    pub(crate) calls: u64,
}

/// One point of a series' timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Point {
    /// The start of the display bucket (ms since the epoch).
    pub(crate) t: i64,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// One series summed over the range.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Row {
    pub(crate) server: String,
    pub(crate) server_label: String,
    pub(crate) method: String,
    /// The tool of `tools/call` (for other methods: the prompt or URI, or empty).
    pub(crate) tool: String,
    pub(crate) calls: u64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) error_rate: f64,
    pub(crate) errors_by_type: Errors,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    pub(crate) mean_ms: Option<f64>,
    pub(crate) request_bytes: SizeSummary,
    pub(crate) response_bytes: SizeSummary,
    pub(crate) progress: ProgressSummary,
    #[serde(skip)]
    pub(crate) timeline: Vec<Point>,
}

/// A server of the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ServerRow {
    pub(crate) server: String,
    pub(crate) label: String,
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) generated: String,
    pub(crate) since: Option<String>,
    pub(crate) until: String,
    #[serde(skip)]
    pub(crate) since_ms: Option<i64>,
    #[serde(skip)]
    pub(crate) until_ms: i64,
    /// The width of a timeline point (ms).
    #[serde(skip)]
    pub(crate) step_ms: i64,
    pub(crate) servers: Vec<ServerRow>,
    pub(crate) tools: Vec<Row>,
    pub(crate) methods: Vec<Row>,
    pub(crate) anomalies: Vec<Anomaly>,
    pub(crate) relative_error: f64,
    pub(crate) warnings: Vec<String>,
}

/// Whether server `id` labelled `label` is what `wanted` names: its id, a prefix of its id of
/// at least 4 characters, its label, or a part of its label (case-insensitive).
pub(crate) fn server_matches(wanted: &str, id: &str, label: &str) -> bool {
    let wanted_lower = wanted.to_lowercase();
    id == wanted
        || (wanted.len() >= 4 && id.starts_with(wanted))
        || label == wanted
        || label.to_lowercase().contains(&wanted_lower)
}

/// Timeline widths, smallest first (seconds).
const STEPS: [i64; 9] = [
    60,
    300,
    900,
    3600,
    6 * 3600,
    86_400,
    7 * 86_400,
    30 * 86_400,
    365 * 86_400,
];

/// At most this many points per timeline.
const MAX_POINTS: i64 = 120;

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn quantiles(latency: &Latency) -> [Option<f64>; 5] {
    [
        latency.quantile_ms(0.5).map(round3),
        latency.quantile_ms(0.95).map(round3),
        latency.quantile_ms(0.99).map(round3),
        latency.max_ms().map(round3),
        latency.mean_ms().map(round3),
    ]
}

fn row(key: &SeriesKey, label: &str, stats: &SeriesStats, timeline: Vec<Point>) -> Row {
    let [p50, p95, p99, max, mean] = quantiles(&stats.latency);
    let errors = stats.errors.total();
    let answered = stats.response_bytes;
    let answered_calls = stats.latency.count().max(1);
    Row {
        server: key.server.clone(),
        server_label: label.to_owned(),
        method: key.method.clone(),
        tool: key.tool.clone(),
        calls: stats.calls,
        ok: stats.ok,
        errors,
        error_rate: if stats.calls == 0 {
            0.0
        } else {
            round3(errors as f64 / stats.calls as f64)
        },
        errors_by_type: stats.errors.clone(),
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        max_ms: max,
        mean_ms: mean,
        request_bytes: SizeSummary {
            mean: round3(stats.request_bytes.sum as f64 / stats.calls.max(1) as f64),
            max: stats.request_bytes.max,
        },
        response_bytes: SizeSummary {
            mean: round3(answered.sum as f64 / answered_calls as f64),
            max: answered.max,
        },
        progress: ProgressSummary {
            notifications: stats.progress.notifications,
            calls: stats.progress.calls,
        },
        timeline,
    }
}

/// Builds the report of `query` from `store`, with anomalies.
pub(crate) fn build(store: &Store, query: &Query, now_ms: i64) -> Result<Report> {
    let since = query.since.unwrap_or(i64::MIN / 4);
    let loaded = store.read_range(since, query.until)?;
    let (anomalies, anomaly_warnings) =
        store.read_anomalies(since.saturating_mul(1000), query.until.saturating_mul(1000))?;
    let label_of = |id: &str| loaded.servers.get(id).cloned().unwrap_or_default();
    let wanted = |id: &str| {
        query
            .server
            .as_deref()
            .is_none_or(|w| server_matches(w, id, &label_of(id)))
    };

    let first = loaded
        .buckets
        .keys()
        .map(|(start, _)| *start)
        .min()
        .unwrap_or(query.until);
    let range = (query.until - query.since.unwrap_or(first).max(first)).max(60);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| range / s <= MAX_POINTS)
        .unwrap_or(STEPS[STEPS.len() - 1]);

    let mut totals: BTreeMap<SeriesKey, SeriesStats> = BTreeMap::new();
    let mut points: BTreeMap<SeriesKey, BTreeMap<i64, SeriesStats>> = BTreeMap::new();
    for ((start, _length), series) in &loaded.buckets {
        let slot = clock::floor(*start, step);
        for (key, stats) in series {
            if !wanted(&key.server) {
                continue;
            }
            totals.entry(key.clone()).or_default().merge(stats);
            points
                .entry(key.clone())
                .or_default()
                .entry(slot)
                .or_default()
                .merge(stats);
        }
    }

    let mut tools = Vec::new();
    let mut methods = Vec::new();
    for (key, stats) in &totals {
        let timeline = points
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .map(|(t, s)| {
                let [p50, p95, p99, _, _] = quantiles(&s.latency);
                Point {
                    t: t * 1000,
                    calls: s.calls,
                    errors: s.errors.total(),
                    p50_ms: p50,
                    p95_ms: p95,
                    p99_ms: p99,
                }
            })
            .collect();
        let r = row(key, &label_of(&key.server), stats, timeline);
        if key.method == "tools/call" {
            tools.push(r);
        } else {
            methods.push(r);
        }
    }
    // Busiest first; ties by name, so the order is stable.
    let order = |a: &Row, b: &Row| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| a.server_label.cmp(&b.server_label))
            .then_with(|| a.method.cmp(&b.method))
            .then_with(|| a.tool.cmp(&b.tool))
    };
    tools.sort_by(order);
    methods.sort_by(order);

    let mut servers: Vec<ServerRow> = totals
        .keys()
        .map(|k| k.server.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|id| ServerRow {
            label: label_of(&id),
            server: id,
        })
        .collect();
    servers.sort_by(|a, b| a.label.cmp(&b.label).then_with(|| a.server.cmp(&b.server)));

    let anomalies: Vec<Anomaly> = anomalies
        .into_iter()
        .filter(|a| {
            query
                .server
                .as_deref()
                .is_none_or(|w| server_matches(w, &a.server, &a.server_label))
        })
        .collect();
    let mut warnings = loaded.warnings;
    warnings.extend(anomaly_warnings);
    if let Some(wanted) = &query.server {
        if servers.is_empty() && anomalies.is_empty() {
            let known: Vec<String> = loaded
                .servers
                .iter()
                .map(|(id, label)| format!("{label} ({id})"))
                .collect();
            warnings.push(if known.is_empty() {
                format!("no server matches {wanted:?}: nothing is recorded yet")
            } else {
                format!("no server matches {wanted:?}; known: {}", known.join(", "))
            });
        }
    }
    Ok(Report {
        generated: clock::rfc3339(now_ms),
        since: query.since.map(|s| clock::rfc3339(s * 1000)),
        until: clock::rfc3339(query.until * 1000),
        since_ms: query.since.map(|s| s * 1000),
        until_ms: query.until * 1000,
        step_ms: step * 1000,
        servers,
        tools,
        methods,
        anomalies,
        relative_error: RELATIVE_ERROR,
        warnings,
    })
}

/// The report as JSON text (`--json`).
pub(crate) fn to_json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialise the report: {e}") }).to_string()
    });
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
