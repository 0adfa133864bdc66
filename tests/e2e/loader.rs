//! Verify-then-load, end to end: real plugin libraries signed by keys the tests make, checked by
//! the real `km verify-plugin`, `km list-plugins` and `km monitor`. Every attack on a plugin
//! file (tampering, a swapped signature, a wrong or revoked key, expiry, rollback, a foreign
//! target) is refused, naming the check that failed.

use std::path::Path;
use std::process::Output;

use km_tests::{chmod, describe, run_ok, KmEnv};
use serde_json::Value;

/// Runs `km verify-plugin --json PATH` and returns (exit code, the plugin's report).
fn verify(env: &KmEnv, path: &Path, extra: &[&str]) -> (i32, Value, Output) {
    let output = env
        .km()
        .args(["verify-plugin", "--json"])
        .args(extra)
        .arg(path)
        .output()
        .expect("km runs");
    let reports: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "verify-plugin --json printed no JSON ({e})\n{}",
            describe(&output)
        )
    });
    let report = reports.get(0).cloned().unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report, output)
}

/// Asserts that `path` is refused by `km verify-plugin` with exit 1 and the check `check`.
fn assert_refused(env: &KmEnv, path: &Path, check: &str) -> Value {
    let (code, report, output) = verify(env, path, &[]);
    assert_eq!(code, 1, "expected exit 1 (refused)\n{}", describe(&output));
    assert_eq!(report["verified"], false, "{report:#}");
    assert_eq!(report["check"], check, "wrong failing check: {report:#}");
    assert!(
        report["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{report:#}"
    );
    report
}

fn console_logger(env: &KmEnv) -> std::path::PathBuf {
    env.install("console-logger", "console-logger")
}

#[test]
fn a_signed_plugin_verifies_and_loads() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let (code, report, output) = verify(&env, &lib, &["--load"]);
    assert_eq!(code, 0, "{}", describe(&output));
    assert_eq!(report["verified"], true);
    assert_eq!(report["name"], "console-logger");
    assert_eq!(report["version"], "1.0.0");
    assert_eq!(report["tier"], "Free");
    assert_eq!(report["key_label"], "test");
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
    // Loading records the version for rollback protection.
    let seen = std::fs::read_to_string(env.home.join("state/seen-versions.json"))
        .expect("seen versions written");
    assert!(
        seen.contains("console-logger") && seen.contains("1.0.0"),
        "{seen}"
    );
}

#[test]
fn human_output_names_plugin_signer_hash_and_verdict() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let output = run_ok(env.km().arg("verify-plugin").arg(&lib));
    let text = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "console-logger",
        "1.0.0",
        "Free",
        "(test)",
        "sha256:",
        "verdict:  OK",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn one_flipped_byte_anywhere_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let original = std::fs::read(&lib).expect("read lib");
    for at in [
        0,
        original.len() / 3,
        original.len() / 2,
        original.len() - 1,
    ] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&lib, &bytes).expect("write lib");
        let report = assert_refused(&env, &lib, "digest");
        assert_eq!(
            report["name"], "console-logger",
            "the claimed name is shown: {report:#}"
        );
    }
    std::fs::write(&lib, &original).expect("restore lib");
    assert_eq!(
        verify(&env, &lib, &[]).0,
        0,
        "the untouched library verifies again"
    );
}

#[test]
fn an_edited_manifest_is_refused() {
    use base64::Engine as _;
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let sig_path = lib.with_extension("so.kmsig");
    let mut sig: Value =
        serde_json::from_slice(&std::fs::read(&sig_path).expect("read sig")).expect("sig is JSON");
    let b64 = base64::engine::general_purpose::STANDARD;
    let manifest = b64
        .decode(sig["manifest"].as_str().expect("manifest field"))
        .expect("base64");
    let edited = String::from_utf8(manifest)
        .expect("utf8")
        .replace("\"free\"", "\"enterprise\"");
    assert!(edited.contains("enterprise"));
    sig["manifest"] = Value::String(b64.encode(edited));
    std::fs::write(&sig_path, serde_json::to_vec(&sig).expect("json")).expect("write sig");
    assert_refused(&env, &lib, "signature");
}

#[test]
fn a_signature_by_an_untrusted_key_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let stranger = env.dir.path().join("keys/stranger");
    env.keygen(&stranger);
    env.sign_with(&lib, &stranger, "console-logger", "1.0.0", "free", &[]);
    assert_refused(&env, &lib, "trust");
}

#[test]
fn a_library_without_signature_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    std::fs::remove_file(lib.with_extension("so.kmsig")).expect("remove sig");
    assert_refused(&env, &lib, "signature-file");
}

#[test]
fn a_revoked_key_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let (_, report, _) = verify(&env, &lib, &[]);
    let key_id = report["key_id"].as_str().expect("key id").to_owned();
    run_ok(
        env.km()
            .args(["trust", "revoke", &key_id, "--reason", "laptop stolen"]),
    );
    let report = assert_refused(&env, &lib, "revocation");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&key_id)),
        "{report:#}"
    );
}

