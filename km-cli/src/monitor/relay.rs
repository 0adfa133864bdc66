//! The two pumps: client → server (km's stdin to the child's stdin) and server → client (the
//! child's stdout to km's stdout).
//!
//! A pump reads whatever is available (up to 64 KiB), writes it on at once, verbatim, and only
//! then lets the framer and classifier look at it. Nothing waits for a line end before forwarding,
//! so a 50 MB line streams through in chunks, and the bytes that come out are exactly the bytes
//! that went in (non-JSON, CRLF, invalid UTF-8, a last line without newline). Without plugins a
//! pump does not frame at all: on Linux it moves the bytes with `splice(2)`, pipe to pipe inside
//! the kernel, and falls back to a plain copy loop where splice does not apply (a terminal, a
//! regular file as output).
//!
//! Pumps are plain threads doing blocking I/O: the cheapest way to move bytes between pipes, and
//! a pump blocked on a read that never ends (a client that never closes stdin) simply stays
//! behind when km exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use km_abi::Direction;

use super::frame::{Frame, Framer, CHUNK};
use super::jsonrpc;
use super::output::Output;
use super::session::{now_us, Observed, Session};

/// How a pump ended.
#[derive(Debug)]
pub(crate) enum PumpEnd {
    /// Its input reached end of stream.
    Eof,
    /// Its output was closed by the reader (EPIPE).
    OutputClosed,
    /// Reading failed.
    ReadFailed(io::Error),
    /// Writing failed for another reason than a closed pipe.
    WriteFailed(io::Error),
}

/// What a pump tells the supervisor when it stops.
#[derive(Debug)]
pub(crate) struct PumpReport {
    /// Which pump.
    pub(crate) direction: Direction,
    /// Why it stopped.
    pub(crate) end: PumpEnd,
    /// Bytes forwarded.
    pub(crate) bytes: u64,
}

/// Copies `input` to `output` until one of them ends, handing lines to `session` if there is
/// one. `output` is closed before this returns (for the client side, that closes the child's
/// stdin).
pub(crate) fn pump(
    direction: Direction,
    mut input: File,
    output: File,
    session: Option<Arc<Session>>,
) -> PumpReport {
    let mut output = output;
    let (end, bytes) = match session {
        Some(session) => framed(
            direction,
            &mut input,
            &mut Sink::File(&mut output),
            &session,
            false,
        ),
        None => plain(&mut input, &mut output),
    };
    drop(output);
    PumpReport {
        direction,
        end,
        bytes,
    }
}

fn plain(input: &mut File, output: &mut File) -> (PumpEnd, u64) {
    let mut total = 0u64;
    // Where splice does not apply to these files, it says so at once: copy instead.
    #[cfg(target_os = "linux")]
    if let Some(end) = spliced(input, output, &mut total) {
        return (end, total);
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match read(input, &mut buf) {
            Ok(0) => return (PumpEnd::Eof, total),
            Ok(n) => n,
            Err(e) => return (PumpEnd::ReadFailed(e), total),
        };
        if let Err(end) = forward(output, &buf[..n]) {
            return (end, total);
        }
        total += n as u64;
    }
}

/// Moves bytes with `splice(2)` until the stream ends; `None` when splice cannot be used for
/// these files (it says so with EINVAL before moving anything; nothing is lost).
#[cfg(target_os = "linux")]
fn spliced(input: &File, output: &File, total: &mut u64) -> Option<PumpEnd> {
    use rustix::io::Errno;
    use rustix::pipe::{splice, SpliceFlags};
    loop {
        match splice(input, None, output, None, 1 << 20, SpliceFlags::MOVE) {
            Ok(0) => return Some(PumpEnd::Eof),
            Ok(n) => *total += n as u64,
            Err(Errno::INTR) => continue,
            Err(Errno::INVAL) if *total == 0 => return None,
            Err(Errno::PIPE) => return Some(PumpEnd::OutputClosed),
            // Which side failed is not told apart by splice; report it as the read side unless
            // the output is the one that is gone (EPIPE, above).
            Err(e) => return Some(PumpEnd::ReadFailed(e.into())),
        }
    }
}

