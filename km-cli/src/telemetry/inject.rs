//! Writing the trace context into forwarded requests, so that the peer's own instrumentation
//! continues km's trace (opt-in: `[telemetry] propagate = true`, since it changes the bytes).
//!
//! It is done the way any edit on the path is done: as an interceptor at the end of the chain
//! (after every plugin, so after redaction), whose verdict is *replace*. The chain then does
//! what it does for plugins: the line is judged before it is forwarded, the observers see what
//! was forwarded, and a failure here blocks nothing (this interceptor fails open). The
//! interceptor is built into km ([`interceptor`]): it is no plugin library, is not in the
//! banner, and needs no signature, since it is km's own code. Its verdicts reach the plugins
//! like any other (an audit trail records that km changed the line) but not km's statistics.
//!
//! For a request going either way, it sets `params._meta.traceparent` to the CLIENT span km is
//! about to make for that request (the trace of the request's own `traceparent` when it had a
//! valid one, a new trace otherwise; `tracestate` is left as it is), and tells the telemetry
//! thread which ids it used. Notifications are left alone: they have no CLIENT span to point to.
//!
//! The edit is byte for byte: one member is inserted (`"traceparent":"..."`, or the `_meta` or
//! `params` object holding it) or one string value replaced, and nothing else of the line
//! changes. That needs the offsets of members, which serde does not give, hence the small
//! scanner below; a line it cannot walk, or whose `params` or `_meta` is not an object, is
//! forwarded untouched.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROk, RResult, RStr, RString};
use km_abi::{
    AuthResponse, Direction, Directions, InterceptContext, Interest, KindSet, KmPlugin,
    KmPlugin_TO, Message, MessageKind, PluginConfig, PluginError, StreamEvent, Tier, Verdict,
    VerdictAction,
};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TraceFlags};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

use super::Record;
use crate::gateway::{Grants, LoadedPlugin, Signer};
use crate::monitor::intercept::Overrides;

/// The interceptor's name, in verdict events.
pub(crate) const NAME: &str = "km-trace-context";

/// The rule its verdicts name.
const RULE: &str = "trace-context";

/// The built-in interceptor, when the session propagates trace context.
pub(crate) fn interceptor() -> Option<(Arc<LoadedPlugin>, Interest, Overrides)> {
    if !super::propagates() {
        return None;
    }
    let object = KmPlugin_TO::from_value(Propagator::default(), TD_Opaque);
    let plugin = LoadedPlugin::new(
        object,
        Path::new("<built into km>"),
        String::new(),
        Signer {
            key_id: String::new(),
            label: "km".into(),
        },
        Grants {
            intercept: true,
            fail_open: true,
        },
    );
    let interest = Interest {
        intercept: Directions(
            Directions::of(Direction::Request).0 | Directions::of(Direction::Response).0,
        ),
        kinds: KindSet::of(MessageKind::REQUEST),
        // Last, after every plugin: the context goes into what they decided to forward.
        priority: i32::MAX,
        observe: false,
        oversize: VerdictAction::PASS,
        // Every method, km's budget and inspection limit, lossy (it observes nothing).
        ..Interest::OBSERVER
    };
    let overrides = Overrides {
        priority: Some(i32::MAX),
        budget: None,
        fail_open: Some(true),
    };
    Some((Arc::new(plugin), interest, overrides))
}

#[derive(Default)]
struct Propagator {
    ids: RandomIdGenerator,
}

impl KmPlugin for Propagator {
    fn name(&self) -> RString {
        NAME.into()
    }

    fn version(&self) -> RString {
        env!("CARGO_PKG_VERSION").into()
    }

    fn required_tier(&self) -> Tier {
        Tier::Free
    }

    fn authenticate(&self, _api_key: RStr<'_>) -> RResult<AuthResponse, PluginError> {
        ROk(AuthResponse::free())
    }

    fn initialize(&self, _config: &PluginConfig) -> RResult<(), PluginError> {
        ROk(())
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        ROk(())
    }

    fn handle_message(&self, _message: &Message<'_>) -> RResult<(), PluginError> {
        ROk(())
    }

    fn handle_error(&self, _error: &PluginError) -> RResult<(), PluginError> {
        ROk(())
    }

