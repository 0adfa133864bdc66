//! The signed envelope of a team policy file: the exact payload bytes (base64) and one or more
//! Ed25519 signatures over them, in TOML.
//!
//! The shape is DSSE's (the Dead Simple Signing Envelope of in-toto and Sigstore): what is
//! signed is not the payload alone but its pre-authentication encoding
//! `"DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload` (lengths in ASCII decimal), so a
//! signature is bound to the payload type (no signature made by the same key for something else,
//! such as a plugin manifest, can pass for a team policy) and the payload is verified as the
//! bytes that were signed, never re-serialised first. Several signatures allow an admin key to
//! be rotated: a verifier accepts the file when one signature is by a key it trusts.
//!
//! ```toml
//! payload_type = "application/vnd.km.team-policy+toml; version=1"
//! payload = """
//! W2J1bmRsZV0KdGVhbSA9ICJhY21lIgpwb2xpY3kgPSAidG9vbC1ndWFyZCIKdmVyc2lvbiA9IDcK...
//! """
//!
//! [[signatures]]
//! key_id = "3f1c0e2a9b7d4c5e6f708192a3b4c5d6"
//! sig = "base64 of the 64-byte Ed25519 signature"
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::keys::AdminKey;
use super::trust::TeamTrust;
use crate::Error;

/// The payload type of a team policy, version 1 of the format.
pub const PAYLOAD_TYPE: &str = "application/vnd.km.team-policy+toml; version=1";

/// The most signatures an envelope may carry (rotation needs two; more is not a real file).
const MAX_SIGNATURES: usize = 8;

/// An envelope as written: a whole team policy file, or one entry of a file of approvals.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvelopeFile {
    payload_type: String,
    payload: String,
    signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SignatureEntry {
    key_id: String,
    sig: String,
}

/// Who signed an envelope, as [`Envelope::signer`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signer {
    /// A signature by this acceptable key verified (and none by an acceptable key failed).
    Verified(String),
    /// A signature by this acceptable key does not verify.
    Bad(String),
    /// No signature is by an acceptable key.
    Unknown,
}

/// A parsed envelope: the payload bytes exactly as signed, and the signatures.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) payload: Vec<u8>,
    signatures: Vec<(String, Vec<u8>)>,
}

/// The bytes an admin signs for `payload`: DSSE's pre-authentication encoding with
/// [`PAYLOAD_TYPE`].
pub fn signing_input(payload: &[u8]) -> Vec<u8> {
    signing_input_for(PAYLOAD_TYPE, payload)
}

/// DSSE's pre-authentication encoding of `payload` as `payload_type`.
pub(crate) fn signing_input_for(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(payload);
    pae
}

/// The envelope text for `payload` with `signatures` (key id, signature of
/// [`signing_input`]`(payload)`), ready to be written to `KM_HOME/policies/team/NAME.toml`.
pub fn seal(payload: &[u8], signatures: &[(&str, &[u8])]) -> Result<String, Error> {
    let file = EnvelopeFile::new(PAYLOAD_TYPE, payload, signatures)?;
    let body = toml::to_string(&file).map_err(|e| Error::Seal {
        reason: e.to_string(),
    })?;
    Ok(format!(
        "# A km team policy, signed by the team's admin key. Written by team-collaboration and\n\
         # verified by every plugin that reads it: any edit voids the signature.\n{body}"
    ))
}

/// The Ed25519 signature of `payload` as `payload_type` by `key`, with the key's id.
pub(crate) fn sign_ed25519(
    payload_type: &str,
    payload: &[u8],
    key: &ring::signature::Ed25519KeyPair,
) -> Result<(String, Vec<u8>), Error> {
    use ring::signature::KeyPair as _;
    let raw: [u8; 32] = key
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| Error::Seal {
            reason: "not an Ed25519 key".to_owned(),
        })?;
    let key_id = AdminKey::from_raw(raw).key_id().to_owned();
    let signature = key.sign(&signing_input_for(payload_type, payload));
    Ok((key_id, signature.as_ref().to_vec()))
}

/// [`seal`] with one signature by the Ed25519 key `key`.
pub fn seal_ed25519(
    payload: &[u8],
    key: &ring::signature::Ed25519KeyPair,
) -> Result<String, Error> {
    let (key_id, signature) = sign_ed25519(PAYLOAD_TYPE, payload, key)?;
    seal(payload, &[(&key_id, &signature)])
}

impl EnvelopeFile {
    /// The envelope of `payload` as `payload_type`, with `signatures`.
    pub(crate) fn new(
        payload_type: &str,
        payload: &[u8],
        signatures: &[(&str, &[u8])],
    ) -> Result<Self, Error> {
        if signatures.is_empty() || signatures.len() > MAX_SIGNATURES {
            return Err(Error::Seal {
                reason: format!("an envelope carries 1 to {MAX_SIGNATURES} signatures"),
            });
        }
        let encoded = STANDARD.encode(payload);
        // Wrapped at 76 columns (as MIME does), inside a multi-line string: readable diffs.
        let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / 76 + 2);
        wrapped.push('\n');
        for chunk in encoded.as_bytes().chunks(76) {
            wrapped.push_str(&String::from_utf8_lossy(chunk));
            wrapped.push('\n');
        }
        Ok(EnvelopeFile {
            payload_type: payload_type.to_owned(),
            payload: wrapped,
            signatures: signatures
                .iter()
                .map(|(key_id, sig)| SignatureEntry {
                    key_id: (*key_id).to_owned(),
                    sig: STANDARD.encode(sig),
                })
                .collect(),
        })
    }
}

