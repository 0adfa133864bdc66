//! What the plugin reads out of a JSON-RPC line beyond what km already tells it (kind, method,
//! id, correlation, latency): the tool a request acts on, its progress token, the code of an
//! error, whether a tool result is an error, and the token of a progress notification.
//!
//! serde_json with borrowed, lenient fields: a field of an unexpected type counts as absent
//! rather than failing the line, and everything else is skipped without being built (serde's
//! `IgnoredAny`), so a large result costs a scan, not an allocation per value. Results are only
//! parsed for `tools/call` (the only method whose result says `isError`), and errors only for
//! their code.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A string that is `None` when the JSON value is anything else (never an error).
#[derive(Debug, Default, PartialEq, Eq)]
struct LenientStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A JSON value kept as its text, for progress tokens (a string or a number, compared as sent).
#[derive(Debug, Default, PartialEq, Eq)]
struct TokenText(Option<String>);

impl<'de> Deserialize<'de> for TokenText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a progress token")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TokenText(Some(serde_json::Value::from(v).to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TokenText(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TokenText(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TokenText(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TokenText(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TokenText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TokenText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TokenText(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Anything that is not an object counts as absent.
#[derive(Debug, Default)]
struct Lenient<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffering the value would allocate; objects are what MCP sends, and a line whose
        // `params` is something else is treated as having none (the whole parse fails, and the
        // caller falls back to "no fields").
        T::deserialize(deserializer).map(|v| Lenient(Some(v)))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    #[serde(rename = "progressToken")]
    progress_token: TokenText,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestParams<'a> {
    #[serde(borrow)]
    name: LenientStr<'a>,
    #[serde(borrow)]
    uri: LenientStr<'a>,
    #[serde(rename = "_meta")]
    meta: Lenient<Meta>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestLine<'a> {
    #[serde(borrow)]
    params: Lenient<RequestParams<'a>>,
}

/// What a request says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestFields<'a> {
    /// The tool (`tools/call`), prompt (`prompts/get`) or resource URI (`resources/read`).
    pub(crate) target: Option<Cow<'a, str>>,
    /// `params._meta.progressToken` as JSON text.
    pub(crate) progress_token: Option<String>,
}

/// Reads a request line of `method`.
pub(crate) fn request<'a>(line: &'a [u8], method: &str) -> RequestFields<'a> {
    let Ok(parsed) = serde_json::from_slice::<RequestLine<'_>>(line) else {
        return RequestFields::default();
    };
    let Some(params) = parsed.params.0 else {
        return RequestFields::default();
    };
    let target = match method {
        "tools/call" | "prompts/get" => params.name.0,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => params.uri.0,
        _ => None,
    };
    RequestFields {
        target,
        progress_token: params.meta.0.and_then(|m| m.progress_token.0),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorObject {
    code: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorLine {
    error: Lenient<ErrorObject>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResultLine {
    result: Lenient<ToolResult>,
}

/// The code of a JSON-RPC error response (0 when it has none, or is not readable).
pub(crate) fn error_code(line: &[u8]) -> i64 {
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .and_then(|l| l.error.0)
        .and_then(|e| e.code)
        .unwrap_or(0)
}

/// Whether a `tools/call` result says `isError: true`.
pub(crate) fn tool_result_is_error(line: &[u8]) -> bool {
    serde_json::from_slice::<ResultLine>(line)
        .ok()
        .and_then(|l| l.result.0)
        .and_then(|r| r.is_error)
        .unwrap_or(false)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProgressParams {
    #[serde(rename = "progressToken")]
    progress_token: TokenText,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProgressLine {
    params: Lenient<ProgressParams>,
}

/// The token of a `notifications/progress`, as JSON text.
pub(crate) fn progress_token(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<ProgressLine>(line)
        .ok()
        .and_then(|l| l.params.0)
        .and_then(|p| p.progress_token.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_target_and_progress_token() {
        let line = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a \"quoted\" name"},"_meta":{"progressToken":"t-1"}}}"#;
        let fields = request(line, "tools/call");
        assert_eq!(fields.target.as_deref(), Some("echo"));
        assert_eq!(fields.progress_token.as_deref(), Some("\"t-1\""));
        let line = br#"{"id":1,"method":"resources/read","params":{"uri":"file:///a%20b","_meta":{"progressToken":7}}}"#;
        let fields = request(line, "resources/read");
        assert_eq!(fields.target.as_deref(), Some("file:///a%20b"));
        assert_eq!(fields.progress_token.as_deref(), Some("7"));
        // An escaped name is decoded.
        let line = br#"{"id":1,"method":"tools/call","params":{"name":"a\u00e9b"}}"#;
        assert_eq!(request(line, "tools/call").target.as_deref(), Some("aéb"));
    }

    #[test]
    fn odd_requests_give_no_fields_instead_of_failing() {
        for line in [
            &br#"{"id":1,"method":"tools/call","params":{"name":42}}"#[..],
            br#"{"id":1,"method":"tools/call","params":[1,2]}"#,
            br#"{"id":1,"method":"tools/call"}"#,
            br#"not json"#,
            br#"{"id":1,"method":"tools/call","params":{"name":{"x":[1]},"_meta":{"progressToken":{"a":1}}}}"#,
        ] {
            let fields = request(line, "tools/call");
            assert_eq!(fields.target, None, "{}", String::from_utf8_lossy(line));
            assert_eq!(fields.progress_token, None);
        }
        // The name of a method without a target is not taken as one.
        let line = br#"{"id":1,"method":"tools/list","params":{"name":"x"}}"#;
        assert_eq!(request(line, "tools/list").target, None);
    }

    #[test]
    fn responses_say_their_error_code_and_tool_errors() {
        assert_eq!(
            error_code(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#),
            -32602
        );
        assert_eq!(error_code(br#"{"id":1,"error":{"message":"no code"}}"#), 0);
        assert_eq!(error_code(b"garbage"), 0);
        assert!(tool_result_is_error(
            br#"{"id":1,"result":{"content":[{"type":"text","text":"\"isError\":false"}],"isError":true}}"#
        ));
        assert!(!tool_result_is_error(
            br#"{"id":1,"result":{"content":[{"type":"text","text":"{\"isError\":true}"}],"isError":false}}"#
        ));
        assert!(!tool_result_is_error(
            br#"{"id":1,"result":{"content":[]}}"#
        ));
        assert!(!tool_result_is_error(
            br#"{"id":1,"result":{"isError":"yes"}}"#
        ));
    }

    #[test]
    fn progress_notifications_name_their_token() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"count-5","progress":1,"total":5}}"#;
        assert_eq!(progress_token(line).as_deref(), Some("\"count-5\""));
        let line = br#"{"method":"notifications/progress","params":{"progressToken":12}}"#;
        assert_eq!(progress_token(line).as_deref(), Some("12"));
        assert_eq!(
            progress_token(br#"{"method":"notifications/progress"}"#),
            None
        );
    }
}
