//! What a span needs from one forwarded JSON-RPC line: its method, id and target, the trace
//! context in `params._meta`, the protocol version `initialize` settled on, and how a response
//! ended (a JSON-RPC error, or a tool result with `isError`).
//!
//! This runs on the telemetry thread, never in the relay, so it can afford serde: borrowed
//! structs that name only the members spans use, so that everything else (a tool's arguments,
//! a result's content) is skipped without being built. A line serde cannot read yields what it
//! could (nothing); the relay's own classification already decided that it is JSON-RPC.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The members of a response that matter here.
#[derive(Debug, Default, Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// A request or notification: its `params` are read where they stand, in the same pass as the
/// rest of the line. (Taking them as raw text and parsing that again scanned every request's
/// params twice, the largest part of the telemetry thread's parsing: BENCHMARKS.md.)
#[derive(Debug, Default, Deserialize)]
struct CallMessage<'a> {
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Params<'a>,
}

/// The members of `params` that spans use. Reading them never makes the line unreadable:
/// a member of the wrong type counts as absent; params that are not an object, whose `_meta` is
/// neither an object nor null, or that repeat a member (theirs or `_meta`'s) yield no member at
/// all.
#[derive(Debug, Default)]
struct Params<'a> {
    name: Option<String>,
    uri: Option<String>,
    meta: Option<Meta>,
    arguments: Option<&'a RawValue>,
}

#[derive(Debug, Default)]
struct Meta {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// The members of `params` and `_meta` read here; any other is skipped without being built.
#[derive(Debug, Clone, Copy)]
enum Member {
    Name,
    Uri,
    Meta,
    Arguments,
    Traceparent,
    Tracestate,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = Member;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Member, E> {
                Ok(match key {
                    "name" => Member::Name,
                    "uri" => Member::Uri,
                    "_meta" => Member::Meta,
                    "arguments" => Member::Arguments,
                    "traceparent" => Member::Traceparent,
                    "tracestate" => Member::Tracestate,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_identifier(Names)
    }
}

/// What a [`Lenient`] value is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Params,
    Meta,
}

/// One value read as `Shape`, whatever it turns out to be.
enum Read<'a> {
    Text(String),
    Params(Params<'a>),
    Meta(Meta),
    /// Not of that shape, or an object that repeats a member.
    Other,
}

/// Reads any JSON value, keeping it when it has the shape asked for.
struct Lenient<'a>(Shape, std::marker::PhantomData<&'a ()>);

impl<'a> Lenient<'a> {
    fn new(shape: Shape) -> Self {
        Lenient(shape, std::marker::PhantomData)
    }
}

impl<'de: 'a, 'a> serde::de::Visitor<'de> for Lenient<'a> {
    type Value = Read<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Read<'a>, E> {
        Ok(Read::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Read<'a>, E> {
        Ok(Read::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Read<'a>, E> {
        Ok(Read::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Read<'a>, E> {
        Ok(Read::Other)
    }
    fn visit_unit<E>(self) -> Result<Read<'a>, E> {
        Ok(Read::Other)
    }
    fn visit_str<E>(self, text: &str) -> Result<Read<'a>, E> {
        Ok(match self.0 {
            Shape::Text => Read::Text(text.to_owned()),
            _ => Read::Other,
        })
    }
    fn visit_string<E>(self, text: String) -> Result<Read<'a>, E> {
        Ok(match self.0 {
            Shape::Text => Read::Text(text),
            _ => Read::Other,
        })
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Read<'a>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Read::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Read<'a>, A::Error> {
        let shape = self.0;
        let mut params = Params::default();
        let mut meta = Meta::default();
        let mut seen = [false; 6];
        let mut unreadable = false;
        while let Some(member) = map.next_key::<Member>()? {
            let wanted = matches!(
                (shape, member),
                (
                    Shape::Params,
                    Member::Name | Member::Uri | Member::Meta | Member::Arguments
                ) | (Shape::Meta, Member::Traceparent | Member::Tracestate)
            );
            if !wanted || std::mem::replace(&mut seen[member as usize], true) {
                unreadable |= wanted;
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            match member {
                Member::Name => params.name = map.next_value::<Text>()?.0,
                Member::Uri => params.uri = map.next_value::<Text>()?.0,
                Member::Arguments => params.arguments = map.next_value()?,
                Member::Meta => match map.next_value::<Option<MetaPart>>()? {
                    None => {}
                    Some(MetaPart(Some(read))) => params.meta = Some(read),
                    Some(MetaPart(None)) => unreadable = true,
                },
                Member::Traceparent => meta.traceparent = map.next_value::<Text>()?.0,
                Member::Tracestate => meta.tracestate = map.next_value::<Text>()?.0,
                Member::Other => {}
            }
        }
        Ok(match (unreadable, shape) {
            (false, Shape::Params) => Read::Params(params),
            (false, Shape::Meta) => Read::Meta(meta),
            _ => Read::Other,
        })
    }
}

/// A member that should be a string: anything else counts as absent.
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(
            match d.deserialize_any(Lenient::new(Shape::Text))? {
                Read::Text(text) => Some(text),
                _ => None,
            },
        ))
    }
}

