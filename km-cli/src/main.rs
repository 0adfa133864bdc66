//! The `km` binary: parses arguments and hands over to the library. Logic lives in `km_cli`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    km_cli::main()
}
