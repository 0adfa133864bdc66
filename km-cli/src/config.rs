//! km's configuration: `KM_HOME/config.toml`, holding the Kilometers API key and endpoint, the
//! subscription refresh interval, and per-plugin settings.
//!
//! ```toml
//! api_key = "km_live_abc123xyz"
//! api_url = "https://api.kilometers.ai"
//! # refresh_interval_secs = 300
//! # A self-hosted endpoint's certificate pins (at least two: the key in use and a backup), and
//! # the CA that replaces the built-in roots for it (see `tls.rs`):
//! # api_pins = ["sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "sha256/..."]
//! # api_ca = "/etc/km/api-ca.pem"
//!
//! [plugins.api-logger]
//! batch_size = 10
//!
//! [telemetry]                      # OpenTelemetry export: see crate::telemetry
//! endpoint = "http://127.0.0.1:4318"
//! ```
//!
//! The file holds a secret, so km writes it with mode 0600 (atomically: a private temporary file
//! in the same directory, fsync, rename, directory fsync) and refuses to use an API key from a copy that group or
//! others can read, as ssh does with private keys. `KM_API_KEY` and `KM_API_URL` override the
//! file, so that a key can come from a secret store instead.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::home::KmHome;

fn table_of<'a>(value: Option<&'a toml::Value>, what: &str) -> Result<Option<&'a toml::Table>> {
    match value {
        None => Ok(None),
        Some(toml::Value::Table(t)) => Ok(Some(t)),
        Some(other) => bail!("`{what}` must be a table, not {}", other.type_str()),
    }
}

fn unknown_keys(table: &toml::Table, what: &str, known: &[&str]) -> Result<()> {
    match table.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => bail!(
            "unknown setting `{what}.{key}` (known: {})",
            known.join(", ")
        ),
        None => Ok(()),
    }
}

fn positive(table: &toml::Table, key: &str, what: &str) -> Result<Option<u64>> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n > 0 => Ok(Some(*n as u64)),
        Some(other) => bail!("`{what}.{key}` must be a positive integer, not {other}"),
    }
}

fn boolean(table: &toml::Table, key: &str, what: &str) -> Result<Option<bool>> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(other) => bail!("`{what}.{key}` must be true or false, not {other}"),
    }
}

fn monitor_settings(value: Option<&toml::Value>) -> Result<MonitorSettings> {
    let Some(table) = table_of(value, "monitor")? else {
        return Ok(MonitorSettings::default());
    };
    unknown_keys(table, "monitor", &["inspect_limit", "backpressure"])?;
    Ok(MonitorSettings {
        inspect_limit: positive(table, "inspect_limit", "monitor")?,
        backpressure: boolean(table, "backpressure", "monitor")?,
    })
}

/// A `[telemetry]` endpoint: an absolute http or https URL.
fn url(table: &toml::Table, key: &str) -> Result<Option<String>> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(toml::Value::String(s)) => {
            let parsed = reqwest::Url::parse(s.trim())
                .with_context(|| format!("`telemetry.{key}` = {s:?} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("`telemetry.{key}` = {s:?} must be an http:// or https:// URL");
            }
            Ok(Some(s.trim().to_owned()))
        }
        Some(other) => bail!("`telemetry.{key}` must be a string, not {other}"),
    }
}

/// A `[telemetry]` table of strings (`headers`, `resource_attributes`).
fn string_table(table: &toml::Table, key: &str) -> Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let Some(inner) = table_of(table.get(key), &format!("telemetry.{key}"))? else {
        return Ok(all);
    };
    for (name, value) in inner {
        match value {
            toml::Value::String(s) => {
                all.insert(name.clone(), s.clone());
            }
            other => bail!("`telemetry.{key}.{name}` must be a string, not {other}"),
        }
    }
    Ok(all)
}

