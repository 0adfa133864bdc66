//! `km-api-server`: a reference Kilometers API for tests and for trying Pro features locally.
//!
//! It implements what km and its plugins call, over a small customers file, and signs
//! subscription tokens with its own Ed25519 key. It listens on loopback only.
//!
//! ```text
//! km-api-server --gen-key server.key            # writes the key (PKCS#8 PEM) and server.key.pub,
//!                                               # prints the public key (base64) on stdout
//! km-api-server --signing-key server.key --customers customers.json \
//!               [--listen 127.0.0.1:0] [--events events.jsonl] [--plugins-dir DIR] \
//!               [--token-ttl SECS] [--delay-ms MS] [--fail-after N]
//! ```
//!
//! The first line on stdout is the base URL it listens on (`http://127.0.0.1:PORT`), so that a
//! caller that asked for port 0 can read it. Requests are logged on stderr.
//!
//! Customers file (JSON, or TOML when it ends in `.toml` with `[[customers]]` tables; re-read
//! whenever it changes, so a test can downgrade a subscription):
//!
//! ```json
//! {"customers": [{"id": "cust_a", "api_key_sha256": "<hex SHA-256 of the API key>",
//!                 "tier": "pro", "features": ["api_logging"], "subscription_end": 1893456000,
//!                 "customer_token": "optional: the token stamped into this customer's builds"}]}
//! ```
//!
//! Endpoints:
//! - `POST /api/plugins/authenticate`: `{plugin_name, plugin_version, required_tier, api_key,
//!   customer_id?, customer_token?}` → `{token, customer_id, tier, features, expires_at}` (200),
//!   401 unknown key, 403 another customer's build / ended subscription.
//! - `POST /api/events/batch` (`authorization: Bearer <token>`): `{events: [{id, ...}]}` →
//!   `{accepted, duplicates}`; events are deduplicated by `id` and appended to `--events` as JSON
//!   lines (existing lines are read at start, so dedupe survives a restart).
//! - `GET /api/plugins/download/<file>`: a file from `--plugins-dir`.
//! - `GET /api/plugins/latest?name=NAME`: `{name, version, sha256, url}` for the package
//!   `--plugins-dir/NAME` (a `.kmpkg`; `sha256` of the package, `url` relative to the API).
//! - `GET /api/public-key`: `{"public_key": "<base64>"}`.
//!
//! Test controls (no authentication; loopback only like everything else):
//! - `POST /control/down`, `POST /control/up`: answer every `/api/` request with 503 or not.
//! - `POST /control/delay?ms=N`: wait N ms before answering `/api/` requests.
//! - `POST /control/tamper?mode=tier|oversized|malformed|foreign-key|none`: corrupt the next
//!   authentication answers in the chosen way (to test that plugins reject them).
//! - `GET /control/stats`: `{auth_requests, auth_ok, events_stored, duplicates, batches}`.
//! - `--fail-after N`: after N `/api/` requests, behave as after `/control/down`.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_abi::Tier;
use km_plugin_sdk::auth::{
    encode_token, verify_token, AuthAnswerBody, AuthRequestBody, TokenPayload,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Deserialize;
use tiny_http::{Header, Method, Request, Response, Server};

const MAX_REQUEST_BODY: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
struct Customer {
    id: String,
    api_key_sha256: String,
    tier: String,
    #[serde(default)]
    features: Vec<String>,
    subscription_end: i64,
    #[serde(default)]
    customer_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CustomersFile {
    customers: Vec<Customer>,
}

struct Customers {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    list: Vec<Customer>,
}

impl Customers {
    fn load(path: &Path) -> Result<Self, String> {
        let mut c = Customers {
            path: path.to_path_buf(),
            stamp: None,
            list: Vec::new(),
        };
        c.reload_if_changed()?;
        Ok(c)
    }

    fn reload_if_changed(&mut self) -> Result<(), String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        let stamp = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        if self.stamp == Some(stamp) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        let is_toml = self.path.extension().is_some_and(|e| e == "toml");
        let file: CustomersFile = if is_toml {
            toml::from_str(&text).map_err(|e| format!("parsing {}: {e}", self.path.display()))?
        } else {
            serde_json::from_str(&text)
                .map_err(|e| format!("parsing {}: {e}", self.path.display()))?
        };
        for c in &file.customers {
            parse_tier(&c.tier)
                .ok_or_else(|| format!("customer {}: unknown tier {:?}", c.id, c.tier))?;
        }
        eprintln!(
            "km-api-server: loaded {} customer(s) from {}",
            file.customers.len(),
            self.path.display()
        );
        self.list = file.customers;
        self.stamp = Some(stamp);
        Ok(())
    }
}

#[derive(Default)]
struct Stats {
    auth_requests: AtomicU64,
    auth_ok: AtomicU64,
    events_stored: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    api_requests: AtomicU64,
}

struct EventStore {
    file: Option<std::fs::File>,
    seen: HashSet<String>,
}

struct State {
    key: Ed25519KeyPair,
    public_key: Vec<u8>,
    customers: Mutex<Customers>,
    events: Mutex<EventStore>,
    plugins_dir: Option<PathBuf>,
    token_ttl: i64,
    down: AtomicBool,
    delay_ms: AtomicU64,
    fail_after: Option<u64>,
    tamper: Mutex<String>,
    stats: Stats,
}

fn parse_tier(s: &str) -> Option<Tier> {
    Tier::ALL.into_iter().find(|t| t.as_str() == s)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: km-api-server --gen-key OUT\n       km-api-server --signing-key KEY --customers FILE \
         [--listen 127.0.0.1:0] [--events FILE] [--plugins-dir DIR] [--token-ttl SECS] \
         [--delay-ms MS] [--fail-after N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let known = [
            "--gen-key",
            "--signing-key",
            "--customers",
            "--listen",
            "--events",
            "--plugins-dir",
            "--token-ttl",
            "--delay-ms",
            "--fail-after",
        ];
        if !known.contains(&flag.as_str()) {
            eprintln!("km-api-server: unknown argument {flag:?}");
            return usage();
        }
        let Some(value) = it.next() else {
            eprintln!("km-api-server: {flag} needs a value");
            return usage();
        };
        opts.insert(flag.clone(), value.clone());
    }
    let result = match opts.get("--gen-key") {
        Some(out) => gen_key(Path::new(out)),
        None => serve(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("km-api-server: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn gen_key(out: &Path) -> Result<(), String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "key generation failed")?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "key generation failed")?;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(pkcs8.as_ref())
    );
    write_private(out, pem.as_bytes())?;
    let public = STANDARD.encode(key.public_key().as_ref());
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| format!("writing {}: {e}", pub_path.display()))?;
    println!("{public}");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn read_signing_key(path: &Path) -> Result<Ed25519KeyPair, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(&bytes);
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD
            .decode(b64.trim())
            .map_err(|_| format!("{}: bad PEM", path.display()))?
    } else {
        bytes
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| format!("{}: not an Ed25519 PKCS#8 key", path.display()))
}

fn serve(opts: &HashMap<String, String>) -> Result<(), String> {
    let key_path = opts
        .get("--signing-key")
        .ok_or("--signing-key is required")?;
    let customers_path = opts.get("--customers").ok_or("--customers is required")?;
    let key = read_signing_key(Path::new(key_path))?;
    let public_key = key.public_key().as_ref().to_vec();
    let customers = Customers::load(Path::new(customers_path))?;
    let number = |name: &str, default: u64| -> Result<u64, String> {
        opts.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("{name}: not a number"))
        })
    };
    let token_ttl = number("--token-ttl", 900)? as i64;
    let delay_ms = number("--delay-ms", 0)?;
    let fail_after = opts
        .get("--fail-after")
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| "--fail-after: not a number")?;

    let mut events = EventStore {
        file: None,
        seen: HashSet::new(),
    };
    if let Some(path) = opts.get("--events") {
        if let Ok(existing) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(existing)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                        events.seen.insert(id.to_owned());
                    }
                }
            }
        }
        events.file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("opening {path}: {e}"))?,
        );
    }

    let listen: SocketAddr = opts
        .get("--listen")
        .map_or("127.0.0.1:0", String::as_str)
        .parse()
        .map_err(|_| "--listen: expected IP:PORT")?;
    if !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen}: loopback addresses only"
        ));
    }
    let server = Server::http(listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    let addr = server.server_addr().to_ip().ok_or("not an IP listener")?;
    println!("http://{addr}");
    let _ = std::io::stdout().flush();
    eprintln!("km-api-server: listening on http://{addr}");

    let state = Arc::new(State {
        key,
        public_key,
        customers: Mutex::new(customers),
        events: Mutex::new(events),
        plugins_dir: opts.get("--plugins-dir").map(PathBuf::from),
        token_ttl,
        down: AtomicBool::new(false),
        delay_ms: AtomicU64::new(delay_ms),
        fail_after,
        tamper: Mutex::new(String::new()),
        stats: Stats::default(),
    });
    for request in server.incoming_requests() {
        let state = state.clone();
        std::thread::spawn(move || handle(&state, request));
    }
    Ok(())
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("content-type", "application/json").ok();
    let mut response = Response::from_data(value.to_string().into_bytes()).with_status_code(status);
    if let Some(h) = header {
        response = response.with_header(h);
    }
    response
}

