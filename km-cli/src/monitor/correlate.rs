//! Pairing requests with their responses.
//!
//! Both sides of an MCP session number their own requests (the client its `tools/call`s, the
//! server its `sampling/createMessage`s), so an id alone is ambiguous: the key of a pending request
//! is (the side that sent it, its id). A request gets a correlation id made of that side and its
//! sequence number (`c12`: the client's request seen as message 12); its response, and a
//! `notifications/cancelled` naming it, get the same one.
//!
//! Pending requests expire when they are answered, cancelled, older than the timeout, evicted
//! (oldest first) when the map is full, or when the stream ends, so memory stays bounded whatever
//! the peers send.
//!
//! A request that asks for progress (`params._meta.progressToken`) also registers its token, so
//! that the `notifications/progress` the other side sends for it carry its correlation id; the
//! token goes when the request does. When interceptors need it, a request also keeps what it was
//! ([`RequestInfo`]: method and target), so that its response can be judged knowing them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use km_abi::Direction;

/// How many requests may be pending at once before the oldest is forgotten. MCP sessions have a
/// handful in flight; a small map also stays in cache (measured: a 65,536-entry cap made a flood
/// of unanswered requests 40% slower, every insert evicting through cache misses).
pub(crate) const MAX_PENDING: usize = 4096;

/// How long a request may wait for its response before it is forgotten.
pub(crate) const PENDING_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The correlation id of one request: who sent it and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CorrelationId {
    /// The side that sent the request.
    pub(crate) sender: Direction,
    /// The request's sequence number in the session.
    pub(crate) seq: u64,
}

impl CorrelationId {
    /// Appends the id's text (`c12`, `s3`) to `out`, as [`fmt::Display`] writes it. Each plugin's
    /// worker writes one per message, so without the formatting machinery (itoa, the integer
    /// writer serde_json uses): through `write!` it was about 270 instructions a message and
    /// plugin, a third of what each further plugin cost the relay (BENCHMARKS.md, scaling).
    pub(crate) fn write_to(&self, out: &mut String) {
        out.push(self.side());
        out.push_str(itoa::Buffer::new().format(self.seq));
    }

    /// The letter of the side that sent the message: `c` for the client, `s` for the server.
    fn side(&self) -> char {
        match self.sender {
            Direction::Request => 'c',
            Direction::Response => 's',
        }
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        f.write_char(self.side())?;
        f.write_str(itoa::Buffer::new().format(self.seq))
    }
}

/// A JSON-RPC id as a map key. Integers (by far the most common) need no allocation; anything
/// else is kept as its raw JSON text, so `1` and `"1"` stay different as JSON-RPC requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    /// An integer id.
    Int(i64),
    /// Any other id, as raw JSON text.
    Raw(Box<[u8]>),
}

impl IdKey {
    /// The key of the raw id text `raw`.
    pub(crate) fn from_raw(raw: &[u8]) -> Self {
        parse_int(raw).map_or_else(|| IdKey::Raw(raw.into()), IdKey::Int)
    }
}

/// `raw` as an `i64` when it is a plain JSON integer (no fraction, exponent or leading zeros).
fn parse_int(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

/// A fast keyed hash for ids (the standard SipHash costs more than the rest of correlation).
/// Seeded per process from the standard library's random keys, so ids chosen to collide in one
/// run do not collide in another.
#[derive(Clone)]
struct IdHashState(u64);

impl IdHashState {
    fn new() -> Self {
        use std::hash::BuildHasher;
        IdHashState(std::collections::hash_map::RandomState::new().hash_one(0x6b6du64) | 1)
    }
}

impl std::hash::BuildHasher for IdHashState {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// The hasher of [`IdHashState`]: multiply-rotate over 8-byte words, finished by a mix.
struct IdHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let mut word = [0u8; 8];
        let rest = chunks.remainder();
        word[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(MULTIPLIER);
    }

    fn write_i64(&mut self, word: i64) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        let h = self.0 ^ (self.0 >> 31);
        h.wrapping_mul(MULTIPLIER) ^ (h >> 29)
    }
}

type Key = (Direction, IdKey);

/// What a request was, kept for its response: its method and what it acts on (a tool name, a
/// prompt name, a resource URI; empty when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub(crate) method: Box<str>,
    pub(crate) target: Box<str>,
}

