//! The canonical JSON form that pins hash: RFC 8785 (JSON Canonicalization Scheme), with one
//! documented deviation.
//!
//! As JCS: object members sorted by the UTF-16 code units of their names; no insignificant
//! whitespace; strings with only `"`, `\` and the control characters below U+0020 escaped (as
//! `\b \t \n \f \r`, others as `\u00xx`), everything else as UTF-8; floating-point numbers in
//! ECMAScript's shortest round-trip form (`1.0` is `1`, `1e21` is `1e+21`), via `ryu-js`.
//!
//! The deviation: integers that serde_json reads exactly (within ±2^64) are written exactly,
//! where JCS would first round them to a double. Two integers beyond 2^53 that differ by one
//! would otherwise canonicalise alike, and a pin must never accept a changed definition as the
//! pinned one. Below 2^53 (every integer a real tool schema holds) the output is JCS's.
//!
//! A limit: floats are read by serde_json's default parser, which is exact for the numbers
//! schemas hold (`0.5`, `1e-3`) but may miss the correctly rounded double by one unit in the
//! last place for a literal of more than about 17 significant digits. Such a number's canonical
//! form can then differ from another JCS implementation's; the same text always gives the same
//! hash, so pins are not affected. (serde_json's `float_roundtrip` feature would fix it, for
//! every crate of the workspace at once, km's relay included, at twice the cost per float.)
//!
//! Written here rather than taken from `serde_json_canonicalizer` for that reason, and because
//! that crate turns on serde_json's `float_roundtrip` feature for the whole workspace (km's
//! relay included) and re-parses every member name to sort it; over a `serde_json::Value` the
//! scheme is a short recursive function.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// `value` in canonical form.
pub(crate) fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// The SHA-256 (lower-case hex) of `value`'s canonical form.
pub(crate) fn sha256(value: &Value) -> String {
    km_durable::digest::sha256_hex(to_string(value).as_bytes())
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut members: Vec<(Vec<u16>, &String, &Value)> = map
        .iter()
        .map(|(k, v)| (k.encode_utf16().collect(), k, v))
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    out.push('{');
    for (i, (_, key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(f) = n.as_f64() {
        // serde_json never holds a non-finite number; ryu-js prints -0 as "0", as JCS wants.
        let mut buffer = ryu_js::Buffer::new();
        out.push_str(buffer.format_finite(f));
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c < '\u{20}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        to_string(&serde_json::from_str(json).expect("valid JSON"))
    }

    #[test]
    fn the_rfc_8785_example_canonicalises_as_the_rfc_says() {
        // RFC 8785 section 3.2.2's example (its numbers and strings), with its first number
        // written with 16 significant digits (see the module doc for why).
        let input = r#"{
          "numbers": [333333333.3333333, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 section 3.2.3: U+1F600 (a surrogate pair, 0xD83D...) sorts before U+FB33.
        let input = "{\"\u{fb33}\":1,\"\u{1f600}\":2,\"\\r\":3,\"1\":4,\"\u{80}\":5,\"\u{f6}\":6}";
        assert_eq!(
            canon(input),
            "{\"\\r\":3,\"1\":4,\"\u{80}\":5,\"\u{f6}\":6,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn formatting_and_number_spelling_do_not_change_the_hash() {
        let a = r#"{"name":"x","inputSchema":{"type":"object","properties":{"n":{"maximum":10}}}}"#;
        let b = "{ \"inputSchema\" : { \"properties\" : { \"n\" : { \"maximum\" : 10.0 } },\n \"type\" : \"object\" }, \"name\" : \"\\u0078\" }";
        assert_eq!(
            sha256(&serde_json::from_str(a).expect("json")),
            sha256(&serde_json::from_str(b).expect("json"))
        );
        let c = r#"{"name":"x","inputSchema":{"type":"object","properties":{"n":{"maximum":11}}}}"#;
        assert_ne!(
            sha256(&serde_json::from_str(a).expect("json")),
            sha256(&serde_json::from_str(c).expect("json"))
        );
    }

    #[test]
    fn large_integers_stay_exact() {
        assert_eq!(canon("[9007199254740993]"), "[9007199254740993]");
        assert_ne!(canon("[9007199254740993]"), canon("[9007199254740992]"));
        assert_eq!(canon("[-9223372036854775808]"), "[-9223372036854775808]");
        assert_eq!(canon("[-0.0, 1e21, 1e-7]"), "[0,1e+21,1e-7]");
    }
}
