//! After the session: one step per plugin, each judged from the effect itself, never from what
//! a plugin says about itself on km's log: the demo server's record of what it received, the
//! answers the client got, what the reference API stored, and the plugins' own commands
//! (`km plugin NAME ...`), which read the files the plugins wrote.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::api::ApiServer;
use super::client::text;
use super::session::{Facts, DIVIDE_BY_ZERO, SECRET};
use super::team::{MEMBER, TEAM, VERSION};
use super::{output_of, Layout, Steps, Tools};

/// Runs every check, in the order the session showed the plugins at work.
pub(super) fn run(
    tools: &Tools,
    layout: &Layout,
    api: &ApiServer,
    facts: &Facts,
    steps: &mut Steps,
) {
    steps.record("km monitor", session_end(facts));
    steps.record("console-logger", console_logger(layout));
    steps.record("advanced-filters", advanced_filters(layout, facts));
    steps.record("ml-analytics", ml_analytics(tools, layout));
    steps.record("tool-guard", tool_guard(tools, layout, facts));
    steps.record(
        "team-collaboration",
        team_collaboration(tools, layout, facts),
    );
    steps.record("api-logger", api_logger(api));
    steps.record("compliance-reporting", compliance_reporting(tools, layout));
}

fn session_end(facts: &Facts) -> Result<String> {
    ensure!(
        facts.status == 0,
        "km monitor exited with status {}",
        facts.status
    );
    Ok("relayed the whole session and exited with the server's status 0".to_owned())
}

fn console_logger(layout: &Layout) -> Result<String> {
    let text = match std::fs::read_to_string(&layout.console_log) {
        Ok(text) => text,
        // With -v it writes on stderr, where its lines were shown.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok("logged every message on stderr, one line each (above)".to_owned())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", layout.console_log.display()))
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let sample = lines
        .iter()
        .find(|l| l.contains("notifications/cancelled"))
        .context("its log has no line for the client's notifications/cancelled")?;
    Ok(format!(
        "logged every message, one line each ({} lines), e.g. {:?}",
        lines.len(),
        squeeze(sample)
    ))
}

fn advanced_filters(layout: &Layout, facts: &Facts) -> Result<String> {
    let record = std::fs::read_to_string(&layout.server_record).with_context(|| {
        format!(
            "reading what the server received, {}",
            layout.server_record.display()
        )
    })?;
    ensure!(
        !record.contains(SECRET),
        "the secret reached the server, as its record shows"
    );
    let call = received(&layout.server_record)?
        .into_iter()
        .find(|m| m["id"] == facts.secret_call && m["method"] == "tools/call")
        .context("the call with the secret never reached the server")?;
    let got = call["params"]["arguments"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        got.contains("[REDACTED:"),
        "the server received {got:?}, without the redaction marker"
    );
    Ok(format!(
        "redacted the secret on its way to the server, which received {got:?}"
    ))
}

fn ml_analytics(tools: &Tools, layout: &Layout) -> Result<String> {
    let report = json_output(
        tools,
        layout,
        &["plugin", "ml-analytics", "report", "--json"],
    )?;
    let anomalies = report["anomalies"]
        .as_array()
        .context("its report has no anomalies list")?;
    let anomaly = anomalies
        .iter()
        .find(|a| a["kind"] == "error_rate" && a["tool"] == "divide")
        .with_context(|| {
            format!(
                "no error-rate anomaly of divide after {DIVIDE_BY_ZERO} failures in a row; anomalies: {}",
                Value::Array(anomalies.clone())
            )
        })?;
    Ok(format!(
        "noticed an anomaly: {}",
        anomaly["detail"]
            .as_str()
            .unwrap_or("error-rate spike of divide")
    ))
}

fn tool_guard(tools: &Tools, layout: &Layout, facts: &Facts) -> Result<String> {
    ensure!(
        facts.list_changed_seen,
        "the server's notifications/tools/list_changed did not reach the client"
    );
    let names = match &facts.tools_after_change {
        Ok(names) => names,
        Err(error) => bail!(
            "the client's tools/list was refused ({error}) instead of listing the unchanged tools"
        ),
    };
    ensure!(
        names.iter().any(|t| t == "echo"),
        "the unchanged tools are missing from the new list: {names:?}"
    );
    ensure!(
        !names.iter().any(|t| t == "divide"),
        "the changed divide was still offered to the client: {names:?}"
    );
    let (id, answer) = &facts.changed_call;
    let error = match answer {
        Err(error) => error,
        Ok(result) => bail!("the call of the changed divide was answered: {result}"),
    };
    ensure!(
        error["code"] == -32050,
        "the call of the changed divide got {error}, not tool-guard's error -32050"
    );
    let reached = received(&layout.server_record)?
        .iter()
        .any(|m| m["id"] == *id && m["method"] == "tools/call" && m["params"]["name"] == "divide");
    ensure!(
        !reached,
        "the call of the changed divide reached the server"
    );
    let listing = String::from_utf8_lossy(&output_of(
        tools
            .km(&layout.home)
            .args(["plugin", "tool-guard", "list"]),
        "km plugin tool-guard list",
    )?)
    .into_owned();
    ensure!(
        listing
            .lines()
            .any(|l| l.contains("divide") && l.contains("HELD")),
        "km plugin tool-guard list does not show divide held:\n{listing}"
    );
    Ok("held back the changed definition of divide: left out of the client's tools/list, its call answered with error -32050 without reaching the server, HELD in km plugin tool-guard list".to_owned())
}

fn team_collaboration(tools: &Tools, layout: &Layout, facts: &Facts) -> Result<String> {
    let (id, answer) = &facts.team_call;
    let error = match answer {
        Err(error) => error,
        Ok(result) => bail!("the call of delete_notes was answered: {result}"),
    };
    let policy = format!("team {TEAM}'s policy (version {VERSION})");
    let said = format!("{} {}", text(&error["message"]), error["data"]);
    ensure!(
        said.contains(&policy),
        "the call of delete_notes got {error}, which does not name {policy}"
    );
    let reached = received(&layout.server_record)?
        .iter()
        .any(|m| m["id"] == *id && m["method"] == "tools/call");
    ensure!(!reached, "the call of delete_notes reached the server");
    let feed = json_output(
        tools,
        layout,
        &["plugin", "team-collaboration", "sessions", "--json"],
    )?;
    let ours = feed
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["member"] == MEMBER && s["server"]["name"] == "km-demo-server");
    ensure!(
        ours,
        "the session's summary is not in the team feed: {feed}"
    );
    Ok(format!(
        "{policy}, signed by its admin key, refused delete_notes before it reached the server; the session's summary (no content) is in the team feed"
    ))
}

