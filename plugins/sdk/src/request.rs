//! Signed requests to the Kilometers API: how a customer build proves, in every authentication
//! request, that it holds its stamped credentials, and how the API checks it.
//!
//! A stolen API key (from a shell history, a CI log) is not enough to authenticate: the request
//! must also carry an HMAC-SHA256 by the build's **request key**, derived from the customer
//! secret inside the build's encrypted credentials (see [`crate::credentials`]), which the API
//! derives too. A captured request cannot be replayed: it is bound to a timestamp the API accepts
//! only within [`MAX_SKEW_SECS`] of its own clock, and to a random nonce the API accepts once
//! (it remembers nonces for as long as their timestamp would pass).
//!
//! The four headers of a signed request:
//!
//! ```text
//! km-build:     <build id, 32 hex digits>       (names the build, so the API derives its key)
//! km-timestamp: <seconds since the Unix epoch>
//! km-nonce:     <16 random bytes, 32 hex digits>
//! km-signature: <base64url, no padding, of HMAC-SHA256(request key, message)>
//! ```
//!
//! and the message signed, every field followed by `\n`:
//!
//! ```text
//! km-request-v1
//! METHOD                      (upper case)
//! PATH                        (below the API base URL, with its query if any)
//! SHA-256 of the body, hex
//! timestamp
//! nonce
//! build id
//! ```
//!
//! km adds a second signature on top, by the installation's device key (`km_signing::device`),
//! over the same request and this one's `km-signature`: the API knows from it which installation
//! asks, for the seat limit.
//!
//! What is NOT covered: headers other than these four and the body; the response (the API's
//! answer is a token it signs itself, checked by [`crate::auth`]).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use crate::credentials::BUILD_ID_LEN;

/// The header naming the build.
pub const HEADER_BUILD: &str = "km-build";
/// The header carrying the timestamp.
pub const HEADER_TIMESTAMP: &str = "km-timestamp";
/// The header carrying the nonce.
pub const HEADER_NONCE: &str = "km-nonce";
/// The header carrying the signature.
pub const HEADER_SIGNATURE: &str = "km-signature";

/// How far a request's timestamp may be from the API's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// The length of a nonce in hex digits (16 random bytes).
pub const NONCE_HEX_LEN: usize = 32;

const CONTEXT: &str = "km-request-v1";

