//! Subscription refresh: the host's half of "enforcement lives in the plugin, scheduling lives in
//! the host".
//!
//! km calls each loaded plugin's `authenticate` at start and again before its authorization
//! expires: every 5 minutes, every 3 for Enterprise plugins (`refresh_interval_secs` in
//! config.toml, or `KM_REFRESH_INTERVAL_SECS`, overrides both; tests use seconds). Each plugin has
//! its own refresh thread (on the blocking pool of km's runtime, see [`crate::runtime`]), so a
//! plugin that hangs in `authenticate` stalls only itself, and the relay never waits on any of
//! them.
//!
//! When the API answers 429, km's client holds every request until its `Retry-After`
//! ([`crate::api::RateLimit`]); the refreshers sleep past that time, plus a random part of it
//! (at most 30 s), so that the plugins of a session, and many sessions, do not all come back at
//! the same instant. A plugin keeps its still-valid token meanwhile.
//!
//! The outcome of every refresh is recorded in `KM_HOME/state/auth/<plugin>.json` (mode 0600:
//! it holds the token) for `km plugin-status`:
//!
//! ```json
//! {"plugin": "api-logger", "version": "1.0.0", "required_tier": "pro", "authorized": true,
//!  "tier": "pro", "features": ["api_logging"], "expires_at": 1764057600, "token": "km1…",
//!  "reason": "", "outcome": "authorized", "last_refresh": 1764056700}
//! ```
//!
//! The token that lets a restarted plugin run without network is kept by the plugin itself, in
//! its data directory (see `km_plugin_sdk::auth`): what km records here is for people, and a
//! plugin never trusts it.
//!
//! The API key is read again from `config.toml` (and `KM_API_KEY`) before every refresh, so that
//! after `km init --api-key NEW` (a rotated key) the sessions already running authenticate with
//! the new key at their next refresh instead of degrading with the old one, which the API
//! refuses from the moment of the rotation.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use km_abi::Tier;
use serde::{Deserialize, Serialize};

use crate::config::{write_private_atomically, Config};
use crate::gateway::LoadedPlugin;
use crate::home::KmHome;
use crate::runtime::Handle;

/// The environment variable that overrides the refresh interval (seconds).
pub const ENV_REFRESH_INTERVAL: &str = "KM_REFRESH_INTERVAL_SECS";

/// The outcome of one refresh: what `km plugin-status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRecord {
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The tier it needs (`free`, `pro`, `enterprise`).
    pub required_tier: String,
    /// Whether it runs with its full features.
    pub authorized: bool,
    /// The tier the subscription grants.
    pub tier: String,
    /// Features granted.
    pub features: Vec<String>,
    /// When the authorization ends (seconds since the epoch; 0: never).
    pub expires_at: i64,
    /// The API's token as the plugin reported it (may be empty).
    #[serde(default)]
    pub token: String,
    /// Why it is degraded (empty when authorized without remark).
    pub reason: String,
    /// `authorized`, `degraded`, `error` (the plugin failed in `authenticate`) or `timeout`.
    pub outcome: String,
    /// When this refresh finished (seconds since the epoch).
    pub last_refresh: i64,
}

impl AuthRecord {
    /// A record of `plugin` that is not authorized (yet): Free tier, no token, `reason` and
    /// `outcome` as given, never refreshed.
    fn unauthorized(plugin: &LoadedPlugin, reason: String, outcome: String) -> Self {
        AuthRecord {
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            required_tier: plugin.tier().as_str().to_owned(),
            authorized: false,
            tier: Tier::Free.as_str().to_owned(),
            features: Vec::new(),
            expires_at: 0,
            token: String::new(),
            reason,
            outcome,
            last_refresh: 0,
        }
    }

    /// The required tier, parsed.
    pub fn required(&self) -> Option<Tier> {
        self.required_tier.parse().ok()
    }
}

/// Where the record of plugin `name` lives.
pub fn record_path(home: &KmHome, name: &str) -> PathBuf {
    home.state_dir().join("auth").join(format!("{name}.json"))
}

