//! km's self-monitoring figures, kept without any collector: what `km stats` shows.
//!
//! Every process tallies what it saw (plugin loads and their time, refusals by check,
//! authentications by outcome and their time, token cache hits and misses as the host sees
//! them, messages each plugin handled and missed, verdicts, relayed bytes, what telemetry export
//! lost) in memory, and adds the tally to `KM_HOME/state/stats.json` once, when the command ends
//! ([`persist`]). Sessions run concurrently, so the file is read, merged and replaced under a
//! lock (`stats.lock`), atomically (km-durable). It stays bounded: one entry per day for the
//! last [`KEEP_DAYS`] days, at most [`MAX_KEYS`] names per table (the rest count as `other`), and
//! latencies as histograms of fixed size.
//!
//! Days are UTC dates. A file that cannot be read is kept aside (`stats.json.unreadable`) and a
//! new one started: figures are worth less than the evidence of what went wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use km_abi::Direction;
use serde::{Deserialize, Serialize};

use crate::home::KmHome;
use crate::monitor::dispatch::LaneTotals;

/// Days kept in the file.
pub const KEEP_DAYS: usize = 92;

/// Names kept per table and day (plugins, checks, outcomes).
pub const MAX_KEYS: usize = 64;

/// The file's format version.
const FORMAT: u32 = 1;

/// A distribution of durations in buckets 2^(1/8) apart (9%): small, mergeable across sessions
/// and days, and precise enough for a median or a 95th percentile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// How many durations.
    #[serde(default)]
    pub count: u64,
    /// Their sum, in seconds.
    #[serde(default)]
    pub sum_seconds: f64,
    /// Bucket `i` counts durations in [2^(i/8), 2^((i+1)/8)) seconds.
    #[serde(default)]
    pub buckets: BTreeMap<i32, u64>,
}

/// Buckets from 2^-240/8 s (about 1 ns) to 2^80/8 s (about 17 minutes).
const MIN_BUCKET: i32 = -240;
const MAX_BUCKET: i32 = 80;

impl Histogram {
    /// Adds one duration.
    pub fn record(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.count += 1;
        self.sum_seconds += seconds;
        let bucket = if seconds > 0.0 {
            // In range by the clamp; the cast cannot overflow.
            ((seconds.log2() * 8.0).floor() as i64)
                .clamp(i64::from(MIN_BUCKET), i64::from(MAX_BUCKET)) as i32
        } else {
            MIN_BUCKET
        };
        *self.buckets.entry(bucket).or_default() += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
        for (bucket, n) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += n;
        }
    }

    /// The `q` quantile (0..=1) in seconds: the middle of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(2f64.powf((f64::from(*bucket) + 0.5) / 8.0));
            }
        }
        None
    }
}

/// Messages a plugin handled and missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    #[serde(default)]
    pub handled: u64,
    #[serde(default)]
    pub dropped: u64,
}

/// One day's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Day {
    /// `km monitor` sessions that ended.
    #[serde(default)]
    pub sessions: u64,
    /// Plugins loaded, and how long each took (verify, map, create).
    #[serde(default)]
    pub plugin_loads: Histogram,
    /// Plugins refused, by the check that failed.
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
    /// Authentications by outcome (`authorized`, `degraded`, `error`).
    #[serde(default)]
    pub auth: BTreeMap<String, u64>,
    /// How long authentications took.
    #[serde(default)]
    pub auth_time: Histogram,
    /// Authentications answered without an HTTP request (the plugin's cached token)...
    #[serde(default)]
    pub token_cache_hits: u64,
    /// ...and those that asked the API.
    #[serde(default)]
    pub token_cache_misses: u64,
    /// Messages per plugin.
    #[serde(default)]
    pub messages: BTreeMap<String, Lane>,
    /// Verdicts other than pass, by plugin, then action.
    #[serde(default)]
    pub verdicts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Bytes relayed from the client to the server.
    #[serde(default)]
    pub bytes_client_to_server: u64,
    /// Bytes relayed from the server to the client.
    #[serde(default)]
    pub bytes_server_to_client: u64,
    /// Spans the Collector accepted.
    #[serde(default)]
    pub spans_exported: u64,
    /// Spans that were not exported (Collector down or slow, queue full).
    #[serde(default)]
    pub spans_lost: u64,
    /// Reads telemetry could not follow (its queue was full).
    #[serde(default)]
    pub reads_untraced: u64,
}

fn add(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if map.len() >= MAX_KEYS && !map.contains_key(key) {
        *map.entry("other".to_owned()).or_default() += n;
    } else {
        *map.entry(key.to_owned()).or_default() += n;
    }
}

