//! What km puts on the wire when an interceptor blocks a line.
//!
//! A blocked request is answered with a JSON-RPC error carrying its id, sent back to the side that
//! sent it (the peer never sees the request); a blocked response is replaced, in place, by an
//! error response for its id; a blocked notification (or a line that is not JSON-RPC) is dropped.
//! Inside a batch, each element is treated so, and the batch is rebuilt from what is left (only
//! then is it re-serialised: the separators between elements become `,`; the elements keep their
//! bytes).
//!
//! The error names the plugin, its rules and its short reason, never the matched content (the
//! reason and rule ids come from the plugin, which the ABI tells not to put matched content
//! there; km caps their length). Its code is [`BLOCKED_CODE`], in JSON-RPC's range for
//! implementation-defined server errors; `error.data.km` repeats the facts for programs.

use serde_json::json;

/// The JSON-RPC error code of a line km blocked.
pub(crate) const BLOCKED_CODE: i64 = -32050;

const MAX_REASON: usize = 200;
const MAX_RULES: usize = 16;
const MAX_RULE: usize = 64;

/// Who blocked a line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocked {
    pub(crate) plugin: String,
    pub(crate) rules: Vec<String>,
    pub(crate) reason: String,
}

impl Blocked {
    /// A block by `plugin` with what its verdict said, capped.
    pub(crate) fn new(plugin: &str, rules: &[String], reason: &str) -> Self {
        Blocked {
            plugin: plugin.to_owned(),
            rules: rules
                .iter()
                .take(MAX_RULES)
                .map(|r| truncate(r, MAX_RULE))
                .collect(),
            reason: truncate(reason.trim(), MAX_REASON),
        }
    }

    /// The message of the error: `blocked by km plugin NAME (rule, ...): reason`.
    fn message(&self) -> String {
        let mut message = format!("blocked by km plugin {}", self.plugin);
        if !self.rules.is_empty() {
            message.push_str(&format!(" ({})", self.rules.join(", ")));
        }
        if !self.reason.is_empty() {
            message.push_str(": ");
            message.push_str(&self.reason);
        }
        message
    }

    /// The error response for the request whose raw JSON id is `id` (`null` when it has none).
    pub(crate) fn error_response(&self, id: Option<&[u8]>) -> Vec<u8> {
        let error = json!({
            "code": BLOCKED_CODE,
            "message": self.message(),
            "data": {"km": {"action": "block", "plugin": self.plugin, "rules": self.rules, "reason": self.reason}},
        });
        // The id is spliced in as the raw JSON text the peer sent, so that it matches exactly
        // (a large number, a string with escapes).
        let mut line = br#"{"jsonrpc":"2.0","id":"#.to_vec();
        line.extend_from_slice(id.filter(|id| is_id(id)).unwrap_or(b"null"));
        line.extend_from_slice(br#","error":"#);
        line.extend_from_slice(error.to_string().as_bytes());
        line.push(b'}');
        line
    }
}

/// Whether `raw` is a JSON-RPC id km may splice into its own JSON: a string or a number.
fn is_id(raw: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(raw).is_ok_and(|v| v.is_string() || v.is_number())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A batch rebuilt from its elements as they are to be forwarded.
pub(crate) fn rebuild_batch(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut line = vec![b'['];
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        line.extend_from_slice(element);
    }
    line.push(b']');
    line
}

/// The answer to blocked requests of one batch: one error alone, several as a batch.
pub(crate) fn batch_answer(errors: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    match errors.len() {
        0 => None,
        1 => errors.into_iter().next(),
        _ => Some(rebuild_batch(&errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_carries_the_raw_id_and_no_content() {
        let blocked = Blocked::new(
            "advanced-filters",
            &["aws-access-key-id".to_owned()],
            "a secret was found",
        );
        let line = blocked.error_response(Some(br#""req-\u0031""#));
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(value["id"], "req-1");
        assert_eq!(value["error"]["code"], BLOCKED_CODE);
        assert_eq!(
            value["error"]["message"],
            "blocked by km plugin advanced-filters (aws-access-key-id): a secret was found"
        );
        assert_eq!(value["error"]["data"]["km"]["plugin"], "advanced-filters");
        assert!(line.starts_with(br#"{"jsonrpc":"2.0","id":"req-\u0031","#));
        let line = blocked.error_response(Some(b"12345678901234567890123"));
        assert!(line.starts_with(br#"{"jsonrpc":"2.0","id":12345678901234567890123,"#));
    }

    #[test]
    fn a_bad_id_becomes_null_and_long_reasons_are_cut() {
        let blocked = Blocked::new("p", &[], &"x".repeat(1000));
        let line = blocked.error_response(Some(b"{\"not\":\"an id\"}"));
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert!(value["id"].is_null());
        assert!(value["error"]["data"]["km"]["reason"]
            .as_str()
            .is_some_and(|r| r.chars().count() <= MAX_REASON + 1));
    }

    #[test]
    fn batches_are_rebuilt_from_their_elements() {
        assert_eq!(
            rebuild_batch(&[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]),
            b"[{\"a\":1},{\"b\":2}]"
        );
        assert_eq!(batch_answer(vec![]), None);
        assert_eq!(batch_answer(vec![b"{}".to_vec()]), Some(b"{}".to_vec()));
        assert_eq!(
            batch_answer(vec![b"{}".to_vec(), b"[]".to_vec()]),
            Some(b"[{},[]]".to_vec())
        );
    }
}
