//! The trust store: which keys may sign plugins, for which plugin names, and what is revoked.
//!
//! Two sources of keys: built-in keys compiled into km ([`TrustStore::add_builtin`], never
//! written to disk, cannot be removed, only revoked) and keys the user added (`km trust add`),
//! persisted in a directory (`KM_HOME/trusted-keys`):
//!
//! ```text
//! DIR/                        mode 0700
//!   <keyid>.pub               the public key, PEM SubjectPublicKeyInfo
//!   <keyid>.json              {"label": "...", "scope": ["name", ...] | null, "added_at": "RFC 3339"}
//!   revocations.json          {"revocations": [{"what": "<key id or sha256>", "reason": ..., "revoked_at": ...}]}
//! ```
//!
//! Every file is written atomically. Loading is strict: a `.pub` file whose key id is not its
//! name, a missing or malformed `.json`, or a directory or file writable by group/others is an
//! error rather than something skipped, since a silently ignored entry (its scope, say) would
//! widen trust. Other files (such as a README) are ignored.
//!
//! What is NOT here: no online revocation, no key expiry (use revocation), no chain of trust.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Replace};
use crate::keys::{KeyId, PublicKey};
use crate::manifest::{check_name, format_timestamp};
use crate::Error;

const REVOCATIONS_FILE: &str = "revocations.json";
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A key trusted to sign plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key's id.
    pub key_id: KeyId,
    /// A human name for it.
    pub label: String,
    /// The plugin names it may sign; `None` means any plugin.
    pub scope: Option<Vec<String>>,
    /// Compiled into km (not removable).
    pub builtin: bool,
    /// The key.
    pub public_key: PublicKey,
}

