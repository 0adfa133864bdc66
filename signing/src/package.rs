//! `.kmpkg` plugin packages: a gzip-compressed tar archive holding exactly three regular files,
//! the library (`libNAME.so`, a plain file name with the platform's library suffix), its
//! signature (`libNAME.so.kmsig`) and `manifest.json` (a readable copy of the signed manifest
//! bytes inside the signature, byte for byte).
//!
//! Why a package at all: a library and its signature must travel together, and a download is one
//! file. Why so strict when reading: a package comes from the network, so reading it must not be
//! a way to write anywhere else or to exhaust memory. [`read_package`] refuses absolute paths,
//! `..` and any path with a directory part, links (symbolic and hard), device files, FIFOs and
//! directories, duplicate entries, names other than the three expected ones, an entry larger
//! than [`Limits::max_entry`], more than [`Limits::max_total`] decompressed bytes in all (a
//! decompression bomb stops being read at the cap), and a truncated or corrupt gzip stream (the
//! stream is read to its end so the CRC is checked).
//!
//! Reading a package checks its shape only. It does NOT verify the signature: that is the
//! installer's job, with the user's trust store ([`crate::verify_library`]), before anything is
//! written to the plugin directory. Nothing is ever extracted to disk by this module.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::manifest::Manifest;
use crate::sigfile::{SignatureFile, MAX_SIGFILE_BYTES, SIGFILE_SUFFIX};

/// The file name suffix of a package.
pub const PACKAGE_SUFFIX: &str = ".kmpkg";
/// The readable manifest inside a package.
pub const PACKAGE_MANIFEST: &str = "manifest.json";

/// Why a package was refused or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The archive could not be read (truncated, corrupt gzip, bad tar header, ...).
    #[error("the package is not a readable tar.gz archive (truncated or corrupt?): {0}")]
    Corrupt(String),
    /// An entry's path is absolute, has `..` or a directory part, or is not UTF-8.
    #[error("entry {path:?} has an unsafe path (absolute, `..` or a directory part)")]
    UnsafePath {
        /// The entry's path as stored.
        path: String,
    },
    /// An entry is a link, device, FIFO or directory.
    #[error("entry {path:?} is not a regular file ({kind})")]
    NotRegular {
        /// The entry's path.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The same name appears twice.
    #[error("entry {path:?} appears more than once")]
    Duplicate {
        /// The entry's path.
        path: String,
    },
    /// A name that is not one of the three expected.
    #[error("unexpected entry {path:?} (a package holds LIB, LIB.kmsig and manifest.json only)")]
    Unexpected {
        /// The entry's path.
        path: String,
    },
    /// An entry or the whole archive is larger than allowed.
    #[error("{what} is larger than the cap of {cap} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The cap.
        cap: u64,
    },
    /// One of the three files is missing.
    #[error("the package has no {0}")]
    Missing(&'static str),
    /// The signature file does not parse, or `manifest.json` differs from the signed manifest.
    #[error("the package's signature or manifest is invalid: {0}")]
    Invalid(String),
    /// Writing a package failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The package being written.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// Size caps applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest library.
    pub max_entry: u64,
    /// The largest decompressed archive (all headers and entries).
    pub max_total: u64,
}

impl Limits {
    /// Caps for a library of at most `max_library` bytes: signature and manifest have their own
    /// small caps, the total allows the three plus tar overhead.
    pub fn for_library(max_library: u64) -> Self {
        Limits {
            max_entry: max_library,
            max_total: max_library + 2 * MAX_SIGFILE_BYTES + 64 * 1024,
        }
    }
}

/// A package's contents, read into memory and checked for shape, NOT verified.
#[derive(Debug, Clone)]
pub struct Package {
    /// The library's file name (a plain name ending in the platform's library suffix).
    pub lib_name: String,
    /// The library's bytes.
    pub library: Vec<u8>,
    /// The signature file's exact bytes.
    pub signature_bytes: Vec<u8>,
    /// The parsed signature file.
    pub signature: SignatureFile,
    /// The manifest as claimed by the signature (unverified until the installer verifies).
    pub manifest: Manifest,
}

