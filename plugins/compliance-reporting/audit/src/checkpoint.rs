//! Signed checkpoints of the audit tree, the audit key that signs them, and detached report
//! signatures.
//!
//! A checkpoint says "this installation's trail had SIZE records and root ROOT at TIME". Its
//! signed text is a short line-oriented note, like the checkpoints of Certificate Transparency
//! logs and Go's checksum database, so that it can be read, compared and pasted by people:
//!
//! ```text
//! km-audit-checkpoint v1
//! key 3f1c0a9e5b7d2468
//! size 1234
//! root 5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328
//! time 1767225600123
//! reason end
//! session 9c2e4f0a1b3d5e7f
//! ```
//!
//! `key` is the audit key id (the first 16 hex digits of the SHA-256 of the raw Ed25519 public
//! key), `root` the RFC 6962 root in lower-case hex, `time` milliseconds since the Unix epoch,
//! `reason` why it was made (`end`, `periodic`, `recovery`, `report`, `prune`, `erase`), `session`
//! the session that made it (`-` for a command). The parser accepts exactly this: the seven lines
//! in this order, each ending in `\n`, decimal numbers without leading zeros, no other bytes. The
//! signature is Ed25519 over [`CHECKPOINT_CONTEXT`] followed by the exact text; what is verified
//! is the stored text, never a re-serialisation.
//!
//! A report's detached signature is Ed25519 over [`REPORT_CONTEXT`] followed by the SHA-256 of the
//! report's bytes; the domain prefixes keep a checkpoint signature from passing for a report's
//! and the other way round.
//!
//! What is NOT checked here: whether a key is the right one. Verification takes the public key
//! the caller trusts (the installation's own, or one an auditor was given); a checkpoint signed by
//! a key an attacker made verifies under that attacker's key. The external copy of the
//! checkpoints (the Kilometers API, a witness) is what catches a trail rewritten with a new key.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;
use crate::Error;

/// The domain-separation prefix of checkpoint signatures.
pub const CHECKPOINT_CONTEXT: &[u8] = b"km-audit-checkpoint-v1\n";
/// The domain-separation prefix of report signatures.
pub const REPORT_CONTEXT: &[u8] = b"km-audit-report-v1\n";
/// The first line of a checkpoint's text.
const HEADER: &str = "km-audit-checkpoint v1";
/// The longest checkpoint text the parser looks at.
const MAX_TEXT: usize = 1024;

/// The key id of a raw Ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..8])
}

/// The audit key of an installation: an Ed25519 key pair, kept by the plugin as PKCS#8.
pub struct AuditKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey").field("id", &self.id).finish()
    }
}

impl AuditKey {
    /// Makes a new key; returns its PKCS#8 document (to store, privately) and the key.
    pub fn generate() -> Result<(Vec<u8>, AuditKey), Error> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| Error::Key("the system random generator failed"))?;
        let key = AuditKey::from_pkcs8(pkcs8.as_ref())?;
        Ok((pkcs8.as_ref().to_vec(), key))
    }

    /// Reads a key from its PKCS#8 document (v2 as ring makes them, or v1 as `openssl genpkey`
    /// does).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<AuditKey, Error> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| Error::Key("not an Ed25519 PKCS#8 key"))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(AuditKey { pair, id })
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs a checkpoint.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> Result<SignedCheckpoint, Error> {
        if checkpoint.key_id != self.id {
            return Err(Error::Key("the checkpoint names another key"));
        }
        let text = checkpoint.to_text()?;
        let signature = self
            .pair
            .sign(&signed_message(CHECKPOINT_CONTEXT, text.as_bytes()));
        Ok(SignedCheckpoint {
            text,
            signature: signature.as_ref().to_vec(),
            checkpoint: checkpoint.clone(),
        })
    }

    /// The detached signature of a report's bytes.
    pub fn sign_report(&self, report: &[u8]) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, report);
        self.pair
            .sign(&signed_message(REPORT_CONTEXT, digest.as_ref()))
            .as_ref()
            .to_vec()
    }
}

fn signed_message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(context.len() + body.len());
    message.extend_from_slice(context);
    message.extend_from_slice(body);
    message
}

/// Checks a report's detached signature with `public_key` (raw Ed25519).
pub fn verify_report(public_key: &[u8], report: &[u8], signature: &[u8]) -> Result<(), Error> {
    let digest = ring::digest::digest(&ring::digest::SHA256, report);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed_message(REPORT_CONTEXT, digest.as_ref()), signature)
        .map_err(|_| Error::BadSignature)
}

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The id of the audit key that signs it.
    pub key_id: String,
    /// How many records the trail held.
    pub size: u64,
    /// The RFC 6962 root of those records.
    pub root: Hash,
    /// When: milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Why it was made (`end`, `periodic`, ...).
    pub reason: String,
    /// The session that made it; `None` for a command.
    pub session: Option<String>,
}