#[test]
fn a_revoked_library_hash_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let (_, report, _) = verify(&env, &lib, &[]);
    let sha = report["sha256"].as_str().expect("sha").to_owned();
    run_ok(env.km().args(["trust", "revoke", &sha]));
    assert_refused(&env, &lib, "revocation");
}

#[test]
fn an_expired_manifest_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    // km-sign refuses an expiry in the past, so sign one that is two seconds away and wait.
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    let soon = humantime::format_rfc3339_seconds(soon).to_string();
    env.sign_with(
        &lib,
        &env.key,
        "console-logger",
        "1.0.0",
        "free",
        &["--expires", &soon],
    );
    assert_eq!(verify(&env, &lib, &[]).0, 0, "valid before its expiry");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_refused(&env, &lib, "expiry");
}

#[test]
fn a_manifest_for_another_target_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    env.sign_with(
        &lib,
        &env.key,
        "console-logger",
        "1.0.0",
        "free",
        &["--target", "aarch64-apple-darwin"],
    );
    assert_refused(&env, &lib, "target");
}

#[test]
fn a_key_scoped_to_other_names_is_refused() {
    let env = KmEnv::new();
    let scoped = env.dir.path().join("keys/scoped");
    env.keygen(&scoped);
    run_ok(
        env.km()
            .args([
                "trust",
                "add",
                "--label",
                "scoped",
                "--scope",
                "api-logger,other",
            ])
            .arg(scoped.with_extension("pub")),
    );
    let lib = console_logger(&env);
    env.sign_with(&lib, &scoped, "console-logger", "1.0.0", "free", &[]);
    assert_refused(&env, &lib, "scope");
}

#[test]
fn an_older_version_than_one_seen_is_refused_unless_allowed() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    std::fs::create_dir_all(env.home.join("state")).expect("state dir");
    std::fs::write(
        env.home.join("state/seen-versions.json"),
        r#"{"versions": {"console-logger": "1.2.0"}}"#,
    )
    .expect("write seen versions");
    let report = assert_refused(&env, &lib, "rollback");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1.2.0")),
        "{report:#}"
    );
    let (code, _, output) = verify(&env, &lib, &["--allow-downgrade"]);
    assert_eq!(code, 0, "{}", describe(&output));
}

#[test]
fn a_library_writable_by_group_or_others_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    for mode in [0o664, 0o646] {
        chmod(&lib, mode);
        assert_refused(&env, &lib, "permissions");
    }
}

#[test]
fn a_plugin_directory_writable_by_others_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    chmod(&env.plugins, 0o777);
    assert_refused(&env, &lib, "permissions");
    let output = run_ok(env.km().args(["list-plugins", "--json"]));
    let listed: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(listed[0]["check"], "permissions", "{listed:#}");
}

#[test]
fn a_symlink_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let real = env.dir.path().join("elsewhere.so");
    std::fs::rename(&lib, &real).expect("move lib away");
    std::os::unix::fs::symlink(&real, &lib).expect("symlink");
    assert_refused(&env, &lib, "symlink");
}

#[test]
fn a_library_over_the_size_cap_is_refused() {
    let env = KmEnv::new();
    let lib = console_logger(&env);
    let output = env
        .km()
        .env("KM_MAX_PLUGIN_BYTES", "4096")
        .args(["verify-plugin", "--json"])
        .arg(&lib)
        .output()
        .expect("km runs");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let reports: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(reports[0]["check"], "size", "{reports:#}");
}

#[test]
fn a_signed_file_that_is_not_a_library_is_refused() {
    let env = KmEnv::new();
    let fake = env.plugins.join("libnotalib.so");
    std::fs::write(&fake, b"#!/bin/sh\necho this is not a shared library\n").expect("write");
    chmod(&fake, 0o644);
    env.sign_with(&fake, &env.key, "notalib", "1.0.0", "free", &[]);
    assert_refused(&env, &fake, "format");
}

