//! StrictModes for everything that decides trust, through the real
//! `km`: files and directories owned by another user, writable by others, links where a swap
//! could redirect, and FIFOs or devices named like plugin files, each refused with the path and
//! the fix, and never read.
//!
//! Tests run as root in CI, and root owns everything it creates: the "owned by another user"
//! cases give a file to uid 65534 (nobody) with chown, which only root can do; run as another
//! user, those cases are skipped with a message and the mode, link and FIFO cases still run.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use km_tests::{chmod, describe, run_ok, KmEnv};
use serde_json::Value;

/// The unprivileged uid files are given to.
pub(crate) const OTHER_UID: u32 = 65534;

/// Whether the tests run as root (and so can chown).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gives `path` (not following a link) to [`OTHER_UID`]; `false` with a message when not root.
pub(crate) fn chown_to_other(path: &Path) -> bool {
    if !is_root() {
        eprintln!(
            "skipped: giving {} to another user needs root (CI runs the tests as root)",
            path.display()
        );
        return false;
    }
    std::os::unix::fs::lchown(path, Some(OTHER_UID), None)
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    true
}

/// Runs `cmd` to completion, killing it (and failing the test) if it has not finished within
/// `limit`: the guard against the hang these tests are about, not a timing assertion.
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let start = Instant::now();
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("the command runs"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "{cmd:?} did not finish within {:?} (it hangs): killed",
                start.elapsed()
            );
        }
    }
}

/// The guard's limit: far beyond what any of these commands needs.
const HANG: Duration = Duration::from_secs(120);

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// `km verify-plugin --json LIB` with the guard.
fn verify(env: &KmEnv, lib: &Path) -> Output {
    output_within(env.km().args(["verify-plugin", "--json"]).arg(lib), HANG)
}

/// A KM_HOME with console-logger installed and verified once (so that the rollback record
/// exists), a revocation (so that revocations.json exists) and a config file.
fn setup() -> (KmEnv, PathBuf) {
    let env = KmEnv::new();
    let lib = env.install("console-logger", "console-logger");
    run_ok(env.km().args(["verify-plugin", "--load"]).arg(&lib));
    run_ok(env.km().args(["trust", "revoke"]).arg("ab".repeat(32)));
    env.write_config("refresh_interval_secs = 300\n");
    (env, lib)
}

/// The key file of the test key (`trusted-keys/<id>.pub`).
fn key_file(env: &KmEnv, suffix: &str) -> PathBuf {
    let dir = env.home.join("trusted-keys");
    std::fs::read_dir(&dir)
        .expect("trusted-keys")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.to_string_lossy().ends_with(suffix)
                && !p.to_string_lossy().ends_with("revocations.json")
        })
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}

/// Every file and directory the verifier reads to decide trust.
fn trust_paths(env: &KmEnv) -> Vec<PathBuf> {
    vec![
        env.home.clone(),
        env.home.join("trusted-keys"),
        key_file(env, ".pub"),
        key_file(env, ".json"),
        env.home.join("trusted-keys/revocations.json"),
        env.home.join("state"),
        env.home.join("state/seen-versions.json"),
    ]
}

/// Asserts that `output` is km refusing to work with `path`, naming it and `fix`.
fn assert_refuses(output: &Output, path: &Path, fix: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(output));
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains(fix),
        "the refusal must name {} and `{fix}`:\n{}",
        path.display(),
        describe(output)
    );
}

#[test]
fn trust_files_owned_by_another_user_are_refused_naming_the_path_and_chown() {
    if !is_root() {
        eprintln!("skipped: needs root to chown (CI runs the tests as root)");
        return;
    }
    let (env, lib) = setup();
    for path in trust_paths(&env) {
        chown_to_other(&path);
        assert_refuses(&verify(&env, &lib), &path, "chown");
        assert_refuses(
            &output_within(env.km().arg("list-plugins"), HANG),
            &path,
            "chown",
        );
        std::os::unix::fs::lchown(&path, Some(0), None).expect("chown back");
    }
    // All given back: accepted again.
    run_ok(env.km().arg("verify-plugin").arg(&lib));
}

#[test]
fn trust_files_writable_by_the_group_are_refused_naming_the_path_and_chmod() {
    let (env, lib) = setup();
    for path in trust_paths(&env) {
        let mode = if path.is_dir() { 0o770 } else { 0o660 };
        let before = std::fs::metadata(&path).expect("meta");
        chmod(&path, mode);
        let output = verify(&env, &lib);
        assert_refuses(&output, &path, &format!("chmod go-w {}", path.display()));
        std::fs::set_permissions(&path, before.permissions()).expect("restore");
    }
    run_ok(env.km().arg("verify-plugin").arg(&lib));
}

