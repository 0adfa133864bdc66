//! The observed side of one monitored session: sequence numbers, correlation and the queues to
//! the plugins, shared by the two pumps.
//!
//! Each pump frames and classifies its lines on its own (no lock), then takes the session lock
//! once per chunk to number them, pair requests with responses and queue them. One lock keeps the
//! sequence numbers in the order the plugins receive them and lets a response find the request
//! the other pump registered. The lock is held only for that bookkeeping: queueing never blocks
//! (except with `--lossless`, where blocking is the point).
//!
//! A pump forwards a chunk before it registers the requests in it, so a fast peer's response can
//! reach the other pump before its request is registered. Neither pump ever waits for the other:
//! a response that finds no request while the other pump is still busy with a chunk it forwarded
//! is *held*, with every line of its side behind it (the plugins see each side in order), and
//! the other pump pairs it as soon as it has registered that chunk. A held response whose request
//! never comes is released unpaired once the other side has caught up, or after [`HOLD_LIMIT`]
//! (the supervisor's timer, [`Session::expire_holds`], sees to that when both pumps are idle).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use km_abi::{Direction, ErrorKind, MessageKind, PluginError, StreamEvent, StreamEventKind};

use super::correlate::{CorrelationId, Correlator, IdKey, NewRequest, RequestInfo};
use super::dispatch::{Batch, Dispatcher, Envelope, Item};
use super::jsonrpc::{self, Scan, Text};

/// A line a pump has framed and classified, waiting to be numbered.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) line: Bytes,
    pub(crate) scan: Scan,
}

/// The number and correlation a line gets on admission.
#[derive(Debug, Clone)]
pub(crate) struct Numbered {
    pub(crate) seq: u64,
    pub(crate) correlation: Option<CorrelationId>,
    /// For a response: microseconds since its request.
    pub(crate) latency_us: Option<u64>,
    /// For a request or a notification: its method and target; for a response: its request's
    /// (kept only when the session keeps requests).
    pub(crate) info: Option<Arc<RequestInfo>>,
}

/// The method and target of a request or notification line.
fn request_info(line: &[u8], scan: &Scan) -> RequestInfo {
    let text = |range: Option<std::ops::Range<usize>>| -> Box<str> {
        match range
            .and_then(|r| line.get(r))
            .and_then(jsonrpc::string_text)
        {
            Some(Text::Borrowed(s)) => s.into(),
            Some(Text::Owned(s)) => s.into(),
            None => "".into(),
        }
    };
    let method = text(scan.method.clone());
    let target = text(jsonrpc::request_target(line, &method, &scan.params));
    RequestInfo { method, target }
}

/// How many lines went each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) client_to_server: u64,
    pub(crate) server_to_client: u64,
}

/// The longest a response is held for its request (see the module documentation). A response
/// overtakes its request's registration by microseconds; this bound only matters when the
/// other pump is stuck in the middle of a chunk (writing to a peer that does not read).
pub(crate) const HOLD_LIMIT: Duration = Duration::from_millis(50);

/// A line with the time it was read.
#[derive(Debug)]
struct Pending {
    line: Bytes,
    scan: Scan,
    read_at: Instant,
    timestamp_us: u64,
}

/// How many lines, and bytes of lines, one side may hold; past either, the first held response
/// stops waiting. Holds are short-lived; this bounds memory whatever the peers send.
const HOLD_LINES: usize = 4096;
const HOLD_BYTES: usize = super::dispatch::QUEUE_BYTES;

/// The lines of one side held back: the first is a response waiting for its request.
#[derive(Debug)]
struct Hold {
    lines: VecDeque<Pending>,
    /// The bytes of `lines`.
    bytes: usize,
    /// When the first line started waiting.
    since: Instant,
}

impl Hold {
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn is_full(&self) -> bool {
        self.lines.len() >= HOLD_LINES || self.bytes >= HOLD_BYTES
    }

    fn push_back(&mut self, pending: Pending) {
        self.bytes += pending.line.len();
        self.lines.push_back(pending);
    }

    fn push_front(&mut self, pending: Pending) {
        self.bytes += pending.line.len();
        self.lines.push_front(pending);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let pending = self.lines.pop_front()?;
        self.bytes -= pending.line.len();
        Some(pending)
    }

    /// Whether a request with `id` is among the held lines.
    fn has_request(&self, id: &IdKey) -> bool {
        self.lines.iter().any(|pending| {
            pending.scan.kind == MessageKind::REQUEST && pending.id().as_ref() == Some(id)
        })
    }

    /// Whether a request asking for progress with `token` is among the held lines.
    fn has_progress_token(&self, token: &IdKey) -> bool {
        self.lines.iter().any(|pending| {
            pending.scan.kind == MessageKind::REQUEST
                && pending.key(&pending.scan.progress).as_ref() == Some(token)
        })
    }
}

impl Pending {
    fn key(&self, range: &Option<std::ops::Range<usize>>) -> Option<IdKey> {
        range
            .clone()
            .and_then(|r| self.line.get(r))
            .map(IdKey::from_raw)
    }

