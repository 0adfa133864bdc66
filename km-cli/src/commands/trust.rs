//! `km trust add|list|remove|revoke`: the keys km trusts to sign plugins, and revocations.
//!
//! Every subcommand applies the loader's StrictModes check ([`strict::check_trust_files`]:
//! `KM_HOME` and its parents up to `/`, `trusted-keys/` and its files, `state/`) before it
//! reads or writes the store. Writing into a store that someone else can write (or swap) would
//! be worse than reading it: km would add a key or a revocation to a directory whose contents
//! another user decides, and report success. So a home the loader would refuse is refused
//! here with the same message, and nothing is written.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use km_signing::{KeyId, PublicKey, TrustStore};
use serde_json::json;

use super::Globals;
use crate::cli::TrustCommand;
use crate::exit;
use crate::home::KmHome;
use crate::loader;
use crate::strict;

/// The largest public key file `km trust add` reads: a PEM public key is a few hundred bytes.
const KEY_FILE_CAP: u64 = 64 * 1024;

/// Runs a `km trust` subcommand.
pub(super) fn run(globals: &Globals, cmd: TrustCommand) -> Result<ExitCode> {
    match cmd {
        TrustCommand::Add { key, label, scope } => {
            let pem = read_key_file(&key)?;
            let public = PublicKey::from_pem(&pem)
                .with_context(|| format!("{} is not a usable public key", key.display()))?;
            let scope = if scope.is_empty() { None } else { Some(scope) };
            let mut store = writable_store(&globals.home)?;
            let id = store.add(public, label, scope)?;
            if !globals.quiet {
                eprintln!("Trusted key {id}");
            }
        }
        TrustCommand::List { json } => {
            let store = loader::trust_store(&globals.home)?;
            if json {
                let keys: Vec<_> = store
                    .keys()
                    .iter()
                    .map(|k| {
                        json!({
                            "key_id": k.key_id.to_string(),
                            "label": k.label,
                            "scope": k.scope,
                            "builtin": k.builtin,
                            "algorithm": k.public_key.algorithm().to_string(),
                        })
                    })
                    .collect();
                let revoked: Vec<_> = store
                    .revocations()
                    .iter()
                    .map(
                        |r| json!({"what": r.what, "reason": r.reason, "revoked_at": r.revoked_at}),
                    )
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"keys": keys, "revoked": revoked}))?
                );
            } else {
                if store.keys().is_empty() {
                    println!("No trusted keys. Add one with `km trust add KEY.pub`.");
                }
                for k in store.keys() {
                    let scope = k
                        .scope
                        .as_ref()
                        .map(|s| s.join(","))
                        .unwrap_or_else(|| "any plugin".to_owned());
                    let origin = if k.builtin { "built-in" } else { "added" };
                    println!(
                        "{}  {}  [{}]  {} ({})",
                        k.key_id,
                        k.public_key.algorithm(),
                        scope,
                        k.label,
                        origin
                    );
                }
                for r in store.revocations() {
                    println!(
                        "revoked {}  {}{}",
                        r.what,
                        r.revoked_at,
                        r.reason
                            .as_ref()
                            .map(|x| format!("  ({x})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        TrustCommand::Remove { key_id } => {
            let id: KeyId = key_id
                .parse()
                .map_err(|e| anyhow::anyhow!("{key_id:?} is not a key id: {e}"))?;
            let mut store = writable_store(&globals.home)?;
            if store.find(&id).is_none() {
                bail!("no added key has id {id} (see `km trust list`)");
            }
            store.remove(&id)?;
            if !globals.quiet {
                eprintln!("Removed key {id}");
            }
        }
        TrustCommand::Revoke { what, reason } => {
            let mut store = writable_store(&globals.home)?;
            store.revoke(&what, reason)?;
            if !globals.quiet {
                eprintln!("Revoked {what}");
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// The user's trust store (without the built-in keys, which are not written), once `KM_HOME`
/// and everything in it that decides trust pass the loader's StrictModes check.
fn writable_store(home: &KmHome) -> Result<TrustStore> {
    strict::check_trust_files(home)?;
    Ok(TrustStore::load(&home.trusted_keys_dir())?)
}

/// Reads the public key file the user named: without blocking (a FIFO is refused, not waited
/// on) and capped (a link to `/dev/zero` is refused, not read for ever).
fn read_key_file(path: &Path) -> Result<String> {
    let reading = || format!("reading the public key {}", path.display());
    let file = File::options()
        .read(true)
        .custom_flags(nonblocking_flags())
        .open(path)
        .with_context(reading)?;
    let meta = file.metadata().with_context(reading)?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; give the path of a public key (.pub) file",
            path.display()
        );
    }
    if meta.len() > KEY_FILE_CAP {
        bail!(
            "{} is {} bytes, too large for a public key (at most {KEY_FILE_CAP} bytes)",
            path.display(),
            meta.len()
        );
    }
    let mut bytes = Vec::new();
    file.take(KEY_FILE_CAP + 1)
        .read_to_end(&mut bytes)
        .with_context(reading)?;
    if bytes.len() as u64 > KEY_FILE_CAP {
        bail!(
            "{} grew past {KEY_FILE_CAP} bytes while being read",
            path.display()
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// `O_NONBLOCK | O_NOCTTY`: opening a FIFO does not wait for a writer, and a terminal never
/// becomes km's controlling one.
fn nonblocking_flags() -> i32 {
    (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32
}
