//! Splitting a byte stream into lines for the plugins.
//!
//! The relay forwards every chunk the moment it is read; only afterwards does the [`Framer`] look
//! at the same bytes to cut them into lines. Reads land directly in the framer's buffer. When a
//! read was large (a busy stream) each complete line is split off as a [`Bytes`] that shares that
//! buffer, so a chunk full of small messages costs one allocation, not one per line. When a read
//! was small (an interactive session: one message per read), its lines are copied out instead, so
//! that a 100-byte message waiting in a slow plugin's queue never pins a 64 KiB buffer. Either
//! way a line reaches every plugin without a copy per plugin. A line is held in memory only until
//! it is complete; a line longer than the cap is not buffered at all (it is skipped for the
//! plugins and reported as [`Frame::Oversize`]), so memory stays bounded whatever arrives.
//!
//! # Reusing read buffers
//!
//! A buffer whose lines still wait in some queue (a plugin's, the telemetry thread's) cannot be
//! written into again. `BytesMut::reserve` then allocates a new one, and the reads of the tee
//! path (up to 256 KiB) are above glibc's mmap threshold, so every new buffer was a fresh
//! mapping whose pages the kernel had to fault in and zero, and whose unmapping followed when
//! the last line of it was dropped: with OTLP export on, whose queue holds lines longest, km
//! took 1.7 times the page faults of export off. The framer keeps the buffers it moved away
//! from ([`RETIRED`] of them) and, when the current one is still shared, moves to the first of
//! them that nobody holds any more (`BytesMut::try_reclaim`: a look at its reference count, never
//! an allocation), copying the partial line at the end of the old one, as `reserve` would. Only
//! when every retired buffer is still held does it allocate. [`RETIRED`] matches the telemetry
//! queue's byte bound (4 MiB, sixteen 256 KiB reads), the queue that holds lines longest: a
//! queue that lets go of its lines does so in bursts (a worker takes many at once), so the
//! buffers it freed must still be there for the reads after. What that costs: after a burst, up
//! to sixteen buffers per direction, at most [`RETIRED_BYTES`] of them, stay with the framer
//! instead of going back to the system, the most the queues held at the burst's peak; a buffer a
//! very long line outgrew is freed, as before. (Keeping at most two free ones brought export on
//! back to 24 k faults a run.)

use std::io;
use std::os::fd::AsFd;

use bytes::{Buf, Bytes, BytesMut};

/// How many bytes one read asks for: the size of a Linux pipe buffer.
pub(crate) const CHUNK: usize = 64 * 1024;

/// The longest line handed to plugins; longer lines are still relayed, but not buffered.
pub(crate) const MAX_LINE: usize = 128 * 1024 * 1024;

/// Lines of a read at least this large (or lines at least this long) share the read buffer;
/// others are copied out (see the module documentation).
pub(crate) const SHARE_FROM: usize = 16 * 1024;

/// Read buffers the framer moved away from while their lines were still queued, kept to be
/// written into again once those lines are gone (see "Reusing read buffers" above): as many as
/// a queue behind by a few MiB of reads holds.
const RETIRED: usize = 16;

/// The most bytes of buffers retired at once (their allocations; what reads touched of them is
/// less): what a stream of long lines needs to move between without fresh memory, not what a
/// line of 100 MB outgrew.
const RETIRED_BYTES: usize = 8 * 1024 * 1024;

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One line, without its `\n` or `\r\n` (see [`Framer::ending`]).
    Line(Bytes),
    /// A line longer than the cap, with its length in bytes (terminator excluded).
    Oversize(usize),
    /// With [`Framer::keep_oversize`]: the first bytes of a line longer than the cap (the cap's
    /// worth, or more), then [`Frame::OversizePart`]s with the rest of it as it arrives, the last
    /// one ending with the line's terminator.
    OversizeStart(Bytes),
    /// The next bytes of a long line; `true` when they end it (terminator included).
    OversizePart(Bytes, bool),
}

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `\n`.
    Lf,
    /// `\r\n`.
    CrLf,
    /// The stream ended without a newline.
    None,
}

