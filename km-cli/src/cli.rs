//! The command line, as clap sees it. Nothing outside `commands` looks at these types: each
//! command turns them into a validated configuration before work starts.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The end of `km --help`: where to start, and what the exit codes mean.
const AFTER_HELP: &str = "\
Start here:
  km setup     sign and install the bundled free plugins (a local key, trusted for them only)
  km wrap      put km in front of your MCP clients' stdio servers (--dry-run shows the diff)
  km doctor    check KM_HOME, trust, plugins, the API key and the clients, with a fix for each

Undo: km unwrap restores the client files; km uninstall-plugin NAME removes a plugin.
KM_HOME defaults to ~/.km, found from HOME alone (MCP clients pass servers few variables).

Exit codes: 0 success; 1 a check or verification said no; 2 a usage, I/O or other error.
km monitor exits with its server's status (128+N when a signal N killed it).";

/// km, the Kilometers CLI: watch MCP traffic through signed plugins.
#[derive(Debug, Parser)]
#[command(
    name = "km",
    version,
    about,
    propagate_version = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// km's home directory (default: ~/.km).
    #[arg(long, global = true, env = "KM_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an MCP server and relay its stdio, handing every message to the plugins.
    Monitor(MonitorArgs),
    /// Run a scripted MCP session through `km monitor` with the bundled plugins, signed with a
    /// fresh key in a temporary KM_HOME. Needs no network.
    Demo(DemoArgs),
    /// Verify plugin libraries by hand: signature, hash, trust, expiry, target, rollback.
    VerifyPlugin(VerifyPluginArgs),
    /// List the plugins in the plugin directory and whether each verifies.
    ListPlugins(ListPluginsArgs),
    /// Manage the keys trusted to sign plugins.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Set up km: the Kilometers API key and endpoint, written to KM_HOME/config.toml (mode 0600).
    Init(InitArgs),
    /// Show km's configuration (the API key masked).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show each plugin's subscription: required and authorized tier, features, token expiry,
    /// last refresh and its outcome, and why a plugin is degraded.
    PluginStatus(PluginStatusArgs),
    /// Re-authenticate plugins with the Kilometers API now.
    PluginRefresh(PluginRefreshArgs),
    /// Install a plugin package (.kmpkg) from a file, an http(s) URL, or by name from the API:
    /// verified before anything is installed, installed atomically.
    InstallPlugin(InstallPluginArgs),
    /// Remove a plugin: its library, signature, data directory and auth record.
    UninstallPlugin(UninstallPluginArgs),
    /// Ask the API for newer versions of installed plugins and install them (verified first).
    UpdatePlugin(UpdatePluginArgs),
    /// Put `km monitor --` in front of every stdio MCP server of the MCP clients on this
    /// machine (Claude Desktop, Claude Code, Cursor, VS Code, Windsurf), keeping their
    /// arguments, environment, comments and formatting; a backup is kept for `km unwrap`.
    Wrap(WrapArgs),
    /// Undo `km wrap`: a file nobody edited since is restored exactly; otherwise only km's own
    /// entries are unwrapped.
    Unwrap(WrapArgs),
    /// Make km ready on this machine: sign the bundled free plugins found beside this km with a
    /// local key (made once, trusted only for their names) and install them, verified. Safe to
    /// run again: it changes only what is out of date.
    Setup(SetupArgs),
    /// Check km's installation, a line each with the fix for what fails: KM_HOME's permissions,
    /// trusted keys, each installed plugin, executable memfds, the API endpoint and key, and
    /// which MCP client configurations run their servers through km.
    Doctor(DoctorArgs),
    /// Print a completion script for a shell: `km completions bash > /etc/bash_completion.d/km`,
    /// `km completions zsh > ~/.zfunc/_km`, `km completions fish > ~/.config/fish/completions/km.fish`.
    Completions(CompletionsArgs),
    /// Run a plugin's own command (reports, approvals, checks): `km plugin NAME ARGS...`;
    /// `km plugin NAME --help` shows what it offers; `km plugin` lists plugins with commands.
    /// The plugin is verified and loaded exactly as `km monitor` does.
    Plugin(PluginArgs),
    /// Show km's own figures over the last days: plugin loads and refusals by check,
    /// authentication outcomes and latency, token cache hits, messages each plugin handled and
    /// dropped, verdicts, relayed bytes (kept in KM_HOME/state; no collector needed).
    Stats(StatsArgs),
    /// Show the installations that hold a seat of your subscription, this one marked; `km seats
    /// release DEVICE` frees one for another machine (authenticated with the configured API key).
    Seats(SeatsArgs),
}

/// `km seats`.
#[derive(Debug, Args)]
pub struct SeatsArgs {
    #[command(subcommand)]
    pub command: Option<SeatsCommand>,

    /// Print JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `km seats` subcommands.
#[derive(Debug, Subcommand)]
pub enum SeatsCommand {
    /// Free the seat a device holds (a device id from `km seats`), so that another installation
    /// can take it at its next authentication.
    Release {
        /// The device id.
        device: String,
    },
}

/// `km stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// How many days back, today included.
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub days: u32,
}

