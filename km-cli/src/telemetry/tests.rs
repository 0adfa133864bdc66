//! The span model of the telemetry thread, fed the records the relay's hooks would give it and
//! exporting into memory: names, kinds, parents, times, attributes, events and errors. The
//! same model goes through the real `km`, the real OTLP exporter and a real receiver in
//! `tests/e2e/telemetry.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use km_abi::{Direction, MessageKind};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

use super::export::Delivery;
use super::worker::Worker;
use super::{Record, Verdict};
use crate::monitor::correlate::CorrelationId;
use crate::monitor::dispatch::Envelope;

#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("lock").extend(batch);
        Ok(())
    }
}

struct Harness {
    worker: Worker,
    spans: Collect,
    _provider: SdkTracerProvider,
}

fn harness(capture: bool) -> Harness {
    let spans = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .with_id_generator(super::export::Ids::default())
        .build();
    let worker = Worker::new(
        Some(&provider),
        2048,
        None,
        Arc::new(Delivery::default()),
        "session-1".into(),
        "server",
        capture,
    );
    Harness {
        worker,
        spans,
        _provider: provider,
    }
}

const C2S: Direction = Direction::Request;
const S2C: Direction = Direction::Response;

fn correlation(sender: Direction, seq: u64) -> Option<CorrelationId> {
    Some(CorrelationId { sender, seq })
}

fn line(
    direction: Direction,
    kind: MessageKind,
    correlation: Option<CorrelationId>,
    text: &str,
    read_us: u64,
) -> Envelope {
    Envelope {
        seq: 0,
        direction,
        kind,
        is_error: text.contains("\"error\""),
        line: Bytes::copy_from_slice(text.as_bytes()),
        id: None,
        method: None,
        correlation,
        timestamp_us: read_us,
        latency_us: None,
    }
}

impl Harness {
    fn forward(&mut self, envelope: Envelope, forwarded_us: u64) {
        self.worker.take(Record::Line(envelope, forwarded_us));
    }

    fn finish(mut self) -> Vec<SpanData> {
        self.worker
            .finish(std::time::Instant::now() + std::time::Duration::from_secs(10));
        let spans = self.spans.0.lock().expect("lock").clone();
        spans
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

fn find<'a>(spans: &'a [SpanData], name: &str, kind: SpanKind) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name && s.span_kind == kind)
        .unwrap_or_else(|| {
            let all: Vec<_> = spans.iter().map(|s| (&s.name, &s.span_kind)).collect();
            panic!("no {kind:?} span {name:?} in {all:?}")
        })
}

fn us(span_time: std::time::SystemTime) -> u64 {
    span_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn a_client_request_is_a_server_span_over_a_client_span_under_its_meta_parent() {
    let mut h = harness(true);
    h.forward(
        line(
            C2S,
            MessageKind::REQUEST,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            100,
        ),
        110,
    );
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18"}}"#,
            200,
        ),
        210,
    );
    let request = format!(
        r#"{{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hi"}},"_meta":{{"traceparent":"00-{TRACE}-{PARENT}-01"}}}}}}"#
    );
    h.forward(
        line(
            C2S,
            MessageKind::REQUEST,
            correlation(C2S, 3),
            &request,
            1_000,
        ),
        1_040,
    );
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 3),
            r#"{"jsonrpc":"2.0","id":"a","result":{"content":[{"type":"text","text":"hi"}]}}"#,
            5_000,
        ),
        5_030,
    );
    let spans = h.finish();
    let session = find(&spans, "km monitor", SpanKind::Internal);
    let server = find(&spans, "tools/call echo", SpanKind::Server);
    let client = find(&spans, "tools/call echo", SpanKind::Client);

    assert_eq!(
        server.span_context.trace_id(),
        TraceId::from_hex(TRACE).expect("hex")
    );
    assert_eq!(
        server.parent_span_id,
        SpanId::from_hex(PARENT).expect("hex")
    );
    assert!(server.parent_span_is_remote);
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert_eq!(
        client.span_context.trace_id(),
        server.span_context.trace_id()
    );
    assert_eq!((us(server.start_time), us(server.end_time)), (1_000, 5_030));
    assert_eq!((us(client.start_time), us(client.end_time)), (1_040, 5_000));
    for span in [server, client] {
        assert_eq!(text(span, "mcp.method.name").as_deref(), Some("tools/call"));
        assert_eq!(text(span, "gen_ai.tool.name").as_deref(), Some("echo"));
        assert_eq!(
            text(span, "gen_ai.operation.name").as_deref(),
            Some("execute_tool")
        );
        assert_eq!(text(span, "jsonrpc.request.id").as_deref(), Some("a"));
        assert_eq!(
            text(span, "mcp.protocol.version").as_deref(),
            Some("2025-06-18")
        );
        assert_eq!(text(span, "network.transport").as_deref(), Some("pipe"));
        assert_eq!(text(span, "mcp.session.id").as_deref(), Some("session-1"));
        assert_eq!(text(span, "km.initiator").as_deref(), Some("client"));
        assert_eq!(
            text(span, "gen_ai.tool.call.arguments").as_deref(),
            Some(r#"{"text":"hi"}"#)
        );
        assert!(text(span, "gen_ai.tool.call.result").is_some());
        assert_eq!(attr(span, "error.type"), None);
        assert_eq!(span.status, Status::Unset);
    }
    // Linked to the session, which is no parent.
    let links: Vec<SpanId> = server
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(links, vec![session.span_context.span_id()]);
    assert_ne!(
        session.span_context.trace_id(),
        server.span_context.trace_id()
    );
    // Without a _meta parent the request starts its own trace.
    let init = find(&spans, "initialize", SpanKind::Server);
    assert_eq!(init.parent_span_id, SpanId::INVALID);
    assert_eq!(
        text(init, "mcp.protocol.version").as_deref(),
        Some("2025-06-18")
    );
    assert_eq!(
        text(session, "mcp.protocol.version").as_deref(),
        Some("2025-06-18")
    );
}

