//! The relay forwards bytes verbatim, in order, both ways at once: every hard case of the issue
//! (non-JSON, empty lines, CRLF, invalid UTF-8, a last line without newline, a 50 MB line), it
//! ends with the child and with its status, and nothing but the child's bytes ever reaches
//! stdout.
//!
//! Every test runs in every [`Setup`]: km's stdin and stdout as pipes and as the Unix stream
//! socketpairs that Node (and so every Electron or Node based MCP client) hands a child (issue
//! 10), each with no plugins and with test-noop and console-logger loaded. The client takes
//! turns as a real one does: it sends, waits for what must come back, then sends more. A relay
//! that holds back bytes it already has hangs there; the watchdog then kills km and the test
//! fails naming the setup, instead of hanging the suite. A session with an interceptor (whose
//! pumps read and write on their own) runs on both kinds of stdio as well.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use km_tests::{spawn_client, ClientStdin, ClientStdio, ClientStdout, KmEnv, Watched};

use super::assert_same_bytes;

/// How long one km session of these tests may take before it counts as hung (the slowest, the
/// 50 MB line through a debug build with plugins, takes a few seconds).
pub(super) const HANG_LIMIT: Duration = Duration::from_secs(120);

/// The kind of stdio km gets and whether plugins watch the stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Setup {
    pub(super) stdio: ClientStdio,
    pub(super) plugins: bool,
}

/// Every setup the relay must work in.
pub(super) const SETUPS: [Setup; 4] = [
    Setup {
        stdio: ClientStdio::Pipes,
        plugins: false,
    },
    Setup {
        stdio: ClientStdio::SocketPairs,
        plugins: false,
    },
    Setup {
        stdio: ClientStdio::Pipes,
        plugins: true,
    },
    Setup {
        stdio: ClientStdio::SocketPairs,
        plugins: true,
    },
];

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stdio = match self.stdio {
            ClientStdio::Pipes => "pipe stdio",
            ClientStdio::SocketPairs => "socketpair stdio",
        };
        let plugins = if self.plugins {
            "test-noop and console-logger loaded"
        } else {
            "no plugins"
        };
        write!(f, "{stdio}, {plugins}")
    }
}

/// A `KM_HOME` for one setup: empty (and `--no-plugins`), or with test-noop and console-logger
/// installed, console-logger writing JSON lines to [`Rig::log`].
pub(super) struct Rig {
    pub(super) setup: Setup,
    env: KmEnv,
    pub(super) log: PathBuf,
}

impl Rig {
    pub(super) fn new(setup: Setup) -> Self {
        let env = KmEnv::new();
        if setup.plugins {
            env.install("test-noop", "test-noop");
            env.install("console-logger", "console-logger");
        }
        let log = env.dir.path().join("console-logger.jsonl");
        Rig { setup, env, log }
    }

    /// A `KM_HOME` with test-intercept (signed with the intercept capability) judging every
    /// client request and blocking those that contain `FORBIDDEN`, and test-noop watching.
    pub(super) fn intercepting(stdio: ClientStdio) -> Self {
        let env = KmEnv::new();
        env.install_signed(
            "test-intercept",
            "test-intercept",
            &["--capability", "intercept"],
        );
        env.install("test-noop", "test-noop");
        env.write_config(
            "[plugins.test-intercept]\ndirections = \"client-to-server\"\nblock = \"FORBIDDEN\"\n",
        );
        let log = env.dir.path().join("console-logger.jsonl");
        Rig {
            setup: Setup {
                stdio,
                plugins: true,
            },
            env,
            log,
        }
    }

    /// `km KM_ARGS monitor [--no-plugins] -- CHILD` with a short grace period; stdio not set.
    pub(super) fn command(&self, km_args: &[&str], child: &[&str]) -> Command {
        self.command_with(km_args, &[], child)
    }

    /// [`Rig::command`] with `km monitor` flags (`--lossless`).
    pub(super) fn command_with(
        &self,
        km_args: &[&str],
        monitor_args: &[&str],
        child: &[&str],
    ) -> Command {
        let mut cmd = self.env.km();
        cmd.args(km_args).arg("monitor").args(monitor_args);
        if !self.setup.plugins {
            cmd.arg("--no-plugins");
        }
        cmd.arg("--").args(child);
        cmd.env("KM_GRACE_MS", "300")
            .env("KM_CONSOLE_LOGGER_OUTPUT", &self.log)
            .env("KM_CONSOLE_LOGGER_FORMAT", "json");
        cmd
    }

    /// Starts km on `child` with this setup's stdio and stderr piped.
    pub(super) fn start(&self, km_args: &[&str], child: &[&str]) -> Running {
        self.start_with(km_args, &[], child)
    }

