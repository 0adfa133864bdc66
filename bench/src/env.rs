//! The bench's world: the release binaries beside `km-bench`, a throw-away `KM_HOME` with a
//! trusted key made by the real `km-sign`, the bundled plugins signed and installed, and child
//! processes that cannot hang the run (every child has a watchdog that kills it at a deadline).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The bundled (shipped, non-test) plugins: crate, signed name, tier.
pub(crate) const BUNDLED: &[(&str, &str, &str)] = &[
    ("console-logger", "console-logger", "free"),
    ("api-logger", "api-logger", "pro"),
];

/// The version every workspace plugin reports.
pub(crate) const PLUGIN_VERSION: &str = "1.0.0";

/// The binaries and a prepared `KM_HOME`; the temporary directory goes when this is dropped.
pub(crate) struct BenchEnv {
    /// Owns the temporary directory.
    pub(crate) dir: tempfile::TempDir,
    /// Where `km`, `km-sign` and the plugin libraries are.
    pub(crate) bin_dir: PathBuf,
    /// `KM_HOME`, with every bundled plugin installed and signed.
    pub(crate) home: PathBuf,
    /// The trusted key's prefix (`.key`, `.pub`).
    pub(crate) key: PathBuf,
}

impl BenchEnv {
    /// Makes the environment: key, trust, bundled plugins installed.
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
        let home = dir.path().join("km-home");
        let env = BenchEnv {
            key: dir.path().join("bench-key"),
            bin_dir,
            home,
            dir,
        };
        for needed in ["km", "km-sign"] {
            if !env.bin_dir.join(needed).exists() {
                bail!(
                    "{} is missing: run `cargo build --release --workspace` first",
                    env.bin_dir.join(needed).display()
                );
            }
        }
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
        let plugins = env.home.join("plugins");
        for (krate, name, tier) in BUNDLED {
            let file = lib_file_name(krate);
            env.install(krate, &plugins.join(&file), name, tier)?;
        }
        // One directory per plugin (and the no-op test plugin), to tell their costs apart.
        for (krate, name, tier) in BUNDLED.iter().chain(&[("test-noop", "test-noop", "free")]) {
            let dir = env.single_plugin_dir(krate);
            std::fs::create_dir_all(&dir)?;
            chmod(&dir, 0o700)?;
            env.install(krate, &dir.join(lib_file_name(krate)), name, tier)?;
        }
        Ok(env)
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

    /// A plugin directory holding only `krate`'s library.
    pub(crate) fn single_plugin_dir(&self, krate: &str) -> PathBuf {
        self.dir.path().join(format!("only-{krate}"))
    }

    /// `km monitor [--no-plugins] -- SERVER`: with `plugins`, every bundled plugin.
    ///
    /// `KM_BENCH_KM_PREFIX` (e.g. `perf record -g -o /tmp/km.perf --`) runs km under a profiler;
    /// the peak RSS read is then the profiler's, not km's.
    pub(crate) fn km_monitor(&self, plugins: bool, server: &[&str]) -> Command {
        self.km_monitor_in(
            if plugins {
                Some(self.home.join("plugins"))
            } else {
                None
            },
            server,
        )
    }

    /// `km monitor` loading plugins from `plugins_dir`, or none.
    pub(crate) fn km_monitor_in(&self, plugins_dir: Option<PathBuf>, server: &[&str]) -> Command {
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
        cmd.arg("monitor");
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
        std::fs::copy(self.plugin_lib(krate)?, dest)
            .with_context(|| format!("copying {krate} to {}", dest.display()))?;
        chmod(dest, 0o644)?;
        let mut sign = self.command(&self.bin_dir.join("km-sign"));
        sign.arg("sign")
            .arg("--key")
            .arg(self.key.with_extension("key"))
            .args(["--name", name, "--version", PLUGIN_VERSION, "--tier", tier])
            .arg(dest);
        run_ok(&mut sign)
    }
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
