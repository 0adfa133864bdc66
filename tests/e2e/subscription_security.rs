//! Subscription security, round two, end to end against the real `km-api-server` on
//! loopback, with the real api-logger stamped for a customer and the real `km`:
//!
//! - the customer's API key is rotated (through the API, then by the operator in the customers
//!   file): the installed build keeps working with the new key, without being reinstalled, and
//!   the old key is refused at once;
//! - an authentication request km really sent (recorded by a loopback proxy) is refused when it
//!   is sent again, and so are requests with a stale timestamp, requests signed with anything but
//!   the build's stamped credentials, and unsigned ones;
//! - with a seat limit of 1, a second installation (another `KM_HOME`) of the same customer build
//!   degrades quietly and `km plugin-status` says why, until the first seat is released.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use km_plugin_sdk::auth::{AuthRequestBody, AUTHENTICATE_PATH, BUILD_KEY_PATH};
use km_plugin_sdk::credentials::{find_region, region_info, request_key, RegionInfo, REGION_SIZE};
use km_plugin_sdk::request::RequestSignature;
use km_tests::{
    describe, refresh_with, run_ok, unix_now, ApiServer, Customer, KmEnv, RecordingProxy,
};
use serde_json::{json, Value};

const DANA: Customer = Customer {
    id: "cust_dana",
    api_key: "km_live_dana_0123456789",
};

/// Dana after the operator gave her a new key in the customers file.
const DANA_BY_OPERATOR: Customer = Customer {
    id: "cust_dana",
    api_key: "km_live_dana_from_the_operator",
};

fn init(env: &KmEnv, url: &str, api_key: &str) {
    env.init(api_key, url);
}

/// `km plugin-refresh --json` (with `KM_API_KEY` when given): (exit code, the api-logger record,
/// the output).
fn refresh(env: &KmEnv, env_key: Option<&str>) -> (i32, Value, Output) {
    let mut cmd = env.km();
    if let Some(key) = env_key {
        cmd.env("KM_API_KEY", key);
    }
    refresh_with(cmd, "api-logger")
}

fn assert_authorized(env: &KmEnv, env_key: Option<&str>) {
    let (code, record, output) = refresh(env, env_key);
    assert_eq!(code, 0, "{record:#}\n{}", describe(&output));
    assert_eq!(record["authorized"], true, "{record:#}");
    assert_eq!(record["tier"], "pro", "{record:#}");
}

/// Refreshes, expects a degraded api-logger, and returns its reason.
fn assert_refused(env: &KmEnv, env_key: Option<&str>) -> String {
    let (code, record, output) = refresh(env, env_key);
    assert_eq!(code, 1, "{record:#}\n{}", describe(&output));
    assert_eq!(record["authorized"], false, "{record:#}");
    record["reason"].as_str().unwrap_or_default().to_owned()
}

