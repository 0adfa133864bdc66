//! Build keys, signed requests, seats and key rotation, in process on the state the real
//! start-up builds: every refusal the module doc lists, with its code.

use km_plugin_sdk::credentials::{self, RegionInfo};
use km_plugin_sdk::request::MAX_SKEW_SECS;
use serde_json::{json, Value};

use crate::http::{Method, Request, Response};
use crate::routes::router;
use crate::state::AppState;
use crate::testing::{customer, nonce, signed_auth, with_device, write_customers, Fixture, BUILD};

fn handle(state: &AppState, request: &Request) -> Response {
    router().handle(state, request)
}

fn code(answer: &Response) -> Value {
    answer.body_json()["code"].clone()
}

fn build_key_request(api_key: &str, customer_id: &str) -> Request {
    let mut request = Request::new(Method::Post, "/api/plugins/build-key");
    request.body = json!({
        "plugin_name": "api-logger",
        "api_key": api_key,
        "build_id": km_durable::digest::hex(&BUILD),
        "customer_hash": credentials::customer_hash(customer_id),
    })
    .to_string()
    .into_bytes();
    request
}

fn info(customer_id: &str) -> RegionInfo {
    let hash = hex::decode(credentials::customer_hash(customer_id)).expect("hex");
    RegionInfo {
        api_public_key: [0u8; 32],
        customer_hash: hash.try_into().expect("32 bytes"),
        build_id: BUILD,
    }
}

fn bearer(method: Method, target: &str, api_key: &str) -> Request {
    let mut request = Request::new(method, target);
    request
        .headers
        .push(("authorization".into(), format!("Bearer {api_key}")));
    request
}

fn auth(state: &AppState, api_key: &str, customer: &str) -> Response {
    handle(
        state,
        &signed_auth(api_key, customer, crate::store::now(), &nonce()),
    )
}

#[test]
fn a_build_key_is_wrapped_for_the_callers_key_and_only_for_its_customers_builds() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let answer = handle(&state, &build_key_request("key-alice", "alice"));
    assert_eq!(answer.status, 200, "{:?}", answer.body_json());
    let wrapped = answer.body_json()["build_key"]
        .as_str()
        .expect("a wrapped key")
        .to_owned();
    let key = credentials::unwrap_build_key(&wrapped, "key-alice", &info("alice")).expect("opens");
    assert_eq!(key, credentials::build_key("ct-alice", &BUILD));
    assert!(credentials::unwrap_build_key(&wrapped, "key-bob", &info("alice")).is_err());

    let answer = handle(&state, &build_key_request("key-bob", "alice"));
    assert_eq!(
        (answer.status, code(&answer)),
        (403, json!("another_customer"))
    );
    let answer = handle(&state, &build_key_request("key-nobody", "alice"));
    assert_eq!(
        (answer.status, code(&answer)),
        (401, json!("unknown_api_key"))
    );
    let mut bad = build_key_request("key-alice", "alice");
    bad.body = json!({"plugin_name": "p", "api_key": "key-alice", "build_id": "XYZ",
                      "customer_hash": credentials::customer_hash("alice")})
    .to_string()
    .into_bytes();
    assert_eq!(handle(&state, &bad).status, 400);

    // A customer without a secret on record has no usable builds.
    let mut secretless = customer("carol", "key-carol", "pro");
    secretless
        .as_object_mut()
        .expect("object")
        .remove("customer_token");
    write_customers(
        &fixture.customers(),
        &[customer("alice", "key-alice", "pro"), secretless],
    );
    let answer = handle(&state, &build_key_request("key-carol", "carol"));
    assert_eq!(
        (answer.status, code(&answer)),
        (403, json!("no_customer_secret"))
    );
    let answer = auth(&state, "key-carol", "carol");
    assert_eq!(
        (answer.status, code(&answer)),
        (403, json!("no_customer_secret"))
    );
}

