//! `km monitor` with real, signed plugins: the banner, console-logger watching a real MCP session
//! with km-demo-server, bytes untouched by framing, and misbehaving plugins (panic, hang, slow)
//! that cannot disturb the session. `--lossless` delivers every message even to test-slow.

use std::process::{Command, Stdio};

use km_tests::KmEnv;

use super::relay::mixed_messages;
use super::{assert_same_bytes, exchange};

/// `km monitor` (with plugins from the environment's KM_HOME) on `child`.
fn monitor(env: &KmEnv, km_args: &[&str], monitor_args: &[&str], child: &[&str]) -> Command {
    let mut cmd = env.km();
    cmd.args(km_args)
        .arg("monitor")
        .args(monitor_args)
        .arg("--")
        .args(child);
    cmd.env("KM_GRACE_MS", "300");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_banner_lists_loaded_and_refused_plugins() {
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    // A library without a signature beside it.
    let unsigned = env.plugins.join("libunsigned.so");
    std::fs::copy(km_tests::plugin_lib("test-noop"), &unsigned).expect("copy");
    km_tests::chmod(&unsigned, 0o644);
    let child = monitor(&env, &[], &[], &["cat"])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, Vec::new());
    let stderr = text(&stderr);
    assert!(status.success(), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("[PluginHandler] Loaded 1 plugin:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  ✓ console-logger v1.0.0 (Free tier)"),
        "{stderr}"
    );
    assert!(stderr.contains("  ✗ libunsigned.so: "), "{stderr}");

    let child = monitor(&env, &["-q"], &[], &["cat"])
        .spawn()
        .expect("km starts");
    let (_, _, stderr) = exchange(child, Vec::new());
    assert!(
        !text(&stderr).contains("PluginHandler"),
        "-q silences the banner"
    );
}

#[test]
fn console_logger_watches_a_real_mcp_session() {
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    let server = km_tests::bin_dir().join("km-demo-server");
    let script = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#,
    ]
    .join("\n")
        + "\n";
    let child = monitor(&env, &[], &[], &[server.to_str().expect("utf-8")])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, script.into_bytes());
    let stderr = text(&stderr);
    assert!(status.success(), "{stderr}");
    let answers: Vec<serde_json::Value> = text(&stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout carries only JSON-RPC"))
        .collect();
    let ids: Vec<i64> = answers.iter().filter_map(|a| a["id"].as_i64()).collect();
    assert_eq!(ids, [1, 2, 3, 4], "{answers:?}");
    for method in ["initialize", "tools/list", "tools/call", "ping"] {
        assert!(
            stderr.contains(method),
            "console-logger shows {method}: {stderr}"
        );
    }
}

#[test]
fn plugins_do_not_change_a_single_byte() {
    let env = KmEnv::new();
    env.install("test-noop", "test-noop");
    env.install("console-logger", "console-logger");
    let log = env.dir.path().join("console.log");
    let input = mixed_messages(100_000);
    let mut cmd = monitor(&env, &[], &[], &["cat"]);
    cmd.env("KM_CONSOLE_LOGGER_OUTPUT", &log)
        .env("KM_CONSOLE_LOGGER_FORMAT", "json");
    let (status, stdout, stderr) = exchange(cmd.spawn().expect("km starts"), input.clone());
    assert!(status.success(), "{}", text(&stderr));
    assert_same_bytes(&stdout, &input, "the echoed stream with plugins loaded");
    let logged = std::fs::read_to_string(&log).expect("console-logger's file");
    assert!(
        logged.lines().count() > 1000,
        "console-logger saw the traffic"
    );
}

