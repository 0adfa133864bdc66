//! Classifying a line as JSON-RPC, reading only what the plugins need.
//!
//! This runs on every line in the relay's hot path, so it is a borrowed scan rather than a parse:
//! it walks the top-level object once, notes where `id`, `method`, `result`, `error` and `params`
//! are, and skips every other value without building it (a 50 MB string is passed over with
//! `memchr`, never copied). It is a classifier, not a validator: it rejects what it cannot walk
//! (those lines become [`MessageKind::NON_JSON`]) but does not check, for instance, escapes or
//! number syntax inside skipped values. Whatever the input, it returns; it never panics and never
//! recurses, so deep nesting cannot overflow the stack.

use std::ops::Range;

use km_abi::MessageKind;

/// What the scan found in one line. Ranges index into the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The kind of message.
    pub(crate) kind: MessageKind,
    /// For a response: it has `error`.
    pub(crate) is_error: bool,
    /// The raw JSON text of `id` when it is a string or a number.
    pub(crate) id: Option<Range<usize>>,
    /// The raw JSON text of `method` (with its quotes) when it is a string.
    pub(crate) method: Option<Range<usize>>,
    /// For `notifications/cancelled`: the raw JSON text of `params.requestId`.
    pub(crate) cancels: Option<Range<usize>>,
}

impl Scan {
    fn non_json() -> Self {
        Scan {
            kind: MessageKind::NON_JSON,
            is_error: false,
            id: None,
            method: None,
            cancels: None,
        }
    }
}

/// The method whose notification cancels a request (MCP).
const CANCELLED: &[u8] = b"\"notifications/cancelled\"";

/// Classifies one line (without its terminator).
pub(crate) fn scan(line: &[u8]) -> Scan {
    let start = skip_ws(line, 0);
    match line.get(start) {
        Some(b'{') => scan_message(line, start).unwrap_or_else(Scan::non_json),
        Some(b'[') => match skip_value(line, start) {
            Some(end) if skip_ws(line, end) == line.len() => Scan {
                kind: MessageKind::BATCH,
                ..Scan::non_json()
            },
            _ => Scan::non_json(),
        },
        _ => Scan::non_json(),
    }
}

fn scan_message(line: &[u8], start: usize) -> Option<Scan> {
    let mut id = None;
    let mut id_present = false;
    let mut method = None;
    let mut method_present = false;
    let mut has_result = false;
    let mut has_error = false;
    let mut params = None;
    let end = walk_object(line, start, |key, value| {
        let first = line[value.start];
        match key {
            b"id" => {
                id_present = true;
                if first == b'"' || first == b'-' || first.is_ascii_digit() {
                    id = Some(value);
                }
            }
            b"method" => {
                method_present = true;
                if first == b'"' {
                    method = Some(value);
                }
            }
            b"result" => has_result = true,
            b"error" => has_error = true,
            b"params" => params = Some(value),
            _ => {}
        }
    })?;
    if skip_ws(line, end) != line.len() {
        return None;
    }
    let kind = if method_present && id_present {
        MessageKind::REQUEST
    } else if method_present {
        MessageKind::NOTIFICATION
    } else if id_present && (has_result || has_error) {
        MessageKind::RESPONSE
    } else {
        return None;
    };
    let mut cancels = None;
    if kind == MessageKind::NOTIFICATION {
        if let (Some(m), Some(p)) = (&method, &params) {
            if &line[m.clone()] == CANCELLED && line[p.start] == b'{' {
                let _ = walk_object(line, p.start, |key, value| {
                    let first = line[value.start];
                    if key == b"requestId"
                        && (first == b'"' || first == b'-' || first.is_ascii_digit())
                    {
                        cancels = Some(value);
                    }
                });
            }
        }
    }
    Some(Scan {
        kind,
        is_error: kind == MessageKind::RESPONSE && has_error,
        id: if kind == MessageKind::NOTIFICATION {
            None
        } else {
            id
        },
        method,
        cancels,
    })
}

/// Walks the object starting at `line[start] == b'{'`, calling `visit(raw key, value range)` for
/// each member (the key without quotes, escapes left as they are). Returns the index after `}`.
fn walk_object(
    line: &[u8],
    start: usize,
    mut visit: impl FnMut(&[u8], Range<usize>),
) -> Option<usize> {
    let mut i = skip_ws(line, start + 1);
    if line.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(line, i)?;
        let key = &line[i + 1..key_end - 1];
        i = skip_ws(line, key_end);
        if line.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(line, i + 1);
        let value_end = skip_value(line, value_start)?;
        visit(key, value_start..value_end);
        i = skip_ws(line, value_end);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

fn skip_ws(line: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\r' | b'\n') = line.get(i) {
        i += 1;
    }
    i
}

/// `line[start]` is `"`; returns the index after the closing quote.
fn skip_string(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', line.get(i..)?)?;
        if line[at] == b'"' {
            return Some(at + 1);
        }
        i = at + 2;
    }
}

