//! Customer credentials stamped into a compiled plugin, the region that receives them, and the
//! keys that open them.
//!
//! A premium plugin reserves a fixed-size region in its library with
//! [`credentials_region!`](crate::credentials_region):
//! a marker followed by zeros. `km-sign build-plugin` finds that marker in the built library and
//! [`stamp`]s the region with
//!
//! - the Ed25519 public key of the Kilometers API, in clear: the key the plugin checks its
//!   subscription tokens with;
//! - a random **build id** and the SHA-256 of the customer id, in clear (they name the build and
//!   its customer, and are no secret);
//! - the customer's credentials (customer id, customer secret, tier, build time), encrypted with
//!   AES-256-GCM under the **build key**.
//!
//! # Keys (credentials format 2)
//!
//! ```text
//! customer secret (`customer_token`: held by the API, stamped encrypted into the customer's builds)
//!   |-- HKDF-SHA256(salt = build id, info = "km-build-key-v2")        -> build key (AES-256-GCM):
//!   |       opens this build's credentials. Never stored in the build: the API hands it out,
//!   |       wrapped for the customer's *current* API key (see `wrap_build_key`).
//!   `-- HKDF-SHA256(salt = build id, info = "km-request-signing-v1")  -> request key (HMAC-SHA256):
//!           signs the plugin's authentication requests (see `crate::request`).
//! ```
//!
//! The build key is not derived from the API key, so rotating the API key changes nothing in the
//! build: after `km init --api-key NEW` the plugin asks the API for its build key again (the API
//! authenticates NEW, checks that the build is that customer's, and answers with the build key
//! wrapped under NEW), keeps that wrap in its data directory, and opens its credentials as
//! before. The old key is refused by the API from the moment of the rotation, and opens nothing
//! offline: the library holds no copy of the build key wrapped under any API key.
//!
//! Who can open a build's credentials: the API (it holds the customer secret), and whoever holds
//! both the library and the customer's current API key (that is, the customer). Not the holder of
//! the library alone, nor of the library and an old API key, nor of an API key alone: the build
//! key alone signs nothing, because the request key needs the customer secret inside the
//! credentials.
//!
//! The stamped library is what gets signed, so the region cannot be changed afterwards without
//! breaking the signature km checks before loading. The region's header (marker, version, public
//! key, build id, customer hash, nonce) is also the AEAD's associated data: a changed public key
//! or header makes [`open`] fail even on an unsigned copy.
//!
//! Layout (all offsets in bytes, [`REGION_SIZE`] in total):
//!
//! ```text
//!   0  16  marker (MARKER, built at run time so that the library holds it exactly once)
//!  16   1  format version: 0 = not stamped, 2 = stamped (1 = the format before API-key
//!          rotation and signed requests, refused: see `CredentialsError::LegacyFormat`)
//!  17   1  reserved (0)
//!  18   2  ciphertext length N, little endian (includes the 16-byte GCM tag)
//!  20  32  API public key (Ed25519, raw)
//!  52  16  build id (random; the HKDF salt of the build and request keys)
//!  68  32  SHA-256 of "km-customer-id\0" || customer id (names customer builds; not secret)
//! 100  12  AES-GCM nonce
//! 112   N  ciphertext of the credentials JSON {customer_id, customer_token, tier, build_time}
//!  ..      zeros
//! ```
//!
//! A wrapped build key (what the API answers and the plugin caches) is base64url, without
//! padding, of
//!
//! ```text
//!   0  16  wrap salt (random)
//!  16  12  AES-GCM nonce (random)
//!  28  48  AES-256-GCM(build key) with its tag, under HKDF-SHA256(ikm = API key,
//!          salt = wrap salt, info = "km-build-key-wrap-v2"), associated data
//!          "km-build-key-wrap-v2\0" || build id || customer hash
//! ```
//!
//! What this does NOT protect: the customer holding both the library and their API key can read
//! their own credentials, by design. Key material is not zeroed in memory after use. Integrity of
//! the region rests on the library's signature; secrecy on the customer secret and the API key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use km_abi::Tier;

/// The size of the region a plugin reserves.
pub const REGION_SIZE: usize = 4096;

