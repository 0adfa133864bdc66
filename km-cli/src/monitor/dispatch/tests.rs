//! Dispatch with in-process probe plugins: a slow or hung plugin never blocks the sender,
//! drops are counted, `--lossless` delivers everything, a panic disables the plugin, and the end
//! of the session reaches every plugin within the deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use km_abi::{Direction, MessageKind};

use super::*;
use crate::monitor::testing::{lines, probe, Mode};

/// One line, as a single-line read sends it.
fn envelope(seq: u64) -> Item {
    Item::One(one(seq))
}

fn batch(envelopes: Vec<Envelope>) -> Item {
    Item::Messages(Arc::new(Batch::new(envelopes)))
}

fn one(seq: u64) -> Envelope {
    Envelope {
        seq,
        direction: Direction::Request,
        kind: MessageKind::NON_JSON,
        is_error: false,
        line: Bytes::from(format!("line {seq}")),
        id: None,
        method: None,
        correlation: None,
        timestamp_us: 0,
        latency_us: None,
    }
}

fn end(workers: &Workers) {
    let mut data = serde_json::Map::new();
    data.insert("exit_code".into(), 0.into());
    workers.set_end(EndOfStream {
        data,
        timestamp_ms: 0,
    });
}

const QUIET: Notices = Notices::new(true, 0);
const SHORT: Duration = Duration::from_millis(300);