#[test]
fn an_incompatible_abi_is_refused_with_a_readable_error() {
    let env = KmEnv::new();
    let lib = env.install("test-bad-abi", "test-bad-abi");
    let (code, report, output) = verify(&env, &lib, &["--load"]);
    assert_eq!(code, 1, "{}", describe(&output));
    assert_eq!(report["check"], "abi", "{report:#}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("incompatible plugin ABI"), "{reason}");
}

#[test]
fn a_library_without_root_module_is_refused() {
    let env = KmEnv::new();
    let lib = env.install("test-no-root", "test-no-root");
    let (code, report, output) = verify(&env, &lib, &["--load"]);
    assert_eq!(code, 1, "{}", describe(&output));
    assert_eq!(report["check"], "load", "{report:#}");
}

#[test]
fn a_plugin_that_panics_when_created_is_refused_and_km_carries_on() {
    let env = KmEnv::new();
    let bad = env.install("test-panic-on-new", "test-panic-on-new");
    let good = console_logger(&env);
    let output = env
        .km()
        .args(["verify-plugin", "--json", "--load"])
        .arg(&bad)
        .arg(&good)
        .output()
        .expect("km runs");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let reports: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(reports[0]["check"], "create", "{reports:#}");
    assert!(
        reports[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("panicked"),
        "{reports:#}"
    );
    assert_eq!(
        reports[1]["verified"], true,
        "the next plugin still loads: {reports:#}"
    );
}

#[test]
fn a_plugin_signed_under_another_name_is_refused_at_load() {
    let env = KmEnv::new();
    let lib = env.install_as(
        "test-noop",
        "libimpostor.so",
        "console-logger",
        "1.0.0",
        "free",
    );
    let (code, report, output) = verify(&env, &lib, &["--load"]);
    assert_eq!(code, 1, "{}", describe(&output));
    assert_eq!(report["check"], "identity", "{report:#}");
}

#[test]
fn exit_codes_are_0_all_verified_1_any_refused_2_io_error() {
    let env = KmEnv::new();
    let good = console_logger(&env);
    let other = env.install("test-noop", "test-noop");
    let ok = env
        .km()
        .arg("verify-plugin")
        .arg(&good)
        .arg(&other)
        .output()
        .expect("km runs");
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    std::fs::remove_file(other.with_extension("so.kmsig")).expect("rm sig");
    let refused = env
        .km()
        .arg("verify-plugin")
        .arg(&good)
        .arg(&other)
        .output()
        .expect("km runs");
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let missing = env
        .km()
        .arg("verify-plugin")
        .arg(env.plugins.join("nope.so"))
        .output()
        .expect("km runs");
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.so"));
    let usage = env.km().arg("verify-plugin").output().expect("km runs");
    assert_eq!(usage.status.code(), Some(2), "{}", describe(&usage));
}

#[test]
fn list_plugins_shows_verified_and_refused_plugins() {
    let env = KmEnv::new();
    console_logger(&env);
    let noop = env.install("test-noop", "test-noop");
    std::fs::remove_file(noop.with_extension("so.kmsig")).expect("rm sig");
    let output = run_ok(env.km().arg("list-plugins"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("✓ console-logger v1.0.0 (Free tier)"),
        "{text}"
    );
    assert!(
        text.contains("✗") && text.contains("signature-file"),
        "{text}"
    );
}

#[test]
fn trust_list_and_remove() {
    let env = KmEnv::new();
    let output = run_ok(env.km().args(["trust", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&output.stdout).expect("json");
    let keys = listed["keys"].as_array().expect("keys");
    let ours = keys
        .iter()
        .find(|k| k["label"] == "test")
        .expect("our key is listed");
    let id = ours["key_id"].as_str().expect("id").to_owned();
    run_ok(env.km().args(["trust", "remove", &id]));
    let lib = console_logger(&env);
    assert_refused(&env, &lib, "trust");
    let again = env
        .km()
        .args(["trust", "remove", &id])
        .output()
        .expect("km runs");
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
}

/// A km built with `KM_BUILTIN_TRUSTED_KEYS` (scripts/test builds one, with a key made by
/// openssl) trusts that key with an empty trust store, cannot remove it, and still honours a
/// revocation of it.
#[test]
fn a_key_built_into_km_is_trusted_cannot_be_removed_and_can_be_revoked() {
    let (Some(km), Some(key)) = (
        std::env::var_os("KM_TEST_BUILTIN_KM"),
        std::env::var_os("KM_TEST_BUILTIN_KEY"),
    ) else {
        panic!("KM_TEST_BUILTIN_KM and KM_TEST_BUILTIN_KEY are not set: run the tests with ./scripts/test (README)");
    };
    let env = KmEnv::new();
    let lib = console_logger(&env);
    // Re-sign with the built-in key (an openssl PEM key, which km-sign accepts as is).
    let mut sign = env.km_sign();
    sign.arg("sign")
        .arg("--key")
        .arg(&key)
        .args([
            "--name",
            "console-logger",
            "--version",
            "1.0.0",
            "--tier",
            "free",
        ])
        .arg(&lib);
    run_ok(&mut sign);
    assert_refused(&env, &lib, "trust");

    let builtin_km = |args: &[&str]| {
        let mut cmd = km_tests::command(Path::new(&km), &env.home);
        cmd.args(args);
        cmd
    };
    let output = builtin_km(&["verify-plugin", "--json"])
        .arg(&lib)
        .output()
        .expect("km runs");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let reports: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(reports[0]["key_label"], "release-key", "{reports:#}");
    let key_id = reports[0]["key_id"].as_str().expect("key id").to_owned();

    let listed = run_ok(&mut builtin_km(&["trust", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    let builtin = listed["keys"].as_array().and_then(|keys| {
        keys.iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .cloned()
    });
    assert_eq!(
        builtin.map(|k| k["builtin"].clone()),
        Some(Value::Bool(true)),
        "{listed:#}"
    );

    let remove = builtin_km(&["trust", "remove", &key_id])
        .output()
        .expect("km runs");
    assert_eq!(
        remove.status.code(),
        Some(2),
        "a built-in key cannot be removed\n{}",
        describe(&remove)
    );

    run_ok(&mut builtin_km(&["trust", "revoke", &key_id]));
    let output = builtin_km(&["verify-plugin", "--json"])
        .arg(&lib)
        .output()
        .expect("km runs");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let reports: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(reports[0]["check"], "revocation", "{reports:#}");
}
