//! Byte searches for the scans that look at every byte of a string besides the automaton: the
//! JSON tokenizer's search for the end of a string (a quote, a backslash, or a control
//! character that makes it invalid), the decoder's for the next escape, and the personal-data
//! pass's search for a byte that can start a candidate (a digit, `:`, `@`, `+`, `(`).
//!
//! Two levels: blocks of 64 bytes are skipped while the minimum, over the block, of a coarse
//! map of each byte (zero exactly for the bytes that may be wanted, a superset of them) is
//! not zero: a loop the compiler turns into vector operations and `pminub` (SSE2 on any
//! x86-64), with one horizontal minimum per block. Measured with callgrind on
//! km-detect-bench's relay stream: the string tokenizer and the personal-data search together
//! at 1.6 instructions per byte, against 2.1 for the earlier fold of a predicate into a `bool`
//! over blocks of 32 (which the compiler widened to 16-bit lanes) and four for the word loop;
//! a loop that builds the block's bit mask is not vectorised. A block where it finds
//! something, and the tail, are searched eight bytes at a time in a `u64` ("SIMD within a
//! register") for the exact index.
//!
//! Hand-written because the checks are a few lines of well-known bit tricks (Bit Twiddling
//! Hacks, "determine if a word has a byte less than n / between m and n"), while the crates
//! that offer fast byte searches (memchr) cover one to three exact bytes, not these classes
//! (and a `memchr2` call plus a separate control check per string cost more than one fused
//! search on the short strings JSON is mostly made of);
//! safe code, since SIMD intrinsics would need `unsafe`. Each function returns the index of the
//! first matching byte: the lowest set bit of each mask below is exact (a borrow can only set
//! bits above a true match), so the lowest set bit of their union is exact too. The unit tests
//! compare every function with its byte-by-byte definition.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

fn word(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(chunk);
    u64::from_le_bytes(b)
}

/// High bit of each byte below `n` (n ≤ 128); the lowest set bit is exact.
#[inline(always)]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// High bit of each byte equal to `b`; the lowest set bit is exact.
#[inline(always)]
fn equal(x: u64, b: u8) -> u64 {
    below(x ^ (ONES * u64::from(b)), 1)
}

/// High bit of each byte strictly between `m` and `n` (m ≤ 127, n ≤ 128); exact per byte.
#[inline(always)]
fn between(x: u64, m: u8, n: u8) -> u64 {
    let low = x & LOW7;
    (ONES * (127 + u64::from(n))).wrapping_sub(low)
        & !x
        & (low + ONES * (127 - u64::from(m)))
        & HIGHS
}

/// Bytes per block of the vectorised first level.
const BLOCK: usize = 64;

