//! Customer credentials stamped into a compiled plugin, and the region that receives them.
//!
//! A premium plugin reserves a fixed-size region in its library with
//! [`credentials_region!`](crate::credentials_region):
//! a marker followed by zeros. `km-sign build-plugin` (issue 5) finds that marker in the built
//! library and [`stamp`]s the region with
//!
//! - the Ed25519 public key of the Kilometers API, in clear: the key the plugin checks its
//!   subscription tokens with ("the API key it was built with", never committed anywhere);
//! - the customer's credentials (customer id, customer token, tier, build time), encrypted with
//!   AES-256-GCM under a key derived with HKDF-SHA256 from that customer's API key and a random
//!   salt, so that only that customer's API key [`open`]s them.
//!
//! The stamped library is what gets signed, so the region cannot be changed afterwards without
//! breaking the signature km checks before loading. The region's header (marker, version, public
//! key, salt, nonce) is also the AEAD's associated data: a changed public key or header makes
//! [`open`] fail even on an unsigned copy.
//!
//! Layout (all offsets in bytes, [`REGION_SIZE`] in total):
//!
//! ```text
//!   0  16  marker (MARKER, built at run time so that the library holds it exactly once)
//!  16   1  format version: 0 = not stamped, 1 = stamped
//!  17   1  reserved (0)
//!  18   2  ciphertext length N, little endian (includes the 16-byte GCM tag)
//!  20  32  API public key (Ed25519, raw)
//!  52  16  HKDF salt
//!  68  32  SHA-256 of "km-customer-id\0" || customer id (names customer builds; not secret)
//! 100  12  AES-GCM nonce
//! 112   N  ciphertext of the credentials JSON {customer_id, customer_token, tier, build_time}
//!  ..      zeros
//! ```
//!
//! What this does NOT protect: a user holding both the library and the right API key can read
//! their own credentials, by design. Secrecy against other customers rests on the API key, and
//! integrity on the library's signature.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::types::Tier;

/// The size of the region a plugin reserves.
pub const REGION_SIZE: usize = 4096;

/// The length of the marker that starts the region.
pub const MARKER_LEN: usize = 16;

const VERSION_EMPTY: u8 = 0;
const VERSION_1: u8 = 1;

const OFF_VERSION: usize = 16;
const OFF_LEN: usize = 18;
const OFF_PUBKEY: usize = 20;
const OFF_SALT: usize = 52;
const OFF_CUSTOMER_HASH: usize = 68;
const OFF_NONCE: usize = 100;
const OFF_CIPHERTEXT: usize = 112;
const TAG_LEN: usize = 16;

/// The largest credentials JSON that fits.
pub const MAX_PLAINTEXT: usize = REGION_SIZE - OFF_CIPHERTEXT - TAG_LEN;

const HKDF_INFO: &[u8] = b"km-credentials-v1 aes-256-gcm";
const CUSTOMER_HASH_PREFIX: &[u8] = b"km-customer-id\0";

// The marker is "KM-CREDENTIALS\x01\x00" XOR-masked, so that code which searches for or checks
// the marker never holds it as a constant: the only place the plain marker appears in a plugin
// library is the reserved region itself, and `stamp` can insist on exactly one match.
const MASK: u8 = 0xA5;
const MASKED_MARKER: [u8; MARKER_LEN] = {
    let plain = *b"KM-CREDENTIALS\x01\x00";
    let mut out = [0u8; MARKER_LEN];
    let mut i = 0;
    while i < MARKER_LEN {
        out[i] = plain[i] ^ MASK;
        i += 1;
    }
    out
};

/// The initial content of the region: the marker, then zeros. Used by [`credentials_region!`];
/// evaluated at compile time, so only the region's static holds the plain marker.
#[doc(hidden)]
pub const EMPTY_REGION: [u8; REGION_SIZE] = {
    let mut out = [0u8; REGION_SIZE];
    let mut i = 0;
    while i < MARKER_LEN {
        out[i] = MASKED_MARKER[i] ^ MASK;
        i += 1;
    }
    out
};