#[test]
fn errors_tool_errors_cancellations_and_unanswered_requests() {
    let mut h = harness(false);
    let call = |id: u64| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"work"}}}}"#)
    };
    for id in 1..=4 {
        h.forward(
            line(
                C2S,
                MessageKind::REQUEST,
                correlation(C2S, id),
                &call(id),
                10,
            ),
            11,
        );
    }
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"it broke"}}"#,
            20,
        ),
        21,
    );
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 2),
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}}"#,
            20,
        ),
        21,
    );
    h.forward(
        line(
            C2S,
            MessageKind::NOTIFICATION,
            correlation(C2S, 3),
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
            30,
        ),
        31,
    );
    let spans = h.finish();
    let by_id = |id: &str| -> Vec<&SpanData> {
        spans
            .iter()
            .filter(|s| text(s, "jsonrpc.request.id").as_deref() == Some(id))
            .collect()
    };
    for (id, error, status) in [
        ("1", "-32603", "it broke"),
        ("2", "tool_error", "tool_error"),
        ("3", "cancelled", "cancelled"),
        ("4", "unanswered", "unanswered"),
    ] {
        let both = by_id(id);
        assert_eq!(both.len(), 2, "request {id}: {both:?}");
        for span in both {
            assert_eq!(text(span, "error.type").as_deref(), Some(error), "{id}");
            assert_eq!(span.status, Status::error(status.to_owned()), "{id}");
        }
    }
    let rpc = by_id("1");
    assert_eq!(
        text(rpc[0], "rpc.response.status_code").as_deref(),
        Some("-32603")
    );
    // Not captured unless asked.
    assert!(spans
        .iter()
        .all(|s| attr(s, "gen_ai.tool.call.arguments").is_none()));
    // The notification has its own span.
    let cancel = find(&spans, "notifications/cancelled", SpanKind::Server);
    assert_eq!((us(cancel.start_time), us(cancel.end_time)), (30, 31));
}

fn block_verdict() -> Record {
    Record::Verdict(Box::new(Verdict {
        plugin: "test-intercept".into(),
        action: "block",
        rules: vec!["test-rule".into()],
        reason: "forbidden".into(),
        kind: MessageKind::REQUEST,
        method: "tools/call".into(),
        target: "echo".into(),
        id: Some("5".into()),
        correlation: correlation(C2S, 5),
        read_us: 800,
        at_us: 850,
    }))
}

fn blocked_answer() -> Envelope {
    line(
        S2C,
        MessageKind::RESPONSE,
        correlation(C2S, 5),
        r#"{"jsonrpc":"2.0","id":5,"error":{"code":-32001,"message":"blocked by test-intercept"}}"#,
        900,
    )
}

#[test]
fn a_blocked_request_has_one_span_ending_with_kms_answer_and_the_verdict() {
    // The verdict comes first, then km's answer (the order of an interceptor's block), or the
    // other way round (a line over the inspection limit).
    for verdict_first in [true, false] {
        let mut h = harness(false);
        if verdict_first {
            h.worker.take(block_verdict());
            h.forward(blocked_answer(), 905);
        } else {
            h.forward(blocked_answer(), 905);
            h.worker.take(block_verdict());
        }
        let spans = h.finish();
        let server = find(&spans, "tools/call echo", SpanKind::Server);
        assert!(
            !spans.iter().any(|s| s.span_kind == SpanKind::Client),
            "never forwarded: no CLIENT span"
        );
        assert_eq!((us(server.start_time), us(server.end_time)), (800, 905));
        assert_eq!(text(server, "error.type").as_deref(), Some("-32001"));
        assert_eq!(text(server, "jsonrpc.request.id").as_deref(), Some("5"));
        let event = &server.events.events[0];
        assert_eq!(event.name, "km.verdict");
        let action = event
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "km.verdict.action")
            .map(|kv| kv.value.as_str().into_owned());
        assert_eq!(action.as_deref(), Some("block"));
    }
}

