//! ABI compatibility through the real km: a plugin built against the frozen km-abi 1.0.0
//! (tests/abi-1.0, built by scripts/test) loads and runs in this km, its handlers are called,
//! new stream-event kinds reach it as numbers it ignores, and it is never asked to intercept,
//! even when its signature would grant it. A library of plugin ABI 2.0 is refused with a message
//! that names both versions.

use std::io::Write;
use std::process::Stdio;

use km_tests::KmEnv;
use serde_json::Value;

/// The plugin built against km-abi 1.0.0.
fn legacy_lib() -> std::path::PathBuf {
    km_tests::plugin_lib("legacy-observer")
}

fn install_legacy(env: &KmEnv, extra: &[&str]) -> std::path::PathBuf {
    let dest = env.plugins.join("liblegacy_observer.so");
    std::fs::copy(legacy_lib(), &dest).expect(
        "the ABI 1.0 plugin: scripts/test builds it (cargo build --manifest-path tests/abi-1.0/Cargo.toml --target-dir target)",
    );
    km_tests::chmod(&dest, 0o644);
    let mut args = vec!["--abi-version", "1.0.0"];
    args.extend_from_slice(extra);
    env.sign_with(&dest, &env.key, "legacy-observer", "1.0.0", "free", &args);
    dest
}

#[test]
fn a_plugin_built_on_abi_1_0_runs_in_this_km_and_is_never_asked_to_intercept() {
    let env = KmEnv::new();
    // Even granted the capability, a 1.0 plugin has no way to ask: it only observes.
    install_legacy(&env, &["--capability", "intercept"]);
    let input = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
        "not json",
    ]
    .join("\n")
        + "\n";
    let mut child = env
        .km()
        .args(["monitor", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("km starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("km exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        input,
        "relayed untouched"
    );
    assert!(stderr.contains("✓ legacy-observer v1.0.0"), "{stderr}");
    assert!(
        stderr.contains("legacy-observer saw the end of the session"),
        "{stderr}"
    );
    assert!(!stderr.contains("asks to intercept"), "{stderr}");
    let seen: Vec<Value> =
        std::fs::read_to_string(env.data_dir("legacy-observer").join("legacy-seen.jsonl"))
            .expect("the plugin's record")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
    let calls: Vec<&str> = seen.iter().filter_map(|v| v["call"].as_str()).collect();
    assert_eq!(calls.first(), Some(&"initialize"));
    assert_eq!(calls.last(), Some(&"shutdown"));
    let messages = seen
        .iter()
        .filter(|v| v["call"] == "handle_message")
        .count();
    assert_eq!(messages, 4, "both lines, both ways: {seen:?}");
    assert!(seen
        .iter()
        .any(|v| v["call"] == "handle_message" && v["method"] == "tools/call"));
    let verify = env
        .km()
        .arg("verify-plugin")
        .arg("--load")
        .arg(env.plugins.join("liblegacy_observer.so"))
        .output()
        .expect("verify-plugin");
    assert!(verify.status.success(), "{}", km_tests::describe(&verify));
}

#[test]
fn a_plugin_of_abi_2_is_refused_with_a_readable_message() {
    let env = KmEnv::new();
    // Signed for what it is: the verifier refuses it before anything is mapped.
    let lib = env.install_as("test-abi2", "libtest_abi2.so", "test-abi2", "1.0.0", "free");
    env.sign_with(
        &lib,
        &env.key,
        "test-abi2",
        "1.0.0",
        "free",
        &["--abi-version", "2.0.0"],
    );
    let out = env
        .km()
        .arg("verify-plugin")
        .arg(&lib)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("2.0.0"), "{text}");
    // Signed as if for this ABI: abi_stable's own check refuses it when it is loaded.
    env.sign_with(&lib, &env.key, "test-abi2", "1.0.0", "free", &[]);
    let out = env
        .km()
        .args(["verify-plugin", "--load"])
        .arg(&lib)
        .output()
        .expect("verify --load");
    assert_eq!(out.status.code(), Some(1), "{}", km_tests::describe(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("incompatible plugin ABI")
            && text.contains("2.0.0")
            && text.contains(km_abi::ABI_VERSION),
        "{text}"
    );
}
