//! Subscriptions end to end: `km init`, and the real api-logger, stamped with the
//! credentials of a customer and the public key of a real `km-api-server` on loopback, signed,
//! then authenticated by the real `km plugin-refresh` and reported by `km plugin-status`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use km_tests::{
    chmod, describe, lib_file_name, library, run_ok, settle, unix_now, ApiServer, Customer, KmEnv,
};
use serde_json::{json, Value};

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_0123456789",
};
const BOB: Customer = Customer {
    id: "cust_bob",
    api_key: "km_live_bob_0123456789",
};

/// The reference API with `customers` (and their tiers), storing events in
/// `dir/events.jsonl`.
fn start_api(dir: &Path, customers: &[(&Customer, &str)]) -> ApiServer {
    ApiServer::builder(dir)
        .customers(customers)
        .events(&dir.join("events.jsonl"))
        .start()
}

/// Installs api-logger stamped for `customer` (or unstamped) and signed with the trusted key.
fn install_api_logger(env: &KmEnv, server: &ApiServer, customer: Option<&Customer>) -> PathBuf {
    let Some(customer) = customer else {
        let dest = env.plugins.join(lib_file_name("api-logger"));
        env.place_signed(
            &dest,
            &library("api-logger"),
            "api-logger",
            "1.0.0",
            "pro",
            &[],
        );
        return dest;
    };
    env.install_stamped_api_logger(server, customer)
}

fn init(env: &KmEnv, server: &ApiServer, api_key: &str) {
    env.init(api_key, &server.url);
}

/// `km plugin-refresh --json`: (exit code, the api-logger record, the output).
fn refresh(env: &KmEnv) -> (i32, Value, Output) {
    env.plugin_refresh("api-logger")
}

fn status_json(env: &KmEnv) -> Value {
    let output = run_ok(env.km().args(["plugin-status", "--json"]));
    let records: Value =
        serde_json::from_slice(&output.stdout).expect("plugin-status --json prints JSON");
    find(&records, "api-logger").expect("api-logger has a status")
}

fn find(records: &Value, name: &str) -> Option<Value> {
    records
        .as_array()?
        .iter()
        .find(|r| r["plugin"] == name)
        .cloned()
}

fn assert_authorized(record: &Value, output: &Output) {
    assert_eq!(
        record["authorized"],
        true,
        "{record:#}\n{}",
        describe(output)
    );
    assert_eq!(record["tier"], "pro", "{record:#}");
    assert_eq!(record["required_tier"], "pro", "{record:#}");
    assert!(
        record["expires_at"]
            .as_i64()
            .is_some_and(|e| e > unix_now()),
        "{record:#}"
    );
}

fn assert_degraded(record: &Value, output: &Output, reason_contains: &str) {
    assert_eq!(
        record["authorized"],
        false,
        "{record:#}\n{}",
        describe(output)
    );
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(reason_contains),
        "reason {reason:?} lacks {reason_contains:?}\n{}",
        describe(output)
    );
    // Whatever happened, nothing of it reaches stdout beyond the JSON report.
    assert!(!String::from_utf8_lossy(&output.stdout).contains("panicked"));
}