#[test]
fn a_parent_of_km_home_writable_by_all_is_refused_unless_sticky() {
    let (env, lib) = setup();
    let parent = env.dir.path();
    chmod(parent, 0o777);
    assert_refuses(&verify(&env, &lib), parent, "chmod go-w");
    // Sticky, like /tmp (where every test's KM_HOME lives): accepted, as OpenSSH does.
    chmod(parent, 0o1777);
    run_ok(env.km().arg("verify-plugin").arg(&lib));
    chmod(parent, 0o700);
}

#[test]
fn links_inside_km_home_are_refused() {
    let (env, lib) = setup();
    for rel in [
        "trusted-keys",
        "state/seen-versions.json",
        "trusted-keys/revocations.json",
    ] {
        let path = env.home.join(rel);
        let elsewhere = env
            .dir
            .path()
            .join(format!("elsewhere-{}", rel.replace('/', "-")));
        std::fs::rename(&path, &elsewhere).expect("move away");
        symlink(&elsewhere, &path).expect("symlink");
        let output = verify(&env, &lib);
        assert_refuses(&output, &path, "symbolic link");
        std::fs::remove_file(&path).expect("rm link");
        std::fs::rename(&elsewhere, &path).expect("move back");
    }
    run_ok(env.km().arg("verify-plugin").arg(&lib));
}

#[test]
fn config_toml_is_checked_like_the_trust_store() {
    let (env, _lib) = setup();
    let config = env.home.join("config.toml");
    run_ok(env.km().args(["config", "show"]));
    chmod(&config, 0o660);
    assert_refuses(
        &output_within(env.km().args(["config", "show"]), HANG),
        &config,
        "chmod go-w",
    );
    chmod(&config, 0o600);
    if chown_to_other(&config) {
        assert_refuses(
            &output_within(env.km().args(["config", "show"]), HANG),
            &config,
            "chown",
        );
    }
    // A FIFO named config.toml is refused, not waited on.
    std::fs::remove_file(&config).expect("rm");
    mkfifo(&config);
    let output = output_within(env.km().args(["config", "show"]), HANG);
    assert_refuses(&output, &config, "not a regular file");
}

#[test]
fn auth_records_owned_by_another_user_are_refused() {
    let (env, _lib) = setup();
    let auth = env.home.join("state/auth");
    std::fs::create_dir(&auth).expect("mkdir");
    chmod(&auth, 0o700);
    let record = auth.join("console-logger.json");
    std::fs::write(&record, "{}").expect("write");
    chmod(&record, 0o600);
    if !chown_to_other(&record) {
        return;
    }
    let output = output_within(env.km().args(["plugin-status", "--json"]), HANG);
    assert_refuses(&output, &record, "chown");
}

/// `list-plugins --json`, parsed.
fn list(env: &KmEnv) -> (Output, Vec<Value>) {
    let output = output_within(env.km().args(["list-plugins", "--json"]), HANG);
    let reports: Vec<Value> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}", describe(&output)));
    (output, reports)
}

fn report_for<'a>(reports: &'a [Value], file: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(file)))
        .unwrap_or_else(|| panic!("no report for {file}: {reports:#?}"))
}

#[test]
fn list_plugins_reports_fifos_and_device_links_instead_of_reading_them() {
    let env = KmEnv::new();
    env.install("console-logger", "console-logger");
    // A FIFO named like a library, a library whose signature is a FIFO, a link to /dev/zero
    // named like a library, and one whose signature is a link to /dev/zero.
    mkfifo(&env.plugins.join("libfifo.so"));
    let noop = env.install("test-noop", "test-noop");
    let sig = PathBuf::from(format!("{}.kmsig", noop.display()));
    std::fs::remove_file(&sig).expect("rm");
    mkfifo(&sig);
    symlink("/dev/zero", env.plugins.join("libzero.so")).expect("symlink");
    let panicky = env.install("test-panicky", "test-panicky");
    let sig = PathBuf::from(format!("{}.kmsig", panicky.display()));
    std::fs::remove_file(&sig).expect("rm");
    symlink("/dev/zero", &sig).expect("symlink");

    let (output, reports) = list(&env);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(reports.len(), 5, "{reports:#?}");
    assert_eq!(
        report_for(&reports, "libconsole_logger.so")["verified"],
        true
    );
    let fifo = report_for(&reports, "libfifo.so");
    assert_eq!(fifo["check"], "format", "{fifo:#}");
    assert_eq!(
        fifo["sha256"],
        Value::Null,
        "a FIFO is never read: {fifo:#}"
    );
    let zero = report_for(&reports, "libzero.so");
    assert_eq!(zero["check"], "symlink", "{zero:#}");
    assert_eq!(
        zero["sha256"],
        Value::Null,
        "/dev/zero is never read: {zero:#}"
    );
    let noop = report_for(&reports, "libtest_noop.so");
    assert_eq!(noop["check"], "format", "{noop:#}");
    assert!(
        noop["reason"]
            .as_str()
            .is_some_and(|r| r.contains(".kmsig")),
        "the reason names the signature file: {noop:#}"
    );
    let panicky = report_for(&reports, "libtest_panicky.so");
    assert_eq!(panicky["check"], "symlink", "{panicky:#}");
}

