//! The API's routes in process, on the state the real start-up builds (in-memory database,
//! a customers file in a temporary directory): the table, authentication, events, controls and
//! downloads. The socket side is tested in `server`.

use km_plugin_sdk::auth::verify_token;
use km_plugin_sdk::Tier;
use serde_json::{json, Value};

use super::router;
use crate::http::{Method, Request, Response};
use crate::state::AppState;
use crate::testing::{customer, nonce, signed_auth, write_customers, Fixture};

fn call(state: &AppState, method: Method, target: &str, body: &Value) -> Response {
    let mut request = Request::new(method, target);
    if !body.is_null() {
        request.body = body.to_string().into_bytes();
    }
    router().handle(state, &request)
}

fn with_bearer(state: &AppState, token: &str, body: &Value) -> Response {
    let mut request = Request::new(Method::Post, "/api/events/batch");
    request
        .headers
        .push(("authorization".into(), format!("Bearer {token}")));
    request.body = body.to_string().into_bytes();
    router().handle(state, &request)
}

fn auth_body(api_key: &str, customer_id: Option<&str>) -> Value {
    json!({
        "plugin_name": "api-logger",
        "plugin_version": "1.0.0",
        "required_tier": "pro",
        "api_key": api_key,
        "customer_id": customer_id,
    })
}

/// A signed authentication by the build of the customer whose key is `key-<customer>`.
fn authenticate(state: &AppState, api_key: &str) -> Response {
    let customer = api_key.trim_start_matches("key-");
    router().handle(
        state,
        &signed_auth(api_key, customer, crate::store::now(), &nonce()),
    )
}

fn stats(state: &AppState) -> Value {
    call(state, Method::Get, "/control/stats", &Value::Null).body_json()
}

#[test]
fn the_table_lists_every_endpoint_once() {
    let router = router();
    assert!(
        router.overlapping().is_empty(),
        "{:?}",
        router.overlapping()
    );
    let mut table = router.table();
    table.sort();
    assert_eq!(
        table,
        [
            "DELETE /api/seats/{device}",
            "DELETE /control/teams/{team}/policies/{policy}",
            "GET /api/account",
            "GET /api/audit/checkpoints",
            "GET /api/plugins/download/{file}",
            "GET /api/plugins/latest",
            "GET /api/public-key",
            "GET /api/seats",
            "GET /api/teams/{team}/approvals",
            "GET /api/teams/{team}/me",
            "GET /api/teams/{team}/members",
            "GET /api/teams/{team}/policies",
            "GET /api/teams/{team}/sessions",
            "GET /control/abuse",
            "GET /control/rate-limit",
            "GET /control/stats",
            "POST /api/account/rotate-key",
            "POST /api/audit/checkpoints",
            "POST /api/events/batch",
            "POST /api/plugins/authenticate",
            "POST /api/plugins/build-key",
            "POST /api/teams/{team}/approvals",
            "POST /api/teams/{team}/key",
            "POST /api/teams/{team}/members",
            "POST /api/teams/{team}/policies",
            "POST /api/teams/{team}/sessions",
            "POST /control/delay",
            "POST /control/down",
            "POST /control/tamper",
            "POST /control/teams/{team}/approvals",
            "POST /control/up",
            "PUT /control/teams/{team}/policies/{policy}",
        ]
    );
}

#[test]
fn the_account_of_a_key_is_told_to_its_holder_only() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let account = |key: Option<&str>| {
        let mut request = Request::new(Method::Get, "/api/account");
        if let Some(key) = key {
            request
                .headers
                .push(("authorization".into(), format!("Bearer {key}")));
        }
        router().handle(&state, &request)
    };
    let answer = account(Some("key-alice"));
    assert_eq!(answer.status, 200);
    let body = answer.body_json();
    assert_eq!(body["customer_id"], "alice");
    assert_eq!(body["tier"], "pro");
    assert!(body["subscription_end"].as_i64().is_some(), "{body}");
    assert!(
        body.get("token").is_none(),
        "no token is handed out: {body}"
    );
    assert_eq!(account(Some("key-nobody")).status, 401);
    assert_eq!(account(None).status, 401);
}

