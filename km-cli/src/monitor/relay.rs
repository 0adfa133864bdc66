//! The two pumps: client → server (km's stdin to the child's stdin) and server → client (the
//! child's stdout to km's stdout).
//!
//! A pump reads whatever is available (up to 64 KiB), writes it on at once, verbatim, and only
//! then lets the framer and classifier look at it. Nothing waits for a line end before forwarding,
//! so a 50 MB line streams through in chunks, and the bytes that come out are exactly the bytes
//! that went in (non-JSON, CRLF, invalid UTF-8, a last line without newline). Without plugins a
//! pump does not frame at all.
//!
//! A session with interceptors writes through a shared [`Output`] instead (the other pump may put
//! an answer into it) and the intercepting pump reads on its own; both go through [`End`], so
//! that what follows holds for them too.
//!
//! Pumps are plain threads doing blocking I/O: the cheapest way to move bytes between pipes, and
//! a pump blocked on a read that never ends (a client that never closes stdin) simply stays
//! behind when km exits.
//!
//! # Whatever stdin and stdout a client hands km
//!
//! The child's ends are always pipes (km makes them), but km's own stdin and stdout are whatever
//! the client chose: pipes (Python's `subprocess`, shells), Unix stream socketpairs (Node's
//! `child_process` for `stdio: 'pipe'`, and so every client built on Node or Electron, such as the
//! MCP Inspector: libuv makes a `socketpair(AF_UNIX, SOCK_STREAM)` per stdio slot; `'overlapped'`
//! and `'ipc'` are the same kind), a terminal, regular files, `/dev/null`. Node has no way to make
//! a `SOCK_SEQPACKET` socket, so one reaches km only from a client that made it itself; km still
//! relays it (below). Each end is looked at once, with `fstat` (and `SO_TYPE` for a socket):
//!
//! - **splice(2)**, pipe to pipe inside the kernel, only when the input is a pipe and the output a
//!   pipe or a regular file (with plugins too: see *Forwarding with plugins* below). splice holds the pipe it fills or drains locked while it waits on the
//!   other file: from a socket or a terminal it sits on the child's stdin pipe waiting for *more*
//!   client input, so the server can never read the request already in the pipe (the MCP
//!   Inspector timed out so); into a socket or terminal it sits on the child's stdout pipe while the
//!   client is slow to read, and the server's next write blocks (uninterruptibly) although the
//!   pipe has room. Pipe to pipe the kernel waits with the locks released, and a regular file
//!   never makes it wait for the client. A regular file opened for appending refuses splice
//!   (EINVAL before anything moved), and the copy loop takes over.
//! - **The copy loop** everywhere else: one `read` of what is there, then one write of exactly
//!   that, at once; nothing is held back for a fuller buffer.
//! - **A packet socket** (`SOCK_SEQPACKET`, also `SOCK_DGRAM`) delivers one packet per read and
//!   drops the part of it that does not fit, so each read first peeks at the next packet's size
//!   (`MSG_PEEK | MSG_TRUNC`) and makes room for it. Written to, each packet km sends is at most
//!   64 KiB (the size the usual readers, libuv among them, read at once). A zero-length packet
//!   reads like the end of the stream, as it does for `cat`: km takes it as the end.
//! - **Non-blocking descriptors**: a client may hand over stdin or stdout in `O_NONBLOCK` mode
//!   (the flag belongs to the open file, which km shares with the client). km does not change
//!   the flag under the client's feet: on `EAGAIN` it waits with `poll` and tries again (splice
//!   says `EAGAIN` too when either side is non-blocking).
//!
//! # End of stream, and errors on sockets
//!
//! Checked for sockets along the same assumption (that stdin and stdout are pipes):
//!
//! - End of input: a read of 0 is the end for a pipe, a file, a socket whose peer closed *or*
//!   shut down its writing side (what Node's `stdin.end()` does: the socket stays open), and a
//!   terminal's end-of-file key. A read that fails with `ECONNRESET` is a peer that went away
//!   with data of km's unread (possible when stdin and stdout are one socket): it is the end of
//!   input too, not an error to report.
//! - End of output: the pump closes its output. For the child's stdin (a pipe km made, held by
//!   km alone) that is the end of input the server sees. km's stdout is also held by fd 1 (and
//!   by the client, who may have passed one socket as both stdin and stdout), so closing km's
//!   copy would tell the client nothing until km exits: a socket is therefore shut down for
//!   writing (`shutdown(SHUT_WR)`), which the client reads as the end of the server's output at
//!   once, and which leaves reading on the same socket alone. Not when that socket is also
//!   km's stderr (`2>&1`): km's own messages and the server's stderr still go there. A pipe
//!   cannot be half-closed; its reader sees the end when km exits, as before.
//! - A reader that went away: `EPIPE` on a pipe or a Unix stream socket; `ECONNRESET` on the
//!   next write to a sequenced-packet or TCP socket whose reader left with data unread. Both
//!   are [`PumpEnd::OutputClosed`], which ends the session cleanly, without an error.
//! - A socket that was never connected (or a listening one) given as stdin or stdout says
//!   `ENOTCONN` (`EINVAL` when a Unix stream socket is read): a mistake of the caller's, which
//!   is reported as a read or write failure with the system's words, never taken for an end.
//! - `SIGPIPE` stays ignored (Rust's default; km never restores it), so a write to a pipe or
//!   socket whose reader left returns `EPIPE` instead of killing km.
//! - `F_SETPIPE_SZ` is only ever applied to the child's pipes ([`super::process`]) and to km's
//!   own duplicate pipe (below), never to km's stdin or stdout.
//!
//! # Forwarding with plugins: splice, and a tee(2) duplicate for the framer
//!
//! Where splice applies (above), a pump with observers forwards in the kernel too:
//! `tee(2)` duplicates what is in the input pipe into a pipe of km's own without consuming it,
//! `splice(2)` then moves exactly those bytes to the output, and only then does the framer read
//! the duplicate (one copy into km, instead of the copy loop's two, and none on the forwarding
//! path). The order is the copy loop's: announce, forward, frame, observe. Only this pump reads
//! its input, so the first `n` bytes splice moves are the `n` bytes tee duplicated; a splice that
//! moves fewer (a full output pipe) is repeated for the rest, and a forward that fails part way
//! hands the plugins only what went out. tee blocks until there is input, with the pipe locks
//! released, like a pipe-to-pipe splice. The duplicate pipe is emptied after every tee, so tee
//! always has its whole capacity ([`TEE_PIPE`]) and never waits on it. When the output refuses
//! splice after all (an appending file says EINVAL before anything moved) the duplicate is
//! dropped unread, the input still holds the bytes, and the copy loop takes over. The copy loop
//! stays where the input is not a pipe or the output not a pipe or file (sockets, terminals), for
//! a direction whose output the other pump shares ([`pump_shared`]) and for an intercepted one,
//! whose lines must be judged before they are forwarded ([`super::intercept`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use km_abi::Direction;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::FileType;
use rustix::net::{RecvFlags, SocketType};

