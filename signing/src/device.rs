//! The device identity of a km installation, as the Kilometers API sees it: the headers km adds
//! to every request a plugin makes to the API, the message they sign, and their check.
//!
//! Each installation (each `KM_HOME`) has an Ed25519 key pair that km makes the first time a
//! plugin talks to the API (`KM_HOME/device.key`, mode 0600). It identifies the installation and
//! nothing else: it is random, not derived from hardware, and says nothing about the machine or
//! the person. The API counts these identities against a customer's seat limit. Because km adds
//! them in its HTTP service, plugins need no ABI change and cannot forge or omit them: km refuses
//! a plugin's own `km-device-*` headers.
//!
//! ```text
//! km-device-key:       <base64url, no padding, of the public key's SubjectPublicKeyInfo DER>
//! km-device-timestamp: <seconds since the Unix epoch>
//! km-device-signature: <base64url, no padding, of the Ed25519 signature of the message>
//! ```
//!
//! The message, every field followed by `\n`:
//!
//! ```text
//! km-device-request-v1
//! METHOD                      (upper case)
//! PATH                        (below the API base URL, with its query if any)
//! SHA-256 of the body, hex
//! timestamp
//! the request's km-signature header, or nothing
//! ```
//!
//! The device id is the key id of the public key (the first 16 bytes of the SHA-256 of its SPKI,
//! in hex: the same derivation as a signing key's id, [`KeyId`]).
//!
//! Covering the plugin's `km-signature` binds the device signature to the plugin's one-time
//! nonce, so a device signature cannot be lifted onto another request, and the API's nonce check
//! refuses the whole request when it is replayed. A request without a plugin signature (an event
//! batch) is bound only to its timestamp: the API uses device identities for seats, which are
//! claimed by signed authentication requests only.
//!
//! What is NOT protected: the private key on disk is as safe as the user's account; a copy of
//! `KM_HOME` is the same installation (a seat moves with it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::{Algorithm, Error, KeyId, PrivateKey, PublicKey};

/// The header with the device's public key.
pub const HEADER_KEY: &str = "km-device-key";
/// The header with the device signature's timestamp.
pub const HEADER_TIMESTAMP: &str = "km-device-timestamp";
/// The header with the device signature.
pub const HEADER_SIGNATURE: &str = "km-device-signature";
/// What every device header's name starts with (km refuses plugins' headers with it).
pub const HEADER_PREFIX: &str = "km-device-";

/// The header of the plugin's own request signature, which the device signature covers
/// (`km_plugin_sdk::request`).
pub const REQUEST_SIGNATURE_HEADER: &str = km_plugin_sdk::request::HEADER_SIGNATURE;

/// How far a device signature's timestamp may be from the API's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

const CONTEXT: &str = "km-device-request-v1";

/// The message a device signature covers (see the module doc).
pub fn message(
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    request_signature: &str,
) -> Vec<u8> {
    format!(
        "{CONTEXT}\n{}\n{path}\n{}\n{timestamp}\n{request_signature}\n",
        method.to_ascii_uppercase(),
        crate::sha256_hex(body)
    )
    .into_bytes()
}

/// The three device headers for a request, signed by `key` (Ed25519 only) at `timestamp`.
/// `request_signature` is the request's `km-signature` header, when it has one.
pub fn sign_request(
    key: &PrivateKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    request_signature: Option<&str>,
) -> Result<[(&'static str, String); 3], Error> {
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(Error::bad_key("a device key must be Ed25519"));
    }
    let signature = key.sign(&message(
        method,
        path,
        body,
        timestamp,
        request_signature.unwrap_or_default(),
    ))?;
    Ok([
        (
            HEADER_KEY,
            URL_SAFE_NO_PAD.encode(key.public_key().spki_der()),
        ),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, URL_SAFE_NO_PAD.encode(signature)),
    ])
}

/// A device whose signature over a request verified.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its id (the key id of its public key).
    pub id: KeyId,
    /// Its public key.
    pub public_key: PublicKey,
}