fn telemetry_settings(value: Option<&toml::Value>) -> Result<TelemetrySettings> {
    let Some(table) = table_of(value, "telemetry")? else {
        return Ok(TelemetrySettings::default());
    };
    unknown_keys(
        table,
        "telemetry",
        &[
            "enabled",
            "endpoint",
            "traces_endpoint",
            "metrics_endpoint",
            "protocol",
            "headers",
            "timeout_ms",
            "service_name",
            "resource_attributes",
            "metrics_interval_ms",
            "capture_content",
            "propagate",
            "queue_size",
            "flush_timeout_ms",
        ],
    )?;
    let protocol = match table.get("protocol") {
        None => None,
        Some(toml::Value::String(p)) if p == "http/protobuf" => Some(p.clone()),
        Some(toml::Value::String(p)) => bail!(
            "`telemetry.protocol` = {p:?}: km exports OTLP over \"http/protobuf\" only (an \
             OpenTelemetry Collector receives it on port 4318)"
        ),
        Some(other) => bail!("`telemetry.protocol` must be a string, not {other}"),
    };
    let service_name = match table.get("service_name") {
        None => None,
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(other) => bail!("`telemetry.service_name` must be a non-empty string, not {other}"),
    };
    let headers = string_table(table, "headers")?;
    for (name, value) in &headers {
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            bail!("`telemetry.headers`: {name:?} is not an HTTP header name");
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            bail!("`telemetry.headers.{name}` holds a control character");
        }
    }
    Ok(TelemetrySettings {
        enabled: boolean(table, "enabled", "telemetry")?,
        endpoint: url(table, "endpoint")?,
        traces_endpoint: url(table, "traces_endpoint")?,
        metrics_endpoint: url(table, "metrics_endpoint")?,
        protocol,
        headers,
        timeout_ms: positive(table, "timeout_ms", "telemetry")?,
        service_name,
        resource_attributes: string_table(table, "resource_attributes")?,
        metrics_interval_ms: positive(table, "metrics_interval_ms", "telemetry")?,
        capture_content: boolean(table, "capture_content", "telemetry")?,
        propagate: boolean(table, "propagate", "telemetry")?,
        queue_size: positive(table, "queue_size", "telemetry")?,
        flush_timeout_ms: positive(table, "flush_timeout_ms", "telemetry")?,
    })
}

fn intercept_settings(value: Option<&toml::Value>) -> Result<BTreeMap<String, InterceptSettings>> {
    let mut all = BTreeMap::new();
    let Some(table) = table_of(value, "intercept")? else {
        return Ok(all);
    };
    for (name, value) in table {
        let what = format!("intercept.{name}");
        let Some(settings) = table_of(Some(value), &what)? else {
            continue;
        };
        unknown_keys(settings, &what, &["priority", "budget_ms", "fail_open"])?;
        let priority = match settings.get("priority") {
            None => None,
            Some(toml::Value::Integer(n)) => Some(
                i32::try_from(*n)
                    .with_context(|| format!("`{what}.priority` = {n} is out of range"))?,
            ),
            Some(other) => bail!("`{what}.priority` must be an integer, not {other}"),
        };
        all.insert(
            name.clone(),
            InterceptSettings {
                priority,
                budget_ms: positive(settings, "budget_ms", &what)?,
                fail_open: boolean(settings, "fail_open", &what)?,
            },
        );
    }
    Ok(all)
}

/// The endpoint `km init` suggests.
pub const DEFAULT_API_URL: &str = "https://api.kilometers.ai";

/// Environment variables that override the file.
pub const ENV_API_KEY: &str = "KM_API_KEY";
/// See [`ENV_API_KEY`].
pub const ENV_API_URL: &str = "KM_API_URL";

