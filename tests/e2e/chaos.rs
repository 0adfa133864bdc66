//! Chaos: the real `km` SIGKILLed at many points of an install and of a
//! monitor session. After each kill, what is on disk is either the old or the new state, never a
//! half-written file at a final name: the installed plugin verifies (old or new version), and
//! the next session reads the rollback record, the auth records and the session statistics.
//!
//! Kill points come from a seeded generator (the seed is printed, and `KM_CHAOS_SEED` replays
//! it; `KM_CHAOS_ROUNDS` runs more rounds than the default). Delays are spread over the time an
//! uninterrupted run takes, measured first, so that kills land before, inside and after the
//! writes; nothing asserts how long anything takes.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use km_tests::{chmod, describe, plugin_lib, run_ok, KmEnv};
use serde_json::Value;

/// A small deterministic generator (xorshift64*): the tests need reproducible kill points, not
/// good randomness.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("KM_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("chaos seed: KM_CHAOS_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A delay in `[0, max]`.
    fn delay(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % (micros + 1))
    }
}

fn rounds(default: usize) -> usize {
    std::env::var("KM_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Signs console-logger as `version` and packs it.
fn package(env: &KmEnv, version: &str) -> std::path::PathBuf {
    let work = env.dir.path().join(format!("chaos-{version}"));
    std::fs::create_dir_all(&work).expect("work dir");
    let lib = work.join("libconsole_logger.so");
    std::fs::copy(plugin_lib("console-logger"), &lib).expect("copy");
    chmod(&lib, 0o644);
    env.sign_with(&lib, &env.key, "console-logger", version, "free", &[]);
    let pkg = work.join(format!("console-logger-{version}.kmpkg"));
    run_ok(env.km_sign().args(["pack", "--out"]).arg(&pkg).arg(&lib));
    pkg
}

fn install_cmd(env: &KmEnv, pkg: &Path) -> Command {
    let mut cmd = env.km();
    cmd.args(["install-plugin", "--allow-downgrade"])
        .arg(pkg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The plugin directory holds the library and its signature (and perhaps temporaries a killed
/// install left, which the loader never reads), the library verifies, and its version is one of
/// `versions`.
fn assert_old_or_new(env: &KmEnv, versions: &[&str], round: usize) -> String {
    for entry in std::fs::read_dir(&env.plugins).expect("plugins dir") {
        let name = entry.expect("entry").file_name();
        let ok = name == OsStr::new("libconsole_logger.so")
            || name == OsStr::new("libconsole_logger.so.kmsig")
            || km_durable::is_temporary(&name)
            || name.to_string_lossy().starts_with(".km-install-");
        assert!(
            ok,
            "round {round}: unexpected file {name:?} in the plugin directory"
        );
    }
    let out = env
        .km()
        // Either version: the rounds install downgrades on purpose.
        .args(["verify-plugin", "--json", "--allow-downgrade"])
        .arg(env.plugins.join("libconsole_logger.so"))
        .output()
        .expect("km runs");
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("round {round}: no JSON ({e})\n{}", describe(&out)));
    assert_eq!(
        reports[0]["verified"],
        true,
        "round {round}: after a kill the installed plugin must still verify\n{}",
        describe(&out)
    );
    let version = reports[0]["version"].as_str().expect("version").to_owned();
    assert!(
        versions.contains(&version.as_str()),
        "round {round}: {version}"
    );
    version
}

#[test]
fn an_install_killed_anywhere_leaves_the_old_or_the_new_plugin() {
    let env = KmEnv::new();
    let v1 = package(&env, "1.0.0");
    let v2 = package(&env, "2.0.0");
    run_ok(&mut install_cmd(&env, &v1));
    // How long one install takes here, to spread the kills over it.
    let start = Instant::now();
    run_ok(&mut install_cmd(&env, &v2));
    let span = start.elapsed().mul_f32(1.5);
    let mut rng = Rng::from_env();
    let mut current = assert_old_or_new(&env, &["2.0.0"], 0);
    for round in 1..=rounds(30) {
        let next = if current == "1.0.0" { &v2 } else { &v1 };
        let mut child = install_cmd(&env, next).spawn().expect("km starts");
        std::thread::sleep(rng.delay(span));
        kill9(&mut child);
        current = assert_old_or_new(&env, &["1.0.0", "2.0.0"], round);
    }
    // A last, uninterrupted install sweeps up whatever the killed ones left.
    let last = if current == "1.0.0" { &v2 } else { &v1 };
    run_ok(&mut install_cmd(&env, last));
    let names: Vec<String> = std::fs::read_dir(&env.plugins)
        .expect("plugins dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporaries left behind: {names:?}");
}

/// Every JSON file under `dir` parses (nothing half-written at a final name).
fn assert_json_files_whole(dir: &Path, round: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            assert_json_files_whole(&path, round);
        } else if path.extension() == Some(OsStr::new("json")) {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                serde_json::from_slice::<Value>(&bytes).is_ok(),
                "round {round}: {} is not whole JSON: {:?}",
                path.display(),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

#[test]
fn a_monitor_killed_mid_session_leaves_state_the_next_session_reads() {
    let env = KmEnv::new();
    env.install("test-noop", "test-noop");
    env.install("console-logger", "console-logger");
    // An API key makes the refresher write auth records; every second, to hit those writes.
    env.write_config("api_key = \"km_test_chaos\"\n");
    let monitor = |env: &KmEnv| {
        let mut cmd = env.km();
        cmd.env("KM_REFRESH_INTERVAL_SECS", "1")
            .env("KM_GRACE_MS", "200")
            .args(["monitor", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    // One whole session first: its statistics must survive every killed session after it.
    let mut child = monitor(&env).spawn().expect("km starts");
    let start = Instant::now();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        for _ in 0..50 {
            stdin.write_all(line).expect("write");
        }
    }
    let status = child.wait().expect("km exits");
    assert!(status.success(), "{status:?}");
    let span = start
        .elapsed()
        .mul_f32(2.0)
        .max(Duration::from_millis(1500));
    let stats = env.home.join("state/sessions");
    assert!(stats.exists(), "the whole session wrote its statistics");
    let mut rng = Rng::from_env();
    for round in 1..=rounds(12) {
        let mut child = monitor(&env).spawn().expect("km starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            while stdin.write_all(line).is_ok() {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        std::thread::sleep(rng.delay(span));
        kill9(&mut child);
        let _ = writer.join();
        // The state the next session reads is whole...
        assert_json_files_whole(&env.home.join("state"), round);
        // ... and it reads it: the plugins verify against the rollback record, the status reads
        // the auth records and the session statistics.
        let status = env
            .km()
            .args(["plugin-status", "--json"])
            .output()
            .expect("km runs");
        assert!(
            status.status.success(),
            "round {round}\n{}",
            describe(&status)
        );
        let records: Value = serde_json::from_slice(&status.stdout).expect("JSON");
        assert!(
            records.as_array().is_some_and(|r| r.len() == 2),
            "{records:#}"
        );
        for record in records.as_array().expect("array") {
            assert!(
                record["last_session"].is_object(),
                "round {round}: the statistics of the whole session are still read: {record:#}"
            );
        }
        let list = env
            .km()
            .args(["list-plugins", "--json"])
            .output()
            .expect("km runs");
        let listed: Value = serde_json::from_slice(&list.stdout).expect("JSON");
        assert!(
            listed
                .as_array()
                .is_some_and(|l| l.iter().all(|p| p["verified"] == true)),
            "round {round}: {listed:#}"
        );
    }
    // And a whole session still runs.
    let mut child = monitor(&env).spawn().expect("km starts");
    drop(child.stdin.take());
    assert!(child.wait().expect("km exits").success());
}
