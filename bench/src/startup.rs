//! Start-up cost of signed plugins, measured in-process through the `km_cli` library so that each
//! phase is timed on its own: reading the file, hashing it (`km_signing`'s SHA-256), checking the
//! signature and manifest (`verify_library`, which hashes again inside), the whole check of km's
//! one `Verifier` (`check_in`), and its `load` (sealed memfd, dlopen, root module, plugin
//! creation, rollback record).
//!
//! N = 1, 6, 20 plugins of realistic size: copies of the real console-logger and api-logger
//! libraries, each under its own file name. The loader checks that a plugin calls itself what
//! its manifest signed, so every copy is signed under its library's real name; each copy is a
//! distinct memfd (a distinct inode), so the dynamic loader maps and relocates every copy afresh
//! — the same work as N distinct plugins of that size. `load_plugins` itself would refuse the
//! duplicate names, which is why the phases are driven here one by one.
//!
//! Hashing throughput: km's hash function against raw `ring` SHA-256 of the same bytes in memory.

use std::ffi::OsString;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use km_cli::home::KmHome;
use km_cli::host::{PluginHost, Verbosity};
use km_cli::verifier::{Verifier, SIGNATURE_SUFFIX};
use km_signing::{target_triple, verify_library, Policy, SignatureFile};

use crate::env::{make_dir, median, BenchEnv};

/// The bundled plugins the start-up figures load copies of: of realistic size (0.9 / 1.3 MB),
/// always these two, so that the figures stay comparable across rounds.
const REALISTIC: [&str; 2] = ["console-logger", "api-logger"];

/// km's table entry of the realistic plugin `name`.
fn realistic(name: &str) -> Result<&'static km_cli::bundled::Bundled> {
    km_cli::bundled::find(name).with_context(|| format!("{name} is not a bundled plugin"))
}
use crate::report::{Report, Row};
use crate::Options;

/// Per-phase totals over N plugins, in seconds.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    read: f64,
    hash: f64,
    verify: f64,
    check: f64,
    load: f64,
    bytes: u64,
}

/// Runs the start-up section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let reps = if options.quick { 3 } else { 9 };
    // Plugins write to stderr by default; console-logger is created (not initialized) here.
    for n in [1usize, 6, 20] {
        let phases = measure(env, n, reps)?;
        let per = |s: f64| s * 1e3 / n as f64;
        let beyond_hash = (phases.check - phases.hash) + phases.load;
        report.add(Row {
            section: "startup",
            figure: format!(
                "{n} plugins ({:.1} MB): check + load",
                phases.bytes as f64 / 1e6
            ),
            value: format!(
                "{:.2} ms = read {:.2} + hash {:.2} + signature+manifest {:.2} + rest of check {:.2} + load {:.2}",
                (phases.check + phases.load) * 1e3,
                phases.read * 1e3,
                phases.hash * 1e3,
                (phases.verify - phases.hash).max(0.0) * 1e3,
                (phases.check - phases.read - phases.verify).max(0.0) * 1e3,
                phases.load * 1e3
            ),
            baseline: format!("hash alone {:.2} ms", phases.hash * 1e3),
            ratio: None,
            target: Some((
                format!("{:.2} ms/plugin beyond hashing <= 2 ms", per(beyond_hash)),
                per(beyond_hash) <= 2.0,
            )),
        });
    }
    hashing(reps, report)
}