impl Ending {
    /// The terminator's bytes.
    pub(crate) fn bytes(self) -> &'static [u8] {
        match self {
            Ending::Lf => b"\n",
            Ending::CrLf => b"\r\n",
            Ending::None => b"",
        }
    }
}

/// Cuts a stream into lines. Feed it with [`Framer::fill`] (or [`Framer::push`]), then take
/// lines with [`Framer::next_frame`] until it returns `None`; at the end of the stream,
/// [`Framer::finish`] returns a last line that had no newline.
#[derive(Debug)]
pub(crate) struct Framer {
    buf: BytesMut,
    /// Bytes at the front of `buf` already searched for a newline.
    scanned: usize,
    /// Where the bytes of the last read start in `buf`.
    fresh: usize,
    /// While skipping an oversize line: how many of its bytes went by.
    skipped: Option<usize>,
    max_line: usize,
    /// Whether the last read was large enough for its lines to share the buffer.
    share: bool,
    /// Hand out long lines in parts instead of skipping them (an intercepting pump must forward
    /// or drop every byte itself).
    keep_oversize: bool,
    /// While handing out a long line in parts.
    in_oversize: bool,
    /// How the last line handed out ended.
    ending: Ending,
    /// The size of `buf`'s allocation.
    buf_size: usize,
    /// Buffers moved away from while still shared, oldest first (at most [`RETIRED`]), with
    /// the sizes of their allocations.
    retired: Vec<(BytesMut, usize)>,
}

impl Framer {
    /// A framer that hands out lines up to [`MAX_LINE`] bytes.
    pub(crate) fn new() -> Self {
        Self::with_max_line(MAX_LINE)
    }

    /// A framer with its own cap (tests use small ones).
    pub(crate) fn with_max_line(max_line: usize) -> Self {
        Framer {
            buf: BytesMut::with_capacity(CHUNK),
            scanned: 0,
            fresh: 0,
            skipped: None,
            max_line,
            share: false,
            keep_oversize: false,
            in_oversize: false,
            ending: Ending::Lf,
            buf_size: CHUNK,
            retired: Vec::new(),
        }
    }

    /// A framer that hands out lines longer than `max_line` in parts (see
    /// [`Frame::OversizeStart`]) instead of skipping them.
    pub(crate) fn keeping_oversize(max_line: usize) -> Self {
        Framer {
            keep_oversize: true,
            ..Self::with_max_line(max_line)
        }
    }

    /// How the last [`Frame::Line`] ended.
    pub(crate) fn ending(&self) -> Ending {
        self.ending
    }

    /// Makes room for `n` more bytes after those the buffer holds (a partial line), in place
    /// when nobody holds the buffer's lines any more, else in a retired buffer nobody holds,
    /// else in a new one (see "Reusing read buffers" above).
    fn make_room(&mut self, n: usize) {
        if self.buf.try_reclaim(n) {
            return;
        }
        let held = self.buf.len();
        let need = held + n;
        // The first retired buffer that nobody holds any more and that is large enough: asking
        // for its whole allocation succeeds exactly when no line of it is left.
        let next = self
            .retired
            .iter_mut()
            .position(|(buf, size)| *size >= need && buf.try_reclaim(*size))
            .map(|i| self.retired.remove(i));
        let (mut next, size) = next.unwrap_or_else(|| {
            // A power of two, so that the next reads' partial lines fit as well: the pages past
            // what reads write are never touched, and cost no memory.
            let size = need.next_power_of_two().max(CHUNK);
            (BytesMut::with_capacity(size), size)
        });
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        let old_size = std::mem::replace(&mut self.buf_size, size);
        old.clear();
        // Kept within a budget of bytes, the oldest let go first: a buffer larger than the
        // budget (a long line outgrew it) is freed now, or when its last line goes, as `reserve`
        // would have. A buffer is kept even if nobody holds it any more: a worker lets go of its
        // lines between the look above and this one often enough that freeing those took the
        // next reads back to fresh memory (8.6-12 k faults a run instead of 2.6-3.3 k).
        if old_size <= RETIRED_BYTES {
            self.retired.push((old, old_size));
            let mut kept: usize = self.retired.iter().map(|(_, size)| size).sum();
            while self.retired.len() > RETIRED || kept > RETIRED_BYTES {
                kept -= self.retired.remove(0).1;
            }
        }
    }

