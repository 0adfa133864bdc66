//! The server's database: SQLite (rusqlite, SQLite compiled in by the `bundled` feature), holding
//! customers and events, and what later areas add (seats, request nonces and API key rotations,
//! teams, audit checkpoints).
//!
//! **Where it lives.** `--db FILE` keeps it in a file (created with mode 0600: it holds API key
//! digests; SQLite gives its `-wal` and `-shm` files the same mode). Without `--db` it lives in
//! memory and is gone when the server stops, which is what tests and a quick local trial want:
//! nothing left behind, a fresh start each time. The one thing the original server kept across
//! restarts without a database, event deduplication through `--events FILE`, is kept by importing
//! that file at start (see [`events`]).
//!
//! **Schema.** [`migrations`] lists the forward migrations in order; [`Store::open`] applies the
//! ones a database lacks, in one transaction, and records each in the `schema_version` table
//! (version, name, SHA-256 of its SQL, time applied). A database from a newer server, or one whose
//! recorded migration differs from this server's, is refused rather than guessed at.
//!
//! **Concurrency.** Requests are handled on many threads at once; they share one connection
//! behind a mutex, and every write is one `BEGIN IMMEDIATE` transaction taken under that mutex.
//! SQLite allows a single writer at a time whatever the number of connections, so a connection
//! per thread would only move the queueing into SQLite's busy handler and add its failure modes
//! (`SQLITE_BUSY` when a read transaction upgrades to a write, which the busy timeout does not
//! retry), and an in-memory database cannot be shared between connections at all. The critical
//! sections are a few statements long, while everything slow in a request (reading the body,
//! signing, reading package files, the test delay) runs outside the lock, so serialising them
//! costs nothing measurable at the rates a reference server sees. Several members writing at once
//! (the team features) get exactly SQLite's guarantee: each write transaction is atomic and
//! isolated, and none is lost. WAL mode lets another process read a file database (the sqlite3
//! shell, a test) while the server writes, and the busy timeout makes a second process that
//! writes to the same file (a server restarted while the old one is still exiting) wait for the
//! lock instead of failing. Foreign keys are enforced, for the tables that reference customers.
//! `synchronous = FULL`: an answer of 200 means the write is on disk.
//!
//! A panic inside a transaction unwinds through rusqlite's `Transaction`, which rolls back, so a
//! poisoned mutex still guards a consistent connection and is recovered rather than propagated.

pub(crate) mod abuse;
pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod customers;
pub(crate) mod events;
mod migrations;
pub(crate) mod nonces;
pub(crate) mod seats;
pub(crate) mod teams;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::config::DbLocation;

/// How long a write waits for another process's lock on the same database file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// SQLite refused or failed a statement.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The events export file could not be opened or written (the error names it).
    #[error("events file: {0}")]
    EventsFile(#[from] km_durable::Error),
    /// The events export file could not be read.
    #[error("reading the events file {path}: {source}")]
    EventsRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database was migrated by a newer server.
    #[error(
        "schema version {found} is newer than this km-api-server knows ({known}); \
         use the newer server or another --db"
    )]
    SchemaTooNew { found: u32, known: u32 },
    /// The recorded migrations are not this server's (edited after they ran, or a gap).
    #[error("migration {version} ({name}) recorded in the database is not this server's: {why}")]
    SchemaMismatch {
        version: u32,
        name: String,
        why: &'static str,
    },
    /// A value that cannot be stored (the message says which and why).
    #[error("{0}")]
    Invalid(String),
}

/// The database.
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

pub(super) struct Inner {
    conn: Connection,
    /// `--events FILE`, when given (see [`events`]).
    export: Option<events::Export>,
}

impl Store {
    /// Opens (creating it if needed) and migrates the database at `location`.
    pub(crate) fn open(location: &DbLocation) -> Result<Self, Error> {
        let conn = match location {
            DbLocation::Memory => Connection::open_in_memory()?,
            DbLocation::File(path) => {
                create_private(path)?;
                Connection::open(path)?
            }
        };
        Self::from_connection(conn, matches!(location, DbLocation::File(_)))
    }

    fn from_connection(mut conn: Connection, file: bool) -> Result<Self, Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        if file {
            // Answers the mode now in force; an in-memory database stays in `memory` mode,
            // which is why this is not done for it.
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Invalid(format!(
                    "the database refused WAL mode (it is in {mode} mode)"
                )));
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            inner: Mutex::new(Inner { conn, export: None }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // See the module doc: a panic mid-transaction rolled back, the connection is sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), committed when `f` returns `Ok`
    /// and rolled back otherwise. Every write of every area goes through here.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the connection, for reads.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        f(&self.lock().conn)
    }

    /// The schema version the database is at.
    pub(crate) fn schema_version(&self) -> Result<u32, Error> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT coalesce(max(version), 0) FROM schema_version",
                [],
                |row| row.get(0),
            )?)
        })
    }
}

/// Creates the database file with mode 0600 if it does not exist, so that SQLite (which would
/// create it from the umask) never makes it readable by others.
fn create_private(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Create {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The one number a `SELECT count(*) ...` answers.
pub(crate) fn count(conn: &Connection, sql: &str) -> Result<u64, Error> {
    let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
    // A count is never negative.
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    km_plugin_sdk::auth::now_unix()
}

#[cfg(test)]
mod tests;
