//! Installing, replacing and removing plugins in `KM_HOME/plugins`: fetching a `.kmpkg` (file,
//! http(s) URL, or by name from the Kilometers API), verifying it exactly as the loader would,
//! and swapping it in atomically.
//!
//! Order of events, and why:
//! 1. The package is fetched whole into memory (bounded by the loader's size cap) and read with
//!    the strict reader of `km_signing::package`: nothing is extracted anywhere.
//! 2. The library is verified against the user's trust store, revocations, target, ABI, expiry
//!    and the rollback record (unless `--allow-downgrade`): the loader's checks. A refusal stops
//!    here, before the plugin directory is touched.
//! 3. The library and its signature are staged by km-durable: temporary files in the plugin
//!    directory (so the renames do not cross file systems), mode 0644, fsynced. Then they are
//!    renamed: the signature first, the library last. The library's rename is the commit
//!    point. A crash between the two renames leaves, for a fresh install, an orphan `.kmsig` that the loader ignores (it only
//!    looks at library names); for a replacement, the old library beside the new signature,
//!    which the loader refuses (digest mismatch) rather than loads. If the library's rename
//!    fails, the old signature is put back, so a failed install leaves the previous state as it
//!    was. Nothing unverified can ever load: the loader verifies every time anyway.
//! 4. The directory is fsynced, the installed pair is checked again through the loader's own
//!    `check` (StrictModes, no links), and the version is recorded as seen.
//! 5. Only then are other files of the same plugin (an older build under another file name)
//!    removed: the library first, then its signature.
//!
//! Installs and removals hold an exclusive lock (`KM_HOME/state/plugins.lock`), and an install
//! first removes temporary files an interrupted install left behind.
//!
//! Uninstalling removes the library (first), its signature, the plugin's data directory and its
//! auth record. The rollback record (seen versions) is kept on purpose: uninstalling must not be
//! a way to reinstall an older, perhaps vulnerable, version without `--allow-downgrade`.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use km_signing::package::{self, is_package_library_name, Limits, Package};
use km_signing::{target_triple, verify_library, Manifest, Policy, SignatureFile, Verified};
use reqwest::Url;

use crate::home::KmHome;
use crate::loader::{self, CheckContext};

/// Verification said no: the command exits 1 for it (other errors exit 2).
#[derive(Debug)]
pub struct InstallRefused {
    /// What was refused (a file, URL or plugin name).
    pub what: String,
    /// The failing check (`package`, `trust`, `digest`, `rollback`, `checksum`, ...).
    pub check: &'static str,
    /// Why.
    pub reason: String,
}

impl fmt::Display for InstallRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: refused ({}): {}",
            self.what, self.check, self.reason
        )
    }
}

impl std::error::Error for InstallRefused {}

/// Where a package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local `.kmpkg`.
    File(PathBuf),
    /// An http(s) URL.
    Url(Url),
    /// A plugin name, fetched from `{api_url}/api/plugins/download/<name>`.
    Name(String),
}

impl Source {
    /// `http://` and `https://` are URLs; anything with a `/`, ending in `.kmpkg`, or naming an
    /// existing file is a file; a valid plugin name otherwise is a name.
    pub fn parse(arg: &str) -> Result<Source> {
        if arg.starts_with("http://") || arg.starts_with("https://") {
            let url = Url::parse(arg).with_context(|| format!("{arg:?} is not a valid URL"))?;
            return Ok(Source::Url(url));
        }
        let path = Path::new(arg);
        if arg.contains('/') || arg.ends_with(package::PACKAGE_SUFFIX) || path.exists() {
            return Ok(Source::File(path.to_path_buf()));
        }
        km_signing::check_name(arg).with_context(|| {
            format!("{arg:?} is neither a package file, an http(s) URL nor a plugin name")
        })?;
        Ok(Source::Name(arg.to_owned()))
    }
}