/// Where a framed pump writes.
enum Sink<'a> {
    /// Its own output.
    File(&'a mut File),
    /// An output the other pump may answer blocked requests into (a session that intercepts).
    Shared(&'a Output),
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PumpEnd> {
        match self {
            Sink::File(file) => forward(file, bytes),
            Sink::Shared(output) => output.write(bytes).map_err(write_end),
        }
    }
}

fn framed(
    direction: Direction,
    input: &mut File,
    output: &mut Sink<'_>,
    session: &Session,
    register_first: bool,
) -> (PumpEnd, u64) {
    let mut framer = Framer::new();
    let mut batch = Vec::new();
    let mut total = 0u64;
    // With `register_first`, a chunk is framed and its requests registered before it is
    // forwarded (the other direction's interceptors judge responses by their request's method),
    // so it is kept aside meanwhile.
    let mut chunk = Vec::new();
    let end = loop {
        let n = loop {
            match framer.fill(&*input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match n {
            Ok(0) => break PumpEnd::Eof,
            Ok(n) => n,
            Err(e) => break PumpEnd::ReadFailed(e),
        };
        let now = Instant::now();
        let timestamp = now_us();
        if register_first {
            chunk.clear();
            chunk.extend_from_slice(framer.fresh());
            while let Some(frame) = framer.next_frame() {
                collect(frame, &mut batch, session);
            }
            session.observe(direction, &mut batch, now, timestamp, total + n as u64);
            if let Err(end) = output.put(&chunk) {
                break end;
            }
            total += n as u64;
            continue;
        }
        // Announced before writing: the peer may answer before `write` even returns.
        session.forwarding(direction, total + n as u64);
        if let Err(end) = output.put(framer.fresh()) {
            break end;
        }
        total += n as u64;
        while let Some(frame) = framer.next_frame() {
            collect(frame, &mut batch, session);
        }
        // Even without a complete line: the other side may be holding a response for this one.
        session.observe(direction, &mut batch, now, timestamp, total);
    };
    // Whatever was forwarded is a line for the plugins, even without a final newline.
    if let Some(frame) = framer.finish() {
        collect(frame, &mut batch, session);
    }
    // Nothing more will come from this side: nobody needs to wait for it.
    session.observe(direction, &mut batch, Instant::now(), now_us(), u64::MAX);
    (end, total)
}

/// Copies `input` to the shared `output` for a session that intercepts the other direction:
/// lines are registered before they are forwarded; `output` is closed before this returns.
pub(crate) fn pump_shared(
    direction: Direction,
    mut input: File,
    output: Arc<Output>,
    session: Arc<Session>,
) -> PumpReport {
    let (end, bytes) = framed(
        direction,
        &mut input,
        &mut Sink::Shared(&output),
        &session,
        true,
    );
    let end = match output.close() {
        Err(e) if matches!(end, PumpEnd::Eof) => write_end(e),
        _ => end,
    };
    PumpReport {
        direction,
        end,
        bytes,
    }
}

fn collect(frame: Frame, batch: &mut Vec<Observed>, session: &Session) {
    match frame {
        Frame::Line(line) => {
            let scan = jsonrpc::scan(&line);
            batch.push(Observed { line, scan });
        }
        Frame::Oversize(len) => session.error(
            km_abi::ErrorKind::FAILED,
            "framing",
            &format!("a line of {len} bytes was relayed but is too long to hand to plugins"),
        ),
        // Only a framer that keeps long lines (an intercepting pump's) hands them out in parts.
        Frame::OversizeStart(_) | Frame::OversizePart(..) => {}
    }
}

fn read(input: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn forward(output: &mut File, bytes: &[u8]) -> Result<(), PumpEnd> {
    output.write_all(bytes).map_err(write_end)
}

fn write_end(e: io::Error) -> PumpEnd {
    match e.kind() {
        io::ErrorKind::BrokenPipe => PumpEnd::OutputClosed,
        _ => PumpEnd::WriteFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        // A socket pair behaves like a pipe here (EOF, EPIPE) and is available on every Rust.
        let (r, w) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        (
            File::from(std::os::fd::OwnedFd::from(r)),
            File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    #[test]
    fn plain_pump_copies_and_reports_eof() {
        let (in_r, mut in_w) = pipe();
        let (out_r, out_w) = pipe();
        let writer = std::thread::spawn(move || {
            in_w.write_all(b"a\r\nb\xff\nno newline").expect("write");
        });
        let pumping = std::thread::spawn(move || pump(Direction::Request, in_r, out_w, None));
        let mut got = Vec::new();
        let mut out_r = out_r;
        out_r.read_to_end(&mut got).expect("read");
        writer.join().expect("writer");
        let report = pumping.join().expect("pump");
        assert_eq!(got, b"a\r\nb\xff\nno newline");
        assert!(matches!(report.end, PumpEnd::Eof));
        assert_eq!(report.bytes, got.len() as u64);
    }

    #[test]
    fn closed_output_is_reported_as_such() {
        let (in_r, mut in_w) = pipe();
        let (out_r, out_w) = pipe();
        drop(out_r);
        in_w.write_all(b"x\n").expect("write");
        let report = pump(Direction::Response, in_r, out_w, None);
        assert!(matches!(report.end, PumpEnd::OutputClosed), "{report:?}");
    }
}
