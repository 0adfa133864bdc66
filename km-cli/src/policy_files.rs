//! Policy files under `KM_HOME/policies/`, read and written for plugins (ABI 1.1's
//! `read_policy` and `write_policy`).
//!
//! A policy decides what a plugin lets through, so it is checked like every file that decides
//! trust, with km's StrictModes ([`crate::strict`]): `policies/` itself must not be a link, each
//! directory from it down (`team/`) is opened without following links and must be owned by the
//! user or root and not writable by group or others, and so must the file, which must be a
//! regular file under a size cap, opened without blocking (a FIFO is refused, not waited on).
//! Writes are atomic (`km_durable::write_atomic`, mode 0600).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::home::KmHome;
use crate::strict::{self, Expect};
use crate::verifier::Check;

/// Opens `dir/rel`'s parent directories one by one, checked; `None` when one does not exist.
fn open_parent(dir: &Path, rel: &Path) -> Result<Option<(OwnedFd, std::path::PathBuf)>> {
    if !strict::check_entry(dir, "policy directory", Expect::Dir).map_err(|r| anyhow!("{r}"))? {
        return Ok(None);
    }
    let mut fd = strict::open_dir(dir, "policy directory").map_err(|r| anyhow!("{r}"))?;
    let mut at = dir.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for segment in parent.iter() {
        let Some(next) = strict::open_dir_at(&fd, &at, segment, "policy directory")
            .map_err(|r| anyhow!("{r}"))?
        else {
            return Ok(None);
        };
        at = at.join(segment);
        fd = next;
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
    match strict::read_at(&fd, &at, name, cap, "policy file") {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| anyhow!("{} is not UTF-8 text", path.display())),
        Err(refusal) if refusal.check == Check::Missing => Ok(None),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        write(
            &policies,
            &policies.join("team/guard.toml"),
            "mode = \"block\"\n",
        )
        .expect("write");
        write(&policies, &policies.join("guard.toml"), "mode = \"log\"\n").expect("write");
        (dir, policies)
    }

    #[test]
    fn policies_round_trip_and_missing_ones_are_none() {
        let (_dir, policies) = setup();
        let read_back = read(&policies, &policies.join("team/guard.toml"), 1024).expect("read");
        assert_eq!(read_back.as_deref(), Some("mode = \"block\"\n"));
        assert_eq!(
            read(&policies, &policies.join("nothing.toml"), 1024).expect("read"),
            None
        );
        assert_eq!(
            read(&policies, &policies.join("no-team/x.toml"), 1024).expect("read"),
            None
        );
    }

    #[test]
    fn a_policy_writable_by_others_or_a_link_is_refused() {
        for rel in ["", "team", "team/guard.toml", "guard.toml"] {
            let (_dir, policies) = setup();
            let path = policies.join(rel);
            let mode = if path.is_dir() { 0o777 } else { 0o666 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let file = if rel.starts_with("team") {
                policies.join("team/guard.toml")
            } else {
                policies.join("guard.toml")
            };
            let err = read(&policies, &file, 1024).expect_err(rel);
            let text = format!("{err:#}");
            assert!(text.contains("chmod go-w"), "{rel}: {text}");
        }
        // policies/ itself a link: whoever writes its target would decide the policy.
        let (dir, policies) = setup();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&policies, &elsewhere).expect("move");
        symlink(&elsewhere, &policies).expect("symlink");
        let err = read(&policies, &policies.join("guard.toml"), 1024).expect_err("link");
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        // team/ a link.
        let (dir, policies) = setup();
        let elsewhere = dir.path().join("team-elsewhere");
        std::fs::rename(policies.join("team"), &elsewhere).expect("move");
        symlink(&elsewhere, policies.join("team")).expect("symlink");
        let err = read(&policies, &policies.join("team/guard.toml"), 1024).expect_err("link");
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    }

    #[test]
    fn a_policy_owned_by_another_user_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: giving a policy file to another user needs root");
            return;
        }
        for rel in ["", "team", "team/guard.toml"] {
            let (_dir, policies) = setup();
            std::os::unix::fs::lchown(policies.join(rel), Some(65534), None).expect("chown");
            let err = read(&policies, &policies.join("team/guard.toml"), 1024).expect_err(rel);
            let text = format!("{err:#}");
            assert!(text.contains("owned by uid 65534"), "{rel}: {text}");
            assert!(text.contains("chown"), "{rel}: {text}");
        }
    }

    #[test]
    fn a_fifo_named_like_a_policy_is_refused_not_waited_on() {
        let (_dir, policies) = setup();
        let fifo = policies.join("fifo.toml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let err = read(&policies, &fifo, 1024).expect_err("a FIFO");
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }
}
