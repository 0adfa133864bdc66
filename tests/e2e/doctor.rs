//! `km doctor` through the real km: each condition it claims to check is broken for real, and
//! the doctor must name it, with a fix, and exit 1; after `km setup` on a fresh HOME it finds
//! nothing wrong. The API check runs against the reference API server on loopback.

use std::process::Output;

use km_tests::{chmod, describe, lib_file_name, ApiServer, Customer, FreshHome};
use serde_json::Value;

const DORA: Customer = Customer {
    id: "cust-dora",
    api_key: "km_live_dora_0123456789",
};

/// A fresh HOME after `km setup`.
fn set_up() -> FreshHome {
    let fresh = FreshHome::new();
    let out = fresh.km(&["setup"]);
    assert!(out.status.success(), "{}", describe(&out));
    fresh
}

fn doctor(fresh: &FreshHome, extra: &[&str]) -> (Output, String) {
    let mut args = vec!["doctor"];
    args.extend_from_slice(extra);
    let out = fresh.km(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// The report's findings, from `--json`.
fn findings(fresh: &FreshHome, env: &[(&str, &str)]) -> (i32, Vec<Value>) {
    let mut cmd = fresh.command();
    cmd.args(["doctor", "--json", "--offline"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("km runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json prints JSON ({e}): {}", describe(&out)));
    let list = report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("findings: {report}"))
        .clone();
    (out.status.code().unwrap_or(-1), list)
}

/// The one finding of `area` with `status`, whose summary contains `needle`.
fn find<'a>(list: &'a [Value], area: &str, status: &str, needle: &str) -> &'a Value {
    list.iter()
        .find(|f| {
            f["area"] == area
                && f["status"] == status
                && f["summary"].as_str().is_some_and(|s| s.contains(needle))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {status} finding of {area} mentioning {needle:?}: {}",
                serde_json::to_string_pretty(list).unwrap_or_default()
            )
        })
}

fn fails(list: &[Value]) -> Vec<&Value> {
    list.iter().filter(|f| f["status"] == "fail").collect()
}

