//! A `tools/list` result without the tools the policy refuses, so that a client (and its model)
//! is not offered what it may not call. The call itself is refused either way ([`crate::rules`]);
//! this only keeps the offer honest.
//!
//! The line is rebuilt from its own bytes: the `tools` array keeps every element that stays,
//! byte for byte, and everything around the array stays as it was; only the separators between
//! elements become a bare `,`. A line this code cannot read (not UTF-8, no `result.tools` array,
//! an element without a string `name`) is left alone: the calls are still refused. Hand-written
//! over serde_json's borrowed `RawValue`, which gives each element's exact bytes.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    result: &'a RawValue,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
}

/// The byte range of `part`, a slice of `whole`, in `whole`.
fn range_in(whole: &str, part: &str) -> Range<usize> {
    // Both are slices of one allocation: `part` was borrowed out of `whole` by the parser.
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// The line without the tools for which `refused` is true, and their names; `None` when nothing
/// is taken out (or the line cannot be read).
pub(crate) fn without_tools(
    line: &[u8],
    mut refused: impl FnMut(&str) -> bool,
) -> Option<(Vec<u8>, Vec<String>)> {
    let line = std::str::from_utf8(line).ok()?;
    let response: Response<'_> = serde_json::from_str(line).ok()?;
    let members: HashMap<std::borrow::Cow<'_, str>, &RawValue> =
        serde_json::from_str(response.result.get()).ok()?;
    let array = members.get("tools")?;
    let elements: Vec<&RawValue> = serde_json::from_str(array.get()).ok()?;
    let mut kept = Vec::with_capacity(elements.len());
    let mut removed = Vec::new();
    for element in elements {
        let named: Named<'_> = serde_json::from_str(element.get()).ok()?;
        if refused(&named.name) {
            removed.push(named.name.into_owned());
        } else {
            kept.push(range_in(line, element.get()));
        }
    }
    if removed.is_empty() {
        return None;
    }
    let array = range_in(line, array.get());
    if array.end > line.len() {
        return None;
    }
    let mut out = String::with_capacity(line.len());
    out.push_str(&line[..array.start]);
    out.push('[');
    for (i, range) in kept.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(line.get(range)?);
    }
    out.push(']');
    out.push_str(&line[array.end..]);
    Some((out.into_bytes(), removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_tools_leave_the_list_and_every_other_byte_stays() {
        let line = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[ {"name":"echo","description":"Echo."} , {"name":"rm","inputSchema":{}},{"name":"add"}],"nextCursor":null}}"#;
        let (out, removed) = without_tools(line, |n| n == "rm").expect("rm removed");
        assert_eq!(removed, ["rm"]);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo","description":"Echo."},{"name":"add"}],"nextCursor":null}}"#
        );
        assert!(without_tools(line, |_| false).is_none());
        let (all, removed) = without_tools(line, |_| true).expect("all removed");
        assert_eq!(removed.len(), 3);
        assert!(String::from_utf8(all)
            .expect("utf-8")
            .contains(r#""tools":[]"#));
        assert!(without_tools(b"not json", |_| true).is_none());
        assert!(without_tools(br#"{"result":{"tools":[{"x":1}]}}"#, |_| true).is_none());
    }
}
