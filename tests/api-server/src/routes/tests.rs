//! The API's routes in process, on the state the real start-up builds (in-memory database,
//! a customers file in a temporary directory): the table, authentication, events, controls and
//! downloads. The socket side is tested in `server`.

use km_plugin_sdk::auth::verify_token;
use km_plugin_sdk::Tier;
use serde_json::{json, Value};

use super::router;
use crate::http::{Method, Request, Response};
use crate::state::AppState;
use crate::testing::{customer, write_customers, Fixture};

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
        "customer_token": customer_id.map(|id| format!("ct-{id}")),
    })
}

fn authenticate(state: &AppState, api_key: &str) -> Response {
    call(
        state,
        Method::Post,
        "/api/plugins/authenticate",
        &auth_body(api_key, None),
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
            "GET /api/audit/checkpoints",
            "GET /api/plugins/download/{file}",
            "GET /api/plugins/latest",
            "GET /api/public-key",
            "GET /control/stats",
            "POST /api/audit/checkpoints",
            "POST /api/events/batch",
            "POST /api/plugins/authenticate",
            "POST /control/delay",
            "POST /control/down",
            "POST /control/tamper",
            "POST /control/up",
        ]
    );
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
    let mut wrong_token = auth_body("key-alice", Some("alice"));
    wrong_token["customer_token"] = "ct-forged".into();
    let answer = call(
        &state,
        Method::Post,
        "/api/plugins/authenticate",
        &wrong_token,
    );
    assert_eq!(answer.status, 403);
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