/// What a response learns of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answered {
    pub(crate) correlation: CorrelationId,
    /// Since the request was seen.
    pub(crate) latency: Duration,
    /// The request's method and target, when they were kept.
    pub(crate) info: Option<Arc<RequestInfo>>,
}

/// A request as registered.
#[derive(Debug, Default)]
pub(crate) struct NewRequest {
    /// The raw progress token it asked progress for, if any.
    pub(crate) progress_token: Option<IdKey>,
    pub(crate) info: Option<Arc<RequestInfo>>,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    since: Instant,
    progress_token: Option<IdKey>,
    info: Option<Arc<RequestInfo>>,
}

/// The pending requests of one session.
#[derive(Debug)]
pub(crate) struct Correlator {
    pending: HashMap<Key, Pending, IdHashState>,
    /// Progress tokens of pending requests: (the side that sent the request, token) to its seq.
    progress: HashMap<Key, u64, IdHashState>,
    /// Keys in the order their requests arrived, for expiry and eviction. Entries whose request
    /// is gone (answered, replaced) are skipped lazily and compacted away.
    order: VecDeque<(u64, Key, Instant)>,
    cap: usize,
    timeout: Duration,
}

fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Request => Direction::Response,
        Direction::Response => Direction::Request,
    }
}

impl Correlator {
    /// A correlator with the default cap and timeout.
    pub(crate) fn new() -> Self {
        Self::with_limits(MAX_PENDING, PENDING_TIMEOUT)
    }

    /// A correlator with its own cap and timeout.
    pub(crate) fn with_limits(cap: usize, timeout: Duration) -> Self {
        Correlator {
            pending: HashMap::with_hasher(IdHashState::new()),
            progress: HashMap::with_hasher(IdHashState::new()),
            order: VecDeque::new(),
            cap: cap.max(1),
            timeout,
        }
    }

