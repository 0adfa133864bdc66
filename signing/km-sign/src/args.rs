//! The command line of `km-sign` (clap derive). Only shapes here; values are validated when the
//! commands turn them into library types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Sign km plugin libraries and verify their signatures.
///
/// Exit codes: 0 ok, 1 verification failed, 2 usage or I/O error.
#[derive(Debug, Parser)]
#[command(name = "km-sign", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a signing key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = KeyAlg::Ed25519)]
        alg: KeyAlg,
        /// RSA modulus size (2048, 3072 or 4096; RSA only).
        #[arg(long)]
        bits: Option<usize>,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign LIB with a private key, writing LIB.kmsig.
    Sign {
        /// Private key PEM (km-sign keygen, or openssl genpkey/genrsa).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[command(flatten)]
        manifest: ManifestArgs,
        /// The library to sign.
        lib: PathBuf,
    },
    /// Check LIB.kmsig against one public key and print the signed manifest.
    Verify {
        /// Public key PEM.
        #[arg(long = "pub", value_name = "KEY.pub")]
        public: PathBuf,
        /// Also require this plugin name.
        #[arg(long)]
        name: Option<String>,
        /// The target triple required [default: the one km-sign was built for].
        #[arg(long)]
        target: Option<String>,
        /// The plugin ABI version of the km that will load it [default: this build's].
        #[arg(long)]
        abi_version: Option<String>,
        /// The library.
        lib: PathBuf,
    },
    /// Print the exact manifest bytes to sign for LIB (for signing with openssl or an HSM).
    Manifest {
        #[command(flatten)]
        manifest: ManifestArgs,
        #[command(flatten)]
        key: KeyRef,
        /// The library.
        lib: PathBuf,
    },
    /// Check a detached signature of a manifest and write LIB.kmsig.
    Attach {
        /// The manifest bytes that were signed (from `km-sign manifest`).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The raw signature (openssl dgst -sha256 -sign, or pkeyutl -sign -rawin for Ed25519).
        #[arg(long, value_name = "FILE")]
        signature: PathBuf,
        /// The public key of the signer.
        #[arg(long = "pub", value_name = "KEY.pub")]
        public: PathBuf,
        /// The library.
        lib: PathBuf,
    },
    /// Pack a signed LIB, LIB.kmsig and a readable manifest.json into a .kmpkg.
    Pack {
        /// The package to write [default: LIB without its suffix, plus .kmpkg].
        #[arg(long, value_name = "PKG")]
        out: Option<PathBuf>,
        /// The signed library.
        lib: PathBuf,
    },
    /// Stamp a customer's credentials into LIB, sign the stamped copy, and pack it.
    BuildPlugin(crate::build::BuildArgs),
    /// Sign a team's policy with its admin key: one bundle per section of POLICY.toml (each
    /// plugin it governs, and the roster), for the Kilometers API to serve to the members.
    TeamPolicy(crate::team::TeamPolicyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KeyAlg {
    /// Ed25519 (default).
    Ed25519,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rsa,
}

/// The manifest fields given on the command line.
#[derive(Debug, Args)]
pub(crate) struct ManifestArgs {
    /// Plugin name: 1 to 64 of a-z, 0-9 and -, not starting with -.
    #[arg(long)]
    pub(crate) name: String,
    /// Plugin version (semver).
    #[arg(long)]
    pub(crate) version: String,
    /// Subscription tier: free, pro or enterprise.
    #[arg(long)]
    pub(crate) tier: String,
    /// Expiry: YYYY-MM-DD (00:00 UTC) or RFC 3339 (stored in UTC).
    #[arg(long, value_name = "DATE")]
    pub(crate) expires: Option<String>,
    /// Customer id of a customer-specific build.
    #[arg(long, value_name = "ID")]
    pub(crate) customer: Option<String>,
    /// Target triple of the library [default: the one km-sign was built for].
    #[arg(long, value_name = "TRIPLE")]
    pub(crate) target: Option<String>,
    /// Plugin ABI version the library was built against [default: this build's km-abi].
    #[arg(long, value_name = "V")]
    pub(crate) abi_version: Option<String>,
    #[command(flatten)]
    pub(crate) grants: GrantArgs,
}

/// What a manifest grants beyond observing (a manifest that grants anything is a v2 manifest,
/// which a km without plugin ABI 1.1 refuses).
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct GrantArgs {
    /// Grant a capability (repeatable): `intercept` lets the plugin pass, replace or block lines
    /// before they are forwarded.
    #[arg(long = "capability", value_name = "NAME")]
    pub(crate) capabilities: Vec<String>,
    /// When the plugin fails while intercepting, let its lines pass instead of blocking them.
    #[arg(long)]
    pub(crate) fail_open: bool,
}

/// Which key will sign: its id, or its public key file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct KeyRef {
    /// Id of the signing key.
    #[arg(long, value_name = "ID")]
    pub(crate) key_id: Option<String>,
    /// Public key of the signing key (its id goes into the manifest).
    #[arg(long = "pub", value_name = "KEY.pub")]
    pub(crate) public: Option<PathBuf>,
}
