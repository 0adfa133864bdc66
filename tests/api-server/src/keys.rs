//! The token-signing key and the subscription tokens it signs.
//!
//! Keys are read, written and used through the signing crate's [`PrivateKey`] (PEM and DER
//! parsing, the atomic 0600 write, Ed25519 signing), so that the server shares km-sign's key
//! handling instead of keeping its own. Tokens are encoded by the plugin SDK's
//! [`encode_token`], the exact format plugins verify. Only Ed25519 keys are accepted: plugins
//! verify tokens with Ed25519 and nothing else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_plugin_sdk::auth::{encode_token, TokenPayload};
use km_signing::{Algorithm, PrivateKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use spki::der::Decode as _;
use spki::ObjectIdentifier;

/// The algorithm identifier of Ed25519 keys (RFC 8410).
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// An Ed25519 key that signs subscription tokens.
pub(crate) struct TokenSigner {
    key: PrivateKey,
    /// The 32 raw bytes of the public key, as plugins have it stamped in.
    public: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("public", &STANDARD.encode(&self.public))
            .finish_non_exhaustive()
    }
}

/// `--gen-key OUT`: writes a new key to `out` (PKCS#8 PEM, 0600, replacing what was there) and
/// its public key in base64 to `OUT.pub`; returns the base64 public key.
pub(crate) fn generate(out: &Path) -> anyhow::Result<String> {
    let signer = TokenSigner::generate()?;
    signer
        .key
        .write_pem_file(out, true)
        .with_context(|| format!("writing {}", out.display()))?;
    let public = signer.public_key_base64();
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    km_durable::write_atomic(
        &pub_path,
        format!("{public}\n").as_bytes(),
        km_durable::PUBLIC,
    )?;
    Ok(public)
}

impl TokenSigner {
    /// A new random key.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        Self::from_key(PrivateKey::generate(Algorithm::Ed25519).context("making a key")?)
    }

    /// Reads `--signing-key`: PKCS#8 PEM (`BEGIN PRIVATE KEY`) or raw PKCS#8 DER.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let key = if bytes.starts_with(b"-----BEGIN") {
            PrivateKey::from_pem(&String::from_utf8_lossy(&bytes))
        } else {
            PrivateKey::from_pkcs8(&bytes)
        }
        .with_context(|| format!("{}: not a usable private key", path.display()))?;
        Self::from_key(key).with_context(|| format!("{}", path.display()))
    }

    fn from_key(key: PrivateKey) -> anyhow::Result<Self> {
        if key.algorithm() != Algorithm::Ed25519 {
            bail!(
                "a {} key; subscription tokens are signed with Ed25519 keys only",
                key.algorithm().as_str()
            );
        }
        let public = key.public_key();
        let spki = spki::SubjectPublicKeyInfoRef::from_der(public.spki_der())
            .context("the public key does not parse")?;
        let raw = spki.subject_public_key.as_bytes();
        match raw {
            Some(raw) if spki.algorithm.oid == ED25519_OID && raw.len() == 32 => Ok(Self {
                public: raw.to_vec(),
                key,
            }),
            _ => bail!("the public key is not a 32-byte Ed25519 key"),
        }
    }

    /// The raw 32-byte public key.
    pub(crate) fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The public key in standard base64, as `km-sign build-plugin --api-public-key` takes it.
    pub(crate) fn public_key_base64(&self) -> String {
        STANDARD.encode(&self.public)
    }

    /// Signs `payload` as a subscription token.
    pub(crate) fn sign_token(&self, payload: &TokenPayload) -> anyhow::Result<String> {
        let mut failure = None;
        let token = encode_token(payload, |message| match self.key.sign(message) {
            Ok(signature) => signature,
            Err(e) => {
                failure = Some(e);
                Vec::new()
            }
        });
        match failure {
            None => Ok(token),
            Some(e) => Err(e).context("signing a token"),
        }
    }
}

/// `n` random bytes in lowercase hex (token ids).
pub(crate) fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(km_durable::digest::hex(&bytes))
}

#[cfg(test)]
mod tests;