/// The length of the marker that starts the region.
pub const MARKER_LEN: usize = 16;

/// The length of a build id.
pub const BUILD_ID_LEN: usize = 16;

/// The credentials format this SDK stamps and opens.
pub const FORMAT: u8 = VERSION_2;

const VERSION_EMPTY: u8 = 0;
/// The format before API-key rotation: credentials under a key derived from the API key.
const VERSION_1: u8 = 1;
const VERSION_2: u8 = 2;

const OFF_VERSION: usize = 16;
const OFF_LEN: usize = 18;
const OFF_PUBKEY: usize = 20;
const OFF_BUILD_ID: usize = 52;
const OFF_CUSTOMER_HASH: usize = 68;
const OFF_NONCE: usize = 100;
const OFF_CIPHERTEXT: usize = 112;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const WRAP_SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = WRAP_SALT_LEN + NONCE_LEN + KEY_LEN + TAG_LEN;

/// The largest credentials JSON that fits.
pub const MAX_PLAINTEXT: usize = REGION_SIZE - OFF_CIPHERTEXT - TAG_LEN;

const BUILD_KEY_INFO: &[u8] = b"km-build-key-v2";
const REQUEST_KEY_INFO: &[u8] = b"km-request-signing-v1";
const WRAP_INFO: &[u8] = b"km-build-key-wrap-v2";
const WRAP_AAD_PREFIX: &[u8] = b"km-build-key-wrap-v2\0";
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
/// km_plugin_sdk::credentials_region!();
/// let subscription = km_plugin_sdk::Subscription::new("api-logger", "1.0.0", Tier::Pro, km_credentials_region());
/// ```
#[macro_export]
macro_rules! credentials_region {
    () => {
        /// The credentials region `km-sign build-plugin` stamps (see `km_plugin_sdk::credentials`).
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
    /// The region was stamped in credentials format 1, before API-key rotation and signed
    /// requests: its credentials open only with the API key of the day it was built, and the
    /// API no longer accepts the unsigned requests of such builds. A new customer build is needed.
    LegacyFormat,
    /// The region has a format version this SDK does not know.
    UnknownVersion(u8),
    /// The region is inconsistent (wrong size, impossible lengths).
    Malformed(&'static str),
    /// The credentials do not open with this build key: the build was altered, or stamped with
    /// a customer secret the API no longer holds.
    WrongKeyOrTampered,
    /// A wrapped build key does not open with this API key: wrapped for another (an earlier)
    /// API key, for another build, or altered.
    WrapDoesNotOpen,
    /// The credentials are too large for the region.
    TooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// An input is unusable (empty customer id or secret, empty API key, bad public key length).
    InvalidInput(&'static str),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::NoRegion => f.write_str("the library reserves no credentials region"),
            CredentialsError::MultipleRegions { count } => {
                write!(
                    f,
                    "the credentials marker occurs {count} times in the library (expected once)"
                )
            }
            CredentialsError::NotStamped => f.write_str(
                "the plugin was not built for a customer (its credentials region is empty)",
            ),
            CredentialsError::AlreadyStamped => f.write_str("the library is already stamped"),
            CredentialsError::LegacyFormat => f.write_str(
                "this customer build was stamped in credentials format 1, from before API-key \
                 rotation and signed requests, which the API no longer accepts: install a new \
                 customer build (km-sign build-plugin)",
            ),
            CredentialsError::UnknownVersion(v) => {
                write!(f, "unknown credentials format version {v}")
            }
            CredentialsError::Malformed(what) => write!(f, "malformed credentials region: {what}"),
            CredentialsError::WrongKeyOrTampered => f.write_str(
                "the stamped credentials do not open with the build key the API gave (the build \
                 was altered, or stamped with a customer secret the API no longer holds)",
            ),
            CredentialsError::WrapDoesNotOpen => f.write_str(
                "the wrapped build key does not open with this API key (wrapped for an earlier \
                 key or another build, or altered)",
            ),
            CredentialsError::TooLarge { needed, available } => {
                write!(
                    f,
                    "credentials need {needed} bytes, the region holds {available}"
                )
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

    use km_abi::Tier;

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
    /// The build id, in hex.
    pub build_id: String,
}

/// The public, unencrypted part of a stamped region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// The API's Ed25519 public key the plugin trusts.
    pub api_public_key: [u8; 32],
    /// SHA-256 of the customer id, as stamped.
    pub customer_hash: [u8; 32],
    /// The build id.
    pub build_id: [u8; BUILD_ID_LEN],
}

impl RegionInfo {
    /// The build id in hex, as requests carry it.
    pub fn build_id_hex(&self) -> String {
        km_durable::digest::hex(&self.build_id)
    }

    /// The customer hash in hex.
    pub fn customer_hash_hex(&self) -> String {
        km_durable::digest::hex(&self.customer_hash)
    }
}

/// The key that opens one build's credentials. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildKey([u8; KEY_LEN]);

impl fmt::Debug for BuildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BuildKey(..)")
    }
}

/// An HKDF output of [`KEY_LEN`] bytes.
struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; KEY_LEN] {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = [0u8; KEY_LEN];
    // `expand` and `fill` fail only when the output is longer than 255 hash lengths; 32 bytes
    // is not, so the zero key below is never what a caller gets.
    if let Ok(okm) = prk.expand(&[info], Len32) {
        if okm.fill(&mut out).is_ok() {
            return out;
        }
    }
    unreachable!("HKDF-SHA256 always expands to 32 bytes")
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    match UnboundKey::new(&AES_256_GCM, bytes) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("AES-256-GCM takes a 32-byte key"),
    }
}

