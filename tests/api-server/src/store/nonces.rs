//! The nonces of signed authentication requests (`km_plugin_sdk::request`), so that each signed
//! request is accepted once.
//!
//! A nonce is kept until the timestamp of its request leaves the window the server accepts
//! (`MAX_SKEW_SECS` after it): from then on the timestamp check alone refuses a replay, so the
//! table holds at most the requests of the last ten minutes. Expired nonces are deleted in the
//! transaction that records a new one, so nothing else has to sweep the table.

use super::{Error, Store};

impl Store {
    /// Records `nonce` of a request of `customer_id`, kept until `expires_at`; `false` when it
    /// is recorded already (the request is a replay).
    pub(crate) fn use_nonce(
        &self,
        customer_id: &str,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, Error> {
        self.write(|tx| {
            tx.execute("DELETE FROM request_nonces WHERE expires_at < ?1", [now])?;
            let inserted = tx.execute(
                "INSERT INTO request_nonces (customer_id, nonce, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (customer_id, nonce) DO NOTHING",
                (customer_id, nonce, expires_at),
            )?;
            Ok(inserted == 1)
        })
    }

    /// How many nonces are kept.
    #[cfg(test)]
    pub(crate) fn nonces_kept(&self) -> Result<u64, Error> {
        self.read(|conn| super::count(conn, "SELECT count(*) FROM request_nonces"))
    }
}
