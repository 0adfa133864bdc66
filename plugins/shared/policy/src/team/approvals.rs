//! Shared approvals: statements a team member signs with their own key, verified by every
//! plugin against the admin-signed roster ([`super::roster`]), so that a decision made once by
//! someone allowed to make it holds for the whole team, and nobody else can make it.
//!
//! One approval is a DSSE envelope like a team policy's, with its own payload type (so that no
//! signature made for a policy, a manifest or anything else can pass for an approval):
//!
//! ```text
//! payload_type = "application/vnd.km.team-approval+toml; version=1"
//! ```
//!
//! Its payload is UTF-8 TOML: an `approval` header on the first line, then what is approved, in
//! the schema of the plugin it is for (tool-guard: `server`, `kind`, `name`, `sha256`):
//!
//! ```toml
//! approval = { team = "acme", policy = "tool-guard", member = "alice", issued_at = "2025-06-01T12:00:00Z" }
//! server = "github"
//! kind = "tool"
//! name = "create_issue"
//! sha256 = "9b1c…"
//! ```
//!
//! team-collaboration collects a team's approvals from the API and writes them, as received, to
//! `KM_HOME/policies/team/POLICY.approvals.toml`:
//!
//! ```toml
//! team = "acme"
//! policy = "tool-guard"
//!
//! [[approvals]]
//! payload_type = "application/vnd.km.team-approval+toml; version=1"
//! payload = """
//! YXBwcm92YWwgPSB7IHRlYW0gPSAiYWNtZSIs...
//! """
//!
//! [[approvals.signatures]]
//! key_id = "…"
//! sig = "…"
//! ```
//!
//! [`load_approvals`] accepts an entry only when a signature verifies with the key of a roster
//! member who has the role the plugin asks for (`approver` for tool-guard), and the header names
//! that same member, the trust file's team and the plugin's policy. Entries that fail are
//! reported one by one; the others stand.
//!
//! What is NOT checked: rollback. Approvals only ever accept something, so withholding or
//! removing one can make a plugin stricter, never looser; nothing needs to be remembered. An
//! approval is revoked by taking its signer's role away in a newer roster.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::envelope::{sign_ed25519, Envelope, EnvelopeFile, Signer};
use super::keys::AdminKey;
use super::roster::{valid_member_id, Roster, ROSTER};
use super::trust::{valid_team, TeamTrust, TRUST_FILE};
use super::Verified;
use crate::source::{check_name, PolicyHost};
use crate::Error;

/// The payload type of an approval, version 1 of the format.
pub const APPROVAL_PAYLOAD_TYPE: &str = "application/vnd.km.team-approval+toml; version=1";

/// The most approvals one file may hold.
const MAX_APPROVALS: usize = 4096;

/// The name of the approvals file of `policy` under `KM_HOME/policies/`.
pub fn approvals_file(policy: &str) -> String {
    format!("team/{policy}.approvals.toml")
}

/// The header of an approval's payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalHeader {
    /// The team.
    pub team: String,
    /// The policy (plugin) it is for.
    pub policy: String,
    /// The member who approves, whose key signs.
    pub member: String,
    /// When (RFC 3339), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
}

/// A verified approval.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedApproval {
    header: ApprovalHeader,
    key_id: String,
    payload_sha256: String,
    body: toml::Table,
}

impl SignedApproval {
    /// The signed header.
    pub fn header(&self) -> &ApprovalHeader {
        &self.header
    }

    /// The member who signed it.
    pub fn member(&self) -> &str {
        &self.header.member
    }

    /// The id of the member's key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The SHA-256 (hex) of the signed payload: what identifies this approval.
    pub fn payload_sha256(&self) -> &str {
        &self.payload_sha256
    }

    /// What is approved: the payload without its header.
    pub fn body(&self) -> &toml::Table {
        &self.body
    }

    /// What is approved, parsed as `A`.
    pub fn parse<A: DeserializeOwned>(&self) -> Result<A, String> {
        toml::Value::Table(self.body.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())
    }
}

/// The payload text of an approval: `header` as `approval = {...}`, then `body` (TOML without an
/// `approval` key of its own). What a member signs.
pub fn approval_payload(header: &ApprovalHeader, body: &str) -> Result<String, Error> {
    let seal = |reason: String| Error::Seal { reason };
    let table: toml::Table = body
        .parse()
        .map_err(|e: toml::de::Error| seal(format!("the approval is not TOML: {e}")))?;
    if table.contains_key("approval") {
        return Err(seal(
            "the approval must not have an `approval` key".to_owned(),
        ));
    }
    check_header(header).map_err(seal)?;
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut fields = vec![
        format!("team = {}", quote(&header.team)),
        format!("policy = {}", quote(&header.policy)),
        format!("member = {}", quote(&header.member)),
    ];
    if let Some(at) = &header.issued_at {
        fields.push(format!("issued_at = {}", quote(at)));
    }
    Ok(format!(
        "approval = {{ {} }}\n{}",
        fields.join(", "),
        body.trim_start()
    ))
}