/// `km setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The directory holding the bundled plugin libraries [default: the directory of this km].
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
}

/// `km doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,

    /// Do not contact the API endpoint.
    #[arg(long)]
    pub offline: bool,
}

/// `km completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `km wrap` and `km unwrap`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    /// A client configuration file (repeatable) instead of the known locations.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,

    /// The client the --config files belong to: claude-desktop, claude-code, cursor, vscode,
    /// windsurf [default: told from the file's name].
    #[arg(long, value_name = "CLIENT")]
    pub client: Option<String>,

    /// Show the change as a diff, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `km plugin`. km's own help flag stops at NAME: `km plugin NAME --help` is the plugin's.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct PluginArgs {
    /// Print help (of `km plugin`; with NAME, of the plugin).
    #[arg(short = 'h', long = "help")]
    pub help: bool,

    /// Load plugins from DIR instead of KM_HOME/plugins.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,

    /// The plugin (omit to list the installed plugins that have commands).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,

    /// The command and its arguments, handed to the plugin as they are.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// `km install-plugin`.
#[derive(Debug, Args)]
pub struct InstallPluginArgs {
    /// A .kmpkg file, an http(s) URL, or a plugin name (downloaded from the API).
    #[arg(value_name = "PKG|URL|NAME")]
    pub source: String,

    /// The customer token to send when downloading a customer build by name.
    #[arg(
        long,
        env = "KM_CUSTOMER_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub customer_token: Option<String>,

    /// Install even if older than a version already seen.
    #[arg(long)]
    pub allow_downgrade: bool,
}

/// `km uninstall-plugin`.
#[derive(Debug, Args)]
pub struct UninstallPluginArgs {
    /// The plugin's name (or its library's file name).
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `km update-plugin`.
#[derive(Debug, Args)]
pub struct UpdatePluginArgs {
    /// The plugin to update.
    #[arg(value_name = "NAME", conflicts_with = "all")]
    pub name: Option<String>,

    /// Update every installed plugin.
    #[arg(long)]
    pub all: bool,
}

/// `km init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The Kilometers API key (default: KM_API_KEY, else asked on the terminal).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// The Kilometers API endpoint (default: KM_API_URL, else asked on the terminal, else the
    /// public API).
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
}

/// `km config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration in force (file and environment), the API key masked.
    Show {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `km plugin-status`.
#[derive(Debug, Args)]
pub struct PluginStatusArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `km plugin-refresh`.
#[derive(Debug, Args)]
pub struct PluginRefreshArgs {
    /// Only this plugin (default: all).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,

    /// Load plugins from DIR instead of KM_HOME/plugins.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,

    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `km monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Accepted for compatibility with the original syntax (`km monitor --server -- CMD`).
    #[arg(long)]
    pub server: bool,

    /// Load plugins from DIR instead of KM_HOME/plugins.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,

    /// Load no plugins: a pure relay.
    #[arg(long, conflicts_with = "plugins_dir")]
    pub no_plugins: bool,

    /// Never drop a message for a slow plugin: apply back-pressure to the relay instead
    /// (for audit use).
    #[arg(long)]
    pub lossless: bool,

    /// Load a plugin even if it is older than a version already seen.
    #[arg(long)]
    pub allow_downgrade: bool,

    /// The MCP server command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `km demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the plugin libraries are (default: beside the km binary).
    #[arg(long, value_name = "DIR")]
    pub lib_dir: Option<PathBuf>,
}

/// `km verify-plugin`.
#[derive(Debug, Args)]
pub struct VerifyPluginArgs {
    /// Print one JSON object per plugin (a JSON array) on stdout.
    #[arg(long)]
    pub json: bool,

    /// Do not treat an older version than one already seen as a failure.
    #[arg(long)]
    pub allow_downgrade: bool,

    /// After verifying, also load each plugin (from the verified bytes) and create it: checks
    /// the ABI and that the plugin reports the name and version its manifest signed.
    #[arg(long)]
    pub load: bool,

    /// Plugin libraries (their signatures are read from PATH.kmsig).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// `km list-plugins`.
#[derive(Debug, Args)]
pub struct ListPluginsArgs {
    /// List DIR instead of KM_HOME/plugins.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,

    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `km trust ...`.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (PEM, as written by `km-sign keygen` or `openssl pkey -pubout`).
    Add {
        /// The public key file.
        key: PathBuf,
        /// A label to show with the key.
        #[arg(long)]
        label: Option<String>,
        /// Only plugins with these names may be signed by this key (comma-separated).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
    },
    /// List trusted keys (built-in and added) and revocations.
    List {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting an added key.
    Remove {
        /// The key id (as `km trust list` shows it).
        key_id: String,
    },
    /// Revoke a key id or a library's SHA-256: nothing it signed, or nothing with that hash,
    /// loads again, even if the key is built in.
    Revoke {
        /// A key id or a 64-digit SHA-256.
        what: String,
        /// Why (shown by `km trust list` and in refusals).
        #[arg(long)]
        reason: Option<String>,
    },
}
