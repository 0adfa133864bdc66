//! km's table of bundled plugins ([`km_cli::bundled::BUNDLED`]) against the plugins in the
//! workspace: every plugin crate under `plugins/` is in the table, under its package name, with
//! its crate's version (the version it reports, which `km setup` signs and the loader checks),
//! and a name that is its own. A plugin added, renamed or bumped without the table fails here,
//! not as a refused signature on a user's machine.

use std::path::{Path, PathBuf};

use km_cli::bundled::{self, BUNDLED};

/// Plugin crates of the workspace: `plugins/*/Cargo.toml`, without the SDK, the shared crates
/// and the test plugins.
fn plugin_crates() -> Vec<(PathBuf, toml::Table)> {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&plugins).expect("plugins/") {
        let dir = entry.expect("entry").path();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if matches!(name, "sdk" | "shared" | "testing") {
            continue;
        }
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        out.push((manifest, table));
    }
    out
}

#[test]
fn every_plugin_crate_is_bundled_with_its_version() {
    let crates = plugin_crates();
    assert!(
        crates.len() >= 5,
        "the workspace's plugins are found: {crates:?}"
    );
    for (manifest, table) in &crates {
        let package = table["package"].as_table().expect("[package]");
        let name = package["name"].as_str().expect("package.name");
        let version = package["version"].as_str().expect("package.version");
        let entry = bundled::find(name).unwrap_or_else(|| {
            panic!(
                "{} is plugin {name}, which is not in km-cli/src/bundled.rs: add it to BUNDLED \
                 (so that km setup, km demo and km doctor know it)",
                manifest.display()
            )
        });
        assert_eq!(
            entry.version,
            version,
            "km-cli/src/bundled.rs says {name} {}, {} says {version}",
            entry.version,
            manifest.display()
        );
        assert_eq!(entry.crate_name, name.replace('-', "_"), "{name}");
    }
    assert_eq!(
        BUNDLED.len(),
        crates.len(),
        "every BUNDLED entry is a plugin crate of the workspace"
    );
}

#[test]
fn free_plugins_come_first_and_premium_ones_are_customer_builds() {
    let free: Vec<_> = bundled::free().map(|b| b.name).collect();
    assert!(
        free.contains(&"console-logger") && free.contains(&"tool-guard"),
        "{free:?}"
    );
    assert!(bundled::premium().all(|b| b.is_premium()));
    let first_premium = BUNDLED
        .iter()
        .position(|b| b.is_premium())
        .unwrap_or(BUNDLED.len());
    assert!(BUNDLED[..first_premium].iter().all(|b| !b.is_premium()));
    assert!(BUNDLED[first_premium..].iter().all(|b| b.is_premium()));
}