    /// [`Rig::start`] with `km monitor` flags.
    pub(super) fn start_with(
        &self,
        km_args: &[&str],
        monitor_args: &[&str],
        child: &[&str],
    ) -> Running {
        let mut cmd = self.command_with(km_args, monitor_args, child);
        cmd.stderr(Stdio::piped());
        let (km, stdin, stdout) = spawn_client(cmd, self.setup.stdio, HANG_LIMIT);
        let stderr = km.take_stderr().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut stderr = stderr;
            let _ = stderr.read_to_end(&mut all);
            all
        });
        Running {
            km,
            stdin,
            stdout,
            stderr,
            what: format!("km monitor -- {} ({})", child.join(" "), self.setup),
        }
    }

    /// The lines console-logger wrote.
    pub(super) fn logged_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

/// One step of a client: send `send`, then wait until stdout has produced `wait_for` bytes in
/// all (0: do not wait).
pub(super) struct Turn {
    pub(super) send: Vec<u8>,
    pub(super) wait_for: usize,
}

/// A started km and the client's ends of its stdio.
pub(super) struct Running {
    km: Watched,
    stdin: ClientStdin,
    stdout: ClientStdout,
    stderr: JoinHandle<Vec<u8>>,
    what: String,
}

/// How a session ended.
pub(super) struct Ended {
    pub(super) status: ExitStatus,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: String,
}

impl Running {
    /// Plays `turns` while reading stdout to its end; then ends stdin if `end_input` (else it
    /// stays open until km has exited). Panics if km hangs.
    pub(super) fn converse(self, turns: Vec<Turn>, end_input: bool) -> Ended {
        let Running {
            km,
            mut stdin,
            mut stdout,
            stderr,
            what,
        } = self;
        let (progress, seen) = mpsc::channel::<usize>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        let _ = progress.send(all.len());
                    }
                }
            }
            all
        });
        let writer = std::thread::spawn(move || {
            let mut got = 0;
            for turn in turns {
                // km may exit before reading everything (or be killed when it hangs): the
                // assertions on what came out judge that, not a write error here.
                if stdin.write_all(&turn.send).is_err() {
                    break;
                }
                while got < turn.wait_for {
                    match seen.recv() {
                        Ok(n) => got = n,
                        Err(_) => break,
                    }
                }
            }
            if end_input {
                stdin.end();
            }
            stdin
        });
        let stdout = reader.join().expect("the stdout reader");
        let stdin = writer.join().expect("the stdin writer");
        let stderr =
            String::from_utf8_lossy(&stderr.join().expect("the stderr reader")).into_owned();
        let status = km.wait(&what, || {
            format!(
                "{} bytes had come out on stdout\n--- stderr ---\n{stderr}",
                stdout.len()
            )
        });
        drop(stdin);
        Ended {
            status,
            stdout,
            stderr,
        }
    }
}

/// Splits `bytes` into `n` turns at arbitrary points (mid-line too), each waiting for its echo.
fn echo_turns(bytes: &[u8], n: usize) -> Vec<Turn> {
    let step = bytes.len().div_ceil(n).max(1);
    bytes
        .chunks(step)
        .scan(0, |sent, chunk| {
            *sent += chunk.len();
            Some(Turn {
                send: chunk.to_vec(),
                wait_for: *sent,
            })
        })
        .collect()
}

/// `count` lines of every kind the relay must pass untouched, ending without a newline.
pub(crate) fn mixed_messages(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 80);
    for i in 0..count {
        let line: Vec<u8> = match i % 12 {
            0 => format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"m{i}"}}}}}}"#).into_bytes(),
            1 => format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{"content":[{{"type":"text","text":"ok"}}]}}}}"#, i - 1).into_bytes(),
            2 => format!(r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{i},"progress":1}}}}"#).into_bytes(),
            3 => b"this is not JSON at all".to_vec(),
            4 => Vec::new(),
            5 => format!("{{\"jsonrpc\":\"2.0\",\"id\":\"s{i}\",\"method\":\"ping\"}}\r").into_bytes(),
            6 => vec![0xff, 0xfe, b'{', 0xc3, 0x28, b'}'],
            7 => format!(r#"[{{"jsonrpc":"2.0","id":{i},"method":"a"}},{{"jsonrpc":"2.0","method":"b"}}]"#).into_bytes(),
            8 => format!(r#"{{"jsonrpc":"2.0","id":{i},"error":{{"code":-32601,"message":"no \"such\" method \u00e9"}}}}"#).into_bytes(),
            9 => b"   \t ".to_vec(),
            10 => format!(r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{}}}}}"#, i - 10).into_bytes(),
            _ => "{\"unterminated\": \"".as_bytes().to_vec(),
        };
        out.extend_from_slice(&line);
        if i + 1 < count {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"last/without/newline\"}");
    out
}

