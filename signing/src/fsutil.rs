//! File writes and capped reads of the signing library.
//!
//! Every file this crate writes (signature files, trust store entries, key files, the rollback
//! record) is written by `km_durable`, the workspace's one atomic write: a fresh temporary file
//! in the same directory with exactly its final mode (never briefly readable by others),
//! fsynced, then renamed over the target (or hard-linked when the target must not be replaced),
//! and the directory fsynced. A crash leaves either the old or the new file, never a torn one.
//! This module only maps its errors to [`Error::Io`].

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::Error;

/// Whether [`write_atomic`] may replace an existing file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    Yes,
    No,
}

/// Writes `bytes` to `path` atomically with exactly the permission bits `mode`.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    replace: Replace,
) -> Result<(), Error> {
    match replace {
        Replace::Yes => km_durable::write_atomic(path, bytes, mode),
        Replace::No => km_durable::write_new(path, bytes, mode),
    }
    .map_err(Error::from)
}

/// Reads at most `cap + 1` bytes of `path` (so that the caller can tell "larger than `cap`"
/// apart without reading a huge file); `Ok(None)` when it does not exist.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(bytes))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::io(
            dir,
            std::io::Error::other("exists and is not a directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e)),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Refuses `path` when group or others may write to it (as ssh's StrictModes does): whoever can
/// write the trust store decides which plugins run.
pub(crate) fn check_not_writable_by_others(path: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_or_refuse_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600, Replace::No).expect("first write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let err = write_atomic(&path, b"two", 0o600, Replace::No).expect_err("must not replace");
        assert!(matches!(err, Error::Io { .. }));
        assert_eq!(fs::read(&path).expect("read"), b"one");
        write_atomic(&path, b"three", 0o644, Replace::Yes).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"three");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("f")],
            "temporary files are cleaned up"
        );
    }

    #[test]
    fn capped_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        assert!(read_capped(&path, 4).expect("missing is ok").is_none());
        fs::write(&path, b"12345").expect("write");
        assert_eq!(
            read_capped(&path, 3).expect("reads"),
            Some(b"1234".to_vec())
        );
        assert_eq!(
            read_capped(&path, 5).expect("fits"),
            Some(b"12345".to_vec())
        );
    }
}