/// `_meta`: `None` when it is not a readable object.
struct MetaPart(Option<Meta>);

impl<'de> Deserialize<'de> for MetaPart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(MetaPart(
            match d.deserialize_any(Lenient::new(Shape::Meta))? {
                Read::Meta(meta) => Some(meta),
                _ => None,
            },
        ))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(Lenient::new(Shape::Params))? {
            Read::Params(params) => params,
            _ => Params::default(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct ResultPart {
    #[serde(default, rename = "isError")]
    is_error: Option<IsError>,
    #[serde(default, rename = "protocolVersion", deserialize_with = "lenient")]
    protocol_version: Option<String>,
}

/// `isError` as sent: only `true` counts.
#[derive(Debug)]
struct IsError(bool);

impl<'de> Deserialize<'de> for IsError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(IsError(value == serde_json::Value::Bool(true)))
    }
}

#[derive(Debug, Default, Deserialize)]
struct ErrorPart {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
}

/// A member that should be a string: anything else counts as absent instead of making the whole
/// message unreadable.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A request or notification, as spans need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) method: String,
    /// `jsonrpc.request.id`: a string id's text, a number as written; none for null or absent.
    pub(crate) id: Option<String>,
    /// `params.name` (tools/call, prompts/get).
    pub(crate) name: Option<String>,
    /// `params.uri` (resources/read, resources/subscribe, resources/unsubscribe,
    /// notifications/resources/updated).
    pub(crate) uri: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    /// `params.arguments` as JSON text (captured only on request).
    pub(crate) arguments: Option<String>,
}

/// How a response ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// A JSON-RPC error: its code as text and its message.
    pub(crate) error: Option<(String, String)>,
    /// A result with `isError: true`.
    pub(crate) tool_error: bool,
    /// `result.protocolVersion` (the answer to `initialize`).
    pub(crate) protocol_version: Option<String>,
    /// `result` as JSON text (captured only on request).
    pub(crate) result: Option<String>,
}

/// Reads a request or notification line; `capture` keeps `params.arguments`.
pub(crate) fn call(line: &[u8], capture: bool) -> Option<Call> {
    let message: CallMessage<'_> = serde_json::from_slice(line).ok()?;
    let method = message.method?;
    let params = message.params;
    let meta = params.meta.unwrap_or_default();
    Some(Call {
        id: message.id.and_then(id_text),
        name: params.name,
        uri: params.uri,
        traceparent: meta.traceparent,
        tracestate: meta.tracestate,
        arguments: capture
            .then(|| params.arguments.map(|raw| raw.get().to_owned()))
            .flatten(),
        method,
    })
}

/// Reads a response line; `capture` keeps `result`.
pub(crate) fn answer(line: &[u8], capture: bool) -> Answer {
    let Ok(message) = serde_json::from_slice::<Message<'_>>(line) else {
        return Answer::default();
    };
    let mut answer = Answer::default();
    if let Some(raw) = message.error {
        let error: ErrorPart = serde_json::from_str(raw.get()).unwrap_or_default();
        let code = match error.code {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            // The conventions' fallback for an error that names no class.
            _ => "_OTHER".to_owned(),
        };
        answer.error = Some((code, error.message.unwrap_or_default()));
        return answer;
    }
    if let Some(raw) = message.result {
        let result: ResultPart = serde_json::from_str(raw.get()).unwrap_or_default();
        answer.tool_error = result.is_error.is_some_and(|e| e.0);
        answer.protocol_version = result.protocol_version;
        if capture {
            answer.result = Some(raw.get().to_owned());
        }
    }
    answer
}

