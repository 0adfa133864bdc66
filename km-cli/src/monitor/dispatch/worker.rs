//! A plugin's worker thread: takes items off its queue and calls the plugin through the gateway,
//! one at a time; contains the plugin's failures (a panic disables it, other errors are reported,
//! rate-limited); at the end delivers the end-of-stream event and calls `shutdown`.
//!
//! An empty queue is polled every [`POLL`] for [`POLLS_BEFORE_BLOCKING`] looks before the worker
//! blocks on it. While messages flow, the worker is then never blocked when the relay queues
//! one, so queueing is a plain store, never a wake-up (measured in BENCHMARKS.md: waking the
//! worker for each message more than doubled the round-trip time km adds); the worker takes what
//! came in the meantime in one go. A quiet session costs nothing once the worker blocks.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::std_types::{ROption, RSlice, RStr};
use km_abi::{Message, StreamEvent, StreamEventKind};

use super::{EndOfStream, Envelope, Item, LaneState, Phase};
use crate::gateway::{LoadedPlugin, PluginFailure};
use crate::monitor::banner::Notices;
use crate::monitor::jsonrpc::{string_text, Text};

/// How long an idle worker sleeps before it looks at its queue again.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// How many times an idle worker looks before it blocks until the relay wakes it.
pub(super) const POLLS_BEFORE_BLOCKING: u32 = 20;

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) plugin: Arc<LoadedPlugin>,
    pub(super) state: Arc<LaneState>,
    pub(super) end: Arc<OnceLock<EndOfStream>>,
    pub(super) notices: Notices,
}

impl Worker {
    pub(super) fn run(self, rx: Receiver<Item>, progress: mpsc::Sender<(usize, Phase)>) {
        let mut correlation = String::new();
        let mut limiter = ErrorLimiter::default();
        let mut idle = 0;
        loop {
            let item = match rx.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if idle < POLLS_BEFORE_BLOCKING => {
                    idle += 1;
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(TryRecvError::Empty) => match rx.recv() {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            idle = 0;
            self.handle(&item, &mut correlation, &mut limiter);
            let (messages, bytes) = item.weight();
            self.state.release(messages, bytes);
        }
        let _ = progress.send((self.index, Phase::Drained));
        // Messages missed since the last gap event: said before the end.
        let missed = self.state.gap.swap(0, Ordering::Relaxed);
        if missed > 0 && !self.state.disabled.load(Ordering::Relaxed) {
            let gap = StreamEvent {
                kind: StreamEventKind::GAP,
                timestamp_ms: crate::monitor::now_ms(),
                data: format!("{{\"missed\":{missed}}}").into(),
            };
            if let Err(failure) = self.plugin.handle_stream_event(&gap) {
                self.failed(&failure, &mut limiter);
            }
        }
        // What a premium plugin held before its first authentication is recorded or let go by
        // the API's answer, not by a race with the end of a short session (see
        // `Workers::finish`, which waits as long).
        self.plugin
            .wait_for_first_authentication(std::time::Instant::now() + super::FIRST_AUTH_LIMIT);
        if !self.state.disabled.load(Ordering::Relaxed) {
            if let Some(end) = self.end.get() {
                let mut data = end.data.clone();
                data.insert(
                    "drops".into(),
                    self.state.drops.load(Ordering::Relaxed).into(),
                );
                let event = StreamEvent {
                    kind: StreamEventKind::END,
                    timestamp_ms: end.timestamp_ms,
                    data: serde_json::Value::Object(data).to_string().into(),
                };
                if let Err(failure) = self.plugin.handle_stream_event(&event) {
                    self.failed(&failure, &mut limiter);
                }
            }
        }
        if !self.state.disabled.load(Ordering::Relaxed) {
            if let Err(failure) = self.plugin.shutdown() {
                self.failed(&failure, &mut limiter);
            }
        }
        let _ = progress.send((self.index, Phase::Finished));
    }

    fn handle(&self, item: &Item, correlation: &mut String, limiter: &mut ErrorLimiter) {
        let skip = || {
            self.state.disabled.load(Ordering::Relaxed) || self.state.abort.load(Ordering::Relaxed)
        };
        let result = match item {
            Item::One(envelope) => {
                if !skip() {
                    if let Err(failure) = self.deliver(envelope, correlation) {
                        self.failed(&failure, limiter);
                    }
                    self.state.handled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Item::Messages(batch) => {
                for envelope in &batch.envelopes {
                    if skip() {
                        break;
                    }
                    if let Err(failure) = self.deliver(envelope, correlation) {
                        self.failed(&failure, limiter);
                    }
                    // Per message, not per batch: the lossless drain watches this for progress.
                    self.state.handled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            _ if skip() => Ok(()),
            Item::Event(event) => self.plugin.handle_stream_event(event),
            Item::Error(error) => self.plugin.handle_error(error),
        };
        if let Err(failure) = result {
            self.failed(&failure, limiter);
        }
    }

    fn deliver(&self, envelope: &Envelope, correlation: &mut String) -> Result<(), PluginFailure> {
        let line = &envelope.line[..];
        correlation.clear();
        if let Some(id) = envelope.correlation {
            id.write_to(correlation);
        }
        let id = envelope
            .id
            .clone()
            .and_then(|r| line.get(r))
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .unwrap_or("");
        let method = envelope
            .method
            .clone()
            .and_then(|r| line.get(r))
            .and_then(string_text);
        let method = match &method {
            Some(Text::Borrowed(s)) => s,
            Some(Text::Owned(s)) => s.as_str(),
            None => "",
        };
        let message = Message {
            seq: envelope.seq,
            direction: envelope.direction,
            kind: envelope.kind,
            is_error: envelope.is_error,
            data: RSlice::from_slice(line),
            correlation_id: RStr::from_str(correlation),
            id: RStr::from_str(id),
            method: RStr::from_str(method),
            timestamp_us: envelope.timestamp_us,
            latency_us: match envelope.latency_us {
                Some(us) => ROption::RSome(us),
                None => ROption::RNone,
            },
        };
        self.plugin.handle_message(&message)
    }

    fn failed(&self, failure: &PluginFailure, limiter: &mut ErrorLimiter) {
        if failure.is_panic() {
            self.state.disabled.store(true, Ordering::Relaxed);
            self.notices.error(&format!(
                "{failure}; plugin {} is disabled for this session",
                self.state.name
            ));
            return;
        }
        if let Some(suppressed) = limiter.admit(Instant::now()) {
            let more = if suppressed > 0 {
                format!(" ({suppressed} similar errors not shown)")
            } else {
                String::new()
            };
            self.notices.error(&format!("{failure}{more}"));
        }
    }
}

/// Lets the first few errors of a plugin through, then at most one per interval, counting the
/// ones it held back, so that a plugin failing on every message cannot flood stderr.
#[derive(Debug, Default)]
pub(super) struct ErrorLimiter {
    shown: u32,
    suppressed: u64,
    last: Option<Instant>,
}

impl ErrorLimiter {
    pub(super) const BURST: u32 = 5;
    pub(super) const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(suppressed since the last one shown)` when this error should be shown.
    pub(super) fn admit(&mut self, now: Instant) -> Option<u64> {
        let due = self.shown < Self::BURST
            || self
                .last
                .is_none_or(|last| now.duration_since(last) >= Self::INTERVAL);
        if !due {
            self.suppressed += 1;
            return None;
        }
        self.shown = self.shown.saturating_add(1);
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
