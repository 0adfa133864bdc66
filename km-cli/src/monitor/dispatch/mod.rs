//! Handing messages to plugins without letting any plugin slow the relay.
//!
//! Every plugin gets one bounded queue and one worker thread, and is only ever called from that
//! thread: a dedicated thread of km's runtime's blocking pool (why a thread and not an async
//! task: see [`crate::runtime`]). The relay puts an [`Item`] into each queue without waiting:
//! when a plugin's queue is full (a slow or hung plugin) that plugin's copy is dropped and
//! counted, and the relay moves on. With `--lossless` the relay waits for room instead
//! (back-pressure, for audit use).
//!
//! The lines of one read travel together as one [`Batch`], shared by all queues (`Arc`): one
//! queue operation per read and plugin, not per message, and a line's bytes are never copied per
//! plugin. A read of a single line (an interactive session) goes as [`Item::One`], without any
//! allocation. The queue is bounded in messages and in bytes (counted in atomics beside the
//! channel), since lines can be of any size; a lossless lane that the relay waits for in fewer
//! bytes ([`LOSSLESS_QUEUE_BYTES`]), since depth there buys nothing.
//!
//! A worker that finds its queue empty does not block on it at once: it looks again every
//! millisecond for a while ([`worker`]), so that while messages flow the relay never has to wake
//! it (a futex call and a context switch per message, on the path of every round trip); plugins
//! see a message at most about a millisecond late. An idle worker then blocks, and costs nothing.
//!
//! Each lane has its own delivery (ABI 1.1's interest): a plugin that does not observe gets no
//! messages, only events; a plugin that asked for lossless delivery (an audit trail) gets
//! back-pressure on its own queue instead of drops, or, where configuration refuses back-pressure,
//! a `gap` event saying how many messages it missed, placed where they would have been. A
//! lossless plugin that takes nothing for [`STALL_LIMIT`] while the relay waits for it has
//! stopped, and may not hold the MCP session for ever: from then on it gets gap events too. Events a
//! plugin emits reach every lane but its own.
//!
//! A plugin that panics (the SDK turns the panic into a `PANICKED` error) is disabled for the rest
//! of the session; other errors are reported, rate-limited, and the plugin carries on. At the end,
//! queues drain under a deadline, each plugin gets the end-of-stream event and `shutdown`, under a
//! second deadline; a plugin still stuck after that is abandoned on its thread so km can exit.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use km_abi::{Direction, MessageKind, PluginError, StreamEvent, StreamEventKind};

use super::banner::Notices;
use super::correlate::CorrelationId;
use crate::gateway::LoadedPlugin;
use crate::runtime::Handle;

/// Room in each plugin's queue, in messages.
pub const QUEUE_CAPACITY: usize = 8192;

/// How long a lossless plugin may take nothing while the relay waits for room in its queue
/// before the relay stops waiting for it (see [`Dispatcher::send`]); `KM_LOSSLESS_STALL_MS`
/// changes it (for tests).
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(10);

/// How long the end of a session waits for a plugin's first authentication that is still in
/// flight (an API slower than a short session): the API client's own deadline for one call.
pub(crate) const FIRST_AUTH_LIMIT: Duration = Duration::from_secs(10);

/// Room in each plugin's queue, in bytes of lines: with lines of any size, a count alone would not
/// bound memory. A single line larger than this still goes into an empty queue. Lines may share
/// read buffers a few times their size (see `frame`), so the memory held is a small multiple.
pub(crate) const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Room in bytes of lines in the queue of a lossless plugin while the relay waits for it:
/// smaller than [`QUEUE_BYTES`], because there depth buys nothing. The relay runs at such a
/// plugin's pace whatever its queue holds (it waits for room instead of dropping), so what the
/// queue holds beyond a few hundred milliseconds of the plugin's work is only memory: up to
/// 64 MiB of lines, and the read buffers they share, per lossless plugin on large results
/// (BENCHMARKS.md, "A lossless plugin's queue").
pub(crate) const LOSSLESS_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// One line, ready for the plugins. Cheap to clone: the bytes are shared.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub seq: u64,
    pub direction: Direction,
    pub kind: MessageKind,
    pub is_error: bool,
    /// The line without its terminator.
    pub line: Bytes,
    /// Where the raw `id` is in `line`.
    pub id: Option<Range<usize>>,
    /// Where the raw `method` (a JSON string) is in `line`.
    pub method: Option<Range<usize>>,
    pub correlation: Option<CorrelationId>,
    pub timestamp_us: u64,
    pub latency_us: Option<u64>,
}

