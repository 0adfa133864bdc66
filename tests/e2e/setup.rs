//! `km setup` through the real km, the way a new user runs it: a fresh `HOME` and nothing else
//! in the environment but PATH. The bundled free plugins beside the binary end up installed and
//! verified; a second run writes nothing; the local key it makes can vouch for no other plugin;
//! a tampered installed copy is replaced by the bundled one, and a newer installed version is
//! kept.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use km_tests::{describe, km_sign_bin, lib_file_name, plugin_lib, FreshHome};

/// Every file and directory under `root`: (mode, size, mtime in ns, contents for files).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i128, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            let contents = if meta.is_file() {
                std::fs::read(&path).expect("read")
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            out.insert(path, (meta.mode(), meta.len(), mtime, contents));
        }
    }
    out
}

#[test]
fn a_fresh_home_gets_the_free_plugins_installed_and_verified_and_a_second_run_changes_nothing() {
    let fresh = FreshHome::new();
    let out = fresh.km(&["setup"]);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("made the local signing key"), "{said}");
    for name in ["console-logger", "tool-guard"] {
        assert!(
            said.contains(&format!("✓ {name} 1.0.0 (Free): installed")),
            "{said}"
        );
    }
    // Premium plugins are not installed, and the user is told how to get them.
    assert!(said.contains("km init --api-key"), "{said}");

    let km_home = fresh.km_home();
    let key = km_home.join("keys").join("local-signing.pem");
    let mode = std::fs::metadata(&key).expect("the local key").mode() & 0o777;
    assert_eq!(mode, 0o600, "the local signing key is private");
    let keys_mode = std::fs::metadata(km_home.join("keys"))
        .expect("keys/")
        .mode()
        & 0o777;
    assert_eq!(keys_mode, 0o700);

    let listed = fresh.km(&["list-plugins"]);
    assert!(listed.status.success(), "{}", describe(&listed));
    let list = String::from_utf8_lossy(&listed.stdout);
    for name in ["console-logger", "tool-guard"] {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(" {name} v1.0.0")))
            .unwrap_or_else(|| panic!("{name} is listed: {list}"));
        assert!(line.contains("verified"), "{line}");
        assert!(line.trim_start().starts_with('✓'), "{line}");
    }
    assert!(
        list.contains("can: observe, intercept"),
        "tool-guard may intercept: {list}"
    );

    // The installed plugins load and run: a monitor session through cat with console-logger.
    let mut monitor = fresh.command();
    monitor
        .args(["monitor", "--lossless", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = monitor.spawn().expect("km monitor");
    let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(line).expect("write");
    }
    let session = child.wait_with_output().expect("km monitor ends");
    assert!(session.status.success(), "{}", describe(&session));
    assert_eq!(session.stdout, line, "the line is relayed unchanged");
    let log = String::from_utf8_lossy(&session.stderr);
    assert!(
        log.contains("ping"),
        "console-logger logged the request: {log}"
    );

    let before = tree(&km_home);
    let again = fresh.km(&["setup"]);
    assert!(again.status.success(), "{}", describe(&again));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(!said.contains("made the local signing key"), "{said}");
    assert!(said.contains("unchanged"), "{said}");
    let after = tree(&km_home);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "a second setup adds or removes no file"
    );
    for (path, was) in &before {
        assert_eq!(
            was,
            &after[path],
            "{} changed on the second setup",
            path.display()
        );
    }
}

#[test]
fn the_local_key_vouches_for_no_plugin_outside_the_bundled_names() {
    let fresh = FreshHome::new();
    let out = fresh.km(&["setup"]);
    assert!(out.status.success(), "{}", describe(&out));
    let key = fresh.km_home().join("keys").join("local-signing.pem");

    // Someone who can run code as the user signs their own library with the local key, under a
    // name of their choosing: km must refuse it, because the key is trusted for two names only.
    let rogue = fresh
        .km_home()
        .join("plugins")
        .join(lib_file_name("test-noop"));
    std::fs::copy(plugin_lib("test-noop"), &rogue).expect("copy");
    let signed = Command::new(km_sign_bin())
        .env_clear()
        .arg("sign")
        .arg("--key")
        .arg(&key)
        .args([
            "--name",
            "exfiltrator",
            "--version",
            "1.0.0",
            "--tier",
            "free",
        ])
        .arg(&rogue)
        .output()
        .expect("km-sign runs");
    assert!(signed.status.success(), "{}", describe(&signed));

    let listed = fresh.km(&["list-plugins"]);
    let list = String::from_utf8_lossy(&listed.stdout);
    let line = list
        .lines()
        .find(|l| l.contains("test_noop"))
        .unwrap_or_else(|| panic!("the rogue library is listed: {}", describe(&listed)));
    assert!(!line.contains("verified"), "{line}");
    let verify = fresh.km(&["verify-plugin", rogue.to_str().expect("utf-8")]);
    assert!(!verify.status.success(), "{}", describe(&verify));
    let why = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        why.contains("exfiltrator"),
        "the refusal names the plugin: {why}"
    );
}

#[test]
fn a_tampered_installed_copy_is_replaced_and_a_newer_installed_version_is_kept() {
    let fresh = FreshHome::new();
    assert!(fresh.km(&["setup"]).status.success());
    let plugins = fresh.km_home().join("plugins");
    let logger = plugins.join(lib_file_name("console-logger"));
    let mut bytes = std::fs::read(&logger).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&logger, &bytes).expect("tamper");

    let out = fresh.km(&["setup"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read(&logger).expect("read"),
        std::fs::read(plugin_lib("console-logger")).expect("bundled"),
        "the tampered copy is replaced by the bundled library"
    );
    let listed = String::from_utf8_lossy(&fresh.km(&["list-plugins"]).stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.contains("console-logger v1.0.0") && l.contains("verified")),
        "{listed}"
    );

    // A newer console-logger installed from a package (as `km update-plugin` would), signed
    // by the local key: setup must not put the older bundled build back.
    let work = fresh.home.join("pkg");
    std::fs::create_dir(&work).expect("pkg dir");
    let lib = work.join(lib_file_name("console-logger"));
    std::fs::copy(plugin_lib("console-logger"), &lib).expect("copy");
    let key = fresh.km_home().join("keys").join("local-signing.pem");
    let km_sign = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(km_sign_bin())
            .env_clear()
            .args(args)
            .output()
            .expect("km-sign runs");
        assert!(out.status.success(), "{}", describe(&out));
    };
    km_sign(&[
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        "--name".as_ref(),
        "console-logger".as_ref(),
        "--version".as_ref(),
        "1.1.0".as_ref(),
        "--tier".as_ref(),
        "free".as_ref(),
        lib.as_os_str(),
    ]);
    let pkg = work.join("console-logger-1.1.0.kmpkg");
    km_sign(&[
        "pack".as_ref(),
        "--out".as_ref(),
        pkg.as_os_str(),
        lib.as_os_str(),
    ]);
    let installed = fresh.km(&["install-plugin", pkg.to_str().expect("utf-8")]);
    assert!(installed.status.success(), "{}", describe(&installed));

    let out = fresh.km(&["setup"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        said.contains("a newer version is installed; kept it"),
        "{said}"
    );
    let listed = String::from_utf8_lossy(&fresh.km(&["list-plugins"]).stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.contains("console-logger v1.1.0") && l.contains("verified")),
        "the newer version stays installed: {listed}"
    );
}
