//! A fast proof that a line is JSON that `serde_json::Value` reads, for the common case, so that
//! the payload can go into the event as the bytes that crossed without serde_json reading it.
//!
//! Hand-written rather than serde_json (the plugin's reference, which it falls back to) because
//! serde_json reads every string byte by byte and decodes it: on the agent mix (8 KB lines) that
//! was 40 k instructions per message, most of the plugin's cost. Here strings are passed over with
//! memchr and a vectorised check for control characters, and the line's UTF-8 is checked once by
//! the standard library.
//!
//! It is one-sided: [`surely_json`] says `true` only for lines `Value` accepts that have no
//! newline; for anything it does not fully judge (an exponent, whose range it does not compute;
//! a `\u` escape of a surrogate, which may be lone; nesting near serde_json's limit of 128; a
//! newline between tokens) it says `false`, and the caller asks serde_json, exactly as before.

/// Deeper nesting is left to serde_json (its limit is 128).
const MAX_DEPTH: u32 = 100;

/// Longer numbers are left to serde_json (300 digits cannot overflow an f64 without exponent).
const MAX_DIGITS: usize = 300;

/// Whether `line` is surely one JSON value (with JSON whitespace around its tokens, but no
/// newline) that `serde_json::from_slice::<serde_json::Value>` accepts. `false` means "not
/// sure", not "invalid".
pub(crate) fn surely_json(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok() && walk(line).is_some()
}

/// Skips spaces, tabs and carriage returns; a newline ends the fast path.
fn ws(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | b'\r') => i += 1,
            Some(b'\n') => return None,
            _ => return Some(i),
        }
    }
}

/// The end of the string that starts (with its quote) at `i`.
fn string(b: &[u8], i: usize) -> Option<usize> {
    let mut i = i + 1;
    loop {
        let rest = b.get(i..)?;
        let at = memchr::memchr2(b'"', b'\\', rest)?;
        // Control characters must be escaped in a JSON string.
        if rest[..at].iter().fold(false, |any, &c| any | (c < 0x20)) {
            return None;
        }
        let at = i + at;
        if b[at] == b'"' {
            return Some(at + 1);
        }
        match *b.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i = at + 2,
            b'u' => {
                let hex = std::str::from_utf8(b.get(at + 2..at + 6)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                let code = u32::from_str_radix(hex, 16).ok()?;
                // A surrogate may be lone, which serde_json refuses: its call.
                if (0xD800..=0xDFFF).contains(&code) {
                    return None;
                }
                i = at + 6;
            }
            _ => return None,
        }
    }
}

/// The end of the number that starts at `i` (no exponent).
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let start = i;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let digits = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == digits {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) || i - start > MAX_DIGITS {
        return None;
    }
    Some(i)
}

/// The end of the literal `word` at `i`.
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

/// The key of an object member at `i` and its colon; the cursor after the colon.
fn key(b: &[u8], i: usize) -> Option<usize> {
    let i = ws(b, i)?;
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, string(b, i)?)?;
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// Walks the whole line: one value, then only whitespace. Iterative (a stack of container kinds
/// in a bit set), so that no input can overflow the stack.
fn walk(b: &[u8]) -> Option<()> {
    // Bit `d` of `objects`: whether the container at depth `d + 1` is an object.
    let mut objects: u128 = 0;
    let mut depth: u32 = 0;
    let mut i = 0;
    'value: loop {
        i = ws(b, i)?;
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let is_object = open == b'{';
                if is_object {
                    objects |= 1 << depth;
                } else {
                    objects &= !(1 << depth);
                }
                depth += 1;
                i = ws(b, i + 1)?;
                let close = if is_object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    depth -= 1;
                    i += 1;
                } else {
                    if is_object {
                        i = key(b, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = string(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            _ => return None,
        }
        // After a value: close containers, or go on to the next element.
        loop {
            i = ws(b, i)?;
            if depth == 0 {
                return (i == b.len()).then_some(());
            }
            let in_object = objects & (1 << (depth - 1)) != 0;
            match *b.get(i)? {
                b',' => {
                    i += 1;
                    if in_object {
                        i = key(b, i)?;
                    }
                    continue 'value;
                }
                b'}' if in_object => {
                    depth -= 1;
                    i += 1;
                }
                b']' if !in_object => {
                    depth -= 1;
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fast path may claim: `Value` reads it, and it has no newline.
    fn serde_accepts(line: &[u8]) -> bool {
        !line.contains(&b'\n') && serde_json::from_slice::<serde_json::Value>(line).is_ok()
    }

    #[test]
    fn common_lines_are_judged_fast() {
        for line in [
            &br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"a\"b\\c\u00e9"}]}}"#[..],
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1.5,"t":-0}}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 2, true, false, null, [], {}]"#,
            "{\"s\":\"caf\u{e9} \u{2713}\",\r\t\"n\":-0.25}".as_bytes(),
            br#""just a string""#,
            b"12",
        ] {
            assert!(surely_json(line), "{}", String::from_utf8_lossy(line));
            assert!(serde_accepts(line));
        }
    }

    #[test]
    fn what_it_cannot_judge_or_refuses_is_left_to_serde() {
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        for line in [
            &br#"{"big":1e400}"#[..],
            br#"{"small":1e2}"#,
            br#"{"lone":"\ud800"}"#,
            b"{\"a\":1,\n\"b\":2}",
            b"{\"a\":\"x\ty\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"id":1,"method":"x"} trailing"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":-}"#,
            br#"{"a" 1}"#,
            br#"{"a":1,}"#,
            br#"[1,]"#,
            br#"[1}"#,
            br#"{"a":tru}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12G4"}"#,
            br#"{1:2}"#,
            b"",
            b"   ",
            b"\"open",
            deep.as_bytes(),
        ] {
            assert!(!surely_json(line), "{}", String::from_utf8_lossy(line));
        }
    }

    /// Lines built from JSON's pieces, many of them broken: whatever the fast path accepts,
    /// serde_json's `Value` must accept too (the other way round it may be unsure).
    #[test]
    fn it_never_accepts_what_serde_refuses() {
        let pieces: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"k\"",
            b"\"v\\n\"",
            b"\"\\u00e9\"",
            b"\"\\ud83d\"",
            b"1",
            b"-0",
            b"0.5",
            b"01",
            b"1e5",
            b"true",
            b"nul",
            b"null",
            b" ",
            b"\t",
            b"\n",
            b"\"\x01\"",
            b"\"\xc3\xa9\"",
            b"\xc3",
            b"\\",
            b"\"",
            b"-",
            b".",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut line = Vec::new();
            let len = 1 + (state % 12) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                line.extend_from_slice(pieces[(state % pieces.len() as u64) as usize]);
            }
            if surely_json(&line) {
                accepted += 1;
                assert!(serde_accepts(&line), "{}", String::from_utf8_lossy(&line));
            }
        }
        assert!(
            accepted > 1000,
            "only {accepted} accepted: the test tests little"
        );
    }
}
