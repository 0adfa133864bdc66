//! km-sign end to end: keys, signatures, openssl interoperability.
//!
//! The real `km-sign` binary with keys made by the real `openssl` CLI (OpenSSL 3): openssl keys
//! sign, openssl signatures attach, and every refusal exits with the documented code
//! (0 ok, 1 verification failed, 2 usage or I/O error). km-sign never loads the library, so any
//! small file stands in for one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use km_tests::{command, describe, km_sign_bin, run_ok};

/// A scratch directory with a fake library `libdemo.so` in it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("libdemo.so"),
            b"\x7fELF not really a library, 42 bytes.....",
        )
        .expect("write lib");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lib(&self) -> PathBuf {
        self.path("libdemo.so")
    }

    /// `km-sign ARGS...`, run in the scratch directory.
    fn km_sign(&self, args: &[&str]) -> Command {
        let mut cmd = command(&km_sign_bin(), self.dir.path());
        cmd.current_dir(self.dir.path()).args(args);
        cmd
    }

    /// `openssl ARGS...`, run in the scratch directory; must succeed.
    fn openssl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(self.dir.path()).args(args);
        let output = cmd
            .output()
            .expect("the openssl CLI is installed (OpenSSL 3)");
        assert!(
            output.status.success(),
            "openssl {args:?} failed\n{}",
            describe(&output)
        );
        output
    }

    /// Writes NAME.pub from private key NAME.pem with openssl.
    fn openssl_pubout(&self, name: &str) {
        self.openssl(&[
            "pkey",
            "-in",
            &format!("{name}.pem"),
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ]);
    }

    fn sign_lib(&self, key: &str) -> Output {
        run_ok(&mut self.km_sign(&[
            "sign",
            "--key",
            key,
            "--name",
            "demo",
            "--version",
            "1.2.3",
            "--tier",
            "pro",
            "libdemo.so",
        ]))
    }

    fn verify_lib(&self, public: &str) -> Output {
        self.km_sign(&["verify", "--pub", public, "libdemo.so"])
            .output()
            .expect("km-sign runs")
    }
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, expected: i32, stderr_has: &str) {
    assert_eq!(code(output), Some(expected), "{}", describe(output));
    let err = stderr(output);
    assert!(
        err.contains("km-sign: error: "),
        "errors are prefixed\n{}",
        describe(output)
    );
    assert!(
        err.contains(stderr_has),
        "stderr should mention {stderr_has:?}\n{}",
        describe(output)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn openssl_ed25519_key_signs_and_verifies() {
    let s = Setup::new();
    s.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    s.openssl_pubout("ed");
    s.sign_lib("ed.pem");
    assert!(s.path("libdemo.so.kmsig").exists());
    let out = s.verify_lib("ed.pub");
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo 1.2.3 (tier pro)"), "{stdout}");
    assert!(stdout.contains("(ed25519)"), "{stdout}");
}

#[test]
fn openssl_rsa_2048_keys_in_every_format_sign_and_verify() {
    let s = Setup::new();
    let keys: [(&str, &[&str]); 3] = [
        (
            "genpkey",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "genpkey.pem",
            ],
        ),
        ("genrsa", &["genrsa", "-out", "genrsa.pem", "2048"]),
        (
            "traditional",
            &["genrsa", "-traditional", "-out", "traditional.pem", "2048"],
        ),
    ];
    for (name, args) in keys {
        s.openssl(args);
        s.openssl_pubout(name);
        s.sign_lib(&format!("{name}.pem"));
        let out = s.verify_lib(&format!("{name}.pub"));
        assert_eq!(code(&out), Some(0), "{name}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("(rsa-pkcs1-sha256)"),
            "{}",
            describe(&out)
        );
    }
    let pkcs1 = std::fs::read_to_string(s.path("traditional.pem")).expect("read");
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "the PKCS#1 form was tested"
    );
}

