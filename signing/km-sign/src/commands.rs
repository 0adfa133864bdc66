//! What each `km-sign` command does, on validated values.
//!
//! Verification answers ("this signature is not acceptable") are returned as [`Refused`] so
//! that `main` exits 1; everything else (unreadable files, bad keys, invalid arguments) exits 2.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use km_abi::Tier;
use km_signing::{
    check_name, parse_date, target_triple, verify_library, Algorithm, Claims, KeyId, Manifest,
    Policy, PrivateKey, PublicKey, SignatureFile, TrustStore, Verified, KNOWN_CAPABILITIES,
};

use crate::args::{Cli, Command, KeyAlg, KeyRef, ManifestArgs};

/// A verification that said no: `main` exits 1 for it.
#[derive(Debug)]
pub(crate) struct Refused {
    what: PathBuf,
    error: km_signing::Error,
    /// More context for this tool's user, e.g. which key was given.
    note: Option<String>,
}

impl Refused {
    fn new(what: &Path, error: km_signing::Error) -> Self {
        Refused {
            what: what.to_path_buf(),
            error,
            note: None,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: refused ({} check): {}",
            self.what.display(),
            self.error.check(),
            self.error
        )?;
        match &self.note {
            Some(note) => write!(f, "; {note}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Refused {}

/// Runs one command.
pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen {
            out,
            alg,
            bits,
            force,
        } => keygen(&out, alg, bits, force),
        Command::Sign { key, manifest, lib } => sign(&key, &manifest, &lib),
        Command::Verify {
            public,
            name,
            target,
            abi_version,
            lib,
        } => verify(
            &public,
            name.as_deref(),
            target.as_deref(),
            abi_version.as_deref(),
            &lib,
        ),
        Command::Manifest { manifest, key, lib } => print_manifest(&manifest, &key, &lib),
        Command::Attach {
            manifest,
            signature,
            public,
            lib,
        } => attach(&manifest, &signature, &public, &lib),
        Command::Pack { out, lib } => crate::pack::pack(&lib, out.as_deref()).map(drop),
        Command::BuildPlugin(args) => crate::build::run(&args),
        Command::TeamPolicy(args) => crate::team::team_policy(&args),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn keygen(prefix: &Path, alg: KeyAlg, bits: Option<usize>, force: bool) -> Result<()> {
    let key_path = with_suffix(prefix, ".key");
    let pub_path = with_suffix(prefix, ".pub");
    if !force {
        for path in [&key_path, &pub_path] {
            if path.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists (use --force to replace it)",
                    path.display()
                );
            }
        }
    }
    let key = match (alg, bits) {
        (KeyAlg::Ed25519, None) => PrivateKey::generate(Algorithm::Ed25519)?,
        (KeyAlg::Ed25519, Some(_)) => bail!("--bits applies to RSA keys only (--alg rsa)"),
        (KeyAlg::Rsa, bits) => PrivateKey::generate_rsa(bits.unwrap_or(2048))?,
    };
    key.write_pem_file(&key_path, force)
        .with_context(|| format!("writing {}", key_path.display()))?;
    let public = key.public_key();
    public
        .write_pem_file(&pub_path, force)
        .with_context(|| format!("writing {}", pub_path.display()))?;
    eprintln!(
        "km-sign: wrote {} (private, mode 0600) and {}\nkm-sign: key id {} ({})",
        key_path.display(),
        pub_path.display(),
        public.key_id(),
        public.algorithm()
    );
    Ok(())
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKey> {
    let pem = read_text(path, "private key")?;
    PrivateKey::from_pem(&pem)
        .with_context(|| format!("{} is not a usable private key", path.display()))
}

fn read_public_key(path: &Path) -> Result<PublicKey> {
    let pem = read_text(path, "public key")?;
    PublicKey::from_pem(&pem)
        .with_context(|| format!("{} is not a usable public key", path.display()))
}

fn read_lib(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the library {}", path.display()))
}

/// Builds the manifest for `lib` from the command line, validating every value.
fn build_manifest(args: &ManifestArgs, key_id: &KeyId, lib: &[u8]) -> Result<Manifest> {
    check_name(&args.name)?;
    semver::Version::parse(&args.version).with_context(|| {
        format!(
            "--version {:?} is not a semantic version (like 1.2.3)",
            args.version
        )
    })?;
    let tier: Tier = args.tier.parse().map_err(|_| {
        anyhow::anyhow!(
            "--tier {:?} is not a tier (free, pro or enterprise)",
            args.tier
        )
    })?;
    let now = SystemTime::now();
    let expires_at = match &args.expires {
        None => None,
        Some(text) => {
            let when = parse_date(text).context("--expires")?;
            if when <= now {
                bail!("--expires {text} is in the past");
            }
            Some(when)
        }
    };
    let capabilities = args.grants.capabilities.clone();
    for unknown in capabilities
        .iter()
        .filter(|c| !KNOWN_CAPABILITIES.contains(&c.as_str()))
    {
        eprintln!(
            "km-sign: warning: capability {unknown:?} is not one this km knows (known: {}); it grants nothing here",
            KNOWN_CAPABILITIES.join(", ")
        );
    }
    let claims = Claims {
        target: args.target.clone(),
        abi_version: args.abi_version.clone(),
        expires_at,
        customer: args.customer.clone(),
        capabilities,
        fail_open: args.grants.fail_open,
        ..Claims::new(&args.name, &args.version, tier)
    };
    let manifest =
        Manifest::describe(&claims, key_id, lib, now).context("invalid manifest values")?;
    Ok(manifest)
}

pub(crate) fn sign(key_path: &Path, args: &ManifestArgs, lib_path: &Path) -> Result<()> {
    let key = read_private_key(key_path)?;
    let lib = read_lib(lib_path)?;
    let public = key.public_key();
    let manifest = build_manifest(args, &public.key_id(), &lib)?;
    let sig = SignatureFile::sign(&key, &manifest).context("signing the manifest")?;
    let sig_path = SignatureFile::path_for(lib_path);
    sig.write(&sig_path)
        .with_context(|| format!("writing {}", sig_path.display()))?;
    eprintln!(
        "km-sign: signed {} {} ({}) with key {} -> {}",
        manifest.name,
        manifest.version,
        manifest.tier.as_str(),
        public.key_id(),
        sig_path.display()
    );
    Ok(())
}

/// Verifies `lib` against `sig` with one trusted key.
fn verify_with(
    public: PublicKey,
    label: &str,
    lib_path: &Path,
    lib: &[u8],
    sig: &SignatureFile,
    target: &str,
    abi_version: &str,
) -> Result<Verified> {
    let mut trust = TrustStore::default();
    trust.add_builtin(label, &public.to_pem())?;
    let policy = Policy {
        now: SystemTime::now(),
        target,
        abi_version,
        allow_downgrade: true,
        seen: None,
    };
    let key_id = public.key_id();
    verify_library(lib, sig, &trust, &policy).map_err(|error| {
        let mut refused = Refused::new(lib_path, error);
        if let km_signing::Error::UntrustedKey { .. } = refused.error {
            refused.note = Some(format!("the key given ({label}) is {key_id}"));
        }
        refused.into()
    })
}

fn verify(
    public_path: &Path,
    name: Option<&str>,
    target: Option<&str>,
    abi_version: Option<&str>,
    lib_path: &Path,
) -> Result<()> {
    let public = read_public_key(public_path)?;
    let lib = read_lib(lib_path)?;
    let sig_path = SignatureFile::path_for(lib_path);
    let sig = SignatureFile::read(&sig_path).map_err(|error| match error {
        km_signing::Error::Io { .. } => anyhow::Error::new(error),
        error => Refused::new(&sig_path, error).into(),
    })?;
    let label = public_path.display().to_string();
    let verified = verify_with(
        public,
        &label,
        lib_path,
        &lib,
        &sig,
        target.unwrap_or(target_triple()),
        abi_version.unwrap_or(km_abi::ABI_VERSION),
    )?;
    let m = verified.manifest();
    if let Some(name) = name {
        if m.name != name {
            let reason = format!("the manifest signs plugin {:?}, not {name:?}", m.name);
            return Err(
                Refused::new(lib_path, km_signing::Error::MalformedManifest { reason }).into(),
            );
        }
    }
    let mut out = String::new();
    out.push_str(&format!("{}: signature OK\n", lib_path.display()));
    out.push_str(&format!(
        "  plugin    {} {} (tier {})\n",
        m.name,
        m.version,
        m.tier.as_str()
    ));
    out.push_str(&format!(
        "  target    {}\n  abi       {}\n",
        m.target, m.abi_version
    ));
    out.push_str(&format!(
        "  sha256    {}\n  size      {} bytes\n",
        m.sha256, m.size
    ));
    out.push_str(&format!("  issued    {}\n", m.issued_at));
    out.push_str(&format!(
        "  expires   {}\n",
        m.expires_at.as_deref().unwrap_or("never")
    ));
    if let Some(c) = &m.customer {
        out.push_str(&format!("  customer  {c}\n"));
    }
    out.push_str(&format!(
        "  key       {} ({})\n",
        verified.key_id(),
        sig.algorithm
    ));
    write_stdout(out.as_bytes())
}

fn print_manifest(args: &ManifestArgs, key: &KeyRef, lib_path: &Path) -> Result<()> {
    let key_id: KeyId = match (&key.key_id, &key.public) {
        (Some(id), _) => id.parse().with_context(|| format!("--key-id {id:?}"))?,
        (None, Some(path)) => read_public_key(path)?.key_id(),
        (None, None) => bail!("give --key-id or --pub"),
    };
    let lib = read_lib(lib_path)?;
    let manifest = build_manifest(args, &key_id, &lib)?;
    write_stdout(&manifest.to_bytes())
}

fn attach(
    manifest_path: &Path,
    signature_path: &Path,
    public_path: &Path,
    lib_path: &Path,
) -> Result<()> {
    let public = read_public_key(public_path)?;
    let manifest_bytes = read_small(manifest_path, "manifest")?;
    let signature = read_small(signature_path, "signature")?;
    let lib = read_lib(lib_path)?;
    let sig = SignatureFile {
        algorithm: public.algorithm(),
        key_id: public.key_id(),
        manifest_bytes,
        signature,
    };
    // The signature file must survive its own parser (size limits) before anything is written.
    let sig = SignatureFile::parse(&sig.to_bytes())
        .map_err(|error| Refused::new(signature_path, error))?;
    // Check with the manifest's own target and ABI: this machine need not be the one that loads
    // the plugin. Signature, key id, hash, size and expiry are checked for real.
    let manifest = Manifest::parse(&sig.manifest_bytes);
    let (target, abi) = match &manifest {
        Ok(m) => (m.target.clone(), m.abi_version.clone()),
        Err(_) => (target_triple().to_owned(), km_abi::ABI_VERSION.to_owned()),
    };
    let label = public_path.display().to_string();
    let verified = verify_with(public, &label, lib_path, &lib, &sig, &target, &abi)?;
    let sig_path = SignatureFile::path_for(lib_path);
    sig.write(&sig_path)
        .with_context(|| format!("writing {}", sig_path.display()))?;
    let m = verified.manifest();
    eprintln!(
        "km-sign: attached the signature of {} {} by key {} -> {}",
        m.name,
        m.version,
        verified.key_id(),
        sig_path.display()
    );
    Ok(())
}

/// Reads a manifest or signature file, refusing anything larger than a signature file may hold
/// (so a wrong path to a huge file fails fast instead of filling memory).
fn read_small(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let cap = km_signing::sigfile::MAX_SIGFILE_BYTES;
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    if bytes.len() as u64 > cap {
        bail!("the {what} {} is larger than {cap} bytes", path.display());
    }
    Ok(bytes)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