/// The largest auth record or session-stats file km reads.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// Reads every record in `KM_HOME/state/auth`, sorted by plugin name, after StrictModes on the
/// state directory, the auth directory and each record (see [`crate::strict`]).
pub fn load_records(home: &KmHome) -> Result<Vec<AuthRecord>> {
    use crate::strict::{check_entry, Expect};
    check_entry(&home.state_dir(), "state directory", Expect::Dir)?;
    let dir = home.state_dir().join("auth");
    if !check_entry(&dir, "auth record directory", Expect::Dir)? {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut records = Vec::new();
    for path in paths {
        let Some(bytes) = crate::strict::read_file(&path, MAX_RECORD_BYTES, "auth record")? else {
            continue;
        };
        match serde_json::from_slice::<AuthRecord>(&bytes) {
            Ok(record) => records.push(record),
            Err(e) => eprintln!("km: warning: ignoring {}: {e}", path.display()),
        }
    }
    records.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    Ok(records)
}

fn save_record(home: &KmHome, record: &AuthRecord) -> Result<()> {
    let path = record_path(home, &record.plugin);
    if let Some(dir) = path.parent() {
        KmHome::ensure_private_dir(dir)?;
    }
    let text = serde_json::to_vec_pretty(record).context("serialising the auth record")?;
    write_private_atomically(&path, &text)
}

/// Now, in seconds since the Unix epoch (the unit of token expiries).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a monitor session did with one plugin, for `km plugin-status`: written by `km monitor`
/// to `KM_HOME/state/sessions/<plugin>.json` at the end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// The plugin's name.
    pub plugin: String,
    /// Messages the plugin handled.
    pub handled: u64,
    /// Messages dropped for it (its queue was full).
    pub dropped: u64,
    /// When the session ended (seconds since the epoch).
    pub ended_at: i64,
}

fn stats_path(home: &KmHome, name: &str) -> PathBuf {
    home.state_dir()
        .join("sessions")
        .join(format!("{name}.json"))
}

/// Records the counts of the session that just ended.
pub fn save_session_stats(home: &KmHome, stats: &SessionStats) -> Result<()> {
    let path = stats_path(home, &stats.plugin);
    if let Some(dir) = path.parent() {
        KmHome::ensure_private_dir(dir)?;
    }
    let text = serde_json::to_vec_pretty(stats).context("serialising session stats")?;
    write_private_atomically(&path, &text)
}

/// The counts of the last session of plugin `name`, if one was recorded.
pub fn load_session_stats(home: &KmHome, name: &str) -> Option<SessionStats> {
    let path = stats_path(home, name);
    match crate::strict::read_file(&path, MAX_RECORD_BYTES, "session statistics") {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
        Ok(None) => None,
        Err(refusal) => {
            eprintln!("km: warning: ignoring {refusal}");
            None
        }
    }
}

/// Calls `plugin.authenticate(api_key)` and turns the answer into a record (not saved).
pub fn authenticate(plugin: &LoadedPlugin, api_key: &str) -> AuthRecord {
    let probe = crate::telemetry::AuthProbe::start();
    let mut record = AuthRecord::unauthorized(plugin, String::new(), String::new());
    match plugin.authenticate(api_key) {
        Ok(answer) => {
            record.authorized = answer.authorized;
            record.tier = answer.tier.as_str().to_owned();
            record.features = answer.features.iter().map(|f| f.to_string()).collect();
            record.expires_at = answer.expires_at;
            record.token = answer.token.into_string();
            record.reason = answer.reason.into_string();
            record.outcome = if answer.authorized {
                "authorized"
            } else {
                "degraded"
            }
            .to_owned();
        }
        Err(failure) => {
            record.reason = failure.to_string();
            record.outcome = "error".to_owned();
        }
    }
    record.last_refresh = now_unix();
    probe.finish(plugin.name(), plugin.tier(), &record.outcome);
    record
}

/// Authenticates `plugin` and records the outcome. A plugin km disabled (it panicked) is not
/// called: its record says so.
pub fn refresh_one(home: &KmHome, api_key: &str, plugin: &LoadedPlugin) -> AuthRecord {
    let record = if plugin.is_disabled() {
        let mut record = AuthRecord::unauthorized(
            plugin,
            "km disabled the plugin for this session after it panicked".to_owned(),
            "disabled".to_owned(),
        );
        record.last_refresh = now_unix();
        record
    } else {
        authenticate(plugin, api_key)
    };
    if let Err(e) = save_record(home, &record) {
        eprintln!(
            "km: warning: cannot record the subscription of {}: {e:#}",
            record.plugin
        );
    }
    record
}