use super::frame::{Frame, Framer, CHUNK};
use super::jsonrpc;
use super::output::Output;
use super::session::{now_us, Observed, Session};

/// How a pump ended.
#[derive(Debug)]
pub(crate) enum PumpEnd {
    /// Its input reached end of stream.
    Eof,
    /// Its output was closed by the reader (EPIPE, or ECONNRESET on a socket).
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
/// stdin; a socket is shut down for writing first, see the module documentation).
pub(crate) fn pump(
    direction: Direction,
    input: File,
    output: File,
    session: Option<Arc<Session>>,
) -> PumpReport {
    let input = End::new(input);
    let output = End::new(output);
    let (end, bytes) = match session {
        Some(session) => match teed(direction, &input, &output, &session) {
            Some(done) => done,
            None => framed(direction, &input, &mut Sink::File(&output), &session, false),
        },
        None => plain(&input, &output),
    };
    output.finish();
    PumpReport {
        direction,
        end,
        bytes,
    }
}

/// What kind of file an end of a pump is, as far as moving bytes goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A pipe or FIFO.
    Pipe,
    /// A regular file.
    File,
    /// A stream socket (a Unix socketpair, TCP).
    Stream,
    /// A socket that delivers packets (`SOCK_SEQPACKET`, `SOCK_DGRAM`).
    Packets,
    /// Anything else: a terminal, `/dev/null`, another character device.
    Other,
}

impl Kind {
    fn of(file: &File) -> Kind {
        let Ok(stat) = rustix::fs::fstat(file) else {
            return Kind::Other;
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Fifo => Kind::Pipe,
            FileType::RegularFile => Kind::File,
            FileType::Socket => match rustix::net::sockopt::socket_type(file) {
                Ok(SocketType::SEQPACKET | SocketType::DGRAM) => Kind::Packets,
                _ => Kind::Stream,
            },
            _ => Kind::Other,
        }
    }
}

/// One end of a pump, whatever the file behind it (see the module documentation): reads that
/// make room for a whole packet, wait out a non-blocking descriptor and take a reset
/// connection for the end of input; writes that wait likewise and say `BrokenPipe` for any
/// reader that went away; and an end that a socket's reader sees at once.
#[derive(Debug)]
pub(crate) struct End {
    file: File,
    kind: Kind,
}

impl End {
    /// Looks at `file` once (`fstat`, and `SO_TYPE` for a socket).
    pub(crate) fn new(file: File) -> Self {
        let kind = Kind::of(&file);
        End { file, kind }
    }

    /// Reads once into `framer`; 0 at the end of input.
    pub(crate) fn fill(&self, framer: &mut Framer) -> io::Result<usize> {
        self.read_with(|file, room| framer.fill_up_to(file, room))
    }

