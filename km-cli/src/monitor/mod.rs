//! `km monitor`: the transparent MCP stdio relay.
//!
//! `km monitor -- CMD ARGS...` starts the MCP server CMD and stands between it and the MCP client
//! on stdio. Bytes are forwarded first, verbatim ([`relay`]); only then are they cut into lines
//! ([`frame`]), classified ([`jsonrpc`]), numbered and paired ([`correlate`], [`session`]) and
//! queued for the plugins ([`dispatch`]), whose calls all pass through the gateway. The child's
//! lifetime, signals and exit status are handled in [`process`]; what km says goes to stderr
//! ([`banner`]). stdout carries only the server's bytes.
//!
//! Plugins come from the loader (verified and loaded before the server starts; the command in
//! `commands::monitor` does that), are prepared here (initialized with their data directory and
//! settings, asked what they want, told the session began), and keep their subscriptions
//! refreshed in the background for the session.
//!
//! Exit status: the server's (128+N when signal N ended it); 127 when the command is not found,
//! 126 when it cannot be executed; 2 for km's own errors.

// banner, correlate and dispatch are public only so that km-bench can drive the dispatcher.
#[doc(hidden)]
pub mod banner;
#[doc(hidden)]
pub mod correlate;
#[doc(hidden)]
pub mod dispatch;
mod frame;
pub(crate) mod intercept;
mod jsonrpc;
mod output;
mod process;
#[cfg(test)]
mod proptests;
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
use km_abi::{Direction, ErrorKind, Interest, StreamEventKind};

pub(crate) use self::session::now_ms;

use self::banner::{Notices, Refused};
use self::relay::{PumpEnd, PumpReport};
use self::session::Session;
use crate::config::Config;
use crate::events::EventBus;
use crate::gateway::LoadedPlugin;
use crate::home::KmHome;
use crate::runtime::Handle;
use crate::subscription;

/// How long the server may run on after its stdin closed, and after TERM, unless `KM_GRACE_MS`
/// says otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How long plugins get at the end to empty their queues, and then to shut down.
const PLUGIN_DEADLINE: Duration = Duration::from_secs(2);

/// A validated `km monitor` configuration (made by `commands::monitor` from the command line,
/// `config.toml` and the environment).
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
    /// The longest line interceptors inspect.
    pub(crate) inspect_limit: usize,
    /// Whether lossless plugins may hold the relay back (else they get gap events).
    pub(crate) backpressure: bool,
}

