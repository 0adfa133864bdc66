//! The observed side of one monitored session: sequence numbers, correlation and the queues to
//! the plugins, shared by the two pumps.
//!
//! Each pump frames and classifies its lines on its own (no lock), then takes the session lock
//! once per chunk to number them, pair requests with responses and queue them. One lock keeps the
//! sequence numbers in the order the plugins receive them and lets a response find the request
//! the other pump registered. The lock is held only for that bookkeeping: queueing never blocks
//! (except with `--lossless`, where blocking is the point).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use km_abi::{Direction, ErrorKind, MessageKind, PluginError, StreamEvent, StreamEventKind};

use super::correlate::{CorrelationId, Correlator, IdKey};
use super::dispatch::{Batch, Dispatcher, Envelope, Item};
use super::jsonrpc::Scan;

/// A line a pump has framed and classified, waiting to be numbered.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) line: Bytes,
    pub(crate) scan: Scan,
}

/// How many lines went each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) client_to_server: u64,
    pub(crate) server_to_client: u64,
}

struct State {
    next_seq: u64,
    correlator: Correlator,
    dispatcher: Option<Dispatcher>,
    counts: Counts,
}

/// How long a response waits for the other pump to register its request (see `observe`).
const CATCH_UP: Duration = Duration::from_millis(2);

fn side(direction: Direction) -> usize {
    match direction {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Request => Direction::Response,
        Direction::Response => Direction::Request,
    }
}

fn count(state: &mut State, direction: Direction) {
    match direction {
        Direction::Request => state.counts.client_to_server += 1,
        Direction::Response => state.counts.server_to_client += 1,
    }
}

/// Shared by the pumps and the supervisor.
pub(crate) struct Session {
    state: Mutex<State>,
    /// Per pump (client to server, server to client): bytes handed to `write` so far, and bytes
    /// whose lines are numbered and queued. A response can only follow its request's forwarding,
    /// so a pump that is "behind" may hold the request a response is looking for.
    forwarded: [AtomicU64; 2],
    observed: [AtomicU64; 2],
    catch_up: Duration,
    /// Set when the session ends: a lossless send stops waiting.
    closing: AtomicBool,
}

impl Session {
    /// A session feeding `dispatcher`.
    pub(crate) fn new(dispatcher: Dispatcher) -> Arc<Self> {
        Self::with_catch_up(dispatcher, CATCH_UP)
    }

