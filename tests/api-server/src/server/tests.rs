//! The transport over loopback: the router's answers reach the client, the body cap holds while
//! reading (declared and chunked bodies), and requests are answered concurrently.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::*;
use crate::testing::Fixture;

/// Sends `head` (request line and headers, without the blank line) and `body`; returns the
/// status and the raw response.
fn send(url: &str, head: &str, body: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!("{head}\r\nhost: {addr}\r\nconnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // The server may answer 413 and close before reading everything: a failed write is then
    // expected, and the answer is still there to read.
    let _ = stream.write_all(&request);
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(url: &str, path: &str) -> (u16, String) {
    send(url, &format!("GET {path} HTTP/1.1"), b"")
}

fn start_fixture() -> (Fixture, Running) {
    let fixture = Fixture::new();
    let state = Arc::new(fixture.state(&fixture.config()));
    let running = start(fixture.config().listen, state, routes::router()).expect("listening");
    (fixture, running)
}

#[test]
fn answers_reach_the_client_with_status_headers_and_body() {
    let (_fixture, server) = start_fixture();
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let (status, text) = get(&server.url, "/api/public-key");
    assert_eq!(status, 200);
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    assert!(text.contains("\"public_key\""), "{text}");
}

#[test]
fn unknown_routes_are_404_and_other_methods_405_over_http() {
    let (_fixture, server) = start_fixture();
    assert_eq!(get(&server.url, "/api/no-such-thing").0, 404);
    assert_eq!(get(&server.url, "/").0, 404);
    let (status, text) = send(
        &server.url,
        "DELETE /api/public-key HTTP/1.1\r\ncontent-length: 0",
        b"",
    );
    assert_eq!(status, 405);
    assert!(text.to_ascii_lowercase().contains("allow: get"), "{text}");
}

#[test]
fn bodies_over_the_cap_are_refused_while_reading() {
    let (_fixture, server) = start_fixture();
    let cap = routes::MAX_REQUEST_BODY as usize;
    // Declared too large: refused from the header, whatever follows.
    let (status, _) = send(
        &server.url,
        &format!(
            "POST /api/events/batch HTTP/1.1\r\ncontent-length: {}",
            cap + 1
        ),
        b"{}",
    );
    assert_eq!(status, 413);
    // Chunked, with no length declared: refused once the cap is passed.
    let mut chunked = Vec::new();
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..(cap / chunk.len() + 1) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _) = send(
        &server.url,
        "POST /api/events/batch HTTP/1.1\r\ntransfer-encoding: chunked",
        &chunked,
    );
    assert_eq!(status, 413);
    // At the cap, the body reaches the handler (which refuses it for want of a token).
    let body = vec![b' '; cap];
    let (status, _) = send(
        &server.url,
        &format!("POST /api/events/batch HTTP/1.1\r\ncontent-length: {cap}"),
        &body,
    );
    assert_eq!(status, 401);
}

#[test]
fn a_delayed_request_does_not_hold_up_the_others() {
    let fixture = Fixture::new();
    let state = Arc::new(fixture.state(&fixture.config()));
    let server =
        start(fixture.config().listen, state.clone(), routes::router()).expect("listening");
    // Long enough that the delayed request cannot finish while the test runs.
    let (status, _) = send(
        &server.url,
        "POST /control/delay?ms=600000 HTTP/1.1\r\ncontent-length: 0",
        b"",
    );
    assert_eq!(status, 200);
    let (done_tx, done_rx) = mpsc::channel();
    let url = server.url.clone();
    std::thread::spawn(move || {
        let answer = get(&url, "/api/public-key");
        let _ = done_tx.send(answer.0);
    });
    // Until the delayed request has passed the guard's counter (and so is sleeping).
    while state.stats.api_requests.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (status, _) = send(
        &server.url,
        "POST /control/delay?ms=0 HTTP/1.1\r\ncontent-length: 0",
        b"",
    );
    assert_eq!(
        status, 200,
        "a control is answered while an /api/ request waits"
    );
    let (status, _) = get(&server.url, "/api/public-key");
    assert_eq!(
        status, 200,
        "a new /api/ request is answered while the first still waits"
    );
    assert!(
        done_rx.try_recv().is_err(),
        "the delayed request is still waiting"
    );
}