fn error(status: u16, message: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(status, &serde_json::json!({ "error": message }))
}

fn handle(state: &State, mut request: Request) {
    let method = request.method().clone();
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let mut body = Vec::new();
    let too_big = request
        .body_length()
        .is_some_and(|n| n as u64 > MAX_REQUEST_BODY);
    if !too_big {
        let _ = request
            .as_reader()
            .take(MAX_REQUEST_BODY + 1)
            .read_to_end(&mut body);
    }
    let response = if too_big || body.len() as u64 > MAX_REQUEST_BODY {
        error(413, "request body too large")
    } else if path.starts_with("/control/") {
        control(state, &method, path, query)
    } else if path.starts_with("/api/") {
        let n = state.stats.api_requests.fetch_add(1, Ordering::SeqCst) + 1;
        if state.fail_after.is_some_and(|limit| n > limit) {
            state.down.store(true, Ordering::SeqCst);
        }
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if state.down.load(Ordering::SeqCst) {
            error(503, "the reference API is down (test control)")
        } else {
            api(state, &method, path, &request, &body)
        }
    } else {
        error(404, "not found")
    };
    eprintln!(
        "km-api-server: {method} {path} -> {}",
        response.status_code().0
    );
    let _ = request.respond(response);
}

fn control(
    state: &State,
    method: &Method,
    path: &str,
    query: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    };
    match (method, path) {
        (Method::Post, "/control/down") => {
            state.down.store(true, Ordering::SeqCst);
            json_response(200, &serde_json::json!({"down": true}))
        }
        (Method::Post, "/control/up") => {
            state.down.store(false, Ordering::SeqCst);
            json_response(200, &serde_json::json!({"down": false}))
        }
        (Method::Post, "/control/delay") => match param("ms").and_then(|v| v.parse().ok()) {
            Some(ms) => {
                state.delay_ms.store(ms, Ordering::SeqCst);
                json_response(200, &serde_json::json!({"delay_ms": ms}))
            }
            None => error(400, "expected ?ms=N"),
        },
        (Method::Post, "/control/tamper") => {
            let mode = param("mode").unwrap_or("none");
            if !["none", "tier", "oversized", "malformed", "foreign-key"].contains(&mode) {
                return error(400, "mode: none, tier, oversized, malformed or foreign-key");
            }
            if let Ok(mut t) = state.tamper.lock() {
                *t = if mode == "none" {
                    String::new()
                } else {
                    mode.to_owned()
                };
            }
            json_response(200, &serde_json::json!({"tamper": mode}))
        }
        (Method::Get, "/control/stats") => {
            let s = &state.stats;
            json_response(
                200,
                &serde_json::json!({
                    "auth_requests": s.auth_requests.load(Ordering::SeqCst),
                    "auth_ok": s.auth_ok.load(Ordering::SeqCst),
                    "events_stored": s.events_stored.load(Ordering::SeqCst),
                    "duplicates": s.duplicates.load(Ordering::SeqCst),
                    "batches": s.batches.load(Ordering::SeqCst),
                    "down": state.down.load(Ordering::SeqCst),
                }),
            )
        }
        _ => error(404, "unknown control"),
    }
}

