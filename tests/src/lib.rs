//! The harness of km's end-to-end tests: finds the real binaries and plugin libraries that
//! `cargo build --workspace` produced, makes throw-away `KM_HOME`s, and signs libraries with keys
//! the test makes, using the real `km-sign`, and starts the reference API server
//! (`km-api-server`, the crate in `tests/api-server/`) on loopback, over plain http or behind
//! TLS with certificates the test makes ([`TestCa`], rcgen).
//!
//! The test binaries cannot build cdylibs or other packages' binaries themselves (cargo holds the
//! build lock while tests run, and `km-api-server` is not this package's binary), so the README's
//! test command builds the workspace first.
//!
//! km-bench uses this harness too (a normal library: what only the tests need, `km-cli` among
//! it, is in `[dev-dependencies]`, and km itself depends on none of this): the bench's world is
//! the same throw-away installation, made the same way, only with release binaries. What fails
//! here panics with the failing command's output, which is how the bench fails loudly as well:
//! a bench that cannot build its world has no figure to give.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

/// The cargo target directory's profile folder (`target/debug`, `target/release`) holding `km`,
/// `km-sign` and the plugin libraries: `KM_TEST_BIN_DIR` if set, else the folder of the running
/// executable, or the folder above it for a test executable (which lives in
/// `target/<profile>/deps/`; km-bench lives beside km).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KM_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe
        .parent()
        .expect("the running executable lives in a directory");
    match dir.parent() {
        Some(profile) if dir.file_name().is_some_and(|n| n == "deps") => profile.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// `bin_dir()/name`, which must exist.
pub fn built(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (with `--release` for km-bench; see \
         README)",
        path.display()
    );
    path
}

/// The real `km` binary.
pub fn km_bin() -> PathBuf {
    built("km")
}

/// The real `km-sign` binary.
pub fn km_sign_bin() -> PathBuf {
    built("km-sign")
}

/// The file name cargo gives the library of workspace plugin crate `crate_name`:
/// `console-logger` -> `libconsole_logger.so` (see [`km_signing::library_file_name`]).
pub fn lib_file_name(crate_name: &str) -> String {
    km_signing::library_file_name(&crate_name.replace('-', "_"))
}

/// The library file of a workspace plugin crate, e.g. `console-logger` ->
/// `target/debug/libconsole_logger.so`.
pub fn plugin_lib(crate_name: &str) -> PathBuf {
    built(&lib_file_name(crate_name))
}

/// A command for `program` with a clean environment except PATH and HOME (so that tests never
/// read the developer's real `~/.km`), and `KM_HOME` set to `home`.
pub fn command(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", home.join("no-such-home"));
    cmd.env("KM_HOME", home);
    cmd
}

/// Chromium from Debian, as `scripts/test` installs it (`KM_TEST_CHROMIUM`), for the tests of
/// HTML reports (ml-analytics, compliance-reporting).
pub fn chromium() -> PathBuf {
    match std::env::var_os("KM_TEST_CHROMIUM") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "KM_TEST_CHROMIUM is not set: run the tests with ./scripts/test, which installs \
             Debian's chromium (README)"
        ),
    }
}

/// Headless Chromium with the flags this machine needs (no sandbox as root, no GPU, and no
/// background network, which the closed network refuses), its profile in `profile`.
pub fn headless(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Output as text, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd`, panicking with its output when it does not exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("the command starts");
    assert!(
        output.status.success(),
        "command failed: {cmd:?}\n{}",
        describe(&output)
    );
    output
}

/// Sets `path` to `mode` (tests need 0700 directories and 0600/0644 files: km refuses group or
/// world-writable plugin files, and umask may vary).
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Fetches with `fetch` every `every` until `done` says yes or `limit` has passed, and returns
/// the last value fetched: the caller asserts on it, so that a timeout fails with what was seen.
/// (Things tests wait for happen on other processes' time: logs, events, a refresher.)
pub fn settle<T>(
    limit: Duration,
    every: Duration,
    mut fetch: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let value = fetch();
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(every);
    }
}

/// The child's status if it exits within `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    settle(
        limit,
        Duration::from_millis(10),
        || child.try_wait().expect("try_wait"),
        Option::is_some,
    )
}