#[test]
fn hundred_thousand_mixed_messages_pass_byte_identical_both_ways() {
    let input = mixed_messages(100_000);
    for setup in SETUPS {
        let rig = Rig::new(setup);
        // `cat` echoes: the client->server stream comes back as the server->client stream while
        // it is still being written, so both pumps run at once, and the order of the bytes that
        // come back is the order they went in.
        let ended = rig
            .start(&["-q"], &["cat"])
            .converse(echo_turns(&input, 10), true);
        assert!(
            ended.status.success(),
            "{setup}: km failed: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        assert_same_bytes(
            &ended.stdout,
            &input,
            &format!("{setup}: the echoed stream"),
        );
        assert!(
            ended.stderr.is_empty(),
            "{setup}: -q: stderr should be empty: {}",
            ended.stderr
        );
        if setup.plugins {
            let logged = rig.logged_lines();
            assert!(logged > 1000, "{setup}: console-logger saw {logged} lines");
        }
    }
}

/// With `--lossless` the plugins are handed every line, each once and in order, on
/// every kind of stdio (on pipes km forwards with splice and frames a tee(2) duplicate, on
/// socketpairs it copies): console-logger's log holds exactly one line per message and
/// direction, numbered in sequence, while the stream comes back byte for byte. The client
/// writes in pieces cut anywhere (mid-line too) and does not wait, so chunks end in the middle
/// of lines and the pipes fill up.
#[test]
fn lossless_plugins_are_handed_every_line_once_in_order_on_every_stdio() {
    let input = mixed_messages(60_000);
    for setup in SETUPS.into_iter().filter(|s| s.plugins) {
        let rig = Rig::new(setup);
        let step = 7919;
        let turns: Vec<Turn> = input
            .chunks(step)
            .map(|piece| Turn {
                send: piece.to_vec(),
                wait_for: 0,
            })
            .collect();
        let ended = rig
            .start_with(&["-q"], &["--lossless"], &["cat"])
            .converse(turns, true);
        assert!(
            ended.status.success(),
            "{setup}: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        assert_same_bytes(
            &ended.stdout,
            &input,
            &format!("{setup}: the echoed stream"),
        );
        let log = std::fs::read_to_string(&rig.log).expect("console-logger's log");
        let seqs: Vec<u64> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        // Each of the 60 000 lines once to cat and once back.
        assert_eq!(seqs.len(), 2 * 60_000, "{setup}: lines logged");
        assert!(
            seqs.iter().zip(1..).all(|(seq, want)| *seq == want),
            "{setup}: the lines were logged out of order or twice"
        );
    }
}