#[test]
fn openssl_rsa_1024_key_is_refused_as_too_weak() {
    let s = Setup::new();
    s.openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        "weak.pem",
    ]);
    let out = s
        .km_sign(&[
            "sign",
            "--key",
            "weak.pem",
            "--name",
            "demo",
            "--version",
            "1.0.0",
            "--tier",
            "free",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "weak.pem");
    assert!(
        stderr(&out).contains("1024 bits is too weak"),
        "{}",
        describe(&out)
    );
    assert!(!s.path("libdemo.so.kmsig").exists());
}

#[test]
fn manifest_then_openssl_dgst_then_attach_verifies() {
    let s = Setup::new();
    s.openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    s.openssl_pubout("rsa");
    let out = run_ok(&mut s.km_sign(&[
        "manifest",
        "--name",
        "demo",
        "--version",
        "2.0.0",
        "--tier",
        "enterprise",
        "--expires",
        "2099-12-31",
        "--customer",
        "cust-42",
        "--pub",
        "rsa.pub",
        "libdemo.so",
    ]));
    std::fs::write(s.path("m.json"), &out.stdout).expect("write manifest");
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8");
    assert!(
        text.starts_with("{\n  \"kind\": \"km-plugin-manifest/v1\""),
        "{text}"
    );
    assert!(
        text.contains("\"expires_at\": \"2099-12-31T00:00:00Z\""),
        "{text}"
    );

    s.openssl(&[
        "dgst", "-sha256", "-sign", "rsa.pem", "-out", "m.sig", "m.json",
    ]);
    run_ok(&mut s.km_sign(&[
        "attach",
        "--manifest",
        "m.json",
        "--signature",
        "m.sig",
        "--pub",
        "rsa.pub",
        "libdemo.so",
    ]));
    let out = s.verify_lib("rsa.pub");
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("demo 2.0.0 (tier enterprise)") && stdout.contains("cust-42"),
        "{stdout}"
    );

    // The .kmsig carries the exact bytes openssl signed.
    let sig: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("libdemo.so.kmsig")).expect("read"))
            .expect("json");
    let carried = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        sig["manifest"].as_str().expect("manifest field"),
    )
    .expect("base64");
    assert_eq!(carried, out_bytes(&s.path("m.json")));
    assert_eq!(sig["format"], "kmsig/1");
    assert_eq!(sig["algorithm"], "rsa-pkcs1-sha256");
}

fn out_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

#[test]
fn manifest_then_openssl_ed25519_rawin_then_attach_verifies() {
    let s = Setup::new();
    s.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    s.openssl_pubout("ed");
    let out = run_ok(&mut s.km_sign(&[
        "manifest",
        "--name",
        "demo",
        "--version",
        "1.0.0",
        "--tier",
        "free",
        "--pub",
        "ed.pub",
        "libdemo.so",
    ]));
    std::fs::write(s.path("m.json"), &out.stdout).expect("write manifest");
    s.openssl(&[
        "pkeyutl", "-sign", "-inkey", "ed.pem", "-rawin", "-in", "m.json", "-out", "m.sig",
    ]);
    run_ok(&mut s.km_sign(&[
        "attach",
        "--manifest",
        "m.json",
        "--signature",
        "m.sig",
        "--pub",
        "ed.pub",
        "libdemo.so",
    ]));
    let out = s.verify_lib("ed.pub");
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
}

