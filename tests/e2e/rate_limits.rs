//! Rate limits end to end: a real `km monitor` session whose refresher bursts (a
//! refresh every second) against the real `km-api-server` behind pinned TLS 1.3 with
//! `--rate-limit 2/4s`. The server answers 429 with `Retry-After`; km waits as told (checked on
//! the server's own log of decisions, not on timings measured here), the relay stays
//! byte-identical meanwhile, and the plugin keeps its token. Repeated failed authentications
//! become abuse signals the server lists, of the customer and of the installation (km's device
//! identity) that made them, a seat refused again and again included.

use std::time::Duration;

use km_tests::{
    describe, run_ok, settle, spare_pin, ApiServer, Customer, EchoSession, KmEnv, TestCa,
};
use serde_json::Value;

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_0123456789",
};

fn configure(env: &KmEnv, server: &ApiServer, ca: &TestCa, pin: &str) {
    // api-logger sends no batch during the test (a flush an hour away, batches larger than
    // the session): the refresher's authentications are the only requests, one at a time.
    env.write_config(&format!(
        "api_key = \"{}\"\napi_url = \"{}\"\napi_ca = \"{}\"\napi_pins = [\"{pin}\", \"{}\"]\n\
         \n[plugins.api-logger]\nflush_interval_ms = 3600000\nbatch_size = 1000\n",
        ALICE.api_key,
        server.url,
        ca.cert_file.display(),
        spare_pin()
    ));
}