#[test]
fn verify_plugin_reports_a_fifo_signature_under_the_librarys_name() {
    let env = KmEnv::new();
    let lib = env.install("test-noop", "test-noop");
    let sig = PathBuf::from(format!("{}.kmsig", lib.display()));
    std::fs::remove_file(&sig).expect("rm");
    mkfifo(&sig);
    let output = verify(&env, &lib);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let reports: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        reports[0]["path"],
        lib.display().to_string(),
        "{reports:#?}"
    );
    assert_eq!(reports[0]["check"], "format", "{reports:#?}");
    // The human heading names the library too, also when the user names the signature.
    for named in [&lib, &sig] {
        let output = output_within(env.km().arg("verify-plugin").arg(named), HANG);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.lines().next(),
            Some(lib.display().to_string().as_str()),
            "{}",
            describe(&output)
        );
    }
    // A missing signature is the signature-file check, also under the library's name.
    std::fs::remove_file(&sig).expect("rm");
    let output = verify(&env, &lib);
    let reports: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        reports[0]["path"],
        lib.display().to_string(),
        "{reports:#?}"
    );
    assert_eq!(reports[0]["check"], "signature-file", "{reports:#?}");
}

#[test]
fn a_library_or_signature_owned_by_another_user_is_refused_with_its_owner() {
    let env = KmEnv::new();
    let lib = env.install("console-logger", "console-logger");
    if !chown_to_other(&lib) {
        return;
    }
    let output = verify(&env, &lib);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let reports: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(reports[0]["check"], "owner", "{reports:#?}");
    assert!(
        reports[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("chown")),
        "{reports:#?}"
    );
}

#[test]
fn km_creates_km_home_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("fresh").join("km");
    let key = dir.path().join("k");
    run_ok(
        km_tests::command(&km_tests::km_sign_bin(), &home)
            .args(["keygen", "--out"])
            .arg(&key),
    );
    run_ok(
        km_tests::command(&km_tests::km_bin(), &home)
            .args(["trust", "add", "--label", "x"])
            .arg(key.with_extension("pub")),
    );
    use std::os::unix::fs::PermissionsExt;
    for path in [&home, &home.join("trusted-keys")] {
        let mode = std::fs::metadata(path)
            .expect("created")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{} is created 0700", path.display());
    }
}

/// Every entry under `dir`, not following links: a file's bytes, a link's target, a
/// directory's name alone. What "nothing was written" is checked against.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut entries = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at).unwrap_or_else(|e| panic!("ls {}: {e}", at.display())) {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let content = if meta.is_symlink() {
                Some(
                    std::fs::read_link(&path)
                        .expect("readlink")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if meta.is_dir() {
                todo.push(path.clone());
                None
            } else {
                Some(std::fs::read(&path).expect("read"))
            };
            entries.insert(path, content);
        }
    }
    entries
}

/// A way a home can be one the loader refuses: what the refusal must name and the fix it must
/// give, and how to make it so and undo it. `km_home` is the path `km` is given (a link, in
/// one case).
struct Unsafe {
    what: &'static str,
    km_home: PathBuf,
    named: PathBuf,
    fix: &'static str,
    apply: Box<dyn Fn()>,
    undo: Box<dyn Fn()>,
}

