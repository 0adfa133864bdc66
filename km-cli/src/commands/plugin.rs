//! `km plugin NAME ARGS...`: a plugin's own commands (reports, approvals, checks).
//!
//! The named plugin is verified and loaded exactly as `km monitor` loads plugins (every library
//! in the directory is verified; only the named one is mapped), initialised with its data
//! directory and settings, authenticated when a subscription is configured (so that a premium
//! plugin knows its tier, and decides itself what it does without one), and handed the
//! arguments. Standard input is read only if the plugin asks for it. What the plugin returns is
//! written out: its stdout on km's stdout (this is not a monitor session), its stderr on km's
//! stderr, and km exits with its code.
//!
//! `km plugin NAME --help` shows what the plugin offers; `km plugin` lists the installed plugins
//! that have commands. A library that claims the name but does not verify is refused with the
//! loader's reason (exit 1), like `verify-plugin`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use km_abi::ErrorKind;

use super::Globals;
use crate::api::ApiClient;
use crate::cli::PluginArgs;
use crate::config::Config;
use crate::events::EventBus;
use crate::exit;
use crate::gateway::LoadedPlugin;
use crate::home::KmHome;
use crate::host::{StdinOnce, Verbosity};
use crate::loader::{load_plugins, LoadOptions, LoadReport};
use crate::subscription;

/// How long authentication may take before the command runs anyway (degraded).
const AUTH_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `km plugin`.
pub(super) fn run(globals: &Globals, args: PluginArgs) -> Result<ExitCode> {
    let settings = Config::load(&globals.home)?;
    let dir = args
        .plugins_dir
        .clone()
        .unwrap_or_else(|| globals.home.plugins_dir());
    match args.name.clone() {
        None if args.help => {
            use clap::CommandFactory;
            let mut cli = crate::cli::Cli::command();
            if let Some(plugin) = cli.find_subcommand_mut("plugin") {
                let mut plugin = plugin.clone().bin_name("km plugin");
                plugin.print_help().context("printing help")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => list(globals, &settings, &dir),
        Some(name) if args.help => run_one(globals, &settings, &dir, &name, &["--help".to_owned()]),
        Some(name) => run_one(globals, &settings, &dir, &name, &args.args),
    }
}

fn load(
    globals: &Globals,
    settings: &Config,
    dir: &Path,
    only: Option<&str>,
    stdin: Option<Arc<StdinOnce>>,
) -> Result<LoadReport> {
    let mut options = LoadOptions::new(dir.to_path_buf(), globals.home.clone());
    options.verbosity = Verbosity::from_flags(globals.quiet, globals.verbose);
    options.api = ApiClient::from_config(&globals.runtime, settings)?;
    // Events a command emits have no session to go to: the next session hands them over.
    let events = EventBus::new();
    events.attach(crate::journal::JournalSink::new(globals.home.clone()));
    options.events = Some(events);
    options.only = only.map(str::to_owned);
    options.stdin = stdin;
    load_plugins(&options)
}

/// Initialises `plugin` as `km monitor` would, and authenticates it when an API key is set.
fn start(globals: &Globals, settings: &Config, plugin: &Arc<LoadedPlugin>) -> Result<()> {
    let data_dir = globals.home.plugin_data_dir(plugin.name());
    KmHome::ensure_private_dir(&data_dir)?;
    let config = crate::host::plugin_config(&data_dir, settings, plugin.name(), globals.verbose);
    plugin
        .initialize(&config)
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    if settings.api_key.is_some() {
        subscription::refresh_all(
            &globals.runtime,
            &globals.home,
            settings,
            std::slice::from_ref(plugin),
            AUTH_DEADLINE,
        );
    }
    Ok(())
}

fn list(globals: &Globals, settings: &Config, dir: &Path) -> Result<ExitCode> {
    let report = load(globals, settings, dir, None, None)?;
    let mut any = false;
    for plugin in &report.loaded {
        let data_dir = globals.home.plugin_data_dir(plugin.name());
        let config = crate::host::plugin_config(&data_dir, settings, plugin.name(), 0);
        if KmHome::ensure_private_dir(&data_dir).is_err() || plugin.initialize(&config).is_err() {
            continue;
        }
        if let Some(help) = plugin.command_help() {
            let summary = help.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            println!("{:<24} {}", plugin.name(), summary.trim());
            any = true;
        }
        let _ = plugin.shutdown();
    }
    if !any {
        println!(
            "No installed plugin has commands (plugins in {}).",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_one(
    globals: &Globals,
    settings: &Config,
    dir: &Path,
    name: &str,
    args: &[String],
) -> Result<ExitCode> {
    let report = load(globals, settings, dir, Some(name), Some(StdinOnce::new()))?;
    let Some(plugin) = report.loaded.first() else {
        // A library meant to be this plugin that did not verify is refused as the loader does.
        for refusal in &report.refused {
            if claimed_name(refusal).as_deref() == Some(name) {
                eprintln!("km: plugin {name} refused: {refusal}");
                return Ok(ExitCode::from(exit::REFUSED));
            }
        }
        anyhow::bail!(
            "no plugin named {name} in {} (see `km list-plugins`)",
            dir.display()
        );
    };
    start(globals, settings, plugin).with_context(|| format!("starting plugin {name}"))?;
    let asked_help = matches!(args, [flag] if flag == "--help" || flag == "-h");
    let result = if asked_help || args.is_empty() {
        match plugin.command_help() {
            // Asked for: the usage on stdout. No command given: the usage, as a usage error.
            Some(help) => {
                print_help(&help, asked_help);
                Ok(ExitCode::from(if asked_help {
                    exit::OK
                } else {
                    exit::ERROR
                }))
            }
            None => {
                eprintln!("km: plugin {name} has no commands");
                Ok(ExitCode::from(exit::ERROR))
            }
        }
    } else {
        match plugin.run_command(args) {
            Ok(output) => {
                std::io::stdout()
                    .write_all(&output.stdout)
                    .and_then(|()| std::io::stdout().flush())
                    .context("writing the plugin's output")?;
                let _ = std::io::stderr().write_all(&output.stderr);
                Ok(ExitCode::from(
                    u8::try_from(output.exit_code.clamp(0, 255)).unwrap_or(2),
                ))
            }
            Err(failure) if failure.error.kind == ErrorKind::UNSUPPORTED => {
                eprintln!("km: plugin {name} has no commands");
                Ok(ExitCode::from(exit::ERROR))
            }
            Err(failure) => {
                eprintln!("km: {failure}");
                Ok(ExitCode::from(exit::ERROR))
            }
        }
    };
    let _ = plugin.shutdown();
    result
}

/// Usage goes to stdout when asked for, to stderr when it answers a missing command.
fn print_help(help: &str, asked: bool) {
    let text = if help.ends_with('\n') {
        help.to_owned()
    } else {
        format!("{help}\n")
    };
    if asked {
        print!("{text}");
    } else {
        eprint!("{text}");
    }
}

/// The name a refused library claims (its signature's manifest, unverified, as the verifier
/// read it with its checked open), else its file name.
fn claimed_name(refusal: &crate::verifier::Refusal) -> Option<String> {
    refusal
        .claimed
        .as_ref()
        .map(|m| m.name.clone())
        .or_else(|| {
            refusal
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
}
