//! The line scanner: one pass over a JSON line that validates it, tracks the JSON path, and
//! hands every string (object keys included) to the detector, decoded only when it contains an
//! escape.
//!
//! Hand-written rather than serde_json because the scanner needs what a parser throws away:
//! the byte range of every string token in the line (the redactor edits exactly those bytes),
//! borrowed string contents, and the path, without building a `Value` tree. It is strict JSON
//! (RFC 8259): a line that is not is reported `malformed_at` and scanned as plain text.
//!
//! Besides each string on its own, two more views are scanned, both bounded by [`Limits`]:
//!
//! - **Nested JSON**: a string whose decoded value is itself a JSON object or array (a tool
//!   result's `text` holding a document) is parsed and scanned as JSON, up to
//!   `max_nested_depth` levels. Its findings are mapped back onto the outer string, so the
//!   redactor replaces the encoded form of the match inside the outer string and the inner
//!   document stays valid JSON. The path shows the nesting with `#`:
//!   `result.content[0].text#config.apiKey`.
//! - **Fragments**: runs of consecutive short string values (each at most 192 bytes encoded)
//!   in one array or object are concatenated and scanned for secrets; a match that spans two or
//!   more fragments (`["AKIA", "IOSFODNN7", "EXAMPLE"]`, `{"a": "ghp_", "b": "..."}`) is
//!   reported once with one span per fragment it covers. Matches inside a single fragment are
//!   already reported by that fragment's own scan.

use std::borrow::Cow;
use std::ops::Range;

use crate::decode::{decode_into, decoded_to_raw};
use crate::engine::{Detector, JsonKey, StrCtx};
use crate::finding::{Encoding, Finding, Incomplete, Location, Span};
use crate::rules::{injection, Hit};

const FRAGMENT_MAX: usize = 192;

#[derive(Clone, Debug)]
enum PathSeg {
    /// Content range of the key in the source, whether it has escapes, and whether the key
    /// itself was a finding (then it is written as `*`).
    Key {
        content: Range<usize>,
        escaped: bool,
        masked: bool,
    },
    Index(usize),
}

/// Per-line budgets shared with nested walkers.
pub(crate) struct Budget {
    nested_bytes: usize,
    fragment_bytes: usize,
}

pub(crate) struct Walker<'d, 's> {
    det: &'d Detector,
    src: &'s [u8],
    pos: usize,
    path: Vec<PathSeg>,
    prefix: String,
    level: usize,
    pub(crate) findings: Vec<Finding>,
    pub(crate) incomplete: Option<Incomplete>,
    stop: bool,
    hits: Vec<Hit>,
    scratch: Vec<u8>,
    frags: Vec<Range<usize>>,
    concat: Vec<u8>,
}

/// What a parsed value was, for the fragment runs of its container.
enum Parsed {
    Str { raw: Range<usize> },
    Other,
}

/// A container's run of fragments: where it starts in the walker's shared fragment stack
/// (one allocation per line instead of one per container).
struct Run {
    base: usize,
}

/// Scope flags passed down the recursion.
#[derive(Clone, Copy, Default)]
struct Scope {
    in_schema: bool,
    /// For a `value` member: the string token of its sibling `name`/`key` (env var lists,
    /// `[{"name": "API_TOKEN", "value": "..."}]`), which then names the value.
    name_hint: Option<(usize, usize)>,
}