/// Receives from `rx` until `wanted` says yes of a value, which it returns, or `limit` has passed
/// (`None`; also when the sender is gone). `wanted` sees every value received, in order, so that
/// the caller can keep what went by. (How a test waits for a line from a reader thread.)
pub fn recv_until<T>(
    rx: &mpsc::Receiver<T>,
    limit: Duration,
    mut wanted: impl FnMut(&T) -> bool,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let value = rx.recv_timeout(left).ok()?;
        if wanted(&value) {
            return Some(value);
        }
    }
}

/// A fresh HOME in a private temp directory, and nothing else: `KM_HOME` is `HOME/.km`, as km
/// finds it by default (what `km setup` and `km doctor` see on a new machine).
pub struct FreshHome {
    _dir: tempfile::TempDir,
    /// HOME.
    pub home: PathBuf,
}

impl FreshHome {
    /// A new, empty HOME.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("km-setup-")
            .tempdir()
            .expect("a temp dir");
        chmod(dir.path(), 0o700);
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("HOME");
        FreshHome { _dir: dir, home }
    }

    /// `HOME/.km`.
    pub fn km_home(&self) -> PathBuf {
        self.home.join(".km")
    }

    /// `km` with only HOME and PATH set, as a Node-based client starts it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(km_bin());
        cmd.env_clear().env("HOME", &self.home);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd
    }

    /// `km ARGS` with only HOME and PATH set; its output.
    pub fn km(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("km runs")
    }
}

impl Default for FreshHome {
    fn default() -> Self {
        Self::new()
    }
}

/// A throw-away km installation: `KM_HOME` with a plugin directory (both 0700), and a signing
/// key made by the real `km-sign` and trusted with the real `km trust add`.
pub struct KmEnv {
    /// Owns the temporary directory.
    pub dir: tempfile::TempDir,
    /// `KM_HOME`.
    pub home: PathBuf,
    /// `KM_HOME/plugins`.
    pub plugins: PathBuf,
    /// The trusted signing key's prefix (`.key`, `.pub`).
    pub key: PathBuf,
}

