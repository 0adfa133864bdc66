//! StrictModes for everything that decides trust, as OpenSSH's `StrictModes` does for
//! `~/.ssh`: whoever can write one of these files (or swap a directory on the way to it)
//! decides which plugins run, with which keys, under which policy.
//!
//! The rules, applied by every path that reads such a file:
//!
//! - `KM_HOME` itself and everything in it that decides trust (`trusted-keys/` and its files,
//!   `revocations.json`, `state/` and what km keeps there, `config.toml`, `policies/` and
//!   `policies/team/`, the plugin directory and its libraries) is owned by you or root and not
//!   writable by group or others, and is not a symbolic link: a link inside `KM_HOME` would let
//!   whoever can write its target decide.
//! - Every directory on the way from `/` to `KM_HOME` is owned by you or root and not writable
//!   by group or others, except that a world-writable directory with the sticky bit (`/tmp`) is
//!   accepted, as OpenSSH accepts it: there nobody can rename or remove what you own. A
//!   symbolic link on the way (`/var/run`, a home on another disk) is accepted when it is owned
//!   by you or root; the directories it leads to are checked like the rest.
//! - A file that holds a secret (the device key, the local signing key) is besides yours alone:
//!   owned by you and neither readable nor writable by group or others ([`Expect::Secret`],
//!   [`read_secret`]).
//! - Files are opened without following links and without blocking (`O_NOFOLLOW | O_NONBLOCK`),
//!   then `fstat`ed: a FIFO or a device where a file is expected is refused, not read, and
//!   reads are capped, so that a report never hangs or balloons.
//!
//! Each refusal names the path and the command that fixes it (`chmod go-w PATH`,
//! `chown USER PATH`). Checking paths first and opening them by name afterwards is safe here
//! because of the rule itself: once every directory on the way is writable only by you or
//! root, nobody else can swap an entry between the check and the open.
//!
//! What is NOT defended against: your own account (it can write all of this anyway), root, and a
//! link reached only through the target of another link on the way to `KM_HOME` (the
//! directories it leads to are checked, the intermediate link's owner is not).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use km_signing::Check;
use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::home::KmHome;
use crate::verifier::Refusal;

/// Whether a directory may be writable by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writable {
    /// Never (everything that decides trust, and `KM_HOME` itself).
    Never,
    /// When it has the sticky bit (directories on the way to `KM_HOME`, such as `/tmp`).
    IfSticky,
}

/// What is expected at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A regular file that holds a secret (a private key): as [`Expect::File`], and besides
    /// owned by you (not root: km must be able to read it) and neither readable nor writable
    /// by group or others (mode 0600 or stricter).
    Secret,
}

/// The effective user id km runs as.
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The user name for a `chown` hint (the uid when it has none).
fn my_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| me().to_string())
}

