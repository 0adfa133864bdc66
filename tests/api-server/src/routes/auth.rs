//! Plugin authentication: subscription tokens, and the public key plugins verify them with.
//!
//! - `POST /api/plugins/authenticate`: `{plugin_name, plugin_version, required_tier, api_key,
//!   customer_id?, customer_token?}` → `{token, customer_id, tier, features, expires_at}` (200);
//!   401 for an unknown API key; 403 for another customer's build (its stamped customer id or
//!   token does not match) or an ended subscription. The token is bound to customer, plugin,
//!   tier and features, and expires after `--token-ttl` or at the end of the subscription,
//!   whichever is first. The tamper control corrupts answers here. Past `--rate-limit`, 429
//!   with `Retry-After` (counted per customer, once the API key names one). Every 401 and 403
//!   is recorded as a failed authentication of its subject (the customer of the key; for an
//!   unknown key, the customer the build claims to be, else a digest prefix of the key).
//! - `GET /api/public-key`: `{"public_key": "<base64>"}`.

use km_plugin_sdk::auth::{AuthAnswerBody, AuthRequestBody, TokenPayload};
use serde_json::json;

use crate::http::{Request, Response};
use crate::keys::{random_hex, TokenSigner};
use crate::router::{Params, Router};
use crate::state::{AppState, Stats, Tamper};
use crate::store::now;

use super::{admit, auth_failed, internal, json_body};
use crate::store::abuse::SubjectKind;

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .post("/api/plugins/authenticate", authenticate)
        .get("/api/public-key", public_key);
}

fn public_key(state: &AppState, _: &Request, _: &Params) -> Response {
    Response::json(
        200,
        &json!({"public_key": state.signer.public_key_base64()}),
    )
}

fn authenticate(state: &AppState, request: &Request, _: &Params) -> Response {
    Stats::add(&state.stats.auth_requests, 1);
    let req: AuthRequestBody = match json_body(
        request,
        "{plugin_name, plugin_version, required_tier, api_key, ...}",
    ) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    state.refresh_customers();
    let hash = km_durable::digest::sha256_hex(req.api_key.as_bytes());
    let customer = match state.store.customer_by_api_key(&hash) {
        Ok(Some(c)) => c,
        Ok(None) => {
            let reason = "unknown API key";
            match &req.customer_id {
                Some(claimed) => auth_failed(state, SubjectKind::Customer, claimed, reason),
                None => auth_failed(state, SubjectKind::ApiKey, &hash[..16], reason),
            }
            return Response::error(401, reason);
        }
        Err(e) => return internal("looking the customer up", &e),
    };
    if let Err(limited) = admit(state, &customer.id, request) {
        return limited;
    }
    let refuse = |reason: &str| {
        auth_failed(state, SubjectKind::Customer, &customer.id, reason);
        Response::error(403, reason)
    };
    if req
        .customer_id
        .as_ref()
        .is_some_and(|id| *id != customer.id)
    {
        return refuse("this plugin build belongs to another customer");
    }
    if let (Some(expected), Some(given)) = (&customer.customer_token, &req.customer_token) {
        if expected != given {
            return refuse("the customer token of this build is not valid");
        }
    }
    let now = now();
    if customer.subscription_end <= now {
        return refuse(&format!(
            "the subscription of {} ended at {}",
            customer.id, customer.subscription_end
        ));
    }
    let tamper = state.controls.tamper();
    let jti = match random_hex(12) {
        Ok(j) => j,
        Err(e) => return internal("making a token id", &e),
    };
    let payload = TokenPayload {
        v: 1,
        cus: customer.id.clone(),
        plg: req.plugin_name.clone(),
        tier: customer.tier,
        feat: customer.features.clone(),
        iat: now,
        exp: now
            .saturating_add(state.token_ttl)
            .min(customer.subscription_end),
        jti,
    };
    let signed = if tamper == Tamper::ForeignKey {
        TokenSigner::generate().and_then(|other| other.sign_token(&payload))
    } else {
        state.signer.sign_token(&payload)
    };
    let token = match signed {
        Ok(t) => t,
        Err(e) => return internal("signing the token", &e),
    };
    let mut answer = AuthAnswerBody {
        token,
        customer_id: customer.id,
        tier: customer.tier.as_str().to_owned(),
        features: customer.features,
        expires_at: payload.exp,
    };
    match tamper {
        Tamper::Tier => answer.tier = "enterprise".to_owned(),
        Tamper::Malformed => return Response::json(200, &json!({"token": 42})),
        Tamper::Oversized => {
            let filler = "x".repeat(200 * 1024);
            return Response::json(200, &json!({"token": answer.token, "padding": filler}));
        }
        Tamper::None | Tamper::ForeignKey => {}
    }
    Stats::add(&state.stats.auth_ok, 1);
    match serde_json::to_value(&answer) {
        Ok(v) => Response::json(200, &v),
        Err(e) => internal("serialising the answer", &e),
    }
}
