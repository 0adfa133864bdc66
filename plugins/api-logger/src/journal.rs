//! The on-disk queue of events not yet acknowledged by the API: per session, an append-only
//! journal of JSON lines plus the byte offset up to which the API has acknowledged them.
//!
//! - `events-<session>.journal`: one event per line, appended by km-durable's `AppendFile` (whole
//!   lines per `write`, a partly written one cut off at once), so that a killed km leaves at
//!   worst a torn last line, which is cut off when the journal is adopted. Events gather in memory
//!   and go out in one `write(2)`: [`WRITE_WITHIN`] after the first of them came, from the
//!   plugin's journal writer thread (woken by the handler when an event finds none waiting), at
//!   once from the handler when [`WRITE_AT`] bytes wait, and whenever the sender takes a batch or
//!   the session ends. A `write(2)` per message cost more than the rest of the plugin's work on
//!   small messages (BENCHMARKS.md, api-logger).
//! - `events-<session>.acked`: the acknowledged offset, replaced by km-durable's atomic write
//!   (temporary file, fsync, rename, directory fsync) after every acknowledged batch.
//!
//! What a kill can lose. A written event is in the kernel's page cache, which outlives the
//! process: a km killed outright (SIGKILL, a crash) loses only the events not yet written, which
//! are those the plugin was handed in the last [`WRITE_WITHIN`] (2 ms; longer only while the
//! machine gives the writer thread no CPU) and never [`WRITE_AT`] (64 KiB) of them, plus those
//! held in memory while the session's first authentication is pending (at most 10 000, before
//! the plugin knows whether it may keep them). km's own queue to the plugin dies with it too,
//! and it holds far more: up to 8 192 messages or 64 MiB per plugin that were never handed to
//! the plugin at all. The writer does not wait for the sender, so an HTTP request retrying
//! against an API that is down (km retries a 5xx three times, seconds in all) holds back
//! nothing, and neither does a quiet session that never gathers 64 KiB. `fdatasync` is for
//! power loss and kernel crashes only: the sender syncs the journal before each batch it reads
//! and at the end of the session, so a power loss can lose what was written since, as before.
//!
//! The sender reads and syncs through its own handle on the file ([`Journal::window`]), so that
//! the handler, which appends under the journal's lock, never waits for a disk flush or a read.
//!
//! Both are private to the user (mode 0600): events carry what the MCP client and server said.
//! Several km sessions run side by side (one per MCP server), so each writes its own journal and
//! holds an exclusive `flock` on it for its lifetime. A journal whose lock can be taken belongs
//! to a session that ended (normally, or killed: the kernel drops the lock with the process); a
//! running session adopts it, sends what is left and deletes it. No session ever touches a
//! journal another live session holds.
//!
//! Events are acknowledged in order, so "everything before the offset" is exactly what the API
//! has. An event that was sent but not yet acknowledged when km stopped is sent again later; its
//! id makes the second delivery a no-op on the server.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use km_durable::{AppendFile, PRIVATE};

const PREFIX: &str = "events-";
const SUFFIX: &str = ".journal";

/// Events waiting in memory are written by the handler once they reach this many bytes.
pub(crate) const WRITE_AT: usize = 64 * 1024;

/// Events waiting in memory are written by the journal writer at the latest this long after
/// the first of them came.
pub(crate) const WRITE_WITHIN: std::time::Duration = std::time::Duration::from_millis(2);

/// How much the sender reads from the journal at a time.
const READ_CHUNK: usize = 256 * 1024;

/// One session's journal, locked by this process.
pub(crate) struct Journal {
    acked_path: PathBuf,
    file: AppendFile,
    /// A second handle on the file, for the sender's reads and syncs.
    reader: Arc<File>,
    /// Whole event lines not yet written.
    pending: Vec<u8>,
    acked: u64,
    /// This session's own journal (emptied when delivered) rather than an adopted one (deleted
    /// when delivered).
    own: bool,
}

fn acked_path_for(path: &Path) -> PathBuf {
    path.with_extension("acked")
}

