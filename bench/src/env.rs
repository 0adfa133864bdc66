//! The bench's world: the release binaries beside `km-bench`, a throw-away `KM_HOME` with a
//! trusted key made by the real `km-sign`, the bundled plugins signed and installed, the
//! reference Kilometers API (`km-api-server`) on loopback authorising the premium ones, and child
//! processes that cannot hang the run (every child has a watchdog that kills it at a deadline).
//!
//! The installation, the keys, the signing, the customer builds and the API server are the e2e
//! harness's (`km-tests`, `tests/src/lib.rs`), so that the bench measures km set up exactly as
//! the tests check it. km-bench depends on that library as it is: its dependencies are normal
//! ones (rcgen and rustls for the tests' certificates among them, which the bench links too), and
//! none of it reaches km, which depends on neither. The harness panics with the failing
//! command's output where it cannot go on: a bench that cannot build its world has no figure to
//! give, and fails loudly either way. Which plugins are bundled, their
//! crates, versions, tiers and capabilities come from km's own table
//! ([`km_cli::bundled::BUNDLED`]).
//!
//! Premium plugins (Pro, Enterprise) do nothing without a valid subscription, so a figure taken
//! with an unauthorised one measures a no-op. Each is installed as a customer build (stamped
//! with the bench customer's credentials and the API server's public key, as `km-sign
//! build-plugin` stamps one), `km init` points `KM_HOME` at the API server, and after every km
//! run with plugins [`BenchEnv::check_run`] reads the authorisation records km wrote and fails the
//! bench when a premium plugin was not authorised. The same call reads what every plugin was
//! handed and what it missed (`KM_HOME/state/sessions`, written by km at the end of a session),
//! so that a figure taken while a plugin dropped messages is reported as such.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use km_tests::{
    chmod, customer_build, lib_file_name, library, ApiServer, Customer, KmEnv, Watched,
};
use serde_json::Value;

/// The bundled plugin that keeps the audit trail.
const TRAIL: &str = "compliance-reporting";
/// The plugin set of every bundled observer but [`TRAIL`].
pub(crate) const LIGHTER_OBSERVERS: &str = "observers-but-trail";

/// What a bundled plugin does on the path, as the bench measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Watches what was forwarded (signed without capabilities).
    Observer,
    /// Judges lines before they are forwarded (signed with the capabilities km's table gives it).
    Interceptor,
}

/// The bundled plugins the bench measures on the path. km's table grants `intercept` to two
/// more, which are measured as observers, signed without it (km then lets them only observe):
/// compliance-reporting intercepts only in its write-ahead mode, which a policy turns on, and
/// team-collaboration enforces a team's policy, which the bench has no team for; so that "every
/// bundled observer" stays a set of observers and the interceptors have figures of their own.
const ON_THE_PATH: &[&str] = &["tool-guard", "advanced-filters"];

/// A bundled (shipped, non-test) plugin: km's table entry, and its role in the bench.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bundled {
    pub(crate) plugin: &'static km_cli::bundled::Bundled,
    pub(crate) role: Role,
}

impl Bundled {
    /// Its name, as it reports it and as it is signed.
    pub(crate) fn name(&self) -> &'static str {
        self.plugin.name
    }

    /// Whether it needs a subscription (and so a customer build and the API).
    pub(crate) fn premium(&self) -> bool {
        self.plugin.is_premium()
    }

    /// What its signature grants here (see [`Role`]), as `km-sign sign` arguments.
    fn capability_args(&self) -> Vec<&'static str> {
        let granted = match self.role {
            Role::Interceptor => self.plugin.capabilities,
            Role::Observer => &[],
        };
        granted
            .iter()
            .flat_map(|capability| ["--capability", capability])
            .collect()
    }
}

/// The version the bench's own copies of test plugins are signed as (what they report).
pub(crate) const PLUGIN_VERSION: &str = "1.0.0";

/// The bench's customer of the reference API: an Enterprise subscription covers every tier.
const CUSTOMER: Customer = Customer {
    id: "cust_bench",
    api_key: "km_live_bench_0123456789abcdef",
};

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