#[test]
fn authentication_signs_tokens_for_known_customers_only() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let answer = authenticate(&state, "key-alice");
    assert_eq!(answer.status, 200);
    let body = answer.body_json();
    assert_eq!(body["customer_id"], "alice");
    assert_eq!(body["tier"], "pro");
    assert_eq!(body["features"], json!(["api_logging"]));
    let now = crate::store::now();
    let claims = verify_token(
        body["token"].as_str().expect("a token"),
        state.signer.public_key(),
        "api-logger",
        Some("alice"),
        now,
    )
    .expect("the token verifies");
    assert_eq!(claims.tier, Tier::Pro);
    assert_eq!(
        claims.expires_at,
        body["expires_at"].as_i64().expect("expiry")
    );
    assert!(claims.expires_at <= now + 900);

    assert_eq!(authenticate(&state, "key-nobody").status, 401);
    let foreign = call(
        &state,
        Method::Post,
        "/api/plugins/authenticate",
        &auth_body("key-alice", Some("bob")),
    );
    assert_eq!(foreign.status, 403, "bob's build with alice's key");
    // Unsigned, as builds of credentials format 1 asked (their customer token in clear).
    let mut legacy = auth_body("key-alice", Some("alice"));
    legacy["customer_token"] = "ct-alice".into();
    let answer = call(&state, Method::Post, "/api/plugins/authenticate", &legacy);
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body_json()["code"], "unsigned_request");
    let answer = call(
        &state,
        Method::Post,
        "/api/plugins/authenticate",
        &json!({"x": 1}),
    );
    assert_eq!(answer.status, 400);
    assert_eq!(stats(&state)["auth_requests"], 5);
    assert_eq!(stats(&state)["auth_ok"], 1);
}

#[test]
fn a_change_of_the_customers_file_applies_to_the_next_authentication() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    assert_eq!(authenticate(&state, "key-alice").body_json()["tier"], "pro");
    let mut ended = customer("alice", "key-alice", "pro");
    ended["subscription_end"] = (crate::store::now() - 1).into();
    write_customers(
        &fixture.customers(),
        &[ended, customer("bob", "key-bob", "enterprise")],
    );
    let answer = authenticate(&state, "key-alice");
    assert_eq!(answer.status, 403);
    assert!(
        answer.body_json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("ended")),
        "{:?}",
        answer.body_json()
    );
    assert_eq!(
        authenticate(&state, "key-bob").body_json()["tier"],
        "enterprise"
    );
}

#[test]
fn event_batches_need_a_pro_token_and_are_deduplicated() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.events = Some(fixture.path("events.jsonl"));
    let state = fixture.state(&config);
    let batch = json!({"events": [{"id": "e1", "n": 1}, {"id": "e2", "n": 2}]});

    let answer = call(&state, Method::Post, "/api/events/batch", &batch);
    assert_eq!(answer.status, 401, "no token");
    assert_eq!(with_bearer(&state, "km1.forged.token", &batch).status, 401);
    let free = authenticate(&state, "key-bob").body_json()["token"]
        .as_str()
        .expect("bob's token")
        .to_owned();
    assert_eq!(with_bearer(&state, &free, &batch).status, 403, "free tier");

    let pro = authenticate(&state, "key-alice").body_json()["token"]
        .as_str()
        .expect("alice's token")
        .to_owned();
    let answer = with_bearer(&state, &pro, &batch);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body_json(), json!({"accepted": 2, "duplicates": 0}));
    let again = json!({"events": [{"id": "e2"}, {"id": "e3"}]});
    assert_eq!(
        with_bearer(&state, &pro, &again).body_json(),
        json!({"accepted": 1, "duplicates": 1})
    );
    assert_eq!(with_bearer(&state, &pro, &json!({"events": 3})).status, 400);
    assert_eq!(
        with_bearer(&state, &pro, &json!({"events": [{"n": 1}]})).status,
        400
    );
    let s = stats(&state);
    assert_eq!(
        (
            s["events_stored"].clone(),
            s["duplicates"].clone(),
            s["batches"].clone()
        ),
        (3.into(), 1.into(), 2.into())
    );
    let lines: Vec<Value> = std::fs::read_to_string(fixture.path("events.jsonl"))
        .expect("the export")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["customer_id"], "alice");
    assert_eq!(lines[0]["n"], 1);
}

