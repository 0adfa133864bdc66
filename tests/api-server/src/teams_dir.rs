//! The teams directory (`--teams-dir DIR`): how teams, their members and their signed policies
//! are created, and how changes to them reach the database.
//!
//! ```text
//! DIR/
//!   acme/                      the team's name (1 to 64 of A-Z a-z 0-9 . _ -)
//!     team.toml                its admin keys and members
//!     team-collaboration.toml  signed policies, as `km-sign team-policy` writes them:
//!     tool-guard.toml          one file per policy, named after it
//! ```
//!
//! ```toml
//! # team.toml
//! [[admin_keys]]
//! label = "acme admin 2025"        # optional
//! public_key = """
//! -----BEGIN PUBLIC KEY-----
//! MCowBQYDK2VwAyEA...
//! -----END PUBLIC KEY-----
//! """
//!
//! [[members]]
//! id = "alice"                     # the member id the team sees (1 to 128 of A-Z a-z 0-9 . _ - @ +)
//! customer = "cust_alice"          # the customer (customers file) whose API key they use
//! role = "approver"                # member | approver | admin
//! ```
//!
//! Unknown fields are refused. `team.toml` is the source of truth for the members it lists (a
//! member it no longer lists stops being one; members an admin added through the API are left
//! alone). Every other `.toml` file of a team's directory is a policy: it must verify against the
//! team's admin keys and be for that team and the policy its name says, and it is stored when
//! its version is newer than the one held (an older one is skipped: a newer one came through the
//! API; the same version with other content is refused). The directory is read at start (a team
//! that does not read is a start-up error) and checked again before every team request; when a
//! file's identity, size or modification time moved, the teams are read again and applied, each
//! in its own transaction. A team whose `team.toml` does not read or validate then is reported on
//! stderr and keeps what it had.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context as _};
use km_policy::team::roster::valid_member_id;
use km_policy::team::{valid_team, AdminKey, TeamTrust};
use serde::Deserialize;

use crate::store::teams::{FileTeam, NewPolicy, PolicyAdded, Role};
use crate::store::Store;

/// The name of a team's description in its directory.
const TEAM_FILE: &str = "team.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamDocument {
    admin_keys: Vec<AdminKeyEntry>,
    #[serde(default)]
    members: Vec<MemberEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminKeyEntry {
    #[serde(default)]
    #[allow(dead_code)] // for people reading the file
    label: Option<String>,
    public_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    id: String,
    customer: String,
    role: String,
}

/// What identifies one version of one file: path, device, inode, size, mtime (s, ns).
type Stamp = (PathBuf, u64, u64, u64, i64, i64);

/// The teams directory, with the stamps of the files last applied.
#[derive(Debug)]
pub(crate) struct TeamsDir {
    path: PathBuf,
    applied: Mutex<Option<Vec<Stamp>>>,
}

/// What the team routes share: the teams directory, and the policies the test control serves
/// in place of the latest (kept in memory: a lie lasts as long as the server).
#[derive(Debug, Default)]
pub(crate) struct Teams {
    dir: Option<TeamsDir>,
    overrides: Mutex<BTreeMap<(String, String), String>>,
}

impl Teams {
    /// With the teams directory `dir`, when one was given.
    pub(crate) fn new(dir: Option<TeamsDir>) -> Self {
        Teams {
            dir,
            overrides: Mutex::default(),
        }
    }

    /// Applies the teams directory's changes, if it changed.
    pub(crate) fn sync(&self, store: &Store) {
        if let Some(dir) = &self.dir {
            dir.sync_if_changed(store);
        }
    }

    /// Serves `envelope` as `policy` of `team` instead of the latest; `None` ends it.
    pub(crate) fn set_override(&self, team: &str, policy: &str, envelope: Option<String>) {
        let mut overrides = self
            .overrides
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (team.to_owned(), policy.to_owned());
        match envelope {
            Some(envelope) => {
                overrides.insert(key, envelope);
            }
            None => {
                overrides.remove(&key);
            }
        }
    }

    /// The overrides of `team`: `(policy, envelope)`.
    pub(crate) fn overrides_of(&self, team: &str) -> Vec<(String, String)> {
        self.overrides
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((t, _), _)| t == team)
            .map(|((_, policy), envelope)| (policy.clone(), envelope.clone()))
            .collect()
    }
}

