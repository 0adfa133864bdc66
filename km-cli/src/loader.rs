//! Verify, then load exactly the verified bytes.
//!
//! The checks are the [`Verifier`]'s (see [`crate::verifier`]): a plugin library is opened
//! without following links and checked like ssh's StrictModes (regular file, owned by the user
//! or root, not writable by group or others, under a size cap, in a directory that passes the
//! same test); its bytes are read once, hashed and checked against the signed manifest beside it
//! ([`km_signing::verify_library`], which returns the proof type [`km_signing::Verified`]). This module maps
//! what the verifier accepted: those same bytes, never the path, are handed to the dynamic
//! loader: on Linux through a sealed memfd opened as `/proc/self/fd/N`; where executable memfds
//! are refused, through a private copy created 0700 from the start in a checked base directory
//! and opened as `/proc/self/fd/N` of the descriptor km wrote it through. Replacing the file on
//! disk after it was verified therefore cannot change what gets loaded.
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
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, RootModule};
use anyhow::Result;
use km_abi::{PluginModRef, ABI_VERSION};
use km_signing::TrustStore;

use crate::events::EventBus;
use crate::gateway::{Grants, LoadedPlugin, Signer};
use crate::home::KmHome;
use crate::host::{ApiTransport, PluginHost, StdinOnce, Verbosity};
pub use crate::verifier::{
    builtin_keys, is_library_name, size_cap, Check, Checked, Refusal, Verifier, DEFAULT_SIZE_CAP,
    SIGNATURE_SUFFIX,
};

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

/// What `load_plugins` did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Loaded plugins, in file-name order.
    pub loaded: Vec<Arc<LoadedPlugin>>,
    /// Plugins that were not loaded, and why.
    pub refused: Vec<Refusal>,
    /// What went wrong without stopping a plugin (also printed on stderr): a rollback record
    /// that could not be written.
    pub warnings: Vec<String>,
}

/// The trust store km uses: keys built into km plus those added with `km trust add`, after the
/// StrictModes checks of [`Verifier::open`].
pub fn trust_store(home: &KmHome) -> Result<TrustStore> {
    Ok(Verifier::open(home)?.trust().clone())
}

/// Where the verified bytes are handed to the dynamic loader from: a descriptor, always. Kept
/// open for the life of the process: libraries are never unloaded, and a closed descriptor's
/// number could be reused by the next plugin, whose `/proc/self/fd/N` path the dynamic loader
/// would then take for the already loaded library.
struct Image(OwnedFd);

impl Image {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

/// `KM_LOAD_VIA_COPY=1` skips the memfd and loads through the private copy, as on kernels that
/// refuse executable memfds (`vm.memfd_noexec = 2`): for tests of that path, and for a kernel
/// whose memfd refusal km would not detect.
const ENV_LOAD_VIA_COPY: &str = "KM_LOAD_VIA_COPY";

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

/// The base directory of private copies: `XDG_RUNTIME_DIR` (per user, 0700 by the spec), else
/// the temporary directory.
fn copy_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// A private copy of `bytes` for kernels that refuse executable memfds: a directory created
/// 0700 (never briefly more open) in a base directory that passes the StrictModes test of a
/// directory on the way (owned by you or root; writable by others only when sticky, like
/// `/tmp`), a file in it created exclusively 0500 without following links, written through
/// that descriptor and reopened read-only through `/proc/self/fd` of it: what the dynamic
/// loader maps is the inode km wrote, whatever the path holds by then. File and directory are
/// removed at once; the mapping outlives them.
fn private_copy(name: &str, bytes: &[u8]) -> Result<Image, Refusal> {
    use rustix::fs::{Mode, OFlags};
    let base = copy_base();
    let refuse = |what: &str, e: &dyn fmt::Display| {
        Refusal::new(
            &base,
            Check::Io,
            format!("cannot stage the verified bytes for loading ({what}): {e}"),
        )
    };
    crate::strict::check_copy_base(&base)?;
    let base_fd = rustix::fs::open(
        &base,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refuse("opening the base directory", &e))?;
    let mut attempt = 0u32;
    let dir_name = loop {
        let candidate = format!("km-plugin-{}-{:08x}", std::process::id(), rand_u32(attempt));
        match rustix::fs::mkdirat(&base_fd, candidate.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => break candidate,
            Err(rustix::io::Errno::EXIST) if attempt < 16 => attempt += 1,
            Err(e) => return Err(refuse("creating a private directory", &e)),
        }
    };
    let result = (|| {
        let dir_fd = rustix::fs::openat(
            &base_fd,
            dir_name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| refuse("opening the private directory", &e))?;
        let file_name = format!("{name}{}", std::env::consts::DLL_SUFFIX);
        let fd = rustix::fs::openat(
            &dir_fd,
            file_name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o500),
        )
        .map_err(|e| refuse("creating the copy", &e))?;
        let staged = (|| {
            let mut file = File::from(fd);
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| refuse("writing the copy", &e))?;
            let written = OwnedFd::from(file);
            // A read-only descriptor of the same inode: the dynamic loader maps it through
            // /proc/self/fd, which names this open file, not a path that could be swapped.
            rustix::fs::open(
                format!("/proc/self/fd/{}", written.as_raw_fd()),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| refuse("reopening the copy", &e))
        })();
        // The name goes whether staging worked or not: a copy cut short by a full disk must not
        // stay behind (nor keep its directory from being removed below).
        let _ = rustix::fs::unlinkat(&dir_fd, file_name.as_str(), rustix::fs::AtFlags::empty());
        Ok(Image(staged?))
    })();
    let _ = rustix::fs::unlinkat(&base_fd, dir_name.as_str(), rustix::fs::AtFlags::REMOVEDIR);
    result
}