fn check_header(header: &ApprovalHeader) -> Result<(), String> {
    if !valid_team(&header.team) {
        return Err(format!("team {:?} is not a team name", header.team));
    }
    if check_name(&format!("{}.toml", header.policy)).is_err() || header.policy.contains('/') {
        return Err(format!("policy {:?} is not a policy name", header.policy));
    }
    if !valid_member_id(&header.member) {
        return Err(format!("member {:?} is not a member id", header.member));
    }
    Ok(())
}

/// The bytes a member signs for an approval `payload`.
pub fn approval_signing_input(payload: &[u8]) -> Vec<u8> {
    super::envelope::signing_input_for(APPROVAL_PAYLOAD_TYPE, payload)
}

/// The envelope text of one approval: `payload` with `signatures` (key id, signature of
/// [`approval_signing_input`]`(payload)`).
pub fn seal_approval(payload: &[u8], signatures: &[(&str, &[u8])]) -> Result<String, Error> {
    let file = EnvelopeFile::new(APPROVAL_PAYLOAD_TYPE, payload, signatures)?;
    let body = toml::to_string(&file).map_err(|e| Error::Seal {
        reason: e.to_string(),
    })?;
    Ok(format!(
        "# A km team approval, signed by the team member who made it.\n{body}"
    ))
}

/// [`seal_approval`] with one signature by the Ed25519 key `key`.
pub fn seal_approval_ed25519(
    payload: &[u8],
    key: &ring::signature::Ed25519KeyPair,
) -> Result<String, Error> {
    let (key_id, signature) = sign_ed25519(APPROVAL_PAYLOAD_TYPE, payload, key)?;
    seal_approval(payload, &[(&key_id, &signature)])
}

/// Why one approval was refused, before it is placed in a file.
enum Refusal {
    NotSigned(String),
    Bad(String),
}

/// Verifies a parsed approval envelope: a signature by a key `signer` accepts (it names the key's
/// member), a header for `team` and `policy` naming that member.
fn verify_entry<'k>(
    entry: EnvelopeFile,
    team: &str,
    policy: &str,
    signer: &dyn Fn(&str) -> Option<(&'k str, &'k AdminKey)>,
) -> Result<SignedApproval, Refusal> {
    let envelope = Envelope::from_file(entry, APPROVAL_PAYLOAD_TYPE).map_err(Refusal::Bad)?;
    let key_id = match envelope.signer(APPROVAL_PAYLOAD_TYPE, |k| signer(k).map(|(_, key)| key)) {
        Signer::Verified(key_id) => key_id,
        Signer::Bad(key_id) => {
            let member = signer(&key_id).map_or("?", |(m, _)| m);
            return Err(Refusal::Bad(format!(
                "the signature of member {member}'s key {key_id} does not verify"
            )));
        }
        Signer::Unknown => return Err(Refusal::NotSigned(envelope.signers())),
    };
    let member = signer(&key_id).map_or("", |(m, _)| m);
    // Only signed bytes are parsed from here on.
    let payload = std::str::from_utf8(&envelope.payload)
        .map_err(|_| Refusal::Bad("the signed payload is not UTF-8".to_owned()))?;
    let mut body: toml::Table = payload
        .parse()
        .map_err(|e: toml::de::Error| Refusal::Bad(format!("the signed payload: {e}")))?;
    let header: ApprovalHeader = body
        .remove("approval")
        .ok_or_else(|| Refusal::Bad("the signed payload has no `approval` header".to_owned()))?
        .try_into()
        .map_err(|e: toml::de::Error| Refusal::Bad(format!("approval: {e}")))?;
    if header.team != team {
        return Err(Refusal::Bad(format!(
            "it is for team {}, not {team}",
            header.team
        )));
    }
    if header.policy != policy {
        return Err(Refusal::Bad(format!(
            "it is for {:?}, not {policy:?}",
            header.policy
        )));
    }
    if header.member != member {
        return Err(Refusal::Bad(format!(
            "it is signed by member {member}'s key but names member {}",
            header.member
        )));
    }
    Ok(SignedApproval {
        header,
        key_id,
        payload_sha256: km_durable::digest::sha256_hex(&envelope.payload),
        body,
    })
}

