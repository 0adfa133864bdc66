//! The HTTP transport: tiny_http on a loopback address, one thread per request, the request log.
//!
//! tiny_http parses requests on its own connection threads; each request is then handled on a
//! thread of its own, so that a request held by the delay control (seconds, by design) never
//! holds up another, in particular the control request that ends the delay. The number of
//! threads is the number of requests in flight, which the clients of a reference server bound.
//! The body is read here under the router's cap (a declared length over it is refused without
//! reading; an undeclared one is read up to one byte past it), converted to the server's own
//! [`Request`], answered by the [`Router`], and the answer written back. Each request is logged
//! on stderr as `km-api-server: METHOD PATH -> STATUS`.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::config::{DbLocation, ServeConfig};
use crate::customers_file::CustomersFile;
use crate::http::{Method, Request, Response};
use crate::keys::TokenSigner;
use crate::router::Router;
use crate::routes;
use crate::state::{AppState, Controls, Stats};
use crate::store::Store;

/// Serves `config` until the process is killed: prints the base URL as the first line on
/// stdout, then answers requests.
pub(crate) fn run(config: ServeConfig) -> anyhow::Result<()> {
    let state = build_state(&config)?;
    let running = start(config.listen, Arc::new(state), routes::router())?;
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
    Ok(AppState {
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
    })
}

/// A listening server.
pub(crate) struct Running {
    /// `http://IP:PORT`.
    pub(crate) url: String,
    server: Arc<tiny_http::Server>,
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
    /// Stops accepting and waits for the accept loop (requests in flight finish on their own
    /// threads).
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Listens on `listen` (loopback, checked by the configuration) and answers with `router`.
pub(crate) fn start<S: Send + Sync + 'static>(
    listen: SocketAddr,
    state: Arc<S>,
    router: Router<S>,
) -> anyhow::Result<Running> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("the listener has no IP address")?;
    let server = Arc::new(server);
    let router = Arc::new(router);
    let accepting = server.clone();
    let accept = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            for request in accepting.incoming_requests() {
                let (state, router) = (state.clone(), router.clone());
                let spawned = std::thread::Builder::new()
                    .name("request".into())
                    .spawn(move || answer(&*state, &router, request));
                if let Err(e) = spawned {
                    // The request is dropped with the closure: its connection closes unanswered.
                    eprintln!("km-api-server: cannot start a request thread: {e}");
                }
            }
        })
        .context("starting the accept thread")?;
    Ok(Running {
        url: format!("http://{addr}"),
        server,
        accept: Some(accept),
    })
}

/// What reading a request's body can end in, other than the body.
enum BodyError {
    TooLarge,
    Unreadable(std::io::Error),
}

fn read_body(request: &mut tiny_http::Request, max: u64) -> Result<Vec<u8>, BodyError> {
    if request.body_length().is_some_and(|n| n as u64 > max) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(BodyError::Unreadable)?;
    if body.len() as u64 > max {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

fn answer<S>(state: &S, router: &Router<S>, mut raw: tiny_http::Request) {
    let mut request = Request::new(Method::parse(raw.method().as_str()), raw.url());
    request.headers = raw
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_owned(),
            )
        })
        .collect();
    let response = match read_body(&mut raw, router.max_body()) {
        Ok(body) => {
            request.body = body;
            router.handle(state, &request)
        }
        Err(BodyError::TooLarge) => router.body_too_large(),
        Err(BodyError::Unreadable(e)) => {
            Response::error(400, &format!("the request body could not be read: {e}"))
        }
    };
    eprintln!(
        "km-api-server: {} {} -> {}",
        request.method, request.path, response.status
    );
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for (name, value) in &response.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(header);
        }
    }
    // A client that went away gets no answer; nothing else to do about it.
    let _ = raw.respond(out);
}

#[cfg(test)]
mod tests;
