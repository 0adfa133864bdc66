//! The signed payload of a team policy and its verification.
//!
//! The payload is UTF-8 TOML: a `bundle` header (an inline table, first), then the policy itself
//! in the schema of the plugin's own policy file (plus whatever sections that plugin documents
//! for team files, such as tool-guard's `[[approvals]]`):
//!
//! ```toml
//! bundle = { team = "acme", policy = "tool-guard", version = 7, issued_at = "2025-06-01T12:00:00Z", issued_by = "alice" }
//!
//! [defaults]
//! changed = "block"
//! ```
//!
//! `team` must be the trust file's team; `policy` the file's name (`team/tool-guard.toml`);
//! `version` 1, 2, ...: every new bundle of (team, policy) has a higher one; `issued_at` (RFC
//! 3339) and `issued_by` are optional, for people.
//!
//! [`verify`] checks, in order: the envelope's form, a signature by an admin key of the trust
//! file (DSSE encoding, Ed25519), the header (team, policy, version). It returns a
//! [`Verified`] bundle, which nothing else can construct. Rollback (a version lower than one
//! applied, or the same version with other content) is checked against the plugin's record by
//! the loader ([`super::load_team`]), which keeps that record.
//!
//! What is NOT checked: freshness. A bundle stays valid until a higher version replaces it
//! (there is no expiry), so withholding updates keeps an older policy in force; fetching them
//! on time is team-collaboration's job. Nor are the `issued_*` fields checked.

use std::ops::Deref;

use serde::Deserialize;

use super::envelope::Envelope;
use super::trust::{valid_team, TeamTrust};
use crate::Error;

/// The header of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// The team.
    pub team: String,
    /// The policy it is for (the plugin's policy name, without `.toml`).
    pub policy: String,
    /// Its version, at least 1.
    pub version: u64,
    /// When it was issued (RFC 3339), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// Who issued it, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
}

/// A team policy whose signature, team and policy name were verified.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamBundle {
    header: BundleHeader,
    key_id: String,
    payload_sha256: String,
    body: toml::Table,
    envelope: String,
}

impl TeamBundle {
    /// The signed header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// The team.
    pub fn team(&self) -> &str {
        &self.header.team
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.header.version
    }

    /// The id of the admin key whose signature verified.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The SHA-256 (hex) of the signed payload: what identifies this exact bundle.
    pub fn payload_sha256(&self) -> &str {
        &self.payload_sha256
    }

    /// The policy: the payload without its `bundle` header.
    pub fn body(&self) -> &toml::Table {
        &self.body
    }

    /// The policy, parsed as `P` (use `#[serde(deny_unknown_fields)]`: a team setting this
    /// plugin does not know must not be ignored silently).
    pub fn parse<P: serde::de::DeserializeOwned>(&self) -> Result<P, Error> {
        toml::Value::Table(self.body.clone())
            .try_into()
            .map_err(|e: toml::de::Error| Error::Parse {
                file: format!(
                    "team/{}.toml (version {})",
                    self.header.policy,
                    self.version()
                ),
                message: e.to_string(),
            })
    }

    /// The envelope text it was verified from.
    pub(crate) fn envelope(&self) -> &str {
        &self.envelope
    }
}

