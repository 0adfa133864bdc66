//! km-detect-eval: recall per category and false-positive rate of km-detect on the
//! repository's labelled corpus (tests/corpus/detect.jsonl) and, as a held-out figure, on the
//! shared corpus (../shared/corpus/messages.jsonl, read in place, never copied).
//!
//! ```text
//! cargo run -p km-detect --release --bin km-detect-eval -- [--corpus FILE] [--shared DIR] [--verbose]
//! ```
//!
//! Paths default to the repository layout, relative to the workspace root. `--verbose` lists
//! the ids and rules of misses and false positives (never the values). Exit code 0 when the
//! figures meet the targets (recall >= 98% on documented formats and checksum-validated personal
//! data, <= 0.5% false positives; shared: >= 90% and <= 2%), 1 when they do not, 2 on error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use km_detect::eval::{evaluate, load, Summary};
use km_detect::Detector;

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is plugins/shared/detect at build time.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn print(name: &str, s: &Summary, verbose: bool) {
    println!("{name}");
    print!("{}", s.render("examples reported", verbose));
}

fn run() -> anyhow::Result<ExitCode> {
    let mut corpus = workspace_root().join("tests/corpus/detect.jsonl");
    let mut shared = workspace_root().join("../shared/corpus");
    let mut verbose = false;
    let mut show: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--corpus" => corpus = args.next().context("--corpus needs a file")?.into(),
            "--shared" => shared = args.next().context("--shared needs a directory")?.into(),
            "--verbose" | "-v" => verbose = true,
            "--show" => show = Some(args.next().context("--show needs a line id")?),
            "--rules" => {
                let det = Detector::new();
                for cat in [
                    km_detect::Category::SECRET,
                    km_detect::Category::PII,
                    km_detect::Category::INJECTION,
                ] {
                    let rules: Vec<_> = det.rules().iter().filter(|r| r.category == cat).collect();
                    println!("{cat}: {} rules", rules.len());
                    for r in rules {
                        println!(
                            "  {:<38} {:<8} {}",
                            r.id,
                            r.severity.as_str(),
                            r.description
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            "--help" | "-h" => {
                println!(
                    "usage: km-detect-eval [--corpus FILE] [--shared DIR] [--verbose] [--show ID] [--rules]"
                );
                return Ok(ExitCode::SUCCESS);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let det = Detector::new();
    let cases = load(&corpus)?;
    if let Some(id) = show {
        // Development aid: the findings of one line (rule, path, ranges; never values).
        let shared_file = shared.join("messages.jsonl");
        let mut all = cases.clone();
        if shared_file.is_file() {
            all.extend(load(&shared_file)?);
        }
        let case = all
            .iter()
            .find(|c| c.id == id)
            .with_context(|| format!("no line with id {id}"))?;
        let report = det.scan_line(case.message.as_bytes());
        println!(
            "{} {} {} -> {:?}",
            case.id,
            case.category,
            case.rule,
            km_detect::eval::score(&det, case)
        );
        for f in &report.findings {
            println!(
                "  {f} spans={:?}",
                f.spans
                    .iter()
                    .map(|s| (s.raw.clone(), s.decoded.clone()))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(inc) = &report.incomplete {
            println!("  incomplete: {inc}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let s = evaluate(&det, &cases);
    print(
        &format!(
            "repository corpus {} ({} lines)",
            corpus.display(),
            cases.len()
        ),
        &s,
        verbose,
    );
    let mut ok = s.recall_of("documented") >= 0.98
        && s.recall_of("pii-checksum") >= 0.98
        && s.fp_rate() <= 0.005;

    let shared_file = shared.join("messages.jsonl");
    if shared_file.is_file() {
        let cases = load(&shared_file)?;
        let h = evaluate(&det, &cases);
        print(
            &format!(
                "shared corpus {} ({} lines, held out)",
                shared_file.display(),
                cases.len()
            ),
            &h,
            verbose,
        );
        ok &= h.overall_recall() >= 0.90 && h.fp_rate() <= 0.02;
    } else {
        println!(
            "shared corpus: {} not found, skipped",
            shared_file.display()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("km-detect-eval: {e:#}");
            ExitCode::from(2)
        }
    }
}
