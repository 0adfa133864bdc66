//! What interception costs: the relay and the added round-trip latency with one pass-through
//! interceptor (the test-intercept plugin, signed with the `intercept` capability, answering
//! "pass" to everything it is shown), asking for `tools/call` only and for every line, beside
//! `cat | cat` and beside km without interceptors, in the same run.
//!
//! With an interceptor on a direction, km reads each line whole, numbers it, calls the plugin on
//! the pump's own thread (its budget enforced by the watchdog's baton: two uncontended lock
//! operations per call), then writes it; without one, it forwards each chunk as it comes.
//!
//! Whether the other direction is unaffected is measured on a stream of its own: a server that
//! writes the mix to the client (`cat FILE`) while the client sends nothing, through km with
//! test-intercept asking for client-to-server lines only, against the same plugin signed without
//! the capability (loaded, but no interceptor: km as it relays with a plugin that does not
//! intercept) and against km without plugins. Its wall-clock rate (from the first byte to the
//! last, so that loading the plugin is left out) is in the `intercept` section; its instructions
//! per message, which a busy machine does not move, in `intercept-callgrind` (needs valgrind; not
//! in the default run), beside an interceptor on that very direction for contrast.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use km_tests::{lib_file_name, ClientStdio};

use crate::callgrind::{total_ir, valgrind_version};
use crate::env::{median, percentile, BenchEnv};
use crate::latency::{interleave, Probe};
use crate::relay::{cat_cat, pass_with_deadline, small_messages, Stream};
use crate::report::{Report, Row};
use crate::Options;

/// test-intercept's settings for an interceptor on client-to-server lines only.
const CLIENT_TO_SERVER: &str = "directions = \"client-to-server\"\n";
/// test-intercept's settings for an interceptor on server-to-client lines only.
const SERVER_TO_CLIENT: &str = "directions = \"server-to-client\"\n";

/// A `KM_HOME` of its own with test-intercept (signed with the `intercept` capability)
/// configured by `settings` (a TOML table body), trusting the bench's key.
fn intercept_home(env: &BenchEnv, label: &str, settings: &str) -> Result<PathBuf> {
    let home = env.own_home(
        &format!("home-intercept-{label}"),
        Some(&format!("[plugins.test-intercept]\n{settings}")),
    )?;
    env.install_with(
        "test-intercept",
        &home.join("plugins").join(lib_file_name("test-intercept")),
        "test-intercept",
        "free",
        &["--capability", "intercept"],
    )?;
    Ok(home)
}

/// Runs the interception section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let calls = intercept_home(env, "tools-call", "methods = [\"tools/call\"]\n")?;
    let everything = intercept_home(env, "all", "kinds = \"all\"\n")?;
    let stream = Stream::agent(options);
    let round_trips = options.round_trips();
    eprintln!(
        "intercept: {} messages, {:.1} MB, median of {} runs; {} round trips",
        stream.msgs.len(),
        stream.mb(),
        stream.passes,
        round_trips.0
    );
    let log = env.dir().join("intercept-stderr.log");
    let [base, bare, on_calls, on_all] = stream.medians(
        [
            &|| cat_cat(env),
            &|| env.km_monitor(false, &["cat"]),
            &|| env.km_in_home(&calls),
            &|| env.km_in_home(&everything),
        ],
        &log,
    )?;
    for (label, t, target) in [
        ("relay, interceptor on tools/call", on_calls, None),
        ("relay, interceptor on everything", on_all, Some(2.0)),
    ] {
        report.add(Row {
            section: "intercept",
            figure: label.to_owned(),
            value: stream.rate(t),
            baseline: format!(
                "cat|cat {}; km without {}",
                stream.rate(base),
                stream.rate(bare)
            ),
            ratio: Some(t / base),
            target: target.map(|x: f64| (format!("time <= {x}x cat|cat"), t / base <= x)),
        });
    }

    let plog = |name: &str| env.dir().join(format!("intercept-latency-{name}.log"));
    let mut paths = vec![
        Probe::direct(env, &plog("direct"))?,
        Probe::relay(env, &plog("relay"))?,
        Probe::start("km", env.km_monitor(false, &["cat"]), &plog("km"))?,
        Probe::start(
            "km+intercept(all)",
            env.km_in_home(&everything),
            &plog("all"),
        )?,
        Probe::start(
            "km+intercept(tools/call)",
            env.km_in_home(&calls),
            &plog("calls"),
        )?,
    ];
    interleave(&mut paths, round_trips)?;
    let us = |s: f64| s * 1e6;
    let p = |i: usize, q: f64| percentile(&paths[i].samples, q);
    for q in [50.0, 99.0] {
        for (i, label, target) in [
            (3, "everything", Some(10.0)),
            (4, "tools/call (every probe is one)", None),
        ] {
            let over_km = p(i, q) - p(2, q);
            report.add(Row {
                section: "intercept",
                figure: format!("added round trip p{q:.0}, interceptor on {label}"),
                value: format!(
                    "{:.1} us over km without (total {:.1})",
                    us(over_km),
                    us(p(i, q))
                ),
                baseline: format!(
                    "km without {:.1} us, cat relay {:.1} us, direct {:.1} us",
                    us(p(2, q)),
                    us(p(1, q)),
                    us(p(0, q))
                ),
                ratio: None,
                target: target
                    .filter(|_| q == 50.0)
                    .map(|t| (format!("<= {t} us over km"), us(over_km) <= t)),
            });
        }
    }
    for path in paths {
        path.finish();
    }

    other_direction(env, &stream, report)
}

