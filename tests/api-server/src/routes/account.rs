//! The account an API key belongs to, for `km doctor` ("is my key valid?").
//!
//! - `GET /api/account` with `Authorization: Bearer KEY` → `{customer_id, tier, features,
//!   subscription_end}` (200), 401 without a key or for an unknown one. It says nothing a holder
//!   of the key could not learn from authenticating a plugin, and gives out no token.

use serde_json::json;

use crate::http::{Request, Response};
use crate::router::{Params, Router};
use crate::state::AppState;

use super::internal;

pub(super) fn register(router: &mut Router<AppState>) {
    router.get("/api/account", account);
}

fn account(state: &AppState, request: &Request, _: &Params) -> Response {
    let Some(key) = request.bearer_token() else {
        return Response::error(401, "no API key (Authorization: Bearer KEY)");
    };
    state.refresh_customers();
    let hash = km_durable::digest::sha256_hex(key.as_bytes());
    match state.store.customer_by_api_key(&hash) {
        Ok(Some(customer)) => Response::json(
            200,
            &json!({
                "customer_id": customer.id,
                "tier": customer.tier.as_str(),
                "features": customer.features,
                "subscription_end": customer.subscription_end,
            }),
        ),
        Ok(None) => Response::error(401, "unknown API key"),
        Err(e) => internal("looking the customer up", &e),
    }
}
