//! The highest version of each plugin km has accepted, to refuse a rollback to an older (perhaps
//! vulnerable, but still validly signed) version.
//!
//! Stored as `KM_HOME/state/seen-versions.json`: `{"versions": {"<plugin name>": "<semver>"}}`.
//! A missing file is an empty record. Saving is atomic. What is NOT protected: someone who can
//! write this file (or delete it) can reset the record; it guards against a downgraded library
//! being dropped into the plugin directory, not against the local user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Replace};
use crate::Error;

const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    versions: BTreeMap<String, Version>,
}

/// Highest version seen per plugin name, saved at one path.
#[derive(Debug, Clone)]
pub struct SeenVersions {
    path: PathBuf,
    versions: BTreeMap<String, Version>,
}

impl SeenVersions {
    /// Loads the record at `path`; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let versions = match fsutil::read_capped(path, MAX_FILE_BYTES)? {
            None => BTreeMap::new(),
            Some(b) if b.len() as u64 > MAX_FILE_BYTES => {
                return Err(Error::io(
                    path,
                    std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")),
                ))
            }
            Some(bytes) => {
                let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::io(
                        path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
                disk.versions
            }
        };
        Ok(SeenVersions {
            path: path.to_path_buf(),
            versions,
        })
    }

    /// The highest version of `name` seen so far.
    pub fn highest(&self, name: &str) -> Option<&Version> {
        self.versions.get(name)
    }

    /// Records that `version` of `name` was accepted. Keeps the maximum; saves (atomically,
    /// creating the parent directory with mode 0700) only when the record changes.
    pub fn record(&mut self, name: &str, version: &Version) -> Result<(), Error> {
        if self.highest(name).is_some_and(|h| h >= version) {
            return Ok(());
        }
        let mut versions = self.versions.clone();
        versions.insert(name.to_owned(), version.clone());
        let disk = OnDisk { versions };
        // A map of strings to versions always serialises.
        let mut bytes = serde_json::to_vec_pretty(&disk).expect("seen versions always serialise");
        bytes.push(b'\n');
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsutil::ensure_private_dir(parent)?;
        }
        fsutil::write_atomic(&self.path, &bytes, 0o600, Replace::Yes)?;
        self.versions = disk.versions;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("semver")
    }

    #[test]
    fn keeps_the_maximum_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("seen-versions.json");
        let mut seen = SeenVersions::load(&path).expect("missing is empty");
        assert!(seen.highest("a").is_none());
        seen.record("a", &v("1.2.0")).expect("records");
        seen.record("a", &v("1.1.0")).expect("older is ignored");
        seen.record("a", &v("1.10.0")).expect("records");
        seen.record("b", &v("0.1.0-beta.1")).expect("records");
        let again = SeenVersions::load(&path).expect("reloads");
        assert_eq!(again.highest("a"), Some(&v("1.10.0")));
        assert_eq!(again.highest("b"), Some(&v("0.1.0-beta.1")));
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seen-versions.json");
        std::fs::write(&path, b"{\"versions\": {\"a\": \"not semver\"}}").expect("write");
        let err = SeenVersions::load(&path).expect_err("refused");
        assert!(err.to_string().contains("seen-versions.json"), "{err}");
    }
}