/// A `KM_HOME` of its own with test-intercept configured by `settings` but signed without the
/// `intercept` capability: the same plugin loaded, and no interceptor (km only lets it observe).
/// The baseline of "the other direction is unaffected": km as it relays with a plugin that does
/// not intercept.
fn not_granted_home(env: &BenchEnv, label: &str, settings: &str) -> Result<PathBuf> {
    let home = env.own_home(
        &format!("home-intercept-{label}"),
        Some(&format!("[plugins.test-intercept]\n{settings}")),
    )?;
    env.install(
        "test-intercept",
        &home.join("plugins").join(lib_file_name("test-intercept")),
        "test-intercept",
        "free",
    )?;
    Ok(home)
}

/// `km monitor` with the plugins of `home` (none: `--no-plugins`) on a server that writes `file`
/// and reads nothing.
fn km_on_writer(env: &BenchEnv, home: Option<&Path>, file: &Path) -> Result<Command> {
    let file = file
        .to_str()
        .context("the stream file's path is not UTF-8")?;
    let mut cmd = env.km_monitor_in(home.map(|h| h.join("plugins")), &["cat", file]);
    if let Some(home) = home {
        cmd.env("KM_HOME", home);
    }
    Ok(cmd)
}

/// Reads what `cmd` writes (the client sends nothing and keeps its end open), checks that it is
/// `expected`, and returns the seconds from its first byte to its last: km's start-up (verifying
/// and loading plugins, which is the start-up section's figure) is left out, so that the figure
/// is the relay's.
fn stream_seconds(mut cmd: Command, expected: &[u8], log: &Path) -> Result<f64> {
    let what = format!("{cmd:?}");
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stderr(Stdio::from(file));
    let (child, stdin, mut stdout) =
        km_tests::spawn_client(cmd, ClientStdio::Pipes, Duration::from_secs(120));
    let mut back = Vec::with_capacity(expected.len());
    let mut buf = vec![0u8; 256 * 1024];
    let mut started = None;
    while back.len() < expected.len() {
        let n = stdout.read(&mut buf).context("reading from the relay")?;
        if n == 0 {
            break;
        }
        started.get_or_insert_with(Instant::now);
        back.extend_from_slice(&buf[..n]);
    }
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    drop(stdin);
    let status = child.wait(&what, || format!("see {}", log.display()));
    if back != expected {
        bail!(
            "{what} returned {} bytes that differ from the {} the server wrote (exit {status}); see {}",
            back.len(),
            expected.len(),
            log.display()
        );
    }
    Ok(seconds)
}

/// The server-to-client stream alone, through km with test-intercept loaded but not granted
/// (no interceptor) and with it intercepting client-to-server lines only: the direction nobody
/// intercepts should move as fast.
fn other_direction(env: &BenchEnv, stream: &Stream, report: &mut Report) -> Result<()> {
    let requests = intercept_home(env, "client-to-server", CLIENT_TO_SERVER)?;
    let observing = not_granted_home(env, "not-granted", CLIENT_TO_SERVER)?;
    let expected = stream.msgs.concat();
    let file = env.dir().join("intercept-server-stream.jsonl");
    std::fs::write(&file, &expected).with_context(|| format!("writing {}", file.display()))?;
    let log = env.dir().join("intercept-other-direction-stderr.log");
    let mut times: [Vec<f64>; 3] = Default::default();
    // Interleaved pass by pass, so that the machine's noise falls on all three alike.
    for _ in 0..stream.passes {
        for (home, t) in [None, Some(&observing), Some(&requests)]
            .into_iter()
            .zip(&mut times)
        {
            let cmd = km_on_writer(env, home.map(PathBuf::as_path), &file)?;
            t.push(stream_seconds(cmd, &expected, &log)?);
        }
    }
    let [bare, observing, other] = times.map(|mut t| median(&mut t));
    report.add(Row {
        section: "intercept",
        figure: "server-to-client stream, interceptor on client-to-server only (ratio: to the same plugin not intercepting)"
            .to_owned(),
        value: stream.rate(other),
        baseline: format!(
            "test-intercept not granted (no interceptor) {}; km without plugins {}",
            stream.rate(observing),
            stream.rate(bare)
        ),
        ratio: Some(other / observing),
        target: None,
    });
    Ok(())
}