#[test]
fn init_writes_a_private_config_and_show_masks_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let env = KmEnv::new();
    run_ok(
        env.km()
            .args([
                "init",
                "--api-key",
                "km_live_abc123xyz",
                "--api-url",
                "http://127.0.0.1:9",
            ])
            .stdin(Stdio::null()),
    );
    let config = env.home.join("config.toml");
    let mode = std::fs::metadata(&config)
        .expect("config.toml exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let show = run_ok(env.km().args(["config", "show"]));
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("km_live_…xyz"), "{text}");
    assert!(!text.contains("abc123"), "the key leaked: {text}");

    // The environment wins over the file.
    let show = run_ok(
        env.km()
            .args(["config", "show", "--json"])
            .env("KM_API_KEY", "km_live_fromenv777"),
    );
    let value: Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(value["api_key"], "km_live_…777");
    assert_eq!(value["api_key_source"], "environment");

    // Without a terminal and without a key, init fails instead of waiting for input.
    let fresh = KmEnv::new();
    let out = fresh
        .km()
        .arg("init")
        .stdin(Stdio::null())
        .output()
        .expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // Plain http to a non-loopback endpoint is refused before anything is written.
    let out = fresh
        .km()
        .args([
            "init",
            "--api-key",
            "k_0123456789",
            "--api-url",
            "http://api.example.test",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!fresh.home.join("config.toml").exists());

    // A config.toml holding the key but readable by others is refused.
    chmod(&config, 0o644);
    let out = env.km().args(["config", "show"]).output().expect("km runs");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_pro_subscription_authorizes_and_a_downgrade_degrades_with_the_reason_shown() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro")]);
    let lib = install_api_logger(&env, &server, Some(&ALICE));
    init(&env, &server, ALICE.api_key);
    let before = status_json(&env);
    assert_eq!(before["outcome"], "never", "{before:#}");
    assert_eq!(before["required_tier"], "pro", "{before:#}");

    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_authorized(&record, &output);
    assert_eq!(record["features"], json!(["api_logging"]));
    let status = status_json(&env);
    assert_eq!(status["authorized"], true);
    assert_eq!(status["outcome"], "authorized");

    server.set_customers(&[(&ALICE, "free")]);
    let (code, record, output) = refresh(&env);
    assert_eq!(
        code,
        1,
        "a degraded plugin makes plugin-refresh exit 1\n{}",
        describe(&output)
    );
    assert_degraded(&record, &output, "needs Pro");
    assert_eq!(record["tier"], "free");
    let plain = run_ok(env.km().arg("plugin-status"));
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains("degraded") && text.contains("needs Pro"),
        "{text}"
    );

    // Upgraded again: recovered at the next refresh.
    server.set_customers(&[(&ALICE, "pro")]);
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_authorized(&record, &output);

    // The record of a plugin that was removed says so.
    std::fs::remove_file(&lib).expect("uninstall");
    let gone = status_json(&env);
    assert_eq!(gone["outcome"], "authorized (not installed)", "{gone:#}");
}

#[test]
fn a_build_stamped_for_another_customer_runs_degraded() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro"), (&BOB, "pro")]);
    install_api_logger(&env, &server, Some(&ALICE));
    init(&env, &server, BOB.api_key);
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 1);
    assert_degraded(&record, &output, "another customer");
}

#[test]
fn unstamped_builds_and_missing_keys_degrade() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro")]);
    install_api_logger(&env, &server, None);
    init(&env, &server, ALICE.api_key);
    let (_, record, output) = refresh(&env);
    assert_degraded(&record, &output, "not built for a customer");

    let env = KmEnv::new();
    install_api_logger(&env, &server, Some(&ALICE));
    let (_, record, output) = refresh(&env);
    assert_degraded(&record, &output, "km init");
}

#[test]
fn forged_altered_malformed_and_oversized_answers_are_rejected() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro")]);
    install_api_logger(&env, &server, Some(&ALICE));
    init(&env, &server, ALICE.api_key);
    for (mode, reason) in [
        ("foreign-key", "signature"),
        ("tier", "disagrees with its signed token"),
        ("malformed", "malformed"),
        ("oversized", "oversized"),
    ] {
        server.control(&format!("tamper?mode={mode}"));
        let (code, record, output) = refresh(&env);
        assert_eq!(code, 1, "tamper mode {mode}\n{}", describe(&output));
        assert_degraded(&record, &output, reason);
    }
    server.control("tamper?mode=none");
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_authorized(&record, &output);
}

