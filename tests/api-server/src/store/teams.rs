//! Teams (team-collaboration): teams and their admin keys, members and roles, the signed policy
//! versions, shared approvals and session summaries.
//!
//! The store keeps what the routes checked (signatures, roles); the checks that must not race
//! another writer happen inside the write transaction: [`Store::add_team_policy`] re-reads the
//! latest version of the policy before it stores a new one, so two admins publishing at once
//! cannot both think they published the newest. The teams directory's sync rule mirrors the
//! customers file's (see [`crate::teams_dir`]): a team's `team.toml` is the source of truth for
//! the members it lists; a member it no longer lists is made inactive, and members an admin
//! added through the API are left alone.

use rusqlite::{OptionalExtension as _, Row};
use serde_json::Value;

use super::{now, Error, Store};

/// A member's role, from the least to the most allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Reads the team's policy and approvals, sends and reads session summaries.
    Member,
    /// Also approves for the team.
    Approver,
    /// Also publishes policies and manages members.
    Admin,
}

impl Role {
    pub(crate) const ALL: [Role; 3] = [Role::Member, Role::Approver, Role::Admin];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Team {
    pub(crate) name: String,
    /// PEM public keys.
    pub(crate) admin_keys: Vec<String>,
}

/// A member of a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) team: String,
    pub(crate) id: String,
    pub(crate) customer_id: String,
    pub(crate) role: Role,
    /// The key the member registered (PEM), and its id.
    pub(crate) public_key: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) from_file: bool,
}

/// A team as its `team.toml` describes it.
#[derive(Debug, Clone)]
pub(crate) struct FileTeam {
    pub(crate) name: String,
    pub(crate) admin_keys: Vec<String>,
    /// `(id, customer, role)`.
    pub(crate) members: Vec<(String, String, Role)>,
}

/// What a team sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TeamSync {
    pub(crate) members: usize,
    pub(crate) deactivated: usize,
}

/// A policy version as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyVersion {
    pub(crate) policy: String,
    pub(crate) version: u64,
    pub(crate) payload_sha256: String,
    pub(crate) envelope: String,
    pub(crate) received_at: i64,
}

/// A policy version to store, verified by the caller.
pub(crate) struct NewPolicy<'a> {
    pub(crate) team: &'a str,
    pub(crate) policy: &'a str,
    pub(crate) version: u64,
    pub(crate) payload_sha256: &'a str,
    pub(crate) key_id: &'a str,
    pub(crate) envelope: &'a str,
    /// The member who published it; `None` for the teams directory.
    pub(crate) published_by: Option<&'a str>,
}

/// What [`Store::add_team_policy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyAdded {
    /// Stored: the newest version now.
    Stored,
    /// This exact version was already held.
    Held,
    /// The version is held with other content.
    Equivocation,
    /// A newer version is held: its number.
    Older(u64),
}

/// A shared approval as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Approval {
    pub(crate) seq: i64,
    pub(crate) member: String,
    pub(crate) envelope: String,
    pub(crate) received_at: i64,
}

