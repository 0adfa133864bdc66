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
    assert!(
        output.status.success(),
        "command failed: {cmd:?}\n{}",
        describe(&output)
    );
    output
}

/// Sets `path` to `mode` (tests need 0700 directories and 0600/0644 files: km refuses group or
/// world-writable plugin files, and umask may vary).
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A throw-away km installation: `KM_HOME` with a plugin directory (both 0700), and a signing
/// key made by the real `km-sign` and trusted with the real `km trust add`.
pub struct KmEnv {
    /// Owns the temporary directory.
    pub dir: tempfile::TempDir,
    /// `KM_HOME`.
    pub home: PathBuf,
    /// `KM_HOME/plugins`.
    pub plugins: PathBuf,
    /// The trusted signing key's prefix (`.key`, `.pub`).
    pub key: PathBuf,
}

impl KmEnv {
    /// A fresh environment with one trusted Ed25519 key labelled `test`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("km-e2e-")
            .tempdir()
            .expect("a temp dir");
        chmod(dir.path(), 0o700);
        let home = dir.path().join("km-home");
        let plugins = home.join("plugins");
        std::fs::create_dir_all(&plugins).expect("creating KM_HOME/plugins");
        chmod(&home, 0o700);
        chmod(&plugins, 0o700);
        let env = KmEnv {
            key: dir.path().join("keys").join("test"),
            dir,
            home,
            plugins,
        };
        std::fs::create_dir_all(env.dir.path().join("keys")).expect("creating keys/");
        env.keygen(&env.key);
        let mut trust = env.km();
        trust
            .args(["trust", "add", "--label", "test"])
            .arg(env.key.with_extension("pub"));
        run_ok(&mut trust);
        env
    }

    /// `km` with this `KM_HOME`.
    pub fn km(&self) -> Command {
        command(&km_bin(), &self.home)
    }

    /// `km-sign` with this `KM_HOME`.
    pub fn km_sign(&self) -> Command {
        command(&km_sign_bin(), &self.home)
    }

    /// Makes an Ed25519 key pair at `prefix` (`.key`, `.pub`).
    pub fn keygen(&self, prefix: &Path) {
        let mut cmd = self.km_sign();
        cmd.args(["keygen", "--out"]).arg(prefix);
        run_ok(&mut cmd);
    }

    /// Signs `lib` with the key at `key_prefix`, adding `extra` arguments to `km-sign sign`.
    pub fn sign_with(
        &self,
        lib: &Path,
        key_prefix: &Path,
        name: &str,
        version: &str,
        tier: &str,
        extra: &[&str],
    ) {
        let mut cmd = self.km_sign();
        cmd.arg("sign")
            .arg("--key")
            .arg(key_prefix.with_extension("key"))
            .args(["--name", name, "--version", version, "--tier", tier])
            .args(extra)
            .arg(lib);
        run_ok(&mut cmd);
    }

    /// Copies the built library of workspace crate `crate_name` into the plugin directory as
    /// `file_name` (mode 0644) and signs it with the trusted key as `name` `version` `tier`.
    pub fn install_as(
        &self,
        crate_name: &str,
        file_name: &str,
        name: &str,
        version: &str,
        tier: &str,
    ) -> PathBuf {
        let dest = self.plugins.join(file_name);
        std::fs::copy(plugin_lib(crate_name), &dest).expect("copying the plugin library");
        chmod(&dest, 0o644);
        self.sign_with(&dest, &self.key, name, version, tier, &[]);
        dest
    }

    /// Installs a workspace plugin under its usual file name, signed as `name` 1.0.0, tier free.
    pub fn install(&self, crate_name: &str, name: &str) -> PathBuf {
        let file = format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            crate_name.replace('-', "_"),
            std::env::consts::DLL_SUFFIX
        );
        self.install_as(crate_name, &file, name, "1.0.0", "free")
    }
}

impl Default for KmEnv {
    fn default() -> Self {
        Self::new()
    }
}
