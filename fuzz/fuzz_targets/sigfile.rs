//! The `.kmsig` parser: any bytes, an answer; what parses re-serialises to what parses the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = km_signing::SignatureFile::parse(data) {
        let bytes = sig.to_bytes();
        let again = km_signing::SignatureFile::parse(&bytes).expect("re-parses");
        assert_eq!(again.to_bytes(), bytes);
    }
});
