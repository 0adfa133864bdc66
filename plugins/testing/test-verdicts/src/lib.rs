//! An interceptor with fixed rules, for the audit trail's end-to-end tests: it plays the parts
//! advanced-filters and tool-guard play in a real installation, with real verdicts and real
//! events, so that compliance-reporting is tested against what km actually delivers.
//!
//! - A `tools/call` request containing `AKIA` (the prefix of an AWS access key id) is blocked
//!   (rule `test-aws-key`) after a `finding` event `{category: "secret", rule, correlation_id,
//!   method, tool, direction}`.
//! - A `tools/call` response containing `@example.com` has every such domain replaced by
//!   `@redacted.invalid` (rule `test-email`), after a `finding` event of category `pii`.
//! - A `tools/list` response whose tool definition differs from the one this plugin saw first in
//!   the session for that tool name yields a `drift` event `{server, tool, change: "changed",
//!   fields}` (the top-level fields that differ); the line passes.
//!
//! It is a real plugin, signed by the tests with the `intercept` capability, not a mock.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use km_plugin_sdk::abi::Verdict;
use km_plugin_sdk::{
    Direction, Directions, Host, InterceptContext, Interest, Message, Plugin, PluginError,
    SessionInfo, Tier,
};
use serde_json::{json, Value};

/// See the crate documentation.
pub struct TestVerdicts {
    host: Host,
    server: Mutex<String>,
    pins: Mutex<HashMap<String, Value>>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

impl TestVerdicts {
    fn finding(
        &self,
        category: &str,
        rule: &str,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) {
        let _ = self.host.emit(
            "finding",
            &json!({
                "category": category,
                "rule": rule,
                "correlation_id": message.correlation_id.as_str(),
                "method": context.request_method.as_str(),
                "tool": context.target.as_str(),
                "direction": message.direction.as_str(),
            }),
        );
    }

    fn check_drift(&self, line: &[u8]) {
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let Some(tools) = value.pointer("/result/tools").and_then(Value::as_array) else {
            return;
        };
        let Ok(mut pins) = self.pins.lock() else {
            return;
        };
        let server = self.server.lock().map(|s| s.clone()).unwrap_or_default();
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            match pins.get(name) {
                None => {
                    pins.insert(name.to_owned(), tool.clone());
                }
                Some(pinned) if pinned != tool => {
                    let fields: Vec<String> = tool
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, v)| pinned.get(k.as_str()) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let _ = self.host.emit(
                        "drift",
                        &json!({"server": server, "tool": name, "change": "changed", "fields": fields}),
                    );
                }
                Some(_) => {}
            }
        }
    }
}

impl Plugin for TestVerdicts {
    const NAME: &'static str = "test-verdicts";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(TestVerdicts {
            host,
            server: Mutex::new(String::new()),
            pins: Mutex::new(HashMap::new()),
        })
    }

    fn interest(&self) -> Interest {
        Interest::interceptor(Directions::BOTH)
            .methods(["tools/call", "tools/list"])
            .priority(100)
    }

    fn begin_session(&self, session: &SessionInfo) -> Result<(), PluginError> {
        if let Ok(mut server) = self.server.lock() {
            *server = session.server_id();
        }
        Ok(())
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        let line = message.bytes();
        let method = context.request_method.as_str();
        match (message.direction, method) {
            (Direction::Request, "tools/call") if contains(line, b"AKIA") => {
                self.finding("secret", "test-aws-key", message, context);
                Ok(Verdict::block(&["test-aws-key"], "an AWS access key id"))
            }
            (Direction::Response, "tools/call") if contains(line, b"@example.com") => {
                self.finding("pii", "test-email", message, context);
                Ok(Verdict::replace(
                    replace_all(line, b"@example.com", b"@redacted.invalid"),
                    &["test-email"],
                ))
            }
            (Direction::Response, "tools/list") => {
                self.check_drift(line);
                Ok(Verdict::pass())
            }
            _ => Ok(Verdict::pass()),
        }
    }
}

km_plugin_sdk::export_plugin!(TestVerdicts);
