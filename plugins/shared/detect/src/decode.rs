//! JSON string decoding, and the map from a decoded offset back to the encoded bytes.
//!
//! The scanner decodes a string only when it contains a backslash (otherwise it borrows the
//! bytes from the line), so detectors see `\u0041`, `\/` and surrogate pairs resolved. The
//! redactor goes the other way: it finds where a decoded range starts and ends in the encoded
//! string, so it can replace exactly those encoded bytes and leave the rest of the string,
//! escapes included, as they were.

/// Decodes the content of a JSON string (between the quotes) into `out`. Returns the offset of
/// the first invalid byte (control character, bad escape) on error. A lone surrogate decodes to
/// U+FFFD, as most JSON parsers do.
pub(crate) fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
    out.clear();
    out.reserve(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            // Copy the run up to the next backslash in one go; a control character in it is
            // an error.
            let next = crate::swar::next_escape_or_control(raw, i);
            if raw.get(next).is_some_and(|&c| c < 0x20) {
                return Err(next);
            }
            out.extend_from_slice(&raw[i..next]);
            i = next;
            continue;
        }
        let (len, ch) = escape_at(raw, i).ok_or(i)?;
        match ch {
            Decoded::Byte(c) => out.push(c),
            Decoded::Char(c) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        i += len;
    }
    Ok(())
}

enum Decoded {
    Byte(u8),
    Char(char),
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let h = raw.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// The escape sequence at `raw[i]` (a backslash): its encoded length and what it decodes to.
fn escape_at(raw: &[u8], i: usize) -> Option<(usize, Decoded)> {
    let c = *raw.get(i + 1)?;
    let simple = |b| Some((2, Decoded::Byte(b)));
    match c {
        b'"' => simple(b'"'),
        b'\\' => simple(b'\\'),
        b'/' => simple(b'/'),
        b'b' => simple(0x08),
        b'f' => simple(0x0c),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'u' => {
            let hi = hex4(raw, i + 2)?;
            if (0xD800..0xDC00).contains(&hi) {
                if raw.get(i + 6) == Some(&b'\\') && raw.get(i + 7) == Some(&b'u') {
                    if let Some(lo) = hex4(raw, i + 8) {
                        if (0xDC00..0xE000).contains(&lo) {
                            let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            return Some((12, Decoded::Char(char::from_u32(cp)?)));
                        }
                    }
                }
                Some((6, Decoded::Char('\u{FFFD}')))
            } else if (0xDC00..0xE000).contains(&hi) {
                Some((6, Decoded::Char('\u{FFFD}')))
            } else {
                Some((6, Decoded::Char(char::from_u32(hi)?)))
            }
        }
        _ => None,
    }
}

/// Maps sorted decoded offsets to encoded offsets within `raw` (the string's content). A
/// decoded offset inside the output of one escape maps to the start of that escape when
/// `round_up` is false and to its end when true, so a range never splits an escape.
pub(crate) fn decoded_to_raw(raw: &[u8], decoded: usize, round_up: bool) -> usize {
    let mut i = 0;
    let mut d = 0;
    while i < raw.len() {
        if d >= decoded {
            return i;
        }
        if raw[i] == b'\\' {
            let Some((len, ch)) = escape_at(raw, i) else {
                return raw.len();
            };
            let out_len = match ch {
                Decoded::Byte(_) => 1,
                Decoded::Char(c) => c.len_utf8(),
            };
            if d + out_len > decoded {
                // `decoded` falls inside this escape's output.
                return if round_up { i + len } else { i };
            }
            d += out_len;
            i += len;
        } else {
            d += 1;
            i += 1;
        }
    }
    i
}

/// Moves a range outward so that it does not split a UTF-8 character of `s`.
pub(crate) fn widen_to_chars(s: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start > 0 && start < s.len() && (s[start] & 0xC0) == 0x80 {
        start -= 1;
    }
    while end < s.len() && (s[end] & 0xC0) == 0x80 {
        end += 1;
    }
    (start, end)
}

/// Encodes `s` as JSON string content (no quotes): `"`, `\` and control characters escaped,
/// everything else (UTF-8 included) as is.
pub fn encode_json_string_content(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c).as_bytes());
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_surrogate_pairs() {
        let mut out = Vec::new();
        decode_into(br#"a\u0041\/\n\ud83d\ude00"#, &mut out).expect("valid");
        assert_eq!(out, "aA/\n\u{1F600}".as_bytes());
        assert!(decode_into(b"bad\\x", &mut out).is_err());
    }

    #[test]
    fn maps_decoded_offsets_back_to_escapes() {
        let raw = br#"ab\u0043de"#; // decoded: abCde
        assert_eq!(decoded_to_raw(raw, 2, false), 2);
        assert_eq!(decoded_to_raw(raw, 3, false), 8);
        assert_eq!(decoded_to_raw(raw, 5, false), 10);
    }
}
