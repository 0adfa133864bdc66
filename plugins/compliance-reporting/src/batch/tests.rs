//! Batches against real trails: the order and bytes they write, another writer between two of
//! them, a write the kernel refuses, and when what is gathered is due.

use std::fs;
use std::path::{Path, PathBuf};

use km_durable::testing::{in_child, CHILD};

use super::*;
use crate::trail::{self, segment_name, split_lines, trail_dir, Upkeep};
use crate::verify::verify;

fn actor() -> Actor {
    Actor {
        user: "alice".into(),
        host: "laptop".into(),
        member: None,
    }
}

fn rec(session: &str, n: u64) -> Record {
    let mut r = Record::new(
        "call",
        record::rfc3339_us(1_700_000_000_000_000 + n),
        session,
        &actor(),
    );
    r.method = "tools/call".into();
    r.tool = format!("tool-{n}");
    r.corr = format!("{session}-{n}");
    r
}

const FOREVER: Upkeep = Upkeep {
    segment_records: 1_000_000,
    retention: None,
};

struct Fixture {
    dir: tempfile::TempDir,
    key: km_audit::AuditKey,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = crate::keys::load_or_create(dir.path()).expect("key");
        Fixture { dir, key }
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn writer(&self, session: &str) -> Writer {
        Writer::open(self.data(), session, &actor()).expect("opens")
    }

    fn segment(&self) -> PathBuf {
        trail_dir(self.data()).join(segment_name(0))
    }

    /// The record lines of the first segment (its header left out).
    fn lines(&self) -> Vec<Vec<u8>> {
        let bytes = fs::read(self.segment()).expect("reads");
        split_lines(&bytes)
            .0
            .into_iter()
            .skip(1)
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn records(&self) -> Vec<Record> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_slice(l).expect("a record"))
            .collect()
    }

    fn assert_verifies(&self, writer: &mut Writer) {
        writer
            .checkpoint(&self.key, "end", Some("s1"), 2_000, FOREVER, true)
            .expect("signs");
        let v = verify(self.data(), self.key.public_key(), &[]).expect("reads");
        assert!(v.ok, "{v:?}");
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    }
}

/// Gathers `n` records of `session` from `from`, every other one with its JSON already made.
fn gather(batch: &mut Batch, session: &str, from: u64, n: u64) {
    for i in from..from + n {
        let r = rec(session, i);
        if i % 2 == 0 {
            let json = record::to_json(&r);
            batch.noted(r, json);
        } else {
            batch.record(r);
        }
    }
}

fn corrs(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.corr.clone()).collect()
}

