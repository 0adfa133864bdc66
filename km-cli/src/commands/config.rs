//! `km config show`: the configuration in force, with the API key masked and where each value
//! comes from (the file or the environment), and the transport to the API: TLS versions, the
//! roots and the certificate pins in force ([`crate::tls::transport_report`], which `km doctor`
//! can show too).

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::cli::ConfigCommand;
use crate::commands::Globals;
use crate::config::{mask_key, Config, ENV_API_KEY, ENV_API_URL};
use crate::subscription::ENV_REFRESH_INTERVAL;

/// Runs `km config ...`.
pub(crate) fn run(globals: &Globals, command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::Show { json } => show(globals, json),
    }
}

fn source(env: &str, value: Option<&String>) -> &'static str {
    match (
        std::env::var(env).ok().filter(|v| !v.trim().is_empty()),
        value,
    ) {
        (Some(_), _) => "environment",
        (None, Some(_)) => "file",
        (None, None) => "unset",
    }
}

fn show(globals: &Globals, as_json: bool) -> Result<ExitCode> {
    let path = globals.home.config_file();
    let config = Config::load(&globals.home)?;
    let key = config.api_key.as_deref().map(mask_key);
    let key_source = source(ENV_API_KEY, config.api_key.as_ref());
    let url_source = source(ENV_API_URL, config.api_url.as_ref());
    let refresh_env = std::env::var(ENV_REFRESH_INTERVAL).ok();
    let transport = crate::tls::transport_report(&config)?;
    if as_json {
        let value = json!({
            "path": path.display().to_string(),
            "exists": path.exists(),
            "api_key": key,
            "api_key_source": key_source,
            "api_url": config.api_url,
            "api_url_source": url_source,
            "refresh_interval_secs": config.refresh_interval_secs,
            "transport": {
                "tls": transport.tls_versions,
                "roots": transport.roots,
                "pins": transport.pins,
                "pin_source": transport.pin_source.map(|s| s.as_str()),
                "pin_scope": transport.pin_scope,
            },
            "plugins": config.plugins.keys().map(|name| {
                (name.clone(), serde_json::from_str::<serde_json::Value>(&config.plugin_settings_json(name)).unwrap_or_default())
            }).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "config file: {}{}",
        path.display(),
        if path.exists() { "" } else { " (absent)" }
    );
    println!(
        "api_key:     {} ({key_source})",
        key.as_deref().unwrap_or("not set: run `km init`")
    );
    println!(
        "api_url:     {} ({url_source})",
        config
            .api_url
            .as_deref()
            .unwrap_or("not set: run `km init`")
    );
    println!("tls:         {}", transport.tls_versions);
    println!("roots:       {}", transport.roots);
    match transport.pin_source {
        Some(source) => {
            println!(
                "pins:        {} ({source}; checked against {})",
                transport.pins.join(", "),
                transport.pin_scope,
                source = source.as_str()
            );
        }
        None => println!("pins:        none (the roots alone decide)"),
    }
    match (config.refresh_interval_secs, refresh_env) {
        (_, Some(env)) => println!("refresh:     every {env} s ({ENV_REFRESH_INTERVAL})"),
        (Some(secs), None) => println!("refresh:     every {secs} s"),
        (None, None) => println!("refresh:     every 5 min (3 min for Enterprise plugins)"),
    }
    for name in config.plugins.keys() {
        println!("[plugins.{name}] {}", config.plugin_settings_json(name));
    }
    Ok(ExitCode::SUCCESS)
}
