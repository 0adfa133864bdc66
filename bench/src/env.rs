//! The bench's world: the release binaries beside `km-bench`, a throw-away `KM_HOME` with a
//! trusted key made by the real `km-sign`, the bundled plugins signed and installed, the
//! reference Kilometers API (`km-api-server`) on loopback authorising the premium ones, and child
//! processes that cannot hang the run (every child has a watchdog that kills it at a deadline).
//!
//! Premium plugins (Pro, Enterprise) do nothing without a valid subscription, so a figure taken
//! with an unauthorised one measures a no-op. Each is installed as a customer build (stamped
//! with the bench customer's credentials and the API server's public key, as `km-sign
//! build-plugin` stamps one), `km init` points `KM_HOME` at the API server, and after every km
//! run with plugins [`BenchEnv::check_run`] reads the authorisation records km wrote and fails the
//! bench when a premium plugin was not authorised. The same call reads what every plugin was
//! handed and what it missed (`KM_HOME/state/sessions`, written by km at the end of a session),
//! so that a figure taken while a plugin dropped messages is reported as such.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What a bundled plugin does on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Watches what was forwarded.
    Observer,
    /// Judges lines before they are forwarded (signed with the `intercept` capability).
    Interceptor,
}

/// A bundled (shipped, non-test) plugin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bundled {
    pub(crate) krate: &'static str,
    pub(crate) name: &'static str,
    pub(crate) tier: &'static str,
    pub(crate) role: Role,
}

impl Bundled {
    /// Whether it needs a subscription (and so a customer build and the API).
    pub(crate) fn premium(&self) -> bool {
        self.tier != "free"
    }
}

/// Every bundled plugin km ships. One whose library is not built (a plugin not yet in this
/// workspace) is left out with a note: [`BenchEnv::bundled`] lists those present.
pub(crate) const BUNDLED: &[Bundled] = &[
    Bundled {
        krate: "console-logger",
        name: "console-logger",
        tier: "free",
        role: Role::Observer,
    },
    Bundled {
        krate: "api-logger",
        name: "api-logger",
        tier: "pro",
        role: Role::Observer,
    },
    Bundled {
        krate: "ml-analytics",
        name: "ml-analytics",
        tier: "pro",
        role: Role::Observer,
    },
    Bundled {
        krate: "compliance-reporting",
        name: "compliance-reporting",
        tier: "enterprise",
        role: Role::Observer,
    },
    Bundled {
        krate: "team-collaboration",
        name: "team-collaboration",
        tier: "enterprise",
        role: Role::Observer,
    },
    Bundled {
        krate: "tool-guard",
        name: "tool-guard",
        tier: "free",
        role: Role::Interceptor,
    },
    Bundled {
        krate: "advanced-filters",
        name: "advanced-filters",
        tier: "pro",
        role: Role::Interceptor,
    },
];

/// The version every workspace plugin reports.
pub(crate) const PLUGIN_VERSION: &str = "1.0.0";

/// The bench's customer of the reference API: an Enterprise subscription covers every tier.
const CUSTOMER: &str = "cust_bench";
const API_KEY: &str = "km_live_bench_0123456789abcdef";

/// How many test-noop copies the largest scaling run loads.
pub(crate) const MAX_NOOPS: usize = 20;

/// What one km run did with its plugins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handed {
    /// (plugin, messages handled, messages dropped), for every plugin of the run.
    pub(crate) plugins: Vec<(String, u64, u64)>,
}

impl Handed {
    /// Messages dropped, all plugins together.
    pub(crate) fn drops(&self) -> u64 {
        self.plugins.iter().map(|p| p.2).sum()
    }

