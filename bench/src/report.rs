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

/// All rows of a run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Adds a row.
    pub(crate) fn add(&mut self, row: Row) {
        if !std::env::args().any(|a| a == "--json") {
            // Progress on stderr so that a long run shows life.
            eprintln!(
                "  {} / {}: {} (baseline {})",
                row.section, row.figure, row.value, row.baseline
            );
        }
        self.rows.push(row);
    }

    /// Prints the table, or JSON.
    pub(crate) fn print(&self, json: bool) -> Result<()> {
        if json {
            let rows: Vec<_> = self
                .rows
                .iter()
                .map(|r| {
                    json!({
                        "section": r.section,
                        "figure": r.figure,
                        "value": r.value,
                        "baseline": r.baseline,
                        "ratio": r.ratio,
                        "target": r.target.as_ref().map(|t| &t.0),
                        "met": r.target.as_ref().map(|t| t.1),
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
            .map(|r| {
                [
                    r.section.to_owned(),
                    r.figure.clone(),
                    r.value.clone(),
                    r.baseline.clone(),
                    r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
                    r.target
                        .as_ref()
                        .map(|(t, met)| format!("{t} {}", if *met { "met" } else { "MISSED" }))
                        .unwrap_or_default(),
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