impl Journal {
    /// Creates and locks the journal of a new session in `dir`.
    pub(crate) fn create(dir: &Path, session: &str) -> io::Result<Journal> {
        let path = dir.join(format!("{PREFIX}{session}{SUFFIX}"));
        let file = AppendFile::create_new(&path, PRIVATE)?;
        if !file.try_lock()? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another session", path.display()),
            ));
        }
        Ok(Journal {
            acked_path: acked_path_for(&path),
            reader: Arc::new(file.file().try_clone()?),
            file,
            pending: Vec::new(),
            acked: 0,
            own: true,
        })
    }

    /// The journals in `dir` (of any session, live or not), oldest first by name order of
    /// discovery.
    pub(crate) fn list(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(PREFIX) && name.ends_with(SUFFIX)
            })
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.path())
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Takes over the journal at `path` if its session has ended (its lock is free); `None`
    /// while another session holds it.
    pub(crate) fn adopt(path: &Path) -> io::Result<Option<Journal>> {
        let mut file = AppendFile::open_existing(path)?;
        if !file.try_lock()? {
            return Ok(None);
        }
        let len = file.len();
        if len > 0 {
            // Cut a torn last line (km killed mid-write).
            let keep = last_newline_end(file.file(), len)?;
            if keep != len {
                file.truncate(keep)?;
            }
        }
        let acked_path = acked_path_for(path);
        let acked = std::fs::read_to_string(&acked_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(file.len());
        Ok(Some(Journal {
            acked_path,
            reader: Arc::new(file.file().try_clone()?),
            file,
            pending: Vec::new(),
            acked,
            own: false,
        }))
    }

    /// Where the journal is.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one event: a JSON line, its newline included. Written out at once when
    /// [`WRITE_AT`] bytes wait, else left for [`Self::write_pending`]; on a write error the
    /// waiting events are lost (and reported). `Ok(true)` when the event waits and found none
    /// waiting before it: the caller wakes the journal writer, which writes it within
    /// [`WRITE_WITHIN`].
    pub(crate) fn append(&mut self, record: &[u8]) -> io::Result<bool> {
        debug_assert!(record.ends_with(b"\n"));
        let first = self.pending.is_empty();
        self.pending.extend_from_slice(record);
        if self.pending.len() >= WRITE_AT {
            self.write_pending()?;
            return Ok(false);
        }
        Ok(first)
    }

    /// Bytes of events waiting in memory.
    #[cfg(test)]
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes out the events waiting in memory.
    pub(crate) fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.append(&self.pending);
        // Written or cut off whole: either way they no longer wait.
        self.pending.clear();
        if self.pending.capacity() > 4 * WRITE_AT {
            self.pending.shrink_to(2 * WRITE_AT);
        }
        Ok(written?)
    }

    /// Writes out what waits, and flushes the file to stable storage.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        Ok(self.file.sync()?)
    }

    /// Bytes not yet acknowledged (written or waiting).
    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.file.len() + self.pending.len() as u64 - self.acked
    }

    /// What the sender needs to read the unacknowledged events without the journal: its own
    /// handle on the file, the acknowledged offset and the written length. Writes out what
    /// waits first.
    pub(crate) fn window(&mut self) -> io::Result<Window> {
        self.write_pending()?;
        Ok(Window {
            file: self.reader.clone(),
            from: self.acked,
            to: self.file.len(),
        })
    }

    /// Up to `max` unacknowledged events, oldest first, joined by commas, with their number
    /// and the offset that acknowledges them.
    #[cfg(test)]
    pub(crate) fn peek(&mut self, max: usize) -> io::Result<(usize, String, u64)> {
        let mut body = Vec::new();
        let (n, end) = self.window()?.read_events(max, usize::MAX, &mut body)?;
        Ok((n, String::from_utf8(body).map_err(io::Error::other)?, end))
    }

    /// Records that everything before `offset` was acknowledged. When nothing is left, the own
    /// journal is emptied; an adopted one reports `true` and should be [`Self::delete`]d.
    pub(crate) fn ack(&mut self, offset: u64) -> io::Result<bool> {
        let len = self.file.len();
        let offset = offset.min(len);
        if offset <= self.acked {
            return Ok(self.acked == len && !self.own);
        }
        if offset == len && self.own {
            // Everything is delivered: start afresh. The offset is reset first, so a crash
            // between the two steps leaves an offset of 0 over a journal of delivered events,
            // which are then re-sent and deduplicated by the API (never lost).
            km_durable::write_atomic(&self.acked_path, b"0\n", PRIVATE)?;
            self.file.truncate(0)?;
            self.file.sync()?;
            self.acked = 0;
            return Ok(false);
        }
        km_durable::write_atomic(&self.acked_path, format!("{offset}\n").as_bytes(), PRIVATE)?;
        self.acked = offset;
        Ok(offset == len && !self.own)
    }

    /// What [`Self::ack`] does for `offset`, planned under the journal's lock so that the
    /// offset file can be written without it: `None` when the caller must call `ack` itself
    /// (everything is delivered: the journal is emptied, which must not race an append).
    pub(crate) fn ack_outside(&self, offset: u64) -> Option<(PathBuf, u64)> {
        let offset = offset.min(self.file.len());
        (offset > self.acked && (offset < self.file.len() || !self.own))
            .then(|| (self.acked_path.clone(), offset))
    }

    /// Records `offset` as acknowledged after its file was written by the caller
    /// ([`write_acked`]); `true` for an adopted journal fully delivered.
    pub(crate) fn acked_to(&mut self, offset: u64) -> bool {
        self.acked = self.acked.max(offset.min(self.file.len()));
        self.acked == self.file.len() && !self.own
    }

    /// Removes a delivered journal (the lock goes with the file).
    pub(crate) fn delete(self) {
        let _ = std::fs::remove_file(&self.acked_path);
        let _ = std::fs::remove_file(self.file.path());
    }
}

