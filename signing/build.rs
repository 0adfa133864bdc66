//! Records the target triple this crate is compiled for, so that `km_signing::target_triple()`
//! can name it: the manifest binds a signed library to one triple, and cargo only tells build
//! scripts which one is being built.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=KM_SIGNING_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
