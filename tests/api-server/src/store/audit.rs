//! Audit checkpoints (compliance-reporting's witness): the keys and the checkpoints they signed.
//!
//! The store keeps what the route has checked; the rules (signature, consistency proof, the key
//! bound to one customer) are the route's. [`Store::add_checkpoint`] re-reads the latest
//! checkpoint inside its write transaction and refuses one that no longer extends it, so two
//! installations' sessions posting at once cannot interleave a check and a write.

use rusqlite::OptionalExtension as _;

use super::{now, Error, Store};

/// A checkpoint as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) size: u64,
    pub(crate) root: String,
    pub(crate) checkpoint: String,
    pub(crate) signature: String,
    pub(crate) received_at: i64,
}

/// Another key of the same installation's host and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtherKey {
    pub(crate) key_id: String,
    pub(crate) size: u64,
    pub(crate) received_at: i64,
}

/// What [`Store::add_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Added {
    /// Stored (or already held).
    Stored,
    /// The key belongs to another customer.
    OtherCustomer,
    /// The latest checkpoint held changed since the caller looked: its size.
    Moved(Option<u64>),
}

/// A new checkpoint and who sent it.
pub(crate) struct NewCheckpoint<'a> {
    pub(crate) customer_id: &'a str,
    pub(crate) key_id: &'a str,
    pub(crate) public_key: &'a str,
    pub(crate) host: &'a str,
    pub(crate) os_user: &'a str,
    pub(crate) size: u64,
    pub(crate) root: &'a str,
    pub(crate) checkpoint: &'a str,
    pub(crate) signature: &'a str,
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// The customer a key is bound to, if it is known.
    pub(crate) fn audit_key_owner(&self, key_id: &str) -> Result<Option<String>, Error> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT customer_id FROM audit_keys WHERE key_id = ?1",
                    [key_id],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// The largest checkpoint held for `key_id`: its size and root.
    pub(crate) fn latest_checkpoint(&self, key_id: &str) -> Result<Option<(u64, String)>, Error> {
        self.read(|conn| latest(conn, key_id))
    }

    /// Stores a checkpoint the caller checked against `expected_latest` (the latest it read).
    pub(crate) fn add_checkpoint(
        &self,
        new: &NewCheckpoint<'_>,
        expected_latest: Option<u64>,
    ) -> Result<Added, Error> {
        self.write(|tx| {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT customer_id FROM audit_keys WHERE key_id = ?1",
                    [new.key_id],
                    |r| r.get(0),
                )
                .optional()?;
            match owner {
                Some(owner) if owner != new.customer_id => return Ok(Added::OtherCustomer),
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO audit_keys (key_id, customer_id, public_key, host, os_user, first_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        (new.key_id, new.customer_id, new.public_key, new.host, new.os_user, now()),
                    )?;
                }
            }
            let current = latest(tx, new.key_id)?.map(|(s, _)| s);
            if current != expected_latest && current.is_some_and(|c| c != new.size) {
                return Ok(Added::Moved(current));
            }
            tx.execute(
                "INSERT INTO audit_checkpoints (key_id, size, root, checkpoint, signature, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (key_id, checkpoint) DO NOTHING",
                (
                    new.key_id,
                    i64::try_from(new.size).unwrap_or(i64::MAX),
                    new.root,
                    new.checkpoint,
                    new.signature,
                    now(),
                ),
            )?;
            Ok(Added::Stored)
        })
    }

    /// The checkpoints of `key_id` held for `customer_id`, smallest first.
    pub(crate) fn checkpoints(&self, customer_id: &str, key_id: &str) -> Result<Vec<Held>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT c.size, c.root, c.checkpoint, c.signature, c.received_at
                 FROM audit_checkpoints c JOIN audit_keys k ON k.key_id = c.key_id
                 WHERE c.key_id = ?1 AND k.customer_id = ?2
                 ORDER BY c.size, c.received_at",
            )?;
            let rows = statement.query_map((key_id, customer_id), |r| {
                Ok(Held {
                    size: to_u64(r.get(0)?),
                    root: r.get(1)?,
                    checkpoint: r.get(2)?,
                    signature: r.get(3)?,
                    received_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The customer's other keys for `host` and `os_user`, with their latest checkpoint.
    pub(crate) fn other_audit_keys(
        &self,
        customer_id: &str,
        host: &str,
        os_user: &str,
        except: &str,
    ) -> Result<Vec<OtherKey>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT k.key_id, coalesce(max(c.size), 0), coalesce(max(c.received_at), k.first_seen)
                 FROM audit_keys k LEFT JOIN audit_checkpoints c ON c.key_id = k.key_id
                 WHERE k.customer_id = ?1 AND k.host = ?2 AND k.os_user = ?3 AND k.key_id != ?4
                 GROUP BY k.key_id ORDER BY k.first_seen",
            )?;
            let rows = statement.query_map((customer_id, host, os_user, except), |r| {
                Ok(OtherKey {
                    key_id: r.get(0)?,
                    size: to_u64(r.get(1)?),
                    received_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

fn latest(conn: &rusqlite::Connection, key_id: &str) -> Result<Option<(u64, String)>, Error> {
    Ok(conn
        .query_row(
            "SELECT size, root FROM audit_checkpoints WHERE key_id = ?1
             ORDER BY size DESC, received_at DESC LIMIT 1",
            [key_id],
            |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
        )
        .optional()?)
}
