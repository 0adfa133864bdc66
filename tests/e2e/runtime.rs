//! km's one runtime end to end, with the real `km monitor` and real signed cdylibs: plugin code
//! stuck forever on the runtime's blocking pool (an observer in `handle_message`, an interceptor
//! in `intercept`) never keeps km from exiting, whether the client closes stdin or the server
//! exits while the client keeps stdin open; and km still exits when the client closes stdin
//! while a premium plugin's subscription refresh is waiting on a reference API that does not
//! answer. Each `km` runs under a watchdog that kills it after [`LIMIT`]: a km that waited for
//! its blocking pool would never exit, and the test fails saying so instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use km_tests::{ApiServer, Customer, KmEnv, Watched};

/// How long km may take to exit: generous, for a loaded machine. A km that waits for a hung
/// plugin never exits at all.
const LIMIT: Duration = Duration::from_secs(30);

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_0123456789",
};

/// A request that the hung interceptor never answers.
const HANG: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"HANG"}}}"#;
/// A request that it passes.
const FINE: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

/// An environment with `test-hang` (hangs in its first `handle_message`, forever) and
/// `test-intercept` told to hang in `intercept` on a line holding `HANG`, forever.
fn hung_plugins() -> KmEnv {
    let env = KmEnv::new();
    env.install("test-hang", "test-hang");
    env.install_signed(
        "test-intercept",
        "test-intercept",
        &["--capability", "intercept"],
    );
    // Only `tools/call`: once it overran and was disabled, the lines it asked for are blocked
    // (fail closed), and the others pass.
    env.write_config(
        "[plugins.test-intercept]\nmethods = [\"tools/call\"]\nhang = \"HANG\"\nbudget_ms = 200\n",
    );
    env
}

/// `km monitor` on `server`, with the environment's plugins, its stdio piped.
fn monitor(env: &KmEnv, server: &[&str]) -> Command {
    let mut cmd = env.km();
    cmd.arg("monitor")
        .arg("--")
        .args(server)
        .env("KM_GRACE_MS", "300")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    })
}

#[test]
fn hung_plugins_do_not_keep_km_from_exiting_when_the_client_closes_stdin() {
    let env = hung_plugins();
    let km = Watched::spawn(&mut monitor(&env, &["cat"]), LIMIT);
    let stderr = read_all(km.take_stderr().expect("stderr"));
    let mut stdin = km.take_stdin().expect("stdin");
    let mut stdout = BufReader::new(km.take_stdout().expect("stdout"));
    writeln!(stdin, "{HANG}").expect("write");
    // The interceptor overruns its budget: the line is blocked (answered with an error for its
    // id), and the pump goes on without it on another thread of the pool.
    let mut answer = String::new();
    stdout
        .read_line(&mut answer)
        .expect("the answer to the blocked request");
    writeln!(stdin, "{FINE}").expect("write");
    let mut echo = String::new();
    stdout.read_line(&mut echo).expect("the echo");
    drop(stdin);
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let status = km.wait(
        "km monitor with a hung observer and interceptor, at EOF",
        String::new,
    );
    let stderr = stderr.join().expect("stderr reader");
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        answer.contains(r#""id":1"#) && answer.contains("error"),
        "the hung interceptor's line is blocked: {answer:?}\n{stderr}"
    );
    assert_eq!(echo.trim_end(), FINE, "{stderr}");
    assert!(
        stderr.contains("test-intercept"),
        "the overrun is reported: {stderr}"
    );
    assert!(
        stderr.contains("plugin test-hang"),
        "the hung observer is reported: {stderr}"
    );
}

#[test]
fn hung_plugins_do_not_keep_km_from_exiting_when_the_server_exits_and_stdin_stays_open() {
    let env = hung_plugins();
    // A server that answers one line, then exits with 3, while the client keeps its end of km's
    // stdin open: the client-to-server pump stays blocked reading it, beside the hung plugins.
    let server = ["sh", "-c", "read line; echo \"$line\"; exit 3"];
    let km = Watched::spawn(&mut monitor(&env, &server), LIMIT);
    let stderr = read_all(km.take_stderr().expect("stderr"));
    let stdout = read_all(km.take_stdout().expect("stdout"));
    let mut stdin = km.take_stdin().expect("stdin");
    // The first is blocked once the interceptor overran; the second reaches the server.
    writeln!(stdin, "{HANG}\n{FINE}").expect("write");
    let status = km.wait(
        "km monitor with hung plugins, after its server exited",
        String::new,
    );
    // Only now: km exited with stdin still open.
    drop(stdin);
    let stderr = stderr.join().expect("stderr reader");
    let stdout = stdout.join().expect("stdout reader");
    assert_eq!(
        status.code(),
        Some(3),
        "km exits with the server's code\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}\n{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""id":1"#) && l.contains("error")),
        "the hung interceptor's line is blocked: {stdout}\n{stderr}"
    );
    assert!(lines.contains(&FINE), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("plugin test-hang"),
        "the hung observer is reported: {stderr}"
    );
}

#[test]
fn km_exits_at_eof_while_a_subscription_refresh_waits_on_a_silent_api() {
    let env = KmEnv::new();
    let server = ApiServer::builder(env.dir.path())
        .customers(&[(&ALICE, "pro")])
        .events(&env.dir.path().join("events.jsonl"))
        .start();
    env.install_stamped_api_logger(&server, &ALICE);
    km_tests::run_ok(
        env.km()
            .args(["init", "--api-key", ALICE.api_key, "--api-url", &server.url])
            .stdin(Stdio::null()),
    );
    let mut cmd = monitor(&env, &["cat"]);
    cmd.env("KM_REFRESH_INTERVAL_SECS", "1");
    let km = Watched::spawn(&mut cmd, LIMIT);
    let stderr = read_all(km.take_stderr().expect("stderr"));
    let mut stdin = km.take_stdin().expect("stdin");
    let mut stdout = BufReader::new(km.take_stdout().expect("stdout"));
    writeln!(stdin, "{FINE}").expect("write");
    let mut echo = String::new();
    stdout.read_line(&mut echo).expect("the echo");
    assert_eq!(echo.trim_end(), FINE);
    // The refresher runs: the authentication at the start and at least one refresh.
    let stats = km_tests::settle(
        LIMIT,
        Duration::from_millis(100),
        || server.control_json("stats"),
        |stats| stats["auth_requests"].as_u64() >= Some(2),
    );
    assert!(stats["auth_requests"].as_u64() >= Some(2), "{stats}");
    // From now on the API holds every request for a minute: the refresher (every second here)
    // is soon inside the plugin's `authenticate`, waiting on km's API client, and api-logger's
    // deliveries wait too.
    server.control("delay?ms=60000");
    std::thread::sleep(Duration::from_millis(2500));
    writeln!(stdin, "{FINE}").expect("write");
    drop(stdin);
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let status = km.wait(
        "km monitor at EOF with a refresh waiting on the API",
        String::new,
    );
    let stderr = stderr.join().expect("stderr reader");
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(
        rest.trim_end(),
        FINE,
        "the last line went through: {stderr}"
    );
}
