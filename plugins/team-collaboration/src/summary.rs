//! A session's summary for the team feed: who, where, which server, which tools how often, how
//! many errors, what other plugins decided and found. Counts and names only: never a message's
//! content (no arguments, no results, no error messages, no anomaly details beyond their kind).
//!
//! Built from what the plugin observes: requests and responses as km forwarded them (a
//! `tools/call` request's `params.name`, a response's error or `isError`), verdict events (a
//! blocked call never reaches the server, so it is counted from its verdict), and other
//! plugins' events (`anomaly` from ml-analytics, `drift` from tool-guard).

use std::collections::{BTreeMap, HashMap};

use km_plugin_sdk::{Direction, Message, MessageKind, SessionInfo};
use serde::Deserialize;
use serde_json::{json, Value};

/// Requests remembered while their answer is awaited; beyond it, the oldest are not tracked.
const MAX_PENDING: usize = 10_000;
/// The most tools, anomaly kinds and verdict kinds a summary lists (it must stay well under the
/// API's 64 KiB).
const MAX_ENTRIES: usize = 200;
/// The longest tool name kept (longer ones are cut: a name is not a place for content).
const MAX_NAME: usize = 128;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ToolCounts {
    calls: u64,
    errors: u64,
    blocked: u64,
}

/// The counts of one session.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    id: String,
    km_version: String,
    started_at: i64,
    server_id: String,
    server_label: String,
    server_name: Option<String>,
    requests: u64,
    errors: u64,
    tools: BTreeMap<String, ToolCounts>,
    /// Correlation id → the tool of a `tools/call` (`None` for other requests).
    pending: HashMap<String, Option<String>>,
    verdicts: BTreeMap<(String, String), u64>,
    anomalies: BTreeMap<(String, String), u64>,
    drift: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct CallRequest<'a> {
    #[serde(borrow)]
    params: CallParams<'a>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct CallResponse {
    #[serde(default)]
    result: Option<CallResult>,
}

#[derive(Deserialize)]
struct CallResult {
    #[serde(default, rename = "isError")]
    is_error: bool,
}

fn cut(name: &str) -> String {
    name.chars().take(MAX_NAME).collect()
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(cut)
        .unwrap_or_default()
}

impl Summary {
    /// A session that began now (`now`: seconds since the epoch).
    pub(crate) fn begin(info: &SessionInfo, now: i64) -> Summary {
        Summary {
            id: info.session_id.clone(),
            km_version: info.km_version.clone(),
            started_at: now,
            server_id: info.server_id(),
            server_label: info.server_label(),
            ..Summary::default()
        }
    }

    /// The session id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The server's `serverInfo.name`, once known.
    pub(crate) fn set_server_name(&mut self, name: &str) {
        self.server_name = Some(cut(name));
    }

