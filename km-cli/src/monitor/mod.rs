//! `km monitor`: the transparent MCP stdio relay. (Being built; see issue 3.)

pub mod demo;

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::MonitorArgs;
use crate::commands::Globals;

/// Runs `km monitor`.
pub fn run_command(_globals: &Globals, _args: MonitorArgs) -> Result<ExitCode> {
    bail!("km monitor is not built yet")
}
