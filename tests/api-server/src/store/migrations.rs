//! The schema, as forward migrations applied in order.
//!
//! A later area adds its tables by appending a [`Migration`] with the next version; a migration
//! that has shipped is never edited (the SHA-256 of its SQL is recorded when it runs, and a
//! database whose record differs is refused), and none is ever removed. Migrations run inside
//! the opening transaction, so a failed one leaves the database as it was. SQL that cannot run in
//! a transaction (`VACUUM`, `PRAGMA journal_mode`) does not belong here; a table rebuild follows
//! SQLite's twelve-step `ALTER TABLE` procedure and ends with `PRAGMA foreign_key_check`.
//!
//! Hand-written rather than `rusqlite_migration`: that crate keeps the version in
//! `PRAGMA user_version` only, while this runner records each migration's name, digest and time
//! in a table, which is what lets it refuse a database it does not understand; the runner is
//! forty lines.

use rusqlite::{Connection, TransactionBehavior};

use super::Error;

/// One step of the schema.
pub(super) struct Migration {
    /// 1, 2, 3, ... without gaps.
    pub(super) version: u32,
    /// What it adds, for people reading `schema_version`.
    pub(super) name: &'static str,
    pub(super) sql: &'static str,
}

impl Migration {
    fn digest(&self) -> String {
        km_durable::digest::sha256_hex(self.sql.as_bytes())
    }
}

