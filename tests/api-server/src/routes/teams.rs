//! Teams (team-collaboration, Enterprise): members and roles, the team's signed policy, shared
//! approvals, session summaries.
//!
//! Every `/api/teams/{team}/...` request needs `authorization: Bearer <token>`, a token this
//! server signed for team-collaboration at the Enterprise tier (401 without a valid one, 403
//! below Enterprise), of a customer who is an active member of `{team}` (403 otherwise, the same
//! answer whether the team exists or not). The member is who the token says; nothing in a body
//! can speak for another member.
//!
//! - `GET me` → `{team, member, role, key_id, admin_key_ids}`.
//! - `GET members` → `{members: [{id, role, key_id, public_key}]}`: what an admin needs to write
//!   the roster (`km plugin team-collaboration members --roster`).
//! - `POST members` (admin) `{id, customer, role}`: adds a member or changes one (members listed
//!   in the teams directory are the directory's to change: 409).
//! - `POST key` `{public_key}` (PEM, Ed25519): registers the caller's own key, which signs their
//!   approvals (409 when it is another member's) → `{key_id}`.
//! - `GET policies` → `{team, policies: [{policy, version, envelope}]}`: the latest version of
//!   each policy, as signed.
//! - `POST policies` (admin) `{policy, envelope}`: publishes a version. It must verify against the
//!   team's admin keys, for this team and policy (422 naming the check that failed); 201
//!   `{policy, version}` when stored, 200 for the version already held, 409 for an older version
//!   (`latest`) or the held version with other content.
//! - `GET approvals?policy=P` → `{approvals: [{seq, member, envelope, received_at}]}`: the newest
//!   4096, oldest first.
//! - `POST approvals` (approver or admin) `{policy, envelope}`: an approval signed with the
//!   caller's registered key and naming the caller (422 otherwise; 403 for a member without the
//!   role; 409 without a registered key) → 201, or 200 when already held.
//! - `POST sessions` `{summary: {id, ended_at, ...}}`: a session summary, at most 64 KiB; the
//!   server sets its `member` and `team` → 201, or 200 when already held.
//! - `GET sessions?member=M&since=UNIX&limit=N` → `{sessions: [...]}`, newest first (limit 50 by
//!   default, at most 500).
//!
//! Test controls, to play an API that lies (the members' plugins must refuse what it serves):
//! - `PUT /control/teams/{team}/policies/{policy}` with an envelope as the body: served as that
//!   policy in place of the latest, unchecked; `DELETE` ends it.
//! - `POST /control/teams/{team}/approvals` `{policy, member, envelope}`: stored unchecked.

use km_plugin_sdk::Tier;
use km_policy::team::roster::valid_member_id;
use km_policy::team::{verify, verify_approval, AdminKey, TeamTrust};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{Method, Request, Response};
use crate::router::{Params, Router};
use crate::state::AppState;
use crate::store::teams::{Member, NewPolicy, PolicyAdded, Role, Team};
use crate::store::Error as StoreError;

use super::{internal, json_body};

/// The plugin whose tokens these endpoints take.
const PLUGIN: &str = "team-collaboration";

/// The role tool-guard's approvals need (what the roster says of an approver's key).
const APPROVER_ROLE: &str = "approver";

/// The most approvals one answer carries (what an approvals file holds).
const MAX_APPROVALS: u32 = 4096;

/// The largest session summary accepted.
const MAX_SUMMARY_BYTES: usize = 64 * 1024;

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .get("/api/teams/{team}/me", me)
        .get("/api/teams/{team}/members", members)
        .post("/api/teams/{team}/members", put_member)
        .post("/api/teams/{team}/key", register_key)
        .get("/api/teams/{team}/policies", policies)
        .post("/api/teams/{team}/policies", publish)
        .get("/api/teams/{team}/approvals", approvals)
        .post("/api/teams/{team}/approvals", approve)
        .get("/api/teams/{team}/sessions", sessions)
        .post("/api/teams/{team}/sessions", add_session)
        .route(
            Method::Put,
            "/control/teams/{team}/policies/{policy}",
            serve_override,
        )
        .route(
            Method::Delete,
            "/control/teams/{team}/policies/{policy}",
            end_override,
        )
        .post("/control/teams/{team}/approvals", store_unchecked_approval);
}

/// Who is asking: a member of the team.
struct Caller {
    team: Team,
    member: Member,
}