/// Proof of verification: only this crate's verifiers make one ([`verify`] for bundles,
/// [`super::approvals::verify_approval`] and [`super::approvals::load_approvals`] for
/// approvals).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T>(pub(crate) T);

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The payload text of a bundle: `header` as `bundle = {...}`, then `body` (the policy's TOML,
/// which must not have a `bundle` key of its own). What an admin tool signs.
pub fn payload(header: &BundleHeader, body: &str) -> Result<String, Error> {
    let seal = |reason: String| Error::Seal { reason };
    let table: toml::Table = body
        .parse()
        .map_err(|e: toml::de::Error| seal(format!("the policy is not TOML: {e}")))?;
    if table.contains_key("bundle") {
        return Err(seal("the policy must not have a `bundle` key".to_owned()));
    }
    check_header("payload", header, None, None)?;
    // The header is an inline table on the first line: TOML puts every key that follows a
    // `[table]` header into that table, so a `[bundle]` table could not come first, and the
    // header is what a reader should see first.
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut fields = vec![
        format!("team = {}", quote(&header.team)),
        format!("policy = {}", quote(&header.policy)),
        format!("version = {}", header.version),
    ];
    if let Some(at) = &header.issued_at {
        fields.push(format!("issued_at = {}", quote(at)));
    }
    if let Some(by) = &header.issued_by {
        fields.push(format!("issued_by = {}", quote(by)));
    }
    Ok(format!(
        "bundle = {{ {} }}\n{}",
        fields.join(", "),
        body.trim_start()
    ))
}

/// Why `policy` cannot be a bundle's policy name: its file would be one of the other team
/// files (the trust anchor, a file of approvals).
pub(crate) fn reserved(policy: &str) -> Option<&'static str> {
    if policy == "trust" {
        Some("team/trust.toml is the trust file")
    } else if policy.ends_with(".approvals") {
        Some("team/NAME.approvals.toml files hold approvals")
    } else {
        None
    }
}

fn check_header(
    file: &str,
    header: &BundleHeader,
    team: Option<&str>,
    policy: Option<&str>,
) -> Result<(), Error> {
    let bad = |reason: String| Error::Header {
        file: file.to_owned(),
        reason,
    };
    if !valid_team(&header.team) {
        return Err(bad(format!("team {:?} is not a team name", header.team)));
    }
    if crate::source::check_name(&format!("{}.toml", header.policy)).is_err()
        || header.policy.contains('/')
    {
        return Err(bad(format!(
            "policy {:?} is not a policy name",
            header.policy
        )));
    }
    if let Some(why) = reserved(&header.policy) {
        return Err(bad(format!(
            "policy {:?} is not allowed: {why}",
            header.policy
        )));
    }
    // TOML integers are 64-bit signed: a larger version would be written into a payload that
    // no reader can parse, a bundle sealed and published that never verifies.
    if header.version == 0 || i64::try_from(header.version).is_err() {
        return Err(bad(format!(
            "version must be 1 to {} (a TOML integer), not {}",
            i64::MAX,
            header.version
        )));
    }
    if let Some(expected) = team {
        if header.team != expected {
            return Err(Error::WrongTeam {
                file: file.to_owned(),
                expected: expected.to_owned(),
                found: header.team.clone(),
            });
        }
    }
    if let Some(expected) = policy {
        if header.policy != expected {
            return Err(Error::WrongPolicy {
                file: file.to_owned(),
                expected: expected.to_owned(),
                found: header.policy.clone(),
            });
        }
    }
    Ok(())
}

/// Verifies the envelope `text` of `file` as team policy `policy` of the trust file's team.
pub fn verify(
    file: &str,
    text: &str,
    trust: &TeamTrust,
    policy: &str,
) -> Result<Verified<TeamBundle>, Error> {
    let envelope = Envelope::parse(file, text)?;
    let key_id = envelope.verify(file, trust)?;
    // Only signed bytes are parsed from here on.
    let bad = |reason: String| Error::Header {
        file: file.to_owned(),
        reason,
    };
    let payload = std::str::from_utf8(&envelope.payload)
        .map_err(|_| bad("the signed payload is not UTF-8".to_owned()))?;
    let mut table: toml::Table = payload.parse().map_err(|e: toml::de::Error| Error::Parse {
        file: format!("{file} (signed payload)"),
        message: e.to_string(),
    })?;
    let header: BundleHeader = table
        .remove("bundle")
        .ok_or_else(|| bad("the signed payload has no `bundle` header".to_owned()))?
        .try_into()
        .map_err(|e: toml::de::Error| bad(format!("bundle: {e}")))?;
    check_header(file, &header, Some(trust.team()), Some(policy))?;
    Ok(Verified(TeamBundle {
        header,
        key_id,
        payload_sha256: km_durable::digest::sha256_hex(&envelope.payload),
        body: table,
        envelope: text.to_owned(),
    }))
}
