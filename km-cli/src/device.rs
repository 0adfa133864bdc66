//! This installation's device identity: the Ed25519 key pair km keeps in `KM_HOME/device.key`,
//! and the signature km adds with it to every request a plugin makes to the Kilometers API, so
//! that the API can hold a customer to a number of installations (seats).
//!
//! The headers and the message they sign are `km_signing::device`'s (the API checks them with
//! the same code). The key is random, made by km the first time a plugin talks to the API: it is
//! not a hardware fingerprint and says nothing about the machine or its user. Its file is written
//! once, atomically and never replaced (a second km racing to make it adopts the first one's),
//! with mode 0600, and refused when it is not a regular file of the user's own that only the
//! user can read, as ssh refuses a private key others can read.
//!
//! Plugins cannot set `km-device-*` headers themselves: a request carrying one is refused before
//! anything is sent, so a plugin can neither forge another installation's identity nor hide its
//! own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::std_types::Tuple2;
use anyhow::{bail, Context, Result};
use km_abi::{ErrorKind, HttpRequest, PluginError};
use km_signing::device::{self, HEADER_PREFIX};
use km_signing::{Algorithm, KeyId, PrivateKey};

use crate::home::KmHome;

/// The device key's file name in `KM_HOME`.
pub const DEVICE_KEY_FILE: &str = "device.key";

/// The largest device key file km reads (a PEM Ed25519 key is about 120 bytes).
const MAX_KEY_BYTES: u64 = 16 * 1024;

/// The device identity of one `KM_HOME`, made on first use and then kept for the process.
#[derive(Debug)]
pub struct DeviceIdentity {
    home: PathBuf,
    key: Mutex<Option<Arc<PrivateKey>>>,
}

impl DeviceIdentity {
    /// The identity of the installation at `home` (nothing is read or made yet).
    pub fn new(home: &KmHome) -> Arc<Self> {
        Arc::new(DeviceIdentity {
            home: home.root().to_path_buf(),
            key: Mutex::new(None),
        })
    }

    /// The key file.
    pub fn path(&self) -> PathBuf {
        self.home.join(DEVICE_KEY_FILE)
    }

