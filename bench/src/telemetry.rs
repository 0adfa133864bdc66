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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::env::{median, percentile, BenchEnv};
use crate::latency::Probe;
use crate::relay::{messages, pass};
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
    let log = env.dir.path().join("telemetry-stderr.log");
    let paths: [(bool, Option<&str>); 5] = [
        (true, None),
        (true, Some(&sink.url)),
        (true, Some(&down)),
        (false, None),
        (false, Some(&sink.url)),
    ];
    let mut times: [Vec<f64>; 5] = Default::default();
    for _ in 0..reps {
        for (i, (plugin, endpoint)) in paths.iter().enumerate() {
            let mut cmd = km(env, *plugin, *endpoint);
            times[i].push(pass(&mut cmd, &msgs, &expected, &log)?.seconds);
        }
    }
    let exports = sink.requests.load(Ordering::Relaxed);
    anyhow::ensure!(
        exports > 0,
        "the sink received no export: km exported nothing (see {})",
        log.display()
    );
    let [off, on, down_t, bare_off, bare_on] = times.map(|mut t| median(&mut t));
    let rate = |s: f64| format!("{:.0} MB/s, {:.0} msg/s", mb / s, n as f64 / s);
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

    let plog = |name: &str| env.dir.path().join(format!("telemetry-latency-{name}.log"));
    let mut direct = env.command(Path::new("cat"));
    direct.arg("-u");
    let mut probes = vec![
        Probe::start("direct", direct, &plog("direct"))?,
        Probe::start("km+test-noop", km(env, true, None), &plog("off"))?,
        Probe::start(
            "km+test-noop+export",
            km(env, true, Some(&sink.url)),
            &plog("on"),
        )?,
    ];
    let mut line = Vec::with_capacity(256);
    for round in 0..rounds + warmup {
        for probe in &mut probes {
            let dt = probe.round_trip(&mut line)?;
            if round >= warmup {
                probe.samples.push(dt);
            }
        }
    }
    for probe in &mut probes {
        probe.samples.sort_by(f64::total_cmp);
    }
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
