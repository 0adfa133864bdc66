//! The statistics of one series, the unit everything is counted in: one (server, method, tool)
//! in one time bucket.
//!
//! A *call* is a request, counted once it is over: answered (with a result, a result whose
//! `isError` is true, or a JSON-RPC error), cancelled (`notifications/cancelled`), or never
//! answered (still pending when the session ended, or forgotten because too many were pending).
//! `errors` counts every call that did not end in a plain result, by type, so that `calls =
//! ok + errors`. Latency is recorded for answered calls (results and errors alike: an error is
//! also a round trip the agent waited for); sizes are the lines' bytes as relayed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sketch::Latency;

/// What a series is about. `tool` is what the request acts on: the tool of `tools/call`, the
/// prompt of `prompts/get`, the URI of `resources/read`; empty for other methods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SeriesKey {
    /// The server's id (`SessionInfo::server_id`).
    pub(crate) server: String,
    /// The request's method.
    pub(crate) method: String,
    /// The tool, prompt or resource.
    pub(crate) tool: String,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A result (for `tools/call`: one without `isError: true`).
    Ok,
    /// A JSON-RPC error with this code.
    RpcError(i64),
    /// A `tools/call` result with `isError: true`.
    ToolError,
    /// Cancelled by its sender.
    Cancelled,
    /// No answer came.
    Unanswered,
}

impl Outcome {
    /// Whether the tool failed (what the error-rate model watches): JSON-RPC and tool errors,
    /// not the client's own cancellations nor missing answers (which have their own anomaly).
    pub(crate) fn is_failure(self) -> bool {
        matches!(self, Outcome::RpcError(_) | Outcome::ToolError)
    }
}

/// Errors by type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Errors {
    /// JSON-RPC errors by code (as text: JSON object keys are strings).
    pub(crate) rpc: BTreeMap<String, u64>,
    /// `tools/call` results with `isError: true`.
    pub(crate) tool: u64,
    /// Cancelled calls.
    pub(crate) cancelled: u64,
    /// Calls never answered.
    pub(crate) unanswered: u64,
}

impl Errors {
    /// All of them.
    pub(crate) fn total(&self) -> u64 {
        self.rpc.values().sum::<u64>() + self.tool + self.cancelled + self.unanswered
    }

    fn merge(&mut self, other: &Errors) {
        for (code, n) in &other.rpc {
            *self.rpc.entry(code.clone()).or_default() += n;
        }
        self.tool += other.tool;
        self.cancelled += other.cancelled;
        self.unanswered += other.unanswered;
    }
}

/// Sum and largest of a size in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Bytes {
    /// Total bytes.
    pub(crate) sum: u64,
    /// The largest single line.
    pub(crate) max: u64,
}

impl Bytes {
    fn add(&mut self, n: u64) {
        self.sum = self.sum.saturating_add(n);
        self.max = self.max.max(n);
    }

    fn merge(&mut self, other: &Bytes) {
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }
}

/// Progress notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Progress {
    /// `notifications/progress` received for these calls.
    pub(crate) notifications: u64,
    /// Calls that received at least one.
    pub(crate) calls: u64,
}

/// The statistics of one series in one bucket.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeriesStats {
    pub(crate) calls: u64,
    pub(crate) ok: u64,
    pub(crate) errors: Errors,
    pub(crate) latency: Latency,
    pub(crate) request_bytes: Bytes,
    pub(crate) response_bytes: Bytes,
    pub(crate) progress: Progress,
}

/// What a finished call contributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRecord {
    pub(crate) outcome: Outcome,
    /// For answered calls.
    pub(crate) latency_us: Option<u64>,
    pub(crate) request_bytes: u64,
    /// For answered calls.
    pub(crate) response_bytes: Option<u64>,
    pub(crate) progress: u64,
}

