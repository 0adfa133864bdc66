//! Subscription tokens and the API's answers (plugins/sdk/src/auth.rs), and the credentials
//! region of customer builds.
#![no_main]
use km_plugin_sdk::auth::{verify_token, AuthAnswerBody, TokenPayload};
use libfuzzer_sys::fuzz_target;

/// A fixed Ed25519 public key (any 32 bytes: a forged signature must never verify).
const API_KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify_token(text, &API_KEY, "api-logger", None, 1_800_000_000).is_err());
    }
    if let Ok(answer) = serde_json::from_slice::<AuthAnswerBody>(data) {
        assert!(verify_token(&answer.token, &API_KEY, "api-logger", None, 1_800_000_000).is_err());
    }
    let _ = serde_json::from_slice::<TokenPayload>(data);
    let _ = km_plugin_sdk::credentials::find_region(data);
    let _ = km_plugin_sdk::credentials::region_info(data);
    let _ = km_plugin_sdk::credentials::open(data, "km_live_key");
});