/// The largest package km accepts (compressed or not): the loader's library cap plus room for
/// the signature, the manifest and tar headers.
pub fn max_package_bytes() -> u64 {
    Limits::for_library(loader::size_cap()).max_total
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Downloads `url` into memory with reqwest (rustls), at most `max` bytes, a progress bar on
/// stderr when `progress`. Plain `http://` only to loopback; at most 5 redirects, none from
/// https to http. `tls` is km's client config ([`crate::tls::client_config_for`]): TLS 1.3
/// only, and the API endpoint's roots and pins when `url` is on the API's host.
pub fn download(
    tls: &rustls::ClientConfig,
    url: &Url,
    max: u64,
    headers: &[(&str, String)],
    progress: bool,
) -> Result<Vec<u8>> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => bail!("{url}: plain http is accepted only for loopback addresses; use https"),
        other => bail!("{url}: unsupported scheme {other:?} (http or https)"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the download runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .https_only(!is_loopback(url))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("km/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let mut request = client.get(url.clone());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = request.send().await.map_err(|e| {
            // A TLS refusal (pins, TLS version, certificate) is said plainly, not as a chain.
            match crate::tls::refusal_in(&e) {
                Some(refusal) => anyhow::anyhow!("downloading {url}: {refusal}"),
                None => anyhow::Error::new(e).context(format!("downloading {url}")),
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            bail!("downloading {url}: the server answered {status}");
        }
        let expected = response.content_length();
        if let Some(len) = expected.filter(|&len| len > max) {
            bail!("{url}: the package is {len} bytes, more than the cap of {max}");
        }
        let bar = if progress {
            let bar = match expected {
                Some(len) => indicatif::ProgressBar::new(len),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("downloading {url}"));
            Some(bar)
        } else {
            None
        };
        let stderr_is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if bar.is_some() && !stderr_is_tty {
            eprintln!(
                "km: downloading {url} ({})",
                expected.map_or_else(|| "size unknown".to_owned(), |n| format!("{n} bytes"))
            );
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("downloading {url} (interrupted)"))?
        {
            if (bytes.len() + chunk.len()) as u64 > max {
                bail!("{url}: the download exceeds the cap of {max} bytes");
            }
            bytes.extend_from_slice(&chunk);
            if let Some(bar) = &bar {
                bar.set_position(bytes.len() as u64);
            }
        }
        if let Some(bar) = bar {
            bar.finish_with_message(format!("downloaded {url}"));
            if !stderr_is_tty {
                // indicatif draws nothing when stderr is not a terminal: say it in one line.
                eprintln!("km: downloaded {} bytes from {url}", bytes.len());
            }
        }
        if let Some(len) = expected {
            if bytes.len() as u64 != len {
                bail!("{url}: truncated download ({} of {len} bytes)", bytes.len());
            }
        }
        Ok(bytes)
    })
}

/// Reads a local package, at most [`max_package_bytes`].
pub fn read_package_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the package {}", path.display()))?;
    let max = max_package_bytes();
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the package {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{}: larger than the cap of {max} bytes", path.display());
    }
    Ok(bytes)
}

/// Reads and verifies a package's bytes: the strict reader, then the loader's checks. Nothing
/// is written.
pub fn verify_package(
    home: &KmHome,
    what: &str,
    bytes: &[u8],
    allow_downgrade: bool,
) -> Result<(Package, Verified)> {
    let refused = |check, reason: String| InstallRefused {
        what: what.to_owned(),
        check,
        reason,
    };
    let pkg = package::read_package(bytes, Limits::for_library(loader::size_cap()))
        .map_err(|e| refused("package", e.to_string()))?;
    if !is_package_library_name(&pkg.lib_name)
        || !loader::is_library_name(OsStr::new(&pkg.lib_name))
    {
        return Err(refused(
            "package",
            format!("{:?} is not a plugin library file name", pkg.lib_name),
        )
        .into());
    }
    let trust = loader::trust_store(home)?;
    let seen = loader::seen_versions(home)?;
    let policy = Policy {
        now: SystemTime::now(),
        target: target_triple(),
        abi_version: km_abi::ABI_VERSION,
        allow_downgrade,
        seen: Some(&seen),
    };
    let verified = verify_library(&pkg.library, &pkg.signature, &trust, &policy)
        .map_err(|e| refused(e.check(), e.to_string()))?;
    Ok((pkg, verified))
}

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    /// The installed library.
    pub path: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    /// Files of an older build of the same plugin that were removed.
    pub replaced: Vec<PathBuf>,
}

