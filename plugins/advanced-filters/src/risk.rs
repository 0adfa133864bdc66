//! Risk per message and per session, from the findings and the tools' annotations.
//!
//! - **A message's score** (0..=100) is the sum of its reported findings' weights by severity
//!   (critical 40, high 25, medium 10, low 3; documentation examples and allowed values 0),
//!   plus 50 when it is an exfiltration signal (below), capped at 100.
//! - **The session's score** (0..=100) is the sum of its messages' scores, capped. When it
//!   reaches the policy's `[risk] flag` (50) the session is flagged once: a warning in km's log
//!   and a `risk` event.
//! - **Tool annotations** are learned from `tools/list` results (`readOnlyHint`,
//!   `destructiveHint`, `openWorldHint`), with the MCP specification's defaults for a tool that
//!   has none or was never listed: not read-only, destructive, open-world. They are hints from
//!   the server, not guarantees; a server that lies about them only loses the warnings.
//! - **Exposure**: which categories of sensitive data (secrets, personal data) reached the
//!   client as they were, in server-to-client messages the policy let through (`log`). Redacted
//!   or blocked data never reached the model and does not count.
//! - **Exfiltration signal**: a `tools/call` of an open-world tool after exposure. It is
//!   reported (`risk` event, warning) and blocked when the policy's `[risk] exfiltration` is
//!   `block`. With `[risk] block_calls_at = N`, calls of tools that are not read-only are
//!   blocked once the session's score reaches N.

use std::collections::{BTreeSet, HashMap};

use km_detect::Category;
use serde_json::Value;

use crate::filter::Judgement;
use crate::policy::Action;

/// The most tools remembered per session (a hostile server cannot grow the map without bound).
const MAX_TOOLS: usize = 4096;

/// What a tool's annotations say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hints {
    pub(crate) read_only: bool,
    pub(crate) destructive: bool,
    pub(crate) open_world: bool,
    /// Whether they come from a `tools/list` result (else the specification's defaults).
    pub(crate) listed: bool,
}

impl Hints {
    /// The MCP specification's defaults for a tool without annotations.
    pub(crate) const UNKNOWN: Hints = Hints {
        read_only: false,
        destructive: true,
        open_world: true,
        listed: false,
    };

    fn from_annotations(a: Option<&Value>) -> Hints {
        let flag = |name: &str| a.and_then(|a| a.get(name)).and_then(Value::as_bool);
        let read_only = flag("readOnlyHint").unwrap_or(false);
        Hints {
            read_only,
            // destructiveHint is meaningful only for a tool that is not read-only.
            destructive: !read_only && flag("destructiveHint").unwrap_or(true),
            open_world: flag("openWorldHint").unwrap_or(true),
            listed: true,
        }
    }
}

/// What a tools/call request adds to the judgement of its line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct CallRisk {
    /// An open-world tool after exposure.
    pub(crate) exfiltration: bool,
    /// The categories exposed before it.
    pub(crate) exposure: Vec<&'static str>,
    /// The call is to be blocked, with this rule and reason.
    pub(crate) block: Option<(&'static str, String)>,
}

/// Something to tell km's log and the other plugins after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The session's score reached the flag.
    Flagged { score: u32 },
    /// An exfiltration signal.
    Exfiltration {
        tool: String,
        exposure: Vec<&'static str>,
        blocked: bool,
    },
    /// A call blocked because of the session's score.
    BlockedCall { tool: String, score: u32 },
}

/// The state of one session.
#[derive(Debug, Default)]
pub(crate) struct Session {
    tools: HashMap<String, Hints>,
    exposure: BTreeSet<&'static str>,
    score: u32,
    flagged: bool,
}

/// What the policy says about risk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RiskPolicy {
    pub(crate) flag_at: u32,
    pub(crate) block_calls_at: Option<u32>,
    pub(crate) block_exfiltration: bool,
}

impl Session {
    /// The session's score.
    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// A tool's hints (the defaults when it was never listed).
    pub(crate) fn hints(&self, tool: &str) -> Hints {
        self.tools.get(tool).copied().unwrap_or(Hints::UNKNOWN)
    }

