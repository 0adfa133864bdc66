//! The transport over loopback: the router's answers reach the client, the body cap holds while
//! reading (declared and chunked bodies), requests are answered concurrently, and behind TLS
//! the server offers exactly the versions it was configured with.

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
    let running = start(fixture.config().listen, None, state, routes::router()).expect("listening");
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
    let server = start(
        fixture.config().listen,
        None,
        state.clone(),
        routes::router(),
    )
    .expect("listening");
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

// --- TLS ---

struct TestCert {
    ca_der: rustls::pki_types::CertificateDer<'static>,
    settings: crate::config::TlsSettings,
}

/// A CA and a certificate for 127.0.0.1 signed by it, written into `dir`.
fn test_cert(dir: &std::path::Path, versions: &[crate::config::TlsVersion]) -> TestCert {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
    TestCert {
        ca_der: ca.der().clone(),
        settings: crate::config::TlsSettings {
            cert: cert_path,
            key: key_path,
            versions: versions.to_vec(),
        },
    }
}

/// Connects with a client offering `versions` and trusting the test CA; the version agreed on,
/// or the handshake error.
fn handshake(
    url: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(rustls::ProtocolVersion, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("the CA is usable");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = url.trim_start_matches("https://");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("connection");
    let socket = TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let request =
        format!("GET /api/public-key HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    // The server closes after answering; rustls reports a close without close_notify as an
    // error, which does not matter once the answer is in.
    let _ = tls.read_to_end(&mut text);
    let version = tls
        .conn
        .protocol_version()
        .ok_or_else(|| "no version agreed".to_owned())?;
    Ok((version, String::from_utf8_lossy(&text).into_owned()))
}

fn start_tls(fixture: &Fixture, cert: &TestCert) -> Running {
    let state = Arc::new(fixture.state(&fixture.config()));
    let tls = tls_config(&cert.settings).expect("the TLS config builds");
    start(fixture.config().listen, Some(tls), state, routes::router()).expect("listening")
}

#[test]
fn a_tls13_server_answers_over_tls13_only() {
    use crate::config::TlsVersion;
    let fixture = Fixture::new();
    let cert = test_cert(fixture.dir.path(), &[TlsVersion::Tls13]);
    let server = start_tls(&fixture, &cert);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let (version, text) = handshake(
        &server.url,
        &cert.ca_der,
        &[&rustls::version::TLS12, &rustls::version::TLS13],
    )
    .expect("TLS 1.3 handshake");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"public_key\""), "{text}");
    let refused = handshake(&server.url, &cert.ca_der, &[&rustls::version::TLS12]);
    assert!(refused.is_err(), "a TLS 1.2 client got in: {refused:?}");
}

#[test]
fn a_tls12_only_server_can_be_made_for_refusal_tests() {
    use crate::config::TlsVersion;
    let fixture = Fixture::new();
    let cert = test_cert(fixture.dir.path(), &[TlsVersion::Tls12]);
    let server = start_tls(&fixture, &cert);
    let (version, text) = handshake(
        &server.url,
        &cert.ca_der,
        &[&rustls::version::TLS12, &rustls::version::TLS13],
    )
    .expect("TLS 1.2 handshake");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let refused = handshake(&server.url, &cert.ca_der, &[&rustls::version::TLS13]);
    assert!(
        refused.is_err(),
        "a TLS 1.3-only client got in: {refused:?}"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_at_start() {
    use crate::config::TlsVersion;
    let fixture = Fixture::new();
    let mut cert = test_cert(fixture.dir.path(), &[TlsVersion::Tls13]);
    let other = rcgen::KeyPair::generate().expect("key");
    let other_path = fixture.path("other.key.pem");
    std::fs::write(&other_path, other.serialize_pem()).expect("write");
    cert.settings.key = other_path;
    let error = tls_config(&cert.settings).expect_err("mismatched key");
    assert!(
        format!("{error:#}").contains("does not go with"),
        "{error:#}"
    );
    cert.settings.cert = fixture.path("missing.pem");
    let error = tls_config(&cert.settings).expect_err("missing certificate");
    assert!(format!("{error:#}").contains("missing.pem"), "{error:#}");
}