#[test]
fn api_down_keeps_a_valid_cached_token_degrades_without_one_and_recovers() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro")]);
    install_api_logger(&env, &server, Some(&ALICE));
    init(&env, &server, ALICE.api_key);
    let (_, record, output) = refresh(&env);
    assert_authorized(&record, &output);

    // Each refresh is a new km process: the token comes from the plugin's cache on disk.
    server.control("down");
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_authorized(&record, &output);
    assert!(
        record["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cached"),
        "{record:#}"
    );

    // A fresh installation has no cached token: degraded while the API is down.
    let other = KmEnv::new();
    install_api_logger(&other, &server, Some(&ALICE));
    init(&other, &server, ALICE.api_key);
    let (code, record, output) = refresh(&other);
    assert_eq!(code, 1);
    assert_degraded(&record, &output, "unreachable");

    server.control("up");
    let (code, record, output) = refresh(&other);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_authorized(&record, &output);
}

#[test]
fn a_response_slower_than_the_timeout_is_rejected() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path(), &[(&ALICE, "pro")]);
    install_api_logger(&env, &server, Some(&ALICE));
    init(&env, &server, ALICE.api_key);
    // km's default deadline for a call is 10 s, retries included.
    server.control("delay?ms=10500");
    let started = std::time::Instant::now();
    let (code, record, output) = refresh(&env);
    assert_eq!(code, 1);
    assert_degraded(&record, &output, "did not answer within");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

// --- api-logger's delivery, with km's own loader, API client and refresher in this process ---
//
// `km monitor` drives plugins the same way (load, authenticate, initialize, handle_message,
// shutdown); these tests drive them directly so that they can take the API down and "restart"
// at exact points of a session.

mod delivery {
    use std::sync::Arc;

    use km_abi::abi_stable::std_types::{ROption, RSlice, RStr};
    use km_abi::{Direction, Message, MessageKind, PluginConfig};
    use km_cli::api::ApiClient;
    use km_cli::config::Config;
    use km_cli::gateway::LoadedPlugin;
    use km_cli::home::KmHome;
    use km_cli::host::{ApiTransport, Verbosity};
    use km_cli::loader::{load_plugins, LoadOptions};
    use km_cli::runtime::{Handle, Runtime};

    use super::*;

