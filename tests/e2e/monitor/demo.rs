//! `km demo`, the README's first command: with no KM_HOME and no network it starts the reference
//! API with a demo customer, signs the bundled plugins (Pro and Enterprise ones as customer
//! builds), runs a real MCP session through `km monitor`, and says in one line per plugin what
//! it did; every step is checked here, and a plugin that does not do its job fails the demo.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// `km demo ARGS...` with a fresh temporary directory as TMPDIR (where the demo makes its
/// KM_HOME and keeps its report); the output and that directory.
fn demo(args: &[&str]) -> (Output, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    // The developer's KM_HOME must not matter: the demo makes its own.
    let mut cmd = km_tests::command(&km_tests::km_bin(), &tmp.path().join("unused"));
    cmd.env_remove("KM_HOME")
        .env("TMPDIR", tmp.path())
        .arg("demo")
        .args(args)
        .stdin(Stdio::null());
    let output = cmd.output().expect("km demo starts");
    (output, tmp)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The path printed after `written to `.
fn report_path(stderr: &str) -> PathBuf {
    let line = stderr
        .lines()
        .find(|l| l.contains("✓ compliance-reporting:"))
        .unwrap_or_else(|| panic!("no compliance-reporting step in:\n{stderr}"));
    let (_, path) = line
        .split_once("SOC 2 report written to ")
        .unwrap_or_else(|| panic!("no report path in {line:?}"));
    PathBuf::from(path.trim())
}

/// What is left in `dir` whose name starts with `km-demo-`, apart from kept reports.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("reading TMPDIR")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("km-demo-") && !n.starts_with("km-demo-report-"))
        .collect()
}

#[test]
fn km_demo_shows_every_plugin_at_work_and_exits_0() {
    let (output, tmp) = demo(&[]);
    let stderr = stderr(&output);
    assert!(output.status.success(), "{}", km_tests::describe(&output));
    assert!(output.stdout.is_empty(), "km demo writes nothing on stdout");
    for expected in [
        // The reference API and the customer builds.
        "the reference Kilometers API (km-api-server) listens on http://127.0.0.1:",
        "✓ console-logger v1.0.0 (Free tier)",
        "✓ tool-guard v1.0.0 (Free tier)",
        "✓ ml-analytics v1.0.0 (Pro tier)",
        "✓ advanced-filters v1.0.0 (Pro tier)",
        "✓ api-logger v1.0.0 (Pro tier)",
        "✓ compliance-reporting v1.0.0 (Enterprise tier)",
        "✓ team-collaboration v1.0.0 (Enterprise tier)",
        // The team: its admin key pinned, its signed policy fetched from the API.
        "with a demo customer on the Enterprise tier and its team demo-team",
        "km plugin team-collaboration join demo-team → ",
        // The relay.
        "initialize → km-demo-server",
        "tools/list → echo, divide, slow_count",
        "5 progress notifications",
        "no answer, as MCP requires",
        "tools/call divide ×45 → 40 results, then 5 tool errors in a row",
        // The rug pull, as the client saw it.
        "→ notifications/tools/list_changed",
        "tools/list → echo, slow_count",
        "tools/call divide → error -32050",
        // One line per step.
        "✓ km monitor: relayed the whole session",
        "✓ console-logger: logged every message, one line each",
        "tools/call echo with an AWS access key in its text → \"deploy with access key [REDACTED:",
        "✓ advanced-filters: redacted the secret on its way to the server",
        "notifications/cancelled",
        "tools/call delete_notes → error ",
        "✓ team-collaboration: team demo-team's policy (version 1), signed by its admin key, refused delete_notes before it reached the server",
        "the session's summary (no content) is in the team feed",
        "✓ ml-analytics: noticed an anomaly: tools/call divide failed",
        "✓ tool-guard: held back the changed definition of divide",
        "without reaching the server, HELD in km plugin tool-guard list",
        "events of the session reached the Kilometers API",
        "✓ compliance-reporting: audit trail verified",
        "witnessed by the API",
        "the secret in none of them",
        "done: all 8 steps did what they show",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains('✗'), "a step failed:\n{stderr}");
    assert!(
        !stderr.contains("AKIAZ7QW3RT5YU2IOP4N"),
        "the secret is shown nowhere, not even in what the server echoed"
    );
    // The events the API stored are counted, not claimed: more than the client's requests.
    let events: usize = stderr
        .lines()
        .find_map(|l| l.split_once("✓ api-logger: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in:\n{stderr}"));
    assert!(events > 55, "{events} events");

    // The report is kept, signed, and about this session.
    let report = report_path(&stderr);
    assert!(report.starts_with(tmp.path()), "{}", report.display());
    let text = std::fs::read_to_string(&report).expect("the report exists");
    assert!(text.contains("CC8.1") && text.contains("divide"), "{text}");
    let mut signature = report.clone().into_os_string();
    signature.push(".sig");
    assert!(Path::new(&signature).is_file(), "the report's signature");

    assert_eq!(
        leftovers(tmp.path()),
        Vec::<String>::new(),
        "the temporary KM_HOME is removed"
    );
    assert!(
        !tmp.path().join("unused").exists(),
        "nothing is written in the user's KM_HOME"
    );
}

#[test]
fn km_demo_fails_when_a_plugin_does_not_do_its_job() {
    // The libraries the workspace built, except that "tool-guard" is a plugin that only
    // observes. Links, not a list: the demo installs whatever km bundles.
    let libs = tempfile::tempdir().expect("a temp dir");
    let tool_guard = km_tests::plugin_lib("tool-guard");
    for entry in std::fs::read_dir(km_tests::bin_dir()).expect("the build directory") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().expect("a file name").to_owned();
        let is_library = name
            .to_string_lossy()
            .ends_with(std::env::consts::DLL_SUFFIX);
        if is_library && path != tool_guard {
            std::os::unix::fs::symlink(&path, libs.path().join(&name)).expect("linking");
        }
    }
    std::fs::copy(
        km_tests::plugin_lib("test-observer"),
        libs.path()
            .join(tool_guard.file_name().expect("a file name")),
    )
    .expect("copying");
    let (output, tmp) = demo(&["--lib-dir", &libs.path().to_string_lossy()]);
    let stderr = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        km_tests::describe(&output)
    );
    assert!(
        // Without tool-guard the changed list reaches the client (or, with advanced-filters,
        // is refused whole): either way tool-guard's step fails.
        stderr.contains("✗ tool-guard: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("steps did not do what they show: tool-guard"),
        "{stderr}"
    );
    // The other plugins still did theirs.
    for plugin in [
        "advanced-filters",
        "ml-analytics",
        "api-logger",
        "compliance-reporting",
        "team-collaboration",
    ] {
        assert!(
            stderr.contains(&format!("✓ {plugin}: ")),
            "{plugin}:\n{stderr}"
        );
    }
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}