impl Day {
    /// Adds `other` to this day.
    pub fn merge(&mut self, other: &Day) {
        self.sessions += other.sessions;
        self.plugin_loads.merge(&other.plugin_loads);
        for (k, n) in &other.refusals {
            add(&mut self.refusals, k, *n);
        }
        for (k, n) in &other.auth {
            add(&mut self.auth, k, *n);
        }
        self.auth_time.merge(&other.auth_time);
        self.token_cache_hits += other.token_cache_hits;
        self.token_cache_misses += other.token_cache_misses;
        for (plugin, lane) in &other.messages {
            let key = if self.messages.len() >= MAX_KEYS && !self.messages.contains_key(plugin) {
                "other"
            } else {
                plugin.as_str()
            };
            let mine = self.messages.entry(key.to_owned()).or_default();
            mine.handled += lane.handled;
            mine.dropped += lane.dropped;
        }
        for (plugin, actions) in &other.verdicts {
            let key = if self.verdicts.len() >= MAX_KEYS && !self.verdicts.contains_key(plugin) {
                "other"
            } else {
                plugin.as_str()
            };
            let mine = self.verdicts.entry(key.to_owned()).or_default();
            for (action, n) in actions {
                add(mine, action, *n);
            }
        }
        self.bytes_client_to_server += other.bytes_client_to_server;
        self.bytes_server_to_client += other.bytes_server_to_client;
        self.spans_exported += other.spans_exported;
        self.spans_lost += other.spans_lost;
        self.reads_untraced += other.reads_untraced;
    }
}

/// `KM_HOME/state/stats.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    /// The format version (1).
    pub format: u32,
    /// Figures per UTC day (`YYYY-MM-DD`).
    #[serde(default)]
    pub days: BTreeMap<String, Day>,
}

/// What this process saw so far (`None` until something happened).
static TALLY: Mutex<Option<Day>> = Mutex::new(None);

fn tally(f: impl FnOnce(&mut Day)) {
    let mut tally = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    f(tally.get_or_insert_with(Day::default));
}

pub(crate) fn plugin_loaded(took: Duration) {
    tally(|d| d.plugin_loads.record(took));
}

pub(crate) fn plugin_refused(check: &str) {
    tally(|d| add(&mut d.refusals, check, 1));
}

pub(crate) fn auth(outcome: &str, took: Duration, cache_hit: bool) {
    tally(|d| {
        add(&mut d.auth, outcome, 1);
        d.auth_time.record(took);
        if cache_hit {
            d.token_cache_hits += 1;
        } else {
            d.token_cache_misses += 1;
        }
    });
}

pub(crate) fn verdict(plugin: &str, action: &str) {
    tally(|d| {
        let mut one = BTreeMap::new();
        one.insert(plugin.to_owned(), BTreeMap::from([(action.to_owned(), 1)]));
        d.merge(&Day {
            verdicts: one,
            ..Day::default()
        });
    });
}

pub(crate) fn lanes(totals: &[LaneTotals]) {
    tally(|d| {
        let messages = totals
            .iter()
            .map(|t| {
                (
                    t.plugin.clone(),
                    Lane {
                        handled: t.handled,
                        dropped: t.dropped,
                    },
                )
            })
            .collect();
        d.merge(&Day {
            messages,
            ..Day::default()
        });
    });
}

pub(crate) fn relayed(direction: Direction, bytes: u64) {
    tally(|d| match direction {
        Direction::Request => d.bytes_client_to_server += bytes,
        Direction::Response => d.bytes_server_to_client += bytes,
    });
}

pub(crate) fn session() {
    tally(|d| d.sessions += 1);
}

pub(crate) fn telemetry(exported: u64, lost: u64, untraced: u64) {
    tally(|d| {
        d.spans_exported += exported;
        d.spans_lost += lost;
        d.reads_untraced += untraced;
    });
}

/// The UTC day of `when`, as `YYYY-MM-DD`.
pub fn day_of(when: SystemTime) -> String {
    let mut text = humantime::format_rfc3339_seconds(when).to_string();
    text.truncate(10);
    text
}

fn stats_path(home: &KmHome) -> PathBuf {
    home.state_dir().join("stats.json")
}

/// Reads the figures (none yet: an empty file).
pub fn read(home: &KmHome) -> Result<StatsFile> {
    read_file(&stats_path(home))
}

fn read_file(path: &Path) -> Result<StatsFile> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StatsFile {
                format: FORMAT,
                days: BTreeMap::new(),
            })
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: StatsFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not km's statistics file", path.display()))?;
    if file.format != FORMAT {
        anyhow::bail!(
            "{} has format {}, this km reads format {FORMAT}",
            path.display(),
            file.format
        );
    }
    Ok(file)
}

