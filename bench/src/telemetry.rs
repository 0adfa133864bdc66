//! What exporting telemetry costs the relay: the throughput and the added round-trip latency of
//! `km monitor -- cat` with one plugin (test-noop, so that the stream is framed either way),
//! with OTLP export off, on, and pointed at a Collector that is down; and the throughput
//! without plugins, where export is what makes km frame a stream it would otherwise splice.
//!
//! The Collector is a sink on loopback inside km-bench: it reads each export request and
//! answers 200 with an empty body (an empty protobuf message is a valid OTLP answer) without
//! decoding it, so that what is measured is km's cost, not a Collector's. It counts what it
//! received, so that a run where nothing was exported cannot pass for a cheap one. The sink is
//! hand-written (a loop over `TcpListener`) because it only has to drain HTTP/1.1 requests;
//! it is no OTLP implementation.
//!
//! [`instructions`] (section `telemetry-callgrind`, not in the default run: it needs valgrind)
//! counts what export costs in instructions, the figure a busy machine does not move: km under
//! `valgrind --tool=callgrind` relaying the same mix with test-noop, export off, on and with the
//! Collector down, each with [`FEW`] and [`MANY`] messages, the difference per message crossing
//! km (as the callgrind section does). All of km's threads are counted (the pumps, the plugin's
//! worker, km's telemetry thread, the SDK's batch and export threads), so the figure is
//! everything export costs, on and off the relay's path. A run in which km's telemetry dropped
//! anything or did not deliver everything (its stderr says so) fails: a cheaper figure must not
//! come from exporting less. `KM_BENCH_TELEMETRY_CALLGRIND=on` counts only test-noop with export
//! off and on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use km_tests::ClientStdio;

use crate::callgrind::{total_ir, valgrind_version};
use crate::env::{median, percentile, BenchEnv};
use crate::latency::{interleave, Probe};
use crate::relay::{messages, pass, pass_with_deadline};
use crate::report::{Report, Row};
use crate::Options;

/// The sink: its URL and how many export requests it answered.
struct Sink {
    url: String,
    requests: Arc<AtomicU64>,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        let url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || drain(stream, &counter));
            }
        });
        Ok(Sink { url, requests })
    }
}

/// Answers every request on one connection.
fn drain(stream: TcpStream, requests: &AtomicU64) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

/// What km's stderr in `log` says its telemetry lost, if anything.
fn loss(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("warning: telemetry"))
        .map(|l| {
            // "km: warning: telemetry to URL, URL: what was lost (last error: ...)"
            l.split_once("telemetry to ")
                .and_then(|(_, rest)| rest.split_once(": "))
                .map_or(l, |(_, lost)| lost)
                .to_owned()
        })
}

