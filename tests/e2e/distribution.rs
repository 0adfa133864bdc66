//! Distribution, end to end: customer builds made by the real `km-sign build-plugin`,
//! `.kmpkg` packages made by `km-sign pack`, installed, updated and removed by the real `km`
//! from files and from the reference `km-api-server` on loopback. Every refused package leaves
//! the plugin installed before exactly as it was.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use km_tests::{
    chmod, command, describe, km_bin, lib_file_name, plugin_lib, run_ok, ApiServer, Customer, KmEnv,
};
use serde_json::Value;

const ALICE: Customer = Customer {
    id: "cust_alice",
    api_key: "km_live_alice_dist_0123456789",
};
const BOB: Customer = Customer {
    id: "cust_bob",
    api_key: "km_live_bob_dist_0123456789",
};

/// The reference API with Alice and Bob on Pro, serving the packages in `dir/served`.
fn start_api(dir: &Path) -> ApiServer {
    ApiServer::builder(dir)
        .customers(&[(&ALICE, "pro"), (&BOB, "pro")])
        .plugins_dir(&dir.join("served"))
        .start()
}

/// Signs a copy of console-logger as `version` with `key` and packs it; returns the package.
fn package(env: &KmEnv, key: &Path, version: &str) -> PathBuf {
    let work = env
        .dir
        .path()
        .join(format!("pkg-{version}-{}", key.display().to_string().len()));
    std::fs::create_dir_all(&work).expect("work dir");
    let lib = work.join(lib_file_name("console_logger"));
    std::fs::copy(plugin_lib("console-logger"), &lib).expect("copy");
    chmod(&lib, 0o644);
    env.sign_with(&lib, key, "console-logger", version, "free", &[]);
    let pkg = work.join(format!("console-logger-{version}.kmpkg"));
    run_ok(env.km_sign().args(["pack", "--out"]).arg(&pkg).arg(&lib));
    pkg
}

fn installed_lib(env: &KmEnv) -> PathBuf {
    env.plugins.join(lib_file_name("console_logger"))
}

/// The plugin directory's listing, and the installed library's bytes.
fn snapshot(env: &KmEnv) -> (Vec<String>, Vec<u8>, Vec<u8>) {
    let mut names: Vec<String> = std::fs::read_dir(&env.plugins)
        .expect("plugins dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let lib = installed_lib(env);
    let bytes = std::fs::read(&lib).unwrap_or_default();
    let sig = std::fs::read(km_signing::SignatureFile::path_for(&lib)).unwrap_or_default();
    (names, bytes, sig)
}

fn install(env: &KmEnv, what: &str) -> Output {
    env.km()
        .args(["install-plugin", what])
        .stdin(Stdio::null())
        .output()
        .expect("km runs")
}

/// `km install-plugin PKG` with a file size limit (RLIMIT_FSIZE) of `limit` bytes and SIGXFSZ
/// ignored, so that a write past the limit fails with EFBIG instead of killing km. The limit is
/// set by `sh`, which then execs km (an ignored signal stays ignored across exec): this crate
/// has no unsafe code for a `pre_exec`.
fn install_with_file_size_limit(env: &KmEnv, pkg: &Path, limit: u64) -> Output {
    // `ulimit -f` counts 512-byte blocks in POSIX shells (dash; bash when run as sh).
    let script = format!(r#"trap "" XFSZ; ulimit -f {}; exec "$0" "$@""#, limit / 512);
    command(Path::new("/bin/sh"), &env.home)
        .arg("-c")
        .arg(script)
        .arg(km_bin())
        .arg("install-plugin")
        .arg(pkg)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs")
}

/// `km verify-plugin --json LIB`: (exit code, report).
fn verify(env: &KmEnv, lib: &Path) -> (i32, Value) {
    let out = env
        .km()
        .args(["verify-plugin", "--json"])
        .arg(lib)
        .output()
        .expect("km runs");
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}", describe(&out)));
    (out.status.code().unwrap_or(-1), reports[0].clone())
}

fn assert_still_installed(env: &KmEnv, before: &(Vec<String>, Vec<u8>, Vec<u8>), version: &str) {
    assert_eq!(&snapshot(env), before, "the plugin directory changed");
    let (code, report) = verify(env, &installed_lib(env));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["version"], version, "{report:#}");
}

