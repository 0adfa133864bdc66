//! Seats: the installations (km device identities) that use a customer's subscription, against
//! the seat limit of the customer's record.
//!
//! An installation claims a seat with its first accepted authentication and holds it until it is
//! released (`DELETE /api/seats/{device}`); authenticating again only refreshes `last_seen`. A
//! claim is one write transaction (count, then insert), so two installations racing for the last
//! seat never both get it. Lowering a customer's limit evicts no one: seats already held stay
//! until released, and no new one is granted while the count is at or over the limit.

use super::{Error, Store};

/// One seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seat {
    pub(crate) device_id: String,
    /// The device's public key, as its header carried it (base64url SPKI).
    pub(crate) public_key: String,
    pub(crate) first_seen: i64,
    pub(crate) last_seen: i64,
    /// The plugin of the last authentication.
    pub(crate) last_plugin: String,
}

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The device held its seat already.
    Held,
    /// The device got a free seat.
    Granted,
    /// Every seat is held by other devices.
    Full {
        /// The limit.
        limit: u32,
        /// Seats held.
        held: u64,
    },
}

/// The device a claim is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimant<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) public_key: &'a str,
    pub(crate) plugin: &'a str,
}

impl Store {
    /// Claims (or refreshes) the seat of `device` for `customer_id`, within `limit` seats
    /// (`None`: no limit) at `now`.
    pub(crate) fn claim_seat(
        &self,
        customer_id: &str,
        limit: Option<u32>,
        device: Claimant<'_>,
        now: i64,
    ) -> Result<Claim, Error> {
        self.write(|tx| {
            let refreshed = tx.execute(
                "UPDATE seats SET last_seen = ?3, last_plugin = ?4
                 WHERE customer_id = ?1 AND device_id = ?2",
                (customer_id, device.device_id, now, device.plugin),
            )?;
            if refreshed == 1 {
                return Ok(Claim::Held);
            }
            if let Some(limit) = limit {
                let held: i64 = tx.query_row(
                    "SELECT count(*) FROM seats WHERE customer_id = ?1",
                    [customer_id],
                    |row| row.get(0),
                )?;
                let held = u64::try_from(held).unwrap_or(0);
                if held >= u64::from(limit) {
                    return Ok(Claim::Full { limit, held });
                }
            }
            tx.execute(
                "INSERT INTO seats (customer_id, device_id, public_key, first_seen, last_seen,
                                    last_plugin)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                (
                    customer_id,
                    device.device_id,
                    device.public_key,
                    now,
                    device.plugin,
                ),
            )?;
            Ok(Claim::Granted)
        })
    }

    /// The seats of `customer_id`, oldest first.
    pub(crate) fn seats(&self, customer_id: &str) -> Result<Vec<Seat>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT device_id, public_key, first_seen, last_seen, last_plugin FROM seats
                 WHERE customer_id = ?1 ORDER BY first_seen, device_id",
            )?;
            let rows = statement.query_map([customer_id], |row| {
                Ok(Seat {
                    device_id: row.get(0)?,
                    public_key: row.get(1)?,
                    first_seen: row.get(2)?,
                    last_seen: row.get(3)?,
                    last_plugin: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Releases the seat of `device_id`; `false` when it held none.
    pub(crate) fn release_seat(&self, customer_id: &str, device_id: &str) -> Result<bool, Error> {
        self.write(|tx| {
            let deleted = tx.execute(
                "DELETE FROM seats WHERE customer_id = ?1 AND device_id = ?2",
                (customer_id, device_id),
            )?;
            Ok(deleted == 1)
        })
    }
}