impl SeriesStats {
    /// Counts one finished call.
    pub(crate) fn record(&mut self, call: &CallRecord) {
        self.calls += 1;
        match call.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::RpcError(code) => *self.errors.rpc.entry(code.to_string()).or_default() += 1,
            Outcome::ToolError => self.errors.tool += 1,
            Outcome::Cancelled => self.errors.cancelled += 1,
            Outcome::Unanswered => self.errors.unanswered += 1,
        }
        if let Some(us) = call.latency_us {
            self.latency.add_us(us);
        }
        self.request_bytes.add(call.request_bytes);
        if let Some(n) = call.response_bytes {
            self.response_bytes.add(n);
        }
        if call.progress > 0 {
            self.progress.calls += 1;
            self.progress.notifications += call.progress;
        }
    }

    /// Adds another bucket's statistics of the same series.
    pub(crate) fn merge(&mut self, other: &SeriesStats) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.errors.merge(&other.errors);
        self.latency.merge(&other.latency);
        self.request_bytes.merge(&other.request_bytes);
        self.response_bytes.merge(&other.response_bytes);
        self.progress.notifications += other.progress.notifications;
        self.progress.calls += other.progress.calls;
    }

    /// The stored form, with its key.
    pub(crate) fn to_stored(&self, key: &SeriesKey) -> StoredSeries {
        StoredSeries {
            server: key.server.clone(),
            method: key.method.clone(),
            tool: key.tool.clone(),
            calls: self.calls,
            ok: self.ok,
            errors: self.errors.clone(),
            latency: self.latency.encode(),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            progress: self.progress,
        }
    }
}

/// A series as the bucket files hold it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSeries {
    pub(crate) server: String,
    pub(crate) method: String,
    #[serde(default)]
    pub(crate) tool: String,
    pub(crate) calls: u64,
    #[serde(default)]
    pub(crate) ok: u64,
    #[serde(default)]
    pub(crate) errors: Errors,
    /// Base64 of the latency sketch's standard encoding.
    #[serde(default)]
    pub(crate) latency: String,
    #[serde(default)]
    pub(crate) request_bytes: Bytes,
    #[serde(default)]
    pub(crate) response_bytes: Bytes,
    #[serde(default)]
    pub(crate) progress: Progress,
}

impl StoredSeries {
    /// The key and statistics, or why the sketch cannot be read.
    pub(crate) fn into_stats(self) -> Result<(SeriesKey, SeriesStats), String> {
        let latency = Latency::decode(&self.latency)?;
        Ok((
            SeriesKey {
                server: self.server,
                method: self.method,
                tool: self.tool,
            },
            SeriesStats {
                calls: self.calls,
                ok: self.ok,
                errors: self.errors,
                latency,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                progress: self.progress,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(outcome: Outcome, latency_us: Option<u64>) -> CallRecord {
        CallRecord {
            outcome,
            latency_us,
            request_bytes: 100,
            response_bytes: latency_us.map(|_| 300),
            progress: 0,
        }
    }

    #[test]
    fn calls_are_ok_plus_errors_by_type() {
        let mut stats = SeriesStats::default();
        stats.record(&call(Outcome::Ok, Some(1000)));
        stats.record(&call(Outcome::RpcError(-32602), Some(200)));
        stats.record(&call(Outcome::RpcError(-32602), Some(200)));
        stats.record(&call(Outcome::ToolError, Some(5000)));
        stats.record(&call(Outcome::Cancelled, None));
        stats.record(&CallRecord {
            progress: 3,
            ..call(Outcome::Unanswered, None)
        });
        assert_eq!(stats.calls, 6);
        assert_eq!(stats.ok + stats.errors.total(), stats.calls);
        assert_eq!(stats.errors.rpc["-32602"], 2);
        assert_eq!(stats.latency.count(), 4);
        assert_eq!(stats.request_bytes, Bytes { sum: 600, max: 100 });
        assert_eq!(
            stats.response_bytes,
            Bytes {
                sum: 1200,
                max: 300
            }
        );
        assert_eq!(
            stats.progress,
            Progress {
                notifications: 3,
                calls: 1
            }
        );
        assert!(Outcome::ToolError.is_failure() && !Outcome::Cancelled.is_failure());
    }

    #[test]
    fn the_stored_form_round_trips_and_merges_add_up() {
        let key = SeriesKey {
            server: "s".into(),
            method: "tools/call".into(),
            tool: "echo".into(),
        };
        let mut a = SeriesStats::default();
        a.record(&call(Outcome::Ok, Some(1000)));
        a.record(&call(Outcome::RpcError(-1), Some(10)));
        let text = serde_json::to_string(&a.to_stored(&key)).expect("serialises");
        let stored: StoredSeries = serde_json::from_str(&text).expect("parses");
        let (back_key, mut back) = stored.into_stats().expect("decodes");
        assert_eq!(back_key, key);
        back.merge(&a);
        assert_eq!(back.calls, 4);
        assert_eq!(back.errors.rpc["-1"], 2);
        assert_eq!(back.latency.count(), 4);
        assert_eq!(back.request_bytes.sum, 400);
    }
}