/// Why a request's signature was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Some of the four headers are there, not all.
    Missing(&'static str),
    /// A header is not in its format.
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The timestamp is further than [`MAX_SKEW_SECS`] from the verifier's clock.
    Stale {
        /// The request's timestamp.
        timestamp: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// The signature does not verify with the build's request key.
    BadSignature,
    /// No system randomness for a nonce.
    NoRandomness,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Missing(header) => write!(f, "the request has no {header} header"),
            RequestError::Malformed { header, why } => write!(f, "header {header}: {why}"),
            RequestError::Stale { timestamp, now } => write!(
                f,
                "the request's timestamp {timestamp} is {} s from the API's clock ({now}); at \
                 most {MAX_SKEW_SECS} s are accepted (check the clock)",
                (now - timestamp).abs()
            ),
            RequestError::BadSignature => f.write_str(
                "the request signature does not verify: it was not signed with this build's \
                 stamped credentials",
            ),
            RequestError::NoRandomness => f.write_str("no system randomness for a nonce"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The four signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    /// The build id, hex.
    pub build: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    /// 32 hex digits.
    pub nonce: String,
    /// base64url HMAC-SHA256.
    pub signature: String,
}

/// The message a request's signature covers (see the module doc).
pub fn message(
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
    build: &str,
) -> Vec<u8> {
    let digest = km_durable::digest::sha256_hex(body);
    format!(
        "{CONTEXT}\n{}\n{path}\n{digest}\n{timestamp}\n{nonce}\n{build}\n",
        method.to_ascii_uppercase()
    )
    .into_bytes()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl RequestSignature {
    /// Signs a request of build `build_id` with its request key, at `timestamp`, with a fresh
    /// random nonce.
    pub fn sign(
        key: &ring::hmac::Key,
        method: &str,
        path: &str,
        body: &[u8],
        build_id: &[u8; BUILD_ID_LEN],
        timestamp: i64,
    ) -> Result<Self, RequestError> {
        let mut nonce = [0u8; NONCE_HEX_LEN / 2];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| RequestError::NoRandomness)?;
        Ok(Self::sign_with_nonce(
            key,
            method,
            path,
            body,
            &km_durable::digest::hex(build_id),
            timestamp,
            &km_durable::digest::hex(&nonce),
        ))
    }

    /// [`Self::sign`] with the nonce given (tests, and tools that replay a request on purpose).
    pub fn sign_with_nonce(
        key: &ring::hmac::Key,
        method: &str,
        path: &str,
        body: &[u8],
        build: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Self {
        let tag = ring::hmac::sign(key, &message(method, path, body, timestamp, nonce, build));
        RequestSignature {
            build: build.to_owned(),
            timestamp,
            nonce: nonce.to_owned(),
            signature: URL_SAFE_NO_PAD.encode(tag.as_ref()),
        }
    }

    /// The headers to send, by name.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_BUILD, self.build.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_NONCE, self.nonce.clone()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }

    /// The signature a request carries, read through `header` (a lookup by lower-case name);
    /// `None` when it carries none of the four headers, an error when it carries some but not
    /// all, or one out of format.
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Self>, RequestError> {
        let names = [
            HEADER_BUILD,
            HEADER_TIMESTAMP,
            HEADER_NONCE,
            HEADER_SIGNATURE,
        ];
        let values: Vec<Option<&str>> = names.iter().map(|n| header(n)).collect();
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let get = |i: usize| values[i].ok_or(RequestError::Missing(names[i]));
        let (build, timestamp, nonce, signature) = (get(0)?, get(1)?, get(2)?, get(3)?);
        if !is_hex(build, BUILD_ID_LEN * 2) {
            return Err(RequestError::Malformed {
                header: HEADER_BUILD,
                why: "expected 32 lower-case hex digits",
            });
        }
        let timestamp = timestamp
            .parse::<i64>()
            .map_err(|_| RequestError::Malformed {
                header: HEADER_TIMESTAMP,
                why: "expected seconds since the Unix epoch",
            })?;
        if !is_hex(nonce, NONCE_HEX_LEN) {
            return Err(RequestError::Malformed {
                header: HEADER_NONCE,
                why: "expected 32 lower-case hex digits",
            });
        }
        if signature.len() != 43 || URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(RequestError::Malformed {
                header: HEADER_SIGNATURE,
                why: "expected base64url (no padding) of 32 bytes",
            });
        }
        Ok(Some(RequestSignature {
            build: build.to_owned(),
            timestamp,
            nonce: nonce.to_owned(),
            signature: signature.to_owned(),
        }))
    }

    /// The build id, as bytes.
    pub fn build_id(&self) -> Result<[u8; BUILD_ID_LEN], RequestError> {
        let bytes = hex::decode(&self.build).map_err(|_| RequestError::Malformed {
            header: HEADER_BUILD,
            why: "expected hex",
        })?;
        bytes.try_into().map_err(|_| RequestError::Malformed {
            header: HEADER_BUILD,
            why: "expected 16 bytes",
        })
    }

    /// Refuses a timestamp further than [`MAX_SKEW_SECS`] from `now`.
    pub fn check_timestamp(&self, now: i64) -> Result<(), RequestError> {
        if (now - self.timestamp).abs() > MAX_SKEW_SECS {
            return Err(RequestError::Stale {
                timestamp: self.timestamp,
                now,
            });
        }
        Ok(())
    }

    /// Checks the signature over the request with the build's request key (in constant time).
    /// The timestamp and the nonce are the caller's to check: they need a clock and a memory.
    pub fn verify(
        &self,
        key: &ring::hmac::Key,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), RequestError> {
        let tag = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| RequestError::BadSignature)?;
        let msg = message(method, path, body, self.timestamp, &self.nonce, &self.build);
        ring::hmac::verify(key, &msg, &tag).map_err(|_| RequestError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::request_key;

    const BUILD: [u8; BUILD_ID_LEN] = [3u8; BUILD_ID_LEN];
    const NOW: i64 = 1_800_000_000;

    fn key() -> ring::hmac::Key {
        request_key("ct-cust_a", &BUILD)
    }

    fn lookup<'s>(sig: &'s RequestSignature) -> impl Fn(&str) -> Option<&'s str> {
        move |name| match name {
            HEADER_BUILD => Some(sig.build.as_str()),
            HEADER_NONCE => Some(sig.nonce.as_str()),
            HEADER_SIGNATURE => Some(sig.signature.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let body = br#"{"api_key":"k"}"#;
        let sig = RequestSignature::sign(
            &key(),
            "post",
            "/api/plugins/authenticate",
            body,
            &BUILD,
            NOW,
        )
        .expect("signs");
        assert_eq!(sig.build, km_durable::digest::hex(&BUILD));
        assert!(sig
            .verify(&key(), "POST", "/api/plugins/authenticate", body)
            .is_ok());
        for (method, path, body) in [
            ("GET", "/api/plugins/authenticate", &body[..]),
            ("POST", "/api/plugins/authenticatf", &body[..]),
            ("POST", "/api/plugins/authenticate", br#"{"api_key":"j"}"#),
        ] {
            assert_eq!(
                sig.verify(&key(), method, path, body),
                Err(RequestError::BadSignature)
            );
        }
        let mut other = sig.clone();
        other.timestamp += 1;
        assert_eq!(
            other.verify(&key(), "POST", "/api/plugins/authenticate", body),
            Err(RequestError::BadSignature)
        );
        let mut other = sig.clone();
        other.nonce = "0".repeat(NONCE_HEX_LEN);
        assert_eq!(
            other.verify(&key(), "POST", "/api/plugins/authenticate", body),
            Err(RequestError::BadSignature)
        );
        // Signed with a key that is not the build's (another customer secret).
        assert_eq!(
            sig.verify(
                &request_key("ct-cust_b", &BUILD),
                "POST",
                "/api/plugins/authenticate",
                body
            ),
            Err(RequestError::BadSignature)
        );
    }

    #[test]
    fn nonces_are_fresh_and_timestamps_bounded() {
        let a = RequestSignature::sign(&key(), "POST", "/p", b"", &BUILD, NOW).expect("a");
        let b = RequestSignature::sign(&key(), "POST", "/p", b"", &BUILD, NOW).expect("b");
        assert_ne!(a.nonce, b.nonce);
        assert!(a.check_timestamp(NOW + MAX_SKEW_SECS).is_ok());
        assert!(a.check_timestamp(NOW - MAX_SKEW_SECS).is_ok());
        assert!(matches!(
            a.check_timestamp(NOW + MAX_SKEW_SECS + 1),
            Err(RequestError::Stale { .. })
        ));
        assert!(matches!(
            a.check_timestamp(NOW - MAX_SKEW_SECS - 1),
            Err(RequestError::Stale { .. })
        ));
    }

    #[test]
    fn headers_round_trip_and_partial_or_malformed_ones_are_refused() {
        let sig = RequestSignature::sign(&key(), "POST", "/p", b"x", &BUILD, NOW).expect("signs");
        let headers = sig.headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(RequestSignature::from_headers(get), Ok(Some(sig.clone())));
        assert_eq!(sig.build_id(), Ok(BUILD));
        assert_eq!(RequestSignature::from_headers(|_| None), Ok(None));
        assert_eq!(
            RequestSignature::from_headers(lookup(&sig)),
            Err(RequestError::Missing(HEADER_TIMESTAMP))
        );
        let bad = |name: &'static str, value: &'static str| {
            RequestSignature::from_headers(move |n| if n == name { Some(value) } else { get(n) })
        };
        assert!(matches!(
            bad(HEADER_BUILD, "XYZ"),
            Err(RequestError::Malformed { .. })
        ));
        assert!(matches!(
            bad(HEADER_TIMESTAMP, "yesterday"),
            Err(RequestError::Malformed { .. })
        ));
        assert!(matches!(
            bad(HEADER_NONCE, "00"),
            Err(RequestError::Malformed { .. })
        ));
        assert!(matches!(
            bad(HEADER_SIGNATURE, "short"),
            Err(RequestError::Malformed { .. })
        ));
    }
}
