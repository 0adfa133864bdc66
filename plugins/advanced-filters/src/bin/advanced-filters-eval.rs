//! advanced-filters-eval: recall per group and false-positive rate of the advanced-filters
//! plugin's decision path (the code `intercept` runs, with the figures' policy: secrets and
//! personal data redacted, injection blocked) on the repository's corpus
//! (`tests/corpus/detect.jsonl`) and, as a held-out figure, on the shared corpus
//! (`../shared/corpus/messages.jsonl` beside the checkout, or `KM_DETECT_SHARED_CORPUS=DIR`,
//! read in place, never copied).
//!
//! ```text
//! cargo run -p advanced-filters --release --bin advanced-filters-eval -- [--corpus FILE] [--shared DIR] [--verbose]
//! ```
//!
//! `--verbose` lists the ids and rules of misses and false positives (never values). Exit code
//! 0 when the figures meet the targets (repository: recall >= 98% on documented formats and
//! checksum-validated personal data, <= 0.5% false positives; shared: >= 90% and <= 2%), 1 when
//! they do not, 2 on error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use advanced_filters::eval::{eval_filter, evaluate_file, shared_corpus_dir, Figures, EVAL_POLICY};
use anyhow::Context;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn print(name: &str, f: &Figures, seconds: f64, lines: usize, verbose: bool) {
    println!("{name}");
    print!("{}", f.summary.render("examples changed", verbose));
    if f.summary.examples.1 > 0 {
        println!("  (documentation examples: logged, never redacted)");
    }
    println!(
        "  output not valid JSON {:>3} lines; {lines} lines judged in {:.1} ms",
        f.broken_json.len(),
        seconds * 1e3
    );
    if verbose {
        for id in &f.broken_json {
            println!("    broken JSON {id}");
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let mut corpus = workspace_root().join("tests/corpus/detect.jsonl");
    let mut shared = shared_corpus_dir(&workspace_root());
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--corpus" => corpus = PathBuf::from(args.next().context("--corpus needs a file")?),
            "--shared" => {
                shared = PathBuf::from(args.next().context("--shared needs a directory")?)
            }
            "--verbose" | "-v" => verbose = true,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let filter = eval_filter()?;
    println!("policy: {}", EVAL_POLICY.replace('\n', " ").trim());
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let t = Instant::now();
    let repo = evaluate_file(&filter, &corpus)?;
    print(
        &format!("repository corpus ({})", corpus.display()),
        &repo,
        t.elapsed().as_secs_f64(),
        lines(&corpus),
        verbose,
    );
    let mut ok = repo.summary.recall_of("documented") >= 0.98
        && repo.summary.recall_of("pii-checksum") >= 0.98
        && repo.summary.fp_rate() <= 0.005
        && repo.broken_json.is_empty();
    let shared_file = shared.join("messages.jsonl");
    if shared_file.exists() {
        let t = Instant::now();
        let held_out = evaluate_file(&filter, &shared_file)?;
        print(
            &format!("shared corpus, held out ({})", shared_file.display()),
            &held_out,
            t.elapsed().as_secs_f64(),
            lines(&shared_file),
            verbose,
        );
        ok &= held_out.summary.overall_recall() >= 0.90
            && held_out.summary.fp_rate() <= 0.02
            && held_out.broken_json.is_empty();
    } else {
        println!(
            "shared corpus: {} not found (skipped)",
            shared_file.display()
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("targets: MISSED");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("advanced-filters-eval: {e:#}");
            ExitCode::from(2)
        }
    }
}
