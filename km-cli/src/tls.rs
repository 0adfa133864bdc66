//! TLS for every https connection km makes (the Kilometers API, plugin downloads): TLS 1.3
//! only, and for the API endpoint its own roots and certificate pins.
//!
//! **Versions.** Every client config is built with `builder_with_protocol_versions(&[TLS13])`:
//! a server that offers only TLS 1.2 (or older) is refused during the handshake, loopback
//! included. There is no setting to allow TLS 1.2.
//!
//! **Roots.** By default the server certificate must chain to the Mozilla root store compiled
//! into km (webpki-roots). For the API endpoint, `api_ca = "/path/ca.pem"` in config.toml
//! replaces those roots with the CA certificates in that file (a self-hosted endpoint behind a
//! private CA; the tests' own CA). The file decides whom km trusts, so it is held to the checks
//! of the other trust files: a regular file owned by the user or root, not writable by group or
//! others.
//!
//! **Pins.** The API endpoint may be pinned: a set of SHA-256 digests of SubjectPublicKeyInfo
//! structures, written as in HPKP, `sha256/<base64>`, and made with
//!
//! ```sh
//! openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der \
//!     | openssl dgst -sha256 -binary | base64
//! ```
//!
//! Pins come from `api_pins = [...]` in config.toml (a self-hosted endpoint), or, for the
//! official endpoint ([`crate::config::DEFAULT_API_URL`]) when the file sets none, from the pins
//! compiled in at build time (`KM_BUILTIN_API_PINS`, see build.rs; none in a source build, where
//! the roots alone decide). A pin set has at least two distinct pins: the key in use and a backup
//! key kept offline, so that moving to a new key never locks km out (the rotation procedure is in
//! the README). A pinned connection is accepted only when normal webpki verification succeeds
//! (chain to the roots in force, validity dates, the host name) **and** the SPKI of the
//! end-entity certificate is in the set; otherwise the handshake fails closed with
//! [`PinMismatch`], which names the endpoint, the key it presented and the pins in force.
//!
//! Only the end-entity (leaf) certificate is pinned, not intermediates or roots. rustls hands a
//! verifier the chain as the server sent it, not the path webpki built: an attacker with a leaf
//! from another CA could send the pinned intermediate alongside it, so a check of "any
//! certificate in the chain" would pass where it must not. Pinning the leaf's key (not the
//! certificate) keeps working across certificate renewals that keep the key.
//!
//! What is not checked: revocation (no CRL or OCSP, as before), certificate transparency.
//! Hosts other than the API's (a package URL on another server) get TLS 1.3 and the default
//! roots, never the API's CA or pins.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Config, DEFAULT_API_URL};

/// The pins compiled in for the official endpoint (`KM_BUILTIN_API_PINS` at build time).
const BUILTIN_PINS: &[&str] = include!(concat!(env!("OUT_DIR"), "/builtin_pins.rs"));

/// The prefix of a pin's text form.
const PIN_PREFIX: &str = "sha256/";

/// The largest CA file km reads.
const MAX_CA_BYTES: u64 = 1024 * 1024;

/// The SHA-256 digest of a DER SubjectPublicKeyInfo: `sha256/<base64>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Pin {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Pin(out)
    }

    /// The pin of the key in a DER-encoded X.509 certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Pin> {
        let der = CertificateDer::from(cert_der);
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e:?}"))?;
        Ok(Pin::of_spki(cert.subject_public_key_info().as_ref()))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PIN_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Pin {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Pin> {
        let s = s.trim();
        let Some(b64) = s.strip_prefix(PIN_PREFIX) else {
            bail!(
                "pin {s:?} must be written \"sha256/<base64 of the SHA-256 of the \
                 SubjectPublicKeyInfo>\""
            );
        };
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| anyhow::anyhow!("pin {s:?}: {b64:?} is not base64"))?;
        let digest: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!(
                "pin {s:?}: a SHA-256 digest is 32 bytes, this one is {}",
                b.len()
            )
        })?;
        Ok(Pin(digest))
    }
}

/// Parses and checks a pin set: every pin valid, at least two distinct ones (the key in use and
/// a backup). `what` names the setting in errors.
pub fn parse_pins<S: AsRef<str>>(pins: &[S], what: &str) -> Result<Vec<Pin>> {
    let mut out: Vec<Pin> = Vec::new();
    for pin in pins {
        let pin: Pin = pin.as_ref().parse().with_context(|| format!("in {what}"))?;
        if !out.contains(&pin) {
            out.push(pin);
        }
    }
    if out.len() < 2 {
        bail!(
            "{what} must list at least two distinct pins: the key the endpoint uses and a backup \
             key kept aside, so that a change of key does not lock km out (found {})",
            out.len()
        );
    }
    Ok(out)
}

