//! The one verifier: every path that decides whether a plugin may run (`km monitor`,
//! `km plugin`, `list-plugins`, `plugin-status`, `plugin-refresh`, `verify-plugin`, the
//! installer and updater, km-bench) checks through a [`Verifier`], so that a new check lands
//! everywhere at once.
//!
//! A verifier holds what a check needs besides the file: the trust store (keys built into km
//! and those added with `km trust add`, with their revocations), the rollback record (highest
//! version seen per plugin), the size cap, and the policy (downgrades allowed or not; the target
//! triple and ABI of this km; the clock). [`Verifier::open`] applies StrictModes
//! ([`crate::strict`]) to `KM_HOME`, its parents and the trust files before reading any of them.
//!
//! - [`Verifier::check_file`] checks one library path (its directory, the file, its `.kmsig`);
//! - [`Verifier::check_dir`] checks every library in a plugin directory;
//! - [`Verifier::check_bytes`] checks library bytes that are not on disk yet (a package);
//! - [`Verifier::load`] maps a [`Checked`] library (see [`crate::loader`]) and records its
//!   version as seen. Nothing else in km maps a library.
//!
//! Every refusal is a [`Refusal`]: the library's path (never its `.kmsig`: a refusal about the
//! signature names the signature file in its reason), the failing [`Check`], a reason a person
//! can act on, and what the unverified signature claims (for reports), read with the same
//! checked, capped, non-blocking open.
//!
//! `km setup` and `km doctor` build on this: `Verifier::open(&home)` answers whether km's own
//! files are safe (a `Refusal` naming the path and the fix), and `check_dir` what each installed
//! plugin's verdict is.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use km_abi::ABI_VERSION;
use km_signing::{
    target_triple, Manifest, Policy, SeenVersions, SignatureFile, TrustStore, Verified,
};

pub use km_signing::Check;

use crate::gateway::LoadedPlugin;
use crate::home::KmHome;
use crate::host::PluginHost;
use crate::strict;

/// The largest plugin library km reads (override with `KM_MAX_PLUGIN_BYTES`).
pub const DEFAULT_SIZE_CAP: u64 = 128 * 1024 * 1024;

/// The largest signature file km reads.
pub const SIGNATURE_SIZE_CAP: u64 = 64 * 1024;

/// The suffix of the signature file written beside a library.
pub const SIGNATURE_SUFFIX: &str = ".kmsig";

/// Why a plugin (or a file km reads to decide trust) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The library's path (or the refused file's, for km's own files).
    pub path: PathBuf,
    /// The failing check.
    pub check: Check,
    /// A readable explanation, with the fix where there is one.
    pub reason: String,
    /// What the library's signature file claims, unverified (for reports), when it could be read.
    pub claimed: Option<Box<Manifest>>,
    /// SHA-256 of the library's bytes, when they were read.
    pub sha256: Option<String>,
}

impl Refusal {
    /// A refusal of `path` by `check`.
    pub fn new(path: &Path, check: Check, reason: impl Into<String>) -> Self {
        Refusal {
            path: path.to_path_buf(),
            check,
            reason: reason.into(),
            claimed: None,
            sha256: None,
        }
    }

    /// The same refusal, about `path` instead.
    pub fn about(mut self, path: &Path) -> Self {
        self.path = path.to_path_buf();
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: refused ({}): {}",
            self.path.display(),
            self.check,
            self.reason
        )
    }
}

impl std::error::Error for Refusal {}

/// A library whose bytes passed every check; the bytes are the ones that will be loaded.
pub struct Checked {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) verified: Verified,
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("path", &self.path)
            .field("name", &self.verified.manifest().name)
            .finish_non_exhaustive()
    }
}

impl Checked {
    /// The verification proof (manifest, signer, hash).
    pub fn verified(&self) -> &Verified {
        &self.verified
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The proof alone, for commands that verify without loading.
    pub fn into_verified(self) -> Verified {
        self.verified
    }
}

/// A plugin directory that passed StrictModes, with the library names in it (sorted).
#[derive(Debug)]
pub struct PluginDir {
    fd: OwnedFd,
    path: PathBuf,
    names: Vec<OsString>,
}

impl PluginDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library file names in it, sorted.
    pub fn names(&self) -> &[OsString] {
        &self.names
    }
}