/// A number for a directory name that another process is unlikely to have taken; uniqueness is
/// enforced by `mkdirat` failing on an existing name, not by this.
fn rand_u32(attempt: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ attempt.wrapping_mul(0x9e37_79b9)
}

/// How this machine will map verified plugin bytes, as `km doctor` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPath {
    /// Sealed, executable memfds work: nothing of a plugin touches the disk.
    Memfd,
    /// Through a private copy in `base` (which works), because of `why`.
    PrivateCopy {
        /// The base directory of the copies.
        base: PathBuf,
        /// Why memfds are not used.
        why: String,
    },
}

/// Finds out, with a page of zeros staged exactly as [`map`] stages a library and mapped
/// executable, whether plugins will load from a sealed memfd, or else from a private copy;
/// `Err` when neither works (no plugin can load).
pub fn probe_map_path() -> Result<MapPath, Refusal> {
    let page = vec![0u8; 4096];
    let why = if std::env::var_os(ENV_LOAD_VIA_COPY).is_some_and(|v| v == "1") {
        format!("{ENV_LOAD_VIA_COPY}=1 is set")
    } else {
        match sealed_memfd("probe", &page).and_then(|fd| map_executable(&fd, page.len())) {
            Ok(()) => return Ok(MapPath::Memfd),
            Err(e) => format!("executable memfds are refused here ({e})"),
        }
    };
    let base = copy_base();
    let copy = private_copy("probe", &page)?;
    map_executable(&copy.0, page.len()).map_err(|e| {
        Refusal::new(
            &base,
            Check::Load,
            format!(
                "{why}, and a private copy in {} cannot be mapped executable either ({e}): \
                 no plugin can load. Point XDG_RUNTIME_DIR at a directory of yours on a file \
                 system mounted without noexec",
                base.display()
            ),
        )
    })?;
    Ok(MapPath::PrivateCopy { base, why })
}

/// Maps `len` bytes of `fd` readable and executable, and unmaps them: the kernel's answer to
/// whether the dynamic loader could map a library from it (noexec mounts, `vm.memfd_noexec`,
/// security modules all refuse here).
fn map_executable(fd: &OwnedFd, len: usize) -> std::io::Result<()> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh private mapping at an address the kernel picks (no MAP_FIXED), so no
    // existing memory is replaced; it is neither read nor executed, and it is unmapped right
    // away with the pointer and length mmap returned and was given.
    #[allow(unsafe_code)]
    unsafe {
        let ptr = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::EXEC,
            MapFlags::PRIVATE,
            fd,
            0,
        )?;
        rustix::mm::munmap(ptr, len)?;
    }
    Ok(())
}

