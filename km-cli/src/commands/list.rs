//! `km list-plugins`: what is in the plugin directory and whether each would load. Nothing is
//! mapped: a plugin that fails a check is listed with its reason.

use std::process::ExitCode;

use anyhow::Result;

use super::verify::Report;
use super::Globals;
use crate::cli::ListPluginsArgs;
use crate::exit;
use crate::verifier::{Check, Verifier};

/// Runs `km list-plugins`.
pub(super) fn run(globals: &Globals, args: ListPluginsArgs) -> Result<ExitCode> {
    let dir = args
        .plugins_dir
        .unwrap_or_else(|| globals.home.plugins_dir());
    let mut reports = Vec::new();
    if dir.exists() {
        // The verifier's checked, capped, non-blocking reads: a FIFO or a device named like a
        // library (or its signature) is reported, never read.
        let verifier = Verifier::open(&globals.home)?;
        match verifier.check_dir(&dir) {
            Err(refusal) => reports.push(Report::refused(&refusal)),
            Ok(checks) => {
                for check in checks {
                    reports.push(match check {
                        Ok(checked) => Report::accepted(checked.path(), checked.verified()),
                        Err(refusal) => Report::refused(&refusal),
                    });
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::from(exit::OK));
    }
    if reports.is_empty() {
        println!("No plugins in {}", dir.display());
        return Ok(ExitCode::from(exit::OK));
    }
    println!("Plugins in {}:", dir.display());
    for r in &reports {
        let file = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let signer = match (&r.key_id, r.key_label.as_deref().filter(|l| !l.is_empty())) {
            (Some(id), Some(label)) => format!("{label} ({})", short(id)),
            (Some(id), None) => short(id).to_owned(),
            (None, _) => "-".to_owned(),
        };
        if r.verified {
            let grants = if r.capabilities.is_empty() && !r.fail_open {
                String::new()
            } else {
                format!("  can: {}", r.grants())
            };
            println!(
                "  ✓ {} v{} ({} tier)  signer {}  [{}]  verified{grants}",
                r.name.as_deref().unwrap_or("-"),
                r.version.as_deref().unwrap_or("-"),
                r.tier.as_deref().unwrap_or("-"),
                signer,
                file
            );
        } else {
            println!(
                "  ✗ {} [{}]  refused ({}): {}",
                r.name.as_deref().unwrap_or("?"),
                file,
                r.check.map_or("?", Check::as_str),
                r.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::from(exit::OK))
}

fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}