/// The largest config.toml km reads.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The configuration in force: the file, then the environment on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The user's Kilometers API key.
    pub api_key: Option<String>,
    /// The API's base URL.
    pub api_url: Option<String>,
    /// `[plugins.NAME]` tables: settings handed to each plugin as JSON.
    pub plugins: BTreeMap<String, toml::Table>,
    /// How often subscriptions are refreshed (default: 5 minutes, 3 for Enterprise plugins).
    pub refresh_interval_secs: Option<u64>,
    /// `[monitor]`: how `km monitor` relays.
    pub monitor: MonitorSettings,
    /// `[intercept.NAME]`: km's overrides of what an intercepting plugin asked for.
    pub intercept: BTreeMap<String, InterceptSettings>,
    /// `api_pins`: the API endpoint's certificate pins (validated: at least two distinct).
    /// Empty when the file sets none.
    pub api_pins: Vec<crate::tls::Pin>,
    /// `api_ca`: a PEM file of CA certificates that replaces the built-in roots for the API
    /// endpoint (an absolute path).
    pub api_ca: Option<std::path::PathBuf>,
    /// `[telemetry]`: OpenTelemetry export.
    pub telemetry: TelemetrySettings,
}

/// `[telemetry]` in `config.toml`: OpenTelemetry (OTLP) export, for MCP clients that start km
/// with almost no environment. Each key has its standard `OTEL_*` variable, which wins when set
/// (see [`crate::telemetry`]). Nothing set anywhere: no export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// `enabled = false`: no export even with an endpoint (`OTEL_SDK_DISABLED`).
    pub enabled: Option<bool>,
    /// `endpoint`: the OTLP/HTTP base URL; `/v1/traces` and `/v1/metrics` are appended
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// `traces_endpoint`: the full URL for spans (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
    /// `metrics_endpoint`: the full URL for metrics (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
    pub metrics_endpoint: Option<String>,
    /// `protocol`: `http/protobuf`, the only one km speaks (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub protocol: Option<String>,
    /// `[telemetry.headers]`: sent with every export, e.g. a backend's API key
    /// (`OTEL_EXPORTER_OTLP_HEADERS`, whose entries win). A secret: the file must be 0600.
    pub headers: BTreeMap<String, String>,
    /// `timeout_ms`: how long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout_ms: Option<u64>,
    /// `service_name` (`OTEL_SERVICE_NAME`; default `km`).
    pub service_name: Option<String>,
    /// `[telemetry.resource_attributes]` (`OTEL_RESOURCE_ATTRIBUTES`, whose entries win).
    pub resource_attributes: BTreeMap<String, String>,
    /// `metrics_interval_ms`: how often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub metrics_interval_ms: Option<u64>,
    /// `capture_content = true`: tool call arguments and results on spans, as km forwarded them
    /// (after any redaction).
    pub capture_content: Option<bool>,
    /// `propagate = true`: write the trace context into the `params._meta` of forwarded
    /// requests (this changes their bytes).
    pub propagate: Option<bool>,
    /// `queue_size`: spans waiting for export, and records waiting for km's telemetry thread;
    /// past it they are dropped and counted (`OTEL_BSP_MAX_QUEUE_SIZE` for the former).
    pub queue_size: Option<u64>,
    /// `flush_timeout_ms`: how long the end of a session may wait for the last export.
    pub flush_timeout_ms: Option<u64>,
}

/// `[monitor]` in `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorSettings {
    /// `inspect_limit`: the longest line interceptors inspect, in bytes (longer lines get their
    /// `oversize` action, blocked by default).
    pub inspect_limit: Option<u64>,
    /// `backpressure = false`: a plugin that asked for lossless delivery gets gap events instead
    /// of holding the relay back.
    pub backpressure: Option<bool>,
}

/// `[intercept.NAME]` in `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterceptSettings {
    /// `priority`: its place in the chain (lower first).
    pub priority: Option<i32>,
    /// `budget_ms`: how long one call may take.
    pub budget_ms: Option<u64>,
    /// `fail_open = true`: when it fails, its lines pass instead of being blocked.
    pub fail_open: Option<bool>,
}

impl Config {
    /// Reads `KM_HOME/config.toml` (a missing file is an empty configuration) and applies
    /// `KM_API_KEY` / `KM_API_URL`.
    pub fn load(home: &KmHome) -> Result<Config> {
        crate::strict::check_home(home)?;
        let mut config = Self::load_file(&home.config_file())?;
        if let Some(key) = env_nonempty(ENV_API_KEY) {
            config.api_key = Some(key);
        }
        if let Some(url) = env_nonempty(ENV_API_URL) {
            config.api_url = Some(url);
        }
        Ok(config)
    }

