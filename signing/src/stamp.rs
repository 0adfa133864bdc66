//! Customer-specific builds: stamp a customer's credentials into the region a compiled plugin
//! reserves (`km_plugin_sdk::credentials`), without recompiling, and name the result.
//!
//! The encryption itself (AES-256-GCM under a key derived by HKDF from the customer's API key)
//! lives in `km_plugin_sdk::credentials`, beside the code in the plugin that opens it, so the two cannot
//! drift apart. This module is the build side's glue: it works on a copy of the library in
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
    format!(
        "{}km-plugin-{name}-{}{}",
        std::env::consts::DLL_PREFIX,
        &hash[..CUSTOMER_HASH_DIGITS],
        std::env::consts::DLL_SUFFIX
    )
}

/// Returns a stamped copy of `library`: `creds` encrypted for `api_key`, with the API's Ed25519
/// public key (32 bytes) the plugin will trust. Refuses a library with no region, more than one,
/// or one stamped already (see [`CredentialsError`]).
pub fn stamp_library(
    library: &[u8],
    creds: &Credentials,
    api_key: &str,
    api_public_key: &[u8],
) -> Result<(Vec<u8>, credentials::Stamped), CredentialsError> {
    let mut stamped = library.to_vec();
    let report = credentials::stamp(
        &mut stamped,
        &StampInput {
            api_public_key,
            api_key,
            credentials: creds,
        },
    )?;
    Ok((stamped, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_hides_the_customer_id() {
        let name = customer_build_file_name("api-logger", "cust_a");
        assert!(name.contains("km-plugin-api-logger-"), "{name}");
        assert!(!name.contains("cust_a"));
        assert_ne!(name, customer_build_file_name("api-logger", "cust_b"));
    }
}