fn unsafe_homes(env: &KmEnv) -> Vec<Unsafe> {
    let home = env.home.clone();
    let keys = home.join("trusted-keys");
    let mode = |path: &Path, what: &'static str, bad: u32, good: u32| {
        let (a, u) = (path.to_path_buf(), path.to_path_buf());
        Unsafe {
            what,
            km_home: home.clone(),
            named: path.to_path_buf(),
            fix: "chmod go-w",
            apply: Box::new(move || chmod(&a, bad)),
            undo: Box::new(move || chmod(&u, good)),
        }
    };
    let elsewhere = env.dir.path().join("elsewhere-trusted-keys");
    let (k1, e1, k2, e2) = (keys.clone(), elsewhere.clone(), keys.clone(), elsewhere);
    let mut cases = vec![
        mode(&home, "KM_HOME writable by its group", 0o770, 0o700),
        mode(&keys, "trusted-keys/ writable by its group", 0o770, 0o700),
        mode(
            env.dir.path(),
            "a parent of KM_HOME writable by all",
            0o777,
            0o700,
        ),
        Unsafe {
            what: "trusted-keys/ a symbolic link",
            km_home: home.clone(),
            named: keys.clone(),
            fix: "symbolic link",
            apply: Box::new(move || {
                std::fs::rename(&k1, &e1).expect("move away");
                symlink(&e1, &k1).expect("symlink");
            }),
            undo: Box::new(move || {
                std::fs::remove_file(&k2).expect("rm link");
                std::fs::rename(&e2, &k2).expect("move back");
            }),
        },
    ];
    if !is_root() {
        eprintln!("skipped: the cases owned by another user need root to chown (CI runs as root)");
        return cases;
    }
    let owner = |path: &Path, what: &'static str| {
        let (a, u) = (path.to_path_buf(), path.to_path_buf());
        Unsafe {
            what,
            km_home: home.clone(),
            named: path.to_path_buf(),
            fix: "chown",
            apply: Box::new(move || {
                chown_to_other(&a);
            }),
            undo: Box::new(move || {
                std::os::unix::fs::lchown(&u, Some(0), None).expect("chown back");
            }),
        }
    };
    cases.push(owner(&home, "KM_HOME owned by another user"));
    cases.push(owner(&keys, "trusted-keys/ owned by another user"));
    // KM_HOME reached through a link that another user owns (and so can point elsewhere).
    let via = env.dir.path().join("home-link");
    symlink(&home, &via).expect("symlink");
    let mut swappable = owner(&via, "KM_HOME reached through another user's link");
    swappable.km_home = via;
    cases.push(swappable);
    cases
}

#[test]
fn trust_commands_refuse_an_unsafe_home_and_write_nothing() {
    let env = KmEnv::new();
    let other = env.dir.path().join("keys").join("other");
    env.keygen(&other);
    let listed = run_ok(env.km().args(["trust", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let test_key = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["label"] == "test")
        .expect("the test key")["key_id"]
        .as_str()
        .expect("key id")
        .to_owned();
    // revocations.json exists, so that a revoke would have to rewrite it.
    run_ok(env.km().args(["trust", "revoke"]).arg("cd".repeat(32)));
    let revoke = "ab".repeat(32);
    let other_pub = other.with_extension("pub").display().to_string();
    let commands: [&[&str]; 4] = [
        &["trust", "add", "--label", "other", &other_pub],
        &["trust", "remove", &test_key],
        &["trust", "revoke", &revoke],
        &["trust", "list"],
    ];
    for case in unsafe_homes(&env) {
        (case.apply)();
        for args in commands {
            let before = snapshot(env.dir.path());
            let output = output_within(env.km().env("KM_HOME", &case.km_home).args(args), HANG);
            let context = format!("`km {}` with {}", args.join(" "), case.what);
            assert!(
                String::from_utf8_lossy(&output.stderr).contains("refused"),
                "{context}: the loader's refusal, not another error:\n{}",
                describe(&output)
            );
            assert_refuses(&output, &case.named, case.fix);
            assert_eq!(snapshot(env.dir.path()), before, "{context}: files changed");
        }
        (case.undo)();
    }

    // On the home made safe again, each command works.
    for args in commands {
        run_ok(env.km().args(args));
    }
    let listed = run_ok(env.km().args(["trust", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let labels: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["builtin"] == false)
        .map(|k| k["label"].as_str().expect("label"))
        .collect();
    assert_eq!(labels, ["other"], "test removed, other added: {listed:#}");
    assert!(
        listed["revoked"]
            .as_array()
            .expect("revoked")
            .iter()
            .any(|r| r["what"] == revoke.as_str()),
        "{listed:#}"
    );
    // The key file the user names is read without blocking: a FIFO is refused, not waited on.
    let fifo = env.dir.path().join("fifo.pub");
    mkfifo(&fifo);
    let output = output_within(env.km().args(["trust", "add"]).arg(&fifo), HANG);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a regular file"),
        "{}",
        describe(&output)
    );
}