/// Writes a tar.gz with the given raw entry names (bypassing the tar crate's own path checks).
fn evil_package(path: &Path, entries: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).expect("create");
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(bytes.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append(&header, *bytes).expect("append");
        }
        tar.finish().expect("finish");
    }
    gz.finish().expect("gz");
}

fn build_for(env: &KmEnv, server: &ApiServer, customer: &Customer, out_dir: &Path) -> Output {
    let mut cmd = env.km_sign();
    cmd.args([
        "build-plugin",
        "--plugin",
        "api-logger",
        "--customer",
        customer.id,
    ])
    .args(["--tier", "pro", "--version", "1.0.0"])
    .arg("--customer-token")
    .arg(customer.customer_token())
    .arg("--key")
    .arg(env.key.with_extension("key"))
    .arg("--api-public-key")
    .arg(&server.public_key_file)
    .arg("--out-dir")
    .arg(out_dir)
    .arg(plugin_lib("api-logger"));
    run_ok(&mut cmd)
}

fn built_files(out_dir: &Path) -> (PathBuf, PathBuf) {
    let mut lib = None;
    let mut pkg = None;
    for entry in std::fs::read_dir(out_dir).expect("out dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".kmpkg") {
            pkg = Some(path);
        } else if name.ends_with(std::env::consts::DLL_SUFFIX) {
            lib = Some(path);
        }
    }
    (lib.expect("a built library"), pkg.expect("a built package"))
}

fn refresh_record(env: &KmEnv) -> (Value, Output) {
    let (_, record, output) = env.plugin_refresh("api-logger");
    (record, output)
}

fn init(env: &KmEnv, server: &ApiServer, api_key: &str) {
    env.init(api_key, &server.url);
}

#[test]
fn a_customer_build_authenticates_for_its_customer_and_degrades_for_another() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path());
    let out_dir = env.dir.path().join("build-alice");
    let output = build_for(&env, &server, &ALICE, &out_dir);
    let (lib, pkg) = built_files(&out_dir);
    let lib_name = lib
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        lib_name.starts_with(&format!(
            "{}km-plugin-api-logger-",
            std::env::consts::DLL_PREFIX
        )),
        "{lib_name}"
    );
    assert!(!lib_name.contains(ALICE.id));
    assert!(km_signing::SignatureFile::path_for(&lib).exists());
    // Nothing in clear text: not in the files, not on stderr.
    let stamped = std::fs::read(&lib).expect("built lib");
    for secret in [ALICE.api_key, "ct-cust_alice", ALICE.id] {
        let hay = String::from_utf8_lossy(&stamped);
        assert!(!hay.contains(secret), "{secret} in clear in the library");
        assert!(!String::from_utf8_lossy(&std::fs::read(&pkg).expect("pkg")).contains(secret));
        if secret != ALICE.id {
            assert!(
                !String::from_utf8_lossy(&output.stderr).contains(secret),
                "{}",
                describe(&output)
            );
        }
    }
    // At the credentials level, with the real stamped bytes.
    let offset = km_plugin_sdk::credentials::find_region(&stamped).expect("one region");
    let region = &stamped[offset..offset + km_plugin_sdk::credentials::REGION_SIZE];
    // They open with the build key of Alice's secret (what the API hands her, wrapped for her
    // API key), not with Bob's.
    let info = km_plugin_sdk::credentials::region_info(region).expect("info");
    let key_of = |secret: &str| km_plugin_sdk::credentials::build_key(secret, &info.build_id);
    let creds = km_plugin_sdk::credentials::open(region, &key_of(&ALICE.customer_token()))
        .expect("opens for Alice");
    assert_eq!(creds.customer_id, ALICE.id);
    assert_eq!(
        km_plugin_sdk::credentials::open(region, &key_of(&BOB.customer_token())),
        Err(km_plugin_sdk::credentials::CredentialsError::WrongKeyOrTampered)
    );
    assert_eq!(info.api_public_key.to_vec(), server.public_key);

    // Installed from its package, the full round trip through the reference API.
    let out = install(&env, &pkg.display().to_string());
    assert!(out.status.success(), "{}", describe(&out));
    init(&env, &server, ALICE.api_key);
    let (record, output) = refresh_record(&env);
    assert_eq!(
        record["authorized"],
        true,
        "{record:#}\n{}",
        describe(&output)
    );
    init(&env, &server, BOB.api_key);
    let (record, output) = refresh_record(&env);
    assert_eq!(
        record["authorized"],
        false,
        "{record:#}\n{}",
        describe(&output)
    );
    assert!(
        record["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("another customer"),
        "{record:#}"
    );

    // Uninstalling removes the library, its signature and the auth record.
    let auth = env.home.join("state").join("auth").join("api-logger.json");
    assert!(auth.exists(), "plugin-refresh records the outcome");
    run_ok(env.km().args(["uninstall-plugin", "api-logger", "--yes"]));
    assert!(!auth.exists());
    assert!(std::fs::read_dir(&env.plugins)
        .expect("dir")
        .next()
        .is_none());
}