    /// Reads one config file, without the environment.
    pub fn load_file(path: &Path) -> Result<Config> {
        let Some(table) = read_table(path)? else {
            return Ok(Config::default());
        };
        let config = Self::from_table(&table).with_context(|| format!("in {}", path.display()))?;
        // Export headers often carry a backend's API key: they get the API key's protection.
        if config.api_key.is_some() || !config.telemetry.headers.is_empty() {
            let mode = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} holds {} but is accessible by others (mode {:04o}); \
                     run `chmod 600 {}`",
                    path.display(),
                    if config.api_key.is_some() {
                        "your API key"
                    } else {
                        "telemetry headers"
                    },
                    mode & 0o7777,
                    path.display()
                );
            }
        }
        Ok(config)
    }

    fn from_table(table: &toml::Table) -> Result<Config> {
        let string = |key: &str| -> Result<Option<String>> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) if s.is_empty() => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("`{key}` must be a string, not {}", other.type_str()),
            }
        };
        let refresh_interval_secs = match table.get("refresh_interval_secs") {
            None => None,
            Some(toml::Value::Integer(n)) if *n > 0 => Some(*n as u64),
            Some(other) => bail!("`refresh_interval_secs` must be a positive integer, not {other}"),
        };
        let mut plugins = BTreeMap::new();
        match table.get("plugins") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (name, value) in t {
                    match value {
                        toml::Value::Table(settings) => {
                            plugins.insert(name.clone(), settings.clone());
                        }
                        other => {
                            bail!("`plugins.{name}` must be a table, not {}", other.type_str())
                        }
                    }
                }
            }
            Some(other) => bail!("`plugins` must be a table, not {}", other.type_str()),
        }
        let api_pins = match table.get("api_pins") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let pins = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.as_str()),
                        other => bail!("`api_pins` must list strings, not {}", other.type_str()),
                    })
                    .collect::<Result<Vec<&str>>>()?;
                crate::tls::parse_pins(&pins, "`api_pins`")?
            }
            Some(other) => bail!(
                "`api_pins` must be a list of \"sha256/<base64>\" strings, not {}",
                other.type_str()
            ),
        };
        let api_ca = match string("api_ca")? {
            None => None,
            Some(path) if Path::new(&path).is_absolute() => Some(path.into()),
            Some(path) => bail!("`api_ca` = {path:?} must be an absolute path"),
        };
        Ok(Config {
            api_key: string("api_key")?,
            api_url: string("api_url")?,
            plugins,
            refresh_interval_secs,
            monitor: monitor_settings(table.get("monitor"))?,
            intercept: intercept_settings(table.get("intercept"))?,
            api_pins,
            api_ca,
            telemetry: telemetry_settings(table.get("telemetry"))?,
        })
    }

    /// The overrides of plugin `name`'s interception.
    pub fn intercept_settings(&self, name: &str) -> InterceptSettings {
        self.intercept.get(name).cloned().unwrap_or_default()
    }

    /// The settings of plugin `name` as a JSON object (`{}` when there are none).
    pub fn plugin_settings_json(&self, name: &str) -> String {
        self.plugins
            .get(name)
            .and_then(|t| serde_json::to_string(t).ok())
            .unwrap_or_else(|| "{}".to_owned())
    }

    /// The API key masked for display: `km_live_…xyz`.
    pub fn masked_api_key(&self) -> Option<String> {
        self.api_key.as_deref().map(mask_key)
    }
}