#[test]
fn a_fresh_setup_checks_out() {
    let fresh = set_up();
    let (out, text) = doctor(&fresh, &["--offline"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text.contains("Everything checks out."), "{text}");
    for needle in [
        "yours, and writable by nobody else",
        "trusted key(s): local builds (km setup) (console-logger, tool-guard)",
        "console-logger 1.0.0 (Free): verified",
        "tool-guard 1.0.0 (Free): verified",
        "no API key configured",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    assert!(!text.contains('✗'), "{text}");
}

#[test]
fn a_km_home_others_can_write_fails_with_the_fix() {
    let fresh = set_up();
    chmod(&fresh.km_home(), 0o777);
    let (code, list) = findings(&fresh, &[]);
    assert_eq!(code, 1);
    let home = fresh.km_home().display().to_string();
    let finding = find(&list, "km_home", "fail", &home);
    assert!(
        finding["fix"].as_str().is_some_and(|f| f.contains("chmod")),
        "{finding}"
    );
    // The text form shows the same with a fix line.
    let (out, text) = doctor(&fresh, &["--offline"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text.contains(&format!("✗ {home}")), "{text}");
    assert!(text.contains("    fix: "), "{text}");
}

#[test]
fn a_readable_local_signing_key_fails() {
    let fresh = set_up();
    chmod(
        &fresh.km_home().join("keys").join("local-signing.pem"),
        0o644,
    );
    let (code, list) = findings(&fresh, &[]);
    assert_eq!(code, 1);
    find(
        &list,
        "km_home",
        "fail",
        "local signing key is readable by others",
    );
}

#[test]
fn no_trusted_keys_fails() {
    let fresh = set_up();
    let trust = fresh.km(&["trust", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&trust.stdout)
        .unwrap_or_else(|e| panic!("trust list --json ({e}): {}", describe(&trust)));
    let ids: Vec<String> = listed["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("keys: {listed}"))
        .iter()
        .filter(|k| k["builtin"] != true)
        .filter_map(|k| k["key_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!ids.is_empty(), "{listed}");
    for id in ids {
        let out = fresh.km(&["trust", "remove", &id]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let (code, list) = findings(&fresh, &[]);
    assert_eq!(code, 1);
    let finding = find(&list, "trust", "fail", "no trusted keys");
    assert!(
        finding["fix"]
            .as_str()
            .is_some_and(|f| f.contains("km setup")),
        "{finding}"
    );
    // And, with no key to vouch for them, the installed plugins fail too.
    find(&list, "plugin", "fail", "console-logger");
}

#[test]
fn a_tampered_plugin_fails_and_names_the_library() {
    let fresh = set_up();
    let lib = fresh
        .km_home()
        .join("plugins")
        .join(lib_file_name("console-logger"));
    let mut bytes = std::fs::read(&lib).expect("read");
    bytes[4096] ^= 1;
    std::fs::write(&lib, &bytes).expect("tamper");
    let (code, list) = findings(&fresh, &[]);
    assert_eq!(code, 1);
    let failed = fails(&list);
    assert_eq!(
        failed.len(),
        1,
        "only the tampered plugin fails: {failed:?}"
    );
    let summary = failed[0]["summary"].as_str().unwrap_or_default();
    assert_eq!(failed[0]["area"], "plugin", "{summary}");
    assert!(summary.contains("console_logger"), "{summary}");
    // tool-guard is untouched and still verified.
    find(&list, "plugin", "ok", "tool-guard");
}

#[test]
fn executable_memory_is_reported_and_a_copy_directory_others_can_write_fails() {
    let fresh = set_up();
    // Forced onto the private-copy path: a working fallback is reported as such.
    let runtime = fresh.home.join("run");
    std::fs::create_dir(&runtime).expect("run dir");
    chmod(&runtime, 0o700);
    let runtime = runtime.to_str().expect("utf-8").to_owned();
    let (code, list) = findings(
        &fresh,
        &[("KM_LOAD_VIA_COPY", "1"), ("XDG_RUNTIME_DIR", &runtime)],
    );
    assert_eq!(code, 0, "{list:?}");
    find(&list, "memfd", "ok", "private copies");

    // A copy directory anyone can write is where a swapped library would come from: refused.
    chmod(std::path::Path::new(&runtime), 0o777);
    let (code, list) = findings(
        &fresh,
        &[("KM_LOAD_VIA_COPY", "1"), ("XDG_RUNTIME_DIR", &runtime)],
    );
    assert_eq!(code, 1);
    let finding = find(&list, "memfd", "fail", "writable by others");
    assert!(finding["fix"].as_str().is_some(), "{finding}");
}

/// `km init` against `url` with `key`, then `km doctor` (online).
fn doctor_against(fresh: &FreshHome, url: &str, key: &str) -> (i32, Vec<Value>) {
    let out = fresh.km(&["init", "--api-key", key, "--api-url", url]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = fresh.km(&["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json ({e}): {}", describe(&out)));
    let list = report["checks"].as_array().cloned().unwrap_or_default();
    (out.status.code().unwrap_or(-1), list)
}

#[test]
fn the_api_check_tells_a_valid_key_from_a_refused_one_and_an_unreachable_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ApiServer::builder(dir.path())
        .customers(&[(&DORA, "pro")])
        .start();
    let fresh = set_up();

    let (code, list) = doctor_against(&fresh, &server.url, DORA.api_key);
    assert_eq!(code, 0, "{list:?}");
    let ok = find(&list, "api", "ok", "API key valid");
    let summary = ok["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("customer cust-dora"), "{summary}");
    assert!(summary.contains("pro"), "{summary}");
    assert!(
        !summary.contains(DORA.api_key),
        "the key is never printed: {summary}"
    );

    let wrong = "km_live_not_a_customer_key";
    let (code, list) = doctor_against(&fresh, &server.url, wrong);
    assert_eq!(code, 1);
    let refused = find(&list, "api", "fail", "refuses the API key");
    assert!(
        !refused.to_string().contains(wrong),
        "the refused key is masked: {refused}"
    );
    assert!(
        refused["fix"]
            .as_str()
            .is_some_and(|f| f.contains("km init --api-key")),
        "{refused}"
    );

    // A port nothing listens on (the server's, once it is gone).
    let url = server.url.clone();
    drop(server);
    let (code, list) = doctor_against(&fresh, &url, DORA.api_key);
    assert_eq!(code, 1);
    find(&list, "api", "fail", "unreachable");
}

#[test]
fn an_unwrapped_client_is_a_warning_with_the_wrap_command_and_a_wrapped_one_is_ok() {
    let fresh = set_up();
    let cursor = fresh.home.join(".cursor");
    std::fs::create_dir(&cursor).expect("~/.cursor");
    let config = cursor.join("mcp.json");
    std::fs::write(
        &config,
        "{\n  \"mcpServers\": {\n    \"git\": { \"command\": \"uvx\", \"args\": [\"mcp-server-git\"] },\n    \"docs\": { \"url\": \"https://docs.example.com/mcp\" }\n  }\n}\n",
    )
    .expect("write");
    let path = config.display().to_string();

    let (code, list) = findings(&fresh, &[]);
    assert_eq!(
        code, 0,
        "an unwrapped server warns, it does not fail: {list:?}"
    );
    let warn = find(
        &list,
        "client",
        "warn",
        "1 of 1 stdio server(s) do not run through km",
    );
    assert!(
        warn["fix"]
            .as_str()
            .is_some_and(|f| f == format!("km wrap --config {path}")),
        "{warn}"
    );
    assert!(
        warn["summary"]
            .as_str()
            .is_some_and(|s| s.contains("1 remote server(s)")),
        "{warn}"
    );

    let out = fresh.km(&["wrap", "--client", "cursor", "--config", &path]);
    assert!(out.status.success(), "{}", describe(&out));
    let (_, list) = findings(&fresh, &[]);
    find(
        &list,
        "client",
        "ok",
        "all 1 stdio server(s) run through km",
    );

    // A file km cannot edit is reported, not rewritten.
    std::fs::write(&config, "{ \"mcpServers\": ").expect("write");
    let (_, list) = findings(&fresh, &[]);
    find(&list, "client", "warn", "km cannot edit it");
    assert_eq!(
        std::fs::read_to_string(&config).expect("read"),
        "{ \"mcpServers\": "
    );
}
