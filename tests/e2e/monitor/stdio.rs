//! km's stdin and stdout as every other kind of file a client may hand it: a
//! terminal, regular files (also one opened for appending, as `>>` does), `/dev/null`,
//! `SOCK_SEQPACKET` socketpairs, one socket as both stdin and stdout (socat, inetd), and a
//! socket that was never connected; each
//! with no plugins and with test-noop and console-logger loaded. Pipes and the stream
//! socketpairs of Node are in [`super::relay`], whose rig and watchdog these tests share: a
//! relay that holds bytes back makes a test fail with the setup named, never hang.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitStatus, Stdio};

use km_tests::{ClientStdio, Watched};
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::pty::OpenptFlags;
use rustix::termios::{LocalModes, OptionalActions};

use super::assert_same_bytes;
use super::relay::{mixed_messages, Rig, Setup, HANG_LIMIT};

/// With no plugins, then with plugins; the stdio kind of the setup is not used here.
fn rigs() -> impl Iterator<Item = Rig> {
    [false, true].into_iter().map(|plugins| {
        Rig::new(Setup {
            stdio: ClientStdio::Pipes,
            plugins,
        })
    })
}

/// Reads until `n` bytes came or the stream ended (a killed km ends it); never panics, so that
/// the watchdog's verdict is what a hang reports.
fn read_up_to(from: &mut impl Read, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    let mut have = 0;
    while have < n {
        match from.read(&mut got[have..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => have += k,
        }
    }
    got.truncate(have);
    got
}

/// Waits for km, naming the test's situation if it hung.
fn finish(km: &Watched, what: &str, rig: &Rig) -> ExitStatus {
    km.wait(&format!("{what} ({})", name(rig)), String::new)
}

/// "no plugins" or "plugins loaded", for messages.
fn name(rig: &Rig) -> &'static str {
    if rig.setup.plugins {
        "test-noop and console-logger loaded"
    } else {
        "no plugins"
    }
}

/// A pseudo-terminal: (controller, terminal). The terminal is opened without becoming anyone's
/// controlling terminal.
fn pty() -> (File, File) {
    let controller = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    rustix::pty::grantpt(&controller).expect("grantpt");
    rustix::pty::unlockpt(&controller).expect("unlockpt");
    let name = rustix::pty::ptsname(&controller, Vec::new()).expect("ptsname");
    let terminal = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("opening the terminal");
    (File::from(controller), File::from(terminal))
}

#[test]
fn a_terminal_as_stdin_is_relayed_line_by_line() {
    let lines: [&[u8]; 2] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n",
    ];
    for rig in rigs() {
        // A person typing at km: the terminal in its usual line mode, without echo.
        let (mut controller, terminal) = pty();
        let mut modes = rustix::termios::tcgetattr(&terminal).expect("tcgetattr");
        modes.local_modes.remove(LocalModes::ECHO);
        rustix::termios::tcsetattr(&terminal, OptionalActions::Now, &modes).expect("tcsetattr");
        let mut cmd = rig.command(&["-q"], &["cat"]);
        cmd.stdin(Stdio::from(terminal))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let mut stdout = km.take_stdout().expect("stdout is piped");
        let mut got = Vec::new();
        for line in lines {
            // Write errors are left to the watchdog's verdict (a hung km is killed), as are
            // short reads.
            let _ = controller.write_all(line);
            got.extend(read_up_to(&mut stdout, line.len()));
        }
        // Ctrl-D at the start of a line: the end of input.
        let _ = controller.write_all(&[4]);
        got.extend(read_up_to(&mut stdout, usize::from(u8::MAX)));
        let status = finish(&km, "a terminal as stdin", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&got, &lines.concat(), name(&rig));
    }
}

#[test]
fn a_terminal_as_stdout_gets_each_answer_at_once() {
    let lines: [&[u8]; 2] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n",
    ];
    for rig in rigs() {
        // Raw mode, so that the terminal passes the bytes as they are (no CR added).
        let (mut controller, terminal) = pty();
        let mut modes = rustix::termios::tcgetattr(&terminal).expect("tcgetattr");
        modes.make_raw();
        rustix::termios::tcsetattr(&terminal, OptionalActions::Now, &modes).expect("tcsetattr");
        let mut cmd = rig.command(&["-q"], &["cat"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(terminal))
            .stderr(Stdio::null());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let mut stdin = km.take_stdin().expect("stdin is piped");
        let mut got = Vec::new();
        for line in lines {
            let _ = stdin.write_all(line);
            got.extend(read_up_to(&mut controller, line.len()));
        }
        drop(stdin);
        let status = finish(&km, "a terminal as stdout", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&got, &lines.concat(), name(&rig));
    }
}