/// Masks a secret for display: keeps a short `word_word_` prefix and the last three
/// characters of a long key, nothing of a short one.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix_len = chars
        .iter()
        .take(12)
        .rposition(|&c| c == '_')
        .map_or(0, |p| p + 1);
    let rest = chars.len() - prefix_len;
    let prefix: String = chars[..prefix_len].iter().collect();
    if rest >= 8 {
        let tail: String = chars[chars.len() - 3..].iter().collect();
        format!("{prefix}…{tail}")
    } else {
        format!("{prefix}…")
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_table(path: &Path) -> Result<Option<toml::Table>> {
    // StrictModes (config.toml decides which API km trusts and holds its key): a regular file,
    // not a link, owned by you or root, not writable by others, opened without blocking, capped.
    let Some(bytes) = crate::strict::read_file(path, MAX_CONFIG_BYTES, "configuration file")?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(table))
}

/// Sets `api_key` and/or `api_url` in `KM_HOME/config.toml`, keeping everything else in the
/// file, and writes it atomically with mode 0600.
pub fn write_settings(home: &KmHome, api_key: Option<&str>, api_url: Option<&str>) -> Result<()> {
    KmHome::ensure_private_dir(home.root())?;
    let path = home.config_file();
    let mut table = read_table(&path)?.unwrap_or_default();
    if let Some(key) = api_key {
        table.insert("api_key".to_owned(), toml::Value::String(key.to_owned()));
    }
    if let Some(url) = api_url {
        table.insert("api_url".to_owned(), toml::Value::String(url.to_owned()));
    }
    let text = toml::to_string_pretty(&table).context("serialising the configuration")?;
    write_private_atomically(&path, text.as_bytes())
}