    /// The key: read from its file, or made now when there is none. A failure is not remembered,
    /// so a later request tries again.
    pub fn key(&self) -> Result<Arc<PrivateKey>> {
        let mut slot = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = slot.as_ref() {
            return Ok(key.clone());
        }
        let path = self.path();
        let key = match read(&path)? {
            Some(key) => key,
            None => create(&self.home, &path)?,
        };
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Adds the device headers to `request`, signed over it (and over its `km-signature`, when
    /// the plugin signed it). Refuses a request that already carries a `km-device-*` header.
    pub fn sign(&self, request: &mut HttpRequest, now: i64) -> Result<(), PluginError> {
        if let Some(forged) = request
            .headers
            .iter()
            .find(|h| h.0.as_str().to_ascii_lowercase().starts_with(HEADER_PREFIX))
        {
            return Err(PluginError::new(
                ErrorKind::DENIED,
                format!("header {} is set by km", forged.0),
            ));
        }
        let key = self.key().map_err(|e| {
            PluginError::new(
                ErrorKind::IO,
                format!("this installation's device identity: {e:#}"),
            )
        })?;
        let request_signature = request
            .headers
            .iter()
            .find(|h| {
                h.0.as_str()
                    .eq_ignore_ascii_case(device::REQUEST_SIGNATURE_HEADER)
            })
            .map(|h| h.1.to_string());
        let headers = device::sign_request(
            &key,
            request.method.as_str(),
            request.path.as_str(),
            request.body.as_slice(),
            now,
            request_signature.as_deref(),
        )
        .map_err(|e| PluginError::failed(format!("signing with the device key: {e}")))?;
        for (name, value) in headers {
            request.headers.push(Tuple2(name.into(), value.into()));
        }
        Ok(())
    }
}

/// The device id of the installation at `home`, when it has made its key already (never makes
/// one): what `km plugin-status` shows, and what the API lists as the seat.
pub fn existing_id(home: &KmHome) -> Result<Option<KeyId>> {
    Ok(read(&home.root().join(DEVICE_KEY_FILE))?.map(|key| key.public_key().key_id()))
}

/// The key in `path`, `None` when there is no file; an error naming the file when it is not a
/// private regular file of the user's own (StrictModes' [`Expect::Secret`](crate::strict::Expect),
/// checked on the descriptor it is read from) holding an Ed25519 key.
fn read(path: &Path) -> Result<Option<PrivateKey>> {
    let Some(bytes) = crate::strict::read_secret(path, MAX_KEY_BYTES, "device key")
        .map_err(|refusal| anyhow::anyhow!("{refusal}"))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not a PEM file", path.display()))?;
    let key = PrivateKey::from_pem(&text).with_context(|| format!("reading {}", path.display()))?;
    if key.algorithm() != Algorithm::Ed25519 {
        bail!("{} is not an Ed25519 key", path.display());
    }
    Ok(Some(key))
}

/// Makes a new key in `path` (mode 0600, never replacing a file); when another km made one in
/// the meantime, that one is used.
fn create(home: &Path, path: &Path) -> Result<PrivateKey> {
    KmHome::ensure_private_dir(home)?;
    let key = PrivateKey::generate(Algorithm::Ed25519).context("making a device key")?;
    match km_durable::write_new(path, key.to_pem().as_bytes(), km_durable::PRIVATE) {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path)?
            .with_context(|| format!("{} vanished while it was being made", path.display())),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn home() -> (tempfile::TempDir, KmHome) {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = KmHome::resolve(Some(&dir.path().join("km"))).expect("home");
        (dir, home)
    }

    fn request() -> HttpRequest {
        HttpRequest::post_json("/api/plugins/authenticate", b"{}".to_vec())
    }

    fn header<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
        request
            .headers
            .iter()
            .find(|h| h.0.as_str() == name)
            .map(|h| h.1.as_str())
    }

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let (_d, home) = home();
        assert_eq!(existing_id(&home).expect("reads"), None);
        let identity = DeviceIdentity::new(&home);
        let key = identity.key().expect("made");
        let meta = std::fs::metadata(identity.path()).expect("written");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            existing_id(&home).expect("reads"),
            Some(key.public_key().key_id())
        );
        // Another process (another identity object) finds the same key.
        let again = DeviceIdentity::new(&home).key().expect("read");
        assert_eq!(again.public_key().key_id(), key.public_key().key_id());
    }

    #[test]
    fn racing_processes_end_with_one_key() {
        let (_d, home) = home();
        let ids: Vec<KeyId> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let home = home.clone();
                    scope.spawn(move || {
                        DeviceIdentity::new(&home)
                            .key()
                            .expect("key")
                            .public_key()
                            .key_id()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn a_key_others_can_read_or_a_link_is_refused() {
        let (_d, home) = home();
        let identity = DeviceIdentity::new(&home);
        identity.key().expect("made");
        std::fs::set_permissions(identity.path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = DeviceIdentity::new(&home).key().expect_err("refused");
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
        std::fs::remove_file(identity.path()).expect("rm");
        let elsewhere = home.root().join("elsewhere.key");
        std::fs::write(&elsewhere, "x").expect("write");
        std::os::unix::fs::symlink(&elsewhere, identity.path()).expect("link");
        let error = DeviceIdentity::new(&home).key().expect_err("refused");
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
    }

    #[test]
    fn requests_get_verifiable_device_headers() {
        let (_d, home) = home();
        let identity = DeviceIdentity::new(&home);
        let mut req = request();
        req.headers.push(Tuple2(
            km_signing::device::REQUEST_SIGNATURE_HEADER.into(),
            "plugin-signature".into(),
        ));
        identity.sign(&mut req, 1_800_000_000).expect("signs");
        let device = device::verify_request(
            |name| header(&req, name),
            "POST",
            "/api/plugins/authenticate",
            b"{}",
            1_800_000_000,
        )
        .expect("verifies")
        .expect("a device");
        assert_eq!(Some(device.id), existing_id(&home).expect("id"));
    }

    #[test]
    fn a_plugin_cannot_set_device_headers() {
        let (_d, home) = home();
        let identity = DeviceIdentity::new(&home);
        for name in ["km-device-key", "KM-Device-Signature", "km-device-anything"] {
            let mut req = request();
            req.headers.push(Tuple2(name.into(), "forged".into()));
            let error = identity.sign(&mut req, 1).expect_err("refused");
            assert_eq!(error.kind, ErrorKind::DENIED, "{name}");
        }
        // Nothing was made for a refused request.
        assert_eq!(existing_id(&home).expect("reads"), None);
    }
}
