//! StrictModes on real files. Tests run as root in CI: root owns everything it creates, so the
//! "owned by another user" cases chown a file to an unprivileged uid (only root can); run as
//! another user, those cases are skipped with a message and the mode and link cases still run.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

/// An unprivileged uid that owns nothing here (nobody).
const OTHER_UID: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `path` to another user; `false` (and a message) when km's tests do not run as root.
fn chown_to_other(path: &Path) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "skipped: giving {} to another user needs root (run the tests as root to cover it)",
            path.display()
        );
        return false;
    }
    std::os::unix::fs::lchown(path, Some(OTHER_UID), None).expect("chown");
    true
}

/// A fresh KM_HOME (0700) under a private temporary directory, with the trust files in place.
fn home() -> (tempfile::TempDir, KmHome) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = KmHome::resolve(Some(&dir.path().join("km"))).expect("home");
    for sub in ["trusted-keys", "state", "policies/team"] {
        KmHome::ensure_private_dir(&home.root().join(sub)).expect("mkdir");
    }
    for file in [
        "trusted-keys/0123456789abcdef0123456789abcdef.pub",
        "trusted-keys/0123456789abcdef0123456789abcdef.json",
        "trusted-keys/revocations.json",
        "state/seen-versions.json",
        "config.toml",
    ] {
        km_durable::write_atomic(&home.root().join(file), b"x", 0o600).expect("write");
    }
    (dir, home)
}

#[test]
fn a_safe_home_under_tmp_passes() {
    let (_dir, home) = home();
    check_trust_files(&home).expect("a 0700 KM_HOME under the sticky /tmp is accepted");
}

#[test]
fn a_missing_home_is_fine_and_its_parent_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = KmHome::resolve(Some(&dir.path().join("not-yet"))).expect("home");
    check_home(&home).expect("km creates it later");
    chmod(dir.path(), 0o777);
    let refusal = check_home(&home).expect_err("a parent writable by all, not sticky");
    assert_eq!(refusal.check, Check::Permissions);
    assert_eq!(refusal.path, dir.path());
    assert!(refusal.reason.contains("chmod go-w"), "{refusal}");
}

#[test]
fn every_trust_file_writable_by_others_is_refused_naming_it_and_the_fix() {
    for rel in [
        "",
        "trusted-keys",
        "trusted-keys/0123456789abcdef0123456789abcdef.pub",
        "trusted-keys/0123456789abcdef0123456789abcdef.json",
        "trusted-keys/revocations.json",
        "state",
        "state/seen-versions.json",
    ] {
        let (_dir, home) = home();
        let path = if rel.is_empty() {
            home.root().to_path_buf()
        } else {
            home.root().join(rel)
        };
        let mode = if path.is_dir() { 0o770 } else { 0o620 };
        chmod(&path, mode);
        let refusal = check_trust_files(&home).expect_err(rel);
        assert_eq!(refusal.check, Check::Permissions, "{rel}: {refusal}");
        assert_eq!(refusal.path, path, "{rel}: {refusal}");
        assert!(
            refusal
                .reason
                .contains(&format!("chmod go-w {}", path.display())),
            "{refusal}"
        );
    }
}

#[test]
fn every_trust_file_owned_by_another_user_is_refused_naming_it_and_the_fix() {
    for rel in [
        "",
        "trusted-keys",
        "trusted-keys/0123456789abcdef0123456789abcdef.pub",
        "trusted-keys/0123456789abcdef0123456789abcdef.json",
        "trusted-keys/revocations.json",
        "state",
        "state/seen-versions.json",
    ] {
        let (_dir, home) = home();
        let path = if rel.is_empty() {
            home.root().to_path_buf()
        } else {
            home.root().join(rel)
        };
        if !chown_to_other(&path) {
            return;
        }
        let refusal = check_trust_files(&home).expect_err(rel);
        assert_eq!(refusal.check, Check::Owner, "{rel}: {refusal}");
        assert_eq!(refusal.path, path, "{rel}: {refusal}");
        assert!(refusal.reason.contains("chown"), "{refusal}");
        assert!(refusal.reason.contains(&OTHER_UID.to_string()), "{refusal}");
    }
}

#[test]
fn a_parent_owned_by_another_user_is_refused_even_when_not_writable() {
    let (dir, home) = home();
    if !chown_to_other(dir.path()) {
        return;
    }
    let refusal = check_home(&home).expect_err("another user could rename KM_HOME away");
    assert_eq!(refusal.check, Check::Owner);
    assert_eq!(refusal.path, dir.path());
}

#[test]
fn links_inside_km_home_are_refused() {
    for rel in [
        "trusted-keys",
        "state/seen-versions.json",
        "trusted-keys/revocations.json",
    ] {
        let (dir, home) = home();
        let path = home.root().join(rel);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&path, &elsewhere).expect("move away");
        symlink(&elsewhere, &path).expect("symlink");
        let refusal = check_trust_files(&home).expect_err(rel);
        assert_eq!(refusal.check, Check::Symlink, "{rel}: {refusal}");
        assert_eq!(refusal.path, path);
    }
}

#[test]
fn a_link_on_the_way_is_accepted_when_yours_and_refused_when_another_users() {
    let (dir, home) = home();
    let link = dir.path().join("link");
    symlink(home.root(), &link).expect("symlink");
    let via_link = KmHome::resolve(Some(&link)).expect("home");
    check_trust_files(&via_link).expect("your own link to a safe KM_HOME");
    if !chown_to_other(&link) {
        return;
    }
    let refusal = check_home(&via_link).expect_err("another user's link could be retargeted");
    assert_eq!(refusal.check, Check::Owner);
    assert_eq!(refusal.path, link);
}

