//! `km plugin NAME ARGS...` through the real km with real signed plugins: arguments, standard
//! input and exit codes reach and come back from the plugin; `--help` shows what it offers;
//! `km plugin` lists plugins with commands; a plugin that does not verify is refused exactly as
//! the loader refuses it; a plugin without commands says so.

use std::io::Write;
use std::process::{Output, Stdio};

use km_tests::KmEnv;

fn plugin(env: &KmEnv, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = env
        .km()
        .arg("plugin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("km starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write");
    child.wait_with_output().expect("km exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn arguments_stdin_and_exit_codes_reach_the_plugin_and_come_back() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    let out = plugin(&env, &["test-observer", "echo", "a", "-b", "--c"], b"");
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    assert_eq!(text(&out.stdout), "a -b --c\n");
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let out = plugin(&env, &["test-observer", "cat"], &input);
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    assert_eq!(out.stdout, input, "standard input, whole and byte for byte");
    let out = plugin(&env, &["test-observer", "exit", "5"], b"");
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stderr), "exiting with 5\n");
    let out = plugin(&env, &["test-observer", "where"], b"");
    assert_eq!(
        text(&out.stdout).trim(),
        env.data_dir("test-observer").display().to_string(),
        "the data directory is the one km monitor gives it"
    );
}

#[test]
fn help_and_the_list_of_plugins_with_commands() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    env.install("test-noop", "test-noop");
    let out = plugin(&env, &["test-observer", "--help"], b"");
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    assert!(text(&out.stdout).starts_with("usage: km plugin test-observer"));
    let out = plugin(&env, &[], b"");
    assert!(out.status.success());
    let listed = text(&out.stdout);
    assert!(listed.contains("test-observer"), "{listed}");
    assert!(
        !listed.contains("test-noop"),
        "only plugins with commands: {listed}"
    );
    let out = plugin(&env, &["test-noop", "anything"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("plugin test-noop has no commands"));
    let out = plugin(&env, &["nope"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no plugin named nope"));
}

#[test]
fn a_plugin_that_does_not_verify_is_refused_like_the_loader_does() {
    let env = KmEnv::new();
    let lib = env.install("test-observer", "test-observer");
    let mut bytes = std::fs::read(&lib).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&lib, &bytes).expect("tamper");
    let out = plugin(&env, &["test-observer", "echo", "hi"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", km_tests::describe(&out));
    assert!(out.stdout.is_empty(), "nothing ran");
    let verify = env
        .km()
        .arg("verify-plugin")
        .arg(&lib)
        .output()
        .expect("verify-plugin");
    let reason = text(&verify.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("  verdict:  REFUSED "))
        .map(|r| r.split_once(": ").map_or(r, |(_, why)| why).to_owned())
        .expect("verify-plugin says why");
    assert!(
        text(&out.stderr).contains(&reason),
        "the same reason as the loader's: {reason}\n{}",
        text(&out.stderr)
    );
}