fn api(
    state: &State,
    method: &Method,
    path: &str,
    request: &Request,
    body: &[u8],
) -> Response<std::io::Cursor<Vec<u8>>> {
    match (method, path) {
        (Method::Post, "/api/plugins/authenticate") => authenticate(state, body),
        (Method::Post, "/api/events/batch") => events_batch(state, request, body),
        (Method::Get, "/api/public-key") => json_response(
            200,
            &serde_json::json!({"public_key": STANDARD.encode(&state.public_key)}),
        ),
        (Method::Get, "/api/plugins/latest") => latest(state, request),
        (Method::Get, p) if p.starts_with("/api/plugins/download/") => {
            download(state, &p["/api/plugins/download/".len()..])
        }
        _ => error(404, "no such endpoint"),
    }
}

fn authenticate(state: &State, body: &[u8]) -> Response<std::io::Cursor<Vec<u8>>> {
    state.stats.auth_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(req) = serde_json::from_slice::<AuthRequestBody>(body) else {
        return error(
            400,
            "expected {plugin_name, plugin_version, required_tier, api_key, ...}",
        );
    };
    let customer = {
        let Ok(mut customers) = state.customers.lock() else {
            return error(500, "poisoned");
        };
        if let Err(e) = customers.reload_if_changed() {
            eprintln!("km-api-server: {e} (keeping the previous customers)");
        }
        let hash = sha256_hex(req.api_key.as_bytes());
        customers
            .list
            .iter()
            .find(|c| c.api_key_sha256.eq_ignore_ascii_case(&hash))
            .cloned()
    };
    let Some(customer) = customer else {
        return error(401, "unknown API key");
    };
    if let Some(id) = &req.customer_id {
        if *id != customer.id {
            return error(403, "this plugin build belongs to another customer");
        }
    }
    if let (Some(expected), Some(given)) = (&customer.customer_token, &req.customer_token) {
        if expected != given {
            return error(403, "the customer token of this build is not valid");
        }
    }
    let now = now();
    if customer.subscription_end <= now {
        return error(
            403,
            &format!(
                "the subscription of {} ended at {}",
                customer.id, customer.subscription_end
            ),
        );
    }
    let Some(tier) = parse_tier(&customer.tier) else {
        return error(500, "bad tier in customers file");
    };
    let tamper = state.tamper.lock().map(|t| t.clone()).unwrap_or_default();
    let payload = TokenPayload {
        v: 1,
        cus: customer.id.clone(),
        plg: req.plugin_name.clone(),
        tier,
        feat: customer.features.clone(),
        iat: now,
        exp: (now + state.token_ttl).min(customer.subscription_end),
        jti: random_hex(12),
    };
    let token = if tamper == "foreign-key" {
        let rng = SystemRandom::new();
        match Ed25519KeyPair::generate_pkcs8(&rng)
            .ok()
            .and_then(|d| Ed25519KeyPair::from_pkcs8(d.as_ref()).ok())
        {
            Some(other) => encode_token(&payload, |m| other.sign(m).as_ref().to_vec()),
            None => return error(500, "key generation failed"),
        }
    } else {
        encode_token(&payload, |m| state.key.sign(m).as_ref().to_vec())
    };
    let mut answer = AuthAnswerBody {
        token,
        customer_id: customer.id.clone(),
        tier: tier.as_str().to_owned(),
        features: customer.features.clone(),
        expires_at: payload.exp,
    };
    match tamper.as_str() {
        "tier" => answer.tier = "enterprise".to_owned(),
        "malformed" => return json_response(200, &serde_json::json!({"token": 42})),
        "oversized" => {
            let filler = "x".repeat(200 * 1024);
            return json_response(
                200,
                &serde_json::json!({"token": answer.token, "padding": filler}),
            );
        }
        _ => {}
    }
    state.stats.auth_ok.fetch_add(1, Ordering::SeqCst);
    match serde_json::to_value(&answer) {
        Ok(v) => json_response(200, &v),
        Err(_) => error(500, "serialising"),
    }
}

