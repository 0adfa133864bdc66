//! `km-bench`: measures km's costs on the machine it runs on, each beside its baseline in the
//! same run, and prints a table (or JSON with `--json`). Arguments are parsed by clap, like the
//! other binaries'.
//!
//! Why a binary and not `cargo bench`: the figures need the real release `km` binary, signed real
//! plugin libraries and child processes (`cat`, `sh`), which a bench harness does not give; and
//! benchmarks are not tests, so nothing here asserts a timing. Run it as
//! `cargo build --release --workspace && target/release/km-bench` (see BENCHMARKS.md).

mod analytics;
mod callgrind;
mod dispatch;
mod env;
mod filters;
mod intercept;
mod latency;
mod long;
mod relay;
mod report;
mod startup;
mod telemetry;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use crate::report::Report;

/// km-bench's command line (clap); [`Options`] is what the sections see.
#[derive(Debug, Parser)]
#[command(
    name = "km-bench",
    version,
    about = "Measures km's costs on this machine, each beside its baseline in the same run",
    after_help = "Run after `cargo build --release --workspace`; km, km-sign and the plugin \
                  libraries are taken from the directory of this binary."
)]
struct Cli {
    /// Smaller runs (a few seconds in all).
    #[arg(long)]
    quick: bool,
    /// Only these sections, comma-separated or repeated (default: all).
    #[arg(long, value_name = "SECTION", value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Print the rows as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Every section, callgrind included.
    #[arg(long)]
    all: bool,
}

/// A section of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Section {
    /// Relay throughput and peak memory, against a plain pipe relay.
    Relay,
    /// Added round-trip latency, against the echo server directly and a plain relay.
    Latency,
    /// Start-up cost of signed plugins: read, hash, verify, check, load.
    Startup,
    /// Messages per second through the dispatcher to a no-op plugin.
    Dispatch,
    /// Nanoseconds per line of ml-analytics' handler on a realistic mix.
    Analytics,
    /// What one pass-through interceptor costs: relay and added latency.
    Intercept,
    /// What OTLP export costs: relay and round trip with export on, off, collector down.
    Telemetry,
    /// Relay time with 1, 5 and 20 plugins loaded (test-noop copies).
    Scaling,
    /// 2 000 000 messages with every bundled plugin, resident memory sampled.
    Long,
    /// Instructions per message under valgrind's callgrind (needs valgrind; not in the default
    /// run: ask for it with --only callgrind, or --all).
    Callgrind,
    /// Instructions per message that OTLP export adds, under callgrind (needs valgrind; not in
    /// the default run: ask for it with --only telemetry-callgrind, or --all).
    TelemetryCallgrind,
    /// Instructions per message of the direction no interceptor asked for, under callgrind
    /// (needs valgrind; not in the default run: ask for it with --only intercept-callgrind, or
    /// --all).
    InterceptCallgrind,
    /// advanced-filters, authorised by the reference API: scanning, relay and latency.
    Filters,
}

/// Validated command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Smaller runs (a few seconds in all).
    pub(crate) quick: bool,
    /// Only these sections (empty: all).
    pub(crate) only: Vec<Section>,
    /// Print JSON instead of the table.
    pub(crate) json: bool,
    /// Every section, callgrind included.
    pub(crate) all: bool,
}

impl From<Cli> for Options {
    fn from(cli: Cli) -> Options {
        Options {
            quick: cli.quick,
            only: cli.only,
            json: cli.json,
            all: cli.all,
        }
    }
}

impl Options {
    /// How many passes each relay variant gets (the median is reported).
    pub(crate) fn passes(&self) -> usize {
        if self.quick {
            1
        } else {
            5
        }
    }

    /// Round trips per latency path, and the warm-up rounds before them that are not counted.
    pub(crate) fn round_trips(&self) -> (usize, usize) {
        if self.quick {
            (1500, 100)
        } else {
            (10_000, 500)
        }
    }

    /// Whether `section` is to run.
    pub(crate) fn wants(&self, section: Section) -> bool {
        if self.only.is_empty() {
            // callgrind takes minutes and needs valgrind: only when asked for.
            return !matches!(
                section,
                Section::Callgrind | Section::TelemetryCallgrind | Section::InterceptCallgrind
            ) || self.all;
        }
        self.only.contains(&section)
    }
}

fn run(options: &Options) -> Result<()> {
    let env = env::BenchEnv::new()?;
    let mut report = Report::default();
    if options.wants(Section::Relay) {
        relay::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Latency) {
        latency::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Startup) {
        startup::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Dispatch) {
        dispatch::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Analytics) {
        analytics::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Intercept) {
        intercept::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Telemetry) {
        telemetry::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Scaling) {
        relay::scaling(&env, options, &mut report)?;
    }
    if options.wants(Section::Long) {
        long::run(&env, options, &mut report)?;
    }
    if options.wants(Section::Callgrind) {
        callgrind::run(&env, options, &mut report)?;
    }
    if options.wants(Section::TelemetryCallgrind) {
        telemetry::instructions(&env, options, &mut report)?;
    }
    if options.wants(Section::InterceptCallgrind) {
        intercept::instructions(&env, options, &mut report)?;
    }
    if options.wants(Section::Filters) {
        filters::run(&env, options, &mut report)?;
    }
    report.print(options.json)?;
    Ok(())
}

fn main() -> ExitCode {
    let options = Options::from(Cli::parse());
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("km-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