fn api_logger(api: &ApiServer) -> Result<String> {
    let events = api.events()?;
    ensure!(
        !events.is_empty(),
        "the API received no events; its log:\n{}",
        api.log().unwrap_or_default()
    );
    // Observers see what km forwarded: the secret advanced-filters redacted is not in them.
    let stored = Value::Array(events.clone()).to_string();
    ensure!(
        !stored.contains(SECRET),
        "the secret reached the API in api-logger's events"
    );
    Ok(format!(
        "{} events of the session reached the Kilometers API (POST /api/events/batch, stored by the reference server), the secret in none of them",
        events.len()
    ))
}

fn compliance_reporting(tools: &Tools, layout: &Layout) -> Result<String> {
    let verification = {
        let mut cmd = tools.km(&layout.home);
        cmd.args(["plugin", "compliance-reporting", "verify", "--json"]);
        let output = cmd
            .output()
            .context("running km plugin compliance-reporting verify")?;
        let value: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "km plugin compliance-reporting verify printed no JSON: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        value
    };
    ensure!(
        verification["ok"] == true,
        "the audit trail does not verify: {}",
        verification["problem"]
    );
    let records = verification["records"].as_u64().unwrap_or(0);
    ensure!(records > 0, "the audit trail is empty");
    ensure!(
        verification["unsigned"] == 0,
        "{} records are not covered by a signed checkpoint",
        verification["unsigned"]
    );
    ensure!(
        verification["witnessed"].as_u64().unwrap_or(0) >= 1,
        "no checkpoint was witnessed by the API"
    );

    let report = report_path()?;
    let report_arg = report.to_string_lossy().into_owned();
    output_of(
        tools.km(&layout.home).args([
            "plugin",
            "compliance-reporting",
            "report",
            "--framework",
            "soc2",
            "--out",
            &report_arg,
        ]),
        "km plugin compliance-reporting report",
    )?;
    output_of(
        tools.km(&layout.home).args([
            "plugin",
            "compliance-reporting",
            "verify-report",
            &report_arg,
        ]),
        "km plugin compliance-reporting verify-report",
    )?;
    let text = std::fs::read_to_string(&report).with_context(|| format!("reading {report_arg}"))?;
    ensure!(
        text.contains("divide"),
        "the report does not mention divide's change"
    );
    Ok(format!(
        "audit trail verified ({records} records, hash chain and signed checkpoints, witnessed by the API); SOC 2 report written to {report_arg}"
    ))
}

/// A new directory for the report, kept after the demo.
fn report_path() -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("km-demo-report-")
        .tempdir()
        .context("making a directory for the report")?
        .keep();
    Ok(dir.join("soc2-report.html"))
}

/// `km ARGS...` in the demo's home, its stdout parsed as JSON.
fn json_output(tools: &Tools, layout: &Layout, args: &[&str]) -> Result<Value> {
    let what = format!("km {}", args.join(" "));
    let stdout = output_of(tools.km(&layout.home).args(args), &what)?;
    serde_json::from_slice(&stdout).with_context(|| format!("{what} printed no JSON"))
}

/// The messages the demo server read (its `KM_DEMO_SERVER_RECORD`).
fn received(record: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(record)
        .with_context(|| format!("reading what the server received, {}", record.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// A log line with its runs of spaces squeezed, to fit on the step's line.
fn squeeze(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
