//! The recorder's rules, one behaviour per test.

use super::*;
use serde_json::json;

fn actor() -> Actor {
    Actor {
        user: "alice".into(),
        host: "laptop".into(),
        member: None,
    }
}

fn recorder(policy: Policy) -> Recorder {
    let mut r = Recorder::new(policy, "s1", actor());
    let start = r.start(&["node".into(), "crm.js".into()], Map::new(), 1);
    assert_eq!(start.len(), 1);
    r
}

fn line<'a>(
    seq: u64,
    direction: Direction,
    kind: MessageKind,
    bytes: &'a [u8],
    corr: &'a str,
    method: &'a str,
) -> Line<'a> {
    Line {
        seq,
        direction,
        kind,
        is_error: bytes.windows(7).any(|w| w == b"\"error\""),
        bytes,
        corr,
        method,
        timestamp_us: 1_000_000 * seq,
        latency_us: (kind == MessageKind::RESPONSE).then_some(5),
    }
}

const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_customer","arguments":{"customer_id":"c-42"}}}"#;
const OK: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
const ERR: &[u8] = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"nope"}}"#;

/// The records written, each checked: a call written from its journal note is exactly the
/// JSON of the record as it stands (a note made stale by a later annotation would differ).
fn written(effects: Vec<Effect>) -> Vec<(Record, Option<Captured>)> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Write(r, c) => Some((r, c)),
            Effect::WriteNoted(r, json) => {
                assert_eq!(
                    String::from_utf8_lossy(&json),
                    String::from_utf8_lossy(&serde_json::to_vec(&r).expect("serialises")),
                    "a call written from a stale note"
                );
                Some((r, None))
            }
            Effect::Journal(_) => None,
        })
        .collect()
}

/// The journal note an effect is, read back.
fn noted(effect: &Effect) -> Option<Record> {
    match effect {
        Effect::Journal(json) => Some(serde_json::from_slice(json).expect("a note is a record")),
        _ => None,
    }
}

/// A response, and what settles after it.
fn respond(r: &mut Recorder, l: Line<'_>) -> Vec<Effect> {
    let mut out = r.line(&l);
    out.extend(r.flush(u64::MAX));
    out
}

fn one(effects: Vec<Effect>) -> Record {
    let mut w = written(effects);
    assert_eq!(w.len(), 1, "{w:?}");
    w.remove(0).0
}

#[test]
fn a_request_and_its_response_are_one_call() {
    let mut r = recorder(Policy::default());
    let effects = r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert!(noted(&effects[0]).is_some_and(|a| a.outcome == "unanswered"));
    let call = one(respond(
        &mut r,
        line(2, Direction::Response, MessageKind::RESPONSE, OK, "c:1", ""),
    ));
    assert_eq!(call.kind, "call");
    assert_eq!(call.method, "tools/call");
    assert_eq!(call.tool, "lookup_customer");
    assert_eq!(call.outcome, "ok");
    assert_eq!(call.server.as_ref().expect("server").label, "node crm.js");
    assert_eq!(call.latency_us, Some(5));
    let req = call.request.expect("request");
    assert_eq!(req.bytes, CALL.len() as u64);
    assert_eq!(req.seq, Some(1));
    assert!(req.sha256.is_some() && call.response.expect("response").sha256.is_some());
    assert!(call.content.is_none());

    r.line(&line(
        3,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:2",
        "tools/call",
    ));
    let err = one(respond(
        &mut r,
        line(
            4,
            Direction::Response,
            MessageKind::RESPONSE,
            ERR,
            "c:2",
            "",
        ),
    ));
    assert_eq!(err.outcome, "error");
    assert_eq!(err.error_code, Some(-32000));
    assert_eq!(r.pending(), 0);
}

