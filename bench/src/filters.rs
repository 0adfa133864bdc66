//! advanced-filters: what the Pro content filter costs, measured on the real signed customer
//! build, authorised by the reference Kilometers API (`km-api-server`, started here on
//! loopback), so that what is measured is the filter at work and not its degraded pass-through.
//!
//! - **Scanning**: MB/s and µs per line of the plugin's `intercept` (detection, the policy and
//!   the session's risk, through km's gateway into the loaded library) on a realistic mix of an
//!   agent's traffic (tool calls with nested arguments, prose and code results, JSON documents
//!   in results, `tools/list` results, notifications, and 1% of lines with findings, which are
//!   redacted), and on the relay section's stream (long strings of random letters).
//! - **Relay**: the relay section's stream through `km monitor -- cat` with advanced-filters
//!   alone, intercepting every line in both directions, beside `cat | cat` and km without
//!   plugins in the same run. Target: at most 3x `cat | cat`.
//! - **Latency**: the latency section's round trip (a 130-byte `tools/call`) through km with
//!   advanced-filters, beside km without plugins, interleaved round by round. Target: at most
//!   25 µs added at p50.
//!
//! Before any figure is taken the bench checks that the filter is on: a `tools/call` carrying a
//! synthetic AWS key goes through `km monitor -- cat` and must come back redacted, and km's
//! record of the plugin's authentication must say `authorized`. Either failing is an error, not
//! a figure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use km_abi::abi_stable::std_types::{ROption, RSlice, RStr};
use km_abi::{Direction, InterceptContext, Message, MessageKind, VerdictAction};
use km_cli::api::ApiClient;
use km_cli::home::KmHome;
use km_cli::host::{ApiTransport, PluginHost, Verbosity};
use km_cli::verifier::Verifier;
use km_tests::{ApiServer, Customer};
use serde_json::{json, Value};

use crate::env::{make_dir, median, percentile, BenchEnv};
use crate::latency::{interleave, Probe};
use crate::relay::{cat_cat, messages, Stream};
use crate::report::{Report, Row};
use crate::Options;

/// The customer the filter is built for: Pro, on a reference API of its own.
const CUSTOMER: Customer = Customer {
    id: "cust_bench",
    api_key: "km_live_bench_filters_0123456789",
};
const PLUGIN: &str = "advanced-filters";

/// Starts the reference API (the harness's) with one Pro customer, [`CUSTOMER`].
fn start_api(env: &BenchEnv) -> Result<ApiServer> {
    let dir = env.dir().join("filters-api");
    make_dir(&dir)?;
    Ok(ApiServer::builder(&dir)
        .customers(&[(&CUSTOMER, "pro")])
        .start())
}

/// A `KM_HOME` of its own holding only the customer build of advanced-filters (made by the real
/// `km-sign build-plugin` with the capabilities km's table gives it), trusting the bench's key,
/// with the API's key and address in config.toml.
fn filters_home(env: &BenchEnv, api: &ApiServer) -> Result<PathBuf> {
    let plugin = km_cli::bundled::find(PLUGIN).context("advanced-filters is not bundled")?;
    let home = env.own_home(
        "home-filters",
        Some(&format!(
            "api_key = \"{}\"\napi_url = \"{}\"\n",
            CUSTOMER.api_key, api.url
        )),
    )?;
    let plugins = home.join("plugins");
    let out_dir = env.dir().join("filters-build");
    let mut build = env.command(&km_tests::km_sign_bin());
    build
        .args([
            "build-plugin",
            "--plugin",
            PLUGIN,
            "--customer",
            CUSTOMER.id,
        ])
        .args(["--customer-token", &CUSTOMER.customer_token()])
        .args(["--tier", plugin.tier.as_str(), "--version", plugin.version]);
    for capability in plugin.capabilities {
        build.args(["--capability", capability]);
    }
    build
        .arg("--key")
        .arg(env.world.key.with_extension("key"))
        .arg("--api-public-key")
        .arg(&api.public_key_file)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg(km_tests::plugin_lib(PLUGIN));
    km_tests::run_ok(&mut build);
    let mut installed = 0;
    for entry in std::fs::read_dir(&out_dir)? {
        let path = entry?.path();
        let name = path.file_name().context("a file name")?.to_owned();
        if path.extension().is_some_and(|e| e == "kmpkg") {
            continue;
        }
        let to = plugins.join(&name);
        std::fs::copy(&path, &to)?;
        km_tests::chmod(&to, 0o644);
        installed += 1;
    }
    if installed != 2 {
        bail!(
            "km-sign build-plugin wrote {installed} files instead of a library and its signature"
        );
    }
    Ok(home)
}

