//! The trail written by real writers, then attacked the ways an editor of the files would:
//! each attack is detected and the record named. Concurrent writers and torn tails too.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;

use super::*;
use crate::verify::verify;

fn actor() -> Actor {
    Actor {
        user: "alice".into(),
        host: "laptop".into(),
        member: None,
    }
}

fn rec(n: u64) -> Record {
    let mut r = Record::new(
        "call",
        record::rfc3339_us(1_700_000_000_000_000 + n),
        "s1",
        &actor(),
    );
    r.method = "tools/call".into();
    r.tool = format!("tool-{n}");
    r.corr = format!("c{n}");
    r
}

const FOREVER: Upkeep = Upkeep {
    segment_records: 1_000_000,
    retention: None,
};

struct Fixture {
    dir: tempfile::TempDir,
    key: AuditKey,
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

    fn writer(&self) -> Writer {
        Writer::open(self.data(), "s1", &actor()).expect("opens")
    }

    /// `n` records and a checkpoint at the end.
    fn trail(&self, n: u64) -> Writer {
        let mut w = self.writer();
        for i in 0..n {
            w.append(&rec(i)).expect("appends");
            if i == n / 2 {
                w.checkpoint(&self.key, "periodic", Some("s1"), 1_000, FOREVER, false)
                    .expect("signs");
            }
        }
        w.checkpoint(&self.key, "end", Some("s1"), 2_000, FOREVER, false)
            .expect("signs");
        w
    }

    fn verify(&self) -> crate::verify::Verification {
        verify(self.data(), self.key.public_key(), &[]).expect("reads")
    }

    fn segment(&self) -> PathBuf {
        trail_dir(self.data()).join(segment_name(0))
    }

    fn lines(&self) -> Vec<Vec<u8>> {
        let bytes = fs::read(self.segment()).expect("reads");
        split_lines(&bytes)
            .0
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn write_lines(&self, lines: &[Vec<u8>]) {
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        fs::write(self.segment(), bytes).expect("writes");
    }
}

fn assert_bad(v: &crate::verify::Verification, kind: &str, record: u64) {
    let p = v
        .problem
        .as_ref()
        .unwrap_or_else(|| panic!("not detected: {v:?}"));
    assert!(!v.ok);
    assert_eq!(p.kind, kind, "{p:?}");
    assert_eq!(p.record, Some(record), "{p:?}");
    assert!(p.message.contains(&format!("#{record}")), "{p:?}");
}

#[test]
fn a_written_trail_verifies() {
    let f = Fixture::new();
    let w = f.trail(20);
    assert_eq!(w.size(), 20);
    let v = f.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 20);
    assert_eq!(v.checkpoints, 2);
    assert_eq!(v.unsigned, 0);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    // Another key does not verify it.
    let (_, other) = AuditKey::generate().expect("key");
    let v = verify(f.data(), other.public_key(), &[]).expect("reads");
    assert_eq!(v.problem.expect("refused").kind, "signature");
}

#[test]
fn a_flipped_byte_is_named() {
    for target in [3usize, 19] {
        let f = Fixture::new();
        f.trail(20);
        let mut lines = f.lines();
        // Line 0 is the header: record k is line k + 1. Flip a byte inside the tool name.
        let line = &mut lines[target + 1];
        let at = line
            .windows(5)
            .position(|w| w == b"tool-")
            .expect("has a tool");
        line[at] ^= 0x01;
        f.write_lines(&lines);
        let v = f.verify();
        let kind = if target == 19 { "mismatch" } else { "altered" };
        assert_bad(&v, kind, target as u64);
    }
}

#[test]
fn a_byte_that_breaks_the_json_is_named() {
    let f = Fixture::new();
    f.trail(10);
    let mut lines = f.lines();
    lines[5][0] = b'[';
    f.write_lines(&lines);
    assert_bad(&f.verify(), "malformed", 4);
}

