//! The report as one self-contained HTML page: no network (a Content-Security-Policy forbids
//! every load; styles and scripts are inline), charts drawn as SVG by the page's own script
//! from the report embedded as JSON.
//!
//! The page draws, per tool, its latency percentiles (p50, p95, p99) over time on a log scale
//! and its error rate over time; a timeline of the anomalies; and tables of tools, other methods
//! and anomalies. It reports its own failures: any script error, rejected promise, blocked load
//! or `console.error` is written into the page (`#page-errors`, and the count in the `data-errors`
//! attribute of `<html>`), and `<body data-status="rendered">` is set once everything is drawn,
//! so a headless browser can tell a good page from a broken one by its DOM alone.

use serde_json::json;

use super::{Report, Row};

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Catches errors from the very start, before the page's script runs.
const ERROR_CATCHER: &str = r#"(function () {
  var errors = [];
  function note(message) {
    errors.push(String(message));
    document.documentElement.setAttribute("data-errors", String(errors.length));
    var el = document.getElementById("page-errors");
    if (el) { el.textContent = errors.join("\n"); el.hidden = false; }
  }
  window.addEventListener("error", function (e) {
    var what = e.message || (e.target && (e.target.src || e.target.href)) || "a resource failed to load";
    note("error: " + what + (e.lineno ? " (line " + e.lineno + ")" : ""));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    note("blocked by the page's policy: " + (e.blockedURI || e.violatedDirective));
  });
  var original = console.error;
  console.error = function () {
    note(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
  window.kmPageErrors = errors;
  window.kmNoteError = note;
})();"#;

/// JSON that is safe inside `<script>`: `<`, `>`, `&` and the JavaScript line separators are
/// escaped (they can only occur inside strings, where `\uXXXX` means the same).
fn script_safe_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn row_json(row: &Row) -> serde_json::Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["timeline"] = serde_json::to_value(&row.timeline).unwrap_or_default();
    value
}

/// The page.
pub(crate) fn render(report: &Report) -> String {
    let data = json!({
        "generated": report.generated,
        "since": report.since,
        "until": report.until,
        "since_ms": report.since_ms,
        "until_ms": report.until_ms,
        "step_ms": report.step_ms,
        "relative_error": report.relative_error,
        "servers": report.servers,
        "tools": report.tools.iter().map(row_json).collect::<Vec<_>>(),
        "methods": report.methods.iter().map(row_json).collect::<Vec<_>>(),
        "anomalies": report.anomalies,
        "warnings": report.warnings,
    });
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>km ml-analytics report</title>
<style>
{STYLE}</style>
<script>
{ERROR_CATCHER}
</script>
</head>
<body data-status="loading">
<header>
<h1>MCP tool analytics</h1>
<p id="range"></p>
</header>
<noscript><p class="warning">This report draws its tables and charts with JavaScript; please allow it for this file.</p></noscript>
<main id="app"></main>
<pre id="page-errors" class="page-errors" hidden></pre>
<footer>Made by km's ml-analytics plugin. Latency percentiles are within ±1% (DDSketch).</footer>
<script type="application/json" id="report-data">{data}</script>
<script>
{SCRIPT}
</script>
</body>
</html>
"#,
        data = script_safe_json(&data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_the_script() {
        let value = json!({"tool": "</script><script>alert(1)</script>", "sep": "a\u{2028}b & c"});
        let text = script_safe_json(&value);
        assert!(!text.contains("</script>"), "{text}");
        assert!(!text.contains('\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, value);
    }
}