#[test]
fn a_signed_request_is_accepted_once_within_the_skew_and_only_with_the_builds_key() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let now = crate::store::now();
    let request = signed_auth("key-alice", "alice", now, &nonce());
    let answer = handle(&state, &request);
    assert_eq!(answer.status, 200, "{:?}", answer.body_json());
    assert_eq!(state.store.nonces_kept().expect("count"), 1);

    let replayed = handle(&state, &request);
    assert_eq!(
        (replayed.status, code(&replayed)),
        (401, json!("replayed_request"))
    );
    for stale in [now - MAX_SKEW_SECS - 5, now + MAX_SKEW_SECS + 5] {
        let answer = handle(&state, &signed_auth("key-alice", "alice", stale, &nonce()));
        assert_eq!(
            (answer.status, code(&answer)),
            (401, json!("stale_request")),
            "{stale}"
        );
    }
    // Signed without the stamped credentials: with another secret (bob's build's), or the body
    // changed after signing (another API key slipped in).
    let mut forged = signed_auth("key-alice", "bob", now, &nonce());
    forged.body = signed_auth("key-alice", "alice", now, "0".repeat(32).as_str()).body;
    let answer = handle(&state, &forged);
    assert_eq!(
        (answer.status, code(&answer)),
        (401, json!("bad_signature"))
    );
    let mut altered = signed_auth("key-alice", "alice", now, &nonce());
    altered.body = String::from_utf8(altered.body)
        .expect("utf-8")
        .replace("1.0.0", "9.9.9")
        .into_bytes();
    let answer = handle(&state, &altered);
    assert_eq!(
        (answer.status, code(&answer)),
        (401, json!("bad_signature"))
    );
    // Some headers only.
    let mut partial = signed_auth("key-alice", "alice", now, &nonce());
    partial.headers.retain(|(n, _)| n != "km-nonce");
    let answer = handle(&state, &partial);
    assert_eq!(
        (answer.status, code(&answer)),
        (400, json!("malformed_signature"))
    );
    // None of the refused requests spent a nonce.
    assert_eq!(state.store.nonces_kept().expect("count"), 1);
}

#[test]
fn nonces_are_forgotten_once_their_timestamp_has_expired() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    let now = crate::store::now();
    assert!(state
        .store
        .use_nonce("alice", &nonce(), now - 1, now - 600)
        .expect("recorded"));
    let fresh = nonce();
    assert!(state
        .store
        .use_nonce("alice", &fresh, now + 300, now)
        .expect("recorded"));
    assert_eq!(
        state.store.nonces_kept().expect("count"),
        1,
        "the expired one went"
    );
    assert!(!state
        .store
        .use_nonce("alice", &fresh, now + 300, now)
        .expect("checked"));
}

#[test]
fn a_rotation_refuses_the_old_key_at_once_and_the_file_does_not_bring_it_back() {
    let fixture = Fixture::new();
    let state = fixture.state(&fixture.config());
    assert_eq!(auth(&state, "key-alice", "alice").status, 200);
    assert_eq!(
        handle(
            &state,
            &Request::new(Method::Post, "/api/account/rotate-key")
        )
        .status,
        401,
        "the current key is needed"
    );
    let answer = handle(
        &state,
        &bearer(Method::Post, "/api/account/rotate-key", "key-alice"),
    );
    assert_eq!(answer.status, 200, "{:?}", answer.body_json());
    let new_key = answer.body_json()["api_key"]
        .as_str()
        .expect("the new key")
        .to_owned();
    assert!(
        new_key.starts_with("km_live_") && new_key.len() == 40,
        "{new_key}"
    );

    for answer in [
        auth(&state, "key-alice", "alice"),
        handle(&state, &build_key_request("key-alice", "alice")),
        handle(
            &state,
            &bearer(Method::Post, "/api/account/rotate-key", "key-alice"),
        ),
    ] {
        assert_eq!(answer.status, 401);
        assert_eq!(code(&answer), "api_key_rotated");
        assert!(
            answer.body_json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("km init --api-key")),
            "{:?}",
            answer.body_json()
        );
    }
    // The same build, with the new key: its build key comes wrapped for the new key.
    assert_eq!(auth(&state, &new_key, "alice").status, 200);
    let wrapped = handle(&state, &build_key_request(&new_key, "alice")).body_json()["build_key"]
        .as_str()
        .expect("wrapped")
        .to_owned();
    assert!(credentials::unwrap_build_key(&wrapped, &new_key, &info("alice")).is_ok());

    // An edit of the customers file that still names the old key changes the tier, not the key.
    write_customers(
        &fixture.customers(),
        &[
            customer("alice", "key-alice", "enterprise"),
            customer("bob", "key-bob", "free"),
        ],
    );
    assert_eq!(auth(&state, "key-alice", "alice").status, 401);
    let answer = auth(&state, &new_key, "alice");
    assert_eq!(answer.body_json()["tier"], "enterprise");
    // A new key in the file is the operator's rotation, and applies.
    write_customers(
        &fixture.customers(),
        &[
            customer("alice", "key-alice-2", "pro"),
            customer("bob", "key-bob", "free"),
        ],
    );
    assert_eq!(auth(&state, "key-alice-2", "alice").status, 200);
    assert_eq!(auth(&state, &new_key, "alice").status, 401);
}

