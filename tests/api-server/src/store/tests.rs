//! The store against real SQLite databases (in memory and in files): migrations, the customers
//! file sync, event deduplication across restarts, and concurrent writers.

use std::path::Path;
use std::sync::Arc;

use km_plugin_sdk::Tier;
use serde_json::{json, Value};

use super::migrations::{latest, versions_are_contiguous, MIGRATIONS};
use super::*;
use crate::customers_file::{self, CustomersFile};
use crate::testing::{customer, write_customers, write_file};

fn file_db(path: &Path) -> Store {
    Store::open(&DbLocation::File(path.to_path_buf())).expect("the database opens")
}

fn memory_db() -> Store {
    Store::open(&DbLocation::Memory).expect("the in-memory database opens")
}

fn tables(store: &Store) -> Vec<String> {
    store
        .read(|conn| {
            let mut st =
                conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
            let names = st.query_map([], |r| r.get(0))?;
            Ok(names.collect::<Result<Vec<String>, _>>()?)
        })
        .expect("listing tables")
}

fn event(id: &str) -> Value {
    json!({"id": id, "method": "tools/call"})
}

fn events(ids: &[&str]) -> Vec<Value> {
    ids.iter().map(|id| event(id)).collect()
}

fn lookup(store: &Store, api_key: &str) -> Option<customers::Customer> {
    store
        .customer_by_api_key(&km_durable::digest::sha256_hex(api_key.as_bytes()))
        .expect("lookup")
}

// ---- migrations -------------------------------------------------------------------------------

#[test]
fn migrations_bring_an_empty_database_to_the_latest_schema() {
    assert!(versions_are_contiguous(), "versions are 1, 2, 3, ...");
    let store = memory_db();
    assert_eq!(store.schema_version().expect("version"), latest());
    assert_eq!(
        tables(&store),
        [
            "abuse_signals",
            "audit_checkpoints",
            "audit_keys",
            "auth_failures",
            "customers",
            "events",
            "request_nonces",
            "revoked_api_keys",
            "schema_version",
            "seats",
            "team_approvals",
            "team_members",
            "team_policies",
            "team_sessions",
            "teams",
        ],
        "the tables of migrations 1 to 5"
    );
}

#[test]
fn reopening_a_migrated_file_applies_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sqlite");
    drop(file_db(&path));
    let store = file_db(&path);
    let rows = store
        .read(|conn| count(conn, "SELECT count(*) FROM schema_version"))
        .expect("count");
    assert_eq!(rows, MIGRATIONS.len() as u64);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("db file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the database holds key digests");
}

#[test]
fn a_file_database_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_db(&dir.path().join("api.sqlite"));
    let (mode, fk, timeout, sync): (String, i64, i64, i64) = store
        .read(|conn| {
            Ok((
                conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
                conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?,
                conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
            ))
        })
        .expect("pragmas");
    assert_eq!(mode, "wal");
    assert_eq!(fk, 1);
    assert_eq!(timeout, 5000);
    assert_eq!(sync, 2, "FULL");
}

#[test]
fn a_database_from_a_newer_server_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sqlite");
    drop(file_db(&path));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "INSERT INTO schema_version VALUES (?1, 'from the future', '00', 0)",
        [latest() + 1],
    )
    .expect("insert");
    drop(conn);
    let err = Store::open(&DbLocation::File(path)).err().expect("refused");
    assert!(
        matches!(err, Error::SchemaTooNew { found, known } if found == latest() + 1 && known == latest()),
        "{err}"
    );
}

#[test]
fn a_database_whose_recorded_migration_differs_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sqlite");
    drop(file_db(&path));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE schema_version SET sql_sha256 = 'edited' WHERE version = 1",
        [],
    )
    .expect("update");
    drop(conn);
    let err = Store::open(&DbLocation::File(path)).err().expect("refused");
    assert!(
        matches!(err, Error::SchemaMismatch { version: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "my notes, not a database\n".repeat(100)).expect("write");
    assert!(Store::open(&DbLocation::File(path.clone())).is_err());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "my notes, not a database\n".repeat(100)
    );
}

// ---- customers --------------------------------------------------------------------------------