/// The binaries and a prepared `KM_HOME`; the temporary directory goes when this is dropped.
pub(crate) struct BenchEnv {
    /// The installation: its temporary directory, `KM_HOME` (pointed at the API server) and the
    /// trusted key everything here is signed with.
    pub(crate) world: KmEnv,
    /// Where `km`, `km-sign` and the plugin libraries are.
    pub(crate) bin_dir: PathBuf,
    /// `KM_HOME`.
    pub(crate) home: PathBuf,
    /// The bundled plugins whose libraries are built.
    pub(crate) bundled: Vec<Bundled>,
    api: ApiServer,
}

impl BenchEnv {
    /// Makes the environment: key, trust, API server, `km init`, and a plugin directory for
    /// each set the sections load.
    pub(crate) fn new() -> Result<Self> {
        let bin_dir = km_tests::bin_dir();
        for needed in ["km", "km-sign", "km-api-server"] {
            km_tests::built(needed);
        }
        for name in ON_THE_PATH {
            if !km_cli::bundled::find(name)
                .is_some_and(|b| b.capabilities.contains(&km_signing::CAPABILITY_INTERCEPT))
            {
                bail!(
                    "{name} is measured on the path, but km does not bundle it as an interceptor"
                );
            }
        }
        let bundled: Vec<Bundled> = km_cli::bundled::BUNDLED
            .iter()
            .filter(|b| {
                let built = bin_dir.join(b.library_file()).exists();
                if !built {
                    eprintln!(
                        "km-bench: {} is not built here; the figures leave it out",
                        b.name
                    );
                }
                built
            })
            .map(|plugin| Bundled {
                plugin,
                role: if ON_THE_PATH.contains(&plugin.name) {
                    Role::Interceptor
                } else {
                    Role::Observer
                },
            })
            .collect();
        let world = KmEnv::new();
        let api = ApiServer::builder(world.dir.path())
            .customers(&[(&CUSTOMER, "enterprise")])
            .start();
        world.init(CUSTOMER.api_key, &api.url);
        let env = BenchEnv {
            home: world.home.clone(),
            world,
            bin_dir,
            bundled,
            api,
        };
        // Every plugin set a section loads, each in a directory of its own.
        let observers: Vec<Bundled> = env.of_role(Role::Observer);
        env.install_set("observers", &observers)?;
        // The observers without the audit trail: what the others cost together, beside the
        // whole set (compliance-reporting alone is most of it: BENCHMARKS.md).
        let lighter: Vec<Bundled> = observers
            .iter()
            .copied()
            .filter(|b| b.name() != TRAIL)
            .collect();
        env.install_set(LIGHTER_OBSERVERS, &lighter)?;
        env.install_set("bundled", &env.bundled.clone())?;
        for b in env.bundled.clone() {
            env.install_set(&format!("only-{}", b.name()), &[b])?;
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

    /// The temporary directory everything of this run goes into.
    pub(crate) fn dir(&self) -> &Path {
        self.world.dir.path()
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

    /// The directory of plugin set `set`: `observers`, [`LIGHTER_OBSERVERS`], `bundled`,
    /// `only-NAME`, `noop-N`.
    pub(crate) fn set_dir(&self, set: &str) -> PathBuf {
        self.dir().join(format!("set-{set}"))
    }

    fn install_set(&self, set: &str, plugins: &[Bundled]) -> Result<()> {
        let dir = self.set_dir(set);
        make_dir(&dir)?;
        for b in plugins {
            let p = b.plugin;
            let bytes = if b.premium() {
                customer_build(p.crate_name, &self.api.public_key, &CUSTOMER, p.tier)
            } else {
                library(p.crate_name)
            };
            self.world.place_signed(
                &dir.join(p.library_file()),
                &bytes,
                p.name,
                p.version,
                p.tier.as_str(),
                &b.capability_args(),
            );
            // The names km will report, for the run checks (km ignores other files).
            std::fs::write(dir.join(format!("{}.name", p.name)), p.name)?;
        }
        Ok(())
    }

    /// `n` copies of test-noop, each patched to call itself `test-nNNN` (the loader refuses two
    /// plugins of one name, and test-noop's name is a constant in its library: the copy's bytes
    /// are changed before signing, so the signature covers the patched library).
    fn install_noops(&self, n: usize) -> Result<()> {
        let dir = self.set_dir(&format!("noop-{n}"));
        make_dir(&dir)?;
        let original = library("test-noop");
        let needle = b"test-noop";
        for i in 0..n {
            let name = format!("test-n{:03}", i + 1);
            let patched = replace_all(&original, needle, name.as_bytes());
            let dest = dir.join(km_signing::library_file_name(&format!("noop_{:03}", i + 1)));
            self.world
                .place_signed(&dest, &patched, &name, PLUGIN_VERSION, "free", &[]);
            std::fs::write(dir.join(format!("{name}.name")), &name)?;
        }
        Ok(())
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
            if let Some(b) = self.bundled.iter().find(|b| b.name() == name) {
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
            .join(format!("{}.json", b.name()));
        let text = std::fs::read_to_string(&record)
            .with_context(|| format!("no authorisation record of {}", b.name()))?;
        let v: Value = serde_json::from_str(&text)?;
        if v["authorized"] != Value::Bool(true) {
            bail!(
                "{} was not authorised by the API server ({}): an unauthorised premium plugin is \
                 a no-op, and its figures would measure nothing",
                b.name(),
                v["reason"]
            );
        }
        Ok(())
    }

    /// A command with the harness's clean environment (PATH, a HOME that does not exist, this
    /// `KM_HOME`), console-logger writing to /dev/null, a short grace period.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = km_tests::command(program, &self.home);
        cmd.env("KM_CONSOLE_LOGGER_OUTPUT", "/dev/null");
        cmd.env("KM_GRACE_MS", "200");
        cmd
    }

    /// A plugin directory holding only the plugin called `name` (`only-NAME`).
    pub(crate) fn single_plugin_dir(&self, name: &str) -> PathBuf {
        self.set_dir(&format!("only-{name}"))
    }

    /// A `KM_HOME` of its own at `DIR/NAME`, trusting what the bench signs, with an empty plugin
    /// directory and `config` (TOML), if any, as its config.toml: for sections that run km with a
    /// configuration of their own.
    pub(crate) fn own_home(&self, name: &str, config: Option<&str>) -> Result<PathBuf> {
        let home = self.dir().join(name);
        let plugins = home.join("plugins");
        let keys = home.join("trusted-keys");
        for dir in [&home, &plugins, &keys] {
            make_dir(dir)?;
        }
        for entry in std::fs::read_dir(self.home.join("trusted-keys"))? {
            let entry = entry?;
            let to = keys.join(entry.file_name());
            std::fs::copy(entry.path(), &to)?;
            chmod(&to, 0o600);
        }
        if let Some(config) = config {
            let path = home.join("config.toml");
            km_durable::write_atomic(&path, config.as_bytes(), km_durable::PRIVATE)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(home)
    }

    /// `km monitor -- cat` with the plugins and configuration of `home` (see
    /// [`BenchEnv::own_home`]).
    pub(crate) fn km_in_home(&self, home: &Path) -> Command {
        let mut cmd = self.km_monitor_in(Some(home.join("plugins")), &["cat"]);
        cmd.env("KM_HOME", home);
        cmd
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

    /// Copies `krate`'s library to `dest` (0644) and signs it as `name` 1.0.0 `tier`.
    pub(crate) fn install(&self, krate: &str, dest: &Path, name: &str, tier: &str) -> Result<()> {
        self.install_with(krate, dest, name, tier, &[])
    }

    /// [`BenchEnv::install`] with `extra` arguments to `km-sign sign`.
    pub(crate) fn install_with(
        &self,
        krate: &str,
        dest: &Path,
        name: &str,
        tier: &str,
        extra: &[&str],
    ) -> Result<()> {
        self.world
            .place_signed(dest, &library(krate), name, PLUGIN_VERSION, tier, extra);
        Ok(())
    }
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

/// Creates `dir` (and its parents) and makes it 0700, as km wants its directories.
pub(crate) fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    chmod(dir, 0o700);
    Ok(())
}

/// Starts `cmd` with piped stdin and stdout and its stderr to `stderr_log`, watched by the
/// harness's watchdog, which kills it if it runs past `limit` (so that a hung km cannot hang the
/// bench).
pub(crate) fn spawn_watched(
    cmd: &mut Command,
    stderr_log: &Path,
    limit: Duration,
) -> Result<Watched> {
    let log = std::fs::File::create(stderr_log)
        .with_context(|| format!("creating {}", stderr_log.display()))?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    Ok(Watched::spawn(cmd, limit))
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
