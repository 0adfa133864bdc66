//! A long session: 2 000 000 messages of the small mix through `km monitor -- cat` with every
//! bundled plugin loaded, km's resident memory sampled along the way (`VmRSS` every 250 ms), to
//! show that nothing grows with the length of a session: correlation tables, the plugins' own
//! state (ml-analytics' series, console-logger's method memory, compliance-reporting's journal),
//! queues and read buffers must all stay bounded.
//!
//! The stream is generated as it is written and generated again to check what comes back, so
//! the bench itself holds no gigabyte of messages. The growth figure is the resident size at
//! the end against the size once a tenth of the stream had passed (start-up, first allocations
//! and the plugins' warm-up are behind by then).
//!
//! To find which component grows, `KM_BENCH_LONG_SET=only-NAME` runs the session with one
//! plugin set instead (`bundled`, `observers`, `only-NAME`, `noop-N`; see
//! [`BenchEnv::set_dir`]) and `KM_BENCH_LONG_MESSAGES=N` sets the number of messages.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{proc_status_kb, spawn_watched, BenchEnv};
use crate::relay::SmallMix;
use crate::report::{Report, Row};
use crate::Options;

/// Runs the long-session section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let n: u64 = match std::env::var("KM_BENCH_LONG_MESSAGES") {
        Ok(text) => text
            .parse()
            .with_context(|| format!("KM_BENCH_LONG_MESSAGES={text:?} is not a number"))?,
        Err(_) if options.quick => 200_000,
        Err(_) => 2_000_000,
    };
    let set = std::env::var("KM_BENCH_LONG_SET").unwrap_or_else(|_| "bundled".to_owned());
    if !env.set_dir(&set).is_dir() {
        bail!("KM_BENCH_LONG_SET={set:?}: no such plugin set");
    }
    let plugins = if set == "bundled" {
        "every bundled plugin".to_owned()
    } else {
        format!("plugin set {set}")
    };
    eprintln!("long session: {n} messages of the small mix, {plugins}");
    let log = env.dir().join("long-stderr.log");
    let mut cmd = env.km_monitor_in(Some(env.set_dir(&set)), &["cat"]);
    let child = spawn_watched(&mut cmd, &log, Duration::from_secs(1200))?;
    let pid = child.id();
    let mut stdin = child.take_stdin().context("no stdin")?;
    let mut stdout = child.take_stdout().context("no stdout")?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (samples, bytes, mismatch) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<_> {
            let mut mix = SmallMix::new();
            for _ in 0..n {
                stdin.write_all(&mix.next_line())?;
            }
            Ok(stdin)
        });
        let reader = {
            let received = received.clone();
            let done = done.clone();
            s.spawn(move || -> std::io::Result<(u64, Option<u64>)> {
                let mut mix = SmallMix::new();
                let mut want = Vec::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut lines = 0u64;
                let mut bytes = 0u64;
                let mut mismatch = None;
                while lines < n {
                    let got = stdout.read(&mut buf)?;
                    if got == 0 {
                        break;
                    }
                    bytes += got as u64;
                    for &b in &buf[..got] {
                        if want.is_empty() {
                            want = mix.next_line();
                            want.reverse();
                        }
                        if want.pop() != Some(b) && mismatch.is_none() {
                            mismatch = Some(bytes);
                        }
                        if b == b'\n' {
                            lines += 1;
                        }
                    }
                    received.store(lines, Ordering::Relaxed);
                }
                done.store(true, Ordering::Relaxed);
                Ok((bytes, mismatch))
            })
        };
        // (messages back so far, VmRSS kB)
        let mut samples: Vec<(u64, u64)> = Vec::new();
        while !done.load(Ordering::Relaxed) {
            if let Some(kb) = proc_status_kb(pid, "VmRSS") {
                samples.push((received.load(Ordering::Relaxed), kb));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let stdin = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        let (bytes, mismatch) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?
            .context("reading from km")?;
        let _stdin = stdin.context("writing to km")?;
        if let Some(kb) = proc_status_kb(pid, "VmRSS") {
            samples.push((n, kb));
        }
        anyhow::Ok((samples, bytes, mismatch))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let peak = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    let status = child.wait("km's long session", || format!("see {}", log.display()));
    if let Some(at) = mismatch {
        bail!("km's output differs from what was sent from byte {at} on (exit {status})");
    }
    let handed = env.check_run(&set)?;
    eprintln!("  long session: {}", handed.describe());
    let warm = samples
        .iter()
        .find(|(got, _)| *got >= n / 10)
        .map_or(0, |s| s.1);
    let end = samples.last().map_or(0, |s| s.1);
    let max_after_warm = samples
        .iter()
        .filter(|(got, _)| *got >= n / 10)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let growth = mb(end) - mb(warm);
    let trace: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 8).max(1))
        .map(|(got, kb)| format!("{}k:{:.1}", got / 1000, mb(*kb)))
        .collect();
    eprintln!("  RSS (messages back: MB): {}", trace.join(" "));
    report.add_counted(
        Row {
            section: "long",
            figure: format!("{n} messages, {plugins}: peak RSS (VmHWM)"),
            value: format!(
                "{:.1} MB; {:.0} msg/s, {:.0} MB in {seconds:.1} s",
                mb(peak),
                n as f64 / seconds,
                bytes as f64 / 1e6
            ),
            baseline: format!("{} RSS samples", samples.len()),
            ratio: None,
            target: Some(("<= 30 MB".to_owned(), mb(peak) <= 30.0)),
        },
        handed.drops(),
    );
    report.add_counted(
        Row {
            section: "long",
            figure: "growth of RSS over the session (end against a tenth in)".to_owned(),
            value: format!("{growth:+.1} MB ({:.1} -> {:.1} MB)", mb(warm), mb(end)),
            baseline: format!("largest after a tenth in {:.1} MB", mb(max_after_warm)),
            ratio: None,
            target: Some(("<= 5 MB".to_owned(), growth <= 5.0)),
        },
        handed.drops(),
    );
    Ok(())
}
