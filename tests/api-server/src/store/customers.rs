//! Customers in the database: the sync from the customers file, and the lookup by API key.
//!
//! The sync rule (the customers file is the source of truth for the customers it lists):
//! - a customer the file lists is written from its entry whenever that entry is new or differs
//!   from the one last applied (each row keeps the SHA-256 of the entry it was written from), so
//!   an unchanged entry leaves its row alone even when other entries change;
//! - a customer the file managed and no longer lists is made inactive (kept, so that what refers
//!   to it stays valid; its API key no longer authenticates); listed again, it is active again;
//! - customers the file never listed (made through the API by later features) are left alone;
//! - an API key rotated through the API ([`crate::store::api_keys`]) is never reinstated by the
//!   file: an entry that still names the key rotated away keeps the customer's current key (and
//!   the sync reports it, so that the file gets updated); an entry naming a new key is a rotation
//!   made in the file, and applies.
//!
//! A sync is one transaction: a file that cannot be applied whole changes nothing.

use km_plugin_sdk::Tier;
use rusqlite::{OptionalExtension as _, Row};

use super::{now, Error, Store};

/// A customer as the server uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Customer {
    pub(crate) id: String,
    /// Lowercase hex SHA-256 of the customer's API key (the key itself is never stored).
    pub(crate) api_key_sha256: String,
    pub(crate) tier: Tier,
    pub(crate) features: Vec<String>,
    /// Unix seconds.
    pub(crate) subscription_end: i64,
    /// The customer secret stamped into this customer's builds: their build keys and request
    /// keys derive from it. A customer without one has no usable customer builds.
    pub(crate) customer_token: Option<String>,
    /// How many installations may hold a seat at once (`None`: no limit).
    pub(crate) seat_limit: Option<u32>,
}

/// A customer as the customers file lists it, with the digest of its entry.
#[derive(Debug, Clone)]
pub(crate) struct FileCustomer {
    pub(crate) customer: Customer,
    /// SHA-256 of the entry, to tell whether it changed since it was last applied.
    pub(crate) entry_sha256: String,
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SyncReport {
    pub(crate) added: usize,
    pub(crate) updated: usize,
    pub(crate) unchanged: usize,
    pub(crate) deactivated: usize,
    /// Customers whose entry names an API key rotated away through the API: their current key
    /// was kept.
    pub(crate) rotated_kept: Vec<String>,
}

fn customer_from_row(row: &Row<'_>) -> rusqlite::Result<Customer> {
    // The table's CHECKs admit only valid tiers and JSON arrays; a row that still does not
    // convert (a database edited by hand) is an error naming the column, never a default.
    let conversion = |column: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        let index = row.as_ref().column_index(column).unwrap_or(0);
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e)
    };
    let tier: String = row.get("tier")?;
    let features: String = row.get("features")?;
    Ok(Customer {
        id: row.get("id")?,
        api_key_sha256: row.get("api_key_sha256")?,
        tier: tier.parse().map_err(|e| conversion("tier", Box::new(e)))?,
        features: serde_json::from_str(&features)
            .map_err(|e| conversion("features", Box::new(e)))?,
        subscription_end: row.get("subscription_end")?,
        customer_token: row.get("customer_token")?,
        seat_limit: row.get("seat_limit")?,
    })
}