    /// km's runtime for the clients and refreshers these tests make, as `km monitor` has one.
    fn runtime() -> &'static Handle {
        static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::new().expect("km's runtime"))
            .handle()
    }

    fn load(env: &KmEnv, server: &ApiServer) -> Arc<LoadedPlugin> {
        let home = KmHome::resolve(Some(&env.home)).expect("home");
        let mut options = LoadOptions::new(env.plugins.clone(), home);
        options.verbosity = Verbosity::Quiet;
        let api: Arc<dyn ApiTransport> =
            Arc::new(ApiClient::new(runtime(), &server.url).expect("client"));
        options.api = Some(api);
        let report = load_plugins(&options).expect("loads");
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        let plugin = report.loaded.into_iter().next().expect("api-logger loaded");
        let settings = r#"{"flush_interval_ms": 200, "retry_base_ms": 100, "retry_max_ms": 400}"#;
        plugin
            .initialize(&PluginConfig {
                data_dir: env
                    .home
                    .join("state/plugins/api-logger")
                    .display()
                    .to_string()
                    .into(),
                api_url: server.url.as_str().into(),
                settings_json: settings.into(),
                host_version: "test".into(),
                verbose: false,
            })
            .expect("initialize");
        plugin
    }

    fn refresh_now(env: &KmEnv, plugin: &Arc<LoadedPlugin>, api_key: &str) -> bool {
        let home = KmHome::resolve(Some(&env.home)).expect("home");
        let config = Config {
            api_key: Some(api_key.to_owned()),
            ..Config::default()
        };
        let records = km_cli::subscription::refresh_all(
            runtime(),
            &home,
            &config,
            std::slice::from_ref(plugin),
            Duration::from_secs(30),
        );
        records[0].authorized
    }

    fn send(plugin: &LoadedPlugin, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{seq},"method":"tools/call"}}"#);
            let id = seq.to_string();
            let message = Message {
                seq,
                direction: Direction::Request,
                kind: MessageKind::REQUEST,
                is_error: false,
                data: RSlice::from_slice(line.as_bytes()),
                correlation_id: RStr::from_str(&id),
                id: RStr::from_str(&id),
                method: RStr::from_str("tools/call"),
                timestamp_us: 1,
                latency_us: ROption::RNone,
            };
            plugin.handle_message(&message).expect("handle_message");
        }
    }

    fn stored_events(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn wait_for_events(dir: &Path, count: usize) -> Vec<Value> {
        settle(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || stored_events(dir),
            |events| events.len() >= count,
        )
    }

    /// Bytes in all of api-logger's journals.
    fn journal_bytes(env: &KmEnv) -> u64 {
        std::fs::read_dir(env.home.join("state/plugins/api-logger"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn assert_each_once(events: &[Value], expected: usize) {
        let mut ids: Vec<&str> = events
            .iter()
            .map(|e| e["id"].as_str().expect("id"))
            .collect();
        let total = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "an event was stored twice");
        assert_eq!(total, expected, "events stored: {ids:?}");
    }

    #[test]
    fn every_message_is_delivered_once_across_an_outage_and_a_restart() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));

        let plugin = load(&env, &server);
        // Messages that arrive before the first authentication are held, then sent.
        send(&plugin, 0..5);
        assert!(refresh_now(&env, &plugin, ALICE.api_key));
        send(&plugin, 5..25);
        let events = wait_for_events(dir, 25);
        assert_each_once(&events, 25);
        assert_eq!(events[0]["customer_id"], ALICE.id);
        assert_eq!(events[0]["method"], "tools/call");
        assert_eq!(events[0]["payload"]["id"], 0);

        // The API goes down: events wait on disk, and arrive when it is back.
        server.control("down");
        send(&plugin, 25..40);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(stored_events(dir).len(), 25);
        server.control("up");
        assert_each_once(&wait_for_events(dir, 40), 40);

        // Down again, and km stops: the backlog survives on disk...
        server.control("down");
        send(&plugin, 40..52);
        plugin.shutdown().expect("shutdown");
        assert_eq!(stored_events(dir).len(), 40);
        // ...and a new instance (km started again) sends it once it is authenticated.
        server.control("up");
        let restarted = load(&env, &server);
        assert!(refresh_now(&env, &restarted, ALICE.api_key));
        send(&restarted, 0..3);
        let events = wait_for_events(dir, 55);
        assert_each_once(&events, 55);
        restarted.shutdown().expect("shutdown");
    }

    #[test]
    fn without_a_pro_subscription_nothing_is_sent_or_kept() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "free")]);
        install_api_logger(&env, &server, Some(&ALICE));
        let plugin = load(&env, &server);
        send(&plugin, 0..3);
        assert!(!refresh_now(&env, &plugin, ALICE.api_key));
        send(&plugin, 3..20);
        std::thread::sleep(Duration::from_millis(600));
        plugin.shutdown().expect("shutdown");
        assert!(stored_events(dir).is_empty());
        assert_eq!(journal_bytes(&env), 0, "a degraded api-logger kept events");

        // Upgraded: a new session logs; the earlier one left nothing behind to send.
        server.set_customers(&[(&ALICE, "pro")]);
        let plugin = load(&env, &server);
        assert!(refresh_now(&env, &plugin, ALICE.api_key));
        send(&plugin, 0..10);
        assert_each_once(&wait_for_events(dir, 10), 10);
        plugin.shutdown().expect("shutdown");
    }

    #[test]
    fn the_refresher_applies_a_downgrade_within_one_interval_and_recovers() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        let plugin = load(&env, &server);
        let home = KmHome::resolve(Some(&env.home)).expect("home");
        let config = Config {
            api_key: Some(ALICE.api_key.to_owned()),
            refresh_interval_secs: Some(1),
            ..Config::default()
        };
        let refresher = km_cli::subscription::start_refresher(
            runtime(),
            &home,
            &config,
            vec![plugin.clone()],
            None,
        );
        let status = |authorized: bool| {
            let records = settle(
                Duration::from_secs(10),
                Duration::from_millis(100),
                || km_cli::subscription::load_records(&home).expect("records"),
                |records| records.first().is_some_and(|r| r.authorized == authorized),
            );
            match records.first() {
                Some(record) if record.authorized == authorized => record.clone(),
                _ => panic!("the plugin never became authorized={authorized}"),
            }
        };
        status(true);
        send(&plugin, 0..10);
        assert_each_once(&wait_for_events(dir, 10), 10);

        server.set_customers(&[(&ALICE, "free")]);
        let record = status(false);
        assert!(record.reason.contains("needs Pro"), "{record:?}");
        send(&plugin, 10..30);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            stored_events(dir).len(),
            10,
            "a degraded api-logger sent events"
        );

        server.set_customers(&[(&ALICE, "pro")]);
        status(true);
        send(&plugin, 30..40);
        assert_each_once(&wait_for_events(dir, 20), 20);
        drop(refresher);
        plugin.shutdown().expect("shutdown");
    }

    #[test]
    fn two_sessions_side_by_side_each_deliver_everything() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        // Two km monitors share the plugin's data directory, each with its own journal.
        let first = load(&env, &server);
        let second = load(&env, &server);
        assert!(refresh_now(&env, &first, ALICE.api_key));
        assert!(refresh_now(&env, &second, ALICE.api_key));
        server.control("down");
        send(&first, 0..15);
        send(&second, 0..15);
        std::thread::sleep(Duration::from_millis(400));
        // One session ends while the API is down; the other adopts its journal once the
        // adoption interval comes round, or the next session does at start.
        first.shutdown().expect("shutdown");
        server.control("up");
        send(&second, 15..20);
        let events = wait_for_events(dir, 20);
        assert_eq!(
            events.len(),
            20,
            "the live session delivered its own events"
        );
        let third = load(&env, &server);
        assert!(refresh_now(&env, &third, ALICE.api_key));
        assert_each_once(&wait_for_events(dir, 35), 35);
        second.shutdown().expect("shutdown");
        third.shutdown().expect("shutdown");
        assert_eq!(journal_bytes(&env), 0);
    }
}

