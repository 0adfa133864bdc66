//! `km trust add|list|remove|revoke`: the keys km trusts to sign plugins, and revocations.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use km_signing::{KeyId, PublicKey, TrustStore};
use serde_json::json;

use super::Globals;
use crate::cli::TrustCommand;
use crate::exit;
use crate::loader;

/// Runs a `km trust` subcommand.
pub(super) fn run(globals: &Globals, cmd: TrustCommand) -> Result<ExitCode> {
    let dir = globals.home.trusted_keys_dir();
    match cmd {
        TrustCommand::Add { key, label, scope } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading the public key {}", key.display()))?;
            let public = PublicKey::from_pem(&pem)
                .with_context(|| format!("{} is not a usable public key", key.display()))?;
            let scope = if scope.is_empty() { None } else { Some(scope) };
            let mut store = TrustStore::load(&dir)?;
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
            let mut store = TrustStore::load(&dir)?;
            if store.find(&id).is_none() {
                bail!("no added key has id {id} (see `km trust list`)");
            }
            store.remove(&id)?;
            if !globals.quiet {
                eprintln!("Removed key {id}");
            }
        }
        TrustCommand::Revoke { what, reason } => {
            let mut store = TrustStore::load(&dir)?;
            store.revoke(&what, reason)?;
            if !globals.quiet {
                eprintln!("Revoked {what}");
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}
