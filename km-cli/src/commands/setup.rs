//! `km setup`: from a build of km to installed, verified plugins in one command.
//!
//! A source build (or a release without a built-in publisher key) has the bundled plugin
//! libraries beside the `km` binary but nothing signed. For each free bundled plugin
//! ([`crate::bundled`]) found there (or in `--from DIR`), setup:
//!
//! 1. uses the library's own `.kmsig` when it has one (a release's publisher signature), else
//!    signs it with the local signing key `KM_HOME/keys/local-signing.pem`, made on first use
//!    (Ed25519, mode 0600 in a 0700 directory) and trusted with a scope of the bundled plugins'
//!    names only: a key on this disk can then never vouch for any other plugin;
//! 2. installs it with the normal installer ([`crate::install`]), which verifies it as the loader
//!    will (trust, rollback record, target, ABI) and swaps it in atomically.
//!
//! It is idempotent: a plugin whose installed copy has the same bytes and verifies is left
//! alone, the key is made once, the trust entry is written only when its scope must grow, so a
//! second run writes nothing. An installed version newer than the bundled one (an update from
//! the API) is kept. Premium plugins (Pro, Enterprise) authorise only as a customer's build,
//! stamped by the Kilometers API: setup does not install them and says how to get them.
//!
//! Exit codes: 0 when every free plugin is installed and verified, 1 when a verification said
//! no, 2 for any other failure (a library missing, an unreadable file). What could be done is
//! done either way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use km_signing::package::Package;
use km_signing::{sha256_hex, Algorithm, Claims, Manifest, PrivateKey, SignatureFile, TrustStore};

use super::Globals;
use crate::bundled::{self, Bundled};
use crate::cli::SetupArgs;
use crate::config::Config;
use crate::exit;
use crate::home::KmHome;
use crate::install::{self, InstallRefused};
use crate::strict;
use crate::verifier::{Verifier, SIGNATURE_SUFFIX};

/// The label of the local signing key in the trust store.
const LOCAL_KEY_LABEL: &str = "local builds (km setup)";

/// The largest private key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// Runs `km setup`.
pub(super) fn run(globals: &Globals, args: SetupArgs) -> Result<ExitCode> {
    let from = match args.from {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("finding the km binary")?
            .parent()
            .context("the km binary has no directory")?
            .to_path_buf(),
    };
    let home = &globals.home;
    KmHome::ensure_private_dir(home.root())?;
    // KM_HOME must be safe before anything in it is trusted or written.
    Verifier::open(home).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    println!("km setup: KM_HOME {}", home.root().display());

    let mut status = exit::OK;
    let mut found = Vec::new();
    for plugin in bundled::free() {
        let path = from.join(plugin.library_file());
        if path.is_file() {
            found.push((plugin, path));
        } else {
            println!(
                "  ✗ {}: {} not found: build the workspace (cargo build --workspace), or give \
                 the directory with --from DIR",
                plugin.name,
                path.display()
            );
            status = exit::ERROR;
        }
    }

    let mut signer = None;
    for (plugin, path) in &found {
        match one(home, &mut signer, plugin, path) {
            Ok(done) => println!("  ✓ {}", done),
            Err(e) => {
                let refused = e.downcast_ref::<InstallRefused>().is_some();
                println!("  ✗ {}: {e:#}", plugin.name);
                if refused && status == exit::OK {
                    status = exit::REFUSED;
                } else if !refused {
                    status = exit::ERROR;
                }
            }
        }
    }

    let premium: Vec<String> = bundled::premium()
        .map(|p| format!("{} ({})", p.name, p.tier.display_name()))
        .collect();
    if !premium.is_empty() {
        let configured = Config::load(home).ok().is_some_and(|c| c.api_key.is_some());
        println!(
            "  · {} run only as your customer builds, which the Kilometers API makes for your \
             subscription; {}",
            premium.join(", "),
            if configured {
                "install them with `km install-plugin NAME` (later `km update-plugin`)"
            } else {
                "run `km init --api-key KEY`, then `km install-plugin NAME` (later \
                 `km update-plugin`)"
            }
        );
    }
    if status == exit::OK {
        println!("Done. Next: `km wrap` puts km in front of your MCP clients' servers; `km doctor` checks everything.");
    }
    Ok(ExitCode::from(status))
}

/// The local signing key, loaded or made once per run, and trusted for the bundled names.
struct LocalSigner {
    key: PrivateKey,
}

