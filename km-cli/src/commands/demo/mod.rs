//! `km demo`: the whole product in one command, on a fresh clone, with no network and nothing
//! installed by hand.
//!
//! Nothing is faked. In a temporary `KM_HOME` the demo:
//!
//! 1. starts the reference Kilometers API (`km-api-server`, built beside km) on loopback with a
//!    demo customer on the Enterprise tier and that customer's team, whose admin key and signed
//!    policy the demo makes ([`team`]);
//! 2. makes a fresh Ed25519 signing key, trusts it, and installs every bundled plugin: Free
//!    plugins signed as published, Pro and Enterprise plugins as customer builds for the demo
//!    customer, runs `km init` against the API and joins the team ([`install`]);
//! 3. runs the real `km monitor` (this very binary) in front of `km-demo-server`, the small MCP
//!    server shipped in the workspace, and drives it with a scripted MCP client that narrates
//!    the session on stderr ([`session`]);
//! 4. checks, with one line each, that every plugin did its job, from the effects themselves:
//!    what the server received, what the client was answered, what the API stored, what the
//!    plugins' own commands say ([`checks`]).
//!
//! The demo exits 0 when every step did what it says, 1 when one did not (its line says why),
//! and 2 when the demo itself could not run (a missing binary, a session that broke).
//! The temporary `KM_HOME` is removed at the end; only the compliance report is kept, at the
//! path the demo prints.

mod api;
mod checks;
mod client;
mod install;
mod session;
mod team;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, ensure, Context, Result};
use km_abi::Tier;

use crate::bundled::BUNDLED;
use crate::cli::DemoArgs;
use crate::commands::Globals;
use crate::exit;
use crate::home::KmHome;
use crate::monitor::banner::Notices;

/// The programs the demo runs, all found beside the km binary.
pub(super) struct Tools {
    km: PathBuf,
    km_sign: PathBuf,
    api_server: PathBuf,
    demo_server: PathBuf,
}

impl Tools {
    /// `program`, with none of the caller's `KM_*` settings (the demo's installation must not
    /// depend on the user's: an API URL or key in the environment would win over its config)
    /// and stdin closed.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KM_") {
                cmd.env_remove(&name);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `km --home HOME`.
    fn km(&self, home: &Path) -> Command {
        let mut cmd = self.command(&self.km);
        cmd.arg("--home").arg(home);
        cmd
    }
}

/// The demo's files, all under one temporary directory.
pub(super) struct Layout {
    /// `KM_HOME`.
    home: PathBuf,
    /// What the demo server read, line by line (`KM_DEMO_SERVER_RECORD`).
    server_record: PathBuf,
    /// Created to make the demo server change a tool (`KM_DEMO_SERVER_RUG_PULL_WHEN`).
    rug_pull_trigger: PathBuf,
    /// Where console-logger writes (unless `-v`, when it writes on stderr).
    console_log: PathBuf,
}

/// The steps' outcomes, each said in one line as it is known.
pub(super) struct Steps {
    notices: Notices,
    passed: usize,
    failed: Vec<&'static str>,
}

