//! Relay throughput and peak memory: the same mixed JSON-RPC stream through `km monitor -- cat`
//! (with no plugins, and with every bundled plugin) and through a plain pipe relay
//! (`sh -c 'cat | cat'`: one cat relays, one echoes). A writer thread writes one message per
//! `write`, as a client does; a reader thread reads everything back; the bytes that came back are
//! compared with those sent. km's peak RSS (VmHWM) is read while it still runs, just before its
//! stdin is closed.
//!
//! The relay without plugins runs twice: with pipes as stdin and stdout, and with the Unix
//! stream socketpairs that Node-based clients hand their servers (issue 10; km copies instead of
//! splicing there), each against `cat | cat` given the same kind of stdio.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{median, proc_status_kb, spawn_piped, BenchEnv, Watchdog};
use crate::report::{Report, Row};
use crate::Options;

/// A small deterministic generator (xorshift64*), so every run sends the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// `n` newline-terminated JSON-RPC messages: 60% requests (80–400 B), 25% notifications,
/// 14% results of 1–64 KiB, 1% results of 100–512 KiB.
pub(crate) fn messages(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let text = |rng: &mut Rng, len: usize| -> String {
        (0..len)
            .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
            .collect()
    };
    (0..n)
        .map(|i| {
            let roll = rng.range(0, 100);
            let line = if roll < 60 {
                let len = rng.range(20, 340);
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"{}"}}}}}}"#,
                    text(&mut rng, len)
                )
            } else if roll < 85 {
                let len = rng.range(20, 200);
                format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{i},"message":"{}"}}}}"#,
                    text(&mut rng, len)
                )
            } else {
                let len = if roll < 99 {
                    rng.range(1024, 64 * 1024)
                } else {
                    rng.range(100 * 1024, 512 * 1024)
                };
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
                    text(&mut rng, len)
                )
            };
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            bytes
        })
        .collect()
}

/// One pass of the stream through `cmd`.
pub(crate) struct Pass {
    pub(crate) seconds: f64,
    pub(crate) peak_rss_kb: Option<u64>,
}

/// What the relay gets as stdin and stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientStdio {
    /// Pipes, as Python's `subprocess` and shells give.
    Pipes,
    /// A Unix stream socketpair each, as Node gives.
    SocketPairs,
}

/// A started relay and the client's ends of its stdin and stdout.
type Spawned = (Child, Box<dyn Write + Send>, Box<dyn Read + Send>);

/// Starts `cmd` with stdio of the kind `stdio` (stderr to `log`).
fn spawn(cmd: &mut Command, stdio: ClientStdio, log: &std::path::Path) -> Result<Spawned> {
    match stdio {
        ClientStdio::Pipes => {
            let mut child = spawn_piped(cmd, log)?;
            let stdin = child.stdin.take().context("no stdin")?;
            let stdout = child.stdout.take().context("no stdout")?;
            Ok((child, Box::new(stdin), Box::new(stdout)))
        }
        ClientStdio::SocketPairs => {
            let (stdin, theirs_in) = UnixStream::pair().context("socketpair")?;
            let (stdout, theirs_out) = UnixStream::pair().context("socketpair")?;
            let log = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            let child = cmd
                .stdin(Stdio::from(OwnedFd::from(theirs_in)))
                .stdout(Stdio::from(OwnedFd::from(theirs_out)))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {cmd:?}"));
            // The command holds the child's ends until told otherwise: let them go.
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            Ok((child?, Box::new(stdin), Box::new(stdout)))
        }
    }
}

/// Sends `msgs` through the process `cmd` (which must echo them), checks what came back.
pub(crate) fn pass(
    cmd: &mut Command,
    msgs: &[Vec<u8>],
    expected: &[u8],
    log: &std::path::Path,
) -> Result<Pass> {
    pass_with(cmd, ClientStdio::Pipes, msgs, expected, log)
}

