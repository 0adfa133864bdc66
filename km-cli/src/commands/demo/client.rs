//! `km demo`: a real MCP session through `km monitor`, on a fresh clone, with no network.
//!
//! It shows the whole product in one command, with nothing faked: the bundled plugin libraries
//! (found beside the km binary, where `cargo build --workspace` puts them) are signed with a fresh
//! Ed25519 key into a temporary `KM_HOME` by the real `km-sign`, the key is trusted with the real
//! `km trust add`, and the real `km monitor` (this very binary) runs `km-demo-server`, the small
//! MCP server shipped in the workspace. A scripted client then walks through an MCP session
//! (initialize, tools/list, a tool call with progress, a cancelled call, ping) and narrates it on
//! stderr, while the plugins' own lines (console-logger) show them at work.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::cli::DemoArgs;
use crate::commands::Globals;
use crate::home::KmHome;
use crate::monitor::banner::Notices;

/// The plugins bundled with km: (name, version, crate name of the library). The version is the
/// one the plugin reports, which its signature must match.
const BUNDLED: &[(&str, &str, &str)] = &[("console-logger", "1.0.0", "console_logger")];

/// How long the demo waits for any one answer before it gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `km demo`.
pub fn run(globals: &Globals, args: DemoArgs) -> Result<ExitCode> {
    let notices = Notices::new(globals.quiet, globals.verbose);
    let km = std::env::current_exe().context("finding the km binary")?;
    let bin_dir = km
        .parent()
        .context("the km binary has no directory")?
        .to_path_buf();
    let lib_dir = args.lib_dir.unwrap_or_else(|| bin_dir.clone());
    let server = sibling(&bin_dir, "km-demo-server")?;
    let km_sign = sibling(&bin_dir, "km-sign")?;

    let temp = tempfile::Builder::new()
        .prefix("km-demo-")
        .tempdir()
        .context("making a temporary KM_HOME")?;
    let home = temp.path().join("home");
    let keys = temp.path().join("keys");
    KmHome::ensure_private_dir(&home.join("plugins"))?;
    KmHome::ensure_private_dir(&keys)?;
    let key = keys.join("demo");
    say(
        &notices,
        &format!("KM_HOME={} (temporary, removed afterwards)", home.display()),
    );

    run_tool(
        Command::new(&km_sign).arg("keygen").arg("--out").arg(&key),
        "km-sign keygen",
    )?;
    for (name, version, crate_name) in BUNDLED {
        let file = library_file(crate_name);
        let source = lib_dir.join(&file);
        ensure!(
            source.is_file(),
            "{} is missing: build the workspace first (cargo build --workspace), or pass --lib-dir",
            source.display()
        );
        let installed = home.join("plugins").join(&file);
        std::fs::copy(&source, &installed)
            .with_context(|| format!("copying {} to {}", source.display(), installed.display()))?;
        // km refuses plugin files that others may write; the build output may be group-writable.
        std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod 0644 {}", installed.display()))?;
        run_tool(
            Command::new(&km_sign)
                .arg("sign")
                .arg("--key")
                .arg(key.with_extension("key"))
                .args(["--name", name, "--version", version, "--tier", "free"])
                .arg(&installed),
            "km-sign sign",
        )?;
    }
    run_tool(
        Command::new(&km)
            .arg("--home")
            .arg(&home)
            .args(["trust", "add", "--label", "km demo"])
            .arg(key.with_extension("pub")),
        "km trust add",
    )?;
    say(&notices, &format!("signed {} bundled plugin(s) with a fresh Ed25519 key; running km monitor -- km-demo-server", BUNDLED.len()));

    let mut monitor = Command::new(&km);
    monitor.arg("--home").arg(&home);
    if globals.quiet {
        monitor.arg("--quiet");
    }
    for _ in 0..globals.verbose {
        monitor.arg("--verbose");
    }
    monitor.arg("monitor").arg("--").arg(&server);
    let status = ScriptedClient::start(&mut monitor)?.script(&notices)?;
    ensure!(status == 0, "km monitor exited with status {status}");
    say(&notices, "done: the session ended cleanly (exit status 0)");
    Ok(ExitCode::SUCCESS)
}

fn say(notices: &Notices, text: &str) {
    notices.info(&format!("km demo ▸ {text}"));
}

/// `name` beside the km binary.
fn sibling(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    Ok(path)
}

fn library_file(crate_name: &str) -> String {
    format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Runs a helper to completion; its output is shown only when it fails.
fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(())
}