/// The marker, unmasked at run time (through `black_box`, so the compiler cannot fold it into a
/// constant that would be a second copy of the marker in the library).
fn marker() -> [u8; MARKER_LEN] {
    let mask = core::hint::black_box(MASK);
    let mut out = [0u8; MARKER_LEN];
    for (o, m) in out.iter_mut().zip(MASKED_MARKER) {
        *o = m ^ mask;
    }
    out
}

/// Reserves the credentials region in a plugin library and defines
/// `fn km_credentials_region() -> &'static [u8]` that reads it.
///
/// Call it once at the top level of a plugin crate and hand the region to
/// [`Subscription::new`](crate::Subscription::new):
///
/// ```ignore
/// km_abi::credentials_region!();
/// let subscription = km_abi::Subscription::new("api-logger", "1.0.0", Tier::Pro, km_credentials_region());
/// ```
#[macro_export]
macro_rules! credentials_region {
    () => {
        /// The credentials region `km-sign build-plugin` stamps (see `km_abi::credentials`).
        fn km_credentials_region() -> &'static [u8] {
            #[used]
            static KM_CREDENTIALS_REGION: [u8; $crate::credentials::REGION_SIZE] =
                $crate::credentials::EMPTY_REGION;
            $crate::credentials::read_region(&KM_CREDENTIALS_REGION)
        }
    };
}

/// Reads a region through `black_box`: the compiler sees an immutable static of zeros and would
/// otherwise be entitled to fold every read of it into constants, ignoring what was stamped.
#[doc(hidden)]
pub fn read_region(region: &'static [u8; REGION_SIZE]) -> &'static [u8] {
    core::hint::black_box(region).as_slice()
}

/// Why stamping or opening credentials failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    /// The library has no credentials region (the plugin does not use `credentials_region!`).
    NoRegion,
    /// The marker occurs more than once: the library is ambiguous and is not stamped.
    MultipleRegions {
        /// How many times it occurs.
        count: usize,
    },
    /// The region is there but was never stamped (not a customer build).
    NotStamped,
    /// The region was stamped already; stamp the pristine library instead.
    AlreadyStamped,
    /// The region has a format version this km-abi does not know.
    UnknownVersion(u8),
    /// The region is inconsistent (wrong size, impossible lengths).
    Malformed(&'static str),
    /// The credentials do not open with this API key: another customer's build, or tampered.
    WrongKeyOrTampered,
    /// The credentials are too large for the region.
    TooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// An input is unusable (empty customer id, empty API key, bad public key length).
    InvalidInput(&'static str),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::NoRegion => f.write_str("the library reserves no credentials region"),
            CredentialsError::MultipleRegions { count } => {
                write!(f, "the credentials marker occurs {count} times in the library (expected once)")
            }
            CredentialsError::NotStamped => {
                f.write_str("the plugin was not built for a customer (its credentials region is empty)")
            }
            CredentialsError::AlreadyStamped => f.write_str("the library is already stamped"),
            CredentialsError::UnknownVersion(v) => write!(f, "unknown credentials format version {v}"),
            CredentialsError::Malformed(what) => write!(f, "malformed credentials region: {what}"),
            CredentialsError::WrongKeyOrTampered => f.write_str(
                "the stamped credentials do not open with this API key (built for another customer, or altered)",
            ),
            CredentialsError::TooLarge { needed, available } => {
                write!(f, "credentials need {needed} bytes, the region holds {available}")
            }
            CredentialsError::InvalidInput(what) => write!(f, "invalid input: {what}"),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// A customer's credentials, as stamped into their build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The customer's id at the Kilometers API.
    pub customer_id: String,
    /// A per-customer token the API issued for this build.
    pub customer_token: String,
    /// The tier the build was made for.
    #[serde(with = "tier_serde")]
    pub tier: Tier,
    /// When the build was stamped: seconds since the Unix epoch.
    pub build_time: i64,
}

pub(crate) mod tier_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::types::Tier;

    pub(crate) fn serialize<S: Serializer>(tier: &Tier, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tier.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tier, D::Error> {
        let text = String::deserialize(d)?;
        // Only the canonical spelling: a token or region is not a place for lenient parsing.
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tier {text:?}")))
    }
}

/// What [`stamp`] did, for the build tool's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    /// Where the region starts in the library.
    pub offset: usize,
    /// Hex SHA-256 of the customer id (see [`customer_hash`]).
    pub customer_hash: String,
}

/// The public, unencrypted part of a stamped region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// The API's Ed25519 public key the plugin trusts.
    pub api_public_key: [u8; 32],
    /// SHA-256 of the customer id, as stamped.
    pub customer_hash: [u8; 32],
}