#[test]
fn misbehaving_plugins_do_not_disturb_the_session() {
    let env = KmEnv::new();
    for name in ["test-panicky", "test-hang", "test-slow", "test-noop"] {
        env.install(name, name);
    }
    let input = mixed_messages(20_000);
    let child = monitor(&env, &[], &[], &["cat"])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, input.clone());
    let stderr = text(&stderr);
    assert!(status.success(), "{stderr}");
    assert_same_bytes(&stdout, &input, "the stream past misbehaving plugins");
    assert!(stderr.contains("Loaded 4 plugins"), "{stderr}");
    assert!(
        stderr.contains("test-panicky") && stderr.contains("disabled"),
        "the panic is reported: {stderr}"
    );
    assert!(
        stderr.contains("plugin test-hang"),
        "the hung plugin is reported: {stderr}"
    );
    assert!(
        stderr.contains("plugin test-slow missed"),
        "the slow plugin's drops are reported: {stderr}"
    );
    // km plugin-status shows what each plugin handled and missed in the last session. The
    // healthy plugin is not held back by the others: every message reached it or was counted as
    // missed (a loaded machine may make even a no-op fall behind a flood; nothing is lost
    // without a count).
    let slow = last_session(&env, "test-slow");
    assert!(slow["dropped"].as_u64() > Some(0), "{slow}");
    let noop = last_session(&env, "test-noop");
    let handled = noop["handled"].as_u64().unwrap_or(0);
    let dropped = noop["dropped"].as_u64().unwrap_or(0);
    assert_eq!(handled + dropped, 40_000, "{noop}");
    assert!(
        handled > dropped,
        "the no-op plugin handled most of the stream: {noop}"
    );
}

/// The `last_session` record `km plugin-status --json` shows for `plugin`.
fn last_session(env: &KmEnv, plugin: &str) -> serde_json::Value {
    let output = km_tests::run_ok(env.km().args(["plugin-status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    status
        .as_array()
        .and_then(|items| items.iter().find(|i| i["plugin"] == plugin))
        .map(|i| i["last_session"].clone())
        .unwrap_or_else(|| panic!("{plugin} is not in plugin-status: {status:#}"))
}

#[test]
fn lossless_delivers_every_message_to_a_slow_plugin() {
    let env = KmEnv::new();
    env.install("test-slow", "test-slow");
    let input: Vec<u8> = (0..100)
        .flat_map(|i| format!("{{\"jsonrpc\":\"2.0\",\"method\":\"n{i}\"}}\n").into_bytes())
        .collect();
    let child = monitor(&env, &[], &["--lossless"], &["cat"])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, input.clone());
    let stderr = text(&stderr);
    assert!(status.success(), "{stderr}");
    assert_same_bytes(&stdout, &input, "lossless stream");
    // 100 lines each way (cat echoes them).
    assert!(
        stderr.contains("test-slow handled 200 messages"),
        "{stderr}"
    );
    assert!(!stderr.contains("missed"), "{stderr}");
    let recorded = last_session(&env, "test-slow");
    assert_eq!(recorded["handled"].as_u64(), Some(200), "{recorded}");
    assert_eq!(recorded["dropped"].as_u64(), Some(0), "{recorded}");
}

#[test]
fn plugins_see_start_end_and_error_events() {
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    let child = monitor(&env, &[], &[], &["sh", "-c", "exit 3"])
        .spawn()
        .expect("km starts");
    let (status, _, stderr) = exchange(child, Vec::new());
    let stderr = text(&stderr);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("session start: {\"command\":[\"sh\",\"-c\",\"exit 3\"],\"pid\":"),
        "{stderr}"
    );
    assert!(
        stderr.contains("session end: {") && stderr.contains("\"exit_code\":3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"drops\":0") && stderr.contains("\"messages\":{"),
        "{stderr}"
    );

    // A server that cannot start is reported to the plugins too, then km exits 127.
    let child = monitor(&env, &[], &[], &["no-such-command-km-test"])
        .spawn()
        .expect("km starts");
    let (status, _, stderr) = exchange(child, Vec::new());
    let stderr = text(&stderr);
    assert_eq!(status.code(), Some(127), "{stderr}");
    assert!(
        stderr.contains("session error: {") && stderr.contains("\"context\":\"spawn\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("relay error: spawn: cannot start"),
        "handle_error too: {stderr}"
    );
    assert!(stderr.contains("\"exit_code\":127"), "{stderr}");
}
