//! The member's own Ed25519 key: it signs the approvals this member makes for the team.
//!
//! Made by `join` (ring, from the operating system's randomness) and kept in the plugin's data
//! directory as PKCS#8 (`member-key.pk8`, mode 0600, created once, never overwritten). Its
//! public half goes to the API (registered for the member) and, by the admin's hand, into the
//! team's signed roster, which is what every member's tool-guard checks an approval against:
//! the key alone grants nothing.
//!
//! What is NOT protected: the key against someone who can read this user's files. Losing it, or
//! suspecting it was copied, is handled like a lost password: the admin drops it from the roster.

use std::path::{Path, PathBuf};

use km_policy::team::{approval_payload, seal_approval_ed25519, AdminKey, ApprovalHeader};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::Error;

/// The member's key pair.
pub(crate) struct MemberKey {
    pair: Ed25519KeyPair,
    public: AdminKey,
}

impl std::fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemberKey({})", self.public.key_id())
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join("member-key.pk8")
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl MemberKey {
    fn from_pkcs8(path: &Path, der: &[u8]) -> Result<MemberKey, Error> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|_| file_error(path, "not an Ed25519 PKCS#8 key"))?;
        let raw: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| file_error(path, "not an Ed25519 key"))?;
        Ok(MemberKey {
            pair,
            public: AdminKey::from_raw(raw),
        })
    }

    /// The key in `dir`, if there is one.
    pub(crate) fn load(dir: &Path) -> Result<Option<MemberKey>, Error> {
        let path = path(dir);
        match std::fs::read(&path) {
            Ok(der) => MemberKey::from_pkcs8(&path, &der).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_error(&path, e)),
        }
    }

    /// The key in `dir`, made now if there is none (`true` then).
    pub(crate) fn load_or_create(dir: &Path) -> Result<(MemberKey, bool), Error> {
        if let Some(key) = MemberKey::load(dir)? {
            return Ok((key, false));
        }
        let path = path(dir);
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| file_error(&path, "the system's random generator failed"))?;
        match km_durable::write_new(&path, der.as_ref(), km_durable::PRIVATE) {
            Ok(()) => MemberKey::from_pkcs8(&path, der.as_ref()).map(|k| (k, true)),
            // Another process made one meanwhile: that one is the key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => MemberKey::load(dir)?
                .map(|k| (k, false))
                .ok_or_else(|| file_error(&path, "vanished while being created")),
            Err(e) => Err(file_error(&path, e)),
        }
    }

    /// The public key.
    pub(crate) fn public(&self) -> &AdminKey {
        &self.public
    }

    /// An approval of `body` (TOML: what is approved) for `policy` of `team`, signed as `member`.
    pub(crate) fn sign_approval(
        &self,
        team: &str,
        policy: &str,
        member: &str,
        issued_at: &str,
        body: &str,
    ) -> Result<String, Error> {
        let header = ApprovalHeader {
            team: team.to_owned(),
            policy: policy.to_owned(),
            member: member.to_owned(),
            issued_at: Some(issued_at.to_owned()),
        };
        let payload = approval_payload(&header, body)?;
        Ok(seal_approval_ed25519(payload.as_bytes(), &self.pair)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_signs_approvals() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(MemberKey::load(dir.path()).expect("reads").is_none());
        let (key, created) = MemberKey::load_or_create(dir.path()).expect("creates");
        assert!(created);
        let (again, created) = MemberKey::load_or_create(dir.path()).expect("loads");
        assert!(!created);
        assert_eq!(again.public(), key.public());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path(dir.path()))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let envelope = key
            .sign_approval(
                "acme",
                "tool-guard",
                "alice",
                "2025-06-01T00:00:00Z",
                "name = \"x\"\n",
            )
            .expect("signs");
        let public = key.public().clone();
        let verified = km_policy::team::verify_approval(
            "t",
            &envelope,
            "acme",
            "tool-guard",
            "approver",
            |k| (k == public.key_id()).then_some(("alice", &public)),
        )
        .expect("verifies");
        assert_eq!(verified.member(), "alice");
        std::fs::write(path(dir.path()), b"junk").expect("write");
        assert!(MemberKey::load(dir.path()).is_err());
    }
}
