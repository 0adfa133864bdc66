//! The team trust file, `KM_HOME/policies/team/trust.toml`: which team this machine is in, and
//! the admin keys whose signatures make a team policy valid. team-collaboration writes it when
//! the user joins a team (`km plugin team-collaboration join TEAM --admin-key ADMIN.pub`); every
//! plugin that reads team policies verifies them against it, and against nothing else: a team
//! policy never brings its own keys.
//!
//! ```toml
//! team = "acme"
//!
//! [[admin_keys]]
//! label = "acme admin 2025"   # optional, for people
//! public_key = """
//! -----BEGIN PUBLIC KEY-----
//! MCowBQYDK2VwAyEA...
//! -----END PUBLIC KEY-----
//! """
//! ```

use serde::{Deserialize, Serialize};

use super::keys::AdminKey;
use crate::Error;

/// The name of the trust file under `KM_HOME/policies/`.
pub const TRUST_FILE: &str = "team/trust.toml";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    team: String,
    admin_keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    public_key: String,
}

/// The team and its admin keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamTrust {
    team: String,
    keys: Vec<(Option<String>, AdminKey)>,
}

/// Whether `team` is a usable team name: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn valid_team(team: &str) -> bool {
    (1..=64).contains(&team.len())
        && team
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TeamTrust {
    /// A trust file's content for `team` with `keys` (label, key).
    pub fn new(team: &str, keys: Vec<(Option<String>, AdminKey)>) -> Result<Self, Error> {
        let trust = TeamTrust {
            team: team.to_owned(),
            keys,
        };
        trust.check(TRUST_FILE)?;
        Ok(trust)
    }

    /// Parses the trust file's text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Trust {
            file: TRUST_FILE.to_owned(),
            reason,
        };
        let file: TrustFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::with_capacity(file.admin_keys.len());
        for (i, entry) in file.admin_keys.into_iter().enumerate() {
            let key = AdminKey::from_pem(&entry.public_key)
                .map_err(|e| bad(format!("admin_keys[{i}]: {e}")))?;
            keys.push((entry.label, key));
        }
        let trust = TeamTrust {
            team: file.team,
            keys,
        };
        trust.check(TRUST_FILE)?;
        Ok(trust)
    }

    fn check(&self, file: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::Trust {
            file: file.to_owned(),
            reason,
        };
        if !valid_team(&self.team) {
            return Err(bad(format!(
                "team {:?} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
                self.team
            )));
        }
        if self.keys.is_empty() {
            return Err(bad("it lists no admin key".to_owned()));
        }
        Ok(())
    }

    /// The file's text, as team-collaboration writes it.
    pub fn to_toml(&self) -> String {
        let file = TrustFile {
            team: self.team.clone(),
            admin_keys: self
                .keys
                .iter()
                .map(|(label, key)| KeyEntry {
                    label: label.clone(),
                    public_key: key.to_pem(),
                })
                .collect(),
        };
        // Serialising two strings and a list of tables cannot fail.
        toml::to_string(&file).unwrap_or_default()
    }

    /// The team.
    pub fn team(&self) -> &str {
        &self.team
    }

    /// The admin keys.
    pub fn keys(&self) -> impl Iterator<Item = &AdminKey> {
        self.keys.iter().map(|(_, key)| key)
    }

    /// The admin key with id `key_id`.
    pub(crate) fn key(&self, key_id: &str) -> Option<&AdminKey> {
        self.keys().find(|key| key.key_id() == key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_file_round_trips_and_is_checked() {
        let key = AdminKey::from_raw([7; 32]);
        let trust =
            TeamTrust::new("acme", vec![(Some("admin".into()), key.clone())]).expect("valid");
        let parsed = TeamTrust::parse(&trust.to_toml()).expect("parses");
        assert_eq!(parsed, trust);
        assert_eq!(parsed.key(key.key_id()), Some(&key));
        assert!(TeamTrust::new("a b", vec![(None, key.clone())]).is_err());
        assert!(TeamTrust::new("acme", vec![]).is_err());
        let err = TeamTrust::parse("team = \"acme\"\nadmin_keys = [{ public_key = \"x\" }]\n")
            .expect_err("bad key");
        assert!(err.to_string().contains("admin_keys[0]"), "{err}");
        assert!(err.to_string().contains("team/trust.toml"), "{err}");
    }
}
