//! ml-analytics: what its `handle_message` costs per line on a realistic MCP mix, beside the
//! no-op plugin on the same lines, both real signed libraries called through km's gateway.
//!
//! ml-analytics does nothing without a valid Pro subscription, so the bench makes it a customer
//! build (stamped with a bench customer secret and the public key of an Ed25519 key the bench
//! makes) and answers its requests in-process, as the Kilometers API would: the build key wrapped
//! for the bench API key, then a token signed by that key, so the same checks run as against the
//! real API (the bench does not check the request signatures; the API's side of them is tested in
//! `km-api-server`). No START
//! event is sent, so its flusher does not run: the figure is the handler alone, which is what km's
//! worker thread pays per line (the flush, every 10 s, runs on the plugin's own thread).
//!
//! Then the relay: the stream of the relay section through `km monitor -- cat` with ml-analytics
//! alone, authorized by the same answer served over HTTP on loopback (km's own API client asks
//! it), beside `cat | cat`: what the plugin costs the relay on this 2-core machine, where its
//! worker thread competes with the pumps for the cores.
//!
//! The mix is an agent's session: `tools/call` requests over 8 tools (80-400 B), their results
//! (200 B .. 64 KiB, 1% JSON-RPC errors, 1% `isError`), progress notifications on a tenth of the
//! calls, and an occasional other request (`tools/list`, `ping`) with its result.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use km_abi::abi_stable::std_types::{ROption, RSlice, RStr};
use km_abi::{Direction, HttpRequest, HttpResponse, Message, MessageKind, PluginError, Tier};
use km_cli::home::KmHome;
use km_cli::host::{ApiTransport, PluginHost, Verbosity};
use km_cli::verifier::Verifier;
use km_plugin_sdk::auth::{encode_token, now_unix, TokenPayload, BUILD_KEY_PATH};
use km_plugin_sdk::credentials::{build_key, wrap_build_key, BUILD_ID_LEN};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use km_tests::{lib_file_name, Customer};

use crate::env::{make_dir, median, BenchEnv, PLUGIN_VERSION};
use crate::report::{Report, Row};
use crate::Options;

/// The customer ml-analytics is built for, answered by [`BenchApi`].
const CUSTOMER: Customer = Customer {
    id: "cust_bench",
    api_key: "km_live_bench_0123456789",
};

/// The Kilometers API's `authenticate`, answered in-process with a token the bench signs.
struct BenchApi {
    key: Ed25519KeyPair,
}

impl BenchApi {
    /// The answer to a request for `path` with `body`: the build key, or a token.
    fn answer(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let body: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if path == BUILD_KEY_PATH {
            return build_key_answer(&body);
        }
        let now = now_unix();
        let payload = TokenPayload {
            v: 1,
            cus: CUSTOMER.id.to_owned(),
            plg: body["plugin_name"].as_str().unwrap_or_default().to_owned(),
            tier: Tier::Pro,
            feat: Vec::new(),
            iat: now,
            exp: now + 3600,
            jti: "bench".to_owned(),
        };
        let token = encode_token(&payload, |m| self.key.sign(m).as_ref().to_vec());
        let answer = json!({"token": token, "customer_id": CUSTOMER.id, "tier": "pro",
            "features": [], "expires_at": now + 3600});
        Ok(answer.to_string().into_bytes())
    }

    /// Serves [`BenchApi::answer`] over HTTP on loopback, for km's own API client; returns the
    /// base URL. The thread ends with the process.
    fn serve(self: Arc<Self>) -> Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback")?;
        let url = format!("http://{}", listener.local_addr()?);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let mut length = 0usize;
                let mut line = String::new();
                // The request line: METHOD PATH VERSION.
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                line.clear();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length.min(1 << 20)];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let (status, answer) = match self.answer(&path, &body) {
                    Ok(a) => ("200 OK", a),
                    Err(e) => ("400 Bad Request", e.into_bytes()),
                };
                let mut out = &stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = out.write_all(&answer);
            }
        });
        Ok(url)
    }
}

