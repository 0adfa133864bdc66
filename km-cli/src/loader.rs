//! Verify, then load exactly the verified bytes.
//!
//! A plugin library is opened without following links and checked like ssh's StrictModes
//! (regular file, owned by the user or root, not writable by group or others, under a size cap,
//! in a directory that passes the same test). Its bytes are read once, hashed and checked against
//! the signed manifest beside it ([`km_signing::verify_library`], which returns the proof type
//! [`Verified`]). Only then are those same bytes, never the path, handed to the dynamic loader:
//! on Linux through a sealed memfd opened as `/proc/self/fd/N`; where executable memfds are
//! refused, through a fresh private copy in a 0700 directory. Replacing the file on disk after it
//! was verified therefore cannot change what gets loaded.
//!
//! The root module is obtained with `lib_header_from_path(..).init_root_module()`, never
//! `RootModule::load_from_file`, which caches the first module of a type and silently returns it
//! for every later path. Libraries are never unloaded (abi_stable's rule: types and vtables of a
//! library may outlive any handle).
//!
//! What is NOT defended against: a process running as the same user can ptrace km or rewrite
//! km's own binary; the plugin directory's checks stop other users and careless permissions, not
//! the user's own account.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use abi_stable::library::{lib_header_from_path, RootModule};
use anyhow::{Context, Result};
use km_abi::{PluginModRef, ABI_VERSION};
use km_signing::{target_triple, Policy, SeenVersions, SignatureFile, TrustStore, Verified};
use rustix::fs::{FileType, Mode, OFlags};

use crate::events::EventBus;
use crate::gateway::{Grants, LoadedPlugin, Signer};
use crate::home::KmHome;
use crate::host::{ApiTransport, PluginHost, StdinOnce, Verbosity};

/// The largest plugin library km reads (override with `KM_MAX_PLUGIN_BYTES`).
pub const DEFAULT_SIZE_CAP: u64 = 128 * 1024 * 1024;

/// The largest signature file km reads.
const SIGNATURE_SIZE_CAP: u64 = 64 * 1024;

/// The suffix of the signature file written beside a library.
pub const SIGNATURE_SUFFIX: &str = ".kmsig";

/// What `load_plugins` needs.
#[derive(Clone)]
pub struct LoadOptions {
    /// The directory to load from.
    pub plugins_dir: PathBuf,
    /// km's home (trust store, seen versions, plugin data directories).
    pub home: KmHome,
    /// Load a plugin even when it is older than a version already seen.
    pub allow_downgrade: bool,
    /// How much plugins may log.
    pub verbosity: Verbosity,
    /// The API transport handed to plugins (None: no API configured).
    pub api: Option<Arc<dyn ApiTransport>>,
    /// Where plugins' events go (None: they cannot emit).
    pub events: Option<Arc<EventBus>>,
    /// Load only the plugin of this name (every library is still verified).
    pub only: Option<String>,
    /// Standard input for the plugins (a plugin command).
    pub stdin: Option<Arc<StdinOnce>>,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("plugins_dir", &self.plugins_dir)
            .field("allow_downgrade", &self.allow_downgrade)
            .field("verbosity", &self.verbosity)
            .field("api", &self.api.is_some())
            .finish_non_exhaustive()
    }
}

impl LoadOptions {
    /// Options for `plugins_dir` with defaults: no downgrade, normal verbosity, no API.
    pub fn new(plugins_dir: PathBuf, home: KmHome) -> Self {
        LoadOptions {
            plugins_dir,
            home,
            allow_downgrade: false,
            verbosity: Verbosity::Normal,
            api: None,
            events: None,
            only: None,
            stdin: None,
        }
    }
}

/// Why a plugin was not loaded: the file, the check that failed, and what the user needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The library's path.
    pub path: PathBuf,
    /// The failing check: `permissions`, `symlink`, `size`, `signature-file`, `trust`,
    /// `revocation`, `signature`, `manifest`, `digest`, `target`, `abi`, `expiry`, `scope`,
    /// `rollback`, `format`, `load`, `create`, `identity`, `duplicate`, `io`.
    pub check: &'static str,
    /// A readable explanation.
    pub reason: String,
}

