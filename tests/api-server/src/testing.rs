//! What the unit tests share: a directory with a signing key and a customers file, and the
//! configuration that serves them, built by the same code as the real start-up.

use std::path::{Path, PathBuf};

use km_plugin_sdk::credentials::request_key;
use km_plugin_sdk::request::RequestSignature;
use serde_json::{json, Value};

use crate::config::{DbLocation, ServeConfig};
use crate::http::{Method, Request};
use crate::state::AppState;

/// The build id the unit tests' customer builds have.
pub(crate) const BUILD: [u8; 16] = [0x5a; 16];

/// An authentication request for `api_key`, of the build [`BUILD`] of customer `customer`
/// (whose secret is `ct-<customer>`, as [`customer`] writes it), signed at `timestamp` with
/// `nonce` (32 hex digits).
pub(crate) fn signed_auth(api_key: &str, customer: &str, timestamp: i64, nonce: &str) -> Request {
    signed_auth_of("api-logger", "pro", api_key, customer, timestamp, nonce)
}

/// [`signed_auth`] for `plugin`, which needs `tier`.
pub(crate) fn signed_auth_of(
    plugin: &str,
    tier: &str,
    api_key: &str,
    customer: &str,
    timestamp: i64,
    nonce: &str,
) -> Request {
    let body = json!({
        "plugin_name": plugin,
        "plugin_version": "1.0.0",
        "required_tier": tier,
        "api_key": api_key,
        "customer_id": customer,
    })
    .to_string()
    .into_bytes();
    let mut request = Request::new(Method::Post, "/api/plugins/authenticate");
    let signature = RequestSignature::sign_with_nonce(
        &request_key(&format!("ct-{customer}"), &BUILD),
        "POST",
        "/api/plugins/authenticate",
        &body,
        &km_durable::digest::hex(&BUILD),
        timestamp,
        nonce,
    );
    for (name, value) in signature.headers() {
        request.headers.push((name.to_owned(), value));
    }
    request.body = body;
    request
}

/// A fresh random nonce.
pub(crate) fn nonce() -> String {
    crate::keys::random_hex(16).expect("randomness")
}

/// Adds `key`'s device headers to `request`, signed over it as km signs them.
pub(crate) fn with_device(mut request: Request, key: &km_signing::PrivateKey) -> Request {
    let request_signature = request
        .header(km_plugin_sdk::request::HEADER_SIGNATURE)
        .map(str::to_owned);
    let headers = km_signing::device::sign_request(
        key,
        request.method.as_str(),
        &request.path,
        &request.body,
        crate::store::now(),
        request_signature.as_deref(),
    )
    .expect("device signature");
    for (name, value) in headers {
        request.headers.push((name.to_owned(), value));
    }
    request
}

/// A customer for the customers file: `(id, api_key, tier)`, ending in 30 days.
pub(crate) fn customer(id: &str, api_key: &str, tier: &str) -> Value {
    json!({
        "id": id,
        "api_key_sha256": km_durable::digest::sha256_hex(api_key.as_bytes()),
        "tier": tier,
        "features": ["api_logging"],
        "subscription_end": crate::store::now() + 30 * 24 * 3600,
        "customer_token": format!("ct-{id}"),
    })
}

/// Writes `{"customers": [...]}` aside and renames it over `path`, as the e2e harness does.
pub(crate) fn write_customers(path: &Path, customers: &[Value]) {
    write_file(path, &json!({ "customers": customers }).to_string());
}

/// Writes `text` aside and renames it over `path`.
pub(crate) fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the file aside");
    std::fs::rename(&tmp, path).expect("renaming it into place");
}

/// A directory with `server.key` and `customers.json` (alice: pro, bob: free).
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::keys::generate(&dir.path().join("server.key")).expect("signing key");
        let fixture = Fixture { dir };
        write_customers(
            &fixture.customers(),
            &[
                customer("alice", "key-alice", "pro"),
                customer("bob", "key-bob", "free"),
            ],
        );
        fixture
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn customers(&self) -> PathBuf {
        self.path("customers.json")
    }

    /// The configuration `--signing-key server.key --customers customers.json`, in memory.
    pub(crate) fn config(&self) -> ServeConfig {
        ServeConfig {
            signing_key: self.path("server.key"),
            customers: Some(self.customers()),
            db: DbLocation::Memory,
            listen: "127.0.0.1:0".parse().expect("address"),
            events: None,
            plugins_dir: None,
            teams_dir: None,
            token_ttl: 900,
            delay_ms: 0,
            fail_after: None,
            tls: None,
            rate_limit: None,
            abuse_threshold: crate::limits::Rate {
                requests: 3,
                window: std::time::Duration::from_secs(600),
            },
        }
    }

    /// The state the server starts with for `config`.
    pub(crate) fn state(&self, config: &ServeConfig) -> AppState {
        crate::server::build_state(config).expect("the server state builds")
    }
}
