//! A real MCP session with a client and a server we did not write: the official MCP Python SDK
//! (`tests/interop/mcp_client.py`) drives the official `server-everything` from npm through
//! `km monitor`, with console-logger loaded and logging JSON lines to a file. The client must see
//! a normal session, and the plugin must have seen every message with the right direction, kind
//! and pairing, including progress notifications and a cancellation.
//!
//! `scripts/test` installs both (pinned) into `target/interop` and sets `KM_TEST_MCP_PYTHON` and
//! `KM_TEST_MCP_EVERYTHING`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use km_tests::{describe, km_bin, KmEnv};
use serde_json::Value;

fn interop_tools() -> (PathBuf, PathBuf) {
    let python = std::env::var_os("KM_TEST_MCP_PYTHON");
    let server = std::env::var_os("KM_TEST_MCP_EVERYTHING");
    match (python, server) {
        (Some(python), Some(server)) => (PathBuf::from(python), PathBuf::from(server)),
        _ => panic!(
            "KM_TEST_MCP_PYTHON and KM_TEST_MCP_EVERYTHING are not set: run the tests with \
             ./scripts/test, which installs the MCP Python SDK and server-everything (README)"
        ),
    }
}

#[test]
fn the_official_python_sdk_and_server_everything_talk_through_km_monitor() {
    let (python, server) = interop_tools();
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    let log = env.dir.path().join("console-logger.jsonl");
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mcp_client.py");

    // The SDK starts the server command with only a few variables (HOME, PATH, ...), as MCP
    // clients do: km must find its home from HOME alone, so KM_HOME is HOME/.km here and not set.
    let user_home = env.dir.path().join("user");
    std::fs::create_dir_all(&user_home).expect("user home");
    std::fs::rename(&env.home, user_home.join(".km")).expect("move KM_HOME under HOME");
    let output = Command::new(&python)
        .arg(&client)
        .arg(km_bin())
        .args(["monitor", "--server", "--"])
        .arg("node")
        .arg(&server)
        .arg("stdio")
        .env_remove("KM_HOME")
        .env("HOME", &user_home)
        .env("KM_CONSOLE_LOGGER_OUTPUT", &log)
        .env("KM_CONSOLE_LOGGER_FORMAT", "json")
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "the MCP session failed\n{}",
        describe(&output)
    );
    let observed: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("client printed no JSON ({e})\n{}", describe(&output)));
    assert_eq!(
        observed["echo"][0], "Echo: hello through km",
        "{observed:#}"
    );
    assert_eq!(
        observed["progress"].as_array().map(Vec::len),
        Some(3),
        "{observed:#}"
    );
    assert_eq!(observed["abandoned"], true, "{observed:#}");
    assert_eq!(observed["after_cancel_ping"], true, "{observed:#}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("console-logger v1.0.0 (Free tier)"),
        "banner on stderr:\n{stderr}"
    );

    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}\n{stderr}", log.display()));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let messages: Vec<&Value> = lines.iter().filter(|l| l.get("seq").is_some()).collect();
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events.first(), Some(&"start"), "{events:?}");
    assert_eq!(events.last(), Some(&"end"), "{events:?}");

    // Sequence numbers are unique and increasing.
    let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Every client request has exactly one response, paired by correlation id, after it.
    let mut requests: HashMap<String, &Value> = HashMap::new();
    let mut methods: Vec<&str> = Vec::new();
    for m in &messages {
        if m["direction"] == "request" && m["kind"] == "request" {
            let corr = m["correlation_id"].as_str().expect("corr").to_owned();
            assert!(!corr.is_empty(), "a request has a correlation id: {m}");
            assert!(
                requests.insert(corr, m).is_none(),
                "correlation ids are unique: {m}"
            );
            methods.push(m["method"].as_str().unwrap_or(""));
        }
    }
    for method in ["initialize", "tools/list", "tools/call", "ping"] {
        assert!(
            methods.contains(&method),
            "the plugin saw {method}: {methods:?}"
        );
    }
    assert_eq!(
        methods.iter().filter(|m| **m == "tools/call").count(),
        3,
        "{methods:?}"
    );
    let responses: Vec<&&Value> = messages
        .iter()
        .filter(|m| m["direction"] == "response" && m["kind"] == "response")
        .collect();
    let mut answered = 0;
    for r in &responses {
        let corr = r["correlation_id"].as_str().unwrap_or("");
        let request = requests
            .get(corr)
            .unwrap_or_else(|| panic!("response without its request: {r}"));
        assert_eq!(r["id"], request["id"], "paired by id: {r} / {request}");
        assert!(r["seq"].as_u64() > request["seq"].as_u64());
        assert!(
            r["latency_us"].as_u64().is_some(),
            "responses carry latency: {r}"
        );
        assert_eq!(
            r["method"], request["method"],
            "console-logger labels responses: {r}"
        );
        answered += 1;
    }
    // All but the abandoned call were answered (the server may or may not answer it).
    assert!(
        answered >= requests.len() - 1,
        "{answered} of {}",
        requests.len()
    );

    // Notifications both ways, with the right direction and kind.
    let notes = |dir: &str, method: &str| {
        messages
            .iter()
            .filter(|m| {
                m["direction"] == dir && m["kind"] == "notification" && m["method"] == method
            })
            .count()
    };
    assert_eq!(notes("request", "notifications/initialized"), 1);
    assert!(
        notes("response", "notifications/progress") >= 3,
        "progress notifications seen"
    );

    // The cancellation names the abandoned call, and shares its correlation id.
    let cancel = messages
        .iter()
        .find(|m| m["method"] == "notifications/cancelled")
        .expect("the plugin saw notifications/cancelled");
    assert_eq!(cancel["direction"], "request");
    assert_eq!(cancel["kind"], "notification");
    let cancelled = requests
        .get(cancel["correlation_id"].as_str().unwrap_or(""))
        .expect("names a request");
    assert_eq!(cancelled["method"], "tools/call", "{cancelled}");
}

