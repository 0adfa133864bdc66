//! Transport security end to end: the real `km` against the real `km-api-server`
//! behind TLS on loopback, with a CA and certificates made by the test (rcgen). TLS 1.3 only,
//! certificate pins (SPKI SHA-256 of the server's certificate) with a backup pin, a custom CA
//! for the endpoint (`api_ca`), plain http only to loopback; a real premium plugin (api-logger,
//! stamped for a customer) authenticates through the pinned server.

use std::process::Output;

use km_tests::{describe, run_ok, spare_pin, ApiServer, Customer, KmEnv, ServerCert, TestCa};
use serde_json::Value;

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_0123456789",
};

/// Writes config.toml: the key, the endpoint, and optionally its CA and pins.
fn configure(env: &KmEnv, url: &str, ca: Option<&TestCa>, pins: &[&str]) {
    let mut text = format!("api_key = \"{}\"\napi_url = \"{url}\"\n", ALICE.api_key);
    if let Some(ca) = ca {
        text.push_str(&format!("api_ca = \"{}\"\n", ca.cert_file.display()));
    }
    if !pins.is_empty() {
        let list: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
        text.push_str(&format!("api_pins = [{}]\n", list.join(", ")));
    }
    env.write_config(&text);
}

/// `km plugin-refresh --json`: (exit code, api-logger's record, the output).
fn refresh(env: &KmEnv) -> (i32, Value, Output) {
    env.plugin_refresh("api-logger")
}

fn reason(record: &Value) -> String {
    record["reason"].as_str().unwrap_or_default().to_owned()
}

/// A TLS 1.3 server with `cert`, serving alice (Pro) and an empty package directory.
fn tls_server(env: &KmEnv, ca: &TestCa, cert: &ServerCert) -> ApiServer {
    ApiServer::builder(env.dir.path())
        .customers(&[(&ALICE, "pro")])
        .plugins_dir(&env.dir.path().join("packages"))
        .tls(ca, cert)
        .start()
}

#[test]
fn a_premium_plugin_authenticates_through_the_pinned_tls13_server() {
    let env = KmEnv::new();
    let ca = TestCa::new(env.dir.path(), "api");
    let cert = ca.issue("server");
    let server = tls_server(&env, &ca, &cert);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    env.install_stamped_api_logger(&server, &ALICE);
    let backup = spare_pin();
    configure(&env, &server.url, Some(&ca), &[&cert.pin, &backup]);

    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_eq!(
        record["authorized"],
        true,
        "{record:#}\n{}",
        describe(&output)
    );
    assert_eq!(record["tier"], "pro", "{record:#}");
    assert_eq!(server.control_json("stats")["auth_ok"], 1);

    // `km config show` says what is in force: TLS 1.3 only, the CA file, both pins and where
    // they come from.
    let show = run_ok(env.km().args(["config", "show"]));
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("TLS 1.3 only"), "{text}");
    assert!(text.contains(&cert.pin) && text.contains(&backup), "{text}");
    assert!(text.contains("config.toml api_pins"), "{text}");
    assert!(text.contains(&ca.cert_file.display().to_string()), "{text}");
    let show = run_ok(env.km().args(["config", "show", "--json"]));
    let value: Value = serde_json::from_slice(&show.stdout).expect("JSON");
    assert_eq!(value["transport"]["tls"], "TLS 1.3 only", "{value:#}");
    assert_eq!(
        value["transport"]["pins"],
        serde_json::json!([cert.pin, backup]),
        "{value:#}"
    );
    assert_eq!(value["transport"]["pin_source"], "config.toml api_pins");

    // Rotation: the server moves to its backup key; a config that lists the new key (the old
    // one kept until every server has moved) goes on working.
    let rotated = ca.issue("rotated");
    drop(server);
    let server = tls_server(&env, &ca, &rotated);
    env.install_stamped_api_logger(&server, &ALICE);
    configure(&env, &server.url, Some(&ca), &[&cert.pin, &rotated.pin]);
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_eq!(record["authorized"], true, "{record:#}");
}

