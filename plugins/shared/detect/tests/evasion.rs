//! Evasion: secrets written with escapes, in object keys, split across strings, in nested JSON,
//! inside a batch, and lines over the inspection limits.

mod common;

use common::*;
use km_detect::{redact, Category, Detector, Incomplete, Limits, Location, Marker};

fn rules(line: &str) -> Vec<(&'static str, String, Location)> {
    detector()
        .scan_line(line.as_bytes())
        .findings
        .iter()
        .map(|f| (f.rule, f.path.clone(), f.location))
        .collect()
}

fn escape_all(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

#[test]
fn secret_written_with_unicode_escapes_is_found() {
    let line = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"k":"{}"}}}}}}"#,
        escape_all(AWS_KEY_ID)
    );
    assert!(!line.contains(AWS_KEY_ID));
    assert_eq!(
        rules(&line),
        [(
            "aws-access-key-id",
            "params.arguments.k".to_owned(),
            Location::Value
        )]
    );
}

#[test]
fn secret_with_escaped_slashes_is_found() {
    let hook = "https://hooks.slack.com/services/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";
    let line = format!(
        r#"{{"id":2,"result":{{"url":"{}"}}}}"#,
        hook.replace('/', "\\/")
    );
    assert_eq!(
        rules(&line),
        [(
            "slack-webhook-url",
            "result.url".to_owned(),
            Location::Value
        )]
    );
    let redacted = redact(
        line.as_bytes(),
        &detector().scan_line(line.as_bytes()).findings,
        Marker::Rule,
    )
    .expect("redacts");
    let v: serde_json::Value = serde_json::from_slice(&redacted).expect("still JSON");
    assert!(!v["result"]["url"]
        .as_str()
        .expect("string")
        .contains("q9Wm2Lx7"));
}

#[test]
fn secret_used_as_an_object_key_is_found_and_kept_out_of_paths() {
    let pat = github_pat("Zq8Wm2Lx7Rt4Vb9Nc3Kp6Yd1Sf5Hg0");
    let line = format!(r#"{{"id":3,"params":{{"arguments":{{"{pat}":{{"note":"{pat}"}}}}}}}}"#);
    let found = rules(&line);
    assert_eq!(
        found[0],
        (
            "github-personal-access-token",
            "params.arguments.*".to_owned(),
            Location::Key
        )
    );
    // The value under the secret key is reported with the key masked in its path.
    assert_eq!(
        found[1],
        (
            "github-personal-access-token",
            "params.arguments.*.note".to_owned(),
            Location::Value
        )
    );
    let report = detector().scan_line(line.as_bytes());
    let out = redact(line.as_bytes(), &report.findings, Marker::Rule).expect("redacts");
    let out = String::from_utf8(out.into_owned()).expect("utf8");
    assert!(!out.contains(&pat));
    serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
}

#[test]
fn secret_split_across_array_fragments_is_found_once_with_one_span_per_fragment() {
    let line = r#"{"id":4,"params":{"arguments":{"parts":["AKIAZ7QW","3RT5YU2I","OP4N"]}}}"#;
    let report = detector().scan_line(line.as_bytes());
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let f = &report.findings[0];
    assert_eq!(
        (f.rule, f.location, f.path.as_str()),
        (
            "aws-access-key-id",
            Location::Fragments,
            "params.arguments.parts"
        )
    );
    assert_eq!(f.spans.len(), 3);
    let out = redact(line.as_bytes(), &report.findings, Marker::Rule).expect("redacts");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
    let joined: String = v["params"]["arguments"]["parts"]
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_str().expect("str"))
        .collect();
    assert!(!joined.contains("AKIAZ7QW3RT5YU2IOP4N"), "{joined}");
}