impl KmEnv {
    /// A fresh environment with one trusted Ed25519 key labelled `test`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("km-e2e-")
            .tempdir()
            .expect("a temp dir");
        chmod(dir.path(), 0o700);
        let home = dir.path().join("km-home");
        let plugins = home.join("plugins");
        std::fs::create_dir_all(&plugins).expect("creating KM_HOME/plugins");
        chmod(&home, 0o700);
        chmod(&plugins, 0o700);
        let env = KmEnv {
            key: dir.path().join("keys").join("test"),
            dir,
            home,
            plugins,
        };
        std::fs::create_dir_all(env.dir.path().join("keys")).expect("creating keys/");
        env.keygen(&env.key);
        let mut trust = env.km();
        trust
            .args(["trust", "add", "--label", "test"])
            .arg(env.key.with_extension("pub"));
        run_ok(&mut trust);
        env
    }

    /// `km` with this `KM_HOME`.
    pub fn km(&self) -> Command {
        command(&km_bin(), &self.home)
    }

    /// `km-sign` with this `KM_HOME`.
    pub fn km_sign(&self) -> Command {
        command(&km_sign_bin(), &self.home)
    }

    /// Makes an Ed25519 key pair at `prefix` (`.key`, `.pub`).
    pub fn keygen(&self, prefix: &Path) {
        let mut cmd = self.km_sign();
        cmd.args(["keygen", "--out"]).arg(prefix);
        run_ok(&mut cmd);
    }

    /// `km init --api-key API_KEY --api-url URL`: points this `KM_HOME` at a Kilometers API.
    pub fn init(&self, api_key: &str, api_url: &str) {
        run_ok(
            self.km()
                .args(["init", "--api-key", api_key, "--api-url", api_url])
                .stdin(Stdio::null()),
        );
    }

    /// Signs `lib` with the key at `key_prefix`, adding `extra` arguments to `km-sign sign`.
    pub fn sign_with(
        &self,
        lib: &Path,
        key_prefix: &Path,
        name: &str,
        version: &str,
        tier: &str,
        extra: &[&str],
    ) {
        let mut cmd = self.km_sign();
        cmd.arg("sign")
            .arg("--key")
            .arg(key_prefix.with_extension("key"))
            .args(["--name", name, "--version", version, "--tier", tier])
            .args(extra)
            .arg(lib);
        run_ok(&mut cmd);
    }

    /// Writes `library` to `dest` (mode 0644, as km wants a plugin file) and signs it with the
    /// trusted key as `name` `version` `tier`, adding `extra` arguments to `km-sign sign`.
    pub fn place_signed(
        &self,
        dest: &Path,
        library: &[u8],
        name: &str,
        version: &str,
        tier: &str,
        extra: &[&str],
    ) {
        std::fs::write(dest, library)
            .unwrap_or_else(|e| panic!("writing the plugin library {}: {e}", dest.display()));
        chmod(dest, 0o644);
        self.sign_with(dest, &self.key, name, version, tier, extra);
    }

    /// Copies the built library of workspace crate `crate_name` into the plugin directory as
    /// `file_name` (mode 0644) and signs it with the trusted key as `name` `version` `tier`.
    pub fn install_as(
        &self,
        crate_name: &str,
        file_name: &str,
        name: &str,
        version: &str,
        tier: &str,
    ) -> PathBuf {
        let dest = self.plugins.join(file_name);
        self.place_signed(&dest, &library(crate_name), name, version, tier, &[]);
        dest
    }

    /// Installs a workspace plugin under its usual file name, signed as `name` 1.0.0, tier free.
    pub fn install(&self, crate_name: &str, name: &str) -> PathBuf {
        self.install_signed(crate_name, name, &[])
    }

    /// Like [`KmEnv::install`], with `extra` arguments to `km-sign sign` (for example
    /// `--capability intercept`).
    pub fn install_signed(&self, crate_name: &str, name: &str, extra: &[&str]) -> PathBuf {
        let dest = self.plugins.join(lib_file_name(crate_name));
        self.place_signed(&dest, &library(crate_name), name, "1.0.0", "free", extra);
        dest
    }

    /// Installs a customer build of workspace crate `crate_name` (see [`customer_build`]) for
    /// `customer` at `tier`, under the crate's usual file name, signed with the trusted key as
    /// `name` 1.0.0 of that tier (as the vendor signs one), with `extra` arguments to `km-sign
    /// sign` (`--capability intercept`).
    pub fn install_customer_build(
        &self,
        crate_name: &str,
        name: &str,
        tier: km_abi::Tier,
        server: &ApiServer,
        customer: &Customer,
        extra: &[&str],
    ) -> PathBuf {
        let dest = self.plugins.join(lib_file_name(crate_name));
        let bytes = customer_build(crate_name, &server.public_key, customer, tier);
        self.place_signed(&dest, &bytes, name, "1.0.0", tier.as_str(), extra);
        dest
    }

    /// Writes `KM_HOME/config.toml` (mode 0600, as km wants a file that may hold a key).
    pub fn write_config(&self, text: &str) {
        let path = self.home.join("config.toml");
        km_durable::write_atomic(&path, text.as_bytes(), km_durable::PRIVATE)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Installs the real api-logger stamped for `customer` with `server`'s public key, signed
    /// with the trusted key as api-logger 1.0.0, Pro (as a customer build is).
    pub fn install_stamped_api_logger(&self, server: &ApiServer, customer: &Customer) -> PathBuf {
        self.install_customer_build(
            "api-logger",
            "api-logger",
            km_abi::Tier::Pro,
            server,
            customer,
            &[],
        )
    }

    /// `km plugin-refresh --json` with this `KM_HOME`; see [`refresh_with`].
    pub fn plugin_refresh(&self, plugin: &str) -> (i32, Value, Output) {
        refresh_with(self.km(), plugin)
    }

    /// A plugin's data directory in this `KM_HOME`.
    pub fn data_dir(&self, plugin: &str) -> PathBuf {
        self.home.join("state").join("plugins").join(plugin)
    }
}