    /// Reads once with `read(file, room)`, where `room` fits the next read whole; returns the
    /// byte count, 0 at the end of input. Retries what could not happen yet (a signal, a
    /// non-blocking descriptor with nothing to read).
    fn read_with(
        &self,
        mut read: impl FnMut(&File, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            match self.room().and_then(|room| read(&self.file, room)) {
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => self.wait(PollFlags::IN),
                    // The peer went away with data of ours unread: its end of the stream.
                    io::ErrorKind::ConnectionReset => return Ok(0),
                    _ => return Err(e),
                },
                done => return done,
            }
        }
    }

    /// Room for the next read: a chunk, or the whole next packet of a packet socket.
    fn room(&self) -> io::Result<usize> {
        if self.kind != Kind::Packets {
            return Ok(CHUNK);
        }
        // Blocks until a packet (or the end) is there, like the read that follows would.
        let none: &mut [u8] = &mut [];
        let (_, len) = rustix::net::recv(&self.file, none, RecvFlags::PEEK | RecvFlags::TRUNC)?;
        Ok(len.max(CHUNK))
    }

    /// Writes all of `bytes`, at once; a packet socket gets packets of at most [`CHUNK`] bytes.
    /// A reader that went away (EPIPE, or ECONNRESET from a socket) is `BrokenPipe`.
    pub(crate) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let most = match self.kind {
            Kind::Packets => CHUNK,
            _ => usize::MAX,
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = &rest[..rest.len().min(most)];
            match (&self.file).write(piece) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => self.wait(PollFlags::OUT),
                    io::ErrorKind::ConnectionReset => return Err(io::ErrorKind::BrokenPipe.into()),
                    _ => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// Waits until the descriptor is ready for `flags` (only a non-blocking one is ever not).
    /// An error or hang-up is left for the next read or write to report.
    fn wait(&self, flags: PollFlags) {
        let _ = poll(&mut [PollFd::new(&self.file, flags)], None);
    }

    /// The end of this output: a socket is shut down for writing so that its reader sees the
    /// end now (unless it is also km's stderr); then the file is closed.
    pub(crate) fn finish(self) {
        if matches!(self.kind, Kind::Stream | Kind::Packets) && !same_file(&self.file, io::stderr())
        {
            let _ = rustix::net::shutdown(&self.file, rustix::net::Shutdown::Write);
        }
    }
}

