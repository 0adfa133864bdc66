//! The on-disk store in the plugin's data directory: statistics in time buckets, the learned
//! model, and the anomaly records. Several `km monitor` sessions write it at once and reports
//! read it meanwhile.
//!
//! ```text
//! <data dir>/
//!   store.lock                     the lock every writer and reader takes (km-durable)
//!   stats/minute/2026-11-01T10.json  the minute buckets of one hour
//!   stats/day/2026-11-01.json        the hour buckets of one day (later: its day bucket)
//!   model.json                     what the anomaly model learned, per server and series
//!   anomalies/2026-11.jsonl        one anomaly record per line
//! ```
//!
//! # Writing without losing counts
//!
//! A session counts in memory and *merges* its counts into the files every flush interval and
//! at its end: under the exclusive lock it reads each file its buckets belong to, adds its
//! counts (sketches merge exactly), and replaces the file atomically. Whatever another session
//! merged before is read back and kept, so concurrent sessions add up; a failed flush keeps the
//! counts in memory for the next one.
//!
//! # Retention (the defaults; see [`crate::settings`])
//!
//! - minute buckets: 48 hours; then an hour's minutes become one hour bucket in its day file;
//! - hour buckets: 60 days; then a day's hours become one day bucket;
//! - day buckets: 730 days; anomaly records: 365 days;
//! - at most 64 MiB in all: beyond it, the oldest files go first (with one warning).
//!
//! Each step is one atomic replace of the day file, which records the hours it has absorbed, so
//! an interruption between writing it and removing the minute file never counts an hour twice.
//! Files are JSON, so a user can read them; a file that cannot be read is renamed aside
//! (`NAME.corrupt`) with a warning, never overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::anomaly::Anomaly;
use crate::clock::{self, DAY, HOUR, MINUTE};
use crate::error::{Error, Result};
use crate::files;
use crate::model::SeriesModel;
use crate::settings::Retention;
use crate::stats::{SeriesKey, SeriesStats, StoredSeries};

const FORMAT_STATS: &str = "km-ml-analytics-stats";
const FORMAT_MODEL: &str = "km-ml-analytics-model";
const VERSION: u32 = 1;

/// The most series the model file keeps (the least recently seen go first).
pub(crate) const MAX_MODEL_SERIES: usize = 4096;
/// The most servers the model file keeps.
const MAX_MODEL_SERVERS: usize = 1024;
/// Files larger than this are not read (a damaged or foreign file).
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Counts by bucket start (seconds) and series.
pub(crate) type Buckets = BTreeMap<i64, BTreeMap<SeriesKey, SeriesStats>>;