#[test]
fn the_controls_take_the_api_down_and_corrupt_answers() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let public = || call(&state, Method::Get, "/api/public-key", &Value::Null);
    assert_eq!(
        public().body_json()["public_key"],
        state.signer.public_key_base64()
    );

    assert_eq!(
        call(&state, Method::Post, "/control/down", &Value::Null).status,
        200
    );
    assert_eq!(public().status, 503);
    assert_eq!(
        call(&state, Method::Get, "/api/nothing", &Value::Null).status,
        503
    );
    assert_eq!(
        stats(&state)["down"],
        true,
        "controls answer while the API is down"
    );
    assert_eq!(
        call(&state, Method::Post, "/control/up", &Value::Null).status,
        200
    );
    assert_eq!(public().status, 200);

    assert_eq!(
        call(
            &state,
            Method::Post,
            "/control/tamper?mode=gold",
            &Value::Null
        )
        .status,
        400
    );
    assert_eq!(
        call(&state, Method::Post, "/control/delay?ms=x", &Value::Null).status,
        400
    );
    assert_eq!(
        call(&state, Method::Get, "/control/down", &Value::Null).status,
        405
    );

    call(
        &state,
        Method::Post,
        "/control/tamper?mode=tier",
        &Value::Null,
    );
    assert_eq!(
        authenticate(&state, "key-alice").body_json()["tier"],
        "enterprise"
    );
    call(
        &state,
        Method::Post,
        "/control/tamper?mode=malformed",
        &Value::Null,
    );
    assert_eq!(authenticate(&state, "key-alice").body_json()["token"], 42);
    call(
        &state,
        Method::Post,
        "/control/tamper?mode=oversized",
        &Value::Null,
    );
    assert!(authenticate(&state, "key-alice").body.len() > 200 * 1024);
    call(
        &state,
        Method::Post,
        "/control/tamper?mode=foreign-key",
        &Value::Null,
    );
    let token = authenticate(&state, "key-alice").body_json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let now = crate::store::now();
    assert!(verify_token(&token, state.signer.public_key(), "api-logger", None, now).is_err());
    call(
        &state,
        Method::Post,
        "/control/tamper?mode=none",
        &Value::Null,
    );
    let token = authenticate(&state, "key-alice").body_json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert!(verify_token(&token, state.signer.public_key(), "api-logger", None, now).is_ok());
}

#[test]
fn fail_after_takes_the_api_down_after_that_many_requests() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.fail_after = Some(2);
    let state = fixture.state(&config);
    let public = || call(&state, Method::Get, "/api/public-key", &Value::Null).status;
    assert_eq!(
        [public(), public(), public(), public()],
        [200, 200, 503, 503]
    );
    call(&state, Method::Post, "/control/up", &Value::Null);
    assert_eq!(public(), 503, "past the limit it goes down again at once");
}