    /// A request with `id` travelling in `direction` was seen as message `seq`.
    pub(crate) fn request(
        &mut self,
        direction: Direction,
        id: IdKey,
        seq: u64,
        now: Instant,
        new: NewRequest,
    ) -> CorrelationId {
        self.expire(now);
        while self.pending.len() >= self.cap {
            if !self.evict_oldest() {
                break;
            }
        }
        let key = (direction, id);
        self.order.push_back((seq, key.clone(), now));
        if let Some(token) = &new.progress_token {
            self.progress.insert((direction, token.clone()), seq);
        }
        let replaced = self.pending.insert(
            key,
            Pending {
                seq,
                since: now,
                progress_token: new.progress_token,
                info: new.info,
            },
        );
        if let Some(old) = replaced {
            self.forget_token(direction, old);
        }
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order
                .retain(|(seq, key, _)| pending.get(key).is_some_and(|p| p.seq == *seq));
        }
        CorrelationId {
            sender: direction,
            seq,
        }
    }

    /// A response with `id` travelling in `direction`: the request it answers (sent the other
    /// way), if it was pending.
    pub(crate) fn response(
        &mut self,
        direction: Direction,
        id: IdKey,
        now: Instant,
    ) -> Option<Answered> {
        let sender = opposite(direction);
        let pending = self.pending.remove(&(sender, id))?;
        let answered = Answered {
            correlation: CorrelationId {
                sender,
                seq: pending.seq,
            },
            latency: now.saturating_duration_since(pending.since),
            info: pending.info.clone(),
        };
        self.forget_token(sender, pending);
        Some(answered)
    }

    /// Whether a response with `id` travelling in `direction` answers a pending request.
    pub(crate) fn answers(&self, direction: Direction, id: &IdKey) -> bool {
        self.pending
            .contains_key(&(opposite(direction), id.clone()))
    }

    /// A `notifications/cancelled` travelling in `direction` names request `id` (which the same
    /// side sent): that request expires; returns its correlation id if it was pending.
    pub(crate) fn cancel(&mut self, direction: Direction, id: IdKey) -> Option<CorrelationId> {
        let pending = self.pending.remove(&(direction, id))?;
        let seq = pending.seq;
        self.forget_token(direction, pending);
        Some(CorrelationId {
            sender: direction,
            seq,
        })
    }

    /// A `notifications/progress` travelling in `direction` with progress `token`: the pending
    /// request (sent the other way) that asked for progress with that token.
    pub(crate) fn progress(&self, direction: Direction, token: IdKey) -> Option<CorrelationId> {
        let sender = opposite(direction);
        let seq = *self.progress.get(&(sender, token))?;
        Some(CorrelationId { sender, seq })
    }

    fn forget_token(&mut self, sender: Direction, pending: Pending) {
        if let Some(token) = pending.progress_token {
            let key = (sender, token);
            if self.progress.get(&key) == Some(&pending.seq) {
                self.progress.remove(&key);
            }
        }
    }

    /// The stream ended: nothing is pending any more.
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.progress.clear();
        self.order.clear();
    }

    /// How many requests are pending.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the request `key` if it is still the one seen as message `seq`; whether it was.
    fn forget(&mut self, seq: u64, key: Key) -> bool {
        let sender = key.0;
        match self.pending.entry(key) {
            Entry::Occupied(entry) if entry.get().seq == seq => {
                let pending = entry.remove();
                self.forget_token(sender, pending);
                true
            }
            _ => false,
        }
    }

    /// Drops requests older than the timeout. The front of `order` is the oldest entry, live or
    /// stale, so its own time says whether anything has expired: no map lookup on the hot path.
    fn expire(&mut self, now: Instant) {
        while let Some((_, _, since)) = self.order.front() {
            if now.saturating_duration_since(*since) < self.timeout {
                break;
            }
            if let Some((seq, key, _)) = self.order.pop_front() {
                self.forget(seq, key);
            }
        }
    }

    /// Forgets the oldest pending request; `false` when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key, _)) = self.order.pop_front() {
            if self.forget(seq, key) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Request as C2S, Response as S2C};

    fn int(n: i64) -> IdKey {
        IdKey::Int(n)
    }

    #[test]
    fn a_correlation_id_is_written_as_its_side_and_sequence_number() {
        for seq in [0, 1, 9, 10, 99, 100, 123_456_789, u64::MAX] {
            for (sender, side) in [(C2S, "c"), (S2C, "s")] {
                let id = CorrelationId { sender, seq };
                let mut text = String::from("kept ");
                id.write_to(&mut text);
                assert_eq!(text, format!("kept {side}{seq}"));
                assert_eq!(id.to_string(), format!("{side}{seq}"));
            }
        }
    }

    #[test]
    fn response_pairs_with_request_of_the_other_side() {
        let mut c = Correlator::new();
        let t0 = Instant::now();
        let id = c.request(C2S, int(1), 5, t0, NewRequest::default());
        assert_eq!(id.to_string(), "c5");
        let answered = c
            .response(S2C, int(1), t0 + Duration::from_millis(3))
            .expect("pending");
        assert_eq!(
            (answered.correlation, answered.latency),
            (id, Duration::from_millis(3))
        );
        assert!(c.response(S2C, int(1), t0).is_none(), "answered once");
    }

    #[test]
    fn both_sides_number_their_own_requests() {
        let mut c = Correlator::new();
        let now = Instant::now();
        let client = c.request(C2S, int(1), 1, now, NewRequest::default());
        let server = c.request(S2C, int(1), 2, now, NewRequest::default());
        assert_eq!(server.to_string(), "s2");
        // The client answers the server's sampling request: travels client -> server.
        assert_eq!(
            c.response(C2S, int(1), now).map(|r| r.correlation),
            Some(server)
        );
        assert_eq!(
            c.response(S2C, int(1), now).map(|r| r.correlation),
            Some(client)
        );
    }

    #[test]
    fn string_and_number_ids_differ() {
        let mut c = Correlator::new();
        let now = Instant::now();
        c.request(
            C2S,
            IdKey::from_raw(b"\"1\""),
            1,
            now,
            NewRequest::default(),
        );
        assert!(c.response(S2C, IdKey::from_raw(b"1"), now).is_none());
        assert!(c.response(S2C, IdKey::from_raw(b"\"1\""), now).is_some());
        assert_eq!(IdKey::from_raw(b"-12"), int(-12));
        assert!(matches!(
            IdKey::from_raw(b"99999999999999999999999"),
            IdKey::Raw(_)
        ));
        assert!(matches!(IdKey::from_raw(b"1.0"), IdKey::Raw(_)));
        assert!(matches!(IdKey::from_raw(b"01"), IdKey::Raw(_)));
        assert!(matches!(IdKey::from_raw(b"-"), IdKey::Raw(_)));
        assert_eq!(IdKey::from_raw(b"0"), int(0));
        assert_eq!(IdKey::from_raw(b"-9223372036854775808"), int(i64::MIN));
        assert_eq!(IdKey::from_raw(b"9223372036854775807"), int(i64::MAX));
        assert!(matches!(
            IdKey::from_raw(b"9223372036854775808"),
            IdKey::Raw(_)
        ));
    }

    #[test]
    fn cancellation_names_and_expires_the_request() {
        let mut c = Correlator::new();
        let now = Instant::now();
        let id = c.request(C2S, int(4), 9, now, NewRequest::default());
        assert_eq!(
            c.cancel(S2C, int(4)),
            None,
            "the server cannot cancel the client's request"
        );
        assert_eq!(c.cancel(C2S, int(4)), Some(id));
        assert_eq!(c.len(), 0);
        assert!(c.response(S2C, int(4), now).is_none());
    }

    #[test]
    fn requests_time_out() {
        let mut c = Correlator::with_limits(100, Duration::from_secs(10));
        let t0 = Instant::now();
        c.request(C2S, int(1), 1, t0, NewRequest::default());
        c.request(
            C2S,
            int(2),
            2,
            t0 + Duration::from_secs(5),
            NewRequest::default(),
        );
        c.request(
            C2S,
            int(3),
            3,
            t0 + Duration::from_secs(11),
            NewRequest::default(),
        );
        assert_eq!(c.len(), 2);
        assert!(c.response(S2C, int(1), t0).is_none());
        assert!(c.response(S2C, int(2), t0).is_some());
    }

    #[test]
    fn the_map_is_capped_oldest_first() {
        let mut c = Correlator::with_limits(3, PENDING_TIMEOUT);
        let now = Instant::now();
        for i in 0..10 {
            c.request(C2S, int(i), i as u64, now, NewRequest::default());
        }
        assert_eq!(c.len(), 3);
        assert!(c.response(S2C, int(6), now).is_none());
        assert!(c.response(S2C, int(9), now).is_some());
    }

    #[test]
    fn bookkeeping_stays_bounded_when_responses_come_out_of_order() {
        let mut c = Correlator::new();
        let now = Instant::now();
        c.request(C2S, int(-1), 0, now, NewRequest::default()); // never answered: stays at the front
        for i in 0..100_000 {
            c.request(C2S, int(i), i as u64 + 1, now, NewRequest::default());
            c.response(S2C, int(i), now);
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() < 200, "order has {} entries", c.order.len());
        c.clear();
        assert_eq!((c.len(), c.order.len()), (0, 0));
    }

    #[test]
    fn progress_names_the_request_until_it_is_answered() {
        let mut c = Correlator::new();
        let now = Instant::now();
        let token = || Some(IdKey::from_raw(b"\"p1\""));
        let info = Arc::new(RequestInfo {
            method: "tools/call".into(),
            target: "slow".into(),
        });
        let id = c.request(
            C2S,
            int(7),
            3,
            now,
            NewRequest {
                progress_token: token(),
                info: Some(info.clone()),
            },
        );
        assert_eq!(c.progress(S2C, IdKey::from_raw(b"\"p1\"")), Some(id));
        assert_eq!(
            c.progress(C2S, IdKey::from_raw(b"\"p1\"")),
            None,
            "wrong side"
        );
        assert!(c.answers(S2C, &int(7)) && !c.answers(C2S, &int(7)));
        let answered = c.response(S2C, int(7), now).expect("pending");
        assert_eq!(answered.info, Some(info));
        assert_eq!(c.progress(S2C, IdKey::from_raw(b"\"p1\"")), None);
        // Evicted requests take their tokens with them.
        let mut c = Correlator::with_limits(1, PENDING_TIMEOUT);
        c.request(
            C2S,
            int(1),
            1,
            now,
            NewRequest {
                progress_token: token(),
                info: None,
            },
        );
        c.request(C2S, int(2), 2, now, NewRequest::default());
        assert_eq!(c.progress(S2C, IdKey::from_raw(b"\"p1\"")), None);
        assert!(c.progress.is_empty());
    }

    #[test]
    fn a_reused_id_replaces_the_old_request() {
        let mut c = Correlator::new();
        let now = Instant::now();
        c.request(C2S, int(1), 1, now, NewRequest::default());
        let second = c.request(C2S, int(1), 2, now, NewRequest::default());
        assert_eq!(
            c.response(S2C, int(1), now).map(|r| r.correlation),
            Some(second)
        );
        assert_eq!(c.len(), 0);
    }
}
