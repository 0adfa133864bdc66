//! The monitor's JSON-RPC scanner, compiled from km's own source (private to km's monitor):
//! `scan`, `scan_prefix`, `batch_elements`, `request_target`, `string_text` on any bytes; every
//! range inside the line, a method that decodes, an id that is JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../km-cli/src/monitor/jsonrpc.rs"]
#[allow(dead_code, unreachable_pub)]
mod jsonrpc;

use std::ops::Range;

fn inside(range: &Option<Range<usize>>, len: usize) {
    if let Some(r) = range {
        assert!(r.start <= r.end && r.end <= len);
    }
}

fuzz_target!(|line: &[u8]| {
    let s = jsonrpc::scan(line);
    for r in [&s.id, &s.method, &s.cancels, &s.params, &s.progress] {
        inside(r, line.len());
    }
    if let Some(m) = &s.method {
        assert!(jsonrpc::string_text(&line[m.clone()]).is_some());
    }
    if let Some(id) = &s.id {
        assert!(serde_json::from_slice::<serde_json::Value>(&line[id.clone()]).is_ok());
    }
    for method in ["tools/call", "resources/read", "prompts/get"] {
        inside(&jsonrpc::request_target(line, method, &s.params), line.len());
    }
    for cut in [line.len() / 3, line.len() / 2, line.len()] {
        let (_, p) = jsonrpc::scan_prefix(&line[..cut]);
        for r in [&p.id, &p.method, &p.cancels, &p.params, &p.progress] {
            inside(r, cut);
        }
    }
    if let Some(elements) = jsonrpc::batch_elements(line) {
        let mut last = 0;
        for e in elements {
            assert!(last <= e.start && e.end <= line.len());
            last = e.end;
        }
    }
    let _ = jsonrpc::string_text(line);
});