    /// Learns the tools of a `tools/list` result line.
    pub(crate) fn learn_tools(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let Some(tools) = v.pointer("/result/tools").and_then(Value::as_array) else {
            return;
        };
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            if self.tools.len() >= MAX_TOOLS && !self.tools.contains_key(name) {
                break;
            }
            self.tools.insert(
                name.to_owned(),
                Hints::from_annotations(tool.get("annotations")),
            );
        }
    }

    /// What a `tools/call` of `tool` risks now, before its own findings count.
    pub(crate) fn call(&self, tool: &str, policy: &RiskPolicy) -> CallRisk {
        let hints = self.hints(tool);
        let exposure: Vec<&'static str> = self.exposure.iter().copied().collect();
        let exfiltration = hints.open_world && !exposure.is_empty();
        let block = if exfiltration && policy.block_exfiltration {
            Some((
                "exfiltration-risk",
                format!(
                    "an open-world tool was called after {} reached the client in this session",
                    exposure_text(&exposure)
                ),
            ))
        } else {
            match policy.block_calls_at {
                Some(at) if self.score >= at && !hints.read_only => Some((
                    "session-risk",
                    format!(
                        "the session's risk score is {} (blocking calls of tools that are not read-only from {at})",
                        self.score
                    ),
                )),
                _ => None,
            }
        };
        CallRisk {
            exfiltration,
            exposure,
            block,
        }
    }

    /// Counts a judged message; returns the message's score and what to tell.
    pub(crate) fn record(
        &mut self,
        judgement: &Judgement,
        response: bool,
        call: Option<(&str, &CallRisk)>,
        policy: &RiskPolicy,
    ) -> (u32, Vec<Notice>) {
        let mut notices = Vec::new();
        let mut score = judgement.score;
        if let Some((tool, risk)) = call {
            if risk.exfiltration {
                score += 50;
                notices.push(Notice::Exfiltration {
                    tool: tool.to_owned(),
                    exposure: risk.exposure.clone(),
                    blocked: risk
                        .block
                        .as_ref()
                        .is_some_and(|(r, _)| *r == "exfiltration-risk"),
                });
            } else if let Some(("session-risk", _)) = risk.block {
                notices.push(Notice::BlockedCall {
                    tool: tool.to_owned(),
                    score: self.score,
                });
            }
        }
        let score = score.min(100);
        if response {
            for j in judgement.reported() {
                if j.action == Action::Log && !j.finding.example {
                    match j.finding.category {
                        Category::SECRET => {
                            self.exposure.insert("secrets");
                        }
                        Category::PII => {
                            self.exposure.insert("personal data");
                        }
                        _ => {}
                    }
                }
            }
        }
        self.score = (self.score + score).min(100);
        if !self.flagged && self.score >= policy.flag_at {
            self.flagged = true;
            notices.push(Notice::Flagged { score: self.score });
        }
        (score, notices)
    }
}

fn exposure_text(exposure: &[&str]) -> String {
    exposure.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;
    use crate::policy::{Layers, ServerNames, Subject};

    const POLICY: RiskPolicy = RiskPolicy {
        flag_at: 50,
        block_calls_at: None,
        block_exfiltration: true,
    };

    fn judge(filter: &Filter, line: &str, request: bool) -> Judgement {
        let server = ServerNames::default();
        filter.judge(
            line.as_bytes(),
            &Subject {
                server: &server,
                tool: "",
                method: "",
                request,
            },
        )
    }

    #[test]
    fn an_open_world_call_after_personal_data_reached_the_client_is_an_exfiltration_signal() {
        let filter = Filter::new(Layers::default(), None);
        let mut s = Session::default();
        s.learn_tools(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read_db","annotations":{"readOnlyHint":true,"openWorldHint":false}},{"name":"post","annotations":{"readOnlyHint":false,"destructiveHint":false}}]}}"#);
        assert!(s.hints("read_db").read_only && !s.hints("read_db").open_world);
        assert!(s.hints("post").open_world && !s.hints("post").destructive);
        assert_eq!(s.hints("never-listed"), Hints::UNKNOWN);

        // Before any exposure: nothing.
        assert_eq!(s.call("post", &POLICY), CallRisk::default());
        // A card number reaches the client (pii is logged by default).
        let result = judge(
            &filter,
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"card 4539 5787 6362 1486"}]}}"#,
            false,
        );
        let (score, _) = s.record(&result, true, None, &POLICY);
        assert!(score > 0);
        // A read-only, closed-world tool is fine; an open-world one is a signal, blocked here.
        assert!(!s.call("read_db", &POLICY).exfiltration);
        let risk = s.call("post", &POLICY);
        assert!(risk.exfiltration && risk.block.is_some());
        assert_eq!(risk.exposure, ["personal data"]);
        let call = judge(
            &filter,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"post"}}"#,
            true,
        );
        let (score, notices) = s.record(&call, false, Some(("post", &risk)), &POLICY);
        assert_eq!(score, 50);
        assert!(notices
            .iter()
            .any(|n| matches!(n, Notice::Exfiltration { blocked: true, .. })));
        assert!(notices.iter().any(|n| matches!(n, Notice::Flagged { .. })));
    }

    #[test]
    fn redacted_data_is_no_exposure_and_the_score_can_block_calls() {
        let d = km_detect::Detector::new();
        let filter = Filter::new(
            Layers::local(
                crate::policy::Policy::parse("[defaults]\npii = \"redact\"\n", &d).expect("valid"),
            ),
            None,
        );
        let mut s = Session::default();
        let policy = RiskPolicy {
            flag_at: 50,
            block_calls_at: Some(20),
            block_exfiltration: false,
        };
        let result = judge(
            &filter,
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"card 4539 5787 6362 1486"}]}}"#,
            false,
        );
        s.record(&result, true, None, &policy);
        assert!(
            !s.call("anything", &policy).exfiltration,
            "redacted: not exposed"
        );
        assert!(s.score() >= 20);
        let risk = s.call("anything", &policy);
        assert_eq!(risk.block.as_ref().map(|b| b.0), Some("session-risk"));
        s.learn_tools(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"look","annotations":{"readOnlyHint":true}}]}}"#);
        assert!(s.call("look", &policy).block.is_none());
    }
}