/// Where the pins in force come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// `api_pins` in config.toml.
    Config,
    /// Compiled in for the official endpoint (`KM_BUILTIN_API_PINS`).
    BuiltIn,
}

impl PinSource {
    /// How `km config show` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            PinSource::Config => "config.toml api_pins",
            PinSource::BuiltIn => "built in for the official endpoint",
        }
    }
}

/// How km checks the API endpoint's certificate: its host, the roots, the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTrust {
    /// The host of the API URL (lowercase; an IP address without brackets).
    pub host: String,
    /// The pins in force (empty: not pinned), and where they come from.
    pub pins: Vec<Pin>,
    /// Where [`EndpointTrust::pins`] come from, when there are any.
    pub pin_source: Option<PinSource>,
    /// `api_ca`: the CA file that replaces the default roots for this host.
    pub ca_file: Option<PathBuf>,
}

/// The pins compiled into this km, parsed.
pub fn builtin_pins() -> Result<Vec<Pin>> {
    if BUILTIN_PINS.is_empty() {
        return Ok(Vec::new());
    }
    parse_pins(BUILTIN_PINS, "the built-in pins (KM_BUILTIN_API_PINS)")
}

/// The host of `url` as TLS names it: lowercase, an IPv6 address without brackets.
fn host_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url.trim()).ok()?;
    let host = url.host_str()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

impl EndpointTrust {
    /// The trust for the API that `config` names (`None` without an `api_url`): the file's
    /// pins, else the built-in ones when the URL is the official endpoint's; its `api_ca`.
    pub fn for_config(config: &Config) -> Result<Option<EndpointTrust>> {
        let Some(url) = config.api_url.as_deref() else {
            return Ok(None);
        };
        let host =
            host_of(url).with_context(|| format!("the API URL {url:?} does not name a host"))?;
        let (pins, pin_source) = if !config.api_pins.is_empty() {
            (config.api_pins.clone(), Some(PinSource::Config))
        } else if host_of(DEFAULT_API_URL).as_deref() == Some(host.as_str()) {
            let builtin = builtin_pins()?;
            let source = (!builtin.is_empty()).then_some(PinSource::BuiltIn);
            (builtin, source)
        } else {
            (Vec::new(), None)
        };
        Ok(Some(EndpointTrust {
            host,
            pins,
            pin_source,
            ca_file: config.api_ca.clone(),
        }))
    }

    /// A one-line description of the roots in force, for `km config show`.
    pub fn roots_text(&self) -> String {
        match &self.ca_file {
            Some(file) => format!("the CA certificates in {} (api_ca)", file.display()),
            None => "the Mozilla root store compiled into km (webpki-roots)".to_owned(),
        }
    }
}

/// What `km config show` (and later `km doctor`) reports about the transport to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportReport {
    /// The API URL, when one is configured.
    pub endpoint: Option<String>,
    /// The TLS versions km speaks.
    pub tls_versions: &'static str,
    /// The roots the endpoint's certificate must chain to.
    pub roots: String,
    /// The pins in force for the endpoint, in text form.
    pub pins: Vec<String>,
    /// Where they come from (`None`: not pinned).
    pub pin_source: Option<PinSource>,
    /// What a pin is checked against.
    pub pin_scope: &'static str,
}

/// The transport km would use for the API `config` names.
pub fn transport_report(config: &Config) -> Result<TransportReport> {
    let trust = EndpointTrust::for_config(config)?;
    Ok(TransportReport {
        endpoint: config.api_url.clone(),
        tls_versions: "TLS 1.3 only",
        roots: trust.as_ref().map_or_else(
            || "the Mozilla root store compiled into km (webpki-roots)".to_owned(),
            EndpointTrust::roots_text,
        ),
        pins: trust
            .as_ref()
            .map(|t| t.pins.iter().map(Pin::to_string).collect())
            .unwrap_or_default(),
        pin_source: trust.and_then(|t| t.pin_source),
        pin_scope: "the SubjectPublicKeyInfo of the server's end-entity certificate",
    })
}

/// A pinned endpoint presented a key outside its pin set: the handshake was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the API endpoint {host} presented a certificate whose key ({presented}) is not among the \
     pins in force for it ({pins}; from {from}): refusing the connection. If the endpoint \
     moved to a new key, add its pin to api_pins in config.toml (see README, \"Certificate \
     pinning\")",
    pins = join(.pins),
    from = .pin_source.as_str()
)]
pub struct PinMismatch {
    /// The endpoint's host.
    pub host: String,
    /// The pin of the key the server presented.
    pub presented: Pin,
    /// The pins in force.
    pub pins: Vec<Pin>,
    /// Where they come from.
    pub pin_source: PinSource,
}

