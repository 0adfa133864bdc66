//! The one gateway into plugin code. Every call km makes into a loaded plugin passes through
//! [`LoadedPlugin`]: it maps the ABI's `RResult` to km's [`PluginFailure`], and it is where
//! containment starts (a panic arrives here as an error value, because the SDK catches it at the
//! boundary; a hang is contained by the dispatcher, which never calls a plugin from the relay).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use abi_stable::std_types::{RStr, RString};
use km_abi::{
    AuthResponse, CommandOutput, ErrorKind, InterceptContext, Interest, Message, PluginBox,
    PluginConfig, PluginError, StreamEvent, Tier, Verdict,
};

/// Who signed a loaded plugin, as the verified manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signing key's id.
    pub key_id: String,
    /// The key's label in the trust store (may be empty).
    pub label: String,
}

/// A verified, loaded plugin. Cheap to share (`Arc`) between the dispatcher and the refresher.
pub struct LoadedPlugin {
    name: String,
    version: String,
    tier: Tier,
    path: PathBuf,
    sha256: String,
    signer: Signer,
    grants: Grants,
    object: PluginBox,
    /// Set when a call panicked: km calls it no more (the dispatcher and the refresher check).
    disabled: AtomicBool,
    /// Whether the session's first authentication is still to come; see
    /// [`LoadedPlugin::wait_for_first_authentication`].
    first_auth: (Mutex<FirstAuth>, Condvar),
}

/// Where a plugin's first authentication of the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstAuth {
    /// Nobody will authenticate it (no refresher: `km plugin`, the bench, tests).
    NotExpected,
    /// A refresher was started for it and has not had its first answer yet.
    Pending,
    /// The first answer came (authorized or not), or the refresher gave up.
    Settled,
}

/// What a plugin's signed manifest grants beyond observing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// It may intercept lines (the `intercept` capability).
    pub intercept: bool,
    /// When it fails while intercepting, its lines pass instead of being blocked.
    pub fail_open: bool,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("tier", &self.tier)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A call into a plugin that failed: which plugin, which entry point, what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: String,
    /// The entry point (`handle_message`, ...).
    pub call: &'static str,
    /// The error value the plugin (or the SDK's panic guard) returned.
    pub error: PluginError,
}

impl PluginFailure {
    /// Whether the plugin panicked (km then disables it for the rest of the session).
    pub fn is_panic(&self) -> bool {
        self.error.kind == ErrorKind::PANICKED
    }
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin {} failed in {}: {}",
            self.plugin, self.call, self.error
        )
    }
}

impl std::error::Error for PluginFailure {}

impl LoadedPlugin {
    /// Wraps a plugin object whose name and version the loader has checked against its manifest.
    pub(crate) fn new(
        object: PluginBox,
        path: &Path,
        sha256: String,
        signer: Signer,
        grants: Grants,
    ) -> Self {
        let name = object.name().into_string();
        let version = object.version().into_string();
        let tier = object.required_tier();
        LoadedPlugin {
            name,
            version,
            tier,
            path: path.to_path_buf(),
            sha256,
            signer,
            grants,
            object,
            disabled: AtomicBool::new(false),
            first_auth: (Mutex::new(FirstAuth::NotExpected), Condvar::new()),
        }
    }

    /// Says that a refresher is about to authenticate the plugin (before it is started, so
    /// that the end of a session never misses it).
    pub fn expect_first_authentication(&self) {
        let mut state = self
            .first_auth
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *state == FirstAuth::NotExpected {
            *state = FirstAuth::Pending;
        }
    }

    /// Says that the first authentication answered (or will not happen after all).
    pub fn first_authentication_settled(&self) {
        let (lock, cv) = &self.first_auth;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = FirstAuth::Settled;
        cv.notify_all();
    }

    /// Waits until the first authentication the refresher makes has answered, at most until
    /// `deadline`; `false` when it is still pending then. Premium plugins hold what they see
    /// before that answer (an audit trail cannot tell yet whether it may record), so a session
    /// shorter than the authentication must not end them before it: what they held would be
    /// lost to a race with the API's answer.
    pub fn wait_for_first_authentication(&self, deadline: Instant) -> bool {
        let (lock, cv) = &self.first_auth;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while *state == FirstAuth::Pending {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = cv
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Whether the plugin panicked in a call: km disables it for the rest of the process.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Disables the plugin (also done by any call that panics).
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
    }

    /// What its signed manifest grants.
    pub fn grants(&self) -> Grants {
        self.grants
    }

    /// Whether it fails open when intercepting (its manifest says so).
    pub fn fail_open(&self) -> bool {
        self.grants.fail_open
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The tier the plugin needs for its full features.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The path the library was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SHA-256 of the bytes that were verified and loaded.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Who signed it.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    fn wrap<T>(
        &self,
        call: &'static str,
        result: Result<T, PluginError>,
    ) -> Result<T, PluginFailure> {
        result.map_err(|error| {
            let failure = PluginFailure {
                plugin: self.name.clone(),
                call,
                error,
            };
            if failure.is_panic() {
                self.disable();
            }
            failure
        })
    }

    /// `initialize`.
    pub fn initialize(&self, config: &PluginConfig) -> Result<(), PluginFailure> {
        self.wrap("initialize", self.object.initialize(config).into_result())
    }

    /// `authenticate`.
    pub fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginFailure> {
        self.wrap(
            "authenticate",
            self.object
                .authenticate(RStr::from_str(api_key))
                .into_result(),
        )
    }

    /// `handle_message`.
    pub fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginFailure> {
        self.wrap(
            "handle_message",
            self.object.handle_message(message).into_result(),
        )
    }

    /// `handle_error`.
    pub fn handle_error(&self, error: &PluginError) -> Result<(), PluginFailure> {
        self.wrap(
            "handle_error",
            self.object.handle_error(error).into_result(),
        )
    }

    /// `handle_stream_event`.
    pub fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginFailure> {
        self.wrap(
            "handle_stream_event",
            self.object.handle_stream_event(event).into_result(),
        )
    }

    /// `shutdown`.
    pub fn shutdown(&self) -> Result<(), PluginFailure> {
        self.wrap("shutdown", self.object.shutdown().into_result())
    }

    /// `interest` (ABI 1.1; a 1.0 plugin answers as an observer), as a plain value.
    pub fn interest(&self) -> Interest {
        self.object.interest().get()
    }

    /// `begin_session` (ABI 1.1), with the session's description as JSON.
    pub fn begin_session(&self, info: &str) -> Result<(), PluginFailure> {
        self.wrap(
            "begin_session",
            self.object
                .begin_session(RStr::from_str(info))
                .into_result(),
        )
    }

    /// `intercept` (ABI 1.1).
    pub fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginFailure> {
        self.wrap(
            "intercept",
            self.object.intercept(message, context).into_result(),
        )
    }

    /// `command_help` (ABI 1.1): `None` when the plugin has no commands.
    pub fn command_help(&self) -> Option<String> {
        let help = self.object.command_help().into_string();
        (!help.trim().is_empty()).then_some(help)
    }

    /// `run_command` (ABI 1.1).
    pub fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginFailure> {
        let args: Vec<RString> = args.iter().map(|a| RString::from(a.as_str())).collect();
        self.wrap(
            "run_command",
            self.object
                .run_command(args.as_slice().into())
                .into_result(),
        )
    }
}