/// Checks the device headers of a request (read through `header`, a lookup by lower-case name):
/// `Ok(None)` when it carries none of them; the device when all three are there, the key is an
/// Ed25519 key, the timestamp within [`MAX_SKEW_SECS`] of `now` and the signature verifies over
/// the request and its `km-signature` header.
pub fn verify_request<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: i64,
) -> Result<Option<Device>, Error> {
    let (key, timestamp, signature) = (
        header(HEADER_KEY),
        header(HEADER_TIMESTAMP),
        header(HEADER_SIGNATURE),
    );
    let (key, timestamp, signature) = match (key, timestamp, signature) {
        (None, None, None) => return Ok(None),
        (Some(k), Some(t), Some(s)) => (k, t, s),
        _ => {
            return Err(Error::InvalidInput {
                what: "device headers",
                value: String::new(),
                reason: format!(
                    "a request with a device identity carries {HEADER_KEY}, {HEADER_TIMESTAMP} \
                     and {HEADER_SIGNATURE}"
                ),
            })
        }
    };
    let spki = URL_SAFE_NO_PAD
        .decode(key)
        .map_err(|_| Error::bad_key(format!("{HEADER_KEY} is not base64url")))?;
    let public_key = PublicKey::from_spki_der(&spki)?;
    if public_key.algorithm() != Algorithm::Ed25519 {
        return Err(Error::bad_key("a device key must be Ed25519"));
    }
    let timestamp: i64 = timestamp.parse().map_err(|_| Error::InvalidInput {
        what: "device timestamp",
        value: timestamp.to_owned(),
        reason: "expected seconds since the Unix epoch".to_owned(),
    })?;
    if (now - timestamp).abs() > MAX_SKEW_SECS {
        return Err(Error::InvalidInput {
            what: "device timestamp",
            value: timestamp.to_string(),
            reason: format!(
                "{} s from the API's clock ({now}); at most {MAX_SKEW_SECS} s are accepted",
                (now - timestamp).abs()
            ),
        });
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Error::BadSignature)?;
    let request_signature = header(REQUEST_SIGNATURE_HEADER).unwrap_or_default();
    public_key.verify(
        &message(method, path, body, timestamp, request_signature),
        &signature,
    )?;
    Ok(Some(Device {
        id: public_key.key_id(),
        public_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn signed(key: &PrivateKey, request_signature: Option<&str>) -> Vec<(&'static str, String)> {
        let mut headers = sign_request(key, "post", "/api/x", b"body", NOW, request_signature)
            .expect("signs")
            .to_vec();
        if let Some(sig) = request_signature {
            headers.push((REQUEST_SIGNATURE_HEADER, sig.to_owned()));
        }
        headers
    }

    fn check(
        headers: &[(&'static str, String)],
        path: &str,
        now: i64,
    ) -> Result<Option<Device>, Error> {
        verify_request(
            |name| {
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            },
            "POST",
            path,
            b"body",
            now,
        )
    }

    #[test]
    fn a_device_signature_verifies_and_names_the_device() {
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("key");
        let headers = signed(&key, Some("plugin-sig"));
        let device = check(&headers, "/api/x", NOW + 10)
            .expect("verifies")
            .expect("a device");
        assert_eq!(device.id, key.public_key().key_id());
        assert!(check(&[], "/api/x", NOW).expect("no headers").is_none());
    }

    #[test]
    fn another_request_a_changed_plugin_signature_or_a_stale_time_is_refused() {
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("key");
        let headers = signed(&key, Some("plugin-sig"));
        assert!(matches!(
            check(&headers, "/api/y", NOW),
            Err(Error::BadSignature)
        ));
        let mut moved = headers.clone();
        moved.retain(|(n, _)| *n != REQUEST_SIGNATURE_HEADER);
        moved.push((REQUEST_SIGNATURE_HEADER, "other".to_owned()));
        assert!(matches!(
            check(&moved, "/api/x", NOW),
            Err(Error::BadSignature)
        ));
        assert!(matches!(
            check(&headers, "/api/x", NOW + MAX_SKEW_SECS + 1),
            Err(Error::InvalidInput { .. })
        ));
        // Another device's key with this device's signature.
        let other = PrivateKey::generate(Algorithm::Ed25519).expect("key");
        let mut swapped = headers.clone();
        swapped[0].1 = URL_SAFE_NO_PAD.encode(other.public_key().spki_der());
        assert!(matches!(
            check(&swapped, "/api/x", NOW),
            Err(Error::BadSignature)
        ));
        // Partial headers.
        assert!(matches!(
            check(&headers[..2], "/api/x", NOW),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn only_ed25519_devices() {
        let rsa = PrivateKey::generate_rsa(2048).expect("rsa");
        assert!(matches!(
            sign_request(&rsa, "GET", "/", b"", NOW, None),
            Err(Error::BadKey { .. })
        ));
        let key = PrivateKey::generate(Algorithm::Ed25519).expect("key");
        let mut headers = signed(&key, None);
        headers[0].1 = URL_SAFE_NO_PAD.encode(rsa.public_key().spki_der());
        assert!(matches!(
            check(&headers, "/api/x", NOW),
            Err(Error::BadKey { .. })
        ));
    }
}