#[test]
fn a_blocked_request_is_recorded_from_its_verdict_and_kms_answer_ignored() {
    let mut r = recorder(Policy::default());
    // The filter's finding comes first, then its verdict; the request is never forwarded.
    assert!(r
        .event(
            StreamEventKind::PLUGIN,
            &json!({"plugin": "advanced-filters", "kind": "finding",
                    "data": {"category": "secret", "rule": "aws-access-key-id", "correlation_id": "c:1"}}),
            10,
        )
        .is_empty());
    let call = one(r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "advanced-filters", "action": "block", "rules": ["aws-access-key-id"],
                "reason": "a secret", "direction": "client_to_server", "kind": "request",
                "method": "tools/call", "target": "send", "correlation_id": "c:1"}),
        11,
    ));
    assert_eq!(call.outcome, "blocked");
    assert_eq!(call.tool, "send");
    assert_eq!(call.direction, "request");
    assert_eq!(call.rules, ["aws-access-key-id"]);
    assert_eq!(call.plugins, ["advanced-filters"]);
    assert_eq!(call.findings, ["secret"]);
    assert_eq!(call.finding_rules, ["aws-access-key-id"]);
    assert!(written(respond(
        &mut r,
        line(
            2,
            Direction::Response,
            MessageKind::RESPONSE,
            ERR,
            "c:1",
            ""
        )
    ))
    .is_empty());
}

#[test]
fn redactions_of_either_line_mark_the_call() {
    let mut r = recorder(Policy::default());
    r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "f", "action": "replace", "rules": ["email"], "kind": "request", "correlation_id": "c:1"}),
        1,
    );
    r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    let call = one(respond(
        &mut r,
        line(2, Direction::Response, MessageKind::RESPONSE, OK, "c:1", ""),
    ));
    assert_eq!(call.outcome, "redacted");
    assert_eq!(call.rules, ["email"]);

    r.line(&line(
        3,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:2",
        "tools/call",
    ));
    r.event(
        StreamEventKind::PLUGIN,
        &json!({"plugin": "f", "kind": "finding", "data": {"findings": [{"category": "pii", "rule": "payment-card"}], "correlation_id": "c:2"}}),
        3,
    );
    r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "f", "action": "replace", "rules": ["payment-card"], "kind": "response", "correlation_id": "c:2"}),
        3,
    );
    let call = one(respond(
        &mut r,
        line(4, Direction::Response, MessageKind::RESPONSE, OK, "c:2", ""),
    ));
    assert_eq!(call.outcome, "redacted");
    assert_eq!(call.findings, ["pii"]);
    // A block of the response wins over everything.
    r.line(&line(
        5,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:3",
        "tools/call",
    ));
    r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "g", "action": "block", "rules": ["poison"], "kind": "response", "correlation_id": "c:3"}),
        5,
    );
    let call = one(respond(
        &mut r,
        line(
            6,
            Direction::Response,
            MessageKind::RESPONSE,
            ERR,
            "c:3",
            "",
        ),
    ));
    assert_eq!(call.outcome, "blocked");
}

#[test]
fn the_member_event_names_the_actor_from_then_on() {
    let mut r = recorder(Policy::default());
    let announced = one(r.event(
        StreamEventKind::PLUGIN,
        &json!({"plugin": "team-collaboration", "kind": "member", "data": {"member": "m-7", "team": "core"}}),
        1,
    ));
    assert_eq!(announced.kind, "actor");
    assert_eq!(announced.actor.member.as_deref(), Some("m-7"));
    r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    let call = one(respond(
        &mut r,
        line(2, Direction::Response, MessageKind::RESPONSE, OK, "c:1", ""),
    ));
    assert_eq!(call.actor.member.as_deref(), Some("m-7"));
    assert_eq!(call.actor.user, "alice");
}

#[test]
fn capture_names_the_subject_from_the_policy_or_the_actor() {
    let policy = Policy::parse(
        "[capture]\nenabled = true\n[[capture.subject]]\ntool = \"lookup_customer\"\npath = \"$.arguments.customer_id\"\n",
    )
    .expect("parses");
    let mut r = recorder(policy);
    r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    let mut w = written(respond(
        &mut r,
        line(2, Direction::Response, MessageKind::RESPONSE, OK, "c:1", ""),
    ));
    let (_, captured) = w.remove(0);
    let captured = captured.expect("captured");
    assert_eq!(captured.subject, "c-42");
    assert_eq!(captured.text, [CALL, b"\n", OK].concat());
    let other = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"weather","arguments":{}}}"#;
    r.line(&line(
        3,
        Direction::Request,
        MessageKind::REQUEST,
        other,
        "c:2",
        "tools/call",
    ));
    let mut w = written(respond(
        &mut r,
        line(4, Direction::Response, MessageKind::RESPONSE, OK, "c:2", ""),
    ));
    assert_eq!(w.remove(0).1.expect("captured").subject, "alice@laptop");
    // Without capture nothing is kept.
    let mut plain = recorder(Policy::default());
    plain.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    let mut w = written(respond(
        &mut plain,
        line(2, Direction::Response, MessageKind::RESPONSE, OK, "c:1", ""),
    ));
    assert!(w.remove(0).1.is_none());
}

