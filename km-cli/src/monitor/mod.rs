//! `km monitor`: the transparent MCP stdio relay.
//!
//! `km monitor -- CMD ARGS...` starts the MCP server CMD and stands between it and the MCP client
//! on stdio. Bytes are forwarded first, verbatim ([`relay`]); only then are they cut into lines
//! ([`frame`]), classified ([`jsonrpc`]), numbered and paired ([`correlate`], [`session`]) and
//! queued for the plugins ([`dispatch`]), whose calls all pass through the gateway. The child's
//! lifetime, signals and exit status are handled in [`process`]; what km says goes to stderr
//! ([`banner`]). stdout carries only the server's bytes.
//!
//! Plugins come from the loader (verified and loaded before the server starts), are initialized
//! here with their data directory and settings, and keep their subscriptions refreshed in the
//! background for the session. `km demo` ([`demo`]) runs all of it against `km-demo-server`.
//!
//! Exit status: the server's (128+N when signal N ended it); 127 when the command is not found,
//! 126 when it cannot be executed; 2 for km's own errors.

// banner, correlate and dispatch are public only so that km-bench can drive the dispatcher.
#[doc(hidden)]
pub mod banner;
#[doc(hidden)]
pub mod correlate;
pub mod demo;
#[doc(hidden)]
pub mod dispatch;
mod frame;
pub(crate) mod intercept;
mod jsonrpc;
mod output;
mod process;
mod relay;
mod session;
#[cfg(test)]
mod testing;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use km_abi::{Direction, ErrorKind, PluginConfig, StreamEventKind};

pub(crate) use self::session::now_ms;

use self::banner::{Notices, Refused};
use self::relay::{PumpEnd, PumpReport};
use self::session::Session;
use crate::api::ApiClient;
use crate::cli::MonitorArgs;
use crate::commands::Globals;
use crate::config::Config;
use crate::gateway::LoadedPlugin;
use crate::home::KmHome;
use crate::host::{ApiTransport, Verbosity};
use crate::loader::{load_plugins, LoadOptions, Refusal, SIGNATURE_SUFFIX};
use crate::subscription;

/// How long the server may run on after its stdin closed, and after TERM, unless `KM_GRACE_MS`
/// says otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How long plugins get at the end to empty their queues, and then to shut down.
const PLUGIN_DEADLINE: Duration = Duration::from_secs(2);

/// A validated `km monitor` configuration.
#[derive(Debug, Clone)]
pub(crate) struct MonitorConfig {
    /// The server command and its arguments (not empty).
    pub(crate) command: Vec<OsString>,
    /// Back-pressure instead of drops for slow plugins.
    pub(crate) lossless: bool,
    /// The grace period before TERM, and before KILL.
    pub(crate) grace: Duration,
    /// Room in each plugin's queue.
    pub(crate) queue_capacity: usize,
}

/// Runs `km monitor`.
pub fn run_command(globals: &Globals, args: MonitorArgs) -> Result<ExitCode> {
    let notices = Notices::new(globals.quiet, globals.verbose);
    let config = MonitorConfig {
        command: args.command,
        lossless: args.lossless,
        grace: grace_from_env()?,
        queue_capacity: dispatch::QUEUE_CAPACITY,
    };
    if args.no_plugins {
        return run(&config, Vec::new(), notices, None);
    }
    let settings = Config::load(&globals.home)?;
    let api: Option<Arc<dyn ApiTransport>> = match &settings.api_url {
        Some(url) => Some(Arc::new(ApiClient::new(url)?)),
        None => None,
    };
    let mut options = LoadOptions::new(
        args.plugins_dir
            .clone()
            .unwrap_or_else(|| globals.home.plugins_dir()),
        globals.home.clone(),
    );
    options.allow_downgrade = args.allow_downgrade;
    options.verbosity = Verbosity::from_flags(globals.quiet, globals.verbose);
    options.api = api;
    let report = load_plugins(&options)?;
    let refused: Vec<Refused> = report.refused.iter().map(refused).collect();
    let plugins = initialize(report.loaded, refused, globals, &settings, notices);
    // Subscriptions are checked and refreshed in the background for the whole session (a plugin
    // degrades on its own until it is authorized); dropping the handle stops the refreshers.
    let _refresher = (!plugins.is_empty())
        .then(|| subscription::start_refresher(&globals.home, &settings, plugins.clone()));
    run(&config, plugins, notices, Some(&globals.home))
}