impl ApiTransport for BenchApi {
    fn request(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let body = self
            .answer(request.path.as_str(), request.body.as_slice())
            .map_err(PluginError::failed)?;
        Ok(HttpResponse {
            status: 200,
            headers: Vec::new().into(),
            body: body.into(),
        })
    }
}

/// The build key of the build a build-key request names, wrapped for the bench API key.
fn build_key_answer(body: &Value) -> Result<Vec<u8>, String> {
    let hex_field = |name: &str| -> Result<Vec<u8>, String> {
        hex::decode(body[name].as_str().unwrap_or_default()).map_err(|e| format!("{name}: {e}"))
    };
    let build_id: [u8; BUILD_ID_LEN] = hex_field("build_id")?
        .try_into()
        .map_err(|_| "build_id: not 16 bytes".to_owned())?;
    let customer_hash: [u8; 32] = hex_field("customer_hash")?
        .try_into()
        .map_err(|_| "customer_hash: not 32 bytes".to_owned())?;
    let key = build_key(&CUSTOMER.customer_token(), &build_id);
    let wrapped = wrap_build_key(&key, CUSTOMER.api_key, &build_id, &customer_hash)
        .map_err(|e| e.to_string())?;
    Ok(json!({ "build_key": wrapped }).to_string().into_bytes())
}

/// One line of the mix, with what km tells plugins about it.
struct Line {
    bytes: Vec<u8>,
    direction: Direction,
    kind: MessageKind,
    is_error: bool,
    correlation: String,
    id: String,
    method: &'static str,
    latency_us: Option<u64>,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// The lines of `calls` calls.
fn mix(calls: usize) -> Vec<Line> {
    const TOOLS: [&str; 8] = [
        "search",
        "read_file",
        "write_file",
        "fetch",
        "list_dir",
        "run",
        "echo",
        "get_issue",
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut lines = Vec::with_capacity(calls * 2 + calls / 5);
    let mut seq = 0u64;
    let text = |rng: &mut Rng, len: usize| -> String {
        (0..len)
            .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
            .collect()
    };
    for i in 0..calls {
        let id = (i + 1).to_string();
        seq += 1;
        let correlation = format!("c{seq}");
        let other = rng.range(0, 100) < 5;
        let (method, request) = if other {
            let method = if rng.range(0, 2) == 0 {
                "tools/list"
            } else {
                "ping"
            };
            (
                method,
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#),
            )
        } else {
            let tool = TOOLS[rng.range(0, TOOLS.len())];
            let len = rng.range(40, 320);
            let q = text(&mut rng, len);
            let meta = if i % 10 == 0 {
                format!(r#","_meta":{{"progressToken":"t{i}"}}"#)
            } else {
                String::new()
            };
            (
                "tools/call",
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"q":"{q}"}}{meta}}}}}"#
                ),
            )
        };
        lines.push(Line {
            bytes: request.into_bytes(),
            direction: Direction::Request,
            kind: MessageKind::REQUEST,
            is_error: false,
            correlation: correlation.clone(),
            id: id.clone(),
            method,
            latency_us: None,
        });
        if !other && i % 10 == 0 {
            for step in 1..=3 {
                seq += 1;
                lines.push(Line {
                    bytes: format!(r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"t{i}","progress":{step},"total":3}}}}"#).into_bytes(),
                    direction: Direction::Response,
                    kind: MessageKind::NOTIFICATION,
                    is_error: false,
                    correlation: correlation.clone(),
                    id: String::new(),
                    method: "notifications/progress",
                    latency_us: None,
                });
            }
        }
        seq += 1;
        let roll = rng.range(0, 100);
        let size = if rng.range(0, 10) == 0 {
            rng.range(4096, 64 * 1024)
        } else {
            rng.range(200, 2048)
        };
        let (is_error, response) = if roll == 0 {
            (
                true,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"failed"}}}}"#
                ),
            )
        } else {
            let is_tool_error = roll == 1;
            (
                false,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"{}"}}],"isError":{is_tool_error}}}}}"#,
                    text(&mut rng, size)
                ),
            )
        };
        lines.push(Line {
            bytes: response.into_bytes(),
            direction: Direction::Response,
            kind: MessageKind::RESPONSE,
            is_error,
            correlation,
            id,
            method: "",
            latency_us: Some(rng.range(200, 400_000) as u64),
        });
    }
    lines
}