/// The first index at or after `from` whose byte satisfies `byte`; `s.len()` when there is
/// none. One word is tried first with `mask` (exact); then whole blocks are skipped while
/// `coarse` is zero for no byte in them (zero for a superset of `byte`, its minimum taken over
/// the block without branches: the loop the compiler vectorises); a
/// block where one does is searched word by word with `mask` (exact), then the search goes on
/// with blocks; a tail shorter than a block is searched with `mask`, then `byte`. The three
/// must agree (the unit tests check each search against `byte` alone).
#[inline(always)]
fn first(
    s: &[u8],
    from: usize,
    coarse: impl Fn(u8) -> u8,
    mask: impl Fn(u64) -> u64,
    byte: impl Fn(u8) -> bool,
) -> usize {
    let mut i = from.min(s.len());
    // One word first: where such bytes are dense (the escapes of JSON inside a string, the
    // digits of a document) the next one is usually this close, and a word costs a few
    // instructions where the block set-up costs tens.
    if let Some(w) = s.get(i..i + 8) {
        let m = mask(word(w));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(block) = s.get(i..i + BLOCK) {
        if block.iter().fold(u8::MAX, |m, &b| m.min(coarse(b))) == 0 {
            for w in block.chunks_exact(8) {
                let m = mask(word(w));
                if m != 0 {
                    return i + (m.trailing_zeros() / 8) as usize;
                }
                i += 8;
            }
        } else {
            i += BLOCK;
        }
    }
    while i + 8 <= s.len() {
        let m = mask(word(&s[i..i + 8]));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !byte(s[i]) {
        i += 1;
    }
    i
}

/// The first index at or after `from` holding a quote, a backslash or a control character
/// (what ends or interrupts the plain run of a JSON string); `s.len()` when there is none.
#[inline]
pub(crate) fn next_string_special(s: &[u8], from: usize) -> usize {
    first(
        s,
        from,
        // Zero exactly for a quote, a backslash or a byte below 0x20 (whose bits above the
        // fifth are all clear).
        |b| (b ^ b'"').min(b ^ b'\\').min(b & 0xE0),
        |x| equal(x, b'"') | equal(x, b'\\') | below(x, 0x20),
        |b| (b == b'"') | (b == b'\\') | (b < 0x20),
    )
}

/// The first index at or after `from` holding a backslash or a control character (what
/// interrupts the plain run of a JSON string's content); `s.len()` when there is none.
#[inline]
pub(crate) fn next_escape_or_control(s: &[u8], from: usize) -> usize {
    first(
        s,
        from,
        |b| (b ^ b'\\').min(b & 0xE0),
        |x| equal(x, b'\\') | below(x, 0x20),
        |b| (b == b'\\') | (b < 0x20),
    )
}

/// The first index at or after `from` holding a digit, `:`, `@`, `+` or `(`; `s.len()` when
/// there is none.
pub(crate) fn next_pii_trigger(s: &[u8], from: usize) -> usize {
    first(
        s,
        from,
        // `(`..=`@` holds every candidate byte (and a few punctuation marks besides): zero
        // exactly for the bytes of that range, in two vector operations per 16 bytes.
        |b| b.wrapping_sub(b'(').saturating_sub(b'@' - b'('),
        |x| between(x, b'0' - 1, b':' + 1) | equal(x, b'@') | equal(x, b'+') | equal(x, b'('),
        |b| b.is_ascii_digit() || matches!(b, b':' | b'@' | b'+' | b'('),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_search_agrees_with_its_definition_byte_by_byte() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..40 {
            for _ in 0..400 {
                let s: Vec<u8> = (0..len)
                    .map(|_| match next() % 4 {
                        // Mostly letters, with every byte value now and then.
                        0 => (next() % 256) as u8,
                        _ => b'a' + (next() % 26) as u8,
                    })
                    .collect();
                for from in 0..=len {
                    let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
                    let want = (from..len).find(|&i| special(s[i])).unwrap_or(len);
                    assert_eq!(next_string_special(&s, from), want, "{s:?} from {from}");
                    let want = (from..len)
                        .find(|&i| s[i] == b'\\' || s[i] < 0x20)
                        .unwrap_or(len);
                    assert_eq!(next_escape_or_control(&s, from), want, "{s:?} from {from}");
                }
                for from in 0..=len {
                    let want = (from..len)
                        .find(|&i| {
                            s[i].is_ascii_digit() || matches!(s[i], b':' | b'@' | b'+' | b'(')
                        })
                        .unwrap_or(len);
                    assert_eq!(next_pii_trigger(&s, from), want, "{s:?} from {from}");
                }
            }
        }
        // The byte values around each class's edges, in every lane.
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut s = [b'a'; 8];
                s[lane] = b;
                let is_trigger = b.is_ascii_digit() || matches!(b, b':' | b'@' | b'+' | b'(');
                assert_eq!(next_pii_trigger(&s, 0), if is_trigger { lane } else { 8 });
                let special = b == b'"' || b == b'\\' || b < 0x20;
                assert_eq!(next_string_special(&s, 0), if special { lane } else { 8 });
            }
        }
    }

    #[test]
    fn the_block_level_finds_a_single_byte_at_every_offset_of_long_strings() {
        // One candidate byte (or none) in a long run of letters, at every position around and
        // across the vector blocks, searched from every start: the block level must neither
        // skip it nor stop early at a block without it.
        let interesting: Vec<u8> = (0..=255u8)
            .filter(|&b| b < 0x22 || b.is_ascii_digit() || b":;@+(/?".contains(&b) || b >= 0x7F)
            .collect();
        for len in [31usize, 32, 33, 63, 64, 65, 100, 127, 129] {
            for at in 0..=len {
                for &b in &interesting {
                    let mut s = vec![b'q'; len];
                    if at < len {
                        s[at] = b;
                    }
                    // A block holding only a byte that the coarse test lets through (`.`,
                    // `/`, `?`...) must not end the search: a candidate may follow.
                    if at + 40 < len {
                        s[len - 1] = if b % 2 == 0 { b'7' } else { b'"' };
                    }
                    for from in [
                        0,
                        1,
                        7,
                        8,
                        31,
                        32,
                        33,
                        63,
                        64,
                        65,
                        at.saturating_sub(1),
                        at,
                        len,
                    ] {
                        let from = from.min(len);
                        let want = (from..len)
                            .find(|&i| {
                                s[i].is_ascii_digit() || matches!(s[i], b':' | b'@' | b'+' | b'(')
                            })
                            .unwrap_or(len);
                        assert_eq!(next_pii_trigger(&s, from), want, "{len} {at} {b} {from}");
                        let want = (from..len)
                            .find(|&i| s[i] == b'"' || s[i] == b'\\' || s[i] < 0x20)
                            .unwrap_or(len);
                        assert_eq!(next_string_special(&s, from), want);
                        let want = (from..len)
                            .find(|&i| s[i] == b'\\' || s[i] < 0x20)
                            .unwrap_or(len);
                        assert_eq!(next_escape_or_control(&s, from), want);
                    }
                }
            }
        }
    }
}
