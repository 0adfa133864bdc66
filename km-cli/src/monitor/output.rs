//! One side's output when a session intercepts: the pump of that side writes its bytes through
//! it, and the other pump can put a whole line into it (the JSON-RPC error that answers a
//! blocked request goes back to the side that sent the request), which lands at a line boundary,
//! never inside a line that is still being forwarded.
//!
//! Nobody holds the lock while writing: the lock only guards who may write now and what waits.
//! A line put in while the owner is writing, or while the owner has forwarded part of a line
//! whose end has not arrived yet, waits and is written by the owner right after its next write
//! that ends at a line boundary. At the end of the stream whatever waits is written anyway (after a newline,
//! when the stream ended inside a line), so an answer is not lost.

use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use super::relay::End;

#[derive(Debug)]
struct State {
    /// Whether the last byte written ended a line (or nothing was written yet).
    at_boundary: bool,
    /// Whether somebody is writing.
    busy: bool,
    /// Whole lines waiting for a boundary.
    waiting: Vec<u8>,
    /// The stream is over: nothing more is written.
    closed: bool,
}

/// A side's output shared by its pump and the other side's (see the module documentation).
#[derive(Debug)]
pub(crate) struct Output {
    /// `None` once closed (the peer sees the end of the stream then, not when the last of the
    /// two pumps lets go of this).
    /// Written through [`End`], whatever kind of file the client gave (pipe, socket, terminal).
    file: RwLock<Option<End>>,
    state: Mutex<State>,
    /// Signalled when `busy` is cleared: the owner waits for an injected line being written.
    idle: Condvar,
}

impl Output {
    /// Wraps `file`.
    pub(crate) fn new(file: File) -> Self {
        Output {
            file: RwLock::new(Some(End::new(file))),
            state: Mutex::new(State {
                at_boundary: true,
                busy: false,
                waiting: Vec::new(),
                closed: false,
            }),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes` to the file (only one writer at a time: the caller holds `busy`).
    fn write_file(&self, bytes: &[u8]) -> io::Result<()> {
        let file = self.file.read().unwrap_or_else(PoisonError::into_inner);
        match file.as_ref() {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    /// Writes `bytes` (the owner's stream, any cut), then what waited if it now stands at a line
    /// boundary.
    pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        while state.busy {
            state = self
                .idle
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.busy = true;
        drop(state);
        let result = self.write_file(bytes);
        let mut state = self.lock();
        if result.is_ok() {
            state.at_boundary = bytes.last() == Some(&b'\n');
        }
        self.drain(state, result)
    }

    /// Puts `line` (one line with its newline) into the stream at the next line boundary. Errors
    /// only when it was written now and writing failed.
    pub(crate) fn inject(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        if state.closed {
            return Ok(());
        }
        state.waiting.extend_from_slice(line);
        if state.busy || !state.at_boundary {
            return Ok(());
        }
        state.busy = true;
        self.drain(state, Ok(()))
    }

    /// Writes what waits while the stream stands at a boundary; clears `busy`.
    fn drain<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        mut result: io::Result<()>,
    ) -> io::Result<()> {
        while result.is_ok() && state.at_boundary && !state.waiting.is_empty() {
            let lines = std::mem::take(&mut state.waiting);
            drop(state);
            result = self.write_file(&lines);
            state = self.lock();
        }
        state.busy = false;
        drop(state);
        self.idle.notify_all();
        result
    }

    /// The stream is over: writes what still waits (ending an unfinished line first), closes the
    /// file, and accepts nothing more.
    pub(crate) fn close(&self) -> io::Result<()> {
        let mut state = self.lock();
        while state.busy {
            state = self
                .idle
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.closed = true;
        if state.waiting.is_empty() {
            drop(state);
            self.drop_file();
            return Ok(());
        }
        let mut lines = std::mem::take(&mut state.waiting);
        if !state.at_boundary {
            lines.insert(0, b'\n');
        }
        state.busy = true;
        drop(state);
        let result = self.write_file(&lines);
        self.lock().busy = false;
        self.idle.notify_all();
        self.drop_file();
        result
    }

    fn drop_file(&self) {
        let file = self
            .file
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(file) = file {
            file.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn output() -> (Output, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (Output::new(File::from(std::os::fd::OwnedFd::from(a))), b)
    }

    fn read_all(output: Output, mut reader: UnixStream) -> Vec<u8> {
        output.close().expect("close");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("read");
        got
    }

    #[test]
    fn an_injected_line_waits_for_the_end_of_a_partial_line() {
        let (out, reader) = output();
        out.write(b"{\"a\":1}\n{\"long\":\"par").expect("write");
        out.inject(b"{\"error\":1}\n").expect("inject");
        out.write(b"tial\"}").expect("write");
        out.write(b"\n{\"b\":2}\n").expect("write");
        assert_eq!(
            read_all(out, reader),
            // After the write that ended the long line (it also carried the next line whole).
            b"{\"a\":1}\n{\"long\":\"partial\"}\n{\"b\":2}\n{\"error\":1}\n"
        );
    }

    #[test]
    fn at_a_boundary_an_injected_line_goes_at_once() {
        let (out, reader) = output();
        out.write(b"x\n").expect("write");
        out.inject(b"err\n").expect("inject");
        out.write(b"y\n").expect("write");
        assert_eq!(read_all(out, reader), b"x\nerr\ny\n");
    }

    #[test]
    fn close_writes_what_waits_after_ending_the_line() {
        let (out, reader) = output();
        out.write(b"unterminated").expect("write");
        out.inject(b"err\n").expect("inject");
        out.close().expect("close");
        out.inject(b"late\n").expect("inject after close");
        assert!(out.write(b"late too\n").is_err(), "closed");
        assert_eq!(read_all(out, reader), b"unterminated\nerr\n");
    }
}