/// Installs `krate`'s library into its own directory, stamped for the bench's customer when
/// `api_public_key` is given, signed as `name`.
fn install(
    env: &BenchEnv,
    krate: &str,
    name: &str,
    tier: &str,
    api_public_key: Option<&[u8]>,
) -> Result<std::path::PathBuf> {
    let variant = if api_public_key.is_some() {
        "customer"
    } else {
        "plain"
    };
    let dir = env.dir().join(format!("analytics-{krate}-{variant}"));
    make_dir(&dir)?;
    let bytes = match api_public_key {
        Some(key) => km_tests::customer_build(krate, key, &CUSTOMER, Tier::Pro),
        None => km_tests::library(krate),
    };
    env.world.place_signed(
        &dir.join(lib_file_name(krate)),
        &bytes,
        name,
        PLUGIN_VERSION,
        tier,
        &[],
    );
    Ok(dir)
}

/// Nanoseconds per line of `handle_message` of the plugin in `dir`, median of `reps` passes.
fn ns_per_line(
    env: &BenchEnv,
    dir: &std::path::Path,
    krate: &str,
    api: Option<Arc<dyn ApiTransport>>,
    lines: &[Line],
    reps: usize,
) -> Result<(f64, bool)> {
    let home = KmHome::resolve(Some(&env.home))?;
    let mut verifier = Verifier::open(&home)?.allow_downgrade(true);
    let checked = verifier.check_file(&dir.join(lib_file_name(krate)))?;
    let data = env.dir().join("plugin-data").join(format!(
        "analytics-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&data)?;
    let host = PluginHost::new(krate, data, Verbosity::Quiet, api);
    let plugin = verifier.load(checked, host)?;
    let authorized = plugin
        .authenticate(CUSTOMER.api_key)
        .map_err(|e| anyhow!("{e}"))?
        .authorized;
    let mut per_line = Vec::new();
    // Lines are stamped from now on, as km stamps them: the plugin judges its subscription by
    // the line's time.
    let mut t_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    for _ in 0..reps {
        let start = Instant::now();
        for line in lines {
            t_us += 10;
            let message = Message {
                seq: 0,
                direction: line.direction,
                kind: line.kind,
                is_error: line.is_error,
                data: RSlice::from_slice(&line.bytes),
                correlation_id: RStr::from_str(&line.correlation),
                id: RStr::from_str(&line.id),
                method: RStr::from_str(line.method),
                timestamp_us: t_us,
                latency_us: line.latency_us.map_or(ROption::RNone, ROption::RSome),
            };
            plugin
                .handle_message(&message)
                .map_err(|e| anyhow!("{e}"))?;
        }
        per_line.push(start.elapsed().as_nanos() as f64 / lines.len() as f64);
    }
    let _ = plugin.shutdown();
    // Loaded libraries are never unloaded.
    std::mem::forget(plugin);
    Ok((median(&mut per_line), authorized))
}

/// Runs the analytics section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    // A few thousand calls, passed over many times: in km a line reaches the plugin moments
    // after it was read, still in the cache; a mix of hundreds of megabytes would measure the
    // memory bus instead.
    let (calls, reps) = if options.quick {
        (2_000, 5)
    } else {
        (5_000, 25)
    };
    let lines = mix(calls);
    let bytes: usize = lines.iter().map(|l| l.bytes.len()).sum();
    eprintln!(
        "analytics: {} lines ({calls} calls, {:.1} MB), median of {reps} passes",
        lines.len(),
        bytes as f64 / 1e6
    );
    let key = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow!("cannot make a key"))?
            .as_ref(),
    )
    .map_err(|_| anyhow!("cannot read the key it made"))?;
    let public = key.public_key().as_ref().to_vec();
    let bench_api = Arc::new(BenchApi { key });
    let api: Arc<dyn ApiTransport> = bench_api.clone();

    let noop_dir = install(env, "test-noop", "test-noop", "free", None)?;
    let (noop, _) = ns_per_line(env, &noop_dir, "test-noop", None, &lines, reps)?;
    let ml_dir = install(env, "ml-analytics", "ml-analytics", "pro", Some(&public))?;
    let (ml, authorized) = ns_per_line(env, &ml_dir, "ml-analytics", Some(api), &lines, reps)?;
    if !authorized {
        bail!("ml-analytics was not authorized by the bench's API: its figure would be the degraded one");
    }
    let plain_dir = install(env, "ml-analytics", "ml-analytics", "pro", None)?;
    let (degraded, _) = ns_per_line(env, &plain_dir, "ml-analytics", None, &lines, reps)?;
    relay(env, options, report, bench_api, &ml_dir)?;
    for (figure, value) in [
        ("handle_message, Pro active", ml),
        ("handle_message, no subscription", degraded),
    ] {
        report.add(Row {
            section: "analytics",
            figure: format!("ml-analytics {figure}"),
            value: format!("{value:.0} ns/line ({:.2} M lines/s)", 1e3 / value),
            baseline: format!("test-noop {noop:.0} ns/line"),
            ratio: Some(value / noop),
            target: None,
        });
    }
    Ok(())
}

