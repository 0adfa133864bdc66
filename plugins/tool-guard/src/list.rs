//! A list result (`tools/list`, `prompts/list`, `resources/templates/list`) as tool-guard reads
//! it, and the same line with some definitions taken out.
//!
//! Reading: the line must be JSON without a duplicate member name anywhere. Clients disagree
//! about duplicates (most keep the last, some the first), so a line with two `description`s
//! could show the client one definition while tool-guard pins the other; such a line is refused
//! rather than guessed at. Each element of the array is kept with its byte range in the line.
//!
//! Writing: the array is rebuilt from the elements that stay, each with its own bytes; every
//! other byte of the line (the envelope, `nextCursor`, `_meta`) is unchanged. Only the
//! separators between elements become a bare `,`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::definition::{Definition, Kind};

/// One element of the list.
#[derive(Debug)]
pub(crate) struct Element {
    /// Its bytes in the line.
    pub(crate) range: Range<usize>,
    /// What it defines; `None` for an element that is not a definition (no string `name`).
    pub(crate) definition: Option<Definition>,
}

/// A list result.
#[derive(Debug)]
pub(crate) struct ListResult<'a> {
    line: &'a str,
    /// The array's bytes in the line, brackets included.
    array: Range<usize>,
    /// Its elements, in order.
    pub(crate) elements: Vec<Element>,
    /// Whether the result has a `nextCursor`: it is one page of a longer list.
    pub(crate) has_next_page: bool,
}

/// Why a list result could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(serde::Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    result: &'a RawValue,
}

impl<'a> ListResult<'a> {
    /// Reads the response line `bytes` as a result of `kind`'s list method.
    pub(crate) fn parse(kind: Kind, bytes: &'a [u8]) -> Result<ListResult<'a>, Malformed> {
        let line = std::str::from_utf8(bytes)
            .map_err(|_| Malformed("the line is not UTF-8".to_owned()))?;
        serde_json::from_str::<NoDuplicates>(line)
            .map_err(|e| Malformed(format!("not acceptable JSON: {e}")))?;
        let response: Response<'a> = serde_json::from_str(line)
            .map_err(|e| Malformed(format!("not a JSON-RPC result: {e}")))?;
        let members: HashMap<String, &'a RawValue> = serde_json::from_str(response.result.get())
            .map_err(|_| Malformed("its result is not an object".to_owned()))?;
        let key = kind.list_key();
        let array = members
            .get(key)
            .ok_or_else(|| Malformed(format!("its result has no `{key}`")))?;
        let raw_elements: Vec<&'a RawValue> = serde_json::from_str(array.get())
            .map_err(|_| Malformed(format!("`{key}` is not an array")))?;
        let elements = raw_elements
            .into_iter()
            .map(|raw| {
                let value: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
                Element {
                    range: range_in(line, raw.get()),
                    definition: Definition::from_element(kind, value),
                }
            })
            .collect();
        let has_next_page = members
            .get("nextCursor")
            .is_some_and(|cursor| cursor.get() != "null");
        Ok(ListResult {
            line,
            array: range_in(line, array.get()),
            elements,
            has_next_page,
        })
    }

    /// The line without the elements at `remove` (indices into [`ListResult::elements`]).
    pub(crate) fn without(&self, remove: &BTreeSet<usize>) -> Vec<u8> {
        let mut out = String::with_capacity(self.line.len());
        out.push_str(&self.line[..self.array.start]);
        out.push('[');
        let mut first = true;
        for (i, element) in self.elements.iter().enumerate() {
            if remove.contains(&i) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&self.line[element.range.clone()]);
        }
        out.push(']');
        out.push_str(&self.line[self.array.end..]);
        out.into_bytes()
    }
}

/// The byte range of `part`, a slice of `whole`, in `whole`.
fn range_in(whole: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// Accepts any JSON value without a duplicate member name at any depth.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(de::Error::custom(
                    "a member name appears twice in one object",
                ));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[ {"name":"a","description":"A"} , {"name":"b"},{"name":"c","inputSchema":{"type":"object"}} ],"nextCursor":null,"_meta":{"x":1}}}"#;

    #[test]
    fn elements_keep_their_bytes_and_the_rest_of_the_line_is_untouched() {
        let list = ListResult::parse(Kind::Tool, LINE.as_bytes()).expect("parses");
        let names: Vec<&str> = list
            .elements
            .iter()
            .map(|e| e.definition.as_ref().map_or("?", |d| d.name.as_str()))
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(!list.has_next_page);
        assert_eq!(&LINE[list.elements[1].range.clone()], r#"{"name":"b"}"#);
        let out = String::from_utf8(list.without(&[1].into())).expect("utf-8");
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","description":"A"},{"name":"c","inputSchema":{"type":"object"}}],"nextCursor":null,"_meta":{"x":1}}}"#
        );
        let none = String::from_utf8(list.without(&[0, 1, 2].into())).expect("utf-8");
        assert!(none.contains(r#""tools":[],"#), "{none}");
        serde_json::from_str::<serde_json::Value>(&none).expect("valid JSON");
    }

    #[test]
    fn duplicate_members_anywhere_are_refused() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","description":"x","description":"y"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"result":{"tools":[{"name":"evil"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"tools":[{"name":"evil"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","inputSchema":{"properties":{"p":{},"p":{}}}}]}}"#,
        ] {
            assert!(
                ListResult::parse(Kind::Tool, line.as_bytes()).is_err(),
                "{line}"
            );
        }
        // The same member name in different objects is fine; an escaped spelling is the same name.
        let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        ListResult::parse(Kind::Tool, ok.as_bytes()).expect("fine");
        let escaped =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","n\u0061me":"b"}]}}"#;
        assert!(ListResult::parse(Kind::Tool, escaped.as_bytes()).is_err());
    }

    #[test]
    fn other_shapes_are_malformed_and_pages_are_recognised() {
        for line in [
            "not json",
            r#"{"jsonrpc":"2.0","id":1,"result":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{}}}"#,
        ] {
            assert!(
                ListResult::parse(Kind::Tool, line.as_bytes()).is_err(),
                "{line}"
            );
        }
        let page =
            r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"p"}],"nextCursor":"2"}}"#;
        let list = ListResult::parse(Kind::Prompt, page.as_bytes()).expect("parses");
        assert!(list.has_next_page);
        let odd = r#"{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"x://{id}"}]}}"#;
        let list = ListResult::parse(Kind::ResourceTemplate, odd.as_bytes()).expect("parses");
        assert!(
            list.elements[0].definition.is_none(),
            "no name: not a definition"
        );
    }
}
