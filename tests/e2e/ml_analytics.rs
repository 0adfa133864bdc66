//! ml-analytics end to end: the real plugin, stamped for a customer of a real
//! `km-api-server` on loopback and signed, loaded by the real `km monitor` in front of a real
//! MCP server (`km-test-mcp-server`, whose tools are slow or failing on demand, and the official
//! server-everything driven by the official Python SDK), then asked with
//! `km plugin ml-analytics report`.
//!
//! No timing is asserted: latencies are checked against bounds that hold on any machine (a call
//! that sleeps 20 ms takes at least 20 ms; km sees it return before the client does).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use km_abi::Tier;
use km_tests::{
    bin_dir, chmod, describe, headless, lib_file_name, library, run_ok, ApiServer, Customer, KmEnv,
};
use serde_json::{json, Value};

const CAROL: Customer = Customer {
    id: "cust_carol",
    api_key: "km_live_carol_0123456789",
};

/// A km home with ml-analytics installed for CAROL (or unstamped) and `km init` done.
struct Fixture {
    env: KmEnv,
    _api: ApiServer,
}

impl Fixture {
    fn new(tier: &str, stamped: bool) -> Fixture {
        let env = KmEnv::new();
        let api = ApiServer::builder(env.dir.path())
            .customers(&[(&CAROL, tier)])
            .start();
        if stamped {
            env.install_customer_build(
                "ml-analytics",
                "ml-analytics",
                Tier::Pro,
                &api,
                &CAROL,
                &[],
            );
        } else {
            env.place_signed(
                &env.plugins.join(lib_file_name("ml-analytics")),
                &library("ml-analytics"),
                "ml-analytics",
                "1.0.0",
                "pro",
                &[],
            );
        }
        env.init(CAROL.api_key, &api.url);
        Fixture { env, _api: api }
    }

    /// Appends `[plugins.ml-analytics]` settings to config.toml.
    fn settings(&self, toml: &str) {
        let path = self.env.home.join("config.toml");
        let mut text = std::fs::read_to_string(&path).expect("config.toml");
        text.push_str("\n[plugins.ml-analytics]\n");
        text.push_str(toml);
        std::fs::write(&path, text).expect("writing config.toml");
        chmod(&path, 0o600);
    }

    fn data_dir(&self) -> PathBuf {
        self.env.home.join("state/plugins/ml-analytics")
    }

    /// `km plugin ml-analytics ARGS...`.
    fn plugin(&self, args: &[&str]) -> Output {
        self.env
            .km()
            .args(["plugin", "ml-analytics"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("km runs")
    }

    /// `report --json ARGS...`, parsed.
    fn report(&self, args: &[&str]) -> Value {
        let output = self.plugin(&[&["report", "--json"], args].concat());
        assert!(
            output.status.success(),
            "{}\n--- the data directory ---\n{}",
            describe(&output),
            listing(&self.data_dir())
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("report --json printed no JSON ({e})\n{}", describe(&output))
        })
    }

    /// Starts `km monitor -- km-test-mcp-server`.
    fn session(&self) -> Client {
        self.session_with(&[])
    }

    /// [`Fixture::session`] with extra environment variables.
    fn session_with(&self, vars: &[(&str, &Path)]) -> Client {
        let mut cmd = self.env.km();
        for (name, value) in vars {
            cmd.env(name, value);
        }
        cmd.arg("monitor")
            .arg("--")
            .arg(bin_dir().join("km-test-mcp-server"))
            .env("KM_GRACE_MS", "300")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Client::start(cmd.spawn().expect("km monitor starts"))
    }
}

/// An MCP client speaking through `km monitor`.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    stderr: std::thread::JoinHandle<String>,
    next_id: u64,
    /// Round trips of the successful calls, by tool, as this client measured them.
    round_trips: Vec<(String, Duration)>,
}