#[test]
fn a_certificate_outside_the_pin_set_is_refused_naming_the_endpoint_and_the_pins() {
    let env = KmEnv::new();
    let ca = TestCa::new(env.dir.path(), "api");
    let pinned = ca.issue("pinned");
    // Same CA, so the chain verifies: only the pin check can refuse it.
    let impostor = ca.issue("impostor");
    let server = tls_server(&env, &ca, &impostor);
    env.install_stamped_api_logger(&server, &ALICE);
    let backup = spare_pin();
    configure(&env, &server.url, Some(&ca), &[&pinned.pin, &backup]);

    let (code, record, output) = refresh(&env);
    assert_eq!(code, 1, "{}", describe(&output));
    assert_eq!(record["authorized"], false, "{record:#}");
    let why = reason(&record);
    for expected in [
        "127.0.0.1",
        "not among the pins",
        pinned.pin.as_str(),
        backup.as_str(),
        impostor.pin.as_str(),
    ] {
        assert!(why.contains(expected), "{expected:?} missing from {why:?}");
    }
    // Fail closed: nothing reached the server's handlers, and a refusal is not retried.
    let stats = server.control_json("stats");
    assert_eq!(stats["auth_requests"], 0, "{stats:#}");
    // The server logs the aborted handshake on its own time: wait for the line, then check
    // that there is exactly one (km did not retry).
    let log_file = env.dir.path().join("api-server.log");
    let log = km_tests::settle(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || std::fs::read_to_string(&log_file).expect("log"),
        |log| log.contains("TLS handshake with"),
    );
    assert_eq!(
        log.matches("TLS handshake with").count(),
        1,
        "one handshake, no retry:\n{log}"
    );

    // Plugin downloads from the API go through the same check.
    let out = env
        .km()
        .args(["install-plugin", "api-logger"])
        .output()
        .expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not among the pins") && stderr.contains(&pinned.pin),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_tls12_only_server_is_refused() {
    let env = KmEnv::new();
    let ca = TestCa::new(env.dir.path(), "api");
    let cert = ca.issue("server");
    let server = ApiServer::builder(env.dir.path())
        .customers(&[(&ALICE, "pro")])
        .plugins_dir(&env.dir.path().join("packages"))
        .tls(&ca, &cert)
        .tls_versions("1.2")
        .start();
    // The server does answer TLS 1.2 clients (the harness's control client is one)...
    assert_eq!(server.control_json("stats")["auth_requests"], 0);
    env.install_stamped_api_logger(&server, &ALICE);
    // ...and the certificate would be trusted and pinned: only the version is wrong.
    configure(&env, &server.url, Some(&ca), &[&cert.pin, &spare_pin()]);
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 1, "{}", describe(&output));
    assert_eq!(record["authorized"], false, "{record:#}");
    assert!(
        reason(&record).contains("does not speak TLS 1.3"),
        "{record:#}\n{}",
        describe(&output)
    );
    assert_eq!(server.control_json("stats")["auth_requests"], 0);

    let out = env
        .km()
        .args(["install-plugin", "api-logger"])
        .output()
        .expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not speak TLS 1.3"),
        "{}",
        describe(&out)
    );
}

#[test]
fn without_pins_the_roots_in_force_decide() {
    let env = KmEnv::new();
    let ca = TestCa::new(env.dir.path(), "api");
    let cert = ca.issue("server");
    let server = tls_server(&env, &ca, &cert);
    env.install_stamped_api_logger(&server, &ALICE);

    // The endpoint's CA, no pins: accepted; `km config show` says nothing is pinned.
    configure(&env, &server.url, Some(&ca), &[]);
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_eq!(record["authorized"], true, "{record:#}");
    let show = run_ok(env.km().args(["config", "show"]));
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("pins:        none"),
        "{}",
        describe(&show)
    );

    // Without api_ca, the built-in roots: the test CA is not one of them. (The token cached by
    // the refresh above still stands in, as through any outage; the reason says why.)
    configure(&env, &server.url, None, &[]);
    let (_, record, output) = refresh(&env);
    assert!(
        reason(&record).contains("not trusted"),
        "{record:#}\n{}",
        describe(&output)
    );
    // Another CA is not this one either.
    let other = TestCa::new(env.dir.path(), "other");
    configure(&env, &server.url, Some(&other), &[]);
    let (_, record, _) = refresh(&env);
    assert!(reason(&record).contains("not trusted"), "{record:#}");
}

#[test]
fn plain_http_only_to_loopback_and_never_with_pins() {
    let env = KmEnv::new();
    let pins = [spare_pin(), spare_pin()];
    // A non-loopback http endpoint is refused before any connection is tried.
    for url in ["http://10.0.0.1:9", "http://api.example.test"] {
        configure(&env, url, None, &[]);
        let out = env.km().args(["plugin-refresh"]).output().expect("km runs");
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("plain http"),
            "{}",
            describe(&out)
        );
    }
    let out = env
        .km()
        .args(["install-plugin", "http://10.0.0.1:9/p.kmpkg"])
        .output()
        .expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        describe(&out)
    );
    // Loopback http is allowed, but not with pins: they need https.
    configure(&env, "http://127.0.0.1:9", None, &[&pins[0], &pins[1]]);
    let out = env.km().args(["plugin-refresh"]).output().expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pins need https"),
        "{}",
        describe(&out)
    );
}

