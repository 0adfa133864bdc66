//! km's files: `KM_HOME` (default `~/.km`) and what lives in it.
//!
//! MCP clients often start servers with only a few variables (HOME, PATH, USER), so the default
//! is found from `HOME` alone.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The layout of a km home directory.
#[derive(Debug, Clone)]
pub struct KmHome {
    root: PathBuf,
}

impl KmHome {
    /// `explicit` (from `--home` or `KM_HOME`), else `$HOME/.km`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            if dir.as_os_str().is_empty() {
                bail!("KM_HOME is set but empty");
            }
            return Ok(KmHome {
                root: dir.to_path_buf(),
            });
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("cannot find km's home: neither KM_HOME nor HOME is set")?;
        Ok(KmHome {
            root: PathBuf::from(home).join(".km"),
        })
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where installed plugins live: a library and its `.kmsig` side by side.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// Keys added with `km trust add`, and revocations.
    pub fn trusted_keys_dir(&self) -> PathBuf {
        self.root.join("trusted-keys")
    }

    /// State km keeps between runs (seen versions, auth cache, per-plugin data).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The highest version seen per plugin, for rollback protection.
    pub fn seen_versions_file(&self) -> PathBuf {
        self.state_dir().join("seen-versions.json")
    }

    /// A plugin's own data directory.
    pub fn plugin_data_dir(&self, plugin: &str) -> PathBuf {
        self.state_dir().join("plugins").join(plugin)
    }

    /// `config.toml` (API key and endpoint).
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// Policy files: one per plugin that takes a policy, and `team/` for team policy.
    pub fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }

    /// Keys km made for this installation (the local signing key of `km setup`), mode 0700.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The private key `km setup` signs the bundled plugins of a source build with (PKCS#8
    /// PEM, mode 0600).
    pub fn local_signing_key(&self) -> PathBuf {
        self.keys_dir().join("local-signing.pem")
    }

    /// km's log files.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates `dir` (and parents) with mode 0700 if it does not exist.
    pub fn ensure_private_dir(dir: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))
    }
}
