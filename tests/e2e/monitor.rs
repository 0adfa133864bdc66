//! `km monitor` end to end: the real `km` binary relaying between a test client (this process)
//! and a real child process. Topics: the relay's bytes ([`relay`]), on every kind of stdio a
//! client may hand km ([`stdio`]), the child's lifetime ([`process`]), real signed plugins
//! watching and misbehaving ([`plugins`]), and `km demo` ([`demo`]).

mod demo;
mod plugins;
mod process;
mod relay;
mod stdio;

pub(crate) use relay::mixed_messages;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use km_tests::settle;
pub(crate) use km_tests::wait_within;
use std::time::Duration;

/// `km monitor` with a throw-away `KM_HOME` under `home`, stdio piped, and a short grace period.
fn monitor(home: &Path, km_args: &[&str], child: &[&str]) -> Command {
    let mut cmd = km_tests::command(&km_tests::km_bin(), home);
    cmd.args(km_args)
        .arg("monitor")
        .args(["--no-plugins", "--"])
        .args(child);
    cmd.env("KM_GRACE_MS", "300");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Writes `input` to the child's stdin on a thread (then closes it) while reading its stdout and
/// stderr, so that neither direction can block the other. Returns (status, stdout, stderr).
pub(crate) fn exchange(mut child: Child, input: Vec<u8>) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || {
        // The child may exit before reading everything; that is for the caller to judge.
        let _ = stdin.write_all(&input);
    });
    let stderr = read_all_async(child.stderr.take().expect("stderr is piped"));
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_end(&mut stdout)
        .expect("reading km's stdout");
    writer.join().expect("the writer thread");
    let status = wait_within(&mut child, Duration::from_secs(60)).expect("km exits");
    (status, stdout, stderr.join().expect("the stderr reader"))
}

fn read_all_async(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        all
    })
}

/// Asserts two byte streams are identical without dumping megabytes on failure.
pub(crate) fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |s: &[u8]| {
        String::from_utf8_lossy(&s[at.saturating_sub(40).min(s.len())..(at + 40).min(s.len())])
            .into_owned()
    };
    panic!(
        "{what}: {} bytes came out, {} went in; first difference at byte {at}\n got: {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    );
}

/// A process with pid `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to be gone.
fn gone_within(pid: u32, limit: Duration) -> bool {
    !settle(
        limit,
        Duration::from_millis(20),
        || alive(pid),
        |alive| !alive,
    )
}

/// Sends `signal` (e.g. `TERM`) to `pid` with the system's `kill`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
