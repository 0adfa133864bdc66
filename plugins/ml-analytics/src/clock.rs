//! Times as the plugin writes them: UTC, RFC 3339 in records, and the file names of the store
//! (`2026-11-01T10`, `2026-11-01`, `2026-11`), through humantime (already in the workspace)
//! rather than a calendar crate: these few formats are all the plugin needs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a minute, an hour, a day.
pub(crate) const MINUTE: i64 = 60;
pub(crate) const HOUR: i64 = 3600;
pub(crate) const DAY: i64 = 86_400;

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn system_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// `2026-11-01T10:15:02Z` for a time in milliseconds.
pub(crate) fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ms.div_euclid(1000))).to_string()
}

/// The start of the period of `length` seconds holding `secs`.
pub(crate) fn floor(secs: i64, length: i64) -> i64 {
    secs - secs.rem_euclid(length)
}

/// `2026-11-01T10`: the name of the hour starting at `secs`.
pub(crate) fn hour_name(secs: i64) -> String {
    rfc3339(secs * 1000)[..13].to_owned()
}

/// `2026-11-01`: the name of the day holding `secs`.
pub(crate) fn day_name(secs: i64) -> String {
    rfc3339(secs * 1000)[..10].to_owned()
}

/// `2026-11`: the name of the month holding `secs`.
pub(crate) fn month_name(secs: i64) -> String {
    rfc3339(secs * 1000)[..7].to_owned()
}

fn parse(text: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// The start of the hour named `2026-11-01T10`.
pub(crate) fn parse_hour(name: &str) -> Option<i64> {
    (name.len() == 13).then(|| parse(&format!("{name}:00:00Z")))?
}

/// The start of the day named `2026-11-01`.
pub(crate) fn parse_day(name: &str) -> Option<i64> {
    (name.len() == 10).then(|| parse(&format!("{name}T00:00:00Z")))?
}

/// The start of the month named `2026-11`, and the start of the next one.
pub(crate) fn parse_month(name: &str) -> Option<(i64, i64)> {
    if name.len() != 7 {
        return None;
    }
    let start = parse(&format!("{name}-01T00:00:00Z"))?;
    // 32 days on is always in the next month.
    let next = parse(&format!("{}-01T00:00:00Z", month_name(start + 32 * DAY)))?;
    Some((start, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = 1_793_528_102; // 2026-11-01T10:15:02Z
        assert_eq!(rfc3339(t * 1000), "2026-11-01T10:15:02Z");
        assert_eq!(hour_name(t), "2026-11-01T10");
        assert_eq!(parse_hour("2026-11-01T10"), Some(floor(t, HOUR)));
        assert_eq!(day_name(t), "2026-11-01");
        assert_eq!(parse_day("2026-11-01"), Some(floor(t, DAY)));
        let (start, next) = parse_month("2026-12").expect("a month");
        assert_eq!(day_name(start), "2026-12-01");
        assert_eq!(day_name(next), "2027-01-01");
        assert_eq!(parse_hour("2026-11-01"), None);
        assert_eq!(parse_day("garbage!!!"), None);
        assert_eq!(floor(-1, 60), -60);
    }
}