#[test]
fn what_is_left_at_the_end_or_too_long_is_unanswered_or_cancelled() {
    let mut r = recorder(Policy::default());
    r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    r.line(&line(
        2,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:2",
        "tools/call",
    ));
    let cancel =
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}"#;
    let n = one(r.line(&line(
        3,
        Direction::Request,
        MessageKind::NOTIFICATION,
        cancel,
        "c:2",
        "notifications/cancelled",
    )));
    assert_eq!(n.kind, "notification");
    assert!(r.expire(2_000_000).is_empty(), "not yet");
    let expired = written(r.expire(1_000_000 + 300_500_000));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0.outcome, "unanswered");
    let end = written(r.event(
        StreamEventKind::END,
        &json!({"exit_code": 0, "messages": {"total": 3}}),
        400_000,
    ));
    assert_eq!(end.len(), 2);
    assert_eq!(end[0].0.outcome, "cancelled");
    assert_eq!(end[1].0.kind, "session.end");
    assert_eq!(end[1].0.detail["messages"]["total"], 3);
}

#[test]
fn requests_beyond_the_pending_bound_are_recorded_unanswered_at_once_and_counted() {
    let mut r = recorder(Policy::default());
    let over = 10;
    let mut early = Vec::new();
    for n in 1..=(MAX_PENDING + over) as u64 {
        let corr = format!("c:{n}");
        early.extend(written(r.line(&line(
            n,
            Direction::Request,
            MessageKind::REQUEST,
            CALL,
            &corr,
            "tools/call",
        ))));
    }
    assert_eq!(r.pending(), MAX_PENDING, "the table stays at its bound");
    assert_eq!(r.evicted(), over as u64);
    // The oldest ones, in order, each said why.
    let corrs: Vec<&str> = early.iter().map(|(c, _)| c.corr.as_str()).collect();
    let want: Vec<String> = (1..=over).map(|n| format!("c:{n}")).collect();
    assert_eq!(corrs, want);
    for (call, _) in &early {
        assert_eq!(call.kind, "call");
        assert_eq!(call.outcome, "unanswered");
        assert_eq!(call.detail["why"], EVICTED_WHY);
    }
    // A late annotation for one of them still reaches the trail, as its own record.
    let late = one(r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "f", "action": "replace", "rules": ["r"], "kind": "response", "correlation_id": "c:1"}),
        1,
    ));
    assert!(late.detail.contains_key("late"), "{late:?}");
    // The answered ones leave the table; the rest are unanswered at the end, which counts the
    // evicted.
    let answered = (MAX_PENDING + over) as u64;
    respond(
        &mut r,
        line(
            answered + 1,
            Direction::Response,
            MessageKind::RESPONSE,
            OK,
            &format!("c:{answered}"),
            "",
        ),
    );
    assert_eq!(r.pending(), MAX_PENDING - 1);
    let end = written(r.event(StreamEventKind::END, &json!({}), 1));
    assert_eq!(end.len(), MAX_PENDING);
    assert_eq!(end[0].0.corr, format!("c:{}", over + 1), "oldest first");
    let last = &end[MAX_PENDING - 1].0;
    assert_eq!(last.kind, "session.end");
    assert_eq!(last.detail["pending_evicted"], over as u64);
}

