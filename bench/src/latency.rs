//! Added round-trip latency: one small request at a time, written and its echo read back, through
//! five paths at once: the echo server directly (`cat`), a plain byte relay (one `cat` per
//! direction: `sh -c 'cat | cat | cat'`), and `km monitor -- cat` without plugins, with
//! test-noop and with every bundled observer (premium ones authorised). The paths take turns round by round, so the machine's noise falls on all of them
//! alike. Added latency is a path's percentile minus the direct path's. The first round trip of
//! each freshly started process is also reported: start-up to first answer.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use km_tests::Watched;

use crate::env::{percentile, spawn_watched, BenchEnv};
use crate::report::{Report, Row};
use crate::Options;

/// One path a request travels and comes back on, with its samples.
pub(crate) struct Probe {
    label: &'static str,
    child: Watched,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    request: Vec<u8>,
    first: f64,
    pub(crate) samples: Vec<f64>,
}

const REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"where is the nearest kilometre marker"}}}"#;

impl Probe {
    /// Ends the path: closes its input and waits for it.
    pub(crate) fn finish(self) {
        let Probe {
            label,
            child,
            stdin,
            ..
        } = self;
        drop(stdin);
        child.wait(label, String::new);
    }

    /// Starts `cmd` and makes its first round trip.
    pub(crate) fn start(label: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let started = Instant::now();
        let child = spawn_watched(&mut cmd, log, Duration::from_secs(120))?;
        let stdin = child.take_stdin().context("no stdin")?;
        let stdout = BufReader::new(child.take_stdout().context("no stdout")?);
        let mut path = Probe {
            label,
            child,
            stdin,
            stdout,
            request: [REQUEST, b"\n"].concat(),
            first: 0.0,
            samples: Vec::new(),
        };
        let mut line = Vec::new();
        path.round_trip(&mut line)?;
        path.first = started.elapsed().as_secs_f64();
        Ok(path)
    }

    /// The echo server directly: `cat -u`.
    pub(crate) fn direct(env: &BenchEnv, log: &Path) -> Result<Self> {
        let mut direct = env.command(Path::new("cat"));
        direct.arg("-u");
        Probe::start("direct", direct, log)
    }

    /// A plain byte relay in front of the echo server, one `cat` per direction.
    pub(crate) fn relay(env: &BenchEnv, log: &Path) -> Result<Self> {
        let mut relay = env.command(Path::new("sh"));
        relay.args(["-c", "cat | cat | cat"]);
        Probe::start("relay", relay, log)
    }

    /// One round trip, in seconds.
    pub(crate) fn round_trip(&mut self, line: &mut Vec<u8>) -> Result<f64> {
        line.clear();
        let t = Instant::now();
        // One message per write, as clients do.
        self.stdin.write_all(&self.request)?;
        self.stdout.read_until(b'\n', line)?;
        let dt = t.elapsed().as_secs_f64();
        if line.len() != REQUEST.len() + 1 {
            bail!("{}: the echo came back as {} bytes", self.label, line.len());
        }
        Ok(dt)
    }
}

/// Makes round trips on every path in turn, round by round (so that the machine's noise falls
/// on all of them alike): `warmup` rounds not counted, then `rounds` sampled; then sorts each
/// path's samples, for [`percentile`].
pub(crate) fn interleave(paths: &mut [Probe], (rounds, warmup): (usize, usize)) -> Result<()> {
    let mut line = Vec::with_capacity(256);
    for round in 0..rounds + warmup {
        for path in paths.iter_mut() {
            let dt = path.round_trip(&mut line)?;
            if round >= warmup {
                path.samples.push(dt);
            }
        }
    }
    for path in paths {
        path.samples.sort_by(f64::total_cmp);
    }
    Ok(())
}

/// Runs the latency section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let round_trips = options.round_trips();
    eprintln!(
        "latency: {} round trips per path, interleaved",
        round_trips.0
    );
    let log = |name: &str| env.dir().join(format!("latency-{name}.log"));
    let mut paths = vec![
        Probe::direct(env, &log("direct"))?,
        Probe::relay(env, &log("relay"))?,
        Probe::start("km", env.km_monitor(false, &["cat"]), &log("km"))?,
        Probe::start(
            "km+test-noop",
            env.km_monitor_in(Some(env.single_plugin_dir("test-noop")), &["cat"]),
            &log("km-noop"),
        )?,
        Probe::start(
            "km+observers",
            env.km_monitor(true, &["cat"]),
            &log("km-plugins"),
        )?,
    ];
    interleave(&mut paths, round_trips)?;
    let first = (
        paths[0].first,
        paths[1].first,
        paths[2].first,
        paths[4].first,
    );
    let samples: Vec<Vec<f64>> = paths.iter().map(|p| p.samples.clone()).collect();
    for path in paths {
        path.finish();
    }
    // What the observers were handed (and that the premium ones were authorised).
    let handed = env.check_run("observers")?;
    eprintln!("  latency, every bundled observer: {}", handed.describe());
    let us = |s: f64| s * 1e6;
    let p = |i: usize, q: f64| percentile(&samples[i], q);
    for q in [50.0, 99.0] {
        let relay_added = p(1, q) - p(0, q);
        for (i, label, target) in [
            (2, "no plugins", Some(if q == 50.0 { 1.5 } else { 2.0 })),
            (3, "test-noop alone", None),
            (4, "every bundled observer", Some(1.0)),
        ] {
            let added = p(i, q) - p(0, q);
            let ratio = added / relay_added;
            let row = Row {
                section: "latency",
                figure: format!("added round trip p{q:.0}, {label}"),
                value: format!("{:.1} us (total {:.1})", us(added), us(p(i, q))),
                baseline: format!(
                    "cat relay {:.1} us (direct {:.1})",
                    us(relay_added),
                    us(p(0, q))
                ),
                ratio: Some(ratio),
                target: target.map(|t: f64| (format!("<= {t}x"), ratio <= t)),
            };
            if i == 4 {
                report.add_counted(row, handed.drops());
            } else {
                report.add(row);
            }
        }
    }
    report.add(Row {
        section: "startup",
        figure: "process start to first echo: km, every bundled observer".to_owned(),
        value: format!(
            "{:.1} ms (no plugins {:.1} ms)",
            first.3 * 1e3,
            first.2 * 1e3
        ),
        baseline: format!(
            "cat {:.1} ms, cat relay {:.1} ms",
            first.0 * 1e3,
            first.1 * 1e3
        ),
        ratio: None,
        target: None,
    });
    Ok(())
}