/// Keys whose string value names a sibling `value`.
const NAME_KEYS: &[&[u8]] = &[
    b"name",
    b"key",
    b"variable",
    b"var",
    b"env",
    b"field",
    b"label",
    b"param",
    b"parameter",
    b"secret_name",
    b"secretname",
];
/// Keys whose value is named by a sibling from [`NAME_KEYS`].
const VALUE_KEYS: &[&[u8]] = &[
    b"value",
    b"val",
    b"default",
    b"defaultvalue",
    b"secret_value",
    b"secretvalue",
];

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl<'d, 's> Walker<'d, 's> {
    pub(crate) fn new(det: &'d Detector, src: &'s [u8], prefix: String, level: usize) -> Self {
        Walker {
            det,
            src,
            pos: 0,
            path: Vec::new(),
            prefix,
            level,
            findings: Vec::new(),
            incomplete: None,
            stop: false,
            hits: Vec::new(),
            scratch: Vec::new(),
            frags: Vec::new(),
            concat: Vec::new(),
        }
    }

    /// Walks the whole document. `Err(offset)` when it is not valid JSON.
    pub(crate) fn run(&mut self, budget: &mut Budget) -> Result<(), usize> {
        self.skip_ws();
        self.value(0, Scope::default(), budget)?;
        if self.stop {
            return Ok(());
        }
        self.skip_ws();
        if self.pos != self.src.len() {
            return Err(self.pos);
        }
        Ok(())
    }

    fn skip_ws(&mut self) {
        while self.pos < self.src.len() && is_ws(self.src[self.pos]) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize, scope: Scope, budget: &mut Budget) -> Result<Parsed, usize> {
        if self.stop {
            return Ok(Parsed::Other);
        }
        let Some(&b) = self.src.get(self.pos) else {
            return Err(self.pos);
        };
        match b {
            b'{' | b'[' => {
                if depth >= self.det.limits.max_depth {
                    self.incomplete = Some(Incomplete::TooDeep {
                        limit: self.det.limits.max_depth,
                    });
                    self.stop = true;
                    return Ok(Parsed::Other);
                }
                if b == b'{' {
                    self.object(depth, scope, budget)?;
                } else {
                    self.array(depth, scope, budget)?;
                }
                Ok(Parsed::Other)
            }
            b'"' => {
                let (raw, escaped) = self.string_token()?;
                self.scan_value_string(raw.clone(), escaped, scope, budget);
                Ok(Parsed::Str { raw })
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.pos),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<Parsed, usize> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(Parsed::Other)
        } else {
            Err(self.pos)
        }
    }

    fn number(&mut self) -> Result<Parsed, usize> {
        let s = self.src;
        let start = self.pos;
        let mut i = self.pos;
        if s[i] == b'-' {
            i += 1;
        }
        let int_start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == int_start || (s[int_start] == b'0' && i - int_start > 1) {
            return Err(start);
        }
        if i < s.len() && s[i] == b'.' {
            i += 1;
            let f = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            if i == f {
                return Err(i);
            }
        }
        if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
            i += 1;
            if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
                i += 1;
            }
            let e = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            if i == e {
                return Err(i);
            }
        }
        self.pos = i;
        Ok(Parsed::Other)
    }

    /// Parses a string token at `pos` (a quote). Returns the token range (quotes included) and
    /// whether it contains an escape.
    fn string_token(&mut self) -> Result<(Range<usize>, bool), usize> {
        let s = self.src;
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            // One search for whichever comes first: the closing quote, an escape, or a control
            // character (invalid in a string).
            let j = crate::swar::next_string_special(s, i);
            let Some(&c) = s.get(j) else {
                return Err(s.len());
            };
            if c < 0x20 {
                // As if the quote or backslash were searched first: a string that never ends
                // is reported at the end of the line.
                return Err(if memchr::memchr2(b'"', b'\\', &s[j..]).is_some() {
                    j
                } else {
                    s.len()
                });
            }
            if c == b'"' {
                self.pos = j + 1;
                return Ok((start..j + 1, escaped));
            }
            escaped = true;
            // Validate the escape here so the decoded view is always well defined.
            match s.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i = j + 2,
                Some(b'u') => {
                    let h = s.get(j + 2..j + 6).ok_or(j)?;
                    if !h.iter().all(u8::is_ascii_hexdigit) {
                        return Err(j);
                    }
                    i = j + 6;
                }
                _ => return Err(j),
            }
        }
    }

    fn object(&mut self, depth: usize, scope: Scope, budget: &mut Budget) -> Result<(), usize> {
        self.pos += 1;
        self.skip_ws();
        let mut run = Run {
            base: self.frags.len(),
        };
        let mut hint: Option<(usize, usize)> = None;
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b'"') {
                return Err(self.pos);
            }
            let (raw, escaped) = self.string_token()?;
            let content = raw.start + 1..raw.end - 1;
            let masked = self.scan_key(raw.clone(), escaped);
            let key_is_schema =
                !escaped && matches!(&self.src[content.clone()], b"inputSchema" | b"outputSchema");
            let kc = &self.src[content.clone()];
            let names = !escaped && NAME_KEYS.iter().any(|k| kc.eq_ignore_ascii_case(k));
            let valued = !escaped && VALUE_KEYS.iter().any(|k| kc.eq_ignore_ascii_case(k));
            self.path.push(PathSeg::Key {
                content,
                escaped,
                masked,
            });
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b':') {
                return Err(self.pos);
            }
            self.pos += 1;
            self.skip_ws();
            let child_scope = Scope {
                in_schema: scope.in_schema || key_is_schema,
                name_hint: if valued { hint } else { None },
            };
            let parsed = self.value(depth + 1, child_scope, budget)?;
            self.path.pop();
            if names {
                if let Parsed::Str { raw } = &parsed {
                    if raw.len() <= 98 {
                        hint = Some((raw.start, raw.end));
                    }
                }
            }
            if self.stop {
                return Ok(());
            }
            self.note_fragment(&mut run, parsed, budget);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.flush_run(&mut run, budget);
                    return Ok(());
                }
                _ => return Err(self.pos),
            }
        }
    }

    fn array(&mut self, depth: usize, scope: Scope, budget: &mut Budget) -> Result<(), usize> {
        self.pos += 1;
        self.skip_ws();
        let mut run = Run {
            base: self.frags.len(),
        };
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.skip_ws();
            self.path.push(PathSeg::Index(index));
            let parsed = self.value(depth + 1, scope, budget)?;
            self.path.pop();
            if self.stop {
                return Ok(());
            }
            self.note_fragment(&mut run, parsed, budget);
            index += 1;
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.flush_run(&mut run, budget);
                    return Ok(());
                }
                _ => return Err(self.pos),
            }
        }
    }

    fn note_fragment(&mut self, run: &mut Run, parsed: Parsed, budget: &mut Budget) {
        match parsed {
            // A fragment of a token has no whitespace or escape; prose breaks the run.
            Parsed::Str { raw }
                if raw.len() - 2 <= FRAGMENT_MAX
                    && raw.len() > 2
                    && memchr::memchr2(b' ', b'\\', &self.src[raw.start + 1..raw.end - 1])
                        .is_none() =>
            {
                let _ = run;
                self.frags.push(raw)
            }
            _ => self.flush_run(run, budget),
        }
    }

    /// The decoded content of a string token, borrowed when it has no escape.
    fn decoded(&self, raw: &Range<usize>, escaped: bool, buf: &mut Vec<u8>) -> bool {
        let content = &self.src[raw.start + 1..raw.end - 1];
        if escaped {
            decode_into(content, buf).is_ok()
        } else {
            buf.clear();
            buf.extend_from_slice(content);
            true
        }
    }

    fn key_bytes(&self, seg: &PathSeg) -> Option<Cow<'s, [u8]>> {
        match seg {
            PathSeg::Key {
                content,
                escaped: false,
                ..
            } => Some(Cow::Borrowed(&self.src[content.clone()])),
            PathSeg::Key {
                content,
                escaped: true,
                ..
            } => {
                let mut v = Vec::new();
                decode_into(&self.src[content.clone()], &mut v).ok()?;
                Some(Cow::Owned(v))
            }
            PathSeg::Index(_) => None,
        }
    }

    /// The current path as text.
    fn path_string(&self, extra_star: bool) -> String {
        let mut out = self.prefix.clone();
        for seg in &self.path {
            match seg {
                PathSeg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                PathSeg::Key { masked: true, .. } => push_key(&mut out, b"*", true),
                k => {
                    let name = self.key_bytes(k).unwrap_or(Cow::Borrowed(b"*"));
                    push_key(&mut out, &name, false);
                }
            }
        }
        if extra_star {
            push_key(&mut out, b"*", true);
        }
        out
    }

    fn full(&self) -> bool {
        self.findings.len() >= self.det.limits.max_findings
    }

    fn push_finding(&mut self, f: Finding) {
        if self.full() {
            self.incomplete.get_or_insert(Incomplete::TooManyFindings {
                limit: self.det.limits.max_findings,
            });
            return;
        }
        self.findings.push(f);
    }

    /// Scans an object key; returns whether it held a finding.
    fn scan_key(&mut self, raw: Range<usize>, escaped: bool) -> bool {
        // Borrow the bytes from the line unless the string has escapes.
        let src = self.src;
        let mut buf = std::mem::take(&mut self.scratch);
        if escaped && decode_into(&src[raw.start + 1..raw.end - 1], &mut buf).is_err() {
            self.scratch = buf;
            return false;
        }
        let view: &[u8] = if escaped {
            &buf
        } else {
            &src[raw.start + 1..raw.end - 1]
        };
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        let ctx = StrCtx::default();
        self.det.scan_str(view, &ctx, &mut hits);
        let any = !hits.is_empty();
        if any {
            let path = self.path_string(true);
            for h in &hits {
                let f = self.finding(h, path.clone(), Location::Key, raw.clone(), view);
                self.push_finding(f);
            }
        }
        self.hits = hits;
        self.scratch = buf;
        any
    }

    fn finding(
        &self,
        h: &Hit,
        path: String,
        location: Location,
        raw: Range<usize>,
        decoded: &[u8],
    ) -> Finding {
        Finding {
            rule: h.rule,
            category: h.category,
            severity: h.severity,
            confidence: h.confidence,
            example: h.example,
            location,
            path,
            spans: vec![Span {
                raw,
                decoded: h.start..h.end,
                encoding: Encoding::JsonString,
            }],
            fingerprint: self.det.fingerprint(&decoded[h.start..h.end]),
        }
    }

    fn scan_value_string(
        &mut self,
        raw: Range<usize>,
        escaped: bool,
        scope: Scope,
        budget: &mut Budget,
    ) {
        if self.full() {
            self.incomplete.get_or_insert(Incomplete::TooManyFindings {
                limit: self.det.limits.max_findings,
            });
            return;
        }
        // Borrow the bytes from the line unless the string has escapes.
        let src = self.src;
        let mut buf = std::mem::take(&mut self.scratch);
        if escaped && decode_into(&src[raw.start + 1..raw.end - 1], &mut buf).is_err() {
            self.scratch = buf;
            return;
        }
        let view: &[u8] = if escaped {
            &buf
        } else {
            &src[raw.start + 1..raw.end - 1]
        };
        // Context from the path: the key, its parent, description-ness, schema parameter.
        // Keys are borrowed from the line unless they have escapes (rare), so this costs no
        // allocation for ordinary strings.
        let n = self.path.len();
        let key: Option<Cow<'s, [u8]>> = self.path.last().and_then(|k| self.key_bytes(k));
        let parent: Option<Cow<'s, [u8]>> = if n >= 2 {
            self.key_bytes(&self.path[n - 2])
        } else {
            None
        };
        let description =
            scope.in_schema || matches!(key.as_deref(), Some(b"description" | b"instructions"));
        let param: Option<Cow<'s, [u8]>> =
            if scope.in_schema && key.as_deref() == Some(b"description") && n >= 3 {
                match &self.path[n - 3] {
                    PathSeg::Key { .. }
                        if self.key_bytes(&self.path[n - 3]).as_deref() == Some(b"properties") =>
                    {
                        self.key_bytes(&self.path[n - 2])
                    }
                    _ => None,
                }
            } else {
                None
            };
        // `{"name": "API_TOKEN", "value": "..."}`: the sibling name stands in for the key.
        let hinted: Option<Vec<u8>> = scope.name_hint.and_then(|(a, b)| {
            let mut v = Vec::new();
            let esc = self.src[a + 1..b - 1].contains(&b'\\');
            (self.decoded(&(a..b), esc, &mut v) && !v.iter().any(|c| c.is_ascii_whitespace()))
                .then_some(v)
        });
        let member = match (&hinted, &key) {
            (Some(h), _) => Some(JsonKey {
                key: h.as_slice(),
                parent: parent.as_deref(),
            }),
            (None, Some(k)) => Some(JsonKey {
                key: k,
                parent: parent.as_deref(),
            }),
            _ => None,
        };
        let ctx = StrCtx {
            key: member,
            inj: injection::Ctx {
                description,
                param: param.as_deref(),
            },
            secrets_only: false,
        };
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();

        // JSON inside the string. When it parses completely, its strings and keys (decoded)
        // are all scanned by the inner walk, so the text of the outer string is not scanned
        // again; otherwise the outer string is scanned as text.
        let mut nested: Vec<Finding> = Vec::new();
        let mut nested_complete = false;
        let trimmed = view.iter().position(|c| !is_ws(*c)).map(|p| view[p]);
        if matches!(trimmed, Some(b'{' | b'['))
            && self.level < self.det.limits.max_nested_depth
            && view.len() <= budget.nested_bytes
        {
            budget.nested_bytes -= view.len();
            let prefix = format!("{}#", self.path_string(false));
            let mut inner = Walker::new(self.det, view, prefix, self.level + 1);
            if inner.run(budget).is_ok() {
                nested_complete = inner.incomplete.is_none();
                let content = &self.src[raw.start + 1..raw.end - 1];
                for mut f in inner.findings {
                    // Map every inner span (relative to this decoded string) onto this string.
                    for sp in &mut f.spans {
                        let inner_content = &view[sp.raw.start + 1..sp.raw.end - 1];
                        let a = sp.raw.start
                            + 1
                            + decoded_to_raw(inner_content, sp.decoded.start, false);
                        let b =
                            sp.raw.start + 1 + decoded_to_raw(inner_content, sp.decoded.end, true);
                        let _ = content;
                        *sp = Span {
                            raw: raw.clone(),
                            decoded: a..b,
                            encoding: Encoding::JsonString,
                        };
                    }
                    f.location = Location::Nested;
                    nested.push(f);
                }
                if inner.incomplete.is_some() && self.incomplete.is_none() {
                    self.incomplete = inner.incomplete;
                }
            }
        }

        if !nested_complete {
            self.det.scan_str(view, &ctx, &mut hits);
        }

        if !hits.is_empty() || !nested.is_empty() {
            let path = self.path_string(false);
            for h in &hits {
                // A nested finding of the same category over the same bytes is more precise.
                let covered = nested.iter().any(|f| {
                    f.category == h.category
                        && f.spans
                            .iter()
                            .any(|s| s.decoded.start < h.end && h.start < s.decoded.end)
                });
                if covered {
                    continue;
                }
                let f = self.finding(h, path.clone(), Location::Value, raw.clone(), view);
                self.push_finding(f);
            }
            for f in nested {
                self.push_finding(f);
            }
        }
        self.hits = hits;
        self.scratch = buf;
    }

    fn flush_run(&mut self, run: &mut Run, budget: &mut Budget) {
        let base = run.base.min(self.frags.len());
        if self.frags.len() - base < 2 || self.full() {
            self.frags.truncate(base);
            return;
        }
        // Work on the run in place; the stack is put back (truncated) at the end.
        let frags = std::mem::take(&mut self.frags);
        self.scan_run(&frags[base..], budget);
        self.frags = frags;
        self.frags.truncate(base);
    }

    fn scan_run(&mut self, items: &[Range<usize>], budget: &mut Budget) {
        let total: usize = items.iter().map(|r| r.len()).sum();
        // The shortest token format is 20 characters; a shorter run cannot hold one.
        if total < 20 + 2 * items.len() || total > budget.fragment_bytes {
            return;
        }
        budget.fragment_bytes -= total;
        let mut concat = std::mem::take(&mut self.concat);
        concat.clear();
        let mut bounds = Vec::with_capacity(items.len());
        for r in items {
            // Fragments have no backslash (see note_fragment): the bytes are the value.
            let st = concat.len();
            concat.extend_from_slice(&self.src[r.start + 1..r.end - 1]);
            bounds.push(st..concat.len());
        }
        let mut hits = Vec::new();
        let ctx = StrCtx {
            secrets_only: true,
            ..StrCtx::default()
        };
        self.det.scan_str(&concat, &ctx, &mut hits);
        if hits.is_empty() {
            self.concat = concat;
            return;
        }
        let path = self.path_string(false);
        for h in hits {
            let covered: Vec<usize> = (0..bounds.len())
                .filter(|&i| bounds[i].start < h.end && h.start < bounds[i].end)
                .collect();
            if covered.len() < 2 {
                continue;
            }
            let spans = covered
                .iter()
                .map(|&i| {
                    let b = &bounds[i];
                    let ds = h.start.max(b.start) - b.start;
                    let de = h.end.min(b.end) - b.start;
                    Span {
                        raw: items[i].clone(),
                        decoded: ds..de,
                        encoding: Encoding::JsonString,
                    }
                })
                .collect();
            let f = Finding {
                rule: h.rule,
                category: h.category,
                severity: h.severity,
                confidence: h.confidence,
                example: h.example,
                location: Location::Fragments,
                path: path.clone(),
                spans,
                fingerprint: self.det.fingerprint(&concat[h.start..h.end]),
            };
            self.push_finding(f);
        }
        self.concat = concat;
    }
}

