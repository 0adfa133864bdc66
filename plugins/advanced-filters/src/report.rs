//! What the plugin tells about a finding: one line in km's log and one `finding` event for the
//! other plugins (km fans events out to every observer and to its telemetry), in every mode,
//! `log` included; and `risk` events for the session's risk.
//!
//! Neither ever holds the matched value: they are built only from the finding's rule, category,
//! severity, confidence, location and path (which km-detect builds from keys and indices,
//! masking a key that is itself a finding) and the message's direction, method, tool, id and
//! session, with at most the value's keyed hash (`hmac8`). The end-to-end tests run a corpus of
//! secrets through km and look for every one of them in km's log, the events and the errors.

use serde_json::{json, Value};

use crate::filter::Judged;
use crate::policy::Action;
use crate::risk::Notice;

/// Where a message was: what the events and log lines say about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) direction: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) method: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) id: &'a str,
    pub(crate) correlation_id: &'a str,
    pub(crate) batch_index: Option<u32>,
    pub(crate) session_id: &'a str,
    pub(crate) server: &'a str,
    pub(crate) server_id: &'a str,
}

/// The most log lines one message produces (its events are all sent).
pub(crate) const MAX_LOG_LINES: usize = 20;

/// The `finding` event of one finding.
pub(crate) fn finding_event(
    j: &Judged,
    place: &Place<'_>,
    message_risk: u32,
    session_risk: u32,
) -> Value {
    let f = &j.finding;
    let mut event = json!({
        "rule": f.rule,
        "category": f.category.as_str(),
        "severity": f.severity.as_str(),
        "confidence": f.confidence.as_str(),
        "example": f.example,
        "location": f.location,
        "path": f.path,
        "action": j.action.as_str(),
        "direction": place.direction,
        "kind": place.kind,
        "method": place.method,
        "tool": place.tool,
        "id": place.id,
        "correlation_id": place.correlation_id,
        "session_id": place.session_id,
        "server": place.server,
        "server_id": place.server_id,
        "message_risk": message_risk,
        "session_risk": session_risk,
    });
    if let Some(i) = place.batch_index {
        event["batch_index"] = json!(i);
    }
    if let Some(fp) = f.fingerprint {
        event["hmac8"] = json!(fp.to_string());
    }
    event
}

/// The log line of one finding: `redact: secret aws-access-key-id at params.arguments.key
/// (request tools/call http) hmac8=1a2b3c4d`.
pub(crate) fn finding_line(j: &Judged, place: &Place<'_>) -> String {
    let f = &j.finding;
    let mut line = format!(
        "{}: {} {} at {}",
        j.action,
        f.category,
        f.rule,
        if f.path.is_empty() { "$" } else { &f.path }
    );
    line.push_str(&format!(" ({}", place.direction));
    if !place.method.is_empty() {
        line.push(' ');
        line.push_str(place.method);
    }
    if !place.tool.is_empty() {
        line.push(' ');
        line.push_str(place.tool);
    }
    line.push(')');
    if f.example {
        line.push_str(" documentation example");
    }
    if let Some(fp) = f.fingerprint {
        line.push_str(&format!(" hmac8={fp}"));
    }
    line
}

/// Whether a finding's log line is a warning (the message was changed or stopped).
pub(crate) fn is_warning(j: &Judged) -> bool {
    matches!(j.action, Action::Redact | Action::Block)
}

/// The `risk` event and log line of a notice.
pub(crate) fn notice(n: &Notice, place: &Place<'_>, session_risk: u32) -> (Value, String) {
    let mut event = json!({
        "direction": place.direction,
        "method": place.method,
        "id": place.id,
        "correlation_id": place.correlation_id,
        "session_id": place.session_id,
        "server": place.server,
        "server_id": place.server_id,
        "session_risk": session_risk,
    });
    let line = match n {
        Notice::Flagged { score } => {
            event["event"] = json!("flagged");
            event["score"] = json!(score);
            format!("session flagged: its risk score reached {score}")
        }
        Notice::Exfiltration {
            tool,
            exposure,
            blocked,
        } => {
            event["event"] = json!("exfiltration");
            event["tool"] = json!(tool);
            event["exposure"] = json!(exposure);
            event["blocked"] = json!(blocked);
            format!(
                "{}open-world tool {tool} called after {} reached the client",
                if *blocked { "blocked: " } else { "" },
                exposure.join(" and ")
            )
        }
        Notice::BlockedCall { tool, score } => {
            event["event"] = json!("blocked-call");
            event["tool"] = json!(tool);
            event["score"] = json!(score);
            format!("blocked: call of {tool}, which is not read-only, at session risk {score}")
        }
    };
    (event, line)
}