/// The lines of one read, in order.
#[derive(Debug)]
pub struct Batch {
    pub(crate) envelopes: Vec<Envelope>,
    /// The bytes of all lines, for the queue's byte budget.
    pub(crate) bytes: usize,
    /// The lines' texts for `handle_message`, made by the first worker that delivers the batch
    /// and read by the others (see [`worker::Texts`]).
    pub(crate) texts: OnceLock<worker::Texts>,
}

impl Batch {
    /// A batch of `envelopes`.
    pub fn new(envelopes: Vec<Envelope>) -> Self {
        let bytes = envelopes.iter().map(|e| e.line.len()).sum();
        Batch {
            envelopes,
            bytes,
            texts: OnceLock::new(),
        }
    }
}

/// What goes through a plugin's queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// One line of the stream (a read that held one line; no allocation).
    One(Envelope),
    /// Lines of the stream.
    Messages(Arc<Batch>),
    /// A lifecycle event (start, error).
    Event(Arc<StreamEvent>),
    /// A relay error, for `handle_error`.
    Error(Arc<PluginError>),
}

/// What the end-of-stream event says; each plugin's copy adds its own drop count.
#[derive(Debug, Clone)]
pub(crate) struct EndOfStream {
    /// The event's `data` object without `drops`.
    pub(crate) data: serde_json::Map<String, serde_json::Value>,
    pub(crate) timestamp_ms: i64,
}

/// What one plugin did in a session, reported when the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneTotals {
    /// The plugin's name.
    pub plugin: String,
    /// Messages it handled.
    pub handled: u64,
    /// Messages dropped for it (its queue was full).
    pub dropped: u64,
}

/// How one plugin wants to be fed.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Whether it gets messages (`handle_message`); events reach every lane.
    pub observe: bool,
    /// Whether its messages may not be dropped.
    pub lossless: bool,
}

/// Counters of one plugin's lane, shared between the relay, its worker and the report.
#[derive(Debug)]
pub(crate) struct LaneState {
    pub(crate) name: String,
    pub(crate) drops: AtomicU64,
    /// Messages a lossless lane missed (back-pressure refused) and not yet reported in a gap event.
    pub(crate) gap: AtomicU64,
    /// Whether the plugin asked for every message.
    lossless: bool,
    /// Set when a lossless plugin stopped taking messages: the relay no longer waits for it.
    stalled: AtomicBool,
    pub(crate) handled: AtomicU64,
    pub(crate) disabled: AtomicBool,
    /// Messages and bytes of lines in the queue (added before a send, subtracted once handled or
    /// skipped).
    queued_messages: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Set when the drain deadline passed: skip what is left in the queue.
    abort: AtomicBool,
}

struct Lane {
    tx: Sender<Item>,
    state: Arc<LaneState>,
    observe: bool,
    lossless: bool,
}

impl LaneState {
    /// Reserves room for `messages` messages of `bytes` bytes, within `capacity` messages and
    /// `room` bytes; `false` when the queue is full. An empty queue always takes an item,
    /// however large, so that nothing is refused forever.
    fn reserve(&self, messages: usize, bytes: usize, capacity: usize, room: usize) -> bool {
        let queued_messages = self.queued_messages.fetch_add(messages, Ordering::Relaxed);
        let queued_bytes = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let full = (queued_messages > 0 && queued_messages.saturating_add(messages) > capacity)
            || (queued_bytes > 0 && queued_bytes.saturating_add(bytes) > room);
        if full {
            self.release(messages, bytes);
        }
        !full
    }

