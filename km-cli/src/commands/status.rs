//! `km plugin-status` and `km plugin-refresh`: what each plugin's subscription looks like, and
//! re-authenticating now.
//!
//! The person at the terminal owns the machine, so the status says plainly why a plugin is
//! degraded (the plugin itself stays quiet in the MCP stream). The status comes from the records
//! the refresher keeps in `KM_HOME/state/auth` (see [`crate::subscription`]); `plugin-refresh`
//! loads the plugins (verifying them as `km monitor` does), authenticates them and updates the
//! records.
//!
//! Both also name this installation's device identity ([`crate::device`]): the id the API lists
//! among the customer's seats, which is what to release to free a seat for another installation.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Result};

use crate::api::ApiClient;
use crate::cli::{PluginRefreshArgs, PluginStatusArgs};
use crate::commands::Globals;
use crate::config::Config;
use crate::exit;
use crate::host::Verbosity;
use crate::loader::{load_plugins, LoadOptions};
use crate::subscription::{self, AuthRecord};
use crate::verifier::Verifier;

/// How long `plugin-refresh` waits for all plugins.
const REFRESH_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `km plugin-status`.
pub(crate) fn run_status(globals: &Globals, args: PluginStatusArgs) -> Result<ExitCode> {
    let mut records = subscription::load_records(&globals.home)?;
    // Installed plugins that verify but were never authenticated get a record saying so, and
    // records of plugins no longer installed say that.
    if let Some(installed) = installed_plugins(globals) {
        for record in &mut records {
            if !installed.iter().any(|(name, _, _)| *name == record.plugin) {
                record.outcome = format!("{} (not installed)", record.outcome);
            }
        }
        for (name, version, tier) in installed {
            if !records.iter().any(|r| r.plugin == name) {
                records.push(AuthRecord {
                    plugin: name,
                    version,
                    required_tier: tier.as_str().to_owned(),
                    authorized: false,
                    tier: km_abi::Tier::Free.as_str().to_owned(),
                    features: Vec::new(),
                    expires_at: 0,
                    token: String::new(),
                    reason: "not authenticated yet: run `km plugin-refresh` or `km monitor`"
                        .to_owned(),
                    outcome: "never".to_owned(),
                    last_refresh: 0,
                });
            }
        }
        records.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    }
    let device = device_id(globals);
    if args.json {
        let mut value = records_json(&records);
        if let Some(items) = value.as_array_mut() {
            for item in items {
                let name = item["plugin"].as_str().unwrap_or_default().to_owned();
                item["last_session"] =
                    serde_json::to_value(subscription::load_session_stats(&globals.home, &name))?;
                item["device_id"] = serde_json::to_value(&device)?;
            }
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        println!(
            "no plugins installed in {}",
            globals.home.plugins_dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = crate::subscription::now_unix();
    for record in &records {
        print!("{}", describe(record, now));
        if let Some(stats) = subscription::load_session_stats(&globals.home, &record.plugin) {
            println!(
                "  last session: {} messages handled, {} dropped, ended {}",
                stats.handled,
                stats.dropped,
                when(stats.ended_at, now)
            );
        }
    }
    println!("{}", describe_device(globals, device.as_deref()));
    Ok(ExitCode::SUCCESS)
}

/// This installation's device id, when km has made its identity; a problem with the key file
/// is a warning (the status itself is still worth showing).
fn device_id(globals: &Globals) -> Option<String> {
    match crate::device::existing_id(&globals.home) {
        Ok(id) => id.map(|id| id.to_string()),
        Err(e) => {
            eprintln!("km: warning: {e:#}");
            None
        }
    }
}

fn describe_device(globals: &Globals, id: Option<&str>) -> String {
    let path = globals.home.root().join(crate::device::DEVICE_KEY_FILE);
    match id {
        Some(id) => format!(
            "this installation: device {id} ({}); the API counts it as one seat of the \
             subscription",
            path.display()
        ),
        None => format!(
            "this installation has no device identity yet: km makes {} at the first request a \
             plugin sends to the API",
            path.display()
        ),
    }
}

/// (name, version, tier) of the plugins in KM_HOME/plugins whose signature verifies, without
/// loading them; None when the directory cannot be read (the records are shown as they are).
fn installed_plugins(globals: &Globals) -> Option<Vec<(String, String, km_abi::Tier)>> {
    let dir = globals.home.plugins_dir();
    if !dir.exists() {
        return Some(Vec::new());
    }
    // Status is not loading: an older version still shows.
    let verifier = Verifier::open(&globals.home).ok()?.allow_downgrade(true);
    let mut plugins = Vec::new();
    for checked in verifier.check_dir(&dir).ok()?.into_iter().flatten() {
        let manifest = checked.verified().manifest();
        plugins.push((
            manifest.name.clone(),
            manifest.version.clone(),
            manifest.tier,
        ));
    }
    Some(plugins)
}

/// Runs `km plugin-refresh [NAME]`.
pub(crate) fn run_refresh(globals: &Globals, args: PluginRefreshArgs) -> Result<ExitCode> {
    let config = Config::load(&globals.home)?;
    let api = ApiClient::from_config(&globals.runtime, &config)?;
    let mut options = LoadOptions::new(
        args.plugins_dir
            .clone()
            .unwrap_or_else(|| globals.home.plugins_dir()),
        globals.home.clone(),
    );
    options.verbosity = Verbosity::from_flags(globals.quiet, globals.verbose);
    options.api = api;
    let report = load_plugins(&options)?;
    for refusal in &report.refused {
        eprintln!("km: {refusal}");
    }
    let plugins: Vec<_> = match &args.name {
        Some(name) => report
            .loaded
            .iter()
            .filter(|p| p.name() == name)
            .cloned()
            .collect(),
        None => report.loaded.clone(),
    };
    if plugins.is_empty() {
        match &args.name {
            Some(name) => bail!(
                "no plugin named {name} loaded from {}",
                options.plugins_dir.display()
            ),
            None => {
                eprintln!(
                    "km: no plugins loaded from {}",
                    options.plugins_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if config.api_key.is_none() && !globals.quiet {
        eprintln!("km: no API key configured (run `km init`): premium plugins will run degraded");
    }
    let records = subscription::refresh_all(
        &globals.runtime,
        &globals.home,
        &config,
        &plugins,
        REFRESH_DEADLINE,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records_json(&records))?);
    } else {
        let now = crate::subscription::now_unix();
        for record in &records {
            print!("{}", describe(record, now));
        }
    }
    if !args.json && !globals.quiet {
        eprintln!(
            "km: {}",
            describe_device(globals, device_id(globals).as_deref())
        );
    }
    let all_ok = records.iter().all(|r| r.authorized);
    // The process may still have a refresh thread stuck in a hung plugin: exit, do not wait.
    Ok(ExitCode::from(if all_ok {
        exit::OK
    } else {
        exit::REFUSED
    }))
}

fn records_json(records: &[AuthRecord]) -> serde_json::Value {
    // The token is left out: it is a credential, and `--json` output ends up in logs.
    serde_json::Value::Array(
        records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "plugin": r.plugin,
                    "version": r.version,
                    "required_tier": r.required_tier,
                    "authorized": r.authorized,
                    "tier": r.tier,
                    "features": r.features,
                    "expires_at": r.expires_at,
                    "last_refresh": r.last_refresh,
                    "outcome": r.outcome,
                    "reason": r.reason,
                })
            })
            .collect(),
    )
}

fn when(unix: i64, now: i64) -> String {
    let Ok(secs) = u64::try_from(unix) else {
        return unix.to_string();
    };
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    let delta = unix - now;
    let human =
        |d: i64| humantime::format_duration(Duration::from_secs(d.unsigned_abs())).to_string();
    if delta >= 0 {
        format!("{stamp} (in {})", human(delta))
    } else {
        format!("{stamp} ({} ago)", human(delta))
    }
}

fn tier_name(tier: &str) -> String {
    tier.parse::<km_abi::Tier>()
        .map_or_else(|_| tier.to_owned(), |t| t.display_name().to_owned())
}

/// The human-readable status of one plugin, a few lines.
fn describe(r: &AuthRecord, now: i64) -> String {
    let required = tier_name(&r.required_tier);
    let mut out = format!("{} {} (needs {required})\n", r.plugin, r.version);
    let state = match (r.authorized, r.outcome.as_str()) {
        (true, _) if r.required() == Some(km_abi::Tier::Free) => {
            "active (Free plugin: no subscription needed)".to_owned()
        }
        (true, _) => format!("active: {} subscription", tier_name(&r.tier)),
        (false, "error") => "degraded: the plugin failed to authenticate".to_owned(),
        (false, "timeout") => "degraded: the plugin did not answer".to_owned(),
        (false, "never") => "not authenticated yet".to_owned(),
        // With a token the API said which tier the subscription has; without one (refused,
        // unreachable) nothing is known about it.
        (false, _) if r.expires_at > 0 => format!(
            "degraded to Free behaviour (subscription: {})",
            tier_name(&r.tier)
        ),
        (false, _) => "degraded to Free behaviour".to_owned(),
    };
    out.push_str(&format!("  status:       {state}\n"));
    if !r.reason.is_empty() {
        let label = if r.authorized { "note" } else { "why" };
        out.push_str(&format!(
            "  {label}:{}{}\n",
            " ".repeat(13 - label.len()),
            r.reason
        ));
    }
    if !r.features.is_empty() {
        out.push_str(&format!("  features:     {}\n", r.features.join(", ")));
    }
    if r.expires_at > 0 {
        let label = if r.expires_at <= now {
            "expired:"
        } else {
            "expires:"
        };
        out.push_str(&format!("  {label}     {}\n", when(r.expires_at, now)));
    }
    out.push_str(&format!(
        "  last refresh: {}: {}\n",
        when(r.last_refresh, now),
        r.outcome
    ));
    out
}