    /// Reads once from `input` into the buffer; returns how many bytes came (0 at end of stream).
    /// The bytes are then available from [`Framer::fresh`] until the next read.
    #[cfg(test)]
    pub(crate) fn fill(&mut self, input: impl AsFd) -> io::Result<usize> {
        self.fill_up_to(input, CHUNK)
    }

    /// [`Framer::fill`] with room for `room` bytes: a packet socket hands over a whole packet per
    /// read and drops what does not fit, so the relay asks for the size of the next packet.
    #[allow(unsafe_code)]
    pub(crate) fn fill_up_to(&mut self, input: impl AsFd, room: usize) -> io::Result<usize> {
        let start = self.buf.len();
        self.fresh = start;
        self.make_room(room);
        // The read lands in the buffer's spare room as it is, without zeroing 64 KiB first (that
        // memset cost more than a small read itself).
        let spare = &mut self.buf.spare_capacity_mut()[..room];
        let n = rustix::io::read(input, spare)?.0.len();
        // SAFETY: `read` initialised the first `n` bytes of the spare room (it returned them as
        // the initialised part of that slice), and `n <= room <= spare capacity`, so the buffer's
        // first `start + n` bytes are initialised.
        unsafe { self.buf.set_len(start + n) };
        self.share = n >= SHARE_FROM;
        Ok(n)
    }

    /// Reads exactly `n` bytes from `input` into the buffer, in as many reads as it takes: the
    /// relay's duplicate pipe, which holds at least `n` (see `relay`). The bytes are then
    /// available from [`Framer::fresh`] until the next read. An end of input before `n` bytes is
    /// an error.
    #[allow(unsafe_code)]
    pub(crate) fn fill_exact(&mut self, input: impl AsFd, n: usize) -> io::Result<()> {
        let start = self.buf.len();
        self.fresh = start;
        self.make_room(n);
        let mut got = 0;
        while got < n {
            let spare = &mut self.buf.spare_capacity_mut()[..n - got];
            let k = match rustix::io::read(&input, spare) {
                Ok((read, _)) => read.len(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if k == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += k;
            // SAFETY: `read` initialised the first `k` bytes of the spare room (it returned them
            // as the initialised part of that slice), so the buffer's first `start + got` bytes
            // are initialised; `got <= n` and `n` bytes were reserved.
            unsafe { self.buf.set_len(start + got) };
        }
        self.share = n >= SHARE_FROM;
        Ok(())
    }

    /// Appends `bytes` as if they had been read (for callers that already hold the data).
    #[cfg(test)]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.fresh = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.share = bytes.len() >= SHARE_FROM;
    }

    /// The bytes of the last read, to be forwarded before any framing happens.
    pub(crate) fn fresh(&self) -> &[u8] {
        &self.buf[self.fresh..]
    }

    /// The next complete line, or `None` when the buffer holds no newline any more.
    pub(crate) fn next_frame(&mut self) -> Option<Frame> {
        let found = memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| self.scanned + i);
        if self.in_oversize {
            return self.oversize_part(found);
        }
        match found {
            Some(newline) => {
                let content = strip_terminator_len(&self.buf[..=newline]);
                self.ending = if content == newline {
                    Ending::Lf
                } else {
                    Ending::CrLf
                };
                if self.keep_oversize && content > self.max_line {
                    // The whole line is here: start and end it at once.
                    self.in_oversize = true;
                    self.scanned = 0;
                    self.fresh = 0;
                    return Some(Frame::OversizeStart(self.buf.split_to(content).freeze()));
                }
                self.scanned = 0;
                self.fresh = 0;
                if let Some(skipped) = self.skipped.take() {
                    self.buf.advance(newline + 1);
                    return Some(Frame::Oversize(skipped + content));
                }
                if content > self.max_line {
                    self.buf.advance(newline + 1);
                    return Some(Frame::Oversize(content));
                }
                let line = if self.share || content >= SHARE_FROM {
                    let mut line = self.buf.split_to(newline + 1);
                    line.truncate(content);
                    line.freeze()
                } else {
                    let line = Bytes::copy_from_slice(&self.buf[..content]);
                    self.buf.advance(newline + 1);
                    line
                };
                Some(Frame::Line(line))
            }
            None => {
                self.scanned = self.buf.len();
                // A `\r` that ends the buffer may be the first half of a `\r\n` split between two
                // reads: until the next byte comes it is not counted as content, so a line of
                // exactly the cap stays a line, and a skipped line's `\r\n` is still seen whole
                // (finding F1 of FUZZING.md). At the end of the stream `finish` counts it.
                let held = usize::from(self.buf.last() == Some(&b'\r'));
                let content = self.buf.len() - held;
                if self.keep_oversize && content > self.max_line {
                    self.in_oversize = true;
                    self.scanned = 0;
                    self.fresh = 0;
                    return Some(Frame::OversizeStart(self.buf.split().freeze()));
                }
                let pending = self.skipped.unwrap_or(0) + content;
                if pending > self.max_line {
                    // Too long to keep: forget what we have (but a held `\r`) and count the rest
                    // as it goes by.
                    self.skipped = Some(pending);
                    self.buf.advance(content);
                    self.scanned = 0;
                    self.fresh = 0;
                }
                None
            }
        }
    }

