//! The HTTP transport: hyper 1 (HTTP/1.1) on a loopback address, optionally behind TLS
//! (tokio-rustls), the request log.
//!
//! Why hyper and not tiny_http, which this module used first: tiny_http's TLS feature builds its
//! own rustls configuration (end-of-life rustls 0.20, TLS 1.2 and 1.3) and takes none from the
//! caller, so it can serve neither TLS 1.3 alone, which km requires, nor TLS 1.2 alone, which
//! the test of km's refusal needs. hyper, hyper-util and tokio-rustls are already in the lock
//! through reqwest; the rustls config is built here with the versions asked for
//! (`--tls-versions`), so both servers are one flag apart.
//!
//! A tokio runtime of its own runs on one thread ("accept") with two workers: it accepts
//! connections, does the TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]; a failed one is logged
//! on stderr with the peer and rustls' reason) and lets hyper read requests. Each request's body
//! is read under the router's cap (a declared length over it is refused without reading; an
//! undeclared one is read up to the cap and refused past it), converted to the server's own
//! [`Request`], and answered by the [`Router`] on tokio's blocking pool: handlers are synchronous
//! and may block (the delay control sleeps for seconds by design), so each request in flight has
//! a thread of its own and a held request never holds up another, in particular the control
//! request that ends the delay. Each request is logged on stderr as
//! `km-api-server: METHOD PATH -> STATUS`. The handlers and the router do not know which
//! transport carries them.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{DbLocation, ServeConfig, TlsSettings, TlsVersion};
use crate::customers_file::CustomersFile;
use crate::http::{Method, Request, Response};
use crate::keys::TokenSigner;
use crate::limits::RateLimiter;
use crate::router::Router;
use crate::routes;
use crate::state::{AppState, Controls, Stats};
use crate::store::Store;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `config` until the process is killed: prints the base URL as the first line on
/// stdout, then answers requests.
pub(crate) fn run(config: ServeConfig) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let state = build_state(&config)?;
    let running = start(config.listen, tls, Arc::new(state), routes::router())?;
    println!("{}", running.url);
    std::io::stdout()
        .flush()
        .context("writing the address on stdout")?;
    eprintln!("km-api-server: listening on {}", running.url);
    running.wait();
    Ok(())
}

/// Opens everything `config` names: the key, the database, the customers file, the events
/// export. Every failure names the file and what is wrong.
pub(crate) fn build_state(config: &ServeConfig) -> anyhow::Result<AppState> {
    let signer = TokenSigner::read(&config.signing_key)?;
    let store = Store::open(&config.db).with_context(|| match &config.db {
        DbLocation::Memory => "opening the in-memory database".to_owned(),
        DbLocation::File(path) => format!("opening the database {}", path.display()),
    })?;
    eprintln!(
        "km-api-server: database at schema version {}, {} event(s) stored",
        store
            .schema_version()
            .context("reading the schema version")?,
        store.event_count().context("counting events")?
    );
    let customers_file = config
        .customers
        .as_deref()
        .map(|path| CustomersFile::load(path, &store))
        .transpose()?;
    if customers_file.is_none() {
        let n = store.active_customers().context("counting customers")?;
        eprintln!("km-api-server: {n} customer(s) in the database, no customers file");
    }
    if let Some(path) = &config.events {
        let report = store
            .export_events_to(path)
            .with_context(|| format!("attaching the events file {}", path.display()))?;
        eprintln!(
            "km-api-server: {} event(s) in {}: {} imported, {} already stored, {} line(s) \
             skipped",
            report.imported + report.known,
            path.display(),
            report.imported,
            report.known,
            report.skipped
        );
    }
    let teams_dir = config
        .teams_dir
        .as_deref()
        .map(|path| crate::teams_dir::TeamsDir::load(path, &store))
        .transpose()?;
    Ok(AppState {
        teams: crate::teams_dir::Teams::new(teams_dir),
        store,
        signer,
        customers_file,
        plugins_dir: config.plugins_dir.clone(),
        token_ttl: config.token_ttl,
        controls: Controls {
            delay_ms: config.delay_ms.into(),
            fail_after: config.fail_after,
            ..Controls::default()
        },
        stats: Stats::default(),
        limiter: RateLimiter::new(config.rate_limit),
        abuse_threshold: config.abuse_threshold,
    })
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the TLS certificate file {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

/// The rustls server configuration `settings` ask for: their certificate chain and key, and
/// exactly the TLS versions listed.
pub(crate) fn tls_config(settings: &TlsSettings) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).with_context(|| {
        format!(
            "reading the TLS private key {} (PEM: PKCS#8, SEC1 or PKCS#1)",
            settings.key.display()
        )
    })?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = settings
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&versions)
    .context("configuring the TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "the TLS key {} does not go with the certificate {}",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    Ok(Arc::new(config))
}

