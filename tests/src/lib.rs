//! The harness of km's end-to-end tests: finds the real binaries and plugin libraries that
//! `cargo build --workspace` produced, makes throw-away `KM_HOME`s, and signs libraries with keys
//! the test makes, using the real `km-sign`.
//!
//! The test binaries cannot build cdylibs themselves (cargo holds the build lock while tests
//! run), so the README's test command builds the workspace first.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cargo target directory's profile folder (`target/debug`) holding `km`, `km-sign` and the
/// plugin libraries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KM_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (see README)",
        path.display()
    );
    path
}

/// The real `km` binary.
pub fn km_bin() -> PathBuf {
    built("km")
}

/// The real `km-sign` binary.
pub fn km_sign_bin() -> PathBuf {
    built("km-sign")
}

/// The library file of a workspace plugin crate, e.g. `console-logger` ->
/// `target/debug/libconsole_logger.so`.
pub fn plugin_lib(crate_name: &str) -> PathBuf {
    built(&format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// A command for `program` with a clean environment except PATH and HOME (so that tests never
/// read the developer's real `~/.km`), and `KM_HOME` set to `home`.
pub fn command(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", home.join("no-such-home"));
    cmd.env("KM_HOME", home);
    cmd
}

/// Output as text, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd`, panicking with its output when it does not exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("the command starts");
    assert!(output.status.success(), "command failed: {cmd:?}\n{}", describe(&output));
    output
}

/// Sets `path` to `mode` (tests need 0700 directories and 0600/0644 files: km refuses group or
/// world-writable plugin files, and umask may vary).
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
