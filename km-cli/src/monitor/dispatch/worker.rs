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

use super::{Batch, EndOfStream, Envelope, Item, LaneState, Phase};
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
        let mut texts = Texts::default();
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
            self.handle(&item, &mut texts, &mut limiter);
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

    fn handle(&self, item: &Item, own: &mut Texts, limiter: &mut ErrorLimiter) {
        let skip = || {
            self.state.disabled.load(Ordering::Relaxed) || self.state.abort.load(Ordering::Relaxed)
        };
        let result = match item {
            Item::One(envelope) => {
                if !skip() {
                    if let Err(failure) = self.deliver(envelope, own.only(envelope)) {
                        self.failed(&failure, limiter);
                    }
                    self.state.handled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Item::Messages(batch) => {
                // The only holder (one plugin gets messages): no other worker would read them.
                let alone = Arc::strong_count(batch) == 1;
                let mut shared = None;
                for (i, envelope) in batch.envelopes.iter().enumerate() {
                    if skip() {
                        break;
                    }
                    let texts = if alone {
                        own.only(envelope)
                    } else {
                        shared
                            .get_or_insert_with(|| batch.texts.get_or_init(|| Texts::of(batch)))
                            .get(i)
                    };
                    if let Err(failure) = self.deliver(envelope, texts) {
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

    /// `handle_message` of `envelope`, whose [`Texts`] are `(correlation, id, method)`.
    fn deliver(
        &self,
        envelope: &Envelope,
        (correlation, id, method): (&str, &str, &str),
    ) -> Result<(), PluginFailure> {
        let message = Message {
            seq: envelope.seq,
            direction: envelope.direction,
            kind: envelope.kind,
            is_error: envelope.is_error,
            data: RSlice::from_slice(&envelope.line[..]),
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

/// What `handle_message` is given of a line beside its bytes, as text: the correlation id
/// (formatted), the raw id, and the method (decoded from its JSON string).
///
/// Every worker needs the same texts for the same line. Those of a [`Batch`] (a read that held
/// several lines: a busy stream) are made once, by the first worker that delivers the batch, into
/// one string the batch keeps, and the other workers slice it: made by each worker, the UTF-8
/// checks, the search for escapes and the formatting of the correlation id were the largest part
/// of what each further plugin cost (BENCHMARKS.md, "Retaken with the floors"). Not by the relay: the pump
/// thread is the one every message waits for. A read of one line ([`Item::One`], a quiet
/// session), and the lines of a batch that only one worker holds (one plugin gets messages), are
/// made by that worker into a buffer of its own, which needs no allocation.
#[derive(Debug, Default)]
pub(crate) struct Texts {
    text: String,
    /// Where each line's texts end in `text`: correlation id, id, method (each begins where the
    /// one before it ends).
    ends: Vec<[usize; 3]>,
}

impl Texts {
    fn of(batch: &Batch) -> Self {
        let mut texts = Texts {
            text: String::with_capacity(batch.envelopes.len() * 48),
            ends: Vec::with_capacity(batch.envelopes.len()),
        };
        for envelope in &batch.envelopes {
            texts.push(envelope);
        }
        texts
    }

    /// The texts of `envelope` alone, made in this buffer in place of what it held.
    fn only(&mut self, envelope: &Envelope) -> (&str, &str, &str) {
        self.text.clear();
        self.ends.clear();
        self.push(envelope);
        self.get(0)
    }

    /// Adds the texts of the next line. An id that is not UTF-8 and a method that is not a valid
    /// JSON string are given as empty.
    fn push(&mut self, envelope: &Envelope) {
        let line = &envelope.line[..];
        if let Some(id) = envelope.correlation {
            id.write_to(&mut self.text);
        }
        let correlation = self.text.len();
        let id = envelope
            .id
            .clone()
            .and_then(|r| line.get(r))
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .unwrap_or("");
        self.text.push_str(id);
        let id = self.text.len();
        match envelope
            .method
            .clone()
            .and_then(|r| line.get(r))
            .and_then(string_text)
        {
            Some(Text::Borrowed(s)) => self.text.push_str(s),
            Some(Text::Owned(s)) => self.text.push_str(&s),
            None => {}
        }
        self.ends.push([correlation, id, self.text.len()]);
    }

    /// The texts of line `i` (in the order they were pushed): correlation id, id, method.
    fn get(&self, i: usize) -> (&str, &str, &str) {
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before).map_or(0, |e| e[2]),
            None => 0,
        };
        let Some(&[correlation, id, method]) = self.ends.get(i) else {
            return ("", "", "");
        };
        // The ends were taken after whole strings were pushed: always on char boundaries.
        let text = |r: std::ops::Range<usize>| self.text.get(r).unwrap_or("");
        (
            text(start..correlation),
            text(correlation..id),
            text(id..method),
        )
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