fn events_batch(
    state: &State,
    request: &Request,
    body: &[u8],
) -> Response<std::io::Cursor<Vec<u8>>> {
    let bearer = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer ").map(str::to_owned));
    let Some(token) = bearer else {
        return error(401, "missing bearer token");
    };
    let claims = match verify_token(&token, &state.public_key, "api-logger", None, now()) {
        Ok(c) => c,
        Err(e) => return error(401, &format!("bad token: {e}")),
    };
    if !claims.tier.satisfies(Tier::Pro) {
        return error(403, "event ingestion needs a Pro subscription");
    }
    let Ok(batch) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(400, "expected {\"events\": [...]}");
    };
    let Some(events) = batch.get("events").and_then(|e| e.as_array()) else {
        return error(400, "expected {\"events\": [...]}");
    };
    if events
        .iter()
        .any(|e| e.get("id").and_then(|i| i.as_str()).is_none())
    {
        return error(400, "every event needs a string id");
    }
    let Ok(mut store) = state.events.lock() else {
        return error(500, "poisoned");
    };
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    let mut lines = String::new();
    for event in events {
        let id = event
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_owned();
        if store.seen.insert(id) {
            let mut stored = event.clone();
            if let Some(obj) = stored.as_object_mut() {
                obj.insert("customer_id".into(), claims.customer_id.clone().into());
            }
            lines.push_str(&stored.to_string());
            lines.push('\n');
            accepted += 1;
        } else {
            duplicates += 1;
        }
    }
    if let Some(file) = store.file.as_mut() {
        if file
            .write_all(lines.as_bytes())
            .and_then(|()| file.sync_data())
            .is_err()
        {
            return error(500, "cannot store events");
        }
    }
    state.stats.batches.fetch_add(1, Ordering::SeqCst);
    state
        .stats
        .events_stored
        .fetch_add(accepted, Ordering::SeqCst);
    state
        .stats
        .duplicates
        .fetch_add(duplicates, Ordering::SeqCst);
    json_response(
        200,
        &serde_json::json!({"accepted": accepted, "duplicates": duplicates}),
    )
}

