//! Abuse signals: failed authentications and rate-limit refusals, by subject.
//!
//! Every failed plugin authentication is recorded in `auth_failures` with its subject: the
//! customer (the one the API key belongs to, or the one a build claims to be stamped for when
//! the key is unknown), else a digest prefix of the API key (never the key). A request that
//! names a device (km's `km-device-key` header, on every request a plugin makes through km) is
//! recorded once more, as a failure of that device: a device signature that does not verify, a
//! seat refused at the limit, and every other refusal of it. So one installation that keeps
//! failing is seen as such even when it cycles through keys or customers, and one customer's
//! failures can be told apart by installation. When one subject's failures within the abuse
//! window reach the threshold (`--abuse-threshold N/WINDOW`), an `abuse_signals` row of kind
//! `repeated-auth-failures` is raised for it, and every later failure adds to its count. A
//! rate-limit refusal (429) adds to a `rate-limited` signal of the customer. Signals are listed
//! by `GET /control/abuse`; nothing is blocked because of them: deciding what to do about a
//! signal is for people (or a later feature), not for a heuristic.

use rusqlite::OptionalExtension as _;

use super::{Error, Store};
use crate::limits::Rate;

/// Who a signal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubjectKind {
    Customer,
    /// The first 16 hex digits of the SHA-256 of an API key no customer has.
    ApiKey,
    /// The device id (the key id of the device key, as `GET /api/seats` lists it) a request
    /// names. Like a customer claimed by a build, it is what the request says: a device
    /// signature that did not verify still names the device whose key it carries.
    Device,
}

impl SubjectKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Customer => "customer",
            SubjectKind::ApiKey => "api_key",
            SubjectKind::Device => "device",
        }
    }
}

/// What a signal says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalKind {
    RepeatedAuthFailures,
    RateLimited,
}

impl SignalKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SignalKind::RepeatedAuthFailures => "repeated-auth-failures",
            SignalKind::RateLimited => "rate-limited",
        }
    }
}

/// A signal as `GET /control/abuse` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Signal {
    pub(crate) kind: String,
    pub(crate) subject_kind: String,
    pub(crate) subject: String,
    /// The events it counts (failures, or refusals).
    pub(crate) count: u64,
    /// Unix seconds.
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
    pub(crate) last_reason: String,
}

impl Store {
    /// Records a failed authentication of `subject` at `at` (Unix seconds), and raises or
    /// counts on its `repeated-auth-failures` signal once `threshold` is reached.
    pub(crate) fn record_auth_failure(
        &self,
        kind: SubjectKind,
        subject: &str,
        reason: &str,
        at: i64,
        threshold: Rate,
    ) -> Result<(), Error> {
        let window = i64::try_from(threshold.window.as_secs()).unwrap_or(i64::MAX);
        self.write(|tx| {
            // Failures older than the window count for nothing any more (a raised signal keeps
            // its own count).
            tx.execute(
                "DELETE FROM auth_failures WHERE at <= ?1",
                [at.saturating_sub(window)],
            )?;
            tx.execute(
                "INSERT INTO auth_failures (at, subject_kind, subject, reason)
                 VALUES (?1, ?2, ?3, ?4)",
                (at, kind.as_str(), subject, reason),
            )?;
            let signal = SignalKind::RepeatedAuthFailures.as_str();
            let raised: Option<i64> = tx
                .query_row(
                    "SELECT id FROM abuse_signals
                     WHERE kind = ?1 AND subject_kind = ?2 AND subject = ?3",
                    (signal, kind.as_str(), subject),
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = raised {
                tx.execute(
                    "UPDATE abuse_signals SET count = count + 1, last_at = ?2, last_reason = ?3
                     WHERE id = ?1",
                    (id, at, reason),
                )?;
                return Ok(());
            }
            let (recent, first): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(min(at), ?4) FROM auth_failures
                 WHERE subject_kind = ?1 AND subject = ?2 AND at > ?3",
                (kind.as_str(), subject, at.saturating_sub(window), at),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            if recent >= i64::from(threshold.requests) {
                tx.execute(
                    "INSERT INTO abuse_signals
                         (kind, subject_kind, subject, count, first_at, last_at, last_reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    (signal, kind.as_str(), subject, recent, first, at, reason),
                )?;
            }
            Ok(())
        })
    }

    /// Counts a rate-limit refusal of `customer` on its `rate-limited` signal.
    pub(crate) fn record_rate_limited(
        &self,
        customer: &str,
        reason: &str,
        at: i64,
    ) -> Result<(), Error> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO abuse_signals
                     (kind, subject_kind, subject, count, first_at, last_at, last_reason)
                 VALUES (?1, 'customer', ?2, 1, ?3, ?3, ?4)
                 ON CONFLICT (kind, subject_kind, subject) DO UPDATE
                     SET count = count + 1, last_at = excluded.last_at,
                         last_reason = excluded.last_reason",
                (SignalKind::RateLimited.as_str(), customer, at, reason),
            )?;
            Ok(())
        })
    }

    /// Every signal, the most recent first.
    pub(crate) fn abuse_signals(&self) -> Result<Vec<Signal>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT kind, subject_kind, subject, count, first_at, last_at, last_reason
                 FROM abuse_signals ORDER BY last_at DESC, id DESC",
            )?;
            let rows = statement.query_map([], |row| {
                let count: i64 = row.get(3)?;
                Ok(Signal {
                    kind: row.get(0)?,
                    subject_kind: row.get(1)?,
                    subject: row.get(2)?,
                    count: u64::try_from(count).unwrap_or(0),
                    first_at: row.get(4)?,
                    last_at: row.get(5)?,
                    last_reason: row.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}