/// The platform's file name of the plugin library whose stem is `stem`: `lib<stem>.so` on Linux,
/// `lib<stem>.dylib` on macOS, `<stem>.dll` on Windows. A cargo `cdylib` is named after its crate
/// with `-` written `_` (`console_logger`); a customer build after its plugin
/// ([`crate::customer_build_file_name`]). The one place the platform's naming is spelled, so that
/// what km installs, what `km-sign build-plugin` writes and what the tests look for agree.
pub fn library_file_name(stem: &str) -> String {
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Is `name` acceptable as the library's file name inside a package (and then in the plugin
/// directory)? A plain name of `[A-Za-z0-9._-]`, not starting with `.`, ending with the platform's
/// library suffix, at most 255 bytes.
pub fn is_package_library_name(name: &str) -> bool {
    let suffix = std::env::consts::DLL_SUFFIX;
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.len() > suffix.len()
        && name.ends_with(suffix)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Writes a package to `out` atomically, mode 0644 (see `km_durable::write_atomic`).
pub fn write_package(
    out: &Path,
    lib_name: &str,
    library: &[u8],
    signature_bytes: &[u8],
) -> Result<(), PackageError> {
    let write_err = |source: io::Error| PackageError::Write {
        path: out.display().to_string(),
        source,
    };
    if !is_package_library_name(lib_name) {
        return Err(PackageError::UnsafePath {
            path: lib_name.to_owned(),
        });
    }
    let signature = SignatureFile::parse(signature_bytes)
        .map_err(|e| PackageError::Invalid(format!("the signature file: {e}")))?;
    // The package is built in memory (the library is there already) and then written by the
    // workspace's one atomic write.
    let mut packed = Vec::with_capacity(library.len() / 2 + 4096);
    {
        let gz = GzEncoder::new(&mut packed, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let sig_name = format!("{lib_name}{SIGFILE_SUFFIX}");
        for (name, bytes, mode) in [
            (lib_name, library, 0o644),
            (sig_name.as_str(), signature_bytes, 0o644),
            (PACKAGE_MANIFEST, signature.manifest_bytes.as_slice(), 0o644),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(mode);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mtime(0);
            tar.append_data(&mut header, name, bytes)
                .map_err(write_err)?;
        }
        let gz = tar.into_inner().map_err(write_err)?;
        gz.finish().map_err(write_err)?;
    }
    km_durable::write_atomic(out, &packed, km_durable::PUBLIC)
        .map_err(|e| write_err(e.into_os_error()))
}

/// A reader that fails once more than `cap` bytes have come through.
struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(CapExceeded(self.cap)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
struct CapExceeded(u64);

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} decompressed bytes", self.0)
    }
}

impl std::error::Error for CapExceeded {}

fn io_to_package_error(e: io::Error) -> PackageError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CapExceeded>())
    {
        Some(CapExceeded(cap)) => PackageError::TooLarge {
            what: "the decompressed package".to_owned(),
            cap: *cap,
        },
        None => PackageError::Corrupt(e.to_string()),
    }
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a FIFO",
        tar::EntryType::Directory => "a directory",
        _ => "not a plain file",
    }
}

/// The entry path as a single plain file name, or why not.
fn plain_name(raw: &[u8]) -> Result<String, PackageError> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let unsafe_path = || PackageError::UnsafePath { path: text.clone() };
    let Ok(s) = std::str::from_utf8(raw) else {
        return Err(unsafe_path());
    };
    let mut components = Path::new(s).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) if !s.contains('/') && !s.contains('\\') => {
            Ok(name.to_string_lossy().into_owned())
        }
        _ => Err(unsafe_path()),
    }
}