/// SHA-256 of `"km-customer-id\0" || customer_id`, in hex: names a customer build
/// (`km-plugin-NAME-<hash prefix>`) without spelling the customer id.
pub fn customer_hash(customer_id: &str) -> String {
    hex_lower(&customer_hash_bytes(customer_id))
}

fn customer_hash_bytes(customer_id: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(CUSTOMER_HASH_PREFIX);
    ctx.update(customer_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Finds the offset of the one credentials region in a library.
pub fn find_region(lib_bytes: &[u8]) -> Result<usize, CredentialsError> {
    let marker = marker();
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(pos) = find(&lib_bytes[start..], &marker) {
        found.push(start + pos);
        start += pos + 1;
    }
    match found.as_slice() {
        [] => Err(CredentialsError::NoRegion),
        [offset] if offset + REGION_SIZE <= lib_bytes.len() => Ok(*offset),
        [_] => Err(CredentialsError::Malformed(
            "the region runs past the end of the library",
        )),
        many => Err(CredentialsError::MultipleRegions { count: many.len() }),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        match haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if haystack[i..i + needle.len()] == *needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// What goes into a customer build.
#[derive(Debug, Clone)]
pub struct StampInput<'a> {
    /// The API's Ed25519 public key (32 raw bytes).
    pub api_public_key: &'a [u8],
    /// The customer's API key: the credentials open only with it.
    pub api_key: &'a str,
    /// The credentials.
    pub credentials: &'a Credentials,
}

/// Stamps `input` into the unique, unstamped credentials region of `lib_bytes` (a library read
/// into memory; the caller writes it out and signs it). Refuses a library with no region, more
/// than one, or one stamped already.
pub fn stamp(lib_bytes: &mut [u8], input: &StampInput<'_>) -> Result<Stamped, CredentialsError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .map_err(|_| CredentialsError::InvalidInput("no system randomness"))?;
    rng.fill(&mut nonce)
        .map_err(|_| CredentialsError::InvalidInput("no system randomness"))?;
    stamp_with(lib_bytes, input, salt, nonce)
}

fn stamp_with(
    lib_bytes: &mut [u8],
    input: &StampInput<'_>,
    salt: [u8; 16],
    nonce: [u8; 12],
) -> Result<Stamped, CredentialsError> {
    if input.api_public_key.len() != 32 {
        return Err(CredentialsError::InvalidInput(
            "the API public key must be 32 bytes (Ed25519)",
        ));
    }
    if input.api_key.is_empty() {
        return Err(CredentialsError::InvalidInput("empty API key"));
    }
    if input.credentials.customer_id.is_empty() {
        return Err(CredentialsError::InvalidInput("empty customer id"));
    }
    let offset = find_region(lib_bytes)?;
    let region = &mut lib_bytes[offset..offset + REGION_SIZE];
    match region[OFF_VERSION] {
        VERSION_EMPTY => {}
        VERSION_1 => return Err(CredentialsError::AlreadyStamped),
        other => return Err(CredentialsError::UnknownVersion(other)),
    }
    if region[MARKER_LEN..].iter().any(|&b| b != 0) {
        return Err(CredentialsError::Malformed(
            "an unstamped region must be zeros after the marker",
        ));
    }
    let plaintext = serde_json::to_vec(input.credentials)
        .map_err(|_| CredentialsError::InvalidInput("credentials do not serialise"))?;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(CredentialsError::TooLarge {
            needed: plaintext.len(),
            available: MAX_PLAINTEXT,
        });
    }
    let ct_len = plaintext.len() + TAG_LEN;
    let ct_len_u16 =
        u16::try_from(ct_len).map_err(|_| CredentialsError::Malformed("ciphertext length"))?;

    region[OFF_VERSION] = VERSION_1;
    region[OFF_LEN..OFF_LEN + 2].copy_from_slice(&ct_len_u16.to_le_bytes());
    region[OFF_PUBKEY..OFF_PUBKEY + 32].copy_from_slice(input.api_public_key);
    region[OFF_SALT..OFF_SALT + 16].copy_from_slice(&salt);
    let hash = customer_hash_bytes(&input.credentials.customer_id);
    region[OFF_CUSTOMER_HASH..OFF_CUSTOMER_HASH + 32].copy_from_slice(&hash);
    region[OFF_NONCE..OFF_NONCE + 12].copy_from_slice(&nonce);

    let key = derive_key(input.api_key, &salt);
    let (header, body) = region.split_at_mut(OFF_CIPHERTEXT);
    let body = &mut body[..plaintext.len()];
    body.copy_from_slice(&plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*header),
            body,
        )
        .map_err(|_| CredentialsError::Malformed("encryption failed"))?;
    let tag_at = OFF_CIPHERTEXT + plaintext.len();
    region[tag_at..tag_at + TAG_LEN].copy_from_slice(tag.as_ref());
    Ok(Stamped {
        offset,
        customer_hash: hex_lower(&hash),
    })
}

fn derive_key(api_key: &str, salt: &[u8]) -> LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(api_key.as_bytes());
    // `expand` fails only when the output is longer than 255 hash lengths; 32 bytes is not.
    let okm = prk.expand(&[HKDF_INFO], &AES_256_GCM).map(UnboundKey::from);
    match okm {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("HKDF-SHA256 always expands to 32 bytes"),
    }
}

