//! Where policies come from: [`PolicyHost`], the two things km-policy needs from its caller.
//!
//! In a plugin that is km itself, through the SDK's `Host`: `read_policy` reads
//! `KM_HOME/policies/NAME` with km's checks of every file that decides trust (owner, mode, no
//! links, size), and the data directory is the plugin's own, where km-policy records which team
//! policy it applied (rollback protection). [`PolicyDir`] reads a directory directly, for tools
//! that inspect policies outside a km process and for tests; it performs none of km's checks.

use std::path::{Path, PathBuf};

use crate::Error;

/// What km-policy needs from its caller: policy files, and a private directory for its state.
pub trait PolicyHost {
    /// The text of the policy file `name` under `KM_HOME/policies/` (`tool-guard.toml`,
    /// `team/tool-guard.toml`), `None` when it does not exist. The error is km's message.
    fn read_policy(&self, name: &str) -> Result<Option<String>, String>;

    /// A private directory where km-policy may keep state (the plugin's data directory).
    fn state_dir(&self) -> PathBuf;
}

#[cfg(feature = "sdk")]
impl PolicyHost for km_plugin_sdk::Host {
    fn read_policy(&self, name: &str) -> Result<Option<String>, String> {
        km_plugin_sdk::Host::read_policy(self, name).map_err(|e| e.message.into_string())
    }

    fn state_dir(&self) -> PathBuf {
        self.data_dir()
    }
}

impl<T: PolicyHost + ?Sized> PolicyHost for &T {
    fn read_policy(&self, name: &str) -> Result<Option<String>, String> {
        (**self).read_policy(name)
    }

    fn state_dir(&self) -> PathBuf {
        (**self).state_dir()
    }
}

/// A policy directory read directly, with a state directory beside it. It does none of km's
/// checks of owner and mode: for tools and tests, not for enforcement inside km.
#[derive(Debug, Clone)]
pub struct PolicyDir {
    policies: PathBuf,
    state: PathBuf,
}

impl PolicyDir {
    /// Policies under `policies` (the layout of `KM_HOME/policies/`), state under `state`.
    pub fn new(policies: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        PolicyDir {
            policies: policies.into(),
            state: state.into(),
        }
    }

    /// The policy directory.
    pub fn policies(&self) -> &Path {
        &self.policies
    }
}

impl PolicyHost for PolicyDir {
    fn read_policy(&self, name: &str) -> Result<Option<String>, String> {
        check_name(name).map_err(|e| e.to_string())?;
        let path = self.policies.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }
}

/// Checks a policy name the way km does: `NAME` or `DIR/NAME`, segments of `[a-z0-9._-]`, none
/// empty or starting with a dot.
pub fn check_name(name: &str) -> Result<(), Error> {
    let segments: Vec<&str> = name.split('/').collect();
    let bad = |reason| {
        Err(Error::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if !(1..=2).contains(&segments.len()) {
        return bad("a policy name is NAME or DIR/NAME");
    }
    for segment in segments {
        if segment.is_empty() || segment.starts_with('.') {
            return bad("a segment is empty or starts with '.'");
        }
        if !segment
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        {
            return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_km_checks_them() {
        for good in ["tool-guard.toml", "team/tool-guard.toml", "a.b_c-1"] {
            check_name(good).expect(good);
        }
        for bad in [
            "",
            "/abs.toml",
            "../up.toml",
            "team/../x",
            "a/b/c.toml",
            ".hidden",
            "Upper.toml",
            "team/.x",
        ] {
            assert!(
                matches!(check_name(bad), Err(Error::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_policy_dir_reads_files_and_reports_missing_ones_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.toml"), "x = 1\n").expect("write");
        let source = PolicyDir::new(dir.path(), dir.path().join("state"));
        assert_eq!(
            source.read_policy("p.toml").expect("reads").as_deref(),
            Some("x = 1\n")
        );
        assert_eq!(source.read_policy("team/p.toml").expect("reads"), None);
        assert!(source.read_policy("../p.toml").is_err());
        assert_eq!(source.state_dir(), dir.path().join("state"));
    }
}
