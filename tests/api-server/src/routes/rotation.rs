//! API key rotation by the customer, through the API. Authenticated by the current API key, as
//! `authorization: Bearer KEY`.
//!
//! - `POST /api/account/rotate-key` → `{customer_id, api_key, rotated_at}` (200): a new API key
//!   (`km_live_` and 32 random hex digits), shown this once; the server keeps its SHA-256 only.
//!   The old key is refused from this answer on (401 `api_key_rotated`), and a customers file
//!   still naming it does not bring it back (`store::api_keys`). Installed customer builds keep
//!   working with the new key without being reinstalled: they ask `POST /api/plugins/build-key`
//!   with it (see [`super::auth`]).
//!
//! The operator's way is the customers file: a new `api_key_sha256` for the customer applies
//! whatever the API did (a rotation made in the file is the source of truth, see
//! `store::customers`). That is also the answer when a leaked key was used to rotate the key
//! and so lock its owner out: a key that leaked can rotate itself away like its owner can.

use serde_json::json;

use crate::http::{Request, Response};
use crate::keys::random_hex;
use crate::router::{Params, Router};
use crate::state::AppState;
use crate::store::customers::Customer;

use super::auth::{identify, rfc3339};
use super::internal;

pub(super) fn register(router: &mut Router<AppState>) {
    router.post("/api/account/rotate-key", rotate_key);
}

/// The customer whose current API key the request carries as a bearer token.
pub(super) fn account(state: &AppState, request: &Request) -> Result<Customer, Response> {
    match request.bearer_token() {
        Some(key) => identify(state, key),
        None => Err(Response::error(
            401,
            "authenticate with the API key: authorization: Bearer KEY",
        )),
    }
}

fn rotate_key(state: &AppState, request: &Request, _: &Params) -> Response {
    let customer = match account(state, request) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let new_key = match random_hex(16) {
        Ok(hex) => format!("km_live_{hex}"),
        Err(e) => return internal("making an API key", &e),
    };
    let new_sha256 = km_durable::digest::sha256_hex(new_key.as_bytes());
    match state
        .store
        .rotate_api_key(&customer.id, &customer.api_key_sha256, &new_sha256)
    {
        Ok(at) => {
            eprintln!(
                "km-api-server: customer {}: API key rotated (new key's SHA-256 {new_sha256})",
                customer.id
            );
            Response::json(
                200,
                &json!({
                    "customer_id": customer.id,
                    "api_key": new_key,
                    "rotated_at": rfc3339(at),
                }),
            )
        }
        Err(e) => Response::error(409, &format!("{e}; try again")),
    }
}
