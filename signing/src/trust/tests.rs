//! Tests of the trust store: persistence, builtin rules, revocations, strict loading.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::keys::{Algorithm, PrivateKey};

fn new_key() -> PublicKey {
    PrivateKey::generate(Algorithm::Ed25519)
        .expect("generates")
        .public_key()
}

#[test]
fn missing_dir_is_an_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TrustStore::load(&dir.path().join("trusted-keys")).expect("loads");
    assert!(store.keys().is_empty() && store.revocations().is_empty());
}

#[test]
fn added_keys_and_revocations_survive_a_reload() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("trusted-keys");
    let mut store = TrustStore::load(&dir).expect("loads");
    let a = new_key();
    let b = new_key();
    let id_a = store
        .add(
            a.clone(),
            Some("vendor A".into()),
            Some(vec!["api-logger".into()]),
        )
        .expect("adds");
    let id_b = store.add(b.clone(), None, None).expect("adds");
    store
        .revoke(&"AB".repeat(32), Some("bad build".into()))
        .expect("revokes hash");
    store.revoke(id_b.as_str(), None).expect("revokes key");

    assert_eq!(
        fs::metadata(&dir).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    assert!(dir.join(format!("{id_a}.pub")).exists() && dir.join(format!("{id_a}.json")).exists());

    let again = TrustStore::load(&dir).expect("reloads");
    let ka = again.find(&id_a).expect("a is there");
    assert_eq!(ka.label, "vendor A");
    assert_eq!(ka.scope, Some(vec!["api-logger".to_owned()]));
    assert_eq!(ka.public_key, a);
    assert!(!ka.builtin);
    assert!(ka.allows("api-logger") && !ka.allows("other"));
    let kb = again.find(&id_b).expect("b is there");
    assert_eq!(kb.label, id_b.as_str());
    assert!(kb.allows("anything"));
    assert_eq!(again.revocations().len(), 2);
    assert_eq!(
        again
            .revocation(&"ab".repeat(32))
            .and_then(|r| r.reason.clone()),
        Some("bad build".into())
    );
    assert!(again.revocation(id_b.as_str()).is_some());

    let mut again = again;
    again.remove(&id_a).expect("removes");
    assert!(!dir.join(format!("{id_a}.pub")).exists());
    assert!(TrustStore::load(&dir)
        .expect("reloads")
        .find(&id_a)
        .is_none());
}

#[test]
fn builtin_keys_are_not_persisted_nor_removable() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("trusted-keys");
    let mut store = TrustStore::load(&dir).expect("loads");
    let key = new_key();
    let id = store
        .add_builtin("kilometers", &key.to_pem())
        .expect("adds builtin");
    assert!(store.find(&id).expect("found").builtin);
    assert!(matches!(store.remove(&id), Err(Error::BuiltinKey { .. })));
    assert!(matches!(
        store.add(key, None, None),
        Err(Error::BuiltinKey { .. })
    ));
    assert!(!dir.exists(), "nothing written");
    let unknown = new_key().key_id();
    assert!(matches!(
        store.remove(&unknown),
        Err(Error::UntrustedKey { .. })
    ));
    assert!(matches!(
        store.add_builtin("x", "garbage"),
        Err(Error::BadKey { .. })
    ));
}

#[test]
fn invalid_input_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut store = TrustStore::load(home.path()).expect("loads");
    assert!(matches!(
        store.revoke("xyz", None),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store.revoke(&"a".repeat(40), None),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store.add(new_key(), None, Some(vec!["Bad Name".into()])),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store.add(new_key(), None, Some(vec![])),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store.add(new_key(), Some("a\nb".into()), None),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn loading_is_strict() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("trusted-keys");
    let mut store = TrustStore::load(&dir).expect("loads");
    let id = store
        .add(new_key(), None, Some(vec!["a".into()]))
        .expect("adds");
    fs::write(dir.join("README"), "ignored").expect("write");
    TrustStore::load(&dir).expect("other files are ignored");

    // Deleting the scope file must not widen the key to every plugin.
    let meta = dir.join(format!("{id}.json"));
    let saved = fs::read(&meta).expect("read");
    fs::remove_file(&meta).expect("rm");
    assert!(matches!(TrustStore::load(&dir), Err(Error::Io { .. })));
    fs::write(&meta, saved).expect("restore");
    fsutil_mode(&meta, 0o600);

    // A key file under another key's name.
    let other = dir.join(format!("{}.pub", "0".repeat(32)));
    fs::write(&other, new_key().to_pem()).expect("write");
    fsutil_mode(&other, 0o600);
    let err = TrustStore::load(&dir).expect_err("refused");
    assert!(err.to_string().contains("file name"), "{err}");
    fs::remove_file(&other).expect("rm");

    // Writable by others.
    fsutil_mode(&dir, 0o777);
    assert!(matches!(
        TrustStore::load(&dir),
        Err(Error::InsecurePermissions { .. })
    ));
    fsutil_mode(&dir, 0o700);
    TrustStore::load(&dir).expect("loads again");
}

fn fsutil_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn revocations_by_two_stores_are_merged_not_lost() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut first = TrustStore::load(home.path()).expect("loads");
    let mut second = TrustStore::load(home.path()).expect("loads");
    first.revoke(&"1".repeat(32), None).expect("revokes");
    second.revoke(&"2".repeat(64), None).expect("revokes");
    let again = TrustStore::load(home.path()).expect("reloads");
    assert_eq!(again.revocations().len(), 2);
}
