//! `km install-plugin PKG|URL|NAME [--customer-token T] [--allow-downgrade]`: fetch a package,
//! verify it as the loader would, install it atomically (see `crate::install`).
//!
//! Exit codes: 0 installed, 1 verification said no (nothing was changed), 2 any other error
//! (nothing was changed either, unless the message says otherwise).

use std::process::ExitCode;

use anyhow::{Context, Result};
use reqwest::Url;

use super::Globals;
use crate::cli::InstallPluginArgs;
use crate::config::{Config, DEFAULT_API_URL};
use crate::exit;
use crate::install::{self, InstallRefused, Source};

/// The API's base URL from km's configuration.
pub(crate) fn api_base(config: &Config) -> Result<Url> {
    let base = config.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
    let mut url =
        Url::parse(base).with_context(|| format!("the API URL {base:?} is not a valid URL"))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Headers for the API: the API key, and the customer token when given.
pub(crate) fn api_headers(
    config: &Config,
    customer_token: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if let Some(key) = &config.api_key {
        headers.push(("authorization", format!("Bearer {key}")));
    }
    if let Some(token) = customer_token {
        headers.push(("x-km-customer-token", token.to_owned()));
    }
    headers
}

/// Maps a refusal to exit 1 and prints it; other errors go up (exit 2).
pub(crate) fn refusal_exit(err: anyhow::Error) -> Result<ExitCode> {
    match err.downcast_ref::<InstallRefused>() {
        Some(refused) => {
            eprintln!("km: {refused}; nothing was installed");
            Ok(ExitCode::from(exit::REFUSED))
        }
        None => Err(err),
    }
}

/// Runs `km install-plugin`.
pub(super) fn run(globals: &Globals, args: InstallPluginArgs) -> Result<ExitCode> {
    let source = Source::parse(&args.source)?;
    let progress = !globals.quiet;
    let max = install::max_package_bytes();
    let (what, bytes) = match &source {
        Source::File(path) => (
            path.display().to_string(),
            install::read_package_file(path)?,
        ),
        Source::Url(url) => {
            // A URL on the API's host gets the API's roots and pins.
            let tls = crate::tls::client_config_for(&Config::load(&globals.home)?)?;
            (
                url.to_string(),
                install::download(&globals.runtime, &tls, url, max, &[], progress)?,
            )
        }
        Source::Name(name) => {
            let config = Config::load(&globals.home)?;
            let tls = crate::tls::client_config_for(&config)?;
            let url = api_base(&config)?
                .join(&format!("api/plugins/download/{name}"))
                .with_context(|| format!("building the download URL for {name}"))?;
            let headers = api_headers(&config, args.customer_token.as_deref());
            (
                name.clone(),
                install::download(&globals.runtime, &tls, &url, max, &headers, progress)?,
            )
        }
    };
    let (pkg, _) = match install::verify_package(&globals.home, &what, &bytes, args.allow_downgrade)
    {
        Ok(ok) => ok,
        Err(e) => return refusal_exit(e),
    };
    let installed = match install::install(&globals.home, &pkg, args.allow_downgrade) {
        Ok(installed) => installed,
        Err(e) => return refusal_exit(e),
    };
    let verified = &installed.verified;
    if !globals.quiet {
        let m = &installed.manifest;
        eprintln!(
            "km: installed {} {} ({}, signed by {}) -> {}",
            m.name,
            m.version,
            m.tier.display_name(),
            verified.key_id(),
            installed.path.display()
        );
        for old in &installed.replaced {
            eprintln!("km: removed the previous build {}", old.display());
        }
    }
    Ok(ExitCode::from(exit::OK))
}
