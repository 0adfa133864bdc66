//! The on-disk queue of events not yet acknowledged by the API: per session, an append-only
//! journal of JSON lines plus the byte offset up to which the API has acknowledged them.
//!
//! - `events-<session>.journal`: one event per line, appended by km-durable's `AppendFile` (a
//!   single `write` per event, a partly written one cut off at once), so that a killed km leaves
//!   at worst a torn last line, which is cut off when the journal is adopted.
//! - `events-<session>.acked`: the acknowledged offset, replaced by km-durable's atomic write
//!   (temporary file, fsync, rename, directory fsync) after every acknowledged batch.
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
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use km_durable::{AppendFile, PRIVATE};

const PREFIX: &str = "events-";
const SUFFIX: &str = ".journal";

/// One session's journal, locked by this process.
pub(crate) struct Journal {
    acked_path: PathBuf,
    file: AppendFile,
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
            file,
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
            file,
            acked,
            own: false,
        }))
    }

    /// Where the journal is.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one event (a JSON line without its newline).
    pub(crate) fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line);
        record.push(b'\n');
        Ok(self.file.append(&record)?)
    }

    /// Flushes appended events to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(self.file.sync()?)
    }

    /// Bytes not yet acknowledged.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.file.len() - self.acked
    }

    /// Up to `max` unacknowledged events, oldest first, and the offset that acknowledges them.
    pub(crate) fn peek(&self, max: usize) -> io::Result<(Vec<String>, u64)> {
        let mut reader = File::open(self.file.path())?;
        reader.seek(SeekFrom::Start(self.acked))?;
        let mut reader = BufReader::new(reader.take(self.file.len() - self.acked));
        let mut lines = Vec::new();
        let mut end = self.acked;
        let mut line = String::new();
        while lines.len() < max {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            end += n as u64;
            let event = line.trim_end();
            if !event.is_empty() {
                lines.push(event.to_owned());
            }
        }
        Ok((lines, end))
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

    /// Removes a delivered journal (the lock goes with the file).
    pub(crate) fn delete(self) {
        let _ = std::fs::remove_file(&self.acked_path);
        let _ = std::fs::remove_file(self.file.path());
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
            j.append(format!("{{\"id\":\"{i}\"}}").as_bytes())
                .expect("append");
        }
        let (batch, end) = j.peek(3).expect("peek");
        assert_eq!(batch.len(), 3);
        assert!(!j.ack(end).expect("ack"));
        let path = Journal::list(&d).pop().expect("listed");
        assert!(
            Journal::adopt(&path).expect("adopt").is_none(),
            "a live session's journal was taken"
        );
        drop(j); // the session ends (or is killed): its lock goes
        let mut adopted = Journal::adopt(&path).expect("adopt").expect("free");
        let (batch, end) = adopted.peek(10).expect("peek");
        assert_eq!(batch, vec![r#"{"id":"3"}"#, r#"{"id":"4"}"#]);
        assert!(adopted.ack(end).expect("ack"), "fully delivered");
        adopted.delete();
        assert!(Journal::list(&d).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_own_journal_is_emptied_when_delivered() {
        let d = dir("own");
        let mut j = Journal::create(&d, "s1").expect("create");
        j.append(b"{}").expect("append");
        let (_, end) = j.peek(10).expect("peek");
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
    fn a_torn_last_line_is_cut_off() {
        let d = dir("torn");
        let path = d.join("events-old.journal");
        std::fs::write(&path, b"{\"id\":\"a\"}\n{\"id\":\"b").expect("write");
        let j = Journal::adopt(&path).expect("adopt").expect("free");
        let (batch, _) = j.peek(10).expect("peek");
        assert_eq!(batch, vec![r#"{"id":"a"}"#]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
