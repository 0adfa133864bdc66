//! The evaluation harness behind `km-detect-eval` and the corpus tests: reads a labelled
//! corpus (JSON lines), scans each message, and scores it. This module is the only place in the
//! crate that reads files.
//!
//! Scoring, as the shared corpus README describes it:
//!
//! - a `secret` or `pii` line is caught when redacting the non-example findings of its category
//!   removes every needle from the raw line, from its decoded strings and from JSON nested in
//!   them (a line reported over an inspection limit counts as caught: the plugin blocks it);
//! - an `injection` line is caught when an injection finding is reported (the plugin blocks);
//! - a `negative` line is a false positive when any non-example finding is reported;
//! - `example` lines (documentation example keys) are counted, never scored.
//!
//! Both corpus shapes are read: this repository's (`needles`, a list, and `group`) and the
//! shared one (`needle`, a string or null, and `family`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::{redact, Category, Detector, Marker};

/// One labelled line.
#[derive(Clone, Debug)]
pub struct Case {
    /// Line id.
    pub id: String,
    /// `secret`, `pii`, `injection`, `negative` or `example`.
    pub category: String,
    /// Rule or label.
    pub rule: String,
    /// Scoring group (`documented`, `generic`, `pii-checksum`, `pii-other`, `injection`,
    /// `negative`; the shared corpus's lines are grouped by category).
    pub group: String,
    /// The exact line.
    pub message: String,
    /// Sensitive substrings of the decoded strings (positives).
    pub needles: Vec<String>,
}

/// Reads a corpus file. Errors name the file and line.
pub fn load(path: &Path) -> anyhow::Result<Vec<Case>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let category =
            s("category").with_context(|| format!("{}:{}: no category", path.display(), n + 1))?;
        let message =
            s("message").with_context(|| format!("{}:{}: no message", path.display(), n + 1))?;
        let mut needles: Vec<String> = match v.get("needles") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if let Some(n) = s("needle") {
            needles.push(n);
        }
        let group = s("group").unwrap_or_else(|| category.clone());
        out.push(Case {
            id: s("id").unwrap_or_else(|| format!("line-{}", n + 1)),
            rule: s("rule").unwrap_or_default(),
            category,
            group,
            message,
            needles,
        });
    }
    Ok(out)
}

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A positive that was caught.
    Caught,
    /// A positive that was missed.
    Missed,
    /// A negative with no finding.
    Clean,
    /// A negative with findings: the rules that fired.
    FalsePositive(Vec<String>),
    /// An example line: whether anything (example or not) was reported.
    Example(bool),
}

fn strings_of(v: &Value, depth: usize, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            out.push(s.clone());
            if depth < 3 {
                let t = s.trim_start();
                if t.starts_with('{') || t.starts_with('[') {
                    if let Ok(inner) = serde_json::from_str::<Value>(s) {
                        strings_of(&inner, depth + 1, out);
                    }
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, depth, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings_of(x, depth, out);
        }),
        _ => {}
    }
}

/// Scores one case.
pub fn score(det: &Detector, case: &Case) -> Outcome {
    let line = case.message.as_bytes();
    let report = det.scan_line(line);
    match case.category.as_str() {
        "negative" => {
            let mut rules: Vec<String> = report.leaks().map(|f| f.rule.to_owned()).collect();
            rules.dedup();
            if rules.is_empty() {
                Outcome::Clean
            } else {
                Outcome::FalsePositive(rules)
            }
        }
        "example" => Outcome::Example(!report.findings.is_empty()),
        "injection" => {
            if report.leaks().any(|f| f.category == Category::INJECTION)
                || report.incomplete.is_some()
            {
                Outcome::Caught
            } else {
                Outcome::Missed
            }
        }
        cat => {
            if report.incomplete.is_some() {
                return Outcome::Caught;
            }
            let want = if cat == "pii" {
                Category::PII
            } else {
                Category::SECRET
            };
            let chosen: Vec<_> = report
                .leaks()
                .filter(|f| f.category == want)
                .cloned()
                .collect();
            if chosen.is_empty() {
                return Outcome::Missed;
            }
            let Ok(red) = redact(line, &chosen, Marker::Rule) else {
                return Outcome::Missed;
            };
            if needles_gone(&red, &case.needles) {
                Outcome::Caught
            } else {
                Outcome::Missed
            }
        }
    }
}

