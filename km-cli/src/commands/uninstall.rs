//! `km uninstall-plugin NAME [--yes]`: remove a plugin's library, signature, data directory and
//! auth record (see `crate::install::uninstall`). Asks for confirmation when stdin is a terminal,
//! unless `--yes`; refuses (exit 2) when the plugin is not installed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::Globals;
use crate::cli::UninstallPluginArgs;
use crate::exit;
use crate::install;

/// Runs `km uninstall-plugin`.
pub(super) fn run(globals: &Globals, args: UninstallPluginArgs) -> Result<ExitCode> {
    let files = install::installed_files(&globals.home.plugins_dir(), &args.name)?;
    if files.is_empty() {
        bail!(
            "no plugin {:?} is installed in {}",
            args.name,
            globals.home.plugins_dir().display()
        );
    }
    if !args.yes && std::io::stdin().is_terminal() {
        eprint!("km: remove plugin {} (", args.name);
        for (i, (path, _)) in files.iter().enumerate() {
            eprint!("{}{}", if i > 0 { ", " } else { "" }, path.display());
        }
        eprint!("), its data and its auth record? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("km: nothing removed");
            return Ok(ExitCode::from(exit::REFUSED));
        }
    }
    let removed = install::uninstall(&globals.home, &args.name)?;
    if !globals.quiet {
        for path in &removed.paths {
            eprintln!("km: removed {}", path.display());
        }
    }
    Ok(ExitCode::from(exit::OK))
}
