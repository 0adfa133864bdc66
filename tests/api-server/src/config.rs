//! The command line (clap, derive) and the validated configuration the server starts from.
//!
//! Only this module sees clap types: [`Cli::into_command`] checks what clap cannot (a loopback
//! address, a usable token lifetime) and hands the rest of the server a [`Command`]. The flags are
//! those of the original hand-parsed server, with the same meaning, plus `--db`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use crate::limits::Rate;

/// The longest token lifetime accepted: tokens are short-lived by design, and a day is already
/// far beyond what km's refresher needs.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// The reference Kilometers API: subscription tokens, event ingestion and plugin downloads, on
/// loopback only.
#[derive(Debug, Parser)]
#[command(name = "km-api-server", version)]
pub(crate) struct Cli {
    /// Write a new Ed25519 token-signing key to FILE (PKCS#8 PEM, mode 0600) and its public key
    /// to FILE.pub (base64), print the public key on stdout, and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "signing_key", "customers", "db", "listen", "events", "plugins_dir", "teams_dir",
        "token_ttl", "delay_ms", "fail_after", "tls_cert", "tls_key", "tls_versions",
        "rate_limit", "abuse_threshold",
    ])]
    gen_key: Option<PathBuf>,

    /// The token-signing key (Ed25519, PKCS#8 PEM or DER), as `--gen-key` writes it.
    #[arg(long, value_name = "FILE", required_unless_present = "gen_key")]
    signing_key: Option<PathBuf>,

    /// The customers file (JSON, or TOML when it ends in `.toml`). Imported into the database at
    /// start and again whenever it changes; optional with `--db`, whose customers are then used.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["gen_key", "db"])]
    customers: Option<PathBuf>,

    /// The SQLite database file (created if missing, mode 0600). Without it the database lives
    /// in memory and is gone when the server stops.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,

    /// The address to listen on; loopback addresses only. Port 0 picks a free port.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Also append every accepted event to FILE as a JSON line; the lines already in it are
    /// imported at start, so deduplication survives a restart even without `--db`.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,

    /// The directory of plugin packages (`.kmpkg`) served for downloads and updates.
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,

    /// The teams directory: one directory per team with its `team.toml` (admin keys, members)
    /// and its signed policies. Read at start and again whenever it changes.
    #[arg(long, value_name = "DIR")]
    teams_dir: Option<PathBuf>,

    /// The lifetime of the subscription tokens it signs, in seconds (never past the end of the
    /// customer's subscription).
    #[arg(long, value_name = "SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TOKEN_TTL_SECS))]
    token_ttl: u64,

    /// Wait MS milliseconds before answering each `/api/` request (also `POST /control/delay`).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,

    /// After N `/api/` requests, answer every further one with 503, as after `POST /control/down`.
    #[arg(long, value_name = "N")]
    fail_after: Option<u64>,

    /// Serve https with this certificate chain (PEM, the server's certificate first); the base
    /// URL printed is then `https://IP:PORT`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The TLS versions offered, comma-separated: `1.3` (the default, what km requires), or
    /// `1.2` or `1.2,1.3`, to test that a client refuses them.
    #[arg(long, value_name = "VERSIONS", requires = "tls_cert")]
    tls_versions: Option<String>,

    /// Answer 429 with `Retry-After` past N requests per WINDOW of one customer (plugin
    /// authentications and event batches), e.g. `5/60s`. Unlimited without it.
    #[arg(long, value_name = "N/WINDOW")]
    rate_limit: Option<String>,

    /// Raise an abuse signal when one customer, API key or device fails to authenticate N
    /// times within WINDOW (`GET /control/abuse` lists them).
    #[arg(long, value_name = "N/WINDOW", default_value = "5/10m")]
    abuse_threshold: String,
}

/// A TLS protocol version the server can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

/// `--tls-cert`, `--tls-key`, `--tls-versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// At least one, without repeats.
    pub(crate) versions: Vec<TlsVersion>,
}

/// Parses `--tls-versions`.
fn tls_versions(text: &str) -> anyhow::Result<Vec<TlsVersion>> {
    let mut versions = Vec::new();
    for part in text.split(',').map(str::trim) {
        let version = match part {
            "1.2" => TlsVersion::Tls12,
            "1.3" => TlsVersion::Tls13,
            other => bail!("--tls-versions {text:?}: {other:?} is not 1.2 or 1.3"),
        };
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    Ok(versions)
}

/// What the server was asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write a new signing key and print its public half.
    GenKey { out: PathBuf },
    /// Serve the API (boxed: the configuration is large beside the other variant).
    Serve(Box<ServeConfig>),
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbLocation {
    /// In memory, for the life of the process.
    Memory,
    /// In a file, kept across restarts.
    File(PathBuf),
}

/// A validated configuration for serving.
#[derive(Debug)]
pub(crate) struct ServeConfig {
    pub(crate) signing_key: PathBuf,
    pub(crate) customers: Option<PathBuf>,
    pub(crate) db: DbLocation,
    /// A loopback address.
    pub(crate) listen: SocketAddr,
    pub(crate) events: Option<PathBuf>,
    pub(crate) plugins_dir: Option<PathBuf>,
    pub(crate) teams_dir: Option<PathBuf>,
    /// Seconds, at least 1.
    pub(crate) token_ttl: i64,
    pub(crate) delay_ms: u64,
    pub(crate) fail_after: Option<u64>,
    /// Serve https (`None`: plain http).
    pub(crate) tls: Option<TlsSettings>,
    /// `--rate-limit` (`None`: unlimited).
    pub(crate) rate_limit: Option<Rate>,
    /// `--abuse-threshold`.
    pub(crate) abuse_threshold: Rate,
}

impl Cli {
    /// Checks what clap cannot and returns the command to run.
    pub(crate) fn into_command(self) -> anyhow::Result<Command> {
        if let Some(out) = self.gen_key {
            return Ok(Command::GenKey { out });
        }
        let Some(signing_key) = self.signing_key else {
            bail!("--signing-key is required");
        };
        if !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {}: loopback addresses only",
                self.listen
            );
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                versions: tls_versions(self.tls_versions.as_deref().unwrap_or("1.3"))?,
            }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let token_ttl = i64::try_from(self.token_ttl)
            .map_err(|_| anyhow::anyhow!("--token-ttl {}: too large", self.token_ttl))?;
        Ok(Command::Serve(Box::new(ServeConfig {
            signing_key,
            customers: self.customers,
            db: self.db.map_or(DbLocation::Memory, DbLocation::File),
            listen: self.listen,
            events: self.events,
            plugins_dir: self.plugins_dir,
            teams_dir: self.teams_dir,
            token_ttl,
            delay_ms: self.delay_ms,
            fail_after: self.fail_after,
            tls,
            rate_limit: self
                .rate_limit
                .as_deref()
                .map(|r| Rate::parse(r, "--rate-limit"))
                .transpose()?,
            abuse_threshold: Rate::parse(&self.abuse_threshold, "--abuse-threshold")?,
        })))
    }
}

#[cfg(test)]
mod tests;
