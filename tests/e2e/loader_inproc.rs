//! The loader from inside: properties that need a look at km's own process — what gets mapped is
//! the verified bytes even if the file changes afterwards, several plugins load as distinct
//! modules, and a panicking plugin returns an error value and the host carries on.
//!
//! Uses the real plugin cdylibs that `cargo build --workspace` put in target/debug, signed here
//! in process with a key made by the test (through km-signing: the point is to look inside the
//! loading process, not at km's output).
//!
//! The fallback copy (for kernels that refuse executable memfds) is tested in a child process
//! of this test binary running that one test: forcing it takes `KM_LOAD_VIA_COPY=1` and a base
//! directory in `XDG_RUNTIME_DIR`, and setting either here would change what every other test
//! of this process loads. The child watches the base directory with fanotify permission events
//! (the one `unsafe` of the e2e tests, confined to [`dir_opens`]): the loader's open of its
//! private directory waits until the test has looked at it, so its mode is seen without a race
//! although the loader removes it at once.

use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use km_abi::{Direction, Message, MessageKind};
use km_cli::home::KmHome;
use km_cli::host::{PluginHost, Verbosity};
use km_cli::loader::{self, LoadOptions};
use km_cli::verifier::Verifier;
use km_signing::{Algorithm, Claims, Manifest, PrivateKey, SignatureFile, TrustStore};
use km_tests::{chmod, plugin_lib};

struct Setup {
    _dir: tempfile::TempDir,
    home: KmHome,
    plugins: PathBuf,
    key: PrivateKey,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(&dir.path().join("home"))).expect("home");
        let plugins = home.plugins_dir();
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        chmod(home.root(), 0o700);
        chmod(&plugins, 0o700);
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("keygen");
        let mut trust = TrustStore::load(&home.trusted_keys_dir()).expect("trust store");
        trust
            .add(key.public_key(), Some("test".into()), None)
            .expect("trust key");
        Setup {
            _dir: dir,
            home,
            plugins,
            key,
        }
    }

    /// Writes `bytes` as `file` in the plugin directory, signed as `name` 1.0.0.
    fn install_bytes(&self, file: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.plugins.join(file);
        std::fs::write(&path, bytes).expect("write lib");
        chmod(&path, 0o644);
        let manifest = Manifest::describe(
            &Claims::new(name, "1.0.0", km_abi::Tier::Free),
            &self.key.public_key().key_id(),
            bytes,
            SystemTime::now(),
        )
        .expect("describe");
        SignatureFile::sign(&self.key, &manifest)
            .expect("sign")
            .write(&SignatureFile::path_for(&path))
            .expect("write sig");
        path
    }

    fn install(&self, crate_name: &str, name: &str) -> PathBuf {
        let bytes = std::fs::read(plugin_lib(crate_name)).expect("read built lib");
        self.install_bytes(
            &format!("lib{}.so", crate_name.replace('-', "_")),
            name,
            &bytes,
        )
    }

    fn host(&self, name: &str) -> PluginHost {
        let data = self.home.plugin_data_dir(name);
        KmHome::ensure_private_dir(&data).expect("data dir");
        PluginHost::new(name, data, Verbosity::Quiet, None)
    }
}

fn message(data: &[u8]) -> Message<'_> {
    Message {
        seq: 1,
        direction: Direction::Request,
        kind: MessageKind::REQUEST,
        is_error: false,
        data: data.into(),
        correlation_id: "1".into(),
        id: "1".into(),
        method: "ping".into(),
        timestamp_us: 0,
        latency_us: km_abi::abi_stable::std_types::RNone,
    }
}