/// The size cap in force (`KM_MAX_PLUGIN_BYTES`, else [`DEFAULT_SIZE_CAP`]).
pub fn size_cap() -> u64 {
    std::env::var("KM_MAX_PLUGIN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SIZE_CAP)
}

/// Whether `name` looks like a plugin library in a plugin directory.
pub fn is_library_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    !bytes.starts_with(b".") && bytes.ends_with(std::env::consts::DLL_SUFFIX.as_bytes())
}

/// Keys compiled into km (see build.rs and the README).
pub fn builtin_keys() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/builtin_keys.rs"))
}

/// Checks plugins against km's trust store, rollback record, size cap and policy.
#[derive(Debug)]
pub struct Verifier {
    home: KmHome,
    trust: TrustStore,
    seen: SeenVersions,
    allow_downgrade: bool,
    size_cap: u64,
    warnings: Vec<String>,
}

impl Verifier {
    /// Checks `KM_HOME` (StrictModes, see [`crate::strict`]), then reads its trust store (plus
    /// the keys built into km) and rollback record. Downgrades are refused and the size cap is
    /// [`size_cap`] until changed.
    pub fn open(home: &KmHome) -> Result<Verifier, Refusal> {
        strict::check_trust_files(home)?;
        let dir = home.trusted_keys_dir();
        let mut trust = TrustStore::load(&dir).map_err(|e| signing_refusal(&dir, &e))?;
        for (label, pem) in builtin_keys() {
            trust.add_builtin(label, pem).map_err(|e| {
                Refusal::new(
                    Path::new(label),
                    Check::Key,
                    format!("the built-in key {label:?} is not a valid public key: {e}"),
                )
            })?;
        }
        let path = home.seen_versions_file();
        let seen = SeenVersions::load(&path).map_err(|e| signing_refusal(&path, &e))?;
        Ok(Verifier {
            home: home.clone(),
            trust,
            seen,
            allow_downgrade: false,
            size_cap: size_cap(),
            warnings: Vec::new(),
        })
    }

    /// Accepts (or not) a version older than one seen before.
    pub fn allow_downgrade(mut self, allow: bool) -> Self {
        self.allow_downgrade = allow;
        self
    }

    /// Uses another size cap.
    pub fn with_size_cap(mut self, cap: u64) -> Self {
        self.size_cap = cap;
        self
    }

    /// km's home.
    pub fn home(&self) -> &KmHome {
        &self.home
    }

    /// The trust store in force.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// The rollback record.
    pub fn seen(&self) -> &SeenVersions {
        &self.seen
    }

    /// The size cap in force.
    pub fn cap(&self) -> u64 {
        self.size_cap
    }

    /// Warnings collected by [`load`](Self::load) (a rollback record that could not be written),
    /// taken out.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Opens a plugin directory (StrictModes) and lists its libraries.
    pub fn open_dir(&self, dir: &Path) -> Result<PluginDir, Refusal> {
        let fd = strict::open_dir(dir, "plugin directory")?;
        let names = library_names(&fd, dir)?;
        Ok(PluginDir {
            fd,
            path: dir.to_path_buf(),
            names,
        })
    }

    /// Checks every library in `dir`, in file-name order. A missing directory has none; `Err`
    /// when the directory itself is refused.
    pub fn check_dir(&self, dir: &Path) -> Result<Vec<Result<Checked, Refusal>>, Refusal> {
        let plugins = match self.open_dir(dir) {
            Ok(plugins) => plugins,
            Err(refusal) if refusal.check == Check::Missing => return Ok(Vec::new()),
            Err(refusal) => return Err(refusal),
        };
        Ok(plugins
            .names()
            .iter()
            .map(|name| self.check_in(&plugins, name))
            .collect())
    }

