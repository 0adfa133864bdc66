//! Test support: running one test again in a child process, alone, for what is per process: the
//! umask, or a file size limit under which a write fails with `EFBIG` midway even for root (whom
//! directory modes do not stop).
//!
//! The limit is set by `sh` (`ulimit -f`), which also ignores SIGXFSZ (otherwise the signal
//! would kill the child) and then execs this test binary: an ignored signal stays ignored across
//! exec, and no `unsafe` `pre_exec` is needed. The limit then applies to that one process only,
//! not to the other tests running beside it.

use std::process::Command;

/// Set in the child, so that the test body runs instead of spawning again.
pub const CHILD: &str = "KM_DURABLE_TEST_CHILD";

/// Runs the test `name` (its full path, `module::tests::name`) in a child process of its own,
/// whose files may grow to at most `file_size_limit` bytes (a multiple of 512) if given, and
/// asserts that it passed.
pub fn in_child(name: &str, file_size_limit: Option<u64>) {
    let exe = std::env::current_exe().expect("the test binary");
    // `ulimit -f` counts 512-byte blocks in POSIX shells (dash; bash when run as sh).
    let ulimit = file_size_limit.map_or(String::new(), |n| format!("ulimit -f {}; ", n / 512));
    let script = format!(r#"trap "" XFSZ; {ulimit}exec "$0" "$@""#);
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}
