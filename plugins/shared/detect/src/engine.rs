//! The detector: one Aho-Corasick automaton over every rule's prefixes, anchors and keywords,
//! then per-rule validation only at the candidate positions it reports, plus one byte pass for
//! personal data. Each decoded string is scanned once, whatever the number of rules.
//!
//! Why Aho-Corasick rather than a `RegexSet`: a `RegexSet` says which rules match but not where,
//! so each matching rule would rescan the string to find its match; the automaton reports every
//! anchor with its position in one pass, and the anchors are literals anyway. The automaton is
//! ASCII case-insensitive (keywords are); token rules re-check their prefix's exact case.

use std::sync::{Arc, OnceLock};

use ring::hmac;

use crate::anchors::Anchors;
use crate::finding::{Fingerprint, Incomplete};
use crate::rules::{self, generic, injection, pii, secrets, Hit, RuleInfo};

/// How much work one line may cost. Every bound is per line; past one, the line is reported
/// [`Incomplete`] (or the bounded extra work is skipped, as documented per field).
///
/// The scan is linear in the line: each byte is decoded at most once per nesting level and
/// each decoded byte passes the automaton once, so the work per line is at most about
/// `max_line_bytes * (1 + max_nested_depth)` bytes of scanning plus `max_fragment_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest line that is scanned at all (default 8 MiB). Longer lines are not scanned and
    /// are reported [`Incomplete::LineTooLarge`]: the plugin blocks or passes them by policy.
    pub max_line_bytes: usize,
    /// Deepest container nesting followed (default 64, at most 512). Deeper lines are reported
    /// [`Incomplete::TooDeep`].
    pub max_depth: usize,
    /// How many levels of JSON inside strings are parsed and scanned as JSON (default 2; the
    /// text of every string is scanned regardless).
    pub max_nested_depth: usize,
    /// Total bytes of nested JSON documents parsed per line (default 1 MiB); past it, strings
    /// are scanned as text only.
    pub max_nested_bytes: usize,
    /// Total bytes of sibling-fragment concatenations scanned per line (default 64 KiB).
    pub max_fragment_bytes: usize,
    /// Most findings reported per line (default 256); then [`Incomplete::TooManyFindings`].
    pub max_findings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 8 << 20,
            max_depth: 64,
            max_nested_depth: 2,
            max_nested_bytes: 1 << 20,
            max_fragment_bytes: 64 << 10,
            max_findings: 256,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_line_bytes`].
    pub fn max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }
    /// Sets [`Limits::max_depth`] (capped at 512 so recursion stays within the stack).
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n.min(512);
        self
    }
    /// Sets [`Limits::max_nested_depth`].
    pub fn max_nested_depth(mut self, n: usize) -> Self {
        self.max_nested_depth = n;
        self
    }
    /// Sets [`Limits::max_findings`].
    pub fn max_findings(mut self, n: usize) -> Self {
        self.max_findings = n;
        self
    }
}

/// Computes [`Fingerprint`]s: HMAC-SHA256 under a caller-supplied key, truncated to 4 bytes.
/// Use one key per installation (or per team) so fingerprints correlate within it and nowhere
/// else.
#[derive(Clone)]
pub struct Fingerprinter {
    key: hmac::Key,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter(..)")
    }
}

impl Fingerprinter {
    /// A fingerprinter keyed with `key` (at least 16 bytes).
    pub fn new(key: &[u8]) -> Result<Self, crate::Error> {
        if key.len() < 16 {
            return Err(crate::Error::FingerprintKeyTooShort { len: key.len() });
        }
        Ok(Fingerprinter {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// The fingerprint of `value`.
    pub fn fingerprint(&self, value: &[u8]) -> Fingerprint {
        let tag = hmac::sign(&self.key, value);
        let mut out = [0u8; 4];
        out.copy_from_slice(&tag.as_ref()[..4]);
        Fingerprint(out)
    }
}

#[derive(Clone, Copy, Debug)]
enum Trigger {
    Token(usize),
    Custom(&'static str),
    Keyword,
    Injection(injection::Kind),
}

/// The object key a string value sits under (original case), and its parent's key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonKey<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) parent: Option<&'a [u8]>,
}

/// How a string is to be scanned.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StrCtx<'a> {
    /// The object key of this value, for `"apiKey": "..."` and provider keywords.
    pub(crate) key: Option<JsonKey<'a>>,
    pub(crate) inj: injection::Ctx<'a>,
    /// Only secret rules (fragment concatenations).
    pub(crate) secrets_only: bool,
}

/// The detector: `Send + Sync`, and every scan method takes `&self`. What it compiles from the
/// rules (the prefilter's automaton, about 2.4 MB of table, and the rules' triggers and
/// catalogue) depends on nothing a builder sets, so it is compiled once per process, on the
/// first detector built, and shared by every detector and clone ([`Compiled::get`]).
#[derive(Clone)]
pub struct Detector {
    compiled: Arc<Compiled>,
    pub(crate) limits: Limits,
    pub(crate) fingerprinter: Option<Fingerprinter>,
}

/// What the rules compile to: the same for every detector.
struct Compiled {
    anchors: Anchors,
    triggers: Vec<Vec<Trigger>>,
    catalogue: Vec<RuleInfo>,
}

impl Compiled {
    /// The process's one compilation. A plugin may build more than one detector (advanced-filters
    /// builds one to check its policies and one to filter with): each used to hold a table of
    /// its own, built anew (BENCHMARKS.md, "Long sessions").
    fn get() -> Arc<Compiled> {
        static COMPILED: OnceLock<Arc<Compiled>> = OnceLock::new();
        COMPILED
            .get_or_init(|| {
                let (patterns, triggers) = anchor_table();
                // A full DFA: one table lookup per byte (measured faster than the NFAs here),
                // walked by the loop of `anchors`.
                Arc::new(Compiled {
                    anchors: Anchors::new(&patterns),
                    triggers,
                    catalogue: rules::catalogue(),
                })
            })
            .clone()
    }
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("rules", &self.compiled.catalogue.len())
            .field("patterns", &self.compiled.triggers.len())
            .field("limits", &self.limits)
            .field("fingerprints", &self.fingerprinter.is_some())
            .finish()
    }
}

impl Default for Detector {
    fn default() -> Self {
        Detector::new()
    }
}

/// Builds a [`Detector`] with non-default limits or a fingerprint key.
#[derive(Debug, Default)]
pub struct DetectorBuilder {
    limits: Limits,
    fingerprinter: Option<Fingerprinter>,
}

impl DetectorBuilder {
    /// Uses these limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Fills [`crate::Finding::fingerprint`] with keyed hashes.
    pub fn fingerprints(mut self, f: Fingerprinter) -> Self {
        self.fingerprinter = Some(f);
        self
    }
    /// Compiles the detector.
    pub fn build(self) -> Detector {
        let mut d = Detector::compile();
        d.limits = self.limits;
        d.limits.max_depth = d.limits.max_depth.min(512);
        d.fingerprinter = self.fingerprinter;
        d
    }
}

impl Detector {
    /// A detector with the default [`Limits`] and no fingerprints.
    pub fn new() -> Detector {
        Detector::compile()
    }

    /// A builder for non-default settings.
    pub fn builder() -> DetectorBuilder {
        DetectorBuilder::default()
    }

    fn compile() -> Detector {
        Detector {
            compiled: Compiled::get(),
            limits: Limits::default(),
            fingerprinter: None,
        }
    }

    /// The anchor automaton (for tests).
    #[cfg(test)]
    pub(crate) fn anchors(&self) -> &Anchors {
        &self.compiled.anchors
    }

    /// Every rule, each id once, in catalogue order.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.compiled.catalogue
    }

    /// The description of rule `id` (as found in [`crate::Finding::rule`]).
    pub fn rule(&self, id: &str) -> Option<&RuleInfo> {
        self.compiled.catalogue.iter().find(|r| r.id == id)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether a line of `len` bytes is over the inspection limit (the plugin can decide before
    /// buffering or scanning it). `None` means it will be scanned.
    pub fn check_size(&self, len: usize) -> Option<Incomplete> {
        (len > self.limits.max_line_bytes).then_some(Incomplete::LineTooLarge {
            len,
            limit: self.limits.max_line_bytes,
        })
    }

    pub(crate) fn fingerprint(&self, v: &[u8]) -> Option<Fingerprint> {
        self.fingerprinter.as_ref().map(|f| f.fingerprint(v))
    }

    /// Scans one decoded string; appends deduplicated hits to `out`.
    pub(crate) fn scan_str(&self, s: &[u8], ctx: &StrCtx<'_>, out: &mut Vec<Hit>) {
        // Fast path: nothing shorter than 8 bytes can hold a secret or a phrase; what could is
        // an invisible character (all of them encode with a lead byte of 0xE1 or more), a short
        // e-mail address (`@`) or a short IPv4 address (`.`).
        if s.len() < 8 && !s.iter().any(|&b| b >= 0xE1 || b == b'@' || b == b'.') {
            return;
        }
        let first = out.len();
        let mut kw_done = 0usize;
        self.compiled.anchors.for_each(s, |m| {
            for t in &self.compiled.triggers[m.pattern] {
                match *t {
                    Trigger::Token(i) => {
                        if let Some(h) = secrets::token_match(&secrets::TOKEN_RULES[i], s, m.start)
                        {
                            out.push(h);
                        }
                    }
                    Trigger::Custom(a) => secrets::custom_match(a, s, m.start, out),
                    Trigger::Keyword => {
                        // Fragment concatenations look for split token formats only: an
                        // assignment stitched from unrelated fields means nothing.
                        if !ctx.secrets_only {
                            generic::text_assignment(s, m.start, m.end, &mut kw_done, out);
                        }
                    }
                    Trigger::Injection(kind) => {
                        if !ctx.secrets_only {
                            injection::anchor(kind, s, m.start, m.end, ctx.inj, out);
                        }
                    }
                }
            }
        });
        if let Some(k) = ctx.key {
            generic::json_member(k.key, k.parent, s, out);
        }
        if !ctx.secrets_only {
            pii::scan(s, out);
            if let Some(p) = ctx.inj.param {
                injection::param_description(p, s, out);
            }
        }
        dedupe(&mut out[first..]);
        let mut k = first;
        for i in first..out.len() {
            if out[i].end > out[i].start {
                out.swap(k, i);
                k += 1;
            }
        }
        out.truncate(k);
    }
}

/// Every anchor of every rule, lower-cased and each once, with what each one triggers.
fn anchor_table() -> (Vec<Vec<u8>>, Vec<Vec<Trigger>>) {
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut triggers: Vec<Vec<Trigger>> = Vec::new();
    let mut add = |p: &[u8], t: Trigger| {
        let lower: Vec<u8> = p.iter().map(|c| c.to_ascii_lowercase()).collect();
        match patterns.iter().position(|x| *x == lower) {
            Some(i) => {
                // One Keyword trigger per pattern is enough.
                if !(matches!(t, Trigger::Keyword)
                    && triggers[i].iter().any(|x| matches!(x, Trigger::Keyword)))
                {
                    triggers[i].push(t);
                }
            }
            None => {
                patterns.push(lower);
                triggers.push(vec![t]);
            }
        }
    };
    for (i, r) in secrets::TOKEN_RULES.iter().enumerate() {
        for p in r.prefixes {
            match narrowing(p.as_bytes(), r.body) {
                Some(next) => {
                    for b in next {
                        let mut anchor = p.as_bytes().to_vec();
                        anchor.push(b);
                        add(&anchor, Trigger::Token(i));
                    }
                }
                None => add(p.as_bytes(), Trigger::Token(i)),
            }
        }
    }
    for a in secrets::CUSTOM_ANCHORS {
        add(a.as_bytes(), Trigger::Custom(a));
    }
    for k in generic::KEYWORDS
        .iter()
        .copied()
        .chain(secrets::context_keywords())
    {
        add(k.as_bytes(), Trigger::Keyword);
    }
    for (p, kind) in injection::ANCHORS {
        add(p, Trigger::Injection(*kind));
    }
    (patterns, triggers)
}

/// Prefixes shorter than this are anchored with their body's first byte as well.
const SHORT_PREFIX: usize = 3;

/// For a token prefix too short to be a selective anchor (Twilio's `SK`: in text of random
/// letters one position in 676 starts it, and each hit costs the scan a stop and a rule
/// check), the bytes its body can start with, when they are few (the body's first run of a
/// class of at most 16 bytes, case-folded as the automaton folds them): the anchors are then
/// the prefix followed by each of them (`sk0`..`skf`), which every match of the rule starts
/// with, so the rule finds exactly what it found (its check still starts at the prefix).
/// Measured on km-detect-bench's relay stream: the token checks it triggers fall from 29 000
/// to 9 300 per pass.
fn narrowing(prefix: &[u8], body: &[crate::spec::Seg]) -> Option<Vec<u8>> {
    if prefix.len() >= SHORT_PREFIX {
        return None;
    }
    let Some(&crate::spec::Seg::Run(class, min, _)) = body.first() else {
        return None;
    };
    if min == 0 {
        return None;
    }
    let mut next: Vec<u8> = (0..128u8)
        .filter(|&b| crate::spec::in_class(class, b))
        .map(|b| b.to_ascii_lowercase())
        .collect();
    next.dedup();
    next.sort_unstable();
    next.dedup();
    (next.len() <= 16).then_some(next)
}

/// The anchors the automaton is built from (for tests that compare it with aho-corasick's).
#[cfg(test)]
pub(crate) fn anchor_patterns() -> Vec<Vec<u8>> {
    anchor_table().0
}

/// Overlapping hits of one category: the more specific (lower priority value) wins, then the
/// longer (one secret matched by a provider rule and the generic rule is one finding).
/// Emptied hits are dropped by the caller.
fn dedupe(hits: &mut [Hit]) {
    hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
    for i in 0..hits.len() {
        if hits[i].end == hits[i].start {
            continue;
        }
        for j in i + 1..hits.len() {
            if hits[j].start >= hits[i].end {
                break;
            }
            if hits[j].end == hits[j].start || hits[j].category != hits[i].category {
                continue;
            }
            // Injection findings of different rules are different signals about one passage
            // (a tag, a concealment, a credential path): keep them all.
            if hits[i].category == crate::Category::INJECTION && hits[i].rule != hits[j].rule {
                continue;
            }
            let (a, b) = (hits[i], hits[j]);
            let keep_i = (a.priority, std::cmp::Reverse(a.end - a.start))
                <= (b.priority, std::cmp::Reverse(b.end - b.start));
            if keep_i {
                hits[j].end = hits[j].start;
            } else {
                hits[i].end = hits[i].start;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_detector_of_a_process_shares_one_compilation_of_the_rules() {
        let plain = Detector::new();
        let key = Fingerprinter::new(b"a key of thirty-two bytes, or so").expect("key");
        let built = Detector::builder()
            .limits(Limits::default().max_line_bytes(1024))
            .fingerprints(key)
            .build();
        let cloned = built.clone();
        // One table in memory, not one per detector (or clone): the same address.
        assert!(std::ptr::eq(plain.anchors(), built.anchors()));
        assert!(std::ptr::eq(built.anchors(), cloned.anchors()));
        assert!(std::ptr::eq(plain.rules(), built.rules()));
        // What the builder sets stays each detector's own.
        assert_eq!(built.limits().max_line_bytes, 1024);
        assert_eq!(plain.limits(), &Limits::default());
        assert!(built.fingerprinter.is_some() && plain.fingerprinter.is_none());
        // And the shared automaton still finds what it found.
        let line = br#"{"params":{"apiKey":"AKIAIOSFODNN7EXAMPLE"}}"#;
        assert_eq!(
            plain.scan_line(line).findings.len(),
            built.scan_line(line).findings.len()
        );
        assert!(!plain.scan_line(line).findings.is_empty());
    }
}
