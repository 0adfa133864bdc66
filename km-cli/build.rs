//! Builds the list of trusted keys compiled into km: every `*.pub` file in `trusted-keys/`
//! beside this file, plus the PEM files named (colon-separated) in `KM_BUILTIN_TRUSTED_KEYS` at
//! build time. The label of each key is its file stem. The keys are checked when km starts; a
//! file that is not a public key makes every command that verifies plugins fail loudly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=KM_BUILTIN_TRUSTED_KEYS");
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
}

fn label_of(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