/// Authenticates every plugin now, each on its own thread of `runtime`'s blocking pool, waiting
/// at most `deadline` in all. A plugin that has not answered by then is reported (and recorded)
/// as `timeout`; its thread is left behind, so call this from a short-lived command.
pub fn refresh_all(
    runtime: &Handle,
    home: &KmHome,
    config: &Config,
    plugins: &[Arc<LoadedPlugin>],
    deadline: Duration,
) -> Vec<AuthRecord> {
    let api_key = config.api_key.clone().unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel();
    for (index, plugin) in plugins.iter().enumerate() {
        let (tx, plugin, home, key) = (tx.clone(), plugin.clone(), home.clone(), api_key.clone());
        runtime.spawn_blocking(move || {
            let _ = tx.send((index, refresh_one(&home, &key, &plugin)));
        });
    }
    drop(tx);
    let mut results: Vec<Option<AuthRecord>> = vec![None; plugins.len()];
    let until = Instant::now() + deadline;
    while results.iter().any(Option::is_none) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((index, record)) => results[index] = Some(record),
            Err(_) => break,
        }
    }
    results
        .into_iter()
        .zip(plugins)
        .map(|(record, plugin)| {
            record.unwrap_or_else(|| {
                let mut record = AuthRecord::unauthorized(
                    plugin,
                    format!(
                        "the plugin did not answer within {} s",
                        deadline.as_secs_f32()
                    ),
                    "timeout".to_owned(),
                );
                record.last_refresh = now_unix();
                let _ = save_record(home, &record);
                record
            })
        })
        .collect()
}

/// How often a plugin needing `tier` is re-authenticated.
pub fn refresh_interval(config: &Config, tier: Tier) -> Duration {
    let env = std::env::var(ENV_REFRESH_INTERVAL)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(secs) = env.or(config.refresh_interval_secs).filter(|&s| s > 0) {
        return Duration::from_secs(secs);
    }
    match tier {
        Tier::Enterprise => Duration::from_secs(180),
        Tier::Free | Tier::Pro => Duration::from_secs(300),
    }
}

/// When to refresh next: after the interval, or shortly before the authorization expires if
/// that comes first.
fn next_delay(interval: Duration, record: &AuthRecord, now: i64) -> Duration {
    if record.authorized && record.expires_at > 0 {
        let until_expiry = record.expires_at.saturating_sub(now);
        // Refresh 30 s before expiry (or at 80% of a short validity), never more often than 1 s.
        let margin = (until_expiry / 5).min(30);
        let secs = u64::try_from(until_expiry - margin).unwrap_or(0).max(1);
        return interval.min(Duration::from_secs(secs));
    }
    interval
}

/// How long to sleep when the API holds requests for `held`: past it, plus jitter of up to a
/// quarter of it (at least 100 ms, at most 30 s).
fn past_rate_limit(held: Duration) -> Duration {
    let spread = (held / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    held + crate::api::jitter(spread)
}

/// The background refreshers of a monitor session. Dropping it stops them (a refresh in
/// progress finishes on its own thread; nothing waits for it).
pub struct RefresherHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    threads: usize,
}

impl std::fmt::Debug for RefresherHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefresherHandle")
            .field("threads", &self.threads)
            .finish()
    }
}

impl RefresherHandle {
    /// Stops the refreshers (also done on drop).
    pub fn stop(&self) {
        if let Ok(mut stopped) = self.stop.0.lock() {
            *stopped = true;
        }
        self.stop.1.notify_all();
    }
}

impl Drop for RefresherHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one refresh thread per plugin on `runtime`'s blocking pool: authenticate now, then
/// again every [`refresh_interval`] (sooner if the authorization would expire first, never
/// before the API's `Retry-After` when `rate_limit`, the API client's, holds requests), until
/// the handle is dropped. Never blocks the caller.
pub fn start_refresher(
    runtime: &Handle,
    home: &KmHome,
    config: &Config,
    plugins: Vec<Arc<LoadedPlugin>>,
    rate_limit: Option<Arc<crate::api::RateLimit>>,
) -> RefresherHandle {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let api_key = config.api_key.clone().unwrap_or_default();
    let mut threads = 0;
    for plugin in plugins {
        let interval = refresh_interval(config, plugin.tier());
        let (stop, home, key) = (stop.clone(), home.clone(), api_key.clone());
        let rate_limit = rate_limit.clone();
        // Before the thread starts: the session's end waits for this first answer.
        plugin.expect_first_authentication();
        let first = Settles(plugin.clone());
        runtime.spawn_blocking(move || loop {
            // A plugin km disabled (it panicked) is never called again, also not from here.
            if stopped(&stop) || plugin.is_disabled() {
                return;
            }
            let record = refresh_one(&home, &current_api_key(&home, &key), &plugin);
            first.0.first_authentication_settled();
            let mut delay = next_delay(interval, &record, now_unix());
            if let Some(held) = rate_limit.as_ref().and_then(|l| l.remaining()) {
                delay = delay.max(past_rate_limit(held));
            }
            let (lock, cv) = &*stop;
            let Ok(guard) = lock.lock() else { return };
            let Ok((guard, _)) = cv.wait_timeout_while(guard, delay, |stopped| !*stopped) else {
                return;
            };
            if *guard {
                return;
            }
        });
        threads += 1;
    }
    RefresherHandle { stop, threads }
}