#[test]
fn secret_split_across_sibling_strings_of_an_object_is_found() {
    let pat = github_pat("Lm3Qx8Wz2Rk7Tv5Nb9Hc4Jd6Pf1Gs0");
    let (a, b) = pat.split_at(12);
    let line =
        format!(r#"{{"id":5,"params":{{"arguments":{{"token":{{"p1":"{a}","p2":"{b}"}}}}}}}}"#);
    let found = rules(&line);
    assert_eq!(
        found,
        [(
            "github-personal-access-token",
            "params.arguments.token".to_owned(),
            Location::Fragments
        )]
    );
}

#[test]
fn secret_in_json_nested_in_a_string_is_found_and_redacted_inside() {
    let inner = serde_json::json!({"config": {"stripe": {"secret": STRIPE_LIVE}}}).to_string();
    let line = serde_json::json!({"jsonrpc": "2.0", "id": 6, "result": {"content": [{"type": "text", "text": inner}]}}).to_string();
    let report = detector().scan_line(line.as_bytes());
    let f = report
        .findings
        .iter()
        .find(|f| f.rule == "stripe-secret-key")
        .expect("found");
    assert_eq!(f.location, Location::Nested);
    assert_eq!(f.path, "result.content[0].text#config.stripe.secret");
    let out = redact(line.as_bytes(), &report.findings, Marker::Rule).expect("redacts");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("outer JSON valid");
    let text = v["result"]["content"][0]["text"].as_str().expect("text");
    let inner: serde_json::Value = serde_json::from_str(text).expect("inner JSON still valid");
    assert_eq!(
        inner["config"]["stripe"]["secret"],
        "[REDACTED:stripe-secret-key]"
    );
}

#[test]
fn secrets_inside_a_batch_are_found_with_their_index() {
    let line = format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"ping"}},{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"x","arguments":{{"key":"{AWS_KEY_ID}"}}}}}}]"#
    );
    assert_eq!(
        rules(&line),
        [(
            "aws-access-key-id",
            "[1].params.arguments.key".to_owned(),
            Location::Value
        )]
    );
}

#[test]
fn a_line_over_the_inspection_limit_is_reported_not_scanned() {
    let det = Detector::builder()
        .limits(Limits::default().max_line_bytes(64))
        .build();
    let line = format!(
        r#"{{"id":1,"params":{{"k":"{AWS_KEY_ID}","pad":"{}"}}}}"#,
        "x".repeat(100)
    );
    assert_eq!(
        det.check_size(line.len()),
        Some(Incomplete::LineTooLarge {
            len: line.len(),
            limit: 64
        })
    );
    let r = det.scan_line(line.as_bytes());
    assert!(r.findings.is_empty());
    assert_eq!(
        r.incomplete,
        Some(Incomplete::LineTooLarge {
            len: line.len(),
            limit: 64
        })
    );
    assert!(!r.is_clean());
}

#[test]
fn nesting_past_the_depth_limit_is_reported() {
    let det = Detector::builder()
        .limits(Limits::default().max_depth(8))
        .build();
    let line = format!("{}{}", "[".repeat(20), "]".repeat(20));
    assert_eq!(
        det.scan_line(line.as_bytes()).incomplete,
        Some(Incomplete::TooDeep { limit: 8 })
    );
    // The default limit survives a very deep line without exhausting the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        detector().scan_line(deep.as_bytes()).incomplete,
        Some(Incomplete::TooDeep { .. })
    ));
}

#[test]
fn too_many_findings_are_capped_and_reported() {
    let det = Detector::builder()
        .limits(Limits::default().max_findings(3))
        .build();
    let items: Vec<String> = (0..10).map(|_| format!("\"{AWS_KEY_ID}\"")).collect();
    let line = format!(
        r#"{{"keys":[{}]}}"#,
        items.join(",x".get(..1).expect("comma"))
    );
    let r = det.scan_line(line.as_bytes());
    assert_eq!(
        r.findings
            .iter()
            .filter(|f| f.category == Category::SECRET)
            .count(),
        3
    );
    assert_eq!(r.incomplete, Some(Incomplete::TooManyFindings { limit: 3 }));
}

#[test]
fn a_line_that_is_not_json_is_scanned_as_text_and_redacted_in_place() {
    let line = format!("not json: token={AWS_KEY_ID} end");
    let r = detector().scan_line(line.as_bytes());
    assert!(r.malformed_at.is_some());
    assert_eq!(r.findings[0].location, Location::Text);
    let out = redact(line.as_bytes(), &r.findings, Marker::Rule).expect("redacts");
    assert_eq!(
        out.as_ref(),
        b"not json: token=[REDACTED:aws-access-key-id] end"
    );
}