#[test]
fn replacing_the_file_after_verification_does_not_change_what_is_loaded() {
    let setup = Setup::new();
    let path = setup.install("test-noop", "test-noop");
    let mut verifier = Verifier::open(&setup.home)
        .expect("verifier")
        .with_size_cap(loader::DEFAULT_SIZE_CAP);
    let checked = verifier.check_file(&path).expect("verifies");

    // Swap in another, validly signed library under the same file name.
    let other = std::fs::read(plugin_lib("test-panicky")).expect("read");
    std::fs::remove_file(&path).expect("rm");
    setup.install_bytes("libtest_noop.so", "test-panicky", &other);

    let plugin = verifier
        .load(checked, setup.host("test-noop"))
        .expect("loads");
    assert_eq!(
        plugin.name(),
        "test-noop",
        "the verified bytes were loaded, not the swapped file"
    );
    plugin
        .handle_message(&message(b"{}"))
        .expect("test-noop does not panic");

    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    assert!(
        maps.contains("memfd:km-plugin:test-noop") || maps.contains("km-plugin-"),
        "the library is mapped from a memfd or a private copy:\n{maps}"
    );
    assert!(
        !maps.contains(path.to_string_lossy().as_ref()),
        "the plugin-dir path is never mapped"
    );
}

#[test]
fn two_plugins_load_side_by_side_as_distinct_modules_and_a_panic_is_an_error_value() {
    let setup = Setup::new();
    setup.install("test-noop", "test-noop");
    setup.install("test-panicky", "test-panicky");
    setup.install("console-logger", "console-logger");
    let mut options = LoadOptions::new(setup.plugins.clone(), setup.home.clone());
    options.verbosity = Verbosity::Quiet;
    let report = loader::load_plugins(&options).expect("load");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let names: Vec<&str> = report.loaded.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["console-logger", "test-noop", "test-panicky"]);

    let panicky = &report.loaded[2];
    for _ in 0..3 {
        let failure = panicky
            .handle_message(&message(b"{}"))
            .expect_err("panics become errors");
        assert!(failure.is_panic(), "{failure}");
        assert!(
            failure.to_string().contains("panics on purpose"),
            "{failure}"
        );
    }
    assert!(
        panicky.is_disabled(),
        "a plugin that panicked is disabled for every caller (dispatcher and refresher)"
    );
    assert!(!report.loaded[1].is_disabled());
    // The host carries on, and so do the other plugins.
    report.loaded[1]
        .handle_message(&message(b"{}"))
        .expect("test-noop still works");
    let seen = std::fs::read_to_string(setup.home.seen_versions_file()).expect("seen versions");
    assert!(seen.contains("test-noop"), "{seen}");
}

/// A plugin km disabled after a panic is not called again by the subscription
/// refresher (the refresher runs on its own threads, beside the dispatcher that saw the panic).
#[test]
fn the_refresher_does_not_call_a_plugin_disabled_after_a_panic() {
    let setup = Setup::new();
    setup.install("test-panicky", "test-panicky");
    let mut options = LoadOptions::new(setup.plugins.clone(), setup.home.clone());
    options.verbosity = Verbosity::Quiet;
    let report = loader::load_plugins(&options).expect("load");
    let panicky = report.loaded.first().expect("loaded").clone();
    let config = km_cli::config::Config {
        api_key: Some("km_test_key".to_owned()),
        ..Default::default()
    };
    let runtime = km_cli::runtime::Runtime::new().expect("km's runtime");
    // Before the panic the refresher calls it (the SDK's default answer: not authorized).
    let before = km_cli::subscription::refresh_all(
        runtime.handle(),
        &setup.home,
        &config,
        std::slice::from_ref(&panicky),
        std::time::Duration::from_secs(30),
    );
    assert_ne!(before[0].outcome, "disabled", "{:?}", before[0]);
    panicky
        .handle_message(&message(b"{}"))
        .expect_err("test-panicky panics");
    assert!(panicky.is_disabled());
    let after = km_cli::subscription::refresh_all(
        runtime.handle(),
        &setup.home,
        &config,
        std::slice::from_ref(&panicky),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(after[0].outcome, "disabled", "{:?}", after[0]);
    assert!(after[0].reason.contains("panicked"), "{:?}", after[0]);
}

/// The test that runs itself in a child (see the module docs); the child sees this variable.
const COPY_CHILD: &str = "KM_TEST_PRIVATE_COPY_CHILD";

#[test]
fn the_fallback_copy_is_private_and_what_is_mapped_is_its_descriptor() {
    if std::env::var_os(COPY_CHILD).is_some() {
        return private_copy_in_this_process();
    }
    let base = tempfile::tempdir().expect("tempdir");
    chmod(base.path(), 0o700);
    let name = "loader_inproc::the_fallback_copy_is_private_and_what_is_mapped_is_its_descriptor";
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(COPY_CHILD, "1")
        .env("KM_LOAD_VIA_COPY", "1")
        .env("XDG_RUNTIME_DIR", base.path())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child test (which must run, not be filtered out) failed:\n{}",
        km_tests::describe(&out)
    );
    let left: Vec<_> = std::fs::read_dir(base.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the copy and its directory are removed: {left:?}"
    );
}