/// A listening server.
pub(crate) struct Running {
    /// `http://IP:PORT`, or `https://IP:PORT` behind TLS.
    pub(crate) url: String,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    accept: Option<JoinHandle<()>>,
}

impl Running {
    /// Blocks for as long as the server runs.
    pub(crate) fn wait(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for Running {
    /// Stops accepting and waits for the accept thread (requests in flight on the blocking pool
    /// finish on their own).
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Listens on `listen` (loopback, checked by the configuration), behind TLS when `tls` is
/// given, and answers with `router`.
pub(crate) fn start<S: Send + Sync + 'static>(
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<S>,
    router: Router<S>,
) -> anyhow::Result<Running> {
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("the listener has no address")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("km-api-server")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
    let router = Arc::new(router);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let accept = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("km-api-server: cannot use the listener: {e}");
                        return;
                    }
                };
                loop {
                    let (stream, peer) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(pair) => pair,
                            Err(e) => {
                                eprintln!("km-api-server: accept failed: {e}");
                                continue;
                            }
                        },
                        _ = stopped.changed() => return,
                    };
                    let (state, router, acceptor) =
                        (state.clone(), router.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        match acceptor {
                            None => serve(stream, state, router).await,
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    HANDSHAKE_TIMEOUT,
                                    acceptor.accept(stream),
                                )
                                .await;
                                match handshake {
                                    Ok(Ok(tls)) => serve(tls, state, router).await,
                                    Ok(Err(e)) => eprintln!(
                                        "km-api-server: TLS handshake with {peer} failed: {e}"
                                    ),
                                    Err(_) => eprintln!(
                                        "km-api-server: TLS handshake with {peer} timed out"
                                    ),
                                }
                            }
                        }
                    });
                }
            });
            // Requests still held (a delayed one, for minutes) must not keep the process or
            // the caller of `drop` waiting.
            runtime.shutdown_background();
        })
        .context("starting the accept thread")?;
    Ok(Running {
        url: format!("{scheme}://{addr}"),
        shutdown: Some(shutdown),
        accept: Some(accept),
    })
}

/// Serves the HTTP/1.1 connection `io` until the client closes it.
async fn serve<S, IO>(io: IO, state: Arc<S>, router: Arc<Router<S>>)
where
    S: Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let (state, router) = (state.clone(), router.clone());
        async move { Ok::<_, Infallible>(answer(state, router, request).await) }
    });
    // A client that goes away mid-request ends the connection; nothing else to do about it.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// What reading a request's body can end in, other than the body.
enum BodyError {
    TooLarge,
    Unreadable(String),
}

async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e.to_string())),
    }
}

async fn answer<S: Send + Sync + 'static>(
    state: Arc<S>,
    router: Arc<Router<S>>,
    raw: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = raw.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::new(Method::parse(parts.method.as_str()), target);
    // hyper gives header names lowercased already.
    request.headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let response = match read_body(&parts.headers, body, router.max_body()).await {
        Ok(body) => {
            request.body = body;
            let (method, path) = (request.method.clone(), request.path.clone());
            let handled =
                tokio::task::spawn_blocking(move || router.handle(&*state, &request)).await;
            let response = handled.unwrap_or_else(|e| {
                eprintln!("km-api-server: the handler of {method} {path} failed: {e}");
                Response::error(500, "the server failed")
            });
            eprintln!("km-api-server: {method} {path} -> {}", response.status);
            response
        }
        Err(error) => {
            let response = match error {
                BodyError::TooLarge => router.body_too_large(),
                BodyError::Unreadable(e) => {
                    Response::error(400, &format!("the request body could not be read: {e}"))
                }
            };
            eprintln!(
                "km-api-server: {} {} -> {}",
                request.method, request.path, response.status
            );
            response
        }
    };
    to_hyper(response)
}

fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|e| {
            eprintln!("km-api-server: an answer could not be sent as made: {e}");
            let mut fallback = hyper::Response::new(Full::new(Bytes::from_static(
                b"{\"error\":\"the server made an invalid answer\"}",
            )));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

#[cfg(test)]
mod tests;
