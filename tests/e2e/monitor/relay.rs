//! The relay forwards bytes verbatim, in order, both ways at once: every hard case of the issue
//! (non-JSON, empty lines, CRLF, invalid UTF-8, a last line without newline, a 50 MB line), and
//! nothing but the child's bytes ever reaches stdout.

use super::{assert_same_bytes, exchange, monitor};

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
    let home = tempfile::tempdir().expect("a temp dir");
    let input = mixed_messages(100_000);
    // `cat` echoes: the client->server stream comes back as the server->client stream while it is
    // still being written, so both pumps run at once.
    let child = monitor(home.path(), &["-q"], &["cat"])
        .spawn()
        .expect("km starts");
    let (status, stdout, stderr) = exchange(child, input.clone());
    assert!(
        status.success(),
        "km failed: {status:?}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    assert_same_bytes(&stdout, &input, "the echoed stream");
    assert!(
        stderr.is_empty(),
        "-q: stderr should be empty: {}",
        String::from_utf8_lossy(&stderr)
    );
}

#[test]
fn both_directions_carry_different_streams_at_once() {
    let home = tempfile::tempdir().expect("a temp dir");
    let input = mixed_messages(20_000);
    // The server sends its own stream (its script) while reading ours; it reports what it read
    // as a checksum-like byte count and the bytes themselves go to a file we compare.
    let dir = tempfile::tempdir().expect("a temp dir");
    let received = dir.path().join("received");
    let script = format!(
        "printf 'server line 1\\r\\n\\377\\nno newline'; cat > '{}'",
        received.display()
    );
    let child = monitor(home.path(), &["-q"], &["sh", "-c", &script])
        .spawn()
        .expect("km starts");
    let (status, stdout, _) = exchange(child, input.clone());
    assert!(status.success(), "{status:?}");
    assert_same_bytes(
        &stdout,
        b"server line 1\r\n\xff\nno newline",
        "server -> client",
    );
    let got = std::fs::read(&received).expect("the server's copy");
    assert_same_bytes(&got, &input, "client -> server");
}

#[test]
fn a_fifty_megabyte_line_passes() {
    let home = tempfile::tempdir().expect("a temp dir");
    let mut input = Vec::with_capacity(50 * 1024 * 1024 + 200);
    input.extend_from_slice(br#"{"jsonrpc":"2.0","id":1,"result":{"blob":""#);
    input.extend((0..50 * 1024 * 1024).map(|i| b'a' + (i % 26) as u8));
    input.extend_from_slice(b"\"}}\n{\"jsonrpc\":\"2.0\",\"method\":\"after\"}\n");
    let child = monitor(home.path(), &["-q"], &["cat"])
        .spawn()
        .expect("km starts");
    let (status, stdout, _) = exchange(child, input.clone());
    assert!(status.success(), "{status:?}");
    assert_same_bytes(&stdout, &input, "the 50 MB line");
}

#[test]
fn nothing_but_the_childs_bytes_reaches_stdout_even_verbose() {
    let home = tempfile::tempdir().expect("a temp dir");
    for flags in [&[][..], &["-v"], &["-vv"]] {
        let child = monitor(
            home.path(),
            flags,
            &[
                "sh",
                "-c",
                "printf 'only this'; echo 'to stderr' >&2; cat >/dev/null",
            ],
        )
        .spawn()
        .expect("km starts");
        let (status, stdout, stderr) = exchange(
            child,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}\n".to_vec(),
        );
        assert!(status.success(), "{flags:?}: {status:?}");
        assert_same_bytes(&stdout, b"only this", "stdout");
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(
            stderr.contains("to stderr"),
            "the child's stderr passes through: {stderr}"
        );
        if !flags.is_empty() {
            assert!(
                stderr.contains("km: "),
                "-v says something on stderr: {stderr}"
            );
        }
    }
}

#[test]
fn the_first_bytes_are_forwarded_before_the_line_ends() {
    use std::io::{Read, Write};
    let home = tempfile::tempdir().expect("a temp dir");
    let mut child = monitor(home.path(), &["-q"], &["cat"])
        .spawn()
        .expect("km starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    stdin.write_all(b"{\"partial\":").expect("write");
    stdin.flush().expect("flush");
    let mut got = [0u8; 11];
    stdout
        .read_exact(&mut got)
        .expect("the partial line comes through without a newline");
    assert_eq!(&got, b"{\"partial\":");
    drop(stdin);
    let status =
        super::wait_within(&mut child, std::time::Duration::from_secs(10)).expect("km exits");
    assert!(status.success());
}
