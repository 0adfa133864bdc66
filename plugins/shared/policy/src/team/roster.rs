//! The team roster: the members whose own keys may sign for the team, and what each may sign.
//!
//! Admin keys sign team policies, and an admin key is best kept offline. Some decisions are
//! made every day by people who are not admins: a changed tool definition reviewed and approved
//! by a member with the `approver` role should hold for the whole team without an admin signing
//! anything. So each such member has an Ed25519 key of their own (team-collaboration makes it
//! when they join), and the admin signs, once, which keys belong to whom and with which roles:
//! the roster. It is an ordinary signed team policy named `roster` (`team/roster.toml`, verified
//! and rollback-protected like every other, so a stale roster cannot give back a role that was
//! taken away), with this body:
//!
//! ```toml
//! [[members]]
//! id = "alice"                 # the member id the team uses (1 to 128 of A-Z a-z 0-9 . _ - @ +)
//! roles = ["approver"]         # what the member's key may sign; names of a-z 0-9 _ -
//! public_key = """
//! -----BEGIN PUBLIC KEY-----
//! MCowBQYDK2VwAyEA...
//! -----END PUBLIC KEY-----
//! """
//! ```
//!
//! What a role lets a key sign is up to the plugin that reads the statements: tool-guard accepts
//! shared approvals ([`super::approvals`]) signed by a member with the `approver` role. A member
//! listed without a role signs nothing.
//!
//! What is NOT checked: that a member's key is still in that member's hands. Removing a member
//! (or a role) from the roster and publishing a higher version revokes everything their key
//! signed, for every plugin that loads the new roster.

use serde::{Deserialize, Serialize};

use super::keys::AdminKey;

/// The roster's policy name: `KM_HOME/policies/team/roster.toml`.
pub const ROSTER: &str = "roster";

/// The most members a roster lists (a team policy file is at most 1 MiB anyway).
const MAX_MEMBERS: usize = 10_000;

/// The roster as written in its bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RosterFile {
    /// The members.
    #[serde(default)]
    pub members: Vec<RosterEntry>,
}

/// One member as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// The member id.
    pub id: String,
    /// The member's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The member's Ed25519 public key, PEM (as `km plugin team-collaboration join` prints it).
    pub public_key: String,
}

/// A checked roster: ids and keys unique, keys readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    members: Vec<Member>,
}

/// A member of a checked roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    id: String,
    roles: Vec<String>,
    key: AdminKey,
}

impl Member {
    /// The member id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The member's roles.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// Whether the member has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The member's key.
    pub fn key(&self) -> &AdminKey {
        &self.key
    }
}

/// Whether `id` is a usable member id: 1 to 128 characters of `[A-Za-z0-9._@+-]`.
pub fn valid_member_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'))
}

/// Whether `role` is a usable role name: 1 to 32 characters of `[a-z0-9_-]`.
pub fn valid_role(role: &str) -> bool {
    (1..=32).contains(&role.len())
        && role
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

impl RosterFile {
    /// Checks the roster: what is wrong names the member.
    pub fn check(&self) -> Result<Roster, String> {
        if self.members.len() > MAX_MEMBERS {
            return Err(format!("a roster lists at most {MAX_MEMBERS} members"));
        }
        let mut members: Vec<Member> = Vec::with_capacity(self.members.len());
        for (i, entry) in self.members.iter().enumerate() {
            if !valid_member_id(&entry.id) {
                return Err(format!(
                    "members[{i}]: id {:?} is not 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-', '@', '+'",
                    entry.id
                ));
            }
            if let Some(role) = entry.roles.iter().find(|r| !valid_role(r)) {
                return Err(format!(
                    "member {}: role {role:?} is not 1 to 32 characters of a-z, 0-9, '_', '-'",
                    entry.id
                ));
            }
            let key = AdminKey::from_pem(&entry.public_key)
                .map_err(|e| format!("member {}: public_key: {e}", entry.id))?;
            if let Some(other) = members.iter().find(|m| m.id == entry.id) {
                return Err(format!("member {} is listed twice", other.id));
            }
            if let Some(other) = members.iter().find(|m| m.key == key) {
                return Err(format!(
                    "members {} and {} have the same key ({})",
                    other.id,
                    entry.id,
                    key.key_id()
                ));
            }
            members.push(Member {
                id: entry.id.clone(),
                roles: entry.roles.clone(),
                key,
            });
        }
        Ok(Roster { members })
    }
}

impl Roster {
    /// Reads a roster from a verified bundle's body.
    pub fn from_body(body: &toml::Table) -> Result<Roster, String> {
        let file: RosterFile = toml::Value::Table(body.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        file.check()
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member whose key has id `key_id`.
    pub fn by_key_id(&self, key_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.key.key_id() == key_id)
    }

    /// The member `id`.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

impl<'de> Deserialize<'de> for Roster {
    /// A roster deserializes only when it checks, so that `load_team::<Roster>` refuses a bad
    /// one like any other invalid policy.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RosterFile::deserialize(deserializer)?
            .check()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(byte: u8) -> String {
        AdminKey::from_raw([byte; 32]).to_pem()
    }

    fn entry(id: &str, roles: &[&str], byte: u8) -> RosterEntry {
        RosterEntry {
            id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            public_key: pem(byte),
        }
    }

    #[test]
    fn a_roster_finds_members_by_key_and_checks_their_roles() {
        let roster = RosterFile {
            members: vec![entry("alice", &["approver"], 1), entry("bob", &[], 2)],
        }
        .check()
        .expect("valid");
        let alice_key = AdminKey::from_raw([1; 32]);
        let alice = roster.by_key_id(alice_key.key_id()).expect("alice");
        assert_eq!(alice.id(), "alice");
        assert!(alice.has_role("approver"));
        assert!(!roster.member("bob").expect("bob").has_role("approver"));
        assert!(roster.by_key_id("00").is_none());
        let text = toml::to_string(&RosterFile {
            members: vec![entry("alice@acme.example", &["approver", "admin"], 1)],
        })
        .expect("serialises");
        let parsed: Roster = toml::from_str(&text).expect("parses back");
        assert_eq!(parsed.members()[0].roles(), ["approver", "admin"]);
    }

    #[test]
    fn duplicate_members_or_keys_and_bad_names_are_refused_by_name() {
        let cases = [
            (vec![entry("a", &[], 1), entry("a", &[], 2)], "listed twice"),
            (vec![entry("a", &[], 1), entry("b", &[], 1)], "same key"),
            (vec![entry("a b", &[], 1)], "members[0]"),
            (vec![entry("a", &["Approver"], 1)], "role \"Approver\""),
        ];
        for (members, needle) in cases {
            let err = RosterFile { members }.check().expect_err(needle);
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let bad_key = RosterEntry {
            public_key: "nope".to_owned(),
            ..entry("carol", &[], 1)
        };
        let err = RosterFile {
            members: vec![bad_key],
        }
        .check()
        .expect_err("bad key");
        assert!(err.contains("member carol: public_key"), "{err}");
        let err =
            toml::from_str::<Roster>("[[members]]\nid = \"x\"\npublic_key = \"k\"\nrole = \"a\"\n")
                .expect_err("unknown field");
        assert!(err.to_string().contains("role"), "{err}");
    }
}
