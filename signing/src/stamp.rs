//! Customer-specific builds: stamp a customer's credentials into the region a compiled plugin
//! reserves (`km_plugin_sdk::credentials`), without recompiling, and name the result.
//!
//! The encryption itself (AES-256-GCM under the build key, derived by HKDF from the customer
//! secret and a fresh build id; see `km_plugin_sdk::credentials` for the keys and what they
//! protect) lives in `km_plugin_sdk::credentials`, beside the code in the plugin that opens it,
//! so the two cannot drift apart. This module is the build side's glue: it works on a copy of the library in
//! memory, so the pristine library is never modified and the clear-text credentials never touch
//! a disk. The stamped bytes are what gets signed.

use km_plugin_sdk::credentials::{self, Credentials, CredentialsError, StampInput};

/// How many hex digits of the customer hash name a customer build.
pub const CUSTOMER_HASH_DIGITS: usize = 8;

/// The file name of a customer build of plugin `name`:
/// `libkm-plugin-NAME-<first 8 hex digits of the customer hash>.so` (the platform's library
/// prefix and suffix, so that km's loader picks it up). The customer id itself is not spelled.
pub fn customer_build_file_name(name: &str, customer_id: &str) -> String {
    let hash = credentials::customer_hash(customer_id);
    crate::package::library_file_name(&format!(
        "km-plugin-{name}-{}",
        &hash[..CUSTOMER_HASH_DIGITS]
    ))
}

/// Returns a stamped copy of `library`: `creds` encrypted under the build key of a fresh build id
/// (derived from `creds.customer_token`, the customer secret the API holds), with the API's
/// Ed25519 public key (32 bytes) the plugin will trust. Refuses a library with no region, more
/// than one, or one stamped already (see [`CredentialsError`]).
pub fn stamp_library(
    library: &[u8],
    creds: &Credentials,
    api_public_key: &[u8],
) -> Result<(Vec<u8>, credentials::Stamped), CredentialsError> {
    let mut stamped = library.to_vec();
    let report = credentials::stamp(
        &mut stamped,
        &StampInput {
            api_public_key,
            credentials: creds,
        },
    )?;
    Ok((stamped, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_copy_opens_with_the_build_key_of_its_customer_secret() {
        use km_plugin_sdk::credentials::{build_key, open, region_info, EMPTY_REGION, REGION_SIZE};
        let mut pristine = vec![1u8; 64];
        pristine.extend_from_slice(&EMPTY_REGION);
        let creds = Credentials {
            customer_id: "cust_a".to_owned(),
            customer_token: "ct-cust_a".to_owned(),
            tier: km_abi::Tier::Pro,
            build_time: 1,
        };
        let (stamped, report) = stamp_library(&pristine, &creds, &[5u8; 32]).expect("stamps");
        assert_eq!(
            pristine[64..],
            EMPTY_REGION[..],
            "the pristine library is only read"
        );
        let region = &stamped[report.offset..report.offset + REGION_SIZE];
        let info = region_info(region).expect("info");
        assert_eq!(info.build_id_hex(), report.build_id);
        let key = build_key("ct-cust_a", &info.build_id);
        assert_eq!(open(region, &key).expect("opens"), creds);
    }

    #[test]
    fn the_name_hides_the_customer_id() {
        let name = customer_build_file_name("api-logger", "cust_a");
        assert!(name.contains("km-plugin-api-logger-"), "{name}");
        assert!(!name.contains("cust_a"));
        assert_ne!(name, customer_build_file_name("api-logger", "cust_b"));
    }
}