#[test]
fn seats_are_claimed_within_the_limit_listed_and_released() {
    let fixture = Fixture::new();
    let mut alice = customer("alice", "key-alice", "pro");
    alice["seats"] = 1.into();
    write_customers(
        &fixture.customers(),
        &[alice, customer("bob", "key-bob", "pro")],
    );
    let state = fixture.state(&fixture.config());
    let device_a = km_signing::PrivateKey::generate(km_signing::Algorithm::Ed25519).expect("a");
    let device_b = km_signing::PrivateKey::generate(km_signing::Algorithm::Ed25519).expect("b");
    let id = |key: &km_signing::PrivateKey| key.public_key().key_id().to_string();
    let from = |key: &km_signing::PrivateKey| {
        with_device(
            signed_auth("key-alice", "alice", crate::store::now(), &nonce()),
            key,
        )
    };

    let answer = auth(&state, "key-alice", "alice");
    assert_eq!(
        (answer.status, code(&answer)),
        (403, json!("device_required"))
    );
    assert_eq!(handle(&state, &from(&device_a)).status, 200);
    assert_eq!(handle(&state, &from(&device_a)).status, 200, "held");
    let answer = handle(&state, &from(&device_b));
    assert_eq!((answer.status, code(&answer)), (403, json!("seat_limit")));
    let why = answer.body_json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains(&id(&device_b)) && why.contains("DELETE /api/seats"),
        "{why}"
    );

    let list = handle(&state, &bearer(Method::Get, "/api/seats", "key-alice")).body_json();
    assert_eq!(list["seat_limit"], 1);
    assert_eq!(list["seats"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["seats"][0]["device_id"], id(&device_a));
    assert_eq!(list["seats"][0]["last_plugin"], "api-logger");
    // Bob cannot see or release Alice's seats.
    let bobs = handle(&state, &bearer(Method::Get, "/api/seats", "key-bob")).body_json();
    assert_eq!(bobs["seats"], json!([]));
    let target = format!("/api/seats/{}", id(&device_a));
    assert_eq!(
        handle(&state, &bearer(Method::Delete, &target, "key-bob")).status,
        404
    );

    assert_eq!(
        handle(&state, &bearer(Method::Delete, &target, "key-alice")).status,
        200
    );
    assert_eq!(
        handle(&state, &from(&device_b)).status,
        200,
        "B got the seat"
    );
    assert_eq!(
        handle(&state, &from(&device_a)).status,
        403,
        "A has none now"
    );
    assert_eq!(
        handle(&state, &bearer(Method::Delete, &target, "key-alice")).status,
        404
    );

    // A device signature that does not verify is refused, even where seats are unlimited.
    let mut forged = with_device(
        signed_auth("key-bob", "bob", crate::store::now(), &nonce()),
        &device_a,
    );
    for header in &mut forged.headers {
        if header.0 == km_signing::device::HEADER_KEY {
            header.1 = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                device_b.public_key().spki_der(),
            );
        }
    }
    let answer = handle(&state, &forged);
    assert_eq!(
        (answer.status, code(&answer)),
        (401, json!("bad_device_signature"))
    );
    // Without a limit, every device is let in and listed.
    for key in [&device_a, &device_b] {
        let request = with_device(
            signed_auth("key-bob", "bob", crate::store::now(), &nonce()),
            key,
        );
        assert_eq!(handle(&state, &request).status, 200);
    }
    let bobs = handle(&state, &bearer(Method::Get, "/api/seats", "key-bob")).body_json();
    assert_eq!(bobs["seat_limit"], Value::Null);
    assert_eq!(bobs["seats"].as_array().map(Vec::len), Some(2));
}