/// The scripted MCP client, talking to `km monitor` over its stdio.
struct ScriptedClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    next_id: u64,
}

impl ScriptedClient {
    fn start(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting km monitor")?;
        let stdin = child.stdin.take().context("km monitor's stdin")?;
        let stdout = child.stdout.take().context("km monitor's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(ScriptedClient {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 0,
        })
    }

    fn send(&mut self, message: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is already closed")?;
        let mut line = message.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .context("writing to km monitor")
    }

    fn request(&mut self, method: &str, params: Value) -> Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        Ok(id)
    }

    /// Waits for the response to `id`, passing every other message to `other`.
    fn response(&mut self, id: u64, mut other: impl FnMut(&Value)) -> Result<Value> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(message)
                    if message.get("id") == Some(&json!(id)) && message.get("method").is_none() =>
                {
                    if let Some(error) = message.get("error") {
                        bail!("request {id} failed: {error}");
                    }
                    return Ok(message.get("result").cloned().unwrap_or(Value::Null));
                }
                Ok(message) => other(&message),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no answer to request {id} within {ANSWER_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("km monitor closed its stdout before answering request {id}")
                }
            }
        }
    }

    fn script(mut self, notices: &Notices) -> Result<i32> {
        let outcome = self.converse(notices);
        // End the session the way a client does: close stdin; the server exits, and so does km.
        self.stdin = None;
        let status = wait(&mut self.child, Duration::from_secs(10));
        outcome?;
        let status = status?;
        Ok(status
            .code()
            .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }

    fn converse(&mut self, notices: &Notices) -> Result<()> {
        let init = self.request(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": { "name": "km-demo-client", "version": env!("CARGO_PKG_VERSION") }
            }),
        )?;
        let result = self.response(init, |_| {})?;
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
        self.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))?;

        let list = self.request("tools/list", json!({}))?;
        let tools = self.response(list, |_| {})?;
        let names: Vec<&str> = tools["tools"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        say(notices, &format!("tools/list → {}", names.join(", ")));

        let echo = self.request(
            "tools/call",
            json!({ "name": "echo", "arguments": { "text": "hello through km" } }),
        )?;
        let result = self.response(echo, |_| {})?;
        say(
            notices,
            &format!(
                "tools/call echo → {:?}",
                text(&result["content"][0]["text"])
            ),
        );

        let count = self.request(
            "tools/call",
            json!({ "name": "slow_count", "arguments": { "count": 5, "delay_ms": 60 }, "_meta": { "progressToken": "count-5" } }),
        )?;
        let mut progress = 0;
        let result = self.response(count, |m| {
            progress += usize::from(is_progress(m, "count-5"))
        })?;
        say(
            notices,
            &format!(
                "tools/call slow_count → {progress} progress notifications, then {:?}",
                text(&result["content"][0]["text"])
            ),
        );

        self.cancelled_call(notices)?;

        let ping = self.request("ping", json!({}))?;
        self.response(ping, |_| {})?;
        say(notices, "ping → pong");
        Ok(())
    }

    /// Starts a long count, cancels it after its first progress, and checks that no answer comes.
    fn cancelled_call(&mut self, notices: &Notices) -> Result<()> {
        let long = self.request(
            "tools/call",
            json!({ "name": "slow_count", "arguments": { "count": 100, "delay_ms": 50 }, "_meta": { "progressToken": "long" } }),
        )?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let message = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("waiting for progress of the long call")?;
            if is_progress(&message, "long") {
                break;
            }
        }
        self.send(&json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": long, "reason": "the demo changed its mind" }
        }))?;
        // A ping after the cancellation: once it is answered, the server has seen the cancellation.
        let ping = self.request("ping", json!({}))?;
        let mut answered = false;
        self.response(ping, |m| answered |= m.get("id") == Some(&json!(long)))?;
        std::thread::sleep(Duration::from_millis(150));
        while let Ok(m) = self.lines.try_recv() {
            answered |= m.get("id") == Some(&json!(long));
        }
        ensure!(!answered, "the cancelled call was answered anyway");
        say(
            notices,
            "tools/call slow_count (cancelled after its first step) → no answer, as MCP requires",
        );
        Ok(())
    }
}

fn is_progress(message: &Value, token: &str) -> bool {
    message.get("method").and_then(Value::as_str) == Some("notifications/progress")
        && message["params"]["progressToken"].as_str() == Some(token)
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn wait(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waiting for km monitor")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("km monitor did not exit within {limit:?} after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