#[test]
fn deletion_insertion_swap_and_truncation_are_named() {
    let f = Fixture::new();
    f.trail(12);
    let orig = f.lines();

    let mut deleted = orig.clone();
    deleted.remove(6); // record 5
    f.write_lines(&deleted);
    assert_bad(&f.verify(), "missing", 5);

    let mut inserted = orig.clone();
    inserted.insert(4, orig[4].clone()); // record 3 twice
    f.write_lines(&inserted);
    assert_bad(&f.verify(), "inserted", 4);

    let mut swapped = orig.clone();
    swapped.swap(3, 8); // records 2 and 7
    f.write_lines(&swapped);
    assert_bad(&f.verify(), "reordered", 2);

    let truncated = orig[..orig.len() - 3].to_vec(); // records 9..11
    f.write_lines(&truncated);
    assert_bad(&f.verify(), "truncated", 9);

    f.write_lines(&orig);
    assert!(f.verify().ok);
}

#[test]
fn an_edited_link_names_its_own_record() {
    let f = Fixture::new();
    f.trail(10);
    let mut lines = f.lines();
    let text = String::from_utf8(lines[4].clone()).expect("utf-8");
    let at = text.find("\"prev\":\"").expect("has prev") + 8;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    lines[4] = bytes;
    f.write_lines(&lines);
    assert_bad(&f.verify(), "altered", 3);
}

#[test]
fn a_rewritten_checkpoint_or_a_cut_back_one_is_refused() {
    let f = Fixture::new();
    f.trail(10);
    let path = trail_dir(f.data()).join("checkpoints.jsonl");
    let text = fs::read_to_string(&path).expect("reads");
    fs::write(&path, text.replace("size 10", "size 11")).expect("writes");
    let v = f.verify();
    assert_eq!(
        v.problem.as_ref().expect("refused").kind,
        "signature",
        "{v:?}"
    );
    assert_eq!(v.problem.expect("refused").checkpoint, Some(1));
    // Dropping the last checkpoint and the records it alone covered is not detected locally:
    // that is what the witness is for (see the witness test).
    let first = text.lines().next().expect("a line");
    fs::write(&path, format!("{first}\n")).expect("writes");
    let lines = f.lines();
    f.write_lines(&lines[..7]);
    assert!(f.verify().ok);
}

#[test]
fn the_witness_catches_a_fresh_valid_trail() {
    let f = Fixture::new();
    f.trail(8);
    let cps = fs::read_to_string(trail_dir(f.data()).join("checkpoints.jsonl")).expect("reads");
    let held: Vec<crate::verify::Witnessed> = cps
        .lines()
        .map(|l| crate::verify::Witnessed {
            signed: serde_json::from_str::<CheckpointLine>(l)
                .expect("line")
                .signed()
                .expect("signed"),
            received: "earlier".into(),
        })
        .collect();
    // The whole trail replaced by a new one, validly signed with the same key.
    fs::remove_dir_all(trail_dir(f.data())).expect("removes");
    let mut w = f.writer();
    for i in 0..10 {
        let mut r = rec(i);
        r.tool = "innocent".into();
        w.append(&r).expect("appends");
    }
    w.checkpoint(&f.key, "end", None, 3_000, FOREVER, false)
        .expect("signs");
    assert!(f.verify().ok, "locally it is a fine trail");
    let v = verify(f.data(), f.key.public_key(), &held).expect("reads");
    let p = v.problem.expect("caught");
    assert_eq!(p.kind, "witness", "{p:?}");
    assert!(p.message.contains("the API's checkpoint"), "{p:?}");
    // A shorter fresh trail: the API's checkpoint covers more than it holds.
    fs::remove_dir_all(trail_dir(f.data())).expect("removes");
    let mut w = f.writer();
    w.append(&rec(0)).expect("appends");
    let v = verify(f.data(), f.key.public_key(), &held).expect("reads");
    assert!(!v.ok, "{v:?}");
}

