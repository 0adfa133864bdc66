//! The client km uses to reach the Kilometers API on behalf of plugins: the implementation of
//! the host's HTTP service ([`ApiTransport`]).
//!
//! - Confinement: a plugin names a path below the configured base URL, nothing else. Absolute
//!   URLs, `//`, `..` (also percent-encoded), backslashes, fragments and control characters are
//!   refused, redirects are not followed, and plain `http://` is accepted only for loopback
//!   endpoints (tests, a local reference server): an API key never crosses a network in clear.
//! - Transport security ([`crate::tls`]): TLS 1.3 only, the endpoint's roots (`api_ca`) and
//!   certificate pins (`api_pins`, or the built-in pins of the official endpoint). A TLS
//!   refusal (a key outside the pins, a server without TLS 1.3, an untrusted certificate) is
//!   final: it is reported at once, naming the endpoint, and never retried. Pins need https: a
//!   pinned endpoint configured with plain http is refused when the client is made.
//! - Bounded time: connect timeout 5 s; the request's `timeout_ms` (default 10 s) bounds the
//!   whole call, retries and back-off included.
//! - Retries: up to 3 attempts on connection errors, timeouts and 5xx, with exponential
//!   back-off and jitter. Requests km makes for plugins are idempotent by design (authentication;
//!   event batches carry ids), so POSTs are retried too.
//! - Rate limits: a 429 is never retried. Its `Retry-After` (seconds or an HTTP date; 60 s when
//!   it has none, at most an hour) holds every request of this client until then ([`RateLimit`]):
//!   they fail at once with a network error that says so, without touching the network, so that
//!   plugins retrying on their own schedule (api-logger's batches) make no storm. The refresher
//!   reads the same [`RateLimit`] and sleeps past it, with jitter
//!   (`crate::subscription::start_refresher`).
//! - Bounded memory: a response body larger than 1 MiB is an error, detected while reading.
//!
//! Plugins call in from km's worker threads, synchronously. The client runs reqwest (rustls) on
//! km's one runtime ([`crate::runtime`]) and the calling thread waits on a channel, so it works
//! from any thread, including one that belongs to another tokio runtime.

use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use km_abi::{ErrorKind, HttpRequest, HttpResponse, PluginError};
use reqwest::Url;

use crate::host::ApiTransport;
use crate::runtime::Handle;
use crate::tls::EndpointTrust;

/// Retry, timeout and size limits.
#[derive(Debug, Clone)]
pub struct ApiPolicy {
    /// Attempts in total (first try included).
    pub max_attempts: u32,
    /// The first back-off delay; doubled after each failed attempt.
    pub base_delay: Duration,
    /// The longest back-off delay.
    pub max_delay: Duration,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline for a whole call when the request does not set `timeout_ms`.
    pub default_timeout: Duration,
    /// The largest response body accepted.
    pub max_body: usize,
}

impl Default for ApiPolicy {
    fn default() -> Self {
        ApiPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            default_timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
        }
    }
}

/// The longest wait a `Retry-After` can impose: past it km asks again (a server asking for a
/// day would otherwise keep a session degraded for that long on one answer).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait after a 429 that carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the API said about rate: after a 429, the time before which nothing is sent to it.
/// Shared by every request of one [`ApiClient`] and by the refresher.
#[derive(Debug, Default)]
pub struct RateLimit {
    until: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// How long requests are still held, if they are.
    pub fn remaining(&self) -> Option<Duration> {
        let until = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Holds requests for `wait` (at most [`MAX_RETRY_AFTER`]) from now, unless they are
    /// already held longer.
    pub fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_RETRY_AFTER);
        let mut current = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*current, Some(c) if c >= until) {
            *current = Some(until);
        }
    }
}

