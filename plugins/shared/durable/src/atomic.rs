//! Replacing a file atomically: a temporary file beside the target, then a rename.
//!
//! The steps, and why each is there:
//! 1. The temporary is created in the target's own directory (a rename does not cross file
//!    systems) with `O_CREAT | O_EXCL` (never an existing file, never through a symbolic link)
//!    and the final mode, so that a secret is never readable by others, not even while it is
//!    being written. The mode is then set exactly with `fchmod`: the caller decides who may
//!    read the file, not the umask.
//! 2. The bytes are written and the file fsynced, so that the rename can only ever expose
//!    complete content.
//! 3. The temporary is renamed over the target (readers see the old file or the new one), or,
//!    when an existing file must not be replaced, hard-linked to the target name, which fails
//!    if the name exists, even against a racing writer.
//! 4. The directory is fsynced, so that the new name survives a crash.
//!
//! The temporary is removed on every failure. Its name is `.NAME.km-tmp-PID-N`: hidden, never
//! the target's name, unique among the writers of one process (a counter) and across processes
//! (the process id; `O_EXCL` and a retry cover what is left of a killed process with the same
//! id). An error after the rename (the directory fsync) means the new content is in place but
//! might not survive a crash.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// What marks a temporary file's name, between the target's name and `PID-N`.
const TEMP_MARK: &[u8] = b".km-tmp-";
/// How much of the target's name a temporary's name keeps, so that it stays within the usual
/// 255-byte limit of a file name.
const MAX_NAME_PREFIX: usize = 200;
/// How many names are tried before giving up (only left-overs of killed processes collide).
const ATTEMPTS: usize = 16;

/// The counter that makes temporary names unique within this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically, the new file having exactly `mode` (for example
/// [`crate::PRIVATE`]): after a crash `path` holds the old content or the new one. A symbolic
/// link at `path` is replaced, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let staged = stage(path, bytes, mode)?;
    let dir = staged.dir.clone();
    staged.commit()?;
    sync_dir(&dir)
}

/// Creates `path` with `bytes` and exactly `mode`, atomically, refusing to replace an existing
/// file: the error's [`Error::kind`] is then `AlreadyExists` and the existing file is untouched.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let staged = stage(path, bytes, mode)?;
    let dir = staged.dir.clone();
    staged.commit_new()?;
    sync_dir(&dir)
}

/// The first half of [`write_atomic`]: `bytes` written and fsynced into a temporary file beside
/// `target` with exactly `mode`. Nothing is visible under `target` until [`Staged::commit`];
/// dropping the [`Staged`] removes the temporary. For callers that commit several files in an
/// order of their own, then call [`sync_dir`] once.
pub fn stage(target: &Path, bytes: &[u8], mode: u32) -> Result<Staged> {
    let (dir, name) = split(target)?;
    let (tmp, mut file) = create_temp(&dir, name, mode)?;
    // From here on, dropping `staged` (on any error below) removes the temporary.
    let staged = Staged {
        tmp,
        target: target.to_path_buf(),
        dir,
        renamed: false,
    };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting the mode of", &staged.tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("writing", &staged.tmp, e))?;
    file.sync_all()
        .map_err(|e| Error::io("syncing", &staged.tmp, e))?;
    Ok(staged)
}

/// A complete, fsynced temporary file waiting to be put in place (see [`stage`]). Removed when
/// dropped uncommitted.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    renamed: bool,
}

impl Staged {
    /// Where the file will be.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary file.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary over the target. The directory is not fsynced: call [`sync_dir`]
    /// once the caller's last file is in place.
    pub fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.target)
            .map_err(|e| Error::io("renaming into", &self.target, e))?;
        self.renamed = true;
        Ok(())
    }

    /// Links the temporary to the target name, failing (kind `AlreadyExists`) when that name
    /// exists, then removes the temporary name. The directory is not fsynced.
    pub fn commit_new(self) -> Result<()> {
        // The temporary name is removed by `drop`, on success as on failure.
        fs::hard_link(&self.tmp, &self.target).map_err(|e| Error::io("creating", &self.target, e))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Fsyncs a directory, so that the names created, renamed or removed in it survive a crash. A
/// file system that does not support it (`EINVAL`) is not an error.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| Error::io("opening the directory", dir, e))?;
    match handle.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(()),
        Err(e) => Err(Error::io("syncing the directory", dir, e)),
    }
}

/// Whether a file name is one of this crate's temporaries (`.NAME.km-tmp-PID-N`), for a caller
/// that sweeps up what a killed writer left in a directory it alone writes (under its lock).
pub fn is_temporary(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    if !bytes.starts_with(b".") {
        return false;
    }
    let Some(at) = bytes.windows(TEMP_MARK.len()).rposition(|w| w == TEMP_MARK) else {
        return false;
    };
    let tail = &bytes[at + TEMP_MARK.len()..];
    let mut parts = tail.split(|&b| b == b'-');
    let is_number =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    is_number(parts.next()) && is_number(parts.next()) && parts.next().is_none()
}

/// The directory (`.` for a bare name) and the file name of `path`.
fn split(path: &Path) -> Result<(PathBuf, &OsStr)> {
    let name = path.file_name().ok_or_else(|| Error::NotAFile {
        path: path.to_path_buf(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

fn create_temp(dir: &Path, name: &OsStr, mode: u32) -> Result<(PathBuf, File)> {
    let prefix = &name.as_bytes()[..name.len().min(MAX_NAME_PREFIX)];
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut file_name = Vec::with_capacity(prefix.len() + 32);
        file_name.push(b'.');
        file_name.extend_from_slice(prefix);
        file_name.extend_from_slice(TEMP_MARK);
        file_name.extend_from_slice(format!("{pid}-{n}").as_bytes());
        let tmp = dir.join(OsStr::from_bytes(&file_name));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < ATTEMPTS => {}
            Err(e) => return Err(Error::io("creating", &tmp, e)),
        }
    }
}

#[cfg(test)]
mod tests;