#[test]
fn customers_follow_the_file_as_it_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("customers.json");
    let store = memory_db();
    write_customers(
        &path,
        &[
            customer("alice", "key-a", "pro"),
            customer("bob", "key-b", "free"),
        ],
    );
    let file = CustomersFile::load(&path, &store).expect("load");
    let alice = lookup(&store, "key-a").expect("alice is known");
    assert_eq!((alice.id.as_str(), alice.tier), ("alice", Tier::Pro));
    assert_eq!(alice.features, ["api_logging"]);
    assert_eq!(alice.customer_token.as_deref(), Some("ct-alice"));
    assert!(lookup(&store, "key-unknown").is_none());
    assert_eq!(
        file.sync_if_changed(&store).expect("check"),
        None,
        "unchanged"
    );

    // A downgrade, the way the e2e tests make one.
    write_customers(
        &path,
        &[
            customer("alice", "key-a", "free"),
            customer("bob", "key-b", "free"),
        ],
    );
    let report = file
        .sync_if_changed(&store)
        .expect("sync")
        .expect("changed");
    assert_eq!((report.updated, report.unchanged), (1, 1));
    assert_eq!(lookup(&store, "key-a").expect("alice").tier, Tier::Free);

    // Bob leaves: his key stops working; he comes back: it works again.
    write_customers(&path, &[customer("alice", "key-a", "free")]);
    let report = file
        .sync_if_changed(&store)
        .expect("sync")
        .expect("changed");
    assert_eq!(report.deactivated, 1);
    assert!(lookup(&store, "key-b").is_none());
    assert_eq!(store.active_customers().expect("count"), 1);
    write_customers(
        &path,
        &[
            customer("alice", "key-a", "free"),
            customer("bob", "key-b", "pro"),
        ],
    );
    file.sync_if_changed(&store).expect("sync");
    assert_eq!(
        lookup(&store, "key-b").expect("bob is back").tier,
        Tier::Pro
    );

    // Two customers swap keys in one edit.
    write_customers(
        &path,
        &[
            customer("alice", "key-b", "free"),
            customer("bob", "key-a", "pro"),
        ],
    );
    file.sync_if_changed(&store).expect("the swap applies");
    assert_eq!(lookup(&store, "key-a").expect("key-a").id, "bob");
    assert_eq!(lookup(&store, "key-b").expect("key-b").id, "alice");
}

#[test]
fn a_broken_customers_file_keeps_the_previous_customers_until_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("customers.json");
    let store = memory_db();
    write_customers(&path, &[customer("alice", "key-a", "pro")]);
    let file = CustomersFile::load(&path, &store).expect("load");
    write_file(&path, "{\"customers\": [");
    let err = format!("{:#}", file.sync_if_changed(&store).expect_err("broken"));
    assert!(err.contains("customers.json"), "{err}");
    assert_eq!(
        lookup(&store, "key-a").expect("alice stays").tier,
        Tier::Pro
    );
    std::fs::remove_file(&path).expect("remove");
    assert!(
        file.sync_if_changed(&store).is_err(),
        "a missing file is reported"
    );
    assert!(lookup(&store, "key-a").is_some());
    write_customers(&path, &[customer("alice", "key-a", "enterprise")]);
    file.sync_if_changed(&store).expect("fixed");
    assert_eq!(
        lookup(&store, "key-a").expect("alice").tier,
        Tier::Enterprise
    );
}

#[test]
fn an_unchanged_entry_leaves_its_row_alone_when_others_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("customers.json");
    let store = memory_db();
    let alice = customer("alice", "key-a", "pro");
    write_customers(&path, &[alice.clone(), customer("bob", "key-b", "free")]);
    let file = CustomersFile::load(&path, &store).expect("load");
    // A change made through the database (as an API-side rotation would be) ...
    store
        .write(|tx| {
            tx.execute(
                "UPDATE customers SET api_key_sha256 = ?1 WHERE id = 'alice'",
                [km_durable::digest::sha256_hex(b"key-a2")],
            )?;
            Ok(())
        })
        .expect("update");
    // ... survives an edit of another entry, and is overwritten by an edit of alice's.
    write_customers(&path, &[alice, customer("bob", "key-b", "pro")]);
    file.sync_if_changed(&store).expect("sync");
    assert!(lookup(&store, "key-a2").is_some());
    write_customers(
        &path,
        &[
            customer("alice", "key-a", "enterprise"),
            customer("bob", "key-b", "pro"),
        ],
    );
    file.sync_if_changed(&store).expect("sync");
    assert_eq!(
        lookup(&store, "key-a").expect("alice").tier,
        Tier::Enterprise
    );
    assert!(lookup(&store, "key-a2").is_none());
}