fn bearer(api_key: &str) -> String {
    format!("Bearer {api_key}")
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The clear header of the customer build at `lib`.
fn build_of(lib: &Path) -> RegionInfo {
    let bytes = std::fs::read(lib).expect("the installed library");
    let at = find_region(&bytes).expect("a credentials region");
    region_info(&bytes[at..at + REGION_SIZE]).expect("a stamped region")
}

#[test]
fn a_rotated_api_key_keeps_the_installed_build_working_and_the_old_key_is_refused() {
    let env = KmEnv::new();
    let server = ApiServer::builder(env.dir.path())
        .customers(&[(&DANA, "pro")])
        .start();
    let lib = env.install_stamped_api_logger(&server, &DANA);
    let installed = std::fs::read(&lib).expect("the library");
    init(&env, &server.url, DANA.api_key);
    assert_authorized(&env, None);

    // Dana rotates her key through the API (a leaked key, say).
    let (status, body) = server.send(
        "POST",
        "/api/account/rotate-key",
        &[("authorization", &bearer(DANA.api_key))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let rotated = json_of(&body)["api_key"]
        .as_str()
        .expect("the new key")
        .to_owned();
    assert_ne!(rotated, DANA.api_key);

    // The old key is refused from that moment: by the plugin's next authentication, and by
    // every route that takes it.
    let reason = assert_refused(&env, None);
    assert!(reason.contains("rotation"), "{reason}");
    let build = build_of(&lib);
    let ask_build_key = |api_key: &str| {
        let body = json!({
            "plugin_name": "api-logger",
            "api_key": api_key,
            "build_id": build.build_id_hex(),
            "customer_hash": build.customer_hash_hex(),
        });
        server.send("POST", BUILD_KEY_PATH, &[], body.to_string().as_bytes())
    };
    let (status, body) = ask_build_key(DANA.api_key);
    assert_eq!(status, 401, "{body}");
    assert_eq!(json_of(&body)["code"], "api_key_rotated", "{body}");
    let (status, body) = server.send(
        "POST",
        "/api/account/rotate-key",
        &[("authorization", &bearer(DANA.api_key))],
        b"",
    );
    assert_eq!(status, 401, "the old key rotated again: {body}");

    // `km init --api-key NEW` is all it takes: the same library authorizes again.
    init(&env, &server.url, &rotated);
    assert_authorized(&env, None);
    assert_eq!(
        std::fs::read(&lib).expect("the library"),
        installed,
        "the plugin was not reinstalled"
    );
    // KM_API_KEY does the same (it wins over the old key left in config.toml).
    init(&env, &server.url, DANA.api_key);
    assert_authorized(&env, Some(&rotated));

    // The operator rotates the key in the customers file: the file's key applies, the key the
    // API made stops working.
    server.set_customers(&[(&DANA_BY_OPERATOR, "pro")]);
    let reason = assert_refused(&env, Some(&rotated));
    assert!(reason.contains("unknown API key"), "{reason}");
    assert_authorized(&env, Some(DANA_BY_OPERATOR.api_key));
    assert_eq!(std::fs::read(&lib).expect("the library"), installed);
}

/// A signed authentication request for Dana's build `build`, signed with `secret` at
/// `timestamp`: (headers, body).
fn signed_request(
    build: &RegionInfo,
    secret: &str,
    api_key: &str,
    timestamp: i64,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = serde_json::to_vec(&AuthRequestBody {
        plugin_name: "api-logger".to_owned(),
        plugin_version: "1.0.0".to_owned(),
        required_tier: "pro".to_owned(),
        api_key: api_key.to_owned(),
        customer_id: Some(DANA.id.to_owned()),
        customer_token: None,
    })
    .expect("json");
    let key = request_key(secret, &build.build_id);
    let signature = RequestSignature::sign(
        &key,
        "POST",
        AUTHENTICATE_PATH,
        &body,
        &build.build_id,
        timestamp,
    )
    .expect("signs");
    (signature.headers().to_vec(), body)
}

fn send_signed(
    server: &ApiServer,
    (headers, body): &(Vec<(&'static str, String)>, Vec<u8>),
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (status, answer) = server.send("POST", AUTHENTICATE_PATH, &headers, body);
    (status, json_of(&answer))
}

#[test]
fn replayed_stale_and_unsigned_authentication_requests_are_refused() {
    let env = KmEnv::new();
    let server = ApiServer::builder(env.dir.path())
        .customers(&[(&DANA, "pro")])
        .start();
    let proxy = RecordingProxy::start(&server);
    let lib = env.install_stamped_api_logger(&server, &DANA);
    init(&env, &proxy.url, DANA.api_key);
    assert_authorized(&env, None);

    // What km sent, sent again byte for byte: refused, its nonce was used.
    let recorded = proxy.requests_to(AUTHENTICATE_PATH);
    assert_eq!(
        recorded.len(),
        1,
        "one authentication went through the proxy"
    );
    let text = String::from_utf8_lossy(&recorded[0]).to_ascii_lowercase();
    for header in [
        "km-signature:",
        "km-nonce:",
        "km-timestamp:",
        "km-device-signature:",
    ] {
        assert!(text.contains(header), "km sent no {header}: {text}");
    }
    assert!(
        !text.contains(&DANA.customer_token()),
        "the customer secret went over the wire: {text}"
    );
    let (status, body) = server.send_raw(&recorded[0]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(json_of(&body)["code"], "replayed_request", "{body}");

    // Built by hand with the stamped customer secret (which only the build and the API hold):
    // accepted when fresh, so what follows is refused for what it is, not for who sends it.
    let build = build_of(&lib);
    let secret = DANA.customer_token();
    let (status, body) = send_signed(
        &server,
        &signed_request(&build, &secret, DANA.api_key, unix_now()),
    );
    assert_eq!(status, 200, "{body:#}");

    // Six minutes old: beyond the 300 s the API accepts, signature or not.
    let (status, body) = send_signed(
        &server,
        &signed_request(&build, &secret, DANA.api_key, unix_now() - 360),
    );
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(body["code"], "stale_request", "{body:#}");
    let (status, body) = send_signed(
        &server,
        &signed_request(&build, &secret, DANA.api_key, unix_now() + 360),
    );
    assert_eq!(body["code"], "stale_request", "{status} {body:#}");

    // Signed without the stamped credentials: the API key and the build id alone (a stolen key,
    // and a build id read from the library's clear header), with a guessed secret.
    for guess in ["", "ct-cust_dan", DANA.api_key] {
        let (status, body) = send_signed(
            &server,
            &signed_request(&build, guess, DANA.api_key, unix_now()),
        );
        assert_eq!(status, 401, "{guess:?}: {body:#}");
        assert_eq!(body["code"], "bad_signature", "{guess:?}: {body:#}");
    }
    // A properly signed request whose body was changed on the way (another plugin version).
    let (headers, body) = signed_request(&build, &secret, DANA.api_key, unix_now());
    let body = String::from_utf8(body)
        .expect("JSON")
        .replace("\"1.0.0\"", "\"9.9.9\"")
        .into_bytes();
    let (status, answer) = send_signed(&server, &(headers, body));
    assert_eq!(status, 401, "{answer:#}");
    assert_eq!(answer["code"], "bad_signature", "{answer:#}");

    // Not signed at all, as builds of credentials format 1 asked (their token in clear).
    let legacy = json!({
        "plugin_name": "api-logger", "plugin_version": "1.0.0", "required_tier": "pro",
        "api_key": DANA.api_key, "customer_id": DANA.id, "customer_token": secret,
    });
    let (status, body) = server.send(
        "POST",
        AUTHENTICATE_PATH,
        &[],
        legacy.to_string().as_bytes(),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_of(&body)["code"], "unsigned_request", "{body}");

    // None of this disturbed the installation: km still authorizes (with a fresh nonce).
    assert_authorized(&env, None);
}

/// A second installation of the build installed in `first`: another `KM_HOME` that trusts
/// `first`'s signing key, with the same library and signature copied in.
fn second_installation(first: &KmEnv, lib: &Path) -> (KmEnv, PathBuf) {
    let second = KmEnv::new();
    run_ok(
        second
            .km()
            .args(["trust", "add", "--label", "vendor"])
            .arg(first.key.with_extension("pub")),
    );
    let name = lib.file_name().expect("a file name");
    let copy = second.plugins.join(name);
    std::fs::copy(lib, &copy).expect("copying the library");
    let sig = format!("{}.kmsig", lib.display());
    std::fs::copy(
        &sig,
        second
            .plugins
            .join(format!("{}.kmsig", name.to_string_lossy())),
    )
    .expect("copying the signature");
    (second, copy)
}

fn device_id(env: &KmEnv) -> String {
    let output = run_ok(env.km().args(["plugin-status", "--json"]));
    let records: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    records[0]["device_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no device id: {records:#}"))
        .to_owned()
}

fn seats(server: &ApiServer) -> Value {
    let (status, body) = server.send(
        "GET",
        "/api/seats",
        &[("authorization", &bearer(DANA.api_key))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    json_of(&body)
}

/// One line through `km monitor -- cat`: what the client reads back, and km's stderr.
fn relay_one_line(env: &KmEnv) -> (Vec<u8>, String) {
    let mut child = env
        .km()
        .args(["monitor", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("km monitor starts");
    let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n";
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(line).expect("write");
    drop(stdin);
    let output = child.wait_with_output().expect("km monitor ends");
    assert!(output.status.success(), "{}", describe(&output));
    (
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_second_installation_beyond_the_seat_limit_degrades_until_a_seat_is_released() {
    let first = KmEnv::new();
    let server = ApiServer::builder(first.dir.path())
        .customers(&[(&DANA, "pro")])
        .seat_limit(&DANA, 1)
        .start();
    let lib = first.install_stamped_api_logger(&server, &DANA);
    init(&first, &server.url, DANA.api_key);
    assert_authorized(&first, None);

    // The device identity km made: a private key in KM_HOME, listed by the API as the seat.
    let key_file = first.home.join("device.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("device.key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let first_device = device_id(&first);
    let listed = seats(&server);
    assert_eq!(listed["seat_limit"], 1, "{listed:#}");
    assert_eq!(
        listed["seats"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );
    assert_eq!(listed["seats"][0]["device_id"], first_device.as_str());

    // The same customer build in another KM_HOME, with the same key: over the limit.
    let (second, _) = second_installation(&first, &lib);
    init(&second, &server.url, DANA.api_key);
    let reason = assert_refused(&second, None);
    assert!(reason.contains("seat limit"), "{reason}");
    let second_device = device_id(&second);
    assert_ne!(second_device, first_device);
    let status = run_ok(second.km().arg("plugin-status"));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("degraded") && text.contains("seat limit reached"),
        "{text}"
    );
    assert!(text.contains(&second_device), "the device is named: {text}");
    // Quietly: the session relays as ever, and nothing about it reaches the MCP stream.
    let (echo, stderr) = relay_one_line(&second);
    assert_eq!(
        echo, b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n",
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(seats(&server)["seats"].as_array().map(Vec::len), Some(1));

    // Releasing the first installation's seat lets the second in; the first is then the one
    // over the limit.
    let (status, body) = server.send(
        "DELETE",
        &format!("/api/seats/{first_device}"),
        &[("authorization", &bearer(DANA.api_key))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert_authorized(&second, None);
    let listed = seats(&server);
    assert_eq!(
        listed["seats"][0]["device_id"],
        second_device.as_str(),
        "{listed:#}"
    );
    let reason = assert_refused(&first, None);
    assert!(reason.contains("seat limit"), "{reason}");
    // Releasing a seat nobody holds frees nothing.
    let (status, body) = server.send(
        "DELETE",
        &format!("/api/seats/{first_device}"),
        &[("authorization", &bearer(DANA.api_key))],
        b"",
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn km_seats_lists_the_seats_and_releases_one_for_this_installation() {
    let first = KmEnv::new();
    let server = ApiServer::builder(first.dir.path())
        .customers(&[(&DANA, "pro")])
        .seat_limit(&DANA, 1)
        .start();
    let lib = first.install_stamped_api_logger(&server, &DANA);
    init(&first, &server.url, DANA.api_key);
    assert_authorized(&first, None);
    let first_device = device_id(&first);

    // From the first installation: its seat, marked as this one.
    let listed = run_ok(first.km().args(["seats"]));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("1 seat(s) held, a limit of 1")
            && text.contains(&format!("{first_device} (this installation)")),
        "{text}"
    );

    // A second installation over the limit sees that it holds none, frees the first one's
    // seat with `km seats release`, and is then let in.
    let (second, _) = second_installation(&first, &lib);
    init(&second, &server.url, DANA.api_key);
    assert_refused(&second, None);
    let second_device = device_id(&second);
    let listed = run_ok(second.km().args(["seats", "--json"]));
    let seats: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(seats["seat_limit"], 1, "{seats:#}");
    assert_eq!(seats["seats"][0]["device_id"], first_device.as_str());
    assert_eq!(seats["seats"][0]["this_installation"], false, "{seats:#}");
    let text = String::from_utf8_lossy(&run_ok(second.km().args(["seats"])).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "this installation ({second_device}) holds no seat"
        )),
        "{text}"
    );
    let released = run_ok(second.km().args(["seats", "release", &first_device]));
    assert!(
        String::from_utf8_lossy(&released.stdout).contains("released the seat of"),
        "{}",
        describe(&released)
    );
    assert_authorized(&second, None);

    // A seat nobody holds, a malformed id, a wrong key: errors naming what is wrong.
    let again = second
        .km()
        .args(["seats", "release", &first_device])
        .output()
        .expect("km runs");
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no seat is held by that device"),
        "{}",
        describe(&again)
    );
    let bad = second
        .km()
        .args(["seats", "release", "../api/account"])
        .output()
        .expect("km runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a device id"),
        "{}",
        describe(&bad)
    );
    let wrong = second
        .km()
        .args(["seats"])
        .env("KM_API_KEY", "km_live_not_a_key")
        .output()
        .expect("km runs");
    assert_eq!(wrong.status.code(), Some(2), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("refuses the API key"),
        "{}",
        describe(&wrong)
    );
}