impl Client {
    fn start(mut child: Child) -> Client {
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut client = Client {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            next_id: 1,
            round_trips: Vec::new(),
        };
        client.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}),
        );
        client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        client.request("tools/list", json!({}));
        client
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("the session is open");
        writeln!(stdin, "{message}").expect("writing to km");
        stdin.flush().expect("flushing to km");
    }

    /// Sends a request and waits for its response; progress notifications are counted.
    fn request(&mut self, method: &str, params: Value) -> (Value, Duration, usize) {
        let id = self.next_id;
        self.next_id += 1;
        let started = Instant::now();
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let mut progress = 0;
        loop {
            let message = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no answer to {method} {id} within a minute"));
            if message["id"] == id {
                return (message, started.elapsed(), progress);
            }
            if message["method"] == "notifications/progress" {
                progress += 1;
            }
        }
    }

    /// `tools/call` of `tool` with `arguments`; asserts the outcome it asked for.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let fails = arguments.get("fail").is_some();
        let (answer, rtt, _) =
            self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        if !fails {
            assert_eq!(answer["result"]["isError"], false, "{answer}");
            self.round_trips.push((tool.to_owned(), rtt));
        }
        answer
    }

    /// Closes the client's side and waits for km: (success, stderr).
    fn close(mut self) -> (bool, String) {
        drop(self.stdin.take());
        let status = km_tests::wait_within(&mut self.child, Duration::from_secs(60))
            .expect("km exits within a minute");
        (status.success(), self.stderr.join().expect("stderr reader"))
    }

    /// The round trips this client measured for `tool`, sorted (ms).
    fn round_trips_ms(&self, tool: &str) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .round_trips
            .iter()
            .filter(|(t, _)| t == tool)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

/// The files under `dir` with their sizes, for failure messages.
fn listing(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.push_str(&listing(&path));
            } else {
                let size = entry.metadata().map_or(0, |m| m.len());
                out.push_str(&format!("{} ({size} bytes)\n", path.display()));
            }
        }
    }
    out
}

fn tool<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["tool"] == name))
        .unwrap_or_else(|| panic!("no tool {name} in {report:#}"))
}

