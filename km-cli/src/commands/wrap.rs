//! `km wrap` and `km unwrap`: put `km monitor --` in front of the stdio servers of the MCP
//! clients on this machine, and take it away again (see [`crate::clients`]).
//!
//! For each file: it is read (and refused, untouched, if km cannot parse it by its client's
//! rules or could not write it back exactly), edited in memory, shown as a diff with `--dry-run`,
//! else a backup is written first (`KM_HOME/state/wrap/`), then the file atomically with its own
//! mode. A file that is a symbolic link (dotfile managers) is edited where it points. Exit codes:
//! 0 when every file was handled, 2 when one was refused or could not be written (the others are
//! still handled).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::Globals;
use crate::cli::WrapArgs;
use crate::clients::edit::{self, Edited, Outcome, Wrapper};
use crate::clients::{self, record, Client, ConfigFile};
use crate::exit;

/// Which of the two commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Wrap,
    Unwrap,
}

/// The largest configuration file km edits.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Runs `km wrap` or `km unwrap`.
pub(crate) fn run(globals: &Globals, args: WrapArgs, direction: Direction) -> Result<ExitCode> {
    let forced = match &args.client {
        None => None,
        Some(id) => Some(Client::from_id(id).with_context(|| {
            let ids: Vec<&str> = Client::ALL.iter().map(|c| c.id()).collect();
            format!("--client {id:?} is not one of {}", ids.join(", "))
        })?),
    };
    let files: Vec<ConfigFile> = if args.configs.is_empty() {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("HOME is not set: give the files with --config")?;
        clients::known(Path::new(&home))
    } else {
        args.configs
            .iter()
            .map(|path| ConfigFile {
                client: forced.unwrap_or_else(|| clients::guess(path)),
                path: path.clone(),
            })
            .collect()
    };
    if files.is_empty() {
        println!("No MCP client configuration found (give one with --config FILE).");
        return Ok(ExitCode::SUCCESS);
    }
    let km = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding this km's absolute path")?;
    let default_home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".km"));
    let home_arg = (default_home.as_deref() != Some(globals.home.root()))
        .then(|| globals.home.root().to_path_buf());
    let wrapper = Wrapper {
        km: &km,
        home: home_arg.as_deref(),
    };
    let mut failed = false;
    for file in &files {
        if let Err(e) = one(globals, file, direction, &wrapper, args.dry_run) {
            eprintln!("km: {}: {e:#}; left untouched", file.path.display());
            failed = true;
        }
    }
    Ok(ExitCode::from(if failed { exit::ERROR } else { exit::OK }))
}

fn read(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.len() > MAX_CONFIG_BYTES {
        bail!("larger than {MAX_CONFIG_BYTES} bytes");
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).context("not UTF-8 text")
}

fn one(
    globals: &Globals,
    file: &ConfigFile,
    direction: Direction,
    wrapper: &Wrapper<'_>,
    dry_run: bool,
) -> Result<()> {
    // A link is followed: the file it points to is the one to edit (renaming over the link would
    // replace it with a copy).
    let path = file
        .path
        .canonicalize()
        .with_context(|| format!("reading {}", file.path.display()))?;
    let text = read(&path)?;
    let kept = record::load(&globals.home, &path)?;
    let edited = match direction {
        Direction::Wrap => edit::wrap(&text, file.client, wrapper),
        Direction::Unwrap => {
            edit::unwrap(&text, file.client, kept.as_ref().map(|(_, b)| b.as_str()))
        }
    }
    .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    println!("{} ({}):", file.path.display(), file.client.name());
    report(&edited);
    // Unwrapping a file nobody edited since km wrapped it: the backup, byte for byte.
    let restore = match (&kept, direction) {
        (Some((record, backup)), Direction::Unwrap)
            if record.wrapped_sha256 == km_durable::digest::sha256_hex(text.as_bytes()) =>
        {
            Some(backup.clone())
        }
        _ => None,
    };
    let new_text = restore.clone().unwrap_or_else(|| edited.after.clone());
    if new_text == text {
        println!("  nothing to change");
        if direction == Direction::Unwrap && kept.is_some() && !dry_run {
            record::forget(&globals.home, &path)?;
        }
        return Ok(());
    }
    if dry_run {
        print!("{}", diff(&file.path, &text, &new_text));
        return Ok(());
    }
    let mode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .with_context(|| format!("reading {}", path.display()))?;
    match direction {
        Direction::Wrap => {
            // The backup first: whatever happens next, the file as it was can be had back. A
            // file wrapped before and not edited since keeps its first backup.
            let unchanged_since = kept.as_ref().is_some_and(|(record, _)| {
                record.wrapped_sha256 == km_durable::digest::sha256_hex(text.as_bytes())
            });
            if !unchanged_since {
                let backup = record::save_backup(&globals.home, &path, &text)?;
                println!("  backup: {}", backup.display());
            }
            km_durable::write_atomic(&path, new_text.as_bytes(), mode)
                .with_context(|| format!("writing {}", path.display()))?;
            record::save(&globals.home, &path, &new_text)?;
        }
        Direction::Unwrap => {
            km_durable::write_atomic(&path, new_text.as_bytes(), mode)
                .with_context(|| format!("writing {}", path.display()))?;
            record::forget(&globals.home, &path)?;
            if restore.is_some() {
                println!("  restored exactly as it was before km wrap");
            }
        }
    }
    Ok(())
}

fn report(edited: &Edited) {
    for server in &edited.servers {
        let what = match &server.outcome {
            Outcome::Wrapped => "wrapped: now runs through km monitor".to_owned(),
            Outcome::AlreadyWrapped => "already runs through km monitor".to_owned(),
            Outcome::Unwrapped => "unwrapped".to_owned(),
            Outcome::NotWrapped => "does not run through km".to_owned(),
            Outcome::Remote => "remote (HTTP/SSE) server: not wrappable, left as it is".to_owned(),
            Outcome::Skipped(why) => format!("left alone: {why}"),
        };
        println!("  {} {}: {what}", server.table, server.name);
    }
}

/// A unified diff of the change.
fn diff(path: &Path, before: &str, after: &str) -> String {
    let name = path.display().to_string();
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&name, &name)
        .to_string()
}
