//! The loader from inside: properties that need a look at km's own process — what gets mapped is
//! the verified bytes even if the file changes afterwards, several plugins load as distinct
//! modules, and a panicking plugin returns an error value and the host carries on.
//!
//! Uses the real plugin cdylibs that `cargo build --workspace` put in target/debug, signed here
//! in process with a key made by the test (through km-signing: the point is to look inside the
//! loading process, not at km's output).

use std::path::PathBuf;
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
