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
//! Both mixes: the small mix ([`FEW`] and [`MANY`] messages) and the agent mix of about 8 KB a
//! line with results up to 512 KiB ([`AGENT_FEW`] and [`AGENT_MANY`]: fewer, as each is ten times
//! larger), where what a plugin does per byte (reading a whole result to find a field, copying
//! it) shows. `KM_BENCH_CALLGRIND_MIX=small` or `agent` counts one of them only.
//!
//! Needs valgrind on PATH (BENCHMARKS.md gives the pinned Debian package); without it this
//! section fails with that message. `KM_BENCH_CALLGRIND_DIR=DIR` keeps callgrind's output files
//! in DIR, for `callgrind_annotate`. `KM_BENCH_CALLGRIND_PLUGINS=NAME,...` counts only those
//! bundled plugins (beside test-noop; `observers` in the list adds every observer together), for
//! profiling one plugin in minutes instead of the whole section.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use km_tests::ClientStdio;

use crate::env::BenchEnv;
use crate::relay::{messages, pass_with_deadline, small_messages};
use crate::report::{Report, Row};
use crate::Options;

/// Messages of the shorter and the longer run, small mix.
const FEW: usize = 1_000;
const MANY: usize = 6_000;

/// Messages of the shorter and the longer run, agent mix (8.7 and 26 MB).
const AGENT_FEW: usize = 1_000;
const AGENT_MANY: usize = 3_000;

/// The stream a count relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgMix {
    Small,
    Agent,
}

impl CgMix {
    /// Its messages; the shorter run's are a prefix of the longer's (the generators are seeded
    /// alike), so the difference is the cost of the same extra messages every time.
    fn messages(self, n: usize) -> Vec<Vec<u8>> {
        match self {
            CgMix::Small => small_messages(n),
            CgMix::Agent => messages(n),
        }
    }

    fn sizes(self) -> (usize, usize) {
        match self {
            CgMix::Small => (FEW, MANY),
            CgMix::Agent => (AGENT_FEW, AGENT_MANY),
        }
    }

    /// The suffix of its tags and figures.
    fn tag(self) -> &'static str {
        match self {
            CgMix::Small => "",
            CgMix::Agent => "-agent",
        }
    }

    fn label(self) -> &'static str {
        match self {
            CgMix::Small => "",
            CgMix::Agent => ", agent mix",
        }
    }
}

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

/// km under callgrind with the plugins of `set` (or none) relaying `n` messages of `mix`;
/// returns the instructions km executed.
fn count(
    env: &BenchEnv,
    set: Option<&str>,
    stdio: ClientStdio,
    mix: CgMix,
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
    let msgs = mix.messages(n);
    let expected: Vec<u8> = msgs.concat();
    let log = env.dir().join(format!("callgrind-{tag}.log"));
    pass_with_deadline(cmd, stdio, &msgs, &expected, &log, Duration::from_secs(900))
        .with_context(|| format!("km under callgrind ({tag}); see {}", log.display()))?;
    if let Some(set) = set {
        env.check_run(set)?;
    }
    total_ir(&out)
}

/// Instructions per message crossing km, for `set`, on the small mix.
fn per_message(env: &BenchEnv, set: Option<&str>, tag: &str) -> Result<f64> {
    per_message_on(env, set, ClientStdio::Pipes, CgMix::Small, tag)
}

/// [`per_message`] with km given `stdio`, on `mix`.
fn per_message_on(
    env: &BenchEnv,
    set: Option<&str>,
    stdio: ClientStdio,
    mix: CgMix,
    tag: &str,
) -> Result<f64> {
    let tag = format!("{tag}{}", mix.tag());
    let (few_n, many_n) = mix.sizes();
    let few = count(env, set, stdio, mix, few_n, &tag)?;
    let many = count(env, set, stdio, mix, many_n, &tag)?;
    if many <= few {
        bail!("{tag}: {many} instructions for {many_n} messages, {few} for {few_n}");
    }
    Ok((many - few) as f64 / ((many_n - few_n) * 2) as f64)
}