#[test]
fn build_plugin_refuses_a_library_without_a_credentials_region() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path());
    let out_dir = env.dir.path().join("build");
    let output = env
        .km_sign()
        .args([
            "build-plugin",
            "--plugin",
            "console-logger",
            "--customer",
            ALICE.id,
        ])
        .args(["--tier", "pro", "--customer-token", "t"])
        .arg("--key")
        .arg(env.key.with_extension("key"))
        .arg("--api-public-key")
        .arg(&server.public_key_file)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg(plugin_lib("console-logger"))
        .output()
        .expect("km-sign runs");
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no credentials region"),
        "{}",
        describe(&output)
    );
    assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).expect("dir").next().is_none());
}

#[test]
fn a_stamped_library_changed_after_signing_is_refused() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path());
    let out_dir = env.dir.path().join("build");
    build_for(&env, &server, &ALICE, &out_dir);
    let (lib, _) = built_files(&out_dir);
    let (code, report) = verify(&env, &lib);
    assert_eq!(code, 0, "{report:#}");
    let mut bytes = std::fs::read(&lib).expect("lib");
    let offset = km_plugin_sdk::credentials::find_region(&bytes).expect("region");
    bytes[offset + 100] ^= 0x55;
    std::fs::write(&lib, &bytes).expect("tamper");
    let (code, report) = verify(&env, &lib);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["check"], "digest", "{report:#}");
    // Packed as it is now, km install-plugin refuses it too.
    let pkg = env.dir.path().join("tampered.kmpkg");
    run_ok(env.km_sign().args(["pack", "--out"]).arg(&pkg).arg(&lib));
    let out = install(&env, &pkg.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(std::fs::read_dir(&env.plugins)
        .expect("dir")
        .next()
        .is_none());
}

#[test]
fn bad_packages_are_refused_and_the_installed_plugin_still_verifies() {
    let env = KmEnv::new();
    let good = package(&env, &env.key, "1.0.0");
    let out = install(&env, &good.display().to_string());
    assert!(out.status.success(), "{}", describe(&out));
    let before = snapshot(&env);
    assert_eq!(before.0.len(), 2, "{:?}", before.0);

    // A bad signature: signed by a key nobody trusts.
    let rogue = env.dir.path().join("keys").join("rogue");
    env.keygen(&rogue);
    let bad = package(&env, &rogue, "2.0.0");
    let out = install(&env, &bad.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trust"),
        "{}",
        describe(&out)
    );
    assert_still_installed(&env, &before, "1.0.0");

    // A truncated download (file).
    let newer = package(&env, &env.key, "2.0.0");
    let bytes = std::fs::read(&newer).expect("pkg");
    let cut = env.dir.path().join("cut.kmpkg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("cut");
    let out = install(&env, &cut.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_still_installed(&env, &before, "1.0.0");

    // A tar entry escaping the target directory, and an absolute one.
    for name in ["../escaped.so", "/tmp/km-dist-escaped.so"] {
        let evil = env.dir.path().join("evil.kmpkg");
        evil_package(&evil, &[(name, b"\x7fELF not really")]);
        let out = install(&env, &evil.display().to_string());
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unsafe path"),
            "{}",
            describe(&out)
        );
        assert_still_installed(&env, &before, "1.0.0");
    }
    assert!(!env.home.join("escaped.so").exists());
    assert!(!Path::new("/tmp/km-dist-escaped.so").exists());

    // An install that fails while writing changes nothing and leaves no temporary file
    // behind: the write of the new library stops with EFBIG partway, the file size limit being
    // far below its size. (A read-only plugin directory would fail earlier, at creating the
    // temporary file, and not at all for root, as CI runs.)
    let limit = 64 * 1024;
    let size = std::fs::metadata(plugin_lib("console-logger"))
        .expect("the built library")
        .len();
    assert!(size > 4 * limit, "the library ({size} bytes) is too small");
    let out = install_with_file_size_limit(&env, &newer, limit);
    // 2: an error, not a refusal (1).
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "writing a temporary file in {}",
            env.plugins.display()
        )) && stderr.contains("File too large"),
        "{}",
        describe(&out)
    );
    // The snapshot lists every file of the directory, dot files included.
    assert_still_installed(&env, &before, "1.0.0");
    let out = run_ok(env.km().args(["list-plugins", "--json"]));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let paths: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [installed_lib(&env).display().to_string()],
        "{listed:#}"
    );

    // What an install killed before its renames leaves (a temporary file) is never loaded,
    // and the next install clears it away.
    std::fs::write(env.plugins.join(".km-install-interrupted"), b"partial").expect("partial");
    let out = env
        .km()
        .args(["list-plugins", "--json"])
        .output()
        .expect("km");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("interrupted"));

    // A downgrade is refused unless asked for.
    run_ok(&mut {
        let mut c = env.km();
        c.args(["install-plugin"]).arg(&newer).stdin(Stdio::null());
        c
    });
    let older = package(&env, &env.key, "0.9.0");
    let out = install(&env, &older.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rollback"),
        "{}",
        describe(&out)
    );
    let out = env
        .km()
        .args(["install-plugin", "--allow-downgrade"])
        .arg(&older)
        .output()
        .expect("km runs");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!env.plugins.join(".km-install-interrupted").exists());
    assert_eq!(snapshot(&env).0.len(), 2);
}