impl Envelope {
    /// Parses the envelope text of `file` (a team policy).
    pub(crate) fn parse(file: &str, text: &str) -> Result<Envelope, Error> {
        let parsed: EnvelopeFile = toml::from_str(text).map_err(|e| Error::Envelope {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
        Envelope::from_file(parsed, PAYLOAD_TYPE).map_err(|reason| Error::Envelope {
            file: file.to_owned(),
            reason,
        })
    }

    /// Checks an envelope as written, of `payload_type`; the error says what is wrong.
    pub(crate) fn from_file(parsed: EnvelopeFile, payload_type: &str) -> Result<Envelope, String> {
        if parsed.payload_type != payload_type {
            return Err(format!(
                "payload_type is {:?}, expected {payload_type:?}",
                parsed.payload_type
            ));
        }
        let b64: String = parsed
            .payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let payload = STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("payload is not base64: {e}"))?;
        if parsed.signatures.is_empty() || parsed.signatures.len() > MAX_SIGNATURES {
            return Err(format!(
                "an envelope carries 1 to {MAX_SIGNATURES} signatures, this one {}",
                parsed.signatures.len()
            ));
        }
        let mut signatures = Vec::with_capacity(parsed.signatures.len());
        for entry in parsed.signatures {
            let sig = STANDARD
                .decode(entry.sig.trim().as_bytes())
                .map_err(|e| format!("signature of {} is not base64: {e}", entry.key_id))?;
            signatures.push((entry.key_id.trim().to_ascii_lowercase(), sig));
        }
        Ok(Envelope {
            payload,
            signatures,
        })
    }

    /// The trusted key that signed the payload. A signature by a key the trust file does not
    /// list is ignored (it may be the next admin key, during a rotation); one by a trusted key
    /// that does not verify is an error, whatever the other signatures say.
    pub(crate) fn verify(&self, file: &str, trust: &TeamTrust) -> Result<String, Error> {
        match self.signer(PAYLOAD_TYPE, |key_id| trust.key(key_id)) {
            Signer::Verified(key_id) => Ok(key_id),
            Signer::Bad(key_id) => Err(Error::BadSignature {
                file: file.to_owned(),
                key_id,
            }),
            Signer::Unknown => Err(Error::UntrustedSigner {
                file: file.to_owned(),
                team: trust.team().to_owned(),
                signers: self.signers(),
            }),
        }
    }

    /// Which of the keys `acceptable` finds signed the payload as `payload_type`: the rule of
    /// [`Envelope::verify`] (unknown keys ignored, a failing acceptable key fatal) for any set
    /// of keys.
    pub(crate) fn signer<'k>(
        &self,
        payload_type: &str,
        acceptable: impl Fn(&str) -> Option<&'k AdminKey>,
    ) -> Signer {
        let input = signing_input_for(payload_type, &self.payload);
        let mut verified = None;
        for (key_id, sig) in &self.signatures {
            let Some(key) = acceptable(key_id) else {
                continue;
            };
            if !key.verifies(&input, sig) {
                return Signer::Bad(key_id.clone());
            }
            verified.get_or_insert_with(|| key_id.clone());
        }
        verified.map_or(Signer::Unknown, Signer::Verified)
    }

    /// The key ids the signatures name, comma-separated (`none` when there are none).
    pub(crate) fn signers(&self) -> String {
        if self.signatures.is_empty() {
            return "none".to_owned();
        }
        self.signatures
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_bind_the_payload_type_and_length() {
        let input = signing_input(b"abc");
        assert_eq!(
            input,
            format!("DSSEv1 {} {PAYLOAD_TYPE} 3 abc", PAYLOAD_TYPE.len()).into_bytes()
        );
    }

    #[test]
    fn a_sealed_envelope_parses_back_to_the_same_payload() {
        let payload = "x = 1\n".repeat(40);
        let text = seal(payload.as_bytes(), &[("00ff", &[1u8, 2, 3][..])]).expect("seals");
        assert!(text.starts_with("# A km team policy"), "{text}");
        let envelope = Envelope::parse("team/x.toml", &text).expect("parses");
        assert_eq!(envelope.payload, payload.as_bytes());
        assert_eq!(
            envelope.signatures,
            vec![("00ff".to_owned(), vec![1, 2, 3])]
        );
    }

    #[test]
    fn malformed_envelopes_name_what_is_wrong() {
        let cases = [
            ("payload_type = \"x\"\npayload = \"\"\nsignatures = []\n", "payload_type"),
            (
                &format!("payload_type = \"{PAYLOAD_TYPE}\"\npayload = \"@@\"\n[[signatures]]\nkey_id = \"a\"\nsig = \"\"\n"),
                "base64",
            ),
            (
                &format!("payload_type = \"{PAYLOAD_TYPE}\"\npayload = \"\"\nsignatures = []\n"),
                "1 to 8 signatures",
            ),
            (
                &format!("payload_type = \"{PAYLOAD_TYPE}\"\npayload = \"\"\nextra = 1\nsignatures = []\n"),
                "unknown field",
            ),
        ];
        for (text, needle) in cases {
            let err = Envelope::parse("team/x.toml", text).expect_err(text);
            assert!(matches!(err, Error::Envelope { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
            assert!(err.to_string().contains("team/x.toml"), "{err}");
        }
    }
}
