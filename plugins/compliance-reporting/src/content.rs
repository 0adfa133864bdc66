//! Captured content, encrypted per data subject, and its erasure by destroying the subject's key
//! (crypto-shredding).
//!
//! With capture on, a call's request and response lines go into its record encrypted with
//! AES-256-GCM under a key of the call's data subject (who that is comes from the policy: the
//! actor by default, or a value in the request, see [`crate::policy`]). The record is part of the
//! Merkle tree like any other, so erasing never touches the trail: `erase --subject ID` destroys
//! the subject's key, the ciphertext in the trail becomes unreadable, and every checkpoint still
//! verifies.
//!
//! Files (`content/` in the data directory, mode 0700):
//! - `pseudonym.key`: 32 random bytes; subject ids are looked up by HMAC-SHA256 under it, so
//!   that no file name is a subject id (ids are personal data: an e-mail, a customer number).
//! - `subjects/<hmac hex>.key`: `{"ref", "key", "created_ms"}`, mode 0600. `ref` is random: the
//!   only name of the subject in the trail. Once the file is gone nothing links `ref` to a
//!   person, not even the pseudonym key.
//!
//! The nonce is 96 random bits per record (far below the 2^32 messages per key where random GCM
//! nonces start to risk a collision, for any one subject's activity). The associated data binds
//! a ciphertext to its record's session and time, so it cannot be moved to another record.
//!
//! What is NOT guaranteed: that the key's bytes are gone from the disk. The key file is
//! overwritten with zeros, synced and unlinked, but copy-on-write and journalling file systems,
//! SSD wear levelling, snapshots and backups may keep old blocks. Keep `content/` on storage whose
//! deletion you trust, or off backups.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::record::Content;
use crate::Error;

const AAD_CONTEXT: &str = "km-audit-content-v1";

/// A subject's key as stored.
#[derive(Serialize, Deserialize)]
struct SubjectFile {
    #[serde(rename = "ref")]
    reference: String,
    key: String,
    created_ms: i64,
}

/// The key store of captured content.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    pseudonym: hmac::Key,
}

/// What opening captured content found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The plaintext.
    Plain(Vec<u8>),
    /// The subject was erased: the key is gone.
    Erased,
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto("the system random generator failed"))?;
    Ok(bytes)
}

fn aad(session: &str, time: &str) -> Vec<u8> {
    format!("{AAD_CONTEXT}\n{session}\n{time}").into_bytes()
}

fn private_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating", dir, e))
}

impl KeyStore {
    /// Opens (creating if needed) the key store under `data_dir/content`.
    pub fn open(data_dir: &Path) -> Result<KeyStore, Error> {
        let dir = data_dir.join("content");
        private_dir(&dir.join("subjects"))?;
        let key_path = dir.join("pseudonym.key");
        let bytes = match fs::read(&key_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = random::<32>()?;
                match km_durable::write_new(&key_path, &fresh, km_durable::PRIVATE) {
                    Ok(()) => fresh.to_vec(),
                    // Another session made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        fs::read(&key_path).map_err(|e| Error::io("reading", &key_path, e))?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(Error::io("reading", &key_path, e)),
        };
        if bytes.len() != 32 {
            return Err(Error::Corrupt {
                path: key_path,
                what: "is not a 32-byte key".to_owned(),
            });
        }
        Ok(KeyStore {
            dir,
            pseudonym: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    fn subject_path(&self, subject: &str) -> PathBuf {
        let tag = hmac::sign(&self.pseudonym, subject.as_bytes());
        self.dir
            .join("subjects")
            .join(format!("{}.key", hex::encode(tag.as_ref())))
    }

    fn read_subject(path: &Path) -> Result<Option<(String, [u8; 32])>, Error> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        let corrupt = |what: &str| Error::Corrupt {
            path: path.to_path_buf(),
            what: what.to_owned(),
        };
        let file: SubjectFile =
            serde_json::from_slice(&text).map_err(|_| corrupt("is not a subject key file"))?;
        let key: [u8; 32] = STANDARD
            .decode(&file.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| corrupt("holds no 32-byte key"))?;
        Ok(Some((file.reference, key)))
    }

    /// The subject's reference and key, made on first use.
    fn key_for(&self, subject: &str, now_ms: i64) -> Result<(String, [u8; 32]), Error> {
        let path = self.subject_path(subject);
        if let Some(found) = Self::read_subject(&path)? {
            return Ok(found);
        }
        let key = random::<32>()?;
        let reference = hex::encode(random::<8>()?);
        let file = SubjectFile {
            reference: reference.clone(),
            key: STANDARD.encode(key),
            created_ms: now_ms,
        };
        let bytes = serde_json::to_vec(&file).unwrap_or_default();
        match km_durable::write_new(&path, &bytes, km_durable::PRIVATE) {
            Ok(()) => Ok((reference, key)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read_subject(&path)?
                .ok_or_else(|| Error::Corrupt {
                    path,
                    what: "vanished while it was made".to_owned(),
                }),
            Err(e) => Err(e.into()),
        }
    }

    /// Encrypts `plaintext` for `subject`, bound to the record's session and time.
    pub fn seal(
        &self,
        subject: &str,
        session: &str,
        time: &str,
        plaintext: &[u8],
        now_ms: i64,
    ) -> Result<Content, Error> {
        let (reference, key) = self.key_for(subject, now_ms)?;
        let cipher = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key).map_err(|_| Error::Crypto("AES-256-GCM key"))?,
        );
        let nonce = random::<NONCE_LEN>()?;
        let mut data = plaintext.to_vec();
        cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(session, time)),
                &mut data,
            )
            .map_err(|_| Error::Crypto("encrypting captured content"))?;
        Ok(Content {
            subject: reference,
            alg: "AES-256-GCM".to_owned(),
            nonce: STANDARD.encode(nonce),
            data: STANDARD.encode(data),
        })
    }

