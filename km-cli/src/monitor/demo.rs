//! `km demo`. (Being built; see issue 3.)

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::DemoArgs;
use crate::commands::Globals;

/// Runs `km demo`.
pub fn run(_globals: &Globals, _args: DemoArgs) -> Result<ExitCode> {
    bail!("km demo is not built yet")
}