    fn release(&self, messages: usize, bytes: usize) {
        self.queued_messages.fetch_sub(messages, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The sending side: owned by the session and used under its lock. Dropping it closes the queues.
pub struct Dispatcher {
    lanes: Vec<Lane>,
    notices: Notices,
    /// See [`STALL_LIMIT`].
    stall_limit: Duration,
    /// Whether a lossless lane may hold the relay back; if not, it gets gap events.
    backpressure: bool,
    /// Room in each queue, in messages.
    capacity: usize,
    /// Sends waiting for room in a lossless lane right now (see [`Dispatcher::held_back`]).
    waiting: Arc<AtomicUsize>,
}

/// The receiving side: waits for the workers at the end.
pub struct Workers {
    states: Vec<Arc<LaneState>>,
    /// The lanes' plugins, in the order of `states`.
    plugins: Vec<Arc<LoadedPlugin>>,
    progress: Receiver<(usize, Phase)>,
    end: Arc<OnceLock<EndOfStream>>,
    notices: Notices,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Drained,
    Finished,
}

/// Starts one worker thread per plugin on `runtime`'s blocking pool, every plugin observing, all
/// lossless or none.
pub fn start(
    runtime: &Handle,
    plugins: Vec<Arc<LoadedPlugin>>,
    capacity: usize,
    lossless: bool,
    notices: Notices,
) -> (Dispatcher, Workers) {
    let specs = plugins
        .into_iter()
        .map(|plugin| LaneSpec {
            plugin,
            observe: true,
            lossless,
        })
        .collect();
    start_lanes(runtime, specs, capacity, true, notices)
}

/// Starts one worker thread per plugin on `runtime`'s blocking pool, each fed as its spec says;
/// `backpressure` false turns lossless lanes' waits into gap events.
pub fn start_lanes(
    runtime: &Handle,
    specs: Vec<LaneSpec>,
    capacity: usize,
    backpressure: bool,
    notices: Notices,
) -> (Dispatcher, Workers) {
    let (progress_tx, progress) = mpsc::channel();
    let end = Arc::new(OnceLock::new());
    let mut lanes = Vec::with_capacity(specs.len());
    let mut states = Vec::with_capacity(specs.len());
    let mut started = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        let LaneSpec {
            plugin,
            observe,
            lossless,
        } = spec;
        // Bounded by the message and byte budgets, not by the channel: a bounded channel would
        // allocate (and touch) room for `capacity` items up front, per plugin, used or not.
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(LaneState {
            name: plugin.name().to_owned(),
            drops: AtomicU64::new(0),
            gap: AtomicU64::new(0),
            lossless,
            stalled: AtomicBool::new(false),
            handled: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
            queued_messages: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
        });
        let kept = plugin.clone();
        let worker = Worker {
            index,
            plugin,
            state: state.clone(),
            end: end.clone(),
            notices,
        };
        let progress_tx = progress_tx.clone();
        runtime.spawn_blocking(move || worker.run(rx, progress_tx));
        states.push(state.clone());
        started.push(kept);
        lanes.push(Lane {
            tx,
            state,
            observe,
            lossless,
        });
    }
    (
        Dispatcher {
            lanes,
            notices,
            stall_limit: std::env::var("KM_LOSSLESS_STALL_MS")
                .ok()
                .and_then(|ms| ms.trim().parse().ok())
                .map_or(STALL_LIMIT, Duration::from_millis),
            backpressure,
            capacity: capacity.max(1),
            waiting: Arc::new(AtomicUsize::new(0)),
        },
        Workers {
            states,
            plugins: started,
            progress,
            end,
            notices,
        },
    )
}

impl Dispatcher {
    /// Queues `item` for every plugin that is still enabled (a message only for those that
    /// observe). Never blocks unless a lane is lossless; then it waits for room until `closing`
    /// is set.
    pub fn send(&self, item: Item, closing: &AtomicBool) {
        self.send_except(item, None, closing);
    }

    /// A gauge of the sends that wait for room in a lossless lane right now, readable without
    /// the session's lock (which a waiting send holds). While it is above zero, a live plugin
    /// that asked for every message is holding the relay back, and the end of the session waits
    /// for it rather than taking the pause for the end of the server's output; a plugin that
    /// stopped taking messages stops holding it after the stall limit.
    pub fn held_back(&self) -> Arc<AtomicUsize> {
        self.waiting.clone()
    }

    /// Whether some plugin gets messages (not only events).
    pub fn observes(&self) -> bool {
        self.lanes.iter().any(|lane| lane.observe)
    }

    /// Queues an event for the plugin named `only`.
    pub fn send_only(&self, item: Item, only: &str, closing: &AtomicBool) {
        if let Some(lane) = self.lanes.iter().find(|l| l.state.name == only) {
            let (messages, bytes) = item.weight();
            self.send_to(lane, item, messages, bytes, closing);
        }
    }

    /// Like [`Dispatcher::send`], skipping the lane of the plugin named `except` (the emitter of
    /// a plugin event).
    pub fn send_except(&self, item: Item, except: Option<&str>, closing: &AtomicBool) {
        let (messages, bytes) = item.weight();
        let is_message = messages > 0;
        let wanted = |lane: &Lane| {
            !lane.state.disabled.load(Ordering::Relaxed)
                && (lane.observe || !is_message)
                && except != Some(lane.state.name.as_str())
        };
        // The last lane that wants it takes the item itself: with one plugin nothing is cloned.
        let last = self.lanes.iter().rposition(wanted);
        let mut item = Some(item);
        for (i, lane) in self.lanes.iter().enumerate() {
            if !wanted(lane) {
                continue;
            }
            let copy = if Some(i) == last {
                item.take()
            } else {
                item.clone()
            };
            if let Some(copy) = copy {
                self.send_to(lane, copy, messages, bytes, closing);
            }
        }
    }

    fn send_to(
        &self,
        lane: &Lane,
        item: Item,
        messages: usize,
        bytes: usize,
        closing: &AtomicBool,
    ) {
        let mut pause = Duration::from_micros(50);
        // A lossless plugin that takes nothing for this long has stopped: it may not hold the
        // relay (and the MCP session) for ever; it loses messages from then on, with gap events.
        let mut watched: Option<(Instant, u64)> = None;
        let mut waiting = None;
        loop {
            // A lane the relay waits for needs no depth (see LOSSLESS_QUEUE_BYTES).
            let waits =
                lane.lossless && self.backpressure && !lane.state.stalled.load(Ordering::Relaxed);
            let room = if waits {
                LOSSLESS_QUEUE_BYTES
            } else {
                QUEUE_BYTES
            };
            if lane.state.reserve(messages, bytes, self.capacity, room) {
                let missed = lane.state.gap.swap(0, Ordering::Relaxed);
                if missed > 0 {
                    // Where the missed messages would have been, before what comes next.
                    let gap = StreamEvent {
                        kind: StreamEventKind::GAP,
                        timestamp_ms: super::session::now_ms(),
                        data: format!("{{\"missed\":{missed}}}").into(),
                    };
                    let _ = lane.tx.send(Item::Event(Arc::new(gap)));
                }
                if let Err(mpsc::SendError(_)) = lane.tx.send(item) {
                    // The worker's thread has ended: nobody will release this reservation.
                    lane.state.release(messages, bytes);
                }
                return;
            }
            let stalled = lane.state.stalled.load(Ordering::Relaxed);
            let wait = lane.lossless && self.backpressure && !stalled;
            if !wait || closing.load(Ordering::Relaxed) {
                let missed = messages.max(1) as u64;
                lane.state.drops.fetch_add(missed, Ordering::Relaxed);
                if lane.lossless && (!self.backpressure || stalled) {
                    lane.state.gap.fetch_add(missed, Ordering::Relaxed);
                }
                return;
            }
            let handled = lane.state.handled.load(Ordering::Relaxed);
            match watched {
                Some((since, seen)) if seen == handled => {
                    if since.elapsed() >= self.stall_limit {
                        lane.state.stalled.store(true, Ordering::Relaxed);
                        self.notices.warn(&format!(
                            "plugin {} asked for every message but has taken none for {:?}; \
                             the relay no longer waits for it (what it misses is counted and \
                             reported to it)",
                            lane.state.name, self.stall_limit
                        ));
                    }
                }
                _ => watched = Some((Instant::now(), handled)),
            }
            waiting.get_or_insert_with(|| Waiting::on(&self.waiting));
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

/// One send counted in [`Dispatcher::held_back`] for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Item {
    /// The messages and bytes of line this item holds, for the queue's budgets.
    fn weight(&self) -> (usize, usize) {
        match self {
            Item::One(envelope) => (1, envelope.line.len()),
            Item::Messages(batch) => (batch.envelopes.len(), batch.bytes),
            Item::Event(_) | Item::Error(_) => (0, 0),
        }
    }
}

impl Workers {
    /// Ends the session for the plugins: call after `end` is known and before the [`Dispatcher`]
    /// is dropped. Waits up to `drain` for the queues to empty, then up to `shutdown` for the
    /// end event and `shutdown` calls; reports on stderr what did not make it.
    pub(crate) fn set_end(&self, end: EndOfStream) {
        let _ = self.end.set(end);
    }

    /// The lanes' counters (for measurements in tests).
    #[cfg(test)]
    pub(crate) fn states_for_tests(&self) -> Vec<Arc<LaneState>> {
        self.states.clone()
    }

    /// Waits for the workers (the [`Dispatcher`] must be dropped by now); see [`Workers::set_end`].
    /// Returns what each plugin handled and missed, for `km plugin-status`.
    pub fn finish(self, drain: Duration, shutdown: Duration) -> Vec<LaneTotals> {
        let n = self.states.len();
        let mut drained = vec![false; n];
        let mut finished = vec![false; n];
        let deadline = Instant::now() + drain;
        self.wait(&mut drained, &mut finished, Phase::Drained, deadline, false);
        // A plugin that may lose messages is cut short now; one that asked for every message
        // gets more time as long as it makes progress (a hung one still cannot keep km).
        let mut lossless_behind = false;
        for (state, done) in self.states.iter().zip(&drained) {
            if !done && !state.lossless {
                self.skip_rest(state, drain);
            }
            lossless_behind |= !done && state.lossless;
        }
        if lossless_behind {
            let deadline = Instant::now() + drain;
            self.wait(&mut drained, &mut finished, Phase::Drained, deadline, true);
        }
        for (state, done) in self.states.iter().zip(&drained) {
            if !done && state.lossless {
                self.skip_rest(state, drain);
            }
        }
        // A premium plugin holds what it saw before its first authentication answered; its
        // worker waits for that answer before the end of stream (`Worker::run`), and the
        // shutdown deadline starts once it came (at most FIRST_AUTH_LIMIT from now).
        let auth_deadline = Instant::now() + FIRST_AUTH_LIMIT;
        for (state, plugin) in self.states.iter().zip(&self.plugins) {
            if !plugin.wait_for_first_authentication(auth_deadline) {
                self.notices.warn(&format!(
                    "the first authentication of plugin {} had not answered {} s after the \
                     session ended; what it held until then is let go",
                    state.name,
                    FIRST_AUTH_LIMIT.as_secs()
                ));
            }
        }
        let deadline = Instant::now() + shutdown;
        self.wait(
            &mut drained,
            &mut finished,
            Phase::Finished,
            deadline,
            false,
        );
        for (state, done) in self.states.iter().zip(&finished) {
            if !done {
                self.notices.warn(&format!(
                    "plugin {} did not shut down in time; abandoned",
                    state.name
                ));
            }
            let drops = state.drops.load(Ordering::Relaxed);
            if drops > 0 {
                self.notices.warn(&format!(
                    "plugin {} missed {drops} message{} (its queue was full)",
                    state.name,
                    if drops == 1 { "" } else { "s" }
                ));
            }
            self.notices.detail(&format!(
                "plugin {}: {} messages handled",
                state.name,
                state.handled.load(Ordering::Relaxed)
            ));
        }
        self.states
            .iter()
            .map(|state| LaneTotals {
                plugin: state.name.clone(),
                handled: state.handled.load(Ordering::Relaxed),
                dropped: state.drops.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn skip_rest(&self, state: &LaneState, drain: Duration) {
        if state.abort.swap(true, Ordering::Relaxed) {
            return;
        }
        self.notices.warn(&format!(
            "plugin {} did not catch up within {drain:?}; skipping the rest of its queue",
            state.name
        ));
    }

    /// Waits until every lane reached `phase` or `deadline` passed. With `extend`, the deadline
    /// moves on as long as a lossless lane still makes progress: every message is delivered to
    /// a plugin that asked for all of them and is slow but alive.
    fn wait(
        &self,
        drained: &mut [bool],
        finished: &mut [bool],
        phase: Phase,
        deadline: Instant,
        extend: bool,
    ) {
        let target = |drained: &[bool], finished: &[bool]| match phase {
            Phase::Drained => drained.iter().all(|d| *d),
            Phase::Finished => finished.iter().all(|d| *d),
        };
        let patience = deadline.saturating_duration_since(Instant::now());
        let mut deadline = deadline;
        let mut handled = self.handled();
        while !target(drained, finished) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let tick = (deadline - now).min(Duration::from_millis(100));
            match self.progress.recv_timeout(tick) {
                Ok((index, Phase::Drained)) => drained[index] = true,
                Ok((index, Phase::Finished)) => {
                    drained[index] = true;
                    finished[index] = true;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if extend {
                        let now_handled = self.handled();
                        if now_handled != handled {
                            handled = now_handled;
                            deadline = Instant::now() + patience;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Messages handled so far by the lossless lanes.
    fn handled(&self) -> u64 {
        self.states
            .iter()
            .filter(|s| s.lossless)
            .map(|s| s.handled.load(Ordering::Relaxed))
            .sum()
    }
}

mod worker;

#[cfg(test)]
use self::worker::ErrorLimiter;
use self::worker::Worker;

#[cfg(test)]
mod tests;