/// A loader refusal as the banner shows it.
fn refused(refusal: &Refusal) -> Refused {
    let file = refusal
        .path
        .file_name()
        .unwrap_or(refusal.path.as_os_str())
        .to_string_lossy();
    // A refusal about a signature file is about its library: name the library.
    let file = file.strip_suffix(SIGNATURE_SUFFIX).unwrap_or(&file);
    Refused {
        file: file.to_owned(),
        check: refusal.check.to_owned(),
        reason: refusal.reason.clone(),
    }
}

/// `KM_GRACE_MS`, for tests and impatient users; [`DEFAULT_GRACE`] when unset.
fn grace_from_env() -> Result<Duration> {
    match std::env::var("KM_GRACE_MS") {
        Ok(ms) => {
            let ms: u64 = ms
                .trim()
                .parse()
                .with_context(|| format!("KM_GRACE_MS={ms:?} is not a number of milliseconds"))?;
            Ok(Duration::from_millis(ms))
        }
        Err(_) => Ok(DEFAULT_GRACE),
    }
}

/// Calls `initialize` on each plugin, prints the banner, and returns the plugins that are ready.
fn initialize(
    plugins: Vec<Arc<LoadedPlugin>>,
    mut refused: Vec<Refused>,
    globals: &Globals,
    settings: &Config,
    notices: Notices,
) -> Vec<Arc<LoadedPlugin>> {
    let mut ready = Vec::with_capacity(plugins.len());
    for plugin in plugins {
        let data_dir = globals.home.plugin_data_dir(plugin.name());
        let result = KmHome::ensure_private_dir(&data_dir)
            .map_err(|e| format!("{e:#}"))
            .and_then(|()| {
                let config = PluginConfig {
                    data_dir: data_dir.to_string_lossy().into_owned().into(),
                    api_url: settings.api_url.clone().unwrap_or_default().into(),
                    settings_json: settings.plugin_settings_json(plugin.name()).into(),
                    host_version: env!("CARGO_PKG_VERSION").into(),
                    verbose: globals.verbose > 0,
                };
                plugin
                    .initialize(&config)
                    .map_err(|failure| failure.error.to_string())
            });
        match result {
            Ok(()) => ready.push(plugin),
            Err(reason) => refused.push(Refused {
                file: plugin.name().to_owned(),
                check: "initialize".into(),
                reason: format!("initialize failed: {reason}"),
            }),
        }
    }
    notices.info(&banner::banner(&ready, &refused, notices.verbose()));
    ready
}

