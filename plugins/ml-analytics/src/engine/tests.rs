//! The engine on made-up sessions: pairing and counting, and the anomalies of the issue's
//! "done when" (a 50x slower call, a burst of errors, a first-time tool, none in a normal
//! session), plus the realistic-trace tuning check.

use km_plugin_sdk::abi_stable::std_types::{ROption, RSlice, RStr};
use km_plugin_sdk::{Direction, Message, MessageKind};

use super::*;
use crate::anomaly::Kind;
use crate::model::tests::Rng;
use crate::stats::SeriesStats;
use crate::store::{Models, ServerModel};

/// Builds the lines of a session the way km delivers them (correlation ids `c<seq>`).
struct Session {
    engine: Engine,
    seq: u64,
    now_us: u64,
    next_id: u64,
    lines: Vec<Vec<u8>>,
}

const START_US: u64 = 1_800_000_000_000_000;

impl Session {
    fn new() -> Self {
        Self::with(Engine::new("sess", Thresholds::default(), 100))
    }

    fn with(engine: Engine) -> Self {
        Session {
            engine,
            seq: 0,
            now_us: START_US,
            next_id: 1,
            lines: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        direction: Direction,
        kind: MessageKind,
        is_error: bool,
        line: String,
        correlation: &str,
        id: &str,
        method: &str,
        latency_us: Option<u64>,
    ) {
        self.seq += 1;
        self.lines.push(line.into_bytes());
        let data = self.lines.last().expect("just pushed");
        let message = Message {
            seq: self.seq,
            direction,
            kind,
            is_error,
            data: RSlice::from_slice(data),
            correlation_id: RStr::from_str(correlation),
            id: RStr::from_str(id),
            method: RStr::from_str(method),
            timestamp_us: self.now_us,
            latency_us: latency_us.map_or(ROption::RNone, ROption::RSome),
        };
        self.engine.observe(&message);
    }

    /// Sends a request; returns its correlation id and JSON-RPC id.
    fn request(&mut self, method: &str, params: &str) -> (String, String) {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let corr = format!("c{}", self.seq + 1);
        let line =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.deliver(
            Direction::Request,
            MessageKind::REQUEST,
            false,
            line,
            &corr,
            &id,
            method,
            None,
        );
        (corr, id)
    }

    fn call(&mut self, tool: &str) -> (String, String) {
        self.request(
            "tools/call",
            &format!(r#"{{"name":"{tool}","arguments":{{}}}}"#),
        )
    }

    fn answer(&mut self, req: &(String, String), after_us: u64, body: &str) {
        self.now_us += after_us;
        let is_error = body.starts_with("\"error\"");
        let line = format!(r#"{{"jsonrpc":"2.0","id":{},{body}}}"#, req.1);
        self.deliver(
            Direction::Response,
            MessageKind::RESPONSE,
            is_error,
            line,
            &req.0,
            &req.1,
            "",
            Some(after_us),
        );
    }

    fn ok(&mut self, req: &(String, String), after_us: u64) {
        self.answer(
            req,
            after_us,
            r#""result":{"content":[{"type":"text","text":"fine"}],"isError":false}"#,
        );
    }

    fn call_ok(&mut self, tool: &str, after_us: u64) {
        let req = self.call(tool);
        self.ok(&req, after_us);
    }

    fn wait(&mut self, us: u64) {
        self.now_us += us;
    }

    fn anomalies(&mut self) -> Vec<Anomaly> {
        self.engine.take_new_anomalies()
    }
}

fn totals(batch: &FlushBatch) -> BTreeMap<String, SeriesStats> {
    let mut out: BTreeMap<String, SeriesStats> = BTreeMap::new();
    for series in batch.stats.values() {
        for (key, stats) in series {
            out.entry(format!("{} {}", key.method, key.tool))
                .or_default()
                .merge(stats);
        }
    }
    out
}

#[test]
fn calls_are_paired_and_counted_by_outcome() {
    let mut s = Session::new();
    s.engine.begin("srv1", "demo server", Models::default());
    let a = s.call("echo");
    s.ok(&a, 1_500);
    let b = s.call("echo");
    s.answer(&b, 800, r#""error":{"code":-32602,"message":"bad"}"#);
    let c = s.call("echo");
    s.answer(&c, 900, r#""result":{"content":[],"isError":true}"#);
    // Progress by token (km gives the notification no correlation), then cancelled.
    let d = s.request(
        "tools/call",
        r#"{"name":"slow","_meta":{"progressToken":"tok"}}"#,
    );
    for _ in 0..3 {
        s.deliver(
            Direction::Response,
            MessageKind::NOTIFICATION,
            false,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok","progress":1}}"#.to_owned(),
            "",
            "",
            "notifications/progress",
            None,
        );
    }
    s.deliver(
        Direction::Request,
        MessageKind::NOTIFICATION,
        false,
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{}}}}}"#,
            d.1
        ),
        &d.0,
        "",
        "notifications/cancelled",
        None,
    );
    // A progress notification km correlated itself, for a call that is then never answered.
    let e = s.request("tools/call", r#"{"name":"slow"}"#);
    s.deliver(
        Direction::Response,
        MessageKind::NOTIFICATION,
        false,
        r#"{"method":"notifications/progress","params":{"progressToken":"other"}}"#.to_owned(),
        &e.0,
        "",
        "notifications/progress",
        None,
    );
    let list = s.request("tools/list", "{}");
    s.ok(&list, 300);
    // A response to nothing.
    s.answer(&("c999".to_owned(), "999".to_owned()), 1, r#""result":{}"#);
    s.engine.end(s.now_us + 1);
    assert_eq!(s.engine.counters().unpaired, 1);

    let batch = s.engine.take_flush();
    let t = totals(&batch);
    let echo = &t["tools/call echo"];
    assert_eq!((echo.calls, echo.ok), (3, 1));
    assert_eq!(echo.errors.rpc["-32602"], 1);
    assert_eq!(echo.errors.tool, 1);
    assert_eq!(echo.latency.count(), 3);
    let p50 = echo.latency.quantile_ms(0.5).expect("latencies");
    assert!((p50 - 0.9).abs() < 0.9 * 0.011, "{p50}");
    let slow = &t["tools/call slow"];
    assert_eq!(slow.calls, 2);
    assert_eq!(slow.errors.cancelled, 1);
    assert_eq!(slow.errors.unanswered, 1);
    assert_eq!(slow.progress.notifications, 4);
    assert_eq!(slow.progress.calls, 2);
    assert_eq!(slow.latency.count(), 0);
    assert_eq!(t["tools/list "].calls, 1);
    assert!(echo.request_bytes.max > 40 && echo.response_bytes.max > 20);
    // The server is counted once, for this session.
    let server = &batch.servers["srv1"];
    assert_eq!(
        (server.sessions, server.calls, server.label.as_str()),
        (1, 6, "demo server")
    );
    assert_eq!(
        s.engine
            .take_flush()
            .servers
            .get("srv1")
            .map(|d| d.sessions),
        None
    );
}

#[test]
fn a_failed_flush_gives_everything_back_and_nothing_twice() {
    let mut s = Session::new();
    s.engine.begin("srv", "srv", Models::default());
    s.call_ok("echo", 100);
    let first = s.engine.take_flush();
    s.call_ok("echo", 100);
    s.engine.restore(first);
    let batch = s.engine.take_flush();
    assert_eq!(totals(&batch)["tools/call echo"].calls, 2);
    assert_eq!(batch.servers["srv"].sessions, 1);
    assert_eq!(batch.servers["srv"].calls, 2);
    assert!(s.engine.take_flush().stats.is_empty());
}

/// A warmed-up model of `srv` from an earlier session with `tools`.
fn known_server(tools: &[&str]) -> Models {
    let mut s = Session::new();
    s.engine.begin("srv", "srv", Models::default());
    for _ in 0..30 {
        for tool in tools {
            s.call_ok(tool, 20_000);
            s.wait(2_000_000);
        }
    }
    s.engine.end(s.now_us);
    assert!(s.anomalies().is_empty());
    let batch = s.engine.take_flush();
    let mut models = Models::default();
    models.servers.insert(
        "srv".to_owned(),
        ServerModel {
            label: "srv".to_owned(),
            sessions: 1,
            calls: batch.servers["srv"].calls,
            ..ServerModel::default()
        },
    );
    models.series = batch.models;
    models
}

#[test]
fn the_anomalies_of_the_issue_each_raise_one_record() {
    let mut s = Session::new();
    s.engine
        .begin("srv", "demo", known_server(&["work", "echo"]));
    s.wait(3_600_000_000);
    for _ in 0..5 {
        s.call_ok("work", 20_000);
        s.wait(1_000_000);
    }
    assert!(s.anomalies().is_empty());
    // 50 times slower.
    s.call_ok("work", 1_000_000);
    let slow = s.anomalies();
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_eq!(slow[0].kind, Kind::Latency);
    assert_eq!(slow[0].tool, "work");
    assert_eq!(slow[0].observed, 1000.0);
    assert!(slow[0].expected.high < 1000.0);
    // A burst of errors.
    for _ in 0..10 {
        let r = s.call("work");
        s.answer(&r, 5_000, r#""error":{"code":-32603,"message":"down"}"#);
        s.wait(500_000);
    }
    let burst = s.anomalies();
    assert_eq!(burst.len(), 1, "{burst:?}");
    assert_eq!(burst[0].kind, Kind::ErrorRate);
    // A first-time tool.
    s.call_ok("delete_everything", 10_000);
    let first = s.anomalies();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].kind, Kind::FirstTimeTool);
    assert_eq!(first[0].tool, "delete_everything");
    assert!(first[0].detail.contains("first time"));
    s.engine.end(s.now_us);
    assert!(s.anomalies().is_empty());
    assert_eq!(s.engine.take_flush().anomalies.len(), 3);
}

#[test]
fn a_new_server_has_no_first_time_tools() {
    let mut s = Session::new();
    s.engine.begin("fresh", "fresh", Models::default());
    for tool in ["a", "b", "c"] {
        s.call_ok(tool, 1000);
    }
    assert!(s.anomalies().is_empty());
}

#[test]
fn a_loop_on_one_tool_is_one_burst() {
    let mut s = Session::new();
    s.engine.begin("srv", "srv", known_server(&["echo"]));
    for _ in 0..200 {
        s.call_ok("echo", 2_000);
        s.wait(100_000);
    }
    let found = s.anomalies();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, Kind::CallRate);
}

