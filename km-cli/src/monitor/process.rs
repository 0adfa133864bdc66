//! The MCP server as a child process: starting it, forwarding signals, ending it, and its exit
//! status.
//!
//! The child runs in its own process group, so that a Ctrl-C at the terminal reaches km once and
//! km forwards it once, and so that signals km sends reach whatever the server started (`npx`,
//! `sh -c`). It is also told to die with km (`PR_SET_PDEATHSIG`), so that even a `kill -9` of km
//! leaves no orphan.
//!
//! The supervisor is the one place that decides when the session ends:
//! - the child exits: km ends with its status (128+N for signal N), whatever stdin does;
//! - the client closes stdin: the pump has closed the child's stdin; after a grace period the
//!   child gets TERM, after another one KILL (some servers keep running after stdin closes);
//! - the client closes stdout (EPIPE): nobody is listening any more: TERM now, KILL after grace;
//! - km gets INT, TERM or HUP: forwarded to the child; INT and TERM also arm the KILL deadline.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use km_abi::Direction;
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::banner::Notices;
use super::relay::{PumpEnd, PumpReport};

/// How long the child's output may keep flowing after the child exited without making progress
/// (a grandchild may still hold the pipe open; km does not wait for it longer than this). While
/// the output still moves (a lossless plugin holding the relay back through what the server
/// wrote before exiting), km waits on, and so it does while a pump waits for such a plugin to
/// take what it was handed: on a loaded machine the plugin's thread may get no core for longer
/// than this, and ending the session then would cost it the rest of the stream (the plugin's
/// own stall limit still bounds a plugin that takes nothing).
const OUTPUT_TAIL: Duration = Duration::from_millis(500);

/// The size asked for the child's pipes.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1024 * 1024;

/// A started child with its pipes as blocking files for the pumps.
pub(crate) struct Spawned {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: Pid,
    pub(crate) stdin: File,
    pub(crate) stdout: File,
}

/// The child could not be started.
#[derive(Debug)]
pub(crate) struct SpawnError {
    program: String,
    error: io::Error,
}

impl SpawnError {
    /// The exit code a shell would use: 127 when the command is not found, 126 when it cannot be
    /// executed.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.error.kind() {
            io::ErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // "No such file or directory (os error 2)" -> "No such file or directory".
        let text = self.error.to_string();
        let text = text
            .find(" (os error ")
            .map_or(text.as_str(), |at| &text[..at]);
        write!(f, "cannot start '{}': {text}", self.program)
    }
}

/// Starts `command` with piped stdin/stdout and inherited stderr. Must run inside the tokio
/// runtime, on the thread that stays alive for the whole session (the parent-death signal is
/// tied to the thread that forks).
pub(crate) fn spawn(command: &[OsString]) -> Result<Spawned, SpawnError> {
    let program = command
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |error: io::Error| SpawnError {
        program: program.clone(),
        error,
    };
    let (first, args) = command
        .split_first()
        .ok_or_else(|| fail(io::Error::new(io::ErrorKind::NotFound, "no command given")))?;
    let mut cmd = tokio::process::Command::new(first);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(fail)?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let pipes = (child.stdin.take(), child.stdout.take());
    let (Some(pid), (Some(stdin), Some(stdout))) = (pid, pipes) else {
        let _ = child.start_kill();
        return Err(fail(io::Error::other("the child's pipes are missing")));
    };
    let stdin = File::from(stdin.into_owned_fd().map_err(fail)?);
    let stdout = File::from(stdout.into_owned_fd().map_err(fail)?);
    // Larger pipes mean fewer wake-ups per megabyte relayed. Best effort: the system's limit
    // (fs.pipe-max-size) may be lower, and then the default stays.
    #[cfg(target_os = "linux")]
    for pipe in [&stdin, &stdout] {
        let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE);
    }
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout,
    })
}

/// Makes the child die with km, even when km is killed with SIGKILL.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe work is
    // allowed. It makes two raw system calls (prctl, getppid) through rustix, allocates nothing
    // (errors are raw OS error codes) and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // km may have died between fork and prctl; then nobody would send the signal.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}

/// km's exit code for the child's status: its code, or 128+N when signal N ended it.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Term,
    Kill,
}

/// Signals km forwards; absent when the handler could not be installed.
pub(crate) struct Forwarded {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarded")
    }
}

async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Installs km's handlers for INT, TERM and HUP (they are forwarded, not obeyed). Call it
/// before the child is started: a signal that arrives in between then waits for the supervisor
/// to forward it, instead of ending km with its default action and leaving the child to the
/// parent-death signal.
pub(crate) fn forwarded(notices: &Notices) -> Forwarded {
    let install = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            notices.warn(&format!("cannot forward {name} to the server: {e}"));
            None
        }
    };
    Forwarded {
        int: install(SignalKind::interrupt(), "SIGINT"),
        term: install(SignalKind::terminate(), "SIGTERM"),
        hup: install(SignalKind::hangup(), "SIGHUP"),
    }
}

