//! Installing, replacing and removing plugins in `KM_HOME/plugins`: fetching a `.kmpkg` (file,
//! http(s) URL, or by name from the Kilometers API), verifying it exactly as the loader would,
//! and swapping it in atomically.
//!
//! Order of events, and why:
//! 1. The package is fetched whole into memory (bounded by the loader's size cap) and read with
//!    the strict reader of `km_signing::package`: nothing is extracted anywhere.
//! 2. The library is verified by the loader's [`Verifier`] (trust store, revocations, target,
//!    ABI, expiry, the rollback record unless `--allow-downgrade`), and its file name must be one
//!    of the signed plugin's (`lib` + the name with `-` or `_` + the suffix, or a customer build
//!    `libkm-plugin-NAME-XXXXXXXX.so`), so that a validly signed package of plugin A cannot
//!    overwrite plugin B's library. A refusal stops here, before the plugin directory is
//!    touched. Under the install lock it is verified once more, against the rollback record as
//!    it is then: another km may have installed (and recorded) a newer version meanwhile.
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
//! Downloads have an overall deadline (`KM_DOWNLOAD_TIMEOUT_SECS`, default 10 minutes) besides
//! the connect and read timeouts, and follow at most 5 redirects by hand: a redirect to plain
//! `http://` on a host that is not loopback is refused (so https, or loopback http, never
//! continues in the clear elsewhere), and the API key and the customer token go only to the
//! origin (scheme, host and port) they were meant for, never to another one a redirect names.
//!
//! Uninstalling removes the library (first), its signature, the plugin's data directory and its
//! auth record. The rollback record (seen versions) is kept on purpose: uninstalling must not be
//! a way to reinstall an older, perhaps vulnerable, version without `--allow-downgrade`.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use km_signing::package::{self, is_package_library_name, Limits, Package};
use km_signing::{Manifest, SignatureFile, Verified};
use reqwest::Url;

use crate::home::KmHome;
use crate::loader;
use crate::verifier::{Check, Refusal, Verifier};

/// Verification said no: the command exits 1 for it (other errors exit 2).
#[derive(Debug)]
pub struct InstallRefused {
    /// What was refused (a file, URL or plugin name).
    pub what: String,
    /// The failing check (`package`, `trust`, `digest`, `rollback`, `checksum`, ...).
    pub check: Check,
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

/// The overall deadline of one download (`KM_DOWNLOAD_TIMEOUT_SECS`), redirects included.
fn download_deadline() -> Duration {
    std::env::var("KM_DOWNLOAD_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(600), Duration::from_secs)
}

/// The most redirects a download follows.
const MAX_REDIRECTS: usize = 5;

/// Whether km may fetch `url`: https anywhere, plain http only to loopback.
fn check_scheme(url: &Url) -> Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => bail!("{url}: plain http is accepted only for loopback addresses; use https"),
        other => bail!("{url}: unsupported scheme {other:?} (http or https)"),
    }
}

/// Where a redirect from `from` to `location` leads, if km follows it: the scheme rule of
/// [`check_scheme`] (so https, or loopback http, never goes on in the clear to another host).
fn redirect_target(from: &Url, location: &str) -> Result<Url> {
    let next = from
        .join(location)
        .with_context(|| format!("{from}: redirect to an invalid URL {location:?}"))?;
    check_scheme(&next).with_context(|| format!("{from}: redirect refused"))?;
    Ok(next)
}

