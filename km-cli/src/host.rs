//! The services km offers each plugin (the `HostServices` object of the ABI): logging into km's
//! log, the plugin's own data directory, and HTTP to the configured Kilometers API.
//!
//! Logging goes to stderr, never stdout: stdout carries the MCP stream.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, RResult, RStr, RString};
use km_abi::{
    ErrorKind, HostBox, HostServices, HostServices_TO, HttpRequest, HttpResponse, LogLevel,
    PluginError,
};

/// The way km reaches the Kilometers API on a plugin's behalf.
pub trait ApiTransport: Send + Sync {
    /// Performs `request` against the configured API base URL.
    fn request(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError>;
}

/// How much km logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// The default: errors, warnings, information.
    Normal,
    /// `-v`: also debug lines.
    Verbose,
}

impl Verbosity {
    /// From the global `-q`/`-v` flags.
    pub fn from_flags(quiet: bool, verbose: u8) -> Self {
        if quiet {
            Verbosity::Quiet
        } else if verbose > 0 {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }

    fn shows(self, level: LogLevel) -> bool {
        match level {
            LogLevel::Error => true,
            LogLevel::Warn | LogLevel::Info => self >= Verbosity::Normal,
            LogLevel::Debug => self >= Verbosity::Verbose,
        }
    }
}

/// One plugin's host services.
#[derive(Clone)]
pub struct PluginHost {
    plugin: Arc<str>,
    data_dir: PathBuf,
    verbosity: Verbosity,
    api: Option<Arc<dyn ApiTransport>>,
}

impl PluginHost {
    /// Services for the plugin `plugin` (the name may be provisional until the plugin is created:
    /// the file name).
    pub fn new(
        plugin: &str,
        data_dir: PathBuf,
        verbosity: Verbosity,
        api: Option<Arc<dyn ApiTransport>>,
    ) -> Self {
        PluginHost {
            plugin: Arc::from(plugin),
            data_dir,
            verbosity,
            api,
        }
    }

    /// The object handed to the plugin.
    pub fn into_abi(self) -> HostBox {
        HostServices_TO::from_ptr(abi_stable::std_types::RArc::new(self), TD_Opaque)
    }
}

impl HostServices for PluginHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        if !self.verbosity.shows(level) {
            return;
        }
        let tag = match level {
            LogLevel::Error => "error",
            LogLevel::Warn => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        };
        // One write per line so that lines from several plugin threads do not interleave.
        let line = format!("[{}] {tag}: {}\n", self.plugin, message.as_str().trim_end());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn data_dir(&self) -> RString {
        RString::from(self.data_dir.to_string_lossy().into_owned())
    }

    fn http(&self, request: HttpRequest) -> RResult<HttpResponse, PluginError> {
        match &self.api {
            Some(api) => api.request(&request).into(),
            None => RErr(PluginError::new(
                ErrorKind::UNSUPPORTED,
                "no Kilometers API is configured (run `km init`)",
            )),
        }
    }
}