impl TrustedKey {
    /// Whether this key may sign plugin `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

/// A revoked key id or library hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// A key id (32 hex) or a library sha256 (64 hex), lower-case.
    pub what: String,
    /// Why, if given.
    pub reason: Option<String>,
    /// When, RFC 3339 UTC.
    pub revoked_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyMeta {
    label: String,
    scope: Option<Vec<String>>,
    added_at: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevocationsFile {
    revocations: Vec<Revocation>,
}

/// Trusted keys and revocations. An empty store (`TrustStore::default()`) trusts nothing.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    dir: Option<PathBuf>,
    keys: Vec<TrustedKey>,
    revocations: Vec<Revocation>,
}

impl TrustStore {
    /// Loads the user's keys and revocations from `dir`; a missing directory is an empty store
    /// (created on the first [`add`](Self::add) or [`revoke`](Self::revoke)).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let mut store = TrustStore {
            dir: Some(dir.to_path_buf()),
            ..TrustStore::default()
        };
        let meta = match fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(Error::io(dir, e)),
        };
        if !meta.is_dir() {
            return Err(Error::io(dir, std::io::Error::other("not a directory")));
        }
        fsutil::check_not_writable_by_others(dir, &meta)?;
        let mut pubs = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".pub") {
                if !name.starts_with('.') {
                    pubs.push((stem.to_owned(), path));
                }
            }
        }
        pubs.sort();
        for (stem, path) in pubs {
            store.keys.push(load_key(dir, &stem, &path)?);
        }
        store.revocations = read_revocations(&dir.join(REVOCATIONS_FILE))?;
        Ok(store)
    }

    /// Trusts a key compiled into km, with any scope. Not persisted. If the same key was also
    /// added by the user, the built-in entry replaces it.
    pub fn add_builtin(&mut self, label: &str, pem: &str) -> Result<KeyId, Error> {
        let public_key = PublicKey::from_pem(pem).map_err(|e| match e {
            Error::BadKey { reason } => Error::BadKey {
                reason: format!("built-in key {label:?}: {reason}"),
            },
            other => other,
        })?;
        let key_id = public_key.key_id();
        self.keys.retain(|k| k.key_id != key_id);
        self.keys.push(TrustedKey {
            key_id: key_id.clone(),
            label: label.to_owned(),
            scope: None,
            builtin: true,
            public_key,
        });
        Ok(key_id)
    }

    /// Trusts `key` (for the plugin names in `scope`, or any plugin) and persists it. Adding a
    /// key again replaces its label and scope. The label defaults to the key id.
    pub fn add(
        &mut self,
        key: PublicKey,
        label: Option<String>,
        scope: Option<Vec<String>>,
    ) -> Result<KeyId, Error> {
        let key_id = key.key_id();
        if self.find(&key_id).is_some_and(|k| k.builtin) {
            return Err(Error::BuiltinKey {
                key_id: key_id.to_string(),
            });
        }
        let label = label.unwrap_or_else(|| key_id.to_string());
        if label.is_empty() || label.len() > 200 || label.chars().any(char::is_control) {
            return Err(Error::InvalidInput {
                what: "label",
                value: label,
                reason: "1 to 200 printable characters".to_owned(),
            });
        }
        if let Some(names) = &scope {
            if names.is_empty() {
                return Err(Error::InvalidInput {
                    what: "scope",
                    value: String::new(),
                    reason: "an empty scope would allow nothing; omit it to allow any plugin"
                        .to_owned(),
                });
            }
            for n in names {
                check_name(n)?;
            }
        }
        let dir = self.dir_for_writing()?;
        let meta = KeyMeta {
            label: label.clone(),
            scope: scope.clone(),
            added_at: format_timestamp(SystemTime::now()),
        };
        // The metadata first: a `.pub` without its `.json` would not load.
        fsutil::write_atomic(
            &dir.join(format!("{key_id}.json")),
            &to_json(&meta),
            0o600,
            Replace::Yes,
        )?;
        fsutil::write_atomic(
            &dir.join(format!("{key_id}.pub")),
            key.to_pem().as_bytes(),
            0o600,
            Replace::Yes,
        )?;
        self.keys.retain(|k| k.key_id != key_id);
        self.keys.push(TrustedKey {
            key_id: key_id.clone(),
            label,
            scope,
            builtin: false,
            public_key: key,
        });
        Ok(key_id)
    }

    /// Stops trusting a key the user added, deleting its files. Built-in keys cannot be
    /// removed ([`Error::BuiltinKey`]; revoke them); unknown ids are [`Error::UntrustedKey`].
    pub fn remove(&mut self, key_id: &KeyId) -> Result<(), Error> {
        match self.find(key_id) {
            None => {
                return Err(Error::UntrustedKey {
                    key_id: key_id.to_string(),
                })
            }
            Some(k) if k.builtin => {
                return Err(Error::BuiltinKey {
                    key_id: key_id.to_string(),
                })
            }
            Some(_) => {}
        }
        let dir = self.dir_for_writing()?;
        // The key first: once it is gone the key is no longer trusted, whatever happens next.
        for ext in ["pub", "json"] {
            let path = dir.join(format!("{key_id}.{ext}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        self.keys.retain(|k| &k.key_id != key_id);
        Ok(())
    }

    /// Revokes a key id (32 hex characters) or a library sha256 (64) and persists it. Revoking
    /// again keeps the first revocation.
    pub fn revoke(&mut self, what: &str, reason: Option<String>) -> Result<(), Error> {
        let what = normalize_revocation(what)?;
        if self.revocation(&what).is_some() {
            return Ok(());
        }
        let dir = self.dir_for_writing()?;
        // Merge with what is on disk now, so that a revocation saved by another km since this
        // store was loaded is not lost.
        let mut revocations = read_revocations(&dir.join(REVOCATIONS_FILE))?;
        for r in &self.revocations {
            if !revocations.iter().any(|x| x.what == r.what) {
                revocations.push(r.clone());
            }
        }
        revocations.push(Revocation {
            what,
            reason,
            revoked_at: format_timestamp(SystemTime::now()),
        });
        let file = RevocationsFile { revocations };
        fsutil::write_atomic(
            &dir.join(REVOCATIONS_FILE),
            &to_json(&file),
            0o600,
            Replace::Yes,
        )?;
        self.revocations = file.revocations;
        Ok(())
    }

    /// All trusted keys, built-in and added.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// All revocations.
    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    /// The trusted key with this id.
    pub fn find(&self, key_id: &KeyId) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| &k.key_id == key_id)
    }

    /// The revocation of a key id or sha256 (lower-case hex), if any.
    pub fn revocation(&self, what: &str) -> Option<&Revocation> {
        self.revocations.iter().find(|r| r.what == what)
    }

    fn dir_for_writing(&self) -> Result<PathBuf, Error> {
        let dir = self.dir.clone().ok_or_else(|| {
            Error::io(
                "<trust store>",
                std::io::Error::other("this trust store has no directory to save to"),
            )
        })?;
        fsutil::ensure_private_dir(&dir)?;
        Ok(dir)
    }
}