#[test]
fn attach_refuses_a_signature_over_different_bytes() {
    let s = Setup::new();
    s.openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    s.openssl_pubout("rsa");
    let out = run_ok(&mut s.km_sign(&[
        "manifest",
        "--name",
        "demo",
        "--version",
        "1.0.0",
        "--tier",
        "free",
        "--pub",
        "rsa.pub",
        "libdemo.so",
    ]));
    std::fs::write(s.path("m.json"), &out.stdout).expect("write manifest");
    // Sign a manifest that says "enterprise", then try to attach it to the "free" one.
    let edited = String::from_utf8(out.stdout)
        .expect("utf-8")
        .replace("\"free\"", "\"enterprise\"");
    std::fs::write(s.path("other.json"), edited).expect("write");
    s.openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        "rsa.pem",
        "-out",
        "other.sig",
        "other.json",
    ]);
    let out = s
        .km_sign(&[
            "attach",
            "--manifest",
            "m.json",
            "--signature",
            "other.sig",
            "--pub",
            "rsa.pub",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 1, "the signature does not verify");
    assert!(
        stderr(&out).contains("libdemo.so"),
        "names the file\n{}",
        describe(&out)
    );
    assert!(!s.path("libdemo.so.kmsig").exists(), "nothing written");

    // A good signature of a manifest for another library is refused too (digest/size).
    std::fs::write(s.path("libother.so"), b"another library").expect("write");
    s.openssl(&[
        "dgst", "-sha256", "-sign", "rsa.pem", "-out", "m.sig", "m.json",
    ]);
    let out = s
        .km_sign(&[
            "attach",
            "--manifest",
            "m.json",
            "--signature",
            "m.sig",
            "--pub",
            "rsa.pub",
            "libother.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 1, "libother.so");
    assert!(!s.path("libother.so.kmsig").exists(), "nothing written");
}

#[test]
fn keygen_writes_a_private_key_with_mode_0600_that_openssl_reads() {
    let s = Setup::new();
    // umask 0: the key file must still be created 0600, not chmod-ed afterwards.
    let mut cmd = Command::new("sh");
    cmd.current_dir(s.dir.path()).args([
        "-c",
        "umask 000; exec \"$0\" keygen --out vendor",
        km_sign_bin().to_str().expect("utf-8 path"),
    ]);
    let out = run_ok(&mut cmd);
    assert!(stderr(&out).contains("key id"), "{}", describe(&out));
    assert_eq!(mode(&s.path("vendor.key")), 0o600);
    assert_eq!(
        mode(&s.path("vendor.pub")) & 0o044,
        0o044,
        "the public key is readable"
    );

    // The key id printed is the documented one: SHA-256 of the SPKI DER, first 16 bytes.
    let der = s.openssl(&["pkey", "-pubin", "-in", "vendor.pub", "-outform", "DER"]);
    let digest = ring::digest::digest(&ring::digest::SHA256, &der.stdout);
    let key_id = hex::encode(&digest.as_ref()[..16]);
    assert!(
        stderr(&out).contains(&format!("key id {key_id}")),
        "{key_id}\n{}",
        describe(&out)
    );

    // openssl reads both files and agrees on the public key.
    let pubout = s.openssl(&["pkey", "-in", "vendor.key", "-pubout"]);
    assert_eq!(pubout.stdout, out_bytes(&s.path("vendor.pub")));

    // No overwrite without --force; the old key survives.
    let before = out_bytes(&s.path("vendor.key"));
    let out = s
        .km_sign(&["keygen", "--out", "vendor"])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "already exists");
    assert_eq!(out_bytes(&s.path("vendor.key")), before);
    run_ok(&mut s.km_sign(&["keygen", "--out", "vendor", "--force"]));
    assert_ne!(out_bytes(&s.path("vendor.key")), before);
    assert_eq!(mode(&s.path("vendor.key")), 0o600);

    // An RSA key from keygen signs, and openssl reads it.
    run_ok(&mut s.km_sign(&["keygen", "--out", "rsa", "--alg", "rsa", "--bits", "2048"]));
    assert_eq!(mode(&s.path("rsa.key")), 0o600);
    s.openssl(&["pkey", "-in", "rsa.key", "-noout"]);
    s.sign_lib("rsa.key");
    assert_eq!(code(&s.verify_lib("rsa.pub")), Some(0));
}

#[test]
fn exit_codes_0_ok_1_refused_2_errors() {
    let s = Setup::new();
    run_ok(&mut s.km_sign(&["keygen", "--out", "a"]));
    run_ok(&mut s.km_sign(&["keygen", "--out", "b"]));

    // Not signed yet: refused.
    assert_exit(&s.verify_lib("a.pub"), 1, "libdemo.so.kmsig");
    s.sign_lib("a.key");
    assert_eq!(code(&s.verify_lib("a.pub")), Some(0));

    // Another key: refused, naming the key id.
    assert_exit(&s.verify_lib("b.pub"), 1, "is not trusted");
    assert!(stderr(&s.verify_lib("b.pub")).contains("the key given (b.pub) is "));

    // Wrong plugin name: refused.
    let out = s
        .km_sign(&["verify", "--pub", "a.pub", "--name", "other", "libdemo.so"])
        .output()
        .expect("runs");
    assert_exit(&out, 1, "\"other\"");

    // Wrong target: refused.
    let out = s
        .km_sign(&[
            "verify",
            "--pub",
            "a.pub",
            "--target",
            "aarch64-apple-darwin",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 1, "target");

    // One flipped byte in the library: refused with both hashes.
    let mut lib = out_bytes(&s.lib());
    lib[5] ^= 1;
    std::fs::write(s.lib(), &lib).expect("write");
    assert_exit(&s.verify_lib("a.pub"), 1, "sha256");

    // Garbage signature file: refused.
    std::fs::write(s.path("libdemo.so.kmsig"), b"{ garbage").expect("write");
    assert_exit(&s.verify_lib("a.pub"), 1, "malformed signature file");

    // I/O and usage errors: 2.
    let out = s
        .km_sign(&["verify", "--pub", "a.pub", "missing.so"])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "missing.so");
    let out = s
        .km_sign(&["verify", "--pub", "nope.pub", "libdemo.so"])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "nope.pub");
    let out = s
        .km_sign(&["verify", "--pub", "a.key", "libdemo.so"])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "a.key");
    let out = s
        .km_sign(&[
            "sign",
            "--key",
            "a.key",
            "--name",
            "Bad Name",
            "--version",
            "1.0.0",
            "--tier",
            "free",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "Bad Name");
    let out = s
        .km_sign(&[
            "sign",
            "--key",
            "a.key",
            "--name",
            "demo",
            "--version",
            "1.0.0",
            "--tier",
            "gold",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "gold");
    let out = s
        .km_sign(&[
            "sign",
            "--key",
            "a.key",
            "--name",
            "demo",
            "--version",
            "1.0.0",
            "--tier",
            "free",
            "--expires",
            "2001-01-01",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 2, "in the past");
    let out = s.km_sign(&["frobnicate"]).output().expect("runs");
    assert_eq!(code(&out), Some(2), "{}", describe(&out));
    let out = s
        .km_sign(&[
            "manifest",
            "--name",
            "demo",
            "--version",
            "1.0.0",
            "--tier",
            "free",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_eq!(
        code(&out),
        Some(2),
        "--key-id or --pub is required\n{}",
        describe(&out)
    );
}

#[test]
fn an_expired_signature_is_refused() {
    let s = Setup::new();
    run_ok(&mut s.km_sign(&["keygen", "--out", "k"]));
    // km-sign refuses to sign with a past expiry, so make the expired manifest by hand and sign
    // it with openssl: attach checks expiry like km does.
    let out = run_ok(&mut s.km_sign(&[
        "manifest",
        "--name",
        "demo",
        "--version",
        "1.0.0",
        "--tier",
        "free",
        "--expires",
        "2099-01-01",
        "--pub",
        "k.pub",
        "libdemo.so",
    ]));
    let past = String::from_utf8(out.stdout)
        .expect("utf-8")
        .replace("2099-01-01T00:00:00Z", "2001-01-01T00:00:00Z");
    std::fs::write(s.path("m.json"), past).expect("write");
    s.openssl(&[
        "pkeyutl", "-sign", "-inkey", "k.key", "-rawin", "-in", "m.json", "-out", "m.sig",
    ]);
    let out = s
        .km_sign(&[
            "attach",
            "--manifest",
            "m.json",
            "--signature",
            "m.sig",
            "--pub",
            "k.pub",
            "libdemo.so",
        ])
        .output()
        .expect("runs");
    assert_exit(&out, 1, "expired at 2001-01-01T00:00:00Z");
}