/// `bytes` staged for `target` in the plugin directory `dir` (mode 0644, fsynced), by km-durable.
fn staged(dir: &Path, target: &Path, bytes: &[u8]) -> Result<km_durable::Staged> {
    km_durable::stage(target, bytes, km_durable::PUBLIC)
        .with_context(|| format!("writing a temporary file in {}", dir.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    Ok(km_durable::sync_dir(dir)?)
}

/// The installed libraries in `dir` (by file name) whose signature claims plugin `name`, or
/// whose file name is `name`. Unverified: used to find what to replace or remove.
pub fn installed_files(dir: &Path, name: &str) -> Result<Vec<(PathBuf, Option<Manifest>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let file_name = entry.file_name();
        if !loader::is_library_name(&file_name) {
            continue;
        }
        let path = entry.path();
        let manifest = SignatureFile::read(&SignatureFile::path_for(&path))
            .ok()
            .and_then(|sig| Manifest::parse(&sig.manifest_bytes).ok());
        let claims = manifest.as_ref().is_some_and(|m| m.name == name);
        if claims || file_name == OsStr::new(name) {
            found.push((path, manifest));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// An exclusive lock on `KM_HOME/state/plugins.lock`, held while plugins are installed or
/// removed, so that two km processes never interleave their renames. Released on drop.
#[derive(Debug)]
pub struct PluginsLock {
    _lock: km_durable::Lock,
}

/// Takes [`PluginsLock`], waiting for another km that holds it.
pub fn lock_plugins(home: &KmHome) -> Result<PluginsLock> {
    let state = home.state_dir();
    KmHome::ensure_private_dir(&state)?;
    let lock = km_durable::Lock::acquire(&state.join("plugins.lock"), None)?;
    Ok(PluginsLock { _lock: lock })
}

/// Removes temporary files an interrupted install left in `dir` (km-durable's temporaries, and
/// `.km-install-*`: the backup of a replaced signature, and what km versions before km-durable
/// staged). The loader never looks at them; this only reclaims space. Called with
/// [`PluginsLock`] held, so no other km is using them.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if km_durable::is_temporary(&name) || name.to_string_lossy().starts_with(".km-install-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Installs a verified package into `KM_HOME/plugins` (see the module docs for the order).
pub fn install(home: &KmHome, pkg: &Package, verified: &Verified) -> Result<Installed> {
    let dir = home.plugins_dir();
    KmHome::ensure_private_dir(&dir)?;
    let _lock = lock_plugins(home)?;
    remove_stale_temporaries(&dir);
    // StrictModes on the directory, as the loader will apply.
    let dir_fd = loader::open_checked_dir(&dir).map_err(|r| anyhow::anyhow!("{r}"))?;
    let name = &verified.manifest().name;
    let existing = installed_files(&dir, name)?;
    let previous = existing
        .iter()
        .filter_map(|(_, m)| m.as_ref().map(|m| m.version.clone()))
        .max_by_key(|v| semver::Version::parse(v).ok());
    let others: Vec<PathBuf> = existing
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.file_name() != Some(OsStr::new(&pkg.lib_name)))
        .collect();

    let lib_path = dir.join(&pkg.lib_name);
    let sig_path = SignatureFile::path_for(&lib_path);
    let lib_tmp = staged(&dir, &lib_path, &pkg.library)?;
    let sig_tmp = staged(&dir, &sig_path, &pkg.signature_bytes)?;

    // Keep the old signature reachable until the library is in place.
    let backup = if sig_path.exists() {
        let backup = tempfile::Builder::new()
            .prefix(".km-install-old-")
            .make_in(&dir, |p| std::fs::hard_link(&sig_path, p))
            .with_context(|| format!("keeping a copy of {}", sig_path.display()))?;
        Some(backup)
    } else {
        None
    };
    sig_tmp.commit()?;
    if let Err(e) = lib_tmp.commit() {
        // Put the previous state back: the old signature, or none.
        let restored = match &backup {
            Some(old) => std::fs::rename(old.path(), &sig_path),
            None => std::fs::remove_file(&sig_path),
        };
        let _ = sync_dir(&dir);
        return Err(e).with_context(|| {
            format!(
                "installing {} (previous state restored: {})",
                lib_path.display(),
                restored.is_ok()
            )
        });
    }
    drop(backup);
    sync_dir(&dir)?;

    // What is on disk now must pass the loader's own check.
    let trust = loader::trust_store(home)?;
    let seen = loader::seen_versions(home)?;
    let cx = CheckContext {
        trust: &trust,
        seen: &seen,
        allow_downgrade: true,
        size_cap: loader::size_cap(),
    };
    let checked = loader::check(&dir_fd, &dir, OsStr::new(&pkg.lib_name), &cx)
        .map_err(|r| anyhow::anyhow!("the installed plugin does not verify: {r}"))?;
    if checked.verified().sha256() != verified.sha256() {
        bail!(
            "{} changed while it was being installed",
            lib_path.display()
        );
    }
    loader::record_seen(home, verified)?;

    let mut replaced = Vec::new();
    for other in others {
        remove_pair(&other)?;
        replaced.push(other);
    }
    if !replaced.is_empty() {
        sync_dir(&dir)?;
    }
    let manifest = verified.manifest();
    journal_host(
        home,
        serde_json::json!({
            "event": if previous.is_some() { "updated" } else { "installed" },
            "plugin": manifest.name,
            "version": manifest.version,
            "previous_version": previous,
            "tier": manifest.tier.as_str(),
            "sha256": verified.sha256(),
            "signer": verified.key_id().to_string(),
        }),
    );
    Ok(Installed {
        path: lib_path,
        manifest: verified.manifest().clone(),
        replaced,
    })
}

/// Removes a library, then its signature (a library never stays without its signature).
pub fn remove_pair(lib: &Path) -> Result<()> {
    remove_if_present(lib)?;
    remove_if_present(&SignatureFile::path_for(lib))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Files and directories removed.
    pub paths: Vec<PathBuf>,
}

/// The plugin's auth record, `KM_HOME/state/auth/NAME.json`.
pub fn auth_record(home: &KmHome, name: &str) -> PathBuf {
    home.state_dir().join("auth").join(format!("{name}.json"))
}

/// Removes plugin `name`: its libraries and signatures, its data directory, its auth record.
/// Errors if nothing of it is installed.
pub fn uninstall(home: &KmHome, name: &str) -> Result<Removed> {
    let dir = home.plugins_dir();
    let _lock = lock_plugins(home)?;
    let files = installed_files(&dir, name)?;
    if files.is_empty() {
        bail!("no plugin {name:?} is installed in {}", dir.display());
    }
    let mut removed = Removed::default();
    let mut names = vec![name.to_owned()];
    for (lib, manifest) in files {
        remove_pair(&lib)?;
        removed.paths.push(SignatureFile::path_for(&lib));
        removed.paths.push(lib);
        if let Some(m) = manifest {
            if !names.contains(&m.name) {
                names.push(m.name);
            }
        }
    }
    sync_dir(&dir)?;
    for name in names.iter().filter(|n| km_signing::check_name(n).is_ok()) {
        let data = home.plugin_data_dir(name);
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
            removed.paths.push(data);
        }
        let auth = auth_record(home, name);
        if auth.exists() {
            remove_if_present(&auth)?;
            removed.paths.push(auth);
        }
        journal_host(
            home,
            serde_json::json!({"event": "uninstalled", "plugin": name}),
        );
    }
    Ok(removed)
}

/// Tells the plugins of the next session (an audit trail records installs); a failure to do so
/// is reported, never undoes the install.
fn journal_host(home: &KmHome, data: serde_json::Value) {
    if let Err(e) = crate::journal::host(home, data) {
        eprintln!("km: warning: cannot record this in km's event journal: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_apart() {
        assert!(matches!(
            Source::parse("https://example.com/p.kmpkg"),
            Ok(Source::Url(_))
        ));
        assert!(matches!(Source::parse("./x.kmpkg"), Ok(Source::File(_))));
        assert!(matches!(Source::parse("x.kmpkg"), Ok(Source::File(_))));
        assert_eq!(
            Source::parse("api-logger").ok(),
            Some(Source::Name("api-logger".to_owned()))
        );
        assert!(Source::parse("Not A Name").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let remote = Url::parse("http://example.com/p").expect("url");
        let tls = crate::tls::client_config(None).expect("tls");
        let err = download(&tls, &remote, 10, &[], false).expect_err("refused");
        assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    }
}
