//! `km-api-server`: a reference Kilometers API for tests and for trying Pro features locally.
//!
//! It implements what km and its plugins call, over customers it keeps in an embedded SQLite
//! database (imported from a customers file), and signs subscription tokens with its own
//! Ed25519 key. It listens on loopback only.
//!
//! ```text
//! km-api-server --gen-key server.key            # writes the key (PKCS#8 PEM, 0600) and
//!                                               # server.key.pub, prints the public key (base64)
//! km-api-server --signing-key server.key --customers customers.json \
//!               [--db api.sqlite] [--listen 127.0.0.1:0] [--events events.jsonl] \
//!               [--plugins-dir DIR] [--teams-dir DIR] [--token-ttl SECS] [--delay-ms MS] \
//!               [--fail-after N] \
//!               [--tls-cert CERT.pem --tls-key KEY.pem [--tls-versions 1.3|1.2|1.2,1.3]] \
//!               [--rate-limit N/WINDOW] [--abuse-threshold N/WINDOW]
//! ```
//!
//! The first line on stdout is the base URL it listens on (`http://127.0.0.1:PORT`, or
//! `https://` with `--tls-cert`), so that a caller that asked for port 0 can read it. Requests are logged on stderr, one line each.
//! Exit codes: 0 after `--gen-key`, 2 for a usage or start-up error (the server itself runs until
//! it is killed).
//!
//! Where things live:
//! - [`config`]: the command line (clap) and the validated configuration made from it;
//! - [`keys`]: the token-signing key and the tokens it signs;
//! - [`limits`]: the per-customer rate limit and its decision log;
//! - [`store`]: the database (schema migrations, customers, events);
//! - [`customers_file`]: the customers file and how its changes reach the database;
//! - [`teams_dir`]: the teams directory (teams, members, signed policies) and its sync;
//! - [`router`] and [`http`]: the transport-neutral request, response and routing types;
//! - [`routes`]: one module per area of the API, each registering its endpoints;
//! - [`server`]: the HTTP transport (hyper, with TLS by tokio-rustls), the request threads and
//!   the request log;
//! - [`state`]: what every handler shares.
//!
//! The endpoints, the customers file format and the test controls are described in
//! [`routes`] and [`customers_file`].

#![forbid(unsafe_code)]

mod config;
mod customers_file;
mod http;
mod keys;
mod limits;
mod router;
mod routes;
mod server;
mod state;
mod store;
mod teams_dir;
#[cfg(test)]
mod testing;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits with 2, like every start-up error below.
    let cli = config::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("km-api-server: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: config::Cli) -> anyhow::Result<ExitCode> {
    match cli.into_command()? {
        config::Command::GenKey { out } => {
            let public = keys::generate(&out)?;
            println!("{public}");
            Ok(ExitCode::SUCCESS)
        }
        config::Command::Serve(serve) => {
            server::run(*serve)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