impl Steps {
    fn new(notices: Notices) -> Steps {
        Steps {
            notices,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// Says how `plugin`'s step went.
    fn record(&mut self, plugin: &'static str, outcome: Result<String>) {
        match outcome {
            Ok(line) => {
                self.passed += 1;
                say(&self.notices, &format!("✓ {plugin}: {line}"));
            }
            Err(e) => {
                self.failed.push(plugin);
                // Shown even with -q: it is why the demo fails.
                eprintln!("km demo ▸ ✗ {plugin}: {e:#}");
            }
        }
    }
}

/// Runs `km demo`.
pub fn run(globals: &Globals, args: DemoArgs) -> Result<ExitCode> {
    let notices = Notices::new(globals.quiet, globals.verbose);
    let km = std::env::current_exe().context("finding the km binary")?;
    let bin_dir = km
        .parent()
        .context("the km binary has no directory")?
        .to_path_buf();
    let lib_dir = args.lib_dir.unwrap_or_else(|| bin_dir.clone());
    let tools = Tools {
        km_sign: sibling(&bin_dir, "km-sign")?,
        api_server: sibling(&bin_dir, "km-api-server")?,
        demo_server: sibling(&bin_dir, "km-demo-server")?,
        km,
    };

    let temp = tempfile::Builder::new()
        .prefix("km-demo-")
        .tempdir()
        .context("making a temporary KM_HOME")?;
    let root = temp.path();
    let home = root.join("home");
    KmHome::ensure_private_dir(&home.join("plugins"))?;
    for dir in ["keys", "api", "server"] {
        KmHome::ensure_private_dir(&root.join(dir))?;
    }
    let layout = Layout {
        server_record: root.join("server").join("received.jsonl"),
        rug_pull_trigger: root.join("server").join("rug-pull"),
        console_log: root.join("console-logger.log"),
        home,
    };
    say(
        &notices,
        &format!(
            "KM_HOME={} (temporary, removed afterwards)",
            layout.home.display()
        ),
    );

    let customer = api::Customer::new()?;
    let team = team::Team::create(&tools, &root.join("keys"), customer.id)?;
    let api = api::ApiServer::start(
        &tools.api_server,
        &root.join("api"),
        &customer,
        &team.teams_dir,
    )?;
    say(
        &notices,
        &format!(
            "the reference Kilometers API (km-api-server) listens on {}, with a demo customer on the Enterprise tier and its team {}",
            api.url,
            team::TEAM
        ),
    );

    let key = root.join("keys").join("demo");
    let dirs = install::Dirs {
        home: &layout.home,
        key: &key,
        lib_dir: &lib_dir,
    };
    install::trust_key(&tools, &dirs)?;
    for plugin in BUNDLED {
        install::install(&tools, &dirs, plugin, &api, &customer)
            .with_context(|| format!("installing {}", plugin.name))?;
    }
    run_tool(
        tools
            .km(&layout.home)
            .arg("init")
            .env("KM_API_KEY", &customer.api_key)
            .env("KM_API_URL", &api.url),
        "km init",
    )?;
    say(&notices, &installed_summary());
    let joined = team.join(&tools, &layout.home)?;
    say(
        &notices,
        &format!(
            "km plugin team-collaboration join {} → {joined}",
            team::TEAM
        ),
    );

    let mut steps = Steps::new(notices);
    let facts = session::run(&tools, &layout, globals, &notices)?;
    checks::run(&tools, &layout, &api, &facts, &mut steps);

    if steps.failed.is_empty() {
        say(
            &notices,
            &format!(
                "done: all {} steps did what they show, and the session ended cleanly",
                steps.passed
            ),
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "km demo ▸ ✗ {} of {} steps did not do what they show: {}",
            steps.failed.len(),
            steps.failed.len() + steps.passed,
            steps.failed.join(", ")
        );
        Ok(ExitCode::from(exit::REFUSED))
    }
}

/// One line on what was installed, by tier.
fn installed_summary() -> String {
    let names = |tier: Tier| {
        BUNDLED
            .iter()
            .filter(|p| p.tier == tier)
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "signed {} bundled plugins with a fresh trusted Ed25519 key: {} (Free) as published; {} (Pro) and {} (Enterprise) as the demo customer's builds, its credentials stamped in; km init points KM_HOME at the API",
        BUNDLED.len(),
        names(Tier::Free),
        names(Tier::Pro),
        names(Tier::Enterprise)
    )
}

fn say(notices: &Notices, text: &str) {
    notices.info(&format!("km demo ▸ {text}"));
}

/// `name` beside the km binary.
fn sibling(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    Ok(path)
}

/// Runs a helper to completion; its output is shown only when it fails.
fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    output_of(cmd, what).map(drop)
}

/// Runs a helper to completion and returns its stdout; fails with its output when it fails.
fn output_of(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let output = cmd.output().with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output.stdout)
}
