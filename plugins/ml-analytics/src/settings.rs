//! The plugin's settings: `[plugins.ml-analytics]` in km's config.toml, handed over as JSON.
//! Every key is optional; a value of the wrong type or out of range keeps the default (and is
//! named in the warnings the plugin logs once), so a typo never stops a session.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `flush_interval_ms` | 10000 | how often a session merges its counts into the store |
//! | `warmup_calls` | 20 | calls a series needs before its latency and errors are judged |
//! | `latency_z` | 5.0 | log-standard deviations above the learned mean that are anomalous |
//! | `latency_ratio` | 20.0 | ... and at least this many times the median |
//! | `latency_floor_ms` | 250 | ... and at least this much slower than the median |
//! | `error_window` | 20 | outcomes in the error-rate window (2..=64) |
//! | `error_min` | 5 | failures in the window before a spike can be declared |
//! | `error_p` | 0.0001 | how improbable the window must be under the learned rate |
//! | `burst_min_calls` | 60 | calls of one tool within 60 s that may be a burst |
//! | `burst_factor` | 10.0 | ... and this many times the learned per-minute rate |
//! | `unanswered_after_ms` | 60000 | the least time before a request is overdue |
//! | `minute_retention_hours` | 48 | how long minute buckets are kept |
//! | `hour_retention_days` | 60 | how long hour buckets are kept (then days) |
//! | `day_retention_days` | 730 | how long day buckets are kept |
//! | `anomaly_retention_days` | 365 | how long anomaly records are kept |
//! | `max_disk_mb` | 64 | the most the store may use; the oldest data goes first beyond it |
//! | `max_anomalies_per_session` | 100 | anomalies recorded per session; later ones are counted only |

use serde_json::{Map, Value};

use crate::model::Thresholds;

/// How long things are kept, and how much disk they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retention {
    pub(crate) minute_secs: i64,
    pub(crate) hour_secs: i64,
    pub(crate) day_secs: i64,
    pub(crate) anomaly_secs: i64,
    pub(crate) max_disk_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minute_secs: 48 * 3600,
            hour_secs: 60 * 86_400,
            day_secs: 730 * 86_400,
            anomaly_secs: 365 * 86_400,
            max_disk_bytes: 64 * 1024 * 1024,
        }
    }
}

/// All settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) flush_interval_ms: u64,
    pub(crate) thresholds: Thresholds,
    pub(crate) retention: Retention,
    pub(crate) max_anomalies_per_session: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flush_interval_ms: 10_000,
            thresholds: Thresholds::default(),
            retention: Retention::default(),
            max_anomalies_per_session: 100,
        }
    }
}

impl Settings {
    /// Reads the settings; the second value names the keys that were refused.
    pub(crate) fn from_json(text: &str) -> (Settings, Vec<String>) {
        let mut s = Settings::default();
        let mut refused = Vec::new();
        let map = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) | Err(_) if text.trim().is_empty() => Map::new(),
            _ => {
                refused.push("the settings are not a table".to_owned());
                Map::new()
            }
        };
        let mut number = |key: &str, lo: f64, hi: f64| -> Option<f64> {
            let value = map.get(key)?;
            match value.as_f64() {
                Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Some(v),
                _ => {
                    refused.push(format!(
                        "{key} = {value} (expected a number in {lo}..={hi})"
                    ));
                    None
                }
            }
        };
        if let Some(v) = number("flush_interval_ms", 100.0, 3_600_000.0) {
            s.flush_interval_ms = v as u64;
        }
        let th = &mut s.thresholds;
        if let Some(v) = number("warmup_calls", 1.0, 1e6) {
            th.warmup_calls = v as u64;
        }
        if let Some(v) = number("latency_z", 0.5, 100.0) {
            th.latency_z = v;
        }
        if let Some(v) = number("latency_ratio", 1.0, 1e6) {
            th.latency_ratio = v;
        }
        if let Some(v) = number("latency_floor_ms", 0.0, 1e9) {
            th.latency_floor_ms = v;
        }
        if let Some(v) = number("error_window", 2.0, 64.0) {
            th.error_window = v as u32;
        }
        if let Some(v) = number("error_min", 1.0, 64.0) {
            th.error_min = v as u32;
        }
        if let Some(v) = number("error_p", 1e-12, 0.5) {
            th.error_p = v;
        }
        if let Some(v) = number("burst_min_calls", 1.0, 1e9) {
            th.burst_min_calls = v;
        }
        if let Some(v) = number("burst_factor", 1.0, 1e6) {
            th.burst_factor = v;
        }
        if let Some(v) = number("unanswered_after_ms", 1000.0, 1e10) {
            th.unanswered_after_ms = v;
        }
        let r = &mut s.retention;
        if let Some(v) = number("minute_retention_hours", 1.0, 24.0 * 366.0) {
            r.minute_secs = (v * 3600.0) as i64;
        }
        if let Some(v) = number("hour_retention_days", 1.0, 3660.0) {
            r.hour_secs = (v * 86_400.0) as i64;
        }
        if let Some(v) = number("day_retention_days", 1.0, 36_600.0) {
            r.day_secs = (v * 86_400.0) as i64;
        }
        if let Some(v) = number("anomaly_retention_days", 1.0, 36_600.0) {
            r.anomaly_secs = (v * 86_400.0) as i64;
        }
        if let Some(v) = number("max_disk_mb", 1.0, 1e6) {
            r.max_disk_bytes = (v * 1024.0 * 1024.0) as u64;
        }
        if let Some(v) = number("max_anomalies_per_session", 0.0, 1e6) {
            s.max_anomalies_per_session = v as u32;
        }
        // Coarser buckets must outlive finer ones, or data would vanish between them.
        r.hour_secs = r.hour_secs.max(r.minute_secs);
        r.day_secs = r.day_secs.max(r.hour_secs);
        (s, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_what_is_valid_and_name_what_is_not() {
        let (s, refused) = Settings::from_json(
            r#"{"warmup_calls": 5, "latency_z": "high", "error_window": 500, "max_disk_mb": 8}"#,
        );
        assert_eq!(s.thresholds.warmup_calls, 5);
        assert_eq!(s.thresholds.latency_z, 5.0);
        assert_eq!(s.thresholds.error_window, 20);
        assert_eq!(s.retention.max_disk_bytes, 8 * 1024 * 1024);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("latency_z"), "{refused:?}");
        let (d, refused) = Settings::from_json("{}");
        assert_eq!(d, Settings::default());
        assert!(refused.is_empty());
        let (_, refused) = Settings::from_json("[1]");
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn coarser_retention_never_ends_before_finer() {
        let (s, _) =
            Settings::from_json(r#"{"minute_retention_hours": 2400, "hour_retention_days": 10}"#);
        assert_eq!(s.retention.hour_secs, 2400 * 3600);
        assert!(s.retention.day_secs >= s.retention.hour_secs);
    }
}