/// The mixes `KM_BENCH_CALLGRIND_MIX` asks for (both unless it says `small` or `agent`).
fn mixes() -> Result<Vec<CgMix>> {
    match std::env::var("KM_BENCH_CALLGRIND_MIX").ok().as_deref() {
        None | Some("" | "both") => Ok(vec![CgMix::Small, CgMix::Agent]),
        Some("small") => Ok(vec![CgMix::Small]),
        Some("agent") => Ok(vec![CgMix::Agent]),
        Some(other) => {
            bail!("KM_BENCH_CALLGRIND_MIX={other:?}: expected small, agent or both")
        }
    }
}

/// Each bundled plugin's own instructions per message on `mix` (km with it, less km with
/// test-noop), for the plugins `only` names (all without it), and every observer together.
fn plugin_rows(
    env: &BenchEnv,
    mix: CgMix,
    only: Option<&[String]>,
    report: &mut Report,
) -> Result<()> {
    let pipes = ClientStdio::Pipes;
    let noop = per_message_on(env, Some("only-test-noop"), pipes, mix, "test-noop")?;
    report.add(Row {
        section: "callgrind",
        figure: format!(
            "instructions per message, relay path with one plugin (test-noop){}",
            mix.label()
        ),
        value: format!("{noop:.0}"),
        baseline: "framing, classification, correlation, dispatch".to_owned(),
        ratio: None,
        target: None,
    });
    for b in env.bundled.clone() {
        if only.is_some_and(|only| !only.iter().any(|o| o == b.name())) {
            continue;
        }
        let set = format!("only-{}", b.name());
        let with = per_message_on(env, Some(&set), pipes, mix, b.name())?;
        report.add(Row {
            section: "callgrind",
            figure: format!("instructions per message in {}{}", b.name(), mix.label()),
            value: format!("{:.0}", with - noop),
            baseline: format!("km with it {with:.0}, with test-noop {noop:.0}"),
            ratio: None,
            target: None,
        });
    }
    if only.is_none_or(|only| only.iter().any(|o| o == "observers")) {
        let all = per_message_on(env, Some("observers"), pipes, mix, "observers")?;
        report.add(Row {
            section: "callgrind",
            figure: format!(
                "instructions per message, every bundled observer{}",
                mix.label()
            ),
            value: format!("{all:.0}"),
            baseline: format!("test-noop {noop:.0}"),
            ratio: None,
            target: None,
        });
    }
    Ok(())
}

/// Runs the callgrind section.
pub(crate) fn run(env: &BenchEnv, _options: &Options, report: &mut Report) -> Result<()> {
    let Some(version) = valgrind_version() else {
        bail!("the callgrind section needs valgrind on PATH (Debian: apt-get install valgrind)");
    };
    let mixes = mixes()?;
    eprintln!(
        "callgrind ({version}): {FEW} and {MANY} small-mix, {AGENT_FEW} and {AGENT_MANY} \
         agent-mix messages per configuration ({mixes:?})"
    );
    let only: Option<Vec<String>> = std::env::var("KM_BENCH_CALLGRIND_PLUGINS")
        .ok()
        .map(|list| list.split(',').map(str::to_owned).collect());
    if let Some(only) = &only {
        for mix in mixes {
            plugin_rows(env, mix, Some(only.as_slice()), report)?;
        }
        return Ok(());
    }
    if mixes.contains(&CgMix::Small) {
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
        let copied = per_message_on(
            env,
            None,
            ClientStdio::SocketPairs,
            CgMix::Small,
            "bare-sockets",
        )?;
        report.add(Row {
            section: "callgrind",
            figure: "instructions per message, relay path, no plugins, socketpair stdio".to_owned(),
            value: format!("{copied:.0}"),
            baseline: "the copy loop: read and write per chunk".to_owned(),
            ratio: None,
            target: None,
        });
    }
    for mix in mixes {
        plugin_rows(env, mix, None, report)?;
    }
    Ok(())
}
