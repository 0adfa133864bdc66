//! The command a new user runs first: the official MCP Inspector CLI calls a tool of
//! the official server-everything through `km monitor`. The Inspector runs on Node 22, and Node
//! hands the server command (km) Unix socketpairs as stdin and stdout, not pipes. It runs three
//! times: `--no-plugins` with an empty `KM_HOME`, without the flag before anything is installed
//! (no `~/.km` at all), and with test-noop and console-logger installed and loaded. Only `HOME`
//! and `PATH` reach km, as from a Node client: km finds `KM_HOME` from `HOME`.
//!
//! `scripts/test` installs Node 22 (the `node-linux-<arch>` npm package) and the Inspector (at
//! the versions of `tests/interop/inspector/package-lock.json`) into `target/interop`, and sets
//! `KM_TEST_NODE22` and `KM_TEST_MCP_INSPECTOR`; server-everything is the one the Python interop
//! test uses (`KM_TEST_MCP_EVERYTHING`). Run by hand with `cargo test` and without those
//! variables, the test says why it does not run; in CI (`CI` set) their absence is a failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use km_tests::{km_bin, KmEnv, Watched};
use serde_json::Value;

/// The programs the test runs, as installed by `scripts/test`.
struct Tools {
    node22: PathBuf,
    inspector: PathBuf,
    server_everything: PathBuf,
}

/// The installed tools; `None` (after saying why) when the variables are not set outside CI.
fn tools() -> Option<Tools> {
    const VARS: [&str; 3] = [
        "KM_TEST_NODE22",
        "KM_TEST_MCP_INSPECTOR",
        "KM_TEST_MCP_EVERYTHING",
    ];
    let values: Vec<Option<PathBuf>> = VARS
        .iter()
        .map(|var| std::env::var_os(var).map(PathBuf::from))
        .collect();
    let missing: Vec<&str> = VARS
        .iter()
        .zip(&values)
        .filter(|(_, value)| value.is_none())
        .map(|(var, _)| *var)
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} not set: ./scripts/test installs Node 22, the MCP Inspector and server-everything \
             into target/interop and sets them (README)",
            missing.join(", ")
        );
        assert!(std::env::var_os("CI").is_none(), "in CI: {why}");
        eprintln!("skipping the MCP Inspector interop test: {why}");
        return None;
    }
    let [node22, inspector, server_everything] = [0, 1, 2].map(|i| {
        let path = values[i].clone().unwrap_or_default();
        assert!(
            path.is_file(),
            "{}={} does not exist: run ./scripts/test, which installs it",
            VARS[i],
            path.display()
        );
        path
    });
    Some(Tools {
        node22,
        inspector,
        server_everything,
    })
}

/// A directory for `PATH` in which `node` is Node 22 and `mcp-inspector`,
/// `mcp-server-everything` and `km` are the programs under test, as an npm install would put
/// them on a user's `PATH`.
fn bin_dir(tools: &Tools, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("creating bin/");
    for (name, target) in [
        ("node", tools.node22.clone()),
        ("mcp-inspector", tools.inspector.clone()),
        ("mcp-server-everything", tools.server_everything.clone()),
        ("km", km_bin()),
    ] {
        std::os::unix::fs::symlink(&target, bin.join(name))
            .unwrap_or_else(|e| panic!("linking {name} to {}: {e}", target.display()));
    }
    bin
}

/// Runs the command with `km_monitor_args` after `km monitor`, with only `HOME` and
/// `PATH` set; returns (stdout, stderr), asserting that it succeeded.
fn inspect(bin: &Path, home: &Path, km_monitor_args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(bin.join("mcp-inspector"));
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .args(["--cli", "--method", "tools/call", "--tool-name", "get-sum"])
        .args(["--tool-arg", "a=2", "b=3", "--", "km", "monitor"])
        .args(km_monitor_args)
        .args(["--", "mcp-server-everything", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let inspector = Watched::spawn(&mut cmd, Duration::from_secs(90));
    let mut stdout = inspector.take_stdout().expect("stdout is piped");
    let mut stderr = inspector.take_stderr().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut out = String::new();
    let _ = stdout.read_to_string(&mut out);
    let err = errors.join().expect("the stderr reader");
    let what = format!(
        "mcp-inspector ... -- km monitor {}",
        km_monitor_args.join(" ")
    );
    let status = inspector.wait(&what, || format!("stdout: {out}\nstderr: {err}"));
    assert!(
        status.success(),
        "{what}: {status:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    (out, err)
}

/// The text of the tool's answer in the Inspector's JSON output.
fn answer(stdout: &str) -> String {
    let value: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("the Inspector printed no JSON ({e}): {stdout}"));
    value["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {value:#}"))
        .to_owned()
}

#[test]
fn the_mcp_inspector_calls_a_tool_through_km_monitor_with_and_without_plugins() {
    let Some(tools) = tools() else {
        return;
    };
    let env = KmEnv::new();
    let bin = bin_dir(&tools, env.dir.path());

    // `--no-plugins`, with an empty KM_HOME.
    let empty_user = env.dir.path().join("empty-user");
    let empty_home = empty_user.join(".km");
    std::fs::create_dir_all(&empty_home).expect("an empty KM_HOME");
    km_tests::chmod(&empty_home, 0o700);
    let (out, err) = inspect(&bin, &empty_user, &["--no-plugins"]);
    assert_eq!(answer(&out), "The sum of 2 and 3 is 5.", "{err}");

    // Nothing installed yet: no ~/.km at all, no flag.
    let new_user = env.dir.path().join("new-user");
    std::fs::create_dir_all(&new_user).expect("a home");
    let (out, err) = inspect(&bin, &new_user, &[]);
    assert_eq!(answer(&out), "The sum of 2 and 3 is 5.", "{err}");

    // Plugins installed in ~/.km and loaded; console-logger logs to stderr, which the
    // Inspector passes on.
    env.install("test-noop", "test-noop");
    env.install("console-logger", "console-logger");
    let user = env.dir.path().join("user");
    std::fs::create_dir_all(&user).expect("a home");
    std::fs::rename(&env.home, user.join(".km")).expect("moving KM_HOME under HOME");
    let (out, err) = inspect(&bin, &user, &[]);
    assert_eq!(answer(&out), "The sum of 2 and 3 is 5.", "{err}");
    assert!(
        err.contains("console-logger v1.0.0") && err.contains("test-noop v1.0.0"),
        "both plugins loaded:\n{err}"
    );
    assert!(
        err.contains("tools/call"),
        "console-logger saw the call:\n{err}"
    );
}