impl Default for KmEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes of the built library of workspace crate `crate_name`.
pub fn library(crate_name: &str) -> Vec<u8> {
    let path = plugin_lib(crate_name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The built library of workspace crate `crate_name` as a customer build of `customer` at `tier`:
/// the customer's credentials and the API's public key (raw Ed25519, [`ApiServer::public_key`])
/// stamped into the region the plugin reserves, as `km-sign build-plugin` stamps them (not yet
/// signed).
pub fn customer_build(
    crate_name: &str,
    api_public_key: &[u8],
    customer: &Customer,
    tier: km_abi::Tier,
) -> Vec<u8> {
    use km_plugin_sdk::credentials::{stamp, StampInput};
    let mut bytes = library(crate_name);
    let credentials = km_plugin_sdk::Credentials {
        customer_id: customer.id.to_owned(),
        customer_token: customer.customer_token(),
        tier,
        build_time: unix_now(),
    };
    stamp(
        &mut bytes,
        &StampInput {
            api_public_key,
            credentials: &credentials,
        },
    )
    .unwrap_or_else(|e| panic!("{crate_name} reserves no usable credentials region: {e}"));
    bytes
}

/// Runs `km` (a command made by [`KmEnv::km`], with what else the test sets) as `km
/// plugin-refresh --json`: its exit code, the record of `plugin` in what it printed, and its
/// output. Panics, showing the output, when it printed no JSON or no record of `plugin`.
pub fn refresh_with(mut km: Command, plugin: &str) -> (i32, Value, Output) {
    let output = km
        .args(["plugin-refresh", "--json"])
        .output()
        .expect("km runs");
    let records: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "plugin-refresh --json printed no JSON ({e})\n{}",
            describe(&output)
        )
    });
    let record = records
        .as_array()
        .and_then(|all| all.iter().find(|r| r["plugin"] == plugin))
        .cloned()
        .unwrap_or_else(|| panic!("no record of {plugin}\n{}", describe(&output)));
    (output.status.code().unwrap_or(-1), record, output)
}

/// A real `km monitor -- cat` of a [`KmEnv`], its subscriptions refreshed every second
/// (`KM_REFRESH_INTERVAL_SECS=1`) and a short grace period, its stderr in `DIR/km-monitor.log`:
/// a session that relays while the refresher talks to the API. Killed on drop.
pub struct EchoSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl EchoSession {
    /// Starts the session.
    pub fn start(env: &KmEnv) -> EchoSession {
        let log = env.dir.path().join("km-monitor.log");
        let mut child = env
            .km()
            .args(["monitor", "--", "cat"])
            .env("KM_REFRESH_INTERVAL_SECS", "1")
            .env("KM_GRACE_MS", "300")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("km monitor's log"),
            ))
            .spawn()
            .expect("km monitor starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        EchoSession {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `line` (ending in a newline) and reads cat's echo back through km, asserting it is
    /// the same, byte for byte.
    pub fn echo(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("the session is open");
        stdin.write_all(line).expect("write");
        stdin.flush().expect("flush");
        let mut back = Vec::new();
        self.stdout.read_until(b'\n', &mut back).expect("read");
        assert_eq!(
            back,
            line,
            "the relay changed a line: {:?}",
            String::from_utf8_lossy(&back)
        );
    }

    /// Ends the session as a client does (closes km's stdin) and asserts km exits 0.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("km exits");
        assert!(status.success(), "{status:?}");
    }

    /// Kills km (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill km");
        let _ = self.child.wait();
    }
}

impl Drop for EchoSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A customer of the reference API (`km-api-server`): who they are and the API key they use.
pub struct Customer {
    /// The customer id, stamped into their builds.
    pub id: &'static str,
    /// The API key (the server keeps only its SHA-256).
    pub api_key: &'static str,
}

impl Customer {
    /// The customer token the reference API holds for this customer, and that tests stamp into
    /// the customer's builds.
    pub fn customer_token(&self) -> String {
        format!("ct-{}", self.id)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// Writes the reference API's customers file: each customer with its tier, the `api_logging`
/// feature, a subscription that ends in 30 days and the seat limit `seats` names for it (none
/// otherwise). Written atomically, so that the server, which re-reads the file when it changes,
/// never reads half of it.
fn write_customers(path: &Path, customers: &[(&Customer, &str)], seats: &[(String, u32)]) {
    let list: Vec<Value> = customers
        .iter()
        .map(|(c, tier)| {
            let api_key_sha256 = hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                c.api_key.as_bytes(),
            ));
            let mut entry = json!({
                "id": c.id,
                "api_key_sha256": api_key_sha256,
                "tier": tier,
                "features": ["api_logging"],
                "subscription_end": unix_now() + 30 * 24 * 3600,
                "customer_token": c.customer_token(),
            });
            if let Some((_, limit)) = seats.iter().find(|(id, _)| id == c.id) {
                entry["seats"] = json!(limit);
            }
            entry
        })
        .collect();
    let text = json!({ "customers": list }).to_string();
    km_durable::write_atomic(path, text.as_bytes(), km_durable::PRIVATE)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The `sha256/<base64>` pin of a DER SubjectPublicKeyInfo, as km's `api_pins` take it.
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!(
        "sha256/{}",
        STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
    )
}

