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

use std::path::Path;

use km_detect::eval::{load, needles_gone, tally, Case, Outcome as Scored, Summary};
use serde_json::Value;

use crate::filter::{Filter, Outcome};
use crate::policy::{Layers, Policy, ServerNames, Subject};

/// The policy the figures are taken with.
pub const EVAL_POLICY: &str =
    "[defaults]\nsecrets = \"redact\"\npii = \"redact\"\ninjection = \"block\"\n";

/// The figures of one corpus: km-detect's tally of the plugin's outcomes, and the lines whose
/// output was not valid JSON though the input was.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Recall by group, false positives, examples (changed or blocked), misses.
    pub summary: Summary,
    /// Ids of the lines whose output was not valid JSON though the input was.
    pub broken_json: Vec<String>,
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
    let mut broken_json = Vec::new();
    let summary = tally(cases, |case| {
        let line = case.message.as_bytes();
        // The figures' policy has no scopes: direction, method and tool do not change them.
        let subject = Subject {
            server: &server,
            tool: "",
            method: "",
            request: true,
        };
        let j = filter.0.judge(line, &subject);
        if let Outcome::Replace { line: out, .. } = &j.outcome {
            if serde_json::from_slice::<Value>(line).is_ok()
                && serde_json::from_slice::<Value>(out).is_err()
            {
                broken_json.push(case.id.clone());
            }
        }
        match case.category.as_str() {
            "negative" if j.outcome == Outcome::Pass => Scored::Clean,
            "negative" => {
                let mut rules: Vec<String> =
                    j.reported().map(|x| x.finding.rule.to_owned()).collect();
                rules.dedup();
                if rules.is_empty() {
                    rules.push("uninspectable".into());
                }
                Scored::FalsePositive(rules)
            }
            "example" => Scored::Example(j.outcome != Outcome::Pass),
            category => {
                let caught = match &j.outcome {
                    Outcome::Block { .. } => true,
                    Outcome::Pass => false,
                    Outcome::Replace { line: out, .. } => {
                        category == "injection" || needles_gone(out, &case.needles)
                    }
                };
                if caught {
                    Scored::Caught
                } else {
                    Scored::Missed
                }
            }
        }
    });
    Figures {
        summary,
        broken_json,
    }
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