/// Whether two descriptors are the same open socket or file.
fn same_file(a: impl std::os::fd::AsFd, b: impl std::os::fd::AsFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

fn plain(input: &End, output: &End) -> (PumpEnd, u64) {
    let mut total = 0u64;
    #[cfg(target_os = "linux")]
    if input.kind == Kind::Pipe && matches!(output.kind, Kind::Pipe | Kind::File) {
        // Where splice does not apply to these files after all, it says so at once: copy.
        if let Some(end) = spliced(input, output, &mut total) {
            return (end, total);
        }
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read_with(|file, room| {
            if buf.len() < room {
                buf.resize(room, 0);
            }
            let mut file = file;
            file.read(&mut buf[..room])
        });
        let n = match n {
            Ok(0) => return (PumpEnd::Eof, total),
            Ok(n) => n,
            Err(e) => return (PumpEnd::ReadFailed(e), total),
        };
        if let Err(e) = output.write_all(&buf[..n]) {
            return (write_end(e), total);
        }
        total += n as u64;
    }
}

/// Moves bytes with `splice(2)` from a pipe until the stream ends; `None` when splice cannot be
/// used for these files (it says so with EINVAL before moving anything; nothing is lost).
#[cfg(target_os = "linux")]
fn spliced(input: &End, output: &End, total: &mut u64) -> Option<PumpEnd> {
    use rustix::io::Errno;
    use rustix::pipe::{splice, SpliceFlags};
    loop {
        match splice(
            &input.file,
            None,
            &output.file,
            None,
            1 << 20,
            SpliceFlags::MOVE,
        ) {
            Ok(0) => return Some(PumpEnd::Eof),
            Ok(n) => *total += n as u64,
            Err(Errno::INTR) => continue,
            // One side is non-blocking and not ready: wait for both.
            Err(Errno::AGAIN) => {
                input.wait(PollFlags::IN);
                output.wait(PollFlags::OUT);
            }
            Err(Errno::INVAL) if *total == 0 => return None,
            Err(Errno::PIPE) => return Some(PumpEnd::OutputClosed),
            // Which side failed is not told apart by splice; report it as the read side unless
            // the output is the one that is gone (EPIPE, above).
            Err(e) => return Some(PumpEnd::ReadFailed(e.into())),
        }
    }
}

/// The capacity asked for the duplicate pipe of [`teed`]: what one tee can duplicate, and so the
/// largest chunk the framer reads at once. A quarter of the child's pipe: enough to take a busy
/// stream in few calls, small enough that the framer's buffer (which lines of a large read share)
/// stays small.
#[cfg(target_os = "linux")]
pub(crate) const TEE_PIPE: usize = 256 * 1024;

/// Forwards with `splice(2)` and frames a `tee(2)` duplicate (see the module documentation);
/// `None`, with nothing forwarded or framed, where that does not apply to these files.
#[cfg(target_os = "linux")]
fn teed(
    direction: Direction,
    input: &End,
    output: &End,
    session: &Session,
) -> Option<(PumpEnd, u64)> {
    use rustix::io::Errno;
    use rustix::pipe::{pipe_with, tee, PipeFlags, SpliceFlags};
    if input.kind != Kind::Pipe || !matches!(output.kind, Kind::Pipe | Kind::File) {
        return None;
    }
    let (dup_r, dup_w) = pipe_with(PipeFlags::CLOEXEC).ok()?;
    // A smaller pipe only means smaller chunks: the size stays what the system gives.
    let _ = rustix::pipe::fcntl_setpipe_size(&dup_w, TEE_PIPE);
    let room = rustix::pipe::fcntl_getpipe_size(&dup_w).unwrap_or(CHUNK);
    let mut framer = Framer::new();
    let mut batch = Vec::new();
    let mut total = 0u64;
    let end = loop {
        let n = match tee(&input.file, &dup_w, room, SpliceFlags::empty()) {
            Ok(0) => break PumpEnd::Eof,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                input.wait(PollFlags::IN);
                continue;
            }
            Err(Errno::INVAL) if total == 0 => return None,
            Err(e) => break PumpEnd::ReadFailed(e.into()),
        };
        let now = Instant::now();
        let timestamp = now_us();
        // Announced before forwarding: the peer may answer before splice even returns.
        session.forwarding(direction, total + n as u64);
        let (moved, failed) = splice_exactly(input, output, n);
        if moved == 0 && total == 0 && matches!(failed, Some(Errno::INVAL)) {
            // The output refuses splice (an appending file): nothing moved, the input still
            // holds these bytes, and the copy loop starts from them.
            return None;
        }
        // The duplicate holds `n` bytes; the plugins get the ones that went out. What stays
        // unread in it (after a failed forward) goes with the pipe.
        if let Err(e) = framer.fill_exact(&dup_r, moved) {
            break PumpEnd::ReadFailed(e);
        }
        total += moved as u64;
        while let Some(frame) = framer.next_frame() {
            collect(frame, &mut batch, session);
        }
        // Even without a complete line: the other side may be holding a response for this one.
        session.observe(direction, &mut batch, now, timestamp, total);
        match failed {
            None => {}
            Some(Errno::PIPE) => break PumpEnd::OutputClosed,
            // Which side failed is not told apart by splice (see `spliced`).
            Some(e) => break PumpEnd::ReadFailed(e.into()),
        }
    };
    // Whatever was forwarded is a line for the plugins, even without a final newline.
    if let Some(frame) = framer.finish() {
        collect(frame, &mut batch, session);
    }
    session.observe(direction, &mut batch, Instant::now(), now_us(), u64::MAX);
    Some((end, total))
}

/// Moves exactly `n` bytes, already in the input pipe, to the output with splice: the bytes
/// moved, and the error that stopped it short.
#[cfg(target_os = "linux")]
fn splice_exactly(input: &End, output: &End, n: usize) -> (usize, Option<rustix::io::Errno>) {
    use rustix::io::Errno;
    use rustix::pipe::{splice, SpliceFlags};
    let mut moved = 0;
    while moved < n {
        match splice(
            &input.file,
            None,
            &output.file,
            None,
            n - moved,
            SpliceFlags::MOVE,
        ) {
            // The input holds these bytes: 0 would mean someone else read them.
            Ok(0) => return (moved, Some(Errno::IO)),
            Ok(k) => moved += k,
            Err(Errno::INTR) => {}
            // The input has the bytes, so it is the output that is not ready (non-blocking).
            Err(Errno::AGAIN) => output.wait(PollFlags::OUT),
            Err(e) => return (moved, Some(e)),
        }
    }
    (moved, None)
}

/// Without `splice` and `tee` there is nothing to forward in the kernel with.
#[cfg(not(target_os = "linux"))]
fn teed(_: Direction, _: &End, _: &End, _: &Session) -> Option<(PumpEnd, u64)> {
    None
}