/// Runs the session: starts the server, relays until it ends, and returns km's exit code. With
/// `home`, what each plugin handled and missed is recorded for `km plugin-status`.
pub(crate) fn run(
    config: &MonitorConfig,
    plugins: Vec<Arc<LoadedPlugin>>,
    notices: Notices,
    home: Option<&KmHome>,
) -> Result<ExitCode> {
    let (session, workers) = if plugins.is_empty() {
        (None, None)
    } else {
        let (dispatcher, workers) =
            dispatch::start(plugins, config.queue_capacity, config.lossless, notices);
        (Some(Session::new(dispatcher)), Some(workers))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(relay_session(config, session.clone(), notices));
    // A pump may still be blocked reading a stdin that never closes; it is left behind.
    runtime.shutdown_background();
    let (code, status) = match outcome {
        Ok(Outcome::Exited(status)) => (process::exit_code(status), Some(status)),
        Ok(Outcome::NotStarted(error)) => {
            notices.error(&error.to_string());
            if let Some(session) = &session {
                session.error(ErrorKind::IO, "spawn", &error.to_string());
            }
            (error.exit_code(), None)
        }
        Err(e) => {
            notices.error(&format!("{e:#}"));
            if let Some(session) = &session {
                session.error(ErrorKind::IO, "relay", &format!("{e:#}"));
            }
            (crate::exit::ERROR, None)
        }
    };
    if let (Some(session), Some(workers)) = (session, workers) {
        let counts = session.finish_pairing();
        let mut data = serde_json::Map::new();
        use std::os::unix::process::ExitStatusExt;
        data.insert("exit_code".into(), code.into());
        data.insert("signal".into(), status.and_then(|s| s.signal()).into());
        data.insert(
            "messages".into(),
            serde_json::json!({
                "client_to_server": counts.client_to_server,
                "server_to_client": counts.server_to_client,
                "total": counts.client_to_server + counts.server_to_client,
            }),
        );
        workers.set_end(dispatch::EndOfStream {
            data,
            timestamp_ms: session::now_ms(),
        });
        session.close();
        let totals = workers.finish(PLUGIN_DEADLINE, PLUGIN_DEADLINE);
        if let Some(home) = home {
            record_totals(home, &totals, notices);
        }
    }
    Ok(ExitCode::from(code))
}

/// Saves each plugin's counts of this session; a failure is reported, never fatal.
fn record_totals(home: &KmHome, totals: &[dispatch::LaneTotals], notices: Notices) {
    let ended_at = session::now_ms() / 1000;
    for lane in totals {
        let stats = subscription::SessionStats {
            plugin: lane.plugin.clone(),
            handled: lane.handled,
            dropped: lane.dropped,
            ended_at,
        };
        if let Err(e) = subscription::save_session_stats(home, &stats) {
            notices.warn(&format!(
                "cannot record the session of plugin {}: {e:#}",
                lane.plugin
            ));
        }
    }
}

enum Outcome {
    Exited(std::process::ExitStatus),
    NotStarted(process::SpawnError),
}

async fn relay_session(
    config: &MonitorConfig,
    session: Option<Arc<Session>>,
    notices: Notices,
) -> Result<Outcome> {
    let stdin = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("opening stdin")?,
    );
    let stdout = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("opening stdout")?,
    );
    let spawned = match process::spawn(&config.command) {
        Ok(spawned) => spawned,
        Err(error) => return Ok(Outcome::NotStarted(error)),
    };
    let process::Spawned {
        mut child,
        pid,
        stdin: child_stdin,
        stdout: child_stdout,
    } = spawned;
    notices.detail(&format!(
        "started {} (pid {})",
        describe(&config.command),
        pid.as_raw_nonzero()
    ));
    if let Some(session) = &session {
        let command: Vec<String> = config
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        session.event(
            StreamEventKind::START,
            serde_json::json!({ "command": command, "pid": pid.as_raw_nonzero().get() }),
        );
    }
    if let Some(session) = &session {
        // Releases held responses when both pumps are idle; ends with the runtime.
        let session = session.clone();
        tokio::spawn(async move { session.expire_holds().await });
    }
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let pumps = [
        (Direction::Request, stdin, child_stdin, "km-relay-c2s"),
        (Direction::Response, child_stdout, stdout, "km-relay-s2c"),
    ];
    for (direction, input, output, name) in pumps {
        let tx = tx.clone();
        let session = session.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let report = relay::pump(direction, input, output, session);
                let _ = tx.send(report);
            })
            .context("starting a relay thread")?;
    }
    drop(tx);
    let on_report = |report: &PumpReport| report_pump(report, session.as_deref(), notices);
    let status = process::supervise(
        &mut child,
        pid,
        &mut reports,
        config.grace,
        notices,
        on_report,
    )
    .await
    .context("waiting for the server")?;
    notices.detail(&format!("the server exited: {status}"));
    Ok(Outcome::Exited(status))
}

fn report_pump(report: &PumpReport, session: Option<&Session>, notices: Notices) {
    let side = match report.direction {
        Direction::Request => "client to server",
        Direction::Response => "server to client",
    };
    let failure = match &report.end {
        PumpEnd::Eof => None,
        PumpEnd::OutputClosed => {
            notices.detail(&format!(
                "{side}: the reader closed its end after {} bytes",
                report.bytes
            ));
            None
        }
        PumpEnd::ReadFailed(e) => Some(format!("reading: {e}")),
        PumpEnd::WriteFailed(e) => Some(format!("writing: {e}")),
    };
    match failure {
        Some(error) => {
            notices.error(&format!("relay {side}: {error}"));
            if let Some(session) = session {
                session.error(ErrorKind::IO, &format!("relay {side}"), &error);
            }
        }
        None => notices.detail(&format!("{side}: {} bytes relayed", report.bytes)),
    }
}

fn describe(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
