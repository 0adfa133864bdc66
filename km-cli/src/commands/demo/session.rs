//! The demo's MCP session through the real `km monitor`, narrated on stderr one exchange per
//! line: the handshake, plain calls, progress, a cancellation, then what the plugins are there
//! for: a secret in a tool call (for advanced-filters), an agent whose tool starts failing in a
//! row (for ml-analytics), and a server that changes a tool's definition mid-session (for
//! tool-guard).
//!
//! The session only gathers [`Facts`]; whether each plugin did its job is judged afterwards by
//! [`super::checks`], from the effects (what the server received, what the plugins recorded).
//! A session that breaks (km gone, an answer missing) is an error: the demo could not run.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::client::{is_progress, text, Answer, ScriptedClient};
use super::{say, Layout, Tools};
use crate::commands::Globals;
use crate::monitor::banner::Notices;

/// Successful `divide` calls before the failures: enough for ml-analytics to learn the tool's
/// error rate (its default warm-up is 20 learned outcomes behind a window of 20).
pub(super) const DIVIDE_OK: usize = 40;
/// Divisions by zero in a row: ml-analytics' default `error_min` is 5 failures in the window.
pub(super) const DIVIDE_BY_ZERO: usize = 5;

/// A secret in a request, for advanced-filters: a synthetic AWS access key id of the documented
/// format (not the documentation's example key, which the plugin only logs).
pub(super) const SECRET: &str = "AKIAZ7QW3RT5YU2IOP4N";

/// What the session showed, for the checks.
pub(super) struct Facts {
    /// The id of the `echo` call whose text carried [`SECRET`].
    pub(super) secret_call: u64,
    /// Whether the server's `notifications/tools/list_changed` reached the client.
    pub(super) list_changed_seen: bool,
    /// The tool names listed after the server changed `divide`, or the error the list got.
    pub(super) tools_after_change: std::result::Result<Vec<String>, Value>,
    /// The id of the `delete_notes` call (which the team policy blocks), and its answer.
    pub(super) team_call: (u64, Answer),
    /// The id of the `divide` call made after the change, and its answer.
    pub(super) changed_call: (u64, Answer),
    /// km's exit status.
    pub(super) status: i32,
}

/// Runs the session.
pub(super) fn run(
    tools: &Tools,
    layout: &Layout,
    globals: &Globals,
    notices: &Notices,
) -> Result<Facts> {
    let mut monitor = tools.km(&layout.home);
    if globals.quiet {
        monitor.arg("--quiet");
    }
    for _ in 0..globals.verbose {
        monitor.arg("--verbose");
    }
    monitor
        .arg("monitor")
        .arg("--")
        .arg(&tools.demo_server)
        .env("KM_DEMO_SERVER_RECORD", &layout.server_record)
        .env("KM_DEMO_SERVER_RUG_PULL_WHEN", &layout.rug_pull_trigger);
    // console-logger's line per message would drown the narration: it writes to a file, which
    // the checks read, unless -v asks to see it.
    if globals.verbose == 0 {
        monitor.env("KM_CONSOLE_LOGGER_OUTPUT", &layout.console_log);
    }
    say(
        notices,
        "running km monitor -- km-demo-server, driven by a scripted MCP client:",
    );
    let mut client = ScriptedClient::start(&mut monitor)?;
    let facts = converse(&mut client, layout, notices);
    let status = client.finish();
    let mut facts = facts?;
    facts.status = status?;
    Ok(facts)
}

fn converse(client: &mut ScriptedClient, layout: &Layout, notices: &Notices) -> Result<Facts> {
    let result = client.call(
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "km-demo-client", "version": env!("CARGO_PKG_VERSION") }
        }),
    )?;
    let info = &result["serverInfo"];
    say(
        notices,
        &format!(
            "initialize → {} {} (protocol {})",
            text(&info["name"]),
            text(&info["version"]),
            text(&result["protocolVersion"])
        ),
    );
    client.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))?;

    let names = tool_names(&client.call("tools/list", json!({}))?);
    say(notices, &format!("tools/list → {}", names.join(", ")));

    let result = client.call(
        "tools/call",
        json!({ "name": "echo", "arguments": { "text": "hello through km" } }),
    )?;
    say(
        notices,
        &format!(
            "tools/call echo → {:?}",
            text(&result["content"][0]["text"])
        ),
    );

    let count = client.request(
        "tools/call",
        json!({ "name": "slow_count", "arguments": { "count": 5, "delay_ms": 40 }, "_meta": { "progressToken": "count-5" } }),
    )?;
    let mut progress = 0;
    let result = client.response(count, |m| {
        progress += usize::from(is_progress(m, "count-5"));
    })?;
    say(
        notices,
        &format!(
            "tools/call slow_count → {progress} progress notifications, then {:?}",
            text(&result["content"][0]["text"])
        ),
    );

    cancelled_call(client, notices)?;

    client.call("ping", json!({}))?;
    say(notices, "ping → pong");

    let secret_call = secret_call(client, notices)?;
    let team_call = team_blocked_call(client, notices)?;
    failing_tool(client, notices)?;
    let mut facts = rug_pull(client, layout, notices)?;
    facts.secret_call = secret_call;
    facts.team_call = team_call;
    Ok(facts)
}