#[test]
fn regular_files_as_stdin_and_stdout_also_appending() {
    let input = mixed_messages(20_000);
    for rig in rigs() {
        for append in [false, true] {
            let dir = tempfile::tempdir().expect("a temp dir");
            let (from, to) = (dir.path().join("in"), dir.path().join("out"));
            std::fs::write(&from, &input).expect("writing the input file");
            let earlier = b"written before km ran\n";
            std::fs::write(&to, if append { &earlier[..] } else { b"" }).expect("output file");
            let output = std::fs::OpenOptions::new()
                .write(true)
                .append(append)
                .open(&to)
                .expect("opening the output file");
            let mut cmd = rig.command(&["-q"], &["cat"]);
            cmd.stdin(Stdio::from(File::open(&from).expect("input file")))
                .stdout(Stdio::from(output))
                .stderr(Stdio::null());
            let km = Watched::spawn(&mut cmd, HANG_LIMIT);
            drop(cmd);
            let status = finish(&km, "regular files as stdin and stdout", &rig);
            let what = format!("{}, appending: {append}", name(&rig));
            assert!(status.success(), "{what}: {status:?}");
            let mut want = if append { earlier.to_vec() } else { Vec::new() };
            want.extend_from_slice(&input);
            let got = std::fs::read(&to).expect("reading the output file");
            assert_same_bytes(&got, &want, &what);
        }
    }
}

#[test]
fn dev_null_as_stdin_and_as_stdout() {
    for rig in rigs() {
        let mut cmd = rig.command(&["-q"], &["sh", "-c", "printf ready; cat"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let got = read_up_to(&mut km.take_stdout().expect("stdout"), 100);
        let status = finish(&km, "/dev/null as stdin", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&got, b"ready", name(&rig));

        let mut cmd = rig.command(&["-q"], &["sh", "-c", "cat; echo done >&2"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let mut stdin = km.take_stdin().expect("stdin");
        let _ = stdin.write_all(&mixed_messages(1000));
        drop(stdin);
        let stderr = read_up_to(&mut km.take_stderr().expect("stderr"), 100);
        let status = finish(&km, "/dev/null as stdout", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&stderr, b"done\n", name(&rig));
    }
}

/// A `SOCK_SEQPACKET` socketpair: (the client's end, km's end).
fn packet_pair() -> (File, OwnedFd) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("a seqpacket socketpair");
    (File::from(ours), theirs)
}

#[test]
fn seqpacket_socketpairs_as_stdin_and_stdout_lose_no_byte() {
    // Node cannot make these, but a client that made one must not hang km or lose a byte: a
    // packet larger than km's 64 KiB reads comes through whole.
    let big: Vec<u8> = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":\""
        .iter()
        .copied()
        .chain((0..150_000u32).map(|i| b'a' + (i % 26) as u8))
        .chain(*b"\"}\n")
        .collect();
    let packets: [&[u8]; 3] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
        &big,
        b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}\n",
    ];
    for rig in rigs() {
        let (stdin, km_stdin) = packet_pair();
        let (mut stdout, km_stdout) = packet_pair();
        let mut cmd = rig.command(&["-q"], &["cat"]);
        cmd.stdin(Stdio::from(km_stdin))
            .stdout(Stdio::from(km_stdout))
            .stderr(Stdio::null());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let mut got = Vec::new();
        for packet in packets {
            let _ = (&stdin).write_all(packet);
            let want = got.len() + packet.len();
            let mut buf = vec![0u8; 256 * 1024];
            while got.len() < want {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        }
        let _ = rustix::net::shutdown(&stdin, rustix::net::Shutdown::Write);
        let status = finish(&km, "seqpacket socketpairs", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&got, &packets.concat(), name(&rig));
    }
}

/// One Unix stream socket as both stdin and stdout of `km -q monitor -- CHILD`, stderr piped:
/// (km, the client's end of the socket).
fn on_one_socket(rig: &Rig, child: &[&str]) -> (Watched, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let also = theirs.try_clone().expect("dup");
    let mut cmd: Command = rig.command(&["-q"], child);
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(also)))
        .stderr(Stdio::piped());
    let km = Watched::spawn(&mut cmd, HANG_LIMIT);
    drop(cmd);
    (km, ours)
}