/// The build key of build `build_id` of the customer whose secret is `customer_secret` (the API
/// and the build tool compute it; a plugin gets it from the API, wrapped).
pub fn build_key(customer_secret: &str, build_id: &[u8; BUILD_ID_LEN]) -> BuildKey {
    BuildKey(hkdf32(customer_secret.as_bytes(), build_id, BUILD_KEY_INFO))
}

/// The key that signs the authentication requests of build `build_id` (HMAC-SHA256; see
/// [`crate::request`]). Derived from the customer secret, which only the opened credentials and
/// the API hold, and never from the build key.
pub fn request_key(customer_secret: &str, build_id: &[u8; BUILD_ID_LEN]) -> ring::hmac::Key {
    let bytes = hkdf32(customer_secret.as_bytes(), build_id, REQUEST_KEY_INFO);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)
}

fn wrap_aad(build_id: &[u8; BUILD_ID_LEN], customer_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_PREFIX.len() + BUILD_ID_LEN + 32);
    aad.extend_from_slice(WRAP_AAD_PREFIX);
    aad.extend_from_slice(build_id);
    aad.extend_from_slice(customer_hash);
    aad
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], CredentialsError> {
    let mut out = [0u8; N];
    rng.fill(&mut out)
        .map_err(|_| CredentialsError::InvalidInput("no system randomness"))?;
    Ok(out)
}

/// The build key wrapped for `api_key` (the API's answer after it has authenticated `api_key`
/// as the customer of `info`'s build): the text format of the module doc.
pub fn wrap_build_key(
    key: &BuildKey,
    api_key: &str,
    build_id: &[u8; BUILD_ID_LEN],
    customer_hash: &[u8; 32],
) -> Result<String, CredentialsError> {
    if api_key.is_empty() {
        return Err(CredentialsError::InvalidInput("empty API key"));
    }
    let rng = SystemRandom::new();
    let salt: [u8; WRAP_SALT_LEN] = random(&rng)?;
    let nonce: [u8; NONCE_LEN] = random(&rng)?;
    let wrapping = aead_key(&hkdf32(api_key.as_bytes(), &salt, WRAP_INFO));
    let mut body = key.0.to_vec();
    wrapping
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(build_id, customer_hash)),
            &mut body,
        )
        .map_err(|_| CredentialsError::Malformed("encryption failed"))?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Opens a wrapped build key with `api_key`, for the build `info` describes. Any other API key,
