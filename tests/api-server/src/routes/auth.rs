//! Plugin authentication: build keys, signed requests, seats, subscription tokens, and the
//! public key plugins verify tokens with.
//!
//! - `POST /api/plugins/build-key`: `{plugin_name, api_key, build_id, customer_hash}` →
//!   `{build_key}` (200): the build key of the customer build `build_id`, derived from the
//!   customer secret (`customer_token` of the customer's record) and wrapped for `api_key`
//!   (`km_plugin_sdk::credentials`). This is how an installed build keeps working after its
//!   customer rotated the API key: the wrap is made for whatever key is current. 401 for an
//!   unknown or rotated-away key; 403 when the build is another customer's (its customer hash is
//!   not the key holder's) or the customer has no secret on record. Rate-limited and recorded
//!   as failed authentications like `authenticate`.
//! - `POST /api/plugins/authenticate`: `{plugin_name, plugin_version, required_tier, api_key,
//!   customer_id}`, signed by the build's request key (`km_plugin_sdk::request`: `km-build`,
//!   `km-timestamp`, `km-nonce`, `km-signature`) and, through km, by the installation's device key
//!   (`km_signing::device`) → `{token, customer_id, tier, features, expires_at}` (200). Checked in
//!   this order, each refusal `{"error": ..., "code": ...}`:
//!   1. the API key (401 `unknown_api_key`, or `api_key_rotated` with when);
//!   2. the build's customer (403 `another_customer`);
//!   3. the signature headers: absent is 403 `unsigned_request` (a build of credentials format 1,
//!      from before signed requests, which sent its customer token in clear), malformed 400;
//!   4. the customer secret on record (403 `no_customer_secret`);
//!   5. the timestamp, within `MAX_SKEW_SECS` (300 s) of the server's clock (401
//!      `stale_request`); checked before the signature, as it costs nothing;
//!   6. the signature, by the key derived from the customer secret and the build id (401
//!      `bad_signature`: not signed with this build's stamped credentials);
//!   7. the nonce, recorded once until the timestamp expires (401 `replayed_request`);
//!   8. the subscription's end (403 `subscription_ended`);
//!   9. the device signature when present (401 `bad_device_signature`), and the seat: a
//!      customer with a seat limit needs a device identity (403 `device_required`) and a seat
//!      held or free (403 `seat_limit`); without a limit the device is recorded as a seat all
//!      the same, for the list.
//!
//!   The token is bound to customer, plugin, tier and features, and expires after
//!   `--token-ttl` or at the end of the subscription, whichever is first. The tamper control
//!   corrupts answers here. Past `--rate-limit`, 429 with `Retry-After` (counted per customer,
//!   once the API key names one). Every 401 and 403 is recorded as a failed authentication of
//!   its subject (the customer of the key; for an unknown or rotated-away key, the customer the
//!   build claims to be, else a digest prefix of the key) and, when the request names a device
//!   (`km-device-key`, verified or not), of that device ([`named_device`]).
//! - `GET /api/public-key`: `{"public_key": "<base64>"}`.

use km_plugin_sdk::auth::{
    AuthAnswerBody, AuthRequestBody, BuildKeyAnswerBody, BuildKeyRequestBody, TokenPayload,
};
use km_plugin_sdk::credentials::{self, BUILD_ID_LEN};
use km_plugin_sdk::request::{RequestError, RequestSignature, MAX_SKEW_SECS};
use serde_json::json;

use crate::http::{Request, Response};
use crate::keys::{random_hex, TokenSigner};
use crate::router::{Params, Router};
use crate::state::{AppState, Stats, Tamper};
use crate::store::customers::Customer;
use crate::store::now;
use crate::store::seats::{Claim, Claimant};

use super::{admit, auth_failed, internal, json_body};
use crate::store::abuse::SubjectKind;

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .post("/api/plugins/build-key", build_key)
        .post("/api/plugins/authenticate", authenticate)
        .get("/api/public-key", public_key);
}

/// `{"error": message, "code": code}`: the message for people (km plugin-status shows it), the
/// code for programs.
pub(super) fn refuse(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({ "error": message, "code": code }))
}

/// The active customer whose API key is `api_key`, or the 401 that says why there is none.
pub(super) fn identify(state: &AppState, api_key: &str) -> Result<Customer, Response> {
    state.refresh_customers();
    let hash = km_durable::digest::sha256_hex(api_key.as_bytes());
    match state.store.customer_by_api_key(&hash) {
        Ok(Some(customer)) => return Ok(customer),
        Ok(None) => {}
        Err(e) => return Err(internal("looking the customer up", &e)),
    }
    match state.store.revoked_api_key(&hash) {
        Ok(Some(at)) => Err(refuse(
            401,
            "api_key_rotated",
            &format!(
                "this API key was replaced by a rotation at {}; configure the new one \
                 (km init --api-key NEW)",
                rfc3339(at)
            ),
        )),
        Ok(None) => Err(refuse(401, "unknown_api_key", "unknown API key")),
        Err(e) => Err(internal("looking the key up", &e)),
    }
}