fn measure(env: &BenchEnv, n: usize, reps: usize) -> Result<Phases> {
    let dir = env.dir().join(format!("startup-{n}"));
    make_dir(&dir)?;
    // A KM_HOME sharing the bench's trusted key.
    let home_dir = env.own_home(&format!("startup-home-{n}"), None)?;
    let mut names = Vec::new();
    for i in 0..n {
        let plugin = realistic(REALISTIC[i % REALISTIC.len()])?;
        let file = km_signing::library_file_name(&format!("bench{i:02}"));
        env.install(
            plugin.crate_name,
            &dir.join(&file),
            plugin.name,
            plugin.tier.as_str(),
        )?;
        names.push(OsString::from(file));
    }
    let home = KmHome::resolve(Some(&home_dir))?;
    let mut verifier = Verifier::open(&home)?.allow_downgrade(true);
    let plugin_dir = verifier.open_dir(&dir)?;
    let policy = Policy {
        now: SystemTime::now(),
        target: target_triple(),
        abi_version: km_abi::ABI_VERSION,
        allow_downgrade: true,
        seen: Some(verifier.seen()),
    };
    // Checking is repeatable: the median of `reps` passes over all N. Loading is done once (a
    // library is never unloaded), on the checked bytes of the last pass.
    let mut samples: Vec<Phases> = Vec::new();
    let mut last = Vec::new();
    for _ in 0..reps {
        let mut p = Phases::default();
        last.clear();
        for name in &names {
            let t = Instant::now();
            let bytes = std::fs::read(dir.join(name))?;
            p.read += t.elapsed().as_secs_f64();
            p.bytes += bytes.len() as u64;
            let t = Instant::now();
            let digest = km_signing::manifest::sha256_hex(&bytes);
            p.hash += t.elapsed().as_secs_f64();
            std::hint::black_box(digest);
            let mut sig_name = name.clone();
            sig_name.push(SIGNATURE_SUFFIX);
            let sig_bytes = std::fs::read(dir.join(&sig_name))?;
            let t = Instant::now();
            let sig = SignatureFile::parse(&sig_bytes)?;
            verify_library(&bytes, &sig, verifier.trust(), &policy)?;
            p.verify += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let checked = verifier.check_in(&plugin_dir, name)?;
            p.check += t.elapsed().as_secs_f64();
            last.push(checked);
        }
        samples.push(p);
    }
    let med = |f: fn(&Phases) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
    let mut phases = Phases {
        read: med(|p| p.read),
        hash: med(|p| p.hash),
        verify: med(|p| p.verify),
        check: med(|p| p.check),
        load: 0.0,
        bytes: samples.first().map_or(0, |p| p.bytes),
    };
    let data = env.dir().join("plugin-data");
    for checked in last {
        // `km install-plugin` and `km setup` record a version as seen when they install it (the
        // installer's rollback check), so a session's load finds it recorded and writes nothing.
        // These files were copied in, not installed: record them as the installer would, so
        // that the load below is a session's and not the installer's fsync.
        verifier.record_seen(checked.verified())?;
        let name = checked.verified().manifest().name.clone();
        let host = PluginHost::new(&name, data.join(&name), Verbosity::Quiet, None);
        let t = Instant::now();
        let plugin = verifier.load(checked, host)?;
        phases.load += t.elapsed().as_secs_f64();
        // Never unloaded (abi_stable's rule); keep it alive to the end of the process.
        std::mem::forget(plugin);
    }
    Ok(phases)
}

/// km's hashing against raw ring SHA-256 over the same bytes, in memory.
fn hashing(reps: usize, report: &mut Report) -> Result<()> {
    let mut bytes = Vec::new();
    for name in REALISTIC {
        bytes.extend(km_tests::library(realistic(name)?.crate_name));
    }
    let rounds = reps.max(5) * 3;
    let time = |f: &dyn Fn()| {
        let mut xs: Vec<f64> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        median(&mut xs)
    };
    let raw = time(&|| {
        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, &bytes));
    });
    let km = time(&|| {
        std::hint::black_box(km_signing::manifest::sha256_hex(&bytes));
    });
    let mbps = |s: f64| bytes.len() as f64 / 1e6 / s;
    let ratio = mbps(km) / mbps(raw);
    report.add(Row {
        section: "startup",
        figure: format!("hashing throughput ({:.1} MB)", bytes.len() as f64 / 1e6),
        value: format!("{:.0} MB/s", mbps(km)),
        baseline: format!("raw ring SHA-256 {:.0} MB/s", mbps(raw)),
        ratio: Some(ratio),
        target: Some((">= 0.80x".to_owned(), ratio >= 0.8)),
    });
    Ok(())
}
