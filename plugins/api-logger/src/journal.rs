//! The on-disk queue of events not yet acknowledged by the API: an append-only journal of JSON
//! lines plus the byte offset up to which the API has acknowledged them.
//!
//! - `events.journal`: one event per line, appended with a single `write` per event, so that a
//!   killed km leaves at worst a torn last line, which [`Journal::open`] cuts off.
//! - `events.acked`: the acknowledged offset, replaced atomically (temporary file, fsync,
//!   rename) after every acknowledged batch.
//!
//! Events are acknowledged in order, so "everything before the offset" is exactly what the API
//! has. An event that was sent but not yet acknowledged when km stopped is sent again at the next
//! start; its id makes the second delivery a no-op on the server. When everything is
//! acknowledged the journal is emptied, so it only ever holds the backlog.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The journal of one plugin instance.
pub(crate) struct Journal {
    path: PathBuf,
    acked_path: PathBuf,
    file: File,
    len: u64,
    acked: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, repairing a torn last line.
    pub(crate) fn open(dir: &Path) -> io::Result<Journal> {
        let path = dir.join("events.journal");
        let acked_path = dir.join("events.acked");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            // Cut a torn last line (km killed mid-write): find the last '\n'.
            let keep = last_newline_end(&mut file, len)?;
            if keep != len {
                file.set_len(keep)?;
                len = keep;
            }
        }
        let acked = std::fs::read_to_string(&acked_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(len);
        Ok(Journal {
            path,
            acked_path,
            file,
            len,
            acked,
        })
    }

    /// Appends one event (a JSON line without its newline).
    pub(crate) fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line);
        record.push(b'\n');
        self.file.write_all(&record)?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Flushes appended events to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Bytes not yet acknowledged.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.len - self.acked
    }

    /// Up to `max` unacknowledged events, oldest first, and the offset that acknowledges them.
    pub(crate) fn peek(&self, max: usize) -> io::Result<(Vec<String>, u64)> {
        let mut reader = File::open(&self.path)?;
        reader.seek(SeekFrom::Start(self.acked))?;
        let mut reader = BufReader::new(reader.take(self.len - self.acked));
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

    /// Records that everything before `offset` was acknowledged; empties the journal when
    /// nothing is left.
    pub(crate) fn ack(&mut self, offset: u64) -> io::Result<()> {
        let offset = offset.min(self.len);
        if offset <= self.acked {
            return Ok(());
        }
        if offset == self.len {
            // Everything is delivered: start afresh. The offset is reset first, so a crash
            // between the two steps leaves an offset of 0 over a journal of delivered events,
            // which are then re-sent and deduplicated by the API (never lost).
            write_atomically(&self.acked_path, b"0\n")?;
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.acked = 0;
            return Ok(());
        }
        write_atomically(&self.acked_path, format!("{offset}\n").as_bytes())?;
        self.acked = offset;
        Ok(())
    }
}

fn last_newline_end(file: &mut File, len: u64) -> io::Result<u64> {
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

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
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
    fn events_survive_a_restart_until_acknowledged() {
        let d = dir("restart");
        let mut j = Journal::open(&d).expect("open");
        for i in 0..5 {
            j.append(format!("{{\"id\":\"{i}\"}}").as_bytes())
                .expect("append");
        }
        let (batch, end) = j.peek(3).expect("peek");
        assert_eq!(batch.len(), 3);
        j.ack(end).expect("ack");
        drop(j);
        let mut j = Journal::open(&d).expect("reopen");
        let (batch, end) = j.peek(10).expect("peek");
        assert_eq!(batch, vec![r#"{"id":"3"}"#, r#"{"id":"4"}"#]);
        j.ack(end).expect("ack");
        assert_eq!(j.backlog_bytes(), 0);
        assert_eq!(
            std::fs::metadata(d.join("events.journal"))
                .expect("meta")
                .len(),
            0
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let d = dir("torn");
        std::fs::write(d.join("events.journal"), b"{\"id\":\"a\"}\n{\"id\":\"b").expect("write");
        let j = Journal::open(&d).expect("open");
        let (batch, _) = j.peek(10).expect("peek");
        assert_eq!(batch, vec![r#"{"id":"a"}"#]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