    fn id(&self) -> Option<IdKey> {
        self.key(&self.scan.id)
    }
}

struct State {
    next_seq: u64,
    correlator: Correlator,
    dispatcher: Option<Arc<Dispatcher>>,
    counts: Counts,
    /// Per side (client to server, server to client): bytes whose complete lines are numbered,
    /// queued or held.
    observed: [u64; 2],
    held: [Hold; 2],
    /// Whether the timer of [`Session::expire_holds`] is watching the holds.
    timer_armed: bool,
}

/// The messages of one observation, on their way to the plugins: one line needs no allocation.
enum Outbox {
    Empty,
    One(Envelope),
    Many(Vec<Envelope>),
}

impl Outbox {
    fn push(&mut self, envelope: Envelope) {
        *self = match std::mem::replace(self, Outbox::Empty) {
            Outbox::Empty => Outbox::One(envelope),
            Outbox::One(first) => Outbox::Many(vec![first, envelope]),
            Outbox::Many(mut all) => {
                all.push(envelope);
                Outbox::Many(all)
            }
        };
    }

    fn into_item(self) -> Option<Item> {
        match self {
            Outbox::Empty => None,
            Outbox::One(envelope) => Some(Item::One(envelope)),
            Outbox::Many(all) => Some(Item::Messages(Arc::new(Batch::new(all)))),
        }
    }
}

const SIDES: [Direction; 2] = [Direction::Request, Direction::Response];