fn join(pins: &[Pin]) -> String {
    pins.iter()
        .map(Pin::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pin check of the API endpoint, behind webpki verification with its roots.
#[derive(Debug)]
struct Endpoint {
    host: String,
    webpki: Arc<WebPkiServerVerifier>,
    pins: Vec<Pin>,
    source: PinSource,
}

/// km's server certificate verifier: webpki with the roots in force for the host, then the
/// API endpoint's pins.
#[derive(Debug)]
struct Verifier {
    default: Arc<WebPkiServerVerifier>,
    endpoint: Option<Endpoint>,
}

impl Verifier {
    fn endpoint_for(&self, name: &ServerName<'_>) -> Option<&Endpoint> {
        self.endpoint
            .as_ref()
            .filter(|e| name.to_str().eq_ignore_ascii_case(&e.host))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(endpoint) = self.endpoint_for(server_name) else {
            return self.default.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        };
        // Normal verification first: a pin never stands in for a valid chain.
        let verified = endpoint.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if endpoint.pins.is_empty() {
            return Ok(verified);
        }
        let presented = Pin::of_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if endpoint.pins.contains(&presented) {
            return Ok(verified);
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(PinMismatch {
                host: endpoint.host.clone(),
                presented,
                pins: endpoint.pins.clone(),
                pin_source: endpoint.source,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.default.supported_verify_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn webpki_verifier(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("building the certificate verifier")
}

/// Reads the CA certificates of `api_ca`, after the checks of a file that decides trust.
fn read_ca_file(path: &Path) -> Result<RootCertStore> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("opening the API CA file {} (api_ca)", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        bail!("the API CA file {} is not a regular file", path.display());
    }
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "the API CA file {} is owned by uid {}, not by you or root: it decides which \
             servers km trusts",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "the API CA file {} is writable by group or others (mode {:04o}): it decides \
             which servers km trusts; run `chmod go-w {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_CA_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_CA_BYTES {
        bail!("{} is larger than {MAX_CA_BYTES} bytes", path.display());
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert =
            cert.with_context(|| format!("{}: not a PEM file of certificates", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: a certificate km cannot use as a CA", path.display()))?;
    }
    if roots.is_empty() {
        bail!(
            "the API CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(roots)
}

fn default_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The rustls client configuration for every https connection km makes: TLS 1.3 only, the
/// default roots, and for `endpoint`'s host its roots and pins.
pub fn client_config(endpoint: Option<&EndpointTrust>) -> Result<rustls::ClientConfig> {
    let default = webpki_verifier(default_roots())?;
    let endpoint = match endpoint {
        None => None,
        Some(trust) => {
            let webpki = match &trust.ca_file {
                Some(file) => webpki_verifier(read_ca_file(file)?)?,
                None => default.clone(),
            };
            Some(Endpoint {
                host: trust.host.clone(),
                webpki,
                pins: trust.pins.clone(),
                source: trust.pin_source.unwrap_or(PinSource::Config),
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("configuring TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { default, endpoint }))
        .with_no_client_auth();
    Ok(config)
}

/// The client configuration for the API `config` names (and for downloads, which may reach it).
pub fn client_config_for(config: &Config) -> Result<rustls::ClientConfig> {
    client_config(EndpointTrust::for_config(config)?.as_ref())
}

/// What a failed connection's error says about TLS, when it is a refusal km made on purpose
/// (not worth a retry): a pin mismatch, a server without TLS 1.3, an untrusted certificate.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The endpoint's key is not pinned.
    Pin(PinMismatch),
    /// The server does not speak TLS 1.3.
    Version(String),
    /// The certificate does not verify (chain, name, dates).
    Certificate(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Pin(mismatch) => write!(f, "{mismatch}"),
            Refusal::Version(detail) => write!(
                f,
                "the server does not speak TLS 1.3, which km requires for every https \
                 connection ({detail})"
            ),
            Refusal::Certificate(detail) => {
                write!(f, "the server's certificate is not trusted ({detail})")
            }
        }
    }
}

/// Finds the rustls error in `error`'s chain (reqwest → hyper → io::Error, perhaps wrapped in
/// another io::Error → rustls::Error) and says whether it is one of km's TLS refusals.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return classify(tls);
    }
    // io::Error hides the error it wraps from `source()`: look inside it.
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn std::error::Error + 'static) = inner;
        if let Some(found) = refusal_in(inner) {
            return Some(found);
        }
    }
    error.source().and_then(refusal_in)
}

fn classify(error: &rustls::Error) -> Option<Refusal> {
    use rustls::{AlertDescription, Error};
    match error {
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(mismatch) => Some(Refusal::Pin(mismatch.clone())),
                None => Some(Refusal::Certificate(error.to_string())),
            }
        }
        Error::InvalidCertificate(_) => Some(Refusal::Certificate(error.to_string())),
        Error::AlertReceived(AlertDescription::ProtocolVersion) | Error::PeerIncompatible(_) => {
            Some(Refusal::Version(error.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    const B: &str = "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";

    #[test]
    fn pins_parse_and_print_in_the_hpkp_form() {
        let pin: Pin = A.parse().expect("parses");
        assert_eq!(pin.to_string(), A);
        // The digest of the empty string, as `openssl dgst -sha256 -binary | base64` prints it.
        assert_eq!(Pin::of_spki(b"").to_string(), A);
        for bad in [
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "sha1/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "sha256/not base64!",
            "sha256/AAAA",
        ] {
            assert!(bad.parse::<Pin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pin_set_needs_a_backup() {
        assert_eq!(parse_pins(&[A, B], "api_pins").expect("two").len(), 2);
        let one = parse_pins(&[A], "api_pins").expect_err("one is not enough");
        assert!(format!("{one:#}").contains("backup"), "{one:#}");
        let same = parse_pins(&[A, A], "api_pins").expect_err("the same twice");
        assert!(format!("{same:#}").contains("two distinct"), "{same:#}");
        let bad = parse_pins(&[A, "nope"], "api_pins").expect_err("a bad pin");
        assert!(format!("{bad:#}").contains("api_pins"), "{bad:#}");
    }

    #[test]
    fn pins_apply_to_the_endpoint_host_and_builtin_pins_only_to_the_official_one() {
        let config = Config {
            api_url: Some("https://API.Example.test:8443/base".to_owned()),
            api_pins: parse_pins(&[A, B], "api_pins").expect("pins"),
            ..Config::default()
        };
        let trust = EndpointTrust::for_config(&config)
            .expect("trust")
            .expect("an endpoint");
        assert_eq!(trust.host, "api.example.test");
        assert_eq!(trust.pin_source, Some(PinSource::Config));
        let report = transport_report(&config).expect("report");
        assert_eq!(report.pins, vec![A.to_owned(), B.to_owned()]);
        assert_eq!(report.tls_versions, "TLS 1.3 only");

        // Another endpoint without api_pins is not pinned; the official one gets what was
        // compiled in (nothing in a source build).
        let other = Config {
            api_url: Some("https://self-hosted.example.test".to_owned()),
            ..Config::default()
        };
        let trust = EndpointTrust::for_config(&other)
            .expect("ok")
            .expect("some");
        assert!(trust.pins.is_empty() && trust.pin_source.is_none());
        let official = Config {
            api_url: Some(DEFAULT_API_URL.to_owned()),
            ..Config::default()
        };
        let trust = EndpointTrust::for_config(&official)
            .expect("ok")
            .expect("some");
        assert_eq!(trust.pins, builtin_pins().expect("built-in pins parse"));
        assert_eq!(
            trust.pin_source.is_some(),
            !BUILTIN_PINS.is_empty(),
            "{trust:?}"
        );
        let v6 = Config {
            api_url: Some("https://[::1]:9/".to_owned()),
            ..Config::default()
        };
        assert_eq!(
            EndpointTrust::for_config(&v6)
                .expect("ok")
                .expect("some")
                .host,
            "::1"
        );
    }

    #[test]
    fn a_ca_file_must_be_a_private_pem_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = read_ca_file(&path).expect_err("no certificate");
        assert!(
            format!("{error:#}").contains("no PEM certificate"),
            "{error:#}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let error = read_ca_file(&path).expect_err("writable by others");
        assert!(format!("{error:#}").contains("chmod go-w"), "{error:#}");
        let error = read_ca_file(&dir.path().join("missing.pem")).expect_err("missing");
        assert!(format!("{error:#}").contains("api_ca"), "{error:#}");
    }

    #[test]
    fn a_client_config_speaks_only_tls13() {
        let config = client_config(None).expect("config");
        // The versions are fixed at build time; a handshake against a TLS 1.2-only server is
        // refused (tests/e2e/transport.rs). Here: the config builds and carries a verifier.
        assert!(config.alpn_protocols.is_empty());
        let mismatch = PinMismatch {
            host: "api.example.test".to_owned(),
            presented: Pin::of_spki(b"x"),
            pins: parse_pins(&[A, B], "api_pins").expect("pins"),
            pin_source: PinSource::Config,
        };
        let text = mismatch.to_string();
        assert!(text.contains("api.example.test") && text.contains(A) && text.contains(B));
        let wrapped = rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(mismatch)),
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, wrapped);
        assert!(matches!(refusal_in(&io), Some(Refusal::Pin(_))));
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        );
        // As the connector hands it on: an io::Error inside another.
        let wrapped = std::io::Error::other(alert);
        assert!(matches!(refusal_in(&wrapped), Some(Refusal::Version(_))));
        let other = std::io::Error::other("connection refused");
        assert!(refusal_in(&other).is_none());
    }
}