#[test]
fn a_verdict_before_its_request_joins_the_requests_span() {
    let mut h = harness(false);
    h.worker.take(Record::Verdict(Box::new(Verdict {
        plugin: "advanced-filters".into(),
        action: "replace",
        rules: vec!["aws-key".into()],
        reason: "a secret was found".into(),
        kind: MessageKind::REQUEST,
        method: "tools/call".into(),
        target: "echo".into(),
        id: Some("1".into()),
        correlation: correlation(C2S, 1),
        read_us: 10,
        at_us: 11,
    })));
    h.forward(
        line(
            C2S,
            MessageKind::REQUEST,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"k":"[REDACTED]"}}}"#,
            10,
        ),
        12,
    );
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            20,
        ),
        21,
    );
    let spans = h.finish();
    let server = find(&spans, "tools/call echo", SpanKind::Server);
    assert_eq!(server.events.events.len(), 1);
    assert_eq!(server.events.events[0].name, "km.verdict");
    assert!(spans.iter().any(|s| s.span_kind == SpanKind::Client));
    let session = find(&spans, "km monitor", SpanKind::Internal);
    assert!(session.events.events.is_empty());
}

#[test]
fn a_server_request_is_the_mirror_image_and_events_find_their_span() {
    let mut h = harness(false);
    h.forward(
        line(
            S2C,
            MessageKind::REQUEST,
            correlation(S2C, 7),
            r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#,
            100,
        ),
        101,
    );
    h.worker.take(Record::PluginEvent {
        plugin: Arc::from("ml-analytics"),
        kind: "anomaly".into(),
        data: serde_json::json!({"correlation_id": "s7", "what": "slow"})
            .as_object()
            .cloned()
            .expect("object"),
        timestamp_ms: 1,
    });
    h.worker.take(Record::PluginEvent {
        plugin: Arc::from("tool-guard"),
        kind: "drift".into(),
        data: serde_json::Map::new(),
        timestamp_ms: 1,
    });
    h.forward(
        line(
            C2S,
            MessageKind::RESPONSE,
            correlation(S2C, 7),
            r#"{"jsonrpc":"2.0","id":0,"result":{"role":"assistant"}}"#,
            300,
        ),
        302,
    );
    let spans = h.finish();
    let server = find(&spans, "sampling/createMessage", SpanKind::Server);
    let client = find(&spans, "sampling/createMessage", SpanKind::Client);
    assert_eq!(text(server, "km.initiator").as_deref(), Some("server"));
    assert_eq!((us(server.start_time), us(server.end_time)), (100, 302));
    assert_eq!((us(client.start_time), us(client.end_time)), (101, 300));
    assert_eq!(server.events.events.len(), 1, "the correlated anomaly");
    assert_eq!(server.events.events[0].name, "km.plugin.event");
    let session = find(&spans, "km monitor", SpanKind::Internal);
    assert_eq!(session.events.events.len(), 1, "the drift has no request");
}

#[test]
fn ids_written_into_a_forwarded_request_are_the_spans_ids() {
    let mut h = harness(false);
    let trace = TraceId::from_hex(TRACE).expect("hex");
    let server_id = SpanId::from_hex("1111111111111111").expect("hex");
    let client_id = SpanId::from_hex("2222222222222222").expect("hex");
    h.worker.take(Record::Assigned {
        key: (C2S, 1),
        trace,
        server: server_id,
        client: client_id,
        parent: None,
    });
    // The forwarded line carries km's own context now: it must not become the parent.
    h.forward(
        line(
            C2S,
            MessageKind::REQUEST,
            correlation(C2S, 1),
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"_meta":{{"traceparent":"00-{TRACE}-2222222222222222-01"}}}}}}"#
            ),
            10,
        ),
        12,
    );
    h.forward(
        line(
            S2C,
            MessageKind::RESPONSE,
            correlation(C2S, 1),
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            20,
        ),
        21,
    );
    let spans = h.finish();
    let server = find(&spans, "ping", SpanKind::Server);
    let client = find(&spans, "ping", SpanKind::Client);
    assert_eq!(server.span_context.trace_id(), trace);
    assert_eq!(server.span_context.span_id(), server_id);
    assert_eq!(server.parent_span_id, SpanId::INVALID);
    assert_eq!(client.span_context.span_id(), client_id);
    assert_eq!(client.parent_span_id, server_id);
}