/// How the supervisor ends a session: the grace periods, km's voice, the signals it forwards.
pub(crate) struct Ending {
    pub(crate) grace: Duration,
    pub(crate) notices: Notices,
    pub(crate) signals: Forwarded,
}

/// How far the pumps have got, for the end of a session (see [`OUTPUT_TAIL`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// How often pumps have handed lines over.
    pub(crate) handed: u64,
    /// Whether a pump is waiting for a lossless plugin right now.
    pub(crate) held_back: bool,
}

/// Watches the child and the pumps until the child has exited; returns its status. Pump reports
/// are passed to `on_report` as they arrive; `progress` tells whether the pumps still hand lines
/// over (see [`OUTPUT_TAIL`]).
pub(crate) async fn supervise(
    child: &mut tokio::process::Child,
    pid: Pid,
    reports: &mut UnboundedReceiver<PumpReport>,
    ending: Ending,
    progress: impl Fn() -> Progress,
    mut on_report: impl FnMut(&PumpReport),
) -> io::Result<ExitStatus> {
    let Ending {
        grace,
        notices,
        mut signals,
    } = ending;
    let mut deadline: Option<(Instant, Step)> = None;
    let mut output_done = false;
    let send = |signal: Signal, why: &str| {
        notices.detail(&format!(
            "sending SIG{} to the server ({why})",
            signal_name(signal)
        ));
        // The child is reaped only by `wait` below, so its pid (and group) cannot have been
        // reused yet; ESRCH just means the group is already gone.
        let _ = rustix::process::kill_process_group(pid, signal);
    };
    let status = loop {
        let timer = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status?,
            Some(report) = reports.recv() => {
                on_report(&report);
                match (report.direction, &report.end) {
                    (Direction::Request, PumpEnd::Eof | PumpEnd::ReadFailed(_)) => {
                        notices.detail("the client closed stdin; closed the server's stdin");
                        if deadline.is_none() {
                            deadline = Some((Instant::now() + grace, Step::Term));
                        }
                    }
                    (Direction::Request, _) => {}
                    (Direction::Response, PumpEnd::OutputClosed) => {
                        output_done = true;
                        send(Signal::TERM, "the client closed stdout");
                        deadline = Some((Instant::now() + grace, Step::Kill));
                    }
                    (Direction::Response, _) => output_done = true,
                }
            }
            () = next(&mut signals.int) => {
                send(Signal::INT, "km got SIGINT");
                deadline = Some((Instant::now() + grace, Step::Kill));
            }
            () = next(&mut signals.term) => {
                send(Signal::TERM, "km got SIGTERM");
                deadline = Some((Instant::now() + grace, Step::Kill));
            }
            () = next(&mut signals.hup) => send(Signal::HUP, "km got SIGHUP"),
            () = timer => match deadline.map(|(_, step)| step) {
                // A server whose output km is holding back for a lossless plugin is not
                // lingering: it cannot finish writing until the plugin catches up.
                Some(Step::Term) if progress().held_back => {
                    deadline = Some((Instant::now() + grace, Step::Term));
                }
                Some(Step::Term) => {
                    send(Signal::TERM, "still running after its stdin closed");
                    deadline = Some((Instant::now() + grace, Step::Kill));
                }
                _ => {
                    send(Signal::KILL, "still running after SIGTERM");
                    deadline = None;
                }
            },
        }
    };
    // Let the last of the child's output through before the session ends.
    let mut tail = Instant::now() + OUTPUT_TAIL;
    let mut moved = progress();
    while !output_done {
        match tokio::time::timeout_at(tail, reports.recv()).await {
            Ok(Some(report)) => {
                on_report(&report);
                output_done |= report.direction == Direction::Response;
            }
            Ok(None) => break,
            Err(_) => {
                let now = progress();
                if now.handed == moved.handed && !now.held_back {
                    break;
                }
                moved = now;
                tail = Instant::now() + OUTPUT_TAIL;
            }
        }
    }
    // Reports already sent are counted too, none is waited for: the client's side often ends
    // with the server (its EOF is what made the server exit), and its report may be queued
    // behind the child's exit and the output's report.
    while let Ok(report) = reports.try_recv() {
        on_report(&report);
    }
    Ok(status)
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::INT => "INT",
        Signal::TERM => "TERM",
        Signal::HUP => "HUP",
        Signal::KILL => "KILL",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn spawn_errors_read_like_a_shell() {
        let missing = SpawnError {
            program: "foo".into(),
            error: io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            missing.to_string(),
            "cannot start 'foo': No such file or directory"
        );
        assert_eq!(missing.exit_code(), 127);
        let denied = SpawnError {
            program: "./x".into(),
            error: io::Error::from_raw_os_error(13),
        };
        assert_eq!(denied.exit_code(), 126);
    }
}
