//! Policy files under `KM_HOME/policies/`, read and written for plugins (ABI 1.1's
//! `read_policy` and `write_policy`).
//!
//! A policy decides what a plugin lets through, so it is checked like every file that decides
//! trust, with the loader's own StrictModes checks: each directory from `policies/` down is opened
//! without following links and must be owned by the user or root and not writable by group or
//! others, and so must the file, which must be a regular file under a size cap. Writes are atomic
//! (`km_durable::write_atomic`, mode 0600).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rustix::fs::{Mode, OFlags};

use crate::home::KmHome;
use crate::loader;

/// Opens `dir/rel`'s parent directories one by one, checked; `None` when one does not exist.
fn open_parent(dir: &Path, rel: &Path) -> Result<Option<(OwnedFd, std::path::PathBuf)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut fd = loader::open_checked_dir(dir).map_err(|r| anyhow!("{r}"))?;
    let mut at = dir.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for segment in parent.iter() {
        at = at.join(segment);
        let next = match rustix::fs::openat(
            &fd,
            segment,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(next) => next,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(anyhow!("cannot open {}: {e}", at.display())),
        };
        drop(fd);
        fd = next;
        loader::open_checked_dir(&at).map_err(|r| anyhow!("{r}"))?;
    }
    Ok(Some((fd, at)))
}

/// The text of the policy file `path` (`dir` joined with a checked relative name); `None` when it
/// does not exist.
pub fn read(dir: &Path, path: &Path, cap: u64) -> Result<Option<String>> {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let Some((fd, at)) = open_parent(dir, rel)? else {
        return Ok(None);
    };
    let name = rel.file_name().unwrap_or(OsStr::new(""));
    match loader::read_checked_file(&fd, &at, name, cap, "policy file") {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| anyhow!("{} is not UTF-8 text", path.display())),
        Err(refusal) if refusal.check == "missing" => Ok(None),
        Err(refusal) => Err(anyhow!("{refusal}")),
    }
}

/// Replaces the policy file `path` with `text`, atomically, mode 0600, creating `dir` and the
/// file's own directory (0700) when needed.
pub fn write(dir: &Path, path: &Path, text: &str) -> Result<()> {
    let parent = path.parent().unwrap_or(dir);
    KmHome::ensure_private_dir(parent)?;
    // The directories must pass the same checks as for reading.
    let rel = path.strip_prefix(dir).unwrap_or(path);
    open_parent(dir, rel)?.with_context(|| format!("opening {}", parent.display()))?;
    km_durable::write_atomic(path, text.as_bytes(), km_durable::PRIVATE)
        .with_context(|| format!("writing {}", path.display()))
}
