//! The witness in process: what it stores, what it refuses, and why.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_audit::{leaf_hash, AuditKey, Checkpoint, Tree};
use km_plugin_sdk::auth::TokenPayload;
use serde_json::{json, Value};

use crate::http::{Method, Request, Response};
use crate::routes::router;
use crate::state::AppState;
use crate::testing::{customer, write_customers, Fixture};

fn token(state: &AppState, customer: &str, plugin: &str, tier: km_plugin_sdk::Tier) -> String {
    let payload = TokenPayload {
        v: 1,
        cus: customer.into(),
        plg: plugin.into(),
        tier,
        feat: vec![],
        iat: crate::store::now(),
        exp: crate::store::now() + 600,
        jti: "t".into(),
    };
    state.signer.sign_token(&payload).expect("signs")
}

fn send(state: &AppState, token: &str, method: Method, target: &str, body: &Value) -> Response {
    let mut request = Request::new(method, target);
    request
        .headers
        .push(("authorization".into(), format!("Bearer {token}")));
    if !body.is_null() {
        request.body = body.to_string().into_bytes();
    }
    router().handle(state, &request)
}

struct Trail {
    pkcs8: Vec<u8>,
    key: AuditKey,
    tree: Tree,
}

impl Trail {
    fn new(n: u64) -> Trail {
        let (pkcs8, key) = AuditKey::generate().expect("a key");
        let mut tree = Tree::new();
        for i in 0..n {
            tree.push(leaf_hash(&i.to_be_bytes()));
        }
        Trail { pkcs8, key, tree }
    }

    /// Another history signed with the same key.
    fn forge(&self) -> Trail {
        Trail {
            pkcs8: self.pkcs8.clone(),
            key: AuditKey::from_pkcs8(&self.pkcs8).expect("the same key"),
            tree: Tree::new(),
        }
    }

    fn grow(&mut self, n: u64, salt: u8) {
        for i in 0..n {
            self.tree.push(leaf_hash(&[salt, i as u8]));
        }
    }

    fn submission(&self, from: u64) -> Value {
        let cp = Checkpoint {
            key_id: self.key.id().into(),
            size: self.tree.size(),
            root: self.tree.root(),
            time_ms: 1,
            reason: "end".into(),
            session: None,
        };
        let signed = self.key.sign_checkpoint(&cp).expect("signs").to_json();
        let proof = self
            .tree
            .consistency_proof(from, self.tree.size())
            .expect("held");
        json!({
            "key_id": self.key.id(),
            "public_key": STANDARD.encode(self.key.public_key()),
            "host": "laptop",
            "user": "alice",
            "checkpoint": signed.checkpoint,
            "signature": signed.signature,
            "from": from,
            "proof": proof.iter().map(|h| km_durable::digest::hex(h)).collect::<Vec<_>>(),
        })
    }
}

fn setup() -> (Fixture, AppState, String) {
    let fixture = Fixture::new();
    write_customers(
        &fixture.customers(),
        &[
            customer("alice", "key-alice", "enterprise"),
            customer("bob", "key-bob", "enterprise"),
        ],
    );
    let state = fixture.state(&fixture.config());
    let t = token(
        &state,
        "alice",
        "compliance-reporting",
        km_plugin_sdk::Tier::Enterprise,
    );
    (fixture, state, t)
}