#[test]
fn writers_share_one_tree_and_catch_up_on_each_other() {
    let f = Fixture::new();
    let mut a = f.writer();
    let mut b = Writer::open(f.data(), "s2", &actor()).expect("opens");
    for i in 0..10 {
        a.append(&rec(i)).expect("a");
        b.append(&rec(100 + i)).expect("b");
    }
    b.checkpoint(&f.key, "end", Some("s2"), 5, FOREVER, false)
        .expect("b signs");
    a.checkpoint(&f.key, "end", Some("s1"), 6, FOREVER, true)
        .expect("a signs");
    assert_eq!(a.size(), 20);
    let v = f.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checkpoints, 2);

    // Threads appending at once through their own writers lose nothing.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let data = f.data().to_path_buf();
            std::thread::spawn(move || {
                let mut w = Writer::open(&data, &format!("t{t}"), &actor()).expect("opens");
                for i in 0..50 {
                    w.append(&rec(1000 * t + i)).expect("appends");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no panic");
    }
    a.checkpoint(&f.key, "end", Some("s1"), 7, FOREVER, false)
        .expect("signs");
    let v = f.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 220);
}

#[test]
fn a_torn_record_is_a_warning_then_cut_off_and_recorded() {
    let f = Fixture::new();
    f.trail(5);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .custom_flags(0)
        .open(f.segment())
        .expect("opens");
    let torn = b"{\"v\":1,\"i\":5,\"prev\":\"ab";
    file.write_all(torn).expect("writes");
    drop(file);
    let v = f.verify();
    assert!(v.ok, "{v:?}");
    assert!(
        v.warnings.iter().any(|w| w.contains("torn")),
        "{:?}",
        v.warnings
    );
    // The next writer cuts it off and says so in the trail.
    let mut w = f.writer();
    w.checkpoint(&f.key, "end", None, 9, FOREVER, false)
        .expect("signs");
    let v = f.verify();
    assert!(v.ok && v.warnings.is_empty(), "{v:?}");
    let lines = f.lines();
    let last: Record = serde_json::from_slice(lines.last().expect("a line")).expect("record");
    assert_eq!(last.kind, "repair");
    assert_eq!(last.detail["bytes"], torn.len());
    assert!(
        trail_dir(f.data())
            .join("torn")
            .read_dir()
            .expect("lists")
            .count()
            == 1
    );
}

#[test]
fn rotation_and_retention_keep_a_trail_that_verifies() {
    let f = Fixture::new();
    let upkeep = Upkeep {
        segment_records: 5,
        retention: Some(Duration::from_secs(3600)),
    };
    let mut w = f.writer();
    // Old records (in 2023), then checkpoints now: whole old segments are pruned.
    for i in 0..12 {
        w.append(&rec(i)).expect("appends");
        if i % 5 == 4 {
            w.checkpoint(&f.key, "periodic", None, 1_700_000_100_000, upkeep, false)
                .expect("signs");
        }
    }
    let segs = list_segments(&trail_dir(f.data())).expect("lists");
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert!(f.verify().ok, "{:?}", f.verify());
    let now_ms = i64::try_from(record::now_us() / 1000).expect("fits");
    let mut fresh = rec(50);
    fresh.t = record::rfc3339_us(record::now_us());
    w.append(&fresh).expect("appends");
    w.checkpoint(&f.key, "periodic", None, now_ms, upkeep, false)
        .expect("signs and prunes");
    let segs = list_segments(&trail_dir(f.data())).expect("lists");
    assert_eq!(
        segs[0].0, 10,
        "the two old full segments are gone: {segs:?}"
    );
    let v = f.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.first, 10);
    let mut kinds = Vec::new();
    for_each_record(f.data(), 0, |_, l| {
        kinds.push(serde_json::from_slice::<Record>(l).expect("record").kind)
    })
    .expect("reads");
    assert!(kinds.contains(&"retention".to_owned()), "{kinds:?}");
    // Deleting the oldest remaining segment without retention is caught: no checkpoint
    // anchors the new boundary... unless it happens to be a boundary, which it is here: so
    // delete the middle of the trail instead.
    let segs = list_segments(&trail_dir(f.data())).expect("lists");
    if segs.len() >= 2 {
        fs::remove_file(&segs[segs.len() - 2].1).expect("removes");
        assert!(!f.verify().ok);
    }
}

