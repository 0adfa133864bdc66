//! `km-sign pack [--out PKG] LIB`: put a signed library, its `.kmsig` and a readable
//! `manifest.json` into a `.kmpkg` (see `km_signing::package`), the one file a user downloads
//! and `km install-plugin` takes.
//!
//! The package is read back and checked before the command reports success, so a package this
//! tool wrote is one km's reader accepts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use km_signing::{package, SignatureFile, PACKAGE_SUFFIX};

/// The default package path for `lib`: `LIB` without its library suffix, plus `.kmpkg`, beside it.
pub(crate) fn default_package_path(lib: &Path) -> PathBuf {
    let name = lib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(std::env::consts::DLL_SUFFIX)
        .unwrap_or(&name);
    lib.with_file_name(format!("{stem}{PACKAGE_SUFFIX}"))
}

/// Packs `lib` and `lib.kmsig` into `out` (default [`default_package_path`]); returns its path.
pub(crate) fn pack(lib: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let Some(lib_name) = lib.file_name().and_then(|n| n.to_str()) else {
        bail!("{} has no usable file name", lib.display());
    };
    if !package::is_package_library_name(lib_name) {
        bail!(
            "{}: a packaged library's file name must be [A-Za-z0-9._-], not start with '.', and end with {}",
            lib.display(),
            std::env::consts::DLL_SUFFIX
        );
    }
    let library =
        std::fs::read(lib).with_context(|| format!("reading the library {}", lib.display()))?;
    let sig_path = SignatureFile::path_for(lib);
    let signature_bytes = std::fs::read(&sig_path).with_context(|| {
        format!(
            "reading the signature {} (sign the library first: km-sign sign)",
            sig_path.display()
        )
    })?;
    let out = out.map_or_else(|| default_package_path(lib), Path::to_path_buf);
    package::write_package(&out, lib_name, &library, &signature_bytes)
        .with_context(|| format!("packing {}", lib.display()))?;
    let file =
        std::fs::File::open(&out).with_context(|| format!("re-reading {}", out.display()))?;
    let limits = package::Limits::for_library(library.len() as u64);
    let back = package::read_package(std::io::BufReader::new(file), limits).with_context(|| {
        format!(
            "the package just written, {}, does not read back",
            out.display()
        )
    })?;
    if back.library != library || back.signature_bytes != signature_bytes {
        bail!(
            "the package just written, {}, does not read back identically",
            out.display()
        );
    }
    eprintln!(
        "km-sign: packed {} {} -> {}",
        back.manifest.name,
        back.manifest.version,
        out.display()
    );
    Ok(out)
}
