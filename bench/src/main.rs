//! `km-bench`: measures km's costs on the machine it runs on, each beside its baseline in the
//! same run, and prints a table (or JSON with `--json`).
//!
//! Why a binary and not `cargo bench`: the figures need the real release `km` binary, signed real
//! plugin libraries and child processes (`cat`, `sh`), which a bench harness does not give; and
//! benchmarks are not tests, so nothing here asserts a timing. Run it as
//! `cargo build --release --workspace && target/release/km-bench` (see BENCHMARKS.md).

mod dispatch;
mod env;
mod latency;
mod relay;
mod report;
mod startup;

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::report::Report;

/// Validated command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Smaller runs (< 30 s in all).
    pub(crate) quick: bool,
    /// Only these sections (empty: all).
    pub(crate) only: Vec<String>,
    /// Print JSON instead of the table.
    pub(crate) json: bool,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut options = Options {
            quick: false,
            only: Vec::new(),
            json: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--json" => options.json = true,
                "--only" => match args.next() {
                    Some(v) => options
                        .only
                        .extend(v.split(',').map(|s| s.trim().to_owned())),
                    None => bail!("--only needs a section: relay, latency, startup, dispatch"),
                },
                "-h" | "--help" => {
                    println!(
                        "usage: km-bench [--quick] [--json] [--only relay,latency,startup,dispatch]\n\
                         Run after `cargo build --release --workspace`; km, km-sign and the \
                         plugin libraries are taken from the directory of this binary."
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        for section in &options.only {
            if !["relay", "latency", "startup", "dispatch"].contains(&section.as_str()) {
                bail!("unknown section {section:?}: relay, latency, startup, dispatch");
            }
        }
        Ok(options)
    }

    /// Whether `section` is to run.
    pub(crate) fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    let env = env::BenchEnv::new()?;
    let mut report = Report::default();
    if options.wants("relay") {
        relay::run(&env, &options, &mut report)?;
    }
    if options.wants("latency") {
        latency::run(&env, &options, &mut report)?;
    }
    if options.wants("startup") {
        startup::run(&env, &options, &mut report)?;
    }
    if options.wants("dispatch") {
        dispatch::run(&env, &options, &mut report)?;
    }
    report.print(options.json)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("km-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
