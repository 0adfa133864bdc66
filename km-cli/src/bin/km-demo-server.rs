//! `km-demo-server`: a small MCP server on stdio, shipped with km so that `km demo` (and tests)
//! can run a real MCP session with no network and nothing to install.
//!
//! It speaks enough of MCP to show what km sees: `initialize`, `ping`, `tools/list` and
//! `tools/call` with two tools, `echo` (answers at once) and `slow_count` (counts with a delay,
//! sending `notifications/progress` when the call carries a progress token, and stopping without
//! an answer when a `notifications/cancelled` names it, as MCP asks). Slow calls run on their own
//! threads so that the server keeps reading (and can be cancelled) meanwhile. It exits when its
//! stdin closes.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

/// The protocol version answered when the client does not propose one.
const PROTOCOL_VERSION: &str = "2025-06-18";

/// The longest `slow_count` accepted, so that a typo cannot keep a thread busy for hours.
const MAX_COUNT: u64 = 10_000;

/// Writes whole lines to stdout, one at a time.
#[derive(Clone)]
struct Out(Arc<Mutex<io::Stdout>>);

impl Out {
    fn send(&self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        let stdout = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stdout = stdout.lock();
        // When the client is gone there is nobody left to tell.
        let _ = stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush());
    }

    fn result(&self, id: &Value, result: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "result": result }));
    }

    fn error(&self, id: &Value, code: i64, message: &str) {
        self.send(
            &json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
        );
    }
}

/// Calls in flight that may be cancelled, by their id's JSON text.
type InFlight = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

fn main() {
    let out = Out(Arc::new(Mutex::new(io::stdout())));
    let in_flight: InFlight = Arc::default();
    let stdin = io::stdin();
    for line in stdin.lock().split(b'\n') {
        let Ok(line) = line else { break };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(&line) {
            Ok(message) => handle(&message, &out, &in_flight),
            Err(e) => out.error(&Value::Null, -32700, &format!("parse error: {e}")),
        }
    }
}

fn handle(message: &Value, out: &Out, in_flight: &InFlight) {
    let method = message.get("method").and_then(Value::as_str);
    let id = message.get("id");
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    match (method, id) {
        (Some("initialize"), Some(id)) => {
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION);
            out.result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": { "tools": { "listChanged": false } },
                    "serverInfo": { "name": "km-demo-server", "version": env!("CARGO_PKG_VERSION") },
                    "instructions": "A demo server shipped with km: try the echo and slow_count tools."
                }),
            );
        }
        (Some("ping"), Some(id)) => out.result(id, json!({})),
        (Some("tools/list"), Some(id)) => out.result(id, json!({ "tools": tools() })),
        (Some("tools/call"), Some(id)) => call(id, &params, out, in_flight),
        (Some("notifications/cancelled"), None) => {
            if let Some(request) = params.get("requestId") {
                let flights = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(flag) = flights.get(&request.to_string()) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        (Some(_), None) => {} // other notifications (initialized, ...) need no answer
        (Some(other), Some(id)) => out.error(id, -32601, &format!("method not found: {other}")),
        (None, _) => {} // a response to nothing we asked, or not JSON-RPC: ignore
    }
}

fn tools() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns the text it is given.",
            "inputSchema": {
                "type": "object",
                "properties": { "text": { "type": "string" } },
                "required": ["text"]
            }
        },
        {
            "name": "slow_count",
            "description": "Counts to `count`, one step every `delay_ms`, reporting progress; can be cancelled.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "count": { "type": "integer", "minimum": 1, "maximum": MAX_COUNT },
                    "delay_ms": { "type": "integer", "minimum": 0 }
                },
                "required": ["count"]
            }
        }
    ])
}

fn call(id: &Value, params: &Value, out: &Out, in_flight: &InFlight) {
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    match params.get("name").and_then(Value::as_str) {
        Some("echo") => {
            let text = arguments
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.result(
                id,
                json!({ "content": [{ "type": "text", "text": text }], "isError": false }),
            );
        }
        Some("slow_count") => {
            let count = arguments
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(3)
                .clamp(1, MAX_COUNT);
            let delay = Duration::from_millis(
                arguments
                    .get("delay_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(100)
                    .min(60_000),
            );
            let token = params
                .get("_meta")
                .and_then(|m| m.get("progressToken"))
                .cloned();
            let cancelled = Arc::new(AtomicBool::new(false));
            let key = id.to_string();
            in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), cancelled.clone());
            let (id, out, in_flight) = (id.clone(), out.clone(), in_flight.clone());
            std::thread::spawn(move || {
                let finished = count_slowly(count, delay, token.as_ref(), &cancelled, &out);
                in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
                if finished {
                    let text = format!("counted to {count}");
                    out.result(
                        &id,
                        json!({ "content": [{ "type": "text", "text": text }], "isError": false }),
                    );
                }
            });
        }
        Some(other) => out.error(id, -32602, &format!("unknown tool: {other}")),
        None => out.error(id, -32602, "tools/call needs a tool name"),
    }
}

/// Counts, sending progress; `false` when cancelled (then no answer is sent, as MCP asks).
fn count_slowly(
    count: u64,
    delay: Duration,
    token: Option<&Value>,
    cancelled: &AtomicBool,
    out: &Out,
) -> bool {
    for step in 1..=count {
        std::thread::sleep(delay);
        if cancelled.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(token) = token {
            out.send(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": { "progressToken": token, "progress": step, "total": count, "message": format!("step {step} of {count}") }
            }));
        }
    }
    !cancelled.load(Ordering::Relaxed)
}