/// `jsonrpc.request.id` of a raw id: a string's text, a number's digits, nothing for null.
fn id_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).ok(),
        Some(b'n') => None,
        Some(_) => Some(text.to_owned()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_with_trace_context() {
        let line = br#"{"jsonrpc":"2.0","id":"r-7","method":"tools/call","params":{"name":"get-weather","arguments":{"city":"Paris"},"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"rojo=1","progressToken":3}}}"#;
        let call = call(line, true).expect("a call");
        assert_eq!(call.method, "tools/call");
        assert_eq!(call.id.as_deref(), Some("r-7"));
        assert_eq!(call.name.as_deref(), Some("get-weather"));
        assert_eq!(
            call.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(call.tracestate.as_deref(), Some("rojo=1"));
        assert_eq!(call.arguments.as_deref(), Some(r#"{"city":"Paris"}"#));
        let without = super::call(line, false).expect("a call");
        assert_eq!(without.arguments, None, "not captured unless asked");
    }

    #[test]
    fn odd_members_do_not_make_a_line_unreadable() {
        let call = call(
            br#"{"jsonrpc":"2.0","id":12,"method":"resources/read","params":{"uri":"file:///a","name":5,"_meta":{"traceparent":7}}}"#,
            false,
        )
        .expect("a call");
        assert_eq!(call.id.as_deref(), Some("12"));
        assert_eq!(call.uri.as_deref(), Some("file:///a"));
        assert_eq!(call.name, None);
        assert_eq!(call.traceparent, None);
        let call = super::call(
            br#"{"jsonrpc":"2.0","id":null,"method":"ping","params":[1]}"#,
            false,
        )
        .expect("a call");
        assert_eq!((call.id, call.name), (None, None));
        assert_eq!(super::call(b"not json", false), None);
    }

    #[test]
    fn answers() {
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool: x","data":{"a":[1]}}}"#,
            true,
        );
        assert_eq!(a.error, Some(("-32602".into(), "unknown tool: x".into())));
        assert_eq!(a.result, None);
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#,
            false,
        );
        assert!(a.tool_error && a.error.is_none());
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#,
            true,
        );
        assert_eq!(a.protocol_version.as_deref(), Some("2025-06-18"));
        assert!(!a.tool_error);
        assert_eq!(
            a.result.as_deref(),
            Some(r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#)
        );
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}"#,
            false,
        );
        assert_eq!(a.error, Some(("_OTHER".into(), "no code".into())));
        let a = answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"isError":"yes"}}"#,
            false,
        );
        assert!(!a.tool_error);
    }

    /// The reading before params were read in one pass (params kept as raw text, then parsed
    /// on their own), to check that the one pass reads the same.
    mod two_passes {
        use super::super::{id_text, lenient, Call};
        use serde::Deserialize;
        use serde_json::value::RawValue;

        #[derive(Deserialize)]
        struct Message<'a> {
            #[serde(default)]
            method: Option<String>,
            #[serde(borrow, default)]
            id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            params: Option<&'a RawValue>,
        }

        #[derive(Default, Deserialize)]
        struct Params<'a> {
            #[serde(default, deserialize_with = "lenient")]
            name: Option<String>,
            #[serde(default, deserialize_with = "lenient")]
            uri: Option<String>,
            #[serde(default, rename = "_meta")]
            meta: Option<Meta>,
            #[serde(borrow, default)]
            arguments: Option<&'a RawValue>,
        }

        #[derive(Default, Deserialize)]
        struct Meta {
            #[serde(default, deserialize_with = "lenient")]
            traceparent: Option<String>,
            #[serde(default, deserialize_with = "lenient")]
            tracestate: Option<String>,
        }

        pub(super) fn call(line: &[u8], capture: bool) -> Option<Call> {
            let message: Message<'_> = serde_json::from_slice(line).ok()?;
            let method = message.method?;
            let params: Params<'_> = message
                .params
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or_default();
            let meta = params.meta.unwrap_or_default();
            Some(Call {
                id: message.id.and_then(id_text),
                name: params.name,
                uri: params.uri,
                traceparent: meta.traceparent,
                tracestate: meta.tracestate,
                arguments: capture
                    .then(|| params.arguments.map(|raw| raw.get().to_owned()))
                    .flatten(),
                method,
            })
        }
    }

    #[test]
    fn one_pass_reads_what_two_passes_read() {
        let lines: &[&str] = &[
            r#"{"jsonrpc":"2.0","id":"r-7","method":"tools/call","params":{"name":"get-weather","arguments":{"city":"Paris","n":[1,{"a":null}]},"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"rojo=1","progressToken":3}}}"#,
            r#"{"jsonrpc":"2.0","id":12,"method":"resources/read","params":{"uri":"file:///a","name":5,"_meta":{"traceparent":7}}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping","params":[1]}"#,
            r#"{"method":"ping"}"#,
            r#"{"method":"ping","params":null}"#,
            r#"{"method":"ping","params":"text"}"#,
            r#"{"method":"ping","params":{}}"#,
            r#"{"method":"x","params":{"name":null,"uri":true,"arguments":null,"_meta":null}}"#,
            r#"{"method":"x","params":{"name":"a","_meta":5}}"#,
            r#"{"method":"x","params":{"name":"a","_meta":"t"}}"#,
            r#"{"method":"x","params":{"name":"a","name":"b"}}"#,
            r#"{"method":"x","params":{"name":"a","_meta":{"traceparent":"p","traceparent":"q"}}}"#,
            r#"{"method":"x","params":{"name":"a","arguments":1,"arguments":2}}"#,
            r#"{"method":"x","params":{"n\u0061me":"esc\"aped","uri":"u\u00e9","other":{"name":"inner"}}}"#,
            r#"{"method":"x","params":{"_meta":{"tracestate":"s","_meta":{"traceparent":"deep"}},"name":{"a":1}}}"#,
            r#"{"method":"notifications/progress","params":{"progressToken":"t","progress":1,"total":2}}"#,
            r#"{"method":"x","params":{"name":"a"},"params":{"name":"b"}}"#,
            r#"{"method":5,"params":{"name":"a"}}"#,
            r#"{"id":1,"result":{}}"#,
            r#"{"method":"x","params":{"name":"a""#,
            r#"{"method":"x","id":"\u0031","params":{"name":"a","arguments":"s"}}"#,
            r#"[1,2]"#,
            "not json",
        ];
        for line in lines {
            for capture in [false, true] {
                assert_eq!(
                    call(line.as_bytes(), capture),
                    two_passes::call(line.as_bytes(), capture),
                    "{line} (capture {capture})"
                );
            }
        }
    }
}