fn side(direction: Direction) -> usize {
    match direction {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

/// Shared by the pumps and the supervisor.
pub(crate) struct Session {
    state: Mutex<State>,
    /// Per pump: bytes handed to `write` so far. A response can only follow its request's
    /// forwarding, so a pump whose `observed` is behind this may hold the request a response is
    /// looking for. Stored without the lock, before the write.
    forwarded: [AtomicU64; 2],
    hold_limit: Duration,
    /// Set when the session ends: a lossless send stops waiting.
    closing: AtomicBool,
    /// Wakes the timer of [`Session::expire_holds`] when a hold begins.
    holding: tokio::sync::Notify,
    /// Whether requests keep their method and target for their responses (interceptors need
    /// them).
    keep_requests: bool,
    /// Whether any plugin gets messages (else [`Session::deliver`] has nothing to do).
    observed: bool,
    /// Bumped each time a pump hands lines over: read without the lock (which a lossless send
    /// may hold for long) by the supervisor, to tell a slow end of output from a stuck one.
    progress: AtomicU64,
    /// The dispatcher's gauge of sends waiting for a lossless plugin ([`Dispatcher::held_back`]).
    held_back: Arc<std::sync::atomic::AtomicUsize>,
    /// The same dispatcher as the state's, for the events plugins emit, which must not take the
    /// state's lock: a pump holds it while it waits for room in a lossless plugin's queue, and
    /// that plugin's worker emits from inside `handle_message`, so it would wait for the pump
    /// that waits for it (until the stall limit gave up on the plugin). Its own lock is held
    /// only to clone the `Arc`; sending an event never waits for room (events weigh nothing in
    /// the queues' budgets).
    event_sink: Mutex<Option<Arc<Dispatcher>>>,
}

impl Session {
    /// A session feeding `dispatcher`.
    pub(crate) fn new(dispatcher: Dispatcher) -> Arc<Self> {
        Self::with_hold_limit(dispatcher, HOLD_LIMIT)
    }

    /// A session for interceptors: requests keep their method and target for their responses.
    pub(crate) fn intercepting(dispatcher: Dispatcher) -> Arc<Self> {
        Self::build(dispatcher, HOLD_LIMIT, true)
    }

    /// A session whose responses are held for their requests up to `hold_limit`.
    pub(crate) fn with_hold_limit(dispatcher: Dispatcher, hold_limit: Duration) -> Arc<Self> {
        Self::build(dispatcher, hold_limit, false)
    }

    fn build(dispatcher: Dispatcher, hold_limit: Duration, keep_requests: bool) -> Arc<Self> {
        let observed = dispatcher.observes();
        let held_back = dispatcher.held_back();
        let dispatcher = Arc::new(dispatcher);
        let now = Instant::now();
        let hold = || Hold {
            lines: VecDeque::new(),
            bytes: 0,
            since: now,
        };
        Arc::new(Session {
            hold_limit,
            state: Mutex::new(State {
                next_seq: 1,
                correlator: Correlator::new(),
                dispatcher: Some(dispatcher.clone()),
                counts: Counts::default(),
                observed: [0, 0],
                held: [hold(), hold()],
                timer_armed: false,
            }),
            closing: AtomicBool::new(false),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            holding: tokio::sync::Notify::new(),
            keep_requests,
            observed,
            progress: AtomicU64::new(0),
            held_back,
            event_sink: Mutex::new(Some(dispatcher)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not stop the relay.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pump of `direction` is about to forward everything up to byte `upto` of its stream.
    pub(crate) fn forwarding(&self, direction: Direction, upto: u64) {
        self.forwarded[side(direction)].store(upto, Ordering::Release);
    }

    /// Numbers, correlates and queues the lines of one chunk of `direction` (all read at
    /// `read_at`); the pump has now framed its stream up to byte `upto` (`u64::MAX` once it
    /// ended). Called after every chunk, even one without a complete line.
    pub(crate) fn observe(
        &self,
        direction: Direction,
        batch: &mut Vec<Observed>,
        read_at: Instant,
        timestamp_us: u64,
        upto: u64,
    ) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let this = side(direction);
        let mut out = Outbox::Empty;
        let mut guard = self.lock();
        let state = &mut *guard;
        for Observed { line, scan } in batch.drain(..) {
            let pending = Pending {
                line,
                scan,
                read_at,
                timestamp_us,
            };
            if state.dispatcher.is_none() {
                count(state, direction);
            } else if !state.held[this].is_empty() {
                state.held[this].push_back(pending);
                if state.held[this].is_full() {
                    self.release(state, this, read_at, Duration::ZERO, &mut out);
                }
            } else if let Some(pending) = self.admit(state, this, pending, true, &mut out) {
                state.held[this].push_back(pending);
                state.held[this].since = read_at;
            }
        }
        state.observed[this] = upto;
        self.settle(state, Instant::now(), self.hold_limit, &mut out);
        let wake_timer = self.flush(state, out);
        drop(guard);
        if wake_timer {
            self.holding.notify_one();
        }
    }

    /// Numbers `pending`, pairs it and puts it in `out`; or gives it back when it is a response
    /// whose request is not registered but may still be by the other side (and `may_wait`).
    fn admit(
        &self,
        state: &mut State,
        this: usize,
        pending: Pending,
        may_wait: bool,
        out: &mut Outbox,
    ) -> Option<Pending> {
        let direction = SIDES[this];
        if may_wait && pending.scan.kind == MessageKind::RESPONSE {
            if let Some(id) = pending.id() {
                if !state.correlator.answers(direction, &id)
                    && self.may_register(state, 1 - this, &pending)
                {
                    return Some(pending);
                }
            }
        }
        // A progress notification names a request the other side sent, which that side may not
        // have registered yet, exactly as a response may: it waits the same way, so that it
        // carries its request's correlation. (A cancellation names a request of its own side,
        // registered before it in this pump's order.)
        if may_wait && pending.scan.kind == MessageKind::NOTIFICATION {
            if let Some(token) = pending.key(&pending.scan.progress) {
                if state
                    .correlator
                    .progress(direction, token.clone())
                    .is_none()
                    && (state.observed[1 - this] < self.forwarded[1 - this].load(Ordering::Acquire)
                        || state.held[1 - this].has_progress_token(&token))
                {
                    return Some(pending);
                }
            }
        }
        let numbered = self.number(
            state,
            direction,
            &pending.line,
            &pending.scan,
            pending.read_at,
        );
        let Pending {
            line,
            scan,
            timestamp_us,
            ..
        } = pending;
        out.push(Envelope {
            seq: numbered.seq,
            direction,
            kind: scan.kind,
            is_error: scan.is_error,
            line,
            id: scan.id,
            method: scan.method,
            correlation: numbered.correlation,
            timestamp_us,
            latency_us: numbered.latency_us,
        });
        None
    }

    /// Gives `line` its sequence number and correlation, registering a request and pairing a
    /// response.
    fn number(
        &self,
        state: &mut State,
        direction: Direction,
        line: &[u8],
        scan: &Scan,
        read_at: Instant,
    ) -> Numbered {
        let seq = state.next_seq;
        let key = |range: &Option<std::ops::Range<usize>>| {
            range.clone().and_then(|r| line.get(r)).map(IdKey::from_raw)
        };
        let mut numbered = Numbered {
            seq,
            correlation: None,
            latency_us: None,
            info: None,
        };
        match scan.kind {
            MessageKind::REQUEST => {
                if let Some(id) = key(&scan.id) {
                    let info = self
                        .keep_requests
                        .then(|| Arc::new(request_info(line, scan)));
                    numbered.info = info.clone();
                    let new = NewRequest {
                        progress_token: key(&scan.progress),
                        info,
                    };
                    numbered.correlation =
                        Some(state.correlator.request(direction, id, seq, read_at, new));
                }
            }
            MessageKind::RESPONSE => {
                if let Some(id) = key(&scan.id) {
                    if let Some(answered) = state.correlator.response(direction, id, read_at) {
                        numbered.correlation = Some(answered.correlation);
                        numbered.latency_us =
                            Some(u64::try_from(answered.latency.as_micros()).unwrap_or(u64::MAX));
                        numbered.info = answered.info;
                    }
                }
            }
            MessageKind::NOTIFICATION => {
                numbered.correlation = match (key(&scan.cancels), key(&scan.progress)) {
                    (Some(id), _) => state.correlator.cancel(direction, id),
                    (None, Some(token)) => state.correlator.progress(direction, token),
                    (None, None) => None,
                };
                if self.keep_requests {
                    numbered.info = Some(Arc::new(request_info(line, scan)));
                }
            }
            _ => {}
        }
        state.next_seq += 1;
        count(state, direction);
        numbered
    }

    /// Numbers and correlates one line of an intercepted direction before it is forwarded: its
    /// requests are registered before the peer can answer them, so nothing is ever held. Hand
    /// what was forwarded to the observers with [`Session::deliver`].
    pub(crate) fn admit_now(
        &self,
        direction: Direction,
        line: &[u8],
        scan: &Scan,
        read_at: Instant,
    ) -> Numbered {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        self.number(&mut state, direction, line, scan, read_at)
    }

    /// Hands the observers an already numbered line (see [`Session::admit_now`]).
    pub(crate) fn deliver(&self, envelope: Envelope) {
        crate::telemetry::forwarded_one(&envelope);
        if !self.observed {
            return;
        }
        let state = self.lock();
        if let Some(dispatcher) = &state.dispatcher {
            dispatcher.send(Item::One(envelope), &self.closing);
        }
    }

    /// Whether the side at index `side` may still register the request `response` answers: it
    /// is in the middle of a chunk it forwarded, or holds such a request back itself.
    fn may_register(&self, state: &State, side: usize, response: &Pending) -> bool {
        state.observed[side] < self.forwarded[side].load(Ordering::Acquire)
            || response
                .id()
                .is_some_and(|id| state.held[side].has_request(&id))
    }

    /// Releases what can go of both sides' held lines (those held longer than `limit` go
    /// unpaired), until nothing moves.
    fn settle(&self, state: &mut State, now: Instant, limit: Duration, out: &mut Outbox) {
        loop {
            let mut moved = false;
            for this in 0..2 {
                moved |= self.release(state, this, now, limit, out);
            }
            if !moved {
                return;
            }
        }
    }

    /// Releases the held lines of side `this` in order, up to the first response that still has
    /// to wait; returns whether any line went.
    fn release(
        &self,
        state: &mut State,
        this: usize,
        now: Instant,
        limit: Duration,
        out: &mut Outbox,
    ) -> bool {
        let mut moved = false;
        let mut since = state.held[this].since;
        while let Some(pending) = state.held[this].pop_front() {
            let may_wait = now.saturating_duration_since(since) < limit;
            if let Some(pending) = self.admit(state, this, pending, may_wait, out) {
                state.held[this].push_front(pending);
                state.held[this].since = since;
                break;
            }
            moved = true;
            // A response further back that has to wait starts its own wait now.
            since = now;
        }
        moved
    }

    /// Queues what `out` holds; returns whether the timer must be woken for a new hold.
    fn flush(&self, state: &mut State, out: Outbox) -> bool {
        if let (Some(dispatcher), Some(item)) = (&state.dispatcher, out.into_item()) {
            crate::telemetry::forwarded(&item);
            dispatcher.send(item, &self.closing);
        }
        let holding = state.held.iter().any(|hold| !hold.is_empty());
        let wake = holding && !state.timer_armed;
        state.timer_armed |= holding;
        wake
    }

    /// Releases the responses held longer than the limit; returns when the next one would be due,
    /// or `None` (and disarms the timer) when nothing is held any more.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut out = Outbox::Empty;
        let mut state = self.lock();
        self.settle(&mut state, now, self.hold_limit, &mut out);
        self.flush(&mut state, out);
        let due = state
            .held
            .iter()
            .filter(|hold| !hold.is_empty())
            .map(|hold| hold.since + self.hold_limit)
            .min();
        state.timer_armed = due.is_some();
        due
    }

    /// Releases held responses whose limit passed while both pumps are idle: run for the whole
    /// session as a task of km's runtime. It sleeps until a hold begins.
    ///
    /// Releasing hands lines to the plugins, which may wait (up to the stall limit, 10 s) for a
    /// lossless plugin's full queue: that wait runs in `block_in_place`, which hands this worker's
    /// other tasks to another thread first. Run in place, it held them all: among them the
    /// connection task of the API request the lossless plugin itself was waiting for (a task a
    /// worker is about to run cannot be stolen by the other), so plugin and relay waited for each
    /// other until the stall limit gave up on the plugin (compliance-reporting's checkpoints in
    /// km-bench's small-mix floods: "has taken none for 10s", and most of the flood dropped).
    pub(crate) async fn expire_holds(&self) {
        loop {
            self.holding.notified().await;
            while let Some(due) = tokio::task::block_in_place(|| self.expire(Instant::now())) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }

    /// The stream is over: every held line goes to the plugins now, unpaired if its request
    /// never came. Returns the line counts.
    pub(crate) fn finish_pairing(&self) -> Counts {
        let mut out = Outbox::Empty;
        let mut state = self.lock();
        self.settle(&mut state, Instant::now(), Duration::ZERO, &mut out);
        self.flush(&mut state, out);
        state.counts
    }

    /// Sends a stream event to every plugin.
    pub(crate) fn event(&self, kind: StreamEventKind, data: serde_json::Value) {
        let event = StreamEvent {
            kind,
            timestamp_ms: now_ms(),
            data: data.to_string().into(),
        };
        self.send(Item::Event(Arc::new(event)));
    }

    /// Sends a stream event to the plugin named `plugin` only.
    pub(crate) fn event_for(&self, plugin: &str, kind: StreamEventKind, data: serde_json::Value) {
        let event = StreamEvent {
            kind,
            timestamp_ms: now_ms(),
            data: data.to_string().into(),
        };
        let state = self.lock();
        if let Some(dispatcher) = &state.dispatcher {
            dispatcher.send_only(Item::Event(Arc::new(event)), plugin, &self.closing);
        }
    }

    /// Sends a host event (`data` has its `event`: refused, disabled, installed, ...).
    pub(crate) fn host_event(&self, data: serde_json::Value) {
        self.event(StreamEventKind::HOST, data);
    }

    /// Reports a relay error: a stream `error` event and `handle_error`.
    pub(crate) fn error(&self, kind: ErrorKind, context: &str, error: &str) {
        self.event(
            StreamEventKind::ERROR,
            serde_json::json!({ "error": error, "context": context }),
        );
        self.send(Item::Error(Arc::new(PluginError::new(
            kind,
            format!("{context}: {error}"),
        ))));
    }

    fn send(&self, item: Item) {
        let state = self.lock();
        if let Some(dispatcher) = &state.dispatcher {
            dispatcher.send(item, &self.closing);
        }
    }

    /// Ends the session: what is still held goes to the plugins, then no more messages reach
    /// them, pending requests are forgotten, and the queues close (the workers then drain them).
    /// Returns the line counts.
    pub(crate) fn close(&self) -> Counts {
        self.stop_waiting();
        self.finish_pairing();
        self.closing.store(true, Ordering::Relaxed);
        let mut state = self.lock();
        state.correlator.clear();
        state.dispatcher = None;
        // The queues close when the last `Arc` goes: at once, or when an event being sent right
        // now is through (that send does not wait).
        *self
            .event_sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        state.counts
    }

    /// From now on no send waits for room (a lossless plugin that stopped taking messages can no
    /// longer hold a pump, or the session's lock, at the end of the session).
    pub(crate) fn stop_waiting(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// How often pumps have handed lines over so far (without taking the lock).
    pub(crate) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether a pump is waiting right now for a lossless plugin to take messages (it is slow,
    /// not stuck: one that takes nothing stops holding the pump after the stall limit).
    pub(crate) fn held_back(&self) -> bool {
        self.held_back.load(Ordering::Relaxed) > 0
    }

    /// The line counts so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> Counts {
        self.lock().counts
    }
}

impl crate::events::EventSink for Session {
    fn plugin_event(&self, event: crate::events::PluginEvent) {
        let data = serde_json::json!({
            "plugin": &*event.plugin,
            "kind": event.kind,
            "data": event.data,
        });
        let event_out = StreamEvent {
            kind: StreamEventKind::PLUGIN,
            timestamp_ms: event.timestamp_ms,
            data: data.to_string().into(),
        };
        // Not under the state's lock: see `event_sink`.
        let dispatcher = self
            .event_sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(dispatcher) = dispatcher {
            dispatcher.send_except(
                Item::Event(Arc::new(event_out)),
                Some(&event.plugin),
                &self.closing,
            );
        }
    }
}

fn count(state: &mut State, direction: Direction) {
    match direction {
        Direction::Request => state.counts.client_to_server += 1,
        Direction::Response => state.counts.server_to_client += 1,
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitor::banner::Notices;
    use crate::monitor::dispatch;
    use crate::monitor::jsonrpc;
    use crate::monitor::testing::{lines, probe, Mode};

    fn observe(session: &Session, direction: Direction, line: &str) {
        let line = Bytes::copy_from_slice(line.as_bytes());
        let scan = jsonrpc::scan(&line);
        session.observe(
            direction,
            &mut vec![Observed { line, scan }],
            Instant::now(),
            now_us(),
            0,
        );
    }

    /// A lossless plugin that emits an event while the pump waits for room in its queue (the
    /// pump holds the session's lock meanwhile): the event must not wait for that lock, or the
    /// plugin's worker and the pump wait for each other until the stall limit gives up on the
    /// plugin, which then misses messages.
    #[test]
    fn a_lossless_plugin_emitting_while_the_pump_waits_for_it_misses_nothing() {
        let emit = crate::monitor::testing::Emit::default();
        let (plugin, log) = crate::monitor::testing::emitting_probe(
            Mode::Slow(Duration::from_millis(1)),
            emit.clone(),
        );
        let (dispatcher, workers) = dispatch::start(
            &crate::runtime::for_tests(),
            vec![plugin],
            2,
            true,
            Notices::new(true, 0),
        );
        let session = Session::new(dispatcher);
        let sink: Arc<dyn crate::events::EventSink> = session.clone();
        assert!(emit.set(sink).is_ok());
        let count = 40;
        for i in 0..count {
            observe(
                &session,
                Direction::Request,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{i}}}}}"#
                ),
            );
        }
        workers.set_end(dispatch::EndOfStream {
            data: serde_json::Map::new(),
            timestamp_ms: 0,
        });
        session.close();
        workers.finish(Duration::from_secs(10), Duration::from_secs(2));
        let seen = lines(&log);
        let handled = seen
            .iter()
            .filter(|l| l.contains("notifications/message"))
            .count();
        let gaps: Vec<&String> = seen.iter().filter(|l| l.starts_with("event gap")).collect();
        assert_eq!(handled, count, "messages missed, gaps: {gaps:?}");
        assert!(gaps.is_empty(), "{gaps:?}");
    }

    #[test]
    fn plugins_see_numbered_correlated_messages() {
        use Direction::{Request as C2S, Response as S2C};
        let (plugin, log) = probe(Mode::Record);
        let (dispatcher, workers) = dispatch::start(
            &crate::runtime::for_tests(),
            vec![plugin],
            64,
            false,
            Notices::new(true, 0),
        );
        let session = Session::new(dispatcher);
        observe(
            &session,
            C2S,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
        );
        observe(
            &session,
            S2C,
            r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#,
        );
        observe(
            &session,
            C2S,
            r#"{"jsonrpc":"2.0","id":1,"result":{"role":"assistant"}}"#,
        );
        observe(
            &session,
            S2C,
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
        );
        observe(
            &session,
            C2S,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call"}"#,
        );
        observe(
            &session,
            C2S,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"x"}}"#,
        );
        observe(&session, S2C, r#"{"jsonrpc":"2.0","id":"x","result":{}}"#);
        observe(&session, S2C, "not json");
        assert_eq!(
            session.counts(),
            Counts {
                client_to_server: 4,
                server_to_client: 4
            }
        );
        workers.set_end(dispatch::EndOfStream {
            data: serde_json::Map::new(),
            timestamp_ms: 0,
        });
        session.close();
        workers.finish(Duration::from_secs(2), Duration::from_secs(2));
        let seen = lines(&log);
        let expect = [
            "1 request request id=1 method=tools/call corr=c1 ",
            "2 response request id=1 method=sampling/createMessage corr=s2 ",
            "3 request response id=1 method= corr=s2 ",
            "4 response response id=1 method= corr=c1 ",
            "5 request request id=\"x\" method=tools/call corr=c5 ",
            "6 request notification id= method=notifications/cancelled corr=c5 ",
            "7 response response id=\"x\" method= corr= ",
            "8 response non-json id= method= corr= ",
        ];
        for (got, want) in seen.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        assert!(seen[2].ends_with(" latency") && seen[3].ends_with(" latency"));
        assert!(seen[8].starts_with("event end"), "{seen:?}");
    }
}

#[cfg(test)]
mod holds {
    use std::time::Duration;

    use super::*;
    use crate::monitor::banner::Notices;
    use crate::monitor::dispatch::Workers;
    use crate::monitor::testing::{lines, probe, Log, Mode};
    use crate::monitor::{dispatch, jsonrpc};

    use Direction::{Request as C2S, Response as S2C};

    struct Harness {
        session: Arc<Session>,
        workers: Workers,
        log: Log,
    }

    fn harness(hold_limit: Duration) -> Harness {
        let (plugin, log) = probe(Mode::Record);
        let (dispatcher, workers) = dispatch::start(
            &crate::runtime::for_tests(),
            vec![plugin],
            64,
            false,
            Notices::new(true, 0),
        );
        Harness {
            session: Session::with_hold_limit(dispatcher, hold_limit),
            workers,
            log,
        }
    }

    fn batch(lines: &[&str]) -> Vec<Observed> {
        lines
            .iter()
            .map(|line| {
                let line = Bytes::copy_from_slice(line.as_bytes());
                let scan = jsonrpc::scan(&line);
                Observed { line, scan }
            })
            .collect()
    }

    /// Lines of one chunk of `direction`, after which its pump has framed up to byte `upto`.
    fn chunk(session: &Session, direction: Direction, lines: &[&str], upto: u64) {
        let mut lines = batch(lines);
        session.observe(direction, &mut lines, Instant::now(), now_us(), upto);
    }

    impl Harness {
        /// What the plugin saw, without the end of the session.
        fn seen(self) -> Vec<String> {
            self.session.close();
            self.workers
                .finish(Duration::from_secs(5), Duration::from_secs(5));
            lines(&self.log)
                .into_iter()
                .filter(|l| l != "shutdown")
                .collect()
        }
    }

    fn expect(seen: &[String], want: &[&str]) {
        assert_eq!(seen.len(), want.len(), "{seen:#?}");
        for (got, want) in seen.iter().zip(want) {
            assert!(
                got.starts_with(want),
                "got {got:?}, want {want:?}; all: {seen:#?}"
            );
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_progress_notification_that_overtakes_its_request_is_held_then_correlated() {
        let h = harness(LONG);
        // The client pump has forwarded a request asking for progress but not yet framed it;
        // the server's progress for it comes first.
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            S2C,
            &[
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok","progress":1}}"#,
            ],
            80,
        );
        assert_eq!(h.session.counts().server_to_client, 0, "held, not dropped");
        chunk(
            &h.session,
            C2S,
            &[
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"progressToken":"tok"}}}"#,
            ],
            100,
        );
        expect(
            &h.seen(),
            &[
                "1 request request id=7 method=tools/call corr=c1 ",
                "2 response notification id= method=notifications/progress corr=c1 ",
            ],
        );
    }

    #[test]
    fn a_response_that_overtakes_its_request_is_held_then_paired() {
        let h = harness(LONG);
        // The client pump has forwarded a request but not yet framed it; the server answers.
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            S2C,
            &[
                r#"{"jsonrpc":"2.0","id":9,"result":{}}"#,
                r#"{"jsonrpc":"2.0","method":"notifications/message"}"#,
            ],
            80,
        );
        assert_eq!(h.session.counts().server_to_client, 0, "held, not dropped");
        chunk(
            &h.session,
            C2S,
            &[r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#],
            100,
        );
        expect(
            &h.seen(),
            &[
                "1 request request id=9 method=ping corr=c1 ",
                "2 response response id=9 method= corr=c1 ",
                "3 response notification ",
            ],
        );
    }

    #[test]
    fn the_race_between_real_threads_pairs() {
        let h = harness(LONG);
        h.session.forwarding(C2S, 100);
        let client = {
            let session = h.session.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(300));
                chunk(
                    &session,
                    C2S,
                    &[r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#],
                    100,
                );
            })
        };
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":9,"result":{}}"#],
            40,
        );
        client.join().expect("the client pump");
        let seen = h.seen();
        expect(
            &seen,
            &[
                "1 request request id=9 method=ping corr=c1",
                "2 response response id=9 method= corr=c1",
            ],
        );
        assert!(seen[1].ends_with(" latency"), "{seen:?}");
    }

    #[test]
    fn a_response_nobody_asked_for_goes_unpaired_once_the_other_side_caught_up() {
        let h = harness(LONG);
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":5,"result":{}}"#, "x"],
            50,
        );
        // The client's chunk holds no request 5.
        chunk(
            &h.session,
            C2S,
            &[r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#],
            100,
        );
        expect(
            &h.seen(),
            &[
                "1 request notification ",
                "2 response response id=5 method= corr= ",
                "3 response non-json ",
            ],
        );
    }

    #[test]
    fn a_chunk_without_a_complete_line_still_releases() {
        let h = harness(LONG);
        h.session.forwarding(C2S, 10);
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":5,"result":{}}"#],
            50,
        );
        assert_eq!(h.session.counts().server_to_client, 0);
        chunk(&h.session, C2S, &[], 10);
        assert_eq!(h.session.counts().server_to_client, 1);
    }

    /// Each side answers a request of the other while its own request is held: the held lines
    /// come out in the only order that is possible (each response after its request).
    #[test]
    fn crossing_holds_resolve_in_causal_order() {
        let h = harness(LONG);
        h.session.forwarding(S2C, 200);
        // The client answers the server's request "s" (not framed yet), then asks request 2.
        chunk(
            &h.session,
            C2S,
            &[
                r#"{"jsonrpc":"2.0","id":"s","result":{}}"#,
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            ],
            100,
        );
        // The server's chunk: its request "s", then its answer to request 2 (held by the client).
        chunk(
            &h.session,
            S2C,
            &[
                r#"{"jsonrpc":"2.0","id":"s","method":"roots/list"}"#,
                r#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
            ],
            200,
        );
        expect(
            &h.seen(),
            &[
                "1 response request id=\"s\" method=roots/list corr=s1 ",
                "2 request response id=\"s\" method= corr=s1 ",
                "3 request request id=2 method=tools/list corr=c3 ",
                "4 response response id=2 method= corr=c3 ",
            ],
        );
    }

    /// Both sides hold a response nobody asked for: neither waits for the other.
    #[test]
    fn unanswerable_holds_on_both_sides_do_not_wait_for_each_other() {
        let h = harness(LONG);
        h.session.forwarding(S2C, 100);
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            C2S,
            &[r#"{"jsonrpc":"2.0","id":77,"result":{}}"#],
            100,
        );
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":88,"result":{}}"#],
            100,
        );
        assert_eq!(
            h.session.counts(),
            Counts {
                client_to_server: 1,
                server_to_client: 1
            }
        );
    }

    #[test]
    fn a_hold_ends_at_its_limit_even_if_the_other_side_never_catches_up() {
        let h = harness(Duration::from_millis(10));
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":1,"result":{}}"#],
            50,
        );
        let soon = Instant::now();
        assert!(h.session.expire(soon).is_some(), "still held");
        assert_eq!(h.session.counts().server_to_client, 0);
        assert_eq!(h.session.expire(soon + Duration::from_millis(11)), None);
        assert_eq!(h.session.counts().server_to_client, 1);
        chunk(
            &h.session,
            C2S,
            &[r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#],
            100,
        );
        expect(
            &h.seen(),
            &[
                "1 response response id=1 method= corr= ",
                "2 request request id=1 method=ping corr=c2 ",
            ],
        );
    }

    #[test]
    fn the_timer_releases_a_hold_while_both_pumps_are_idle() {
        let h = harness(Duration::from_millis(20));
        let session = h.session.clone();
        // As in a session: the timer is a task of km's runtime.
        let timer = crate::runtime::for_tests().spawn(async move { session.expire_holds().await });
        for round in 0..2 {
            h.session.forwarding(C2S, 100);
            chunk(
                &h.session,
                S2C,
                &[r#"{"jsonrpc":"2.0","id":1,"result":{}}"#],
                50,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while h.session.counts().server_to_client <= round && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                h.session.counts().server_to_client,
                round + 1,
                "round {round}"
            );
        }
        timer.abort();
        let _ = h.seen();
    }

    #[test]
    fn a_hold_is_bounded() {
        let h = harness(LONG);
        h.session.forwarding(C2S, 100);
        let mut lines = vec![r#"{"jsonrpc":"2.0","id":1,"result":{}}"#];
        lines.extend(std::iter::repeat_n("x", HOLD_LINES));
        chunk(&h.session, S2C, &lines, 50);
        assert_eq!(
            h.session.counts().server_to_client,
            HOLD_LINES as u64 + 1,
            "past the bound, the hold is given up"
        );
    }

    #[test]
    fn the_end_of_the_stream_releases_what_is_held() {
        let h = harness(LONG);
        h.session.forwarding(C2S, 100);
        chunk(
            &h.session,
            S2C,
            &[r#"{"jsonrpc":"2.0","id":1,"result":{}}"#],
            50,
        );
        assert_eq!(h.session.finish_pairing().server_to_client, 1);
        expect(&h.seen(), &["1 response response id=1 method= corr= "]);
    }
}

/// Throughput of the whole observed path (framing, classifying, correlating, queueing, calling
/// a no-op plugin). Run with
/// `cargo test --release -p km-cli --lib -- --ignored --nocapture dispatch_throughput`.
#[cfg(test)]
mod throughput {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::monitor::banner::Notices;
    use crate::monitor::frame::{Frame, Framer, CHUNK};
    use crate::monitor::testing::{probe, Mode};
    use crate::monitor::{dispatch, jsonrpc};

    #[test]
    #[ignore = "a measurement, not a check; run in release"]
    fn dispatch_throughput() {
        const N: usize = 2_000_000;
        // Requests from the client, and the server's responses to them.
        let mut requests = Vec::with_capacity(N * 50);
        let mut responses = Vec::with_capacity(N * 50);
        for i in 0..N / 2 {
            requests.extend_from_slice(format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\"}}}}\n").as_bytes());
            responses.extend_from_slice(
                format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"result\":{{\"content\":[]}}}}\n")
                    .as_bytes(),
            );
        }
        let (plugin, _) = probe(Mode::Noop);
        let (dispatcher, workers) = dispatch::start(
            &crate::runtime::for_tests(),
            vec![plugin],
            dispatch::QUEUE_CAPACITY,
            true,
            Notices::new(true, 0),
        );
        let states = workers.states_for_tests();
        let session = Session::new(dispatcher);
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut framers = [Framer::new(), Framer::new()];
        let mut requests = requests.chunks(CHUNK);
        let mut responses = responses.chunks(CHUNK);
        loop {
            let next = [requests.next(), responses.next()];
            if next.iter().all(Option::is_none) {
                break;
            }
            for (side, chunk) in next.into_iter().enumerate() {
                let Some(chunk) = chunk else { continue };
                let framer = &mut framers[side];
                framer.push(chunk);
                while let Some(Frame::Line(line)) = framer.next_frame() {
                    let scan = jsonrpc::scan(&line);
                    batch.push(Observed { line, scan });
                }
                let direction = if side == 0 {
                    Direction::Request
                } else {
                    Direction::Response
                };
                session.observe(direction, &mut batch, Instant::now(), now_us(), 0);
            }
        }
        while states[0].handled.load(Ordering::Relaxed) < N as u64 {
            std::thread::sleep(Duration::from_micros(100));
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{N} messages in {elapsed:?}: {:.2} M msgs/s",
            N as f64 / elapsed.as_secs_f64() / 1e6
        );
        session.close();
        workers.finish(Duration::from_secs(2), Duration::from_secs(2));
    }
}
