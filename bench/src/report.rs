//! The figures of a run: rows of (section, figure, km, baseline, ratio, target), printed as a
//! table or as JSON. Kept apart so that every section reports the same way.

use anyhow::Result;
use serde_json::json;

/// One figure beside its baseline.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) section: &'static str,
    pub(crate) figure: String,
    pub(crate) value: String,
    pub(crate) baseline: String,
    /// value / baseline (or the figure's own ratio), when there is one.
    pub(crate) ratio: Option<f64>,
    /// The target, readable, and whether it is met.
    pub(crate) target: Option<(String, bool)>,
}

/// All rows of a run, each with the messages its plugins dropped (when plugins were loaded).
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<(Row, Option<u64>)>,
}

impl Report {
    /// Adds a row.
    pub(crate) fn add(&mut self, row: Row) {
        self.push(row, None);
    }

    /// Adds a row of runs with plugins, whose plugins dropped `drops` messages in all: with any
    /// drop its target is not judged (the plugins skipped part of the work).
    pub(crate) fn add_counted(&mut self, row: Row, drops: u64) {
        self.push(row, Some(drops));
    }

    fn push(&mut self, row: Row, drops: Option<u64>) {
        if !std::env::args().any(|a| a == "--json") {
            // Progress on stderr so that a long run shows life.
            eprintln!(
                "  {} / {}: {} (baseline {}){}",
                row.section,
                row.figure,
                row.value,
                row.baseline,
                row.ratio.map(|r| format!(" {r:.2}x")).unwrap_or_default()
            );
        }
        self.rows.push((row, drops));
    }

    /// Prints the table, or JSON.
    pub(crate) fn print(&self, json: bool) -> Result<()> {
        if json {
            let rows: Vec<_> = self
                .rows
                .iter()
                .map(|(r, drops)| {
                    let judged = !matches!(drops, Some(d) if *d > 0);
                    json!({
                        "section": r.section,
                        "figure": r.figure,
                        "value": r.value,
                        "baseline": r.baseline,
                        "ratio": r.ratio,
                        "target": r.target.as_ref().map(|t| &t.0),
                        "met": r.target.as_ref().filter(|_| judged).map(|t| t.1),
                        "drops": drops,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        let headers = ["section", "figure", "km", "baseline", "ratio", "target"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|(r, drops)| {
                [
                    r.section.to_owned(),
                    r.figure.clone(),
                    r.value.clone(),
                    r.baseline.clone(),
                    r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
                    match (&r.target, drops) {
                        (Some((t, _)), Some(d)) if *d > 0 => {
                            format!("{t} not judged: {d} messages dropped")
                        }
                        (Some((t, met)), _) => {
                            format!("{t} {}", if *met { "met" } else { "MISSED" })
                        }
                        (None, _) => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(&format!("{c:<w$}"));
            }
            println!("{}", out.trim_end());
        };
        line(&headers.map(str::to_owned));
        line(&widths.map(|w| "-".repeat(w)));
        for row in &cells {
            line(row);
        }
        Ok(())
    }
}
