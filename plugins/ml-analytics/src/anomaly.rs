//! Anomaly records: what each one says, and the sentence km's log shows.
//!
//! A record is one JSON line in `anomalies/YYYY-MM.jsonl` (see [`crate::store`]), the data of the
//! `anomaly` event the plugin emits through km (ABI 1.1), and the source of the log line:
//!
//! ```json
//! {"id":"5f0c…-3","time":"2026-11-01T10:15:02Z","time_ms":1793528102000,"kind":"latency",
//!  "server":"a1b2c3d4e5f60718","server_label":"node index.js","method":"tools/call",
//!  "tool":"search","observed":1012.5,"expected":{"low":12.1,"high":205.0},"unit":"ms",
//!  "session_id":"…","detail":"tools/call search took 1012.5 ms; usual is up to 205.0 ms"}
//! ```
//!
//! Kinds: `latency` (ms), `error_rate` (failures per call in the recent window), `call_rate`
//! (calls in the last 60 s), `first_time_tool` (calls), `unanswered` (ms pending, or requests
//! left at the end of the session).

use serde::{Deserialize, Serialize};

/// The kinds of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Latency,
    ErrorRate,
    CallRate,
    FirstTimeTool,
    Unanswered,
}

impl Kind {
    /// The name used in records, events and reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Latency => "latency",
            Kind::ErrorRate => "error_rate",
            Kind::CallRate => "call_rate",
            Kind::FirstTimeTool => "first_time_tool",
            Kind::Unanswered => "unanswered",
        }
    }

    /// The unit of `observed` and `expected`.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Kind::Latency | Kind::Unanswered => "ms",
            Kind::ErrorRate => "failures/call",
            Kind::CallRate => "calls/min",
            Kind::FirstTimeTool => "calls",
        }
    }
}

/// The normal range of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Expected {
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// One anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Anomaly {
    pub(crate) id: String,
    pub(crate) time: String,
    pub(crate) time_ms: i64,
    pub(crate) kind: Kind,
    pub(crate) server: String,
    #[serde(default)]
    pub(crate) server_label: String,
    pub(crate) method: String,
    #[serde(default)]
    pub(crate) tool: String,
    pub(crate) observed: f64,
    pub(crate) expected: Expected,
    pub(crate) unit: String,
    #[serde(default)]
    pub(crate) session_id: String,
    #[serde(default)]
    pub(crate) detail: String,
}

/// `method tool` (or the method alone), for sentences.
pub(crate) fn subject(method: &str, tool: &str) -> String {
    if tool.is_empty() {
        method.to_owned()
    } else {
        format!("{method} {tool}")
    }
}

/// The sentence of an anomaly of `kind` on `subject`.
pub(crate) fn describe(kind: Kind, subject: &str, observed: f64, expected: Expected) -> String {
    match kind {
        Kind::Latency => format!(
            "{subject} took {observed:.1} ms; usual is up to {:.1} ms",
            expected.high
        ),
        Kind::ErrorRate => format!(
            "{subject} failed {:.0}% of its recent calls; usual is at most {:.0}%",
            observed * 100.0,
            expected.high * 100.0
        ),
        Kind::CallRate => format!(
            "{subject} was called {observed:.0} times in a minute; usual is under {:.0} (is the agent looping?)",
            expected.high
        ),
        Kind::FirstTimeTool => format!("{subject} was called for the first time on this server"),
        Kind::Unanswered => {
            if observed >= 1.0 && expected.high == 0.0 {
                format!("{subject}: {observed:.0} request(s) left unanswered at the end of the session")
            } else {
                format!(
                    "{subject} has waited {:.0} s for an answer; usual is under {:.0} s",
                    observed / 1000.0,
                    expected.high / 1000.0
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_snake_case_kinds() {
        let a = Anomaly {
            id: "s-1".into(),
            time: "2026-11-01T10:00:00Z".into(),
            time_ms: 1,
            kind: Kind::FirstTimeTool,
            server: "abc".into(),
            server_label: "node x".into(),
            method: "tools/call".into(),
            tool: "rm".into(),
            observed: 1.0,
            expected: Expected {
                low: 0.0,
                high: 0.0,
            },
            unit: Kind::FirstTimeTool.unit().into(),
            session_id: "s".into(),
            detail: describe(
                Kind::FirstTimeTool,
                "tools/call rm",
                1.0,
                Expected {
                    low: 0.0,
                    high: 0.0,
                },
            ),
        };
        let text = serde_json::to_string(&a).expect("serialises");
        assert!(text.contains(r#""kind":"first_time_tool""#), "{text}");
        assert_eq!(serde_json::from_str::<Anomaly>(&text).expect("parses"), a);
        assert!(a.detail.contains("first time"));
        assert_eq!(subject("ping", ""), "ping");
    }
}
