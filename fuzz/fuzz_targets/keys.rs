//! Key parsers: PEM (public and private) and DER (SPKI, PKCS#8).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = km_signing::PublicKey::from_spki_der(data);
    let _ = km_signing::PrivateKey::from_pkcs8(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = km_signing::PublicKey::from_pem(text) {
            let again = km_signing::PublicKey::from_pem(&key.to_pem()).expect("re-parses");
            assert_eq!(again.key_id(), key.key_id());
        }
        let _ = km_signing::PrivateKey::from_pem(text);
    }
});