impl Refusal {
    fn new(path: &Path, check: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            path: path.to_path_buf(),
            check,
            reason: reason.into(),
        }
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

/// What `load_plugins` did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Loaded plugins, in file-name order.
    pub loaded: Vec<Arc<LoadedPlugin>>,
    /// Plugins that were not loaded, and why.
    pub refused: Vec<Refusal>,
}

/// A library whose bytes passed every check; the bytes are the ones that will be loaded.
pub struct Checked {
    path: PathBuf,
    bytes: Vec<u8>,
    verified: Verified,
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

/// The trust store km uses: keys built into km plus those added with `km trust add`.
pub fn trust_store(home: &KmHome) -> Result<TrustStore> {
    let dir = home.trusted_keys_dir();
    let mut store = TrustStore::load(&dir)?;
    for (label, pem) in builtin_keys() {
        store
            .add_builtin(label, pem)
            .with_context(|| format!("the built-in key {label:?} is not a valid public key"))?;
    }
    Ok(store)
}

/// Keys compiled into km (see build.rs and the README).
pub fn builtin_keys() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/builtin_keys.rs"))
}

/// The highest version seen per plugin.
pub fn seen_versions(home: &KmHome) -> Result<SeenVersions> {
    let path = home.seen_versions_file();
    Ok(SeenVersions::load(&path)?)
}

/// Records the version of a plugin that was loaded as the highest seen, for rollback protection.
pub fn record_seen(home: &KmHome, verified: &Verified) -> Result<()> {
    let manifest = verified.manifest();
    let version = semver::Version::parse(&manifest.version).with_context(|| {
        format!(
            "the version {:?} of {} is not semver",
            manifest.version, manifest.name
        )
    })?;
    let mut seen = seen_versions(home)?;
    seen.record(&manifest.name, &version)
        .with_context(|| format!("recording the version of {}", manifest.name))?;
    Ok(())
}

/// The size cap in force.
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

/// Opens a directory and applies the StrictModes test to it: owned by the user or root, not
/// writable by group or others.
pub fn open_checked_dir(dir: &Path) -> Result<OwnedFd, Refusal> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Refusal::new(dir, "io", format!("cannot open the directory: {e}")))?;
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| Refusal::new(dir, "io", format!("cannot stat the directory: {e}")))?;
    check_owner_and_mode(dir, stat.st_uid, stat.st_mode, "directory")?;
    Ok(fd)
}

fn check_owner_and_mode(path: &Path, uid: u32, mode: u32, what: &str) -> Result<(), Refusal> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me && uid != 0 {
        return Err(Refusal::new(
            path,
            "permissions",
            format!("the {what} is owned by uid {uid}, not by you (uid {me}) or root"),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(Refusal::new(
            path,
            "permissions",
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

/// Opens `name` in `dir` without following links and reads it whole, after the file checks
/// (for files besides plugins that decide trust, such as policies).
pub(crate) fn read_checked_file(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &OsStr,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    read_checked(dir_fd, dir, name, cap, what)
}

/// Opens `name` in `dir` without following links and reads it whole, after the file checks.
fn read_checked(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &OsStr,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    let path = dir.join(name);
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
                "symlink",
                format!("the {what} is a symbolic link; km loads only regular files"),
            ))
        }
        Err(rustix::io::Errno::NOENT) if what == "policy file" => {
            return Err(Refusal::new(&path, "missing", "no such policy file"))
        }
        Err(rustix::io::Errno::NOENT) if what == "signature file" => {
            return Err(Refusal::new(
                &path,
                "signature-file",
                format!("no signature: {} is missing", path.display()),
            ))
        }
        Err(e) => {
            return Err(Refusal::new(
                &path,
                "io",
                format!("cannot open the {what}: {e}"),
            ))
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| Refusal::new(&path, "io", format!("cannot stat the {what}: {e}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Refusal::new(
            &path,
            "format",
            format!("the {what} is not a regular file"),
        ));
    }
    check_owner_and_mode(&path, stat.st_uid, stat.st_mode, what)?;
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > cap {
        return Err(Refusal::new(
            &path,
            "size",
            format!("the {what} is {size} bytes, over the cap of {cap} bytes"),
        ));
    }
    // Read at most cap + 1 bytes: the file may grow between fstat and read.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refusal::new(&path, "io", format!("cannot read the {what}: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(Refusal::new(
            &path,
            "size",
            format!("the {what} grew past the cap of {cap} bytes while being read"),
        ));
    }
    Ok(bytes)
}

