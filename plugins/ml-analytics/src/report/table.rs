//! The report as a table on the terminal: tools, other methods, anomalies.

use std::fmt::Write as _;

use super::{Report, Row};

fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// Lays out `rows` under `header`, each column as wide as its widest cell; the first `left`
/// columns are left-aligned, the others right-aligned.
fn layout(out: &mut String, header: &[&str], rows: &[Vec<String>], left: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if i < left {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(
        out,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    for row in rows {
        line(out, row);
    }
}

fn cells(row: &Row, with_method: bool) -> Vec<String> {
    let mut cells = vec![row.server_label.clone()];
    if with_method {
        cells.push(row.method.clone());
    }
    cells.push(if row.tool.is_empty() {
        "-".to_owned()
    } else {
        row.tool.clone()
    });
    cells.extend([
        row.calls.to_string(),
        row.errors.to_string(),
        percent(row.error_rate),
        ms(row.p50_ms),
        ms(row.p95_ms),
        ms(row.p99_ms),
        ms(row.max_ms),
    ]);
    cells
}

/// The report as text.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let range = match &report.since {
        Some(since) => format!("{since} .. {}", report.until),
        None => format!("everything kept, until {}", report.until),
    };
    let _ = writeln!(
        out,
        "ml-analytics: {} server(s), {range}; latencies in ms (±{}%)",
        report.servers.len(),
        report.relative_error * 100.0
    );
    if report.tools.is_empty() && report.methods.is_empty() {
        let _ = writeln!(out, "\nNo calls recorded in this range.");
    }
    if !report.tools.is_empty() {
        let _ = writeln!(out, "\nTOOLS");
        let rows: Vec<Vec<String>> = report.tools.iter().map(|r| cells(r, false)).collect();
        layout(
            &mut out,
            &[
                "SERVER", "TOOL", "CALLS", "ERRORS", "ERR%", "P50", "P95", "P99", "MAX",
            ],
            &rows,
            2,
        );
    }
    if !report.methods.is_empty() {
        let _ = writeln!(out, "\nOTHER METHODS");
        let rows: Vec<Vec<String>> = report.methods.iter().map(|r| cells(r, true)).collect();
        layout(
            &mut out,
            &[
                "SERVER", "METHOD", "TARGET", "CALLS", "ERRORS", "ERR%", "P50", "P95", "P99", "MAX",
            ],
            &rows,
            3,
        );
    }
    let _ = writeln!(out, "\nANOMALIES ({})", report.anomalies.len());
    if report.anomalies.is_empty() {
        let _ = writeln!(out, "none");
    }
    for a in &report.anomalies {
        let label = if a.server_label.is_empty() {
            &a.server
        } else {
            &a.server_label
        };
        let _ = writeln!(
            out,
            "{}  {:<15}  {label}: {}",
            a.time,
            a.kind.as_str(),
            a.detail
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "\nwarning: {w}");
    }
    out
}