/// Downloads `url` into memory with reqwest (rustls), at most `max` bytes, a progress bar on
/// stderr when `progress`. Plain `http://` only to loopback; at most 5 redirects, followed by
/// hand so that `headers` (credentials) go only to `url`'s origin; an overall deadline. `tls` is
/// km's client config ([`crate::tls::client_config_for`]): TLS 1.3 only, and the API endpoint's
/// roots and pins when `url` is on the API's host. Runs on `runtime`, from a thread outside it
/// (a command's; see [`crate::runtime`]).
pub fn download(
    runtime: &crate::runtime::Handle,
    tls: &rustls::ClientConfig,
    url: &Url,
    max: u64,
    headers: &[(&str, String)],
    progress: bool,
) -> Result<Vec<u8>> {
    check_scheme(url)?;
    let deadline = download_deadline();
    runtime.block_on(async {
        match tokio::time::timeout(deadline, fetch(tls, url, max, headers, progress)).await {
            Ok(result) => result,
            Err(_) => bail!(
                "downloading {url}: not done within the deadline of {} s \
                 (KM_DOWNLOAD_TIMEOUT_SECS)",
                deadline.as_secs()
            ),
        }
    })
}

async fn fetch(
    tls: &rustls::ClientConfig,
    url: &Url,
    max: u64,
    headers: &[(&str, String)],
    progress: bool,
) -> Result<Vec<u8>> {
    {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            // Redirects are followed below, where the credentials can be kept to their origin.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("km/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let origin = url.origin();
        let mut at = url.clone();
        let mut redirects = 0;
        let mut response = loop {
            let mut request = client.get(at.clone());
            if at.origin() == origin {
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
            }
            let response = request.send().await.map_err(|e| {
                // A TLS refusal (pins, TLS version, certificate) is said plainly, not as a chain.
                match crate::tls::refusal_in(&e) {
                    Some(refusal) => anyhow::anyhow!("downloading {at}: {refusal}"),
                    None => anyhow::Error::new(e).context(format!("downloading {at}")),
                }
            })?;
            if !response.status().is_redirection() {
                break response;
            }
            let Some(location) = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                bail!(
                    "downloading {at}: the server answered {} without a usable Location",
                    response.status()
                );
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                bail!("downloading {url}: more than {MAX_REDIRECTS} redirects");
            }
            at = redirect_target(&at, location)?;
        };
        let url = &at;
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
    }
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