/// The child of the next test (see the module docs) sees this variable.
const FULL_COPY_CHILD: &str = "KM_TEST_PRIVATE_COPY_FULL_CHILD";

/// A private copy that cannot be written whole (the file size limit stands in for a full disk)
/// is refused, names what failed, and leaves nothing behind in the base directory: no partial
/// copy, no directory.
#[test]
fn a_copy_cut_short_is_refused_and_leaves_nothing_behind() {
    if std::env::var_os(FULL_COPY_CHILD).is_some() {
        return cut_short_copy_in_this_process();
    }
    let base = tempfile::tempdir().expect("tempdir");
    chmod(base.path(), 0o700);
    let name = "loader_inproc::a_copy_cut_short_is_refused_and_leaves_nothing_behind";
    // SIGXFSZ ignored (an ignored signal stays ignored across exec), so that a write past the
    // limit fails with EFBIG instead of killing the child.
    let out = Command::new("sh")
        .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().expect("this test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(FULL_COPY_CHILD, "1")
        .env("KM_LOAD_VIA_COPY", "1")
        .env("XDG_RUNTIME_DIR", base.path())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child test (which must run, not be filtered out) failed:\n{}",
        km_tests::describe(&out)
    );
    let left: Vec<_> = std::fs::read_dir(base.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "no partial copy and no directory are left: {left:?}"
    );
}

/// In the child: the plugin is installed first, then files are limited to 64 KiB, so that
/// only the loader's copy (a library of about a megabyte) runs into the limit.
fn cut_short_copy_in_this_process() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let setup = Setup::new();
    setup.install("test-noop", "test-noop");
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(64 * 1024),
            maximum: None,
        },
    )
    .expect("a lower file size limit");
    let mut options = LoadOptions::new(setup.plugins.clone(), setup.home.clone());
    options.verbosity = Verbosity::Quiet;
    let report = loader::load_plugins(&options).expect("load");
    assert!(
        report.loaded.is_empty(),
        "nothing loads from a partial copy"
    );
    let refusal = report.refused.first().expect("the plugin is refused");
    assert!(
        refusal.reason.contains("writing the copy"),
        "the refusal says what failed: {}",
        refusal.reason
    );
}

/// One mapping of `/proc/self/maps`: permissions, inode, path.
struct Mapping {
    perms: String,
    inode: u64,
    path: String,
}

fn maps() -> Vec<Mapping> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter_map(|line| {
            // address perms offset dev inode path (the path may hold spaces: " (deleted)")
            let mut fields = line.splitn(6, ' ');
            let (_, perms, _, _, inode) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            Some(Mapping {
                perms: perms.to_owned(),
                inode: inode.parse().ok()?,
                path: fields.next().unwrap_or("").trim_start().to_owned(),
            })
        })
        .collect()
}