    fn handle_stream_event(&self, _event: &StreamEvent) -> RResult<(), PluginError> {
        ROk(())
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        _context: &InterceptContext<'_>,
    ) -> RResult<Verdict, PluginError> {
        ROk(self.judge(message).unwrap_or_else(Verdict::pass))
    }
}

impl Propagator {
    fn judge(&self, message: &Message<'_>) -> Option<Verdict> {
        if message.kind != MessageKind::REQUEST {
            return None;
        }
        let key = super::worker::parse_correlation(message.correlation_id.as_str())?;
        let line = message.bytes();
        let call = super::wire::call(line, false)?;
        let parent = call.traceparent.as_ref().and_then(|traceparent| {
            let mut carrier = std::collections::HashMap::new();
            carrier.insert("traceparent".to_owned(), traceparent.clone());
            if let Some(state) = &call.tracestate {
                carrier.insert("tracestate".to_owned(), state.clone());
            }
            let cx =
                opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
            let sc = cx.span().span_context().clone();
            sc.is_valid().then_some(sc)
        });
        let (trace, flags) = match &parent {
            Some(sc) => (sc.trace_id(), sc.trace_flags()),
            None => (self.ids.new_trace_id(), TraceFlags::SAMPLED),
        };
        let server = self.ids.new_span_id();
        let client = self.ids.new_span_id();
        let traceparent = format!("00-{trace}-{client}-{:02x}", flags.to_u8());
        let edited = with_traceparent(line, &traceparent)?;
        if let Some(pipeline) = super::active() {
            pipeline.push(Record::Assigned {
                key,
                trace,
                server,
                client,
                parent,
            });
        }
        Some(Verdict::replace(edited, &[RULE]))
    }
}

/// `line` (a JSON object) with `params._meta.traceparent` set to `value`; `None` when it cannot
/// be walked or `params` or `_meta` is not an object.
pub(crate) fn with_traceparent(line: &[u8], value: &str) -> Option<Vec<u8>> {
    let quoted = serde_json::to_string(value).ok()?;
    let top = skip_ws(line, 0);
    if line.get(top) != Some(&b'{') {
        return None;
    }
    let (members, _) = members(line, top)?;
    let Some(params) = last_named(line, &members, "params") else {
        let insert = format!("\"params\":{{\"_meta\":{{\"traceparent\":{quoted}}}}}");
        return Some(insert_first(line, top, &members, &insert));
    };
    if line.get(params.start) != Some(&b'{') {
        return None;
    }
    let (in_params, _) = self::members(line, params.start)?;
    let Some(meta) = last_named(line, &in_params, "_meta") else {
        let insert = format!("\"_meta\":{{\"traceparent\":{quoted}}}");
        return Some(insert_first(line, params.start, &in_params, &insert));
    };
    if line.get(meta.start) != Some(&b'{') {
        return None;
    }
    let (in_meta, _) = self::members(line, meta.start)?;
    match last_named(line, &in_meta, "traceparent") {
        Some(old) => {
            let mut out = Vec::with_capacity(line.len() + quoted.len());
            out.extend_from_slice(&line[..old.start]);
            out.extend_from_slice(quoted.as_bytes());
            out.extend_from_slice(&line[old.end..]);
            Some(out)
        }
        None => {
            let insert = format!("\"traceparent\":{quoted}");
            Some(insert_first(line, meta.start, &in_meta, &insert))
        }
    }
}

/// One member of an object: where its key (with quotes) and its value are.
type Member = (Range<usize>, Range<usize>);

/// `member` inserted as the first member of the object opening at `open`.
fn insert_first(line: &[u8], open: usize, members: &[Member], member: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + member.len() + 1);
    out.extend_from_slice(&line[..=open]);
    out.extend_from_slice(member.as_bytes());
    if !members.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(&line[open + 1..]);
    out
}

/// The value of the last member named `name` (JSON takes the last of duplicates).
fn last_named(line: &[u8], members: &[Member], name: &str) -> Option<Range<usize>> {
    members
        .iter()
        .rev()
        .find(|(key, _)| key_is(&line[key.clone()], name))
        .map(|(_, value)| value.clone())
}

