//! `km-sign`: make signing keys, sign plugin libraries, verify them, and take signatures made
//! elsewhere (openssl, an HSM) through `manifest` + `attach`; sign a team's policy
//! (`team-policy`).
//!
//! Its own crate over `km-signing`, so that the library keeps one thiserror enum and does not
//! depend on clap or anyhow. Thin: parse the arguments, run the command, map the outcome to an
//! exit code. Exit codes: 0 ok, 1 verification said no (bad or missing signature, wrong hash,
//! expired, ...), 2 usage or I/O error (clap's own usage errors exit 2 too). Errors go to stderr as `km-sign: error: ...`.

#![forbid(unsafe_code)]

mod args;
mod build;
mod commands;
mod pack;
mod team;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("km-sign: error: {err:#}");
            if err.downcast_ref::<commands::Refused>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