#[test]
fn requests_left_unanswered_are_anomalies_once() {
    let mut s = Session::new();
    s.engine.begin("srv", "srv", Models::default());
    let _hung = s.call("hang");
    s.engine.tick((s.now_us / 1000) as i64 + 30_000);
    assert!(s.anomalies().is_empty(), "not yet overdue");
    s.engine.tick((s.now_us / 1000) as i64 + 61_000);
    let overdue = s.anomalies();
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    assert_eq!(overdue[0].kind, Kind::Unanswered);
    s.engine.tick((s.now_us / 1000) as i64 + 120_000);
    assert!(s.anomalies().is_empty(), "once per request");
    // Two more that the session ends on: one record for their series.
    s.call("left");
    s.call("left");
    s.engine.end(s.now_us + 1000);
    let left = s.anomalies();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].tool.as_str(), left[0].observed), ("left", 2.0));
    let t = totals(&s.engine.take_flush());
    assert_eq!(t["tools/call left"].errors.unanswered, 2);
    assert_eq!(t["tools/call hang"].errors.unanswered, 1);
}

#[test]
fn memory_stays_bounded_whatever_the_peers_send() {
    let mut s = Session::new();
    s.engine.begin("srv", "srv", Models::default());
    for i in 0..(MAX_SERIES + 50) {
        s.call_ok(&format!("tool{i}"), 10);
    }
    let t = totals(&s.engine.take_flush());
    assert_eq!(t.len(), MAX_SERIES + 1);
    assert_eq!(t[&format!("tools/call {OTHER}")].calls, 50);
    for _ in 0..(MAX_PENDING + 10) {
        s.call("never");
    }
    assert_eq!(s.engine.pending.len(), MAX_PENDING);
    let t = totals(&s.engine.take_flush());
    assert_eq!(t[&format!("tools/call {OTHER}")].errors.unanswered, 10);
    let long = "x".repeat(MAX_TARGET * 3);
    s.call_ok(&long, 10);
    let t = totals(&s.engine.take_flush());
    assert!(t.keys().all(|k| k.len() < MAX_TARGET + 20));
}

