//! `km-sign build-plugin`: a customer-specific build without recompiling. Stamps the customer's
//! credentials into the region the compiled plugin reserves (encrypted under a build key derived
//! from the customer secret the API holds, which the API hands only to the holder of the
//! customer's current API key; see `km_plugin_sdk::credentials`), signs the stamped copy with
//! `customer` in the manifest, and packs it.
//!
//! The customer's API key is not an input: a build keeps working when the customer rotates it.
//!
//! Output in `--out-dir` (default: the current directory): `libkm-plugin-NAME-<hash8>.so` (the
//! customer hash names the build without spelling the customer id; the platform's library
//! prefix and suffix keep it loadable by km), its `.kmsig`, and `libkm-plugin-NAME-<hash8>.kmpkg`.
//! The pristine library is only read. The credentials exist in clear only in this process's
//! memory: nothing but the encrypted region is written.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use km_abi::Tier;
use km_plugin_sdk::credentials::Credentials;
use km_signing::{customer_build_file_name, stamp_library, SignatureFile};
use ring::rand::SecureRandom as _;

use crate::args::{GrantArgs, ManifestArgs};

/// `km-sign build-plugin` arguments.
#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Plugin name (as its manifest and the plugin itself report it).
    #[arg(long = "plugin", value_name = "NAME")]
    pub(crate) plugin: String,
    /// The customer's id at the Kilometers API.
    #[arg(long, value_name = "ID")]
    pub(crate) customer: String,
    /// The customer secret, as the API holds it for this customer (`customer_token` in its
    /// records): the build key and the request key of the build are derived from it, so it must
    /// be the API's [default: 32 random bytes in hex, printed once on stderr to register with
    /// the API]. Prefer KM_BUILD_CUSTOMER_TOKEN in the environment to keep it out of process
    /// listings.
    #[arg(
        long,
        env = "KM_BUILD_CUSTOMER_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub(crate) customer_token: Option<String>,
    /// Subscription tier: free, pro or enterprise.
    #[arg(long)]
    pub(crate) tier: String,
    /// The signing key (private key PEM).
    #[arg(long, value_name = "SIGNING.key")]
    pub(crate) key: PathBuf,
    /// The API's Ed25519 public key the plugin will trust: base64 of the 32 raw bytes (as
    /// `km-api-server --gen-key` writes it), or the 32 raw bytes.
    #[arg(long, value_name = "API.pub")]
    pub(crate) api_public_key: PathBuf,
    /// Plugin version (semver).
    #[arg(long, default_value = "1.0.0")]
    pub(crate) version: String,
    /// Expiry of the signature: YYYY-MM-DD or RFC 3339.
    #[arg(long, value_name = "DATE")]
    pub(crate) expires: Option<String>,
    /// Where to write the build [default: the current directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) out_dir: PathBuf,
    #[command(flatten)]
    pub(crate) grants: GrantArgs,
    /// The pristine compiled plugin library.
    pub(crate) lib: PathBuf,
}

fn read_api_public_key(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the API public key {}", path.display()))?;
    if bytes.len() == 32 {
        return Ok(bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32);
    match key {
        Some(key) => Ok(key),
        None => bail!(
            "{} is not an Ed25519 public key (base64 of 32 bytes, or 32 raw bytes)",
            path.display()
        ),
    }
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness for the customer token"))?;
    Ok(km_durable::digest::hex(&bytes))
}

/// Runs `km-sign build-plugin`.
pub(crate) fn run(args: &BuildArgs) -> Result<()> {
    km_signing::check_name(&args.plugin)?;
    let tier: Tier = args.tier.parse().map_err(|_| {
        anyhow::anyhow!(
            "--tier {:?} is not a tier (free, pro or enterprise)",
            args.tier
        )
    })?;
    if args.customer.trim().is_empty() {
        bail!("--customer must not be empty");
    }
    let api_public_key = read_api_public_key(&args.api_public_key)?;
    let pristine = std::fs::read(&args.lib)
        .with_context(|| format!("reading the library {}", args.lib.display()))?;
    let (customer_token, generated) = match &args.customer_token {
        Some(t) => (t.clone(), false),
        None => (random_token()?, true),
    };
    let build_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let creds = Credentials {
        customer_id: args.customer.clone(),
        customer_token: customer_token.clone(),
        tier,
        build_time,
    };
    let (stamped, report) = stamp_library(&pristine, &creds, &api_public_key)
        .map_err(|e| anyhow::anyhow!("{}: cannot stamp credentials: {e}", args.lib.display()))?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let out_lib = args
        .out_dir
        .join(customer_build_file_name(&args.plugin, &args.customer));
    km_durable::write_atomic(&out_lib, &stamped, km_durable::PUBLIC)
        .with_context(|| format!("writing the customer build {}", out_lib.display()))?;
    let manifest = ManifestArgs {
        name: args.plugin.clone(),
        version: args.version.clone(),
        tier: args.tier.clone(),
        expires: args.expires.clone(),
        customer: Some(args.customer.clone()),
        target: None,
        abi_version: None,
        grants: args.grants.clone(),
    };
    crate::commands::sign(&args.key, &manifest, &out_lib)?;
    let pkg = crate::pack::pack(&out_lib, None)?;
    eprintln!(
        "km-sign: customer build of {} for customer hash {}, build id {} (region at offset {}):\n  {}\n  {}\n  {}",
        args.plugin,
        &report.customer_hash[..16],
        report.build_id,
        report.offset,
        out_lib.display(),
        SignatureFile::path_for(&out_lib).display(),
        pkg.display()
    );
    if generated {
        eprintln!(
            "km-sign: generated customer secret (register it with the API as this customer's customer_token; the build opens only once the API holds it): {customer_token}"
        );
    }
    Ok(())
}
