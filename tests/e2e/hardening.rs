//! Hardening of installs, the private copy and the host, through the real `km` and real signed cdylibs: installs (the file
//! name bound to the signed plugin, the rollback check under the install lock, an overall
//! download deadline, redirects that keep credentials to their origin and never go on in the
//! clear elsewhere), the loader's private copy (created private in a checked base directory),
//! and buggy plugins (a panicking destructor; a rollback record that cannot be written).
//!
//! The HTTP servers here are tiny loopback servers written for the one answer each test needs
//! (a redirect, a trickle): the reference API has no reason to misbehave like that.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use km_tests::{chmod, describe, lib_file_name, plugin_lib, run_ok, settle, KmEnv};
use serde_json::Value;

use crate::strict_modes::{is_root, output_within, OTHER_UID};

const HANG: Duration = Duration::from_secs(120);

/// Copies workspace crate `krate`'s library to `work/FILE`, signs it as `name` `version` and
/// packs it; returns the package.
fn package(env: &KmEnv, krate: &str, file: &str, name: &str, version: &str) -> PathBuf {
    let work = env.dir.path().join(format!("pkg-{name}-{version}-{file}"));
    std::fs::create_dir_all(&work).expect("work dir");
    let lib = work.join(file);
    std::fs::copy(plugin_lib(krate), &lib).expect("copy");
    chmod(&lib, 0o644);
    env.sign_with(&lib, &env.key, name, version, "free", &[]);
    let pkg = work.join(format!("{name}-{version}.kmpkg"));
    run_ok(env.km_sign().args(["pack", "--out"]).arg(&pkg).arg(&lib));
    pkg
}

fn install(env: &KmEnv, what: &Path) -> Output {
    output_within(env.km().arg("install-plugin").arg(what), HANG)
}

#[test]
fn a_signed_package_of_one_plugin_cannot_overwrite_anothers_library() {
    let env = KmEnv::new();
    let logger = package(
        &env,
        "console-logger",
        &lib_file_name("console_logger"),
        "console-logger",
        "1.0.0",
    );
    run_ok(env.km().arg("install-plugin").arg(&logger));
    let installed = env.plugins.join(lib_file_name("console_logger"));
    let before = std::fs::read(&installed).expect("installed");
    // test-noop, validly signed as test-noop, packed under console-logger's file name.
    let evil = package(
        &env,
        "test-noop",
        &lib_file_name("console_logger"),
        "test-noop",
        "9.0.0",
    );
    let out = install(&env, &evil);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused (package)"), "{}", describe(&out));
    assert!(stderr.contains("test-noop"), "{}", describe(&out));
    assert_eq!(std::fs::read(&installed).expect("still there"), before);
    run_ok(env.km().arg("verify-plugin").arg(&installed));
    // Under its own name it installs, beside console-logger.
    let good = package(
        &env,
        "test-noop",
        &lib_file_name("test_noop"),
        "test-noop",
        "9.0.0",
    );
    run_ok(env.km().arg("install-plugin").arg(&good));
    assert_eq!(std::fs::read(&installed).expect("still there"), before);
}

/// Whether some process waits for an flock (a `->` line in /proc/locks).
fn someone_waits_for_a_flock() -> bool {
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("->") && l.contains("FLOCK"))
}

#[test]
fn the_rollback_check_runs_again_under_the_install_lock() {
    let env = KmEnv::new();
    let v1 = package(
        &env,
        "console-logger",
        &lib_file_name("console_logger"),
        "console-logger",
        "1.0.0",
    );
    let state = env.home.join("state");
    std::fs::create_dir_all(&state).expect("state");
    chmod(&state, 0o700);
    // Another km holds the install lock (as while it installs 2.0.0).
    let lock = km_durable::Lock::acquire(&state.join("plugins.lock"), None).expect("lock");
    let child = env
        .km()
        .arg("install-plugin")
        .arg(&v1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("km starts");
    assert!(
        settle(
            HANG,
            Duration::from_millis(20),
            someone_waits_for_a_flock,
            |waits| *waits
        ),
        "km never waited for the install lock"
    );
    // ... and, before releasing it, records 2.0.0 as seen.
    km_durable::write_atomic(
        &state.join("seen-versions.json"),
        br#"{"versions": {"console-logger": "2.0.0"}}"#,
        0o600,
    )
    .expect("record");
    drop(lock);
    let out = child.wait_with_output().expect("km runs");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused (rollback)"),
        "{}",
        describe(&out)
    );
    assert!(
        !env.plugins.join(lib_file_name("console_logger")).exists(),
        "1.0.0 must not be installed over a 2.0.0 recorded meanwhile"
    );
}

/// A loopback server answering each of `answers` to one connection, in order, recording each
/// request's head; it stops after the last one or after two minutes without a connection.
fn serve(answers: Vec<Answer>) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for answer in answers {
            let accepted = settle(
                HANG,
                Duration::from_millis(10),
                || listener.accept().ok(),
                Option::is_some,
            );
            let Some((mut stream, _)) = accepted else {
                return heads;
            };
            stream.set_nonblocking(false).expect("blocking");
            heads.push(read_head(&mut stream));
            answer.send(&mut stream);
        }
        heads
    });
    (port, handle)
}