/// Reads and checks a package from `reader` (the compressed bytes). See the module docs for what
/// is refused.
pub fn read_package<R: Read>(reader: R, limits: Limits) -> Result<Package, PackageError> {
    let capped = Capped {
        inner: GzDecoder::new(reader),
        left: limits.max_total,
        cap: limits.max_total,
    };
    let mut archive = tar::Archive::new(capped);
    let mut seen = HashSet::new();
    let mut library: Option<(String, Vec<u8>)> = None;
    let mut signature: Option<(String, Vec<u8>)> = None;
    let mut manifest_json: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(io_to_package_error)? {
        let mut entry = entry.map_err(io_to_package_error)?;
        let raw_path = entry.path_bytes().into_owned();
        let name = plain_name(&raw_path)?;
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            return Err(PackageError::NotRegular {
                path: name,
                kind: kind_name(kind),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(PackageError::Duplicate { path: name });
        }
        let cap = if name == PACKAGE_MANIFEST {
            crate::manifest::MAX_MANIFEST_BYTES as u64
        } else if name.ends_with(SIGFILE_SUFFIX) {
            MAX_SIGFILE_BYTES
        } else {
            limits.max_entry
        };
        let declared = entry.header().size().map_err(io_to_package_error)?;
        if declared > cap {
            return Err(PackageError::TooLarge {
                what: format!("entry {name:?}"),
                cap,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        (&mut entry)
            .take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(io_to_package_error)?;
        if bytes.len() as u64 > cap {
            return Err(PackageError::TooLarge {
                what: format!("entry {name:?}"),
                cap,
            });
        }
        if name == PACKAGE_MANIFEST {
            manifest_json = Some(bytes);
        } else if name.ends_with(SIGFILE_SUFFIX) && signature.is_none() {
            signature = Some((name, bytes));
        } else if is_package_library_name(&name) && library.is_none() {
            library = Some((name, bytes));
        } else {
            return Err(PackageError::Unexpected { path: name });
        }
    }
    // Read the gzip stream to its end, so that a truncated or corrupt trailer (CRC, length) is
    // noticed even though tar stopped at its end-of-archive blocks.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_to_package_error)?;

    let (lib_name, library) = library.ok_or(PackageError::Missing("library"))?;
    let (sig_name, signature_bytes) = signature.ok_or(PackageError::Missing("signature"))?;
    let manifest_json = manifest_json.ok_or(PackageError::Missing(PACKAGE_MANIFEST))?;
    if sig_name != format!("{lib_name}{SIGFILE_SUFFIX}") {
        return Err(PackageError::Unexpected { path: sig_name });
    }
    let signature = SignatureFile::parse(&signature_bytes)
        .map_err(|e| PackageError::Invalid(format!("{sig_name}: {e}")))?;
    if manifest_json != signature.manifest_bytes {
        return Err(PackageError::Invalid(format!(
            "{PACKAGE_MANIFEST} differs from the manifest signed in {sig_name}"
        )));
    }
    let manifest = Manifest::parse(&signature.manifest_bytes)
        .map_err(|e| PackageError::Invalid(format!("the manifest in {sig_name}: {e}")))?;
    Ok(Package {
        lib_name,
        library,
        signature_bytes,
        signature,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            for (name, kind, bytes) in entries {
                let mut header = tar::Header::new_gnu();
                // set_path refuses `..`; write the raw name to test the reader.
                let field = &mut header.as_old_mut().name;
                field[..name.len()].copy_from_slice(name.as_bytes());
                header.set_size(bytes.len() as u64);
                header.set_entry_type(*kind);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append(&header, *bytes).expect("append");
            }
            tar.finish().expect("finish");
        }
        gz.finish().expect("gz")
    }

    fn limits() -> Limits {
        Limits::for_library(1024 * 1024)
    }

    #[test]
    fn escaping_and_odd_entries_are_refused() {
        let cases: [(&str, tar::EntryType); 5] = [
            ("../evil.so", tar::EntryType::Regular),
            ("/etc/evil.so", tar::EntryType::Regular),
            ("sub/lib.so", tar::EntryType::Regular),
            ("libx.so", tar::EntryType::Symlink),
            ("libx.so", tar::EntryType::Char),
        ];
        for (name, kind) in cases {
            let pkg = raw_tar(&[(name, kind, b"x")]);
            let err = read_package(&pkg[..], limits()).expect_err(name);
            assert!(
                matches!(
                    err,
                    PackageError::UnsafePath { .. } | PackageError::NotRegular { .. }
                ),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn duplicates_unexpected_and_oversized_are_refused() {
        let dup = raw_tar(&[
            ("libx.so", tar::EntryType::Regular, b"a"),
            ("libx.so", tar::EntryType::Regular, b"b"),
        ]);
        assert!(matches!(
            read_package(&dup[..], limits()),
            Err(PackageError::Duplicate { .. })
        ));
        let odd = raw_tar(&[("README", tar::EntryType::Regular, b"a")]);
        assert!(matches!(
            read_package(&odd[..], limits()),
            Err(PackageError::Unexpected { .. })
        ));
        let big = vec![0u8; 4096];
        let pkg = raw_tar(&[("libx.so", tar::EntryType::Regular, &big)]);
        let small = Limits {
            max_entry: 1024,
            max_total: 1 << 20,
        };
        assert!(matches!(
            read_package(&pkg[..], small),
            Err(PackageError::TooLarge { .. })
        ));
        let bomb = Limits {
            max_entry: 1 << 20,
            max_total: 2048,
        };
        assert!(matches!(
            read_package(&pkg[..], bomb),
            Err(PackageError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_archive_is_refused() {
        let pkg = raw_tar(&[("libx.so", tar::EntryType::Regular, &[7u8; 3000])]);
        let cut = &pkg[..pkg.len() - 10];
        assert!(matches!(
            read_package(cut, limits()),
            Err(PackageError::Corrupt(_))
        ));
    }
}