fn authorize(state: &AppState, request: &Request, params: &Params) -> Result<Caller, Response> {
    let claims = super::claims_of_tier(
        state,
        request,
        PLUGIN,
        Tier::Enterprise,
        "team collaboration needs an Enterprise subscription",
    )?;
    state.refresh_customers();
    state.refresh_teams();
    let name = params.get("team").unwrap_or_default();
    let not_member = || {
        Response::error(
            403,
            &format!(
                "customer {} is not a member of team {name}",
                claims.customer_id
            ),
        )
    };
    let team = match state.store.team(name) {
        Ok(Some(team)) => team,
        Ok(None) => return Err(not_member()),
        Err(e) => return Err(internal("looking the team up", &e)),
    };
    match state
        .store
        .team_member_by_customer(name, &claims.customer_id)
    {
        Ok(Some(member)) => Ok(Caller { team, member }),
        Ok(None) => Err(not_member()),
        Err(e) => Err(internal("looking the member up", &e)),
    }
}

/// Answers 403 unless the caller has at least `role`, saying what the caller's role is.
fn require(caller: &Caller, role: Role, to: &str) -> Result<(), Response> {
    if caller.member.role >= role {
        return Ok(());
    }
    Err(Response::error(
        403,
        &format!(
            "member {} of team {} has the {} role: only {} {to}",
            caller.member.id,
            caller.team.name,
            caller.member.role.as_str(),
            match role {
                Role::Admin => "admins",
                Role::Approver => "approvers and admins",
                Role::Member => "members",
            }
        ),
    ))
}