/// Writes `bytes` to `path` with mode 0600 through `km_durable`'s atomic write (a private
/// temporary file in the same directory, fsync, rename, directory fsync): readers see the old
/// file or the new one, never a half-written or world-readable one.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    km_durable::write_atomic(path, bytes, km_durable::PRIVATE)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, KmHome) {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(&dir.path().join("km"))).expect("home");
        (dir, home)
    }

    #[test]
    fn a_missing_file_is_an_empty_configuration() {
        let (_d, home) = home();
        let config = Config::load_file(&home.config_file()).expect("loads");
        assert_eq!(config, Config::default());
        assert_eq!(config.plugin_settings_json("api-logger"), "{}");
    }

    #[test]
    fn written_with_mode_0600_keeping_other_sections() {
        let (_d, home) = home();
        KmHome::ensure_private_dir(home.root()).expect("dir");
        write_private_atomically(
            &home.config_file(),
            b"refresh_interval_secs = 7\n[plugins.api-logger]\nbatch_size = 3\n",
        )
        .expect("seed");
        write_settings(
            &home,
            Some("km_live_abc123xyz0000"),
            Some("http://127.0.0.1:9"),
        )
        .expect("writes");
        let mode = std::fs::metadata(home.config_file())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let config = Config::load_file(&home.config_file()).expect("loads");
        assert_eq!(config.api_key.as_deref(), Some("km_live_abc123xyz0000"));
        assert_eq!(config.api_url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(config.refresh_interval_secs, Some(7));
        assert_eq!(
            config.plugin_settings_json("api-logger"),
            r#"{"batch_size":3}"#
        );
        // Only the key changes on a second init.
        write_settings(&home, Some("km_live_other000000000"), None).expect("writes");
        let config = Config::load_file(&home.config_file()).expect("loads");
        assert_eq!(config.api_url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(config.refresh_interval_secs, Some(7));
        let leftovers: Vec<_> = std::fs::read_dir(home.root())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let (_d, home) = home();
        write_settings(&home, Some("km_live_abc123xyz0000"), None).expect("writes");
        std::fs::set_permissions(home.config_file(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = Config::load_file(&home.config_file()).expect_err("refused");
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
    }

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("km_live_abc123xyz"), "km_live_…xyz");
        assert_eq!(mask_key("km_live_short"), "km_live_…");
        assert_eq!(mask_key("abcdefghijklmnop"), "…nop");
        assert_eq!(mask_key("abc"), "…");
        assert!(!mask_key("km_live_abc123xyz").contains("abc123"));
    }

    #[test]
    fn malformed_values_are_reported() {
        let (_d, home) = home();
        KmHome::ensure_private_dir(home.root()).expect("dir");
        write_private_atomically(&home.config_file(), b"api_url = 3\n").expect("seed");
        let error = Config::load_file(&home.config_file()).expect_err("refused");
        assert!(format!("{error:#}").contains("api_url"), "{error:#}");
    }

    #[test]
    fn pins_and_ca_are_validated_when_read() {
        let (_d, home) = home();
        KmHome::ensure_private_dir(home.root()).expect("dir");
        let a = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let b = "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        let text = format!("api_pins = [\"{a}\", \"{b}\"]\napi_ca = \"/etc/km/ca.pem\"\n");
        write_private_atomically(&home.config_file(), text.as_bytes()).expect("seed");
        let config = Config::load_file(&home.config_file()).expect("loads");
        assert_eq!(config.api_pins.len(), 2);
        assert_eq!(config.api_pins[0].to_string(), a);
        assert_eq!(config.api_ca.as_deref(), Some(Path::new("/etc/km/ca.pem")));
        for (bad, says) in [
            (format!("api_pins = [\"{a}\"]"), "backup"),
            ("api_pins = \"x\"".to_owned(), "must be a list"),
            (format!("api_pins = [\"{a}\", 3]"), "strings"),
            (format!("api_pins = [\"{a}\", \"sha256/AAAA\"]"), "32 bytes"),
            ("api_ca = \"ca.pem\"".to_owned(), "absolute"),
        ] {
            write_private_atomically(&home.config_file(), bad.as_bytes()).expect("seed");
            let error = Config::load_file(&home.config_file()).expect_err(&bad);
            let text = format!("{error:#}");
            assert!(
                text.contains(says) && text.contains("config.toml"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn telemetry_settings_are_read_and_checked() {
        let (_d, home) = home();
        KmHome::ensure_private_dir(home.root()).expect("dir");
        write_private_atomically(
            &home.config_file(),
            br#"[telemetry]
endpoint = "http://127.0.0.1:4318"
service_name = "agents"
capture_content = true
timeout_ms = 500
[telemetry.headers]
x-api-key = "secret"
[telemetry.resource_attributes]
"deployment.environment.name" = "dev"
"#,
        )
        .expect("seed");
        let config = Config::load_file(&home.config_file()).expect("loads");
        let t = &config.telemetry;
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(t.service_name.as_deref(), Some("agents"));
        assert_eq!(t.capture_content, Some(true));
        assert_eq!(t.timeout_ms, Some(500));
        assert_eq!(
            t.headers.get("x-api-key").map(String::as_str),
            Some("secret")
        );
        assert_eq!(
            t.resource_attributes
                .get("deployment.environment.name")
                .map(String::as_str),
            Some("dev")
        );
        // Headers are a secret: a copy others can read is refused.
        std::fs::set_permissions(home.config_file(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = Config::load_file(&home.config_file()).expect_err("refused");
        assert!(
            format!("{error:#}").contains("telemetry headers"),
            "{error:#}"
        );

        for (text, what) in [
            ("[telemetry]\nprotocol = \"grpc\"\n", "http/protobuf"),
            (
                "[telemetry]\nendpoint = \"collector:4318\"\n",
                "telemetry.endpoint",
            ),
            (
                "[telemetry]\nendpoint = \"ftp://x\"\n",
                "http:// or https://",
            ),
            ("[telemetry]\nqueue_size = 0\n", "telemetry.queue_size"),
            ("[telemetry]\ncolour = 1\n", "telemetry.colour"),
            ("[telemetry.headers]\n\"a b\" = \"x\"\n", "header name"),
        ] {
            write_private_atomically(&home.config_file(), text.as_bytes()).expect("seed");
            let error = Config::load_file(&home.config_file()).expect_err(text);
            assert!(format!("{error:#}").contains(what), "{text}: {error:#}");
        }
    }

    // The environment override is covered end to end (tests/e2e/subscriptions.rs), where the
    // variable is set on a child process instead of this test process.
}
