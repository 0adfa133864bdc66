//! `verify`: checks the whole trail against its own links, its signed checkpoints and (when
//! given) the checkpoints the API witnessed, and names the first thing that is wrong.
//!
//! What is checked, in the order a reader meets it:
//! 1. every checkpoint: its signature by the audit key, and its consistency proof from the
//!    checkpoint before it (so the chain of checkpoints holds even where retention removed the
//!    records);
//! 2. every segment: its header continues the trail before it (compact range, last leaf), the
//!    oldest one left is anchored by a signed checkpoint at its start, each ends with an end line
//!    naming the next, and nothing stands between them;
//! 3. every record: it is JSON, its number is its position, and its `prev` is the leaf hash of
//!    the record before it. The links name the record: an edited record `k` breaks the link of
//!    `k + 1` only; a record whose own link was edited breaks two. A number that is too high
//!    means deleted records (or, if the missing one comes later, reordering); a number already
//!    seen means an insertion;
//! 4. at every size a checkpoint (local or witnessed) names, the RFC 6962 root of the records
//!    read so far equals the checkpoint's root;
//! 5. the end: no checkpoint covers more records than the trail holds (truncation).
//!
//! Reading takes the writer lock only to note the files' lengths, then reads up to them, so a
//! verification never holds up a running session.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use km_audit::{leaf_hash, verify_consistency, Frontier, Hash, SignedCheckpoint};
use serde::Serialize;

use crate::record::{Record, ZERO_HASH};
use crate::trail::{self, end_marker, frontier_of, split_lines, CheckpointLine};
use crate::Error;

/// The first problem found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `malformed`, `altered`, `missing`, `inserted`, `reordered`, `truncated`, `signature`,
    /// `inconsistent`, `mismatch`, `segment`, `witness`.
    pub kind: &'static str,
    /// The record concerned, by index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    /// The checkpoint concerned, by its position in `checkpoints.jsonl` (from 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<usize>,
    /// The file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in the file (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// What is wrong, for people.
    pub message: String,
}

/// The last checkpoint, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Its position in the file.
    pub index: usize,
    /// Records covered.
    pub size: u64,
    /// Root, hex.
    pub root: String,
    /// When (RFC 3339).
    pub time: String,
    /// Why it was made.
    pub reason: String,
}

/// A checkpoint held outside the installation (by the API), to check the trail against.
#[derive(Debug, Clone)]
pub struct Witnessed {
    /// The checkpoint as the API holds it.
    pub signed: SignedCheckpoint,
    /// When the API received it.
    pub received: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Whether the trail verifies.
    pub ok: bool,
    /// The audit key id checked with.
    pub key_id: String,
    /// Records held (from `first`).
    pub records: u64,
    /// The index of the oldest record held (above 0 after retention).
    pub first: u64,
    /// Segment files.
    pub segments: usize,
    /// Checkpoints.
    pub checkpoints: usize,
    /// The last checkpoint.
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Records after the last checkpoint (not yet signed).
    pub unsigned: u64,
    /// Witnessed checkpoints compared.
    pub witnessed: usize,
    /// The first problem.
    pub problem: Option<Problem>,
    /// Things worth knowing that are not tampering (a torn last record, unsigned records).
    pub warnings: Vec<String>,
}

struct Expect {
    root: Hash,
    what: String,
    checkpoint: Option<usize>,
}

fn problem(kind: &'static str, message: String) -> Problem {
    Problem {
        kind,
        record: None,
        checkpoint: None,
        file: None,
        line: None,
        message,
    }
}

/// Verifies the trail in `data_dir` with the audit `public_key`, and against `witnessed`.
pub fn verify(
    data_dir: &Path,
    public_key: &[u8],
    witnessed: &[Witnessed],
) -> Result<Verification, Error> {
    let dir = trail::trail_dir(data_dir);
    let mut v = Verification {
        ok: false,
        key_id: km_audit::key_id(public_key),
        records: 0,
        first: 0,
        segments: 0,
        checkpoints: 0,
        last_checkpoint: None,
        unsigned: 0,
        witnessed: 0,
        problem: None,
        warnings: Vec::new(),
    };
    if !dir.exists() {
        v.problem = Some(problem(
            "missing",
            format!("there is no audit trail in {}", dir.display()),
        ));
        return Ok(v);
    }
    // The lengths at one instant, under the lock; then read without it.
    let (segments, cps_len) = {
        let _lock = trail::lock(&dir)?;
        let mut segments = Vec::new();
        for (start, path) in trail::list_segments(&dir)? {
            let len = fs::metadata(&path)
                .map_err(|e| Error::io("reading the size of", &path, e))?
                .len();
            segments.push((start, path, len));
        }
        let cps = dir.join("checkpoints.jsonl");
        let cps_len = fs::metadata(&cps).map(|m| m.len()).unwrap_or(0);
        (segments, cps_len)
    };
    v.segments = segments.len();
    let result = check(&dir, public_key, witnessed, &segments, cps_len, &mut v)?;
    v.problem = result;
    v.ok = v.problem.is_none();
    Ok(v)
}

