//! Instructions per message, counted by `valgrind --tool=callgrind`: a figure that a busy machine
//! does not move (seconds on this shared 2-core machine vary by ±30% between runs; instruction
//! counts by about a percent), so that a regression in the per-message path shows up as a number.
//!
//! km runs under callgrind (all its threads: both pumps, the plugins' workers, the plugins' own
//! threads) relaying the small mix through `km monitor --lossless -- cat`, twice: with
//! [`FEW`] and with [`MANY`] messages. The difference of the two totals divided by the
//! difference in messages is the cost of one more message, without start-up and shutdown; each
//! message crosses km twice (to `cat` and back), and the figure is per crossing. With no
//! plugins that is the relay path alone; with test-noop, the relay path with framing,
//! classification, correlation and dispatch to a plugin that does nothing; with each bundled
//! plugin alone, the difference to test-noop is that plugin's own cost per message (its handler
//! and whatever its own threads do per message). `--lossless` makes every plugin handle every
//! message, so the counts do not depend on how many were dropped.
//!
//! Needs valgrind on PATH (BENCHMARKS.md gives the pinned Debian package); without it this
//! section fails with that message. `KM_BENCH_CALLGRIND_DIR=DIR` keeps callgrind's output files
//! in DIR, for `callgrind_annotate`. `KM_BENCH_CALLGRIND_PLUGINS=NAME,...` counts only those
//! bundled plugins (beside test-noop), for profiling one plugin in minutes instead of the
//! whole section.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use km_tests::ClientStdio;

use crate::env::BenchEnv;
use crate::relay::{pass_with_deadline, small_messages};
use crate::report::{Report, Row};
use crate::Options;

/// Messages of the shorter and the longer run.
const FEW: usize = 1_000;
const MANY: usize = 6_000;

/// Whether valgrind can be run.
pub(crate) fn valgrind_version() -> Option<String> {
    let out = Command::new("valgrind").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The total instructions (`Ir`) of a callgrind output file.
pub(crate) fn total_ir(file: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no instruction total in {}", file.display()))
}

/// km under callgrind with the plugins of `set` (or none) relaying `n` small-mix messages;
/// returns the instructions km executed.
fn count(
    env: &BenchEnv,
    set: Option<&str>,
    stdio: ClientStdio,
    n: usize,
    tag: &str,
) -> Result<u64> {
    // Kept where KM_BENCH_CALLGRIND_DIR says, for `callgrind_annotate` (the profile of
    // BENCHMARKS.md); otherwise in the temporary directory, removed at the end.
    let dir = std::env::var_os("KM_BENCH_CALLGRIND_DIR")
        .map_or_else(|| env.dir().to_owned(), std::path::PathBuf::from);
    let out = dir.join(format!("callgrind-{tag}-{n}.out"));
    let km = env.bin_dir.join("km");
    let mut cmd = env.command(Path::new("valgrind"));
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(km)
        .arg("monitor")
        .arg("--lossless");
    match set {
        Some(set) => cmd.arg("--plugins-dir").arg(env.set_dir(set)),
        None => cmd.arg("--no-plugins"),
    };
    cmd.args(["--", "cat"]);
    let msgs = small_messages(n);
    let expected: Vec<u8> = msgs.concat();
    let log = env.dir().join(format!("callgrind-{tag}.log"));
    pass_with_deadline(cmd, stdio, &msgs, &expected, &log, Duration::from_secs(900))
        .with_context(|| format!("km under callgrind ({tag}); see {}", log.display()))?;
    if let Some(set) = set {
        env.check_run(set)?;
    }
    total_ir(&out)
}

/// Instructions per message crossing km, for `set`.
fn per_message(env: &BenchEnv, set: Option<&str>, tag: &str) -> Result<f64> {
    per_message_on(env, set, ClientStdio::Pipes, tag)
}

/// [`per_message`] with km given `stdio`.
fn per_message_on(env: &BenchEnv, set: Option<&str>, stdio: ClientStdio, tag: &str) -> Result<f64> {
    let few = count(env, set, stdio, FEW, tag)?;
    let many = count(env, set, stdio, MANY, tag)?;
    if many <= few {
        bail!("{tag}: {many} instructions for {MANY} messages, {few} for {FEW}");
    }
    Ok((many - few) as f64 / ((MANY - FEW) * 2) as f64)
}

/// Runs the callgrind section.
pub(crate) fn run(env: &BenchEnv, _options: &Options, report: &mut Report) -> Result<()> {
    let Some(version) = valgrind_version() else {
        bail!("the callgrind section needs valgrind on PATH (Debian: apt-get install valgrind)");
    };
    eprintln!("callgrind ({version}): {FEW} and {MANY} small-mix messages per configuration");
    let only: Option<Vec<String>> = std::env::var("KM_BENCH_CALLGRIND_PLUGINS")
        .ok()
        .map(|list| list.split(',').map(str::to_owned).collect());
    if let Some(only) = &only {
        let noop = per_message(env, Some("only-test-noop"), "test-noop")?;
        for b in env
            .bundled
            .iter()
            .filter(|b| only.iter().any(|o| o == b.name()))
        {
            let with = per_message(env, Some(&format!("only-{}", b.name())), b.name())?;
            report.add(Row {
                section: "callgrind",
                figure: format!("instructions per message in {}", b.name()),
                value: format!("{:.0}", with - noop),
                baseline: format!("km with it {with:.0}, with test-noop {noop:.0}"),
                ratio: None,
                target: None,
            });
        }
        return Ok(());
    }
    let bare = per_message(env, None, "bare")?;
    report.add(Row {
        section: "callgrind",
        figure: "instructions per message, relay path, no plugins".to_owned(),
        value: format!("{bare:.0}"),
        baseline: "pipes: splice moves the bytes in the kernel, km runs no code per message"
            .to_owned(),
        ratio: None,
        target: None,
    });
    let copied = per_message_on(env, None, ClientStdio::SocketPairs, "bare-sockets")?;
    report.add(Row {
        section: "callgrind",
        figure: "instructions per message, relay path, no plugins, socketpair stdio".to_owned(),
        value: format!("{copied:.0}"),
        baseline: "the copy loop: read and write per chunk".to_owned(),
        ratio: None,
        target: None,
    });
    let noop = per_message(env, Some("only-test-noop"), "test-noop")?;
    report.add(Row {
        section: "callgrind",
        figure: "instructions per message, relay path with one plugin (test-noop)".to_owned(),
        value: format!("{noop:.0}"),
        baseline: format!("no plugins {bare:.0}"),
        ratio: None,
        target: None,
    });
    for b in env.bundled.clone() {
        let set = format!("only-{}", b.name());
        let with = per_message(env, Some(&set), b.name())?;
        report.add(Row {
            section: "callgrind",
            figure: format!("instructions per message in {}", b.name()),
            value: format!("{:.0}", with - noop),
            baseline: format!("km with it {with:.0}, with test-noop {noop:.0}"),
            ratio: None,
            target: None,
        });
    }
    let all = per_message(env, Some("observers"), "observers")?;
    report.add(Row {
        section: "callgrind",
        figure: "instructions per message, every bundled observer".to_owned(),
        value: format!("{all:.0}"),
        baseline: format!("no plugins {bare:.0}, test-noop {noop:.0}"),
        ratio: None,
        target: None,
    });
    Ok(())
}