#[test]
fn the_journal_notes_are_every_call_not_yet_written_as_it_stands() {
    let mut r = recorder(Policy::default());
    for n in 1..=3u64 {
        r.line(&line(
            n,
            Direction::Request,
            MessageKind::REQUEST,
            CALL,
            &format!("c:{n}"),
            "tools/call",
        ));
    }
    r.line(&line(
        4,
        Direction::Response,
        MessageKind::RESPONSE,
        ERR,
        "c:2",
        "",
    ));
    // A response to no request is not journalled (it waits for a verdict to name it).
    let mut odd = line(5, Direction::Response, MessageKind::RESPONSE, OK, "c:9", "");
    odd.timestamp_us = 4_000_001; // before the call above settles
    r.line(&odd);
    let notes = journal_notes(&mut r);
    // Made from the records in place, which are left as they were: made again, the same bytes
    // (and the calls written below are checked against their notes).
    let (mut once, mut again) = (Vec::new(), Vec::new());
    r.journal_lines(&mut once);
    r.journal_lines(&mut again);
    assert_eq!(once, again);
    let summary: Vec<(&str, &str)> = notes
        .iter()
        .map(|n| (n.corr.as_str(), n.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("c:1", "unanswered"),
            ("c:3", "unanswered"),
            ("c:2", "error")
        ]
    );
    assert!(notes[2].response.is_some());
    assert!(notes[0].response.is_none() && notes[0].rules.is_empty());
    let calls = written(r.flush(u64::MAX));
    let c2 = calls
        .iter()
        .find(|(c, _)| c.corr == "c:2")
        .expect("written");
    assert_eq!(c2.0.outcome, "error", "the record was put back as it was");
    assert_eq!(
        journal_notes(&mut r).len(),
        2,
        "written calls leave the journal"
    );
}

/// The records of the journal's lines ([`Recorder::journal_lines`]), each line checked to be
/// exactly its record's JSON.
fn journal_notes(r: &mut Recorder) -> Vec<Record> {
    let mut lines = Vec::new();
    r.journal_lines(&mut lines);
    assert!(lines.is_empty() || lines.ends_with(b"\n"));
    lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let record: Record = serde_json::from_slice(l).expect("a record");
            assert_eq!(l, record::to_json(&record).as_slice());
            record
        })
        .collect()
}

#[test]
fn settling_calls_are_written_in_the_order_they_are_due() {
    let mut r = recorder(Policy::default());
    for n in [1u64, 2, 3] {
        r.line(&line(
            n,
            Direction::Request,
            MessageKind::REQUEST,
            CALL,
            &format!("c:{n}"),
            "tools/call",
        ));
    }
    // Responses read out of order of their requests, and one whose time is earlier than the
    // one before it (the two directions are read by different threads).
    let mut respond_at = |corr: &str, seq: u64, t: u64| {
        let mut l = line(
            seq,
            Direction::Response,
            MessageKind::RESPONSE,
            OK,
            corr,
            "",
        );
        l.timestamp_us = t;
        r.line(&l)
    };
    respond_at("c:2", 4, 10_000_000);
    respond_at("c:1", 5, 10_000_050);
    respond_at("c:3", 6, 10_000_020);
    assert!(written(r.flush(10_000_000 + SETTLE_US - 1)).is_empty());
    assert_eq!(r.settling(), 3);
    let first = written(r.flush(10_000_020 + SETTLE_US));
    let corrs: Vec<&str> = first.iter().map(|(c, _)| c.corr.as_str()).collect();
    assert_eq!(corrs, ["c:2", "c:3"]);
    let rest = written(r.flush(u64::MAX));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0.corr, "c:1");
    assert_eq!(r.settling(), 0);
}

#[test]
fn notifications_events_and_odd_lines_each_get_a_record() {
    let mut r = recorder(Policy::default());
    let progress = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
    assert!(r
        .line(&line(
            1,
            Direction::Response,
            MessageKind::NOTIFICATION,
            progress,
            "",
            "notifications/progress"
        ))
        .is_empty());
    let changed = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
    assert_eq!(
        one(r.line(&line(
            2,
            Direction::Response,
            MessageKind::NOTIFICATION,
            changed,
            "",
            "notifications/tools/list_changed"
        )))
        .kind,
        "notification"
    );
    assert_eq!(
        one(r.line(&line(
            3,
            Direction::Response,
            MessageKind::NON_JSON,
            b"oops",
            "",
            ""
        )))
        .kind,
        "non-json"
    );
    let drift = one(r.event(
        StreamEventKind::PLUGIN,
        &json!({"plugin": "tool-guard", "kind": "drift", "data": {"server": "abc", "tool": "send", "change": "changed", "fields": ["description"], "definition": {"big": 1}}}),
        5,
    ));
    assert_eq!(drift.kind, "change");
    assert_eq!(drift.tool, "send");
    assert!(drift.detail.get("definition").is_none());
    assert_eq!(
        one(r.event(
            StreamEventKind::HOST,
            &json!({"event": "refused", "plugin": "x", "reason": "bad signature"}),
            6
        ))
        .kind,
        "host"
    );
    let gap = one(r.event(StreamEventKind::GAP, &json!({"missed": 12}), 7));
    assert_eq!(gap.detail["missed"], 12);
    assert_eq!(
        one(r.event(
            StreamEventKind::PLUGIN,
            &json!({"plugin": "ml", "kind": "anomaly", "data": {"tool": "t"}}),
            8
        ))
        .kind,
        "anomaly"
    );
    // A response nobody asked for is still recorded.
    let odd = one(respond(
        &mut r,
        line(
            9,
            Direction::Response,
            MessageKind::RESPONSE,
            OK,
            "c:99",
            "",
        ),
    ));
    assert!(odd.detail.contains_key("unmatched"));
    // START after begin_session records nothing twice.
    assert!(r
        .event(
            StreamEventKind::START,
            &json!({"command": ["node", "crm.js"]}),
            1
        )
        .is_empty());
}

