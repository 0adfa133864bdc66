//! Unit tests of the auth module: token verification, and [`Subscription`] against a fake
//! Kilometers API that checks what the real one checks (build keys wrapped for the current API
//! key, signed authentication requests, no customer secret on the wire).

use super::*;
use crate::credentials::{StampInput, EMPTY_REGION, REGION_SIZE};
use km_abi::{HttpResponse, PluginError};
use ring::signature::{Ed25519KeyPair, KeyPair};

const NOW: i64 = 1_800_000_000;

fn keypair(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed")
}

fn payload(plugin: &str, customer: &str, tier: Tier, iat: i64, exp: i64) -> TokenPayload {
    TokenPayload {
        v: 1,
        cus: customer.into(),
        plg: plugin.into(),
        tier,
        feat: vec!["api_logging".into()],
        iat,
        exp,
        jti: "t1".into(),
    }
}

fn token(key: &Ed25519KeyPair, p: &TokenPayload) -> String {
    encode_token(p, |m| key.sign(m).as_ref().to_vec())
}

fn pk(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

#[test]
fn a_good_token_verifies() {
    let k = keypair(1);
    let t = token(
        &k,
        &payload("api-logger", "cust_a", Tier::Pro, NOW - 10, NOW + 600),
    );
    let claims = verify_token(&t, &pk(&k), "api-logger", Some("cust_a"), NOW).expect("valid");
    assert_eq!(claims.tier, Tier::Pro);
    assert!(claims.has_feature("api_logging"));
    assert_eq!(claims.expires_at, NOW + 600);
}

#[test]
fn a_token_signed_by_another_key_is_rejected() {
    let t = token(
        &keypair(2),
        &payload("api-logger", "cust_a", Tier::Pro, NOW, NOW + 600),
    );
    assert_eq!(
        verify_token(&t, &pk(&keypair(1)), "api-logger", None, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_token_for_another_plugin_or_customer_is_rejected() {
    let k = keypair(1);
    let t = token(
        &k,
        &payload("console-logger", "cust_a", Tier::Pro, NOW, NOW + 600),
    );
    assert!(matches!(
        verify_token(&t, &pk(&k), "api-logger", None, NOW),
        Err(TokenError::WrongPlugin { .. })
    ));
    let t = token(
        &k,
        &payload("api-logger", "cust_b", Tier::Pro, NOW, NOW + 600),
    );
    assert!(matches!(
        verify_token(&t, &pk(&k), "api-logger", Some("cust_a"), NOW),
        Err(TokenError::WrongCustomer { .. })
    ));
}

#[test]
fn expired_and_future_tokens_are_rejected() {
    let k = keypair(1);
    let t = token(&k, &payload("p", "c", Tier::Pro, NOW - 900, NOW - 1));
    assert_eq!(
        verify_token(&t, &pk(&k), "p", None, NOW),
        Err(TokenError::Expired {
            expires_at: NOW - 1
        })
    );
    let t = token(&k, &payload("p", "c", Tier::Pro, NOW + 3600, NOW + 7200));
    assert!(matches!(
        verify_token(&t, &pk(&k), "p", None, NOW),
        Err(TokenError::NotYetValid { .. })
    ));
}

#[test]
fn an_altered_payload_is_rejected() {
    let k = keypair(1);
    let t = token(&k, &payload("p", "c", Tier::Free, NOW, NOW + 600));
    let parts: Vec<&str> = t.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&payload("p", "c", Tier::Enterprise, NOW, NOW + 600)).expect("json"),
    );
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verify_token(&forged, &pk(&k), "p", None, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn malformed_and_oversized_tokens_are_rejected() {
    let k = keypair(1);
    for bad in [
        "",
        "km1",
        "km1.a",
        "km1.a.b.c",
        "km2.a.b",
        "km1.!!!.AAAA",
        "km1.e30.!!!",
    ] {
        assert!(
            matches!(
                verify_token(bad, &pk(&k), "p", None, NOW),
                Err(TokenError::BadFormat(_) | TokenError::BadSignature)
            ),
            "{bad:?}"
        );
    }
    // Signed garbage is still refused as a format error, after the signature.
    let payload_b64 = URL_SAFE_NO_PAD.encode(b"{\"v\":1}");
    let sig = k.sign(&signing_message(&payload_b64));
    let t = format!("km1.{payload_b64}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert!(matches!(
        verify_token(&t, &pk(&k), "p", None, NOW),
        Err(TokenError::BadFormat(_))
    ));
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        verify_token(&huge, &pk(&k), "p", None, NOW),
        Err(TokenError::Oversized {
            len: MAX_TOKEN_LEN + 1
        })
    );
}

// --- the Subscription helper, against a fake API ---

const SECRET: &str = "ct-cust_a";

fn region_for(key: &Ed25519KeyPair, customer: &str) -> &'static [u8] {
    let mut region = EMPTY_REGION.to_vec();
    let creds = Credentials {
        customer_id: customer.into(),
        customer_token: format!("ct-{customer}"),
        tier: Tier::Pro,
        build_time: NOW,
    };
    crate::credentials::stamp(
        &mut region,
        &StampInput {
            api_public_key: &pk(key),
            credentials: &creds,
        },
    )
    .expect("stamp");
    assert_eq!(region.len(), REGION_SIZE);
    Box::leak(region.into_boxed_slice())
}

fn http_answer(status: u16, body: Vec<u8>) -> Result<HttpResponse, PluginError> {
    Ok(HttpResponse {
        status,
        headers: Default::default(),
        body: body.into(),
    })
}

fn answer(token: &str, customer: &str, tier: &str, exp: i64) -> Result<HttpResponse, PluginError> {
    let body = serde_json::json!({
        "token": token, "customer_id": customer, "tier": tier,
        "features": ["api_logging"], "expires_at": exp,
    });
    http_answer(200, body.to_string().into_bytes())
}

fn header<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers
        .iter()
        .find(|h| h.0.as_str() == name)
        .map(|h| h.1.as_str())
}