/// `km monitor -- cat` with test-noop (or no plugin), exporting to `endpoint` (or not).
fn km(env: &BenchEnv, plugin: bool, endpoint: Option<&str>) -> Command {
    let dir = plugin.then(|| env.single_plugin_dir("test-noop"));
    let mut cmd = env.km_monitor_in(dir, &["cat"]);
    if let Some(endpoint) = endpoint {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    cmd
}

/// Runs the telemetry section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let sink = Sink::start()?;
    let down = {
        let closed = TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", closed.local_addr()?)
    };
    let (n, reps, rounds, warmup) = if options.quick {
        (3000, 1, 1500, 100)
    } else {
        (10_000, 5, 10_000, 500)
    };
    let msgs = messages(n);
    let expected: Vec<u8> = msgs.concat();
    let mb = expected.len() as f64 / 1e6;
    eprintln!("telemetry: {n} messages, {mb:.1} MB, median of {reps} runs; {rounds} round trips");
    let log = env.dir().join("telemetry-stderr.log");
    let paths: [(bool, Option<&str>); 5] = [
        (true, None),
        (true, Some(&sink.url)),
        (true, Some(&down)),
        (false, None),
        (false, Some(&sink.url)),
    ];
    let mut times: [Vec<f64>; 5] = Default::default();
    // Runs exporting to the sink in which km's telemetry lost anything (a read not traced, a
    // span not exported), and the last such warning: a fast run that exported less is no
    // figure of what export costs, so the rows say it.
    let mut lossy = 0usize;
    let mut last_loss = None;
    for _ in 0..reps {
        for (i, (plugin, endpoint)) in paths.iter().enumerate() {
            times[i].push(pass(km(env, *plugin, *endpoint), &msgs, &expected, &log)?.seconds);
            if *endpoint == Some(sink.url.as_str()) {
                if let Some(warning) = loss(&log) {
                    lossy += 1;
                    last_loss = Some(warning);
                }
            }
        }
    }
    let [off, on, down_t, bare_off, bare_on] = times.map(|mut t| median(&mut t));
    let rate = |s: f64| format!("{:.0} MB/s, {:.0} msg/s", mb / s, n as f64 / s);
    let exports = sink.requests.load(Ordering::Relaxed);
    anyhow::ensure!(
        exports > 0,
        "the sink received no export: km exported nothing (see {})",
        log.display()
    );
    for (label, t, base, base_label, target) in [
        (
            "relay, test-noop, export on",
            on,
            off,
            "export off",
            Some(1.10),
        ),
        (
            "relay, test-noop, collector down",
            down_t,
            off,
            "export off",
            Some(1.10),
        ),
        (
            "relay, no plugins, export on",
            bare_on,
            bare_off,
            "export off (spliced)",
            None,
        ),
    ] {
        report.add(Row {
            section: "telemetry",
            figure: label.to_owned(),
            value: rate(t),
            baseline: format!("{base_label} {}", rate(base)),
            ratio: Some(t / base),
            target: target.map(|x: f64| (format!("time <= {x}x export off"), t / base <= x)),
        });
    }

    report.add(Row {
        section: "telemetry",
        figure: "export runs in which km's telemetry lost something".to_owned(),
        value: format!("{lossy} of {}", 2 * reps),
        baseline: last_loss
            .unwrap_or_else(|| "(every read traced, every span exported)".to_owned()),
        ratio: None,
        target: None,
    });

    let plog = |name: &str| env.dir().join(format!("telemetry-latency-{name}.log"));
    let mut probes = vec![
        Probe::direct(env, &plog("direct"))?,
        Probe::start("km+test-noop", km(env, true, None), &plog("off"))?,
        Probe::start(
            "km+test-noop+export",
            km(env, true, Some(&sink.url)),
            &plog("on"),
        )?,
    ];
    interleave(&mut probes, (rounds, warmup))?;
    let us = |s: f64| s * 1e6;
    let p = |i: usize, q: f64| percentile(&probes[i].samples, q);
    for q in [50.0, 99.0] {
        let ratio = p(2, q) / p(1, q);
        report.add(Row {
            section: "telemetry",
            figure: format!("round trip p{q:.0}, test-noop, export on"),
            value: format!("{:.1} us", us(p(2, q))),
            baseline: format!(
                "export off {:.1} us (direct {:.1})",
                us(p(1, q)),
                us(p(0, q))
            ),
            ratio: Some(ratio),
            target: (q == 50.0).then(|| ("<= 1.10x export off".to_owned(), ratio <= 1.10)),
        });
    }
    for probe in probes {
        probe.finish();
    }
    report.add(Row {
        section: "telemetry",
        figure: "export requests the sink answered".to_owned(),
        value: exports.to_string(),
        baseline: "(more than none: the runs above did export)".to_owned(),
        ratio: None,
        target: None,
    });
    Ok(())
}

/// Messages of the shorter and the longer callgrind run (the first [`FEW`] of the [`MANY`] are
/// the same lines: the mix is generated in order from a fixed seed).
const FEW: usize = 500;
const MANY: usize = 2_500;

/// Where km exports in a counted run: nowhere, to the sink, to a closed port.
#[derive(Clone, Copy)]
enum Export {
    Off,
    On,
    Down,
}