/// The device a request names: the key id of the public key in its `km-device-key` header,
/// whether or not the device signature verifies (a forged or stale signature is a failure of
/// the device it claims to be, as an unknown key is one of the customer its build claims).
/// `None` when the request names no device, or the header holds no public key: then there is
/// no device id to record it under (its other subject still is).
fn named_device(request: &Request) -> Option<String> {
    use base64::Engine as _;
    let key = request.header(km_signing::device::HEADER_KEY)?;
    let spki = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()?;
    let key = km_signing::PublicKey::from_spki_der(&spki).ok()?;
    Some(key.key_id().to_string())
}

/// Records `answer`, when it refuses the authentication (401, 403), as a failure of `subject`
/// and of the device the request names; returns it. Other answers (400 for a malformed
/// request, 500 for the server's own failure) are no failed authentication.
fn refused(
    state: &AppState,
    request: &Request,
    kind: SubjectKind,
    subject: &str,
    answer: Response,
) -> Response {
    if matches!(answer.status, 401 | 403) {
        let reason = error_of(&answer);
        auth_failed(state, kind, subject, &reason);
        if let Some(device) = named_device(request) {
            auth_failed(state, SubjectKind::Device, &device, &reason);
        }
    }
    answer
}

/// Records a refusal of `identify` under the subject a request with an unknown or
/// rotated-away key has: the customer its build claims to be when that customer exists
/// (`claimed`), else a digest prefix of the key (never the key itself).
fn unidentified(
    state: &AppState,
    request: &Request,
    claimed: Option<&str>,
    api_key: &str,
    answer: Response,
) -> Response {
    match claimed {
        Some(customer) => refused(state, request, SubjectKind::Customer, customer, answer),
        None => {
            let hash = km_durable::digest::sha256_hex(api_key.as_bytes());
            refused(state, request, SubjectKind::ApiKey, &hash[..16], answer)
        }
    }
}

/// The `error` of a refusal, for the abuse record.
fn error_of(answer: &Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("refused (HTTP {})", answer.status))
}

pub(super) fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn public_key(state: &AppState, _: &Request, _: &Params) -> Response {
    Response::json(
        200,
        &json!({"public_key": state.signer.public_key_base64()}),
    )
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let lower = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    lower.then(|| hex::decode(text).ok()?.try_into().ok())?
}

fn another_customer() -> Response {
    refuse(
        403,
        "another_customer",
        "this plugin build belongs to another customer",
    )
}

fn no_secret(customer: &Customer) -> Response {
    refuse(
        403,
        "no_customer_secret",
        &format!(
            "customer {} has no customer secret on record (customer_token), so none of its \
             customer builds can be opened or checked",
            customer.id
        ),
    )
}

fn build_key(state: &AppState, request: &Request, _: &Params) -> Response {
    let req: BuildKeyRequestBody =
        match json_body(request, "{plugin_name, api_key, build_id, customer_hash}") {
            Ok(r) => r,
            Err(answer) => return answer,
        };
    let customer = match identify(state, &req.api_key) {
        Ok(c) => c,
        Err(answer) => {
            // The subject: the customer the build claims to be stamped for, else the key.
            let claimed = state
                .store
                .customer_with_hash(&req.customer_hash)
                .ok()
                .flatten();
            return unidentified(state, request, claimed.as_deref(), &req.api_key, answer);
        }
    };
    if let Err(limited) = admit(state, &customer.id, request) {
        return limited;
    }
    // Every refusal from here on is a failed authentication of this customer.
    let failed = |answer| refused(state, request, SubjectKind::Customer, &customer.id, answer);
    let (Some(build_id), Some(customer_hash)) = (
        hex_array::<BUILD_ID_LEN>(&req.build_id),
        hex_array::<32>(&req.customer_hash),
    ) else {
        return Response::error(
            400,
            "build_id must be 32 and customer_hash 64 lower-case hex digits",
        );
    };
    if req.customer_hash != credentials::customer_hash(&customer.id) {
        return failed(another_customer());
    }
    let Some(secret) = &customer.customer_token else {
        return failed(no_secret(&customer));
    };
    // A device identity, when km added one, must be genuine; the seat is claimed by the signed
    // authentication that follows, not here.
    if let Err(e) = km_signing::device::verify_request(
        |name| request.header(name),
        request.method.as_str(),
        &target(request),
        &request.body,
        now(),
    ) {
        return failed(refuse(
            401,
            "bad_device_signature",
            &format!("device identity: {e}"),
        ));
    }
    let key = credentials::build_key(secret, &build_id);
    match credentials::wrap_build_key(&key, &req.api_key, &build_id, &customer_hash) {
        Ok(build_key) => match serde_json::to_value(BuildKeyAnswerBody { build_key }) {
            Ok(v) => Response::json(200, &v),
            Err(e) => internal("serialising the answer", &e),
        },
        Err(e) => internal("wrapping the build key", &e),
    }
}

