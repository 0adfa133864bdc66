//! The store on real files in a temporary directory: merges add up (also from threads at
//! once), retention rolls minutes into hours and hours into days without counting twice, the
//! disk bound holds, and damaged files are set aside, never overwritten.

use super::*;
use crate::anomaly::{Expected, Kind};
use crate::stats::{CallRecord, Outcome};

const NOW: i64 = 1_800_000_000; // 2027-01-15T08:00:00Z

fn key(tool: &str) -> SeriesKey {
    SeriesKey {
        server: "srv".to_owned(),
        method: "tools/call".to_owned(),
        tool: tool.to_owned(),
    }
}

fn stats(calls: u64, latency_us: u64) -> SeriesStats {
    let mut s = SeriesStats::default();
    for _ in 0..calls {
        s.record(&CallRecord {
            outcome: Outcome::Ok,
            latency_us: Some(latency_us),
            request_bytes: 10,
            response_bytes: Some(20),
            progress: 0,
        });
    }
    s
}

fn batch(at: i64, tool: &str, calls: u64) -> FlushBatch {
    let mut b = FlushBatch::default();
    b.stats
        .entry(clock::floor(at, MINUTE))
        .or_default()
        .insert(key(tool), stats(calls, 1000));
    b.servers.insert(
        "srv".to_owned(),
        ServerDelta {
            label: "node srv.js".to_owned(),
            sessions: 1,
            calls,
            first_seen_ms: at * 1000,
            last_seen_ms: at * 1000,
        },
    );
    b
}

fn calls_in(store: &Store, since: i64, until: i64) -> u64 {
    let loaded = store.read_range(since, until).expect("reads");
    loaded
        .buckets
        .values()
        .flat_map(|s| s.values())
        .map(|s| s.calls)
        .sum()
}

fn store(dir: &Path) -> Store {
    Store::new(dir, Retention::default())
}

#[test]
fn flushes_merge_and_reads_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    assert_eq!(
        calls_in(&store, 0, i64::MAX / 4),
        0,
        "an empty store reads as empty"
    );
    let mut a = batch(NOW, "echo", 3);
    store.flush(&mut a, NOW).expect("flush");
    assert!(a.is_empty(), "a written batch is emptied");
    let mut b = batch(NOW + 30, "echo", 4);
    store.flush(&mut b, NOW).expect("flush");
    let mut c = batch(NOW + 7200, "echo", 5);
    store.flush(&mut c, NOW + 7200).expect("flush");
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 12);
    assert_eq!(calls_in(&store, NOW + 3600, i64::MAX / 4), 5);
    let loaded = store.read_range(0, i64::MAX / 4).expect("reads");
    assert_eq!(loaded.servers["srv"], "node srv.js");
    let models = store.load_models().expect("models");
    assert_eq!(models.servers["srv"].sessions, 3);
    assert_eq!(models.servers["srv"].calls, 12);
    assert!(dir
        .path()
        .join("stats/minute")
        .join(format!("{}.json", clock::hour_name(NOW)))
        .exists());
}

#[test]
fn concurrent_flushes_lose_no_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store(dir.path());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let mut b = batch(NOW + i, if t % 2 == 0 { "a" } else { "b" }, 1);
                    store.flush(&mut b, NOW).expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(calls_in(&store(dir.path()), 0, i64::MAX / 4), 100);
    assert_eq!(
        store(dir.path()).load_models().expect("models").servers["srv"].calls,
        100
    );
}

#[test]
fn retention_rolls_minutes_into_hours_and_hours_into_days_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let old = NOW - 3 * 86_400;
    for minute in 0..3 {
        let mut b = batch(old + minute * 60, "echo", 2);
        store.flush(&mut b, old).expect("flush");
    }
    let minute_file = store.minute_file(clock::floor(old, HOUR));
    assert!(minute_file.exists());
    // An interrupted compaction: the day file absorbed the hour, the minute file is still
    // there. Running it again must not count the hour twice.
    let saved = std::fs::read(&minute_file).expect("read");
    store.maintain(NOW).expect("maintain");
    assert!(!minute_file.exists());
    std::fs::write(&minute_file, saved).expect("restore the minute file");
    store.maintain(NOW).expect("maintain again");
    assert!(!minute_file.exists());
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 6);
    let loaded = store.read_range(0, i64::MAX / 4).expect("reads");
    assert_eq!(loaded.buckets.len(), 1, "{:?}", loaded.buckets.keys());
    assert!(loaded.buckets.keys().all(|(_, len)| *len == HOUR));
    let p50 = loaded.buckets.values().next().expect("a bucket")[&key("echo")]
        .latency
        .quantile_ms(0.5)
        .expect("latency");
    assert!((p50 - 1.0).abs() < 0.011, "{p50}");

    // Past hour retention: one day bucket. Past day retention: gone.
    store.maintain(NOW + 61 * 86_400).expect("maintain");
    let loaded = store.read_range(0, i64::MAX / 4).expect("reads");
    assert!(loaded.buckets.keys().all(|(_, len)| *len == DAY));
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 6);
    store.maintain(NOW + 800 * 86_400).expect("maintain");
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 0);
}

