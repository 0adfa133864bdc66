//! Builds the list of trusted keys compiled into km: every `*.pub` file in `trusted-keys/`
//! beside this file, plus the PEM files named (colon-separated) in `KM_BUILTIN_TRUSTED_KEYS` at
//! build time. The label of each key is its file stem. The keys are checked when km starts; a
//! file that is not a public key makes every command that verifies plugins fail loudly.
//!
//! It also compiles in the certificate pins of the official API endpoint: `KM_BUILTIN_API_PINS`,
//! a comma-separated list of `sha256/<base64>` SPKI pins (see `src/tls.rs`), at least two (the
//! key in use and a backup). Unset in a source build: no pins, the roots alone decide. A
//! malformed list fails the build, so that a release is never built with pins it cannot use.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=KM_BUILTIN_TRUSTED_KEYS");
    println!("cargo:rerun-if-env-changed=KM_BUILTIN_API_PINS");
    println!("cargo:rerun-if-changed=trusted-keys");
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("trusted-keys") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pub") {
                files.push(path);
            }
        }
    }
    files.sort();
    if let Some(list) = std::env::var_os("KM_BUILTIN_TRUSTED_KEYS") {
        files.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    let mut out = String::from("&[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let pem = std::fs::read_to_string(file).unwrap_or_else(|e| {
            panic!(
                "KM_BUILTIN_TRUSTED_KEYS: cannot read {}: {e}",
                file.display()
            )
        });
        let label = label_of(file);
        let _ = writeln!(out, "    ({label:?}, {pem:?}),");
    }
    out.push(']');
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("builtin_keys.rs"), out).expect("writing builtin_keys.rs");
    let pins = builtin_pins(&std::env::var("KM_BUILTIN_API_PINS").unwrap_or_default());
    std::fs::write(out_dir.join("builtin_pins.rs"), format!("&{pins:?}"))
        .expect("writing builtin_pins.rs");
}

/// The pins in `list`, checked for form: `sha256/` and 44 characters of base64 (32 bytes), at
/// least two distinct ones. km parses them again when it starts.
fn builtin_pins(list: &str) -> Vec<String> {
    let mut pins: Vec<String> = Vec::new();
    for pin in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let b64 = pin.strip_prefix("sha256/").unwrap_or_else(|| {
            panic!("KM_BUILTIN_API_PINS: {pin:?} must be written sha256/<base64>")
        });
        let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
        let well_formed = b64.len() == 44
            && b64.ends_with('=')
            && !b64.ends_with("==")
            && b64[..43].chars().all(alphabet);
        assert!(
            well_formed,
            "KM_BUILTIN_API_PINS: {pin:?} is not the base64 of a SHA-256 digest"
        );
        if !pins.iter().any(|p| p == pin) {
            pins.push(pin.to_owned());
        }
    }
    assert!(
        pins.is_empty() || pins.len() >= 2,
        "KM_BUILTIN_API_PINS must list at least two distinct pins (the key in use and a backup)"
    );
    pins
}

fn label_of(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