/// In the child: load a real signed plugin through the private copy, and look at what the
/// loader made and what the dynamic loader mapped.
fn private_copy_in_this_process() {
    let base = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR").expect("the parent sets it"));
    let setup = Setup::new();
    let lib = setup.install("test-noop", "test-noop");
    let watch = dir_opens::Watch::start(&base);
    let mut options = LoadOptions::new(setup.plugins.clone(), setup.home.clone());
    options.verbosity = Verbosity::Quiet;
    let report = loader::load_plugins(&options).expect("load");
    let opened = watch.map(dir_opens::Watch::finish);
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let plugin = report.loaded.first().expect("test-noop loaded");
    assert_eq!(plugin.name(), "test-noop");
    plugin
        .handle_message(&message(b"{}"))
        .expect("the plugin loaded from the copy works");

    let me = rustix::process::geteuid().as_raw();
    let copy_dir = format!("{}/km-plugin-{}-", base.display(), std::process::id());
    let copy = "/test-noop.so (deleted)";
    let maps = maps();
    let mapped: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.path.starts_with(&copy_dir) && m.path.ends_with(copy))
        .collect();
    let all: Vec<&str> = maps.iter().map(|m| m.path.as_str()).collect();
    assert!(
        mapped.iter().any(|m| m.perms.contains('x')),
        "the plugin's code is mapped from the private copy in {copy_dir}*: {all:#?}"
    );
    let inode = mapped[0].inode;
    assert!(
        mapped.iter().all(|m| m.inode == inode),
        "one file: {all:#?}"
    );
    assert!(
        !all.iter().any(|p| p.contains("memfd:km-plugin:test-noop")),
        "KM_LOAD_VIA_COPY=1 loads through the copy, not a memfd: {all:#?}"
    );
    assert!(
        !all.iter().any(|p| p.starts_with(&*lib.to_string_lossy())),
        "the plugin directory's file is never mapped: {all:#?}"
    );

    // The mapped inode is a descriptor km keeps: read-only, of a file created 0500 by km and
    // no longer reachable by any path.
    let mut descriptors = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds") {
        let fd = entry.expect("fd").path();
        let Ok(target) = std::fs::read_link(&fd) else {
            continue;
        };
        if !target.to_string_lossy().starts_with(&copy_dir) {
            continue;
        }
        let stat = rustix::fs::stat(&fd).expect("stat the copy through its descriptor");
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            fd.file_name().expect("fd number").to_string_lossy()
        ))
        .expect("fdinfo");
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        descriptors.push((target, stat, flags));
    }
    assert_eq!(
        descriptors.len(),
        1,
        "one descriptor of the copy stays open (what was mapped): {descriptors:?}"
    );
    let (target, stat, flags) = &descriptors[0];
    assert_eq!(
        stat.st_ino, inode,
        "the mapping is of that descriptor's file: {target:?}"
    );
    assert_eq!(
        rustix::fs::FileType::from_raw_mode(stat.st_mode),
        rustix::fs::FileType::RegularFile
    );
    assert_eq!(
        stat.st_mode & 0o7777,
        0o500,
        "the copy is created 0500: {target:?}"
    );
    assert_eq!(stat.st_uid, me, "the copy is km's own");
    assert_eq!(stat.st_nlink, 0, "the copy has no name left: {target:?}");
    assert_eq!(
        flags & 0o3,
        0,
        "the descriptor the dynamic loader mapped is read-only (flags {flags:o})"
    );

    // The private directory, as the loader opened it to create the copy in it.
    let Some(opened) = opened else { return };
    let dirs: Vec<&dir_opens::Opened> = opened
        .iter()
        .filter(|o| o.path.to_string_lossy().starts_with(&copy_dir))
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "the loader opens one private directory: {opened:#?}"
    );
    assert!(dirs[0].is_dir, "{opened:#?}");
    assert_eq!(
        dirs[0].mode & 0o7777,
        0o700,
        "the private directory is 0700 (whatever the umask): {opened:#?}"
    );
    assert_eq!(dirs[0].uid, me, "{opened:#?}");
}