#[test]
fn a_late_bucket_goes_straight_to_its_day() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let mut b = batch(NOW - 5 * 86_400, "echo", 2);
    store.flush(&mut b, NOW).expect("flush");
    assert!(store.day_file(clock::floor(NOW - 5 * 86_400, DAY)).exists());
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 2);
}

#[test]
fn the_disk_bound_removes_the_oldest_files_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retention = Retention {
        max_disk_bytes: 6_000,
        ..Retention::default()
    };
    let store = Store::new(dir.path(), retention);
    for hour in 0..20 {
        let mut b = batch(NOW - (20 - hour) * 3600, &format!("tool-{hour}"), 1);
        store.flush(&mut b, NOW).expect("flush");
    }
    let warnings = store.maintain(NOW).expect("maintain");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let loaded = store.read_range(0, i64::MAX / 4).expect("reads");
    let tools: Vec<String> = loaded
        .buckets
        .values()
        .flat_map(|s| s.keys().map(|k| k.tool.clone()))
        .collect();
    assert!(!tools.contains(&"tool-0".to_owned()), "{tools:?}");
    assert!(tools.contains(&"tool-19".to_owned()), "{tools:?}");
    let used: u64 = walk(dir.path());
    assert!(used <= 6_000 + 4096, "{used} bytes");
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let m = e.metadata().expect("metadata");
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn damaged_files_are_set_aside_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let mut b = batch(NOW, "echo", 1);
    store.flush(&mut b, NOW).expect("flush");
    let path = store.minute_file(clock::floor(NOW, HOUR));
    std::fs::write(&path, b"{\"format\": \"something else\"").expect("damage");
    let loaded = store.read_range(0, i64::MAX / 4).expect("reads");
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].contains(&*path.to_string_lossy()),
        "{:?}",
        loaded.warnings
    );
    let mut b = batch(NOW, "echo", 2);
    let warnings = store.flush(&mut b, NOW).expect("flush");
    assert!(warnings[0].contains("moved to"), "{warnings:?}");
    assert!(
        path.with_extension("json.corrupt").exists(),
        "the damaged file is kept"
    );
    assert_eq!(calls_in(&store, 0, i64::MAX / 4), 2);
}

fn anomaly(at_ms: i64, id: &str) -> Anomaly {
    Anomaly {
        id: id.to_owned(),
        time: clock::rfc3339(at_ms),
        time_ms: at_ms,
        kind: Kind::Latency,
        server: "srv".to_owned(),
        server_label: "node srv.js".to_owned(),
        method: "tools/call".to_owned(),
        tool: "echo".to_owned(),
        observed: 900.0,
        expected: Expected {
            low: 1.0,
            high: 200.0,
        },
        unit: "ms".to_owned(),
        session_id: "s".to_owned(),
        detail: "slow".to_owned(),
    }
}

#[test]
fn anomalies_are_appended_read_by_range_and_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let mut b = FlushBatch {
        anomalies: vec![
            anomaly(NOW * 1000, "a"),
            anomaly((NOW - 40 * 86_400) * 1000, "b"),
        ],
        ..FlushBatch::default()
    };
    store.flush(&mut b, NOW).expect("flush");
    let (all, warnings) = store.read_anomalies(0, i64::MAX / 4).expect("reads");
    assert!(warnings.is_empty());
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["b", "a"]
    );
    let (recent, _) = store
        .read_anomalies((NOW - 3600) * 1000, i64::MAX / 4)
        .expect("reads");
    assert_eq!(recent.len(), 1);
    // A torn last line is skipped with a warning.
    let month = dir
        .path()
        .join("anomalies")
        .join(format!("{}.jsonl", clock::month_name(NOW)));
    files::append_line(&month, b"{\"id\":\"torn").expect("append");
    let (all, warnings) = store.read_anomalies(0, i64::MAX / 4).expect("reads");
    assert_eq!((all.len(), warnings.len()), (2, 1));
    store.maintain(NOW + 400 * 86_400).expect("maintain");
    assert!(store
        .read_anomalies(0, i64::MAX / 4)
        .expect("reads")
        .0
        .is_empty());
}

#[test]
fn the_model_file_keeps_the_newest_of_two_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let model = |n: u64, seen: i64| SeriesModel {
        n,
        last_seen_ms: seen,
        ..SeriesModel::default()
    };
    let mut a = FlushBatch::default();
    a.models.insert(key("echo"), model(5, 2000));
    store.flush(&mut a, NOW).expect("flush");
    let mut b = FlushBatch::default();
    b.models.insert(key("echo"), model(9, 1000));
    b.models.insert(key("other"), model(1, 1000));
    store.flush(&mut b, NOW).expect("flush");
    let models = store.load_models().expect("models");
    assert_eq!(models.series[&key("echo")].n, 5);
    assert_eq!(models.series[&key("other")].n, 1);
}