    /// The next part of a long line being handed out.
    fn oversize_part(&mut self, newline: Option<usize>) -> Option<Frame> {
        self.scanned = 0;
        self.fresh = 0;
        match newline {
            Some(newline) => {
                self.in_oversize = false;
                Some(Frame::OversizePart(
                    self.buf.split_to(newline + 1).freeze(),
                    true,
                ))
            }
            None if self.buf.is_empty() => None,
            None => Some(Frame::OversizePart(self.buf.split().freeze(), false)),
        }
    }

    /// At the end of the stream: the last line if it had no newline.
    pub(crate) fn finish(&mut self) -> Option<Frame> {
        let rest = self.buf.split();
        self.scanned = 0;
        self.fresh = 0;
        self.ending = Ending::None;
        if std::mem::take(&mut self.in_oversize) {
            return Some(Frame::OversizePart(rest.freeze(), true));
        }
        if self.keep_oversize && rest.len() > self.max_line {
            return Some(Frame::OversizeStart(rest.freeze()));
        }
        match self.skipped.take() {
            Some(skipped) => Some(Frame::Oversize(skipped + rest.len())),
            None if rest.is_empty() => None,
            None if rest.len() > self.max_line => Some(Frame::Oversize(rest.len())),
            None => Some(Frame::Line(rest.freeze())),
        }
    }
}

