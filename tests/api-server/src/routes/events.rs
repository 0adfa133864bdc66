//! Event ingestion: `POST /api/events/batch`.
//!
//! `authorization: Bearer <token>` (a token this server signed for api-logger, Pro or above) and
//! `{events: [{id, ...}]}` → `{accepted, duplicates}`. Events are deduplicated by `id` across
//! batches, customers and restarts (see `store::events`), and stored with the `customer_id` of
//! the token. 401 without a valid token, 403 below Pro, 400 for a body that is not a batch or an
//! event without a string id (then nothing of the batch is stored). Past `--rate-limit`, 429 with
//! `Retry-After` (counted for the token's customer).

use km_plugin_sdk::Tier;
use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::router::{Params, Router};
use crate::state::{AppState, Stats};
use crate::store::events::event_id;

use super::{admit, internal, token_claims};

pub(super) fn register(router: &mut Router<AppState>) {
    router.post("/api/events/batch", batch);
}

fn batch(state: &AppState, request: &Request, _: &Params) -> Response {
    let claims = match token_claims(state, request, "api-logger") {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    if let Err(limited) = admit(state, &claims.customer_id, request) {
        return limited;
    }
    if !claims.tier.satisfies(Tier::Pro) {
        return Response::error(403, "event ingestion needs a Pro subscription");
    }
    let events = serde_json::from_slice::<Value>(&request.body)
        .ok()
        .and_then(|mut batch| match batch.get_mut("events").map(Value::take) {
            Some(Value::Array(events)) => Some(events),
            _ => None,
        });
    let Some(events) = events else {
        return Response::error(400, "expected {\"events\": [...]}");
    };
    if events.iter().any(|e| event_id(e).is_none()) {
        return Response::error(400, "every event needs a string id");
    }
    let report = match state.store.ingest_events(&claims.customer_id, &events) {
        Ok(r) => r,
        Err(e) => return internal("storing events", &e),
    };
    Stats::add(&state.stats.batches, 1);
    Stats::add(&state.stats.events_stored, report.accepted);
    Stats::add(&state.stats.duplicates, report.duplicates);
    Response::json(
        200,
        &json!({"accepted": report.accepted, "duplicates": report.duplicates}),
    )
}