#[test]
fn a_batch_is_written_in_its_order_with_the_bytes_of_records_written_one_by_one() {
    let batched = Fixture::new();
    let mut w = batched.writer("s1");
    let mut batch = Batch::new(false);
    gather(&mut batch, "s1", 0, 10);
    assert_eq!(batch.records(), 10);
    let written = batch.write(&mut w, None, "s1", &actor());
    assert!(written.trail.is_none(), "{written:?}");
    assert_eq!(written.appended, 10);
    assert!(batch.is_empty());
    assert_eq!(w.size(), 10);
    assert_eq!(w.appended_since_checkpoint(), 10);
    let recs = batched.records();
    assert_eq!(
        corrs(&recs),
        (0..10).map(|i| format!("s1-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        recs.iter().map(|r| r.i).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );

    // The same records appended one at a time: the same lines, byte for byte.
    let single = Fixture::new();
    let mut one = single.writer("s1");
    for i in 0..10 {
        one.append(&rec("s1", i)).expect("appends");
    }
    assert_eq!(batched.lines(), single.lines());
    batched.assert_verifies(&mut w);
}

#[test]
fn another_writers_records_come_between_batches_and_the_trail_verifies() {
    let f = Fixture::new();
    let mut a = f.writer("s1");
    let mut b = f.writer("s2");
    let mut batch = Batch::new(false);
    gather(&mut batch, "s1", 0, 5);
    // While s1 gathers, s2 writes.
    for i in 0..3 {
        b.append(&rec("s2", i)).expect("appends");
    }
    let written = batch.write(&mut a, None, "s1", &actor());
    assert!(written.trail.is_none(), "{written:?}");
    assert_eq!(a.size(), 8, "the batch caught up on the other writer first");
    let mut other = Batch::new(false);
    gather(&mut other, "s2", 3, 2);
    other.write(&mut b, None, "s2", &actor());
    gather(&mut batch, "s1", 5, 3);
    batch.write(&mut a, None, "s1", &actor());
    let recs = f.records();
    let expected: Vec<String> = [
        "s2-0", "s2-1", "s2-2", "s1-0", "s1-1", "s1-2", "s1-3", "s1-4",
    ]
    .iter()
    .chain(&["s2-3", "s2-4", "s1-5", "s1-6", "s1-7"])
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(corrs(&recs), expected);
    assert_eq!(
        recs.iter().map(|r| r.i).collect::<Vec<_>>(),
        (0..13).collect::<Vec<_>>()
    );
    f.assert_verifies(&mut a);
}

#[test]
fn notes_go_to_the_journal_in_one_write_before_the_records() {
    let f = Fixture::new();
    let mut w = f.writer("s1");
    let mut journal = SessionJournal::create(f.data(), "s1", w.size(), &actor()).expect("journal");
    let before = journal.len();
    let mut batch = Batch::new(false);
    let notes: Vec<Vec<u8>> = (0..4).map(|i| record::to_json(&rec("s1", i))).collect();
    for n in &notes {
        batch.note(n);
    }
    assert!(!batch.is_empty());
    assert_eq!(batch.records(), 0);
    let written = batch.write(&mut w, Some(&mut journal), "s1", &actor());
    assert!(
        written.journal.is_none() && written.trail.is_none(),
        "{written:?}"
    );
    assert_eq!(written.appended, 0, "notes are not records");
    assert_eq!(w.size(), 0);
    let text = fs::read(trail_dir(f.data()).join("sessions").join("s1.pending")).expect("reads");
    let (lines, tail) = split_lines(&text);
    assert!(tail.is_empty());
    assert_eq!(
        &lines[1..],
        notes.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    assert_eq!(
        journal.len() - before,
        notes.iter().map(|n| n.len() as u64 + 1).sum::<u64>()
    );
}

#[test]
fn what_is_gathered_is_due_at_once_when_idle_else_after_the_wait_or_when_full() {
    let f = Fixture::new();
    let mut w = f.writer("s1");
    let mut batch = Batch::new(false);
    assert!(!batch.due(Instant::now()), "nothing gathered");
    assert_eq!(batch.due_at(), None);
    gather(&mut batch, "s1", 0, 1);
    assert!(batch.due(Instant::now()), "never written: at once");
    batch.write(&mut w, None, "s1", &actor());
    let written_at = Instant::now();
    gather(&mut batch, "s1", 1, 1);
    let due = batch.due_at().expect("something gathered");
    assert!(due <= written_at + BATCH_WAIT, "{due:?}");
    assert!(!batch.due(written_at), "written just now: it waits");
    assert!(batch.due(written_at + BATCH_WAIT), "then it is due");
    // The session's end (and a checkpoint) write it anyway: all of it.
    gather(&mut batch, "s1", 2, 2);
    assert_eq!(batch.write(&mut w, None, "s1", &actor()).appended, 3);
    assert!(batch.is_empty());
    assert_eq!(
        corrs(&f.records()),
        ["s1-0", "s1-1", "s1-2", "s1-3"],
        "everything gathered, in its order"
    );
    let written_at = Instant::now();
    // Full: at once, however recent the last write.
    gather(&mut batch, "s1", 4, MAX_RECORDS as u64);
    assert_eq!(batch.records(), MAX_RECORDS);
    assert!(batch.due(written_at));
    batch.write(&mut w, None, "s1", &actor());
    assert_eq!(w.size(), MAX_RECORDS as u64 + 4);
    // Bytes count too.
    let mut big = rec("s1", 9_999);
    big.detail
        .insert("text".into(), json!("x".repeat(MAX_BYTES)));
    let json = record::to_json(&big);
    batch.noted(big, json);
    assert!(batch.due(Instant::now()));
    // Write-ahead: every turn writes.
    let mut ahead = Batch::new(true);
    ahead.write(&mut w, None, "s1", &actor());
    gather(&mut ahead, "s1", 0, 1);
    assert!(ahead.due(Instant::now()));
}

/// Run in a child whose files may not grow past 64 KiB: a batch larger than what is left fails
/// whole, nothing of it stays in the segment, and the next write starts with the `gap` record
/// that counts it.
#[test]
fn a_failed_write_leaves_nothing_and_the_next_one_counts_it_in_a_gap() {
    if std::env::var_os(CHILD).is_none() {
        return in_child(
            "batch::tests::a_failed_write_leaves_nothing_and_the_next_one_counts_it_in_a_gap",
            Some(64 * 1024),
        );
    }
    let f = Fixture::new();
    let mut w = f.writer("s1");
    let mut batch = Batch::new(false);
    gather(&mut batch, "s1", 0, 3);
    assert!(batch.write(&mut w, None, "s1", &actor()).trail.is_none());
    let size_before = fs::metadata(f.segment()).expect("meta").len();
    for i in 3..203 {
        let mut r = rec("s1", i);
        r.detail.insert("text".into(), json!("y".repeat(512)));
        batch.record(r);
    }
    let written = batch.write(&mut w, None, "s1", &actor());
    let e = written.trail.expect("the write does not fit");
    assert!(e.to_string().contains("seg-"), "{e}");
    assert_eq!(written.lost, 200);
    assert_eq!(written.appended, 0);
    assert_eq!(batch.lost(), 200);
    assert!(batch.is_empty(), "the failed records are counted, not kept");
    assert_eq!(w.size(), 3, "the tree took none of them");
    assert_eq!(
        fs::metadata(f.segment()).expect("meta").len(),
        size_before,
        "nothing of the failed write stayed in the segment"
    );
    gather(&mut batch, "s1", 203, 2);
    let written = batch.write(&mut w, None, "s1", &actor());
    assert!(written.trail.is_none(), "{written:?}");
    assert_eq!(written.appended, 3, "the gap and the two records");
    assert_eq!(batch.lost(), 0);
    let recs = f.records();
    assert_eq!(recs.len(), 6);
    let gap = &recs[3];
    assert_eq!(gap.kind, "gap");
    assert_eq!(gap.detail["lost"], json!(200));
    assert_eq!(gap.detail["why"], json!(LOST_WHY));
    assert_eq!(corrs(&recs[4..]), ["s1-203", "s1-204"]);
    f.assert_verifies(&mut w);
}

#[test]
fn a_dead_sessions_journal_written_in_batches_is_recovered() {
    // The journal a batch wrote is the journal recovery reads: notes gathered and written
    // together, the session then killed (its journal left, its lock free).
    let f = Fixture::new();
    let mut w = f.writer("s1");
    let mut journal =
        SessionJournal::create(f.data(), "dead", w.size(), &actor()).expect("journal");
    let mut batch = Batch::new(false);
    for i in 0..3 {
        let mut r = rec("dead", i);
        r.outcome = "unanswered".into();
        batch.note(&record::to_json(&r));
    }
    batch.write(&mut w, Some(&mut journal), "dead", &actor());
    drop(journal); // killed: the lock goes, the journal stays
    let mut recovered = Vec::new();
    let n = trail::recover_dead_sessions(f.data(), |r| {
        recovered.push(r.clone());
        w.append(r).map(drop)
    })
    .expect("recovers");
    assert_eq!(n, 1);
    assert_eq!(
        corrs(&recovered[..3]),
        ["dead-0", "dead-1", "dead-2"],
        "{recovered:#?}"
    );
    assert_eq!(recovered[3].kind, "session.end");
}

/// A deterministic stand-in for km-bench's small mix (`bench/src/relay.rs`): 45% `tools/call`
/// requests, 35% their results (one in fifty an error), 20% progress notifications; a line
/// every millisecond, so calls settle 100 lines after their response.
struct SmallMix {
    state: u64,
    seq: u64,
    open: std::collections::VecDeque<u64>,
}

/// One line of [`SmallMix`], as the recorder is handed it.
struct MixLine {
    kind: km_plugin_sdk::MessageKind,
    direction: km_plugin_sdk::Direction,
    bytes: Vec<u8>,
    corr: String,
    method: &'static str,
    is_error: bool,
}

impl SmallMix {
    fn new() -> Self {
        SmallMix {
            state: 0x2545_F491_4F6C_DD1D,
            seq: 0,
            open: std::collections::VecDeque::new(),
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn text(&mut self, len: u64) -> String {
        (0..len)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }

    fn line(&mut self) -> MixLine {
        use km_plugin_sdk::{Direction, MessageKind};
        self.seq += 1;
        let i = self.seq;
        let roll = self.range(0, 100);
        if roll < 45 || (roll < 80 && self.open.is_empty()) {
            self.open.push_back(i);
            if self.open.len() > 64 {
                self.open.pop_front();
            }
            let len = self.range(8, 320);
            let q = self.text(len);
            MixLine {
                kind: MessageKind::REQUEST,
                direction: Direction::Request,
                bytes: format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"{q}"}},"_meta":{{"progressToken":{i}}}}}}}"#).into_bytes(),
                corr: format!("c:{i}"),
                method: "tools/call",
                is_error: false,
            }
        } else if roll < 80 {
            let id = self.open.pop_front().unwrap_or(0);
            let (bytes, is_error) = if roll == 79 {
                (
                    format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32602,"message":"unknown tool"}}}}"#
                    ),
                    true,
                )
            } else {
                let len = self.range(130, 1930);
                let text = self.text(len);
                (
                    format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}}}"#
                    ),
                    false,
                )
            };
            MixLine {
                kind: MessageKind::RESPONSE,
                direction: Direction::Response,
                bytes: bytes.into_bytes(),
                corr: format!("c:{id}"),
                method: "",
                is_error,
            }
        } else {
            let token = self.open.back().copied().unwrap_or(0);
            let len = self.range(8, 170);
            let text = self.text(len);
            MixLine {
                kind: MessageKind::NOTIFICATION,
                direction: Direction::Response,
                bytes: format!(r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{token},"progress":{i},"message":"{text}"}}}}"#).into_bytes(),
                corr: String::new(),
                method: "notifications/progress",
                is_error: false,
            }
        }
    }
}

