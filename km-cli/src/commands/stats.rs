//! `km stats`: km's self-monitoring figures over the last days, from `KM_HOME/state/stats.json`
//! (see [`crate::telemetry::stats`]), without any collector: plugin loads and refusals by check
//! (tampering shows up as `digest` or `signature`), authentication outcomes and latency, token
//! cache hits and misses, messages each plugin handled and missed, verdicts, relayed bytes, and
//! what telemetry export lost.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::StatsArgs;
use crate::commands::Globals;
use crate::exit;
use crate::telemetry::stats::{self, Day, Histogram};

/// Runs `km stats`.
pub(crate) fn run(globals: &Globals, args: StatsArgs) -> Result<ExitCode> {
    let file = stats::read(&globals.home)?;
    let days = args.days.clamp(1, stats::KEEP_DAYS as u32);
    let now = SystemTime::now();
    let first = stats::day_of(now - Duration::from_secs(86_400 * u64::from(days - 1)));
    let last = stats::day_of(now);
    let figures = stats::since(&file, &first);
    if args.json {
        let value = to_json(&figures, days, &first, &last);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", to_text(&figures, days, &first, &last));
    }
    Ok(ExitCode::from(exit::OK))
}

fn millis(h: &Histogram, q: f64) -> Option<f64> {
    h.quantile(q).map(|s| (s * 1e6).round() / 1e3)
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn to_json(d: &Day, days: u32, first: &str, last: &str) -> Value {
    let attempts: u64 = d.auth.values().sum();
    let authorized = d.auth.get("authorized").copied().unwrap_or(0);
    let lookups = d.token_cache_hits + d.token_cache_misses;
    json!({
        "days": days,
        "from": first,
        "to": last,
        "sessions": d.sessions,
        "plugins": {
            "loaded": d.plugin_loads.count,
            "load_ms": { "median": millis(&d.plugin_loads, 0.5), "p95": millis(&d.plugin_loads, 0.95) },
            "refused": d.refusals.values().sum::<u64>(),
            "refused_by_check": d.refusals,
        },
        "auth": {
            "attempts": attempts,
            "by_outcome": d.auth,
            "success_rate": rate(authorized, attempts),
            "latency_ms": { "median": millis(&d.auth_time, 0.5), "p95": millis(&d.auth_time, 0.95) },
            "token_cache": {
                "hits": d.token_cache_hits,
                "misses": d.token_cache_misses,
                "hit_rate": rate(d.token_cache_hits, lookups),
            },
        },
        "messages": d.messages,
        "verdicts": d.verdicts,
        "relay_bytes": {
            "client_to_server": d.bytes_client_to_server,
            "server_to_client": d.bytes_server_to_client,
        },
        "telemetry": {
            "spans_exported": d.spans_exported,
            "spans_lost": d.spans_lost,
            "reads_untraced": d.reads_untraced,
        },
    })
}

fn by_count(map: &BTreeMap<String, u64>) -> String {
    let mut items: Vec<(&String, &u64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    items
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(r: f64) -> String {
    let p = r * 100.0;
    if p >= 99.95 || p == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn ms(h: &Histogram) -> String {
    match (millis(h, 0.5), millis(h, 0.95)) {
        (Some(median), Some(p95)) => format!("median {}, p95 {}", short_ms(median), short_ms(p95)),
        _ => String::new(),
    }
}

fn short_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn to_text(d: &Day, days: u32, first: &str, last: &str) -> String {
    let mut out = String::new();
    let span = if days == 1 {
        format!("today ({last})")
    } else {
        format!("the last {days} days ({first} to {last})")
    };
    out.push_str(&format!(
        "km stats for {span}: {} monitor session{}\n",
        d.sessions,
        if d.sessions == 1 { "" } else { "s" }
    ));
    let refused: u64 = d.refusals.values().sum();
    let mut plugins = format!("  plugins         {} loaded", d.plugin_loads.count);
    if d.plugin_loads.count > 0 {
        plugins.push_str(&format!(" ({})", ms(&d.plugin_loads)));
    }
    if refused > 0 {
        plugins.push_str(&format!("; {refused} refused: {}", by_count(&d.refusals)));
    } else {
        plugins.push_str("; none refused");
    }
    out.push_str(&plugins);
    out.push('\n');
    let attempts: u64 = d.auth.values().sum();
    if attempts > 0 {
        let authorized = d.auth.get("authorized").copied().unwrap_or(0);
        out.push_str(&format!(
            "  authentication  {attempts} attempt{}, {} authorized ({}); {}\n",
            if attempts == 1 { "" } else { "s" },
            rate(authorized, attempts).map_or_else(String::new, percent),
            by_count(&d.auth),
            ms(&d.auth_time)
        ));
        let lookups = d.token_cache_hits + d.token_cache_misses;
        out.push_str(&format!(
            "  token cache     {} hits, {} misses ({} answered without the API)\n",
            d.token_cache_hits,
            d.token_cache_misses,
            rate(d.token_cache_hits, lookups).map_or_else(String::new, percent)
        ));
    } else {
        out.push_str("  authentication  none\n");
    }
    if !d.messages.is_empty() {
        let handled: u64 = d.messages.values().map(|l| l.handled).sum();
        let dropped: u64 = d.messages.values().map(|l| l.dropped).sum();
        out.push_str(&format!(
            "  messages        {handled} handled by plugins, {dropped} dropped"
        ));
        let droppers: BTreeMap<String, u64> = d
            .messages
            .iter()
            .filter(|(_, l)| l.dropped > 0)
            .map(|(p, l)| (p.clone(), l.dropped))
            .collect();
        if !droppers.is_empty() {
            out.push_str(&format!(" ({})", by_count(&droppers)));
        }
        out.push('\n');
    }
    if !d.verdicts.is_empty() {
        let parts: Vec<String> = d
            .verdicts
            .iter()
            .map(|(plugin, actions)| format!("{plugin}: {}", by_count(actions)))
            .collect();
        out.push_str(&format!("  verdicts        {}\n", parts.join("; ")));
    }
    out.push_str(&format!(
        "  relayed         {} client to server, {} server to client\n",
        bytes(d.bytes_client_to_server),
        bytes(d.bytes_server_to_client)
    ));
    if d.spans_exported + d.spans_lost + d.reads_untraced > 0 {
        out.push_str(&format!(
            "  telemetry       {} spans exported, {} lost, {} reads not traced\n",
            d.spans_exported, d.spans_lost, d.reads_untraced
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_reads_like_a_sentence() {
        let mut day = Day {
            sessions: 3,
            ..Day::default()
        };
        for ms in [1.2, 1.4, 1.5] {
            day.plugin_loads
                .record(Duration::from_secs_f64(ms / 1000.0));
        }
        day.refusals.insert("signature".into(), 3);
        day.auth.insert("authorized".into(), 124);
        day.auth.insert("error".into(), 1);
        day.token_cache_hits = 100;
        day.token_cache_misses = 25;
        let text = to_text(&day, 7, "2026-01-01", "2026-01-07");
        assert!(text.contains("3 monitor sessions"), "{text}");
        assert!(text.contains("3 refused: signature 3"), "{text}");
        assert!(text.contains("125 attempts, 99.2% authorized"), "{text}");
        assert!(text.contains("median 1.4 ms"), "{text}");
        let value = to_json(&day, 7, "2026-01-01", "2026-01-07");
        assert_eq!(value["plugins"]["refused_by_check"]["signature"], 3);
        assert_eq!(value["auth"]["token_cache"]["hit_rate"], 0.8);
    }
}