fn trust_of(team: &Team) -> Result<TeamTrust, Response> {
    let keys = team
        .admin_keys
        .iter()
        .map(|pem| AdminKey::from_pem(pem).map(|key| (None, key)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal("reading the team's admin keys", &e))?;
    TeamTrust::new(&team.name, keys).map_err(|e| internal("reading the team's admin keys", &e))
}

/// A query parameter, percent-decoded (member ids may hold `@`, which km's HTTP service only
/// lets through encoded). `+` is taken literally.
fn query(request: &Request, name: &str) -> Result<Option<String>, Response> {
    let Some(raw) = request.query_param(name) else {
        return Ok(None);
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Response::error(400, &format!("query parameter {name} is badly encoded"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| Response::error(400, &format!("query parameter {name} is not UTF-8")))
}

fn me(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let admin_key_ids: Vec<String> = caller
        .team
        .admin_keys
        .iter()
        .filter_map(|pem| AdminKey::from_pem(pem).ok())
        .map(|k| k.key_id().to_owned())
        .collect();
    Response::json(
        200,
        &json!({
            "team": caller.team.name,
            "member": caller.member.id,
            "role": caller.member.role.as_str(),
            "key_id": caller.member.key_id,
            "admin_key_ids": admin_key_ids,
        }),
    )
}

fn members(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match state.store.team_members(&caller.team.name) {
        Ok(members) => Response::json(
            200,
            &json!({
                "team": caller.team.name,
                "members": members.iter().map(|m| json!({
                    "id": m.id,
                    "role": m.role.as_str(),
                    "key_id": m.key_id,
                    "public_key": m.public_key,
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => internal("listing the members", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: String,
    customer: String,
    role: String,
}

fn put_member(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&caller, Role::Admin, "manage members") {
        return answer;
    }
    let new: NewMember = match json_body(request, "{id, customer, role}") {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    if !valid_member_id(&new.id) {
        return Response::error(
            400,
            &format!(
                "member id {:?} is not 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', '@', '+'",
                new.id
            ),
        );
    }
    let Some(role) = Role::parse(&new.role) else {
        return Response::error(
            400,
            &format!("unknown role {:?} (member, approver or admin)", new.role),
        );
    };
    match state
        .store
        .put_team_member(&caller.team.name, &new.id, &new.customer, role)
    {
        Ok(()) => Response::json(200, &json!({"id": new.id, "role": role.as_str()})),
        Err(StoreError::Invalid(why)) => Response::error(409, &why),
        Err(e) => internal("storing the member", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    public_key: String,
}

fn register_key(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let new: NewKey = match json_body(request, "{public_key}") {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let key = match AdminKey::from_pem(&new.public_key) {
        Ok(key) => key,
        Err(why) => return Response::error(400, &format!("public_key: {why}")),
    };
    match state.store.register_team_key(
        &caller.team.name,
        &caller.member.id,
        &key.to_pem(),
        key.key_id(),
    ) {
        Ok(()) => Response::json(
            200,
            &json!({"member": caller.member.id, "key_id": key.key_id()}),
        ),
        Err(StoreError::Invalid(why)) => Response::error(409, &why),
        Err(e) => internal("registering the key", &e),
    }
}

fn policies(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let held = match state.store.latest_team_policies(&caller.team.name) {
        Ok(held) => held,
        Err(e) => return internal("reading the team's policies", &e),
    };
    let mut policies: Vec<Value> = held
        .iter()
        .map(|p| json!({"policy": p.policy, "version": p.version, "envelope": p.envelope}))
        .collect();
    for (policy, envelope) in state.teams.overrides_of(&caller.team.name) {
        policies.retain(|p| p["policy"] != policy.as_str());
        policies.push(json!({"policy": policy, "version": null, "envelope": envelope}));
    }
    Response::json(
        200,
        &json!({"team": caller.team.name, "policies": policies}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publication {
    policy: String,
    envelope: String,
}

fn publish(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&caller, Role::Admin, "publish the team's policy") {
        return answer;
    }
    let publication: Publication = match json_body(request, "{policy, envelope}") {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let trust = match trust_of(&caller.team) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let shown = format!("{}.toml", publication.policy);
    let bundle = match verify(&shown, &publication.envelope, &trust, &publication.policy) {
        Ok(b) => b,
        Err(e) => return Response::error(422, &e.to_string()),
    };
    let added = state.store.add_team_policy(&NewPolicy {
        team: &caller.team.name,
        policy: &publication.policy,
        version: bundle.version(),
        payload_sha256: bundle.payload_sha256(),
        key_id: bundle.key_id(),
        envelope: &publication.envelope,
        published_by: Some(&caller.member.id),
    });
    let answer = json!({"policy": publication.policy, "version": bundle.version()});
    match added {
        Ok(PolicyAdded::Stored) => Response::json(201, &answer),
        Ok(PolicyAdded::Held) => Response::json(200, &answer),
        Ok(PolicyAdded::Equivocation) => Response::error(
            409,
            &format!(
                "version {} of {} is already published with other content: sign a higher version",
                bundle.version(),
                publication.policy
            ),
        ),
        Ok(PolicyAdded::Older(latest)) => Response::json(
            409,
            &json!({
                "error": format!(
                    "version {} of {} is older than version {latest} already published",
                    bundle.version(),
                    publication.policy
                ),
                "latest": latest,
            }),
        ),
        Err(e) => internal("storing the policy", &e),
    }
}

/// The `policy` query parameter, checked like a policy name.
fn policy_param(request: &Request) -> Result<String, Response> {
    let policy =
        query(request, "policy")?.ok_or_else(|| Response::error(400, "missing ?policy=NAME"))?;
    km_policy::check_name(&format!("{policy}.toml"))
        .map_err(|e| Response::error(400, &e.to_string()))?;
    Ok(policy)
}

fn approvals(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let policy = match policy_param(request) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    match state
        .store
        .team_approvals(&caller.team.name, &policy, MAX_APPROVALS)
    {
        Ok(held) => Response::json(
            200,
            &json!({
                "team": caller.team.name,
                "policy": policy,
                "approvals": held.iter().map(|a| json!({
                    "seq": a.seq,
                    "member": a.member,
                    "envelope": a.envelope,
                    "received_at": a.received_at,
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => internal("reading the approvals", &e),
    }
}

fn approve(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&caller, Role::Approver, "approve for the team") {
        return answer;
    }
    let publication: Publication = match json_body(request, "{policy, envelope}") {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let (Some(pem), Some(key_id)) = (&caller.member.public_key, &caller.member.key_id) else {
        return Response::error(
            409,
            &format!(
                "member {} has no registered key (km plugin team-collaboration join registers one)",
                caller.member.id
            ),
        );
    };
    let key = match AdminKey::from_pem(pem) {
        Ok(k) => k,
        Err(e) => return internal("reading the member's key", &e),
    };
    let member = caller.member.id.as_str();
    let verified = verify_approval(
        "approval",
        &publication.envelope,
        &caller.team.name,
        &publication.policy,
        APPROVER_ROLE,
        |k| (k == key_id.as_str()).then_some((member, &key)),
    );
    let approval = match verified {
        Ok(a) => a,
        Err(e) => return Response::error(422, &e.to_string()),
    };
    match state.store.add_team_approval(
        &caller.team.name,
        &publication.policy,
        member,
        approval.payload_sha256(),
        &publication.envelope,
        true,
    ) {
        Ok(new) => Response::json(
            if new { 201 } else { 200 },
            &json!({"stored": new, "member": member, "policy": publication.policy}),
        ),
        Err(e) => internal("storing the approval", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    summary: serde_json::Map<String, Value>,
}

fn add_session(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if request.body.len() > MAX_SUMMARY_BYTES {
        return Response::error(
            413,
            &format!("a session summary is at most {MAX_SUMMARY_BYTES} bytes"),
        );
    }
    let NewSession { mut summary } = match json_body(request, "{summary: {id, ended_at, ...}}") {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let Some(id) = summary
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| (1..=128).contains(&id.len()))
        .map(str::to_owned)
    else {
        return Response::error(400, "summary.id must be a string of 1 to 128 characters");
    };
    let Some(ended_at) = summary.get("ended_at").and_then(Value::as_i64) else {
        return Response::error(400, "summary.ended_at must be seconds since the epoch");
    };
    // Who and which team are the server's to say.
    summary.insert("member".into(), caller.member.id.clone().into());
    summary.insert("team".into(), caller.team.name.clone().into());
    match state.store.add_team_session(
        &caller.team.name,
        &caller.member.id,
        &id,
        ended_at,
        &Value::Object(summary),
    ) {
        Ok(new) => Response::json(
            if new { 201 } else { 200 },
            &json!({"stored": new, "id": id}),
        ),
        Err(e) => internal("storing the session", &e),
    }
}

fn sessions(state: &AppState, request: &Request, params: &Params) -> Response {
    let caller = match authorize(state, request, params) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let member = match query(request, "member") {
        Ok(m) => m,
        Err(answer) => return answer,
    };
    let number = |name: &str| -> Result<Option<i64>, Response> {
        query(request, name)?
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Response::error(400, &format!("{name}={v:?} is not a number")))
            })
            .transpose()
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(answer), _) | (_, Err(answer)) => return answer,
    };
    let limit = u32::try_from(limit.unwrap_or(50).clamp(1, 500)).unwrap_or(50);
    match state
        .store
        .team_sessions(&caller.team.name, member.as_deref(), since, limit)
    {
        Ok(list) => Response::json(200, &json!({"team": caller.team.name, "sessions": list})),
        Err(e) => internal("reading the sessions", &e),
    }
}

fn serve_override(state: &AppState, request: &Request, params: &Params) -> Response {
    let (Some(team), Some(policy)) = (params.get("team"), params.get("policy")) else {
        return Response::error(400, "missing team or policy");
    };
    let Ok(envelope) = String::from_utf8(request.body.clone()) else {
        return Response::error(400, "the envelope is not UTF-8");
    };
    state.teams.set_override(team, policy, Some(envelope));
    Response::json(
        200,
        &json!({"team": team, "policy": policy, "served": true}),
    )
}

fn end_override(state: &AppState, _: &Request, params: &Params) -> Response {
    let (Some(team), Some(policy)) = (params.get("team"), params.get("policy")) else {
        return Response::error(400, "missing team or policy");
    };
    state.teams.set_override(team, policy, None);
    Response::json(
        200,
        &json!({"team": team, "policy": policy, "served": false}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unchecked {
    policy: String,
    member: String,
    envelope: String,
}

fn store_unchecked_approval(state: &AppState, request: &Request, params: &Params) -> Response {
    let team = params.get("team").unwrap_or_default();
    let unchecked: Unchecked = match json_body(request, "{policy, member, envelope}") {
        Ok(u) => u,
        Err(answer) => return answer,
    };
    let digest = km_durable::digest::sha256_hex(unchecked.envelope.as_bytes());
    match state.store.add_team_approval(
        team,
        &unchecked.policy,
        &unchecked.member,
        &digest,
        &unchecked.envelope,
        false,
    ) {
        Ok(new) => Response::json(200, &json!({"stored": new})),
        Err(e) => Response::error(409, &e.to_string()),
    }
}

#[cfg(test)]
mod tests;
