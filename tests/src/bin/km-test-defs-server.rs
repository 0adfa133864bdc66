//! A scripted MCP server for km's end-to-end tests of tool-guard: its definitions come from a
//! file the test edits between (or during) sessions, and it records every line it receives and
//! sends, so that a test can check what reached it and compare bytes.
//!
//! Usage: `km-test-defs-server DEFS RECEIVED SENT`
//!
//! - DEFS: a JSON object with `tools`, `prompts` and `resourceTemplates` arrays (each optional),
//!   read again for every list request;
//! - RECEIVED, SENT: files the server appends each line it reads, and each line it writes, to.
//!
//! It answers `initialize` (as `km-test-server` 1.0.0), `ping`, the three list methods,
//! `tools/call` (a text result naming the tool and its arguments), `prompts/get`, and `test/notify`
//! (answered, then followed by `notifications/tools/list_changed`); other requests get
//! `-32601`, notifications nothing. It exits when its standard input ends.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{BufRead as _, Write as _};
use std::path::Path;

use serde_json::{json, Value};

fn append(path: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(file, "{line}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn definitions(path: &Path, key: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let defs: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    defs.get(key).cloned().unwrap_or_else(|| json!([]))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [defs, received, sent] = args.as_slice() else {
        eprintln!("usage: km-test-defs-server DEFS RECEIVED SENT");
        std::process::exit(2);
    };
    let (defs, received, sent) = (Path::new(defs), Path::new(received), Path::new(sent));
    let stdout = std::io::stdout();
    let send = |line: String| {
        append(sent, &line);
        let mut out = stdout.lock();
        // The client may be gone; the server then ends with its input.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        append(received, &line);
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = request.get("id").cloned() else {
            continue; // a notification
        };
        let method = request["method"].as_str().unwrap_or("");
        let params = &request["params"];
        let result = match method {
            "initialize" => json!({
                "protocolVersion": params["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}, "resources": {}},
                "serverInfo": {"name": "km-test-server", "version": "1.0.0"},
            }),
            "ping" | "test/notify" => json!({}),
            "tools/list" => json!({"tools": definitions(defs, "tools")}),
            "prompts/list" => json!({"prompts": definitions(defs, "prompts")}),
            "resources/templates/list" => {
                json!({"resourceTemplates": definitions(defs, "resourceTemplates")})
            }
            "tools/call" => json!({
                "content": [{"type": "text", "text": format!("called {} with {}", params["name"].as_str().unwrap_or("?"), params["arguments"])}],
                "isError": false,
            }),
            "prompts/get" => json!({
                "messages": [{"role": "user", "content": {"type": "text", "text": format!("prompt {}", params["name"].as_str().unwrap_or("?"))}}],
            }),
            _ => {
                send(
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("no method {method}")}})
                        .to_string(),
                );
                continue;
            }
        };
        send(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string());
        if method == "test/notify" {
            send(
                json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}).to_string(),
            );
        }
    }
}