/// Records `n` lines of [`SmallMix`] as a session does (the recorder's effects gathered, written
/// every 64 lines, the journal rewritten in place halfway; the trail verified with `check`), and returns the record lines of the
/// trail and the lines of the session's journal (their headers left out).
fn small_mix_session(n: u64, check: bool) -> (Vec<u8>, Vec<u8>) {
    use crate::recorder::{Effect, Line, Recorder};
    let fixture = Fixture::new();
    let mut writer = fixture.writer("s1");
    let mut journal =
        SessionJournal::create(fixture.data(), "s1", writer.size(), &actor()).expect("journal");
    let mut recorder = Recorder::new(crate::policy::Policy::default(), "s1", actor());
    let mut batch = Batch::new(false);
    let apply = |batch: &mut Batch, effects: Vec<Effect>| {
        for effect in effects {
            match effect {
                Effect::Write(record, _) => batch.record(record),
                Effect::WriteNoted(record, json) => batch.noted(record, json),
                Effect::Journal(json) => batch.note(&json),
            }
        }
    };
    let t0 = 1_700_000_000_000_000;
    let start = recorder.start(
        &["node".into(), "server.js".into()],
        serde_json::Map::new(),
        t0,
    );
    apply(&mut batch, start);
    let mut mix = SmallMix::new();
    for seq in 1..=n {
        let l = mix.line();
        let effects = recorder.line(&Line {
            seq,
            direction: l.direction,
            kind: l.kind,
            is_error: l.is_error,
            bytes: &l.bytes,
            corr: &l.corr,
            method: l.method,
            timestamp_us: t0 + seq * 1000,
            latency_us: (l.kind == km_plugin_sdk::MessageKind::RESPONSE).then_some(1234),
        });
        apply(&mut batch, effects);
        if seq % 64 == 0 {
            let written = batch.write(&mut writer, Some(&mut journal), "s1", &actor());
            assert!(written.trail.is_none() && written.journal.is_none());
        }
        if seq == n / 2 {
            batch.write(&mut writer, Some(&mut journal), "s1", &actor());
            journal
                .compact_with(|out| recorder.journal_lines(out))
                .expect("rewrites");
        }
    }
    let end = recorder.end(&json!({"messages": {"forwarded": n}}), t0 + (n + 1) * 1000);
    apply(&mut batch, end);
    batch.write(&mut writer, Some(&mut journal), "s1", &actor());
    let journal_path = trail_dir(fixture.data())
        .join("sessions")
        .join("s1.pending");
    let notes = fs::read(&journal_path).expect("reads the journal");
    let notes = split_lines(&notes).0[1..].concat();
    if check {
        fixture.assert_verifies(&mut writer);
    }
    (fixture.lines().concat(), notes)
}

