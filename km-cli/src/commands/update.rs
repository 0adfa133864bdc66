//! `km update-plugin [NAME | --all]`: ask the Kilometers API for the newest version of installed
//! plugins, and replace those that are older.
//!
//! The API answers `GET {api_url}/api/plugins/latest?name=NAME` with
//! `{"name", "version", "sha256", "url"}`: `sha256` is the hex SHA-256 of the package, `url` is
//! absolute or relative to the API URL. A newer package is downloaded, its checksum compared,
//! then it is verified and installed exactly as by `km install-plugin` (see `crate::install`):
//! the old version stays in place until the new one has been verified.
//!
//! Exit codes: 0 all up to date or updated, 1 an update was refused by verification (the old
//! version is still installed), 2 any other error.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::install::{api_base, api_headers};
use super::Globals;
use crate::cli::UpdatePluginArgs;
use crate::config::Config;
use crate::exit;
use crate::install::{self, InstallRefused};
use crate::verifier::Check;

/// The API's answer about the newest version of a plugin.
#[derive(Debug, Deserialize)]
struct Latest {
    name: String,
    version: String,
    sha256: String,
    url: String,
}

/// Installed plugins: name -> version (from their signatures; unverified, used to ask).
fn installed_versions(globals: &Globals) -> Result<BTreeMap<String, semver::Version>> {
    let mut out = BTreeMap::new();
    for (_, manifest) in crate::verifier::claims(&globals.home.plugins_dir())? {
        let Some(m) = manifest else { continue };
        if let Ok(v) = semver::Version::parse(&m.version) {
            let slot = out.entry(m.name).or_insert_with(|| v.clone());
            if v > *slot {
                *slot = v;
            }
        }
    }
    Ok(out)
}

/// Updates one plugin; `Ok(true)` when it was replaced.
fn update_one(
    globals: &Globals,
    config: &Config,
    name: &str,
    current: &semver::Version,
) -> Result<bool> {
    let base = api_base(config)?;
    let mut url = base
        .join("api/plugins/latest")
        .context("building the latest-version URL")?;
    url.query_pairs_mut().append_pair("name", name);
    let headers = api_headers(config, None);
    let tls = crate::tls::client_config_for(config)?;
    let body = install::download(&globals.runtime, &tls, &url, 64 * 1024, &headers, false)?;
    let latest: Latest = serde_json::from_slice(&body)
        .with_context(|| format!("{url}: not a latest-version answer"))?;
    if latest.name != name {
        bail!("{url}: the API answered about {:?}", latest.name);
    }
    let version = semver::Version::parse(&latest.version)
        .with_context(|| format!("{url}: version {:?}", latest.version))?;
    if version <= *current {
        if !globals.quiet {
            eprintln!("km: {name} {current} is up to date");
        }
        return Ok(false);
    }
    let pkg_url = base
        .join(&latest.url)
        .with_context(|| format!("{url}: package URL {:?}", latest.url))?;
    // The API key goes only to the API itself, never to another host the answer names.
    let same_origin = pkg_url.origin() == base.origin();
    let pkg_headers: &[(&str, String)] = if same_origin { &headers } else { &[] };
    let bytes = install::download(
        &globals.runtime,
        &tls,
        &pkg_url,
        install::max_package_bytes(),
        pkg_headers,
        !globals.quiet,
    )?;
    let actual = km_durable::digest::sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(&latest.sha256) {
        return Err(InstallRefused {
            what: pkg_url.to_string(),
            check: Check::Checksum,
            reason: format!(
                "the package's SHA-256 is {actual}, the API announced {}",
                latest.sha256
            ),
        }
        .into());
    }
    let (pkg, verified) = install::verify_package(&globals.home, pkg_url.as_str(), &bytes, false)?;
    if verified.manifest().name != name || verified.manifest().version != latest.version {
        return Err(InstallRefused {
            what: pkg_url.to_string(),
            check: Check::Identity,
            reason: format!(
                "the package is {} {}, the API announced {name} {}",
                verified.manifest().name,
                verified.manifest().version,
                latest.version
            ),
        }
        .into());
    }
    let installed = install::install(&globals.home, &pkg, false)?;
    if !globals.quiet {
        eprintln!(
            "km: updated {name} {current} -> {} ({})",
            installed.manifest.version,
            installed.path.display()
        );
    }
    Ok(true)
}

/// Runs `km update-plugin`.
pub(super) fn run(globals: &Globals, args: UpdatePluginArgs) -> Result<ExitCode> {
    let installed = installed_versions(globals)?;
    let targets: Vec<(String, semver::Version)> = match &args.name {
        Some(name) => match installed.get(name) {
            Some(v) => vec![(name.clone(), v.clone())],
            None => bail!("no plugin {name:?} is installed"),
        },
        None if args.all => installed.into_iter().collect(),
        None => bail!("name a plugin or give --all"),
    };
    let config = Config::load(&globals.home)?;
    let mut code = exit::OK;
    for (name, current) in &targets {
        if let Err(err) = update_one(globals, &config, name, current) {
            match err.downcast_ref::<InstallRefused>() {
                Some(refused) => {
                    eprintln!("km: {refused}; {name} {current} stays installed");
                    code = exit::REFUSED;
                }
                None => {
                    eprintln!("km: error: updating {name}: {err:#}");
                    code = code.max(exit::ERROR);
                }
            }
        }
    }
    Ok(ExitCode::from(code))
}
