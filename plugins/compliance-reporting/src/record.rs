//! One record of the audit trail: what it says, how it is encoded, and what is taken from an MCP
//! line to fill it.
//!
//! A record is one line of JSON (UTF-8, no newline inside, at most [`MAX_RECORD_BYTES`]). Its
//! leaf in the Merkle tree is the SHA-256 of exactly those bytes (RFC 6962 leaf hashing), so
//! a verifier hashes what is stored and never re-serialises. Fields, in this order:
//!
//! | field | meaning |
//! |---|---|
//! | `v` | format version, 1 |
//! | `i` | the record's index in the trail (0, 1, 2, ...) |
//! | `prev` | the leaf hash of record `i - 1` (64 zeros for record 0): names an edited record |
//! | `t` | when (RFC 3339, UTC, microseconds): km's read time of the line, or the event's time |
//! | `type` | `call`, `notification`, `batch`, `non-json`, `verdict`, `finding`, `change`, `anomaly`, `plugin-event`, `actor`, `host`, `gap`, `session.start`, `session.end`, `session.error`, `repair`, `retention`, `erasure`, `witness` |
//! | `session` | the km session id |
//! | `actor` | `{"user", "host"}` and `"member"` once team-collaboration announced one |
//! | `server` | `{"id", "label"}`: the SDK's server identity (no arguments, so no secrets) |
//! | `corr` | km's correlation id of a call (the side that sent the request and its id) |
//! | `method`, `tool` | the JSON-RPC method; the tool, prompt or resource it acts on |
//! | `direction` | `request` (client to server) or `response`, of the line or of the request |
//! | `outcome` | calls: `ok`, `error`, `blocked`, `redacted`, `cancelled`, `unanswered` |
//! | `rules`, `plugins` | rule ids and plugin names of the verdicts that acted on it |
//! | `findings`, `finding_rules` | categories and rule ids other plugins found in it |
//! | `request`, `response` | `{"seq", "at", "bytes", "sha256"}`: size of the line, SHA-256 of its `params` (request) or `result`/`error` (response) as they appeared on the wire |
//! | `latency_us`, `error_code` | of a call |
//! | `detail` | what the type adds (an event's fields, a gap's count, a repair's offsets) |
//! | `content` | only with capture on: the pair's lines, encrypted for their data subject |
//!
//! Empty fields are left out. Content itself is never in a record unless capture is enabled, and
//! then only encrypted (see [`crate::content`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The record format version.
pub const VERSION: u32 = 1;
/// The largest record written; a larger one (only possible with captured content) is written
/// without its content.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// `prev` of record 0.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted: the OS user and host km runs as, and the team member id when one is announced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The OS user.
    #[serde(default)]
    pub user: String,
    /// The host name.
    #[serde(default)]
    pub host: String,
    /// The team member id (team-collaboration's `member` event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl Actor {
    /// The default data subject: the member id when known, else `user@host`.
    pub fn subject(&self) -> String {
        match &self.member {
            Some(member) => format!("member:{member}"),
            None => format!("{}@{}", self.user, self.host),
        }
    }

    /// For people: `user@host` and the member id.
    pub fn display(&self) -> String {
        match &self.member {
            Some(member) => format!("{}@{} ({member})", self.user, self.host),
            None => format!("{}@{}", self.user, self.host),
        }
    }
}

/// The MCP server a record concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// The SDK's stable server id (16 hex digits of the command's SHA-256).
    pub id: String,
    /// A short name without arguments (`node index.js`).
    pub label: String,
}

/// One line of a call: when, how big, and the digest of its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// km's sequence number of the line in its session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When km read it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    /// The line's size in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// SHA-256 (hex) of `params` (a request) or of `result`/`error` (a response), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Captured content, encrypted for its data subject (see [`crate::content`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The subject's pseudonymous reference (random; links to the subject only through the key
    /// store, and not at all once the subject is erased).
    pub subject: String,
    /// `AES-256-GCM`.
    pub alg: String,
    /// The nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub data: String,
}

