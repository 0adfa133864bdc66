//! Telemetry end to end: the real `km monitor` exports OTLP over http/protobuf to a
//! real receiver on loopback, `tests/otlp/receiver.py`, which decodes with the official
//! OpenTelemetry protobuf definitions (`opentelemetry-proto`, installed by scripts/test beside
//! the MCP SDK) and writes what it decoded as JSON lines.
//!
//! A session with real signed plugins against `km-test-mcp-server` (tool calls, a JSON-RPC
//! error, a tool error, a blocked call, a redacted one) yields the spans of the MCP semantic
//! conventions: names, kinds, attributes, the parent from `_meta`, the link to the session, the
//! verdicts and plugin events; the duration histogram arrives with the conventions' buckets,
//! and km's own metrics arrive. A session against the official `server-everything` shows the
//! mirror image (a sampling request from the server), configured by environment alone. With a
//! Collector that is down or hangs, the MCP stream is byte for byte what it is without
//! telemetry and the session ends without waiting for it. `km stats` counts a tampered plugin's
//! refusal by check and authentication outcomes against the reference API.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use km_tests::{bin_dir, describe, recv_until, run_ok, wait_within, ApiServer, Customer, KmEnv};
use serde_json::{json, Value};

/// The conventions' bucket boundaries for the MCP duration histograms.
const MCP_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn python() -> PathBuf {
    match std::env::var_os("KM_TEST_MCP_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "KM_TEST_MCP_PYTHON is not set: run the tests with ./scripts/test, which installs \
             the MCP Python SDK and opentelemetry-proto into target/interop (README)"
        ),
    }
}

/// The OTLP receiver, killed when dropped.
struct Receiver {
    child: Child,
    url: String,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, name: &str, hang: bool) -> Receiver {
        let out = dir.join(format!("{name}.jsonl"));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).arg(&out);
        if hang {
            cmd.arg("--hang");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let mut port = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut port)
            .expect("the receiver prints its port");
        let port: u16 = port
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("receiver port {port:?}: {e}"));
        Receiver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            out,
        }
    }

    fn entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }

    /// Every span received, each with the attributes of its resource as `resource`.
    fn spans(&self) -> Vec<Value> {
        let mut spans = Vec::new();
        for entry in self.entries() {
            assert_eq!(
                entry.get("error"),
                None,
                "the receiver could not decode: {entry}"
            );
            if entry["path"] != "/v1/traces" {
                continue;
            }
            for rs in entry["request"]["resource_spans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for ss in rs["scope_spans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["resource"] = rs["resource"]["attributes"].clone();
                        spans.push(span);
                    }
                }
            }
        }
        spans
    }

    /// Every metric received (a metric exported twice appears twice).
    fn metrics(&self) -> Vec<Value> {
        let mut metrics = Vec::new();
        for entry in self.entries() {
            if entry["path"] != "/v1/metrics" {
                continue;
            }
            for rm in entry["request"]["resource_metrics"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for sm in rm["scope_metrics"].as_array().into_iter().flatten() {
                    metrics.extend(sm["metrics"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        metrics
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OTLP attribute list as a map of key to its value's JSON (`{"string_value": ...}` ->
/// the string, numbers as protobuf's JSON writes them).
fn attributes(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((kv["key"].as_str()?.to_owned(), value))
        })
        .collect()
}

fn attr(item: &Value, key: &str) -> Option<String> {
    attributes(&item["attributes"])
        .get(key)
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// An interactive MCP client on `km monitor`'s stdio.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// How a session ended.
struct Ended {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Session {
    fn start(mut cmd: Command) -> Session {
        cmd.env("KM_GRACE_MS", "300")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("km starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn send(&mut self, message: &Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.stdin
            .as_mut()
            .expect("stdin is open")
            .write_all(&line)
            .expect("km reads its stdin");
    }

    /// Reads messages until one satisfies `wanted`, which it returns.
    fn read_until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let stdout = &mut self.stdout;
        let line = recv_until(&self.lines, Duration::from_secs(60), |line| {
            stdout.extend_from_slice(line);
            serde_json::from_slice::<Value>(line).is_ok_and(|message| wanted(&message))
        })
        .unwrap_or_else(|| panic!("no {what} from km within 60 s"));
        serde_json::from_slice(&line).expect("a message it parsed before")
    }

    /// Sends request `message` and reads until its answer.
    fn call(&mut self, message: Value) -> Value {
        let id = message["id"].clone();
        self.send(&message);
        self.read_until(&format!("answer to {id}"), |m| {
            m["id"] == id && (m.get("result").is_some() || m.get("error").is_some())
        })
    }

    /// Closes stdin and waits for km. A km still running after a minute (whatever it waits
    /// for) fails the test: the exporters' timeout is set far beyond that.
    fn end(mut self) -> Ended {
        drop(self.stdin.take());
        let Some(status) = wait_within(&mut self.child, Duration::from_secs(60)) else {
            let _ = self.child.kill();
            panic!("km did not end within 60 s of its client closing stdin");
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.extend_from_slice(&line);
        }
        Ended {
            status,
            stdout: self.stdout,
            stderr: String::from_utf8_lossy(&self.stderr.join().expect("stderr reader"))
                .into_owned(),
        }
    }
}

fn initialize(capabilities: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": capabilities,
        "clientInfo": {"name": "km-e2e", "version": "1"}}})
}

fn tool_call(id: u64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}})
}