    /// The key of the subject whose reference is `reference`, if it was not erased. Scans the
    /// store: this serves commands, not the message path.
    fn key_by_reference(&self, reference: &str) -> Result<Option<[u8; 32]>, Error> {
        let dir = self.dir.join("subjects");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            if !entry.file_name().to_string_lossy().ends_with(".key") {
                continue;
            }
            if let Some((r, key)) = Self::read_subject(&entry.path())? {
                if r == reference {
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// Decrypts a record's content; [`Opened::Erased`] when the subject's key is gone. A
    /// ciphertext that does not open with the key (altered, or moved from another record) is an
    /// error.
    pub fn unseal(&self, content: &Content, session: &str, time: &str) -> Result<Opened, Error> {
        let Some(key) = self.key_by_reference(&content.subject)? else {
            return Ok(Opened::Erased);
        };
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&content.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(Error::Crypto("the record's nonce is malformed"))?;
        let mut data = STANDARD
            .decode(&content.data)
            .map_err(|_| Error::Crypto("the record's ciphertext is not base64"))?;
        let cipher = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key).map_err(|_| Error::Crypto("AES-256-GCM key"))?,
        );
        let plain = cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(session, time)),
                &mut data,
            )
            .map_err(|_| Error::Crypto("the captured content does not decrypt: it was altered"))?;
        Ok(Opened::Plain(plain.to_vec()))
    }

    /// The reference `subject` has in the trail, if it has a key.
    pub fn reference_of(&self, subject: &str) -> Result<Option<String>, Error> {
        Ok(Self::read_subject(&self.subject_path(subject))?.map(|(r, _)| r))
    }

    /// Destroys `subject`'s key: overwrites the file with zeros, syncs it, unlinks it, syncs the
    /// directory. Returns the subject's reference, or `None` when it had no key.
    pub fn erase(&self, subject: &str) -> Result<Option<String>, Error> {
        let path = self.subject_path(subject);
        let Some((reference, _)) = Self::read_subject(&path)? else {
            return Ok(None);
        };
        let len = fs::metadata(&path)
            .map_err(|e| Error::io("reading the size of", &path, e))?
            .len();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        file.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("overwriting", &path, e))?;
        drop(file);
        fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        km_durable::sync_dir(&self.dir.join("subjects"))?;
        Ok(Some(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_opens_for_its_record_until_its_subject_is_erased() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(dir.path()).expect("opens");
        let t = "2026-01-01T00:00:00.000000Z";
        let a = store
            .seal("cust-a", "s1", t, b"request a\nresponse a", 1)
            .expect("seals");
        let a2 = store.seal("cust-a", "s1", t, b"again", 1).expect("seals");
        let b = store
            .seal("cust-b", "s1", t, b"request b", 1)
            .expect("seals");
        assert_eq!(a.subject, a2.subject, "one reference per subject");
        assert_ne!(a.subject, b.subject);
        assert_ne!(a.nonce, a2.nonce);
        assert!(!a.data.contains("request"));
        assert_eq!(
            store.unseal(&a, "s1", t).expect("opens"),
            Opened::Plain(b"request a\nresponse a".to_vec())
        );
        // Moved to another record, or altered: refused.
        assert!(store.unseal(&a, "s2", t).is_err());
        let mut altered = a.clone();
        altered.data = STANDARD.encode({
            let mut d = STANDARD.decode(&a.data).expect("b64");
            d[0] ^= 1;
            d
        });
        assert!(store.unseal(&altered, "s1", t).is_err());
        // A second store on the same directory (another session) finds the same keys.
        let again = KeyStore::open(dir.path()).expect("opens");
        assert_eq!(
            again.reference_of("cust-a").expect("reads"),
            Some(a.subject.clone())
        );

        assert_eq!(
            store.erase("cust-a").expect("erases"),
            Some(a.subject.clone())
        );
        assert_eq!(store.unseal(&a, "s1", t).expect("answers"), Opened::Erased);
        assert_eq!(
            store.unseal(&b, "s1", t).expect("opens"),
            Opened::Plain(b"request b".to_vec())
        );
        assert_eq!(store.erase("cust-a").expect("nothing left"), None);
        assert_eq!(store.reference_of("cust-a").expect("reads"), None);
        // No file name in the store is a subject id.
        for entry in fs::read_dir(dir.path().join("content/subjects")).expect("lists") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            assert!(!name.contains("cust"), "{name}");
        }
        // A new key for an erased subject is a new reference: the old records stay unreadable.
        let a3 = store.seal("cust-a", "s1", t, b"later", 2).expect("seals");
        assert_ne!(a3.subject, a.subject);
        assert_eq!(store.unseal(&a, "s1", t).expect("answers"), Opened::Erased);
    }
}