/// The wait a `Retry-After` value asks for: delay-seconds, or an HTTP date (RFC 9110 10.2.3);
/// `None` when it is neither. A date in the past is no wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whole seconds, rounded up, for messages.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// km's client for the configured Kilometers API.
pub struct ApiClient {
    base: Url,
    client: reqwest::Client,
    runtime: Handle,
    policy: ApiPolicy,
    rate_limit: Arc<RateLimit>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Whether `url` points at this machine.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ApiClient {
    /// A client for the API at `base_url` with the default policy, on `runtime`.
    pub fn new(runtime: &Handle, base_url: &str) -> Result<Self> {
        Self::with_policy(runtime, base_url, ApiPolicy::default())
    }

    /// A client for the API at `base_url` with `policy`, the default roots and no pins.
    pub fn with_policy(runtime: &Handle, base_url: &str, policy: ApiPolicy) -> Result<Self> {
        Self::with_trust(runtime, base_url, policy, None)
    }

    /// A client for the API at `base_url` with `policy`, checking the server as `trust` says
    /// (roots and pins for its host; `None`: the default roots, no pins). Its requests run on
    /// `runtime`.
    pub fn with_trust(
        runtime: &Handle,
        base_url: &str,
        policy: ApiPolicy,
        trust: Option<&EndpointTrust>,
    ) -> Result<Self> {
        let mut base = Url::parse(base_url.trim())
            .with_context(|| format!("the API URL {base_url:?} is not a URL"))?;
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            "http" => bail!(
                "the API URL {base_url:?} uses plain http: only https is allowed, except for \
                 loopback addresses (127.0.0.1, ::1, localhost)"
            ),
            other => bail!("the API URL {base_url:?} has scheme {other:?}; expected https"),
        }
        if base.host_str().is_none() || !base.username().is_empty() || base.password().is_some() {
            bail!("the API URL {base_url:?} must name a host and carry no credentials");
        }
        if base.query().is_some() || base.fragment().is_some() {
            bail!("the API URL {base_url:?} must not have a query or fragment");
        }
        if base.scheme() == "http" && trust.is_some_and(|t| !t.pins.is_empty()) {
            bail!(
                "the API URL {base_url:?} uses plain http, but certificate pins are in force for \
                 it: pins need https"
            );
        }
        // Paths are appended to the base: keep it without a trailing slash.
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);

        let tls = crate::tls::client_config(trust)?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(policy.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("km/", env!("CARGO_PKG_VERSION")));
        if is_loopback(&base) {
            builder = builder.no_proxy();
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(ApiClient {
            base,
            client,
            runtime: runtime.clone(),
            policy,
            rate_limit: Arc::new(RateLimit::default()),
        })
    }

    /// The client for the API `config` names, if it names one, with its roots and pins: the one
    /// way km's commands make their client.
    pub fn for_config(
        runtime: &Handle,
        config: &crate::config::Config,
    ) -> Result<Option<ApiClient>> {
        let Some(url) = config.api_url.as_deref() else {
            return Ok(None);
        };
        let trust = EndpointTrust::for_config(config)?;
        Ok(Some(ApiClient::with_trust(
            runtime,
            url,
            ApiPolicy::default(),
            trust.as_ref(),
        )?))
    }

    /// The transport for the configured API, if one is configured: what `km monitor` and
    /// `km plugin-refresh` put in `LoadOptions::api`.
    pub fn from_config(
        runtime: &Handle,
        config: &crate::config::Config,
    ) -> Result<Option<Arc<dyn ApiTransport>>> {
        Ok(Self::for_config(runtime, config)?.map(|c| Arc::new(c) as Arc<dyn ApiTransport>))
    }

    /// The rate limit the API imposed on this client (for the refresher).
    pub fn rate_limit(&self) -> Arc<RateLimit> {
        self.rate_limit.clone()
    }

    /// The base URL requests are confined to.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL for a plugin-supplied `path`, or why it is refused.
    pub fn url_for(&self, path: &str) -> Result<Url, PluginError> {
        check_path(path)?;
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let url = Url::parse(&joined)
            .map_err(|_| denied(format!("{path:?} does not make a valid URL")))?;
        // Belt and braces: whatever the parser made of it must still be below the base.
        let base_path = self.base.path().trim_end_matches('/');
        if url.scheme() != self.base.scheme()
            || url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
            || !url.path().starts_with(base_path)
        {
            return Err(denied(format!("{path:?} leaves the configured API")));
        }
        Ok(url)
    }