    /// Checks one library path as the loader would: its directory, the file, its signature.
    pub fn check_file(&self, path: &Path) -> Result<Checked, Refusal> {
        let Some(name) = path.file_name() else {
            return Err(Refusal::new(path, Check::Io, "not a file path"));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let fd = strict::open_dir(dir, "plugin directory").map_err(|r| r.about(path))?;
        let plugins = PluginDir {
            fd,
            path: dir.to_path_buf(),
            names: Vec::new(),
        };
        self.check_in(&plugins, name)
    }

    /// Reads and verifies the library `name` in the checked directory `dir`.
    pub fn check_in(&self, dir: &PluginDir, name: &OsStr) -> Result<Checked, Refusal> {
        let path = dir.path.join(name);
        let mut sig_name = name.to_os_string();
        sig_name.push(SIGNATURE_SUFFIX);
        let sig_path = dir.path.join(&sig_name);
        let signature = strict::read_at(
            &dir.fd,
            &dir.path,
            &sig_name,
            SIGNATURE_SIZE_CAP,
            "signature file",
        )
        .map_err(|r| match r.check {
            Check::Missing => Refusal::new(
                &path,
                Check::SignatureFile,
                format!("no signature: {} is missing", sig_path.display()),
            ),
            other => Refusal::new(
                &path,
                other,
                format!("{}: {}", sig_path.display(), r.reason),
            ),
        })
        .and_then(|bytes| {
            SignatureFile::parse(&bytes)
                .map_err(|e| Refusal::new(&path, e.check(), format!("{}: {e}", sig_path.display())))
        });
        let claimed = signature
            .as_ref()
            .ok()
            .and_then(|s| Manifest::parse(&s.manifest_bytes).ok())
            .map(Box::new);
        let with_claim = |mut refusal: Refusal, sha256: Option<String>| {
            refusal.claimed = claimed.clone();
            refusal.sha256 = sha256;
            refusal
        };
        let bytes =
            strict::read_at(&dir.fd, &dir.path, name, self.size_cap, "library").map_err(|r| {
                let check = match r.check {
                    Check::Missing => Check::Io,
                    other => other,
                };
                with_claim(Refusal::new(&path, check, r.reason), None)
            })?;
        // The digest a refusal reports, computed only for a refusal: on success the signature
        // check hashes the bytes itself, and a second pass over a megabyte was a third of the
        // check's time.
        let sha256 = || Some(km_durable::digest::sha256_hex(&bytes));
        let signature = signature.map_err(|r| with_claim(r, sha256()))?;
        let verified = self
            .check_bytes(&path, &bytes, &signature)
            .map_err(|r| with_claim(r, sha256()))?;
        Ok(Checked {
            path,
            bytes,
            verified,
        })
    }

    /// Verifies library bytes that are not (yet) on disk, such as a package's, as if they were
    /// at `path`: the signature and the policy, then that they are a shared library for this
    /// machine.
    pub fn check_bytes(
        &self,
        path: &Path,
        library: &[u8],
        signature: &SignatureFile,
    ) -> Result<Verified, Refusal> {
        let policy = Policy {
            now: SystemTime::now(),
            target: target_triple(),
            abi_version: ABI_VERSION,
            allow_downgrade: self.allow_downgrade,
            seen: Some(&self.seen),
        };
        if library.len() as u64 > self.size_cap {
            return Err(Refusal::new(
                path,
                Check::Size,
                format!(
                    "the library is {} bytes, over the cap of {} bytes",
                    library.len(),
                    self.size_cap
                ),
            ));
        }
        let verified = km_signing::verify_library(library, signature, &self.trust, &policy)
            .map_err(|e| Refusal::new(path, e.check(), e.to_string()))?;
        check_elf(path, library)?;
        Ok(verified)
    }

    /// Maps a checked library, creates the plugin, checks that it is the plugin its manifest
    /// signed, and records its version as seen. A rollback record that cannot be written does
    /// not stop the plugin (it passed every check): it becomes a warning ([`take_warnings`]),
    /// also printed on stderr.
    ///
    /// [`take_warnings`]: Self::take_warnings
    pub fn load(&mut self, checked: Checked, host: PluginHost) -> Result<LoadedPlugin, Refusal> {
        let verified = checked.verified.clone();
        let path = checked.path.clone();
        let plugin = crate::loader::map(checked, host)?;
        if let Err(refusal) = self.record_seen(&verified) {
            let warning = format!(
                "{} was loaded, but its version could not be recorded for rollback protection: {}",
                path.display(),
                refusal.reason
            );
            eprintln!("km: warning: {warning}");
            self.warnings.push(warning);
        }
        Ok(plugin)
    }

    /// Records the version `verified` signed as the highest seen of its plugin (if it is).
    pub fn record_seen(&mut self, verified: &Verified) -> Result<(), Refusal> {
        let manifest = verified.manifest();
        let path = self.home.seen_versions_file();
        let version = semver::Version::parse(&manifest.version).map_err(|e| {
            Refusal::new(
                &path,
                Check::Manifest,
                format!(
                    "the version {:?} of {} is not semver: {e}",
                    manifest.version, manifest.name
                ),
            )
        })?;
        self.seen
            .record(&manifest.name, &version)
            .map_err(|e| signing_refusal(&path, &e))
    }
}

/// The libraries in the plugin directory `dir` with what their signature files claim,
/// unverified (`None` when a signature is missing or unreadable), sorted by path: for finding
/// what to update, replace or remove. Read with the checked, capped, non-blocking open, so that
/// a FIFO or a device named like a signature is skipped, not read. A missing directory has none.
pub fn claims(dir: &Path) -> Result<Vec<(PathBuf, Option<Manifest>)>, Refusal> {
    let fd = match strict::open_dir(dir, "plugin directory") {
        Ok(fd) => fd,
        Err(refusal) if refusal.check == Check::Missing => return Ok(Vec::new()),
        Err(refusal) => return Err(refusal),
    };
    Ok(library_names(&fd, dir)?
        .into_iter()
        .map(|name| {
            let mut sig_name = name.clone();
            sig_name.push(SIGNATURE_SUFFIX);
            let manifest =
                strict::read_at(&fd, dir, &sig_name, SIGNATURE_SIZE_CAP, "signature file")
                    .ok()
                    .and_then(|bytes| SignatureFile::parse(&bytes).ok())
                    .and_then(|sig| Manifest::parse(&sig.manifest_bytes).ok());
            (dir.join(name), manifest)
        })
        .collect())
}

/// The library file names in the opened directory, sorted.
fn library_names(fd: &OwnedFd, dir: &Path) -> Result<Vec<OsString>, Refusal> {
    let listing = |e: rustix::io::Errno| {
        Refusal::new(
            dir,
            Check::Io,
            format!("cannot list the plugin directory: {e}"),
        )
    };
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(fd.as_fd()).map_err(listing)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(listing)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if is_library_name(name) {
            names.push(name.to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// A signing-library error about `path` as a refusal (the error's own path when it has one).
fn signing_refusal(path: &Path, e: &km_signing::Error) -> Refusal {
    let path = match e {
        km_signing::Error::Io { path, .. }
        | km_signing::Error::InsecurePermissions { path, .. } => path.as_path(),
        _ => path,
    };
    Refusal::new(path, e.check(), e.to_string())
}

/// Refuses bytes that are not a shared library for this machine, before they reach the dynamic
/// loader (whose parser is not meant for hostile input).
fn check_elf(path: &Path, bytes: &[u8]) -> Result<(), Refusal> {
    let not = |why: &str| {
        Refusal::new(
            path,
            Check::Format,
            format!("not a shared library for this machine: {why}"),
        )
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(not("no ELF header"));
    }
    let expected_class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    if bytes[4] != expected_class {
        return Err(not("wrong ELF class"));
    }
    if bytes[5] != if cfg!(target_endian = "little") { 1 } else { 2 } {
        return Err(not("wrong byte order"));
    }
    let e_type = u16::from_ne_bytes([bytes[16], bytes[17]]);
    if e_type != 3 {
        return Err(not("not a shared object (ET_DYN)"));
    }
    let e_machine = u16::from_ne_bytes([bytes[18], bytes[19]]);
    let expected_machine: Option<u16> = if cfg!(target_arch = "x86_64") {
        Some(62)
    } else if cfg!(target_arch = "aarch64") {
        Some(183)
    } else {
        None
    };
    if expected_machine.is_some_and(|m| m != e_machine) {
        return Err(not(&format!("built for ELF machine {e_machine}")));
    }
    Ok(())
}
