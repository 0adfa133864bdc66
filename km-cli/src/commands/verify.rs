//! `km verify-plugin PATH...`: the loader's checks, by hand, without mapping anything.
//!
//! Exit codes: 0 when every plugin verifies, 1 when any does not, 2 on a usage or I/O error
//! (a path that cannot be read at all).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use km_signing::Verified;
use serde::Serialize;

use super::Globals;
use crate::cli::VerifyPluginArgs;
use crate::exit;
use crate::home::KmHome;
use crate::host::{PluginHost, Verbosity};
use crate::verifier::{Check, Checked, Refusal, Verifier, SIGNATURE_SUFFIX};

/// One plugin's verdict, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) path: PathBuf,
    pub(crate) verified: bool,
    pub(crate) name: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) tier: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) key_label: Option<String>,
    pub(crate) sha256: Option<String>,
    /// What the manifest grants beyond observing (`intercept`, ...).
    pub(crate) capabilities: Vec<String>,
    /// Whether it fails open when intercepting.
    pub(crate) fail_open: bool,
    /// The failing check, when refused.
    pub(crate) check: Option<Check>,
    /// Why, when refused.
    pub(crate) reason: Option<String>,
}

impl Report {
    pub(crate) fn accepted(path: &Path, verified: &Verified) -> Self {
        let manifest = verified.manifest();
        Report {
            path: path.to_path_buf(),
            verified: true,
            name: Some(manifest.name.clone()),
            version: Some(manifest.version.clone()),
            tier: Some(manifest.tier.display_name().to_owned()),
            key_id: Some(verified.key_id().to_string()),
            key_label: Some(verified.key_label().to_owned()),
            sha256: Some(verified.sha256().to_owned()),
            capabilities: manifest.capabilities.clone(),
            fail_open: manifest.fail_open,
            check: None,
            reason: None,
        }
    }

    /// A refusal, with what the (unverified) signature file claims, marked as such by
    /// `verified: false`, so that the user can tell which plugin it was meant to be. Both come
    /// from what the verifier read with its checked, capped, non-blocking open: nothing here
    /// opens a file again.
    pub(crate) fn refused(refusal: &Refusal) -> Self {
        let claimed = refusal.claimed.as_deref();
        let sha256 = refusal.sha256.clone();
        Report {
            path: refusal.path.clone(),
            verified: false,
            name: claimed.as_ref().map(|m| m.name.clone()),
            version: claimed.as_ref().map(|m| m.version.clone()),
            tier: claimed.as_ref().map(|m| m.tier.display_name().to_owned()),
            key_id: claimed.as_ref().map(|m| m.key_id.clone()),
            key_label: None,
            sha256,
            capabilities: claimed
                .as_ref()
                .map(|m| m.capabilities.clone())
                .unwrap_or_default(),
            fail_open: claimed.as_ref().is_some_and(|m| m.fail_open),
            check: Some(refusal.check),
            reason: Some(refusal.reason.clone()),
        }
    }

    /// What it may do, for people: `observe`, `observe, intercept`, `... (fails open)`.
    pub(crate) fn grants(&self) -> String {
        let mut grants = vec!["observe".to_owned()];
        for capability in &self.capabilities {
            if km_signing::KNOWN_CAPABILITIES.contains(&capability.as_str()) {
                grants.push(capability.clone());
            } else {
                grants.push(format!("{capability} (unknown to this km: not granted)"));
            }
        }
        let mut text = grants.join(", ");
        if self.fail_open {
            text.push_str(" (fails open)");
        }
        text
    }

    pub(crate) fn print_human(&self) {
        let dash = || "-".to_owned();
        eprintln!("{}", self.path.display());
        if self.verified {
            eprintln!("  name:     {}", self.name.clone().unwrap_or_else(dash));
        } else {
            eprintln!(
                "  name:     {} (claimed, not verified)",
                self.name.clone().unwrap_or_else(dash)
            );
        }
        eprintln!("  version:  {}", self.version.clone().unwrap_or_else(dash));
        eprintln!("  tier:     {}", self.tier.clone().unwrap_or_else(dash));
        let label = self.key_label.as_deref().filter(|l| !l.is_empty());
        match (&self.key_id, label) {
            (Some(id), Some(label)) => eprintln!("  signer:   {id} ({label})"),
            (Some(id), None) => eprintln!("  signer:   {id}"),
            (None, _) => eprintln!("  signer:   -"),
        }
        eprintln!("  sha256:   {}", self.sha256.clone().unwrap_or_else(dash));
        eprintln!("  grants:   {}", self.grants());
        match (self.check, &self.reason) {
            (Some(check), Some(reason)) => eprintln!("  verdict:  REFUSED ({check}): {reason}"),
            _ => eprintln!("  verdict:  OK"),
        }
    }
}

/// The library a path names: itself, or the library beside a `.kmsig` the user named.
fn library_path(path: &Path) -> PathBuf {
    match path.to_str().and_then(|p| p.strip_suffix(SIGNATURE_SUFFIX)) {
        Some(lib) if !lib.is_empty() && !lib.ends_with('/') => PathBuf::from(lib),
        _ => path.to_path_buf(),
    }
}

/// Loads a checked plugin (`--load`), then shuts it down; the verifier records its version as
/// seen.
fn load_checked(
    globals: &Globals,
    verifier: &mut Verifier,
    checked: Checked,
) -> Result<Verified, Refusal> {
    let verified = checked.verified().clone();
    let manifest = verified.manifest();
    let data_dir = globals.home.plugin_data_dir(&manifest.name);
    KmHome::ensure_private_dir(&data_dir)
        .map_err(|e| Refusal::new(checked.path(), Check::Io, format!("{e:#}")))?;
    let verbosity = Verbosity::from_flags(globals.quiet, globals.verbose);
    let plugin = verifier.load(
        checked,
        PluginHost::new(&manifest.name, data_dir, verbosity, None),
    )?;
    if let Err(failure) = plugin.shutdown() {
        eprintln!("km: warning: {failure}");
    }
    Ok(verified)
}

/// Runs `km verify-plugin`.
pub(super) fn run(globals: &Globals, args: VerifyPluginArgs) -> Result<ExitCode> {
    let mut verifier = Verifier::open(&globals.home)?.allow_downgrade(args.allow_downgrade);
    let mut reports = Vec::new();
    let mut io_error = false;
    for given in &args.paths {
        // The heading names the library, also when the user named its signature.
        let path = &library_path(given);
        if let Err(e) = std::fs::symlink_metadata(path) {
            eprintln!("km: error: {}: {e}", path.display());
            io_error = true;
            continue;
        }
        let report = match verifier.check_file(path).and_then(|checked| {
            if args.load {
                load_checked(globals, &mut verifier, checked)
            } else {
                Ok(checked.into_verified())
            }
        }) {
            Ok(verified) => Report::accepted(path, &verified),
            Err(refusal) => {
                if refusal.check == Check::Io {
                    io_error = true;
                }
                Report::refused(&refusal)
            }
        };
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            report.print_human();
        }
    }
    let code = if io_error {
        exit::ERROR
    } else if reports.iter().all(|r| r.verified) {
        exit::OK
    } else {
        exit::REFUSED
    };
    Ok(ExitCode::from(code))
}
