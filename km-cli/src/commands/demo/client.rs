//! The demo's scripted MCP client: it talks to `km monitor` over its stdio the way an MCP client
//! does (one JSON-RPC message per line, a request at a time, notifications seen on the way), so
//! that everything the demo shows went through the real relay and the real plugins.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// How long the demo waits for any one answer before it gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long km may take to end after the client closed its stdin (the plugins' last flushes,
/// the audit trail's checkpoint).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The scripted MCP client, talking to `km monitor` over its stdio.
pub(super) struct ScriptedClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    next_id: u64,
}

/// An answer: its result, or the JSON-RPC error it carried.
pub(super) type Answer = std::result::Result<Value, Value>;

impl ScriptedClient {
    /// Starts `cmd` (a `km monitor`) with piped stdin and stdout; its stderr is the demo's.
    pub(super) fn start(cmd: &mut Command) -> Result<Self> {
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

    pub(super) fn send(&mut self, message: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is already closed")?;
        let mut line = message.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .context("writing to km monitor")
    }

    /// Sends a request; its id.
    pub(super) fn request(&mut self, method: &str, params: Value) -> Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        Ok(id)
    }

    /// Waits for the answer to `id`, passing every other message to `other`.
    pub(super) fn answer(&mut self, id: u64, mut other: impl FnMut(&Value)) -> Result<Answer> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(message)
                    if message.get("id") == Some(&json!(id)) && message.get("method").is_none() =>
                {
                    if let Some(error) = message.get("error") {
                        return Ok(Err(error.clone()));
                    }
                    return Ok(Ok(message.get("result").cloned().unwrap_or(Value::Null)));
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

    /// Waits for the result of `id`; an error answer is an error.
    pub(super) fn response(&mut self, id: u64, other: impl FnMut(&Value)) -> Result<Value> {
        match self.answer(id, other)? {
            Ok(result) => Ok(result),
            Err(error) => bail!("request {id} failed: {error}"),
        }
    }

    /// A request and its result.
    pub(super) fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.request(method, params)?;
        self.response(id, |_| {})
    }

    /// The next message that is not an answer, within the answer timeout.
    pub(super) fn next_message(&mut self) -> Result<Value> {
        self.lines
            .recv_timeout(ANSWER_TIMEOUT)
            .context("waiting for a message from km monitor")
    }

    /// The messages already received and not yet read.
    pub(super) fn drain(&mut self) -> Vec<Value> {
        self.lines.try_iter().collect()
    }

    /// Ends the session the way a client does: closes stdin; the server exits, and so does km.
    /// km's exit status as a number (128+N for signal N).
    pub(super) fn finish(mut self) -> Result<i32> {
        self.stdin = None;
        let status = wait(&mut self.child, EXIT_TIMEOUT)?;
        Ok(status
            .code()
            .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }
}

impl Drop for ScriptedClient {
    fn drop(&mut self) {
        // A script that failed half-way must not leave km running behind the demo.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) fn is_progress(message: &Value, token: &str) -> bool {
    message.get("method").and_then(Value::as_str) == Some("notifications/progress")
        && message["params"]["progressToken"].as_str() == Some(token)
}

/// A JSON string as text, anything else as JSON.
pub(super) fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn wait(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waiting for km monitor")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("km monitor did not exit within {limit:?} after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