#[test]
fn one_socket_as_both_stdin_and_stdout_half_closes_cleanly() {
    let lines: [&[u8]; 2] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n",
    ];
    for rig in rigs() {
        let (km, mut socket) = on_one_socket(&rig, &["cat"]);
        let mut got = Vec::new();
        for line in lines {
            let _ = socket.write_all(line);
            got.extend(read_up_to(&mut socket, line.len()));
        }
        // The client is done sending but still reading: the server's end of output must come
        // through the same socket, as its end of the stream.
        let _ = socket.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
        let stderr = read_up_to(&mut km.take_stderr().expect("stderr"), 64 * 1024);
        let status = finish(&km, "one socket as stdin and stdout", &rig);
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(status.success(), "{}: {status:?}\n{stderr}", name(&rig));
        assert_same_bytes(&got, &lines.concat(), name(&rig));
        assert!(rest.is_empty(), "{}: {rest:?}", name(&rig));
        assert!(stderr.is_empty(), "{}: {stderr}", name(&rig));
    }
}

#[test]
fn a_client_that_leaves_with_output_unread_ends_the_session_without_an_error() {
    for rig in rigs() {
        let (km, socket) = on_one_socket(&rig, &["sh", "-c", "echo hello; exec cat"]);
        // Once the server's line is in the client's socket, the client goes away without
        // reading it; km's next read of the socket then says ECONNRESET.
        let mut first = [0u8; 1];
        rustix::net::recv(&socket, &mut first[..], rustix::net::RecvFlags::PEEK)
            .expect("the server's line arrives");
        drop(socket);
        let stderr = read_up_to(&mut km.take_stderr().expect("stderr"), 64 * 1024);
        let status = finish(&km, "a client that left", &rig);
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(status.success(), "{}: {status:?}\n{stderr}", name(&rig));
        assert!(
            !stderr.contains("error") && !stderr.contains("reset"),
            "{}: a client that left is not an error: {stderr}",
            name(&rig)
        );
    }
}

#[test]
fn a_stdout_socket_that_is_also_stderr_stays_open_for_stderr() {
    for rig in rigs() {
        // `2>&1` onto a socket: when the server closes its stdout, km must not shut the socket
        // down, or what the server says on stderr afterwards is lost.
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        let also = theirs.try_clone().expect("dup");
        let mut cmd = rig.command(
            &["-q"],
            &[
                "sh",
                "-c",
                "printf 'out\\n'; exec >&-; sleep 0.2; echo 'late stderr' >&2",
            ],
        );
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::from(OwnedFd::from(also)));
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let _stdin = km.take_stdin();
        let mut got = Vec::new();
        let _ = ours.read_to_end(&mut got);
        let status = finish(&km, "stdout and stderr on one socket", &rig);
        assert!(status.success(), "{}: {status:?}", name(&rig));
        assert_same_bytes(&got, b"out\nlate stderr\n", name(&rig));
    }
}

#[test]
fn a_socket_that_was_never_connected_as_stdout_is_a_clear_error() {
    for rig in rigs() {
        let unconnected =
            rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).expect("a socket");
        let mut cmd = rig.command(&[], &["sh", "-c", "echo hello; cat >/dev/null"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(unconnected))
            .stderr(Stdio::piped());
        let km = Watched::spawn(&mut cmd, HANG_LIMIT);
        drop(cmd);
        let stdin = km.take_stdin();
        let mut stderr = km.take_stderr().expect("stderr");
        // The error comes while the client still has stdin open; then the client leaves.
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&text).contains("writing: ") {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
        drop(stdin);
        text.extend(read_up_to(&mut stderr, 64 * 1024));
        let status = finish(&km, "an unconnected socket as stdout", &rig);
        let text = String::from_utf8_lossy(&text);
        assert!(status.success(), "{}: {status:?}\n{text}", name(&rig));
        assert!(
            text.contains(
                "km: error: relay server to client: writing: Transport endpoint is not connected"
            ),
            "{}: {text}",
            name(&rig)
        );
    }
}