/// Every migration, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "customers and events",
        sql: r#"
        -- Customers: imported from the customers file (file_entry_sha256 is the digest of the
        -- entry last applied; NULL for customers the file does not manage). A customer is never
        -- deleted, so that rows referring to it stay valid: one the file no longer lists is
        -- made inactive, and an inactive customer's API key authenticates nothing.
        CREATE TABLE customers (
            id                TEXT PRIMARY KEY NOT NULL,
            api_key_sha256    TEXT NOT NULL CHECK (length(api_key_sha256) = 64),
            tier              TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
            features          TEXT NOT NULL CHECK (json_type(features) = 'array'),
            subscription_end  INTEGER NOT NULL,
            customer_token    TEXT,
            active            INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            file_entry_sha256 TEXT,
            updated_at        INTEGER NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX customers_active_api_key ON customers (api_key_sha256)
            WHERE active = 1;

        -- Events accepted from api-logger, deduplicated by id. customer_id is the customer the
        -- event was accepted for, as history: no foreign key, so that an export file of an
        -- earlier run imports whatever customers the customers file lists now.
        CREATE TABLE events (
            id          TEXT PRIMARY KEY NOT NULL,
            customer_id TEXT,
            received_at INTEGER NOT NULL,
            event       TEXT NOT NULL CHECK (json_valid(event))
        ) STRICT;
        CREATE INDEX events_by_customer ON events (customer_id, received_at);
    "#,
    },
    Migration {
        version: 2,
        name: "audit checkpoints",
        sql: r#"
        -- The audit keys of compliance-reporting installations, each bound to the customer that
        -- first sent a checkpoint signed by it (another customer cannot write under it), with
        -- the host and OS user it said it runs as.
        CREATE TABLE audit_keys (
            key_id      TEXT PRIMARY KEY NOT NULL CHECK (length(key_id) = 16),
            customer_id TEXT NOT NULL REFERENCES customers (id),
            public_key  TEXT NOT NULL,
            host        TEXT NOT NULL,
            os_user     TEXT NOT NULL,
            first_seen  INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX audit_keys_by_installation ON audit_keys (customer_id, host, os_user);

        -- The signed checkpoints witnessed, exactly as signed (text and signature), with the size
        -- and root the text states, for the consistency check of the next one.
        CREATE TABLE audit_checkpoints (
            key_id      TEXT NOT NULL REFERENCES audit_keys (key_id),
            size        INTEGER NOT NULL CHECK (size >= 0),
            root        TEXT NOT NULL CHECK (length(root) = 64),
            checkpoint  TEXT NOT NULL,
            signature   TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (key_id, checkpoint)
        ) STRICT;
        CREATE INDEX audit_checkpoints_by_size ON audit_checkpoints (key_id, size);
    "#,
    },
    Migration {
        version: 3,
        name: "abuse signals",
        sql: r#"
        -- Failed plugin authentications by subject (see store::abuse), kept for the abuse
        -- window: what the signals below are raised from. subject_kind 'device' is for seats.
        CREATE TABLE auth_failures (
            id           INTEGER PRIMARY KEY,
            at           INTEGER NOT NULL,
            subject_kind TEXT NOT NULL CHECK (subject_kind IN ('customer', 'api_key', 'device')),
            subject      TEXT NOT NULL,
            reason       TEXT NOT NULL
        ) STRICT;
        CREATE INDEX auth_failures_by_subject ON auth_failures (subject_kind, subject, at);

        -- One signal per kind and subject, counting what it saw. The kinds are listed in
        -- store::abuse (no CHECK, so that a later area adds kinds without a table rebuild).
        CREATE TABLE abuse_signals (
            id           INTEGER PRIMARY KEY,
            kind         TEXT NOT NULL,
            subject_kind TEXT NOT NULL CHECK (subject_kind IN ('customer', 'api_key', 'device')),
            subject      TEXT NOT NULL,
            count        INTEGER NOT NULL CHECK (count > 0),
            first_at     INTEGER NOT NULL,
            last_at      INTEGER NOT NULL,
            last_reason  TEXT NOT NULL,
            UNIQUE (kind, subject_kind, subject)
        ) STRICT;
    "#,
    },
    Migration {
        version: 4,
        name: "teams",
        sql: r#"
        -- Teams (team-collaboration), from the teams directory: the admin public keys (PEM, a
        -- JSON array) that sign its policies. A team is never deleted.
        CREATE TABLE teams (
            name       TEXT PRIMARY KEY NOT NULL,
            admin_keys TEXT NOT NULL CHECK (json_type(admin_keys) = 'array'),
            updated_at INTEGER NOT NULL
        ) STRICT;

        -- Members: each bound to the customer whose API key (and so token) they use, with a
        -- role, and the Ed25519 key they registered when they joined (their approvals are
        -- signed with it). from_file: managed by the team's team.toml (else by an admin
        -- through the API). A member is made inactive, never deleted, so that their sessions
        -- and approvals stay attributed.
        CREATE TABLE team_members (
            team        TEXT NOT NULL REFERENCES teams (name),
            id          TEXT NOT NULL,
            customer_id TEXT NOT NULL REFERENCES customers (id),
            role        TEXT NOT NULL CHECK (role IN ('admin', 'approver', 'member')),
            public_key  TEXT,
            key_id      TEXT CHECK (key_id IS NULL OR length(key_id) = 32),
            active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            from_file   INTEGER NOT NULL DEFAULT 0 CHECK (from_file IN (0, 1)),
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (team, id)
        ) STRICT;
        CREATE UNIQUE INDEX team_members_by_customer ON team_members (customer_id)
            WHERE active = 1;
        CREATE UNIQUE INDEX team_members_by_key ON team_members (team, key_id)
            WHERE key_id IS NOT NULL;

        -- Every version of every policy of a team, as signed (verified against the team's
        -- admin keys when it arrived). The latest version per policy is what members fetch.
        CREATE TABLE team_policies (
            team           TEXT NOT NULL REFERENCES teams (name),
            policy         TEXT NOT NULL,
            version        INTEGER NOT NULL CHECK (version >= 1),
            payload_sha256 TEXT NOT NULL CHECK (length(payload_sha256) = 64),
            key_id         TEXT NOT NULL,
            envelope       TEXT NOT NULL,
            published_by   TEXT,
            received_at    INTEGER NOT NULL,
            PRIMARY KEY (team, policy, version)
        ) STRICT;

        -- Shared approvals, each signed by the member who made it (checked against the key
        -- the member registered, unless stored by the test control: checked = 0).
        CREATE TABLE team_approvals (
            seq            INTEGER PRIMARY KEY,
            team           TEXT NOT NULL REFERENCES teams (name),
            policy         TEXT NOT NULL,
            member         TEXT NOT NULL,
            payload_sha256 TEXT NOT NULL CHECK (length(payload_sha256) = 64),
            envelope       TEXT NOT NULL,
            checked        INTEGER NOT NULL CHECK (checked IN (0, 1)),
            received_at    INTEGER NOT NULL,
            UNIQUE (team, policy, payload_sha256)
        ) STRICT;

        -- Session summaries (no message content), one per member and km session.
        CREATE TABLE team_sessions (
            team        TEXT NOT NULL REFERENCES teams (name),
            member      TEXT NOT NULL,
            id          TEXT NOT NULL,
            ended_at    INTEGER NOT NULL,
            summary     TEXT NOT NULL CHECK (json_valid(summary)),
            received_at INTEGER NOT NULL,
            PRIMARY KEY (team, member, id)
        ) STRICT;
        CREATE INDEX team_sessions_by_time ON team_sessions (team, ended_at);
    "#,
    },
    Migration {
        version: 5,
        name: "signed requests, seats and API key rotation",
        sql: r#"
        -- The seat limit of a customer's subscription (NULL: no limit), from the customers file.
        ALTER TABLE customers ADD COLUMN seat_limit INTEGER
            CHECK (seat_limit IS NULL OR seat_limit >= 1);

        -- The nonces of the signed authentication requests accepted, each kept until its
        -- request's timestamp leaves the accepted window (after which the timestamp alone refuses
        -- a replay), so that a captured request is accepted once.
        CREATE TABLE request_nonces (
            customer_id TEXT NOT NULL REFERENCES customers (id),
            nonce       TEXT NOT NULL CHECK (length(nonce) = 32),
            expires_at  INTEGER NOT NULL,
            PRIMARY KEY (customer_id, nonce)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX request_nonces_by_expiry ON request_nonces (expires_at);

        -- The installations holding a seat of a customer's subscription: km's device identity
        -- (the key id of its Ed25519 public key, and the key), claimed by the installation's
        -- first authentication and held until released.
        CREATE TABLE seats (
            customer_id TEXT NOT NULL REFERENCES customers (id),
            device_id   TEXT NOT NULL CHECK (length(device_id) = 32),
            public_key  TEXT NOT NULL,
            first_seen  INTEGER NOT NULL,
            last_seen   INTEGER NOT NULL,
            last_plugin TEXT NOT NULL,
            PRIMARY KEY (customer_id, device_id)
        ) STRICT;

        -- API keys replaced by a rotation through the API: never accepted again, even when the
        -- customers file still names one (the file is then out of date, not a reinstatement).
        CREATE TABLE revoked_api_keys (
            api_key_sha256 TEXT PRIMARY KEY NOT NULL CHECK (length(api_key_sha256) = 64),
            customer_id    TEXT NOT NULL REFERENCES customers (id),
            revoked_at     INTEGER NOT NULL
        ) STRICT;
    "#,
    },
];