/// A call whose argument carries a secret, as when an agent pastes a key into a tool call.
fn secret_call(client: &mut ScriptedClient, notices: &Notices) -> Result<u64> {
    let id = client.request(
        "tools/call",
        json!({ "name": "echo", "arguments": { "text": format!("deploy with access key {SECRET}") } }),
    )?;
    let result = client.response(id, |_| {})?;
    say(
        notices,
        &format!(
            "tools/call echo with an AWS access key in its text → {:?}",
            text(&result["content"][0]["text"])
        ),
    );
    Ok(id)
}

/// A call of a tool the team's policy forbids (an agent working from an old list, or guessing).
fn team_blocked_call(client: &mut ScriptedClient, notices: &Notices) -> Result<(u64, Answer)> {
    let id = client.request(
        "tools/call",
        json!({ "name": "delete_notes", "arguments": {} }),
    )?;
    let answer = client.answer(id, |_| {})?;
    say(
        notices,
        &match &answer {
            Ok(result) => format!(
                "tools/call delete_notes → {:?}",
                text(&result["content"][0]["text"])
            ),
            Err(error) => format!(
                "tools/call delete_notes → error {}: {}",
                error["code"],
                text(&error["message"])
            ),
        },
    );
    Ok((id, answer))
}

/// Starts a long count, cancels it after its first progress, and checks that no answer comes.
fn cancelled_call(client: &mut ScriptedClient, notices: &Notices) -> Result<()> {
    let long = client.request(
        "tools/call",
        json!({ "name": "slow_count", "arguments": { "count": 100, "delay_ms": 30 }, "_meta": { "progressToken": "long" } }),
    )?;
    while !is_progress(&client.next_message()?, "long") {}
    client.send(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": long, "reason": "the demo changed its mind" }
    }))?;
    // A ping after the cancellation: once it is answered, the server has seen the cancellation.
    let ping = client.request("ping", json!({}))?;
    let mut answered = false;
    client.response(ping, |m| answered |= m.get("id") == Some(&json!(long)))?;
    // Long enough for a count step that was already under way to have answered, if it would.
    std::thread::sleep(Duration::from_millis(100));
    answered |= client
        .drain()
        .iter()
        .any(|m| m.get("id") == Some(&json!(long)));
    ensure!(!answered, "the cancelled call was answered anyway");
    say(
        notices,
        "tools/call slow_count (notifications/cancelled after its first step) → no answer, as MCP requires",
    );
    Ok(())
}

/// An agent that divides happily, then keeps dividing by zero.
fn failing_tool(client: &mut ScriptedClient, notices: &Notices) -> Result<()> {
    for i in 0..DIVIDE_OK {
        let result = client.call(
            "tools/call",
            json!({ "name": "divide", "arguments": { "a": 84 + i, "b": 2 } }),
        )?;
        ensure!(result["isError"] != json!(true), "divide failed: {result}");
    }
    let mut errors = 0;
    for _ in 0..DIVIDE_BY_ZERO {
        let result = client.call(
            "tools/call",
            json!({ "name": "divide", "arguments": { "a": 1, "b": 0 } }),
        )?;
        errors += usize::from(result["isError"] == json!(true));
    }
    ensure!(
        errors == DIVIDE_BY_ZERO,
        "divide by zero was an error {errors} times out of {DIVIDE_BY_ZERO}"
    );
    say(
        notices,
        &format!(
            "tools/call divide ×{} → {DIVIDE_OK} results, then {DIVIDE_BY_ZERO} tool errors in a row (\"cannot divide by zero\")",
            DIVIDE_OK + DIVIDE_BY_ZERO
        ),
    );
    Ok(())
}

/// The server changes `divide` mid-session; the client lists again and calls it.
fn rug_pull(client: &mut ScriptedClient, layout: &Layout, notices: &Notices) -> Result<Facts> {
    std::fs::write(&layout.rug_pull_trigger, b"")
        .with_context(|| format!("creating {}", layout.rug_pull_trigger.display()))?;
    // The server looks for its trigger before each message it reads: a ping is enough.
    let ping = client.request("ping", json!({}))?;
    let mut list_changed_seen = false;
    client.response(ping, |m| {
        list_changed_seen |=
            m.get("method").and_then(Value::as_str) == Some("notifications/tools/list_changed");
    })?;
    say(
        notices,
        &format!(
            "the server changes divide's definition (a rug pull){}",
            if list_changed_seen {
                " → notifications/tools/list_changed"
            } else {
                ""
            }
        ),
    );
    // A refused list is a fact for tool-guard's step, not a broken session (a content filter
    // refuses a poisoned list whole if it is let through).
    let list = client.request("tools/list", json!({}))?;
    let tools_after_change = client.answer(list, |_| {})?.map(|l| tool_names(&l));
    say(
        notices,
        &match &tools_after_change {
            Ok(names) => format!("tools/list → {}", names.join(", ")),
            Err(error) => format!("tools/list → error {}", error["code"]),
        },
    );
    let id = client.request(
        "tools/call",
        json!({ "name": "divide", "arguments": { "a": 1, "b": 2 } }),
    )?;
    let answer = client.answer(id, |_| {})?;
    say(
        notices,
        &match &answer {
            Ok(result) => format!(
                "tools/call divide → {:?}",
                text(&result["content"][0]["text"])
            ),
            Err(error) => format!("tools/call divide → error {}", error["code"]),
        },
    );
    Ok(Facts {
        secret_call: 0,
        team_call: (0, Ok(Value::Null)),
        list_changed_seen,
        tools_after_change,
        changed_call: (id, answer),
        status: 0,
    })
}

fn tool_names(list: &Value) -> Vec<String> {
    list["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
