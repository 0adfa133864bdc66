//! Property tests of the SDK's parsers of outside input: subscription tokens
//! ([`verify_token`]), the API's answers and the token payload (JSON), and the credentials
//! region a customer build carries (found in, and opened from, library bytes). Arbitrary input
//! and mutations of valid input: always an answer, never a panic; a token that verifies after a
//! mutation is one whose signed part is unchanged.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000 cargo test -p km-plugin-sdk --test
//! parsers` runs them longer (FUZZING.md).

use km_plugin_sdk::auth::{encode_token, verify_token, AuthAnswerBody, TokenPayload};
use km_plugin_sdk::credentials;
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const NOW: i64 = 1_800_000_000;

struct Valid {
    public: Vec<u8>,
    token: String,
    answer: Vec<u8>,
}

fn valid() -> &'static Valid {
    static VALID: std::sync::OnceLock<Valid> = std::sync::OnceLock::new();
    VALID.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let payload = TokenPayload {
            v: 1,
            cus: "alice".to_owned(),
            plg: "api-logger".to_owned(),
            tier: km_abi::Tier::Pro,
            feat: vec!["api_logging".to_owned()],
            iat: NOW - 10,
            exp: NOW + 3600,
            jti: "t-1".to_owned(),
        };
        let token = encode_token(&payload, |msg| key.sign(msg).as_ref().to_vec());
        let answer = serde_json::to_vec(&AuthAnswerBody {
            token: token.clone(),
            customer_id: "alice".to_owned(),
            tier: "pro".to_owned(),
            features: vec!["api_logging".to_owned()],
            expires_at: NOW + 3600,
        })
        .expect("json");
        Valid {
            public: key.public_key().as_ref().to_vec(),
            token,
            answer,
        }
    })
}

fn mutate(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, byte, how) in edits {
        let i = at % (out.len() + 1);
        match how % 3 {
            0 if i < out.len() => out[i] = byte,
            1 => out.insert(i, byte),
            _ if i < out.len() => {
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)
}

proptest! {
    #[test]
    fn the_valid_token_verifies(_x in 0..1u8) {
        let v = valid();
        prop_assert!(verify_token(&v.token, &v.public, "api-logger", Some("alice"), NOW).is_ok());
    }

    #[test]
    fn arbitrary_tokens_are_answered(token in "(km1\\.)?[A-Za-z0-9_.=+/-]{0,300}") {
        let _ = verify_token(&token, &valid().public, "api-logger", None, NOW);
    }

    #[test]
    fn oversized_tokens_are_refused_before_anything_else(len in 8 * 1024 + 1..64 * 1024usize) {
        let token = "k".repeat(len);
        prop_assert!(verify_token(&token, &valid().public, "api-logger", None, NOW).is_err());
    }

    #[test]
    fn mutated_tokens_never_verify_unless_unchanged(edits in edits()) {
        let v = valid();
        let bytes = mutate(v.token.as_bytes(), &edits);
        if let Ok(token) = String::from_utf8(bytes) {
            let verdict = verify_token(&token, &v.public, "api-logger", Some("alice"), NOW);
            if verdict.is_ok() {
                // Only the same signed payload and signature can verify.
                let strip = |t: &str| t.split('.').take(3).map(str::to_owned).collect::<Vec<_>>();
                prop_assert_eq!(strip(&token), strip(&v.token));
            }
        }
    }

    #[test]
    fn answers_and_payloads_from_arbitrary_json(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = serde_json::from_slice::<AuthAnswerBody>(&bytes);
        let _ = serde_json::from_slice::<TokenPayload>(&bytes);
    }

    #[test]
    fn mutated_answers_are_answered(edits in edits()) {
        let bytes = mutate(&valid().answer, &edits);
        if let Ok(answer) = serde_json::from_slice::<AuthAnswerBody>(&bytes) {
            let _ = verify_token(&answer.token, &valid().public, "api-logger", Some(&answer.customer_id), NOW);
        }
    }

    #[test]
    fn credentials_regions_in_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096), key in "[a-z_]{0,20}") {
        let _ = credentials::find_region(&bytes);
        let _ = credentials::region_info(&bytes);
        let _ = credentials::open(&bytes, &credentials::build_key(&key, &[7u8; 16]));
    }

    #[test]
    fn wrapped_build_keys_and_request_headers_from_arbitrary_text(text in "\\PC{0,120}", build in "[0-9a-f]{0,40}") {
        let info = credentials::RegionInfo {
            api_public_key: [1u8; 32],
            customer_hash: [2u8; 32],
            build_id: [3u8; 16],
        };
        prop_assert!(credentials::unwrap_build_key(&text, "km_live_k", &info).is_err());
        let lookup = |name: &str| match name {
            "km-build" => Some(build.as_str()),
            "km-timestamp" | "km-nonce" | "km-signature" => Some(text.as_str()),
            _ => None,
        };
        if let Ok(Some(signature)) = km_plugin_sdk::request::RequestSignature::from_headers(lookup) {
            let key = credentials::request_key("ct-x", &[3u8; 16]);
            prop_assert!(signature.verify(&key, "POST", "/p", b"").is_err());
        }
    }
}