#[test]
fn pins_are_validated_when_config_toml_is_read() {
    let env = KmEnv::new();
    let only = spare_pin();
    for (pins, says) in [
        (format!("[\"{only}\"]"), "backup"),
        ("[\"sha256/AAAA\"]".to_owned(), "32 bytes"),
        (
            "[\"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]".to_owned(),
            "sha256/",
        ),
    ] {
        env.write_config(&format!(
            "api_url = \"https://127.0.0.1:9\"\napi_pins = {pins}\n"
        ));
        let out = env.km().args(["config", "show"]).output().expect("km runs");
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(says) && stderr.contains("config.toml"),
            "{says:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn pins_built_into_km_apply_to_the_official_endpoint_only() {
    let (Some(km), Some(pins)) = (
        std::env::var_os("KM_TEST_BUILTIN_KM"),
        std::env::var("KM_TEST_BUILTIN_API_PINS").ok(),
    ) else {
        panic!(
            "KM_TEST_BUILTIN_KM and KM_TEST_BUILTIN_API_PINS are not set: run the tests with \
             ./scripts/test (README)"
        );
    };
    let expected: Vec<&str> = pins.split(',').collect();
    let env = KmEnv::new();
    let show = |url: &str| -> Value {
        env.write_config(&format!("api_url = \"{url}\"\n"));
        let out = run_ok(
            km_tests::command(std::path::Path::new(&km), &env.home)
                .args(["config", "show", "--json"]),
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let official = show("https://api.kilometers.ai");
    assert_eq!(
        official["transport"]["pins"],
        serde_json::json!(expected),
        "{official:#}"
    );
    assert_eq!(
        official["transport"]["pin_source"],
        "built in for the official endpoint"
    );
    let other = show("https://self-hosted.example.test");
    assert_eq!(
        other["transport"]["pins"],
        serde_json::json!([]),
        "{other:#}"
    );
    // The ordinary build has none.
    env.write_config("api_url = \"https://api.kilometers.ai\"\n");
    let out = run_ok(env.km().args(["config", "show", "--json"]));
    let plain: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        plain["transport"]["pins"],
        serde_json::json!([]),
        "{plain:#}"
    );
}

/// `km doctor` (`--json` when `json`), online: its `api` finding, and the whole output.
fn doctor_api(env: &KmEnv, extra: &[&str]) -> (Value, Output) {
    let out = env
        .km()
        .args(["doctor", "--json"])
        .args(extra)
        .output()
        .expect("km runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json prints JSON ({e}): {}", describe(&out)));
    let api = report["checks"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["area"] == "api"))
        .cloned()
        .unwrap_or_else(|| panic!("no api finding: {report:#}"));
    (api, out)
}

#[test]
fn km_doctor_shows_the_pins_in_force_for_the_endpoint() {
    let env = KmEnv::new();
    let ca = TestCa::new(env.dir.path(), "api");
    let cert = ca.issue("server");
    let server = tls_server(&env, &ca, &cert);
    let backup = spare_pin();
    configure(&env, &server.url, Some(&ca), &[&cert.pin, &backup]);

    // Online: the endpoint answered through the pinned handshake, and the finding names both
    // pins and where they come from.
    let pins = format!("pins {}, {backup} (from config.toml api_pins)", cert.pin);
    let (api, out) = doctor_api(&env, &[]);
    let summary = api["summary"].as_str().unwrap_or_default();
    assert_eq!(api["status"], "ok", "{api:#}\n{}", describe(&out));
    assert!(
        summary.starts_with(&format!("{}: reachable, API key valid", server.url)),
        "{summary}"
    );
    assert!(summary.contains("TLS 1.3 only"), "{summary}");
    assert!(summary.contains(&pins), "{summary}");
    assert!(
        summary.contains(&ca.cert_file.display().to_string()),
        "{summary}"
    );
    // The text report has the same line.
    let out = env.km().arg("doctor").output().expect("km runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("API key valid"))
        .unwrap_or_else(|| panic!("no api line: {}", describe(&out)));
    assert!(line.contains(&pins), "{line}");
    // Offline, the pins are shown all the same: they are what a connection would require.
    let (api, _) = doctor_api(&env, &["--offline"]);
    let summary = api["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("not contacted (--offline)") && summary.contains(&pins),
        "{api:#}"
    );

    // Without pins, the doctor says that none are in force (the CA alone decides).
    configure(&env, &server.url, Some(&ca), &[]);
    let (api, out) = doctor_api(&env, &[]);
    let summary = api["summary"].as_str().unwrap_or_default();
    assert_eq!(api["status"], "ok", "{api:#}\n{}", describe(&out));
    assert!(summary.ends_with(", no pins"), "{summary}");
    assert!(!summary.contains(&cert.pin), "{summary}");
}
