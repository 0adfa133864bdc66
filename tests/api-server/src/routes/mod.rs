//! The API's endpoints, one module per area; [`router`] puts them together.
//!
//! Endpoints:
//! - [`account`]: `GET /api/account` (whose API key this is: customer, tier, subscription end).
//! - [`auth`]: `POST /api/plugins/build-key` (a customer build's key, wrapped for the caller's
//!   API key), `POST /api/plugins/authenticate` (a subscription token for a plugin, for a request
//!   signed with the build's stamped credentials and km's device identity, within the seat
//!   limit) and `GET /api/public-key` (the token-signing key).
//! - [`rotation`]: `POST /api/account/rotate-key` (a new API key; the old one is refused from
//!   then on).
//! - [`seats`]: `GET /api/seats` and `DELETE /api/seats/{device}` (the installations using the
//!   subscription, and releasing one).
//! - [`audit`]: `POST /api/audit/checkpoints` and `GET /api/audit/checkpoints?key_id=...`
//!   (compliance-reporting's signed checkpoints, each checked to extend the last one held).
//! - [`events`]: `POST /api/events/batch` (api-logger's events, deduplicated by id).
//! - [`plugins`]: `GET /api/plugins/latest?name=NAME` and `GET /api/plugins/download/{file}`
//!   (packages from `--plugins-dir`).
//! - [`teams`]: `/api/teams/{team}/...` (team-collaboration's members, policies, approvals
//!   and session summaries) and its test controls under `/control/teams/`.
//! - [`control`]: the test controls under `/control/` (down, up, delay, tamper, stats, abuse,
//!   rate-limit), and the guard that makes every `/api/` request obey them.
//!
//! Rate limit and abuse signals: a request that identifies a customer (authentication by API
//! key, event batches by token) is counted against `--rate-limit` by [`admit`] and answered 429
//! with `Retry-After` past it; a failed authentication is recorded by [`auth_failed`] (see
//! `store::abuse`).
//!
//! Every `/api/` request, known or not, first passes the control guard (counted for
//! `--fail-after`, delayed, or answered 503 while down). An unknown path is 404, a known path
//! with another method 405, a body over [`MAX_REQUEST_BODY`] 413. Errors are
//! `{"error": "..."}` with the status that says what happened.
//!
//! A new area (seats, teams, audit checkpoints) is a module here with a
//! `pub(super) fn register(router: &mut Router<AppState>)`, called from [`router`]; its data is
//! a migration in `store::migrations` and a `store::<area>` module of `impl Store` methods.

pub(crate) mod account;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod plugins;
pub(crate) mod rotation;
pub(crate) mod seats;
pub(crate) mod teams;

use km_plugin_sdk::auth::{verify_token, TokenClaims};
use km_plugin_sdk::Tier;

use crate::http::{Request, Response};
use crate::router::Router;
use crate::state::AppState;

/// The claims of the request's bearer token, a subscription token of ours for `plugin`, or the
/// request's 401 answer (no token, or one that does not verify).
pub(crate) fn token_claims(
    state: &AppState,
    request: &Request,
    plugin: &str,
) -> Result<TokenClaims, Response> {
    let token = request
        .bearer_token()
        .ok_or_else(|| Response::error(401, "missing bearer token"))?;
    verify_token(
        token,
        state.signer.public_key(),
        plugin,
        None,
        crate::store::now(),
    )
    .map_err(|e| Response::error(401, &format!("bad token: {e}")))
}

/// [`token_claims`] of a token whose subscription is of `tier` at least; otherwise the request's
/// 403 answer, `refusal` (what needs the tier).
pub(crate) fn claims_of_tier(
    state: &AppState,
    request: &Request,
    plugin: &str,
    tier: Tier,
    refusal: &str,
) -> Result<TokenClaims, Response> {
    let claims = token_claims(state, request, plugin)?;
    if !claims.tier.satisfies(tier) {
        return Err(Response::error(403, refusal));
    }
    Ok(claims)
}

/// Admits a request of `customer` under the rate limit, or answers it 429 with `Retry-After`
/// (which also counts on the customer's `rate-limited` abuse signal).
pub(crate) fn admit(state: &AppState, customer: &str, request: &Request) -> Result<(), Response> {
    let Err(retry_after) = state.limiter.admit(customer, &request.path) else {
        return Ok(());
    };
    let rate = state.limiter.rate();
    let reason = format!(
        "rate limit of {} requests per {} s exceeded",
        rate.map_or(0, |r| r.requests),
        rate.map_or(0, |r| r.window.as_secs())
    );
    if let Err(e) = state
        .store
        .record_rate_limited(customer, &reason, crate::store::now())
    {
        eprintln!("km-api-server: recording a rate-limit signal: {e}");
    }
    Err(Response::error(
        429,
        &format!("{reason} for customer {customer}; retry after {retry_after} s"),
    )
    .with_header("retry-after", &retry_after.to_string()))
}

/// Records a failed authentication of `subject` (an abuse signal once they repeat).
pub(crate) fn auth_failed(
    state: &AppState,
    kind: crate::store::abuse::SubjectKind,
    subject: &str,
    reason: &str,
) {
    if let Err(e) = state.store.record_auth_failure(
        kind,
        subject,
        reason,
        crate::store::now(),
        state.abuse_threshold,
    ) {
        eprintln!("km-api-server: recording a failed authentication: {e}");
    }
}

/// The largest request body accepted (event batches are the largest requests).
pub(crate) const MAX_REQUEST_BODY: u64 = 8 * 1024 * 1024;

/// Every endpoint of the API.
pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new(MAX_REQUEST_BODY);
    control::register(&mut router);
    auth::register(&mut router);
    account::register(&mut router);
    rotation::register(&mut router);
    seats::register(&mut router);
    audit::register(&mut router);
    events::register(&mut router);
    plugins::register(&mut router);
    teams::register(&mut router);
    router
}

/// The body parsed as JSON of type `T`, or a 400 answer saying what was expected.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    request: &Request,
    expected: &str,
) -> Result<T, Response> {
    serde_json::from_slice(&request.body)
        .map_err(|e| Response::error(400, &format!("expected {expected} ({e})")))
}

/// A 500 answer for an internal failure, which is also logged (the client sees only that the
/// server failed, not how).
pub(crate) fn internal(what: &str, error: &dyn std::fmt::Display) -> Response {
    eprintln!("km-api-server: {what}: {error:#}");
    Response::error(500, &format!("{what} failed"))
}

#[cfg(test)]
mod tests;
