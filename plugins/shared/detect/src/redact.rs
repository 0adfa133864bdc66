//! Redaction: replaces the matched parts of a line's JSON strings with markers, leaving every
//! other byte of the line as it was.
//!
//! For each span the decoded range is mapped back into the encoded string
//! ([`crate::decode::decoded_to_raw`], never splitting an escape or a UTF-8 character) and
//! those encoded bytes are replaced by the marker. Markers are plain ASCII with no quote,
//! backslash or control character, so the edited string is valid JSON without re-encoding the
//! rest of it, and JSON nested in the string stays valid too (its encoded match is replaced
//! by the same marker). A line with nothing to redact is returned borrowed, byte for byte.

use std::borrow::Cow;
use std::ops::Range;

use crate::decode::{decode_into, decoded_to_raw, widen_to_chars};
use crate::engine::Fingerprinter;
use crate::finding::{Encoding, Finding};
use crate::Error;

/// What replaces a redacted match.
#[derive(Clone, Copy, Debug)]
pub enum Marker<'a> {
    /// `[REDACTED:rule-id]`.
    Rule,
    /// `[REDACTED:rule-id:hmac8]`, where hmac8 is the value's [`crate::Fingerprint`] under the
    /// given key: equal secrets get equal markers, so a reader can tell two uses of one key
    /// from two different keys without learning either.
    Keyed(&'a Fingerprinter),
}

struct Edit {
    raw: Range<usize>,
    marker: String,
}

/// Redacts `findings` (usually those the policy says to redact) in `line`.
///
/// Errors when a finding does not fit the line (a span out of range, or a `JsonString` span
/// that does not point at a string token): findings must come from scanning this very line.
pub fn redact<'l>(
    line: &'l [u8],
    findings: &[Finding],
    marker: Marker<'_>,
) -> Result<Cow<'l, [u8]>, Error> {
    if findings.is_empty() {
        return Ok(Cow::Borrowed(line));
    }
    let mut edits: Vec<Edit> = Vec::new();
    let mut buf = Vec::new();
    for f in findings {
        // The marker of this finding (the keyed hash is over the whole matched value, across
        // all its fragments).
        let text = match marker {
            Marker::Rule => format!("[REDACTED:{}]", f.rule),
            Marker::Keyed(fp) => {
                let value = matched_value_with(line, f, &mut buf)?;
                format!("[REDACTED:{}:{}]", f.rule, fp.fingerprint(&value))
            }
        };
        for sp in &f.spans {
            let raw = encoded_range(line, sp)?;
            if raw.start < raw.end {
                edits.push(Edit {
                    raw,
                    marker: text.clone(),
                });
            }
        }
    }
    if edits.is_empty() {
        return Ok(Cow::Borrowed(line));
    }
    edits.sort_by_key(|e| (e.raw.start, std::cmp::Reverse(e.raw.end)));
    // Merge overlaps: the first marker stands for the union.
    let mut merged: Vec<Edit> = Vec::with_capacity(edits.len());
    for e in edits {
        match merged.last_mut() {
            Some(last) if e.raw.start < last.raw.end => last.raw.end = last.raw.end.max(e.raw.end),
            _ => merged.push(e),
        }
    }
    let mut out = Vec::with_capacity(line.len() + merged.len() * 32);
    let mut at = 0;
    for e in &merged {
        out.extend_from_slice(&line[at..e.raw.start]);
        out.extend_from_slice(e.marker.as_bytes());
        at = e.raw.end;
    }
    out.extend_from_slice(&line[at..]);
    Ok(Cow::Owned(out))
}

/// The value a finding matched, decoded (across all its fragments; for a finding in JSON nested
/// in a string, decoded once more, as its fingerprint is). For callers that must compare it
/// with something (an allowlist pattern, a keyed hash): it is the secret itself, so never log
/// or keep it. Errors like [`redact`] when the finding does not come from this line.
pub fn matched_value(line: &[u8], finding: &Finding) -> Result<Vec<u8>, Error> {
    matched_value_with(line, finding, &mut Vec::new())
}

fn matched_value_with(line: &[u8], f: &Finding, buf: &mut Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut value = Vec::new();
    for sp in &f.spans {
        let part = decoded_slice(line, sp, buf)?;
        // A nested finding's range holds the inner document's encoding of the value: decode it
        // once more so that the value is the value itself.
        let mut inner = Vec::new();
        if f.location == crate::Location::Nested && decode_into(part, &mut inner).is_ok() {
            value.extend_from_slice(&inner);
        } else {
            value.extend_from_slice(part);
        }
    }
    Ok(value)
}

fn check_span(line: &[u8], sp: &crate::Span) -> Result<(), Error> {
    let bad = || Error::SpanOutOfRange {
        start: sp.raw.start,
        end: sp.raw.end,
        len: line.len(),
    };
    if sp.raw.start > sp.raw.end || sp.raw.end > line.len() {
        return Err(bad());
    }
    if sp.encoding == Encoding::JsonString
        && (sp.raw.len() < 2 || line[sp.raw.start] != b'"' || line[sp.raw.end - 1] != b'"')
    {
        return Err(Error::NotAJsonString {
            offset: sp.raw.start,
        });
    }
    if sp.decoded.start > sp.decoded.end {
        return Err(bad());
    }
    Ok(())
}

/// The encoded byte range in `line` that a span's decoded range occupies.
fn encoded_range(line: &[u8], sp: &crate::Span) -> Result<Range<usize>, Error> {
    check_span(line, sp)?;
    match sp.encoding {
        Encoding::Raw => {
            let base = sp.raw.start;
            let (a, b) = (base + sp.decoded.start, base + sp.decoded.end);
            if b > sp.raw.end {
                return Err(Error::SpanOutOfRange {
                    start: a,
                    end: b,
                    len: line.len(),
                });
            }
            let (a, b) = widen_to_chars(line, a, b);
            Ok(a..b)
        }
        _ => {
            let content_start = sp.raw.start + 1;
            let content = &line[content_start..sp.raw.end - 1];
            let a = decoded_to_raw(content, sp.decoded.start, false);
            let b = decoded_to_raw(content, sp.decoded.end, true);
            let (a, b) = widen_to_chars(content, a, b);
            Ok(content_start + a..content_start + b.max(a))
        }
    }
}

fn decoded_slice<'b>(
    line: &'b [u8],
    sp: &crate::Span,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], Error> {
    check_span(line, sp)?;
    let bytes: &[u8] = match sp.encoding {
        Encoding::Raw => &line[sp.raw.clone()],
        _ => {
            decode_into(&line[sp.raw.start + 1..sp.raw.end - 1], buf).map_err(|_| {
                Error::NotAJsonString {
                    offset: sp.raw.start,
                }
            })?;
            buf.as_slice()
        }
    };
    let end = sp.decoded.end.min(bytes.len());
    Ok(&bytes[sp.decoded.start.min(end)..end])
}
