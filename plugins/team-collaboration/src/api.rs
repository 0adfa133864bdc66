//! The team endpoints of the Kilometers API, as this plugin calls them through km's HTTP
//! service (`/api/teams/{team}/...`, documented with the reference server in
//! `tests/api-server/src/routes/teams.rs`), with the plugin's subscription token.
//!
//! Nothing the API answers is trusted for what matters: policies and approvals are verified
//! against the team's keys before anything is written (see [`crate::sync`]); what is taken at
//! its word is the caller's own membership and role (for what to try, and for `status`), the
//! members list (for the roster an admin signs) and the session feed.

use km_plugin_sdk::{ErrorKind, Host, HttpRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Error;

/// How long one call may take (km retries within it).
const TIMEOUT_MS: u32 = 8000;

/// The caller's membership.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Me {
    pub(crate) member: String,
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) key_id: Option<String>,
}

/// A member, as the API lists them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct MemberInfo {
    pub(crate) id: String,
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) public_key: Option<String>,
}

/// A policy the API serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Served {
    pub(crate) policy: String,
    pub(crate) envelope: String,
}

/// An approval the API serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ServedApproval {
    pub(crate) member: String,
    pub(crate) envelope: String,
}

/// The API, for one team, with a token.
pub(crate) struct Api<'a> {
    host: &'a Host,
    token: String,
    team: String,
}

/// A query parameter's value, percent-encoded (km's HTTP service refuses `@` and spaces in a
/// path, and member ids may hold `@`).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl<'a> Api<'a> {
    /// Calls for `team` with the subscription `token`.
    pub(crate) fn new(host: &'a Host, token: String, team: &str) -> Self {
        Api {
            host,
            token,
            team: team.to_owned(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        what: &str,
        timeout_ms: u32,
    ) -> Result<(u16, Value), Error> {
        let full = format!("/api/teams/{}/{path}", self.team);
        let mut request = match body {
            Some(body) => HttpRequest::post_json(&full, body.to_string().into_bytes()),
            None => HttpRequest::post_json(&full, Vec::new()),
        };
        request.method = method.into();
        if body.is_none() {
            request.headers = Vec::new().into();
        }
        request
            .headers
            .push(km_plugin_sdk::abi_stable::std_types::Tuple2(
                "authorization".into(),
                format!("Bearer {}", self.token).into(),
            ));
        request.timeout_ms = timeout_ms;
        let response = match self.host.http(request) {
            Ok(response) => response,
            Err(e) if e.kind == ErrorKind::NETWORK || e.kind == ErrorKind::TIMEOUT => {
                return Err(Error::Unreachable(e.message.into_string()))
            }
            Err(e) => return Err(Error::Host(e.message.into_string())),
        };
        let value: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status >= 500 || response.status == 429 {
            return Err(Error::Unreachable(format!(
                "HTTP {} for {what}",
                response.status
            )));
        }
        if !(200..300).contains(&response.status) {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .chars()
                .take(500)
                .collect();
            return Err(Error::Refused {
                what: what.to_owned(),
                status: response.status,
                message,
            });
        }
        Ok((response.status, value))
    }

    fn get(&self, path: &str, what: &str) -> Result<Value, Error> {
        self.call("GET", path, None, what, TIMEOUT_MS)
            .map(|(_, v)| v)
    }

    fn field<T: serde::de::DeserializeOwned>(
        value: &Value,
        key: &str,
        what: &str,
    ) -> Result<T, Error> {
        let inner = if key.is_empty() {
            value.clone()
        } else {
            value.get(key).cloned().unwrap_or(Value::Null)
        };
        serde_json::from_value(inner).map_err(|e| Error::BadAnswer {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// `GET me`.
    pub(crate) fn me(&self) -> Result<Me, Error> {
        let what = "the membership";
        Self::field(&self.get("me", what)?, "", what)
    }

    /// `GET members`.
    pub(crate) fn members(&self) -> Result<Vec<MemberInfo>, Error> {
        let what = "the members list";
        Self::field(&self.get("members", what)?, "members", what)
    }

    /// `POST key`: registers the caller's public key.
    pub(crate) fn register_key(&self, public_key_pem: &str) -> Result<(), Error> {
        self.call(
            "POST",
            "key",
            Some(&json!({"public_key": public_key_pem})),
            "the member key",
            TIMEOUT_MS,
        )
        .map(drop)
    }

    /// `GET policies`.
    pub(crate) fn policies(&self) -> Result<Vec<Served>, Error> {
        let what = "the team policy";
        Self::field(&self.get("policies", what)?, "policies", what)
    }

    /// `POST policies`: `Ok(true)` when stored, `Ok(false)` when that version was held.
    pub(crate) fn publish(&self, policy: &str, envelope: &str) -> Result<bool, Error> {
        let (status, _) = self.call(
            "POST",
            "policies",
            Some(&json!({"policy": policy, "envelope": envelope})),
            &format!("the publication of {policy}"),
            TIMEOUT_MS,
        )?;
        Ok(status == 201)
    }

    /// `GET approvals?policy=P`.
    pub(crate) fn approvals(&self, policy: &str) -> Result<Vec<ServedApproval>, Error> {
        let what = format!("the approvals for {policy}");
        Self::field(
            &self.get(&format!("approvals?policy={}", encode(policy)), &what)?,
            "approvals",
            &what,
        )
    }

    /// `POST approvals`: `Ok(true)` when stored, `Ok(false)` when held already.
    pub(crate) fn approve(&self, policy: &str, envelope: &str) -> Result<bool, Error> {
        let (status, _) = self.call(
            "POST",
            "approvals",
            Some(&json!({"policy": policy, "envelope": envelope})),
            "the approval",
            TIMEOUT_MS,
        )?;
        Ok(status == 201)
    }

    /// `POST sessions`, within `timeout_ms`.
    pub(crate) fn send_session(&self, summary: &Value, timeout_ms: u32) -> Result<(), Error> {
        self.call(
            "POST",
            "sessions",
            Some(&json!({ "summary": summary })),
            "the session summary",
            timeout_ms,
        )
        .map(drop)
    }

    /// `GET sessions`.
    pub(crate) fn sessions(
        &self,
        member: Option<&str>,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Value>, Error> {
        let mut query = format!("sessions?limit={limit}");
        if let Some(member) = member {
            query.push_str(&format!("&member={}", encode(member)));
        }
        if let Some(since) = since {
            query.push_str(&format!("&since={since}"));
        }
        let what = "the team's sessions";
        Self::field(&self.get(&query, what)?, "sessions", what)
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn query_values_are_encoded_for_km_s_path_checks() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("alice@acme.example"), "alice%40acme.example");
        assert_eq!(encode("a b+c/d"), "a%20b%2Bc%2Fd");
    }
}