/// An agent's session as the traces of the demo server and server-everything look: a tool
/// every 0.5-6 s, per-tool latencies log-normal around their own median (0.3 ms .. 800 ms)
/// with the spread real tools have, about 1% failures, now and then a call 3-5x slower than
/// usual, bursts of a few quick calls, and progress on the slow tools.
fn realistic_session(s: &mut Session, rng: &mut Rng, calls: usize) {
    let tools = [
        ("echo", 0.3, 0.4),
        ("add", 0.25, 0.3),
        ("search", 80.0, 0.5),
        ("fetch", 300.0, 0.7),
        ("long_running", 800.0, 0.3),
        ("image", 5.0, 0.4),
    ];
    for _ in 0..calls {
        let (tool, median, sd) =
            tools[(rng.next_f64() * tools.len() as f64) as usize % tools.len()];
        let mut ms = median * (sd * rng.normal()).exp();
        if rng.next_f64() < 0.02 {
            ms *= 3.0 + 2.0 * rng.next_f64();
        }
        // Scheduling noise on a busy machine: up to 5 ms on anything.
        ms += 5.0 * rng.next_f64().powi(8);
        let req = s.call(tool);
        let roll = rng.next_f64();
        if roll < 0.006 {
            s.answer(
                &req,
                (ms * 1000.0) as u64,
                r#""error":{"code":-32603,"message":"x"}"#,
            );
        } else if roll < 0.012 {
            s.answer(
                &req,
                (ms * 1000.0) as u64,
                r#""result":{"content":[],"isError":true}"#,
            );
        } else {
            s.ok(&req, (ms * 1000.0) as u64);
        }
        let pause = if rng.next_f64() < 0.15 {
            50_000.0
        } else {
            500_000.0 + 5_500_000.0 * rng.next_f64()
        };
        s.wait(pause as u64);
    }
}

#[test]
fn realistic_sessions_raise_no_anomaly() {
    // The tuning check: 40 sessions of 300 calls each on one server, learning across sessions
    // like the store does, raise nothing.
    let mut rng = Rng(0x5eed);
    let mut models = Models::default();
    let mut raised = Vec::new();
    for session in 0..40 {
        let mut s = Session::with(Engine::new(
            &format!("s{session}"),
            Thresholds::default(),
            100,
        ));
        s.now_us = START_US + session * 86_400_000_000;
        s.engine.begin("srv", "srv", models.clone());
        realistic_session(&mut s, &mut rng, 300);
        s.engine.end(s.now_us);
        raised.extend(s.anomalies());
        let batch = s.engine.take_flush();
        let server = models.servers.entry("srv".to_owned()).or_default();
        server.sessions += 1;
        server.calls += batch.servers["srv"].calls;
        models.series.extend(batch.models);
    }
    assert!(raised.is_empty(), "{} anomalies: {raised:#?}", raised.len());
}