/// Everything `check` needs besides the file.
#[derive(Debug)]
pub struct CheckContext<'a> {
    /// Trusted keys and revocations.
    pub trust: &'a TrustStore,
    /// Highest versions seen.
    pub seen: &'a SeenVersions,
    /// Accept a version older than one seen.
    pub allow_downgrade: bool,
    /// The size cap.
    pub size_cap: u64,
}

/// Reads and verifies the library `name` in the already checked directory `dir_fd`.
pub fn check(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &OsStr,
    cx: &CheckContext<'_>,
) -> Result<Checked, Refusal> {
    let path = dir.join(name);
    let bytes = read_checked(dir_fd, dir, name, cx.size_cap, "library")?;
    let mut sig_name = name.to_os_string();
    sig_name.push(SIGNATURE_SUFFIX);
    let sig_bytes = read_checked(dir_fd, dir, &sig_name, SIGNATURE_SIZE_CAP, "signature file")?;
    let signature = SignatureFile::parse(&sig_bytes).map_err(|e| {
        Refusal::new(
            &path,
            e.check(),
            format!("{}: {e}", dir.join(&sig_name).display()),
        )
    })?;
    let policy = Policy {
        now: SystemTime::now(),
        target: target_triple(),
        abi_version: ABI_VERSION,
        allow_downgrade: cx.allow_downgrade,
        seen: Some(cx.seen),
    };
    let verified = km_signing::verify_library(&bytes, &signature, cx.trust, &policy)
        .map_err(|e| Refusal::new(&path, e.check(), e.to_string()))?;
    check_elf(&path, &bytes)?;
    Ok(Checked {
        path,
        bytes,
        verified,
    })
}

