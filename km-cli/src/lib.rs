//! km, the Kilometers CLI, as a library: the binary in `main.rs` is a thin shell over [`main`].
//!
//! Modules are named after the nouns of the domain: the command line ([`cli`]), km's files
//! ([`home`]) and the StrictModes rules for them ([`strict`]), the one verifier every path checks
//! plugins with ([`verifier`]), loading what it accepted ([`loader`]), the one gateway through
//! which every call into plugin code passes ([`gateway`]), the services km offers plugins
//! ([`host`]), the monitor that relays the MCP stream ([`monitor`]), km's own telemetry
//! ([`telemetry`]), and the one tokio runtime all of them are handed ([`runtime`]).

pub mod api;
pub mod bundled;
pub mod cli;
pub mod clients;
pub mod commands;
pub mod config;
pub mod device;
pub mod events;
pub mod exit;
pub mod gateway;
pub mod home;
pub mod host;
pub mod install;
pub mod journal;
pub mod loader;
pub mod monitor;
pub mod policy_files;
pub mod runtime;
pub mod strict;
pub mod subscription;
pub mod telemetry;
pub mod tls;
pub mod verifier;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line, starts km's runtime, runs the command, prints an error chain on
/// failure, and shuts the runtime down without waiting for what is left in it (a thread stuck in
/// a hung plugin; see [`runtime`]).
pub fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // clap prints help/version to stdout and errors to stderr; keep its exit codes for
            // help and version (0), and use ours (2) for usage errors.
            let code = if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let outcome = runtime::Runtime::new().and_then(|runtime| {
        let outcome = commands::run(args, runtime.handle());
        drop(runtime);
        outcome
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("km: error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