/// The resolution of the buckets of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    /// Its length in seconds.
    pub(crate) fn secs(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE,
            Resolution::Hour => HOUR,
            Resolution::Day => DAY,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredBucket {
    start: i64,
    series: Vec<StoredSeries>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredFile {
    format: String,
    version: u32,
    resolution: Resolution,
    /// The start of the period the file covers (an hour for minute files, a day for day files).
    start: i64,
    /// Day files: the hours whose minute files were merged in.
    #[serde(default)]
    absorbed: BTreeSet<i64>,
    /// Server id to label, for reports.
    #[serde(default)]
    servers: BTreeMap<String, String>,
    buckets: Vec<StoredBucket>,
}

/// One file's buckets in memory.
#[derive(Debug)]
pub(crate) struct Period {
    pub(crate) resolution: Resolution,
    pub(crate) start: i64,
    absorbed: BTreeSet<i64>,
    pub(crate) servers: BTreeMap<String, String>,
    pub(crate) buckets: Buckets,
}

impl Period {
    fn new(resolution: Resolution, start: i64) -> Self {
        Period {
            resolution,
            start,
            absorbed: BTreeSet::new(),
            servers: BTreeMap::new(),
            buckets: Buckets::new(),
        }
    }

    /// Adds `stats` for `key` in the bucket holding `start`.
    fn add(&mut self, start: i64, key: &SeriesKey, stats: &SeriesStats) {
        let bucket = clock::floor(start, self.resolution.secs());
        self.buckets
            .entry(bucket)
            .or_default()
            .entry(key.clone())
            .or_default()
            .merge(stats);
    }

    fn add_all(&mut self, other: &Period) {
        for (start, series) in &other.buckets {
            for (key, stats) in series {
                self.add(*start, key, stats);
            }
        }
        for (id, label) in &other.servers {
            self.servers.insert(id.clone(), label.clone());
        }
    }

    /// Rolls the buckets up to `resolution`.
    fn coarsen(&mut self, resolution: Resolution) {
        let old = std::mem::take(&mut self.buckets);
        self.resolution = resolution;
        for (start, series) in old {
            for (key, stats) in series {
                self.add(start, &key, &stats);
            }
        }
    }

    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let stored = StoredFile {
            format: FORMAT_STATS.to_owned(),
            version: VERSION,
            resolution: self.resolution,
            start: self.start,
            absorbed: self.absorbed.clone(),
            servers: self.servers.clone(),
            buckets: self
                .buckets
                .iter()
                .map(|(start, series)| StoredBucket {
                    start: *start,
                    series: series.iter().map(|(k, s)| s.to_stored(k)).collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&stored)
    }

    fn from_json(path: &Path, bytes: &[u8]) -> Result<Period> {
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let stored: StoredFile =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a stats file: {e}")))?;
        if stored.format != FORMAT_STATS {
            return Err(corrupt(format!("unknown format {:?}", stored.format)));
        }
        if stored.version != VERSION {
            return Err(corrupt(format!(
                "version {} (this plugin reads {VERSION})",
                stored.version
            )));
        }
        let mut period = Period::new(stored.resolution, stored.start);
        period.absorbed = stored.absorbed;
        period.servers = stored.servers;
        for bucket in stored.buckets {
            for series in bucket.series {
                let (key, stats) = series.into_stats().map_err(corrupt)?;
                period.add(bucket.start, &key, &stats);
            }
        }
        Ok(period)
    }
}

/// What a server has been, across sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ServerModel {
    pub(crate) label: String,
    /// Sessions that flushed at least once.
    pub(crate) sessions: u64,
    /// Calls counted.
    pub(crate) calls: u64,
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredModel {
    server: String,
    method: String,
    #[serde(default)]
    tool: String,
    #[serde(flatten)]
    model: SeriesModel,
}

#[derive(Debug, Serialize, Deserialize)]
struct ModelFile {
    format: String,
    version: u32,
    #[serde(default)]
    servers: BTreeMap<String, ServerModel>,
    #[serde(default)]
    series: Vec<StoredModel>,
}

/// The learned model as a session loads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Models {
    pub(crate) servers: BTreeMap<String, ServerModel>,
    pub(crate) series: BTreeMap<SeriesKey, SeriesModel>,
}

/// What one server contributes to the model file in one flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerDelta {
    pub(crate) label: String,
    /// 1 on the session's first flush, then 0.
    pub(crate) sessions: u64,
    pub(crate) calls: u64,
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
}

/// What a session hands the store at a flush.
#[derive(Debug, Default)]
pub(crate) struct FlushBatch {
    /// Counts by minute.
    pub(crate) stats: Buckets,
    /// Server labels and counters.
    pub(crate) servers: BTreeMap<String, ServerDelta>,
    /// The current model of every series the session touched.
    pub(crate) models: BTreeMap<SeriesKey, SeriesModel>,
    /// New anomaly records.
    pub(crate) anomalies: Vec<Anomaly>,
}

impl FlushBatch {
    /// Whether there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.servers.is_empty()
            && self.models.is_empty()
            && self.anomalies.is_empty()
    }
}

/// Buckets read for a report, with the labels of their servers and what could not be read.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// (start, length in seconds) -> series.
    pub(crate) buckets: BTreeMap<(i64, i64), BTreeMap<SeriesKey, SeriesStats>>,
    pub(crate) servers: BTreeMap<String, String>,
    pub(crate) warnings: Vec<String>,
}

/// The store in a data directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    retention: Retention,
}