/// The duration histograms' data points as a periodic reader exports them: per attribute set
/// (sorted), its count, sum, min, max and bucket counts.
#[derive(Debug, Clone, Default)]
struct Points(Arc<Mutex<Vec<Point>>>);

/// Attributes, count, sum, min, max, bucket counts.
type Point = (Vec<String>, u64, f64, Option<f64>, Option<f64>, Vec<u64>);

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for Points {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        let mut points = self.0.lock().expect("lock");
        points.clear();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                if let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() {
                    for p in h.data_points() {
                        let mut attributes: Vec<String> = p
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        attributes.sort();
                        points.push((
                            attributes,
                            p.count(),
                            p.sum(),
                            p.min(),
                            p.max(),
                            p.bucket_counts().collect(),
                        ));
                    }
                }
            }
        }
        points.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        opentelemetry_sdk::metrics::Temporality::Cumulative
    }
}

#[test]
fn recording_through_bound_handles_exports_the_same_histogram() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    let provider = |points: &Points| {
        SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(points.clone()).build())
            .build()
    };
    let histogram = |provider: &SdkMeterProvider| {
        provider
            .meter("km")
            .f64_histogram("mcp.server.operation.duration")
            .with_unit("s")
            .with_boundaries(super::worker::MCP_BUCKETS.to_vec())
            .build()
    };
    let (plain, bound) = (Points::default(), Points::default());
    let (plain_provider, bound_provider) = (provider(&plain), provider(&bound));
    let direct = histogram(&plain_provider);
    let mut durations = super::worker::Durations::new(histogram(&bound_provider));
    // More attribute sets than keep a handle (so that handles are dropped and sets bound
    // again), each coming back at intervals, in both attribute orders, plus an empty set.
    let mut recorded = 0;
    for round in 0..3u32 {
        for i in 0..40u32 {
            let tool = format!("tool-{}", (i * 7 + round) % 23);
            let mut attributes = vec![
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("gen_ai.tool.name", tool),
            ];
            if i % 5 == 0 {
                attributes.push(KeyValue::new("error.type", "tool_error"));
            }
            if i % 3 == 0 {
                attributes.reverse();
            }
            if i % 11 == 0 {
                attributes.clear();
            }
            let seconds = f64::from(i * 37 % 101) * 0.003 + f64::from(round) * 0.5;
            direct.record(seconds, &attributes);
            durations.record(seconds, &attributes);
            recorded += 1;
        }
        for p in [&plain_provider, &bound_provider] {
            p.force_flush().expect("flush");
        }
        let (plain, bound) = (plain.0.lock().expect("lock"), bound.0.lock().expect("lock"));
        assert!(plain.len() > 16, "{} sets", plain.len());
        assert_eq!(plain.iter().map(|p| p.1).sum::<u64>(), recorded);
        assert_eq!(*plain, *bound, "after round {round}");
    }
}

/// The relay hands the telemetry thread the lines of a direction nothing intercepts after it
/// forwarded them, each pump when it gets to it: the tool's answer may be handed over before the
/// client's answer to the server's request made within the call, although that was read (and
/// forwarded) first. Spans end at the lines' read times, so the nesting holds.
#[test]
fn observed_lines_end_their_spans_at_their_read_times_in_whatever_order_they_are_handed_over() {
    let mut h = harness(false);
    let batch =
        |lines: Vec<Envelope>| Record::Lines(Arc::new(crate::monitor::dispatch::Batch::new(lines)));
    h.worker.take(batch(vec![line(
        C2S,
        MessageKind::REQUEST,
        correlation(C2S, 1),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"sample","arguments":{}}}"#,
        1_000,
    )]));
    h.worker.take(batch(vec![line(
        S2C,
        MessageKind::REQUEST,
        correlation(S2C, 2),
        r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{"messages":[]}}"#,
        2_000,
    )]));
    // Handed over first, read last.
    h.worker.take(batch(vec![line(
        S2C,
        MessageKind::RESPONSE,
        correlation(C2S, 1),
        r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
        4_000,
    )]));
    h.worker.take(batch(vec![
        line(
            C2S,
            MessageKind::RESPONSE,
            correlation(S2C, 2),
            r#"{"jsonrpc":"2.0","id":0,"result":{"role":"assistant"}}"#,
            3_000,
        ),
        line(
            C2S,
            MessageKind::NOTIFICATION,
            None,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            3_500,
        ),
    ]));
    let spans = h.finish();
    let call = find(&spans, "tools/call sample", SpanKind::Server);
    let sampling = find(&spans, "sampling/createMessage", SpanKind::Server);
    assert_eq!((us(call.start_time), us(call.end_time)), (1_000, 4_000));
    assert_eq!(
        (us(sampling.start_time), us(sampling.end_time)),
        (2_000, 3_000)
    );
}
