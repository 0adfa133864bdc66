//! km's one tokio runtime: built by [`crate::main`] once the command line is parsed, handed by
//! [`Handle`] to everything that needs async work or threads (the API client, downloads, the
//! monitor's supervision of the server, the plugin workers, telemetry's exports), and shut down
//! in the background when the command is done.
//!
//! One runtime, so that there is one set of drivers (I/O, time, signals, child processes) per
//! process instead of one per subsystem, one place the threads that run plugin code come from,
//! and one shutdown. The rules that keep it sound:
//!
//! - **The main thread is never a runtime thread.** Commands run on it synchronously and enter
//!   the runtime with `Handle::block_on` where they need async work (a download, a monitor
//!   session's supervision of its server); `block_on` would panic inside an async context, and
//!   nothing in km calls a command from one. Code that may be called from any thread (the API
//!   client, on plugins' behalf) instead spawns its work onto the runtime and waits on a
//!   channel, which works from every thread, also one of another runtime.
//! - **Plugin handlers run on the runtime's blocking pool, each on a dedicated thread**
//!   (`Handle::spawn_blocking`): the dispatcher's worker per plugin, the relay pumps (which call
//!   interceptors), a pump the interceptors' watchdog carries on after a call overran its
//!   budget, and the subscription refreshers (which call `authenticate`). They are threads and
//!   not async tasks because a plugin's entry points are synchronous calls into a cdylib that
//!   can take as long as the plugin likes: it may block on its own I/O, on the host's HTTP
//!   service, or hang outright, and km cannot interrupt it. As an async task such a call would
//!   hold one of the runtime's few worker threads for as long as it lasts, stalling everything
//!   else scheduled there (the server's supervision, signal forwarding, timers, other plugins'
//!   API calls); a hung plugin would hold it forever. A plugin cannot `.await` either: it has its
//!   own copy of tokio (see DESIGN.md), so it could not cooperate with km's runtime even if its
//!   entry points were async. The blocking pool is tokio's place for exactly such work: a thread
//!   per call, created on demand, owned by the runtime. (What it does not do: report a thread the
//!   system refused. Where `std::thread::Builder` returned an error km could name, the pool
//!   queues the work for a thread of its own that frees up, and panics when it has none.)
//! - **A hung plugin never keeps km from exiting.** Dropping a tokio runtime waits for every
//!   blocking task, and a call stuck in a plugin never ends; so km's [`Runtime`] is shut down in
//!   the background ([`tokio::runtime::Runtime::shutdown_background`]): everything km waits for
//!   (plugin queues, shutdown calls, the end of a telemetry export) has its own deadline and has
//!   been waited for by then, and what is still running is left to the end of the process.
//!
//! Three kinds of thread stay outside the runtime, each for a reason given where it is started:
//! the interceptors' watchdog (`monitor::intercept::baton`), a timer that runs no plugin code;
//! the telemetry thread, which lowers its own CPU priority and so must not be a pooled thread
//! that serves other work afterwards; and the OpenTelemetry SDK's batch processor and periodic
//! reader, which the SDK starts (`telemetry::export` says why km uses those and not the SDK's
//! async-runtime variants). No part of km starts a tokio runtime of its own, and none uses
//! reqwest's blocking client (which runs one).

use anyhow::{Context, Result};
pub use tokio::runtime::Handle;

/// The runtime's worker threads. km's async work is light (supervising one child, a few timers,
/// a handful of HTTP calls): two workers keep one free when the other is busy, without a thread
/// per core on large machines. Blocking work has its own pool.
const WORKER_THREADS: usize = 2;

/// km's runtime (see the module documentation). Dropping it shuts it down in the background.
#[derive(Debug)]
pub struct Runtime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl Runtime {
    /// Starts the runtime: its worker threads, and the I/O, time, signal and process drivers.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("km-runtime")
            .enable_all()
            .build()
            .context("starting km's runtime")?;
        let handle = runtime.handle().clone();
        Ok(Runtime {
            runtime: Some(runtime),
            handle,
        })
    }

    /// The handle everything else is given.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that waits for every blocking task, and one stuck in a hung
        // plugin never ends. It would also panic inside an async context (a test's runtime).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A runtime for unit tests, built once per test process and never shut down (threads a test
/// leaves in a hung plugin end with the process).
#[cfg(test)]
pub(crate) fn for_tests() -> Handle {
    static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::new().expect("a runtime for tests"))
        .handle()
        .clone()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_blocking_task_that_never_ends_does_not_hold_up_the_shutdown() {
        let runtime = Runtime::new().expect("runtime");
        let (started, wait) = mpsc::channel();
        let (_release, hold) = mpsc::channel::<()>();
        runtime.handle().spawn_blocking(move || {
            let _ = started.send(());
            // Like a hung plugin: blocked until the test process ends.
            let _ = hold.recv();
        });
        wait.recv().expect("the blocking task started");
        // A plain drop of a tokio runtime would wait here forever.
        let (dropped, done) = mpsc::channel();
        std::thread::spawn(move || {
            drop(runtime);
            let _ = dropped.send(());
        });
        assert!(
            done.recv_timeout(Duration::from_secs(60)).is_ok(),
            "dropping the runtime waited for a blocking task that never ends"
        );
    }

    #[test]
    fn the_main_thread_can_block_on_it_and_plugin_threads_can_use_it() {
        let runtime = Runtime::new().expect("runtime");
        let handle = runtime.handle().clone();
        let on_pool = runtime
            .handle()
            .block_on(async move {
                handle
                    .spawn_blocking(|| {
                        // A blocking-pool thread is not inside an async context: a handler
                        // there may wait on the runtime like the main thread does.
                        Handle::current().block_on(async { 7 })
                    })
                    .await
            })
            .expect("the blocking task");
        assert_eq!(on_pool, 7);
    }
}