/// Writes the acknowledged offset file (atomically), without the journal.
pub(crate) fn write_acked(path: &Path, offset: u64) -> io::Result<()> {
    Ok(km_durable::write_atomic(
        path,
        format!("{offset}\n").as_bytes(),
        PRIVATE,
    )?)
}

/// The unacknowledged part of a journal, read through the sender's own handle.
pub(crate) struct Window {
    file: Arc<File>,
    from: u64,
    to: u64,
}

impl Window {
    /// Flushes the journal's written events to stable storage (`fdatasync` through the
    /// sender's handle: it syncs the file, whichever handle wrote).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Appends up to `max_events` events (joined by commas, as a JSON array's elements) to
    /// `body`, stopping before one that would take it past `max_bytes` (the first is always
    /// taken); returns how many, and the offset that acknowledges them. Lines are the plugin's
    /// own: read as bytes, not checked again.
    pub(crate) fn read_events(
        &self,
        max_events: usize,
        max_bytes: usize,
        body: &mut Vec<u8>,
    ) -> io::Result<(usize, u64)> {
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = self.from;
        let mut end = self.from;
        let mut count = 0;
        // Where the first line not yet taken starts in `buf`.
        let mut start = 0;
        let start_len = body.len();
        'read: while count < max_events && pos < self.to {
            let want = ((self.to - pos) as usize).min(READ_CHUNK);
            let old = buf.len();
            buf.resize(old + want, 0);
            self.file.read_exact_at(&mut buf[old..], pos)?;
            pos += want as u64;
            while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
                let line = buf[start..start + nl].trim_ascii();
                if !line.is_empty() {
                    if count > 0 && body.len() - start_len + line.len() + 1 > max_bytes {
                        break 'read;
                    }
                    if count > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(line);
                    count += 1;
                }
                start += nl + 1;
                end += nl as u64 + 1;
                if count >= max_events || body.len() - start_len >= max_bytes {
                    break 'read;
                }
            }
            // Keep only the unfinished line for the next chunk.
            buf.drain(..start);
            start = 0;
        }
        Ok((count, end))
    }
}