/// The path and query as the client signed them.
fn target(request: &Request) -> String {
    if request.query.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query)
    }
}

fn signature_refusal(error: &RequestError) -> Response {
    match error {
        RequestError::Stale { .. } => refuse(401, "stale_request", &error.to_string()),
        RequestError::BadSignature => refuse(401, "bad_signature", &error.to_string()),
        _ => refuse(400, "malformed_signature", &error.to_string()),
    }
}

/// Checks the signature, the timestamp and the nonce of a request by `customer`.
fn check_signed(
    state: &AppState,
    request: &Request,
    customer: &Customer,
    now: i64,
) -> Result<(), Response> {
    let signature = match RequestSignature::from_headers(|name| request.header(name)) {
        Ok(Some(signature)) => signature,
        Ok(None) => {
            return Err(refuse(
                403,
                "unsigned_request",
                "unsigned authentication request: this plugin build predates signed requests \
                 (credentials format 1); install a new customer build (km-sign build-plugin)",
            ))
        }
        Err(e) => return Err(signature_refusal(&e)),
    };
    let Some(secret) = &customer.customer_token else {
        return Err(no_secret(customer));
    };
    signature
        .check_timestamp(now)
        .map_err(|e| signature_refusal(&e))?;
    let build_id = signature.build_id().map_err(|e| signature_refusal(&e))?;
    signature
        .verify(
            &credentials::request_key(secret, &build_id),
            request.method.as_str(),
            &target(request),
            &request.body,
        )
        .map_err(|e| signature_refusal(&e))?;
    match state.store.use_nonce(
        &customer.id,
        &signature.nonce,
        signature.timestamp.saturating_add(MAX_SKEW_SECS),
        now,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refuse(
            401,
            "replayed_request",
            "replayed request: its nonce was used already",
        )),
        Err(e) => Err(internal("recording the nonce", &e)),
    }
}

/// Checks the device identity and claims (or refreshes) its seat.
fn check_seat(
    state: &AppState,
    request: &Request,
    customer: &Customer,
    plugin: &str,
    now: i64,
) -> Result<(), Response> {
    let device = km_signing::device::verify_request(
        |name| request.header(name),
        request.method.as_str(),
        &target(request),
        &request.body,
        now,
    )
    .map_err(|e| {
        refuse(
            401,
            "bad_device_signature",
            &format!("device identity: {e}"),
        )
    })?;
    let Some(device) = device else {
        return match customer.seat_limit {
            Some(limit) => Err(refuse(
                403,
                "device_required",
                &format!(
                    "the subscription of {} is limited to {limit} installation(s) and this \
                     request names none: authenticate through km, which identifies the \
                     installation",
                    customer.id
                ),
            )),
            None => Ok(()),
        };
    };
    let public_key = request
        .header(km_signing::device::HEADER_KEY)
        .unwrap_or_default();
    let claim = state.store.claim_seat(
        &customer.id,
        customer.seat_limit,
        Claimant {
            device_id: device.id.as_str(),
            public_key,
            plugin,
        },
        now,
    );
    match claim {
        Ok(Claim::Held | Claim::Granted) => Ok(()),
        Ok(Claim::Full { limit, held }) => Err(refuse(
            403,
            "seat_limit",
            &format!(
                "seat limit reached: the subscription of {} allows {limit} installation(s) and \
                 {held} other installation(s) hold the seats; this one (device {}) has none \
                 (release a seat: `km seats` lists them and `km seats release DEVICE` frees one; the API's GET /api/seats and DELETE /api/seats/DEVICE)",
                customer.id,
                device.id.as_str()
            ),
        )),
        Err(e) => Err(internal("claiming the seat", &e)),
    }
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
    let customer = match identify(state, &req.api_key) {
        Ok(c) => c,
        Err(answer) => {
            let claimed = req.customer_id.as_deref();
            return unidentified(state, request, claimed, &req.api_key, answer);
        }
    };
    if let Err(limited) = admit(state, &customer.id, request) {
        return limited;
    }
    // Every refusal from here on is a failed authentication of this customer.
    let failed = |answer| refused(state, request, SubjectKind::Customer, &customer.id, answer);
    if req
        .customer_id
        .as_ref()
        .is_some_and(|id| *id != customer.id)
    {
        return failed(another_customer());
    }
    let now = now();
    if let Err(answer) = check_signed(state, request, &customer, now) {
        return failed(answer);
    }
    if customer.subscription_end <= now {
        return failed(refuse(
            403,
            "subscription_ended",
            &format!(
                "the subscription of {} ended at {}",
                customer.id, customer.subscription_end
            ),
        ));
    }
    if let Err(answer) = check_seat(state, request, &customer, &req.plugin_name, now) {
        return failed(answer);
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

#[cfg(test)]
mod tests;
