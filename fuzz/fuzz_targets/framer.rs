//! The monitor's framer, both modes, compiled from km's own source (it is private to km's
//! monitor). Input: a cap, cut points, then the stream; property: what the framer hands out
//! re-concatenates to exactly the stream (keeping mode), or to the stream with over-cap lines
//! masked (skipping mode), however the stream was cut into reads.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../km-cli/src/monitor/frame.rs"]
#[allow(dead_code, unreachable_pub)]
mod frame;

use frame::{Frame, Framer};

fn run(mut framer: Framer, input: &[u8], cuts: &[u8], keep: bool) -> Vec<u8> {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    let mut out = Vec::new();
    let emit = |frame: Frame, framer: &Framer, out: &mut Vec<u8>| match frame {
        Frame::Line(line) => {
            out.extend_from_slice(&line);
            out.extend_from_slice(framer.ending().bytes());
        }
        Frame::Oversize(n) => {
            assert!(!keep);
            out.extend(std::iter::repeat(b'#').take(n));
            out.extend_from_slice(framer.ending().bytes());
        }
        Frame::OversizeStart(b) | Frame::OversizePart(b, _) => {
            assert!(keep);
            out.extend_from_slice(&b);
        }
    };
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = (usize::from(cuts.get(i % cuts.len().max(1)).copied().unwrap_or(255)) + 1)
            .min(input.len() - at);
        rustix::io::write(&write, &input[at..at + n]).expect("pipe write");
        let got = framer.fill_up_to(&read, frame::CHUNK).expect("fill");
        assert_eq!(framer.fresh(), &input[at..at + got]);
        at += got;
        i += 1;
        while let Some(frame) = framer.next_frame() {
            emit(frame, &framer, &mut out);
        }
    }
    if let Some(frame) = framer.finish() {
        emit(frame, &framer, &mut out);
    }
    out
}

fn masked(input: &[u8], cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in input.split_inclusive(|&b| b == b'\n') {
        let (body, end): (&[u8], &[u8]) = if let Some(b) = piece.strip_suffix(b"\r\n") {
            (b, b"\r\n")
        } else if let Some(b) = piece.strip_suffix(b"\n") {
            (b, b"\n")
        } else {
            (piece, b"")
        };
        if body.len() > cap {
            out.extend(std::iter::repeat(b'#').take(body.len()));
        } else {
            out.extend_from_slice(body);
        }
        out.extend_from_slice(end);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cap = usize::from(data[0]) + 1;
    let ncuts = usize::from(data[1] % 16);
    let cuts = &data[2..(2 + ncuts).min(data.len())];
    let input = &data[(2 + ncuts).min(data.len())..];
    assert_eq!(run(Framer::keeping_oversize(cap), input, cuts, true), input);
    assert_eq!(run(Framer::with_max_line(cap), input, cuts, false), masked(input, cap));
});