/// Opens in a directory and of its entries, seen through fanotify permission events: the
/// opening process waits until [`Watch`] has looked at what it opens, so what is seen is the
/// state at the moment of the open, however briefly it lasts.
#[allow(unsafe_code)]
mod dir_opens {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// One open: the path (as the kernel names the opened file), its type, mode and owner.
    #[derive(Debug)]
    pub(super) struct Opened {
        pub(super) path: PathBuf,
        pub(super) is_dir: bool,
        pub(super) mode: u32,
        pub(super) uid: u32,
    }

    pub(super) struct Watch {
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Vec<Opened>>,
    }

    impl Watch {
        /// Watches `dir`; `None` (with a message) where fanotify is not allowed (it needs
        /// CAP_SYS_ADMIN: root, as in CI).
        pub(super) fn start(dir: &Path) -> Option<Watch> {
            let flags = libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
            // SAFETY: fanotify_init takes two integers and returns a new descriptor or -1.
            let raw = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) };
            if raw < 0 {
                eprintln!(
                    "skipped the private directory's mode: fanotify is not allowed here ({}); \
                     CI runs the tests as root",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let fan = unsafe { OwnedFd::from_raw_fd(raw) };
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
            let mask = libc::FAN_OPEN_PERM | libc::FAN_ONDIR | libc::FAN_EVENT_ON_CHILD;
            // SAFETY: `fan` is a fanotify descriptor, `path` a NUL-terminated string that
            // outlives the call.
            let marked = unsafe {
                libc::fanotify_mark(
                    fan.as_raw_fd(),
                    libc::FAN_MARK_ADD,
                    mask,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                )
            };
            assert_eq!(
                marked,
                0,
                "fanotify_mark {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
            let stop = Arc::new(AtomicBool::new(false));
            let stopping = Arc::clone(&stop);
            let thread = std::thread::spawn(move || answer(&fan, &stopping));
            Some(Watch { stop, thread })
        }

        /// Stops watching, and returns every open seen.
        pub(super) fn finish(self) -> Vec<Opened> {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.join().expect("the watch thread")
        }
    }

    /// Reads events until told to stop, allowing every open after looking at what it opens.
    fn answer(fan: &OwnedFd, stop: &AtomicBool) -> Vec<Opened> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match rustix::io::read(fan, &mut buf) {
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                    if stop.load(Ordering::SeqCst) {
                        return seen;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => panic!("reading fanotify events: {e}"),
            };
            let mut at = 0;
            // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
            // metadata_len u16, mask u64, fd i32, pid i32.
            while at + 24 <= n {
                let field = |from: usize, len: usize| &buf[at + from..at + from + len];
                let len = u32::from_ne_bytes(field(0, 4).try_into().expect("4 bytes")) as usize;
                assert_eq!(
                    buf[at + 4],
                    libc::FANOTIFY_METADATA_VERSION,
                    "fanotify version"
                );
                let fd = i32::from_ne_bytes(field(16, 4).try_into().expect("4 bytes"));
                if fd >= 0 {
                    // SAFETY: the kernel opened `fd` for this event and hands it to us.
                    let opened = unsafe { OwnedFd::from_raw_fd(fd) };
                    let stat = rustix::fs::fstat(&opened).expect("fstat the opened file");
                    seen.push(Opened {
                        path: std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default(),
                        is_dir: rustix::fs::FileType::from_raw_mode(stat.st_mode)
                            == rustix::fs::FileType::Directory,
                        mode: stat.st_mode,
                        uid: stat.st_uid,
                    });
                    // struct fanotify_response: fd i32, response u32.
                    let mut response = [0u8; 8];
                    response[..4].copy_from_slice(&fd.to_ne_bytes());
                    response[4..].copy_from_slice(&libc::FAN_ALLOW.to_ne_bytes());
                    rustix::io::write(fan, &response).expect("allow the open");
                }
                at += len.max(24);
            }
        }
    }
}