fn member_from_row(row: &Row<'_>) -> rusqlite::Result<Member> {
    let role: String = row.get("role")?;
    Ok(Member {
        team: row.get("team")?,
        id: row.get("id")?,
        customer_id: row.get("customer_id")?,
        role: Role::parse(&role).unwrap_or(Role::Member),
        public_key: row.get("public_key")?,
        key_id: row.get("key_id")?,
        from_file: row.get::<_, i64>("from_file")? == 1,
    })
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store {
    /// Applies a team's `team.toml`: the team and its admin keys, and the members it lists (a
    /// member it managed and no longer lists is made inactive). One transaction.
    pub(crate) fn sync_file_team(&self, team: &FileTeam) -> Result<TeamSync, Error> {
        self.write(|tx| {
            let now = now();
            let keys = serde_json::to_string(&team.admin_keys)
                .map_err(|e| Error::Invalid(format!("team {}: admin keys: {e}", team.name)))?;
            tx.execute(
                "INSERT INTO teams (name, admin_keys, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET admin_keys = excluded.admin_keys,
                     updated_at = excluded.updated_at",
                (&team.name, keys, now),
            )?;
            // Listed members step aside first, so that two members swapping customers in one
            // edit never both hold one customer in between.
            for (id, _, _) in &team.members {
                tx.execute(
                    "UPDATE team_members SET active = 0 WHERE team = ?1 AND id = ?2",
                    (&team.name, id),
                )?;
            }
            for (id, customer, role) in &team.members {
                let known: Option<i64> = tx
                    .query_row("SELECT active FROM customers WHERE id = ?1", [customer], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if known.is_none() {
                    return Err(Error::Invalid(format!(
                        "team {}: member {id}: customer {customer} is not known (see the customers file)",
                        team.name
                    )));
                }
                let written = tx.execute(
                    "INSERT INTO team_members (team, id, customer_id, role, active, from_file,
                                               updated_at)
                     VALUES (?1, ?2, ?3, ?4, 1, 1, ?5)
                     ON CONFLICT (team, id) DO UPDATE SET customer_id = excluded.customer_id,
                         role = excluded.role, active = 1, from_file = 1,
                         updated_at = excluded.updated_at",
                    (&team.name, id, customer, role.as_str(), now),
                );
                match written {
                    Ok(_) => {}
                    Err(e) if constraint(&e) => {
                        return Err(Error::Invalid(format!(
                            "team {}: member {id}: customer {customer} is already another active member",
                            team.name
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let managed: Vec<String> = {
                let mut statement = tx.prepare(
                    "SELECT id FROM team_members WHERE team = ?1 AND active = 1 AND from_file = 1",
                )?;
                let ids = statement.query_map([&team.name], |row| row.get(0))?;
                ids.collect::<Result<_, _>>()?
            };
            let mut report = TeamSync {
                members: team.members.len(),
                deactivated: 0,
            };
            for id in managed {
                if !team.members.iter().any(|(listed, _, _)| *listed == id) {
                    tx.execute(
                        "UPDATE team_members SET active = 0, updated_at = ?3
                         WHERE team = ?1 AND id = ?2",
                        (&team.name, &id, now),
                    )?;
                    report.deactivated += 1;
                }
            }
            Ok(report)
        })
    }

    /// The team `name`.
    pub(crate) fn team(&self, name: &str) -> Result<Option<Team>, Error> {
        self.read(|conn| {
            let row: Option<String> = conn
                .query_row(
                    "SELECT admin_keys FROM teams WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            row.map(|keys| {
                let admin_keys = serde_json::from_str(&keys)
                    .map_err(|e| Error::Invalid(format!("team {name}: admin keys: {e}")))?;
                Ok(Team {
                    name: name.to_owned(),
                    admin_keys,
                })
            })
            .transpose()
        })
    }

    /// The active member of `team` who is `customer_id`.
    pub(crate) fn team_member_by_customer(
        &self,
        team: &str,
        customer_id: &str,
    ) -> Result<Option<Member>, Error> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT * FROM team_members WHERE team = ?1 AND customer_id = ?2 AND active = 1",
                    [team, customer_id],
                    member_from_row,
                )
                .optional()?)
        })
    }

    /// The active members of `team`, by id.
    pub(crate) fn team_members(&self, team: &str) -> Result<Vec<Member>, Error> {
        self.read(|conn| {
            let mut statement = conn
                .prepare("SELECT * FROM team_members WHERE team = ?1 AND active = 1 ORDER BY id")?;
            let rows = statement.query_map([team], member_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Adds member `id` of `team` (customer, role), or changes them: what an admin does through
    /// the API. A member the teams directory manages is the file's to change.
    pub(crate) fn put_team_member(
        &self,
        team: &str,
        id: &str,
        customer_id: &str,
        role: Role,
    ) -> Result<(), Error> {
        self.write(|tx| {
            let from_file: Option<i64> = tx
                .query_row(
                    "SELECT from_file FROM team_members WHERE team = ?1 AND id = ?2 AND active = 1",
                    [team, id],
                    |r| r.get(0),
                )
                .optional()?;
            if from_file == Some(1) {
                return Err(Error::Invalid(format!(
                    "member {id} is managed by the team's team.toml: change it there"
                )));
            }
            let known: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM customers WHERE id = ?1 AND active = 1",
                    [customer_id],
                    |r| r.get(0),
                )
                .optional()?;
            if known.is_none() {
                return Err(Error::Invalid(format!(
                    "customer {customer_id} is not an active customer"
                )));
            }
            let written = tx.execute(
                "INSERT INTO team_members (team, id, customer_id, role, active, from_file, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 1, 0, ?5)
                 ON CONFLICT (team, id) DO UPDATE SET customer_id = excluded.customer_id,
                     role = excluded.role, active = 1, updated_at = excluded.updated_at",
                (team, id, customer_id, role.as_str(), now()),
            );
            match written {
                Ok(_) => Ok(()),
                Err(e) if constraint(&e) => Err(Error::Invalid(format!(
                    "customer {customer_id} is already an active member of a team"
                ))),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Registers `public_key` (PEM, id `key_id`) as the key of member `id` of `team`, replacing
    /// the one they had. Another member's key is refused.
    pub(crate) fn register_team_key(
        &self,
        team: &str,
        id: &str,
        public_key: &str,
        key_id: &str,
    ) -> Result<(), Error> {
        self.write(|tx| {
            let written = tx.execute(
                "UPDATE team_members SET public_key = ?3, key_id = ?4, updated_at = ?5
                 WHERE team = ?1 AND id = ?2 AND active = 1",
                (team, id, public_key, key_id, now()),
            );
            match written {
                Ok(1) => Ok(()),
                Ok(_) => Err(Error::Invalid(format!(
                    "{id} is not an active member of {team}"
                ))),
                Err(e) if constraint(&e) => Err(Error::Invalid(format!(
                    "key {key_id} is already another member's"
                ))),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// The latest version of each policy of `team`, by policy name.
    pub(crate) fn latest_team_policies(&self, team: &str) -> Result<Vec<PolicyVersion>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT policy, version, payload_sha256, envelope, received_at FROM team_policies p
                 WHERE team = ?1 AND version = (SELECT max(version) FROM team_policies q
                                                WHERE q.team = p.team AND q.policy = p.policy)
                 ORDER BY policy",
            )?;
            let rows = statement.query_map([team], |r| {
                Ok(PolicyVersion {
                    policy: r.get(0)?,
                    version: to_u64(r.get(1)?),
                    payload_sha256: r.get(2)?,
                    envelope: r.get(3)?,
                    received_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Stores a policy version the caller verified, unless a version as new is held.
    pub(crate) fn add_team_policy(&self, new: &NewPolicy<'_>) -> Result<PolicyAdded, Error> {
        let version = i64::try_from(new.version)
            .map_err(|_| Error::Invalid(format!("version {} is too large", new.version)))?;
        self.write(|tx| {
            let latest: Option<(i64, String)> = tx
                .query_row(
                    "SELECT version, payload_sha256 FROM team_policies
                     WHERE team = ?1 AND policy = ?2 ORDER BY version DESC LIMIT 1",
                    [new.team, new.policy],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match latest {
                Some((v, sha)) if v == version && sha == new.payload_sha256 => {
                    return Ok(PolicyAdded::Held)
                }
                Some((v, _)) if v == version => return Ok(PolicyAdded::Equivocation),
                Some((v, _)) if v > version => return Ok(PolicyAdded::Older(to_u64(v))),
                _ => {}
            }
            tx.execute(
                "INSERT INTO team_policies (team, policy, version, payload_sha256, key_id,
                                            envelope, published_by, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                (
                    new.team,
                    new.policy,
                    version,
                    new.payload_sha256,
                    new.key_id,
                    new.envelope,
                    new.published_by,
                    now(),
                ),
            )?;
            Ok(PolicyAdded::Stored)
        })
    }

    /// Stores an approval; `false` when the same one (by payload) was held already.
    pub(crate) fn add_team_approval(
        &self,
        team: &str,
        policy: &str,
        member: &str,
        payload_sha256: &str,
        envelope: &str,
        checked: bool,
    ) -> Result<bool, Error> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO team_approvals (team, policy, member, payload_sha256, envelope,
                                             checked, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (team, policy, payload_sha256) DO NOTHING",
                (
                    team,
                    policy,
                    member,
                    payload_sha256,
                    envelope,
                    i64::from(checked),
                    now(),
                ),
            )?;
            Ok(n == 1)
        })
    }

    /// The newest `limit` approvals of `team` for `policy`, oldest first.
    pub(crate) fn team_approvals(
        &self,
        team: &str,
        policy: &str,
        limit: u32,
    ) -> Result<Vec<Approval>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT seq, member, envelope, received_at FROM (
                     SELECT * FROM team_approvals WHERE team = ?1 AND policy = ?2
                     ORDER BY seq DESC LIMIT ?3)
                 ORDER BY seq",
            )?;
            let rows = statement.query_map((team, policy, limit), |r| {
                Ok(Approval {
                    seq: r.get(0)?,
                    member: r.get(1)?,
                    envelope: r.get(2)?,
                    received_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Stores a session summary; `false` when this member's session was held already.
    pub(crate) fn add_team_session(
        &self,
        team: &str,
        member: &str,
        id: &str,
        ended_at: i64,
        summary: &Value,
    ) -> Result<bool, Error> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO team_sessions (team, member, id, ended_at, summary, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (team, member, id) DO NOTHING",
                (team, member, id, ended_at, summary.to_string(), now()),
            )?;
            Ok(n == 1)
        })
    }

    /// The newest `limit` session summaries of `team` (of `member`, ended at or after `since`),
    /// newest first.
    pub(crate) fn team_sessions(
        &self,
        team: &str,
        member: Option<&str>,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Value>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT summary FROM team_sessions
                 WHERE team = ?1 AND (?2 IS NULL OR member = ?2) AND (?3 IS NULL OR ended_at >= ?3)
                 ORDER BY ended_at DESC, member, id LIMIT ?4",
            )?;
            let rows =
                statement.query_map((team, member, since, limit), |r| r.get::<_, String>(0))?;
            let mut summaries = Vec::new();
            for text in rows {
                let text = text?;
                summaries.push(serde_json::from_str(&text).map_err(|e| {
                    Error::Invalid(format!("a stored session summary is not JSON: {e}"))
                })?);
            }
            Ok(summaries)
        })
    }
}

#[cfg(test)]
mod tests;
