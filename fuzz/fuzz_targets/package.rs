//! The `.kmpkg` reader (gzip, tar, three entries) with small limits: any bytes, an answer, and
//! never more than the limits allow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = km_signing::Limits::for_library(256 * 1024);
    if let Ok(pkg) = km_signing::read_package(data, limits) {
        assert!(pkg.library.len() as u64 <= limits.max_entry);
    }
});