/// The version the newest migration brings a database to.
pub(super) fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the database to [`latest`], in one transaction. Returns the version it is at.
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY NOT NULL,
             name       TEXT NOT NULL,
             sql_sha256 TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         ) STRICT;",
    )?;
    let applied: Vec<(u32, String, String)> = {
        let mut statement =
            tx.prepare("SELECT version, name, sql_sha256 FROM schema_version ORDER BY version")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (i, (version, name, digest)) in applied.iter().enumerate() {
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == *version) else {
            return Err(Error::SchemaTooNew {
                found: applied.last().map_or(*version, |a| a.0),
                known: latest(),
            });
        };
        let why = if u32::try_from(i + 1).ok() != Some(*version) {
            Some("the versions before it are missing")
        } else if known.digest() != *digest {
            Some("its SQL differs from what ran (a shipped migration was edited)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::SchemaMismatch {
                version: *version,
                name: name.clone(),
                why,
            });
        }
    }
    let current = applied.last().map_or(0, |a| a.0);
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, name, sql_sha256, applied_at)
             VALUES (?1, ?2, ?3, ?4)",
            (
                migration.version,
                migration.name,
                migration.digest(),
                super::now(),
            ),
        )?;
    }
    tx.commit()?;
    Ok(latest())
}

#[cfg(test)]
pub(super) fn versions_are_contiguous() -> bool {
    MIGRATIONS
        .iter()
        .enumerate()
        .all(|(i, m)| u32::try_from(i + 1).ok() == Some(m.version))
}