impl MonitorConfig {
    /// The configuration for relaying `command`: km's defaults, `KM_GRACE_MS`, and `[monitor]`
    /// of `settings` when there are settings (not with `--no-plugins`).
    pub(crate) fn new(
        command: Vec<OsString>,
        lossless: bool,
        settings: Option<&Config>,
    ) -> Result<Self> {
        let monitor = settings.map(|s| s.monitor.clone()).unwrap_or_default();
        Ok(MonitorConfig {
            command,
            lossless,
            grace: grace_from_env()?,
            queue_capacity: dispatch::QUEUE_CAPACITY,
            inspect_limit: monitor
                .inspect_limit
                .map_or(intercept::DEFAULT_INSPECT_LIMIT, |l| {
                    usize::try_from(l).unwrap_or(usize::MAX)
                }),
            backpressure: monitor.backpressure.unwrap_or(true),
        })
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

/// What identifies a session to the plugins (`begin_session`).
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionInfo {
    pub(crate) id: String,
    json: String,
}

impl SessionInfo {
    /// A new session of the server `command`.
    pub(crate) fn new(command: &[OsString]) -> Self {
        let mut random = [0u8; 8];
        // An id only needs to be unique, not secret: without randomness, time and pid do.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
            random = (session::now_us() ^ u64::from(std::process::id())).to_le_bytes();
        }
        let id = km_durable::digest::hex(&random);
        let command: Vec<String> = command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cwd = std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let json = serde_json::json!({
            "session_id": id,
            "command": command,
            "cwd": cwd,
            "km_version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        SessionInfo { id, json }
    }
}

/// A plugin ready for the session, with what it asked for.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) interest: Interest,
    pub(crate) overrides: intercept::Overrides,
}

/// The plugins of a session, initialized and told it began.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) plugins: Vec<Ready>,
    /// The plugins that were not loaded or not initialized.
    pub(crate) refused: Vec<Refused>,
    pub(crate) events: Option<Arc<EventBus>>,
    pub(crate) session: SessionInfo,
}

/// Calls `initialize`, asks each plugin what it wants (intercepting only where its signed
/// manifest grants it), calls `begin_session`, prints the banner, and returns the plugins that
/// are ready.
pub(crate) fn prepare(
    plugins: Vec<Arc<LoadedPlugin>>,
    mut refused: Vec<Refused>,
    home: &KmHome,
    settings: &Config,
    session: SessionInfo,
    events: Option<Arc<EventBus>>,
    notices: Notices,
) -> Prepared {
    let mut ready = Vec::with_capacity(plugins.len());
    for plugin in plugins {
        let data_dir = home.plugin_data_dir(plugin.name());
        let initialized = KmHome::ensure_private_dir(&data_dir)
            .map_err(|e| ("initialize", format!("{e:#}")))
            .and_then(|()| {
                let config = crate::host::plugin_config(
                    &data_dir,
                    settings,
                    plugin.name(),
                    notices.verbose(),
                );
                plugin.initialize(&config).map_err(|failure| {
                    (
                        "initialize",
                        format!("initialize failed: {}", failure.error),
                    )
                })
            });
        let begun = initialized.and_then(|()| {
            plugin.begin_session(&session.json).map_err(|failure| {
                (
                    "begin_session",
                    format!("begin_session failed: {}", failure.error),
                )
            })
        });
        if let Err((check, reason)) = begun {
            refused.push(Refused {
                file: plugin.name().to_owned(),
                check: check.into(),
                reason,
            });
            continue;
        }
        let mut interest = plugin.interest();
        if !interest.intercept.is_empty() && !plugin.grants().intercept {
            notices.warn(&format!(
                "plugin {} asks to intercept, but its signature does not grant the intercept capability; it only observes",
                plugin.name()
            ));
            interest.intercept = km_abi::Directions::NONE;
        }
        let configured = settings.intercept_settings(plugin.name());
        let overrides = intercept::Overrides {
            priority: configured.priority,
            budget: configured.budget_ms.map(Duration::from_millis),
            fail_open: configured.fail_open,
        };
        ready.push(Ready {
            plugin,
            interest,
            overrides,
        });
    }
    let loaded: Vec<Arc<LoadedPlugin>> = ready.iter().map(|r| r.plugin.clone()).collect();
    notices.info(&banner::banner(&loaded, &refused, notices.verbose()));
    Prepared {
        plugins: ready,
        refused,
        events,
        session,
    }
}

/// The events plugins hear right after the session starts: a host event for every refused
/// plugin, then what the journal holds for each (installs, updates, events emitted by
/// commands since its last session).
fn backlog(prepared: &Prepared, home: Option<&KmHome>, notices: Notices) -> Vec<Backlog> {
    let mut backlog: Vec<Backlog> = prepared
        .refused
        .iter()
        .map(|r| Backlog {
            only: None,
            kind: StreamEventKind::HOST,
            data: serde_json::json!({
                "event": "refused",
                "file": r.file,
                "check": r.check,
                "reason": r.reason,
            }),
        })
        .collect();
    let Some(home) = home else {
        return backlog;
    };
    for ready in &prepared.plugins {
        let name = ready.plugin.name();
        match crate::journal::take_pending(home, name) {
            Ok(entries) => backlog.extend(entries.into_iter().map(|entry| Backlog {
                only: Some(name.to_owned()),
                kind: if entry.kind == "plugin" {
                    StreamEventKind::PLUGIN
                } else {
                    StreamEventKind::HOST
                },
                data: entry.event_data(),
            })),
            Err(e) => notices.warn(&format!("cannot read km's event journal for {name}: {e:#}")),
        }
    }
    backlog
}

/// An event to hand over at the start of a session (to one plugin, or all).
#[derive(Debug)]
struct Backlog {
    only: Option<String>,
    kind: StreamEventKind,
    data: serde_json::Value,
}

/// Runs the session on `runtime`, from a thread outside it: starts the server, relays until it
/// ends, and returns km's exit code. With `home`, what each plugin handled and missed is
/// recorded for `km plugin-status`.
pub(crate) fn run(
    runtime: &Handle,
    config: &MonitorConfig,
    prepared: Prepared,
    notices: Notices,
    home: Option<&KmHome>,
) -> Result<ExitCode> {
    let chain = Arc::new(intercept::Chain::new(
        prepared
            .plugins
            .iter()
            .map(|r| (r.plugin.clone(), r.interest, r.overrides.clone()))
            .chain(crate::telemetry::inject::interceptor())
            .collect(),
        config.inspect_limit,
    ));
    let (session, workers) = if prepared.plugins.is_empty() && !crate::telemetry::follows_messages()
    {
        (None, None)
    } else {
        let lanes = prepared
            .plugins
            .iter()
            .map(|r| dispatch::LaneSpec {
                plugin: r.plugin.clone(),
                observe: r.interest.observe,
                lossless: r.interest.lossless || config.lossless,
            })
            .collect();
        let (dispatcher, workers) = dispatch::start_lanes(
            runtime,
            lanes,
            config.queue_capacity,
            config.backpressure,
            notices,
        );
        let session = if chain.is_empty() {
            Session::new(dispatcher)
        } else {
            Session::intercepting(dispatcher)
        };
        if let Some(events) = &prepared.events {
            events.attach(session.clone());
        }
        (Some(session), Some(workers))
    };
    let relay = Relay {
        session: session.clone(),
        chain,
        session_id: Arc::from(prepared.session.id.as_str()),
        backlog: if session.is_some() {
            backlog(&prepared, home, notices)
        } else {
            Vec::new()
        },
    };
    // A pump may still be blocked reading a stdin that never closes when this returns: it is
    // left behind on the runtime's blocking pool, which km does not wait for at exit.
    let outcome = runtime.block_on(relay_session(config, relay, notices));
    if let Some(events) = &prepared.events {
        events.detach_all();
    }
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
    crate::telemetry::session_ended(code, status.is_none());
    if let (Some(session), Some(workers)) = (session, workers) {
        // The server is gone and its output has stopped moving: a lossless plugin still holding
        // a pump back has stopped taking messages, and waits no more.
        session.stop_waiting();
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
        crate::telemetry::lanes(&totals);
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

/// What the relay of a session works with.
struct Relay {
    session: Option<Arc<Session>>,
    chain: Arc<intercept::Chain>,
    session_id: Arc<str>,
    backlog: Vec<Backlog>,
}

async fn relay_session(config: &MonitorConfig, relay: Relay, notices: Notices) -> Result<Outcome> {
    let Relay {
        session,
        chain,
        session_id,
        backlog,
    } = relay;
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
    // Before the child exists, so that no signal can slip in between.
    let signals = process::forwarded(&notices);
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
            serde_json::json!({
                "command": command,
                "pid": pid.as_raw_nonzero().get(),
                "session_id": &*session_id,
            }),
        );
        for event in backlog {
            match &event.only {
                Some(plugin) => session.event_for(plugin, event.kind, event.data),
                None => session.event(event.kind, event.data),
            }
        }
    }
    // This runs on km's runtime (`run` blocks on it): its blocking pool runs the pumps.
    let runtime = Handle::current();
    // Tasks of this session, aborted when it ends (the runtime outlives it).
    let mut background = tokio::task::JoinSet::new();
    if let Some(session) = &session {
        // Releases held responses when both pumps are idle.
        let session = session.clone();
        background.spawn(async move { session.expire_holds().await });
    }
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    // Kept for the session: the watchdog of interceptors' time budgets stops when dropped.
    let mut _watchdog = None;
    match session.clone().filter(|_| !chain.is_empty()) {
        None => {
            let pumps = [
                (Direction::Request, stdin, child_stdin),
                (Direction::Response, child_stdout, stdout),
            ];
            for (direction, input, output) in pumps {
                let tx = tx.clone();
                let session = session.clone();
                runtime.spawn_blocking(move || {
                    let report = relay::pump(direction, input, output, session);
                    let _ = tx.send(report);
                });
            }
        }
        Some(session) => {
            _watchdog = Some(start_intercepting(
                session,
                chain,
                session_id,
                [stdin, child_stdout],
                [child_stdin, stdout],
                &tx,
                notices,
            )?);
        }
    }
    drop(tx);
    let on_report = |report: &PumpReport| report_pump(report, session.as_deref(), notices);
    let status = process::supervise(
        &mut child,
        pid,
        &mut reports,
        process::Ending {
            grace: config.grace,
            notices,
            signals,
        },
        || {
            session
                .as_ref()
                .map_or_else(process::Progress::default, |s| process::Progress {
                    handed: s.progress(),
                    held_back: s.held_back(),
                })
        },
        on_report,
    )
    .await
    .context("waiting for the server")?;
    notices.detail(&format!("the server exited: {status}"));
    Ok(Outcome::Exited(status))
}

/// Starts the pumps of a session with interceptors on the blocking pool of the runtime it is
/// called on (km's): an intercepting pump for each direction an interceptor asked for, a
/// registering one for the other, and the watchdog of their budgets.
fn start_intercepting(
    session: Arc<Session>,
    chain: Arc<intercept::Chain>,
    session_id: Arc<str>,
    [client_in, server_in]: [File; 2],
    [server_out, client_out]: [File; 2],
    tx: &tokio::sync::mpsc::UnboundedSender<PumpReport>,
    notices: Notices,
) -> Result<intercept::baton::Watchdog> {
    use intercept::baton::{Baton, Watchdog, Watched};
    let runtime = Handle::current();
    let to_server = Arc::new(output::Output::new(server_out));
    let to_client = Arc::new(output::Output::new(client_out));
    let pumps = [
        (
            Direction::Request,
            client_in,
            to_server.clone(),
            to_client.clone(),
        ),
        (Direction::Response, server_in, to_client, to_server),
    ];
    let mut watched = Vec::new();
    for (direction, input, output, peer) in pumps {
        let tx = tx.clone();
        let session = session.clone();
        if chain.intercepts(direction) {
            let baton = Baton::new();
            watched.push(Watched {
                baton: baton.clone(),
                resume: intercept::pump::resume,
            });
            let parts = intercept::pump::Parts {
                direction,
                input,
                output,
                peer,
                chain: chain.clone(),
                session,
                baton,
                notices,
                session_id: session_id.clone(),
                report: tx,
            };
            runtime.spawn_blocking(move || intercept::pump::start(parts));
        } else {
            runtime.spawn_blocking(move || {
                let report = relay::pump_shared(direction, input, output, session);
                let _ = tx.send(report);
            });
        }
    }
    let tick = Watchdog::tick_for(chain.shortest_budget().unwrap_or(intercept::DEFAULT_BUDGET));
    Watchdog::start(&runtime, watched, tick).context("starting the interceptors' watchdog")
}

fn report_pump(report: &PumpReport, session: Option<&Session>, notices: Notices) {
    crate::telemetry::relayed(report.direction, report.bytes);
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