fn anomaly_kinds(report: &Value) -> Vec<(String, String)> {
    report["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["tool"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The session every test warms up with: 25 calls of `work` taking 20 ms, 4 of `echo`, 3 of
/// `progress` with 3 progress notifications each, 6 of `flaky` of which 3 fail.
fn normal_session(fixture: &Fixture) -> Client {
    let mut client = fixture.session();
    for _ in 0..25 {
        client.call("work", json!({"delay_ms": 20}));
    }
    for i in 0..4 {
        client.call("echo", json!({"text": format!("hello {i}"), "delay_ms": 0}));
    }
    for i in 0..3 {
        let (answer, _, progress) = client.request(
            "tools/call",
            json!({"name": "progress", "arguments": {"delay_ms": 30, "progress": 3},
                   "_meta": {"progressToken": format!("p{i}")}}),
        );
        assert_eq!(answer["result"]["isError"], false);
        assert_eq!(progress, 3);
    }
    for i in 0..6 {
        let args = if i % 2 == 0 {
            json!({"fail": "tool"})
        } else {
            json!({})
        };
        let answer = client.call("flaky", args);
        assert!(answer.get("result").is_some(), "{answer}");
    }
    client
}

#[test]
fn a_session_of_known_calls_is_reported_with_its_counts_and_percentiles() {
    let fixture = Fixture::new("pro", true);
    let client = normal_session(&fixture);
    let work_rtts = client.round_trips_ms("work");
    let (ok, stderr) = client.close();
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("anomaly"),
        "a normal session raises no anomaly:\n{stderr}"
    );

    let report = fixture.report(&[]);
    let work = tool(&report, "work");
    assert_eq!(
        (work["calls"].as_u64(), work["errors"].as_u64()),
        (Some(25), Some(0)),
        "{work}"
    );
    // km measures from reading the request to reading the response: at least the 20 ms the
    // server sleeps, at most what the client measured around it (1% sketch error either way).
    let median_rtt = work_rtts[work_rtts.len() / 2];
    let max_rtt = work_rtts[work_rtts.len() - 1];
    for q in ["p50_ms", "p95_ms", "p99_ms"] {
        let v = work[q].as_f64().unwrap_or_else(|| panic!("{q} in {work}"));
        assert!(v >= 20.0 * 0.99, "{q} {v} < the server's 20 ms");
        assert!(
            v <= max_rtt * 1.01,
            "{q} {v} > the client's slowest round trip {max_rtt}"
        );
    }
    let p50 = work["p50_ms"].as_f64().expect("p50");
    assert!(
        p50 <= median_rtt * 1.01,
        "p50 {p50} > the client's median {median_rtt}"
    );
    assert!(work["p50_ms"].as_f64() <= work["p95_ms"].as_f64());
    assert!(work["p95_ms"].as_f64() <= work["p99_ms"].as_f64());

    let echo = tool(&report, "echo");
    assert_eq!(echo["calls"], 4);
    let flaky = tool(&report, "flaky");
    assert_eq!(
        (flaky["calls"].as_u64(), flaky["errors"].as_u64()),
        (Some(6), Some(3)),
        "{flaky}"
    );
    assert_eq!(flaky["errors_by_type"]["tool"], 3, "{flaky}");
    let progress = tool(&report, "progress");
    assert_eq!(progress["progress"]["notifications"], 9, "{progress}");
    assert_eq!(progress["progress"]["calls"], 3, "{progress}");
    let methods: Vec<&str> = report["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["method"].as_str())
        .collect();
    assert!(
        methods.contains(&"initialize") && methods.contains(&"tools/list"),
        "{methods:?}"
    );
    assert_eq!(
        report["anomalies"],
        json!([]),
        "a normal session raises no anomaly"
    );
    let server = &report["servers"][0];
    assert!(
        server["label"]
            .as_str()
            .unwrap_or_default()
            .contains("km-test-mcp-server"),
        "{server}"
    );

    // The statistics survive into the next session, and add up.
    let mut client = fixture.session();
    for _ in 0..5 {
        client.call("work", json!({"delay_ms": 20}));
    }
    let (ok, stderr) = client.close();
    assert!(ok, "{stderr}");
    let report = fixture.report(&[]);
    assert_eq!(tool(&report, "work")["calls"], 30);
    assert_eq!(tool(&report, "flaky")["calls"], 6);

    // The table and the filters.
    let table = fixture.plugin(&["report", "--since", "1h"]);
    assert!(table.status.success(), "{}", describe(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("TOOLS") && text.contains("work") && text.contains("flaky"),
        "{text}"
    );
    let none = fixture.report(&["--server", "no-such-server"]);
    assert_eq!(none["tools"], json!([]));
    let bad = fixture.plugin(&["report", "--since", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since"),
        "{}",
        describe(&bad)
    );
}

#[test]
fn a_slow_call_an_error_burst_and_a_first_time_tool_each_raise_one_anomaly() {
    let fixture = Fixture::new("pro", true);
    let (ok, stderr) = normal_session(&fixture).close();
    assert!(ok, "{stderr}");
    assert_eq!(fixture.report(&[])["anomalies"], json!([]));

    // console-logger logs the events other plugins emit: ml-analytics' anomalies must be there.
    fixture.env.install("console-logger", "console-logger");
    let events = fixture.env.dir.path().join("console-logger.jsonl");
    let mut client = fixture.session_with(&[
        ("KM_CONSOLE_LOGGER_OUTPUT", &events),
        ("KM_CONSOLE_LOGGER_FORMAT", Path::new("json")),
    ]);
    for _ in 0..5 {
        client.call("work", json!({"delay_ms": 20}));
    }
    // 50 times the usual 20 ms.
    client.call("work", json!({"delay_ms": 1000}));
    for _ in 0..10 {
        let answer = client.call("work", json!({"fail": "rpc"}));
        assert_eq!(answer["error"]["code"], -32603, "{answer}");
    }
    client.call("brand_new_tool", json!({}));
    let (ok, stderr) = client.close();
    assert!(ok, "{stderr}");

    let report = fixture.report(&[]);
    let mut kinds = anomaly_kinds(&report);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("error_rate".to_owned(), "work".to_owned()),
            ("first_time_tool".to_owned(), "brand_new_tool".to_owned()),
            ("latency".to_owned(), "work".to_owned()),
        ],
        "{:#}",
        report["anomalies"]
    );
    let latency = report["anomalies"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "latency"))
        .expect("the latency anomaly");
    let observed = latency["observed"].as_f64().expect("observed");
    assert!(observed >= 1000.0 * 0.99, "{latency}");
    assert!(
        latency["expected"]["high"].as_f64().expect("high") < observed,
        "{latency}"
    );
    assert_eq!(latency["unit"], "ms");
    // Each anomaly is also a line on km's log.
    for kind in ["latency", "error_rate", "first_time_tool"] {
        assert!(
            stderr.contains(&format!("anomaly ({kind})")),
            "{kind} not logged:\n{stderr}"
        );
    }
    let work = tool(&report, "work");
    assert_eq!(work["calls"], 25 + 16);
    assert_eq!(work["errors_by_type"]["rpc"]["-32603"], 10, "{work}");
    // Each is an `anomaly` event through km, as the other plugins receive it.
    let log = std::fs::read_to_string(&events).expect("console-logger's log");
    let mut emitted: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["event"] == "plugin" && e["data"]["plugin"] == "ml-analytics")
        .map(|e| {
            assert_eq!(e["data"]["kind"], "anomaly", "{e}");
            e["data"]["data"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    emitted.sort();
    assert_eq!(
        emitted,
        ["error_rate", "first_time_tool", "latency"],
        "{log}"
    );
    // The records are in the data directory.
    let records: usize = std::fs::read_dir(fixture.data_dir().join("anomalies"))
        .expect("the anomalies directory")
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path())
                .expect("records")
                .lines()
                .count()
        })
        .sum();
    assert_eq!(records, 3);
}