/// Whether `word` may stand in a checkpoint line: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn is_word(word: &str) -> bool {
    (1..=128).contains(&word.len())
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.is_empty());
    if !canonical || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a 64-digit lower-case hex SHA-256.
pub fn parse_hash(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

impl Checkpoint {
    /// The signed text.
    pub fn to_text(&self) -> Result<String, Error> {
        if !is_word(&self.key_id) || !is_word(&self.reason) {
            return Err(Error::BadCheckpoint(
                "a key id or reason outside [A-Za-z0-9._:-]",
            ));
        }
        let session = match &self.session {
            Some(s) if is_word(s) && s != "-" => s.as_str(),
            Some(_) => return Err(Error::BadCheckpoint("a session id outside [A-Za-z0-9._:-]")),
            None => "-",
        };
        if self.time_ms < 0 {
            return Err(Error::BadCheckpoint("a time before 1970"));
        }
        Ok(format!(
            "{HEADER}\nkey {}\nsize {}\nroot {}\ntime {}\nreason {}\nsession {session}\n",
            self.key_id,
            self.size,
            hex::encode(self.root),
            self.time_ms,
            self.reason
        ))
    }

    /// Parses the signed text, strictly (see the module documentation).
    pub fn parse(text: &str) -> Result<Checkpoint, Error> {
        if text.len() > MAX_TEXT {
            return Err(Error::BadCheckpoint("longer than a checkpoint can be"));
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(Error::BadCheckpoint("does not end with a newline"));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let [header, key, size, root, time, reason, session] = lines.as_slice() else {
            return Err(Error::BadCheckpoint("not the seven lines of a checkpoint"));
        };
        if *header != HEADER {
            return Err(Error::BadCheckpoint("not a km-audit-checkpoint v1"));
        }
        let field = |line: &'static str, value: &str| -> Result<String, Error> {
            value
                .strip_prefix(line)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or(Error::BadCheckpoint(line))
        };
        let key_id = field("key", key)?;
        let size = parse_decimal(&field("size", size)?).ok_or(Error::BadCheckpoint("size"))?;
        let root = parse_hash(&field("root", root)?).ok_or(Error::BadCheckpoint("root"))?;
        let time = parse_decimal(&field("time", time)?).ok_or(Error::BadCheckpoint("time"))?;
        let time_ms = i64::try_from(time).map_err(|_| Error::BadCheckpoint("time"))?;
        let reason = field("reason", reason)?;
        let session = field("session", session)?;
        if !is_word(&key_id) || !is_word(&reason) || !is_word(&session) {
            return Err(Error::BadCheckpoint("a value outside [A-Za-z0-9._:-]"));
        }
        Ok(Checkpoint {
            key_id,
            size,
            root,
            time_ms,
            reason,
            session: (session != "-").then_some(session),
        })
    }
}

/// A checkpoint with its signature, as stored and sent: the exact signed text, the signature,
/// and what the text says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    text: String,
    signature: Vec<u8>,
    checkpoint: Checkpoint,
}

/// The JSON form of a [`SignedCheckpoint`] (a line of `checkpoints.jsonl`, a part of an API
/// request): `{"checkpoint": TEXT, "signature": BASE64}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedCheckpointJson {
    /// The signed text.
    pub checkpoint: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

impl SignedCheckpoint {
    /// A signed checkpoint from its parts, parsing the text (the signature is not checked:
    /// call [`SignedCheckpoint::verify`]).
    pub fn from_parts(text: &str, signature: Vec<u8>) -> Result<Self, Error> {
        let checkpoint = Checkpoint::parse(text)?;
        Ok(SignedCheckpoint {
            text: text.to_owned(),
            signature,
            checkpoint,
        })
    }

    /// From the JSON form.
    pub fn from_json(json: &SignedCheckpointJson) -> Result<Self, Error> {
        let signature = STANDARD
            .decode(&json.signature)
            .map_err(|_| Error::BadCheckpoint("the signature is not base64"))?;
        SignedCheckpoint::from_parts(&json.checkpoint, signature)
    }

    /// The JSON form.
    pub fn to_json(&self) -> SignedCheckpointJson {
        SignedCheckpointJson {
            checkpoint: self.text.clone(),
            signature: STANDARD.encode(&self.signature),
        }
    }