/// Adds what this process saw to `KM_HOME/state/stats.json` (nothing to do when it saw
/// nothing). The tally is cleared once written.
pub fn persist(home: &KmHome) -> Result<()> {
    let Some(day) = TALLY.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return Ok(());
    };
    merge_into(home, &day_of(SystemTime::now()), &day)
}

fn merge_into(home: &KmHome, today: &str, day: &Day) -> Result<()> {
    let dir = home.state_dir();
    KmHome::ensure_private_dir(&dir)?;
    let path = stats_path(home);
    let _lock = km_durable::Lock::acquire(&dir.join("stats.lock"), Some(Duration::from_secs(5)))
        .with_context(|| format!("locking {}", path.display()))?;
    let mut file = match read_file(&path) {
        Ok(file) => file,
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            std::fs::rename(&path, &aside)
                .with_context(|| format!("{e:#}; moving it to {}", aside.display()))?;
            eprintln!(
                "km: warning: {e:#}; kept as {} and started anew",
                aside.display()
            );
            StatsFile {
                format: FORMAT,
                days: BTreeMap::new(),
            }
        }
    };
    file.format = FORMAT;
    file.days.entry(today.to_owned()).or_default().merge(day);
    while file.days.len() > KEEP_DAYS {
        let Some(oldest) = file.days.keys().next().cloned() else {
            break;
        };
        file.days.remove(&oldest);
    }
    let text = serde_json::to_vec_pretty(&file).context("serialising the statistics")?;
    km_durable::write_atomic(&path, &text, km_durable::PRIVATE)
        .with_context(|| format!("writing {}", path.display()))
}

/// The days of `file` from `first` (a `YYYY-MM-DD`, inclusive) on, added up.
pub fn since(file: &StatsFile, first: &str) -> Day {
    let mut all = Day::default();
    for (_, figures) in file.days.range(first.to_owned()..) {
        all.merge(figures);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in [1.0, 1.2, 1.4, 1.5, 30.0] {
            h.record(Duration::from_secs_f64(ms / 1000.0));
        }
        let median = h.quantile(0.5).expect("median") * 1000.0;
        assert!((1.3..1.55).contains(&median), "{median}");
        let top = h.quantile(1.0).expect("max") * 1000.0;
        assert!((28.0..33.0).contains(&top), "{top}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        h.record(Duration::ZERO);
        assert_eq!(h.count, 6);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        // Each merge syncs the file and its directory under the lock, and a writer waits at
        // most 5 s for it (what km waits at the end of a session): 12 merges, not 40, so that
        // a loaded machine's slow fsyncs do not starve one writer past that bound.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let home = home.clone();
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        let mut day = Day {
                            sessions: 1,
                            ..Day::default()
                        };
                        add(&mut day.refusals, "signature", 1);
                        merge_into(&home, "2026-01-02", &day).expect("merge");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let file = read(&home).expect("read");
        let day = &file.days["2026-01-02"];
        assert_eq!(day.sessions, 12);
        assert_eq!(day.refusals["signature"], 12);
    }

    #[test]
    fn the_file_is_bounded_and_an_unreadable_one_is_kept_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(dir.path())).expect("home");
        for i in 0..(KEEP_DAYS + 5) {
            let day = Day {
                sessions: 1,
                ..Day::default()
            };
            merge_into(&home, &format!("2025-{:03}", i), &day).expect("merge");
        }
        let file = read(&home).expect("read");
        assert_eq!(file.days.len(), KEEP_DAYS);
        assert!(!file.days.contains_key("2025-000"), "the oldest went");
        let mut many = Day::default();
        for i in 0..(MAX_KEYS + 10) {
            add(&mut many.refusals, &format!("check-{i}"), 1);
        }
        assert_eq!(many.refusals.len(), MAX_KEYS + 1);
        assert_eq!(many.refusals["other"], 10);

        std::fs::write(stats_path(&home), b"{ not json").expect("corrupt");
        merge_into(&home, "2026-01-01", &Day::default()).expect("starts anew");
        assert!(stats_path(&home).with_extension("json.unreadable").exists());
        assert_eq!(read(&home).expect("read").days.len(), 1);
    }

    #[test]
    fn days_are_utc_dates() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 365);
        assert_eq!(day_of(when), "1971-01-01");
        let mut file = StatsFile::default();
        for (d, n) in [("2026-01-01", 1), ("2026-01-05", 2), ("2026-01-07", 4)] {
            file.days.insert(
                d.to_owned(),
                Day {
                    sessions: n,
                    ..Day::default()
                },
            );
        }
        assert_eq!(since(&file, "2026-01-05").sessions, 6);
    }
}