/// km under callgrind relaying the first `n` messages of the mix with test-noop (or none),
/// exporting as `export` says; returns the instructions km executed.
fn count(
    env: &BenchEnv,
    plugin: bool,
    export: Export,
    sink: &Sink,
    down: &str,
    n: usize,
) -> Result<u64> {
    let dir = std::env::var_os("KM_BENCH_CALLGRIND_DIR")
        .map_or_else(|| env.dir().to_owned(), std::path::PathBuf::from);
    let tag = format!(
        "telemetry-{}-{}",
        if plugin { "test-noop" } else { "bare" },
        match export {
            Export::Off => "off",
            Export::On => "on",
            Export::Down => "down",
        }
    );
    let out = dir.join(format!("callgrind-{tag}-{n}.out"));
    let mut cmd = env.command(Path::new("valgrind"));
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(env.bin_dir.join("km"))
        .arg("monitor");
    match plugin {
        true => cmd
            .arg("--plugins-dir")
            .arg(env.single_plugin_dir("test-noop")),
        false => cmd.arg("--no-plugins"),
    };
    cmd.args(["--", "cat"]);
    match export {
        Export::Off => {}
        Export::On => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.url);
        }
        Export::Down => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", down);
        }
    }
    let msgs = messages(n);
    let expected: Vec<u8> = msgs.concat();
    let log = env.dir().join(format!("callgrind-{tag}.log"));
    pass_with_deadline(
        cmd,
        ClientStdio::Pipes,
        &msgs,
        &expected,
        &log,
        Duration::from_secs(900),
    )
    .with_context(|| format!("km under callgrind ({tag}); see {}", log.display()))?;
    if let (Export::On, Some(warning)) = (export, loss(&log)) {
        bail!("{tag}, {n} messages: km did not export everything: {warning}");
    }
    if plugin {
        env.check_run("only-test-noop")?;
    }
    total_ir(&out)
}

/// Instructions per message crossing km.
fn per_message(
    env: &BenchEnv,
    plugin: bool,
    export: Export,
    sink: &Sink,
    down: &str,
) -> Result<f64> {
    let few = count(env, plugin, export, sink, down, FEW)?;
    let many = count(env, plugin, export, sink, down, MANY)?;
    anyhow::ensure!(
        many > few,
        "{many} instructions for {MANY} messages, {few} for {FEW}"
    );
    Ok((many - few) as f64 / ((MANY - FEW) * 2) as f64)
}

/// Runs the `telemetry-callgrind` section.
pub(crate) fn instructions(env: &BenchEnv, _options: &Options, report: &mut Report) -> Result<()> {
    let Some(version) = valgrind_version() else {
        bail!("the telemetry-callgrind section needs valgrind on PATH (Debian: apt-get install valgrind)");
    };
    eprintln!("telemetry-callgrind ({version}): {FEW} and {MANY} messages of the relay's mix per configuration");
    let sink = Sink::start()?;
    let down = {
        let closed = TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", closed.local_addr()?)
    };
    // Under valgrind km runs ~50x slower: the last export gets a minute instead of a second,
    // and the queues room for every span of the run (the requests of this mix are never
    // answered, so the end of the session makes the spans of all of them at once, more than
    // the SDK's default queue of 2048 holds), so that a run delivers everything (checked in
    // `count`).
    let config = env.home.join("config.toml");
    let original = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    anyhow::ensure!(
        !original.contains("[telemetry]"),
        "{} already has a [telemetry] section",
        config.display()
    );
    std::fs::write(
        &config,
        format!("{original}\n[telemetry]\nflush_timeout_ms = 60000\nqueue_size = 16384\n"),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    // `KM_BENCH_TELEMETRY_CALLGRIND=on` counts test-noop with export off and on only (the
    // others' rows are left out): a quicker before/after of what export costs.
    let only_on = std::env::var("KM_BENCH_TELEMETRY_CALLGRIND").is_ok_and(|v| v == "on");
    let counted = (|| -> Result<[f64; 5]> {
        let off = per_message(env, true, Export::Off, &sink, &down)?;
        let on = per_message(env, true, Export::On, &sink, &down)?;
        if only_on {
            return Ok([off, on, f64::NAN, f64::NAN, f64::NAN]);
        }
        Ok([
            off,
            on,
            per_message(env, true, Export::Down, &sink, &down)?,
            per_message(env, false, Export::Off, &sink, &down)?,
            per_message(env, false, Export::On, &sink, &down)?,
        ])
    })();
    std::fs::write(&config, original).with_context(|| format!("restoring {}", config.display()))?;
    let [off, on, down_ir, bare_off, bare_on] = counted?;
    for (label, value, base, base_label) in [
        (
            "instructions per message, test-noop, export on",
            on,
            off,
            "export off",
        ),
        (
            "instructions per message, test-noop, collector down",
            down_ir,
            off,
            "export off",
        ),
        (
            "instructions per message, no plugins, export on",
            bare_on,
            bare_off,
            "export off (spliced)",
        ),
    ] {
        if value.is_nan() {
            continue;
        }
        report.add(Row {
            section: "telemetry-callgrind",
            figure: label.to_owned(),
            value: format!("{value:.0}"),
            baseline: format!("{base_label} {base:.0}"),
            ratio: (base > 0.0).then(|| value / base),
            target: None,
        });
    }
    Ok(())
}