/// The bytes a small-mix session writes, pinned: records, journal notes and the journal's
/// rewrite are what auditors and the recovery of a killed session read, so a change of how
/// they are made must not change a byte of them. (The digests were taken before the per-call
/// path was made to allocate less.)
#[test]
fn a_small_mix_session_writes_the_bytes_it_always_wrote() {
    let (trail, notes) = small_mix_session(600, true);
    assert_eq!(
        (trail.len(), record::sha256_hex(&trail)),
        (
            169_897,
            "8013a14782ada1a9850fa95d0d90eaded5588ab83e52e1134354d1415271b93c".to_owned()
        ),
        "the trail's records"
    );
    assert_eq!(
        (notes.len(), record::sha256_hex(&notes)),
        (
            152_962,
            "10b45226296ef1d66b0b68adc38e121da2219442557c7204659016100eb6719e".to_owned()
        ),
        "the journal's notes"
    );
}

/// A driver for profiling the per-line path: `KM_CR_PROFILE_LINES=N cargo test --release -p
/// compliance-reporting -- --ignored profile_small_mix` under `valgrind --tool=callgrind`; the
/// instructions per line are the difference of two counts over the difference of their N.
#[test]
#[ignore = "a profiling driver, not a test"]
fn profile_small_mix() {
    let n = std::env::var("KM_CR_PROFILE_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let (trail, _) = small_mix_session(n, false);
    assert!(!trail.is_empty());
}
