//! API key rotation: a customer's key replaced by a new one, and the old one refused from then on.
//!
//! A rotation through the API (`POST /api/account/rotate-key`) writes the new key's SHA-256 into
//! the customer's row and records the old one in `revoked_api_keys`, in one transaction: from the
//! commit on, the old key authenticates nothing, and the customers file cannot bring it back (its
//! sync keeps the current key for an entry that still names a revoked one; see
//! [`crate::store::customers`]). A rotation made in the customers file (a new `api_key_sha256`)
//! needs no record here: the file is the source of truth for the keys it names.

use rusqlite::{OptionalExtension as _, Transaction};

use super::{now, Error, Store};

impl Store {
    /// Replaces the key `old_sha256` of the active customer `customer_id` by `new_sha256` and
    /// revokes the old one; returns when. Fails when the customer's key is no longer
    /// `old_sha256` (rotated meanwhile), so two rotations racing never both win.
    pub(crate) fn rotate_api_key(
        &self,
        customer_id: &str,
        old_sha256: &str,
        new_sha256: &str,
    ) -> Result<i64, Error> {
        self.write(|tx| {
            let now = now();
            let changed = tx.execute(
                "UPDATE customers SET api_key_sha256 = ?3, updated_at = ?4
                 WHERE id = ?1 AND api_key_sha256 = ?2 AND active = 1",
                (customer_id, old_sha256, new_sha256, now),
            )?;
            if changed != 1 {
                return Err(Error::Invalid(format!(
                    "the API key of {customer_id} changed while it was being rotated"
                )));
            }
            tx.execute(
                "INSERT INTO revoked_api_keys (api_key_sha256, customer_id, revoked_at)
                 VALUES (?1, ?2, ?3) ON CONFLICT (api_key_sha256) DO NOTHING",
                (old_sha256, customer_id, now),
            )?;
            Ok(now)
        })
    }

    /// When the key with SHA-256 `api_key_sha256` was rotated away, if it was.
    pub(crate) fn revoked_api_key(&self, api_key_sha256: &str) -> Result<Option<i64>, Error> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT revoked_at FROM revoked_api_keys WHERE api_key_sha256 = ?1",
                    [api_key_sha256.to_ascii_lowercase()],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }
}

/// When the customers file names `file_sha256` for `customer_id` and that key was rotated away
/// through the API: the customer's current key, which the sync keeps instead.
pub(super) fn rotated_away(
    tx: &Transaction<'_>,
    customer_id: &str,
    file_sha256: &str,
) -> Result<Option<String>, Error> {
    let revoked: Option<i64> = tx
        .query_row(
            "SELECT revoked_at FROM revoked_api_keys
             WHERE api_key_sha256 = ?1 AND customer_id = ?2",
            (file_sha256, customer_id),
            |row| row.get(0),
        )
        .optional()?;
    if revoked.is_none() {
        return Ok(None);
    }
    Ok(tx
        .query_row(
            "SELECT api_key_sha256 FROM customers WHERE id = ?1",
            [customer_id],
            |row| row.get(0),
        )
        .optional()?)
}