#[test]
fn two_concurrent_sessions_lose_no_counts() {
    let fixture = Fixture::new("pro", true);
    // Flushing every 100 ms makes the two sessions merge into the same files many times over.
    fixture.settings("flush_interval_ms = 100\n");
    let mut a = fixture.session();
    let mut b = fixture.session();
    for i in 0..40 {
        a.call("echo", json!({"text": format!("a{i}"), "delay_ms": 3}));
        b.call("echo", json!({"text": format!("b{i}"), "delay_ms": 3}));
    }
    let (ok_a, stderr_a) = a.close();
    let (ok_b, stderr_b) = b.close();
    assert!(ok_a && ok_b, "{stderr_a}\n{stderr_b}");
    let report = fixture.report(&[]);
    assert_eq!(tool(&report, "echo")["calls"], 80, "{report:#}");
    let tools_list = report["methods"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["method"] == "tools/list"))
        .expect("tools/list");
    assert_eq!(tools_list["calls"], 2);
}

#[test]
fn without_a_pro_subscription_nothing_is_recorded_and_the_status_says_why() {
    for (tier, stamped, reason) in [
        ("pro", false, "carries no Kilometers API key"),
        ("free", true, "needs Pro"),
    ] {
        let fixture = Fixture::new(tier, stamped);
        let (ok, stderr) = normal_session(&fixture).close();
        assert!(ok, "{stderr}");
        let status = run_ok(fixture.env.km().args(["plugin-status", "--json"]));
        let records: Value = serde_json::from_slice(&status.stdout).expect("plugin-status --json");
        let record = records
            .as_array()
            .and_then(|r| r.iter().find(|r| r["plugin"] == "ml-analytics"))
            .cloned()
            .unwrap_or_else(|| panic!("no ml-analytics in {records:#}"));
        assert_eq!(record["authorized"], false, "{record:#}");
        let why = record["reason"].as_str().unwrap_or_default();
        assert!(
            why.contains(reason),
            "{tier}: reason {why:?} lacks {reason:?}"
        );
        let data = fixture.data_dir();
        for recorded in ["stats", "anomalies", "model.json", "store.lock"] {
            assert!(
                !data.join(recorded).exists(),
                "{tier}: {recorded} was written"
            );
        }
        let report = fixture.plugin(&["report", "--json"]);
        assert!(report.status.success(), "{}", describe(&report));
        let value: Value = serde_json::from_slice(&report.stdout).expect("JSON");
        assert_eq!(value["tools"], json!([]));
    }
}