#[test]
fn downloads_serve_plain_names_from_the_plugins_dir_only() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let get = |state: &AppState, target: &str| call(state, Method::Get, target, &Value::Null);
    assert_eq!(
        get(&state, "/api/plugins/download/x.kmpkg").status,
        404,
        "no --plugins-dir"
    );

    let dir = fixture.path("plugins");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("x.kmpkg"), b"package bytes").expect("write");
    std::fs::write(fixture.path("secret"), b"not served").expect("write");
    let mut config = fixture.config();
    config.plugins_dir = Some(dir);
    let state = fixture.state(&config);
    let answer = get(&state, "/api/plugins/download/x.kmpkg");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"package bytes"[..])
    );
    for bad in ["..", ".hidden", "%2e%2e%2fsecret", "a%2fb"] {
        assert_eq!(
            get(&state, &format!("/api/plugins/download/{bad}")).status,
            400,
            "{bad}"
        );
    }
    assert_eq!(get(&state, "/api/plugins/download/../secret").status, 404);
    assert_eq!(
        get(&state, "/api/plugins/download/missing.kmpkg").status,
        404
    );
    assert_eq!(get(&state, "/api/plugins/latest?name=Bad_Name").status, 400);
    assert_eq!(get(&state, "/api/plugins/latest?name=missing").status, 404);
    std::fs::write(fixture.path("plugins/junk"), b"not a package").expect("write");
    assert_eq!(get(&state, "/api/plugins/latest?name=junk").status, 500);
}

fn rate_limited_state(fixture: &Fixture, requests: u32) -> AppState {
    let mut config = fixture.config();
    config.rate_limit = Some(crate::limits::Rate {
        requests,
        window: std::time::Duration::from_secs(600),
    });
    fixture.state(&config)
}

#[test]
fn past_the_rate_limit_a_customer_gets_429_with_retry_after() {
    let fixture = Fixture::new();
    let state = rate_limited_state(&fixture, 2);
    let first = authenticate(&state, "key-alice");
    assert_eq!(first.status, 200);
    assert_eq!(authenticate(&state, "key-alice").status, 200);
    let refused = authenticate(&state, "key-alice");
    assert_eq!(refused.status, 429, "{:?}", refused.body_json());
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=600).contains(&retry), "{retry}");
    assert!(
        refused.body_json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("alice") && e.contains("retry after")),
        "{:?}",
        refused.body_json()
    );
    // Another customer has a budget of its own.
    assert_eq!(authenticate(&state, "key-bob").status, 200);
    // Event batches count against the same customer.
    let token = first.body_json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let batch = with_bearer(&state, &token, &json!({"events": [{"id": "e1"}]}));
    assert_eq!(batch.status, 429);
    assert!(batch.header("retry-after").is_some());

    let log = call(&state, Method::Get, "/control/rate-limit", &Value::Null).body_json();
    assert_eq!(log["limit"], json!({"requests": 2, "window_secs": 600}));
    let decisions = log["decisions"].as_array().expect("decisions");
    let statuses: Vec<(String, u64)> = decisions
        .iter()
        .map(|d| {
            (
                d["customer"].as_str().unwrap_or_default().to_owned(),
                d["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("alice".to_owned(), 200),
            ("alice".to_owned(), 200),
            ("alice".to_owned(), 429),
            ("bob".to_owned(), 200),
            ("alice".to_owned(), 429),
        ]
    );
    assert_eq!(decisions[2]["retry_after"], retry);
    assert_eq!(decisions[4]["path"], "/api/events/batch");
    let abuse = call(&state, Method::Get, "/control/abuse", &Value::Null).body_json();
    let signal = &abuse["signals"][0];
    assert_eq!(signal["kind"], "rate-limited", "{abuse:#}");
    assert_eq!(signal["subject"], "alice");
    assert_eq!(signal["count"], 2);
}

#[test]
fn without_a_rate_limit_nothing_is_refused_or_logged() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    for _ in 0..20 {
        assert_eq!(authenticate(&state, "key-alice").status, 200);
    }
    let log = call(&state, Method::Get, "/control/rate-limit", &Value::Null).body_json();
    assert_eq!(log, json!({"limit": null, "decisions": []}));
}