/// The pin of a fresh key that no server uses: the backup pin a pin set must carry.
pub fn spare_pin() -> String {
    let key = rcgen::KeyPair::generate().expect("a spare key");
    spki_pin(&key.public_key_der())
}

/// A certificate authority made by the test (rcgen, ECDSA P-256), written as `NAME-ca.pem`
/// (mode 0644, what km's `api_ca` names), and the server certificates it issues.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_file: PathBuf,
    der: Vec<u8>,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: PathBuf,
}

/// A server certificate for 127.0.0.1 and localhost, with its key and pin.
pub struct ServerCert {
    /// The certificate, PEM (`--tls-cert`).
    pub cert_file: PathBuf,
    /// Its private key, PEM (`--tls-key`), mode 0600.
    pub key_file: PathBuf,
    /// The pin of its key (`sha256/<base64>`).
    pub pin: String,
}

impl TestCa {
    /// A new CA whose files go into `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("km test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("the CA certificate");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the CA certificate");
        chmod(&cert_file, 0o644);
        TestCa {
            cert_file,
            der: cert.der().to_vec(),
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// Issues a server certificate for 127.0.0.1 and localhost with a fresh key, written as
    /// `NAME.pem` and `NAME.key.pem`.
    pub fn issue(&self, name: &str) -> ServerCert {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("the server certificate");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}.key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the certificate");
        km_durable::write_atomic(
            &key_file,
            key.serialize_pem().as_bytes(),
            km_durable::PRIVATE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        ServerCert {
            cert_file,
            key_file,
            pin: spki_pin(&key.public_key_der()),
        }
    }
}

/// A running reference API (`km-api-server`) on loopback, with a signing key of its own; killed
/// on drop. Made by [`ApiServer::builder`].
pub struct ApiServer {
    child: Child,
    /// The base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The public key of the server's token-signing key (raw Ed25519).
    pub public_key: Vec<u8>,
    /// The same key in base64 in a file, as `km-sign build-plugin --api-public-key` takes it.
    pub public_key_file: PathBuf,
    customers_file: PathBuf,
    seats: Vec<(String, u32)>,
    plugins_dir: Option<PathBuf>,
    /// The CA of its certificate when it serves https (for the test controls).
    ca_der: Option<Vec<u8>>,
    /// The file its stderr goes to.
    pub log: PathBuf,
}

/// What an [`ApiServer`] starts with: its customers, and optionally a package directory
/// (`--plugins-dir`), an events file (`--events`) and a teams directory (`--teams-dir`).
pub struct ApiServerBuilder<'a> {
    dir: PathBuf,
    customers: Vec<(&'a Customer, &'a str)>,
    seats: Vec<(String, u32)>,
    plugins_dir: Option<PathBuf>,
    events: Option<PathBuf>,
    tls: Option<(Vec<u8>, PathBuf, PathBuf)>,
    tls_versions: Option<String>,
    extra: Vec<String>,
    teams_dir: Option<PathBuf>,
}

impl<'a> ApiServerBuilder<'a> {
    /// Serves https with `cert` (issued by `ca`), TLS 1.3 only unless [`Self::tls_versions`].
    pub fn tls(mut self, ca: &TestCa, cert: &ServerCert) -> Self {
        self.tls = Some((
            ca.der.clone(),
            cert.cert_file.clone(),
            cert.key_file.clone(),
        ));
        self
    }

    /// `--tls-versions` (`"1.2"`: a server km must refuse).
    pub fn tls_versions(mut self, versions: &str) -> Self {
        self.tls_versions = Some(versions.to_owned());
        self
    }

    /// Further command-line arguments (`--rate-limit 3/60s`, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The customers and their tiers (`"free"`, `"pro"`, ...). None by default.
    pub fn customers(mut self, customers: &[(&'a Customer, &'a str)]) -> Self {
        self.customers = customers.to_vec();
        self
    }

    /// Limits `customer` to `seats` installations (the customers file's `seats`), also in the
    /// files [`ApiServer::set_customers`] writes later.
    pub fn seat_limit(mut self, customer: &Customer, seats: u32) -> Self {
        self.seats.push((customer.id.to_owned(), seats));
        self
    }

    /// Serves the packages in `dir` (created if missing) for downloads and updates.
    pub fn plugins_dir(mut self, dir: &Path) -> Self {
        self.plugins_dir = Some(dir.to_path_buf());
        self
    }