fn check(
    dir: &Path,
    public_key: &[u8],
    witnessed: &[Witnessed],
    segments: &[(u64, std::path::PathBuf, u64)],
    cps_len: u64,
    v: &mut Verification,
) -> Result<Option<Problem>, Error> {
    // 1. Checkpoints.
    let cps_path = dir.join("checkpoints.jsonl");
    let bytes = match fs::read(&cps_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("reading", &cps_path, e)),
    };
    let bytes = &bytes[..usize::try_from(cps_len).unwrap_or(0).min(bytes.len())];
    let (lines, tail) = split_lines(bytes);
    if !tail.is_empty() {
        v.warnings.push(format!(
            "checkpoints.jsonl ends with {} bytes of an unfinished checkpoint (a writer was \
             killed while signing); the next session cuts them off",
            tail.len()
        ));
    }
    let mut expect: BTreeMap<u64, Vec<Expect>> = BTreeMap::new();
    let mut prev: Option<(u64, Hash)> = None;
    let cp_file = Some("checkpoints.jsonl".to_owned());
    for (c, line) in lines.iter().enumerate() {
        let at = |kind, message: String| Problem {
            kind,
            record: None,
            checkpoint: Some(c),
            file: cp_file.clone(),
            line: Some(c + 1),
            message,
        };
        let parsed = serde_json::from_slice::<CheckpointLine>(line)
            .ok()
            .and_then(|l| Some((l.signed().ok()?, l.from, l.proof_hashes()?)));
        let Some((signed, from, proof)) = parsed else {
            return Ok(Some(at(
                "malformed",
                format!("checkpoint #{c} is not a well-formed signed checkpoint"),
            )));
        };
        if let Err(e) = signed.verify(public_key) {
            return Ok(Some(at("signature", format!("checkpoint #{c}: {e}"))));
        }
        let cp = signed.checkpoint().clone();
        if let Some((psize, proot)) = prev {
            if cp.size < psize {
                return Ok(Some(at(
                    "inconsistent",
                    format!(
                        "checkpoint #{c} covers {} records, fewer than checkpoint #{} before it ({psize}): the trail was cut back",
                        cp.size,
                        c - 1
                    ),
                )));
            }
            if from != psize {
                return Ok(Some(at(
                    "inconsistent",
                    format!(
                        "checkpoint #{c} proves it extends a trail of {from} records, but checkpoint #{} before it covers {psize}",
                        c - 1
                    ),
                )));
            }
            if verify_consistency(psize, cp.size, &proot, &cp.root, &proof).is_err() {
                return Ok(Some(at(
                    "inconsistent",
                    format!(
                        "checkpoint #{c} is not an extension of checkpoint #{}: the records up to #{} were rewritten between them",
                        c - 1,
                        psize
                    ),
                )));
            }
        }
        prev = Some((cp.size, cp.root));
        expect.entry(cp.size).or_default().push(Expect {
            root: cp.root,
            what: format!(
                "checkpoint #{c} ({} records, signed {})",
                cp.size,
                crate::record::rfc3339_ms(cp.time_ms)
            ),
            checkpoint: Some(c),
        });
        v.last_checkpoint = Some(CheckpointSummary {
            index: c,
            size: cp.size,
            root: hex::encode(cp.root),
            time: crate::record::rfc3339_ms(cp.time_ms),
            reason: cp.reason.clone(),
        });
    }
    v.checkpoints = lines.len();
    for w in witnessed {
        if let Err(e) = w.signed.verify(public_key) {
            return Ok(Some(problem(
                "witness",
                format!(
                    "a checkpoint the API holds (received {}) does not verify: {e}",
                    w.received
                ),
            )));
        }
        let cp = w.signed.checkpoint();
        expect.entry(cp.size).or_default().push(Expect {
            root: cp.root,
            what: format!(
                "the API's checkpoint of {} records (received {})",
                cp.size, w.received
            ),
            checkpoint: None,
        });
    }
    v.witnessed = witnessed.len();

    // 2.-4. Segments and records.
    let Some((first_start, _, _)) = segments.first() else {
        return Ok(Some(problem(
            "missing",
            "the trail has no segment".to_owned(),
        )));
    };
    v.first = *first_start;
    let mut frontier = Frontier::new();
    let mut last_leaf: Option<Hash> = None;
    let mut pos = *first_start;
    for (n, (start, path, len)) in segments.iter().enumerate() {
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seg_problem = |message: String| Problem {
            kind: "segment",
            record: None,
            checkpoint: None,
            file: Some(name.clone()),
            line: Some(1),
            message,
        };
        let file = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let header = match trail::read_header(&file, path) {
            Ok(h) => h,
            Err(e) => return Ok(Some(seg_problem(e.to_string()))),
        };
        if header.start != *start || *start != pos {
            let message = if *start > pos {
                format!(
                    "records #{pos}..#{} are missing: the segment holding them was deleted",
                    start - 1
                )
            } else {
                format!(
                    "{name} starts at #{} where the trail is at #{pos}",
                    header.start
                )
            };
            let mut p = seg_problem(message);
            p.kind = "missing";
            p.record = Some(pos);
            return Ok(Some(p));
        }
        let Some(header_frontier) = frontier_of(header.start, &header.peaks) else {
            return Ok(Some(seg_problem(format!("{name} has a malformed header"))));
        };
        if n == 0 {
            frontier = header_frontier;
            last_leaf = km_audit::parse_hash(&header.last).filter(|_| header.start > 0);
            if header.start > 0 {
                // Retention removed what came before: the boundary must be signed.
                let anchored = expect
                    .get(&header.start)
                    .is_some_and(|list| list.iter().any(|e| e.checkpoint.is_some()));
                if !anchored {
                    let mut p = seg_problem(format!(
                        "records #0..#{} are gone, and no signed checkpoint covers the boundary at #{}: they were not removed by retention",
                        header.start - 1,
                        header.start
                    ));
                    p.kind = "missing";
                    p.record = Some(0);
                    return Ok(Some(p));
                }
                if let Some(p) = check_expect(&expect, header.start, &frontier.root(), None) {
                    return Ok(Some(p));
                }
            } else if let Some(p) = check_expect(&expect, 0, &frontier.root(), None) {
                return Ok(Some(p));
            }
        } else if header_frontier != frontier || km_audit::parse_hash(&header.last) != last_leaf {
            return Ok(Some(seg_problem(format!(
                "the header of {name} does not continue the trail before it"
            ))));
        }
        let bytes = fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let bytes = &bytes[..usize::try_from(*len).unwrap_or(0).min(bytes.len())];
        let (lines, tail) = split_lines(bytes);
        let is_last = n + 1 == segments.len();
        let records = &lines[1.min(lines.len())..];
        let mut ended = None;
        let parsed: Vec<Option<Record>> = records
            .iter()
            .map(|l| serde_json::from_slice::<Record>(l).ok())
            .collect();
        for (k, line) in records.iter().enumerate() {
            let at = |kind, record: u64, message: String| Problem {
                kind,
                record: Some(record),
                checkpoint: None,
                file: Some(name.clone()),
                line: Some(k + 2),
                message,
            };
            if let Some(marker) = end_marker(line) {
                if k + 1 != records.len() || marker != Ok(pos) {
                    return Ok(Some(at(
                        "segment",
                        pos,
                        format!("{name} has an end line that does not end it at #{pos}"),
                    )));
                }
                ended = Some(pos);
                break;
            }
            let Some(record) = &parsed[k] else {
                return Ok(Some(at(
                    "malformed",
                    pos,
                    format!("record #{pos} is not a valid record: it was altered or corrupted"),
                )));
            };
            if record.v != crate::record::VERSION {
                return Ok(Some(at(
                    "malformed",
                    pos,
                    format!("record #{pos} has an unknown format version {}", record.v),
                )));
            }
            if record.i != pos {
                let later = parsed[k + 1..]
                    .iter()
                    .position(|r| r.as_ref().is_some_and(|r| r.i == pos));
                let (kind, message) = if record.i > pos {
                    match later {
                        Some(d) => (
                            "reordered",
                            format!(
                                "records are out of order: record #{} stands where #{pos} belongs, and #{pos} comes {} later (records were swapped or moved)",
                                record.i,
                                d + 1
                            ),
                        ),
                        None => (
                            "missing",
                            format!(
                                "record #{pos} is missing: the record after #{} is #{} (records #{pos}..#{} were deleted)",
                                pos.saturating_sub(1),
                                record.i,
                                record.i - 1
                            ),
                        ),
                    }
                } else {
                    (
                        "inserted",
                        format!(
                            "a record was inserted at #{pos}: the record there says it is #{}, which came before",
                            record.i
                        ),
                    )
                };
                return Ok(Some(at(kind, pos, message)));
            }
            let expected_prev = last_leaf.map_or_else(|| ZERO_HASH.to_owned(), hex::encode);
            let leaf = leaf_hash(line);
            if record.prev != expected_prev {
                let next_links_here = parsed
                    .get(k + 1)
                    .and_then(|r| r.as_ref())
                    .map(|r| r.prev == hex::encode(leaf));
                let (record_at, message) = match (next_links_here, pos) {
                    (_, 0) | (Some(false), _) => (
                        pos,
                        format!(
                            "record #{pos} was altered: its link to the record before it is wrong, and the record after it does not link to it"
                        ),
                    ),
                    (Some(true), _) => (
                        pos - 1,
                        format!(
                            "record #{} was altered: its hash is not the one record #{pos} links to",
                            pos - 1
                        ),
                    ),
                    (None, _) => (
                        pos - 1,
                        format!(
                            "record #{} or #{pos} was altered: #{pos} does not link to #{}",
                            pos - 1,
                            pos - 1
                        ),
                    ),
                };
                let mut p = at("altered", record_at, message);
                if record_at + 1 == pos {
                    p.line = Some(k + 1);
                }
                return Ok(Some(p));
            }
            frontier.push(leaf);
            last_leaf = Some(leaf);
            pos += 1;
            if let Some(mut p) = check_expect(&expect, pos, &frontier.root(), Some(pos - 1)) {
                p.file = Some(name.clone());
                p.line = Some(k + 2);
                return Ok(Some(p));
            }
        }
        if !tail.is_empty() {
            if is_last && ended.is_none() {
                v.warnings.push(format!(
                    "{name} ends with {} bytes of a torn record (a writer was killed inside it); it was never a whole record, and the next session cuts it off",
                    tail.len()
                ));
            } else {
                return Ok(Some(seg_problem(format!(
                    "{name} has {} stray bytes after its last line",
                    tail.len()
                ))));
            }
        }
        if !is_last && ended.is_none() {
            return Ok(Some(seg_problem(format!(
                "{name} has no end line, yet another segment follows it"
            ))));
        }
    }
    // 5. Truncation.
    v.records = pos - v.first;
    if let Some((&size, list)) = expect.range(pos + 1..).next() {
        let what = &list[0].what;
        return Ok(Some(Problem {
            kind: "truncated",
            record: Some(pos),
            checkpoint: list[0].checkpoint,
            file: None,
            line: None,
            message: format!(
                "the trail ends after record #{}, but {what} covers {size}: records #{pos}..#{} are missing (the trail was truncated)",
                pos.saturating_sub(1),
                size - 1
            ),
        }));
    }
    let signed = v.last_checkpoint.as_ref().map_or(0, |c| c.size);
    v.unsigned = pos.saturating_sub(signed);
    if v.unsigned > 0 {
        v.warnings.push(format!(
            "{} records (#{}..#{}) are not yet covered by a checkpoint (a session is running, or ended without signing)",
            v.unsigned,
            signed.max(v.first),
            pos - 1
        ));
    }
    Ok(None)
}

fn check_expect(
    expect: &BTreeMap<u64, Vec<Expect>>,
    size: u64,
    root: &Hash,
    last: Option<u64>,
) -> Option<Problem> {
    let list = expect.get(&size)?;
    let bad = list.iter().find(|e| &e.root != root)?;
    let message = match last {
        Some(last) => format!(
            "the records do not match {}: record #{last}, the last it covers, was altered, or the records before it were rewritten with their links",
            bad.what
        ),
        None => format!("the trail's start does not match {}", bad.what),
    };
    Some(Problem {
        kind: if bad.checkpoint.is_some() {
            "mismatch"
        } else {
            "witness"
        },
        record: last,
        checkpoint: bad.checkpoint,
        file: None,
        line: None,
        message,
    })
}