fn signals(state: &AppState) -> Vec<Value> {
    call(state, Method::Get, "/control/abuse", &Value::Null).body_json()["signals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn repeated_failed_authentications_raise_an_abuse_signal_per_subject() {
    let fixture = Fixture::new();
    // The fixture's threshold: 3 failures within 10 minutes.
    let state = fixture.state(&fixture.config());
    let claimed = |state: &AppState| {
        call(
            state,
            Method::Post,
            "/api/plugins/authenticate",
            &auth_body("not-a-key", Some("alice")),
        )
    };
    assert_eq!(claimed(&state).status, 401);
    assert_eq!(claimed(&state).status, 401);
    assert!(signals(&state).is_empty(), "raised below the threshold");
    assert_eq!(claimed(&state).status, 401);
    let raised = signals(&state);
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["kind"], "repeated-auth-failures");
    assert_eq!(raised[0]["subject_kind"], "customer");
    assert_eq!(raised[0]["subject"], "alice");
    assert_eq!(raised[0]["count"], 3);
    assert_eq!(raised[0]["last_reason"], "unknown API key");
    assert_eq!(claimed(&state).status, 401);
    assert_eq!(signals(&state)[0]["count"], 4);

    // An unknown key that claims no customer: the subject is a digest prefix, never the key.
    for _ in 0..3 {
        let answer = call(
            &state,
            Method::Post,
            "/api/plugins/authenticate",
            &auth_body("leaked-key-0123", None),
        );
        assert_eq!(answer.status, 401);
    }
    let all = call(&state, Method::Get, "/control/abuse", &Value::Null);
    let text = String::from_utf8_lossy(&all.body).into_owned();
    assert!(!text.contains("leaked-key-0123"), "{text}");
    let digest = km_durable::digest::sha256_hex(b"leaked-key-0123");
    assert!(
        signals(&state)
            .iter()
            .any(|s| s["subject_kind"] == "api_key" && s["subject"] == digest[..16]),
        "{text}"
    );

    // A real key in a request not signed with the build's credentials (a stolen key, a forged
    // customer token in clear): a failure of the key's customer.
    let mut forged = auth_body("key-bob", Some("bob"));
    forged["customer_token"] = json!("ct-forged");
    for _ in 0..3 {
        let answer = call(&state, Method::Post, "/api/plugins/authenticate", &forged);
        assert_eq!(answer.status, 403);
    }
    assert!(
        signals(&state).iter().any(|s| s["subject"] == "bob"
            && s["last_reason"]
                .as_str()
                .is_some_and(|r| r.contains("unsigned authentication request"))),
        "{:?}",
        signals(&state)
    );
    // Successful authentications raise nothing.
    assert_eq!(authenticate(&state, "key-alice").status, 200);
    assert_eq!(signals(&state).len(), 3);
}

/// `request` with `key`'s device headers, then `key`'s public key swapped for `claimed`'s: a
/// device signature that does not verify, naming `claimed`.
fn with_forged_device(
    request: Request,
    key: &km_signing::PrivateKey,
    claimed: &km_signing::PrivateKey,
) -> Request {
    let mut forged = crate::testing::with_device(request, key);
    for header in &mut forged.headers {
        if header.0 == km_signing::device::HEADER_KEY {
            header.1 = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                claimed.public_key().spki_der(),
            );
        }
    }
    forged
}

/// The signal of `subject_kind` and `subject`, if one was raised.
fn signal_of(state: &AppState, subject_kind: &str, subject: &str) -> Option<Value> {
    signals(state)
        .into_iter()
        .find(|s| s["subject_kind"] == subject_kind && s["subject"] == subject)
}