fn checked_region(region: &[u8]) -> Result<&[u8], CredentialsError> {
    if region.len() != REGION_SIZE {
        return Err(CredentialsError::Malformed("the region has the wrong size"));
    }
    if region[..MARKER_LEN] != marker() {
        return Err(CredentialsError::Malformed(
            "the region does not start with the marker",
        ));
    }
    match region[OFF_VERSION] {
        VERSION_EMPTY => Err(CredentialsError::NotStamped),
        VERSION_1 => Ok(region),
        other => Err(CredentialsError::UnknownVersion(other)),
    }
}

/// The clear part of a stamped region: the API public key the plugin trusts.
pub fn region_info(region: &[u8]) -> Result<RegionInfo, CredentialsError> {
    let region = checked_region(region)?;
    let mut api_public_key = [0u8; 32];
    api_public_key.copy_from_slice(&region[OFF_PUBKEY..OFF_PUBKEY + 32]);
    let mut customer_hash = [0u8; 32];
    customer_hash.copy_from_slice(&region[OFF_CUSTOMER_HASH..OFF_CUSTOMER_HASH + 32]);
    Ok(RegionInfo {
        api_public_key,
        customer_hash,
    })
}

/// Decrypts the credentials of a stamped region with the customer's API key.
/// Another customer's key, or any change to the region, gives [`CredentialsError::WrongKeyOrTampered`].
pub fn open(region: &[u8], api_key: &str) -> Result<Credentials, CredentialsError> {
    let region = checked_region(region)?;
    if api_key.is_empty() {
        return Err(CredentialsError::InvalidInput("empty API key"));
    }
    let ct_len = usize::from(u16::from_le_bytes([region[OFF_LEN], region[OFF_LEN + 1]]));
    if ct_len < TAG_LEN || OFF_CIPHERTEXT + ct_len > REGION_SIZE {
        return Err(CredentialsError::Malformed("impossible ciphertext length"));
    }
    if region[OFF_CIPHERTEXT + ct_len..].iter().any(|&b| b != 0) {
        return Err(CredentialsError::WrongKeyOrTampered);
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&region[OFF_NONCE..OFF_NONCE + 12]);
    let key = derive_key(api_key, &region[OFF_SALT..OFF_SALT + 16]);
    let mut buf = region[OFF_CIPHERTEXT..OFF_CIPHERTEXT + ct_len].to_vec();
    let plaintext = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&region[..OFF_CIPHERTEXT]),
            &mut buf,
        )
        .map_err(|_| CredentialsError::WrongKeyOrTampered)?;
    let credentials: Credentials = serde_json::from_slice(plaintext)
        .map_err(|_| CredentialsError::Malformed("the credentials are not the expected JSON"))?;
    if customer_hash_bytes(&credentials.customer_id)[..]
        != region[OFF_CUSTOMER_HASH..OFF_CUSTOMER_HASH + 32]
    {
        return Err(CredentialsError::WrongKeyOrTampered);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(id: &str) -> Credentials {
        Credentials {
            customer_id: id.to_owned(),
            customer_token: format!("tok-{id}"),
            tier: Tier::Pro,
            build_time: 1_700_000_000,
        }
    }

    /// A fake library: some bytes, the empty region, more bytes.
    fn library() -> Vec<u8> {
        let mut lib = vec![0x7fu8; 1000];
        lib.extend_from_slice(&EMPTY_REGION);
        lib.extend(std::iter::repeat(0x90u8).take(777));
        lib
    }

    const PK: [u8; 32] = [7u8; 32];

    fn stamped_for(id: &str, key: &str) -> Vec<u8> {
        let mut lib = library();
        let c = creds(id);
        stamp(
            &mut lib,
            &StampInput {
                api_public_key: &PK,
                api_key: key,
                credentials: &c,
            },
        )
        .expect("stamps");
        lib
    }

    #[test]
    fn the_plain_marker_appears_only_in_the_region() {
        let masked = MASKED_MARKER;
        assert_ne!(masked[..], marker()[..]);
        assert_eq!(EMPTY_REGION[..MARKER_LEN], marker()[..]);
    }

    #[test]
    fn stamp_then_open_round_trips() {
        let lib = stamped_for("cust_a", "km_live_aaaa");
        let offset = find_region(&lib).expect("region");
        assert_eq!(offset, 1000);
        let region = &lib[offset..offset + REGION_SIZE];
        assert_eq!(
            open(region, "km_live_aaaa").expect("opens"),
            creds("cust_a")
        );
        let info = region_info(region).expect("info");
        assert_eq!(info.api_public_key, PK);
        assert_eq!(hex_lower(&info.customer_hash), customer_hash("cust_a"));
        // The bytes outside the region are untouched.
        assert!(lib[..1000].iter().all(|&b| b == 0x7f));
        assert!(lib[1000 + REGION_SIZE..].iter().all(|&b| b == 0x90));
    }

    #[test]
    fn customer_b_cannot_open_customer_a_credentials() {
        let lib = stamped_for("cust_a", "km_live_aaaa");
        let region = &lib[1000..1000 + REGION_SIZE];
        assert_eq!(
            open(region, "km_live_bbbb"),
            Err(CredentialsError::WrongKeyOrTampered)
        );
        assert_eq!(
            open(region, ""),
            Err(CredentialsError::InvalidInput("empty API key"))
        );
    }

    #[test]
    fn credentials_never_appear_in_clear() {
        let lib = stamped_for("cust_secret_id", "km_live_aaaa");
        let text = String::from_utf8_lossy(&lib);
        assert!(!text.contains("cust_secret_id"));
        assert!(!text.contains("tok-cust_secret_id"));
        assert!(!text.contains("km_live_aaaa"));
    }

    #[test]
    fn tampering_is_detected() {
        let lib = stamped_for("cust_a", "km_live_aaaa");
        // Every byte of the header after the marker, and of the ciphertext, is covered.
        for at in [
            OFF_VERSION + 1,
            OFF_LEN,
            OFF_PUBKEY,
            OFF_PUBKEY + 31,
            OFF_SALT,
            OFF_CUSTOMER_HASH,
            OFF_NONCE,
            OFF_CIPHERTEXT,
            OFF_CIPHERTEXT + 20,
            REGION_SIZE - 1,
        ] {
            let mut copy = lib[1000..1000 + REGION_SIZE].to_vec();
            copy[at] ^= 0x01;
            assert!(
                open(&copy, "km_live_aaaa").is_err(),
                "flip at {at} went unnoticed"
            );
        }
        // A swapped API public key in particular.
        let mut copy = lib[1000..1000 + REGION_SIZE].to_vec();
        copy[OFF_PUBKEY..OFF_PUBKEY + 32].copy_from_slice(&[9u8; 32]);
        assert_eq!(
            open(&copy, "km_live_aaaa"),
            Err(CredentialsError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn refuses_no_region_several_regions_and_restamping() {
        let c = creds("cust_a");
        let input = StampInput {
            api_public_key: &PK,
            api_key: "k",
            credentials: &c,
        };
        let mut none = vec![0u8; 9000];
        assert_eq!(stamp(&mut none, &input), Err(CredentialsError::NoRegion));
        let mut two = library();
        two.extend_from_slice(&EMPTY_REGION);
        assert_eq!(
            stamp(&mut two, &input),
            Err(CredentialsError::MultipleRegions { count: 2 })
        );
        let mut once = stamped_for("cust_a", "k");
        assert_eq!(
            stamp(&mut once, &input),
            Err(CredentialsError::AlreadyStamped)
        );
        let mut short = EMPTY_REGION[..100].to_vec();
        assert!(matches!(
            stamp(&mut short, &input),
            Err(CredentialsError::Malformed(_))
        ));
    }

    #[test]
    fn an_unstamped_region_has_no_key() {
        assert_eq!(
            region_info(&EMPTY_REGION),
            Err(CredentialsError::NotStamped)
        );
        assert_eq!(open(&EMPTY_REGION, "k"), Err(CredentialsError::NotStamped));
        assert!(matches!(
            region_info(&[0u8; REGION_SIZE]),
            Err(CredentialsError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_bad_inputs_and_oversized_credentials() {
        let mut lib = library();
        let mut c = creds("cust_a");
        let bad_pk = StampInput {
            api_public_key: &[1u8; 31],
            api_key: "k",
            credentials: &c,
        };
        assert!(matches!(
            stamp(&mut lib, &bad_pk),
            Err(CredentialsError::InvalidInput(_))
        ));
        c.customer_token = "x".repeat(MAX_PLAINTEXT);
        let big = StampInput {
            api_public_key: &PK,
            api_key: "k",
            credentials: &c,
        };
        assert!(matches!(
            stamp(&mut lib, &big),
            Err(CredentialsError::TooLarge { .. })
        ));
        // Nothing was written by the refused attempts.
        assert_eq!(lib, library());
    }

    #[test]
    fn two_stamps_of_one_customer_differ() {
        // Fresh salt and nonce each time: identical builds are not linkable byte for byte.
        assert_ne!(stamped_for("cust_a", "k"), stamped_for("cust_a", "k"));
    }
}