#[test]
fn a_dead_sessions_pending_requests_are_recorded_once() {
    let f = Fixture::new();
    let mut w = f.writer();
    {
        let mut journal = SessionJournal::create(f.data(), "dead", 0, &actor()).expect("creates");
        let mut a = rec(1);
        a.session = "dead".into();
        let mut b = rec(2);
        b.session = "dead".into();
        journal.open(&a).expect("notes");
        journal.open(&b).expect("notes");
        // `a` was answered and recorded before km died; `b` was not.
        w.append(&a).expect("appends");
        // Dropped without finish: as if km was killed (the lock goes with the process).
        std::mem::forget(journal.file);
    }
    // A live session's journal is left alone.
    let live = SessionJournal::create(f.data(), "live", 0, &actor()).expect("creates");
    let mut written = Vec::new();
    let n = recover_dead_sessions(f.data(), |r| {
        written.push(r.clone());
        Ok(())
    })
    .expect("recovers");
    assert_eq!(n, 1);
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0].corr, "c2");
    assert_eq!(written[0].outcome, "unanswered");
    assert_eq!(written[1].kind, "session.end");
    assert_eq!(written[1].detail["abnormal"], true);
    assert_eq!(
        recover_dead_sessions(f.data(), |_| Ok(())).expect("nothing left"),
        0
    );
    live.finish();
}

#[test]
fn a_long_sessions_journal_is_rewritten_with_only_what_it_awaits() {
    let f = Fixture::new();
    let _w = f.writer(); // makes the trail's directories
    let noted = |n: u64| {
        let mut r = rec(n);
        r.session = "long".into();
        r.outcome = "unanswered".into();
        r
    };
    let mut journal = SessionJournal::create(f.data(), "long", 0, &actor()).expect("creates");
    let mut n = 0;
    while !journal.needs_compaction() {
        journal.open(&noted(n)).expect("notes");
        n += 1;
    }
    assert!(journal.len() > JOURNAL_COMPACT_BYTES);
    // Of all those calls, two are still unwritten.
    journal
        .compact(&[noted(0), noted(n - 1)])
        .expect("rewrites");
    assert!(journal.len() < 4096, "{} bytes", journal.len());
    assert!(!journal.needs_compaction());
    // Appending goes on in the rewritten journal, and a killed km's calls are all recovered.
    journal.open(&noted(n)).expect("notes");
    // Killed: the file left as it is, the lock gone with the process.
    let SessionJournal {
        file, _lock: lock, ..
    } = journal;
    std::mem::forget(file);
    drop(lock);
    let mut written = Vec::new();
    recover_dead_sessions(f.data(), |r| {
        written.push(r.clone());
        Ok(())
    })
    .expect("recovers");
    let corrs: Vec<&str> = written.iter().map(|r| r.corr.as_str()).collect();
    let (last, more) = (format!("c{}", n - 1), format!("c{n}"));
    assert_eq!(corrs, ["c0", last.as_str(), more.as_str(), ""]);
    assert_eq!(written[3].kind, "session.end");
    assert!(written[..3].iter().all(|r| r.outcome == "unanswered"));
}

