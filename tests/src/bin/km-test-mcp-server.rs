//! `km-test-mcp-server`: an MCP server on stdio for the end-to-end tests of the plugins that
//! watch tool calls (ml-analytics): every tool can be made slow, failing or silent on demand.
//!
//! It answers `initialize`, `ping`, `tools/list` (tools `work`, `echo` and `hang`) and
//! `tools/call` of *any* tool name (so a test can call a tool for the first time), with the
//! call's `arguments`:
//! - `delay_ms` (default 5): how long the call takes;
//! - `fail`: `"rpc"` answers a JSON-RPC error (-32603), `"tool"` a result with `isError: true`;
//! - `progress` (default 0): how many `notifications/progress` to send first, when the call
//!   carries `_meta.progressToken`;
//! - `answer: false`, or the tool `hang`: no answer at all.
//!
//! Calls run on their own threads, so slow calls overlap and the server keeps reading. A
//! `notifications/cancelled` stops the named call without an answer. It exits when its stdin
//! closes, abandoning calls still running (what a server that crashes does).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

/// Writes whole lines to stdout, one at a time.
#[derive(Clone)]
struct Out(Arc<Mutex<io::Stdout>>);

impl Out {
    fn send(&self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        let stdout = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stdout = stdout.lock();
        let _ = stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush());
    }
}

type InFlight = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

fn main() {
    let out = Out(Arc::new(Mutex::new(io::stdout())));
    let in_flight: InFlight = Arc::default();
    for line in io::stdin().lock().split(b'\n') {
        let Ok(line) = line else { break };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(&line) {
            Ok(message) => handle(&message, &out, &in_flight),
            Err(e) => out.send(&json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": format!("parse error: {e}")}})),
        }
    }
}

fn handle(message: &Value, out: &Out, in_flight: &InFlight) {
    let id = message.get("id").cloned();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = |result: Value| {
        if let Some(id) = &id {
            out.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
    };
    match message.get("method").and_then(Value::as_str) {
        Some("initialize") => result(json!({
            "protocolVersion": params.get("protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "km-test-mcp-server", "version": env!("CARGO_PKG_VERSION")}
        })),
        Some("ping") => result(json!({})),
        Some("tools/list") => result(json!({"tools": [
            {"name": "work", "description": "Takes delay_ms, fails with fail = rpc | tool.",
             "inputSchema": {"type": "object"}},
            {"name": "echo", "description": "Returns its text.", "inputSchema": {"type": "object"}},
            {"name": "hang", "description": "Never answers.", "inputSchema": {"type": "object"}}
        ]})),
        Some("tools/call") => {
            if let Some(id) = id {
                call(id, params, out.clone(), in_flight.clone());
            }
        }
        Some("notifications/cancelled") => {
            if let Some(request) = params.get("requestId") {
                let flights = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(flag) = flights.get(&request.to_string()) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        Some(other) => {
            if let Some(id) = &id {
                out.send(&json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": format!("method not found: {other}")}}));
            }
        }
        None => {}
    }
}

fn call(id: Value, params: Value, out: Out, in_flight: InFlight) {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    let delay = Duration::from_millis(
        args.get("delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(5)
            .min(120_000),
    );
    let progress = args
        .get("progress")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(1000);
    let token = params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .cloned();
    let answers = name != "hang" && args.get("answer").and_then(Value::as_bool) != Some(false);
    let fail = args.get("fail").and_then(Value::as_str).map(str::to_owned);
    let cancelled = Arc::new(AtomicBool::new(false));
    let key = id.to_string();
    in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key.clone(), cancelled.clone());
    std::thread::spawn(move || {
        let steps = progress.max(1);
        for step in 1..=steps {
            std::thread::sleep(delay / steps as u32);
            if cancelled.load(Ordering::Relaxed) {
                break;
            }
            if let (Some(token), true) = (&token, step <= progress) {
                out.send(
                    &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": step, "total": progress}}),
                );
            }
        }
        in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        if !answers || cancelled.load(Ordering::Relaxed) {
            return;
        }
        let text = args.get("text").and_then(Value::as_str).unwrap_or("done");
        let answer = match fail.as_deref() {
            Some("rpc") => json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32603, "message": format!("{name} failed")}}),
            Some("tool") => json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": format!("{name} failed")}], "isError": true}}),
            _ => json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": text}], "isError": false}}),
        };
        out.send(&answer);
    });
}