/// Fails unless the filter is on: a secret must come back redacted, and km's record of the
/// plugin's authentication must say so.
fn check_active(env: &BenchEnv, home: &Path) -> Result<()> {
    let secret = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"http","arguments":{"key":"AKIAZ7QW3RT5YU2IOP4N"}}}"#;
    let mut cmd = env.km_in_home(home);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting km monitor")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(format!("{secret}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let echoed = String::from_utf8_lossy(&out.stdout);
    if echoed.contains("AKIAZ7QW3RT5YU2IOP4N") || !echoed.contains("[REDACTED:aws-access-key-id]") {
        bail!(
            "advanced-filters is not filtering (is it authorised?): the secret came back as {echoed:?}; km said:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let auth = home.join("state/auth/advanced-filters.json");
    let record: Value = serde_json::from_slice(
        &std::fs::read(&auth).with_context(|| format!("reading {}", auth.display()))?,
    )?;
    if record["authorized"] != true {
        bail!("advanced-filters is not authorised: {record}");
    }
    Ok(())
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

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }

    fn word(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

const PROSE: &[&str] = &[
    "The deployment finished without errors and the health checks are green.",
    "We refactored the session handling so that reconnects keep their subscriptions.",
    "See the release notes for the list of breaking changes in version 3.",
    "The query planner now uses the index on created_at for range scans.",
    "Unit tests passed on all platforms; the integration suite takes 4 minutes.",
];

const CODE: &[&str] = &[
    "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    println!(\"{:?}\", args);\n}\n",
    "def handler(event, context):\n    items = event.get('items', [])\n    return {'count': len(items)}\n",
    "export async function load({ params }) {\n  const res = await fetch(`/api/items/${params.id}`);\n  return res.json();\n}\n",
];

/// One line of a mix: its bytes and what km tells the plugin about it.
struct Line {
    bytes: Vec<u8>,
    direction: Direction,
    kind: MessageKind,
    method: &'static str,
    target: &'static str,
}

/// An agent's traffic: requests and their results of six kinds, 1% with a finding.
fn realistic_mix(n: usize) -> Vec<Line> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let (direction, kind, method, target, v) = match i % 6 {
                0 => (Direction::Request, MessageKind::REQUEST, "tools/call", "search_code", json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "search_code", "arguments": {"query": rng.word(8), "path": format!("src/{}/{}.rs", rng.word(5), rng.word(6)), "limit": 20, "options": {"caseSensitive": false}}}})),
                1 => {
                    let text: Vec<&str> = (0..12).map(|_| rng.pick(PROSE)).collect();
                    (Direction::Response, MessageKind::RESPONSE, "tools/call", "search_code", json!({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": text.join(" ")}], "isError": false}}))
                }
                2 => {
                    let code: String = (0..20).map(|_| rng.pick(CODE)).collect();
                    (Direction::Response, MessageKind::RESPONSE, "resources/read", "file:///src/app.py", json!({"jsonrpc": "2.0", "id": i, "result": {"contents": [{"uri": "file:///src/app.py", "mimeType": "text/x-python", "text": code}]}}))
                }
                3 => {
                    let rows: Vec<Value> = (0..25).map(|k| json!({"id": k, "name": rng.word(7), "status": rng.pick(&["open", "closed"]), "updated_at": "2026-03-14T09:12:44Z"})).collect();
                    (Direction::Response, MessageKind::RESPONSE, "tools/call", "query", json!({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": json!({"rows": rows}).to_string()}]}}))
                }
                4 => {
                    let tools: Vec<Value> = (0..8).map(|_| json!({"name": rng.word(9), "description": rng.pick(PROSE), "inputSchema": {"type": "object", "properties": {"path": {"type": "string", "description": "Relative path of the file"}}}, "annotations": {"readOnlyHint": true}})).collect();
                    (Direction::Response, MessageKind::RESPONSE, "tools/list", "", json!({"jsonrpc": "2.0", "id": i, "result": {"tools": tools}}))
                }
                _ => (Direction::Response, MessageKind::NOTIFICATION, "notifications/progress", "", json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": i, "progress": i % 100, "total": 100, "message": rng.pick(PROSE)}})),
            };
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            if i % 100 == 7 {
                // A result that quotes a configuration with a key in it: redacted.
                bytes = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": format!("{}\nAWS_ACCESS_KEY_ID=AKIAZ7QW3RT5YU2IOP4N", rng.pick(PROSE))}]}})).unwrap_or_default();
            }
            Line {
                bytes,
                direction,
                kind,
                method,
                target,
            }
        })
        .collect()
}

/// The relay section's stream as lines the client sends.
fn relay_lines(n: usize) -> Vec<Line> {
    messages(n)
        .into_iter()
        .map(|mut m| {
            m.pop();
            let kind = if m.starts_with(br#"{"jsonrpc":"2.0","method""#) {
                MessageKind::NOTIFICATION
            } else if m.windows(9).any(|w| w == br#""result":"#) {
                MessageKind::RESPONSE
            } else {
                MessageKind::REQUEST
            };
            Line {
                bytes: m,
                direction: Direction::Request,
                kind,
                method: "tools/call",
                target: "search",
            }
        })
        .collect()
}

/// CPU time of this thread (user + system) from /proc/thread-self/stat, in seconds; `None`
/// where that file is not available. On a shared, loaded machine wall-clock rates depend on
/// the other processes; CPU-time rates much less.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // Clock ticks of USER_HZ, 100 on every mainstream configuration.
    Some((utime + stime) / 100.0)
}

/// What one pass of `intercept` over a mix cost.
struct Rate {
    /// µs per line, wall clock (median of the passes).
    us_per_line: f64,
    /// MB/s, wall clock.
    mbs: f64,
    /// MB/s of this thread's CPU time over all passes, when known.
    cpu_mbs: Option<f64>,
    /// Lines not passed unchanged.
    changed: usize,
}

impl Rate {
    fn text(&self) -> String {
        let cpu = self
            .cpu_mbs
            .map(|c| format!(" ({c:.0} MB/s of CPU time)"))
            .unwrap_or_default();
        format!("{:.0} MB/s{cpu}, {:.2} us/line", self.mbs, self.us_per_line)
    }
}

/// The loaded plugin's `intercept` on `lines`, `reps` passes.
fn intercept_rate(
    plugin: &km_cli::gateway::LoadedPlugin,
    lines: &[Line],
    reps: usize,
) -> Result<Rate> {
    let bytes: usize = lines.iter().map(|l| l.bytes.len()).sum();
    let mut per_line = Vec::new();
    let mut changed = 0;
    let cpu_start = thread_cpu_seconds();
    for rep in 0..reps {
        let start = Instant::now();
        for (seq, line) in lines.iter().enumerate() {
            let message = Message {
                seq: seq as u64,
                direction: line.direction,
                kind: line.kind,
                is_error: false,
                data: RSlice::from_slice(&line.bytes),
                correlation_id: RStr::from_str(""),
                id: RStr::from_str(""),
                method: RStr::from_str(if line.kind == MessageKind::RESPONSE {
                    ""
                } else {
                    line.method
                }),
                timestamp_us: 0,
                latency_us: ROption::RNone,
            };
            let context = InterceptContext {
                request_method: RStr::from_str(line.method),
                target: RStr::from_str(line.target),
                batch_index: ROption::RNone,
                session_id: RStr::from_str("bench"),
            };
            let verdict = plugin
                .intercept(&message, &context)
                .map_err(|e| anyhow!("intercept failed: {e}"))?;
            if rep == 0 && verdict.action.effective() != VerdictAction::PASS {
                changed += 1;
            }
        }
        per_line.push(start.elapsed().as_secs_f64() / lines.len() as f64);
    }
    let cpu_mbs = match (cpu_start, thread_cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some((bytes * reps) as f64 / (b - a) / 1e6),
        _ => None,
    };
    let s = median(&mut per_line);
    Ok(Rate {
        us_per_line: s * 1e6,
        mbs: bytes as f64 / lines.len() as f64 / s / 1e6,
        cpu_mbs,
        changed,
    })
}

/// km's runtime for the in-process plugin's API client, as `km monitor` has one: built once and
/// kept for the bench's process, since the loaded plugin holds the client to its end.
fn runtime() -> Result<&'static km_cli::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<km_cli::runtime::Runtime> = std::sync::OnceLock::new();
    if RUNTIME.get().is_none() {
        let _ = RUNTIME.set(km_cli::runtime::Runtime::new()?);
    }
    RUNTIME
        .get()
        .map(km_cli::runtime::Runtime::handle)
        .context("km's runtime")
}

/// Loads the customer build in-process through km's loader and gateway, authenticated with the
/// reference API by km's own API client.
fn load_plugin(
    env: &BenchEnv,
    home: &Path,
    api: &ApiServer,
) -> Result<km_cli::gateway::LoadedPlugin> {
    let km_home = KmHome::resolve(Some(home))?;
    let mut verifier = Verifier::open(&km_home)?.allow_downgrade(true);
    let library = home
        .join("plugins")
        .join(km_signing::customer_build_file_name(PLUGIN, CUSTOMER.id));
    let checked = verifier.check_file(&library)?;
    let data = env.dir().join("plugin-data").join("filters-in-process");
    make_dir(&data)?;
    let client: Arc<dyn ApiTransport> = Arc::new(ApiClient::new(runtime()?, &api.url)?);
    let host = PluginHost::new(PLUGIN, data.clone(), Verbosity::Quiet, Some(client))
        .with_policies(home.join("policies"));
    let plugin = verifier.load(checked, host)?;
    let config = km_abi::PluginConfig {
        data_dir: data.to_string_lossy().into_owned().into(),
        api_url: api.url.clone().into(),
        settings_json: "{}".into(),
        host_version: env!("CARGO_PKG_VERSION").into(),
        verbose: false,
    };
    plugin.initialize(&config).map_err(|e| anyhow!("{e}"))?;
    let _ = plugin.interest();
    plugin
        .begin_session(r#"{"session_id":"bench","command":["cat"],"cwd":"/","km_version":"bench"}"#)
        .map_err(|e| anyhow!("{e}"))?;
    let auth = plugin
        .authenticate(CUSTOMER.api_key)
        .map_err(|e| anyhow!("{e}"))?;
    if !auth.authorized {
        bail!(
            "the reference API did not authorise advanced-filters: {}",
            auth.reason
        );
    }
    Ok(plugin)
}

/// Runs the advanced-filters section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let api = start_api(env)?;
    let home = filters_home(env, &api)?;
    check_active(env, &home)?;

    // Scanning, in-process.
    let plugin = load_plugin(env, &home, &api)?;
    let reps = if options.quick { 3 } else { 9 };
    let mix = realistic_mix(if options.quick { 1200 } else { 3000 });
    let mix_bytes: usize = mix.iter().map(|l| l.bytes.len()).sum();
    let rate = intercept_rate(&plugin, &mix, reps)?;
    eprintln!(
        "filters: realistic mix of {} lines, {:.1} MB ({} changed), median of {reps} passes",
        mix.len(),
        mix_bytes as f64 / 1e6,
        rate.changed
    );
    report.add(Row {
        section: "filters",
        figure: "scanning, realistic mix (intercept, in-process)".to_owned(),
        value: rate.text(),
        baseline: format!(
            "{} lines, mean {} B, {} redacted",
            mix.len(),
            mix_bytes / mix.len(),
            rate.changed
        ),
        ratio: None,
        target: None,
    });
    let relay_mix = relay_lines(if options.quick { 1000 } else { 3000 });
    let rate = intercept_rate(&plugin, &relay_mix, reps)?;
    report.add(Row {
        section: "filters",
        figure: "scanning, the relay stream (intercept, in-process)".to_owned(),
        value: rate.text(),
        baseline: "long strings of random letters".to_owned(),
        ratio: None,
        target: None,
    });
    let _ = plugin.shutdown();
    // Loaded libraries are never unloaded.
    std::mem::forget(plugin);

    // The relay.
    let stream = Stream::agent(options);
    eprintln!(
        "filters: relay, {} messages, {:.1} MB, median of {} runs",
        stream.msgs.len(),
        stream.mb(),
        stream.passes
    );
    let log = env.dir().join("filters-relay.log");
    let [base, bare, with] = stream.medians(
        [
            &|| cat_cat(env),
            &|| env.km_monitor(false, &["cat"]),
            &|| env.km_in_home(&home),
        ],
        &log,
    )?;
    report.add(Row {
        section: "filters",
        figure: "relay, advanced-filters intercepting everything".to_owned(),
        value: stream.rate(with),
        baseline: format!(
            "cat|cat {}; km without {}",
            stream.rate(base),
            stream.rate(bare)
        ),
        ratio: Some(with / base),
        target: Some(("time <= 3x cat|cat".to_owned(), with / base <= 3.0)),
    });

    // Latency.
    let plog = |name: &str| env.dir().join(format!("filters-latency-{name}.log"));
    let mut paths = vec![
        Probe::start("km", env.km_monitor(false, &["cat"]), &plog("km"))?,
        Probe::start(
            "km+advanced-filters",
            env.km_in_home(&home),
            &plog("filters"),
        )?,
    ];
    interleave(&mut paths, options.round_trips())?;
    let us = |s: f64| s * 1e6;
    for q in [50.0, 99.0] {
        let (km, with) = (
            percentile(&paths[0].samples, q),
            percentile(&paths[1].samples, q),
        );
        report.add(Row {
            section: "filters",
            figure: format!("added round trip p{q:.0}, advanced-filters"),
            value: format!(
                "{:.1} us over km without (total {:.1})",
                us(with - km),
                us(with)
            ),
            baseline: format!("km without {:.1} us", us(km)),
            ratio: None,
            target: (q == 50.0).then(|| ("<= 25 us over km".to_owned(), us(with - km) <= 25.0)),
        });
    }
    for path in paths {
        path.finish();
    }
    // The filter must still have been on at the end.
    check_active(env, &home)?;
    Ok(())
}