impl Store {
    /// The store in `dir` (nothing is created until the first write).
    pub(crate) fn new(dir: &Path, retention: Retention) -> Self {
        Store {
            dir: dir.to_path_buf(),
            retention,
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("store.lock")
    }

    fn minute_dir(&self) -> PathBuf {
        self.dir.join("stats").join("minute")
    }

    fn day_dir(&self) -> PathBuf {
        self.dir.join("stats").join("day")
    }

    fn anomaly_dir(&self) -> PathBuf {
        self.dir.join("anomalies")
    }

    fn model_path(&self) -> PathBuf {
        self.dir.join("model.json")
    }

    fn minute_file(&self, hour: i64) -> PathBuf {
        self.minute_dir()
            .join(format!("{}.json", clock::hour_name(hour)))
    }

    fn day_file(&self, day: i64) -> PathBuf {
        self.day_dir()
            .join(format!("{}.json", clock::day_name(day)))
    }

    /// Reads a period file; `Ok(None)` when it does not exist. A file that cannot be parsed is
    /// an error naming it.
    fn read_period(path: &Path) -> Result<Option<Period>> {
        let bytes = match read_capped(path)? {
            Some(b) => b,
            None => return Ok(None),
        };
        Period::from_json(path, &bytes).map(Some)
    }

    /// Reads a period file for merging into: a damaged one is moved aside (and reported in
    /// `warnings`) and a fresh period is started, so that it is never overwritten.
    fn read_for_merge(
        path: &Path,
        resolution: Resolution,
        start: i64,
        warnings: &mut Vec<String>,
    ) -> Result<Period> {
        match Self::read_period(path) {
            Ok(Some(period)) => Ok(period),
            Ok(None) => Ok(Period::new(resolution, start)),
            Err(Error::Corrupt { path, reason }) => {
                let aside = path.with_extension("json.corrupt");
                std::fs::rename(&path, &aside).map_err(|e| Error::io("moving aside", &path, e))?;
                warnings.push(format!(
                    "{}: {reason}; moved to {} and started afresh",
                    path.display(),
                    aside.display()
                ));
                Ok(Period::new(resolution, start))
            }
            Err(e) => Err(e),
        }
    }

    fn write_period(path: &Path, period: &Period) -> Result<()> {
        let bytes = period.to_json().map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot serialise: {e}"),
        })?;
        files::write_atomic(path, &bytes)
    }

    /// Merges a session's batch into the store (see the module documentation) and returns the
    /// warnings to log. What was written leaves `batch`: on an error, `batch` holds exactly
    /// what is still to be written, for the next flush, so nothing is lost or counted twice.
    pub(crate) fn flush(&self, batch: &mut FlushBatch, now_secs: i64) -> Result<Vec<String>> {
        files::ensure_dir(&self.dir)?;
        let _lock = files::lock(&self.lock_path())?;
        let mut warnings = Vec::new();
        let labels: BTreeMap<String, String> = batch
            .servers
            .iter()
            .filter(|(_, d)| !d.label.is_empty())
            .map(|(id, d)| (id.clone(), d.label.clone()))
            .collect();

        // Statistics: grouped by the file they belong to. Each file is merged and replaced on
        // its own; what was written is removed from the batch at once, so that a failure part
        // way leaves only the unwritten part for the retry: no bucket is ever merged twice.
        let minute_cutoff = clock::floor(now_secs - self.retention.minute_secs, HOUR);
        let mut by_file: BTreeMap<(bool, i64), Buckets> = BTreeMap::new();
        for (start, series) in std::mem::take(&mut batch.stats) {
            let hour = clock::floor(start, HOUR);
            // A bucket older than minute retention goes straight into its day file.
            let key = if hour < minute_cutoff {
                (true, clock::floor(start, DAY))
            } else {
                (false, hour)
            };
            by_file.entry(key).or_default().insert(start, series);
        }
        if !by_file.is_empty() {
            files::ensure_dir(&self.minute_dir())?;
            files::ensure_dir(&self.day_dir())?;
        }
        let mut failed: Option<Error> = None;
        for ((is_day, start), buckets) in by_file {
            if failed.is_some() {
                batch.stats.extend(buckets);
                continue;
            }
            let (path, resolution) = if is_day {
                (self.day_file(start), Resolution::Hour)
            } else {
                (self.minute_file(start), Resolution::Minute)
            };
            let result = (|| {
                let mut period = Self::read_for_merge(&path, resolution, start, &mut warnings)?;
                for (bucket, series) in &buckets {
                    for (key, stats) in series {
                        period.add(*bucket, key, stats);
                        if let Some(label) = labels.get(&key.server) {
                            period.servers.insert(key.server.clone(), label.clone());
                        }
                    }
                }
                Self::write_period(&path, &period)
            })();
            if let Err(e) = result {
                batch.stats.extend(buckets);
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }

        if !batch.servers.is_empty() || !batch.models.is_empty() {
            self.merge_models(batch, &mut warnings)?;
            batch.servers.clear();
            batch.models.clear();
        }

        if !batch.anomalies.is_empty() {
            files::ensure_dir(&self.anomaly_dir())?;
            let mut by_month: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for anomaly in &batch.anomalies {
                let mut line = serde_json::to_vec(anomaly).map_err(|e| Error::Corrupt {
                    path: self.anomaly_dir(),
                    reason: format!("cannot serialise an anomaly: {e}"),
                })?;
                line.push(b'\n');
                by_month
                    .entry(clock::month_name(anomaly.time_ms.div_euclid(1000)))
                    .or_default()
                    .extend_from_slice(&line);
            }
            for (month, lines) in by_month {
                files::append_line(&self.anomaly_dir().join(format!("{month}.jsonl")), &lines)?;
                batch
                    .anomalies
                    .retain(|a| clock::month_name(a.time_ms.div_euclid(1000)) != month);
            }
        }
        Ok(warnings)
    }

    fn merge_models(&self, batch: &FlushBatch, warnings: &mut Vec<String>) -> Result<()> {
        let path = self.model_path();
        let mut models = match self.read_models_file() {
            Ok(m) => m,
            Err(Error::Corrupt { reason, .. }) => {
                let aside = path.with_extension("json.corrupt");
                std::fs::rename(&path, &aside).map_err(|e| Error::io("moving aside", &path, e))?;
                warnings.push(format!(
                    "{}: {reason}; moved to {} and started afresh",
                    path.display(),
                    aside.display()
                ));
                Models::default()
            }
            Err(e) => return Err(e),
        };
        for (id, delta) in &batch.servers {
            let server = models.servers.entry(id.clone()).or_default();
            if !delta.label.is_empty() {
                server.label = delta.label.clone();
            }
            server.sessions += delta.sessions;
            server.calls += delta.calls;
            if server.first_seen_ms == 0
                || (delta.first_seen_ms != 0 && delta.first_seen_ms < server.first_seen_ms)
            {
                server.first_seen_ms = delta.first_seen_ms;
            }
            server.last_seen_ms = server.last_seen_ms.max(delta.last_seen_ms);
        }
        // A series learned by two sessions at once keeps the most recent session's model:
        // models are estimates, and either is a fair one.
        for (key, model) in &batch.models {
            match models.series.get(key) {
                Some(theirs) if theirs.last_seen_ms > model.last_seen_ms => {}
                _ => {
                    models.series.insert(key.clone(), model.clone());
                }
            }
        }
        bound(&mut models.series, MAX_MODEL_SERIES, |m| m.last_seen_ms);
        bound(&mut models.servers, MAX_MODEL_SERVERS, |s| s.last_seen_ms);
        let file = ModelFile {
            format: FORMAT_MODEL.to_owned(),
            version: VERSION,
            servers: models.servers,
            series: models
                .series
                .into_iter()
                .map(|(key, model)| StoredModel {
                    server: key.server,
                    method: key.method,
                    tool: key.tool,
                    model,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("cannot serialise: {e}"),
        })?;
        files::ensure_dir(&self.dir)?;
        files::write_atomic(&path, &bytes)
    }

    fn read_models_file(&self) -> Result<Models> {
        let path = self.model_path();
        let Some(bytes) = read_capped(&path)? else {
            return Ok(Models::default());
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: ModelFile = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("not a model file: {e}")))?;
        if file.format != FORMAT_MODEL || file.version != VERSION {
            return Err(corrupt(format!(
                "format {:?} version {} (this plugin reads {FORMAT_MODEL} {VERSION})",
                file.format, file.version
            )));
        }
        Ok(Models {
            servers: file.servers,
            series: file
                .series
                .into_iter()
                .map(|s| {
                    (
                        SeriesKey {
                            server: s.server,
                            method: s.method,
                            tool: s.tool,
                        },
                        s.model,
                    )
                })
                .collect(),
        })
    }

    /// The learned model, for a session starting (a missing store is an empty model).
    pub(crate) fn load_models(&self) -> Result<Models> {
        if !self.dir.join("store.lock").exists() {
            return Ok(Models::default());
        }
        let _lock = files::lock(&self.lock_path())?;
        self.read_models_file()
    }

    /// Applies retention and the disk bound (see the module documentation). Returns warnings.
    pub(crate) fn maintain(&self, now_secs: i64) -> Result<Vec<String>> {
        if !self.dir.join("store.lock").exists() {
            return Ok(Vec::new());
        }
        let _lock = files::lock(&self.lock_path())?;
        let mut warnings = Vec::new();
        let r = &self.retention;

        // 1. Hours past minute retention: into their day file, then the minute file goes.
        let minute_cutoff = clock::floor(now_secs - r.minute_secs, HOUR);
        for (hour, path) in list(&self.minute_dir(), clock::parse_hour) {
            if hour >= minute_cutoff {
                continue;
            }
            let day = clock::floor(hour, DAY);
            let day_path = self.day_file(day);
            files::ensure_dir(&self.day_dir())?;
            let mut day_period =
                Self::read_for_merge(&day_path, Resolution::Hour, day, &mut warnings)?;
            if !day_period.absorbed.contains(&hour) {
                match Self::read_period(&path) {
                    Ok(Some(minutes)) => {
                        day_period.add_all(&minutes);
                        day_period.absorbed.insert(hour);
                        Self::write_period(&day_path, &day_period)?;
                    }
                    Ok(None) => continue,
                    Err(Error::Corrupt { path, reason }) => {
                        let aside = path.with_extension("json.corrupt");
                        std::fs::rename(&path, &aside)
                            .map_err(|e| Error::io("moving aside", &path, e))?;
                        warnings.push(format!("{}: {reason}; moved aside", path.display()));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        }

        // 2. Days past hour retention: their hours become one day bucket; past day
        //    retention: removed.
        let hour_cutoff = clock::floor(now_secs - r.hour_secs, DAY);
        let day_cutoff = clock::floor(now_secs - r.day_secs, DAY);
        for (day, path) in list(&self.day_dir(), clock::parse_day) {
            if day < day_cutoff {
                std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
                continue;
            }
            if day < hour_cutoff {
                match Self::read_period(&path) {
                    Ok(Some(mut period)) if period.resolution != Resolution::Day => {
                        period.coarsen(Resolution::Day);
                        Self::write_period(&path, &period)?;
                    }
                    Ok(_) => {}
                    Err(Error::Corrupt { reason, .. }) => {
                        warnings.push(format!("{}: {reason}", path.display()));
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        // 3. Anomaly months past their retention.
        let anomaly_cutoff = now_secs - r.anomaly_secs;
        for (end, path) in list(&self.anomaly_dir(), |name| {
            name.strip_suffix(".jsonl")
                .and_then(clock::parse_month)
                .map(|(_, next)| next)
        }) {
            if end < anomaly_cutoff {
                std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
            }
        }

        // 4. Temporaries left by a crash (older than an hour: a live writer's are seconds old).
        for dir in [self.minute_dir(), self.day_dir(), self.dir.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if files::is_temporary(&name) && old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }

        // 5. The disk bound: the oldest data files go first; the current hour's never.
        let mut all: Vec<(i64, PathBuf, u64)> = Vec::new();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        for (start, path) in list(&self.day_dir(), clock::parse_day) {
            let s = size(&path);
            all.push((start, path, s));
        }
        for (start, path) in list(&self.minute_dir(), clock::parse_hour) {
            let s = size(&path);
            all.push((start, path, s));
        }
        for (start, path) in list(&self.anomaly_dir(), |name| {
            name.strip_suffix(".jsonl")
                .and_then(clock::parse_month)
                .map(|(start, _)| start)
        }) {
            let s = size(&path);
            all.push((start, path, s));
        }
        let mut total: u64 = all.iter().map(|(_, _, s)| s).sum::<u64>() + size(&self.model_path());
        if total > r.max_disk_bytes {
            all.sort_by_key(|(start, _, _)| *start);
            let current = clock::floor(now_secs, HOUR);
            let mut removed = 0;
            for (start, path, bytes) in all {
                if total <= r.max_disk_bytes || start >= current {
                    break;
                }
                std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
                total -= bytes;
                removed += 1;
            }
            warnings.push(format!(
                "the statistics outgrew {} MiB: removed the {removed} oldest file(s) (max_disk_mb)",
                r.max_disk_bytes / (1024 * 1024)
            ));
        }
        Ok(warnings)
    }

    /// Every bucket that overlaps `[since, until)` (seconds), and the server labels.
    pub(crate) fn read_range(&self, since: i64, until: i64) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        if !self.dir.join("store.lock").exists() {
            return Ok(loaded);
        }
        let _lock = files::lock(&self.lock_path())?;
        let mut periods = Vec::new();
        for (start, path) in list(&self.day_dir(), clock::parse_day) {
            if start + DAY > since && start < until {
                periods.push(path);
            }
        }
        for (start, path) in list(&self.minute_dir(), clock::parse_hour) {
            if start + HOUR > since && start < until {
                periods.push(path);
            }
        }
        for path in periods {
            match Self::read_period(&path) {
                Ok(Some(period)) => {
                    let length = period.resolution.secs();
                    for (id, label) in period.servers {
                        loaded.servers.insert(id, label);
                    }
                    for (start, series) in period.buckets {
                        if start + length <= since || start >= until {
                            continue;
                        }
                        let bucket = loaded.buckets.entry((start, length)).or_default();
                        for (key, stats) in series {
                            bucket.entry(key).or_default().merge(&stats);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => loaded.warnings.push(format!("skipped {e}")),
            }
        }
        // Labels of servers whose bucket files predate them.
        if let Ok(models) = self.read_models_file() {
            for (id, server) in models.servers {
                if !server.label.is_empty() {
                    loaded.servers.entry(id).or_insert(server.label);
                }
            }
        }
        Ok(loaded)
    }

    /// The anomaly records of `[since, until)` (milliseconds), oldest first. Unreadable lines
    /// (a torn last line after a crash) are skipped and counted in the warnings.
    pub(crate) fn read_anomalies(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<(Vec<Anomaly>, Vec<String>)> {
        let mut found = Vec::new();
        let mut warnings = Vec::new();
        if !self.dir.join("store.lock").exists() {
            return Ok((found, warnings));
        }
        let _lock = files::lock(&self.lock_path())?;
        let months = list(&self.anomaly_dir(), |name| {
            name.strip_suffix(".jsonl").and_then(clock::parse_month)
        });
        for ((start, next), path) in months {
            if next * 1000 <= since_ms || start * 1000 >= until_ms {
                continue;
            }
            let Some(bytes) = read_capped(&path)? else {
                continue;
            };
            let mut bad = 0;
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<Anomaly>(line) {
                    Ok(a) if a.time_ms >= since_ms && a.time_ms < until_ms => found.push(a),
                    Ok(_) => {}
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                warnings.push(format!(
                    "{}: skipped {bad} unreadable line(s)",
                    path.display()
                ));
            }
        }
        found.sort_by(|a, b| a.time_ms.cmp(&b.time_ms).then_with(|| a.id.cmp(&b.id)));
        Ok((found, warnings))
    }
}

/// Keeps the `max` entries with the largest `recency`.
fn bound<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, max: usize, recency: impl Fn(&V) -> i64) {
    if map.len() <= max {
        return;
    }
    let mut ages: Vec<(i64, K)> = map.iter().map(|(k, v)| (recency(v), k.clone())).collect();
    ages.sort_by_key(|(age, _)| *age);
    let excess = map.len() - max;
    for (_, key) in ages.into_iter().take(excess) {
        map.remove(&key);
    }
}

/// The files of `dir` whose name (without `.json`, or as `parse` reads it) parses, by value.
fn list<T: Ord>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Vec<(T, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(T, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json").unwrap_or(&name);
            if files::is_temporary(&name) || name.ends_with(".corrupt") {
                return None;
            }
            parse(stem).map(|v| (v, entry.path()))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Reads a file of the store; `None` when missing, an error when oversized.
fn read_capped(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{} bytes, more than a store file can be", m.len()),
        }),
        Ok(_) => std::fs::read(path)
            .map(Some)
            .map_err(|e| Error::io("reading", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

#[cfg(test)]
mod tests;