/// Returns the index after the JSON value starting at `line[start]`.
fn skip_value(line: &[u8], start: usize) -> Option<usize> {
    match *line.get(start)? {
        b'"' => skip_string(line, start),
        b'{' | b'[' => skip_container(line, start),
        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
            let len = line[start..]
                .iter()
                .position(
                    |&b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z'),
                )
                .unwrap_or(line.len() - start);
            let word = &line[start..start + len];
            let ok = word == b"true"
                || word == b"false"
                || word == b"null"
                || word[0] == b'-'
                || word[0].is_ascii_digit();
            ok.then_some(start + len)
        }
        _ => None,
    }
}

/// Skips a nested object or array by counting brackets outside strings (no recursion).
fn skip_container(line: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < line.len() {
        match line[i] {
            b'"' => {
                i = skip_string(line, i)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text of a JSON string's raw form (with quotes), unescaped when needed.
pub(crate) enum Text<'a> {
    /// No escapes: the bytes between the quotes.
    Borrowed(&'a str),
    /// Had escapes: decoded.
    Owned(String),
}

/// Decodes the raw JSON string `raw` (with quotes); `None` when it is not valid.
pub(crate) fn string_text(raw: &[u8]) -> Option<Text<'_>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(Text::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Text::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<'a>(line: &'a str, range: &Option<Range<usize>>) -> Option<&'a str> {
        range.clone().map(|r| &line[r])
    }

    #[test]
    fn request_with_id_and_method() {
        let line = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#;
        let s = scan(line.as_bytes());
        assert_eq!(s.kind, MessageKind::REQUEST);
        assert_eq!(text(line, &s.id), Some("7"));
        assert_eq!(text(line, &s.method), Some("\"tools/call\""));
    }

    #[test]
    fn responses_result_and_error() {
        let line = r#" { "result" : {"a":[1,{"b":"}"}]}, "id" : "abc", "jsonrpc":"2.0" } "#;
        let s = scan(line.as_bytes());
        assert_eq!((s.kind, s.is_error), (MessageKind::RESPONSE, false));
        assert_eq!(text(line, &s.id), Some("\"abc\""));
        let s = scan(br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#);
        assert_eq!((s.kind, s.is_error), (MessageKind::RESPONSE, true));
        let s = scan(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}"#);
        assert_eq!((s.kind, s.id), (MessageKind::RESPONSE, None));
    }

    #[test]
    fn notification_and_cancellation() {
        let line = r#"{"jsonrpc":"2.0","params":{"reason":"x","requestId":"r-1"},"method":"notifications/cancelled"}"#;
        let s = scan(line.as_bytes());
        assert_eq!(s.kind, MessageKind::NOTIFICATION);
        assert_eq!(text(line, &s.cancels), Some("\"r-1\""));
        let s = scan(
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"requestId":1}}"#,
        );
        assert_eq!((s.kind, s.cancels), (MessageKind::NOTIFICATION, None));
    }

    #[test]
    fn batches_and_non_json() {
        assert_eq!(scan(br#"[{"id":1,"method":"a"}]"#).kind, MessageKind::BATCH);
        for line in [
            &b""[..],
            b"hello",
            b"\xff\xfe",
            b"{",
            b"[1,2",
            b"{\"id\":1,\"method\":\"x\"} trailing",
            b"{\"a\":1}",
            b"{\"id\":1}",
            b"{\"id\" 1}",
            b"{\"s\":\"unterminated\\\"}",
            b"{\"x\":}",
            b"42",
            b"{\"id\":1,\"result\":1,}",
        ] {
            assert_eq!(
                scan(line).kind,
                MessageKind::NON_JSON,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn escaped_quotes_and_nested_brackets_in_strings() {
        let line = br#"{"params":{"t":"a\"}]\\"},"id":1,"method":"m\u0041"}"#;
        let s = scan(line);
        assert_eq!(s.kind, MessageKind::REQUEST);
        let raw = &line[s.method.clone().unwrap_or(0..0)];
        assert!(matches!(string_text(raw), Some(Text::Owned(m)) if m == "mA"));
        assert!(matches!(
            string_text(b"\"plain\""),
            Some(Text::Borrowed("plain"))
        ));
        assert!(string_text(b"\"").is_none());
    }

    #[test]
    fn hostile_input_never_panics() {
        let deep = "[".repeat(100_000);
        assert_eq!(scan(deep.as_bytes()).kind, MessageKind::NON_JSON);
        let deep = format!(
            "{{\"id\":1,\"result\":{}{}}}",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert_eq!(scan(deep.as_bytes()).kind, MessageKind::RESPONSE);
        for line in [
            &b"{\"a\":\"\\"[..],
            b"{\"",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":-",
            b"]",
            b"}",
        ] {
            assert_eq!(scan(line).kind, MessageKind::NON_JSON);
        }
    }
}
