//! Tests of the atomic writes, failures included: a parent that is a regular file, a target
//! that is a directory, a write cut short by the file size limit (`EFBIG`, which stops root as
//! well), and a staged file dropped uncommitted.

use super::*;
use crate::testing::{in_child, CHILD};
use std::ffi::OsString;
use std::io::ErrorKind;

fn names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("meta").permissions().mode() & 0o7777
}

#[test]
fn replaces_with_the_exact_mode_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    write_atomic(&path, b"one", 0o600).expect("creates");
    assert_eq!(fs::read(&path).expect("read"), b"one");
    assert_eq!(mode(&path), 0o600);
    // 0666 is wider than any usual umask lets through: the mode is set, not filtered.
    write_atomic(&path, b"two", 0o666).expect("replaces");
    assert_eq!(fs::read(&path).expect("read"), b"two");
    assert_eq!(mode(&path), 0o666);
    assert_eq!(names(dir.path()), ["config.toml"]);
}

#[test]
fn the_mode_does_not_depend_on_the_umask() {
    if std::env::var_os(CHILD).is_none() {
        // The umask is per process: change it only in a child of its own.
        return in_child("atomic::tests::the_mode_does_not_depend_on_the_umask", None);
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key.pub");
    write_atomic(&path, b"public", 0o644).expect("creates");
    assert_eq!(mode(&path), 0o644);
}

#[test]
fn a_bare_file_name_is_written_in_the_current_directory_and_no_name_is_refused() {
    let err = write_atomic(Path::new("/"), b"x", 0o600).expect_err("no file name");
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
    let err = write_atomic(Path::new("dir/.."), b"x", 0o600).expect_err("no file name");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(split(Path::new("f")).expect("a name").0, Path::new("."));
}

#[test]
fn write_new_refuses_an_existing_file_and_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vendor.key");
    write_new(&path, b"first", 0o600).expect("creates");
    let err = write_new(&path, b"second", 0o600).expect_err("must not replace");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(err.path(), path);
    assert!(err.to_string().contains("vendor.key"), "{err}");
    assert_eq!(fs::read(&path).expect("read"), b"first");
    assert_eq!(names(dir.path()), ["vendor.key"]);
}

#[test]
fn a_parent_that_is_a_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain");
    fs::write(&file, b"x").expect("write");
    let err = write_atomic(&file.join("f"), b"x", 0o600).expect_err("not a directory");
    match &err {
        Error::Io {
            action,
            path,
            source,
        } => {
            assert_eq!(*action, "creating");
            assert!(path.starts_with(&file), "{}", path.display());
            assert_eq!(
                source.raw_os_error(),
                Some(rustix::io::Errno::NOTDIR.raw_os_error())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("plain/.f.km-tmp-"), "{err}");
    assert_eq!(fs::read(&file).expect("read"), b"x");
}

#[test]
fn a_failed_rename_removes_the_temporary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("occupied");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("inside"), b"kept").expect("write");
    let err = write_atomic(&target, b"x", 0o600).expect_err("a file cannot replace a directory");
    assert!(
        matches!(&err, Error::Io { action: "renaming into", path, .. } if *path == target),
        "{err}"
    );
    assert_eq!(names(dir.path()), ["occupied"]);
    assert_eq!(fs::read(target.join("inside")).expect("read"), b"kept");
}

/// The write of the temporary stops partway with EFBIG: the old file is untouched and the
/// temporary is gone.
#[test]
fn a_write_that_fails_midway_changes_nothing() {
    if std::env::var_os(CHILD).is_none() {
        return in_child(
            "atomic::tests::a_write_that_fails_midway_changes_nothing",
            Some(16 * 1024),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("libplugin.so");
    write_atomic(&path, b"old", 0o644).expect("small enough");
    let big = vec![7u8; 64 * 1024];
    let err = write_atomic(&path, &big, 0o644).expect_err("past the limit");
    match &err {
        Error::Io { action, source, .. } => {
            assert_eq!(*action, "writing");
            assert_eq!(
                source.raw_os_error(),
                Some(rustix::io::Errno::FBIG.raw_os_error())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&path).expect("read"), b"old");
    assert_eq!(names(dir.path()), ["libplugin.so"]);
    let err = stage(&path, &big, 0o644).expect_err("past the limit");
    assert_eq!(
        err.os_error().and_then(std::io::Error::raw_os_error),
        Some(rustix::io::Errno::FBIG.raw_os_error())
    );
    assert_eq!(names(dir.path()), ["libplugin.so"]);
}

#[test]
fn staged_files_appear_only_when_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = dir.path().join("libx.so");
    let sig = dir.path().join("libx.so.kmsig");
    fs::write(&lib, b"old library").expect("write");
    let lib_staged = stage(&lib, b"new library", 0o644).expect("stages");
    let sig_staged = stage(&sig, b"new signature", 0o644).expect("stages");
    assert_eq!(lib_staged.target(), lib);
    assert!(is_temporary(
        lib_staged.temp_path().file_name().expect("a name")
    ));
    assert_eq!(fs::read(&lib).expect("read"), b"old library");
    assert!(!sig.exists());
    sig_staged.commit().expect("commits");
    drop(lib_staged); // e.g. the caller gave up: the temporary goes
    sync_dir(dir.path()).expect("syncs");
    assert_eq!(names(dir.path()), ["libx.so", "libx.so.kmsig"]);
    assert_eq!(fs::read(&lib).expect("read"), b"old library");
    assert_eq!(fs::read(&sig).expect("read"), b"new signature");
    stage(&sig, b"x", 0o644)
        .expect("stages")
        .commit_new()
        .expect_err("exists");
    assert_eq!(names(dir.path()), ["libx.so", "libx.so.kmsig"]);
}

#[test]
fn temporaries_are_recognised_by_name() {
    for name in [".a.km-tmp-1-0", ".libx.so.km-tmp-4242-17", "..km-tmp-1-2"] {
        assert!(is_temporary(OsStr::new(name)), "{name}");
    }
    for name in [
        "a.km-tmp-1-0",
        ".a.km-tmp-1",
        ".a.km-tmp-1-0-3",
        ".a.km-tmp-x-0",
        ".a.km-tmp--0",
        ".a.tmp",
        ".km-install-x",
        "libx.so",
    ] {
        assert!(!is_temporary(OsStr::new(name)), "{name}");
    }
    // A long name is shortened in its temporary, which stays within 255 bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "n".repeat(250);
    write_atomic(&dir.path().join(&long), b"x", 0o600).expect("writes");
    assert_eq!(names(dir.path()), [OsString::from(long)]);
}