/// The relay section's stream through km with ml-analytics alone (Pro active), beside cat|cat.
fn relay(
    env: &BenchEnv,
    options: &Options,
    report: &mut Report,
    api: Arc<BenchApi>,
    ml_dir: &std::path::Path,
) -> Result<()> {
    let url = api.serve()?;
    let stream = crate::relay::Stream::agent(options);
    let log = env.dir().join("analytics-relay.log");
    let [base, noop, with] = stream.medians(
        [
            &|| crate::relay::cat_cat(env),
            &|| env.km_monitor_in(Some(env.single_plugin_dir("test-noop")), &["cat"]),
            &|| {
                let mut km = env.km_monitor_in(Some(ml_dir.to_path_buf()), &["cat"]);
                km.env("KM_API_KEY", CUSTOMER.api_key)
                    .env("KM_API_URL", &url);
                km
            },
        ],
        &log,
    )?;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    if !stderr.contains("ml-analytics") {
        bail!("km did not load ml-analytics; its log says:\n{stderr}");
    }
    // What km recorded of the plugin's last authentication: the figure is worth nothing if the
    // plugin ran degraded (it then does nothing).
    let auth = env.home.join("state/auth/ml-analytics.json");
    let record: Value = serde_json::from_slice(&std::fs::read(&auth).with_context(|| {
        format!(
            "reading {} (did km authenticate ml-analytics?)",
            auth.display()
        )
    })?)
    .with_context(|| format!("parsing {}", auth.display()))?;
    if record["authorized"] != true {
        bail!("ml-analytics ran degraded in the relay: {record}");
    }
    report.add(Row {
        section: "analytics",
        figure: "relay throughput, test-noop alone (the same run)".to_owned(),
        value: stream.rate(noop),
        baseline: format!("cat|cat {}", stream.rate(base)),
        ratio: Some(noop / base),
        target: None,
    });
    report.add(Row {
        section: "analytics",
        figure: "relay throughput, ml-analytics alone (Pro active)".to_owned(),
        value: stream.rate(with),
        baseline: format!("cat|cat {}", stream.rate(base)),
        ratio: Some(with / base),
        target: Some(("time <= 1.5x".to_owned(), with / base <= 1.5)),
    });
    Ok(())
}
