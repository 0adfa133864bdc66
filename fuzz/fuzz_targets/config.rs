//! `config.toml` through km's own reader (StrictModes, cap, TOML, the settings' types).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("tempdir");
    }
    DIR.with(|dir| {
        let path = dir.path().join("config.toml");
        km_durable_write(&path, data);
        let _ = km_cli::config::Config::load_file(&path);
    });
});

fn km_durable_write(path: &std::path::Path, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open");
    std::io::Write::write_all(&mut file, data).expect("write");
}
