//! What a span needs from one forwarded JSON-RPC line: its method, id and target, the trace
//! context in `params._meta`, the protocol version `initialize` settled on, and how a response
//! ended (a JSON-RPC error, or a tool result with `isError`).
//!
//! This runs on the telemetry thread, never in the relay, so it can afford serde: borrowed
//! structs that name only the members spans use, so that everything else (a tool's arguments,
//! a result's content) is skipped without being built. A line serde cannot read yields what it
//! could (nothing); the relay's own classification already decided that it is JSON-RPC.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The members of a message that matter here.
#[derive(Debug, Default, Deserialize)]
struct Message<'a> {
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct Params<'a> {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    uri: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<Meta>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default, deserialize_with = "lenient")]
    traceparent: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    tracestate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ResultPart {
    #[serde(default, rename = "isError")]
    is_error: Option<IsError>,
    #[serde(default, rename = "protocolVersion", deserialize_with = "lenient")]
    protocol_version: Option<String>,
}

/// `isError` as sent: only `true` counts.
#[derive(Debug)]
struct IsError(bool);

impl<'de> Deserialize<'de> for IsError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(IsError(value == serde_json::Value::Bool(true)))
    }
}

#[derive(Debug, Default, Deserialize)]
struct ErrorPart {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
}

/// A member that should be a string: anything else counts as absent instead of making the whole
/// message unreadable.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A request or notification, as spans need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) method: String,
    /// `jsonrpc.request.id`: a string id's text, a number as written; none for null or absent.
    pub(crate) id: Option<String>,
    /// `params.name` (tools/call, prompts/get).
    pub(crate) name: Option<String>,
    /// `params.uri` (resources/read, resources/subscribe, resources/unsubscribe,
    /// notifications/resources/updated).
    pub(crate) uri: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    /// `params.arguments` as JSON text (captured only on request).
    pub(crate) arguments: Option<String>,
}

/// How a response ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// A JSON-RPC error: its code as text and its message.
    pub(crate) error: Option<(String, String)>,
    /// A result with `isError: true`.
    pub(crate) tool_error: bool,
    /// `result.protocolVersion` (the answer to `initialize`).
    pub(crate) protocol_version: Option<String>,
    /// `result` as JSON text (captured only on request).
    pub(crate) result: Option<String>,
}

/// Reads a request or notification line; `capture` keeps `params.arguments`.
pub(crate) fn call(line: &[u8], capture: bool) -> Option<Call> {
    let message: Message<'_> = serde_json::from_slice(line).ok()?;
    let method = message.method?;
    let params: Params<'_> = message
        .params
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let meta = params.meta.unwrap_or_default();
    Some(Call {
        id: message.id.and_then(id_text),
        name: params.name,
        uri: params.uri,
        traceparent: meta.traceparent,
        tracestate: meta.tracestate,
        arguments: capture
            .then(|| params.arguments.map(|raw| raw.get().to_owned()))
            .flatten(),
        method,
    })
}

/// Reads a response line; `capture` keeps `result`.
pub(crate) fn answer(line: &[u8], capture: bool) -> Answer {
    let Ok(message) = serde_json::from_slice::<Message<'_>>(line) else {
        return Answer::default();
    };
    let mut answer = Answer::default();
    if let Some(raw) = message.error {
        let error: ErrorPart = serde_json::from_str(raw.get()).unwrap_or_default();
        let code = match error.code {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            // The conventions' fallback for an error that names no class.
            _ => "_OTHER".to_owned(),
        };
        answer.error = Some((code, error.message.unwrap_or_default()));
        return answer;
    }
    if let Some(raw) = message.result {
        let result: ResultPart = serde_json::from_str(raw.get()).unwrap_or_default();
        answer.tool_error = result.is_error.is_some_and(|e| e.0);
        answer.protocol_version = result.protocol_version;
        if capture {
            answer.result = Some(raw.get().to_owned());
        }
    }
    answer
}

/// `jsonrpc.request.id` of a raw id: a string's text, a number's digits, nothing for null.
fn id_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).ok(),
        Some(b'n') => None,
        Some(_) => Some(text.to_owned()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_with_trace_context() {
        let line = br#"{"jsonrpc":"2.0","id":"r-7","method":"tools/call","params":{"name":"get-weather","arguments":{"city":"Paris"},"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"rojo=1","progressToken":3}}}"#;
        let call = call(line, true).expect("a call");
        assert_eq!(call.method, "tools/call");
        assert_eq!(call.id.as_deref(), Some("r-7"));
        assert_eq!(call.name.as_deref(), Some("get-weather"));
        assert_eq!(
            call.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(call.tracestate.as_deref(), Some("rojo=1"));
        assert_eq!(call.arguments.as_deref(), Some(r#"{"city":"Paris"}"#));
        let without = super::call(line, false).expect("a call");
        assert_eq!(without.arguments, None, "not captured unless asked");
    }

    #[test]
    fn odd_members_do_not_make_a_line_unreadable() {
        let call = call(
            br#"{"jsonrpc":"2.0","id":12,"method":"resources/read","params":{"uri":"file:///a","name":5,"_meta":{"traceparent":7}}}"#,
            false,
        )
        .expect("a call");
        assert_eq!(call.id.as_deref(), Some("12"));
        assert_eq!(call.uri.as_deref(), Some("file:///a"));
        assert_eq!(call.name, None);
        assert_eq!(call.traceparent, None);
        let call = super::call(
            br#"{"jsonrpc":"2.0","id":null,"method":"ping","params":[1]}"#,
            false,
        )
        .expect("a call");
        assert_eq!((call.id, call.name), (None, None));
        assert_eq!(super::call(b"not json", false), None);
    }

    #[test]
    fn answers() {
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool: x","data":{"a":[1]}}}"#,
            true,
        );
        assert_eq!(a.error, Some(("-32602".into(), "unknown tool: x".into())));
        assert_eq!(a.result, None);
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#,
            false,
        );
        assert!(a.tool_error && a.error.is_none());
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#,
            true,
        );
        assert_eq!(a.protocol_version.as_deref(), Some("2025-06-18"));
        assert!(!a.tool_error);
        assert_eq!(
            a.result.as_deref(),
            Some(r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#)
        );
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}"#,
            false,
        );
        assert_eq!(a.error, Some(("_OTHER".into(), "no code".into())));
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"isError":"yes"}}"#,
            false,
        );
        assert!(!a.tool_error);
    }
}
