//! Byte searches eight bytes at a time in a `u64` ("SIMD within a register"), for the two
//! scans that look at every byte of a string besides the automaton: the JSON tokenizer's check
//! for control characters, and the personal-data pass's search for a byte that can start a
//! candidate (a digit, `:`, `@`, `+`, `(`).
//!
//! Hand-written because the checks are a few lines of well-known bit tricks (Bit Twiddling
//! Hacks, "determine if a word has a byte less than n / between m and n"), while the crates
//! that offer fast byte searches (memchr) cover one to three exact bytes, not these classes;
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

/// The first index at or after `from` whose byte satisfies `mask` (checked word by word) or
/// `byte` (for the tail shorter than a word); `s.len()` when there is none.
#[inline(always)]
fn first(s: &[u8], from: usize, mask: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
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

/// The index of the first control character (below 0x20) in `s`, if any.
pub(crate) fn first_control(s: &[u8]) -> Option<usize> {
    let at = first(s, 0, |x| below(x, 0x20), |b| b < 0x20);
    (at < s.len()).then_some(at)
}

/// The first index at or after `from` holding a digit, `:`, `@`, `+` or `(`; `s.len()` when
/// there is none.
pub(crate) fn next_pii_trigger(s: &[u8], from: usize) -> usize {
    first(
        s,
        from,
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
                assert_eq!(first_control(&s), s.iter().position(|&b| b < 0x20), "{s:?}");
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
                assert_eq!(first_control(&s), (b < 0x20).then_some(lane));
            }
        }
    }
}
