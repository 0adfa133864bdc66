//! What interception costs: the relay and the added round-trip latency with one pass-through
//! interceptor (the test-intercept plugin, signed with the `intercept` capability, answering
//! "pass" to everything it is shown), asking for `tools/call` only and for every line, beside
//! `cat | cat` and beside km without interceptors, in the same run.
//!
//! With an interceptor on a direction, km reads each line whole, numbers it, calls the plugin on
//! the pump's own thread (its budget enforced by the watchdog's baton: two uncontended lock
//! operations per call), then writes it; without one, it forwards each chunk as it comes.

use std::path::PathBuf;

use anyhow::Result;
use km_tests::lib_file_name;

use crate::env::{percentile, BenchEnv};
use crate::latency::{interleave, Probe};
use crate::relay::{cat_cat, Stream};
use crate::report::{Report, Row};
use crate::Options;

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
    Ok(())
}