/// Owned by you or root, and (per `writable`) not writable by group or others.
fn check_owner_and_mode(
    path: &Path,
    uid: u32,
    mode: u32,
    what: &str,
    writable: Writable,
) -> Result<(), Refusal> {
    let me = me();
    if uid != me && uid != 0 {
        return Err(Refusal::new(
            path,
            Check::Owner,
            format!(
                "the {what} is owned by uid {uid}, not by you (uid {me}) or root; \
                 run `chown {} {}` as root, or remove it",
                my_name(),
                path.display()
            ),
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(writable == Writable::IfSticky && sticky) {
        return Err(Refusal::new(
            path,
            Check::Permissions,
            format!(
                "the {what} is writable by {} (mode {:o}); run `chmod go-w {}`",
                if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

fn io(path: &Path, doing: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::new(path, Check::Io, format!("cannot {doing}: {e}"))
}

/// `KM_HOME` and every directory on the way to it from `/` (see the module docs). A `KM_HOME`
/// that does not exist yet is fine (km creates it with mode 0700): its nearest existing parent
/// is checked as a directory on the way.
pub fn check_home(home: &KmHome) -> Result<(), Refusal> {
    let given = std::path::absolute(home.root())
        .map_err(|e| io(home.root(), "resolve the path of KM_HOME", e))?;
    let mut existing = given.clone();
    loop {
        match rustix::fs::lstat(&existing) {
            Ok(_) => break,
            Err(rustix::io::Errno::NOENT) if existing.pop() => continue,
            Err(e) => return Err(io(&existing, "look at KM_HOME", e)),
        }
    }
    let mut checked = HashSet::new();
    // Every entry looked up on the way, as written: the directory holding it must be safe
    // (else the entry can be swapped), and a link must be owned by you or root.
    let mut at = PathBuf::new();
    for component in existing.components() {
        at.push(component);
        if let Some(parent) = at.parent() {
            check_real_dirs(parent, &mut checked, None, ON_THE_WAY)?;
        }
        let stat = rustix::fs::lstat(&at).map_err(|e| io(&at, "look at it", e))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            check_owner_and_mode(&at, stat.st_uid, 0, "symbolic link", Writable::Never)?;
        }
    }
    // And where it leads: KM_HOME itself is never writable by others, sticky or not.
    let strict_last = (existing == given).then_some(home.root());
    check_real_dirs(&existing, &mut checked, strict_last, ON_THE_WAY)
}

const ON_THE_WAY: &str = "directory on the way to KM_HOME";

/// The base directory of the loader's private copies (see `loader::private_copy`) and every
/// directory on the way to it: owned by you or root, writable by others only when sticky.
pub fn check_copy_base(base: &Path) -> Result<(), Refusal> {
    check_real_dirs(
        base,
        &mut HashSet::new(),
        None,
        "directory for the private copies of plugins (XDG_RUNTIME_DIR or TMPDIR)",
    )
}

/// Checks the directories of `path` once resolved (each from `/` down); `last` names the final
/// one when it is `KM_HOME` itself (checked without the sticky exception).
fn check_real_dirs(
    path: &Path,
    checked: &mut HashSet<PathBuf>,
    last: Option<&Path>,
    on_the_way: &str,
) -> Result<(), Refusal> {
    let real = std::fs::canonicalize(path).map_err(|e| io(path, "resolve it", e))?;
    let mut at = PathBuf::new();
    let count = real.components().count();
    for (i, component) in real.components().enumerate() {
        at.push(component);
        let is_home = i + 1 == count && last.is_some();
        if !is_home && !checked.insert(at.clone()) {
            continue;
        }
        let stat = rustix::fs::stat(&at).map_err(|e| io(&at, "look at it", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(Refusal::new(
                &at,
                Check::Format,
                "not a directory".to_owned(),
            ));
        }
        let (what, writable) = if is_home {
            ("km home directory (KM_HOME)", Writable::Never)
        } else {
            (on_the_way, Writable::IfSticky)
        };
        // Name the path as the user wrote it when it is KM_HOME itself.
        let shown = match last {
            Some(home) if is_home => home,
            _ => &at,
        };
        check_owner_and_mode(shown, stat.st_uid, stat.st_mode, what, writable)?;
    }
    Ok(())
}

/// Checks one entry inside `KM_HOME` without following links: it must be what `expect` says,
/// owned by you or root and not writable by group or others. `Ok(false)` when it does not exist.
pub fn check_entry(path: &Path, what: &str, expect: Expect) -> Result<bool, Refusal> {
    let stat = match rustix::fs::lstat(path) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(io(path, &format!("look at the {what}"), e)),
    };
    check_stat(path, &stat, what, expect)?;
    Ok(true)
}

fn check_stat(path: &Path, stat: &Stat, what: &str, expect: Expect) -> Result<(), Refusal> {
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind == FileType::Symlink {
        return Err(Refusal::new(
            path,
            Check::Symlink,
            format!(
                "the {what} is a symbolic link; km reads only the file itself \
                 (replace the link with what it points to)"
            ),
        ));
    }
    let wanted = match expect {
        Expect::Dir => FileType::Directory,
        Expect::File | Expect::Secret => FileType::RegularFile,
    };
    if kind != wanted {
        return Err(Refusal::new(
            path,
            Check::Format,
            format!(
                "the {what} is not a {}",
                match expect {
                    Expect::Dir => "directory",
                    Expect::File | Expect::Secret => "regular file",
                }
            ),
        ));
    }
    check_owner_and_mode(path, stat.st_uid, stat.st_mode, what, Writable::Never)?;
    if expect == Expect::Secret {
        check_secret(path, stat.st_uid, stat.st_mode, what)?;
    }
    Ok(())
}

/// A secret's file is yours alone: owned by you, no access for group or others.
fn check_secret(path: &Path, uid: u32, mode: u32, what: &str) -> Result<(), Refusal> {
    let me = me();
    if uid != me {
        return Err(Refusal::new(
            path,
            Check::Owner,
            format!(
                "the {what} is a secret owned by uid {uid}, not by you (uid {me}); \
                 run `chown {} {}`, or remove it",
                my_name(),
                path.display()
            ),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(Refusal::new(
            path,
            Check::Permissions,
            format!(
                "the {what} is a secret but is accessible by {} (mode {:o}); run `chmod 600 {}`",
                if mode & 0o007 != 0 {
                    "others"
                } else {
                    "its group"
                },
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Checks a directory inside `KM_HOME` and the files in it whose names end with one of
/// `suffixes` (what km reads from it). Missing is fine.
pub fn check_dir_and_files(dir: &Path, what: &str, suffixes: &[&str]) -> Result<(), Refusal> {
    if !check_entry(dir, what, Expect::Dir)? {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, "list the directory", e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, "list the directory", e))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if suffixes.iter().any(|s| text.ends_with(s)) {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        check_entry(
            &dir.join(&name),
            &format!("file in the {what}"),
            Expect::File,
        )?;
    }
    Ok(())
}

/// Everything the verifier reads besides the plugins: `KM_HOME` and its parents, the trust
/// store (`trusted-keys/`, its keys and `revocations.json`) and `state/` with the rollback record.
pub fn check_trust_files(home: &KmHome) -> Result<(), Refusal> {
    check_home(home)?;
    check_dir_and_files(
        &home.trusted_keys_dir(),
        "trust store directory",
        &[".pub", ".json"],
    )?;
    check_entry(&home.state_dir(), "state directory", Expect::Dir)?;
    check_entry(
        &home.seen_versions_file(),
        "rollback record (seen versions)",
        Expect::File,
    )?;
    Ok(())
}

/// Opens a directory (following links: this is a directory the user named, such as the plugin
/// directory) and applies the StrictModes test to what it opened.
pub fn open_dir(dir: &Path, what: &str) -> Result<OwnedFd, Refusal> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => Refusal::new(dir, Check::Missing, format!("no such {what}")),
        e => io(dir, &format!("open the {what}"), e),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io(dir, &format!("stat the {what}"), e))?;
    check_owner_and_mode(dir, stat.st_uid, stat.st_mode, what, Writable::Never)?;
    Ok(fd)
}

/// Opens the directory `name` inside the checked directory `parent` without following links,
/// and checks it; `Ok(None)` when it does not exist.
pub fn open_dir_at(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &OsStr,
    what: &str,
) -> Result<Option<OwnedFd>, Refusal> {
    let path = parent_path.join(name);
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
            // Tell a link from a file that is not a directory.
            let stat = rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io(&path, &format!("look at the {what}"), e))?;
            return Err(match check_stat(&path, &stat, what, Expect::Dir) {
                Err(refusal) => refusal,
                Ok(()) => io(&path, &format!("open the {what}"), "not a directory"),
            });
        }
        Err(e) => return Err(io(&path, &format!("open the {what}"), e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io(&path, &format!("stat the {what}"), e))?;
    check_owner_and_mode(&path, stat.st_uid, stat.st_mode, what, Writable::Never)?;
    Ok(Some(fd))
}

/// Opens `name` in the checked directory `dir_fd` without following links and without
/// blocking, checks it (a regular file, owned by you or root, not writable by group or others,
/// at most `cap` bytes) and reads it whole. A missing file is [`Check::Missing`].
pub fn read_at(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &OsStr,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    read_checked_at(dir_fd, dir, name, cap, what, Expect::File)
}

/// [`read_at`] for a file that must be what `expect` says ([`Expect::File`] or
/// [`Expect::Secret`]), checked on the open descriptor.
fn read_checked_at(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &OsStr,
    cap: u64,
    what: &str,
    expect: Expect,
) -> Result<Vec<u8>, Refusal> {
    let path = dir.join(name);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever; the
    // fstat below then refuses it. O_NOCTTY: a terminal never becomes km's controlling one.
    let fd = match rustix::fs::openat(
        dir_fd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(Refusal::new(
                &path,
                Check::Symlink,
                format!("the {what} is a symbolic link; km reads only regular files"),
            ))
        }
        Err(rustix::io::Errno::NOENT) => {
            return Err(Refusal::new(
                &path,
                Check::Missing,
                format!("no such {what}: {}", path.display()),
            ))
        }
        Err(e) => return Err(io(&path, &format!("open the {what}"), e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io(&path, &format!("stat the {what}"), e))?;
    check_stat(&path, &stat, what, expect)?;
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > cap {
        return Err(Refusal::new(
            &path,
            Check::Size,
            format!("the {what} is {size} bytes, over the cap of {cap} bytes"),
        ));
    }
    // Read at most cap + 1 bytes: the file may grow between fstat and read.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    File::from(fd)
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io(&path, &format!("read the {what}"), e))?;
    if bytes.len() as u64 > cap {
        return Err(Refusal::new(
            &path,
            Check::Size,
            format!("the {what} grew past the cap of {cap} bytes while being read"),
        ));
    }
    Ok(bytes)
}

/// Reads the file `path` inside `KM_HOME` (its directory is opened and checked first), capped
/// and checked as [`read_at`] does; `Ok(None)` when the file or its directory does not exist.
pub fn read_file(path: &Path, cap: u64, what: &str) -> Result<Option<Vec<u8>>, Refusal> {
    read_file_expecting(path, cap, what, Expect::File)
}

/// [`read_file`] for a secret (a private key): the file is checked as [`Expect::Secret`] on
/// the descriptor it is read from, so what is read is what was checked.
pub fn read_secret(path: &Path, cap: u64, what: &str) -> Result<Option<Vec<u8>>, Refusal> {
    read_file_expecting(path, cap, what, Expect::Secret)
}

fn read_file_expecting(
    path: &Path,
    cap: u64,
    what: &str,
    expect: Expect,
) -> Result<Option<Vec<u8>>, Refusal> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io(path, &format!("read the {what}"), "not a file path"));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !check_entry(dir, &format!("directory of the {what}"), Expect::Dir)? {
        return Ok(None);
    }
    let dir_fd = open_dir(dir, &format!("directory of the {what}"))?;
    match read_checked_at(&dir_fd, dir, name, cap, what, expect) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(refusal) if refusal.check == Check::Missing => Ok(None),
        Err(refusal) => Err(refusal),
    }
}

#[cfg(test)]
mod tests;
