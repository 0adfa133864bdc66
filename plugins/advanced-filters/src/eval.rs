//! The corpus figures through the plugin's own decision path ([`crate::filter::Filter::judge`],
//! what `intercept` calls), not the detector alone: `advanced-filters-eval` and the crate's
//! corpus test use it.
//!
//! The policy of the figures redacts secrets and personal data and blocks injection
//! ([`EVAL_POLICY`]). Scoring, as the shared corpus's README describes it:
//!
//! - a `secret` or `pii` line is caught when the plugin blocks it, or forwards it with every
//!   needle gone from the raw bytes, from the decoded strings and from JSON nested in them;
//! - an `injection` line is caught when it is blocked or changed;
//! - a `negative` line is a false positive unless it is forwarded byte for byte (the plugin
//!   answers "pass");
//! - `example` lines (documentation example keys) are counted, never scored.

use std::collections::BTreeMap;
use std::path::Path;

use km_detect::eval::{load, Case};
use serde_json::Value;

use crate::filter::{Filter, Outcome};
use crate::policy::{Layers, Policy, ServerNames, Subject};

/// The policy the figures are taken with.
pub const EVAL_POLICY: &str =
    "[defaults]\nsecrets = \"redact\"\npii = \"redact\"\ninjection = \"block\"\n";

/// The figures of one corpus.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// group -> (caught, total).
    pub recall: BTreeMap<String, (usize, usize)>,
    /// Negatives: (false positives, total).
    pub negatives: (usize, usize),
    /// Example lines: (changed or blocked, total).
    pub examples: (usize, usize),
    /// Ids and rules of the positives that were missed.
    pub missed: Vec<(String, String)>,
    /// Ids and labels of the false positives, with the rules that fired.
    pub false_positives: Vec<(String, String, Vec<String>)>,
    /// Lines whose output was not valid JSON though the input was.
    pub broken_json: Vec<String>,
}

impl Figures {
    /// Recall of `group` in [0, 1] (1 when it is empty).
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

    /// The false-positive rate on the negatives.
    pub fn fp_rate(&self) -> f64 {
        if self.negatives.1 == 0 {
            0.0
        } else {
            self.negatives.0 as f64 / self.negatives.1 as f64
        }
    }
}

fn strings_of(v: &Value, depth: usize, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            out.push(s.clone());
            let t = s.trim_start();
            if depth < 3 && (t.starts_with('{') || t.starts_with('[')) {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    strings_of(&inner, depth + 1, out);
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

/// A filter with the figures' policy (and a fixed fingerprint key).
pub fn eval_filter() -> anyhow::Result<EvalFilter> {
    let detector = km_detect::Detector::new();
    let policy = Policy::parse(EVAL_POLICY, &detector).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(EvalFilter(Filter::new(
        Layers::local(policy),
        Some(&[0x5a; 32]),
    )))
}

/// The plugin's filter, as the evaluation uses it.
#[derive(Debug)]
pub struct EvalFilter(Filter);

/// Scores every case of a corpus.
pub fn evaluate(filter: &EvalFilter, cases: &[Case]) -> Figures {
    let server = ServerNames::default();
    let mut fig = Figures::default();
    for case in cases {
        let line = case.message.as_bytes();
        // The figures' policy has no scopes: direction, method and tool do not change them.
        let subject = Subject {
            server: &server,
            tool: "",
            method: "",
            request: true,
        };
        let j = filter.0.judge(line, &subject);
        let input_json = serde_json::from_slice::<Value>(line).is_ok();
        if let Outcome::Replace { line: out, .. } = &j.outcome {
            if input_json && serde_json::from_slice::<Value>(out).is_err() {
                fig.broken_json.push(case.id.clone());
            }
        }
        match case.category.as_str() {
            "negative" => {
                fig.negatives.1 += 1;
                if j.outcome != Outcome::Pass {
                    fig.negatives.0 += 1;
                    let mut rules: Vec<String> =
                        j.reported().map(|x| x.finding.rule.to_owned()).collect();
                    rules.dedup();
                    if rules.is_empty() {
                        rules.push("uninspectable".into());
                    }
                    fig.false_positives
                        .push((case.id.clone(), case.rule.clone(), rules));
                }
            }
            "example" => {
                fig.examples.1 += 1;
                if j.outcome != Outcome::Pass {
                    fig.examples.0 += 1;
                }
            }
            category => {
                let entry = fig.recall.entry(case.group.clone()).or_default();
                entry.1 += 1;
                let caught = match &j.outcome {
                    Outcome::Block { .. } => true,
                    Outcome::Pass => false,
                    Outcome::Replace { line: out, .. } => {
                        category == "injection" || {
                            let text = String::from_utf8_lossy(out);
                            let mut strings = Vec::new();
                            if let Ok(v) = serde_json::from_slice::<Value>(out) {
                                strings_of(&v, 0, &mut strings);
                            }
                            case.needles.iter().all(|n| {
                                !text.contains(n.as_str())
                                    && strings.iter().all(|s| !s.contains(n.as_str()))
                            })
                        }
                    }
                };
                if caught {
                    entry.0 += 1;
                } else {
                    fig.missed.push((case.id.clone(), case.rule.clone()));
                }
            }
        }
    }
    fig
}

/// Where the shared corpus is: `KM_DETECT_SHARED_CORPUS`, else `../shared/corpus` beside the
/// checkout at `root` (or beside the directory holding it, for a git worktree under `wt/`).
pub fn shared_corpus_dir(root: &Path) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("KM_DETECT_SHARED_CORPUS") {
        return dir.into();
    }
    let beside = root.join("../shared/corpus");
    let above = root.join("../../shared/corpus");
    if !beside.is_dir() && above.is_dir() {
        above
    } else {
        beside
    }
}

/// Loads and scores a corpus file.
pub fn evaluate_file(filter: &EvalFilter, path: &Path) -> anyhow::Result<Figures> {
    Ok(evaluate(filter, &load(path)?))
}