/// A record of the trail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    #[serde(default)]
    pub v: u32,
    /// Index in the trail.
    #[serde(default)]
    pub i: u64,
    /// Leaf hash of the previous record.
    #[serde(default)]
    pub prev: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub t: String,
    /// What kind of record.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The session (shared: the same for every record of a session, so not copied into each).
    #[serde(
        default,
        serialize_with = "shared::ser",
        deserialize_with = "shared::de_str"
    )]
    pub session: Arc<str>,
    /// Who (shared, as the session).
    #[serde(
        default,
        serialize_with = "shared::ser",
        deserialize_with = "shared::de"
    )]
    pub actor: Arc<Actor>,
    /// Which server (shared, as the session).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared::ser_option",
        deserialize_with = "shared::de_option"
    )]
    pub server: Option<Arc<Server>>,
    /// km's correlation id of a call (shared by its request, response and verdicts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub corr: String,
    /// The JSON-RPC method.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The tool, prompt or resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// `request` or `response`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub direction: String,
    /// What became of it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// Rule ids of verdicts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Plugins whose verdicts or findings concern it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// Finding categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// Finding rule ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finding_rules: Vec<String>,
    /// The request line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Part>,
    /// The response line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Part>,
    /// Response time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The JSON-RPC error code of an error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// What the type adds.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
    /// Encrypted captured content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

impl Record {
    /// A record of `kind` at `t` for `session` and `actor`, the rest empty.
    pub fn new(kind: &str, t: String, session: &str, actor: &Actor) -> Record {
        Record::shared(kind, t, &Arc::from(session), &Arc::new(actor.clone()))
    }

    /// [`Record::new`] with the session's strings shared, not copied (a recorder's records).
    pub fn shared(kind: &str, t: String, session: &Arc<str>, actor: &Arc<Actor>) -> Record {
        Record {
            v: VERSION,
            t,
            kind: kind.to_owned(),
            session: Arc::clone(session),
            actor: Arc::clone(actor),
            ..Record::default()
        }
    }

    /// The line as written: the JSON of the record, numbered `i` and chained to `prev`.
    ///
    /// `v`, `i` and `prev` open the JSON and are never left out, so the record is serialised as
    /// it is and its opening replaced by one with `i` and `prev`: the same bytes as serialising
    /// a copy with them set, without copying every string of the record for each line.
    pub fn encode(&self, i: u64, prev: &str) -> Vec<u8> {
        self.encode_from(&to_json(self), i, prev)
    }

    /// [`Record::encode`] from `json`, the record's JSON as [`to_json`] made it (a journal note
    /// of the same record, say), so that a record already serialised is not serialised again.
    /// With room for the newline that ends the line.
    pub fn encode_from(&self, json: &[u8], i: u64, prev: &str) -> Vec<u8> {
        let mut line = Vec::with_capacity(HEAD_ROOM + prev.len() + json.len() + 1);
        self.encode_into(json, i, prev, &mut line);
        line
    }

    /// [`Record::encode_from`] appended to `out` (a batch's bytes: the line is made where it is
    /// written, not made apart and copied there).
    pub fn encode_into(&self, json: &[u8], i: u64, prev: &str, out: &mut Vec<u8>) {
        match self.strip_own_head(json) {
            Some(rest) => {
                write_head(out, self.v, i, prev);
                out.extend_from_slice(rest);
            }
            None => {
                let mut numbered = self.clone();
                numbered.i = i;
                numbered.prev = prev.to_owned();
                // A struct of strings, numbers and JSON values always serialises.
                let _ = serde_json::to_writer(out, &numbered);
            }
        }
    }

    /// What follows the record's own opening (`{"v":V,"i":I,"prev":"…",`) in `json`, if it
    /// opens so; compared piece by piece, without making the opening.
    fn strip_own_head<'a>(&self, json: &'a [u8]) -> Option<&'a [u8]> {
        let mut digits = itoa::Buffer::new();
        let rest = json.strip_prefix(b"{\"v\":")?;
        let rest = rest.strip_prefix(digits.format(self.v).as_bytes())?;
        let rest = rest.strip_prefix(b",\"i\":")?;
        let rest = rest.strip_prefix(digits.format(self.i).as_bytes())?;
        let rest = rest.strip_prefix(b",\"prev\":")?;
        let rest = if needs_no_escape(&self.prev) {
            rest.strip_prefix(b"\"")?
                .strip_prefix(self.prev.as_bytes())?
                .strip_prefix(b"\"")?
        } else {
            rest.strip_prefix(serde_json::to_vec(&self.prev).ok()?.as_slice())?
        };
        rest.strip_prefix(b",")
    }

    /// Adds `item` to `list` unless it is there.
    pub fn add_unique(list: &mut Vec<String>, item: &str) {
        if !item.is_empty() && !list.iter().any(|x| x == item) {
            list.push(item.to_owned());
        }
    }
}

/// A record's shared fields read and written as what they share: the same JSON as the value
/// itself (serde's own `Arc` support needs its `rc` feature, which would rebuild every crate of
/// the workspace that uses serde).
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn ser<T: Serialize + ?Sized, S: Serializer>(
        v: &Arc<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        T::serialize(v, s)
    }

    pub(super) fn ser_option<T: Serialize, S: Serializer>(
        v: &Option<Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub(super) fn de_str<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }

    pub(super) fn de<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<T>, D::Error> {
        T::deserialize(d).map(Arc::new)
    }

    pub(super) fn de_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<T>>, D::Error> {
        Option::<T>::deserialize(d).map(|v| v.map(Arc::new))
    }
}