    /// `name handled/dropped` for each plugin.
    pub(crate) fn describe(&self) -> String {
        self.plugins
            .iter()
            .map(|(name, handled, dropped)| format!("{name} {handled} handled, {dropped} dropped"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A running `km-api-server`; killed on drop.
struct ApiServer {
    child: Child,
    url: String,
    public_key: Vec<u8>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries and a prepared `KM_HOME`; the temporary directory goes when this is dropped.
pub(crate) struct BenchEnv {
    /// Owns the temporary directory.
    pub(crate) dir: tempfile::TempDir,
    /// Where `km`, `km-sign` and the plugin libraries are.
    pub(crate) bin_dir: PathBuf,
    /// `KM_HOME`, pointed at the API server, trusting the bench's key.
    pub(crate) home: PathBuf,
    /// The trusted key's prefix (`.key`, `.pub`).
    pub(crate) key: PathBuf,
    /// The bundled plugins whose libraries are built.
    pub(crate) bundled: Vec<Bundled>,
    api: ApiServer,
}

impl BenchEnv {
    /// Makes the environment: key, trust, API server, `km init`, and a plugin directory for
    /// each set the sections load.
    pub(crate) fn new() -> Result<Self> {
        let exe = std::env::current_exe().context("finding km-bench's own path")?;
        let bin_dir = exe
            .parent()
            .context("km-bench has no parent directory")?
            .to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("km-bench-")
            .tempdir()
            .context("making a temporary directory")?;
        chmod(dir.path(), 0o700)?;
        for needed in ["km", "km-sign", "km-api-server"] {
            if !bin_dir.join(needed).exists() {
                bail!(
                    "{} is missing: run `cargo build --release --workspace` first",
                    bin_dir.join(needed).display()
                );
            }
        }
        let bundled: Vec<Bundled> = BUNDLED
            .iter()
            .copied()
            .filter(|b| {
                let built = bin_dir.join(lib_file_name(b.krate)).exists();
                if !built {
                    eprintln!(
                        "km-bench: {} is not built here; the figures leave it out",
                        b.name
                    );
                }
                built
            })
            .collect();
        let api = start_api(&bin_dir, dir.path())?;
        let home = dir.path().join("km-home");
        let env = BenchEnv {
            key: dir.path().join("bench-key"),
            bin_dir,
            home,
            dir,
            bundled,
            api,
        };
        std::fs::create_dir_all(env.home.join("plugins"))?;
        chmod(&env.home, 0o700)?;
        chmod(&env.home.join("plugins"), 0o700)?;
        let mut keygen = env.command(&env.bin_dir.join("km-sign"));
        keygen.args(["keygen", "--out"]).arg(&env.key);
        run_ok(&mut keygen)?;
        let mut trust = env.command(&env.bin_dir.join("km"));
        trust
            .args(["trust", "add", "--label", "bench"])
            .arg(env.key.with_extension("pub"));
        run_ok(&mut trust)?;
        let mut init = env.command(&env.bin_dir.join("km"));
        init.args(["init", "--api-key", API_KEY, "--api-url", &env.api.url])
            .stdin(Stdio::null());
        run_ok(&mut init)?;
        // Every plugin set a section loads, each in a directory of its own.
        let observers: Vec<Bundled> = env.of_role(Role::Observer);
        env.install_set("observers", &observers)?;
        env.install_set("bundled", &env.bundled.clone())?;
        for b in env.bundled.clone() {
            env.install_set(&format!("only-{}", b.krate), &[b])?;
        }
        let noop = env.single_plugin_dir("test-noop");
        make_dir(&noop)?;
        env.install(
            "test-noop",
            &noop.join(lib_file_name("test-noop")),
            "test-noop",
            "free",
        )?;
        for n in [1, 5, MAX_NOOPS] {
            env.install_noops(n)?;
        }
        Ok(env)
    }

    /// The bundled plugins of `role`.
    pub(crate) fn of_role(&self, role: Role) -> Vec<Bundled> {
        self.bundled
            .iter()
            .copied()
            .filter(|b| b.role == role)
            .collect()
    }

    /// The names of the plugins in the set `set` (see [`BenchEnv::set_dir`]).
    pub(crate) fn set_names(&self, set: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.set_dir(set)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".name").map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    /// The directory of plugin set `set`: `observers`, `bundled`, `only-CRATE`, `noop-N`.
    pub(crate) fn set_dir(&self, set: &str) -> PathBuf {
        self.dir.path().join(format!("set-{set}"))
    }

    fn install_set(&self, set: &str, plugins: &[Bundled]) -> Result<()> {
        let dir = self.set_dir(set);
        make_dir(&dir)?;
        for b in plugins {
            let dest = dir.join(lib_file_name(b.krate));
            if b.premium() {
                self.install_customer_build(b, &dest)?;
            } else {
                let extra: &[&str] = match b.role {
                    Role::Interceptor => &["--capability", "intercept"],
                    Role::Observer => &[],
                };
                self.install_with(b.krate, &dest, b.name, b.tier, extra)?;
            }
            // The names km will report, for the run checks (km ignores other files).
            std::fs::write(dir.join(format!("{}.name", b.name)), b.name)?;
        }
        Ok(())
    }

    /// `n` copies of test-noop, each patched to call itself `test-nNNN` (the loader refuses two
    /// plugins of one name, and test-noop's name is a constant in its library: the copy's bytes
    /// are changed before signing, so the signature covers the patched library).
    fn install_noops(&self, n: usize) -> Result<()> {
        let dir = self.set_dir(&format!("noop-{n}"));
        make_dir(&dir)?;
        let original = std::fs::read(self.plugin_lib("test-noop")?)?;
        let needle = b"test-noop";
        for i in 0..n {
            let name = format!("test-n{:03}", i + 1);
            let patched = replace_all(&original, needle, name.as_bytes());
            let dest = dir.join(format!("libnoop_{:03}.so", i + 1));
            std::fs::write(&dest, &patched)?;
            chmod(&dest, 0o644)?;
            self.sign(&dest, &name, "free", &[])?;
            std::fs::write(dir.join(format!("{name}.name")), &name)?;
        }
        Ok(())
    }

    /// Installs `b` as a customer build of the bench's customer, signed like the vendor signs
    /// one.
    fn install_customer_build(&self, b: &Bundled, dest: &Path) -> Result<()> {
        use km_plugin_sdk::credentials::{stamp, StampInput};
        let mut bytes = std::fs::read(self.plugin_lib(b.krate)?)?;
        let tier = match b.tier {
            "enterprise" => km_abi::Tier::Enterprise,
            _ => km_abi::Tier::Pro,
        };
        let credentials = km_plugin_sdk::Credentials {
            customer_id: CUSTOMER.to_owned(),
            customer_token: format!("ct-{CUSTOMER}"),
            tier,
            build_time: km_plugin_sdk::auth::now_unix(),
        };
        stamp(
            &mut bytes,
            &StampInput {
                api_public_key: &self.api.public_key,
                credentials: &credentials,
            },
        )
        .map_err(|e| anyhow::anyhow!("stamping {}: {e:?}", b.krate))?;
        std::fs::write(dest, &bytes).with_context(|| format!("writing {}", dest.display()))?;
        chmod(dest, 0o644)?;
        let extra: &[&str] = match b.role {
            Role::Interceptor => &["--capability", "intercept"],
            Role::Observer => &[],
        };
        self.sign(dest, b.name, b.tier, extra)
    }

    /// Reads what km recorded of its last run with the plugins of `set`: what each was handed
    /// and missed; and fails when a plugin of the set did not run, or a premium one was not
    /// authorised (it would have measured nothing).
    pub(crate) fn check_run(&self, set: &str) -> Result<Handed> {
        let mut handed = Handed::default();
        for name in self.set_names(set) {
            let stats = self
                .home
                .join("state")
                .join("sessions")
                .join(format!("{name}.json"));
            let text = std::fs::read_to_string(&stats).with_context(|| {
                format!(
                    "km recorded no session for plugin {name} ({}): it did not run",
                    stats.display()
                )
            })?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", stats.display()))?;
            let count = |k: &str| v[k].as_u64().unwrap_or(0);
            handed
                .plugins
                .push((name.clone(), count("handled"), count("dropped")));
            // Removed, so that the next run's figures are its own.
            std::fs::remove_file(&stats)?;
            if let Some(b) = self.bundled.iter().find(|b| b.name == name) {
                if b.premium() {
                    self.check_authorised(b)?;
                }
            }
        }
        Ok(handed)
    }

    fn check_authorised(&self, b: &Bundled) -> Result<()> {
        let record = self
            .home
            .join("state")
            .join("auth")
            .join(format!("{}.json", b.name));
        let text = std::fs::read_to_string(&record)
            .with_context(|| format!("no authorisation record of {}", b.name))?;
        let v: Value = serde_json::from_str(&text)?;
        if v["authorized"] != Value::Bool(true) {
            bail!(
                "{} was not authorised by the API server ({}): an unauthorised premium plugin is \
                 a no-op, and its figures would measure nothing",
                b.name,
                v["reason"]
            );
        }
        Ok(())
    }

    /// A command with a clean environment: PATH, HOME inside the temp dir, this `KM_HOME`,
    /// console-logger writing to /dev/null, a short grace period.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", self.dir.path().join("no-such-home"));
        cmd.env("KM_HOME", &self.home);
        cmd.env("KM_CONSOLE_LOGGER_OUTPUT", "/dev/null");
        cmd.env("KM_GRACE_MS", "200");
        cmd
    }

    /// A plugin directory holding only `krate`'s library (`only-CRATE`).
    pub(crate) fn single_plugin_dir(&self, krate: &str) -> PathBuf {
        self.set_dir(&format!("only-{krate}"))
    }

    /// `km monitor [--no-plugins] -- SERVER`: with `plugins`, every bundled observer.
    ///
    /// `KM_BENCH_KM_PREFIX` (e.g. `perf record -g -o /tmp/km.perf --`) runs km under a profiler;
    /// the peak RSS read is then the profiler's, not km's.
    pub(crate) fn km_monitor(&self, plugins: bool, server: &[&str]) -> Command {
        self.km_monitor_in(
            if plugins {
                Some(self.set_dir("observers"))
            } else {
                None
            },
            server,
        )
    }

    /// `km monitor` loading plugins from `plugins_dir`, or none.
    pub(crate) fn km_monitor_in(&self, plugins_dir: Option<PathBuf>, server: &[&str]) -> Command {
        self.km_monitor_flags(plugins_dir, &[], server)
    }

    /// [`BenchEnv::km_monitor_in`] with further `km monitor` flags (`--lossless`).
    pub(crate) fn km_monitor_flags(
        &self,
        plugins_dir: Option<PathBuf>,
        flags: &[&str],
        server: &[&str],
    ) -> Command {
        let km = self.bin_dir.join("km");
        let prefix = std::env::var("KM_BENCH_KM_PREFIX").unwrap_or_default();
        let mut words = prefix.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut cmd = self.command(Path::new(first));
                cmd.args(words).arg(&km);
                cmd
            }
            None => self.command(&km),
        };
        cmd.arg("monitor").args(flags);
        match plugins_dir {
            Some(dir) => cmd.arg("--plugins-dir").arg(dir),
            None => cmd.arg("--no-plugins"),
        };
        cmd.arg("--").args(server);
        cmd
    }

    /// The built library of workspace crate `krate`.
    pub(crate) fn plugin_lib(&self, krate: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(lib_file_name(krate));
        if !path.exists() {
            bail!(
                "{} is missing: run `cargo build --release --workspace` first",
                path.display()
            );
        }
        Ok(path)
    }

    /// Copies `krate`'s library to `dest` (0644) and signs it as `name` 1.0.0 `tier`.
    pub(crate) fn install(&self, krate: &str, dest: &Path, name: &str, tier: &str) -> Result<()> {
        self.install_with(krate, dest, name, tier, &[])
    }

    fn install_with(
        &self,
        krate: &str,
        dest: &Path,
        name: &str,
        tier: &str,
        extra: &[&str],
    ) -> Result<()> {
        std::fs::copy(self.plugin_lib(krate)?, dest)
            .with_context(|| format!("copying {krate} to {}", dest.display()))?;
        chmod(dest, 0o644)?;
        self.sign(dest, name, tier, extra)
    }

    fn sign(&self, lib: &Path, name: &str, tier: &str, extra: &[&str]) -> Result<()> {
        let mut sign = self.command(&self.bin_dir.join("km-sign"));
        sign.arg("sign")
            .arg("--key")
            .arg(self.key.with_extension("key"))
            .args(["--name", name, "--version", PLUGIN_VERSION, "--tier", tier])
            .args(extra)
            .arg(lib);
        run_ok(&mut sign)
    }
}

/// Starts `km-api-server` with a key of its own and the bench's customer (Enterprise).
fn start_api(bin_dir: &Path, dir: &Path) -> Result<ApiServer> {
    use base64::Engine as _;
    let exe = bin_dir.join("km-api-server");
    let key = dir.join("api-server.key");
    let out = Command::new(&exe)
        .arg("--gen-key")
        .arg(&key)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "km-api-server --gen-key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let public_key = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .context("km-api-server printed no base64 public key")?;
    let customers = dir.join("customers.json");
    let api_key_sha256: String = ring::digest::digest(&ring::digest::SHA256, API_KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = km_plugin_sdk::auth::now_unix();
    let text = serde_json::json!({"customers": [{
        "id": CUSTOMER,
        "api_key_sha256": api_key_sha256,
        "tier": "enterprise",
        "features": ["api_logging"],
        "subscription_end": now + 30 * 24 * 3600,
        "customer_token": format!("ct-{CUSTOMER}"),
    }]});
    std::fs::write(&customers, text.to_string())?;
    chmod(&customers, 0o600)?;
    let log = std::fs::File::create(dir.join("api-server.log"))?;
    let mut child = Command::new(&exe)
        .arg("--signing-key")
        .arg(&key)
        .arg("--customers")
        .arg(&customers)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut server = ApiServer {
        child,
        url: String::new(),
        public_key,
    };
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    server.url = first.trim().to_owned();
    if !server.url.starts_with("http://127.0.0.1:") {
        bail!("km-api-server said {first:?} instead of its address");
    }
    Ok(server)
}

/// `haystack` with every `needle` replaced by `with` (of the same length).
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = haystack.to_vec();
    let mut at = 0;
    while let Some(i) = out[at..].windows(needle.len()).position(|w| w == needle) {
        out[at + i..at + i + needle.len()].copy_from_slice(with);
        at += i + needle.len();
    }
    out
}

fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    chmod(dir, 0o700)
}

/// `libfoo_bar.so` for crate `foo-bar`.
pub(crate) fn lib_file_name(krate: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        krate.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Kills a child process if it is still running at the deadline; disarmed on drop.
pub(crate) struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `child`.
    pub(crate) fn arm(child: &Child, deadline: Duration) -> Self {
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                eprintln!("km-bench: process {pid} ran past {deadline:?}; killing it");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Spawns `cmd` with piped stdin/stdout and stderr to `stderr_log`.
pub(crate) fn spawn_piped(cmd: &mut Command, stderr_log: &Path) -> Result<Child> {
    let log = std::fs::File::create(stderr_log)
        .with_context(|| format!("creating {}", stderr_log.display()))?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// The value in kB of `field` (e.g. `VmHWM`) in `/proc/<pid>/status`.
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The `p`-th percentile (0..=100) of sorted `xs`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of `xs` (sorted here).
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(xs, 50.0)
}
