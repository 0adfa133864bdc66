//! Append-only files of whole records, for journals.
//!
//! Each record goes to the kernel in one `write` on an `O_APPEND` file, so that a process killed
//! mid-way leaves at worst a torn *last* record, which the reader can recognise and cut off. A
//! record the kernel took only part of (disk full, file size limit) is cut off at once, so that
//! the next record never lands after half of one. Syncing (`fdatasync`) is the caller's choice:
//! [`AppendFile::append`] then [`AppendFile::sync`] once per batch, or
//! [`AppendFile::append_durable`] for a record that must be on disk before the caller goes on.
//!
//! The file tracks its own length, so cutting off a torn record assumes one writer at a time:
//! the journals hold [`AppendFile::try_lock`] (or a [`crate::Lock`]) for as long as they write.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An append-only file of records, open for reading and appending.
#[derive(Debug)]
pub struct AppendFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl AppendFile {
    /// Creates `path` (which must not exist) with exactly `mode`, and fsyncs its directory so
    /// that the file itself survives a crash.
    pub fn create_new(path: &Path, mode: u32) -> Result<AppendFile> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| Error::io("creating", path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting the mode of", path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::sync_dir(dir)?;
        }
        Ok(AppendFile {
            file,
            path: path.to_path_buf(),
            len: 0,
        })
    }

    /// Opens the existing file at `path` to append to it.
    pub fn open_existing(path: &Path) -> Result<AppendFile> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading the size of", path, e))?
            .len();
        Ok(AppendFile {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// Appends one whole record (the caller includes its terminator). On an error nothing of
    /// the record stays in the file.
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        let mut written = 0;
        let failure = loop {
            if written == record.len() {
                break None;
            }
            match (&self.file).write(&record[written..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            if written > 0 {
                // Cut off the part the kernel took, so the file ends on a whole record.
                self.file
                    .set_len(self.len)
                    .map_err(|e| Error::io("cutting off a partial record of", &self.path, e))?;
            }
            return Err(Error::io("appending to", &self.path, e));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Flushes the appended records to stable storage (`fdatasync`).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing", &self.path, e))
    }

    /// [`AppendFile::append`], then [`AppendFile::sync`].
    pub fn append_durable(&mut self, record: &[u8]) -> Result<()> {
        self.append(record)?;
        self.sync()
    }

    /// Cuts the file to `len` bytes (a torn last record found on opening, or everything once
    /// it is delivered). Not synced: call [`AppendFile::sync`].
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("truncating", &self.path, e))?;
        self.len = len;
        Ok(())
    }

    /// Takes the exclusive advisory lock on this file without waiting: `false` while another
    /// open file holds it. Released when this file is dropped (or the process exits).
    pub fn try_lock(&self) -> Result<bool> {
        crate::lock::try_flock(&self.file, &self.path)
    }

    /// The length in bytes: what was there on opening plus what was appended since.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The open file, to read from (`&File` implements `Read` and `Seek`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{in_child, CHILD};

    #[test]
    fn records_are_appended_and_the_file_reopens_at_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.journal");
        let mut f = AppendFile::create_new(&path, 0o600).expect("create");
        f.append(b"one\n").expect("append");
        f.append_durable(b"two\n").expect("append");
        assert_eq!(f.len(), 8);
        assert!(f.try_lock().expect("locks"));
        let err = AppendFile::create_new(&path, 0o600).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let mut other = AppendFile::open_existing(&path).expect("open");
        assert!(!other.try_lock().expect("tries"), "locked twice");
        drop(f);
        // `flock` belongs to the open file description, and a child that another test of this
        // binary forks at this moment holds a copy of every descriptor until it execs (the
        // descriptors are close-on-exec, not close-on-fork): the lock can outlive `drop` by that
        // long. Retry for a bounded while instead of taking the first refusal for a held lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut locked = other.try_lock().expect("tries");
        while !locked && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            locked = other.try_lock().expect("tries");
        }
        assert!(locked, "the lock went with the file");
        assert_eq!(other.len(), 8);
        other.append(b"three\n").expect("append");
        other.truncate(4).expect("truncate");
        other.append(b"four\n").expect("append");
        other.sync().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read"), b"one\nfour\n");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = AppendFile::open_existing(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// A record that does not fit under the file size limit fails with EFBIG and leaves nothing
    /// of itself: the next record follows the last whole one.
    #[test]
    fn a_record_written_partly_is_cut_off() {
        if std::env::var_os(CHILD).is_none() {
            return in_child(
                "append::tests::a_record_written_partly_is_cut_off",
                Some(8 * 1024),
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.journal");
        let mut f = AppendFile::create_new(&path, 0o600).expect("create");
        let record = vec![b'a'; 6 * 1024];
        f.append(&record).expect("fits");
        let err = f.append(&record).expect_err("exceeds the limit");
        assert_eq!(
            err.os_error().and_then(io::Error::raw_os_error),
            Some(rustix::io::Errno::FBIG.raw_os_error()),
            "{err}"
        );
        assert!(err.to_string().contains("events.journal"), "{err}");
        assert_eq!(f.len(), 6 * 1024);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 6 * 1024);
        f.append(b"small\n").expect("fits");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            [record.as_slice(), b"small\n"].concat()
        );
    }
}