fn last_newline_end(mut file: &File, len: u64) -> io::Result<u64> {
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let chunk = (pos.min(buf.len() as u64)) as usize;
        pos -= chunk as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..chunk])?;
        if let Some(i) = buf[..chunk].iter().rposition(|&b| b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("api-logger-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_live_journal_cannot_be_adopted_an_ended_one_can() {
        let d = dir("adopt");
        let mut j = Journal::create(&d, "s1").expect("create");
        for i in 0..5 {
            j.append(format!("{{\"id\":\"{i}\"}}\n").as_bytes())
                .expect("append");
        }
        let (n, batch, end) = j.peek(3).expect("peek");
        assert_eq!(n, 3);
        assert_eq!(batch, r#"{"id":"0"},{"id":"1"},{"id":"2"}"#);
        assert!(!j.ack(end).expect("ack"));
        let path = Journal::list(&d).pop().expect("listed");
        assert!(
            Journal::adopt(&path).expect("adopt").is_none(),
            "a live session's journal was taken"
        );
        drop(j); // the session ends (or is killed): its lock goes
        let mut adopted = Journal::adopt(&path).expect("adopt").expect("free");
        let (n, batch, end) = adopted.peek(10).expect("peek");
        assert_eq!((n, batch.as_str()), (2, r#"{"id":"3"},{"id":"4"}"#));
        assert!(adopted.ack(end).expect("ack"), "fully delivered");
        adopted.delete();
        assert!(Journal::list(&d).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_own_journal_is_emptied_when_delivered() {
        let d = dir("own");
        let mut j = Journal::create(&d, "s1").expect("create");
        j.append(b"{}\n").expect("append");
        let (_, _, end) = j.peek(10).expect("peek");
        assert!(!j.ack(end).expect("ack"));
        assert_eq!(j.backlog_bytes(), 0);
        assert_eq!(std::fs::metadata(j.path()).expect("meta").len(), 0);
        // Events carry what client and server said: private to the user.
        use std::os::unix::fs::PermissionsExt;
        for path in [j.path(), j.acked_path.as_path()] {
            let mode = std::fs::metadata(path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_first_event_waiting_asks_for_the_writer_and_a_write_puts_all_in_the_file() {
        let d = dir("writer");
        let mut j = Journal::create(&d, "s1").expect("create");
        let on_disk = |j: &Journal| std::fs::read(j.path()).expect("read");
        assert!(
            j.append(b"{\"id\":\"a\"}\n").expect("append"),
            "none waited"
        );
        assert!(
            !j.append(b"{\"id\":\"b\"}\n").expect("append"),
            "one waited"
        );
        assert_eq!(j.pending_bytes(), 22);
        assert!(on_disk(&j).is_empty());
        // What the writer does once woken: one write of everything waiting.
        j.write_pending().expect("write");
        assert_eq!(on_disk(&j), b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        assert_eq!(j.pending_bytes(), 0);
        assert!(
            j.append(b"{\"id\":\"c\"}\n").expect("append"),
            "the next one wakes it again"
        );
        // A record that fills WRITE_AT is written by the handler at once, and wakes nobody.
        let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(WRITE_AT));
        assert!(!j.append(big.as_bytes()).expect("append"));
        assert_eq!(j.pending_bytes(), 0);
        assert_eq!(on_disk(&j).len(), 33 + big.len());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn events_wait_in_memory_until_the_sender_reads_and_batches_stop_at_their_limits() {
        let d = dir("batches");
        let mut j = Journal::create(&d, "s1").expect("create");
        let event = |i: usize| format!("{{\"id\":\"{i:04}\",\"pad\":\"{}\"}}\n", "x".repeat(1000));
        j.append(event(0).as_bytes()).expect("append");
        assert_eq!(
            std::fs::metadata(j.path()).expect("meta").len(),
            0,
            "written at once"
        );
        assert_eq!(
            j.backlog_bytes(),
            event(0).len() as u64,
            "a waiting event is backlog"
        );
        for i in 1..1000 {
            j.append(event(i).as_bytes()).expect("append");
        }
        // Past WRITE_AT bytes, what waits was written without the sender.
        assert!(std::fs::metadata(j.path()).expect("meta").len() >= WRITE_AT as u64);
        // More than one read chunk, cut at a byte limit: whole events, the limit kept.
        let mut body = Vec::new();
        let (n, end) = j
            .window()
            .expect("window")
            .read_events(usize::MAX, 300 * 1024, &mut body)
            .expect("read");
        assert_eq!(
            std::fs::metadata(j.path()).expect("meta").len(),
            j.backlog_bytes()
        );
        let per = event(0).len();
        let first = 300 * 1024 / per;
        assert_eq!(n, first);
        assert_eq!(end, (n * per) as u64);
        assert!(body.len() <= 300 * 1024);
        let joined: Vec<String> = (0..n).map(|i| event(i).trim_end().to_owned()).collect();
        assert_eq!(String::from_utf8(body).expect("utf-8"), joined.join(","));
        assert!(!j.ack(end).expect("ack"));
        // At most 600 at a time; the first event goes even past the byte limit.
        let mut body = Vec::new();
        let (n, end) = j
            .window()
            .expect("window")
            .read_events(600, usize::MAX, &mut body)
            .expect("read");
        assert_eq!(n, 600);
        assert!(!j.ack(end).expect("ack"));
        let mut body = Vec::new();
        let (n, end) = j
            .window()
            .expect("window")
            .read_events(600, 10, &mut body)
            .expect("read");
        assert_eq!(n, 1);
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            event(first + 600).trim_end()
        );
        assert!(!j.ack(end).expect("ack"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let d = dir("torn");
        let path = d.join("events-old.journal");
        std::fs::write(&path, b"{\"id\":\"a\"}\n{\"id\":\"b").expect("write");
        let mut j = Journal::adopt(&path).expect("adopt").expect("free");
        let (_, batch, _) = j.peek(10).expect("peek");
        assert_eq!(batch, r#"{"id":"a"}"#);
        let _ = std::fs::remove_dir_all(&d);
    }
}