#[test]
fn annotations_that_come_after_the_line_join_the_call() {
    let mut r = recorder(Policy::default());
    // km answers a blocked request before the verdict event reaches the plugin.
    let blocked_answer =
        br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32050,"message":"blocked by km plugin f"}}"#;
    assert!(r
        .line(&line(
            1,
            Direction::Response,
            MessageKind::RESPONSE,
            blocked_answer,
            "c:1",
            ""
        ))
        .is_empty());
    r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "f", "action": "block", "rules": ["k"], "kind": "request", "direction": "client_to_server",
                "method": "tools/call", "target": "send", "correlation_id": "c:1"}),
        1,
    );
    // A redacted response, whose verdict and finding come after it.
    let mut calls = written(r.line(&line(
        2,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:2",
        "tools/call",
    )));
    assert!(written(r.line(&line(
        3,
        Direction::Response,
        MessageKind::RESPONSE,
        OK,
        "c:2",
        ""
    )))
    .is_empty());
    r.event(
        StreamEventKind::PLUGIN,
        &json!({"plugin": "f", "kind": "finding", "data": {"category": "pii", "rule": "email", "correlation_id": "c:2"}}),
        3,
    );
    r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "f", "action": "replace", "rules": ["email"], "kind": "response", "correlation_id": "c:2"}),
        3,
    );
    // Nothing is written before the calls settle; then both are, complete.
    assert!(r.flush(3_000_000).is_empty());
    calls.extend(written(r.flush(3_000_000 + SETTLE_US)));
    assert_eq!(calls.len(), 2, "{calls:?}");
    let blocked = &calls[0].0;
    assert_eq!(blocked.outcome, "blocked");
    assert_eq!(blocked.tool, "send");
    assert_eq!(blocked.error_code, Some(-32050));
    assert!(!blocked.detail.contains_key("unmatched"));
    let redacted = &calls[1].0;
    assert_eq!(redacted.outcome, "redacted");
    assert_eq!(redacted.findings, ["pii"]);
    // A response nobody claims is written as unmatched once it settled.
    r.line(&line(
        5,
        Direction::Response,
        MessageKind::RESPONSE,
        OK,
        "c:9",
        "",
    ));
    let odd = written(r.flush(u64::MAX));
    assert!(odd[0].0.detail.contains_key("unmatched"));
}

#[test]
fn a_settling_call_is_journalled_whole_and_late_annotations_still_reach_the_trail() {
    let mut r = recorder(Policy::default());
    r.line(&line(
        1,
        Direction::Request,
        MessageKind::REQUEST,
        CALL,
        "c:1",
        "tools/call",
    ));
    let effects = r.line(&line(
        2,
        Direction::Response,
        MessageKind::RESPONSE,
        OK,
        "c:1",
        "",
    ));
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert!(
        noted(&effects[0]).is_some_and(|j| j.outcome == "ok" && j.response.is_some()),
        "{effects:?}"
    );
    assert_eq!(written(r.flush(u64::MAX)).len(), 1);
    let late = one(r.event(
        StreamEventKind::VERDICT,
        &json!({"plugin": "slow", "action": "replace", "rules": ["r"], "kind": "response", "correlation_id": "c:1"}),
        9,
    ));
    assert_eq!(late.kind, "verdict");
    assert_eq!(late.corr, "c:1");
    assert_eq!(late.outcome, "redacted");
    assert!(late.detail.contains_key("late"));
}