/// The JSON of a record, as `serde_json` writes it (what [`Record::encode`] numbers and the
/// session journal notes), in a buffer sized for a typical record and its newline, so that it
/// is not grown (and copied) field by field.
pub fn to_json(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(TYPICAL_RECORD_BYTES);
    // A struct of strings, numbers and JSON values always serialises.
    let _ = serde_json::to_writer(&mut out, record);
    out
}

/// What [`to_json`] reserves, and what a record not yet serialised is reckoned to weigh (a
/// batch's bound, the room of a batch's bytes): a call record of the small mix is 600–800 bytes.
pub(crate) const TYPICAL_RECORD_BYTES: usize = 1024;
/// The opening of a record's JSON without the text of `prev`: `{"v":V,"i":I,"prev":"",`.
const HEAD_ROOM: usize = 64;

fn write_head(out: &mut Vec<u8>, v: u32, i: u64, prev: &str) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(digits.format(v).as_bytes());
    out.extend_from_slice(b",\"i\":");
    out.extend_from_slice(digits.format(i).as_bytes());
    out.extend_from_slice(b",\"prev\":");
    if needs_no_escape(prev) {
        out.push(b'"');
        out.extend_from_slice(prev.as_bytes());
        out.push(b'"');
    } else {
        // A string always serialises.
        let _ = serde_json::to_writer(&mut *out, prev);
    }
    out.push(b',');
}

/// Whether serde_json writes `s` as it is between its quotes: it escapes only `"`, `\\` and
/// the control characters below U+0020.
fn needs_no_escape(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn rfc3339_us(us: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(time).to_string()
}

/// Milliseconds since the epoch as RFC 3339.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339_us(u64::try_from(ms).unwrap_or(0).saturating_mul(1000))
}

/// Parses an RFC 3339 time (as records carry them) to microseconds since the epoch.
pub fn parse_rfc3339_us(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_micros()).ok()
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub use km_durable::digest::sha256_hex;

/// What the trail takes from one JSON-RPC line: the raw text of its payload members (never
/// re-serialised, so that the digest is of the bytes that crossed) and the target of a request.
#[derive(Debug, Default)]
pub struct Payload {
    /// SHA-256 of `params`, `result` or `error` (whichever the line has), as it appeared.
    pub sha256: Option<String>,
    /// The tool of `tools/call`, the prompt of `prompts/get`, the URI of `resources/*`.
    pub target: String,
    /// The `params`, parsed (for subject rules), when asked for.
    pub params: Option<Value>,
    /// The `code` of an `error`.
    pub error_code: Option<i64>,
}

#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Target {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorCode {
    #[serde(default)]
    code: Option<i64>,
}

/// Reads the payload members of `line` (a JSON-RPC object); `keep_params` also keeps `params`
/// parsed. A line that is not a JSON object yields an empty [`Payload`].
pub fn payload(line: &[u8], method: &str, keep_params: bool) -> Payload {
    // Only an object: serde would also read a struct from a JSON array.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Payload::default();
    }
    let Ok(members) = serde_json::from_slice::<Members<'_>>(line) else {
        return Payload::default();
    };
    let mut out = Payload::default();
    let raw = members.params.or(members.result).or(members.error);
    out.sha256 = raw.map(|r| sha256_hex(r.get().as_bytes()));
    if let Some(params) = members.params {
        // The params are read for a target only where the method has one (a progress
        // notification's are not read again).
        let wants =
            matches!(method, "tools/call" | "prompts/get") || method.starts_with("resources/");
        if wants {
            let target: Target = serde_json::from_str(params.get()).unwrap_or_default();
            out.target = match method {
                "tools/call" | "prompts/get" => target.name.unwrap_or_default(),
                _ => target.uri.unwrap_or_default(),
            };
        }
        if keep_params {
            out.params = serde_json::from_str(params.get()).ok();
        }
    }
    if let Some(error) = members.error {
        out.error_code = serde_json::from_str::<ErrorCode>(error.get())
            .ok()
            .and_then(|e| e.code);
    }
    out
}