/// Marks a plugin's first authentication settled when dropped: however its refresher ends (or
/// never starts, its task dropped unrun by a runtime shut down first), the session's end does not wait for an answer that will never come.
struct Settles(Arc<LoadedPlugin>);

impl Drop for Settles {
    fn drop(&mut self) {
        self.0.first_authentication_settled();
    }
}

/// The API key in force now: the configuration's (file, then `KM_API_KEY`), or `started_with`
/// (the key the session started with) when the configuration names none or cannot be read right
/// now (a half-edited file is not a reason to drop a working key).
fn current_api_key(home: &KmHome, started_with: &str) -> String {
    Config::load(home)
        .ok()
        .and_then(|config| config.api_key)
        .unwrap_or_else(|| started_with.to_owned())
}

fn stopped(stop: &(Mutex<bool>, Condvar)) -> bool {
    stop.0.lock().map_or(true, |s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(authorized: bool, expires_at: i64) -> AuthRecord {
        AuthRecord {
            plugin: "p".into(),
            version: "1.0.0".into(),
            required_tier: "pro".into(),
            authorized,
            tier: "pro".into(),
            features: vec![],
            expires_at,
            token: String::new(),
            reason: String::new(),
            outcome: "authorized".into(),
            last_refresh: 0,
        }
    }

    #[test]
    fn intervals_default_to_five_and_three_minutes() {
        // The environment variable is not set in unit tests (the e2e tests set it on km).
        if std::env::var_os(ENV_REFRESH_INTERVAL).is_some() {
            return;
        }
        let config = Config::default();
        assert_eq!(
            refresh_interval(&config, Tier::Pro),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_interval(&config, Tier::Enterprise),
            Duration::from_secs(180)
        );
        let config = Config {
            refresh_interval_secs: Some(2),
            ..Config::default()
        };
        assert_eq!(
            refresh_interval(&config, Tier::Enterprise),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn refreshes_before_expiry() {
        let interval = Duration::from_secs(300);
        assert_eq!(
            next_delay(interval, &record(true, 1000 + 900), 1000),
            interval
        );
        assert_eq!(
            next_delay(interval, &record(true, 1000 + 120), 1000),
            Duration::from_secs(96)
        );
        assert_eq!(
            next_delay(interval, &record(true, 1000 + 5), 1000),
            Duration::from_secs(4)
        );
        assert_eq!(
            next_delay(interval, &record(true, 999), 1000),
            Duration::from_secs(1)
        );
        assert_eq!(next_delay(interval, &record(false, 0), 1000), interval);
    }

    #[test]
    fn a_rate_limit_is_slept_past_with_jitter() {
        for held in [
            Duration::from_millis(10),
            Duration::from_secs(2),
            Duration::from_secs(600),
        ] {
            let delay = past_rate_limit(held);
            let spread = (held / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            assert!(
                delay >= held && delay <= held + spread,
                "{held:?} -> {delay:?}"
            );
        }
    }

    #[test]
    fn the_refresher_takes_the_key_configured_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        // Nothing configured: the key the session started with.
        assert_eq!(current_api_key(&home, "km_live_started"), "km_live_started");
        // `km init --api-key NEW` while the session runs.
        crate::config::write_settings(&home, Some("km_live_rotated"), None).expect("write");
        if std::env::var_os(crate::config::ENV_API_KEY).is_none() {
            assert_eq!(current_api_key(&home, "km_live_started"), "km_live_rotated");
        }
    }

    #[test]
    fn session_stats_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        assert_eq!(load_session_stats(&home, "p"), None);
        let stats = SessionStats {
            plugin: "p".into(),
            handled: 7,
            dropped: 1,
            ended_at: 9,
        };
        save_session_stats(&home, &stats).expect("save");
        assert_eq!(load_session_stats(&home, "p"), Some(stats));
    }

    #[test]
    fn records_round_trip_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        let r = record(true, 5);
        save_record(&home, &r).expect("save");
        let mode = std::fs::metadata(record_path(&home, "p"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_records(&home).expect("load"), vec![r]);
    }
}