fn read_head(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

enum Answer {
    Redirect(String),
    NotFound,
    /// 200 with a large Content-Length, then one byte every 100 ms for at most 30 s.
    Trickle,
}

impl Answer {
    fn send(&self, stream: &mut TcpStream) {
        match self {
            Answer::Redirect(to) => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
            Answer::NotFound => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
            Answer::Trickle => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
                );
                for _ in 0..300 {
                    if stream.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

#[test]
fn a_download_has_an_overall_deadline() {
    let env = KmEnv::new();
    let (port, server) = serve(vec![Answer::Trickle]);
    let out = output_within(
        env.km()
            .env("KM_DOWNLOAD_TIMEOUT_SECS", "2")
            .arg("install-plugin")
            .arg(format!("http://127.0.0.1:{port}/slow.kmpkg")),
        HANG,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deadline"),
        "{}",
        describe(&out)
    );
    drop(server);
}

#[test]
fn redirects_never_carry_the_api_key_or_the_customer_token_to_another_origin() {
    let env = KmEnv::new();
    let (other_port, other) = serve(vec![Answer::NotFound]);
    // Another origin: another port (and host name) than the API's.
    let (api_port, api) = serve(vec![Answer::Redirect(format!(
        "http://localhost:{other_port}/elsewhere.kmpkg"
    ))]);
    env.write_config(&format!(
        "api_url = \"http://127.0.0.1:{api_port}\"\napi_key = \"km_live_secret_api_key\"\n"
    ));
    let out = output_within(
        env.km().args([
            "install-plugin",
            "console-logger",
            "--customer-token",
            "ct-secret-token",
        ]),
        HANG,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let api_heads = api.join().expect("api server");
    assert!(
        api_heads[0].contains("authorization: bearer km_live_secret_api_key")
            && api_heads[0].contains("x-km-customer-token: ct-secret-token"),
        "the API itself gets both: {api_heads:?}"
    );
    let other_heads = other.join().expect("other server");
    assert_eq!(
        other_heads.len(),
        1,
        "the redirect was followed: {other_heads:?}"
    );
    assert!(
        !other_heads[0].contains("km_live_secret_api_key")
            && !other_heads[0].contains("ct-secret-token")
            && !other_heads[0].contains("authorization"),
        "credentials leaked to another origin: {other_heads:?}"
    );
}

#[test]
fn a_redirect_to_plain_http_on_another_host_is_refused() {
    let env = KmEnv::new();
    // A name that never resolves (.invalid, RFC 6761): km must refuse before looking it up.
    let (port, server) = serve(vec![Answer::Redirect(
        "http://km-test-host.invalid/p.kmpkg".to_owned(),
    )]);
    let out = output_within(
        env.km()
            .arg("install-plugin")
            .arg(format!("http://127.0.0.1:{port}/p.kmpkg")),
        HANG,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redirect refused") && stderr.contains("plain http"),
        "{}",
        describe(&out)
    );
    assert_eq!(server.join().expect("server").len(), 1);
}

#[test]
fn the_private_copy_is_made_only_in_a_safe_base_directory() {
    let env = KmEnv::new();
    let lib = env.install("test-noop", "test-noop");
    let base = env.dir.path().join("tmp");
    std::fs::create_dir(&base).expect("mkdir");
    let load = |env: &KmEnv| {
        output_within(
            env.km()
                .env("KM_LOAD_VIA_COPY", "1")
                .env("TMPDIR", &base)
                .args(["verify-plugin", "--json", "--load"])
                .arg(&lib),
            HANG,
        )
    };
    // Writable by all and not sticky: another user could swap the copy before it is loaded.
    chmod(&base, 0o777);
    let out = load(&env);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(reports[0]["check"], "permissions", "{reports:#?}");
    assert!(
        reports[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&base.display().to_string()) && r.contains("chmod go-w")),
        "{reports:#?}"
    );
    // A private base: loaded through the copy, which is gone afterwards.
    chmod(&base, 0o700);
    let out = load(&env);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let left: Vec<_> = std::fs::read_dir(&base).expect("ls").collect();
    assert!(
        left.is_empty(),
        "the copy and its directory are removed: {left:?}"
    );
}

#[test]
fn a_plugin_that_panics_in_its_destructor_does_not_take_km_down() {
    let env = KmEnv::new();
    let lib = env.install("test-panic-on-drop", "test-panic-on-drop");
    let out = output_within(
        env.km()
            .args(["verify-plugin", "--json", "--load"])
            .arg(&lib),
        HANG,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(reports[0]["verified"], true, "{reports:#?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("panics in its destructor on purpose"),
        "the panic is reported on stderr: {}",
        describe(&out)
    );
}

/// Runs `cmd` as the unprivileged [`OTHER_UID`] when the tests run as root (after giving it the
/// whole test directory), as the current user otherwise.
fn as_unprivileged(env: &KmEnv, cmd: &mut Command) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", &format!("{OTHER_UID}:{OTHER_UID}")])
            .arg(env.dir.path())
            .status()
            .expect("chown runs");
        assert!(status.success());
        cmd.uid(OTHER_UID).gid(OTHER_UID);
    }
}

#[test]
fn a_rollback_record_that_cannot_be_written_is_reported_and_the_session_goes_on() {
    let env = KmEnv::new();
    env.install("test-noop", "test-noop");
    let state = env.home.join("state");
    std::fs::create_dir_all(state.join("plugins")).expect("state");
    chmod(&state, 0o700);
    let mut cmd = env.km();
    cmd.args(["monitor", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_unprivileged(&env, &mut cmd);
    // Readable, not writable: the record cannot be replaced (km runs unprivileged).
    chmod(&state, 0o500);
    let out = output_within(&mut cmd, HANG);
    chmod(&state, 0o700);
    assert_eq!(
        out.status.code(),
        Some(0),
        "km monitor runs its child and exits with its status\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("rollback protection"),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("test-noop"), "{}", describe(&out));
}
