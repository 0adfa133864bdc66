//! Host events (ABI 1.1) through the real km: plugins hear which plugins were refused, and, at
//! the next session, which were installed, updated or removed in between (km's event journal),
//! each once.

use std::process::Stdio;

use km_tests::{run_ok, KmEnv};
use serde_json::Value;

fn session(env: &KmEnv) -> Vec<Value> {
    let out = env
        .km()
        .args(["monitor", "--", "cat"])
        .stdin(Stdio::null())
        .output()
        .expect("km monitor");
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    std::fs::read_to_string(env.data_dir("test-observer").join("seen.jsonl"))
        .expect("seen.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

fn host_events(seen: &[Value]) -> Vec<&Value> {
    seen.iter()
        .filter(|v| v["event"] == "host")
        .map(|v| &v["data"])
        .collect()
}

#[test]
fn plugins_hear_of_refusals_and_of_installs_since_their_last_session() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    // A package of test-noop, installed the way users install.
    let staging = env.dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let lib = staging.join("libtest_noop.so");
    std::fs::copy(km_tests::plugin_lib("test-noop"), &lib).expect("copy");
    km_tests::chmod(&lib, 0o644);
    env.sign_with(&lib, &env.key, "test-noop", "1.0.0", "free", &[]);
    let pkg = staging.join("test-noop.kmpkg");
    run_ok(env.km_sign().args(["pack", "--out"]).arg(&pkg).arg(&lib));
    run_ok(env.km().arg("install-plugin").arg(&pkg));
    // A library nobody signed.
    let unsigned = env.plugins.join("libunsigned.so");
    std::fs::copy(km_tests::plugin_lib("test-noop"), &unsigned).expect("copy");
    km_tests::chmod(&unsigned, 0o644);

    let seen = session(&env);
    let host = host_events(&seen);
    let installed = host
        .iter()
        .find(|d| d["event"] == "installed")
        .expect("the install since the last session");
    assert_eq!(installed["plugin"], "test-noop");
    assert_eq!(installed["version"], "1.0.0");
    assert!(installed["id"].is_string() && installed["time"].is_number());
    let refused = host
        .iter()
        .find(|d| d["event"] == "refused")
        .expect("the refused library");
    assert_eq!(refused["file"], "libunsigned.so");
    assert_eq!(refused["check"], "signature-file");

    // Next session: the refusal again (it still is), the install not again.
    let seen = session(&env);
    let host = host_events(&seen);
    assert!(host.iter().all(|d| d["event"] != "installed"), "{host:?}");
    assert!(host.iter().any(|d| d["event"] == "refused"));

    run_ok(env.km().args(["uninstall-plugin", "test-noop", "--yes"]));
    let seen = session(&env);
    assert!(host_events(&seen)
        .iter()
        .any(|d| d["event"] == "uninstalled" && d["plugin"] == "test-noop"));
}