/// Messages of the shorter and the longer run under callgrind.
const FEW: usize = 1_000;
const MANY: usize = 6_000;

/// Instructions km executes relaying `n` small-mix lines from a server that writes them (the
/// client sends nothing), with the plugins of `home` (none: `--no-plugins`), under callgrind.
fn writer_instructions(env: &BenchEnv, home: Option<&Path>, n: usize, tag: &str) -> Result<u64> {
    let dir = std::env::var_os("KM_BENCH_CALLGRIND_DIR")
        .map_or_else(|| env.dir().to_owned(), PathBuf::from);
    let out = dir.join(format!("callgrind-intercept-{tag}-{n}.out"));
    let expected = small_messages(n).concat();
    let file = env.dir().join(format!("intercept-server-stream-{n}.jsonl"));
    std::fs::write(&file, &expected).with_context(|| format!("writing {}", file.display()))?;
    let mut cmd = env.command(Path::new("valgrind"));
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(env.bin_dir.join("km"))
        .arg("monitor");
    match home {
        Some(home) => cmd
            .arg("--plugins-dir")
            .arg(home.join("plugins"))
            .env("KM_HOME", home),
        None => cmd.arg("--no-plugins"),
    };
    cmd.args(["--", "cat"]).arg(&file);
    let log = env.dir().join(format!("callgrind-intercept-{tag}.log"));
    pass_with_deadline(
        cmd,
        ClientStdio::Pipes,
        &[],
        &expected,
        &log,
        Duration::from_secs(900),
    )
    .with_context(|| format!("km under callgrind ({tag}); see {}", log.display()))?;
    total_ir(&out)
}

/// Instructions per server-to-client message for `home`'s plugins (none: `--no-plugins`).
fn writer_per_message(env: &BenchEnv, home: Option<&Path>, tag: &str) -> Result<f64> {
    let few = writer_instructions(env, home, FEW, tag)?;
    let many = writer_instructions(env, home, MANY, tag)?;
    if many <= few {
        bail!("{tag}: {many} instructions for {MANY} messages, {few} for {FEW}");
    }
    Ok((many - few) as f64 / (MANY - FEW) as f64)
}

/// Runs the intercept-callgrind section: instructions per message of the server-to-client
/// stream with test-intercept loaded but not intercepting, intercepting the other direction, and
/// intercepting this one; and with no plugins.
pub(crate) fn instructions(env: &BenchEnv, _options: &Options, report: &mut Report) -> Result<()> {
    let Some(version) = valgrind_version() else {
        bail!("the intercept-callgrind section needs valgrind on PATH (Debian: apt-get install valgrind)");
    };
    eprintln!(
        "intercept-callgrind ({version}): {FEW} and {MANY} small-mix lines from the server per configuration"
    );
    let observing = not_granted_home(env, "cg-not-granted", CLIENT_TO_SERVER)?;
    let requests = intercept_home(env, "cg-client-to-server", CLIENT_TO_SERVER)?;
    let responses = intercept_home(env, "cg-server-to-client", SERVER_TO_CLIENT)?;
    let bare = writer_per_message(env, None, "bare")?;
    let base = writer_per_message(env, Some(&observing), "not-granted")?;
    let other = writer_per_message(env, Some(&requests), "client-to-server")?;
    let same = writer_per_message(env, Some(&responses), "server-to-client")?;
    for (label, value) in [
        ("test-intercept loaded, not granted (no interceptor)", base),
        ("interceptor on client-to-server only", other),
        ("interceptor on server-to-client (this direction)", same),
    ] {
        report.add(Row {
            section: "intercept-callgrind",
            figure: format!("instructions per server-to-client message, {label}"),
            value: format!("{value:.0}"),
            baseline: format!("km without plugins {bare:.0} (spliced)"),
            ratio: None,
            target: None,
        });
    }
    Ok(())
}