    /// Counts a forwarded line.
    pub(crate) fn message(&mut self, message: &Message<'_>) {
        match (message.direction, message.kind) {
            (Direction::Request, MessageKind::REQUEST) => {
                self.requests += 1;
                let tool = (message.method.as_str() == "tools/call")
                    .then(|| serde_json::from_slice::<CallRequest<'_>>(message.bytes()).ok())
                    .flatten()
                    .map(|call| cut(&call.params.name));
                if let Some(tool) = &tool {
                    self.tool(tool).calls += 1;
                }
                if self.pending.len() < MAX_PENDING && !message.correlation_id.is_empty() {
                    self.pending
                        .insert(message.correlation_id.as_str().to_owned(), tool);
                }
            }
            (Direction::Response, MessageKind::RESPONSE) => {
                let Some(tool) = self.pending.remove(message.correlation_id.as_str()) else {
                    return;
                };
                let failed = message.is_error
                    || (tool.is_some()
                        && serde_json::from_slice::<CallResponse>(message.bytes())
                            .ok()
                            .and_then(|r| r.result)
                            .is_some_and(|r| r.is_error));
                if failed {
                    self.errors += 1;
                    if let Some(tool) = tool {
                        self.tool(&tool).errors += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn tool(&mut self, name: &str) -> &mut ToolCounts {
        if !self.tools.contains_key(name) && self.tools.len() >= MAX_ENTRIES {
            return self.tools.entry("(other tools)".to_owned()).or_default();
        }
        self.tools.entry(name.to_owned()).or_default()
    }

    /// Counts a verdict event (`{plugin, action, method, target, ...}`).
    pub(crate) fn verdict(&mut self, data: &Value) {
        let plugin = text(data, "plugin");
        let action = text(data, "action");
        if self.verdicts.len() < MAX_ENTRIES
            || self
                .verdicts
                .contains_key(&(plugin.clone(), action.clone()))
        {
            *self.verdicts.entry((plugin, action.clone())).or_default() += 1;
        }
        if action == "block" && data.get("method").and_then(Value::as_str) == Some("tools/call") {
            let target = text(data, "target");
            if !target.is_empty() {
                self.tool(&target).blocked += 1;
            }
        }
    }

    /// Counts another plugin's event (`{plugin, kind, data}`): anomalies and drift.
    pub(crate) fn plugin_event(&mut self, event: &Value) {
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        match event.get("kind").and_then(Value::as_str) {
            Some("anomaly") => {
                let key = (text(&data, "kind"), text(&data, "tool"));
                if self.anomalies.len() < MAX_ENTRIES || self.anomalies.contains_key(&key) {
                    *self.anomalies.entry(key).or_default() += 1;
                }
            }
            Some("drift") => {
                let change = text(&data, "change");
                if self.drift.len() < MAX_ENTRIES || self.drift.contains_key(&change) {
                    *self.drift.entry(change).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// The summary as the API takes it.
    pub(crate) fn finish(&self, end: &End<'_>) -> Value {
        let mut tools: Vec<(&String, &ToolCounts)> = self.tools.iter().collect();
        tools.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        let blocked: u64 = self.tools.values().map(|t| t.blocked).sum();
        json!({
            "id": self.id,
            "started_at": self.started_at,
            "ended_at": end.ended_at,
            "machine": end.machine,
            "os_user": end.os_user,
            "server": {
                "id": self.server_id,
                "label": self.server_label,
                "name": self.server_name,
            },
            "exit_code": end.exit_code,
            "km_version": self.km_version,
            "policy_version": end.policy_version,
            "requests": self.requests,
            "errors": self.errors,
            "blocked": blocked,
            "tools": tools.iter().map(|(name, c)| json!({
                "name": name, "calls": c.calls, "errors": c.errors, "blocked": c.blocked,
            })).collect::<Vec<_>>(),
            "verdicts": self.verdicts.iter().map(|((plugin, action), n)| json!({
                "plugin": plugin, "action": action, "count": n,
            })).collect::<Vec<_>>(),
            "anomalies": self.anomalies.iter().map(|((kind, tool), n)| json!({
                "kind": kind, "tool": tool, "count": n,
            })).collect::<Vec<_>>(),
            "drift": self.drift,
        })
    }
}

/// How a session ended, and where it ran.
pub(crate) struct End<'a> {
    pub(crate) ended_at: i64,
    pub(crate) exit_code: Option<i64>,
    pub(crate) machine: &'a str,
    pub(crate) os_user: &'a str,
    pub(crate) policy_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use km_plugin_sdk::abi_stable::std_types::{RNone, RSlice, RStr};

    use super::*;

    fn message<'a>(
        direction: Direction,
        kind: MessageKind,
        method: &'a str,
        corr: &'a str,
        line: &'a [u8],
        is_error: bool,
    ) -> Message<'a> {
        Message {
            seq: 0,
            direction,
            kind,
            is_error,
            data: RSlice::from_slice(line),
            correlation_id: RStr::from_str(corr),
            id: RStr::from_str(""),
            method: RStr::from_str(method),
            timestamp_us: 0,
            latency_us: RNone,
        }
    }

    #[test]
    fn calls_errors_blocks_and_findings_are_counted_without_content() {
        let info = SessionInfo {
            session_id: "s1".into(),
            command: vec![
                "node".into(),
                "server.js".into(),
                "--token".into(),
                "secret".into(),
            ],
            ..SessionInfo::default()
        };
        let mut s = Summary::begin(&info, 100);
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"private words"}}}"#;
        let ok = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"private result"}]}}"#;
        let tool_error = br#"{"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}}"#;
        let rpc_error =
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"private failure"}}"#;
        s.message(&message(
            Direction::Request,
            MessageKind::REQUEST,
            "tools/call",
            "c1",
            call,
            false,
        ));
        s.message(&message(
            Direction::Response,
            MessageKind::RESPONSE,
            "",
            "c1",
            ok,
            false,
        ));
        s.message(&message(
            Direction::Request,
            MessageKind::REQUEST,
            "tools/call",
            "c2",
            call,
            false,
        ));
        s.message(&message(
            Direction::Response,
            MessageKind::RESPONSE,
            "",
            "c2",
            tool_error,
            false,
        ));
        s.message(&message(
            Direction::Request,
            MessageKind::REQUEST,
            "tools/list",
            "c3",
            b"{}",
            false,
        ));
        s.message(&message(
            Direction::Response,
            MessageKind::RESPONSE,
            "",
            "c3",
            rpc_error,
            true,
        ));
        s.verdict(&json!({"plugin": "team-collaboration", "action": "block", "method": "tools/call", "target": "rm", "reason": "x"}));
        s.plugin_event(&json!({"plugin": "ml-analytics", "kind": "anomaly", "data": {"kind": "latency", "tool": "search", "detail": "private detail"}}));
        s.plugin_event(
            &json!({"plugin": "tool-guard", "kind": "drift", "data": {"change": "changed"}}),
        );
        s.set_server_name("demo");
        let summary = s.finish(&End {
            ended_at: 160,
            exit_code: Some(0),
            machine: "host",
            os_user: "me",
            policy_version: Some(3),
        });
        assert_eq!(summary["requests"], 3);
        assert_eq!(summary["errors"], 2);
        assert_eq!(summary["blocked"], 1);
        assert_eq!(
            summary["tools"][0],
            json!({"name": "search", "calls": 2, "errors": 1, "blocked": 0})
        );
        assert_eq!(
            summary["tools"][1],
            json!({"name": "rm", "calls": 0, "errors": 0, "blocked": 1})
        );
        assert_eq!(
            summary["anomalies"],
            json!([{"kind": "latency", "tool": "search", "count": 1}])
        );
        assert_eq!(summary["drift"], json!({"changed": 1}));
        assert_eq!(summary["server"]["name"], "demo");
        assert_eq!(summary["server"]["label"], "node server.js");
        let text = summary.to_string();
        for secret in ["private", "secret", "--token"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}