/// The length of `line` (which ends in `\n`) without `\n` or `\r\n`.
fn strip_terminator_len(line: &[u8]) -> usize {
    let mut len = line.len().saturating_sub(1);
    if len > 0 && line[len - 1] == b'\r' {
        len -= 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }

    fn line(s: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s))
    }

    #[test]
    fn splits_lines_across_chunk_boundaries() {
        let mut framer = Framer::new();
        framer.push(b"{\"a\":");
        assert!(lines(&mut framer).is_empty());
        framer.push(b"1}\n{\"b\"");
        assert_eq!(lines(&mut framer), vec![line(b"{\"a\":1}")]);
        framer.push(b":2}\nx\n\n");
        assert_eq!(
            lines(&mut framer),
            vec![line(b"{\"b\":2}"), line(b"x"), line(b"")]
        );
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn strips_crlf_but_keeps_lone_cr_inside() {
        let mut framer = Framer::new();
        framer.push(b"one\r\ntw\ro\n\r\n");
        assert_eq!(
            lines(&mut framer),
            vec![line(b"one"), line(b"tw\ro"), line(b"")]
        );
    }

    #[test]
    fn crlf_split_between_chunks() {
        let mut framer = Framer::new();
        framer.push(b"abc\r");
        assert!(lines(&mut framer).is_empty());
        framer.push(b"\n");
        assert_eq!(lines(&mut framer), vec![line(b"abc")]);
    }

    /// Finding F1 of FUZZING.md: a `\r\n` split between two reads right after a line of exactly
    /// the cap made the line oversize (the `\r` counted as content), and after an oversize line
    /// made the skipped length one too long and the ending `\n`.
    #[test]
    fn crlf_split_between_reads_at_the_cap() {
        for mut framer in [Framer::with_max_line(1), Framer::keeping_oversize(1)] {
            framer.push(b"x");
            assert!(lines(&mut framer).is_empty());
            framer.push(b"\r");
            assert!(lines(&mut framer).is_empty());
            framer.push(b"\n");
            assert_eq!(lines(&mut framer), vec![line(b"x")]);
            assert_eq!(framer.ending(), Ending::CrLf);
        }
        let mut framer = Framer::with_max_line(4);
        framer.push(b"0123456\r");
        assert!(lines(&mut framer).is_empty());
        assert_eq!(framer.buf.len(), 1, "only the `\\r` is held");
        framer.push(b"\nok\n");
        assert_eq!(framer.next_frame(), Some(Frame::Oversize(7)));
        assert_eq!(framer.ending(), Ending::CrLf);
        assert_eq!(lines(&mut framer), vec![line(b"ok")]);
        // A `\r` that is followed by more content is content; one that ends the stream too.
        framer.push(b"0123\r");
        assert!(lines(&mut framer).is_empty());
        framer.push(b"x\r");
        assert!(lines(&mut framer).is_empty());
        assert_eq!(framer.finish(), Some(Frame::Oversize(7)));
    }

    #[test]
    fn final_line_without_newline_comes_from_finish() {
        let mut framer = Framer::new();
        framer.push(b"a\nlast");
        assert_eq!(lines(&mut framer), vec![line(b"a")]);
        assert_eq!(framer.finish(), Some(line(b"last")));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn invalid_utf8_is_just_bytes() {
        let mut framer = Framer::new();
        framer.push(b"\xff\xfe\n");
        assert_eq!(lines(&mut framer), vec![line(b"\xff\xfe")]);
    }

    #[test]
    fn fresh_is_the_last_read_only() {
        let mut framer = Framer::new();
        framer.push(b"abc");
        let _ = lines(&mut framer);
        framer.push(b"def\n");
        assert_eq!(framer.fresh(), b"def\n");
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        std::io::Write::write_all(&mut writer, b"ghi").expect("write");
        assert_eq!(framer.fill(&reader).ok(), Some(3));
        assert_eq!(framer.fresh(), b"ghi");
    }

    #[test]
    fn reads_append_to_an_unfinished_line() {
        use std::io::Write;
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut framer = Framer::new();
        writer.write_all(b"{\"a\":").expect("write");
        assert_eq!(framer.fill(&reader).ok(), Some(5));
        assert!(lines(&mut framer).is_empty());
        writer.write_all(b"1}\nrest").expect("write");
        assert_eq!(framer.fill(&reader).ok(), Some(7));
        assert_eq!(framer.fresh(), b"1}\nrest");
        assert_eq!(lines(&mut framer), vec![line(b"{\"a\":1}")]);
        drop(writer);
        assert_eq!(framer.fill(&reader).ok(), Some(0));
        assert_eq!(framer.finish(), Some(line(b"rest")));
    }

    #[test]
    fn oversize_lines_are_skipped_without_buffering() {
        let mut framer = Framer::with_max_line(8);
        framer.push(b"ok\n0123456");
        assert_eq!(lines(&mut framer), vec![line(b"ok")]);
        framer.push(b"789abc");
        assert!(lines(&mut framer).is_empty());
        assert!(framer.buf.is_empty(), "an oversize line is not kept");
        framer.push(b"def\nsmall\n");
        assert_eq!(
            lines(&mut framer),
            vec![Frame::Oversize(16), line(b"small")]
        );
    }

    #[test]
    fn long_lines_can_be_handed_out_in_parts() {
        let mut framer = Framer::keeping_oversize(4);
        framer.push(b"ok\r\n0123456");
        assert_eq!(framer.next_frame(), Some(line(b"ok")));
        assert_eq!(framer.ending(), Ending::CrLf);
        assert_eq!(
            lines(&mut framer),
            vec![Frame::OversizeStart(Bytes::from_static(b"0123456"))]
        );
        framer.push(b"78");
        assert_eq!(
            lines(&mut framer),
            vec![Frame::OversizePart(Bytes::from_static(b"78"), false)]
        );
        framer.push(b"9\r\nok2\n");
        assert_eq!(
            lines(&mut framer),
            vec![
                Frame::OversizePart(Bytes::from_static(b"9\r\n"), true),
                line(b"ok2")
            ]
        );
        assert_eq!(framer.ending(), Ending::Lf);
        // A long line that arrives whole, and one the stream ends in.
        framer.push(b"abcdefgh\nxyz123");
        assert_eq!(
            lines(&mut framer),
            vec![
                Frame::OversizeStart(Bytes::from_static(b"abcdefgh")),
                Frame::OversizePart(Bytes::from_static(b"\n"), true),
                Frame::OversizeStart(Bytes::from_static(b"xyz123")),
            ]
        );
        framer.push(b"4");
        assert_eq!(
            lines(&mut framer),
            vec![Frame::OversizePart(Bytes::from_static(b"4"), false)]
        );
        assert_eq!(
            framer.finish(),
            Some(Frame::OversizePart(Bytes::new(), true))
        );
        assert_eq!(framer.ending(), Ending::None);
    }

    #[test]
    fn oversize_final_line() {
        let mut framer = Framer::with_max_line(4);
        framer.push(b"123456");
        assert!(lines(&mut framer).is_empty());
        assert_eq!(framer.finish(), Some(Frame::Oversize(6)));
    }

    #[test]
    fn lines_of_a_large_read_share_its_buffer_and_small_reads_are_copied() {
        let mut framer = Framer::new();
        let big = vec![b'x'; SHARE_FROM];
        let mut input = b"a\n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nb\nc");
        framer.push(&input);
        let got = lines(&mut framer);
        assert_eq!(got.len(), 3);
        let Frame::Line(a) = &got[0] else {
            panic!("a line")
        };
        let Frame::Line(b) = &got[2] else {
            panic!("a line")
        };
        // Split from one buffer: `b` sits right after `a`, the big line and their newlines.
        assert_eq!(
            b.as_ptr() as usize - a.as_ptr() as usize,
            2 + SHARE_FROM + 1
        );
        framer.push(b"\nsmall\n");
        let got = lines(&mut framer);
        assert_eq!(got, vec![line(b"c"), line(b"small")]);
        assert!(framer.buf.is_empty());
    }

    #[test]
    fn many_lines_in_one_chunk_share_the_buffer() {
        let mut framer = Framer::new();
        let mut input = Vec::new();
        for i in 0..1000 {
            input.extend_from_slice(format!("{{\"id\":{i}}}\n").as_bytes());
        }
        framer.push(&input);
        let got = lines(&mut framer);
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999], line(b"{\"id\":999}"));
    }

    /// Writes `bytes` into a pipe and has the framer read exactly them, as the tee path does.
    fn read_exact(framer: &mut Framer, bytes: &[u8]) {
        let (r, w) = rustix::pipe::pipe().expect("a pipe");
        assert_eq!(rustix::io::write(&w, bytes).expect("written"), bytes.len());
        framer.fill_exact(&r, bytes.len()).expect("read");
    }

    /// 40 KiB of lines (so that they share the read buffer), the last one cut off by `tail`.
    fn read_of(tag: u8, tail: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let whole: Vec<Vec<u8>> = (0..40u8).map(|i| vec![tag + i % 3; 1000]).collect();
        let mut bytes = Vec::new();
        for l in &whole {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(tail);
        (bytes, whole)
    }

    fn contents(frames: &[Frame]) -> Vec<Vec<u8>> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Line(l) => l.to_vec(),
                other => panic!("a line, not {other:?}"),
            })
            .collect()
    }

    fn start_of(frames: &[Frame]) -> usize {
        match &frames[0] {
            Frame::Line(l) => l.as_ptr() as usize,
            other => panic!("a line, not {other:?}"),
        }
    }

    #[test]
    fn a_read_buffer_whose_lines_are_queued_is_left_for_another_and_reused_once_they_are_gone() {
        let mut framer = Framer::new();
        // First read: forty lines and the start of a forty-first, held by a "queue".
        let (bytes, whole) = read_of(b'a', b"partial");
        read_exact(&mut framer, &bytes);
        let first = lines(&mut framer);
        assert_eq!(contents(&first), whole);
        let first_buffer = start_of(&first);

        // Second read: no room left behind the first one's lines, which are still held, so the
        // framer moves to another buffer, taking the partial line with it.
        let (mut bytes, mut whole) = read_of(b'k', b"");
        bytes.splice(0..0, b" line\n".iter().copied());
        whole.insert(0, b"partial line".to_vec());
        read_exact(&mut framer, &bytes);
        let second = lines(&mut framer);
        assert_eq!(contents(&second), whole, "the partial line moved whole");
        assert!(start_of(&second[1..]).abs_diff(first_buffer) >= CHUNK / 2);

        // The first read's lines are let go; the second's are still held. The third read goes
        // into the first buffer again, not into fresh memory.
        drop(first);
        let (bytes, whole) = read_of(b'u', b"");
        read_exact(&mut framer, &bytes);
        let third = lines(&mut framer);
        assert_eq!(contents(&third), whole);
        assert_eq!(
            start_of(&third),
            first_buffer,
            "the retired buffer was reused"
        );
        assert_eq!(contents(&second[1..2]), vec![vec![b'k'; 1000]]);
    }

    #[test]
    fn the_buffers_a_long_line_outgrew_are_kept_within_a_budget() {
        let mut framer = Framer::new();
        // No newline: the line grows through buffers of 64 KiB, 128 KiB... 32 MiB, together far
        // more than the budget.
        let part = vec![b'x'; 60 * 1024];
        let reads = 300;
        for _ in 0..reads {
            read_exact(&mut framer, &part);
            assert!(framer.next_frame().is_none());
        }
        let kept: usize = framer.retired.iter().map(|(_, size)| size).sum();
        assert!(
            kept <= RETIRED_BYTES,
            "kept {kept} bytes in {} buffers",
            framer.retired.len()
        );
        read_exact(&mut framer, b"\n");
        let Some(Frame::Line(line)) = framer.next_frame() else {
            panic!("the long line")
        };
        assert_eq!(line.len(), reads * part.len());
        assert!(line.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn retired_buffers_are_bounded_and_every_line_survives_them() {
        let mut framer = Framer::new();
        let mut held = Vec::new();
        let mut expected = Vec::new();
        for round in 0..(3 * RETIRED as u8) {
            let (bytes, whole) = read_of(b'a' + round % 20, b"");
            read_exact(&mut framer, &bytes);
            held.push(lines(&mut framer));
            expected.push(whole);
            assert!(framer.retired.len() <= RETIRED);
        }
        for (got, want) in held.iter().zip(&expected) {
            assert_eq!(&contents(got), want);
        }
    }
}
