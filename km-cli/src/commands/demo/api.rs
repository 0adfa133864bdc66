//! The reference Kilometers API (`km-api-server`, built beside km) run by `km demo` on loopback,
//! with one demo customer on the Enterprise tier (and its team, see [`super::team`]), so that the Pro and Enterprise plugins
//! authenticate for real: the same token signing, customer tokens and endpoints as the tests use.
//!
//! The customer's API key and token are fresh random values for each run (nothing secret is
//! reused between demos), and reach the tools that need them through the environment rather
//! than the command line, as their documentation recommends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde_json::{json, Value};

/// How long the server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The demo's customer of the reference API.
pub(super) struct Customer {
    pub(super) id: &'static str,
    pub(super) api_key: String,
    pub(super) token: String,
}

impl Customer {
    pub(super) fn new() -> Result<Customer> {
        Ok(Customer {
            id: "cust_demo",
            api_key: format!("km_demo_{}", random_hex()?),
            token: random_hex()?,
        })
    }
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness for the demo customer's secrets"))?;
    Ok(km_durable::digest::hex(&bytes))
}

/// A running `km-api-server`; killed when dropped.
pub(super) struct ApiServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(super) url: String,
    /// The server's token-signing public key (raw Ed25519), which customer builds trust.
    pub(super) public_key: Vec<u8>,
    /// Every event it accepted, one JSON line each (`--events`).
    pub(super) events_file: PathBuf,
    /// What it printed on stderr (its request log), shown when something fails.
    log_file: PathBuf,
}

impl ApiServer {
    /// Makes the server's key and customers file in `dir` and starts it on a free loopback port.
    pub(super) fn start(
        exe: &Path,
        dir: &Path,
        customer: &Customer,
        teams_dir: &Path,
    ) -> Result<ApiServer> {
        let key = dir.join("api-server.key");
        let output = Command::new(exe)
            .arg("--gen-key")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} --gen-key", exe.display()))?;
        if !output.status.success() {
            bail!(
                "km-api-server --gen-key failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let public_key = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&output.stdout).trim())
            .ok()
            .filter(|k| k.len() == 32)
            .context("km-api-server --gen-key printed no Ed25519 public key")?;

        let customers = dir.join("customers.json");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let document = json!({ "customers": [{
            "id": customer.id,
            "api_key_sha256": km_durable::digest::sha256_hex(customer.api_key.as_bytes()),
            "tier": "enterprise",
            "features": ["api_logging"],
            "subscription_end": now + 24 * 3600,
            "customer_token": customer.token,
        }]});
        km_durable::write_atomic(
            &customers,
            document.to_string().as_bytes(),
            km_durable::PRIVATE,
        )
        .with_context(|| format!("writing {}", customers.display()))?;

        let events_file = dir.join("events.jsonl");
        let log_file = dir.join("api-server.log");
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("creating {}", log_file.display()))?;
        let mut child = Command::new(exe)
            .arg("--signing-key")
            .arg(&key)
            .arg("--customers")
            .arg(&customers)
            .arg("--events")
            .arg(&events_file)
            .arg("--teams-dir")
            .arg(teams_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("km-api-server's stdout")?;
        let mut server = ApiServer {
            child,
            url: String::new(),
            public_key,
            events_file,
            log_file,
        };
        // Its first line is its address; the rest of its stdout is read and dropped so that it
        // can never block on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) if line.starts_with("http://127.0.0.1:") => {
                server.url = line.trim().to_owned();
                Ok(server)
            }
            Ok(Some(Ok(line))) => bail!("km-api-server printed {line:?}, not its address"),
            Ok(_) => bail!(
                "km-api-server did not start: {}",
                server.log().unwrap_or_default()
            ),
            Err(_) => bail!("km-api-server did not say where it listens within {START_TIMEOUT:?}"),
        }
    }

    /// The events it accepted.
    pub(super) fn events(&self) -> Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.events_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.events_file.display()))
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("an event in {}", self.events_file.display()))
            })
            .collect()
    }

    /// Its request log so far.
    pub(super) fn log(&self) -> Result<String> {
        std::fs::read_to_string(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