/// `each_line` in pieces of every small size hands over the lines `split_lines` finds in the
/// whole, and the same tail; stopped, it gives none.
#[test]
fn lines_read_in_pieces_are_the_lines_of_the_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let mut bytes = Vec::new();
    for i in 0..40 {
        bytes.extend_from_slice(&vec![b'a' + (i % 26) as u8; i * 3]);
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"a torn tail");
    fs::write(&path, &bytes).expect("writes");
    let file = fs::File::open(&path).expect("opens");
    for from in [0u64, 1, 5, 100] {
        let (whole, whole_tail) = split_lines(&bytes[from as usize..]);
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let tail = each_line(&file, &path, from, bytes.len() as u64, chunk, |l| {
                got.push(l.to_vec());
                Ok(true)
            })
            .expect("reads");
            assert_eq!(got, whole, "from {from}, pieces of {chunk}");
            assert_eq!(
                tail.as_deref(),
                Some(whole_tail),
                "from {from}, pieces of {chunk}"
            );
        }
    }
    let mut seen = 0;
    let stopped = each_line(&file, &path, 0, bytes.len() as u64, 5, |_| {
        seen += 1;
        Ok(seen < 3)
    })
    .expect("reads");
    assert_eq!((seen, stopped), (3, None));
}

/// A trail opened by a new writer (which reads the segment in pieces) has the tree of the
/// writer that wrote it, across a piece's boundary and a segment's end.
#[test]
fn a_writer_opening_a_large_segment_catches_up_to_the_same_tree() {
    let f = Fixture::new();
    let upkeep = Upkeep {
        segment_records: 3000,
        retention: None,
    };
    let mut w = f.writer();
    // About 1.5 MB per segment: more than one piece of `READ_CHUNK`.
    let mut i = 0;
    while i < 4000 {
        let mut r = rec(i);
        r.detail.insert("pad".into(), json!("x".repeat(300)));
        w.append(&r).expect("appends");
        i += 1;
        if i % 1000 == 0 {
            w.checkpoint(&f.key, "periodic", Some("s1"), 1_000, upkeep, false)
                .expect("signs");
        }
    }
    let first = trail_dir(f.data()).join(segment_name(0));
    assert!(fs::metadata(&first).expect("a segment").len() > READ_CHUNK as u64);
    let other = Writer::open(f.data(), "s2", &actor()).expect("opens");
    assert_eq!(other.size(), w.size());
    assert_eq!(other.tree.frontier(), w.tree.frontier());
    assert_eq!(other.last_leaf, w.last_leaf);
    assert_eq!(other.read_len, w.read_len);
    assert_eq!(other.last_checkpoint_size(), w.last_checkpoint_size());
    assert!(f.verify().ok, "{:?}", f.verify());
}

/// The newest record's time read from a segment's end, in windows too small for one record,
/// is the time read from the whole file, for a closed segment and for the open one.
#[test]
fn the_newest_time_of_a_segment_is_read_from_its_end() {
    let f = Fixture::new();
    let upkeep = Upkeep {
        segment_records: 5,
        retention: None,
    };
    let mut w = f.writer();
    for i in 0..8 {
        w.append(&rec(i)).expect("appends");
        if i == 4 {
            w.checkpoint(&f.key, "periodic", None, 1_000, upkeep, false)
                .expect("signs");
        }
    }
    let segs = list_segments(&trail_dir(f.data())).expect("lists");
    assert_eq!(segs.len(), 2, "{segs:?}");
    for (_, path) in &segs {
        let bytes = fs::read(path).expect("reads");
        let (lines, _) = split_lines(&bytes);
        let whole = lines
            .iter()
            .skip(1)
            .rev()
            .filter(|l| end_marker(l).is_none())
            .find_map(|l| serde_json::from_slice::<Record>(l).ok())
            .and_then(|r| record::parse_rfc3339_us(&r.t));
        assert!(whole.is_some());
        for window in [1, 10, 100, 1000, TAIL_WINDOW] {
            assert_eq!(
                newest_time_from(path, window).expect("reads"),
                whole,
                "{path:?}, windows from {window}"
            );
        }
    }
    // A segment of its header alone has no newest record.
    let empty = f.dir.path().join("seg-empty.jsonl");
    write_header(&empty, 0, &Frontier::new(), None).expect("writes");
    assert_eq!(newest_time_from(&empty, 4).expect("reads"), None);
}