impl Store {
    /// Applies the customers file's list (see the module doc for the rule).
    pub(crate) fn sync_file_customers(&self, listed: &[FileCustomer]) -> Result<SyncReport, Error> {
        self.write(|tx| {
            let mut report = SyncReport::default();
            let mut to_write = Vec::new();
            for entry in listed {
                let applied: Option<(Option<String>, bool)> = tx
                    .query_row(
                        "SELECT file_entry_sha256, active FROM customers WHERE id = ?1",
                        [&entry.customer.id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                match applied {
                    Some((Some(digest), true)) if digest == entry.entry_sha256 => {
                        report.unchanged += 1;
                    }
                    Some(_) => {
                        report.updated += 1;
                        to_write.push(entry);
                    }
                    None => {
                        report.added += 1;
                        to_write.push(entry);
                    }
                }
            }
            // Those about to be rewritten step aside first, so that two customers swapping API
            // keys in one edit never both hold one key in between (the key is unique among
            // active customers).
            for entry in &to_write {
                tx.execute(
                    "UPDATE customers SET active = 0 WHERE id = ?1",
                    [&entry.customer.id],
                )?;
            }
            let now = now();
            for entry in &to_write {
                let c = &entry.customer;
                let features = serde_json::to_string(&c.features)
                    .map_err(|e| Error::Invalid(format!("customer {}: features: {e}", c.id)))?;
                let api_key_sha256 =
                    match super::api_keys::rotated_away(tx, &c.id, &c.api_key_sha256)? {
                        Some(current) => {
                            report.rotated_kept.push(c.id.clone());
                            current
                        }
                        None => c.api_key_sha256.clone(),
                    };
                let written = tx.execute(
                    "INSERT INTO customers (id, api_key_sha256, tier, features, subscription_end,
                                            customer_token, active, file_entry_sha256, updated_at,
                                            seat_limit)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9)
                     ON CONFLICT (id) DO UPDATE SET
                         api_key_sha256 = excluded.api_key_sha256, tier = excluded.tier,
                         features = excluded.features,
                         subscription_end = excluded.subscription_end,
                         customer_token = excluded.customer_token, active = 1,
                         file_entry_sha256 = excluded.file_entry_sha256,
                         updated_at = excluded.updated_at, seat_limit = excluded.seat_limit",
                    (
                        &c.id,
                        &api_key_sha256,
                        c.tier.as_str(),
                        features,
                        c.subscription_end,
                        &c.customer_token,
                        &entry.entry_sha256,
                        now,
                        c.seat_limit,
                    ),
                );
                match written {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(Error::Invalid(format!(
                            "customer {}: its api_key_sha256 is already another active \
                             customer's",
                            c.id
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let managed: Vec<String> = {
                let mut statement = tx.prepare(
                    "SELECT id FROM customers WHERE active = 1 AND file_entry_sha256 IS NOT NULL",
                )?;
                let ids = statement.query_map([], |row| row.get(0))?;
                ids.collect::<Result<_, _>>()?
            };
            for id in managed {
                if !listed.iter().any(|l| l.customer.id == id) {
                    tx.execute(
                        "UPDATE customers SET active = 0, updated_at = ?2 WHERE id = ?1",
                        (&id, now),
                    )?;
                    report.deactivated += 1;
                }
            }
            Ok(report)
        })
    }

    /// The active customer whose API key has SHA-256 `api_key_sha256` (hex, any case).
    pub(crate) fn customer_by_api_key(
        &self,
        api_key_sha256: &str,
    ) -> Result<Option<Customer>, Error> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT * FROM customers WHERE api_key_sha256 = ?1 AND active = 1",
                    [api_key_sha256.to_ascii_lowercase()],
                    customer_from_row,
                )
                .optional()?)
        })
    }

    /// The id of the customer (active or not) whose customer hash (the clear header of their
    /// builds, `km_plugin_sdk::credentials::customer_hash`) is `customer_hash`: whom a build
    /// claims to be stamped for. A scan: the reference server has few customers.
    pub(crate) fn customer_with_hash(&self, customer_hash: &str) -> Result<Option<String>, Error> {
        let ids: Vec<String> = self.read(|conn| {
            let mut statement = conn.prepare("SELECT id FROM customers")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        Ok(ids
            .into_iter()
            .find(|id| km_plugin_sdk::credentials::customer_hash(id) == customer_hash))
    }

    /// How many customers are active.
    pub(crate) fn active_customers(&self) -> Result<u64, Error> {
        self.read(|conn| super::count(conn, "SELECT count(*) FROM customers WHERE active = 1"))
    }
}