/// The session of the km-test-mcp-server tests: initialize, a tool call with a trace context in
/// `_meta`, a JSON-RPC error, a tool error, a call test-intercept blocks and one it redacts.
fn script(session: &mut Session) {
    let init = session.call(initialize(json!({})));
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    session.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let mut echo = tool_call(2, "echo", json!({"text": "hello"}));
    echo["params"]["_meta"] = json!({"traceparent": format!("00-{TRACE}-{PARENT}-01")});
    let answer = session.call(echo);
    assert_eq!(answer["result"]["content"][0]["text"], "hello", "{answer}");
    let answer = session.call(tool_call(3, "work", json!({"fail": "rpc"})));
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    let answer = session.call(tool_call(4, "work", json!({"fail": "tool"})));
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let answer = session.call(tool_call(5, "echo", json!({"text": "FORBIDDEN"})));
    assert!(answer.get("error").is_some(), "blocked by km: {answer}");
    let answer = session.call(tool_call(6, "echo", json!({"text": "a SECRET here"})));
    assert_eq!(
        answer["result"]["content"][0]["text"], "a [REDACTED] here",
        "{answer}"
    );
}

const INTERCEPT_SETTINGS: &str = r#"
[plugins.test-intercept]
directions = "client-to-server"
methods = ["tools/call"]
block = "FORBIDDEN"
replace = ["SECRET", "[REDACTED]"]
emit = true
"#;

/// An environment with test-intercept (blocking and redacting tool calls) and console-logger.
fn plugins_env() -> KmEnv {
    let env = KmEnv::new();
    env.install_signed(
        "test-intercept",
        "test-intercept",
        &["--capability", "intercept"],
    );
    env.install("console-logger", "console-logger");
    env
}

/// `km monitor` on km-test-mcp-server, which records what it receives in `record`.
fn monitor_test_server(env: &KmEnv, record: &Path) -> Command {
    let server = bin_dir().join("km-test-mcp-server");
    let mut cmd = env.km();
    cmd.args(["monitor", "--", "sh", "-c"]).arg(format!(
        "tee '{}' | exec '{}'",
        record.display(),
        server.display()
    ));
    cmd.env(
        "KM_CONSOLE_LOGGER_OUTPUT",
        env.dir.path().join("console.log"),
    );
    cmd
}

fn find<'a>(spans: &'a [Value], name: &str, kind: &str, id: Option<&str>) -> &'a Value {
    spans
        .iter()
        .find(|s| {
            s["name"] == name
                && s["kind"] == kind
                && id.is_none_or(|id| attr(s, "jsonrpc.request.id").as_deref() == Some(id))
        })
        .unwrap_or_else(|| {
            let all: Vec<String> = spans
                .iter()
                .map(|s| format!("{} {}", s["name"], s["kind"]))
                .collect();
            panic!("no {kind} span {name:?} (id {id:?}) among {all:#?}")
        })
}