/// The same client and server, twice, with tool-guard intercepting: the first session pins
/// server-everything's definitions, the second checks them against the pins, and the client
/// sees a normal session both times.
#[test]
fn the_official_python_sdk_and_server_everything_work_unchanged_through_tool_guard() {
    let (python, server) = interop_tools();
    let env = KmEnv::new();
    env.install_signed("tool-guard", "tool-guard", &["--capability", "intercept"]);
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mcp_client.py");
    let user_home = env.dir.path().join("user");
    std::fs::create_dir_all(&user_home).expect("user home");
    std::fs::rename(&env.home, user_home.join(".km")).expect("move KM_HOME under HOME");
    for session in 1..=2 {
        let output = Command::new(&python)
            .arg(&client)
            .arg(km_bin())
            .args(["monitor", "--server", "--"])
            .arg("node")
            .arg(&server)
            .arg("stdio")
            .env_remove("KM_HOME")
            .env("HOME", &user_home)
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "session {session}: the MCP session failed\n{}",
            describe(&output)
        );
        let observed: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("client printed no JSON ({e})\n{}", describe(&output)));
        assert_eq!(
            observed["echo"][0], "Echo: hello through km",
            "{observed:#}"
        );
        assert_eq!(
            observed["progress"].as_array().map(Vec::len),
            Some(3),
            "{observed:#}"
        );
        assert_eq!(observed["after_cancel_ping"], true, "{observed:#}");
        let tools = observed["tools"].as_array().map(Vec::len).unwrap_or(0);
        assert!(
            tools >= 3,
            "the client saw the server's tools: {observed:#}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("tool-guard v1.0.0 (Free tier)"), "{stderr}");
        assert!(
            !stderr.contains("[tool-guard] warning") && !stderr.contains("[tool-guard] error"),
            "session {session}: nothing drifted or failed\n{stderr}"
        );
        if session == 1 {
            assert!(stderr.contains("on first use"), "{stderr}");
        }
    }
    let servers = user_home.join(".km/state/plugins/tool-guard/servers");
    let pins: Vec<Value> = std::fs::read_dir(&servers)
        .unwrap_or_else(|e| panic!("{}: {e}", servers.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("JSON"))
        .collect();
    assert_eq!(pins.len(), 1, "one server pinned");
    assert!(
        pins[0]["tools"]["echo"]["trusted"].is_object(),
        "{:#}",
        pins[0]
    );
}
