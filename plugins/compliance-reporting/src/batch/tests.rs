//! Batches against real trails: the order and bytes they write, another writer between two of
//! them, a write the kernel refuses, and when what is gathered is due.

use std::fs;
use std::path::{Path, PathBuf};

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
            64 * 1024,
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

/// Set in the child, so that the test body runs instead of spawning again.
const CHILD: &str = "KM_COMPLIANCE_TEST_CHILD";

/// Runs the test `name` alone in a child process whose files may grow to at most
/// `file_size_limit` bytes (km-durable's tests do the same): `sh` sets the limit and ignores
/// SIGXFSZ, so that a write past it fails with `EFBIG` instead of killing the child.
fn in_child(name: &str, file_size_limit: u64) {
    let exe = std::env::current_exe().expect("the test binary");
    let script = format!(
        r#"trap "" XFSZ; ulimit -f {}; exec "$0" "$@""#,
        file_size_limit / 512
    );
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
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