// --- a real `km monitor` session ---

mod monitor_session {
    use km_tests::EchoSession;

    use super::*;

    fn write_settings(env: &KmEnv) {
        write_settings_as(
            env,
            "flush_interval_ms = 200\nretry_base_ms = 100\nretry_max_ms = 400\n",
        );
    }

    /// Replaces api-logger's section of config.toml with `settings`.
    fn write_settings_as(env: &KmEnv, settings: &str) {
        let path = env.home.join("config.toml");
        let text = std::fs::read_to_string(&path).expect("config.toml");
        let mut text = match text.find("\n[plugins.api-logger]\n") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        text.push_str("\n[plugins.api-logger]\n");
        text.push_str(settings);
        std::fs::write(&path, text).expect("config.toml");
        chmod(&path, 0o600);
    }

    /// Whole event lines in all of api-logger's journals, as the files hold them.
    fn journal_lines(env: &KmEnv) -> usize {
        std::fs::read_dir(env.home.join("state/plugins/api-logger"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Sends requests `ids` and reads each echo back (cat answers every line).
    fn exchange(session: &mut EchoSession, ids: std::ops::Range<u64>) {
        for id in ids {
            let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/list\"}}\n");
            session.echo(line.as_bytes());
        }
    }

    fn stored(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    fn wait_for(dir: &Path, count: usize) -> Vec<Value> {
        settle(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || stored(dir),
            |events| events.len() >= count,
        )
    }

    fn assert_each_once(events: &[Value], expected: usize) {
        let mut ids: Vec<&str> = events
            .iter()
            .map(|e| e["id"].as_str().expect("id"))
            .collect();
        let total = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "an event was stored twice");
        assert_eq!(total, expected);
    }

    #[test]
    fn every_message_of_a_session_arrives_once_even_when_km_is_killed() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        init(&env, &server, ALICE.api_key);
        write_settings(&env);

        let mut session = EchoSession::start(&env);
        exchange(&mut session, 0..20);
        // Each line is two messages: the request and cat's echo as the response.
        assert_each_once(&wait_for(dir, 40), 40);

        server.control("down");
        exchange(&mut session, 20..30);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(stored(dir).len(), 40);
        session.kill();

        server.control("up");
        let mut session = EchoSession::start(&env);
        exchange(&mut session, 30..31);
        assert_each_once(&wait_for(dir, 62), 62);
        session.finish();
    }

    /// The events a session hands api-logger reach the journal's file even while the sender has
    /// no reason to look (a batch far from full, an interval of an hour), so that a kill loses
    /// none of them: events kept in the plugin's memory until the sender took a batch were lost.
    #[test]
    fn events_reach_the_journal_file_without_the_sender_and_survive_a_kill() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        init(&env, &server, ALICE.api_key);
        write_settings_as(&env, "batch_size = 1000\nflush_interval_ms = 3600000\n");

        let mut session = EchoSession::start(&env);
        exchange(&mut session, 0..3);
        let in_file = settle(
            Duration::from_secs(30),
            Duration::from_millis(50),
            || journal_lines(&env),
            |&n| n >= 6,
        );
        assert_eq!(
            in_file, 6,
            "the events handed to api-logger never reached its journal's file"
        );
        assert!(
            stored(dir).is_empty(),
            "the sender sent before its interval"
        );
        session.kill();

        write_settings(&env);
        let mut session = EchoSession::start(&env);
        exchange(&mut session, 3..4);
        assert_each_once(&wait_for(dir, 8), 8);
        session.finish();
    }