#[test]
fn the_customers_file_reads_as_toml_and_bad_entries_are_named() {
    let toml = r#"
        [[customers]]
        id = "alice"
        api_key_sha256 = "2C26B46B68FFC68FF99B453C1D30413413422D706483BFA0F98A5E886266E7AE"
        tier = "pro"
        subscription_end = 1893456000
    "#;
    let listed = customers_file::parse(toml, true).expect("toml");
    assert_eq!(listed[0].customer.id, "alice");
    assert_eq!(listed[0].customer.tier, Tier::Pro);
    assert!(listed[0].customer.features.is_empty());
    assert_eq!(
        listed[0].customer.api_key_sha256,
        km_durable::digest::sha256_hex(b"foo"),
        "digests are kept in lowercase"
    );

    let mut bad_tier = customer("alice", "k", "pro");
    bad_tier["tier"] = "gold".into();
    let mut bad_hash = customer("alice", "k", "pro");
    bad_hash["api_key_sha256"] = "abc".into();
    let mut misspelt = customer("alice", "k", "pro");
    misspelt["customer_tokn"] = "ct".into();
    for (customers, expected) in [
        (vec![bad_tier], "unknown tier"),
        (vec![bad_hash], "not 64 hexadecimal"),
        (vec![misspelt], "customer_tokn"),
        (
            vec![
                customer("alice", "k", "pro"),
                customer("alice", "k2", "pro"),
            ],
            "listed twice",
        ),
        (
            vec![customer("alice", "k", "pro"), customer("bob", "k", "pro")],
            "same api_key_sha256",
        ),
    ] {
        let text = json!({ "customers": customers }).to_string();
        let err = format!(
            "{:#}",
            customers_file::parse(&text, false).expect_err(expected)
        );
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn customers_survive_a_restart_with_a_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, path) = (
        dir.path().join("api.sqlite"),
        dir.path().join("customers.json"),
    );
    write_customers(&path, &[customer("alice", "key-a", "pro")]);
    let store = file_db(&db);
    CustomersFile::load(&path, &store).expect("load");
    drop(store);
    let store = file_db(&db);
    assert_eq!(lookup(&store, "key-a").expect("kept").id, "alice");
    // Restarted with the same file: nothing to apply.
    let file = CustomersFile::load(&path, &store).expect("load");
    drop(file);
    let report = store
        .sync_file_customers(
            &customers_file::parse(&std::fs::read_to_string(&path).expect("read"), false)
                .expect("parse"),
        )
        .expect("sync");
    assert_eq!((report.added, report.updated, report.unchanged), (0, 0, 1));
}

// ---- events -----------------------------------------------------------------------------------

#[test]
fn events_are_deduplicated_within_and_across_batches() {
    let store = memory_db();
    let report = store
        .ingest_events("alice", &events(&["a", "b", "a"]))
        .expect("ingest");
    assert_eq!((report.accepted, report.duplicates), (2, 1));
    let report = store
        .ingest_events("bob", &events(&["b", "c"]))
        .expect("ingest");
    assert_eq!((report.accepted, report.duplicates), (1, 1));
    assert_eq!(store.event_count().expect("count"), 3);
    let b = store.event("b").expect("read").expect("b is stored");
    assert_eq!(b["customer_id"], "alice", "the first acceptance wins");
    assert_eq!(b["method"], "tools/call");
}

#[test]
fn a_batch_with_an_event_without_id_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("events.jsonl");
    let store = memory_db();
    store.export_events_to(&export).expect("attach");
    let batch = vec![event("a"), json!({"id": 7}), event("b")];
    assert!(matches!(
        store.ingest_events("alice", &batch),
        Err(Error::Invalid(_))
    ));
    assert_eq!(store.event_count().expect("count"), 0);
    assert_eq!(std::fs::read_to_string(&export).expect("read"), "");
}

#[test]
fn event_dedupe_survives_a_restart_with_a_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("api.sqlite");
    let store = file_db(&db);
    store
        .ingest_events("alice", &events(&["a", "b"]))
        .expect("ingest");
    drop(store);
    let store = file_db(&db);
    let report = store
        .ingest_events("alice", &events(&["a", "c"]))
        .expect("ingest");
    assert_eq!((report.accepted, report.duplicates), (1, 1));
    assert_eq!(store.event_count().expect("count"), 3);
}

#[test]
fn event_dedupe_survives_a_restart_with_only_the_events_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("events.jsonl");
    let store = memory_db();
    assert_eq!(
        store.export_events_to(&export).expect("attach"),
        events::ImportReport::default(),
        "a missing file is an empty export"
    );
    store
        .ingest_events("alice", &events(&["a", "b"]))
        .expect("ingest");
    drop(store);
    let store = memory_db();
    let report = store.export_events_to(&export).expect("attach");
    assert_eq!((report.imported, report.known, report.skipped), (2, 0, 0));
    let report = store
        .ingest_events("alice", &events(&["b", "c"]))
        .expect("ingest");
    assert_eq!((report.accepted, report.duplicates), (1, 1));
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "each accepted event once, in order");
    assert!(lines.iter().all(|l| l["customer_id"] == "alice"));
}