    /// Appends the events it accepts to `file`, as JSON lines.
    pub fn events(mut self, file: &Path) -> Self {
        self.events = Some(file.to_path_buf());
        self
    }

    /// Reads teams, members and signed team policies from `dir` (which must exist).
    pub fn teams_dir(mut self, dir: &Path) -> Self {
        self.teams_dir = Some(dir.to_path_buf());
        self
    }

    /// Makes the server's key, writes its files into the builder's directory (key, `api.pub`,
    /// `customers.json`, `api-server.log` with what it prints on stderr), starts it and waits
    /// for the address it listens on.
    pub fn start(self) -> ApiServer {
        let exe = built("km-api-server");
        let key = self.dir.join("api-server.key");
        let out = Command::new(&exe)
            .arg("--gen-key")
            .arg(&key)
            .output()
            .expect("km-api-server runs");
        assert!(out.status.success(), "{}", describe(&out));
        let b64 = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let public_key = STANDARD
            .decode(&b64)
            .expect("the public key is printed in base64");
        let public_key_file = self.dir.join("api.pub");
        std::fs::write(&public_key_file, &b64).expect("writing api.pub");
        let customers_file = self.dir.join("customers.json");
        write_customers(&customers_file, &self.customers, &self.seats);
        let log_path = self.dir.join("api-server.log");
        let log = std::fs::File::create(&log_path).expect("log file");

        let mut cmd = Command::new(&exe);
        cmd.arg("--signing-key")
            .arg(&key)
            .arg("--customers")
            .arg(&customers_file);
        if let Some(dir) = &self.plugins_dir {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            cmd.arg("--plugins-dir").arg(dir);
        }
        if let Some(events) = &self.events {
            cmd.arg("--events").arg(events);
        }
        if let Some((_, cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(versions) = &self.tls_versions {
            cmd.args(["--tls-versions", versions]);
        }
        cmd.args(&self.extra);
        if let Some(dir) = &self.teams_dir {
            cmd.arg("--teams-dir").arg(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("km-api-server starts");
        // Owned before anything can panic, so that the server is killed whatever happens next.
        let stdout = child.stdout.take().expect("stdout");
        let mut server = ApiServer {
            child,
            url: String::new(),
            public_key,
            public_key_file,
            customers_file,
            seats: self.seats,
            plugins_dir: self.plugins_dir,
            ca_der: self.tls.map(|(der, _, _)| der),
            log: log_path,
        };
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("reading the address");
        server.url = first.trim().to_owned();
        let scheme = if server.ca_der.is_some() {
            "https"
        } else {
            "http"
        };
        assert!(
            server.url.starts_with(&format!("{scheme}://127.0.0.1:")),
            "unexpected first line {first:?}"
        );
        server
    }
}

impl ApiServer {
    /// A server whose files go into `dir`, without customers until told.
    pub fn builder<'a>(dir: &Path) -> ApiServerBuilder<'a> {
        ApiServerBuilder {
            dir: dir.to_path_buf(),
            customers: Vec::new(),
            seats: Vec::new(),
            plugins_dir: None,
            events: None,
            tls: None,
            tls_versions: None,
            extra: Vec::new(),
            teams_dir: None,
        }
    }

    /// The directory it serves packages from.
    pub fn plugins_dir(&self) -> &Path {
        self.plugins_dir
            .as_deref()
            .expect("the server was started with a plugins dir")
    }

    /// Rewrites the customers file; the server re-reads it on change.
    pub fn set_customers(&self, customers: &[(&Customer, &str)]) {
        // Make sure the modification time moves even on coarse clocks.
        std::thread::sleep(Duration::from_millis(20));
        write_customers(&self.customers_file, customers, &self.seats);
    }

    /// `POST /control/{path_and_query}` (`down`, `up`, `delay?ms=N`, `tamper?mode=M`),
    /// asserting that the server accepts it.
    pub fn control(&self, path_and_query: &str) {
        let (status, body) = self.request("POST", &format!("/control/{path_and_query}"));
        assert_eq!(status, 200, "control {path_and_query}: {body}");
    }

    /// `GET /control/{path_and_query}` (`stats`, `abuse`, ...), parsed as JSON.
    pub fn control_json(&self, path_and_query: &str) -> Value {
        let (status, body) = self.request("GET", &format!("/control/{path_and_query}"));
        assert_eq!(status, 200, "control {path_and_query}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("control {path_and_query}: not JSON ({e}): {body}"))
    }

    /// One request without a body: (status, body). Over TLS when the server serves https
    /// (any version it offers, trusting its test CA).
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        self.send(method, path, &[], b"")
    }

    /// One request with `headers` and `body`: (status, body).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            self.addr(),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Sends `bytes` as they are (a whole HTTP/1.1 request that asks for `connection: close`,
    /// such as one [`RecordingProxy`] recorded): (status, body).
    pub fn send_raw(&self, bytes: &[u8]) -> (u16, String) {
        let stream = TcpStream::connect(self.addr()).expect("connect to km-api-server");
        let text = match &self.ca_der {
            None => exchange(stream, bytes),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(rustls::pki_types::CertificateDer::from(ca.clone()))
                    .expect("the test CA is usable");
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(rustls::ALL_VERSIONS)
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                let conn = rustls::ClientConnection::new(Arc::new(config), name)
                    .expect("a TLS connection");
                exchange(rustls::StreamOwned::new(conn, stream), bytes)
            }
        };
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }
}

/// Writes `request` and reads the answer until the server closes (a TLS close without
/// close_notify is not an error here: the answer is in by then).
fn exchange(mut stream: impl std::io::Read + std::io::Write, request: &[u8]) -> String {
    stream.write_all(request).expect("request");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl ApiServer {
    /// `host:port`.
    fn addr(&self) -> &str {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }
}

/// A loopback HTTP proxy in front of a plain-http [`ApiServer`] that records every request it
/// forwards, byte for byte (with `connection: close`, so that a recorded request can be sent
/// again as it is): how a test captures what km really sends, to replay it. One request per
/// connection; the thread ends with the test process.
pub struct RecordingProxy {
    /// The proxy's base URL, for km's `api_url`.
    pub url: String,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingProxy {
    /// A proxy forwarding to `server`.
    pub fn start(server: &ApiServer) -> RecordingProxy {
        assert!(server.ca_der.is_none(), "the proxy forwards plain http");
        let upstream = server.addr().to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listening on loopback");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let log = recorded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(request) = read_request(&client) else {
                    continue;
                };
                log.lock().expect("record").push(request.clone());
                let Ok(stream) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let answer = exchange(stream, &request);
                let mut client = client;
                let _ = client.write_all(answer.as_bytes());
            }
        });
        RecordingProxy { url, recorded }
    }

    /// The requests recorded so far for `path`, oldest first.
    pub fn requests_to(&self, path: &str) -> Vec<Vec<u8>> {
        let prefix = format!(" {path} ");
        self.recorded
            .lock()
            .expect("record")
            .iter()
            .filter(|r| {
                let line = r.split(|&b| b == b'\n').next().unwrap_or_default();
                String::from_utf8_lossy(line).contains(&prefix)
            })
            .cloned()
            .collect()
    }
}

/// One HTTP/1.1 request read from `stream` (head and `content-length` body), with its
/// `connection` header replaced by `connection: close`.
fn read_request(stream: &TcpStream) -> Option<Vec<u8>> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        }
        head.push_str(&line);
    }
    head.push_str("connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    Some(request)
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test hands a process its stdin and stdout, as the two kinds of MCP client do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStdio {
    /// Anonymous pipes: what Python's `subprocess`, shells and most test harnesses use.
    Pipes,
    /// One Unix stream socketpair for stdin and one for stdout: what Node (libuv) gives a child
    /// for `stdio: 'pipe'`, and so every MCP client built on Node or Electron.
    SocketPairs,
}

impl ClientStdio {
    /// Both kinds, for tests that run once per kind.
    pub const ALL: [ClientStdio; 2] = [ClientStdio::Pipes, ClientStdio::SocketPairs];
}

/// The client's end of a process's stdin.
pub enum ClientStdin {
    /// A pipe; `None` once ended.
    Pipe(Option<ChildStdin>),
    /// A socket; it stays open after [`ClientStdin::end`], as Node's does until the child exits.
    Socket(UnixStream),
}

impl ClientStdin {
    /// Ends the input the way this kind of client does: a pipe is closed; a socket is shut down
    /// for writing (what libuv's `uv_shutdown` does when a Node client calls `stdin.end()`) and
    /// kept open, so the process sees end of input while the descriptor still exists.
    pub fn end(&mut self) {
        match self {
            ClientStdin::Pipe(pipe) => drop(pipe.take()),
            ClientStdin::Socket(socket) => {
                let _ = socket.shutdown(Shutdown::Write);
            }
        }
    }
}

impl Write for ClientStdin {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientStdin::Pipe(Some(pipe)) => pipe.write(buf),
            ClientStdin::Pipe(None) => Err(std::io::ErrorKind::BrokenPipe.into()),
            ClientStdin::Socket(socket) => socket.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client's end of a process's stdout.
pub enum ClientStdout {
    /// A pipe.
    Pipe(ChildStdout),
    /// A socket.
    Socket(UnixStream),
}

impl Read for ClientStdout {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientStdout::Pipe(pipe) => pipe.read(buf),
            ClientStdout::Socket(socket) => socket.read(buf),
        }
    }
}

