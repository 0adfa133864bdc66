//! Dispatch: messages per second delivered to a no-op plugin (test-noop, verified and loaded for
//! real) through km's dispatcher: one bounded queue and one worker thread per plugin, batches of
//! lines shared by `Arc` (a single line travels alone, without allocation), every call through
//! the gateway. The sender builds each item as the session does (one per read) and sends it
//! `--lossless`, so every message is delivered; the clock
//! stops when the worker has drained its queue and shut the plugin down. Measured for one message
//! per batch (an interactive session: one message per read) and 64 per batch (a busy stream).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use km_abi::{Direction, MessageKind};
use km_cli::home::KmHome;
use km_cli::host::{PluginHost, Verbosity};
use km_cli::monitor::banner::Notices;
use km_cli::monitor::dispatch::{self, Batch, Envelope, Item};
use km_cli::verifier::Verifier;
use km_tests::lib_file_name;

use crate::env::{median, BenchEnv};
use crate::report::{Report, Row};
use crate::Options;

const LINE: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"kilometre"}}}"#;

/// Runs the dispatch section.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let (n, reps) = if options.quick {
        (500_000, 1)
    } else {
        (2_000_000, 3)
    };
    let dir = env.single_plugin_dir("test-noop");
    let home = KmHome::resolve(Some(&env.home))?;
    let mut verifier = Verifier::open(&home)?.allow_downgrade(true);
    let checked = verifier.check_file(&dir.join(lib_file_name("test-noop")))?;
    let host = PluginHost::new(
        "test-noop",
        env.dir().join("plugin-data").join("test-noop"),
        Verbosity::Quiet,
        None,
    );
    let plugin = Arc::new(verifier.load(checked, host)?);
    // As in `km monitor`: the workers run on the blocking pool of km's runtime.
    let runtime = km_cli::runtime::Runtime::new()?;
    let line = Bytes::from_static(LINE);
    let method = memchr_range(LINE, b"\"method\":\"", b'"');
    for per_batch in [1usize, 64] {
        let mut rates = Vec::new();
        for _ in 0..reps {
            let (dispatcher, workers) = dispatch::start(
                runtime.handle(),
                vec![plugin.clone()],
                dispatch::QUEUE_CAPACITY,
                true,
                Notices::new(true, 0),
            );
            let closing = AtomicBool::new(false);
            let start = Instant::now();
            let mut seq = 0u64;
            let envelope = |seq| Envelope {
                seq,
                direction: Direction::Request,
                kind: MessageKind::REQUEST,
                is_error: false,
                line: line.clone(),
                id: Some(25..26),
                method: method.clone(),
                correlation: None,
                timestamp_us: 0,
                latency_us: None,
            };
            while seq < n as u64 {
                // As the session queues a read: one line alone, several as a shared batch.
                let item = if per_batch == 1 {
                    seq += 1;
                    Item::One(envelope(seq))
                } else {
                    let envelopes = (0..per_batch)
                        .map(|_| {
                            seq += 1;
                            envelope(seq)
                        })
                        .collect();
                    Item::Messages(Arc::new(Batch::new(envelopes)))
                };
                dispatcher.send(item, &closing);
            }
            drop(dispatcher);
            workers.finish(Duration::from_secs(60), Duration::from_secs(5));
            rates.push(seq as f64 / start.elapsed().as_secs_f64());
        }
        let rate = median(&mut rates);
        report.add(Row {
            section: "dispatch",
            figure: format!("to test-noop, {per_batch} message(s) per batch"),
            value: format!("{:.2} M msg/s", rate / 1e6),
            baseline: String::new(),
            ratio: None,
            target: Some((">= 2 M msg/s".to_owned(), rate >= 2e6)),
        });
    }
    // Loaded libraries are never unloaded.
    std::mem::forget(plugin);
    Ok(())
}

/// The range of the string value after `key` up to the closing `end`, quotes included.
fn memchr_range(line: &[u8], key: &[u8], end: u8) -> Option<std::ops::Range<usize>> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len() - 1;
    let close = line[at + 1..].iter().position(|&b| b == end)? + at + 1;
    Some(at..close + 1)
}