/// Sets up one plugin; what happened, in a few words.
fn one(
    home: &KmHome,
    signer: &mut Option<LocalSigner>,
    plugin: &Bundled,
    path: &Path,
) -> Result<String> {
    let library = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = sha256_hex(&library);
    let what = format!(
        "{} {} ({})",
        plugin.name,
        plugin.version,
        plugin.tier.display_name()
    );
    if let Some(installed) = installed_same(home, plugin, &sha256)? {
        return Ok(format!(
            "{what}: installed and verified, unchanged ({})",
            installed.display()
        ));
    }
    let sig_path = PathBuf::from(format!("{}{SIGNATURE_SUFFIX}", path.display()));
    let (signature, how) = if sig_path.is_file() {
        let bytes =
            std::fs::read(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
        let signature = SignatureFile::parse(&bytes)
            .with_context(|| format!("{} is not a signature file", sig_path.display()))?;
        (signature, "its own signature".to_owned())
    } else {
        if signer.is_none() {
            *signer = Some(local_signer(home)?);
        }
        let Some(local) = signer.as_ref() else {
            bail!("the local signing key is not available");
        };
        let claims = Claims {
            capabilities: plugin
                .capabilities
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            ..Claims::new(plugin.name, plugin.version, plugin.tier)
        };
        let manifest = Manifest::describe(
            &claims,
            &local.key.public_key().key_id(),
            &library,
            SystemTime::now(),
        )
        .with_context(|| format!("describing {}", path.display()))?;
        let signature =
            SignatureFile::sign(&local.key, &manifest).context("signing with the local key")?;
        (signature, "signed with the local key".to_owned())
    };
    let manifest = Manifest::parse(&signature.manifest_bytes).with_context(|| {
        format!(
            "the signature of {} holds no valid manifest",
            path.display()
        )
    })?;
    let pkg = Package {
        lib_name: plugin.library_file(),
        library,
        signature_bytes: signature.to_bytes(),
        signature,
        manifest,
    };
    match install::install(home, &pkg, false) {
        Ok(installed) => {
            let replaced = if installed.replaced.is_empty() {
                String::new()
            } else {
                format!(", replacing {} older build(s)", installed.replaced.len())
            };
            Ok(format!(
                "{what}: installed ({how}, verified) -> {}{replaced}",
                installed.path.display()
            ))
        }
        Err(e) => match e.downcast_ref::<InstallRefused>() {
            // An update from the API is newer than what was built here: it stays.
            Some(refused) if refused.check == km_signing::Check::Rollback => Ok(format!(
                "{}: a newer version is installed; kept it ({})",
                plugin.name, refused.reason
            )),
            _ => Err(e),
        },
    }
}

/// The installed library of `plugin` whose bytes are `sha256` and which verifies, if any.
fn installed_same(home: &KmHome, plugin: &Bundled, sha256: &str) -> Result<Option<PathBuf>> {
    let dir = home.plugins_dir();
    let verifier = Verifier::open(home).map_err(|r| anyhow::anyhow!("{r}"))?;
    for (path, manifest) in install::installed_files(&dir, plugin.name)? {
        if manifest.as_ref().is_none_or(|m| m.sha256 != sha256) {
            continue;
        }
        if let Ok(checked) = verifier.check_file(&path) {
            let m = checked.verified().manifest();
            let grants = plugin.capabilities.iter().all(|c| m.grants(c));
            if m.name == plugin.name && m.version == plugin.version && grants {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// Loads the local signing key (or makes it) and makes sure the trust store trusts it for the
/// bundled free plugins' names.
fn local_signer(home: &KmHome) -> Result<LocalSigner> {
    let path = home.local_signing_key();
    let key = match read_private_key(&path)? {
        Some(key) => {
            println!("  · local signing key {} (exists)", path.display());
            key
        }
        None => {
            KmHome::ensure_private_dir(&home.keys_dir())?;
            let key =
                PrivateKey::generate(Algorithm::Ed25519).context("making the local signing key")?;
            key.write_pem_file(&path, false)
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "  ✓ made the local signing key {} (Ed25519, mode 0600)",
                path.display()
            );
            key
        }
    };
    trust_local(home, &key)?;
    Ok(LocalSigner { key })
}

/// Reads the local signing key: a regular file of yours, readable by nobody else
/// (StrictModes' [`Expect::Secret`](strict::Expect::Secret), checked on the descriptor it is read from).
fn read_private_key(path: &Path) -> Result<Option<PrivateKey>> {
    let bytes = match strict::read_secret(path, MAX_KEY_BYTES, "local signing key") {
        Ok(None) => return Ok(None),
        Ok(Some(bytes)) => bytes,
        // Readable by others is not fixed by a chmod: whoever read it can sign plugins.
        Err(refusal) if refusal.check == km_signing::Check::Permissions => bail!(
            "the local signing key {} is accessible by others: anyone who read it can sign \
             plugins this km trusts. Remove it and its trust entry (`km trust remove KEY_ID`) \
             and run `km setup` again ({})",
            path.display(),
            refusal.reason
        ),
        Err(refusal) => bail!("{refusal}"),
    };
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not a PEM file", path.display()))?;
    PrivateKey::from_pem(&text)
        .map(Some)
        .with_context(|| format!("{} is not a usable private key", path.display()))
}

/// Trusts `key` for the bundled free plugins' names (adding to a scope it already has); leaves
/// a key trusted for any plugin as the user made it.
fn trust_local(home: &KmHome, key: &PrivateKey) -> Result<()> {
    let dir = home.trusted_keys_dir();
    let mut store = TrustStore::load(&dir)
        .with_context(|| format!("reading the trust store {}", dir.display()))?;
    let public = key.public_key();
    let key_id = public.key_id();
    let wanted: Vec<String> = bundled::free().map(|b| b.name.to_owned()).collect();
    let existing = store
        .find(&key_id)
        .map(|k| (k.scope.clone(), k.label.clone()));
    let scope = match &existing {
        Some((None, _)) => return Ok(()),
        Some((Some(scope), _)) if wanted.iter().all(|n| scope.contains(n)) => return Ok(()),
        Some((Some(scope), _)) => {
            let mut merged = scope.clone();
            merged.extend(wanted.into_iter().filter(|n| !scope.contains(n)));
            merged
        }
        None => wanted,
    };
    let label = existing.map_or_else(|| LOCAL_KEY_LABEL.to_owned(), |(_, label)| label);
    store
        .add(public, Some(label), Some(scope.clone()))
        .context("trusting the local signing key")?;
    println!(
        "  ✓ trusted the local key {key_id} for {} only",
        scope.join(", ")
    );
    Ok(())
}
