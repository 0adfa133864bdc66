//! `km demo`, the README's first command: on a fresh KM_HOME-less machine, with no network, it
//! signs the bundled plugins, runs a real MCP session through `km monitor` and exits 0.

use std::process::Stdio;

#[test]
fn km_demo_runs_a_real_session_and_exits_0() {
    let home = tempfile::tempdir().expect("a temp dir");
    // The developer's KM_HOME must not matter: the demo makes its own.
    let mut cmd = km_tests::command(&km_tests::km_bin(), &home.path().join("unused"));
    cmd.env_remove("KM_HOME").arg("demo").stdin(Stdio::null());
    let output = cmd.output().expect("km demo starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}", km_tests::describe(&output));
    assert!(output.stdout.is_empty(), "km demo writes nothing on stdout");
    for expected in [
        "✓ console-logger v1.0.0 (Free tier)",
        "initialize → km-demo-server",
        "tools/list → echo, slow_count",
        "5 progress notifications",
        "no answer, as MCP requires",
        "notifications/cancelled",
        "done: the session ended cleanly",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !home.path().join("unused").exists(),
        "nothing is written outside the demo's temp dir"
    );
}