/// build or change gives [`CredentialsError::WrapDoesNotOpen`].
pub fn unwrap_build_key(
    wrapped: &str,
    api_key: &str,
    info: &RegionInfo,
) -> Result<BuildKey, CredentialsError> {
    if api_key.is_empty() {
        return Err(CredentialsError::InvalidInput("empty API key"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(wrapped.trim())
        .map_err(|_| CredentialsError::WrapDoesNotOpen)?;
    if bytes.len() != WRAPPED_LEN {
        return Err(CredentialsError::WrapDoesNotOpen);
    }
    let (salt, rest) = bytes.split_at(WRAP_SALT_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    let wrapping = aead_key(&hkdf32(api_key.as_bytes(), salt, WRAP_INFO));
    let mut buf = sealed.to_vec();
    let plain = wrapping
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(wrap_aad(&info.build_id, &info.customer_hash)),
            &mut buf,
        )
        .map_err(|_| CredentialsError::WrapDoesNotOpen)?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(plain);
    Ok(BuildKey(key))
}

/// SHA-256 of `"km-customer-id\0" || customer_id`, in hex: names a customer build
/// (`km-plugin-NAME-<hash prefix>`) without spelling the customer id.
pub fn customer_hash(customer_id: &str) -> String {
    km_durable::digest::hex(&customer_hash_bytes(customer_id))
}

fn customer_hash_bytes(customer_id: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(CUSTOMER_HASH_PREFIX);
    ctx.update(customer_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
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
    /// The credentials; their `customer_token` is the customer secret the build key and the
    /// request key are derived from, and must be the one the API holds for the customer.
    pub credentials: &'a Credentials,
}

/// Stamps `input` into the unique, unstamped credentials region of `lib_bytes` (a library read
/// into memory; the caller writes it out and signs it), under a fresh build id. Refuses a library
/// with no region, more than one, or one stamped already.
pub fn stamp(lib_bytes: &mut [u8], input: &StampInput<'_>) -> Result<Stamped, CredentialsError> {
    let rng = SystemRandom::new();
    let build_id: [u8; BUILD_ID_LEN] = random(&rng)?;
    let nonce: [u8; NONCE_LEN] = random(&rng)?;
    stamp_with(lib_bytes, input, build_id, nonce)
}

fn stamp_with(
    lib_bytes: &mut [u8],
    input: &StampInput<'_>,
    build_id: [u8; BUILD_ID_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Stamped, CredentialsError> {
    if input.api_public_key.len() != 32 {
        return Err(CredentialsError::InvalidInput(
            "the API public key must be 32 bytes (Ed25519)",
        ));
    }
    if input.credentials.customer_id.is_empty() {
        return Err(CredentialsError::InvalidInput("empty customer id"));
    }
    if input.credentials.customer_token.is_empty() {
        return Err(CredentialsError::InvalidInput(
            "empty customer secret (customer_token)",
        ));
    }
    let offset = find_region(lib_bytes)?;
    let region = &mut lib_bytes[offset..offset + REGION_SIZE];
    match region[OFF_VERSION] {
        VERSION_EMPTY => {}
        VERSION_1 | VERSION_2 => return Err(CredentialsError::AlreadyStamped),
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

    region[OFF_VERSION] = VERSION_2;
    region[OFF_LEN..OFF_LEN + 2].copy_from_slice(&ct_len_u16.to_le_bytes());
    region[OFF_PUBKEY..OFF_PUBKEY + 32].copy_from_slice(input.api_public_key);
    region[OFF_BUILD_ID..OFF_BUILD_ID + BUILD_ID_LEN].copy_from_slice(&build_id);
    let hash = customer_hash_bytes(&input.credentials.customer_id);
    region[OFF_CUSTOMER_HASH..OFF_CUSTOMER_HASH + 32].copy_from_slice(&hash);
    region[OFF_NONCE..OFF_NONCE + NONCE_LEN].copy_from_slice(&nonce);

    let key = aead_key(&build_key(&input.credentials.customer_token, &build_id).0);
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
        customer_hash: km_durable::digest::hex(&hash),
        build_id: km_durable::digest::hex(&build_id),
    })
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
        VERSION_1 => Err(CredentialsError::LegacyFormat),
        VERSION_2 => Ok(region),
        other => Err(CredentialsError::UnknownVersion(other)),
    }
}

/// The clear part of a stamped region: the API public key the plugin trusts, the customer hash
/// and the build id.
pub fn region_info(region: &[u8]) -> Result<RegionInfo, CredentialsError> {
    let region = checked_region(region)?;
    let mut api_public_key = [0u8; 32];
    api_public_key.copy_from_slice(&region[OFF_PUBKEY..OFF_PUBKEY + 32]);
    let mut customer_hash = [0u8; 32];
    customer_hash.copy_from_slice(&region[OFF_CUSTOMER_HASH..OFF_CUSTOMER_HASH + 32]);
    let mut build_id = [0u8; BUILD_ID_LEN];
    build_id.copy_from_slice(&region[OFF_BUILD_ID..OFF_BUILD_ID + BUILD_ID_LEN]);
    Ok(RegionInfo {
        api_public_key,
        customer_hash,
        build_id,
    })
}

/// Decrypts the credentials of a stamped region with its build key. Another build's key, a key
/// derived from another customer secret, or any change to the region gives
/// [`CredentialsError::WrongKeyOrTampered`].
pub fn open(region: &[u8], key: &BuildKey) -> Result<Credentials, CredentialsError> {
    let region = checked_region(region)?;
    let ct_len = usize::from(u16::from_le_bytes([region[OFF_LEN], region[OFF_LEN + 1]]));
    if ct_len < TAG_LEN || OFF_CIPHERTEXT + ct_len > REGION_SIZE {
        return Err(CredentialsError::Malformed("impossible ciphertext length"));
    }
    if region[OFF_CIPHERTEXT + ct_len..].iter().any(|&b| b != 0) {
        return Err(CredentialsError::WrongKeyOrTampered);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&region[OFF_NONCE..OFF_NONCE + NONCE_LEN]);
    let mut buf = region[OFF_CIPHERTEXT..OFF_CIPHERTEXT + ct_len].to_vec();
    let plaintext = aead_key(&key.0)
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

/// Test support: a region stamped in credentials format 1 (what builds made before format 2
/// carry: the same layout, the credentials under HKDF-SHA256 of the API key, salted with the
/// bytes where format 2 keeps the build id, info `"km-credentials-v1 aes-256-gcm"`), so that tests
/// of every side can check how such builds are refused. Not for making builds.
#[doc(hidden)]
pub fn stamp_format_1_for_tests(
    lib_bytes: &mut [u8],
    api_public_key: &[u8],
    api_key: &str,
    credentials: &Credentials,
) -> Result<(), CredentialsError> {
    let rng = SystemRandom::new();
    let salt: [u8; BUILD_ID_LEN] = random(&rng)?;
    let nonce: [u8; NONCE_LEN] = random(&rng)?;
    let input = StampInput {
        api_public_key,
        credentials,
    };
    // Format 2's steps, then the version byte and the key of format 1.
    let stamped = stamp_with(lib_bytes, &input, salt, nonce)?;
    let region = &mut lib_bytes[stamped.offset..stamped.offset + REGION_SIZE];
    region[OFF_VERSION] = VERSION_1;
    let plaintext = serde_json::to_vec(credentials)
        .map_err(|_| CredentialsError::InvalidInput("credentials do not serialise"))?;
    let key = aead_key(&hkdf32(
        api_key.as_bytes(),
        &salt,
        b"km-credentials-v1 aes-256-gcm",
    ));
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "ct-cust_a";

    fn creds(id: &str) -> Credentials {
        Credentials {
            customer_id: id.to_owned(),
            customer_token: format!("ct-{id}"),
            tier: Tier::Pro,
            build_time: 1_700_000_000,
        }
    }

    /// A fake library: some bytes, the empty region, more bytes.
    fn library() -> Vec<u8> {
        let mut lib = vec![0x7fu8; 1000];
        lib.extend_from_slice(&EMPTY_REGION);
        lib.extend(std::iter::repeat_n(0x90u8, 777));
        lib
    }

    const PK: [u8; 32] = [7u8; 32];

    fn stamped_for(id: &str) -> Vec<u8> {
        let mut lib = library();
        let c = creds(id);
        stamp(
            &mut lib,
            &StampInput {
                api_public_key: &PK,
                credentials: &c,
            },
        )
        .expect("stamps");
        lib
    }

    fn region(lib: &[u8]) -> &[u8] {
        &lib[1000..1000 + REGION_SIZE]
    }

    fn key_of(lib: &[u8], secret: &str) -> BuildKey {
        build_key(secret, &region_info(region(lib)).expect("info").build_id)
    }

    #[test]
    fn the_plain_marker_appears_only_in_the_region() {
        let masked = MASKED_MARKER;
        assert_ne!(masked[..], marker()[..]);
        assert_eq!(EMPTY_REGION[..MARKER_LEN], marker()[..]);
    }

    #[test]
    fn stamp_then_open_with_the_build_key_round_trips() {
        let lib = stamped_for("cust_a");
        assert_eq!(find_region(&lib).expect("region"), 1000);
        let info = region_info(region(&lib)).expect("info");
        assert_eq!(info.api_public_key, PK);
        assert_eq!(info.customer_hash_hex(), customer_hash("cust_a"));
        assert_eq!(region(&lib)[OFF_VERSION], FORMAT);
        assert_eq!(
            open(region(&lib), &key_of(&lib, SECRET)).expect("opens"),
            creds("cust_a")
        );
        // The bytes outside the region are untouched.
        assert!(lib[..1000].iter().all(|&b| b == 0x7f));
        assert!(lib[1000 + REGION_SIZE..].iter().all(|&b| b == 0x90));
    }

    #[test]
    fn another_secret_or_another_build_id_does_not_open() {
        let lib = stamped_for("cust_a");
        assert_eq!(
            open(region(&lib), &key_of(&lib, "ct-cust_b")),
            Err(CredentialsError::WrongKeyOrTampered)
        );
        // The same customer's key for another build.
        let other = stamped_for("cust_a");
        assert_eq!(
            open(region(&lib), &key_of(&other, SECRET)),
            Err(CredentialsError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn a_wrapped_build_key_opens_with_its_api_key_only() {
        let lib = stamped_for("cust_a");
        let info = region_info(region(&lib)).expect("info");
        let key = key_of(&lib, SECRET);
        let wrapped =
            wrap_build_key(&key, "km_live_new", &info.build_id, &info.customer_hash).expect("wrap");
        assert_eq!(
            unwrap_build_key(&wrapped, "km_live_new", &info).expect("unwraps"),
            key
        );
        // An earlier (rotated) key, or another build's header, opens nothing.
        assert_eq!(
            unwrap_build_key(&wrapped, "km_live_old", &info),
            Err(CredentialsError::WrapDoesNotOpen)
        );
        let other = region_info(region(&stamped_for("cust_a"))).expect("info");
        assert_eq!(
            unwrap_build_key(&wrapped, "km_live_new", &other),
            Err(CredentialsError::WrapDoesNotOpen)
        );
        // Altered, truncated or not base64.
        let mut bytes = URL_SAFE_NO_PAD.decode(&wrapped).expect("b64");
        for at in [0, WRAP_SALT_LEN, WRAP_SALT_LEN + NONCE_LEN, WRAPPED_LEN - 1] {
            let mut copy = bytes.clone();
            copy[at] ^= 1;
            assert_eq!(
                unwrap_build_key(&URL_SAFE_NO_PAD.encode(copy), "km_live_new", &info),
                Err(CredentialsError::WrapDoesNotOpen),
                "flip at {at}"
            );
        }
        bytes.pop();
        for bad in [
            URL_SAFE_NO_PAD.encode(bytes),
            "!!".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                unwrap_build_key(&bad, "km_live_new", &info),
                Err(CredentialsError::WrapDoesNotOpen)
            );
        }
        // Two wraps of one key differ (fresh salt and nonce).
        assert_ne!(
            wrapped,
            wrap_build_key(&key, "km_live_new", &info.build_id, &info.customer_hash).expect("wrap")
        );
    }

    #[test]
    fn the_request_key_is_not_the_build_key() {
        let lib = stamped_for("cust_a");
        let info = region_info(region(&lib)).expect("info");
        let tag = ring::hmac::sign(&request_key(SECRET, &info.build_id), b"m");
        let with_build_key = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_of(&lib, SECRET).0),
            b"m",
        );
        assert_ne!(tag.as_ref(), with_build_key.as_ref());
        assert!(
            ring::hmac::verify(&request_key(SECRET, &info.build_id), b"m", tag.as_ref()).is_ok()
        );
        assert!(ring::hmac::verify(
            &request_key("ct-cust_b", &info.build_id),
            b"m",
            tag.as_ref()
        )
        .is_err());
    }

    #[test]
    fn credentials_never_appear_in_clear() {
        let lib = stamped_for("cust_secret_id");
        let text = String::from_utf8_lossy(&lib);
        assert!(!text.contains("cust_secret_id"));
        assert!(!text.contains("ct-cust_secret_id"));
    }

    #[test]
    fn tampering_is_detected() {
        let lib = stamped_for("cust_a");
        let key = key_of(&lib, SECRET);
        // Every byte of the header after the marker, and of the ciphertext, is covered.
        for at in [
            OFF_VERSION + 1,
            OFF_LEN,
            OFF_PUBKEY,
            OFF_PUBKEY + 31,
            OFF_BUILD_ID,
            OFF_CUSTOMER_HASH,
            OFF_NONCE,
            OFF_CIPHERTEXT,
            OFF_CIPHERTEXT + 20,
            REGION_SIZE - 1,
        ] {
            let mut copy = region(&lib).to_vec();
            copy[at] ^= 0x01;
            assert!(open(&copy, &key).is_err(), "flip at {at} went unnoticed");
        }
        // A swapped API public key in particular.
        let mut copy = region(&lib).to_vec();
        copy[OFF_PUBKEY..OFF_PUBKEY + 32].copy_from_slice(&[9u8; 32]);
        assert_eq!(open(&copy, &key), Err(CredentialsError::WrongKeyOrTampered));
    }

    #[test]
    fn refuses_no_region_several_regions_and_restamping() {
        let c = creds("cust_a");
        let input = StampInput {
            api_public_key: &PK,
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
        let mut once = stamped_for("cust_a");
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
        let key = build_key(SECRET, &[0u8; BUILD_ID_LEN]);
        assert_eq!(open(&EMPTY_REGION, &key), Err(CredentialsError::NotStamped));
        assert!(matches!(
            region_info(&[0u8; REGION_SIZE]),
            Err(CredentialsError::Malformed(_))
        ));
    }

    #[test]
    fn a_format_1_region_is_named_as_such() {
        let mut lib = library();
        stamp_format_1_for_tests(&mut lib, &PK, "km_live_old", &creds("cust_a")).expect("stamps");
        assert_eq!(region(&lib)[OFF_VERSION], 1);
        assert_eq!(
            region_info(region(&lib)),
            Err(CredentialsError::LegacyFormat)
        );
        assert!(CredentialsError::LegacyFormat
            .to_string()
            .contains("new customer build"));
        // And it cannot be stamped again.
        let c = creds("cust_a");
        assert_eq!(
            stamp(
                &mut lib,
                &StampInput {
                    api_public_key: &PK,
                    credentials: &c,
                }
            ),
            Err(CredentialsError::AlreadyStamped)
        );
    }

    #[test]
    fn refuses_bad_inputs_and_oversized_credentials() {
        let mut lib = library();
        let mut c = creds("cust_a");
        let bad_pk = StampInput {
            api_public_key: &[1u8; 31],
            credentials: &c,
        };
        assert!(matches!(
            stamp(&mut lib, &bad_pk),
            Err(CredentialsError::InvalidInput(_))
        ));
        c.customer_token = String::new();
        let no_secret = StampInput {
            api_public_key: &PK,
            credentials: &c,
        };
        assert!(matches!(
            stamp(&mut lib, &no_secret),
            Err(CredentialsError::InvalidInput(_))
        ));
        c.customer_token = "x".repeat(MAX_PLAINTEXT);
        let big = StampInput {
            api_public_key: &PK,
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
        // Fresh build id and nonce each time: identical builds are not linkable byte for byte.
        assert_ne!(stamped_for("cust_a"), stamped_for("cust_a"));
    }
}