#[test]
fn checkpoints_that_extend_the_last_are_stored_and_listed() {
    let (_f, state, t) = setup();
    let mut trail = Trail::new(5);
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &trail.submission(0),
    );
    assert_eq!(r.status, 201, "{:?}", r.body_json());
    // The same state again is fine.
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &trail.submission(0),
    );
    assert_eq!(r.status, 201, "{:?}", r.body_json());
    trail.grow(7, 1);
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &trail.submission(5),
    );
    assert_eq!(r.status, 201, "{:?}", r.body_json());
    // A proof from a size the server does not hold as its latest: prove from there.
    trail.grow(1, 2);
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &trail.submission(5),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.body_json()["latest"], 12);
    let target = format!(
        "/api/audit/checkpoints?key_id={}&host=laptop&user=alice",
        trail.key.id()
    );
    let listed = send(&state, &t, Method::Get, &target, &Value::Null).body_json();
    let sizes: Vec<u64> = listed["checkpoints"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["size"].as_u64().expect("size"))
        .collect();
    assert_eq!(sizes, [5, 12]);
    assert!(listed["checkpoints"][0]["received_at"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
    assert_eq!(listed["other_keys"], json!([]));
}

#[test]
fn a_rewritten_trail_is_refused_and_a_new_key_shows_up_beside_the_old() {
    let (_f, state, t) = setup();
    let mut trail = Trail::new(6);
    assert_eq!(
        send(
            &state,
            &t,
            Method::Post,
            "/api/audit/checkpoints",
            &trail.submission(0)
        )
        .status,
        201
    );
    // Same key, another history: refused, at the same size and beyond.
    let mut forged = trail.forge();
    forged.grow(6, 9);
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &forged.submission(0),
    );
    assert_eq!(r.status, 422, "{:?}", r.body_json());
    forged.grow(3, 9);
    let r = send(
        &state,
        &t,
        Method::Post,
        "/api/audit/checkpoints",
        &forged.submission(6),
    );
    assert_eq!(r.status, 422, "{:?}", r.body_json());
    // A fresh key for the same host and user: stored, and listed as another key of the old.
    let fresh = Trail::new(3);
    assert_eq!(
        send(
            &state,
            &t,
            Method::Post,
            "/api/audit/checkpoints",
            &fresh.submission(0)
        )
        .status,
        201
    );
    let target = format!(
        "/api/audit/checkpoints?key_id={}&host=laptop&user=alice",
        fresh.key.id()
    );
    let listed = send(&state, &t, Method::Get, &target, &Value::Null).body_json();
    assert_eq!(listed["other_keys"][0]["key_id"], trail.key.id());
    assert_eq!(listed["other_keys"][0]["size"], 6);
    trail.grow(1, 3);
    // Another customer cannot write under alice's key, nor read it.
    let bob = token(
        &state,
        "bob",
        "compliance-reporting",
        km_plugin_sdk::Tier::Enterprise,
    );
    let r = send(
        &state,
        &bob,
        Method::Post,
        "/api/audit/checkpoints",
        &trail.submission(6),
    );
    assert_eq!(r.status, 403);
    let target = format!("/api/audit/checkpoints?key_id={}", trail.key.id());
    let listed = send(&state, &bob, Method::Get, &target, &Value::Null).body_json();
    assert_eq!(listed["checkpoints"], json!([]));
}

#[test]
fn bad_signatures_tokens_and_bodies_are_refused() {
    let (_f, state, t) = setup();
    let trail = Trail::new(2);
    let mut body = trail.submission(0);
    body["checkpoint"] = json!(body["checkpoint"]
        .as_str()
        .expect("text")
        .replace("size 2", "size 3"));
    assert_eq!(
        send(&state, &t, Method::Post, "/api/audit/checkpoints", &body).status,
        422
    );
    let mut body = trail.submission(0);
    body["key_id"] = json!("0000000000000000");
    assert_eq!(
        send(&state, &t, Method::Post, "/api/audit/checkpoints", &body).status,
        400
    );
    let pro = token(
        &state,
        "alice",
        "compliance-reporting",
        km_plugin_sdk::Tier::Pro,
    );
    assert_eq!(
        send(
            &state,
            &pro,
            Method::Post,
            "/api/audit/checkpoints",
            &trail.submission(0)
        )
        .status,
        403
    );
    let other = token(
        &state,
        "alice",
        "api-logger",
        km_plugin_sdk::Tier::Enterprise,
    );
    assert_eq!(
        send(
            &state,
            &other,
            Method::Post,
            "/api/audit/checkpoints",
            &trail.submission(0)
        )
        .status,
        401
    );
    assert_eq!(
        send(
            &state,
            &t,
            Method::Get,
            "/api/audit/checkpoints",
            &Value::Null
        )
        .status,
        400
    );
    assert_eq!(super::decode("a%2Db+c").as_deref(), Some("a-b c"));
}
