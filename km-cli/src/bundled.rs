//! The plugins that ship with km: built by the workspace beside the `km` binary, signed and
//! installed by `km setup` (the free ones), shown at work by `km demo`, checked by `km doctor`.
//!
//! The version of each entry is the one the plugin reports (its crate's version), which its
//! signature must state: the loader refuses a plugin whose signed version differs from what it
//! says about itself. The table cannot read it from the library without mapping unverified
//! bytes, so it is written here and a test (`km-cli/tests/bundled.rs`) holds it to each plugin's
//! `Cargo.toml`.
//!
//! Capabilities are the grants each plugin needs for what it does by default or by a documented
//! policy option: tool-guard, advanced-filters and team-collaboration act on the path;
//! compliance-reporting needs `intercept` for its write-ahead mode (records before forwarding),
//! which a policy turns on.

use km_abi::Tier;

/// One bundled plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundled {
    /// Its name, as it reports it and as it is signed.
    pub name: &'static str,
    /// Its version, as it reports it.
    pub version: &'static str,
    /// The tier it needs.
    pub tier: Tier,
    /// The crate name of its library (`lib<crate>.so`).
    pub crate_name: &'static str,
    /// What its signature must grant.
    pub capabilities: &'static [&'static str],
}

impl Bundled {
    /// The file name of its library on this platform (`libconsole_logger.so`).
    pub fn library_file(&self) -> String {
        km_signing::library_file_name(self.crate_name)
    }

    /// Free plugins run as any signed build; Pro and Enterprise ones authorise only as a
    /// customer's build (credentials stamped in by the Kilometers API).
    pub fn is_premium(&self) -> bool {
        self.tier != Tier::Free
    }
}

const INTERCEPT: &[&str] = &[km_signing::CAPABILITY_INTERCEPT];

/// Every bundled plugin, free ones first.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "console-logger",
        version: "1.0.0",
        tier: Tier::Free,
        crate_name: "console_logger",
        capabilities: &[],
    },
    Bundled {
        name: "tool-guard",
        version: "1.0.0",
        tier: Tier::Free,
        crate_name: "tool_guard",
        capabilities: INTERCEPT,
    },
    Bundled {
        name: "api-logger",
        version: "1.0.0",
        tier: Tier::Pro,
        crate_name: "api_logger",
        capabilities: &[],
    },
    Bundled {
        name: "ml-analytics",
        version: "1.0.0",
        tier: Tier::Pro,
        crate_name: "ml_analytics",
        capabilities: &[],
    },
    Bundled {
        name: "advanced-filters",
        version: "1.0.0",
        tier: Tier::Pro,
        crate_name: "advanced_filters",
        capabilities: INTERCEPT,
    },
    Bundled {
        name: "compliance-reporting",
        version: "1.0.0",
        tier: Tier::Enterprise,
        crate_name: "compliance_reporting",
        capabilities: INTERCEPT,
    },
    Bundled {
        name: "team-collaboration",
        version: "1.0.0",
        tier: Tier::Enterprise,
        crate_name: "team_collaboration",
        capabilities: INTERCEPT,
    },
];

/// The bundled plugin called `name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    BUNDLED.iter().find(|b| b.name == name)
}

/// The free bundled plugins: what `km setup` signs and installs.
pub fn free() -> impl Iterator<Item = &'static Bundled> {
    BUNDLED.iter().filter(|b| !b.is_premium())
}

/// The premium bundled plugins: customer builds only.
pub fn premium() -> impl Iterator<Item = &'static Bundled> {
    BUNDLED.iter().filter(|b| b.is_premium())
}