/// Whether every needle is gone from `out` (a line as forwarded): from its raw bytes, from
/// its decoded strings and keys, and from JSON nested in them. The scoring of a positive, for
/// the detector's figures and for a plugin's.
pub fn needles_gone(out: &[u8], needles: &[String]) -> bool {
    let text = String::from_utf8_lossy(out);
    let mut strings = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(out) {
        strings_of(&v, 0, &mut strings);
    }
    needles
        .iter()
        .all(|n| !text.contains(n.as_str()) && strings.iter().all(|s| !s.contains(n.as_str())))
}

/// Figures for one corpus.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// group -> (caught, total)
    pub recall: BTreeMap<String, (usize, usize)>,
    /// negatives: (false positives, total)
    pub negatives: (usize, usize),
    /// example lines: (reported, total)
    pub examples: (usize, usize),
    /// ids of missed positives with their rule
    pub missed: Vec<(String, String)>,
    /// ids of false positives with the rules that fired
    pub false_positives: Vec<(String, String, Vec<String>)>,
}

impl Summary {
    /// Recall of a group, in [0, 1] (1 when the group is empty).
    pub fn recall_of(&self, group: &str) -> f64 {
        match self.recall.get(group) {
            Some(&(c, t)) if t > 0 => c as f64 / t as f64,
            _ => 1.0,
        }
    }
    /// Recall over every positive.
    pub fn overall_recall(&self) -> f64 {
        let (c, t) = self
            .recall
            .values()
            .fold((0, 0), |a, &(c, t)| (a.0 + c, a.1 + t));
        if t == 0 {
            1.0
        } else {
            c as f64 / t as f64
        }
    }
    /// False-positive rate on the negatives.
    pub fn fp_rate(&self) -> f64 {
        if self.negatives.1 == 0 {
            0.0
        } else {
            self.negatives.0 as f64 / self.negatives.1 as f64
        }
    }

    /// The figures as text, one per line: recall by group and overall, false positives,
    /// examples (counted under `examples`, never scored), and with `verbose` the ids and
    /// rules of every miss and false positive (never the values).
    pub fn render(&self, examples: &str, verbose: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (group, (c, t)) in &self.recall {
            let pct = 100.0 * *c as f64 / (*t).max(1) as f64;
            let _ = writeln!(out, "  recall {group:<14} {c:>4}/{t:<4} {pct:6.2}%");
        }
        let overall = 100.0 * self.overall_recall();
        let _ = writeln!(out, "  recall {:<14} {overall:>11.2}%", "overall");
        let (fp, negatives) = self.negatives;
        let rate = 100.0 * self.fp_rate();
        let _ = writeln!(
            out,
            "  false positives      {fp:>4}/{negatives:<4} {rate:6.2}%"
        );
        if self.examples.1 > 0 {
            let (hit, total) = self.examples;
            let _ = writeln!(out, "  {examples:<20} {hit:>4}/{total:<4} (not scored)");
        }
        if verbose {
            for (id, rule) in &self.missed {
                let _ = writeln!(out, "    missed {id} {rule}");
            }
            for (id, label, rules) in &self.false_positives {
                let _ = writeln!(out, "    false positive {id} {label}: {}", rules.join(", "));
            }
        }
        out
    }
}

/// Counts every case with the outcome `judge` gives it: the one tally behind the detector's
/// figures ([`evaluate`]) and a plugin's (advanced-filters judges through its own decision
/// path).
pub fn tally(cases: &[Case], mut judge: impl FnMut(&Case) -> Outcome) -> Summary {
    let mut s = Summary::default();
    for c in cases {
        match judge(c) {
            Outcome::Caught => s.recall.entry(c.group.clone()).or_default().0 += 1,
            Outcome::Missed => s.missed.push((c.id.clone(), c.rule.clone())),
            Outcome::Clean => {}
            Outcome::FalsePositive(rules) => {
                s.negatives.0 += 1;
                s.false_positives
                    .push((c.id.clone(), c.rule.clone(), rules));
            }
            Outcome::Example(hit) => {
                s.examples.1 += 1;
                if hit {
                    s.examples.0 += 1;
                }
            }
        }
        match c.category.as_str() {
            "negative" => s.negatives.1 += 1,
            "example" => {}
            _ => s.recall.entry(c.group.clone()).or_default().1 += 1,
        }
    }
    s
}

/// Scores every case with the detector alone.
pub fn evaluate(det: &Detector, cases: &[Case]) -> Summary {
    tally(cases, |c| score(det, c))
}