/// [`pass`] with stdio of the kind `stdio`.
pub(crate) fn pass_with(
    cmd: &mut Command,
    stdio: ClientStdio,
    msgs: &[Vec<u8>],
    expected: &[u8],
    log: &std::path::Path,
) -> Result<Pass> {
    let (mut child, mut stdin, mut stdout) = spawn(cmd, stdio, log)?;
    let _watchdog = Watchdog::arm(&child, Duration::from_secs(60));
    let pid = child.id();
    let total = expected.len();
    let start = Instant::now();
    let (seconds, back, stdin) = thread::scope(|s| -> Result<(f64, Vec<u8>, _)> {
        let writer = s.spawn(move || -> std::io::Result<_> {
            for m in msgs {
                stdin.write_all(m)?;
            }
            // Kept open: km's memory is read before it sees end of input.
            Ok(stdin)
        });
        let reader = s.spawn(move || -> std::io::Result<(f64, Vec<u8>)> {
            let mut back = Vec::with_capacity(total);
            let mut buf = vec![0u8; 256 * 1024];
            while back.len() < total {
                let n = stdout.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            Ok((start.elapsed().as_secs_f64(), back))
        });
        let stdin = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("writing to the relay")?;
        let (seconds, back) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?
            .context("reading from the relay")?;
        Ok((seconds, back, stdin))
    })?;
    let peak_rss_kb = proc_status_kb(pid, "VmHWM");
    drop(stdin);
    let status = child.wait().context("waiting for the relay")?;
    if back != expected {
        bail!(
            "{cmd:?} returned {} bytes that differ from the {} sent (exit {status}); see {}",
            back.len(),
            total,
            log.display()
        );
    }
    Ok(Pass {
        seconds,
        peak_rss_kb,
    })
}

/// Runs the throughput section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let (n, reps) = if options.quick {
        (3000, 1)
    } else {
        (10_000, 5)
    };
    let msgs = messages(n);
    let expected: Vec<u8> = msgs.concat();
    let mb = expected.len() as f64 / 1e6;
    eprintln!(
        "relay: {n} messages, {:.1} MB, median of {reps} runs per relay",
        mb
    );
    let log = env.dir.path().join("relay-stderr.log");
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut socket_times: [Vec<f64>; 2] = Default::default();
    let mut rss = 0u64;
    for _ in 0..reps {
        let mut base = env.command(std::path::Path::new("sh"));
        base.args(["-c", "cat | cat"]);
        times[0].push(pass(&mut base, &msgs, &expected, &log)?.seconds);
        let mut bare = env.km_monitor(false, &["cat"]);
        times[1].push(pass(&mut bare, &msgs, &expected, &log)?.seconds);
        let sockets = ClientStdio::SocketPairs;
        let mut base = env.command(std::path::Path::new("sh"));
        base.args(["-c", "cat | cat"]);
        socket_times[0].push(pass_with(&mut base, sockets, &msgs, &expected, &log)?.seconds);
        let mut bare = env.km_monitor(false, &["cat"]);
        socket_times[1].push(pass_with(&mut bare, sockets, &msgs, &expected, &log)?.seconds);
        let mut full = env.km_monitor(true, &["cat"]);
        let p = pass(
            &mut full,
            &msgs,
            &expected,
            &env.dir.path().join("relay-plugins.log"),
        )?;
        times[2].push(p.seconds);
        rss = rss.max(p.peak_rss_kb.unwrap_or(0));
    }
    // Each plugin alone, and the no-op test plugin: what the framing, parsing and queueing cost
    // by themselves, and what each plugin adds.
    let mut single = Vec::new();
    for krate in ["test-noop", "console-logger", "api-logger"] {
        let mut ts = Vec::new();
        for _ in 0..reps.min(3) {
            let mut cmd = env.km_monitor_in(Some(env.single_plugin_dir(krate)), &["cat"]);
            ts.push(pass(&mut cmd, &msgs, &expected, &log)?.seconds);
        }
        single.push((krate, median(&mut ts)));
    }
    let plugins_log =
        std::fs::read_to_string(env.dir.path().join("relay-plugins.log")).unwrap_or_default();
    if !plugins_log.contains("console-logger") {
        eprintln!("relay: warning: km's banner does not name console-logger:\n{plugins_log}");
    }
    let [base, bare, full] = times.map(|mut t| median(&mut t));
    let [socket_base, socket_bare] = socket_times.map(|mut t| median(&mut t));
    let rate = |s: f64| format!("{:.0} MB/s, {:.0} msg/s", mb / s, n as f64 / s);
    for (label, t, baseline, target) in [
        ("throughput, no plugins", bare, ("cat|cat", base), 1.5),
        (
            "throughput, no plugins, socketpair stdio",
            socket_bare,
            ("cat|cat on socketpairs", socket_base),
            1.5,
        ),
        ("throughput, bundled plugins", full, ("cat|cat", base), 3.0),
    ] {
        let (name, base) = baseline;
        report.add(Row {
            section: "relay",
            figure: label.to_owned(),
            value: rate(t),
            baseline: format!("{name} {}", rate(base)),
            ratio: Some(t / base),
            target: Some((format!("time <= {target}x"), t / base <= target)),
        });
    }
    for (krate, t) in single {
        report.add(Row {
            section: "relay",
            figure: format!("throughput, {krate} alone"),
            value: rate(t),
            baseline: format!("cat|cat {}", rate(base)),
            ratio: Some(t / base),
            target: None,
        });
    }
    report.add(Row {
        section: "memory",
        figure: "km peak RSS (VmHWM), bundled plugins".to_owned(),
        value: format!("{:.1} MB", rss as f64 / 1024.0),
        baseline: String::new(),
        ratio: None,
        target: Some(("<= 30 MB".to_owned(), rss as f64 / 1024.0 <= 30.0)),
    });
    Ok(())
}