#[test]
fn a_link_to_an_unsafe_directory_is_refused_at_the_real_directory() {
    let (dir, home) = home();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o777);
    let target = shared.join("km");
    std::fs::rename(home.root(), &target).expect("move");
    symlink(&target, home.root()).expect("symlink");
    let refusal = check_home(&home).expect_err("KM_HOME really lives in a directory anyone writes");
    assert_eq!(refusal.check, Check::Permissions);
    assert_eq!(refusal.path, shared);
}

#[test]
fn fifos_and_devices_are_refused_without_being_read() {
    let (_dir, home) = home();
    let fifo = home.state_dir().join("seen-versions.json");
    std::fs::remove_file(&fifo).expect("rm");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let refusal = check_trust_files(&home).expect_err("a FIFO is not a record");
    assert_eq!(refusal.check, Check::Format);
    // Read directly, it is refused at once too (opened without blocking).
    let refusal = read_file(&fifo, 1024, "rollback record").expect_err("not read");
    assert_eq!(refusal.check, Check::Format);
    // A link to /dev/zero is a link, never followed.
    let zero = home.root().join("config.toml");
    std::fs::remove_file(&zero).expect("rm");
    symlink("/dev/zero", &zero).expect("symlink");
    let refusal = read_file(&zero, 1024, "configuration file").expect_err("not read");
    assert_eq!(refusal.check, Check::Symlink);
}

#[test]
fn reads_are_capped_and_missing_files_are_none() {
    let (_dir, home) = home();
    let path = home.config_file();
    km_durable::write_atomic(&path, &[b'a'; 100], 0o600).expect("write");
    assert_eq!(
        read_file(&path, 100, "configuration file").expect("fits"),
        Some(vec![b'a'; 100])
    );
    let refusal = read_file(&path, 99, "configuration file").expect_err("over the cap");
    assert_eq!(refusal.check, Check::Size);
    assert_eq!(
        read_file(&home.root().join("nothing.toml"), 10, "x").expect("missing"),
        None
    );
    assert_eq!(
        read_file(&home.root().join("no-dir/nothing.toml"), 10, "x").expect("missing"),
        None
    );
}

#[test]
fn the_base_of_private_copies_must_be_safe() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_copy_base(dir.path()).expect("a private temporary directory");
    check_copy_base(Path::new("/tmp")).expect("/tmp is sticky");
    chmod(dir.path(), 0o777);
    let refusal = check_copy_base(dir.path()).expect_err("writable by all, not sticky");
    assert_eq!(refusal.check, Check::Permissions);
    chmod(dir.path(), 0o1777);
    check_copy_base(dir.path()).expect("sticky, like /tmp");
}

#[test]
fn a_secret_is_read_only_when_nobody_else_can_read_it() {
    let (_dir, home) = home();
    let key = home.root().join("device.key");
    km_durable::write_atomic(&key, b"secret", 0o600).expect("write");
    assert_eq!(
        read_secret(&key, 64, "device key").expect("0600 is private"),
        Some(b"secret".to_vec())
    );
    // Readable by the group or by others: refused, naming the file and the fix; a plain
    // read_file (which only cares who can write) takes the same file.
    for (mode, who) in [(0o640, "its group"), (0o604, "others")] {
        chmod(&key, mode);
        let refusal = read_secret(&key, 64, "device key").expect_err("not private");
        assert_eq!(refusal.check, Check::Permissions, "{mode:o}");
        assert!(refusal.reason.contains(who), "{mode:o}: {}", refusal.reason);
        assert!(
            refusal
                .reason
                .contains(&format!("chmod 600 {}", key.display())),
            "{}",
            refusal.reason
        );
        assert_eq!(
            check_entry(&key, "device key", Expect::Secret)
                .expect_err("not private")
                .check,
            Check::Permissions
        );
        read_file(&key, 64, "device key").expect("only writers matter to read_file");
    }
    // Writable by others is refused as for any file km trusts.
    chmod(&key, 0o660);
    assert_eq!(
        read_secret(&key, 64, "device key")
            .expect_err("group-writable")
            .check,
        Check::Permissions
    );
    chmod(&key, 0o400);
    read_secret(&key, 64, "device key").expect("read-only for you is private");
    // A link to a private file is not the file.
    std::fs::remove_file(&key).expect("rm");
    let elsewhere = home.root().join("elsewhere");
    km_durable::write_atomic(&elsewhere, b"secret", 0o600).expect("write");
    symlink(&elsewhere, &key).expect("link");
    assert_eq!(
        read_secret(&key, 64, "device key")
            .expect_err("a link")
            .check,
        Check::Symlink
    );
    std::fs::remove_file(&key).expect("rm");
    assert_eq!(read_secret(&key, 64, "device key").expect("missing"), None);
}

#[test]
fn a_secret_owned_by_root_or_another_user_is_refused() {
    let (_dir, home) = home();
    let key = home.root().join("device.key");
    km_durable::write_atomic(&key, b"secret", 0o600).expect("write");
    if chown_to_other(&key) {
        let refusal = read_secret(&key, 64, "device key").expect_err("another user's");
        assert_eq!(refusal.check, Check::Owner);
        assert!(refusal.reason.contains("chown"), "{}", refusal.reason);
    }
}