fn push_key(out: &mut String, name: &[u8], raw_star: bool) {
    let simple = !name.is_empty()
        && name.len() <= 64
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'$' | b'@'));
    if raw_star || simple {
        if !out.is_empty() && !out.ends_with('#') {
            out.push('.');
        }
        out.push_str(std::str::from_utf8(name).unwrap_or("*"));
    } else if name.len() <= 64 && std::str::from_utf8(name).is_ok() {
        let mut enc = Vec::new();
        crate::decode::encode_json_string_content(name, &mut enc);
        out.push_str("[\"");
        out.push_str(std::str::from_utf8(&enc).unwrap_or("*"));
        out.push_str("\"]");
    } else {
        if !out.is_empty() && !out.ends_with('#') {
            out.push('.');
        }
        out.push('*');
    }
}

impl Detector {
    /// Scans one JSON line (an MCP message without its newline).
    ///
    /// Every string value and key is decoded and scanned; JSON nested in strings and
    /// fragments split across sibling strings are scanned too (see the module doc of
    /// `json.rs`, summarised in the crate README). A line that is not JSON is scanned as
    /// text and reported with [`crate::Report::malformed_at`].
    pub fn scan_line(&self, line: &[u8]) -> crate::Report {
        if let Some(inc) = self.check_size(line.len()) {
            return crate::Report {
                findings: Vec::new(),
                incomplete: Some(inc),
                malformed_at: None,
            };
        }
        let mut budget = Budget {
            nested_bytes: self.limits.max_nested_bytes,
            fragment_bytes: self.limits.max_fragment_bytes,
        };
        let mut w = Walker::new(self, line, String::new(), 0);
        match w.run(&mut budget) {
            Ok(()) => crate::Report {
                findings: w.findings,
                incomplete: w.incomplete,
                malformed_at: None,
            },
            Err(at) => {
                let mut findings = self.scan_text(line);
                let incomplete = if findings.len() > self.limits.max_findings {
                    findings.truncate(self.limits.max_findings);
                    Some(Incomplete::TooManyFindings {
                        limit: self.limits.max_findings,
                    })
                } else {
                    None
                };
                crate::Report {
                    findings,
                    incomplete,
                    malformed_at: Some(at.min(line.len())),
                }
            }
        }
    }