fn download(state: &State, name: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let Some(dir) = &state.plugins_dir else {
        return error(404, "no --plugins-dir");
    };
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return error(400, "bad file name");
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Response::from_data(bytes),
        Err(_) => error(404, "no such plugin file"),
    }
}

/// `GET /api/plugins/latest?name=NAME`: what the package `--plugins-dir/NAME` holds.
fn latest(state: &State, request: &Request) -> Response<std::io::Cursor<Vec<u8>>> {
    let Some(dir) = &state.plugins_dir else {
        return error(404, "no --plugins-dir");
    };
    let name = request
        .url()
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or("");
    if km_signing::check_name(name).is_err() {
        return error(400, "bad plugin name");
    }
    let Ok(bytes) = std::fs::read(dir.join(name)) else {
        return error(404, "no such plugin");
    };
    let limits = km_signing::Limits::for_library(256 * 1024 * 1024);
    let Ok(pkg) = km_signing::read_package(&bytes[..], limits) else {
        return error(500, "the stored package does not read");
    };
    json_response(
        200,
        &serde_json::json!({
            "name": pkg.manifest.name,
            "version": pkg.manifest.version,
            "sha256": km_signing::sha256_hex(&bytes),
            "url": format!("/api/plugins/download/{name}"),
        }),
    )
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let _ = SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}