    /// The exact signed text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// What the checkpoint states (not yet verified unless [`SignedCheckpoint::verify`] said so).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Checks the signature with `public_key` (raw Ed25519) and that the checkpoint names that
    /// key. Failures are one opaque [`Error::BadSignature`] or a [`Error::WrongKey`].
    pub fn verify(&self, public_key: &[u8]) -> Result<(), Error> {
        let id = key_id(public_key);
        if self.checkpoint.key_id != id {
            return Err(Error::WrongKey {
                expected: id,
                actual: self.checkpoint.key_id.clone(),
            });
        }
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(
                &signed_message(CHECKPOINT_CONTEXT, self.text.as_bytes()),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &AuditKey) -> Checkpoint {
        Checkpoint {
            key_id: key.id().to_owned(),
            size: 1234,
            root: [0xab; 32],
            time_ms: 1_767_225_600_123,
            reason: "end".into(),
            session: Some("9c2e4f0a1b3d5e7f".into()),
        }
    }

    #[test]
    fn a_checkpoint_signs_verifies_and_round_trips() {
        let (pkcs8, key) = AuditKey::generate().expect("a key");
        let again = AuditKey::from_pkcs8(&pkcs8).expect("reads back");
        assert_eq!(again.id(), key.id());
        assert_eq!(key.id().len(), 16);
        let signed = key.sign_checkpoint(&sample(&key)).expect("signs");
        signed.verify(key.public_key()).expect("verifies");
        let json = serde_json::to_string(&signed.to_json()).expect("json");
        let back: SignedCheckpointJson = serde_json::from_str(&json).expect("parses");
        let back = SignedCheckpoint::from_json(&back).expect("a checkpoint");
        assert_eq!(back, signed);
        back.verify(key.public_key()).expect("still verifies");
        assert_eq!(back.checkpoint().size, 1234);
        assert!(signed.text().starts_with("km-audit-checkpoint v1\nkey "));
    }

    #[test]
    fn any_change_to_a_checkpoint_or_another_key_is_refused() {
        let (_, key) = AuditKey::generate().expect("a key");
        let (_, other) = AuditKey::generate().expect("a key");
        let signed = key.sign_checkpoint(&sample(&key)).expect("signs");
        assert!(matches!(
            signed.verify(other.public_key()),
            Err(Error::WrongKey { .. })
        ));
        let forged = signed.text().replace("size 1234", "size 1235");
        let forged = SignedCheckpoint::from_parts(&forged, signed.signature().to_vec())
            .expect("still parses");
        assert_eq!(forged.verify(key.public_key()), Err(Error::BadSignature));
        let mut sig = signed.signature().to_vec();
        sig[3] ^= 0x10;
        let bad = SignedCheckpoint::from_parts(signed.text(), sig).expect("parses");
        assert_eq!(bad.verify(key.public_key()), Err(Error::BadSignature));
        // A checkpoint text signed as a report is not a checkpoint signature, and vice versa.
        let as_report = key.sign_report(signed.text().as_bytes());
        let swapped = SignedCheckpoint::from_parts(signed.text(), as_report).expect("parses");
        assert_eq!(swapped.verify(key.public_key()), Err(Error::BadSignature));
        assert!(key.sign_checkpoint(&sample(&other)).is_err());
    }

    #[test]
    fn the_parser_takes_only_the_exact_form() {
        let (_, key) = AuditKey::generate().expect("a key");
        let text = sample(&key).to_text().expect("text");
        assert_eq!(Checkpoint::parse(&text).expect("parses"), sample(&key));
        let bad = [
            text.trim_end().to_owned(),
            text.replace("size 1234", "size 01234"),
            text.replace("size 1234", "size +1234"),
            text.replace("size 1234", "size  1234"),
            text.replace("root ab", "root AB"),
            text.replace("reason end", "reason e d"),
            text.replace("km-audit-checkpoint v1", "km-audit-checkpoint v2"),
            format!("{text}extra\n"),
            text.replace("\nsession", "\r\nsession"),
            "x".repeat(2000),
        ];
        for case in bad {
            assert!(Checkpoint::parse(&case).is_err(), "accepted {case:?}");
        }
        let mut c = sample(&key);
        c.session = None;
        let text = c.to_text().expect("text");
        assert!(text.ends_with("session -\n"));
        assert_eq!(Checkpoint::parse(&text).expect("parses").session, None);
        c.reason = "has space".into();
        assert!(c.to_text().is_err());
    }

    #[test]
    fn a_report_signature_covers_every_byte() {
        let (_, key) = AuditKey::generate().expect("a key");
        let report = b"<html>evidence</html>".to_vec();
        let sig = key.sign_report(&report);
        verify_report(key.public_key(), &report, &sig).expect("verifies");
        let mut edited = report.clone();
        edited[7] ^= 1;
        assert_eq!(
            verify_report(key.public_key(), &edited, &sig),
            Err(Error::BadSignature)
        );
    }
}