/// Parses and checks a team's `team.toml` text.
pub(crate) fn parse_team(name: &str, text: &str) -> anyhow::Result<FileTeam> {
    if !valid_team(name) {
        bail!("{name:?} is not a team name (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-')");
    }
    let document: TeamDocument = toml::from_str(text)?;
    if document.admin_keys.is_empty() {
        bail!("it lists no admin key: its policies could not be verified");
    }
    let mut admin_keys = Vec::with_capacity(document.admin_keys.len());
    for (i, entry) in document.admin_keys.iter().enumerate() {
        let key = AdminKey::from_pem(&entry.public_key)
            .map_err(|e| anyhow::anyhow!("admin_keys[{i}]: {e}"))?;
        admin_keys.push(key.to_pem());
    }
    let mut members: Vec<(String, String, Role)> = Vec::with_capacity(document.members.len());
    for entry in document.members {
        if !valid_member_id(&entry.id) {
            bail!(
                "member {:?}: not 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', '@', '+'",
                entry.id
            );
        }
        let role = Role::parse(&entry.role).with_context(|| {
            format!(
                "member {}: unknown role {:?} (member, approver or admin)",
                entry.id, entry.role
            )
        })?;
        if members.iter().any(|(id, _, _)| *id == entry.id) {
            bail!("member {} is listed twice", entry.id);
        }
        if let Some((other, _, _)) = members.iter().find(|(_, c, _)| *c == entry.customer) {
            bail!(
                "members {other} and {} are the same customer {}",
                entry.id,
                entry.customer
            );
        }
        members.push((entry.id, entry.customer, role));
    }
    Ok(FileTeam {
        name: name.to_owned(),
        admin_keys,
        members,
    })
}

/// The stamps of every file under `dir` (two levels), sorted.
fn stamps(dir: &Path) -> anyhow::Result<Vec<Stamp>> {
    let mut out = Vec::new();
    for team in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let team = team.with_context(|| format!("reading {}", dir.display()))?;
        if !team.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let team_dir = team.path();
        for file in std::fs::read_dir(&team_dir)
            .with_context(|| format!("reading {}", team_dir.display()))?
        {
            let path = file
                .with_context(|| format!("reading {}", team_dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                let meta = std::fs::metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                out.push((
                    path,
                    meta.dev(),
                    meta.ino(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl TeamsDir {
    /// Reads `path` and applies every team in it to `store`; an error when a team does not read
    /// or validate.
    pub(crate) fn load(path: &Path, store: &Store) -> anyhow::Result<Self> {
        let dir = TeamsDir {
            path: path.to_path_buf(),
            applied: Mutex::new(None),
        };
        let mut applied = dir.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let before = stamps(path)?;
        for team in dir.teams(&before) {
            dir.apply(&team, store)?;
        }
        *applied = Some(before);
        drop(applied);
        Ok(dir)
    }

    /// Applies what changed since the last time. A team that fails is reported and keeps what
    /// it had; the others are applied.
    pub(crate) fn sync_if_changed(&self, store: &Store) {
        // The lock holds only stamps, always written whole.
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let before = match stamps(&self.path) {
            Ok(stamps) => stamps,
            Err(e) => {
                eprintln!("km-api-server: teams directory: {e:#}");
                return;
            }
        };
        if applied.as_ref() == Some(&before) {
            return;
        }
        for team in self.teams(&before) {
            if let Err(e) = self.apply(&team, store) {
                eprintln!("km-api-server: {e:#} (team {team} keeps what it had)");
            }
        }
        // The stamps taken before reading: a write that raced the read is seen on the next check.
        *applied = Some(before);
    }

    /// The team names in `stamps`.
    fn teams(&self, stamps: &[Stamp]) -> Vec<String> {
        let mut teams: Vec<String> = stamps
            .iter()
            .filter_map(|(path, ..)| path.parent()?.file_name()?.to_str().map(str::to_owned))
            .collect();
        teams.dedup();
        teams
    }

    /// Applies team `name`: its `team.toml`, then its policies.
    fn apply(&self, name: &str, store: &Store) -> anyhow::Result<()> {
        let dir = self.path.join(name);
        let file = dir.join(TEAM_FILE);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let team =
            parse_team(name, &text).with_context(|| format!("parsing {}", file.display()))?;
        let report = store
            .sync_file_team(&team)
            .with_context(|| format!("applying {}", file.display()))?;
        let keys = team
            .admin_keys
            .iter()
            .map(|pem| AdminKey::from_pem(pem).map(|key| (None, key)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let trust = TeamTrust::new(name, keys)?;
        let mut policies = 0;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with(TEAM_FILE))
            .collect();
        entries.sort();
        for path in entries {
            let Some(policy) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match import_policy(store, &trust, policy, &path) {
                Ok(true) => policies += 1,
                Ok(false) => {}
                Err(e) => eprintln!("km-api-server: {e:#} (skipped)"),
            }
        }
        eprintln!(
            "km-api-server: applied team {name} from {} ({} member(s), {} no longer listed, {policies} new policy version(s))",
            dir.display(),
            report.members,
            report.deactivated
        );
        Ok(())
    }
}

/// Verifies and stores one policy file; `Ok(true)` when it was a new version.
fn import_policy(
    store: &Store,
    trust: &TeamTrust,
    policy: &str,
    path: &Path,
) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let shown = path.display().to_string();
    let bundle = km_policy::team::verify(&shown, &text, trust, policy)?;
    let added = store.add_team_policy(&NewPolicy {
        team: trust.team(),
        policy,
        version: bundle.version(),
        payload_sha256: bundle.payload_sha256(),
        key_id: bundle.key_id(),
        envelope: &text,
        published_by: None,
    })?;
    match added {
        PolicyAdded::Stored => Ok(true),
        PolicyAdded::Held | PolicyAdded::Older(_) => Ok(false),
        PolicyAdded::Equivocation => bail!(
            "{shown}: version {} of {policy} is already held with other content",
            bundle.version()
        ),
    }
}
