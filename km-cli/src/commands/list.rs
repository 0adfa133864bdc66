//! (being built)

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::Globals;

pub(super) fn run<T>(_g: &Globals, _a: T) -> Result<ExitCode> {
    bail!("not built yet")
}