/// Verifies the envelope text of one approval (as [`seal_approval`] writes it) for `team` and
/// `policy`, with the keys `signer` accepts (key id → member id and key): what the API checks
/// when a member hands in an approval. `file` names it in errors.
pub fn verify_approval<'k>(
    file: &str,
    text: &str,
    team: &str,
    policy: &str,
    role: &str,
    signer: impl Fn(&str) -> Option<(&'k str, &'k AdminKey)>,
) -> Result<Verified<SignedApproval>, Error> {
    let entry: EnvelopeFile = toml::from_str(text).map_err(|e| Error::Envelope {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    verify_entry(entry, team, policy, &signer)
        .map(Verified)
        .map_err(|refusal| refusal.into_error(file, 0, role))
}

impl Refusal {
    fn into_error(self, file: &str, index: usize, role: &str) -> Error {
        match self {
            Refusal::NotSigned(signers) => Error::NotApproved {
                file: file.to_owned(),
                index,
                role: role.to_owned(),
                signers,
            },
            Refusal::Bad(reason) => Error::BadApproval {
                file: file.to_owned(),
                index,
                reason,
            },
        }
    }
}

/// An approvals file as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsFile {
    team: String,
    policy: String,
    #[serde(default)]
    approvals: Vec<EnvelopeFile>,
}

/// The text of `team/POLICY.approvals.toml` holding `envelopes` (each as [`seal_approval`]
/// wrote it, as received), for team-collaboration to write. Each must be a well-formed
/// envelope; whether it verifies is for the reader to decide.
pub fn approvals_text(team: &str, policy: &str, envelopes: &[&str]) -> Result<String, Error> {
    let seal = |reason: String| Error::Seal { reason };
    if envelopes.len() > MAX_APPROVALS {
        return Err(seal(format!(
            "an approvals file holds at most {MAX_APPROVALS} approvals"
        )));
    }
    let approvals = envelopes
        .iter()
        .enumerate()
        .map(|(i, text)| {
            toml::from_str::<EnvelopeFile>(text)
                .map_err(|e| seal(format!("approval {i} is not an envelope: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let file = ApprovalsFile {
        team: team.to_owned(),
        policy: policy.to_owned(),
        approvals,
    };
    let body = toml::to_string(&file).map_err(|e| seal(e.to_string()))?;
    Ok(format!(
        "# Shared approvals of team {team} for {policy}, each signed by the member who made it.\n\
         # Written by team-collaboration; every entry is verified against team/roster.toml.\n{body}"
    ))
}

/// An approval in force, with what it approves parsed as `A`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberApproval<A> {
    /// The verified approval (member, key, header).
    pub approval: Verified<SignedApproval>,
    /// What it approves.
    pub value: A,
}

/// The outcome of [`load_approvals`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalLoad<A> {
    /// The team, when the machine is in one.
    pub team: Option<String>,
    /// The approvals that verified.
    pub approvals: Vec<MemberApproval<A>>,
    /// What was refused: the roster's problems, the file's, and each refused entry.
    pub problems: Vec<Error>,
}

impl<A> Default for ApprovalLoad<A> {
    fn default() -> Self {
        ApprovalLoad {
            team: None,
            approvals: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// Loads the shared approvals of `policy` (`team/POLICY.approvals.toml`) that a roster member
/// with `role` signed, each parsed as `A`. Without a trust file (no team) or an approvals file,
/// none. The roster is loaded with [`super::load_team`], so its rollback protection is the
/// caller's own.
pub fn load_approvals<A: DeserializeOwned>(
    host: &impl PolicyHost,
    policy: &str,
    role: &str,
) -> ApprovalLoad<A> {
    let mut load = ApprovalLoad::default();
    let file = approvals_file(policy);
    if let Err(e) = check_name(&file) {
        load.problems.push(e);
        return load;
    }
    let trust = match host.read_policy(TRUST_FILE) {
        Ok(None) => return load,
        Ok(Some(text)) => match TeamTrust::parse(&text) {
            Ok(trust) => trust,
            Err(e) => {
                load.problems.push(e);
                return load;
            }
        },
        Err(message) => {
            load.problems.push(Error::Read {
                file: TRUST_FILE.to_owned(),
                message,
            });
            return load;
        }
    };
    load.team = Some(trust.team().to_owned());
    let text = match host.read_policy(&file) {
        Ok(Some(text)) => text,
        Ok(None) => return load,
        Err(message) => {
            load.problems.push(Error::Read { file, message });
            return load;
        }
    };
    let roster = super::load_team::<Roster>(host, ROSTER);
    load.problems.extend(roster.problems);
    let Some(roster) = roster.applied else {
        load.problems.push(Error::NoRoster { file });
        return load;
    };
    let parsed: ApprovalsFile = match toml::from_str(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            load.problems.push(Error::Envelope {
                file,
                reason: e.to_string(),
            });
            return load;
        }
    };
    if parsed.team != trust.team() {
        load.problems.push(Error::WrongTeam {
            file,
            expected: trust.team().to_owned(),
            found: parsed.team,
        });
        return load;
    }
    if parsed.policy != policy {
        load.problems.push(Error::WrongPolicy {
            file,
            expected: policy.to_owned(),
            found: parsed.policy,
        });
        return load;
    }
    let members = &roster.policy;
    let signer = |key_id: &str| {
        members
            .by_key_id(key_id)
            .filter(|m| m.has_role(role))
            .map(|m| (m.id(), m.key()))
    };
    for (index, entry) in parsed.approvals.into_iter().enumerate().take(MAX_APPROVALS) {
        let verified = verify_entry(entry, trust.team(), policy, &signer)
            .map_err(|refusal| refusal.into_error(&file, index, role))
            .and_then(|approval| {
                approval
                    .parse::<A>()
                    .map_err(|reason| Error::BadApproval {
                        file: file.clone(),
                        index,
                        reason,
                    })
                    .map(|value| MemberApproval {
                        approval: Verified(approval),
                        value,
                    })
            });
        match verified {
            Ok(approval) => load.approvals.push(approval),
            Err(e) => load.problems.push(e),
        }
    }
    load
}

#[cfg(test)]
mod tests;