    fn perform(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let url = self.url_for(request.path.as_str())?;
        if let Some(wait) = self.rate_limit.remaining() {
            return Err(PluginError::new(
                ErrorKind::NETWORK,
                format!(
                    "the API rate-limited km (HTTP 429): nothing is sent to it for another {} s \
                     (its Retry-After); {} was not sent",
                    ceil_secs(wait),
                    request.path
                ),
            ));
        }
        let method = match request.method.as_str().to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            "HEAD" => reqwest::Method::HEAD,
            other => return Err(denied(format!("HTTP method {other:?} is not allowed"))),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for pair in request.headers.iter() {
            let (name, value) = (pair.0.as_str(), pair.1.as_str());
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| denied(format!("bad header name {name:?}")))?;
            if matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                return Err(denied(format!("header {name} is set by km")));
            }
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| denied(format!("bad value for header {name}")))?;
            headers.append(name, value);
        }
        let timeout = match request.timeout_ms {
            0 => self.policy.default_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let call = Call {
            client: self.client.clone(),
            url,
            method,
            headers,
            // Copied once out of the plugin's buffer; every attempt shares that copy.
            body: bytes::Bytes::copy_from_slice(request.body.as_slice()),
            deadline: Instant::now() + timeout,
            timeout,
            policy: self.policy.clone(),
            rate_limit: self.rate_limit.clone(),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        // Once km's runtime is shut down the task is dropped unrun, and with it `tx`.
        self.runtime.spawn(async move {
            let _ = tx.send(call.run().await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(PluginError::failed("the API client stopped")))
    }
}

impl ApiTransport for ApiClient {
    fn request(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        self.perform(request)
    }
}

fn denied(message: String) -> PluginError {
    PluginError::new(ErrorKind::DENIED, message)
}

/// Refuses anything but a plain absolute path below the base URL.
fn check_path(path: &str) -> Result<(), PluginError> {
    let refuse = |why: &str| {
        Err(denied(format!(
            "path {path:?} refused: {why}; plugins reach only the configured API"
        )))
    };
    if !path.starts_with('/') {
        return refuse("it must start with /");
    }
    if path.starts_with("//") || path.contains("://") {
        return refuse("it looks like a URL");
    }
    let path_part = path.split('?').next().unwrap_or(path);
    if path_part.contains("//") {
        return refuse("empty segment");
    }
    let lower = path_part.to_ascii_lowercase();
    if path_part.split('/').any(|seg| seg == "." || seg == "..")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
    {
        return refuse("dot segments or encoded separators");
    }
    if path.contains('\\') || path.contains('#') || path.contains('@') {
        return refuse("backslash, fragment or @");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("control characters or spaces");
    }
    if path.len() > 2048 {
        return refuse("too long");
    }
    Ok(())
}

struct Call {
    client: reqwest::Client,
    url: Url,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    /// Shared by the attempts (a reference count): a `Vec` here was copied again for every
    /// attempt, the first one too, and a batch of several MiB was fresh memory each time,
    /// faulted in page by page.
    body: bytes::Bytes,
    deadline: Instant,
    timeout: Duration,
    policy: ApiPolicy,
    rate_limit: Arc<RateLimit>,
}

/// The outcome of one attempt.
enum Attempt {
    Done(HttpResponse),
    /// Worth another try (connection failure, timeout, 5xx), with what to report if not.
    Retry(Result<HttpResponse, PluginError>),
    Fail(PluginError),
}

impl Call {
    async fn run(self) -> Result<HttpResponse, PluginError> {
        let mut delay = self.policy.base_delay;
        let mut attempt = 1;
        loop {
            let outcome = self.attempt().await;
            let last = match outcome {
                Attempt::Done(response) => return Ok(response),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(last) => last,
            };
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let pause = delay.min(self.policy.max_delay) + jitter(delay / 2);
            // Another request may have been told to wait meanwhile: that holds this one too.
            if attempt >= self.policy.max_attempts
                || remaining <= pause
                || self.rate_limit.remaining().is_some()
            {
                return last;
            }
            tokio::time::sleep(pause).await;
            delay = delay.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn attempt(&self) -> Attempt {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Attempt::Fail(self.timed_out());
        }
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .body(self.body.clone())
            .timeout(remaining);
        let work = async {
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => return self.send_failed(&e),
            };
            let status = response.status().as_u16();
            let retry_after = (status == 429).then(|| {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
                    .unwrap_or(DEFAULT_RETRY_AFTER)
            });
            if let Some(wait) = retry_after {
                // Held before the body is even read, so that no other request slips out.
                self.rate_limit.hold(wait);
            }
            let body = match self.read_body(response).await {
                Ok(parts) => parts,
                Err(error)
                    if error.kind == ErrorKind::TIMEOUT || error.kind == ErrorKind::NETWORK =>
                {
                    return Attempt::Retry(Err(error))
                }
                Err(error) => return Attempt::Fail(error),
            };
            let response = HttpResponse {
                status,
                headers: body.0.into(),
                body: body.1.into(),
            };
            // A 429 goes back to the plugin as it is: never retried (see the module doc).
            if status >= 500 {
                Attempt::Retry(Ok(response))
            } else {
                Attempt::Done(response)
            }
        };
        match tokio::time::timeout(remaining, work).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Retry(Err(self.timed_out())),
        }
    }

    /// What a request that got no answer comes to: a TLS refusal is final and said plainly
    /// (pins, TLS version, certificate); a timeout or a connection failure is worth a retry.
    fn send_failed(&self, e: &reqwest::Error) -> Attempt {
        if let Some(refusal) = crate::tls::refusal_in(e) {
            return Attempt::Fail(PluginError::new(
                ErrorKind::NETWORK,
                format!("{}: {refusal}", self.url),
            ));
        }
        if e.is_timeout() {
            return Attempt::Retry(Err(self.timed_out()));
        }
        if e.is_connect() || e.is_request() {
            return Attempt::Retry(Err(PluginError::new(
                ErrorKind::NETWORK,
                format!("cannot reach {}: {}", self.url, error_chain(e)),
            )));
        }
        Attempt::Fail(PluginError::new(ErrorKind::NETWORK, error_chain(e)))
    }

    #[allow(clippy::type_complexity)]
    async fn read_body(
        &self,
        mut response: reqwest::Response,
    ) -> Result<
        (
            Vec<
                abi_stable::std_types::Tuple2<
                    abi_stable::std_types::RString,
                    abi_stable::std_types::RString,
                >,
            >,
            Vec<u8>,
        ),
        PluginError,
    > {
        let too_big = || {
            PluginError::failed(format!(
                "the API's response is larger than {} bytes",
                self.policy.max_body
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.policy.max_body as u64)
        {
            return Err(too_big());
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| abi_stable::std_types::Tuple2(k.as_str().into(), v.into()))
            })
            .collect();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.policy.max_body {
                        return Err(too_big());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok((headers, body)),
                Err(e) if e.is_timeout() => return Err(self.timed_out()),
                Err(e) => {
                    return Err(PluginError::new(
                        ErrorKind::NETWORK,
                        format!(
                            "reading the response from {}: {}",
                            self.url,
                            error_chain(&e)
                        ),
                    ))
                }
            }
        }
    }

    fn timed_out(&self) -> PluginError {
        PluginError::new(
            ErrorKind::TIMEOUT,
            format!(
                "{} did not answer within {} ms",
                self.url,
                self.timeout.as_millis()
            ),
        )
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A random delay in `[0, max]`, so that many km processes do not retry in step.
pub(crate) fn jitter(max: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    max.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A loopback HTTP server answering each connection with `answer(n)` (n counts from 0);
    /// `None` means: accept, read, never answer.
    fn server(
        answer: impl Fn(usize) -> Option<Vec<u8>> + Send + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf);
                match answer(n) {
                    Some(bytes) => {
                        let _ = stream.write_all(&bytes);
                    }
                    None => {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(30));
                            drop(stream);
                        });
                    }
                }
            }
        });
        (format!("http://{addr}"), count)
    }

    fn reply(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn rt() -> Handle {
        crate::runtime::for_tests()
    }

    fn fast_policy() -> ApiPolicy {
        ApiPolicy {
            base_delay: Duration::from_millis(20),
            ..ApiPolicy::default()
        }
    }

    fn get(path: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: path.into(),
            headers: Default::default(),
            body: Default::default(),
            timeout_ms: 0,
        }
    }

    #[test]
    fn paths_are_confined_to_the_configured_api() {
        let client = ApiClient::new(&rt(), "https://api.example.test/base/").expect("client");
        assert_eq!(
            client
                .url_for("/api/plugins/authenticate")
                .expect("ok")
                .as_str(),
            "https://api.example.test/base/api/plugins/authenticate"
        );
        assert!(client.url_for("/api/events/batch?x=1").is_ok());
        for bad in [
            "api/x",
            "https://evil.test/x",
            "//evil.test/x",
            "/api/../../etc",
            "/api/%2e%2e/x",
            "/api/%2F/x",
            "/api//x",
            "/api\\x",
            "/a b",
            "/x#frag",
            "/@evil.test",
            "/a/./b",
        ] {
            let error = client.url_for(bad).expect_err(bad);
            assert_eq!(error.kind, ErrorKind::DENIED, "{bad}");
        }
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        assert!(ApiClient::new(&rt(), "http://127.0.0.1:1").is_ok());
        assert!(ApiClient::new(&rt(), "http://localhost:1").is_ok());
        assert!(ApiClient::new(&rt(), "http://[::1]:1").is_ok());
        assert!(ApiClient::new(&rt(), "http://api.example.test").is_err());
        assert!(ApiClient::new(&rt(), "ftp://127.0.0.1").is_err());
        assert!(ApiClient::new(&rt(), "https://user:pw@api.example.test").is_err());
        assert!(ApiClient::new(&rt(), "not a url").is_err());
    }

    #[test]
    fn retries_5xx_then_succeeds() {
        let (url, count) = server(|n| {
            Some(match n {
                0 => reply("503 Service Unavailable", b"down"),
                1 => reply("502 Bad Gateway", b"down"),
                _ => reply("200 OK", b"{\"ok\":true}"),
            })
        });
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let response = client.request(&get("/api/x")).expect("answered");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.as_slice(), b"{\"ok\":true}");
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    fn too_many(retry_after: &str) -> Vec<u8> {
        let body = b"{\"error\":\"slow down\"}";
        let mut out = format!(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: {retry_after}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_429_is_not_retried_and_holds_every_request_until_retry_after() {
        let (url, count) = server(|n| {
            Some(match n {
                0 => too_many("1"),
                _ => reply("200 OK", b"ok"),
            })
        });
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let response = client.request(&get("/api/x")).expect("the 429 itself");
        assert_eq!(response.status, 429);
        assert_eq!(count.load(Ordering::SeqCst), 1, "a 429 was retried");
        let held = client.rate_limit().remaining().expect("held");
        assert!(held <= Duration::from_secs(1), "{held:?}");
        // Until then nothing goes out, whatever the path.
        for path in ["/api/x", "/api/y"] {
            let error = client.request(&get(path)).expect_err("held");
            assert_eq!(error.kind, ErrorKind::NETWORK, "{error}");
            assert!(error.message.contains("Retry-After"), "{error}");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "a held request was sent");
        while client.rate_limit().remaining().is_some() {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(client.request(&get("/api/x")).expect("ok").status, 200);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        let limit = RateLimit::default();
        limit.hold(Duration::from_secs(100 * 3600));
        assert!(limit.remaining().expect("held") <= MAX_RETRY_AFTER);
        // A shorter hold never shortens a longer one.
        limit.hold(Duration::from_secs(1));
        assert!(limit.remaining().expect("held") > Duration::from_secs(60));
    }

    #[test]
    fn gives_up_after_three_attempts_with_the_last_answer() {
        let (url, count) = server(|_| Some(reply("502 Bad Gateway", b"")));
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let response = client.request(&get("/api/x")).expect("an answer");
        assert_eq!(response.status, 502);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_4xx_is_not_retried() {
        let (url, count) = server(|_| Some(reply("403 Forbidden", b"{\"error\":\"no\"}")));
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        assert_eq!(client.request(&get("/api/x")).expect("answer").status, 403);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_silent_server_times_out_within_the_deadline() {
        let (url, _count) = server(|_| None);
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let mut request = get("/api/x");
        request.timeout_ms = 400;
        let started = Instant::now();
        let error = client.request(&request).expect_err("times out");
        assert_eq!(error.kind, ErrorKind::TIMEOUT, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_refused_connection_is_a_network_error_after_bounded_retries() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let client =
            ApiClient::with_policy(&rt(), &format!("http://127.0.0.1:{port}"), fast_policy())
                .expect("client");
        let started = Instant::now();
        let error = client.request(&get("/api/x")).expect_err("refused");
        assert_eq!(error.kind, ErrorKind::NETWORK, "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let (url, _) = server(|_| Some(reply("200 OK", &vec![b'x'; 2 * 1024 * 1024])));
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let error = client.request(&get("/api/x")).expect_err("too big");
        assert!(error.message.contains("larger than"), "{error}");
        // Also without a content-length: chunks are counted as they arrive.
        let (url, _) = server(|_| {
            let mut out = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
            out.extend(std::iter::repeat_n(b'y', 1024 * 1024 + 10));
            Some(out)
        });
        let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
        let error = client.request(&get("/api/x")).expect_err("too big");
        assert!(error.message.contains("larger than"), "{error}");
    }

    #[test]
    fn works_from_inside_another_runtime_and_drops_cleanly_there() {
        let (url, _) = server(|_| Some(reply("200 OK", b"hi")));
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        other.block_on(async move {
            let client = ApiClient::with_policy(&rt(), &url, fast_policy()).expect("client");
            assert_eq!(
                client.request(&get("/x")).expect("ok").body.as_slice(),
                b"hi"
            );
            drop(client);
        });
    }
}