#[test]
fn install_by_url_and_name_update_and_uninstall_through_the_reference_api() {
    let env = KmEnv::new();
    let server = start_api(env.dir.path());
    let served = server.plugins_dir();
    let v1 = package(&env, &env.key, "1.0.0");
    std::fs::copy(&v1, served.join("console-logger-1.0.0.kmpkg")).expect("serve");

    // By URL, with progress on stderr.
    let url = format!(
        "{}/api/plugins/download/console-logger-1.0.0.kmpkg",
        server.url
    );
    let out = install(&env, &url);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("downloading") && stderr.contains("bytes"),
        "{stderr}"
    );
    assert_eq!(verify(&env, &installed_lib(&env)).1["version"], "1.0.0");

    // A truncated download by URL is refused; 1.0.0 stays.
    let before = snapshot(&env);
    let v2 = package(&env, &env.key, "2.0.0");
    let bytes = std::fs::read(&v2).expect("v2");
    std::fs::write(served.join("cut.kmpkg"), &bytes[..bytes.len() / 2]).expect("cut");
    let out = install(
        &env,
        &format!("{}/api/plugins/download/cut.kmpkg", server.url),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_still_installed(&env, &before, "1.0.0");

    // Update: the API offers a package signed by an untrusted key: refused, 1.0.0 stays.
    init(&env, &server, ALICE.api_key);
    let rogue = env.dir.path().join("keys").join("rogue");
    env.keygen(&rogue);
    let rogue_pkg = package(&env, &rogue, "3.0.0");
    std::fs::copy(&rogue_pkg, served.join("console-logger")).expect("serve");
    let out = env
        .km()
        .args(["update-plugin", "console-logger"])
        .output()
        .expect("km");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_still_installed(&env, &before, "1.0.0");

    // Update to a good 2.0.0: replaced, verified.
    std::fs::copy(&v2, served.join("console-logger")).expect("serve");
    let out = env
        .km()
        .args(["update-plugin", "--all"])
        .output()
        .expect("km");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(verify(&env, &installed_lib(&env)).1["version"], "2.0.0");
    let out = env
        .km()
        .args(["update-plugin", "console-logger"])
        .output()
        .expect("km");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("up to date"),
        "{}",
        describe(&out)
    );

    // Uninstall leaves nothing behind.
    let data = env
        .home
        .join("state")
        .join("plugins")
        .join("console-logger");
    let _ = std::fs::create_dir_all(&data);
    let out = env
        .km()
        .args(["uninstall-plugin", "console-logger", "--yes"])
        .output()
        .expect("km");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(std::fs::read_dir(&env.plugins)
        .expect("dir")
        .next()
        .is_none());
    let out = env
        .km()
        .args(["uninstall-plugin", "console-logger", "--yes"])
        .output()
        .expect("km");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // By name, from the API's download endpoint.
    let out = install(&env, "console-logger");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(verify(&env, &installed_lib(&env)).1["version"], "2.0.0");
}