/// Refuses bytes that are not a shared library for this machine, before they reach the dynamic
/// loader (whose parser is not meant for hostile input).
fn check_elf(path: &Path, bytes: &[u8]) -> Result<(), Refusal> {
    let not = |why: &str| {
        Refusal::new(
            path,
            "format",
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

/// Where the verified bytes are handed to the dynamic loader from. Kept open for the life of
/// the process: libraries are never unloaded, and a closed memfd's number could be reused by the
/// next plugin, whose `/proc/self/fd/N` path the dynamic loader would then take for the already
/// loaded library.
enum Image {
    Memfd(OwnedFd),
    PrivateCopy(tempfile::TempDir, PathBuf),
}

impl Image {
    fn path(&self) -> PathBuf {
        match self {
            Image::Memfd(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            Image::PrivateCopy(_, path) => path.clone(),
        }
    }
}

/// A sealed memfd holding `bytes`, or an error when the kernel refuses executable memfds.
fn sealed_memfd(name: &str, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let label = format!("km-plugin:{name}");
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // Kernels with vm.memfd_noexec = 1 need MFD_EXEC to map the memfd executable; kernels older
    // than 6.3 do not know the flag and answer EINVAL, so retry without it.
    let fd = match rustix::fs::memfd_create(&label, base | MemfdFlags::EXEC) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(&label, base)?,
        Err(e) => return Err(e.into()),
    };
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(fd)
}

/// A private 0700 directory with a 0500 copy of `bytes`, for kernels that refuse executable
/// memfds (vm.memfd_noexec = 2).
fn private_copy(name: &str, bytes: &[u8]) -> std::io::Result<Image> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("km-plugin-")
        .tempdir_in(base)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let path = dir
        .path()
        .join(format!("{name}{}", std::env::consts::DLL_SUFFIX));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(&path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(Image::PrivateCopy(dir, path))
}

/// Loads the checked bytes and creates the plugin; checks it reports the signed name and version.
pub fn load(checked: Checked, host: PluginHost) -> Result<LoadedPlugin, Refusal> {
    let Checked {
        path,
        bytes,
        verified,
    } = checked;
    let manifest = verified.manifest();
    let image = match sealed_memfd(&manifest.name, &bytes) {
        Ok(fd) => Image::Memfd(fd),
        Err(_) => private_copy(&manifest.name, &bytes).map_err(|e| {
            Refusal::new(
                &path,
                "io",
                format!("cannot stage the verified bytes for loading: {e}"),
            )
        })?,
    };
    let mut header = lib_header_from_path(&image.path());
    if header.is_err() {
        if let Image::Memfd(_) = image {
            // The memfd may sit on a noexec mount or be refused by policy: try the private copy.
            if let Ok(copy) = private_copy(&manifest.name, &bytes) {
                header = lib_header_from_path(&copy.path());
                keep_alive(copy);
            }
        }
    }
    keep_alive(image);
    let header =
        header.map_err(|e| Refusal::new(&path, "load", format!("not a km plugin library: {e}")))?;
    let module: PluginModRef = root_module(header).map_err(|e| {
        Refusal::new(
            &path,
            "abi",
            format!(
                "incompatible plugin ABI (km speaks {} {}): {e}",
                <PluginModRef as RootModule>::NAME,
                ABI_VERSION
            ),
        )
    })?;
    let object = (module.new())(host.into_abi())
        .into_result()
        .map_err(|e| Refusal::new(&path, "create", format!("the plugin failed to start: {e}")))?;
    let plugin = LoadedPlugin::new(
        object,
        &path,
        verified.sha256().to_owned(),
        Signer {
            key_id: verified.key_id().to_string(),
            label: verified.key_label().to_owned(),
        },
        grants(manifest),
    );
    if plugin.name() != manifest.name || plugin.version() != manifest.version {
        return Err(Refusal::new(
            &path,
            "identity",
            format!(
                "the library calls itself {} {} but its manifest signed {} {}",
                plugin.name(),
                plugin.version(),
                manifest.name,
                manifest.version
            ),
        ));
    }
    Ok(plugin)
}

/// The root module of a library built for any minor version of km's plugin ABI major version.
///
/// abi_stable's layout check lets an older host load a newer library (the library's prefix types
/// may have more fields than the host knows), but refuses an *older* library in a newer host,
/// because the host's vtables have fields the library's lack (abi_stable_crates issue 118). km
/// must run plugins built for an older minor ABI, so a library that declares an older minor
/// version is checked the other way round: its root module's layout as the interface, km's as
/// the implementation. That proves every type the library knows (the root module, the plugin and
/// host-services vtables, every value they pass) is a field-for-field prefix of km's. A library of
/// the same or a newer minor version gets abi_stable's own check.
fn root_module(header: &abi_stable::library::LibHeader) -> Result<PluginModRef, String> {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::StableAbi;
    let theirs = header
        .version_strings()
        .parsed()
        .map_err(|e| format!("the library's ABI version is not a version: {e}"))?;
    let ours = <PluginModRef as RootModule>::VERSION_STRINGS
        .parsed()
        .map_err(|e| format!("km's ABI version is not a version: {e}"))?;
    if theirs.major != ours.major || theirs.minor >= ours.minor {
        return header
            .init_root_module::<PluginModRef>()
            .map_err(|e| e.to_string());
    }
    let layout = header
        .layout()
        .ok_or("the library carries no layout of its root module to check")?;
    check_layout_compatibility(layout, <PluginModRef as StableAbi>::LAYOUT)
        .map_err(|e| format!("built for plugin ABI {theirs}, but not a prefix of {ours}: {e}"))?;
    // SAFETY: `init_root_module_with_unchecked_layout` requires that `PluginModRef` has the
    // layout of the library's root module. The check above proved the library's layout, and that
    // of every type it reaches, a field-for-field prefix of ours. What lies past that prefix (the
    // methods and services of newer minor versions) is only ever reached through prefix-type
    // accessors, which consult the accessibility bits the library's own vtables and modules carry
    // and, for a field the library does not have, return `None` (a method's default body then
    // answers) instead of reading it.
    #[allow(unsafe_code)]
    unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
        .map_err(|e| e.to_string())
}

/// What the verified manifest grants the plugin beyond observing.
fn grants(manifest: &km_signing::Manifest) -> Grants {
    Grants {
        intercept: manifest.grants(km_signing::CAPABILITY_INTERCEPT),
        fail_open: manifest.fail_open,
    }
}

fn keep_alive(image: Image) {
    match image {
        // Deliberately leaked; see `Image`.
        Image::Memfd(fd) => std::mem::forget(fd),
        // The mapping survives the file: remove the copy and its directory now.
        Image::PrivateCopy(dir, _) => drop(dir),
    }
}

/// Verifies and loads every plugin in `options.plugins_dir`. A plugin that fails any check is
/// reported in `refused` and never mapped. Errors only when the directory itself cannot be used
/// or km's own state cannot be read.
pub fn load_plugins(options: &LoadOptions) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let dir = &options.plugins_dir;
    if !dir.exists() {
        return Ok(report);
    }
    let dir_fd = match open_checked_dir(dir) {
        Ok(fd) => fd,
        Err(refusal) => {
            report.refused.push(refusal);
            return Ok(report);
        }
    };
    let trust = trust_store(&options.home)?;
    let mut seen = seen_versions(&options.home)?;
    let names = library_names(&dir_fd, dir)?;
    let mut loaded_names = HashSet::new();
    for name in names {
        let path = dir.join(&name);
        let cx = CheckContext {
            trust: &trust,
            seen: &seen,
            allow_downgrade: options.allow_downgrade,
            size_cap: size_cap(),
        };
        let checked = match check(&dir_fd, dir, &name, &cx) {
            Ok(checked) => checked,
            Err(refusal) => {
                report.refused.push(refusal);
                continue;
            }
        };
        let manifest = checked.verified().manifest().clone();
        if options
            .only
            .as_ref()
            .is_some_and(|only| *only != manifest.name)
        {
            continue;
        }
        if !loaded_names.insert(manifest.name.clone()) {
            report.refused.push(Refusal::new(
                &path,
                "duplicate",
                format!(
                    "another library in {} is already plugin {}",
                    dir.display(),
                    manifest.name
                ),
            ));
            continue;
        }
        let data_dir = options.home.plugin_data_dir(&manifest.name);
        if let Err(e) = KmHome::ensure_private_dir(&data_dir) {
            report
                .refused
                .push(Refusal::new(&path, "io", format!("{e:#}")));
            continue;
        }
        let mut host = PluginHost::new(
            &manifest.name,
            data_dir,
            options.verbosity,
            options.api.clone(),
        )
        .with_policies(options.home.policies_dir());
        if let Some(events) = &options.events {
            host = host.with_events(events.clone());
        }
        if let Some(stdin) = &options.stdin {
            host = host.with_stdin(stdin.clone());
        }
        match load(checked, host) {
            Ok(plugin) => {
                if let Ok(version) = semver::Version::parse(&manifest.version) {
                    seen.record(&manifest.name, &version)
                        .with_context(|| format!("recording the version of {}", manifest.name))?;
                }
                report.loaded.push(Arc::new(plugin));
            }
            Err(refusal) => report.refused.push(refusal),
        }
    }
    Ok(report)
}

/// The library file names in the directory, sorted.
pub fn library_names(dir_fd: &OwnedFd, dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir_fd.as_fd())
        .with_context(|| format!("listing {}", dir.display()))?;
    while let Some(entry) = entries.read() {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if is_library_name(name) {
            names.push(name.to_os_string());
        }
    }
    names.sort();
    Ok(names)
}
