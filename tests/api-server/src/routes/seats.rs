//! The seats of a customer's subscription: the installations (km device identities) that use it,
//! against the seat limit of the customer's record. Authenticated by the current API key, as
//! `authorization: Bearer KEY`.
//!
//! - `GET /api/seats` → `{customer_id, seat_limit, seats: [{device_id, public_key, first_seen,
//!   last_seen, last_plugin}]}`: the installations holding a seat (`seat_limit` null: no limit).
//! - `DELETE /api/seats/{device}` → `{released}` (200), 404 when that device holds no seat: frees
//!   the seat for another installation (the released one claims a seat again at its next
//!   authentication, if one is free).
//!
//! Seats are claimed by signed authentications ([`super::auth`], `store::seats`).

use serde_json::json;

use crate::http::{Method, Request, Response};
use crate::router::{Params, Router};
use crate::state::AppState;

use super::internal;
use super::rotation::account;

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .get("/api/seats", seats)
        .route(Method::Delete, "/api/seats/{device}", release);
}

fn seats(state: &AppState, request: &Request, _: &Params) -> Response {
    let customer = match account(state, request) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match state.store.seats(&customer.id) {
        Ok(seats) => Response::json(
            200,
            &json!({
                "customer_id": customer.id,
                "seat_limit": customer.seat_limit,
                "seats": seats.iter().map(|s| json!({
                    "device_id": s.device_id,
                    "public_key": s.public_key,
                    "first_seen": s.first_seen,
                    "last_seen": s.last_seen,
                    "last_plugin": s.last_plugin,
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => internal("listing the seats", &e),
    }
}

fn release(state: &AppState, request: &Request, params: &Params) -> Response {
    let customer = match account(state, request) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let device = params.get("device").unwrap_or_default();
    match state.store.release_seat(&customer.id, device) {
        Ok(true) => {
            eprintln!(
                "km-api-server: customer {}: seat of device {device} released",
                customer.id
            );
            Response::json(200, &json!({ "released": device }))
        }
        Ok(false) => Response::error(
            404,
            &format!("device {device:?} holds no seat of this subscription"),
        ),
        Err(e) => internal("releasing the seat", &e),
    }
}
