//! What the plugin reads out of a JSON-RPC line beyond what km already tells it (kind, method,
//! id, correlation, latency): the tool a request acts on, its progress token, the code of an
//! error, whether a tool result is an error, and the token of a progress notification.
//!
//! Requests, errors and notifications are small: serde_json with borrowed, lenient fields (a
//! field of an unexpected type counts as absent rather than failing the line; everything else
//! is skipped without being built, serde's `IgnoredAny`). Results are another matter: a tool's
//! result can be megabytes of text or base64, and all the plugin needs from it is
//! `result.isError`. serde_json skips a string byte by byte (about 0.5 GB/s here), which made
//! the handler cost 4.5 µs per line on the bench's mix; [`tool_result_is_error`] is a
//! hand-written scanner instead, which walks the structure of the two outer objects and jumps
//! over every string with memchr (many GB/s), so a large result costs little more than a small
//! one. It does not validate the line (km classified it already): anything it cannot follow
//! counts as "not an error". Results are only read for `tools/call` (the only method whose
//! result says `isError`).

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
struct ErrorLine {
    error: Lenient<ErrorObject>,
}

/// The code of a JSON-RPC error response (0 when it has none, or is not readable).
pub(crate) fn error_code(line: &[u8]) -> i64 {
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .and_then(|l| l.error.0)
        .and_then(|e| e.code)
        .unwrap_or(0)
}

/// Whether a `tools/call` result says `isError: true` (see the module documentation).
pub(crate) fn tool_result_is_error(line: &[u8]) -> bool {
    let mut s = Scanner { b: line, i: 0 };
    s.is_error().unwrap_or(false)
}

/// A cursor over a JSON line that follows only what [`tool_result_is_error`] needs. Every method
/// returns `None` where the line stops making sense.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// Skips a string starting at the cursor; returns its raw content (escapes as written).
    fn string(&mut self) -> Option<&[u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[at] == b'\\' {
                // The escaped byte (for \uXXXX the hex digits follow, never a quote).
                self.i = at + 2;
            } else {
                self.i = at + 1;
                return self.b.get(start..at);
            }
        }
    }

    /// Whether the key at the cursor is `name` (decoding it if it has escapes); the cursor ends
    /// after the colon.
    fn key_is(&mut self, name: &str) -> Option<bool> {
        let raw = self.string()?;
        let is = if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted).ok()? == name
        } else {
            raw == name.as_bytes()
        };
        self.eat(b':')?;
        Some(is)
    }

    /// Skips one value of any kind.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while !matches!(
                    self.b.get(self.i),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// Walks the members of the object at the cursor: `member` is called with the cursor at a
    /// key and returns `Some(answer)` to stop there, `None` (inside `Some`) to go on.
    fn members<T>(&mut self, mut member: impl FnMut(&mut Self) -> Option<Option<T>>) -> Option<T> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            if let Some(answer) = member(self)? {
                return Some(answer);
            }
            match self.peek()? {
                b',' => self.i += 1,
                _ => return None,
            }
        }
    }

    fn is_error(&mut self) -> Option<bool> {
        self.members(|s| {
            if !s.key_is("result")? {
                s.skip_value()?;
                return Some(None);
            }
            // The first `result` decides; a result without `isError` is not an error.
            let found = s.members(|r| {
                if r.key_is("isError")? {
                    r.ws();
                    let value = r.b.get(r.i..)?;
                    return Some(Some(value.starts_with(b"true")));
                }
                r.skip_value()?;
                Some(None)
            });
            Some(Some(found.unwrap_or(false)))
        })
    }
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
        // Nested isError keys, escaped quotes and brackets inside strings, whitespace, key
        // escapes, and a result before or after the id.
        assert!(!tool_result_is_error(
            br#"{"id":1,"result":{"content":[{"isError":true,"text":"a \" ] } { \\"}],"meta":{"isError":true}}}"#
        ));
        assert!(tool_result_is_error(
            br#"{ "result" : { "content" : [ {"text":"x]}\"[{"} ] , "is\u0045rror" : true } , "id" : 1 }"#
        ));
        assert!(tool_result_is_error(
            br#"{"jsonrpc":"2.0","result":{"isError":true},"id":"x"}"#
        ));
        assert!(!tool_result_is_error(
            br#"{"jsonrpc":"2.0","result":{},"id":1}"#
        ));
        assert!(!tool_result_is_error(
            br#"{"result":{"content":[{"text":"unterminated"#
        ));
        assert!(!tool_result_is_error(b""));
        assert!(!tool_result_is_error(br#"[{"result":{"isError":true}}]"#));
        assert!(!tool_result_is_error(
            br#"{"result":{"isError":false,"isError":true}}"#
        ));
        assert!(!tool_result_is_error(br#"{"result":{"a":]]]]}"#));
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