/// A child process that a watchdog kills when it runs past a limit, so that a test of
/// something that hangs fails with a message instead of hanging the suite. Made by
/// [`Watched::spawn`] or [`spawn_client`].
pub struct Watched {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
    disarm: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
    limit: Duration,
}

impl Watched {
    /// Starts `cmd` (its stdio as the caller set it) and arms the watchdog.
    pub fn spawn(cmd: &mut Command, limit: Duration) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Self::watch(child, limit)
    }

    fn watch(child: Child, limit: Duration) -> Self {
        let child = Arc::new(Mutex::new(child));
        let killed = Arc::new(AtomicBool::new(false));
        let (disarm, disarmed) = mpsc::channel::<()>();
        let watchdog = {
            let child = Arc::clone(&child);
            let killed = Arc::clone(&killed);
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                    killed.store(true, Ordering::SeqCst);
                    // `Child::kill` does nothing once the child has been reaped, so this can
                    // never signal a process that reused the pid.
                    let _ = child.lock().expect("the child's lock").kill();
                }
            })
        };
        Watched {
            child,
            killed,
            disarm: Some(disarm),
            watchdog: Some(watchdog),
            limit,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.lock().expect("the child's lock").id()
    }

    /// Takes the child's piped stdin.
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        self.child.lock().expect("the child's lock").stdin.take()
    }

    /// Takes the child's piped stdout.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.child.lock().expect("the child's lock").stdout.take()
    }

    /// Takes the child's piped stderr.
    pub fn take_stderr(&self) -> Option<std::process::ChildStderr> {
        self.child.lock().expect("the child's lock").stderr.take()
    }

    /// Whether the watchdog had to kill the process.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .expect("the child's lock")
            .try_wait()
            .expect("try_wait")
    }

    /// Waits for the process to exit and returns its status; panics, naming `what` and showing
    /// `details()`, if the watchdog had to kill it.
    pub fn wait(&self, what: &str, details: impl FnOnce() -> String) -> ExitStatus {
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !self.was_killed(),
            "{what}: the process hung: it had not finished after {:?} and was killed\n{}",
            self.limit,
            details()
        );
        status
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if let Ok(mut child) = self.child.lock() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts `cmd` with its stdin and stdout of the kind `stdio` (stderr as the caller set it),
/// watched by a watchdog that kills it after `limit`. Returns it with the client's ends.
pub fn spawn_client(
    mut cmd: Command,
    stdio: ClientStdio,
    limit: Duration,
) -> (Watched, ClientStdin, ClientStdout) {
    match stdio {
        ClientStdio::Pipes => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
            let stdin = child.stdin.take().expect("stdin is piped");
            let stdout = child.stdout.take().expect("stdout is piped");
            (
                Watched::watch(child, limit),
                ClientStdin::Pipe(Some(stdin)),
                ClientStdout::Pipe(stdout),
            )
        }
        ClientStdio::SocketPairs => {
            let (stdin, theirs_in) = UnixStream::pair().expect("a socketpair for stdin");
            let (stdout, theirs_out) = UnixStream::pair().expect("a socketpair for stdout");
            cmd.stdin(Stdio::from(OwnedFd::from(theirs_in)))
                .stdout(Stdio::from(OwnedFd::from(theirs_out)));
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
            // The command holds the child's ends until it is dropped: they must go now, or the
            // child would never see the end of its input.
            drop(cmd);
            (
                Watched::watch(child, limit),
                ClientStdin::Socket(stdin),
                ClientStdout::Socket(stdout),
            )
        }
    }
}
