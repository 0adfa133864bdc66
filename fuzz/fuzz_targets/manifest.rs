//! The signed manifest's parser: any bytes, an answer; what parses is valid and round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = km_signing::Manifest::parse(data) {
        assert!(m.validate().is_ok());
        let again = km_signing::Manifest::parse(&m.to_bytes()).expect("a parsed manifest re-parses");
        assert_eq!(again, m);
    }
});