#[test]
fn a_hung_plugin_never_blocks_the_sender_and_its_drops_are_counted() {
    let (hung, _) = probe(Mode::Hang);
    let (healthy, healthy_log) = probe(Mode::Record);
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![hung, healthy],
        64,
        false,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    for seq in 1..=1000 {
        dispatcher.send(envelope(seq), &closing);
        if seq % 32 == 0 {
            // Let the healthy plugin catch up (however busy the machine); the hung one cannot.
            let healthy = &workers.states[1];
            let patience = Instant::now() + Duration::from_secs(30);
            while healthy.handled.load(Ordering::Relaxed) < seq && Instant::now() < patience {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let drops: Vec<u64> = workers
        .states
        .iter()
        .map(|s| s.drops.load(Ordering::Relaxed))
        .collect();
    // The hung plugin holds 64 messages: one in its call, the rest in its queue.
    assert_eq!(drops[0], 1000 - 64);
    assert_eq!(drops[1], 0, "the healthy plugin kept up");
    end(&workers);
    drop(dispatcher);
    let finishing = Instant::now();
    workers.finish(SHORT, SHORT);
    assert!(
        finishing.elapsed() < Duration::from_secs(1),
        "a hung plugin is abandoned at the deadline"
    );
    let seen = lines(&healthy_log);
    assert_eq!(seen.iter().filter(|l| l.contains("non-json")).count(), 1000);
    assert!(
        seen.iter()
            .any(|l| l.starts_with("event end") && l.contains("\"drops\":0")),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("shutdown"));
}

#[test]
fn lossless_waits_for_a_slow_plugin_instead_of_dropping() {
    let (slow, log) = probe(Mode::Slow(Duration::from_millis(1)));
    let (dispatcher, workers) = start(&crate::runtime::for_tests(), vec![slow], 4, true, QUIET);
    let closing = AtomicBool::new(false);
    for seq in 1..=200 {
        dispatcher.send(envelope(seq), &closing);
    }
    assert_eq!(workers.states[0].drops.load(Ordering::Relaxed), 0);
    end(&workers);
    drop(dispatcher);
    workers.finish(Duration::from_secs(5), SHORT);
    assert_eq!(
        lines(&log)
            .iter()
            .filter(|l| l.contains("non-json"))
            .count(),
        200
    );
}

#[test]
fn lossless_stops_waiting_when_the_session_closes() {
    let (hung, _) = probe(Mode::Hang);
    let (dispatcher, workers) = start(&crate::runtime::for_tests(), vec![hung], 1, true, QUIET);
    let closing = Arc::new(AtomicBool::new(false));
    dispatcher.send(envelope(1), &closing);
    let closer = {
        let closing = closing.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            closing.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    // The queue is full (the hung call holds its one message): this waits until closing.
    dispatcher.send(envelope(2), &closing);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(workers.states[0].drops.load(Ordering::Relaxed), 1);
    closer.join().expect("closer");
    drop(dispatcher);
    workers.finish(SHORT, SHORT);
}

/// The end of a session asks the gauge whether a pump is held back by a lossless plugin (and
/// so waits for it rather than taking the pause for the end of the server's output): it counts
/// a send while it waits for room, and nothing once the send is done.
#[test]
fn a_send_waiting_for_a_lossless_plugin_is_counted_while_it_waits() {
    let (hung, _) = probe(Mode::Hang);
    let (dispatcher, workers) = start(&crate::runtime::for_tests(), vec![hung], 1, true, QUIET);
    let gauge = dispatcher.held_back();
    let closing = AtomicBool::new(false);
    dispatcher.send(envelope(1), &closing);
    assert_eq!(gauge.load(Ordering::Relaxed), 0, "room was there: no wait");
    std::thread::scope(|s| {
        // The hung call holds the one message the queue has room for: this send waits.
        let waiting = s.spawn(|| dispatcher.send(envelope(2), &closing));
        let patience = Instant::now() + Duration::from_secs(30);
        while gauge.load(Ordering::Relaxed) == 0 && Instant::now() < patience {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            gauge.load(Ordering::Relaxed),
            1,
            "the waiting send is counted"
        );
        closing.store(true, Ordering::Relaxed);
        waiting.join().expect("the waiting send");
    });
    assert_eq!(gauge.load(Ordering::Relaxed), 0, "a finished send is not");
    drop(dispatcher);
    workers.finish(SHORT, SHORT);
}

#[test]
fn a_panicking_plugin_is_disabled_and_the_others_carry_on() {
    let (panicky, panicky_log) = probe(Mode::PanicAt(3));
    let (healthy, healthy_log) = probe(Mode::Record);
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![panicky, healthy],
        64,
        false,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    for seq in 1..=10 {
        dispatcher.send(envelope(seq), &closing);
    }
    end(&workers);
    drop(dispatcher);
    let states = workers.states.clone();
    workers.finish(SHORT, SHORT);
    assert!(states[0].disabled.load(Ordering::Relaxed));
    let seen = lines(&panicky_log);
    assert_eq!(
        seen.len(),
        2,
        "messages 1 and 2 only, no end event, no shutdown: {seen:?}"
    );
    assert_eq!(
        lines(&healthy_log)
            .iter()
            .filter(|l| l.contains("non-json"))
            .count(),
        10
    );
}

#[test]
fn ordinary_errors_do_not_disable_a_plugin() {
    let (failing, _) = probe(Mode::Fail);
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![failing],
        64,
        false,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    for seq in 1..=10 {
        dispatcher.send(envelope(seq), &closing);
    }
    end(&workers);
    drop(dispatcher);
    let states = workers.states.clone();
    workers.finish(SHORT, SHORT);
    assert!(!states[0].disabled.load(Ordering::Relaxed));
    assert_eq!(states[0].handled.load(Ordering::Relaxed), 10);
}

#[test]
fn a_slow_queue_is_cut_short_at_the_drain_deadline() {
    let (slow, log) = probe(Mode::Slow(Duration::from_millis(50)));
    let (dispatcher, workers) = start(&crate::runtime::for_tests(), vec![slow], 1000, false, QUIET);
    let closing = AtomicBool::new(false);
    for seq in 1..=1000 {
        dispatcher.send(envelope(seq), &closing);
    }
    end(&workers);
    drop(dispatcher);
    let started = Instant::now();
    workers.finish(SHORT, SHORT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    let seen = lines(&log);
    assert!(seen.len() < 100, "most of the queue was skipped");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("shutdown"),
        "end and shutdown still happen"
    );
}

#[test]
fn limiter_shows_a_burst_then_one_per_interval() {
    let mut limiter = ErrorLimiter::default();
    let t0 = Instant::now();
    let shown: Vec<_> = (0..20).map(|_| limiter.admit(t0)).collect();
    assert_eq!(
        shown.iter().filter(|s| s.is_some()).count(),
        ErrorLimiter::BURST as usize
    );
    assert_eq!(limiter.admit(t0 + ErrorLimiter::INTERVAL), Some(15));
    assert_eq!(limiter.admit(t0 + ErrorLimiter::INTERVAL), None);
}

#[test]
fn a_byte_budget_bounds_what_a_hung_plugin_holds() {
    let (hung, _) = probe(Mode::Hang);
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![hung],
        1_000_000,
        false,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    let big = Bytes::from(vec![b'x'; QUEUE_BYTES / 4]);
    for seq in 1..=10 {
        let mut envelope = one(seq);
        envelope.line = big.clone();
        dispatcher.send(batch(vec![envelope]), &closing);
    }
    // Four lines fit the budget (one of them in the hung call), the other six are dropped.
    std::thread::sleep(Duration::from_millis(50));
    let state = &workers.states[0];
    assert_eq!(state.queued_bytes.load(Ordering::Relaxed), QUEUE_BYTES);
    assert_eq!(state.drops.load(Ordering::Relaxed), 6);
    drop(dispatcher);
    workers.finish(SHORT, SHORT);
}

#[test]
fn lossless_drains_past_the_deadline_while_the_plugin_makes_progress() {
    let (slow, log) = probe(Mode::Slow(Duration::from_millis(20)));
    let (dispatcher, workers) = start(&crate::runtime::for_tests(), vec![slow], 1000, true, QUIET);
    let closing = AtomicBool::new(false);
    for seq in 1..=50 {
        dispatcher.send(envelope(seq), &closing);
    }
    end(&workers);
    drop(dispatcher);
    // 50 x 20 ms = 1 s of work against a 300 ms deadline that moves on with progress.
    workers.finish(SHORT, SHORT);
    assert_eq!(
        lines(&log)
            .iter()
            .filter(|l| l.contains("non-json"))
            .count(),
        50
    );
}

#[test]
fn a_batch_is_delivered_in_order_and_dropped_whole_when_it_does_not_fit() {
    let (hung, _) = probe(Mode::Hang);
    let (healthy, log) = probe(Mode::Record);
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![hung, healthy],
        10,
        false,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    dispatcher.send(batch((1..=8).map(one).collect()), &closing);
    std::thread::sleep(Duration::from_millis(50)); // the healthy plugin catches up
    dispatcher.send(batch((9..=12).map(one).collect()), &closing);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        workers.states[0].drops.load(Ordering::Relaxed),
        4,
        "8 + 4 > 10: the second batch is dropped"
    );
    end(&workers);
    drop(dispatcher);
    workers.finish(SHORT, SHORT);
    let seen: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| l.contains("non-json"))
        .collect();
    let seqs: Vec<u64> = seen
        .iter()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
}

/// A JSON-RPC line with the raw id `id` and the method `method` (raw JSON string), as the relay
/// classifies it.
fn classified(seq: u64, line: &str, correlation: Option<CorrelationId>) -> Envelope {
    let bytes = line.as_bytes();
    let scan = crate::monitor::jsonrpc::scan(bytes);
    Envelope {
        seq,
        direction: Direction::Request,
        kind: scan.kind,
        is_error: scan.is_error,
        line: Bytes::copy_from_slice(bytes),
        id: scan.id,
        method: scan.method,
        correlation,
        timestamp_us: 0,
        latency_us: None,
    }
}

#[test]
fn every_plugin_gets_the_same_texts_from_a_batch_as_from_single_lines() {
    let corr = |seq| {
        Some(CorrelationId {
            sender: Direction::Request,
            seq,
        })
    };
    let envelopes = || {
        vec![
            classified(
                1,
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#,
                corr(1),
            ),
            // An escaped method is decoded; a string id is given raw.
            classified(
                2,
                r#"{"jsonrpc":"2.0","id":"a\"b","method":"tools\/li\u00dfst"}"#,
                corr(2),
            ),
            classified(
                3,
                r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                None,
            ),
            classified(4, "not json at all", None),
            classified(
                5,
                r#"{"jsonrpc":"2.0","id":12345678901,"result":{}}"#,
                corr(1),
            ),
        ]
    };
    let probes: Vec<_> = (0..3).map(|_| probe(Mode::Record)).collect();
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        probes.iter().map(|(p, _)| p.clone()).collect(),
        64,
        true,
        QUIET,
    );
    let closing = AtomicBool::new(false);
    for envelope in envelopes() {
        dispatcher.send(Item::One(envelope), &closing);
    }
    dispatcher.send(batch(envelopes()), &closing);
    end(&workers);
    drop(dispatcher);
    workers.finish(Duration::from_secs(5), SHORT);
    let expected = [
        "1 request request id=7 method=tools/call corr=c1",
        "2 request request id=\"a\\\"b\" method=tools/lißst corr=c2",
        "3 request notification id= method=notifications/progress corr=",
        "4 request non-json id= method= corr=",
        "5 request response id=12345678901 method= corr=c1",
    ];
    for (_, log) in &probes {
        let seen: Vec<String> = lines(log)
            .into_iter()
            .filter(|l| !l.starts_with("event") && l != "shutdown")
            .map(|l| l.split(" \"").next().unwrap_or_default().to_owned())
            .collect();
        let twice: Vec<&str> = expected.iter().chain(&expected).copied().collect();
        assert_eq!(seen, twice);
    }
}

#[test]
fn a_lossless_plugin_the_relay_waits_for_holds_a_smaller_byte_budget_and_misses_nothing() {
    use std::sync::atomic::AtomicU64;
    let (slow, log) = probe(Mode::Slow(Duration::from_millis(20)));
    let (dispatcher, workers) = start(
        &crate::runtime::for_tests(),
        vec![slow],
        1_000_000,
        true,
        QUIET,
    );
    // Four of these fill the lossless budget; a lossy lane would take all twelve at once.
    let big = Bytes::from(vec![b'x'; LOSSLESS_QUEUE_BYTES / 4]);
    let total = 12;
    let sent = AtomicU64::new(0);
    let most_ahead = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let closing = AtomicBool::new(false);
            for seq in 1..=total {
                let mut envelope = one(seq);
                envelope.line = big.clone();
                dispatcher.send(batch(vec![envelope]), &closing);
                sent.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut most = 0;
        while !sender.is_finished() {
            // Sent first, handled after: the difference can only be smaller than it was.
            let sent = sent.load(Ordering::SeqCst);
            let handled = workers.states[0].handled.load(Ordering::SeqCst);
            most = most.max(sent.saturating_sub(handled));
            std::thread::sleep(Duration::from_millis(1));
        }
        most
    });
    assert!((3..=4).contains(&most_ahead), "{most_ahead} lines ahead");
    end(&workers);
    drop(dispatcher);
    workers.finish(Duration::from_secs(10), SHORT);
    let handed = lines(&log)
        .iter()
        .filter(|l| l.contains("non-json"))
        .count();
    assert_eq!(handed as u64, total);
}
