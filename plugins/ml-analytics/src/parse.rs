//! What the plugin reads out of a JSON-RPC line beyond what km already tells it (kind, method,
//! id, correlation, latency): the tool a request acts on, its progress token, the code of an
//! error, whether a tool result is an error, and the token of a progress notification.
//!
//! A hand-written [`Scanner`] rather than serde_json, for speed: it follows only the members it
//! needs (`params.name`, `params._meta.progressToken`, `result.isError`) and jumps over every
//! other value, strings with memchr (many GB/s; serde_json skips a string byte by byte, about
//! 0.5 GB/s here, and builds its keys), so a request costs a few hundred instructions and a
//! megabyte result little more than a small one. With serde the handler cost 9,000 instructions
//! per line on the bench's mix, most of them here. serde_json still decodes what the scanner
//! finds escaped (a name with `\u00e9`), and reads error objects, which are small and rare.
//!
//! It does not validate lines (km classified them already): anything it cannot follow counts as
//! absent. A member of an unexpected type (a numeric `name`) is absent too, never an error.

use std::borrow::Cow;

/// What a request says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestFields<'a> {
    /// The tool (`tools/call`), prompt (`prompts/get`) or resource URI (`resources/read`).
    pub(crate) target: Option<Cow<'a, str>>,
    /// `params._meta.progressToken` as JSON text.
    pub(crate) progress_token: Option<Cow<'a, str>>,
}

/// Reads a request line of `method`.
pub(crate) fn request<'a>(line: &'a [u8], method: &str) -> RequestFields<'a> {
    let target_key: Option<&[u8]> = match method {
        "tools/call" | "prompts/get" => Some(b"name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some(b"uri"),
        _ => None,
    };
    let mut fields = RequestFields::default();
    let mut s = Scanner::new(line);
    let _ = s.each_member(|s, key| {
        if key.as_ref() != b"params" || s.peek()? != b'{' {
            return s.skip_value();
        }
        s.each_member(|p, key| {
            if Some(key.as_ref()) == target_key {
                fields.target = p.string_value();
                Some(())
            } else if key.as_ref() == b"_meta" && p.peek()? == b'{' {
                fields.progress_token = p.member_text(b"progressToken")?;
                Some(())
            } else {
                p.skip_value()
            }
        })
    });
    fields
}

/// The code of a JSON-RPC error response (0 when it has none, or is not readable).
pub(crate) fn error_code(line: &[u8]) -> i64 {
    #[derive(serde::Deserialize)]
    struct ErrorObject {
        code: Option<i64>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorLine {
        error: Option<ErrorObject>,
    }
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .and_then(|l| l.error)
        .and_then(|e| e.code)
        .unwrap_or(0)
}

/// Whether a `tools/call` result says `isError: true`.
pub(crate) fn tool_result_is_error(line: &[u8]) -> bool {
    let mut s = Scanner::new(line);
    s.members(|s| {
        if s.key()?.as_ref() != b"result" {
            s.skip_value()?;
            return Some(None);
        }
        // The first `result` decides; a result without `isError` is not an error.
        let found = s.members(|r| {
            if r.key()?.as_ref() == b"isError" {
                r.ws();
                return Some(Some(r.b.get(r.i..)?.starts_with(b"true")));
            }
            r.skip_value()?;
            Some(None)
        });
        Some(Some(found.unwrap_or(false)))
    })
    .unwrap_or(false)
}

/// The token of a `notifications/progress`, as JSON text.
pub(crate) fn progress_token(line: &[u8]) -> Option<Cow<'_, str>> {
    let mut token = None;
    let mut s = Scanner::new(line);
    let _ = s.each_member(|s, key| {
        if key.as_ref() == b"params" && s.peek()? == b'{' {
            token = s.member_text(b"progressToken")?;
            Some(())
        } else {
            s.skip_value()
        }
    });
    token
}

/// A cursor over a JSON line that follows only what the functions above need. Every method
/// returns `None` where the line stops making sense.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

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
    fn string(&mut self) -> Option<&'a [u8]> {
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

    /// A member's key (decoded if it has escapes); the cursor ends after the colon.
    fn key(&mut self) -> Option<Cow<'a, [u8]>> {
        let raw = self.string()?;
        let key = if raw.contains(&b'\\') {
            Cow::Owned(decode(raw)?.into_bytes())
        } else {
            Cow::Borrowed(raw)
        };
        self.eat(b':')?;
        Some(key)
    }

    /// The string value at the cursor, decoded; `None` (the value skipped) for anything else.
    fn string_value(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            self.skip_value()?;
            return None;
        }
        let raw = self.string()?;
        if raw.contains(&b'\\') {
            decode(raw).map(Cow::Owned)
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }

    /// The value of member `name` of the object at the cursor, as JSON text (a string with its
    /// quotes, or a number; other kinds are absent), the whole object consumed. Escaped strings
    /// are re-encoded plainly, so the same token is the same text whichever way a peer escaped
    /// it. `None` when the object cannot be followed.
    fn member_text(&mut self, name: &[u8]) -> Option<Option<Cow<'a, str>>> {
        let mut found = None;
        self.each_member(|m, key| {
            if key.as_ref() != name {
                return m.skip_value();
            }
            let kind = m.peek()?;
            let start = m.i;
            m.skip_value()?;
            let text = std::str::from_utf8(m.b.get(start..m.i)?).ok()?;
            found = match kind {
                b'"' if text.contains('\\') => Some(Cow::Owned(
                    serde_json::Value::String(decode(&m.b[start + 1..m.i - 1])?).to_string(),
                )),
                b'"' | b'-' | b'0'..=b'9' => Some(Cow::Borrowed(text)),
                _ => None,
            };
            Some(())
        })?;
        Some(found)
    }

    /// Walks every member of the object at the cursor, handing `member` each key with the
    /// cursor at its value (which `member` must consume), and consumes the closing brace.
    fn each_member(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, [u8]>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.key()?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
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
                let start = self.i;
                while !matches!(
                    self.b.get(self.i),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Walks the members of the object at the cursor until `member` (called with the cursor at
    /// a key) returns `Some(answer)`; the cursor is then left inside the object, so only a
    /// caller that reads nothing after it may stop early.
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
}

/// The text of a raw JSON string body with escapes.
fn decode(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).ok()
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
    fn members_are_found_in_any_order() {
        let line = br#"{"id":9,"method":"tools/call","params":{"_meta":{"x":[1,{"y":"}"}],"progressToken":"p0"},"arguments":{"delay_ms":30},"name":"progress"},"jsonrpc":"2.0"}"#;
        let fields = request(line, "tools/call");
        assert_eq!(fields.target.as_deref(), Some("progress"));
        assert_eq!(fields.progress_token.as_deref(), Some("\"p0\""));
        let line = br#"{"params":{"progressToken":"p\u0030","progress":1},"method":"notifications/progress"}"#;
        assert_eq!(progress_token(line).as_deref(), Some("\"p0\""));
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