/// Alice's rate-limit decisions in the server's log, oldest first.
fn decisions(server: &ApiServer) -> Vec<Value> {
    server.control_json("rate-limit")["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["customer"] == ALICE.id)
        .collect()
}

/// The reference API behind TLS with a test CA's certificate, started with `args`, Alice's
/// stamped api-logger installed, and `env` configured for the API with its pin.
fn pinned_api(env: &KmEnv, args: &[&str]) -> ApiServer {
    let ca = TestCa::new(env.dir.path(), "api");
    let cert = ca.issue("server");
    let server = ApiServer::builder(env.dir.path())
        .customers(&[(&ALICE, "pro")])
        .tls(&ca, &cert)
        .args(args)
        .start();
    env.install_stamped_api_logger(&server, &ALICE);
    configure(env, &server, &ca, &cert.pin);
    server
}

/// This installation's device id, as `km plugin-status --json` shows it.
fn device_id(env: &KmEnv) -> String {
    let status = run_ok(env.km().args(["plugin-status", "--json"]));
    let records: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    records
        .as_array()
        .and_then(|all| all.iter().find(|r| r["plugin"] == "api-logger"))
        .and_then(|r| r["device_id"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no device id\n{}", describe(&status)))
}

/// The abuse signals the server lists.
fn signals(server: &ApiServer) -> Vec<Value> {
    server.control_json("abuse")["signals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The signal about `subject_kind` `subject`, if one was raised.
fn signal_of(signals: &[Value], subject_kind: &str, subject: &str) -> Option<Value> {
    signals
        .iter()
        .find(|s| s["subject_kind"] == subject_kind && s["subject"] == subject)
        .cloned()
}

fn refused(decisions: &[Value]) -> usize {
    decisions.iter().filter(|d| d["status"] == 429).count()
}

#[test]
fn under_a_burst_of_refreshes_km_waits_as_told_and_the_relay_is_undisturbed() {
    let env = KmEnv::new();
    let server = pinned_api(&env, &["--rate-limit", "2/4s"]);

    let mut session = EchoSession::start(&env);
    let lines: [&[u8]; 4] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n",
        b"not json at all \xff\xfe\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{}}\r\n",
        b"\n",
    ];
    // Relay while the refresher runs into the limit, until the server has refused km twice
    // and admitted it again after each refusal.
    let refused_twice = |log: &Vec<Value>| {
        let admitted_after_last_refusal = log
            .iter()
            .rposition(|d| d["status"] == 429)
            .is_some_and(|i| log[i + 1..].iter().any(|d| d["status"] == 200));
        refused(log) >= 2 && admitted_after_last_refusal
    };
    let log = settle(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            for line in lines {
                session.echo(line);
            }
            decisions(&server)
        },
        refused_twice,
    );
    assert!(
        refused_twice(&log),
        "the server did not refuse km twice: {log:#?}"
    );
    // The log is read while km still runs, so every request in it was one of the refresher's,
    // made one after the other.
    for (i, decision) in log.iter().enumerate() {
        if decision["status"] != 429 {
            continue;
        }
        let at = decision["at_ms"].as_u64().expect("at_ms");
        let retry_after = decision["retry_after"].as_u64().expect("a Retry-After");
        assert!(retry_after >= 1, "{decision}");
        if let Some(next) = log.get(i + 1) {
            let next_at = next["at_ms"].as_u64().expect("at_ms");
            assert!(
                next_at >= at + retry_after * 1000,
                "km came back {} ms after a 429 that said Retry-After: {retry_after}\n{log:#?}",
                next_at - at
            );
        }
    }
    for line in lines {
        session.echo(line);
    }
    session.finish();

    // The plugin kept its token through the refusals, and says why it did not refresh.
    let status = run_ok(env.km().args(["plugin-status", "--json"]));
    let records: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let record = records
        .as_array()
        .and_then(|all| all.iter().find(|r| r["plugin"] == "api-logger"))
        .cloned()
        .unwrap_or_else(|| panic!("no api-logger\n{}", describe(&status)));
    assert_eq!(record["authorized"], true, "{record:#}");
    // The refusals are an abuse signal of the customer.
    let abuse = server.control_json("abuse");
    let signal = abuse["signals"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|s| s["kind"] == "rate-limited" && s["subject"] == ALICE.id)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no rate-limited signal: {abuse:#}"));
    assert!(signal["count"].as_u64().is_some_and(|n| n >= 2), "{signal}");
}

#[test]
fn repeated_failed_authentications_are_listed_as_abuse_signals() {
    let env = KmEnv::new();
    let server = pinned_api(&env, &["--abuse-threshold", "3/10m"]);
    // The customer is gone from the API (a cancelled account): its build keeps asking, from
    // this installation.
    server.set_customers(&[]);
    let mut device = None;
    for attempt in 1..=4 {
        let out = env
            .km()
            .args(["plugin-refresh", "--json"])
            .output()
            .expect("km runs");
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        // km made the installation's identity for the first request to the API.
        let device = device.get_or_insert_with(|| device_id(&env));
        let signals = signals(&server);
        if attempt < 3 {
            assert!(signals.is_empty(), "raised after {attempt}: {signals:?}");
            continue;
        }
        assert_eq!(signals.len(), 2, "{signals:#?}");
        for (subject_kind, subject) in [("customer", ALICE.id), ("device", device.as_str())] {
            let signal = signal_of(&signals, subject_kind, subject)
                .unwrap_or_else(|| panic!("no signal of {subject_kind} {subject}: {signals:#?}"));
            assert_eq!(signal["kind"], "repeated-auth-failures");
            assert_eq!(signal["count"], attempt);
            assert_eq!(signal["last_reason"], "unknown API key");
        }
    }
}

#[test]
fn an_installation_refused_a_seat_again_and_again_is_listed_as_an_abuse_signal() {
    let first = KmEnv::new();
    let ca = TestCa::new(first.dir.path(), "api");
    let cert = ca.issue("server");
    let server = ApiServer::builder(first.dir.path())
        .customers(&[(&ALICE, "pro")])
        .seat_limit(&ALICE, 1)
        .tls(&ca, &cert)
        .args(&["--abuse-threshold", "2/10m"])
        .start();
    // Two installations of Alice's build; the first takes her one seat.
    let second = KmEnv::new();
    for env in [&first, &second] {
        env.install_stamped_api_logger(&server, &ALICE);
        configure(env, &server, &ca, &cert.pin);
    }
    let (code, record, out) = first.plugin_refresh("api-logger");
    assert_eq!(code, 0, "{record:#}\n{}", describe(&out));
    assert_eq!(record["authorized"], true, "{record:#}");
    for attempt in 1..=3 {
        let (code, record, out) = second.plugin_refresh("api-logger");
        assert_eq!(code, 1, "{record:#}\n{}", describe(&out));
        assert!(
            record["reason"]
                .as_str()
                .is_some_and(|r| r.contains("seat limit reached")),
            "attempt {attempt}: {record:#}"
        );
    }
    let (holder, refused) = (device_id(&first), device_id(&second));
    assert_ne!(holder, refused);
    let signals = signals(&server);
    let signal = signal_of(&signals, "device", &refused)
        .unwrap_or_else(|| panic!("no signal of the refused installation: {signals:#?}"));
    assert_eq!(signal["kind"], "repeated-auth-failures");
    assert_eq!(signal["count"], 3, "{signal}");
    let reason = signal["last_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("seat limit reached") && reason.contains(&refused),
        "{signal}"
    );
    // The customer's failures are the same three; the installation holding the seat failed
    // nothing.
    let customer = signal_of(&signals, "customer", ALICE.id)
        .unwrap_or_else(|| panic!("no signal of the customer: {signals:#?}"));
    assert_eq!(customer["count"], 3, "{customer}");
    assert!(
        signal_of(&signals, "device", &holder).is_none(),
        "{signals:#?}"
    );
}