/// What the fake API saw.
#[derive(Default)]
struct Seen {
    build_key_requests: usize,
    auth_requests: usize,
}

/// The API of customer `cust_a` (secret [`SECRET`]) whose current API key is `api_key`:
/// build keys are handed out wrapped for that key only, and every authentication request
/// must carry a valid signature by the build's request key, and no customer secret, before
/// `auth` answers it.
fn api<'a>(
    api_key: &'a str,
    seen: &'a std::cell::RefCell<Seen>,
    mut auth: impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError> + 'a,
) -> impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError> + 'a {
    move |req: HttpRequest| match req.path.as_str() {
        BUILD_KEY_PATH => {
            seen.borrow_mut().build_key_requests += 1;
            let body: BuildKeyRequestBody =
                serde_json::from_slice(&req.body).expect("build key request json");
            if body.api_key != api_key {
                return http_answer(401, br#"{"error":"unknown API key"}"#.to_vec());
            }
            if body.customer_hash != crate::credentials::customer_hash("cust_a") {
                return http_answer(
                    403,
                    br#"{"error":"this plugin build belongs to another customer"}"#.to_vec(),
                );
            }
            let build: [u8; 16] = hex::decode(&body.build_id)
                .expect("hex")
                .try_into()
                .expect("16 bytes");
            let hash: [u8; 32] = hex::decode(&body.customer_hash)
                .expect("hex")
                .try_into()
                .expect("32 bytes");
            let key = crate::credentials::build_key(SECRET, &build);
            let wrapped =
                crate::credentials::wrap_build_key(&key, api_key, &build, &hash).expect("wrap");
            http_answer(
                200,
                serde_json::json!({ "build_key": wrapped })
                    .to_string()
                    .into_bytes(),
            )
        }
        AUTHENTICATE_PATH => {
            seen.borrow_mut().auth_requests += 1;
            let body: AuthRequestBody = serde_json::from_slice(&req.body).expect("json");
            assert_eq!(body.customer_token, None, "the customer secret was sent");
            if body.api_key != api_key {
                return http_answer(401, br#"{"error":"unknown API key"}"#.to_vec());
            }
            let sig = RequestSignature::from_headers(|n| header(&req, n))
                .expect("well-formed signature headers")
                .expect("a signed request");
            let key = crate::credentials::request_key(SECRET, &sig.build_id().expect("build id"));
            sig.verify(&key, "POST", AUTHENTICATE_PATH, &req.body)
                .expect("signed with the build's request key");
            auth(req)
        }
        other => panic!("unexpected request to {other}"),
    }
}

fn sub(region: &'static [u8]) -> Subscription {
    Subscription::new("api-logger", "1.0.0", Tier::Pro, region)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "km-sdk-auth-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A build of `cust_a` whose files go into a fresh `temp_dir(name)`, authorised once at
/// [`NOW`] with `api_key` by the API of that key, answering a Pro token valid for 600 s.
struct Authorised {
    /// The API's token-signing key.
    k: Ed25519KeyPair,
    region: &'static [u8],
    dir: PathBuf,
    s: Subscription,
    /// The token the API answers.
    t: String,
    seen: std::cell::RefCell<Seen>,
}

fn authorised(name: &str, api_key: &str) -> Authorised {
    let k = keypair(1);
    let region = region_for(&k, "cust_a");
    let dir = temp_dir(name);
    let s = sub(region);
    s.cache_in(dir.clone());
    let t = token(
        &k,
        &payload("api-logger", "cust_a", Tier::Pro, NOW, NOW + 600),
    );
    let seen = std::cell::RefCell::new(Seen::default());
    assert!(
        s.authenticate_at(
            api(api_key, &seen, |_| answer(&t, "cust_a", "pro", NOW + 600)),
            api_key,
            NOW
        )
        .authorized
    );
    Authorised {
        k,
        region,
        dir,
        s,
        t,
        seen,
    }
}

#[test]
fn a_valid_pro_answer_activates_full_features() {
    let k = keypair(1);
    let s = sub(region_for(&k, "cust_a"));
    let dir = temp_dir("valid");
    s.cache_in(dir.clone());
    assert_eq!(s.state(NOW), SubscriptionState::Pending);
    assert!(!s.is_active(NOW));
    let t = token(
        &k,
        &payload("api-logger", "cust_a", Tier::Pro, NOW, NOW + 600),
    );
    let seen = std::cell::RefCell::new(Seen::default());
    let r = s.authenticate_at(
        api("key_a", &seen, |req| {
            let body: AuthRequestBody = serde_json::from_slice(&req.body).expect("request json");
            assert_eq!(body.customer_id.as_deref(), Some("cust_a"));
            assert_eq!(body.api_key, "key_a");
            answer(&t, "cust_a", "pro", NOW + 600)
        }),
        "key_a",
        NOW,
    );
    assert!(r.authorized, "{r:?}");
    assert!(s.has_feature("api_logging", NOW));
    assert!(s.current(NOW + 599).is_some());
    assert!(s.is_active(NOW + 599));
    assert!(!s.is_active(NOW + 600));
    assert!(
        s.current(NOW + 600).is_none(),
        "expired tokens stop counting without a refresh"
    );
    // The build key is asked once, then kept (wrapped) in the data directory.
    let r = s.authenticate_at(
        api("key_a", &seen, |_| answer(&t, "cust_a", "pro", NOW + 600)),
        "key_a",
        NOW + 10,
    );
    assert!(r.authorized, "{r:?}");
    assert_eq!(seen.borrow().build_key_requests, 1);
    assert_eq!(seen.borrow().auth_requests, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rotated_api_key_gets_the_build_key_again_without_a_new_build() {
    let Authorised {
        region,
        dir,
        s,
        t,
        seen,
        ..
    } = authorised("rotation", "key_old");
    // The key is rotated at the API: the old one is refused, the kept wrap does not open
    // with the new one, which gets a wrap of its own, kept in place of the old.
    let refused = s.authenticate_at(
        api("key_new", &seen, |_| panic!("must not authenticate")),
        "key_old",
        NOW + 1,
    );
    assert!(
        !refused.authorized && refused.reason.contains("unknown API key"),
        "{refused:?}"
    );
    let restarted = sub(region);
    restarted.cache_in(dir.clone());
    let r = restarted.authenticate_at(
        api("key_new", &seen, |_| answer(&t, "cust_a", "pro", NOW + 600)),
        "key_new",
        NOW + 2,
    );
    assert!(r.authorized, "{r:?}");
    assert_eq!(seen.borrow().build_key_requests, 2);
    let kept = std::fs::read_to_string(dir.join(BUILD_KEY_FILE)).expect("kept wrap");
    let info = credentials::region_info(region).expect("info");
    assert!(credentials::unwrap_build_key(&kept, "key_new", &info).is_ok());
    assert!(credentials::unwrap_build_key(&kept, "key_old", &info).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cust_a`'s build, authenticated once at [`NOW`] with `key_a` by the API of that key, whose
/// answer carries a token for `token_tier` and says the tier is `said_tier`: the subscription,
/// and what it made of the answer.
fn answered(token_tier: Tier, said_tier: &str) -> (Subscription, AuthResponse) {
    let k = keypair(1);
    let s = sub(region_for(&k, "cust_a"));
    let t = token(
        &k,
        &payload("api-logger", "cust_a", token_tier, NOW, NOW + 600),
    );
    let seen = std::cell::RefCell::new(Seen::default());
    let r = s.authenticate_at(
        api("key_a", &seen, |_| {
            answer(&t, "cust_a", said_tier, NOW + 600)
        }),
        "key_a",
        NOW,
    );
    (s, r)
}

#[test]
fn a_tier_altered_in_transit_is_rejected() {
    let (s, r) = answered(Tier::Free, "pro");
    assert!(!r.authorized);
    assert!(r.reason.contains("disagrees"), "{}", r.reason);
    assert!(s.current(NOW).is_none());
}

#[test]
fn a_free_subscription_degrades_with_a_reason() {
    let (s, r) = answered(Tier::Free, "free");
    assert!(!r.authorized);
    assert_eq!(r.tier, Tier::Free);
    assert!(r.reason.contains("needs Pro"), "{}", r.reason);
    assert_eq!(s.state(NOW), SubscriptionState::Degraded);
    assert!(!s.is_active(NOW));
}

#[test]
fn forged_other_customer_and_wrong_key_answers_degrade() {
    let k = keypair(1);
    let s = sub(region_for(&k, "cust_a"));
    let seen = std::cell::RefCell::new(Seen::default());
    // A token signed by another key, and one of another customer's.
    for (signer, customer, refusal) in [(9, "cust_a", "signature"), (1, "cust_b", "customer")] {
        let t = token(
            &keypair(signer),
            &payload("api-logger", customer, Tier::Pro, NOW, NOW + 600),
        );
        let r = s.authenticate_at(
            api("key_a", &seen, |_| answer(&t, customer, "pro", NOW + 600)),
            "key_a",
            NOW,
        );
        assert!(!r.authorized && r.reason.contains(refusal), "{}", r.reason);
    }
    // Customer B's API key gets no build key for A's build: nothing is authenticated.
    let b_build = sub(region_for(&k, "cust_b"));
    let r = b_build.authenticate_at(
        api("key_a", &seen, |_| panic!("must not authenticate")),
        "key_a",
        NOW,
    );
    assert!(
        !r.authorized && r.reason.contains("another customer"),
        "{}",
        r.reason
    );
    // A build key that is not this build's is refused before anything is signed.
    let r = s.authenticate_at(
        |req: HttpRequest| {
            assert_eq!(req.path.as_str(), BUILD_KEY_PATH);
            let info = credentials::region_info(s.region).expect("info");
            let wrong = credentials::build_key("ct-someone-else", &info.build_id);
            let wrapped =
                credentials::wrap_build_key(&wrong, "key_a", &info.build_id, &info.customer_hash)
                    .expect("wrap");
            http_answer(
                200,
                serde_json::json!({ "build_key": wrapped })
                    .to_string()
                    .into_bytes(),
            )
        },
        "key_a",
        NOW,
    );
    assert!(
        !r.authorized && r.reason.contains("do not open"),
        "{}",
        r.reason
    );
}

#[test]
fn malformed_oversized_and_refused_answers_degrade() {
    let k = keypair(1);
    let s = sub(region_for(&k, "cust_a"));
    let seen = std::cell::RefCell::new(Seen::default());
    let raw = |status: u16, body: Vec<u8>| {
        move |_req: HttpRequest| -> Result<HttpResponse, PluginError> {
            http_answer(status, body.clone())
        }
    };
    let r = s.authenticate_at(
        api("key_a", &seen, raw(200, b"not json".to_vec())),
        "key_a",
        NOW,
    );
    assert!(r.reason.contains("malformed"), "{}", r.reason);
    let r = s.authenticate_at(
        api(
            "key_a",
            &seen,
            raw(200, vec![b' '; MAX_AUTH_RESPONSE_LEN + 1]),
        ),
        "key_a",
        NOW,
    );
    assert!(r.reason.contains("oversized"), "{}", r.reason);
    let r = s.authenticate_at(
        api(
            "key_a",
            &seen,
            raw(403, br#"{"error":"subscription ended"}"#.to_vec()),
        ),
        "key_a",
        NOW,
    );
    assert!(r.reason.contains("subscription ended"), "{}", r.reason);
    // The build key request's own failures.
    let r = s.authenticate_at(raw(200, b"{}".to_vec()), "key_a", NOW);
    assert!(
        r.reason.contains("build key request is malformed"),
        "{}",
        r.reason
    );
    let r = s.authenticate_at(raw(200, br#"{"build_key":"AAAA"}"#.to_vec()), "key_a", NOW);
    assert!(r.reason.contains("does not open"), "{}", r.reason);
}

#[test]
fn unstamped_legacy_builds_and_missing_keys_degrade() {
    let s = sub(Box::leak(EMPTY_REGION.to_vec().into_boxed_slice()));
    let r = s.authenticate_at(|_| panic!("must not ask"), "key_a", NOW);
    assert!(
        !r.authorized && r.reason.contains("not built for a customer"),
        "{}",
        r.reason
    );
    let s = sub(region_for(&keypair(1), "cust_a"));
    let r = s.authenticate_at(|_| panic!("must not ask"), "", NOW);
    assert!(r.reason.contains("km init"), "{}", r.reason);
    // A build stamped in credentials format 1 says so, and asks nothing.
    let mut legacy = EMPTY_REGION.to_vec();
    credentials::stamp_format_1_for_tests(
        &mut legacy,
        &pk(&keypair(1)),
        "key_a",
        &Credentials {
            customer_id: "cust_a".into(),
            customer_token: SECRET.into(),
            tier: Tier::Pro,
            build_time: NOW,
        },
    )
    .expect("stamps");
    let s = sub(Box::leak(legacy.into_boxed_slice()));
    let r = s.authenticate_at(|_| panic!("must not ask"), "key_a", NOW);
    assert!(
        !r.authorized && r.reason.contains("credentials format 1"),
        "{}",
        r.reason
    );
}

#[test]
fn an_unreachable_api_keeps_a_valid_token_until_it_expires_and_the_cache_survives_restarts() {
    let Authorised {
        k,
        region,
        dir,
        s,
        t,
        ..
    } = authorised("outage", "key_a");
    let down = |_req: HttpRequest| -> Result<HttpResponse, PluginError> {
        Err(PluginError::new(ErrorKind::NETWORK, "connection refused"))
    };
    let r = s.authenticate_at(down, "key_a", NOW + 300);
    assert!(r.authorized && r.reason.contains("cached"), "{r:?}");

    // A new process (a restart): nothing in memory, the API down, the cache valid.
    let restarted = sub(region);
    restarted.cache_in(dir.clone());
    assert!(
        restarted
            .authenticate_at(down, "key_a", NOW + 300)
            .authorized
    );
    // Also right after a key rotation, when the kept build key does not open with the new
    // key and the API cannot be asked for it: the token is checked against the build's
    // customer hash instead.
    assert!(
        restarted
            .authenticate_at(down, "key_rotated", NOW + 300)
            .authorized
    );
    // After expiry the cache no longer counts.
    assert!(
        !restarted
            .authenticate_at(down, "key_a", NOW + 601)
            .authorized
    );
    // A hand-edited cache is verified like a fresh token.
    std::fs::write(dir.join(TOKEN_FILE), "km1.forged.token").expect("write");
    let fresh = sub(region);
    fresh.cache_in(dir.clone());
    assert!(!fresh.authenticate_at(down, "key_a", NOW + 300).authorized);
    // Another customer's valid token, cached by hand, too.
    let theirs = token(
        &k,
        &payload("api-logger", "cust_b", Tier::Pro, NOW, NOW + 600),
    );
    std::fs::write(dir.join(TOKEN_FILE), &theirs).expect("write");
    assert!(!fresh.authenticate_at(down, "key_a", NOW + 300).authorized);
    // A definite refusal clears the cache.
    std::fs::write(dir.join(TOKEN_FILE), &t).expect("write");
    let refused = |_req: HttpRequest| -> Result<HttpResponse, PluginError> {
        Ok(HttpResponse {
            status: 403,
            headers: Default::default(),
            body: Default::default(),
        })
    };
    assert!(
        !fresh
            .authenticate_at(refused, "key_a", NOW + 300)
            .authorized
    );
    assert!(!dir.join(TOKEN_FILE).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