fn load_key(dir: &Path, stem: &str, path: &Path) -> Result<TrustedKey, Error> {
    let invalid = |path: &Path, msg: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        )
    };
    let pem =
        read_small(path)?.ok_or_else(|| invalid(path, "disappeared while loading".to_owned()))?;
    let pem = String::from_utf8(pem).map_err(|_| invalid(path, "not UTF-8 PEM".to_owned()))?;
    let public_key = PublicKey::from_pem(&pem).map_err(|e| invalid(path, e.to_string()))?;
    let key_id = public_key.key_id();
    if key_id.as_str() != stem {
        return Err(invalid(
            path,
            format!("holds key {key_id}, but the file name says {stem}"),
        ));
    }
    let meta_path = dir.join(format!("{stem}.json"));
    let bytes = read_small(&meta_path)?.ok_or_else(|| {
        invalid(
            &meta_path,
            "missing (every .pub needs its .json)".to_owned(),
        )
    })?;
    let meta: KeyMeta =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&meta_path, e.to_string()))?;
    if let Some(names) = &meta.scope {
        for n in names {
            check_name(n).map_err(|e| invalid(&meta_path, e.to_string()))?;
        }
    }
    Ok(TrustedKey {
        key_id,
        label: meta.label,
        scope: meta.scope,
        builtin: false,
        public_key,
    })
}

/// The revocations saved at `path` (none when it does not exist).
fn read_revocations(path: &Path) -> Result<Vec<Revocation>, Error> {
    let invalid = |msg: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        )
    };
    let Some(bytes) = read_small(path)? else {
        return Ok(Vec::new());
    };
    let file: RevocationsFile =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    for r in &file.revocations {
        if normalize_revocation(&r.what).ok().as_deref() != Some(r.what.as_str()) {
            return Err(invalid(format!(
                "{:?} is not a lower-case key id or sha256",
                r.what
            )));
        }
    }
    Ok(file.revocations)
}

/// Reads a small trust store file, refusing it when others may write to it.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        return Err(Error::io(path, std::io::Error::other("not a regular file")));
    }
    fsutil::check_not_writable_by_others(path, &meta)?;
    match fsutil::read_capped(path, MAX_FILE_BYTES)? {
        Some(b) if b.len() as u64 > MAX_FILE_BYTES => Err(Error::io(
            path,
            std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")),
        )),
        other => Ok(other),
    }
}

/// A key id (32 hex) or sha256 (64 hex), lower-cased.
fn normalize_revocation(what: &str) -> Result<String, Error> {
    if (what.len() == 32 || what.len() == 64) && what.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(what.to_ascii_lowercase())
    } else {
        Err(Error::InvalidInput {
            what: "revocation",
            value: what.to_owned(),
            reason: "give a key id (32 hex characters) or a library sha256 (64 hex characters)"
                .to_owned(),
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // These structs hold strings and lists only: serialising cannot fail.
    let mut bytes = serde_json::to_vec_pretty(value).expect("trust store entries always serialise");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests;
