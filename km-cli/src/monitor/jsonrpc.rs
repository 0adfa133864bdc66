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
    /// The raw JSON text of `params` (any JSON value).
    pub(crate) params: Option<Range<usize>>,
    /// The raw JSON text of a progress token: a request's `params._meta.progressToken`, or a
    /// `notifications/progress`'s `params.progressToken` (a string or a number).
    pub(crate) progress: Option<Range<usize>>,
}

impl Scan {
    fn non_json() -> Self {
        Scan {
            kind: MessageKind::NON_JSON,
            is_error: false,
            id: None,
            method: None,
            cancels: None,
            params: None,
            progress: None,
        }
    }
}

/// The method whose notification cancels a request (MCP).
const CANCELLED: &[u8] = b"\"notifications/cancelled\"";

/// The method whose notification reports a request's progress (MCP).
const PROGRESS: &[u8] = b"\"notifications/progress\"";

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
    let mut progress = None;
    let is_id = |first: u8| first == b'"' || first == b'-' || first.is_ascii_digit();
    match (kind, &method, &params) {
        (MessageKind::NOTIFICATION, Some(m), Some(p)) if line[p.start] == b'{' => {
            let (wanted, slot) = match &line[m.clone()] {
                CANCELLED => (&b"requestId"[..], &mut cancels),
                PROGRESS => (&b"progressToken"[..], &mut progress),
                _ => (&b""[..], &mut None),
            };
            if !wanted.is_empty() {
                let _ = walk_object(line, p.start, |key, value| {
                    if key == wanted && is_id(line[value.start]) {
                        *slot = Some(value);
                    }
                });
            }
        }
        // A request asks for progress in `params._meta.progressToken`; look only when `_meta`
        // is there at all, so that other requests are not walked twice.
        (MessageKind::REQUEST, _, Some(p))
            if line[p.start] == b'{'
                && memchr::memmem::find(&line[p.clone()], b"\"_meta\"").is_some() =>
        {
            let _ = walk_object(line, p.start, |key, value| {
                if key == b"_meta" && line[value.start] == b'{' {
                    let _ = walk_object(line, value.start, |key, value| {
                        if key == b"progressToken" && is_id(line[value.start]) {
                            progress = Some(value);
                        }
                    });
                }
            });
        }
        _ => {}
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
        params,
        progress,
    })
}

/// The raw JSON string of what a request acts on, inside its `params` (`params_range`): `name`
/// for `tools/call` and `prompts/get`, `uri` for `resources/read`, `resources/subscribe` and
/// `resources/unsubscribe`. `None` for other methods or when it is missing.
pub(crate) fn request_target(
    line: &[u8],
    method: &str,
    params_range: &Option<Range<usize>>,
) -> Option<Range<usize>> {
    let key: &[u8] = match method {
        "tools/call" | "prompts/get" => b"name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => b"uri",
        _ => return None,
    };
    let params = params_range.clone()?;
    if line.get(params.start) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    walk_object(line, params.start, |k, value| {
        if k == key && line[value.start] == b'"' {
            found = Some(value);
        }
    })?;
    found
}

/// The elements of a JSON array line (a JSON-RPC batch), as ranges into the line; `None` when
/// the line is not one array.
pub(crate) fn batch_elements(line: &[u8]) -> Option<Vec<Range<usize>>> {
    let start = skip_ws(line, 0);
    if line.get(start) != Some(&b'[') {
        return None;
    }
    let mut elements = Vec::new();
    let mut i = skip_ws(line, start + 1);
    if line.get(i) == Some(&b']') {
        return (skip_ws(line, i + 1) == line.len()).then_some(elements);
    }
    loop {
        let end = skip_value(line, i)?;
        elements.push(i..end);
        i = skip_ws(line, end);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b']') => break,
            _ => return None,
        }
    }
    (skip_ws(line, i + 1) == line.len()).then_some(elements)
}