/// The scalar fields of an event's data (strings up to 256 characters, numbers, booleans, and
/// lists of short strings), for a record's `detail`: events carry no message content by
/// contract, and this keeps a bulky or unexpected one from swelling the trail.
pub fn summary(data: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(object) = data.as_object() else {
        return out;
    };
    for (key, value) in object.iter().take(32) {
        let keep = match value {
            Value::String(s) => s.chars().count() <= 256,
            Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => {
                items.len() <= 32
                    && items
                        .iter()
                        .all(|i| i.as_str().is_some_and(|s| s.chars().count() <= 128))
            }
            _ => false,
        };
        if keep && key.chars().count() <= 64 {
            out.insert(key.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_encodes_with_its_number_and_link_and_leaves_empty_fields_out() {
        let actor = Actor {
            user: "alice".into(),
            host: "laptop".into(),
            member: None,
        };
        let mut r = Record::new("call", rfc3339_us(1_700_000_000_123_456), "s1", &actor);
        r.method = "tools/call".into();
        let line = r.encode(7, ZERO_HASH);
        let text = String::from_utf8(line.clone()).expect("utf-8");
        assert!(text.starts_with(r#"{"v":1,"i":7,"prev":"000"#), "{text}");
        assert!(
            text.contains(r#""t":"2023-11-14T22:13:20.123456Z""#),
            "{text}"
        );
        assert!(!text.contains("rules") && !text.contains("content") && !text.contains('\n'));
        let back: Record = serde_json::from_slice(&line).expect("parses");
        assert_eq!(back.i, 7);
        assert_eq!(back.method, "tools/call");
        assert_eq!(parse_rfc3339_us(&back.t), Some(1_700_000_000_123_456));
        assert_eq!(actor.subject(), "alice@laptop");
    }

    #[test]
    fn encoding_numbers_the_record_exactly_as_serialising_a_numbered_copy() {
        let actor = Actor {
            user: "alice".into(),
            host: "laptop".into(),
            member: Some("m-1".into()),
        };
        let mut r = Record::new("call", rfc3339_us(1_700_000_000_123_456), "s1", &actor);
        r.method = "tools/call".into();
        r.rules = vec!["a\"b".into()];
        r.request = Some(Part {
            seq: Some(3),
            at: r.t.clone(),
            bytes: 12,
            sha256: Some(sha256_hex(b"x")),
        });
        r.detail
            .insert("why".into(), serde_json::json!("\u{1}odd\n"));
        for (i, prev) in [(0, ZERO_HASH), (7, "ab\"cd"), (u64::MAX, "")] {
            // From a fresh record, and from one read back with a number and link of its own.
            let mut stale = r.clone();
            stale.i = 99;
            stale.prev = "\\old".into();
            for record in [&r, &stale] {
                let mut numbered = record.clone();
                numbered.i = i;
                numbered.prev = prev.to_owned();
                let expected = serde_json::to_vec(&numbered).expect("serialises");
                assert_eq!(record.encode(i, prev), expected);
                // From the record's JSON made beforehand (a journal note of it), and from JSON
                // that does not open as the record does (numbered as a copy instead).
                assert_eq!(record.encode_from(&to_json(record), i, prev), expected);
                assert_eq!(record.encode_from(b"{}", i, prev), expected);
                // Appended to what a buffer holds, either way.
                for json in [to_json(record), b"{}".to_vec()] {
                    let mut out = b"before\n".to_vec();
                    record.encode_into(&json, i, prev, &mut out);
                    assert_eq!(out, [b"before\n".as_slice(), &expected].concat());
                }
            }
        }
    }

    #[test]
    fn the_payload_digest_is_of_the_bytes_that_crossed() {
        let line = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send", "arguments":{"to":"x"}}}"#;
        let p = payload(line, "tools/call", true);
        assert_eq!(
            p.sha256.as_deref(),
            Some(sha256_hex(br#"{"name":"send", "arguments":{"to":"x"}}"#).as_str())
        );
        assert_eq!(p.target, "send");
        assert_eq!(p.params.expect("kept")["arguments"]["to"], "x");
        let err = payload(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#,
            "",
            false,
        );
        assert_eq!(err.error_code, Some(-32601));
        assert!(err.sha256.is_some());
        let res = payload(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
            "resources/read",
            false,
        );
        assert_eq!(res.target, "file:///a");
        assert!(res.params.is_none());
        assert!(payload(b"not json", "", true).sha256.is_none());
        assert!(payload(b"[1,2]", "", true).sha256.is_none());
    }

    #[test]
    fn summaries_keep_short_scalars_only() {
        let data = serde_json::json!({
            "server": "abc", "tool": "t", "count": 3, "ok": true,
            "fields": ["description", "inputSchema"],
            "definition": {"big": "object"},
            "long": "x".repeat(300),
        });
        let s = summary(&data);
        assert_eq!(s.len(), 5, "{s:?}");
        assert!(!s.contains_key("definition") && !s.contains_key("long"));
    }
}