#[test]
fn the_html_report_renders_in_headless_chromium_without_errors() {
    let fixture = Fixture::new("pro", true);
    let (ok, stderr) = normal_session(&fixture).close();
    assert!(ok, "{stderr}");
    let mut client = fixture.session();
    client.call("work", json!({"delay_ms": 1000}));
    client.call("fresh_tool", json!({}));
    let (ok, stderr) = client.close();
    assert!(ok, "{stderr}");

    let page = fixture.env.dir.path().join("report.html");
    let output = fixture.plugin(&["report", "--html", &page.to_string_lossy()]);
    assert!(output.status.success(), "{}", describe(&output));
    let html = std::fs::read_to_string(&page).expect("the page was written");
    assert!(
        html.contains("default-src 'none'"),
        "the page forbids every load"
    );

    let profile = fixture.env.dir.path().join("chromium-profile");
    let url = format!("file://{}", page.display());
    let dom = headless(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(dom.status.success(), "{}", describe(&dom));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(r#"data-status="rendered""#),
        "the page did not finish drawing:\n{dom}"
    );
    assert!(
        !dom.contains("data-errors="),
        "the page reported errors:\n{dom}"
    );
    for name in ["work", "echo", "flaky", "progress", "fresh_tool"] {
        assert!(
            dom.contains(&format!(r#"data-tool="{name}""#)),
            "{name} is not shown"
        );
    }
    assert!(dom.matches("<svg").count() >= 5, "the charts are missing");
    assert!(
        dom.contains(r#"data-kind="latency""#),
        "the slow call is not on the timeline"
    );
    assert!(dom.contains(r#"data-kind="first_time_tool""#));

    // A screenshot among the test's artefacts, for people.
    let artefacts = bin_dir().join("ml-analytics");
    std::fs::create_dir_all(&artefacts).expect("the artefacts directory");
    let shot = artefacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let output = headless(&profile)
        .arg("--window-size=1280,2000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "{}", describe(&output));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::copy(&page, artefacts.join("report.html")).expect("keeping the page");
}

/// Interop tools, as `scripts/test` installs them (see `interop.rs`).
fn interop_tools() -> (PathBuf, PathBuf) {
    match (
        std::env::var_os("KM_TEST_MCP_PYTHON"),
        std::env::var_os("KM_TEST_MCP_EVERYTHING"),
    ) {
        (Some(python), Some(server)) => (PathBuf::from(python), PathBuf::from(server)),
        _ => panic!(
            "KM_TEST_MCP_PYTHON and KM_TEST_MCP_EVERYTHING are not set: run the tests with \
             ./scripts/test (README)"
        ),
    }
}

#[test]
fn a_real_sdk_session_with_server_everything_is_counted_without_anomalies() {
    let (python, server) = interop_tools();
    let fixture = Fixture::new("pro", true);
    // The SDK passes the server command only HOME, PATH and the like: KM_HOME is HOME/.km for
    // the sessions (moved there, as the interop test does, and back for the report).
    let user_home = fixture.env.dir.path().join("user");
    std::fs::create_dir_all(&user_home).expect("user home");
    std::fs::rename(&fixture.env.home, user_home.join(".km")).expect("KM_HOME to HOME/.km");
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mcp_client.py");
    for _ in 0..2 {
        let output = Command::new(&python)
            .arg(&client)
            .arg(km_tests::km_bin())
            .args(["monitor", "--"])
            .arg("node")
            .arg(&server)
            .arg("stdio")
            .env_remove("KM_HOME")
            .env("HOME", &user_home)
            .output()
            .expect("python runs");
        assert!(output.status.success(), "{}", describe(&output));
    }
    std::fs::rename(user_home.join(".km"), &fixture.env.home).expect("HOME/.km back to KM_HOME");
    let report = fixture.report(&[]);
    assert_eq!(tool(&report, "echo")["calls"], 2, "{report:#}");
    let long = tool(&report, "trigger-long-running-operation");
    assert_eq!(long["calls"], 4, "{long}");
    // The abandoned call of each session was cancelled by the SDK.
    assert_eq!(long["errors_by_type"]["cancelled"], 2, "{long}");
    assert_eq!(
        long["progress"]["notifications"].as_u64().map(|n| n >= 6),
        Some(true),
        "{long}"
    );
    assert_eq!(report["anomalies"], json!([]), "{:#}", report["anomalies"]);
}
