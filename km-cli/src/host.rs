//! The services km offers each plugin (the `HostServices` object of the ABI): logging into km's
//! log, the plugin's own data directory, HTTP to the configured Kilometers API (every request
//! signed with this installation's device identity, [`crate::device`]), and from ABI 1.1
//! events to the other plugins ([`crate::events`]), standard input for plugin commands, and the
//! policy files under `KM_HOME/policies/`, read and written by km with the checks of every file
//! that decides trust.
//!
//! Logging goes to stderr, never stdout: stdout carries the MCP stream.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RStr, RString, RVec};
use km_abi::{
    ErrorKind, HostBox, HostServices, HostServices_TO, HttpRequest, HttpResponse, LogLevel,
    PluginError,
};

use crate::device::DeviceIdentity;
use crate::events::EventBus;

/// The largest policy file km reads.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The largest standard input a plugin command is given.
pub const MAX_STDIN_BYTES: u64 = 256 * 1024 * 1024;

/// What a plugin is told at `initialize`: its data directory, the API, its settings from
/// `config.toml`, km's version.
pub fn plugin_config(
    data_dir: &Path,
    settings: &crate::config::Config,
    plugin: &str,
    verbose: u8,
) -> km_abi::PluginConfig {
    km_abi::PluginConfig {
        data_dir: data_dir.to_string_lossy().into_owned().into(),
        api_url: settings.api_url.clone().unwrap_or_default().into(),
        settings_json: settings.plugin_settings_json(plugin).into(),
        host_version: env!("CARGO_PKG_VERSION").into(),
        verbose: verbose > 0,
    }
}

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
    /// Signs the plugin's requests to the API (None: sent as the plugin made them).
    device: Option<Arc<DeviceIdentity>>,
    events: Option<Arc<EventBus>>,
    /// `KM_HOME/policies`.
    policies: Option<PathBuf>,
    /// Standard input, for a plugin command.
    stdin: Option<Arc<StdinOnce>>,
}

/// Standard input, read whole the first time a plugin asks for it.
#[derive(Debug, Default)]
pub struct StdinOnce {
    taken: Mutex<bool>,
}

impl StdinOnce {
    /// Standard input as a plugin command's input.
    pub fn new() -> Arc<Self> {
        Arc::new(StdinOnce::default())
    }

    fn take(&self) -> Result<Vec<u8>, PluginError> {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        if std::mem::replace(&mut *taken, true) {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_STDIN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| PluginError::new(ErrorKind::IO, format!("reading standard input: {e}")))?;
        if bytes.len() as u64 > MAX_STDIN_BYTES {
            return Err(PluginError::new(
                ErrorKind::FAILED,
                format!("standard input is larger than {MAX_STDIN_BYTES} bytes"),
            ));
        }
        Ok(bytes)
    }
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
            device: None,
            events: None,
            policies: None,
            stdin: None,
        }
    }

    /// Signs the plugin's requests to the API with `device` (the installation's identity, which
    /// the API counts against the customer's seats).
    pub fn with_device(mut self, device: Arc<DeviceIdentity>) -> Self {
        self.device = Some(device);
        self
    }

    /// Lets the plugin emit events on `events`.
    pub fn with_events(mut self, events: Arc<EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    /// Lets the plugin read and write the policy files under `dir` (`KM_HOME/policies`).
    pub fn with_policies(mut self, dir: PathBuf) -> Self {
        self.policies = Some(dir);
        self
    }

    /// Lets the plugin read `stdin` (a plugin command).
    pub fn with_stdin(mut self, stdin: Arc<StdinOnce>) -> Self {
        self.stdin = Some(stdin);
        self
    }

    fn policy_path(&self, name: &str) -> Result<(&Path, PathBuf), PluginError> {
        let dir = self.policies.as_deref().ok_or_else(|| {
            PluginError::new(
                ErrorKind::UNSUPPORTED,
                "no policy directory in this context",
            )
        })?;
        Ok((dir, dir.join(check_policy_name(name)?)))
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

    fn http(&self, mut request: HttpRequest) -> RResult<HttpResponse, PluginError> {
        match &self.api {
            Some(api) => {
                crate::telemetry::http_request();
                if let Some(device) = &self.device {
                    if let Err(e) = device.sign(&mut request, crate::subscription::now_unix()) {
                        return RErr(e);
                    }
                }
                api.request(&request).into()
            }
            None => RErr(PluginError::new(
                ErrorKind::UNSUPPORTED,
                "no Kilometers API is configured (run `km init`)",
            )),
        }
    }

    fn emit(&self, kind: RStr<'_>, data: RStr<'_>) -> RResult<(), PluginError> {
        match &self.events {
            Some(bus) => bus.emit(&self.plugin, kind.as_str(), data.as_str()).into(),
            None => RErr(PluginError::new(
                ErrorKind::UNSUPPORTED,
                "events are not delivered in this context",
            )),
        }
    }

    fn read_stdin(&self) -> RResult<RVec<u8>, PluginError> {
        match &self.stdin {
            Some(stdin) => stdin.take().map(RVec::from).into(),
            None => RErr(PluginError::new(
                ErrorKind::UNSUPPORTED,
                "standard input is the MCP stream during km monitor; only plugin commands read it",
            )),
        }
    }

    fn read_policy(&self, name: RStr<'_>) -> RResult<ROption<RString>, PluginError> {
        let (dir, path) = match self.policy_path(name.as_str()) {
            Ok(paths) => paths,
            Err(e) => return RErr(e),
        };
        match crate::policy_files::read(dir, &path, MAX_POLICY_BYTES) {
            Ok(Some(text)) => ROk(ROption::RSome(RString::from(text))),
            Ok(None) => ROk(ROption::RNone),
            Err(e) => RErr(PluginError::new(ErrorKind::DENIED, format!("{e:#}"))),
        }
    }

    fn write_policy(&self, name: RStr<'_>, text: RStr<'_>) -> RResult<(), PluginError> {
        let (dir, path) = match self.policy_path(name.as_str()) {
            Ok(paths) => paths,
            Err(e) => return RErr(e),
        };
        if text.len() as u64 > MAX_POLICY_BYTES {
            return RErr(PluginError::new(
                ErrorKind::FAILED,
                format!("a policy is at most {MAX_POLICY_BYTES} bytes"),
            ));
        }
        match crate::policy_files::write(dir, &path, text.as_str()) {
            Ok(()) => ROk(()),
            Err(e) => RErr(PluginError::new(ErrorKind::IO, format!("{e:#}"))),
        }
    }
}

/// A policy file's name as a plugin gives it: one or two path segments (`NAME.toml`,
/// `team/NAME.toml`) of `[a-z0-9._-]`, none of them `.` or `..` or hidden.
fn check_policy_name(name: &str) -> Result<&Path, PluginError> {
    let segments: Vec<&str> = name.split('/').collect();
    let ok = (1..=2).contains(&segments.len())
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(Path::new(name))
    } else {
        Err(PluginError::new(
            ErrorKind::DENIED,
            format!(
                "policy name {name:?} must be NAME or DIR/NAME of a-z, 0-9, '.', '_', '-' under KM_HOME/policies"
            ),
        ))
    }
}