/// Where a framed pump writes.
enum Sink<'a> {
    /// Its own output.
    File(&'a End),
    /// An output the other pump may answer blocked requests into (a session that intercepts).
    Shared(&'a Output),
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PumpEnd> {
        match self {
            Sink::File(end) => end.write_all(bytes).map_err(write_end),
            Sink::Shared(output) => output.write(bytes).map_err(write_end),
        }
    }
}

fn framed(
    direction: Direction,
    input: &End,
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
        let n = match input.fill(&mut framer) {
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
    input: File,
    output: Arc<Output>,
    session: Arc<Session>,
) -> PumpReport {
    let (end, bytes) = framed(
        direction,
        &End::new(input),
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

fn write_end(e: io::Error) -> PumpEnd {
    match e.kind() {
        io::ErrorKind::BrokenPipe => PumpEnd::OutputClosed,
        _ => PumpEnd::WriteFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use rustix::net::{AddressFamily, SocketFlags};

    use super::*;

    /// A real pipe: (read end, write end).
    fn pipe() -> (File, File) {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        (File::from(r), File::from(w))
    }

    /// A Unix stream socketpair as files.
    fn stream_pair() -> (File, File) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (File::from(OwnedFd::from(a)), File::from(OwnedFd::from(b)))
    }

    /// A `SOCK_SEQPACKET` socketpair as files.
    fn packet_pair() -> (File, File) {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("seqpacket socketpair");
        (File::from(a), File::from(b))
    }

    /// Runs a pump without plugins on a thread.
    fn start(input: File, output: File) -> std::thread::JoinHandle<PumpReport> {
        std::thread::spawn(move || pump(Direction::Request, input, output, None))
    }

    /// Reads exactly `n` bytes from `from` on a thread; fails the test (instead of hanging it)
    /// when they do not come.
    fn read_exactly(from: &File, n: usize) -> Vec<u8> {
        let mut from = from.try_clone().expect("dup");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut got = vec![0u8; n];
            let _ = tx.send(from.read_exact(&mut got).map(|()| got));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the bytes came within 30 s: the relay held them back")
            .expect("read")
    }

    #[test]
    fn each_end_is_told_apart() {
        let (r, w) = pipe();
        assert_eq!(Kind::of(&r), Kind::Pipe);
        assert_eq!(Kind::of(&w), Kind::Pipe);
        assert_eq!(Kind::of(&stream_pair().0), Kind::Stream);
        assert_eq!(Kind::of(&packet_pair().0), Kind::Packets);
        let file = tempfile::tempfile().expect("a temp file");
        assert_eq!(Kind::of(&file), Kind::File);
        let null = File::open("/dev/null").expect("/dev/null");
        assert_eq!(Kind::of(&null), Kind::Other);
    }

    #[test]
    fn plain_pump_copies_and_reports_eof() {
        for (name, (in_r, mut in_w)) in [("pipe", pipe()), ("socket", stream_pair())] {
            let (mut out_r, out_w) = pipe();
            let writer = std::thread::spawn(move || {
                in_w.write_all(b"a\r\nb\xff\nno newline").expect("write");
            });
            let pumping = start(in_r, out_w);
            let mut got = Vec::new();
            out_r.read_to_end(&mut got).expect("read");
            writer.join().expect("writer");
            let report = pumping.join().expect("pump");
            assert_eq!(got, b"a\r\nb\xff\nno newline", "{name}");
            assert!(matches!(report.end, PumpEnd::Eof), "{name}: {report:?}");
            assert_eq!(report.bytes, got.len() as u64, "{name}");
        }
    }

    /// From a socket, splice waited for more input while holding the child's pipe,
    /// so the request already in it never reached the server.
    #[test]
    fn what_a_socket_delivers_reaches_the_pipe_while_the_socket_stays_open() {
        let (in_r, mut in_w) = stream_pair();
        let (out_r, out_w) = pipe();
        let _pumping = start(in_r, out_w);
        for message in [&b"{\"id\":1}\n"[..], b"{\"id\":2}\n", b"{\"partial\":"] {
            in_w.write_all(message).expect("write");
            assert_eq!(read_exactly(&out_r, message.len()), message);
        }
        drop(in_w);
    }

    #[test]
    fn a_pipe_to_a_socket_forwards_each_write_at_once() {
        let (in_r, mut in_w) = pipe();
        let (out_r, out_w) = stream_pair();
        let _pumping = start(in_r, out_w);
        for message in [&b"{\"id\":1}\n"[..], b"{\"id\":2}\n"] {
            in_w.write_all(message).expect("write");
            assert_eq!(read_exactly(&out_r, message.len()), message);
        }
    }

    #[test]
    fn closed_output_is_reported_as_such() {
        for (name, (out_r, out_w)) in [("pipe", pipe()), ("socket", stream_pair())] {
            let (in_r, mut in_w) = pipe();
            drop(out_r);
            in_w.write_all(b"x\n").expect("write");
            let report = pump(Direction::Response, in_r, out_w, None);
            assert!(
                matches!(report.end, PumpEnd::OutputClosed),
                "{name}: {report:?}"
            );
        }
    }

    #[test]
    fn a_packet_socket_reader_that_left_with_packets_unread_is_a_closed_output() {
        let (out_r, out_w) = packet_pair();
        (&out_w)
            .write_all(b"unread")
            .expect("a packet the reader never takes");
        drop(out_r);
        let (in_r, mut in_w) = pipe();
        in_w.write_all(b"x\n").expect("write");
        // The first write says ECONNRESET here, not EPIPE.
        let report = pump(Direction::Response, in_r, out_w, None);
        assert!(matches!(report.end, PumpEnd::OutputClosed), "{report:?}");
    }

    #[test]
    fn a_peer_that_left_with_data_unread_ends_the_input() {
        // One socket as both stdin and stdout (socat, inetd): the client leaves without reading
        // what km wrote, and km's next read says ECONNRESET.
        let (ours, theirs) = stream_pair();
        (&ours).write_all(b"a response nobody read").expect("write");
        drop(theirs);
        let (_out_r, out_w) = pipe();
        let report = pump(Direction::Request, ours, out_w, None);
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    }

    #[test]
    fn packets_larger_than_a_chunk_pass_whole_both_ways() {
        let big: Vec<u8> = (0..150_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        // From packets: each read makes room for the whole packet.
        let (in_r, in_w) = packet_pair();
        let (mut out_r, out_w) = stream_pair();
        let pumping = start(in_r, out_w);
        (&in_w).write_all(&big).expect("one 150 kB packet");
        (&in_w).write_all(b"\nsmall\n").expect("a small packet");
        drop(in_w);
        let mut got = Vec::new();
        out_r.read_to_end(&mut got).expect("read");
        let mut want = big.clone();
        want.extend_from_slice(b"\nsmall\n");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the packets came through whole");
        assert!(matches!(pumping.join().expect("pump").end, PumpEnd::Eof));

        // Into packets: none larger than a chunk, together all the bytes.
        let (in_r, mut in_w) = pipe();
        let (out_r, out_w) = packet_pair();
        let pumping = start(in_r, out_w);
        let writer = std::thread::spawn(move || {
            in_w.write_all(&big).expect("write");
            big
        });
        let mut got = Vec::new();
        let mut packet = vec![0u8; 4 * CHUNK];
        loop {
            let n = (&out_r).read(&mut packet).expect("read");
            if n == 0 {
                break;
            }
            assert!(n <= CHUNK, "a packet of {n} bytes");
            got.extend_from_slice(&packet[..n]);
        }
        let big = writer.join().expect("writer");
        assert!(got == big, "all the bytes came through");
        assert!(matches!(pumping.join().expect("pump").end, PumpEnd::Eof));
    }

    #[test]
    fn non_blocking_ends_are_waited_for_not_given_up() {
        // Pipe to pipe (splice) and socket to pipe (the copy loop), every end non-blocking.
        for (name, (in_r, in_w)) in [("pipe", pipe()), ("socket", stream_pair())] {
            let (mut out_r, out_w) = pipe();
            for end in [&in_r, &out_w] {
                rustix::io::ioctl_fionbio(end, true).expect("O_NONBLOCK");
            }
            let lines: Vec<u8> = (0..200)
                .flat_map(|i| {
                    format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "x".repeat(10_000)).into_bytes()
                })
                .collect();
            let pumping = start(in_r, out_w);
            let writer = {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for line in lines.split_inclusive(|b| *b == b'\n') {
                        (&in_w).write_all(line).expect("write");
                    }
                })
            };
            // The output is read only later, so the pump finds it full too.
            std::thread::sleep(Duration::from_millis(50));
            let mut got = Vec::new();
            out_r.read_to_end(&mut got).expect("read");
            writer.join().expect("writer");
            let report = pumping.join().expect("pump");
            assert!(matches!(report.end, PumpEnd::Eof), "{name}: {report:?}");
            assert!(
                got == lines,
                "{name}: {} bytes of {}",
                got.len(),
                lines.len()
            );
        }
    }

    #[test]
    fn a_socket_output_is_shut_down_at_the_end_although_still_open() {
        // km's stdout is held by fd 1 and the client as well: closing the pump's copy alone
        // would tell the reader nothing.
        let (mut out_r, out_w) = stream_pair();
        let _still_open = out_w.try_clone().expect("dup");
        let (in_r, mut in_w) = pipe();
        let pumping = start(in_r, out_w);
        in_w.write_all(b"last words\n").expect("write");
        drop(in_w);
        let mut got = Vec::new();
        out_r
            .read_to_end(&mut got)
            .expect("the reader sees the end");
        assert_eq!(got, b"last words\n");
        assert!(matches!(pumping.join().expect("pump").end, PumpEnd::Eof));
    }
}

/// The splice + tee path: byte identity and order on the forwarding side, and the
/// plugins handed exactly what went out, through the edge cases that path has and the copy
/// loop did not (a tee that duplicates part of what is waiting, a line cut between chunks or by
/// the end of the stream, an output that goes away part way, a plugin slower than the relay).
#[cfg(all(test, target_os = "linux"))]
mod tee_tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::monitor::banner::Notices;
    use crate::monitor::dispatch::{self, EndOfStream, LaneTotals};
    use crate::monitor::testing::{lines, probe, Log, Mode};

    fn pipe() -> (File, File) {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        (File::from(r), File::from(w))
    }

    /// A session with one probe plugin in `mode`.
    fn probe_session(mode: Mode, lossless: bool) -> (Arc<Session>, dispatch::Workers, Log) {
        let (plugin, log) = probe(mode);
        let (dispatcher, workers) = dispatch::start(
            &crate::runtime::for_tests(),
            vec![plugin],
            64,
            lossless,
            Notices::new(true, 0),
        );
        (Session::new(dispatcher), workers, log)
    }

    /// Ends the session and returns what the plugin handled and missed.
    fn end(session: &Session, workers: dispatch::Workers) -> LaneTotals {
        workers.set_end(EndOfStream {
            data: serde_json::Map::new(),
            timestamp_ms: 0,
        });
        session.close();
        let mut totals = workers.finish(Duration::from_secs(60), Duration::from_secs(5));
        totals.remove(0)
    }

    /// The lines the probe recorded, as the text it shows of each (`{:?}` of the lossy text).
    fn seen(log: &Log) -> Vec<String> {
        lines(log)
            .into_iter()
            .filter(|l| !l.starts_with("event ") && l != "shutdown")
            .map(|l| {
                let at = l.find(" \"").expect("the line's text");
                l[at + 1..].trim_end_matches(" latency").to_owned()
            })
            .collect()
    }

    /// What the probe shows of each line of `bytes` (terminators stripped as the framer does).
    fn expected(bytes: &[u8]) -> Vec<String> {
        bytes
            .split_inclusive(|b| *b == b'\n')
            .map(|line| {
                let line = match line.strip_suffix(b"\n") {
                    Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
                    None => line,
                };
                format!("{:?}", String::from_utf8_lossy(line))
            })
            .collect()
    }

    /// Runs a pump with `session` from a fresh pipe to `output`, writing `input` in `pieces`
    /// writes from another thread; returns the report and everything read from `read_back`.
    fn run(
        session: &Arc<Session>,
        input: &[u8],
        pieces: usize,
        output: File,
        mut read_back: File,
    ) -> (PumpReport, Vec<u8>) {
        let (in_r, mut in_w) = pipe();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let step = data.len().div_ceil(pieces.max(1)).max(1);
            for piece in data.chunks(step) {
                in_w.write_all(piece).expect("write");
            }
        });
        let session = session.clone();
        let pumping =
            std::thread::spawn(move || pump(Direction::Response, in_r, output, Some(session)));
        let mut got = Vec::new();
        read_back.read_to_end(&mut got).expect("read");
        writer.join().expect("writer");
        (pumping.join().expect("pump"), got)
    }

    /// Every hard case at once: CRLF, invalid UTF-8, empty lines, a line longer than the
    /// duplicate pipe (so tee duplicates part of what waits, and lines span chunks), and a last
    /// line without newline (the end of the stream in the middle of a line).
    fn hard_stream() -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..2000 {
            match i % 7 {
                0 => out.extend_from_slice(
                    format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\"}}\n")
                        .as_bytes(),
                ),
                1 => out.extend_from_slice(
                    format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{{}}}}\r\n",
                        i - 1
                    )
                    .as_bytes(),
                ),
                2 => out.extend_from_slice(b"\xff\xfe not json\n"),
                3 => out.extend_from_slice(b"\n"),
                4 if i % 500 == 4 => {
                    out.extend_from_slice(b"{\"big\":\"");
                    out.extend(std::iter::repeat_n(b'x', 3 * TEE_PIPE / 2));
                    out.extend_from_slice(b"\"}\n");
                }
                _ => out.extend_from_slice(format!("line {i}\n").as_bytes()),
            }
        }
        out.extend_from_slice(b"{\"last\":\"without newline\"}");
        out
    }

    #[test]
    fn pipe_to_pipe_with_a_plugin_forwards_in_the_kernel_byte_identical() {
        let input = hard_stream();
        for pieces in [1, 7, 5000] {
            let (session, workers, log) = probe_session(Mode::Record, true);
            let (out_r, out_w) = pipe();
            let (report, got) = run(&session, &input, pieces, out_w, out_r);
            assert!(
                got == input,
                "{pieces} writes: {} bytes of {}",
                got.len(),
                input.len()
            );
            assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
            assert_eq!(report.bytes, input.len() as u64);
            let totals = end(&session, workers);
            assert_eq!(totals.dropped, 0);
            assert_eq!(seen(&log), expected(&input), "{pieces} writes");
        }
    }

    #[test]
    fn the_tee_path_is_the_one_taken_for_pipes_and_files_only() {
        let (session, workers, _log) = probe_session(Mode::Noop, false);
        // A socket as output: the copy loop (splice would hold the pipe while the reader is slow).
        let (in_r, in_w) = pipe();
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let out = End::new(File::from(std::os::fd::OwnedFd::from(sock)));
        drop(in_w);
        assert!(teed(Direction::Request, &End::new(in_r), &out, &session).is_none());
        // Pipe to pipe: taken (and at once at the end of an empty stream).
        let (in_r, in_w) = pipe();
        let (_out_r, out_w) = pipe();
        drop(in_w);
        let done = teed(
            Direction::Request,
            &End::new(in_r),
            &End::new(out_w),
            &session,
        );
        assert!(matches!(done, Some((PumpEnd::Eof, 0))), "{done:?}");
        end(&session, workers);
    }

    #[test]
    fn an_appending_file_falls_back_to_the_copy_loop_without_losing_a_byte() {
        // splice refuses O_APPEND files with EINVAL after tee has duplicated the first chunk.
        let input = hard_stream();
        let (session, workers, log) = probe_session(Mode::Record, true);
        let path = tempfile::NamedTempFile::new().expect("temp file");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path.path())
            .expect("open for appending");
        let (in_r, mut in_w) = pipe();
        let data = input.clone();
        let writer = std::thread::spawn(move || in_w.write_all(&data).expect("write"));
        let report = pump(Direction::Response, in_r, file, Some(session.clone()));
        writer.join().expect("writer");
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
        let got = std::fs::read(path.path()).expect("read back");
        assert!(got == input, "{} bytes of {}", got.len(), input.len());
        end(&session, workers);
        assert_eq!(seen(&log), expected(&input));
    }

    #[test]
    fn a_plugin_slower_than_the_relay_gets_every_line_when_lossless() {
        let input: Vec<u8> = (0..300)
            .flat_map(|i| {
                format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"m\"}}\n").into_bytes()
            })
            .collect();
        // The queue holds 64 messages: the relay must wait for the plugin, not drop.
        let (session, workers, log) = probe_session(Mode::Slow(Duration::from_micros(300)), true);
        let (out_r, out_w) = pipe();
        let (report, got) = run(&session, &input, 300, out_w, out_r);
        assert!(got == input);
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
        let totals = end(&session, workers);
        assert_eq!((totals.handled, totals.dropped), (300, 0));
        assert_eq!(seen(&log), expected(&input));

        // Not lossless: forwarding is the same, what the plugin missed is counted, never lost
        // silently.
        let (session, workers, log) = probe_session(Mode::Slow(Duration::from_millis(2)), false);
        let (out_r, out_w) = pipe();
        let (_, got) = run(&session, &input, 1, out_w, out_r);
        assert!(got == input);
        let totals = end(&session, workers);
        assert_eq!(totals.handled + totals.dropped, 300, "{totals:?}");
        assert_eq!(seen(&log).len() as u64, totals.handled);
    }

    #[test]
    fn an_output_that_goes_away_part_way_hands_the_plugins_only_what_went_out() {
        let (session, workers, log) = probe_session(Mode::Record, true);
        let (in_r, mut in_w) = pipe();
        let (mut out_r, out_w) = pipe();
        in_w.write_all(b"first\nsecond\n").expect("write");
        let pumping = {
            let session = session.clone();
            std::thread::spawn(move || pump(Direction::Response, in_r, out_w, Some(session)))
        };
        let mut got = [0u8; 13];
        out_r.read_exact(&mut got).expect("the first lines");
        drop(out_r);
        // Nobody reads any more: this one cannot go out.
        in_w.write_all(b"third\n").expect("write");
        drop(in_w);
        let report = pumping.join().expect("pump");
        assert!(matches!(report.end, PumpEnd::OutputClosed), "{report:?}");
        assert_eq!(report.bytes, 13);
        end(&session, workers);
        assert_eq!(seen(&log), ["\"first\"", "\"second\""]);
    }

    #[test]
    fn non_blocking_pipes_with_a_plugin_are_waited_for() {
        let input = hard_stream();
        let (session, workers, log) = probe_session(Mode::Record, true);
        let (in_r, in_w) = pipe();
        let (mut out_r, out_w) = pipe();
        for end in [&in_r, &out_w] {
            rustix::io::ioctl_fionbio(end, true).expect("O_NONBLOCK");
        }
        let data = input.clone();
        let writer = std::thread::spawn(move || {
            for line in data.split_inclusive(|b| *b == b'\n') {
                (&in_w).write_all(line).expect("write");
            }
        });
        let pumping = {
            let session = session.clone();
            std::thread::spawn(move || pump(Direction::Response, in_r, out_w, Some(session)))
        };
        // Read late, so that the pump finds its output full too.
        std::thread::sleep(Duration::from_millis(50));
        let mut got = Vec::new();
        out_r.read_to_end(&mut got).expect("read");
        writer.join().expect("writer");
        let report = pumping.join().expect("pump");
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
        assert!(got == input, "{} bytes of {}", got.len(), input.len());
        end(&session, workers);
        assert_eq!(seen(&log), expected(&input));
    }
}
