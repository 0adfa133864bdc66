//! How `km demo` puts the bundled plugins into its temporary `KM_HOME`, the way a publisher
//! does: a fresh Ed25519 key signs every plugin (the real `km-sign sign`) and is trusted with
//! the real `km trust add`. Free plugins are signed as published; Pro and Enterprise plugins
//! become customer builds for the demo customer, exactly as `km-sign build-plugin` makes them
//! (the same `km_signing::stamp_library`: the customer's credentials encrypted under a build key
//! derived from the customer secret the demo API holds, with the API's public key they will
//! trust; signed with the customer in the manifest, and named `libkm-plugin-NAME-<hash8>`).
//!
//! The libraries are written straight into the plugin directory rather than packed and put
//! through `km install-plugin`: packing and unpacking a debug build's libraries (10+ MB each)
//! costs over a second per plugin, which would make the demo mostly waiting, and km verifies
//! every library when it loads it anyway (the same verifier as the installer's).

use std::path::Path;

use anyhow::{Context, Result};

use super::api::{ApiServer, Customer};
use super::{run_tool, Tools};
use crate::bundled::Bundled;

/// Where the installation's files go.
pub(super) struct Dirs<'a> {
    pub(super) home: &'a Path,
    /// The signing key's prefix (`.key`, `.pub`).
    pub(super) key: &'a Path,
    /// Where the pristine plugin libraries are.
    pub(super) lib_dir: &'a Path,
}

/// Makes the signing key and trusts it.
pub(super) fn trust_key(tools: &Tools, dirs: &Dirs<'_>) -> Result<()> {
    run_tool(
        tools
            .command(&tools.km_sign)
            .arg("keygen")
            .arg("--out")
            .arg(dirs.key),
        "km-sign keygen",
    )?;
    run_tool(
        tools
            .km(dirs.home)
            .args(["trust", "add", "--label", "km demo"])
            .arg(dirs.key.with_extension("pub")),
        "km trust add",
    )
}

/// Puts `plugin` into the plugin directory, signed: as published for a Free plugin, as the demo
/// customer's build (credentials stamped in, the customer in the manifest) otherwise.
pub(super) fn install(
    tools: &Tools,
    dirs: &Dirs<'_>,
    plugin: &Bundled,
    api: &ApiServer,
    customer: &Customer,
) -> Result<()> {
    let source = dirs.lib_dir.join(plugin.library_file());
    let pristine = std::fs::read(&source).with_context(|| {
        format!(
            "reading {}: build the workspace first (cargo build --workspace), or pass --lib-dir",
            source.display()
        )
    })?;
    let plugins = dirs.home.join("plugins");
    let (file, bytes, customer_id) = if !plugin.is_premium() {
        (plugin.library_file(), pristine, None)
    } else {
        let credentials = km_plugin_sdk::credentials::Credentials {
            customer_id: customer.id.to_owned(),
            customer_token: customer.token.clone(),
            tier: plugin.tier,
            build_time: i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )
            .unwrap_or(i64::MAX),
        };
        let (stamped, _) = km_signing::stamp_library(&pristine, &credentials, &api.public_key)
            .map_err(|e| anyhow::anyhow!("{}: cannot stamp credentials: {e}", source.display()))?;
        (
            km_signing::customer_build_file_name(plugin.name, customer.id),
            stamped,
            Some(customer.id),
        )
    };
    // Written 0644: km refuses plugin files that others may write, and the build output may be
    // group-writable.
    let installed = plugins.join(&file);
    km_durable::write_atomic(&installed, &bytes, km_durable::PUBLIC)
        .with_context(|| format!("writing {}", installed.display()))?;
    let mut sign = tools.command(&tools.km_sign);
    sign.arg("sign")
        .arg("--key")
        .arg(dirs.key.with_extension("key"))
        .args(["--name", plugin.name, "--version", plugin.version])
        .args(["--tier", plugin.tier.as_str()]);
    if let Some(id) = customer_id {
        sign.args(["--customer", id]);
    }
    for capability in plugin.capabilities {
        sign.args(["--capability", capability]);
    }
    run_tool(sign.arg(&installed), "km-sign sign")
}
