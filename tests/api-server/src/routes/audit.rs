//! The witness of compliance-reporting's audit trails: `POST /api/audit/checkpoints` and
//! `GET /api/audit/checkpoints?key_id=ID&host=H&user=U`.
//!
//! Both need `authorization: Bearer <token>`, a token this server signed for
//! compliance-reporting at the Enterprise tier (401 without, 403 below Enterprise).
//!
//! **POST** `{"key_id", "public_key" (base64, raw Ed25519), "host", "user", "checkpoint" (the
//! signed text), "signature" (base64), "from", "proof" (hex)}`. The checkpoint must be signed by
//! that key (whose id it names; 422 otherwise), and the key must be this customer's (403 if another
//! customer's checkpoints are held under it). Against the largest checkpoint held for the key
//! (size S, root R), the new one (size N, root Q) is stored when
//! - none is held (the first; nothing to prove);
//! - N = S and Q = R (the same state again);
//! - N > S, `from` = S, and `proof` is an RFC 6962 consistency proof from (S, R) to (N, Q).
//!
//! `from` ≠ S, or N < S, is `409 {"latest": S}`: the plugin proves from S next time. A failing
//! proof, or N = S with another root, is `422`: the trail was rewritten, and nothing is stored.
//! Stored: `201 {"stored": true, "size": N}`.
//!
//! **GET** → `{"checkpoints": [{"checkpoint", "signature", "size", "received_at"}],
//! "other_keys": [{"key_id", "size", "received_at"}]}`: the checkpoints of `key_id` held for the
//! customer, smallest first, and the customer's other audit keys that reported the same host and
//! user (a trail replaced together with its key shows up there). `received_at` is RFC 3339.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_audit::{parse_hash, verify_consistency, SignedCheckpoint, SignedCheckpointJson};
use km_plugin_sdk::auth::TokenClaims;
use km_plugin_sdk::Tier;
use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::router::{Params, Router};
use crate::state::AppState;
use crate::store::audit::{Added, NewCheckpoint};

use super::{claims_of_tier, internal, json_body};

/// The plugin whose tokens these endpoints take.
const PLUGIN: &str = "compliance-reporting";

pub(super) fn register(router: &mut Router<AppState>) {
    router.post("/api/audit/checkpoints", post);
    router.get("/api/audit/checkpoints", get);
}

fn authorize(state: &AppState, request: &Request) -> Result<TokenClaims, Response> {
    claims_of_tier(
        state,
        request,
        PLUGIN,
        Tier::Enterprise,
        "audit checkpoints need an Enterprise subscription",
    )
}

#[derive(Deserialize)]
struct Submission {
    key_id: String,
    public_key: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    user: String,
    checkpoint: String,
    signature: String,
    #[serde(default)]
    from: u64,
    #[serde(default)]
    proof: Vec<String>,
}

fn rfc3339(secs: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn post(state: &AppState, request: &Request, _: &Params) -> Response {
    let claims = match authorize(state, request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body: Submission = match json_body(request, "an audit checkpoint submission") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(public_key) = STANDARD
        .decode(&body.public_key)
        .ok()
        .filter(|k| k.len() == 32)
    else {
        return Response::error(400, "public_key is not a base64 Ed25519 public key");
    };
    if km_audit::key_id(&public_key) != body.key_id {
        return Response::error(400, "key_id is not the id of public_key");
    }
    let signed = match SignedCheckpoint::from_json(&SignedCheckpointJson {
        checkpoint: body.checkpoint.clone(),
        signature: body.signature.clone(),
    }) {
        Ok(s) => s,
        Err(e) => return Response::error(400, &e.to_string()),
    };
    if let Err(e) = signed.verify(&public_key) {
        return Response::error(422, &format!("checkpoint: {e}"));
    }
    let Some(proof) = body
        .proof
        .iter()
        .map(|h| parse_hash(h))
        .collect::<Option<Vec<_>>>()
    else {
        return Response::error(400, "proof is not a list of SHA-256 values in hex");
    };
    match state.store.audit_key_owner(&body.key_id) {
        Ok(Some(owner)) if owner != claims.customer_id => {
            return Response::error(403, "this audit key belongs to another customer")
        }
        Ok(_) => {}
        Err(e) => return internal("reading audit keys", &e),
    }
    let cp = signed.checkpoint();
    let latest = match state.store.latest_checkpoint(&body.key_id) {
        Ok(l) => l,
        Err(e) => return internal("reading audit checkpoints", &e),
    };
    if let Some((size, root)) = &latest {
        let root = parse_hash(root).unwrap_or_default();
        if cp.size == *size {
            if cp.root != root {
                return Response::error(
                    422,
                    "a checkpoint of the same size with another root is held: the trail was rewritten",
                );
            }
        } else if cp.size < *size || body.from != *size {
            return Response::json(
                409,
                &json!({"error": "prove consistency from the latest checkpoint held", "latest": size}),
            );
        } else if verify_consistency(*size, cp.size, &root, &cp.root, &proof).is_err() {
            return Response::error(
                422,
                &format!(
                    "the checkpoint does not extend the one of {size} records held: the trail was rewritten"
                ),
            );
        }
    }
    let root_hex = hex_root(&cp.root);
    let new = NewCheckpoint {
        customer_id: &claims.customer_id,
        key_id: &body.key_id,
        public_key: &body.public_key,
        host: &body.host,
        os_user: &body.user,
        size: cp.size,
        root: &root_hex,
        checkpoint: &body.checkpoint,
        signature: &body.signature,
    };
    match state.store.add_checkpoint(&new, latest.map(|(s, _)| s)) {
        Ok(Added::Stored) => Response::json(201, &json!({"stored": true, "size": cp.size})),
        Ok(Added::OtherCustomer) => {
            Response::error(403, "this audit key belongs to another customer")
        }
        Ok(Added::Moved(latest)) => Response::json(
            409,
            &json!({"error": "another checkpoint arrived first", "latest": latest}),
        ),
        Err(e) => internal("storing an audit checkpoint", &e),
    }
}

fn hex_root(root: &[u8; 32]) -> String {
    km_durable::digest::hex(root)
}

/// Percent-decodes a query value (host names and user names are plain, but are sent escaped).
fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn get(state: &AppState, request: &Request, _: &Params) -> Response {
    let claims = match authorize(state, request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let param = |name| request.query_param(name).and_then(decode);
    let Some(key_id) = param("key_id") else {
        return Response::error(400, "key_id is required");
    };
    let held = match state.store.checkpoints(&claims.customer_id, &key_id) {
        Ok(h) => h,
        Err(e) => return internal("reading audit checkpoints", &e),
    };
    let others = match (param("host"), param("user")) {
        (Some(host), Some(user)) => {
            match state
                .store
                .other_audit_keys(&claims.customer_id, &host, &user, &key_id)
            {
                Ok(o) => o,
                Err(e) => return internal("reading audit keys", &e),
            }
        }
        _ => Vec::new(),
    };
    Response::json(
        200,
        &json!({
            "checkpoints": held.iter().map(|h| json!({
                "checkpoint": h.checkpoint,
                "signature": h.signature,
                "size": h.size,
                "root": h.root,
                "received_at": rfc3339(h.received_at),
            })).collect::<Vec<_>>(),
            "other_keys": others.iter().map(|o| json!({
                "key_id": o.key_id,
                "size": o.size,
                "received_at": rfc3339(o.received_at),
            })).collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests;
