//! One function per command: turn parsed arguments into a validated configuration, do the work,
//! return the exit code.

mod config;
pub mod demo;
mod doctor;
mod init;
mod install;
mod list;
mod monitor;
mod plugin;
mod seats;
mod setup;
mod stats;
mod status;
mod trust;
mod uninstall;
mod update;
mod verify;
mod wrap;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::home::KmHome;
use crate::runtime::Handle;

/// What every command gets besides its own arguments.
#[derive(Debug, Clone)]
pub struct Globals {
    /// km's home.
    pub home: KmHome,
    /// `-v` count.
    pub verbose: u8,
    /// `-q`.
    pub quiet: bool,
    /// km's one runtime ([`crate::runtime`]).
    pub runtime: Handle,
}

/// Runs the parsed command line on `runtime`.
pub fn run(cli: Cli, runtime: &Handle) -> Result<ExitCode> {
    let globals = Globals {
        home: KmHome::resolve(cli.home.as_deref())?,
        verbose: cli.verbose,
        quiet: cli.quiet,
        runtime: runtime.clone(),
    };
    // What a command saw of plugins, subscriptions and sessions goes to `km stats` (not what
    // `km demo` does in its own throw-away home).
    let keeps_stats = !matches!(cli.command, Command::Demo(_) | Command::Stats(_));
    let result = match cli.command {
        Command::Monitor(args) => monitor::run(&globals, args),
        Command::Demo(args) => demo::run(&globals, args),
        Command::VerifyPlugin(args) => verify::run(&globals, args),
        Command::ListPlugins(args) => list::run(&globals, args),
        Command::Trust(cmd) => trust::run(&globals, cmd),
        Command::Init(args) => init::run(&globals, args),
        Command::Config(cmd) => config::run(&globals, cmd),
        Command::PluginStatus(args) => status::run_status(&globals, args),
        Command::PluginRefresh(args) => status::run_refresh(&globals, args),
        Command::InstallPlugin(args) => install::run(&globals, args),
        Command::UninstallPlugin(args) => uninstall::run(&globals, args),
        Command::UpdatePlugin(args) => update::run(&globals, args),
        Command::Plugin(args) => plugin::run(&globals, args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "km",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup(args) => setup::run(&globals, args),
        Command::Doctor(args) => doctor::run(&globals, args),
        Command::Wrap(args) => wrap::run(&globals, args, wrap::Direction::Wrap),
        Command::Unwrap(args) => wrap::run(&globals, args, wrap::Direction::Unwrap),
        Command::Stats(args) => stats::run(&globals, args),
        Command::Seats(args) => seats::run(&globals, args),
    };
    if keeps_stats {
        if let Err(e) = crate::telemetry::stats::persist(&globals.home) {
            eprintln!("km: warning: cannot record km's statistics: {e:#}");
        }
    }
    result
}