#[test]
fn failed_authentications_of_a_request_that_names_a_device_are_the_devices_too() {
    use crate::testing::with_device;
    let fixture = Fixture::new();
    let mut alice = customer("alice", "key-alice", "pro");
    alice["seats"] = 1.into();
    write_customers(
        &fixture.customers(),
        &[alice, customer("bob", "key-bob", "pro")],
    );
    // The fixture's threshold: 3 failures within 10 minutes.
    let state = fixture.state(&fixture.config());
    let device = || km_signing::PrivateKey::generate(km_signing::Algorithm::Ed25519).expect("key");
    let id = |key: &km_signing::PrivateKey| key.public_key().key_id().to_string();
    let alices = || signed_auth("key-alice", "alice", crate::store::now(), &nonce());
    let (holder, other, forger, victim, stranger) =
        (device(), device(), device(), device(), device());

    // Seat-limit refusals: the installation beyond Alice's one seat is a subject of its own.
    assert_eq!(
        router()
            .handle(&state, &with_device(alices(), &holder))
            .status,
        200
    );
    for attempt in 1..=3 {
        let answer = router().handle(&state, &with_device(alices(), &other));
        assert_eq!(answer.status, 403, "{:?}", answer.body_json());
        assert_eq!(answer.body_json()["code"], "seat_limit");
        let raised = signal_of(&state, "device", &id(&other));
        assert_eq!(
            raised.is_some(),
            attempt == 3,
            "after {attempt}: {:?}",
            signals(&state)
        );
    }
    let raised = signal_of(&state, "device", &id(&other)).expect("raised");
    assert_eq!(raised["kind"], "repeated-auth-failures");
    assert_eq!(raised["count"], 3);
    assert!(
        raised["last_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("seat limit reached") && r.contains(&id(&other))),
        "{raised}"
    );
    // The same failures are Alice's; the device that holds the seat failed nothing.
    assert_eq!(
        signal_of(&state, "customer", "alice").expect("alice")["count"],
        3
    );
    assert!(signal_of(&state, "device", &id(&holder)).is_none());
    // A refusal of a request that names no device counts for the customer only.
    let answer = router().handle(&state, &alices());
    assert_eq!(answer.body_json()["code"], "device_required");
    assert_eq!(
        signal_of(&state, "customer", "alice").expect("alice")["count"],
        4
    );
    assert_eq!(
        signal_of(&state, "device", &id(&other)).expect("other")["count"],
        3
    );

    // A device signature that does not verify: a failure of the device whose key it names (and
    // of nobody's seat: Bob has no limit, and nothing was claimed).
    let bobs = || signed_auth("key-bob", "bob", crate::store::now(), &nonce());
    for _ in 0..3 {
        let answer = router().handle(&state, &with_forged_device(bobs(), &forger, &victim));
        assert_eq!(answer.body_json()["code"], "bad_device_signature");
    }
    let raised = signal_of(&state, "device", &id(&victim)).expect("the named device");
    assert!(
        raised["last_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("device identity:")),
        "{raised}"
    );
    assert!(signal_of(&state, "device", &id(&forger)).is_none());
    assert_eq!(
        signal_of(&state, "customer", "bob").expect("bob")["count"],
        3
    );

    // build-key refuses a forged device signature too, and records it the same way.
    let mut build_key = Request::new(Method::Post, "/api/plugins/build-key");
    build_key.body = json!({
        "plugin_name": "api-logger",
        "api_key": "key-bob",
        "build_id": km_durable::digest::hex(&crate::testing::BUILD),
        "customer_hash": km_plugin_sdk::credentials::customer_hash("bob"),
    })
    .to_string()
    .into_bytes();
    let answer = router().handle(&state, &with_forged_device(build_key, &forger, &victim));
    assert_eq!(answer.body_json()["code"], "bad_device_signature");
    assert_eq!(
        signal_of(&state, "device", &id(&victim)).expect("victim")["count"],
        4
    );
    assert_eq!(
        signal_of(&state, "customer", "bob").expect("bob")["count"],
        4
    );

    // An unknown key from a device: the key's digest and the device, never the key.
    for _ in 0..3 {
        let mut request = Request::new(Method::Post, "/api/plugins/authenticate");
        request.body = auth_body("leaked-key-0123", None).to_string().into_bytes();
        let answer = router().handle(&state, &with_device(request, &stranger));
        assert_eq!(answer.status, 401);
    }
    let raised = signal_of(&state, "device", &id(&stranger)).expect("the stranger");
    assert_eq!(raised["last_reason"], "unknown API key");
    let digest = km_durable::digest::sha256_hex(b"leaked-key-0123");
    assert!(signal_of(&state, "api_key", &digest[..16]).is_some());
    let listed = call(&state, Method::Get, "/control/abuse", &Value::Null);
    assert!(!String::from_utf8_lossy(&listed.body).contains("leaked-key-0123"));
}