#[test]
fn a_torn_last_line_is_skipped_and_never_glued_to_the_next_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("events.jsonl");
    std::fs::write(
        &export,
        "{\"id\":\"a\",\"customer_id\":\"alice\"}\nnot json\n{\"id\":\"b\",\"cus",
    )
    .expect("write");
    let store = memory_db();
    let report = store.export_events_to(&export).expect("attach");
    assert_eq!((report.imported, report.skipped), (1, 2));
    store
        .ingest_events("alice", &events(&["c"]))
        .expect("ingest");
    let text = std::fs::read_to_string(&export).expect("read");
    let last: Value = serde_json::from_str(text.lines().last().expect("a last line"))
        .expect("the new event is a line of its own");
    assert_eq!(last["id"], "c");
}

#[test]
fn with_a_database_and_an_events_file_the_file_fills_in_what_the_database_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, export) = (
        dir.path().join("api.sqlite"),
        dir.path().join("events.jsonl"),
    );
    let store = file_db(&db);
    store.export_events_to(&export).expect("attach");
    store
        .ingest_events("alice", &events(&["a"]))
        .expect("ingest");
    drop(store);
    let mut text = std::fs::read_to_string(&export).expect("read");
    text.push_str("{\"id\":\"z\",\"customer_id\":\"bob\"}\n");
    std::fs::write(&export, text).expect("write");
    let store = file_db(&db);
    let report = store.export_events_to(&export).expect("attach");
    assert_eq!((report.imported, report.known), (1, 1));
    assert_eq!(store.event_count().expect("count"), 2);
}

// ---- concurrency ------------------------------------------------------------------------------

#[test]
fn concurrent_writers_on_one_store_lose_nothing_and_store_each_id_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("events.jsonl");
    let store = Arc::new(file_db(&dir.path().join("api.sqlite")));
    store.export_events_to(&export).expect("attach");
    // Eight writers, each sending twenty batches; every id is sent by two of them.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut accepted = 0;
                for batch in 0..20 {
                    let ids: Vec<String> =
                        (0..5).map(|k| format!("e{}-{batch}-{k}", w / 2)).collect();
                    let batch: Vec<Value> = ids.iter().map(|id| event(id)).collect();
                    let report = store.ingest_events("alice", &batch).expect("ingest");
                    assert_eq!(report.accepted + report.duplicates, 5);
                    accepted += report.accepted;
                }
                accepted
            })
        })
        .collect();
    let accepted: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("a writer"))
        .sum();
    assert_eq!(
        accepted,
        4 * 20 * 5,
        "each distinct id accepted exactly once"
    );
    assert_eq!(store.event_count().expect("count"), 400);
    let text = std::fs::read_to_string(&export).expect("read");
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("no interleaved lines");
            v["id"].as_str().expect("an id").to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);
    assert_eq!(text.lines().count(), 400, "no line twice");
}

#[test]
fn two_connections_to_one_file_write_at_once_and_dedupe_between_them() {
    // Two stores on one file stand for two server processes (or a restart that overlaps the old
    // process's exit): WAL and the busy timeout let both write, SQLite serialises them.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("api.sqlite");
    let first = Arc::new(file_db(&db));
    let second = Arc::new(file_db(&db));
    let customers = dir.path().join("customers.json");
    write_customers(&customers, &[customer("alice", "key-a", "pro")]);
    let writers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .flat_map(|store| {
            (0..3).map(move |t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut accepted = 0;
                    for batch in 0..30 {
                        let ids: Vec<String> =
                            (0..4).map(|k| format!("x{t}-{batch}-{k}")).collect();
                        let batch: Vec<Value> = ids.iter().map(|id| event(id)).collect();
                        accepted += store
                            .ingest_events("alice", &batch)
                            .expect("ingest")
                            .accepted;
                    }
                    accepted
                })
            })
        })
        .collect();
    // Customer syncs and lookups run meanwhile on both.
    for store in [&first, &second] {
        CustomersFile::load(&customers, store).expect("load");
        assert!(lookup(store, "key-a").is_some());
    }
    let accepted: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("a writer"))
        .sum();
    assert_eq!(accepted, 3 * 30 * 4);
    assert_eq!(first.event_count().expect("count"), 360);
    assert_eq!(second.event_count().expect("count"), 360);
}
