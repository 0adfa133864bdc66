//! Test controls (no authentication; loopback only like everything else), and the guard through
//! which every `/api/` request obeys them.
//!
//! - `POST /control/down`, `POST /control/up`: answer every `/api/` request with 503, or not.
//! - `POST /control/delay?ms=N`: wait N ms before answering `/api/` requests.
//! - `POST /control/tamper?mode=tier|oversized|malformed|foreign-key|none`: corrupt the next
//!   authentication answers in the chosen way (to test that plugins reject them).
//! - `GET /control/stats`: `{auth_requests, auth_ok, events_stored, duplicates, batches, down}`,
//!   counted since the server started.
//! - `GET /control/abuse`: `{threshold: {failures, window_secs}, signals: [{kind, subject_kind,
//!   subject, count, first_at, last_at, last_reason}]}`, the most recent first (see
//!   `store::abuse`).
//! - `GET /control/rate-limit`: `{limit: {requests, window_secs} | null, decisions: [{customer,
//!   path, at_ms, status, retry_after?}]}`: every rate-limit decision, oldest first, `at_ms` in
//!   milliseconds since the server started (see [`crate::limits`]).
//! - `--fail-after N`: after N `/api/` requests, behave as after `/control/down`.
//! - `--delay-ms MS`: the initial delay.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::http::{Request, Response};
use crate::router::{Params, Router};
use crate::state::{AppState, Stats, Tamper};

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .guard("/api/", api_guard)
        .post("/control/down", down)
        .post("/control/up", up)
        .post("/control/delay", delay)
        .post("/control/tamper", tamper)
        .get("/control/stats", stats)
        .get("/control/abuse", abuse)
        .get("/control/rate-limit", rate_limit);
}

/// Counts the request for `--fail-after`, waits the delay, and answers 503 while down. The
/// delay runs on the request's own thread, outside every lock, so the controls that end it are
/// answered meanwhile.
fn api_guard(state: &AppState, _: &Request) -> Option<Response> {
    let controls = &state.controls;
    let n = Stats::add(&state.stats.api_requests, 1);
    if controls.fail_after.is_some_and(|limit| n > limit) {
        controls.down.store(true, Ordering::SeqCst);
    }
    let delay = controls.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    controls
        .down
        .load(Ordering::SeqCst)
        .then(|| Response::error(503, "the reference API is down (test control)"))
}

fn down(state: &AppState, _: &Request, _: &Params) -> Response {
    state.controls.down.store(true, Ordering::SeqCst);
    Response::json(200, &json!({"down": true}))
}

fn up(state: &AppState, _: &Request, _: &Params) -> Response {
    state.controls.down.store(false, Ordering::SeqCst);
    Response::json(200, &json!({"down": false}))
}

fn delay(state: &AppState, request: &Request, _: &Params) -> Response {
    match request
        .query_param("ms")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(ms) => {
            state.controls.delay_ms.store(ms, Ordering::SeqCst);
            Response::json(200, &json!({"delay_ms": ms}))
        }
        None => Response::error(400, "expected ?ms=N"),
    }
}

fn tamper(state: &AppState, request: &Request, _: &Params) -> Response {
    let mode = request.query_param("mode").unwrap_or("none");
    let Some(parsed) = Tamper::parse(mode) else {
        let modes: Vec<&str> = Tamper::MODES.iter().map(|(n, _)| *n).collect();
        return Response::error(400, &format!("mode: one of {}", modes.join(", ")));
    };
    state.controls.set_tamper(parsed);
    Response::json(200, &json!({"tamper": parsed.as_str()}))
}

fn abuse(state: &AppState, _: &Request, _: &Params) -> Response {
    let signals = match state.store.abuse_signals() {
        Ok(s) => s,
        Err(e) => return super::internal("listing abuse signals", &e),
    };
    Response::json(
        200,
        &json!({
            "threshold": {
                "failures": state.abuse_threshold.requests,
                "window_secs": state.abuse_threshold.window.as_secs(),
            },
            "signals": signals,
        }),
    )
}

fn rate_limit(state: &AppState, _: &Request, _: &Params) -> Response {
    let limit = state
        .limiter
        .rate()
        .map(|r| json!({"requests": r.requests, "window_secs": r.window.as_secs()}));
    Response::json(
        200,
        &json!({"limit": limit, "decisions": state.limiter.log()}),
    )
}

fn stats(state: &AppState, _: &Request, _: &Params) -> Response {
    let s = &state.stats;
    Response::json(
        200,
        &json!({
            "auth_requests": s.auth_requests.load(Ordering::SeqCst),
            "auth_ok": s.auth_ok.load(Ordering::SeqCst),
            "events_stored": s.events_stored.load(Ordering::SeqCst),
            "duplicates": s.duplicates.load(Ordering::SeqCst),
            "batches": s.batches.load(Ordering::SeqCst),
            "down": state.controls.down.load(Ordering::SeqCst),
        }),
    )
}