/// Maps checked bytes and creates the plugin; checks it reports the signed name and version.
/// Only the [`Verifier`] calls this (its `load` also records the version as seen).
pub(crate) fn map(checked: Checked, host: PluginHost) -> Result<LoadedPlugin, Refusal> {
    let Checked {
        path,
        bytes,
        verified,
    } = checked;
    let manifest = verified.manifest();
    let via_copy = std::env::var_os(ENV_LOAD_VIA_COPY).is_some_and(|v| v == "1");
    let memfd = if via_copy {
        None
    } else {
        sealed_memfd(&manifest.name, &bytes).ok().map(Image)
    };
    let header = match memfd {
        Some(image) => {
            let header = lib_header_from_path(&image.path());
            keep_alive(image);
            match header {
                Ok(header) => Ok(header),
                // The memfd may sit on a noexec mount or be refused by policy: try the copy.
                Err(_) => {
                    let copy = private_copy(&manifest.name, &bytes).map_err(|r| r.about(&path))?;
                    let header = lib_header_from_path(&copy.path());
                    keep_alive(copy);
                    header
                }
            }
        }
        None => {
            let copy = private_copy(&manifest.name, &bytes).map_err(|r| r.about(&path))?;
            let header = lib_header_from_path(&copy.path());
            keep_alive(copy);
            header
        }
    };
    let header = header
        .map_err(|e| Refusal::new(&path, Check::Load, format!("not a km plugin library: {e}")))?;
    let module: PluginModRef = root_module(header).map_err(|e| {
        Refusal::new(
            &path,
            Check::Abi,
            format!(
                "incompatible plugin ABI (km speaks {} {}): {e}",
                <PluginModRef as RootModule>::NAME,
                ABI_VERSION
            ),
        )
    })?;
    let object = (module.new())(host.into_abi()).into_result().map_err(|e| {
        Refusal::new(
            &path,
            Check::Create,
            format!("the plugin failed to start: {e}"),
        )
    })?;
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
            Check::Identity,
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

/// Deliberately leaked; see [`Image`].
fn keep_alive(image: Image) {
    std::mem::forget(image.0);
}

/// Verifies and loads every plugin in `options.plugins_dir` through one [`Verifier`]. A plugin
/// that fails any check is reported in `refused` and never mapped. Errors only when km's own
/// files cannot be used (StrictModes, an unreadable trust store).
pub fn load_plugins(options: &LoadOptions) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let dir = &options.plugins_dir;
    if !dir.exists() {
        return Ok(report);
    }
    let mut verifier = Verifier::open(&options.home)?.allow_downgrade(options.allow_downgrade);
    // The directory is opened here and each library checked in the loop (what
    // `Verifier::check_dir` does in one go), so that a plugin's load time covers its checks too:
    // reading and verifying the bytes is most of what a user waits for.
    let plugins = match verifier.open_dir(dir) {
        Ok(plugins) => plugins,
        Err(refusal) if refusal.check == Check::Missing => return Ok(report),
        Err(refusal) => {
            crate::telemetry::plugin_refused(&refusal.path, refusal.check, &refusal.reason);
            report.refused.push(refusal);
            return Ok(report);
        }
    };
    // One identity for the installation, shared by its plugins; made at their first request.
    let device = crate::device::DeviceIdentity::new(&options.home);
    let mut loaded_names = HashSet::new();
    for name in plugins.names() {
        let started = std::time::Instant::now();
        let checked = match verifier.check_in(&plugins, name) {
            Ok(checked) => checked,
            Err(refusal) => {
                report.refused.push(refusal);
                continue;
            }
        };
        let path = checked.path().to_path_buf();
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
                Check::Duplicate,
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
                .push(Refusal::new(&path, Check::Io, format!("{e:#}")));
            continue;
        }
        let mut host = PluginHost::new(
            &manifest.name,
            data_dir,
            options.verbosity,
            options.api.clone(),
        )
        .with_device(device.clone())
        .with_policies(options.home.policies_dir());
        if let Some(events) = &options.events {
            host = host.with_events(events.clone());
        }
        if let Some(stdin) = &options.stdin {
            host = host.with_stdin(stdin.clone());
        }
        match verifier.load(checked, host) {
            Ok(plugin) => {
                crate::telemetry::plugin_loaded(&manifest.name, started.elapsed());
                report.loaded.push(Arc::new(plugin));
            }
            Err(refusal) => report.refused.push(refusal),
        }
    }
    for refusal in &report.refused {
        crate::telemetry::plugin_refused(&refusal.path, refusal.check, &refusal.reason);
    }
    report.warnings = verifier.take_warnings();
    Ok(report)
}
