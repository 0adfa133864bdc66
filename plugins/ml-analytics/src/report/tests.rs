//! Reports built from a real store: sums, percentiles, filters, and the three renderings.

use super::*;
use crate::anomaly::{Expected, Kind};
use crate::settings::Retention;
use crate::stats::{CallRecord, Outcome};
use crate::store::{FlushBatch, ServerDelta};

const NOW: i64 = 1_800_000_000;

fn record(stats: &mut SeriesStats, outcome: Outcome, ms: u64) {
    stats.record(&CallRecord {
        outcome,
        latency_us: Some(ms * 1000),
        request_bytes: 100,
        response_bytes: Some(1000),
        progress: 0,
    });
}

fn filled_store(dir: &std::path::Path) -> Store {
    let store = Store::new(dir, Retention::default());
    let mut batch = FlushBatch::default();
    for (server, label) in [("aaaa1111", "node one.js"), ("bbbb2222", "python two.py")] {
        for minute in 0..10 {
            let start = NOW - 3600 + minute * 60;
            let mut echo = SeriesStats::default();
            for ms in 1..=10 {
                record(&mut echo, Outcome::Ok, ms * 10);
            }
            let mut fail = SeriesStats::default();
            record(&mut fail, Outcome::RpcError(-32603), 5);
            record(&mut fail, Outcome::ToolError, 5);
            let mut list = SeriesStats::default();
            record(&mut list, Outcome::Ok, 2);
            let bucket = batch.stats.entry(start).or_default();
            let key = |method: &str, tool: &str| SeriesKey {
                server: server.to_owned(),
                method: method.to_owned(),
                tool: tool.to_owned(),
            };
            bucket.insert(key("tools/call", "echo"), echo);
            bucket.insert(key("tools/call", "flaky"), fail);
            bucket.insert(key("tools/list", ""), list);
        }
        batch.servers.insert(
            server.to_owned(),
            ServerDelta {
                label: label.to_owned(),
                sessions: 1,
                calls: 130,
                ..ServerDelta::default()
            },
        );
    }
    batch.anomalies.push(Anomaly {
        id: "s-1".to_owned(),
        time: clock::rfc3339((NOW - 600) * 1000),
        time_ms: (NOW - 600) * 1000,
        kind: Kind::ErrorRate,
        server: "aaaa1111".to_owned(),
        server_label: "node one.js".to_owned(),
        method: "tools/call".to_owned(),
        tool: "flaky".to_owned(),
        observed: 1.0,
        expected: Expected {
            low: 0.0,
            high: 0.2,
        },
        unit: "failures/call".to_owned(),
        session_id: "s".to_owned(),
        detail: "tools/call flaky failed 100% of its recent calls; usual is at most 20%".to_owned(),
    });
    store.flush(&mut batch, NOW).expect("flush");
    store
}

fn query(server: Option<&str>, since: Option<i64>) -> Query {
    Query {
        since,
        until: NOW,
        server: server.map(str::to_owned),
    }
}

#[test]
fn reports_sum_series_and_compute_percentiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path());
    let report = build(&store, &query(None, None), NOW * 1000).expect("report");
    assert_eq!(report.servers.len(), 2);
    assert_eq!(report.tools.len(), 4);
    assert_eq!(report.methods.len(), 2);
    let echo = report
        .tools
        .iter()
        .find(|r| r.tool == "echo" && r.server == "aaaa1111")
        .expect("echo");
    assert_eq!((echo.calls, echo.errors), (100, 0));
    // Latencies 10..100 ms, ten of each: p50 is 50 ms within 1%.
    let p50 = echo.p50_ms.expect("p50");
    assert!((p50 - 50.0).abs() <= 0.5 + 1e-9, "{p50}");
    assert!((echo.p99_ms.expect("p99") - 100.0).abs() <= 1.0 + 1e-9);
    assert_eq!(echo.max_ms, Some(100.0));
    assert_eq!(echo.server_label, "node one.js");
    assert_eq!(echo.timeline.len(), 10);
    let flaky = report
        .tools
        .iter()
        .find(|r| r.tool == "flaky")
        .expect("flaky");
    assert_eq!((flaky.calls, flaky.errors), (20, 20));
    assert_eq!(flaky.errors_by_type.rpc["-32603"], 10);
    assert_eq!(flaky.errors_by_type.tool, 10);
    assert_eq!(flaky.error_rate, 1.0);
    assert_eq!(report.anomalies.len(), 1);

    let only = build(&store, &query(Some("python"), None), NOW * 1000).expect("report");
    assert_eq!(only.servers.len(), 1);
    assert!(only.tools.iter().all(|r| r.server == "bbbb2222"));
    assert!(only.anomalies.is_empty());
    let by_id = build(&store, &query(Some("aaaa"), None), NOW * 1000).expect("report");
    assert!(by_id.tools.iter().all(|r| r.server == "aaaa1111"));
    let none = build(&store, &query(Some("ruby"), None), NOW * 1000).expect("report");
    assert!(none.tools.is_empty());
    assert!(none.warnings[0].contains("known: "), "{:?}", none.warnings);

    let recent =
        build(&store, &query(None, Some(NOW - 3600 + 5 * 60)), NOW * 1000).expect("report");
    let echo = recent
        .tools
        .iter()
        .find(|r| r.tool == "echo")
        .expect("echo");
    assert_eq!(echo.calls, 50, "--since keeps whole minutes");
}

#[test]
fn the_json_has_the_fields_the_issue_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path());
    let report = build(&store, &query(None, None), NOW * 1000).expect("report");
    let value: serde_json::Value = serde_json::from_str(&to_json(&report)).expect("JSON");
    let tool = &value["tools"][0];
    for field in [
        "server", "tool", "calls", "errors", "p50_ms", "p95_ms", "p99_ms",
    ] {
        assert!(!tool[field].is_null(), "{field} in {tool}");
    }
    assert!(tool.get("timeline").is_none(), "timelines are for the page");
    assert_eq!(value["anomalies"][0]["kind"], "error_rate");
    assert_eq!(value["relative_error"], 0.01);
}

#[test]
fn the_table_and_the_page_show_every_tool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path());
    let report = build(&store, &query(None, None), NOW * 1000).expect("report");
    let text = table::render(&report);
    assert!(
        text.contains("TOOLS") && text.contains("OTHER METHODS"),
        "{text}"
    );
    assert!(
        text.contains("node one.js") && text.contains("flaky"),
        "{text}"
    );
    assert!(text.contains("ANOMALIES (1)"), "{text}");
    let page = html::render(&report);
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("default-src 'none'"));
    assert!(page.contains(r#""tool":"flaky""#));
    assert!(
        !page.contains("http://") || !page.contains("src=\"http"),
        "no remote loads"
    );
    let empty = build(
        &Store::new(&dir.path().join("nothing"), Retention::default()),
        &query(None, None),
        NOW * 1000,
    )
    .expect("report");
    assert!(table::render(&empty).contains("No calls recorded"));
}