    /// Scans plain text (a non-JSON line, a file given to `check`). Spans are
    /// [`Encoding::Raw`] with `raw` covering the whole text.
    pub fn scan_text(&self, text: &[u8]) -> Vec<Finding> {
        let mut hits = Vec::new();
        self.scan_str(text, &StrCtx::default(), &mut hits);
        hits.iter()
            .map(|h| Finding {
                rule: h.rule,
                category: h.category,
                severity: h.severity,
                confidence: h.confidence,
                example: h.example,
                location: Location::Text,
                path: String::new(),
                spans: vec![Span {
                    raw: 0..text.len(),
                    decoded: h.start..h.end,
                    encoding: Encoding::Raw,
                }],
                fingerprint: self.fingerprint(&text[h.start..h.end]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string tokenizer written the plain way, byte by byte: the reference for the fused
    /// block search of `string_token`.
    fn reference_token(s: &[u8]) -> Result<(Range<usize>, bool), usize> {
        let mut i = 1;
        let mut escaped = false;
        // The first quote or backslash; a control character before it is the error.
        loop {
            let Some(j) = (i..s.len()).find(|&j| s[j] == b'"' || s[j] == b'\\') else {
                return Err(s.len());
            };
            if let Some(bad) = (i..j).find(|&k| s[k] < 0x20) {
                return Err(bad);
            }
            if s[j] == b'"' {
                return Ok((0..j + 1, escaped));
            }
            escaped = true;
            match s.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i = j + 2,
                Some(b'u') => {
                    let h = s.get(j + 2..j + 6).ok_or(j)?;
                    if !h.iter().all(u8::is_ascii_hexdigit) {
                        return Err(j);
                    }
                    i = j + 6;
                }
                _ => return Err(j),
            }
        }
    }

    /// What the string tokens are made of: letters in runs long and short (so that the quote
    /// lands in every position of a block), escapes whole and broken, control characters,
    /// non-ASCII.
    const PARTS: &[&[u8]] = &[
        b"a",
        b"abcdefgh",
        b"abcdefghijklmnopqrstuvwxyzabcdef",
        b" ",
        b"\"",
        b"\\\"",
        b"\\\\",
        b"\\n",
        b"\\/",
        b"\\u0041",
        b"\\ud83d\\ude00",
        b"\\u12",
        b"\\x",
        b"\\",
        b"\x01",
        b"\x1f",
        b"\t",
        b"\n",
        b"\x7f",
        "é".as_bytes(),
        "\u{200b}".as_bytes(),
        b"\xff",
        b"0123",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn string_tokens_end_and_fail_where_a_byte_by_byte_tokenizer_says(
            parts in proptest::collection::vec(0..PARTS.len(), 0..60),
        ) {
            let mut s = vec![b'"'];
            for &p in &parts {
                s.extend_from_slice(PARTS[p]);
            }
            static DETECTOR: std::sync::OnceLock<crate::Detector> = std::sync::OnceLock::new();
            let det = DETECTOR.get_or_init(crate::Detector::new);
            let mut w = Walker::new(det, &s, String::new(), 0);
            let got = w.string_token();
            proptest::prop_assert_eq!(&got, &reference_token(&s));
            if let Ok((raw, escaped)) = got {
                proptest::prop_assert_eq!(w.pos, raw.end);
                // A valid token decodes as serde_json decodes it, escapes or not.
                let content = &s[raw.start + 1..raw.end - 1];
                let mut out = Vec::new();
                proptest::prop_assert!(crate::decode::decode_into(content, &mut out).is_ok());
                match serde_json::from_slice::<String>(&s[raw.clone()]) {
                    Ok(want) => proptest::prop_assert_eq!(&out, want.as_bytes()),
                    // serde_json refuses invalid UTF-8 and lone surrogates (which decode to
                    // U+FFFD here, as most parsers do); nothing else.
                    Err(_) => {
                        let replacement = "\u{FFFD}".as_bytes();
                        let refused = std::str::from_utf8(content).is_err()
                            || out.windows(3).any(|w| w == replacement);
                        proptest::prop_assert!(refused);
                    }
                }
                proptest::prop_assert_eq!(escaped, content.contains(&b'\\'));
            }
        }
    }
}
