//! A real MCP session with a client and a server km did not write: the official MCP Python SDK
//! drives the official `mcp-server-everything` (npm) through the real `km monitor`, with
//! console-logger watching: initialize, tools/list, a tool call, a long call with progress, a
//! cancelled call, and a ping after it.
//!
//! The SDK and the server are installed by `tests/e2e/monitor/interop/install.sh` (CI runs it)
//! into `target/interop` (or `$KM_INTEROP_DIR`). When python3 or node is not on the machine at
//! all, the test says so loudly and passes; when they are but the install step was not run, it
//! fails and names the script.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use km_tests::KmEnv;
use serde_json::Value;

fn interop_dir() -> PathBuf {
    match std::env::var_os("KM_INTEROP_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/interop"),
    }
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_official_python_sdk_and_everything_server_talk_through_km() {
    if !on_path("python3") || !on_path("node") {
        eprintln!("SKIPPED: the interop test needs python3 and node, and this machine lacks them");
        return;
    }
    let dir = interop_dir();
    let python = dir.join("venv/bin/python");
    let server = dir.join("node_modules/.bin/mcp-server-everything");
    assert!(
        python.exists() && server.exists(),
        "the MCP SDK and server are not installed in {}: run sh tests/e2e/monitor/interop/install.sh",
        dir.display()
    );
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    let log = env.dir.path().join("console.jsonl");
    // The SDK starts km with a trimmed environment of its own (HOME, PATH, ...), as MCP clients
    // do, so console-logger's settings go in km's configuration and KM_HOME on the command line.
    let config = format!(
        "[plugins.console-logger]\noutput = {:?}\nformat = \"json\"\n",
        log.display().to_string()
    );
    std::fs::write(env.home.join("config.toml"), config).expect("writing config.toml");
    km_tests::chmod(&env.home.join("config.toml"), 0o600);
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/monitor/interop/client.py");
    let output = Command::new(&python)
        .arg(&client)
        .arg(km_tests::km_bin())
        .arg("--home")
        .arg(&env.home)
        .arg("--")
        .arg(&server)
        .arg("stdio")
        .output()
        .expect("the Python client starts");
    assert!(output.status.success(), "{}", km_tests::describe(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the client's JSON report");
    assert_eq!(report["echo"], "Echo: hello through km", "{report}");
    assert_eq!(
        report["progress"].as_array().map(Vec::len),
        Some(5),
        "{report}"
    );
    assert_eq!(report["cancelled_call_completed"], false, "{report}");
    assert_eq!(report["ping_after_cancel"], true, "{report}");
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"trigger-long-running-operation"),
        "{report}"
    );

    // What console-logger saw through km: the cancellation carries the correlation id of the
    // tools/call it cancels.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let cancel = lines
        .iter()
        .find(|l| l["method"] == "notifications/cancelled")
        .unwrap_or_else(|| panic!("no cancellation went through km:\n{logged}"));
    let corr = cancel["correlation_id"].as_str().unwrap_or_default();
    assert!(!corr.is_empty(), "the cancellation is correlated: {cancel}");
    assert!(
        lines.iter().any(|l| l["method"] == "tools/call"
            && l["kind"] == "request"
            && l["correlation_id"] == corr),
        "the cancellation names a tools/call request: {cancel}"
    );
    let responses = lines
        .iter()
        .filter(|l| l["kind"] == "response" && l["latency_us"].is_u64())
        .count();
    assert!(
        responses >= 5,
        "responses are paired with their requests:\n{logged}"
    );
}
