//! The child's lifetime: exit status (including signals), a child that exits while the client
//! keeps stdin open, stdin closing, signals to km, km killed outright, a closed stdout, and a
//! command that cannot start.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use super::{alive, exchange, gone_within, monitor, send_signal, wait_within};

#[test]
fn exit_status_propagates() {
    let home = tempfile::tempdir().expect("a temp dir");
    for (script, code) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let child = monitor(home.path(), &["-q"], &["sh", "-c", script])
            .spawn()
            .expect("km starts");
        let (status, stdout, _) = exchange(child, Vec::new());
        assert_eq!(status.code(), Some(code), "sh -c '{script}'");
        assert!(stdout.is_empty());
    }
}

#[test]
fn a_child_that_exits_ends_km_while_stdin_stays_open() {
    let home = tempfile::tempdir().expect("a temp dir");
    let mut child = monitor(home.path(), &["-q"], &["sh", "-c", "printf bye; exit 5"])
        .spawn()
        .expect("km starts");
    let _stdin = child.stdin.take(); // held open for the whole test
    let started = Instant::now();
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("read");
    let status =
        wait_within(&mut child, Duration::from_secs(5)).expect("km exits although stdin is open");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(5));
    assert_eq!(stdout, b"bye");
}

#[test]
fn closing_stdin_closes_the_servers_stdin() {
    let home = tempfile::tempdir().expect("a temp dir");
    // `cat` exits on its own when its stdin closes: no signal needed, status 0.
    let child = monitor(home.path(), &["-q"], &["cat"])
        .spawn()
        .expect("km starts");
    let started = Instant::now();
    let (status, stdout, _) = exchange(child, b"hello\n".to_vec());
    assert_eq!(
        (status.code(), stdout.as_slice()),
        (Some(0), &b"hello\n"[..])
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_server_that_ignores_stdin_eof_gets_term_then_kill() {
    let home = tempfile::tempdir().expect("a temp dir");
    // Ignores TERM too, so only KILL ends it: grace (300 ms), TERM, grace, KILL.
    let script = "trap '' TERM; while :; do sleep 0.05; done";
    let child = monitor(home.path(), &["-v"], &["sh", "-c", script])
        .spawn()
        .expect("km starts");
    let started = Instant::now();
    let (status, _, stderr) = exchange(child, Vec::new());
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(137), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("SIGKILL"),
        "{stderr}"
    );
}

/// Starts `km monitor -- sh -c 'echo $$; exec sleep 100'` and returns km and the server's pid.
fn sleeping_server(
    home: &std::path::Path,
) -> (
    std::process::Child,
    u32,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = monitor(home, &["-q"], &["sh", "-c", "echo $$; exec sleep 100"])
        .spawn()
        .expect("km starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the server's pid");
    let pid: u32 = line.trim().parse().expect("a pid");
    assert!(alive(pid));
    (child, pid, stdout)
}

#[test]
fn term_to_km_is_forwarded_and_leaves_no_child_behind() {
    let home = tempfile::tempdir().expect("a temp dir");
    let (mut km, server, _stdout) = sleeping_server(home.path());
    let _stdin = km.stdin.take();
    send_signal(km.id(), "TERM");
    let status = wait_within(&mut km, Duration::from_secs(5)).expect("km exits after TERM");
    assert_eq!(status.code(), Some(143));
    assert!(
        gone_within(server, Duration::from_secs(2)),
        "the server {server} is still running"
    );
}

#[test]
fn int_and_hup_are_forwarded() {
    let home = tempfile::tempdir().expect("a temp dir");
    for (signal, code) in [("INT", 130), ("HUP", 129)] {
        let (mut km, server, _stdout) = sleeping_server(home.path());
        let _stdin = km.stdin.take();
        send_signal(km.id(), signal);
        let status = wait_within(&mut km, Duration::from_secs(5)).expect("km exits");
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert!(gone_within(server, Duration::from_secs(2)));
    }
}

#[test]
fn killing_km_outright_takes_the_server_with_it() {
    let home = tempfile::tempdir().expect("a temp dir");
    let (mut km, server, _stdout) = sleeping_server(home.path());
    let _stdin = km.stdin.take();
    send_signal(km.id(), "KILL");
    let _ = wait_within(&mut km, Duration::from_secs(5)).expect("km is dead");
    assert!(
        gone_within(server, Duration::from_secs(2)),
        "the server {server} was orphaned"
    );
}

#[test]
fn a_closed_stdout_ends_the_session_cleanly() {
    let home = tempfile::tempdir().expect("a temp dir");
    let mut km = monitor(
        home.path(),
        &[],
        &[
            "sh",
            "-c",
            "while :; do echo '{\"jsonrpc\":\"2.0\",\"method\":\"tick\"}'; done",
        ],
    )
    .spawn()
    .expect("km starts");
    let _stdin = km.stdin.take();
    let mut stdout = km.stdout.take().expect("stdout");
    let mut some = [0u8; 4096];
    stdout.read_exact(&mut some).expect("some output");
    drop(stdout);
    let status =
        wait_within(&mut km, Duration::from_secs(5)).expect("km ends when its reader is gone");
    let mut stderr = String::new();
    km.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("error"),
        "a closed pipe is not an error: {stderr}"
    );
    assert_ne!(status.code(), Some(101), "{stderr}");
}

#[test]
fn a_missing_command_is_a_clear_error_and_127() {
    let home = tempfile::tempdir().expect("a temp dir");
    let child = monitor(home.path(), &[], &["no-such-command-km-test"])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, Vec::new());
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(127), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(
            "km: error: cannot start 'no-such-command-km-test': No such file or directory"
        ),
        "{stderr}"
    );
}

#[test]
fn a_command_that_is_not_executable_gives_126() {
    let home = tempfile::tempdir().expect("a temp dir");
    let script = home.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    let child = monitor(
        home.path(),
        &["-q"],
        &[script.to_str().expect("utf-8 path")],
    )
    .spawn()
    .expect("km starts");
    let (status, _, stderr) = exchange(child, Vec::new());
    assert_eq!(
        status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
}