/// Whether the raw JSON string `raw` (with quotes) says `name`, escapes decoded.
fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw.len() == name.len() + 2 && &raw[1..raw.len() - 1] == name.as_bytes();
    }
    serde_json::from_slice::<String>(raw).is_ok_and(|key| key == name)
}

fn skip_ws(line: &[u8], mut i: usize) -> usize {
    while matches!(line.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `start` (a quote).
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match line.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The end (exclusive) of the value starting at `start`; containers are skipped with a depth
/// count, never by recursion.
fn value_end(line: &[u8], start: usize) -> Option<usize> {
    match line.get(start)? {
        b'"' => string_end(line, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match line.get(i)? {
                    b'"' => {
                        i = string_end(line, i)?;
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
        }
        _ => {
            let mut i = start;
            while let Some(b) = line.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// The members of the object opening at `open`, and where it closes.
fn members(line: &[u8], open: usize) -> Option<(Vec<Member>, usize)> {
    let mut all = Vec::new();
    let mut i = skip_ws(line, open + 1);
    if line.get(i) == Some(&b'}') {
        return Some((all, i));
    }
    loop {
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(line, i)?;
        let key = i..key_end;
        i = skip_ws(line, key_end);
        if line.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(line, i + 1);
        let end = value_end(line, value_start)?;
        all.push((key, value_start..end));
        i = skip_ws(line, end);
        match line.get(i)? {
            b',' => i = skip_ws(line, i + 1),
            b'}' => return Some((all, i)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The edited line is the original with `_meta.traceparent` set, and nothing else moved.
    fn check(line: &str) {
        let edited = with_traceparent(line.as_bytes(), TP).unwrap_or_else(|| panic!("{line}"));
        let got: Value = serde_json::from_slice(&edited).expect("still JSON");
        let mut want: Value = serde_json::from_str(line).expect("test JSON");
        let params = want
            .as_object_mut()
            .expect("object")
            .entry("params")
            .or_insert_with(|| json!({}));
        let meta = params
            .as_object_mut()
            .expect("params object")
            .entry("_meta")
            .or_insert_with(|| json!({}));
        meta["traceparent"] = json!(TP);
        assert_eq!(got, want, "{line}");
        // Byte for byte: without an old traceparent, the original is what is left once one
        // run of new text is taken out.
        if !line.contains("traceparent") {
            let (a, b) = (line.as_bytes(), &edited[..]);
            let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let suffix = a[prefix..]
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(prefix + suffix, a.len(), "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn the_context_goes_where_it_belongs_and_nowhere_else() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"}{"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#,
            r#"{ "jsonrpc" : "2.0" , "id" : 2 , "method" : "tools/list" , "params" : { "_meta" : { } } }"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"_meta":{"progressToken":7,"traceparent":"00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01","tracestate":"k=v"}}}"#,
            r#"{"jsonrpc":"2.0","id":"é\"x","method":"prompts/get","params":{"name":"p\\q","_meta":{"a":[1,{"b":"]"}]}}}"#,
            r#"{"params":{"\u005fmeta":{"x":1}},"jsonrpc":"2.0","id":4,"method":"m"}"#,
        ] {
            check(line);
        }
    }

    #[test]
    fn an_existing_traceparent_is_replaced_in_place() {
        let line = r#"{"id":1,"method":"m","params":{"_meta":{"traceparent":"old","tracestate":"k=v"},"z":1}}"#;
        let edited = with_traceparent(line.as_bytes(), TP).expect("edited");
        assert_eq!(
            String::from_utf8(edited).expect("utf-8"),
            line.replace("\"old\"", &format!("\"{TP}\""))
        );
    }

    #[test]
    fn what_cannot_carry_a_context_is_left_alone() {
        for line in [
            r#"{"id":1,"method":"m","params":[1,2]}"#,
            r#"{"id":1,"method":"m","params":{"_meta":"text"}}"#,
            r#"[{"id":1,"method":"m"}]"#,
            r#"{"id":1,"method":"m","params":{"#,
            "not json",
        ] {
            assert_eq!(with_traceparent(line.as_bytes(), TP), None, "{line}");
        }
    }
}