#[test]
fn both_directions_carry_different_streams_at_once() {
    let input = mixed_messages(20_000);
    let hello = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\"}\n";
    for setup in SETUPS {
        let rig = Rig::new(setup);
        // The server answers the first line, then sends its own stream while it reads ours
        // into a file that is compared afterwards.
        let received = rig.env.dir.path().join("received");
        let script = format!(
            "IFS= read -r first; printf '%s\\n' \"$first\"; \
             printf 'server line 1\\r\\n\\377\\nno newline'; cat > '{}'",
            received.display()
        );
        let ended = rig.start(&["-q"], &["sh", "-c", &script]).converse(
            vec![
                Turn {
                    send: hello.to_vec(),
                    wait_for: hello.len(),
                },
                Turn {
                    send: input.clone(),
                    wait_for: 0,
                },
            ],
            true,
        );
        assert!(
            ended.status.success(),
            "{setup}: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        let mut want = hello.to_vec();
        want.extend_from_slice(b"server line 1\r\n\xff\nno newline");
        assert_same_bytes(&ended.stdout, &want, &format!("{setup}: server -> client"));
        let got = std::fs::read(&received).expect("the server's copy");
        assert_same_bytes(&got, &input, &format!("{setup}: client -> server"));
    }
}

#[test]
fn a_fifty_megabyte_line_passes() {
    let mut line = Vec::with_capacity(50 * 1024 * 1024 + 200);
    line.extend_from_slice(br#"{"jsonrpc":"2.0","id":1,"result":{"blob":""#);
    line.extend((0..50 * 1024 * 1024).map(|i| b'a' + (i % 26) as u8));
    line.extend_from_slice(b"\"}}\n");
    let after = b"{\"jsonrpc\":\"2.0\",\"method\":\"after\"}\n";
    let mut want = line.clone();
    want.extend_from_slice(after);
    for setup in SETUPS {
        let rig = Rig::new(setup);
        let ended = rig.start(&["-q"], &["cat"]).converse(
            vec![
                Turn {
                    send: line.clone(),
                    wait_for: line.len(),
                },
                Turn {
                    send: after.to_vec(),
                    wait_for: want.len(),
                },
            ],
            true,
        );
        assert!(
            ended.status.success(),
            "{setup}: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        assert_same_bytes(&ended.stdout, &want, &format!("{setup}: the 50 MB line"));
    }
}

#[test]
fn the_first_bytes_are_forwarded_before_the_line_ends() {
    for setup in SETUPS {
        let rig = Rig::new(setup);
        let ended = rig.start(&["-q"], &["cat"]).converse(
            vec![Turn {
                send: b"{\"partial\":".to_vec(),
                wait_for: 11,
            }],
            true,
        );
        assert!(
            ended.status.success(),
            "{setup}: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        assert_same_bytes(
            &ended.stdout,
            b"{\"partial\":",
            &format!("{setup}: the partial line"),
        );
    }
}

#[test]
fn km_ends_with_the_child_and_its_status_while_stdin_stays_open() {
    let request = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    for (end, code) in [("exit 7", 7), ("kill -TERM $$", 143)] {
        // The server answers one request, then ends: km must end with it, with its status,
        // although the client keeps stdin open.
        let script = format!("IFS= read -r line; printf '%s\\n' \"$line\"; {end}");
        for setup in SETUPS {
            let rig = Rig::new(setup);
            let ended = rig.start(&["-q"], &["sh", "-c", &script]).converse(
                vec![Turn {
                    send: request.to_vec(),
                    wait_for: request.len(),
                }],
                false,
            );
            assert_eq!(
                ended.status.code(),
                Some(code),
                "{setup}: sh -c '{script}'\n{}",
                ended.stderr
            );
            assert_same_bytes(&ended.stdout, request, &format!("{setup}: the answer"));
        }
    }
}

#[test]
fn nothing_but_the_childs_bytes_reaches_stdout_even_verbose() {
    let request = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}\n";
    for setup in SETUPS {
        let rig = Rig::new(setup);
        for flags in [&[][..], &["-v"], &["-vv"]] {
            let ended = rig
                .start(
                    flags,
                    &[
                        "sh",
                        "-c",
                        "printf 'only this'; echo 'to stderr' >&2; cat >/dev/null",
                    ],
                )
                .converse(
                    vec![Turn {
                        send: request.to_vec(),
                        wait_for: 9,
                    }],
                    true,
                );
            assert!(
                ended.status.success(),
                "{setup} {flags:?}: {:?}",
                ended.status
            );
            assert_same_bytes(&ended.stdout, b"only this", &format!("{setup}: stdout"));
            assert!(
                ended.stderr.contains("to stderr"),
                "{setup}: the child's stderr passes through: {}",
                ended.stderr
            );
            if !flags.is_empty() {
                assert!(
                    ended.stderr.contains("km: "),
                    "{setup}: -v says something on stderr: {}",
                    ended.stderr
                );
            }
        }
    }
}

#[test]
fn an_intercepting_session_relays_and_answers_blocked_requests() {
    let call = |id: u64, text: &str| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{text}\"}}}}}}\n"
        )
        .into_bytes()
    };
    let (first, blocked, last) = (call(1, "fine"), call(2, "FORBIDDEN"), call(3, "fine too"));
    for stdio in ClientStdio::ALL {
        // The intercepting pump reads the client and km answers the blocked request into the
        // client's stdout; the server's side is relayed by the registering pump.
        let rig = Rig::intercepting(stdio);
        let setup = rig.setup;
        let ended = rig.start(&["-q"], &["cat"]).converse(
            vec![
                Turn {
                    send: first.clone(),
                    wait_for: first.len(),
                },
                Turn {
                    send: blocked.clone(),
                    wait_for: first.len() + 1,
                },
                Turn {
                    send: last.clone(),
                    wait_for: 0,
                },
            ],
            true,
        );
        assert!(
            ended.status.success(),
            "{setup}: {:?}\n{}",
            ended.status,
            ended.stderr
        );
        let text = String::from_utf8_lossy(&ended.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{setup}: {text}");
        assert_eq!(lines[0].as_bytes(), &first[..first.len() - 1], "{setup}");
        let answer: serde_json::Value = serde_json::from_str(lines[1]).expect("a JSON-RPC error");
        assert_eq!(answer["id"], 2, "{setup}: {answer}");
        assert!(answer["error"].is_object(), "{setup}: {answer}");
        assert_eq!(lines[2].as_bytes(), &last[..last.len() - 1], "{setup}");
    }
}