#[test]
fn a_session_exports_spans_with_the_mcp_conventions_and_metrics_with_their_buckets() {
    let env = plugins_env();
    let receiver = Receiver::start(env.dir.path(), "otlp", false);
    env.write_config(&format!(
        r#"{INTERCEPT_SETTINGS}
[telemetry]
endpoint = "{}"
service_name = "km-e2e"
capture_content = true
# km's telemetry threads run at the lowest CPU priority: on a busy test machine the last
# export may need more than the default second.
flush_timeout_ms = 30000
[telemetry.headers]
x-km-test = "from-config"
[telemetry.resource_attributes]
"deployment.environment.name" = "e2e"
"#,
        receiver.url
    ));
    let record = env.dir.path().join("server-input");
    let mut session = Session::start(monitor_test_server(&env, &record));
    script(&mut session);
    let ended = session.end();
    assert!(ended.status.success(), "km failed:\n{}", ended.stderr);
    assert!(
        !ended.stderr.contains("telemetry"),
        "nothing was lost, nothing to warn about:\n{}",
        ended.stderr
    );

    let entries = receiver.entries();
    for entry in &entries {
        assert_eq!(entry["content_type"], "application/x-protobuf", "{entry}");
        assert_eq!(entry["headers"]["x-km-test"], "from-config", "{entry}");
    }
    let spans = receiver.spans();
    let resource = attributes(&spans[0]["resource"]);
    assert_eq!(resource["service.name"], "km-e2e");
    assert_eq!(resource["deployment.environment.name"], "e2e");

    // The call with a trace context: SERVER under the _meta parent, CLIENT under the SERVER.
    let server = find(&spans, "tools/call echo", "SPAN_KIND_SERVER", Some("2"));
    let client = find(&spans, "tools/call echo", "SPAN_KIND_CLIENT", Some("2"));
    assert_eq!(server["trace_id"], TRACE, "{server:#}");
    assert_eq!(server["parent_span_id"], PARENT, "{server:#}");
    assert_eq!(client["trace_id"], TRACE);
    assert_eq!(client["parent_span_id"], server["span_id"]);
    for span in [server, client] {
        for (key, value) in [
            ("mcp.method.name", "tools/call"),
            ("gen_ai.tool.name", "echo"),
            ("gen_ai.operation.name", "execute_tool"),
            ("jsonrpc.request.id", "2"),
            ("mcp.protocol.version", "2025-06-18"),
            ("network.transport", "pipe"),
        ] {
            assert_eq!(attr(span, key).as_deref(), Some(value), "{key}: {span:#}");
        }
        assert!(attr(span, "mcp.session.id").is_some_and(|s| s.len() == 32));
        assert_eq!(attr(span, "error.type"), None);
        assert_eq!(
            attr(span, "gen_ai.tool.call.arguments").as_deref(),
            Some(r#"{"text":"hello"}"#)
        );
    }
    let start = |s: &Value| {
        s["start_time_unix_nano"]
            .as_str()
            .and_then(|t| t.parse::<u128>().ok())
    };
    let end = |s: &Value| {
        s["end_time_unix_nano"]
            .as_str()
            .and_then(|t| t.parse::<u128>().ok())
    };
    assert!(
        start(server) <= start(client) && end(client) <= end(server),
        "{server:#}\n{client:#}"
    );

    // The session's span is linked from every request span, and parent of none.
    let session = find(&spans, "km monitor", "SPAN_KIND_INTERNAL", None);
    assert_eq!(attr(session, "km.server.command").as_deref(), Some("sh"));
    for span in spans.iter().filter(|s| s["kind"] == "SPAN_KIND_SERVER") {
        assert_eq!(span["links"][0]["span_id"], session["span_id"], "{span:#}");
        assert_ne!(span["parent_span_id"], session["span_id"]);
    }

    // A JSON-RPC error and a tool error.
    for (id, error, message) in [
        ("3", "-32603", "work failed"),
        ("4", "tool_error", "tool_error"),
    ] {
        for kind in ["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"] {
            let span = find(&spans, "tools/call work", kind, Some(id));
            assert_eq!(attr(span, "error.type").as_deref(), Some(error), "{span:#}");
            assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR", "{span:#}");
            assert_eq!(span["status"]["message"], message, "{span:#}");
        }
    }
    let rpc = find(&spans, "tools/call work", "SPAN_KIND_SERVER", Some("3"));
    assert_eq!(
        attr(rpc, "rpc.response.status_code").as_deref(),
        Some("-32603")
    );

    // The blocked call never reached the server: one span, ending with km's answer, with the
    // verdict as an event.
    let blocked = find(&spans, "tools/call echo", "SPAN_KIND_SERVER", Some("5"));
    assert!(attr(blocked, "error.type").is_some(), "{blocked:#}");
    assert!(
        !spans.iter().any(|s| s["kind"] == "SPAN_KIND_CLIENT"
            && attr(s, "jsonrpc.request.id").as_deref() == Some("5")),
        "a blocked call has no CLIENT span"
    );
    let verdict = blocked["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["name"] == "km.verdict"))
        .unwrap_or_else(|| panic!("no verdict event: {blocked:#}"));
    assert_eq!(attr(verdict, "km.verdict.action").as_deref(), Some("block"));
    assert_eq!(
        attr(verdict, "km.plugin.name").as_deref(),
        Some("test-intercept")
    );

    // Capture is of what km forwarded: after the redaction.
    let redacted = find(&spans, "tools/call echo", "SPAN_KIND_SERVER", Some("6"));
    let arguments = attr(redacted, "gen_ai.tool.call.arguments").unwrap_or_default();
    assert!(
        arguments.contains("[REDACTED]") && !arguments.contains("SECRET"),
        "{arguments}"
    );
    assert!(redacted["events"]
        .as_array()
        .is_some_and(|e| e
            .iter()
            .any(|e| attr(e, "km.verdict.action").as_deref() == Some("replace"))));

    // The plugin's findings (one per tool call it judged; they carry no correlation id) are
    // events of the session's span.
    let findings: Vec<&Value> = session["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == "km.plugin.event")
        .collect();
    assert_eq!(findings.len(), 5, "{session:#}");
    assert_eq!(
        attr(findings[0], "km.event.kind").as_deref(),
        Some("finding")
    );

    // Metrics: the conventions' histogram with their buckets, and km's own.
    let metrics = receiver.metrics();
    let metric =
        |name: &str| -> Vec<&Value> { metrics.iter().filter(|m| m["name"] == name).collect() };
    let durations = metric("mcp.server.operation.duration");
    assert!(!durations.is_empty(), "{metrics:#?}");
    let points: Vec<&Value> = durations
        .iter()
        .flat_map(|m| {
            m["histogram"]["data_points"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .collect();
    for point in &points {
        let bounds: Vec<f64> = point["explicit_bounds"]
            .as_array()
            .expect("explicit bounds")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(bounds, MCP_BUCKETS, "{point:#}");
    }
    assert_eq!(durations[0]["unit"], "s");
    let point = |method: &str, tool: Option<&str>, error: Option<&str>| {
        points.iter().any(|p| {
            attr(p, "mcp.method.name").as_deref() == Some(method)
                && attr(p, "gen_ai.tool.name").as_deref() == tool
                && attr(p, "error.type").as_deref() == error
        })
    };
    assert!(point("tools/call", Some("echo"), None), "{points:#?}");
    assert!(
        point("tools/call", Some("work"), Some("-32603")),
        "{points:#?}"
    );
    assert!(
        point("tools/call", Some("work"), Some("tool_error")),
        "{points:#?}"
    );
    assert!(point("initialize", None, None), "{points:#?}");
    for name in [
        "mcp.client.operation.duration",
        "mcp.server.session.duration",
        "km.plugin.load.duration",
        "km.plugin.messages",
        "km.intercept.verdicts",
        "km.relay.bytes",
    ] {
        assert!(!metric(name).is_empty(), "{name} did not arrive");
    }
    let verdicts = metric("km.intercept.verdicts");
    let sum_points: Vec<&Value> = verdicts
        .iter()
        .flat_map(|m| m["sum"]["data_points"].as_array().into_iter().flatten())
        .collect();
    assert!(
        sum_points.iter().any(|p| {
            attr(p, "km.plugin.name").as_deref() == Some("test-intercept")
                && attr(p, "km.verdict.action").as_deref() == Some("block")
                && p["as_int"] == "1"
        }),
        "{sum_points:#?}"
    );
    let relayed = metric("km.relay.bytes");
    assert!(relayed
        .iter()
        .flat_map(|m| m["sum"]["data_points"].as_array().into_iter().flatten())
        .any(|p| attr(p, "km.relay.direction").as_deref() == Some("client_to_server")));
}

#[test]
fn a_request_from_the_server_is_the_mirror_image_configured_by_environment_alone() {
    let Some(everything) = std::env::var_os("KM_TEST_MCP_EVERYTHING") else {
        panic!(
            "KM_TEST_MCP_EVERYTHING is not set: run the tests with ./scripts/test, which \
             installs server-everything (README)"
        );
    };
    let env = KmEnv::new();
    let receiver = Receiver::start(env.dir.path(), "otlp", false);
    // No endpoint in the file: the environment gives it (see the first test for the wait).
    env.write_config("[telemetry]\nflush_timeout_ms = 30000\n");
    let mut cmd = env.km();
    cmd.args(["monitor", "--no-plugins", "--", "node"])
        .arg(everything)
        .arg("stdio")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_SERVICE_NAME", "km-mirror")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-km-test=from-env");
    let mut session = Session::start(cmd);
    session.call(initialize(json!({"sampling": {}})));
    session.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let tools = session.call(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    assert!(
        tools["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "trigger-sampling-request")),
        "{tools}"
    );
    session.send(&tool_call(
        3,
        "trigger-sampling-request",
        json!({"prompt": "hi", "maxTokens": 5}),
    ));
    let request = session.read_until("the server's sampling request", |m| {
        m["method"] == "sampling/createMessage"
    });
    session.send(&json!({"jsonrpc": "2.0", "id": request["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "sampled"},
        "model": "km-e2e", "stopReason": "endTurn"}}));
    let answer = session.read_until("the tool's answer", |m| m["id"] == 3);
    assert!(answer.to_string().contains("sampled"), "{answer}");
    let ended = session.end();
    assert!(
        !ended.stderr.contains("telemetry"),
        "nothing was lost:\n{}",
        ended.stderr
    );

    let spans = receiver.spans();
    let server = find(&spans, "sampling/createMessage", "SPAN_KIND_SERVER", None);
    let client = find(&spans, "sampling/createMessage", "SPAN_KIND_CLIENT", None);
    assert_eq!(attr(server, "km.initiator").as_deref(), Some("server"));
    assert_eq!(
        attr(server, "mcp.method.name").as_deref(),
        Some("sampling/createMessage")
    );
    assert_eq!(client["parent_span_id"], server["span_id"]);
    let call = find(
        &spans,
        "tools/call trigger-sampling-request",
        "SPAN_KIND_SERVER",
        Some("3"),
    );
    assert_eq!(attr(call, "km.initiator").as_deref(), Some("client"));
    // The server's request came while the tool call was open.
    let t = |s: &Value, f: &str| s[f].as_str().and_then(|t| t.parse::<u128>().ok());
    assert!(t(call, "start_time_unix_nano") <= t(server, "start_time_unix_nano"));
    assert!(t(server, "end_time_unix_nano") <= t(call, "end_time_unix_nano"));
    assert_eq!(
        attributes(&spans[0]["resource"])["service.name"],
        "km-mirror"
    );
    assert!(receiver
        .entries()
        .iter()
        .all(|e| e["headers"]["x-km-test"] == "from-env"));
}

/// A session that ends with thousands of requests open (a server that never answers) makes
/// their spans all at once, about three times what the SDK's span queue holds by default:
/// km paces them through the queue, and every one arrives.
#[test]
fn a_session_that_ends_with_thousands_of_open_requests_exports_every_span() {
    const OPEN: u64 = 3000;
    let env = KmEnv::new();
    let receiver = Receiver::start(env.dir.path(), "otlp", false);
    env.write_config(&format!(
        "[telemetry]\nendpoint = \"{}\"\nflush_timeout_ms = 30000\n",
        receiver.url
    ));
    let mut cmd = env.km();
    cmd.args([
        "monitor",
        "--no-plugins",
        "--",
        "sh",
        "-c",
        "exec cat > /dev/null",
    ]);
    let mut session = Session::start(cmd);
    for id in 1..=OPEN {
        session.send(&tool_call(id, "echo", json!({"text": "never answered"})));
    }
    let ended = session.end();
    assert!(ended.status.success(), "km failed:\n{}", ended.stderr);
    assert!(
        !ended.stderr.contains("telemetry"),
        "nothing was lost:\n{}",
        ended.stderr
    );
    let spans = receiver.spans();
    let unanswered: std::collections::HashSet<String> = spans
        .iter()
        .filter(|s| s["name"] == "tools/call echo" && s["kind"] == "SPAN_KIND_SERVER")
        .inspect(|s| assert_eq!(attr(s, "error.type").as_deref(), Some("unanswered"), "{s}"))
        .filter_map(|s| attr(s, "jsonrpc.request.id"))
        .collect();
    assert_eq!(
        unanswered.len() as u64,
        OPEN,
        "every open request's span arrived, once per id ({} spans in all)",
        spans.len()
    );
    assert!(
        spans.iter().any(|s| s["name"] == "km monitor"),
        "and the session's own span"
    );
}

/// The MCP stream of the scripted session (what the client got, what the server got) with
/// the telemetry `config` (empty: none).
fn stream_with(env: &KmEnv, config: &str, name: &str) -> (Vec<u8>, Vec<u8>, String) {
    env.write_config(&format!("{INTERCEPT_SETTINGS}\n{config}"));
    let record = env.dir.path().join(format!("server-input-{name}"));
    let mut cmd = monitor_test_server(env, &record);
    // Far beyond the session's one-minute watchdog: waiting for the exporter would show.
    cmd.env("OTEL_EXPORTER_OTLP_TIMEOUT", "300000");
    let mut session = Session::start(cmd);
    script(&mut session);
    let ended = session.end();
    assert!(
        ended.status.success(),
        "{name}: km failed:\n{}",
        ended.stderr
    );
    let server_got = std::fs::read(&record).expect("the server's input was recorded");
    (ended.stdout, server_got, ended.stderr)
}

#[test]
fn a_collector_that_is_down_or_hangs_changes_nothing_in_the_stream() {
    let env = plugins_env();
    let (client, server, _) = stream_with(&env, "", "without");
    assert!(!client.is_empty() && !server.is_empty());

    // Down: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (down_client, down_server, stderr) = stream_with(
        &env,
        &format!("[telemetry]\nendpoint = \"http://127.0.0.1:{port}\"\n"),
        "down",
    );
    crate::monitor::assert_same_bytes(&down_client, &client, "client side, collector down");
    crate::monitor::assert_same_bytes(&down_server, &server, "server side, collector down");
    assert!(
        stderr.contains("were not exported"),
        "the loss is reported:\n{stderr}"
    );

    // Hanging: it takes the request and never answers.
    let hanging = Receiver::start(env.dir.path(), "hanging", true);
    let (hang_client, hang_server, stderr) = stream_with(
        &env,
        &format!("[telemetry]\nendpoint = \"{}\"\n", hanging.url),
        "hanging",
    );
    crate::monitor::assert_same_bytes(&hang_client, &client, "client side, collector hanging");
    crate::monitor::assert_same_bytes(&hang_server, &server, "server side, collector hanging");
    assert!(
        stderr.contains("did not finish within"),
        "the loss is reported:\n{stderr}"
    );
    assert!(
        hanging.entries().iter().any(|e| e["hung"] == true),
        "km did try the hanging collector"
    );
}

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_0123456789",
};

/// api-logger stamped for Alice with the API's key, signed with the trusted key.
fn install_api_logger(env: &KmEnv, server: &ApiServer) {
    env.install_stamped_api_logger(server, &ALICE);
}

fn stats(env: &KmEnv) -> Value {
    let output = run_ok(env.km().args(["stats", "--json"]));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "km stats --json printed no JSON ({e})\n{}",
            describe(&output)
        )
    })
}

#[test]
fn km_stats_counts_refusals_by_check_and_authentication_outcomes() {
    let env = KmEnv::new();
    let empty = stats(&env);
    assert_eq!(empty["sessions"], 0, "{empty:#}");
    assert_eq!(empty["plugins"]["refused"], 0, "{empty:#}");

    // A plugin tampered with after it was signed.
    let tampered = env.install("test-noop", "test-noop");
    let mut bytes = std::fs::read(&tampered).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&tampered, &bytes).expect("tamper");
    let api = ApiServer::builder(env.dir.path())
        .customers(&[(&ALICE, "pro")])
        .start();
    install_api_logger(&env, &api);
    env.init(ALICE.api_key, &api.url);

    // One session (refused at load), one refresh (refused again; api-logger authenticates).
    let mut cmd = env.km();
    cmd.args(["monitor", "--", "cat"]);
    let session = Session::start(cmd);
    let ended = session.end();
    assert!(
        ended
            .stderr
            .contains("libtest_noop.so: the library's sha256"),
        "{}",
        ended.stderr
    );
    let refresh = env
        .km()
        .args(["plugin-refresh", "--json"])
        .output()
        .expect("km runs");
    assert!(
        String::from_utf8_lossy(&refresh.stdout).contains("\"authorized\": true")
            || String::from_utf8_lossy(&refresh.stdout).contains("\"authorized\":true"),
        "{}",
        describe(&refresh)
    );

    let figures = stats(&env);
    assert_eq!(figures["sessions"], 1, "{figures:#}");
    assert_eq!(
        figures["plugins"]["refused_by_check"]["digest"], 2,
        "{figures:#}"
    );
    assert!(
        figures["plugins"]["loaded"].as_u64() >= Some(2),
        "{figures:#}"
    );
    // The refresh authenticated for sure; the session's refresher may have too.
    let authorized = figures["auth"]["by_outcome"]["authorized"]
        .as_u64()
        .unwrap_or(0);
    assert!(authorized >= 1, "{figures:#}");
    assert!(
        figures["auth"]["token_cache"]["misses"].as_u64() >= Some(1),
        "{figures:#}"
    );
    assert!(
        figures["auth"]["latency_ms"]["median"].as_f64().is_some(),
        "{figures:#}"
    );

    let text = run_ok(env.km().arg("stats"));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("refused: digest 2"), "{text}");
    assert!(text.contains("authorized (authorized"), "{text}");
}

#[test]
fn propagation_is_opt_in_and_points_the_server_at_kms_client_span() {
    let env = KmEnv::new();
    let receiver = Receiver::start(env.dir.path(), "otlp", false);
    env.write_config(&format!(
        "[telemetry]\nendpoint = \"{}\"\npropagate = true\nflush_timeout_ms = 30000\n",
        receiver.url
    ));
    let record = env.dir.path().join("server-input");
    let server = bin_dir().join("km-test-mcp-server");
    let mut cmd = env.km();
    cmd.args(["monitor", "--no-plugins", "--", "sh", "-c"])
        .arg(format!(
            "tee '{}' | exec '{}'",
            record.display(),
            server.display()
        ));
    let mut session = Session::start(cmd);
    session.call(initialize(json!({})));
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    session.send(&notification);
    let mut echo = tool_call(2, "echo", json!({"text": "hello"}));
    echo["params"]["_meta"] = json!({
        "traceparent": format!("00-{TRACE}-{PARENT}-01"),
        "tracestate": "km=1"
    });
    session.call(echo.clone());
    let ended = session.end();
    assert!(ended.status.success(), "{}", ended.stderr);

    let received = std::fs::read_to_string(&record).expect("the server's input");
    let received: Vec<&str> = received.lines().collect();
    assert_eq!(received.len(), 3, "{received:#?}");
    let spans = receiver.spans();
    let client_span = |name: &str| find(&spans, name, "SPAN_KIND_CLIENT", None).clone();

    // The tool call: same trace as its own context, the parent now km's CLIENT span, the
    // tracestate kept, and nothing else of the line changed.
    let echo_client = client_span("tools/call echo");
    let traceparent = format!(
        "00-{TRACE}-{}-01",
        echo_client["span_id"].as_str().expect("id")
    );
    assert_eq!(
        received[2],
        echo.to_string()
            .replace(&format!("00-{TRACE}-{PARENT}-01"), &traceparent),
        "only the traceparent changed"
    );
    let echo_server = find(&spans, "tools/call echo", "SPAN_KIND_SERVER", None);
    assert_eq!(
        echo_server["parent_span_id"], PARENT,
        "the client's context stays the parent"
    );
    assert_eq!(echo_client["parent_span_id"], echo_server["span_id"]);

    // initialize carried no context: km started a trace and put its context in a new `_meta`.
    let init: Value = serde_json::from_str(received[0]).expect("JSON");
    let init_client = client_span("initialize");
    assert_eq!(
        init["params"]["_meta"]["traceparent"],
        format!(
            "00-{}-{}-01",
            init_client["trace_id"].as_str().expect("trace"),
            init_client["span_id"].as_str().expect("span")
        )
    );
    assert_eq!(init["params"]["protocolVersion"], "2025-06-18");
    // A notification is left as it was.
    assert_eq!(received[1], notification.to_string());
    // km's own edits are not plugin verdicts: no verdict events, no verdict metric.
    assert!(spans.iter().all(|s| s["events"]
        .as_array()
        .is_none_or(|e| e.iter().all(|e| e["name"] != "km.verdict"))));
}