    /// A session whose responses wait up to `catch_up` for the other pump (tests use a long one,
    /// so that a busy machine cannot make them flaky).
    pub(crate) fn with_catch_up(dispatcher: Dispatcher, catch_up: Duration) -> Arc<Self> {
        Arc::new(Session {
            catch_up,
            state: Mutex::new(State {
                next_seq: 1,
                correlator: Correlator::new(),
                dispatcher: Some(dispatcher),
                counts: Counts::default(),
            }),
            closing: AtomicBool::new(false),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            observed: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not stop the relay.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers, correlates and queues the lines of one chunk (all read at `now`).
    pub(crate) fn observe(
        &self,
        direction: Direction,
        batch: &mut Vec<Observed>,
        now: Instant,
        timestamp_us: u64,
    ) {
        let other = side(opposite(direction));
        let mut waited = false;
        let mut guard = self.lock();
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut lines = batch.drain(..).peekable();
        while let Some(Observed { line, scan }) = lines.peek() {
            let state = &mut *guard;
            if state.dispatcher.is_none() {
                count(state, direction);
                lines.next();
                continue;
            }
            let key = |range: &Option<std::ops::Range<usize>>| {
                range.clone().and_then(|r| line.get(r)).map(IdKey::from_raw)
            };
            let seq = state.next_seq;
            let mut correlation: Option<CorrelationId> = None;
            let mut latency_us = None;
            match scan.kind {
                MessageKind::REQUEST => {
                    if let Some(id) = key(&scan.id) {
                        correlation = Some(state.correlator.request(direction, id, seq, now));
                    }
                }
                MessageKind::RESPONSE => {
                    match key(&scan.id).and_then(|id| state.correlator.response(direction, id, now))
                    {
                        Some((id, latency)) => {
                            correlation = Some(id);
                            latency_us =
                                Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                        }
                        None if !waited && self.behind(other) => {
                            // The request may have been forwarded by the other pump but not yet
                            // registered (forwarding comes first). Let it catch up, once per
                            // chunk, then look again; what is queued so far goes first, to keep
                            // the plugins' view in sequence order.
                            waited = true;
                            self.flush(state, &mut envelopes);
                            drop(guard);
                            self.wait_for(other, self.catch_up);
                            guard = self.lock();
                            continue;
                        }
                        None => {}
                    }
                }
                MessageKind::NOTIFICATION => {
                    correlation =
                        key(&scan.cancels).and_then(|id| state.correlator.cancel(direction, id));
                }
                _ => {}
            }
            let Some(Observed { line, scan }) = lines.next() else {
                break;
            };
            state.next_seq += 1;
            count(state, direction);
            envelopes.push(Envelope {
                seq,
                direction,
                kind: scan.kind,
                is_error: scan.is_error,
                line,
                id: scan.id,
                method: scan.method,
                correlation,
                timestamp_us,
                latency_us,
            });
        }
        self.flush(&mut guard, &mut envelopes);
    }

    /// Queues `envelopes` (leaving the vector empty) as one batch.
    fn flush(&self, state: &mut State, envelopes: &mut Vec<Envelope>) {
        if let (Some(dispatcher), false) = (&state.dispatcher, envelopes.is_empty()) {
            let batch = Batch::new(std::mem::take(envelopes));
            dispatcher.send(&Item::Messages(Arc::new(batch)), &self.closing);
        }
    }

    /// The pump of `direction` is about to forward everything up to byte `upto` of its stream.
    pub(crate) fn forwarding(&self, direction: Direction, upto: u64) {
        self.forwarded[side(direction)].store(upto, Ordering::Release);
    }

    /// The pump of `direction` has queued every complete line up to byte `upto`.
    pub(crate) fn caught_up(&self, direction: Direction, upto: u64) {
        self.observed[side(direction)].store(upto, Ordering::Release);
    }

    /// Whether the pump at index `side` has forwarded bytes it has not yet observed.
    fn behind(&self, side: usize) -> bool {
        self.observed[side].load(Ordering::Acquire) < self.forwarded[side].load(Ordering::Acquire)
    }

    /// Waits (briefly) until the pump at index `side` has observed what it had forwarded.
    fn wait_for(&self, side: usize, limit: Duration) {
        let target = self.forwarded[side].load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        while self.observed[side].load(Ordering::Acquire) < target && Instant::now() < deadline {
            std::thread::yield_now();
        }
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
            dispatcher.send(&item, &self.closing);
        }
    }

    /// Ends the session: no more messages reach the plugins, pending requests are forgotten, and
    /// the queues close (the workers then drain them). Returns the line counts.
    pub(crate) fn close(&self) -> Counts {
        self.closing.store(true, Ordering::Relaxed);
        let mut state = self.lock();
        state.correlator.clear();
        state.dispatcher = None;
        state.counts
    }

    /// The line counts so far.
    pub(crate) fn counts(&self) -> Counts {
        self.lock().counts
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
        );
    }

    #[test]
    fn plugins_see_numbered_correlated_messages() {
        use Direction::{Request as C2S, Response as S2C};
        let (plugin, log) = probe(Mode::Record);
        let (dispatcher, workers) = dispatch::start(vec![plugin], 64, false, Notices::new(true, 0));
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
mod race {
    use std::time::Duration;

    use super::*;
    use crate::monitor::banner::Notices;
    use crate::monitor::testing::{lines, probe, Mode};
    use crate::monitor::{dispatch, jsonrpc};

    fn observed(line: &str) -> Vec<Observed> {
        let line = Bytes::copy_from_slice(line.as_bytes());
        let scan = jsonrpc::scan(&line);
        vec![Observed { line, scan }]
    }

    /// Forwarding comes before registering: a fast server's response can reach the other pump
    /// before the request is registered. The response waits for the client pump to catch up.
    #[test]
    fn a_response_that_overtakes_its_request_still_pairs() {
        let (plugin, log) = probe(Mode::Record);
        let (dispatcher, workers) = dispatch::start(vec![plugin], 64, false, Notices::new(true, 0));
        let session = Session::with_catch_up(dispatcher, Duration::from_secs(5));
        // The client pump has forwarded the request but not yet observed it.
        session.forwarding(Direction::Request, 100);
        let client = {
            let session = session.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(300));
                let mut batch = observed(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#);
                session.observe(Direction::Request, &mut batch, Instant::now(), now_us());
                session.caught_up(Direction::Request, 100);
            })
        };
        let mut batch = observed(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#);
        session.observe(Direction::Response, &mut batch, Instant::now(), now_us());
        client.join().expect("the client pump");
        session.close();
        workers.finish(Duration::from_secs(2), Duration::from_secs(2));
        let seen = lines(&log);
        assert!(
            seen[0].starts_with("1 request request id=9 method=ping corr=c1"),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("2 response response id=9 method= corr=c1"),
            "{seen:?}"
        );
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
                session.observe(direction, &mut batch, Instant::now(), now_us());
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