/// What can be told of a line from its first bytes only (a line too long to inspect): its kind
/// when the members that decide it came first, its `id` and `method`. Members after the prefix
/// are unknown, so a request whose `method` comes late is reported as unknown (`None`).
pub(crate) fn scan_prefix(prefix: &[u8]) -> (Option<MessageKind>, Scan) {
    let mut scan = Scan::non_json();
    let start = skip_ws(prefix, 0);
    if prefix.get(start) != Some(&b'{') {
        return (None, scan);
    }
    let (mut has_result, mut has_error) = (false, false);
    // Like `walk_object`, but a member whose value is cut off still counts by its key.
    let mut i = skip_ws(prefix, start + 1);
    while prefix.get(i) == Some(&b'"') {
        let Some(key_end) = skip_string(prefix, i) else {
            break;
        };
        let key = &prefix[i + 1..key_end - 1];
        let colon = skip_ws(prefix, key_end);
        if prefix.get(colon) != Some(&b':') {
            break;
        }
        let value_start = skip_ws(prefix, colon + 1);
        match key {
            b"result" => has_result = true,
            b"error" => has_error = true,
            _ => {}
        }
        let Some(value_end) = skip_value(prefix, value_start) else {
            break;
        };
        let first = prefix[value_start];
        match key {
            b"id" if first == b'"' || first == b'-' || first.is_ascii_digit() => {
                scan.id = Some(value_start..value_end)
            }
            b"method" if first == b'"' => scan.method = Some(value_start..value_end),
            _ => {}
        }
        i = skip_ws(prefix, value_end);
        if prefix.get(i) != Some(&b',') {
            break;
        }
        i = skip_ws(prefix, i + 1);
    }
    let kind = match (&scan.method, &scan.id) {
        (Some(_), Some(_)) => Some(MessageKind::REQUEST),
        (None, Some(_)) if has_result || has_error => Some(MessageKind::RESPONSE),
        _ => None,
    };
    if let Some(kind) = kind {
        scan.kind = kind;
        scan.is_error = has_error;
    }
    (kind, scan)
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
    fn progress_tokens_of_requests_and_progress_notifications() {
        let line = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"tok-1"}}}"#;
        let s = scan(line.as_bytes());
        assert_eq!(text(line, &s.progress), Some("\"tok-1\""));
        let line = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":5,"progressToken":17}}"#;
        let s = scan(line.as_bytes());
        assert_eq!(s.kind, MessageKind::NOTIFICATION);
        assert_eq!(text(line, &s.progress), Some("17"));
        let line = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","arguments":{"_meta":"not it"}}}"#;
        assert_eq!(scan(line.as_bytes()).progress, None);
    }

    #[test]
    fn targets_of_requests() {
        let line = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"name":"inner"},"name":"get-sum"}}"#;
        let s = scan(line.as_bytes());
        assert_eq!(
            text(
                line,
                &request_target(line.as_bytes(), "tools/call", &s.params)
            ),
            Some("\"get-sum\"")
        );
        let line =
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}"#;
        let s = scan(line.as_bytes());
        assert_eq!(
            text(
                line,
                &request_target(line.as_bytes(), "resources/read", &s.params)
            ),
            Some("\"file:///a\"")
        );
        assert_eq!(request_target(line.as_bytes(), "ping", &s.params), None);
    }

    #[test]
    fn batch_elements_and_prefixes() {
        let line = br#" [ {"id":1,"method":"a"} , {"id":2,"method":"b","params":[1,2]} ] "#;
        let elements = batch_elements(line).expect("an array");
        let texts: Vec<&[u8]> = elements.iter().map(|r| &line[r.clone()]).collect();
        assert_eq!(
            texts,
            [
                &br#"{"id":1,"method":"a"}"#[..],
                br#"{"id":2,"method":"b","params":[1,2]}"#
            ]
        );
        assert_eq!(batch_elements(b"[]"), Some(vec![]));
        for bad in [&b"[1,"[..], b"[1] x", b"{}", b"[1 2]"] {
            assert_eq!(batch_elements(bad), None);
        }
        let (kind, s) = scan_prefix(
            br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"arguments":{"data":"AAAA"#,
        );
        assert_eq!(kind, Some(MessageKind::REQUEST));
        assert!(s.id.is_some() && s.method.is_some());
        let (kind, _) = scan_prefix(br#"{"jsonrpc":"2.0","params":{"x":"AAAA"#);
        assert_eq!(kind, None, "the method may come later: unknown");
        let (kind, s) =
            scan_prefix(br#"{"jsonrpc":"2.0","id":"r","result":{"content":[{"text":"AA"#);
        assert_eq!((kind, s.is_error), (Some(MessageKind::RESPONSE), false));
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