    #[test]
    fn a_downgrade_during_a_session_stops_logging_without_disturbing_the_relay() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        init(&env, &server, ALICE.api_key);
        write_settings(&env);
        let mut session = EchoSession::start(&env);
        exchange(&mut session, 0..5);
        assert_each_once(&wait_for(dir, 10), 10);
        server.set_customers(&[(&ALICE, "free")]);
        // Within one refresh interval (1 s here) the plugin degrades.
        std::thread::sleep(Duration::from_millis(2500));
        exchange(&mut session, 5..15);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(stored(dir).len(), 10, "a degraded api-logger sent events");
        session.finish();
        let status = status_json(&env);
        assert_eq!(status["authorized"], false);
        assert!(
            status["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("needs Pro"),
            "{status:#}"
        );
    }

    #[test]
    fn a_restart_while_the_api_is_down_runs_on_the_cached_token() {
        let env = KmEnv::new();
        let dir = env.dir.path();
        let server = start_api(dir, &[(&ALICE, "pro")]);
        install_api_logger(&env, &server, Some(&ALICE));
        init(&env, &server, ALICE.api_key);
        write_settings(&env);
        let mut session = EchoSession::start(&env);
        exchange(&mut session, 0..3);
        assert_each_once(&wait_for(dir, 6), 6);
        session.finish();

        server.control("down");
        let mut session = EchoSession::start(&env);
        exchange(&mut session, 3..6);
        let status = settle(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || status_json(&env),
            |status| {
                status["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("cached")
            },
        );
        assert_eq!(status["authorized"], true, "{status:#}");
        server.control("up");
        assert_each_once(&wait_for(dir, 12), 12);
        session.finish();
    }
}