/// Whether `lib_name` is a file name of plugin `name`: `lib` + the name (with `-` or `_`) + the
/// platform's suffix, or a customer build (`libkm-plugin-NAME.so`,
/// `libkm-plugin-NAME-XXXXXXXX.so`, see [`km_signing::customer_build_file_name`]).
pub fn is_file_name_of(lib_name: &str, name: &str) -> bool {
    let Some(stem) = lib_name
        .strip_prefix(std::env::consts::DLL_PREFIX)
        .and_then(|s| s.strip_suffix(std::env::consts::DLL_SUFFIX))
    else {
        return false;
    };
    let stem = stem.replace('_', "-");
    if stem == name || stem == format!("km-plugin-{name}") {
        return true;
    }
    stem.strip_prefix(&format!("km-plugin-{name}-"))
        .is_some_and(|hash| {
            hash.len() == km_signing::stamp::CUSTOMER_HASH_DIGITS
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

fn refusal_of(what: &str, refusal: Refusal) -> InstallRefused {
    InstallRefused {
        what: what.to_owned(),
        check: refusal.check,
        reason: refusal.reason,
    }
}

/// Verifies a read package with `verifier`: the library and its signature, then that the
/// library's file name is the signed plugin's.
fn verify_read_package(
    verifier: &Verifier,
    dir: &Path,
    what: &str,
    pkg: &Package,
) -> Result<Verified, InstallRefused> {
    if !is_package_library_name(&pkg.lib_name)
        || !loader::is_library_name(OsStr::new(&pkg.lib_name))
    {
        return Err(InstallRefused {
            what: what.to_owned(),
            check: Check::Package,
            reason: format!("{:?} is not a plugin library file name", pkg.lib_name),
        });
    }
    let verified = verifier
        .check_bytes(&dir.join(&pkg.lib_name), &pkg.library, &pkg.signature)
        .map_err(|r| refusal_of(what, r))?;
    let name = &verified.manifest().name;
    if !is_file_name_of(&pkg.lib_name, name) {
        return Err(InstallRefused {
            what: what.to_owned(),
            check: Check::Package,
            reason: format!(
                "the package names its library {:?}, which is not a file name of plugin {name} \
                 ({} or a customer build of it)",
                pkg.lib_name,
                km_signing::library_file_name(&name.replace('-', "_")),
            ),
        });
    }
    Ok(verified)
}

/// Reads and verifies a package's bytes: the strict reader, then the verifier. Nothing is
/// written.
pub fn verify_package(
    home: &KmHome,
    what: &str,
    bytes: &[u8],
    allow_downgrade: bool,
) -> Result<(Package, Verified)> {
    let pkg =
        package::read_package(bytes, Limits::for_library(loader::size_cap())).map_err(|e| {
            InstallRefused {
                what: what.to_owned(),
                check: Check::Package,
                reason: e.to_string(),
            }
        })?;
    let verifier = Verifier::open(home)?.allow_downgrade(allow_downgrade);
    let verified = verify_read_package(&verifier, &home.plugins_dir(), what, &pkg)?;
    Ok((pkg, verified))
}

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    /// The installed library.
    pub path: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The proof it was installed on.
    pub verified: Verified,
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
/// whose file name is `name`. Unverified, but read with the verifier's checked, capped,
/// non-blocking open: used to find what to replace or remove.
pub fn installed_files(dir: &Path, name: &str) -> Result<Vec<(PathBuf, Option<Manifest>)>> {
    let mut found = Vec::new();
    for (path, manifest) in crate::verifier::claims(dir)? {
        let claims = manifest.as_ref().is_some_and(|m| m.name == name);
        if claims || path.file_name() == Some(OsStr::new(name)) {
            found.push((path, manifest));
        }
    }
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

/// Installs a package into `KM_HOME/plugins` (see the module docs for the order), verifying it
/// again under the install lock. A refusal is an [`InstallRefused`] (exit 1).
pub fn install(home: &KmHome, pkg: &Package, allow_downgrade: bool) -> Result<Installed> {
    let dir = home.plugins_dir();
    KmHome::ensure_private_dir(&dir)?;
    let _lock = lock_plugins(home)?;
    remove_stale_temporaries(&dir);
    let lib_path = dir.join(&pkg.lib_name);
    let what = lib_path.display().to_string();
    // Under the lock, against the rollback record as it is now.
    let mut verifier = Verifier::open(home)?.allow_downgrade(allow_downgrade);
    let verified = verify_read_package(&verifier, &dir, &what, pkg)?;
    // StrictModes on the directory, as the loader will apply.
    let plugin_dir = verifier.open_dir(&dir)?;
    let name = &verified.manifest().name;
    // The file it replaces, if any, must be this plugin's (or no plugin's).
    if let Some((_, Some(other))) = crate::verifier::claims(&dir)?
        .into_iter()
        .find(|(path, _)| path.file_name() == Some(OsStr::new(&pkg.lib_name)))
    {
        if other.name != *name {
            return Err(InstallRefused {
                what,
                check: Check::Package,
                reason: format!(
                    "{} is plugin {}'s library; a package of {name} cannot replace it",
                    lib_path.display(),
                    other.name
                ),
            }
            .into());
        }
    }
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

    // What is on disk now must pass the loader's own check (any version: it was just chosen).
    let recheck = Verifier::open(home)?.allow_downgrade(true);
    let checked = recheck
        .check_in(&plugin_dir, OsStr::new(&pkg.lib_name))
        .map_err(|r| anyhow::anyhow!("the installed plugin does not verify: {r}"))?;
    if checked.verified().sha256() != verified.sha256() {
        bail!(
            "{} changed while it was being installed",
            lib_path.display()
        );
    }
    verifier.record_seen(&verified)?;

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
        verified,
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
        let err = download(&crate::runtime::for_tests(), &tls, &remote, 10, &[], false)
            .expect_err("refused");
        assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    }
}
