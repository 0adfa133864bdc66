//! What interception costs: the relay and the added round-trip latency with one pass-through
//! interceptor (the test-intercept plugin, signed with the `intercept` capability, answering
//! "pass" to everything it is shown), asking for `tools/call` only and for every line, beside
//! `cat | cat` and beside km without interceptors, in the same run.
//!
//! With an interceptor on a direction, km reads each line whole, numbers it, calls the plugin on
//! the pump's own thread (its budget enforced by the watchdog's baton: two uncontended lock
//! operations per call), then writes it; without one, it forwards each chunk as it comes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::env::{median, percentile, BenchEnv};
use crate::latency::Probe;
use crate::relay::{messages, pass};
use crate::report::{Report, Row};
use crate::Options;

/// A `KM_HOME` of its own with test-intercept configured by `settings` (a TOML table body),
/// trusting the bench's key.
fn intercept_home(env: &BenchEnv, label: &str, settings: &str) -> Result<PathBuf> {
    let home = env.dir.path().join(format!("home-intercept-{label}"));
    let plugins = home.join("plugins");
    let keys = home.join("trusted-keys");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(&keys)?;
    for dir in [&home, &plugins, &keys] {
        set_mode(dir, 0o700)?;
    }
    for entry in std::fs::read_dir(env.home.join("trusted-keys"))? {
        let entry = entry?;
        let to = keys.join(entry.file_name());
        std::fs::copy(entry.path(), &to)?;
        set_mode(&to, 0o600)?;
    }
    let lib = plugins.join(crate::env::lib_file_name("test-intercept"));
    std::fs::copy(env.plugin_lib("test-intercept")?, &lib)?;
    set_mode(&lib, 0o644)?;
    let mut sign = env.command(&env.bin_dir.join("km-sign"));
    sign.arg("sign")
        .arg("--key")
        .arg(env.key.with_extension("key"))
        .args([
            "--name",
            "test-intercept",
            "--version",
            crate::env::PLUGIN_VERSION,
            "--tier",
            "free",
            "--capability",
            "intercept",
        ])
        .arg(&lib);
    let out = sign.output().context("running km-sign")?;
    anyhow::ensure!(
        out.status.success(),
        "km-sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = home.join("config.toml");
    std::fs::write(&config, format!("[plugins.test-intercept]\n{settings}"))?;
    set_mode(&config, 0o600)?;
    Ok(home)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `km monitor -- cat` with the plugins and configuration of `home`.
fn km_with(env: &BenchEnv, home: &Path) -> std::process::Command {
    let mut cmd = env.km_monitor_in(Some(home.join("plugins")), &["cat"]);
    cmd.env("KM_HOME", home);
    cmd
}

/// Runs the interception section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let calls = intercept_home(env, "tools-call", "methods = [\"tools/call\"]\n")?;
    let everything = intercept_home(env, "all", "kinds = \"all\"\n")?;
    let (n, reps, rounds, warmup) = if options.quick {
        (3000, 1, 1500, 100)
    } else {
        (10_000, 5, 10_000, 500)
    };
    let msgs = messages(n);
    let expected: Vec<u8> = msgs.concat();
    let mb = expected.len() as f64 / 1e6;
    eprintln!("intercept: {n} messages, {mb:.1} MB, median of {reps} runs; {rounds} round trips");
    let log = env.dir.path().join("intercept-stderr.log");
    let mut times: [Vec<f64>; 4] = Default::default();
    for _ in 0..reps {
        let mut base = env.command(Path::new("sh"));
        base.args(["-c", "cat | cat"]);
        times[0].push(pass(&mut base, &msgs, &expected, &log)?.seconds);
        let mut bare = env.km_monitor(false, &["cat"]);
        times[1].push(pass(&mut bare, &msgs, &expected, &log)?.seconds);
        times[2].push(pass(&mut km_with(env, &calls), &msgs, &expected, &log)?.seconds);
        times[3].push(pass(&mut km_with(env, &everything), &msgs, &expected, &log)?.seconds);
    }
    let [base, bare, on_calls, on_all] = times.map(|mut t| median(&mut t));
    let rate = |s: f64| format!("{:.0} MB/s, {:.0} msg/s", mb / s, n as f64 / s);
    for (label, t, target) in [
        ("relay, interceptor on tools/call", on_calls, None),
        ("relay, interceptor on everything", on_all, Some(2.0)),
    ] {
        report.add(Row {
            section: "intercept",
            figure: label.to_owned(),
            value: rate(t),
            baseline: format!("cat|cat {}; km without {}", rate(base), rate(bare)),
            ratio: Some(t / base),
            target: target.map(|x: f64| (format!("time <= {x}x cat|cat"), t / base <= x)),
        });
    }

    let plog = |name: &str| env.dir.path().join(format!("intercept-latency-{name}.log"));
    let mut direct = env.command(Path::new("cat"));
    direct.arg("-u");
    let mut relay = env.command(Path::new("sh"));
    relay.args(["-c", "cat | cat | cat"]);
    let mut paths = vec![
        Probe::start("direct", direct, &plog("direct"))?,
        Probe::start("relay", relay, &plog("relay"))?,
        Probe::start("km", env.km_monitor(false, &["cat"]), &plog("km"))?,
        Probe::start("km+intercept(all)", km_with(env, &everything), &plog("all"))?,
        Probe::start(
            "km+intercept(tools/call)",
            km_with(env, &calls),
            &plog("calls"),
        )?,
    ];
    let mut line = Vec::with_capacity(256);
    for round in 0..rounds + warmup {
        for path in &mut paths {
            let dt = path.round_trip(&mut line)?;
            if round >= warmup {
                path.samples.push(dt);
            }
        }
    }
    for path in &mut paths {
        path.samples.sort_by(f64::total_cmp);
    }
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
