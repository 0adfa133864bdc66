//! A tiny pattern language for token formats: a sequence of literals and character-class runs
//! (`Lit("_")`, `Run(ALNUM, 30, 30)`), matched with bounded backtracking at a position the
//! prefilter found.
//!
//! Why not `regex`: every rule here is anchored at a prefilter hit and is a short sequence of
//! class runs, so a 60-line matcher does the work of a regex engine without its build time or
//! its per-call overhead, and the token boundary rule (a format match must not be followed by
//! more characters of its last class) is expressed directly.

/// A set of ASCII bytes as a 128-bit mask. Non-ASCII bytes are never in a class.
pub(crate) type Class = u128;

/// Builds a class from a spec such as `b"A-Za-z0-9_-"` (ranges `a-z`; a `-` at either end is
/// literal).
pub(crate) const fn class(spec: &[u8]) -> Class {
    let mut m: u128 = 0;
    let mut i = 0;
    while i < spec.len() {
        if i + 2 < spec.len() && spec[i + 1] == b'-' {
            let mut c = spec[i];
            while c <= spec[i + 2] {
                m |= 1u128 << c;
                c += 1;
            }
            i += 3;
        } else {
            m |= 1u128 << spec[i];
            i += 1;
        }
    }
    m
}

#[inline]
pub(crate) fn in_class(c: Class, b: u8) -> bool {
    b < 128 && (c >> b) & 1 == 1
}

pub(crate) const DIGIT: Class = class(b"0-9");
pub(crate) const HEX: Class = class(b"0-9a-fA-F");
pub(crate) const HEX_LOWER: Class = class(b"0-9a-f");
pub(crate) const ALPHA: Class = class(b"A-Za-z");
pub(crate) const ALNUM: Class = class(b"A-Za-z0-9");
pub(crate) const UPPER_ALNUM: Class = class(b"A-Z0-9");
pub(crate) const LOWER_ALNUM: Class = class(b"a-z0-9");
/// base64url alphabet.
pub(crate) const B64URL: Class = class(b"A-Za-z0-9_-");
/// standard base64 alphabet without padding.
pub(crate) const B64: Class = class(b"A-Za-z0-9+/");
/// Characters that make up a word for boundary purposes.
pub(crate) const WORD: Class = class(b"A-Za-z0-9_");

/// One element of a pattern.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seg {
    /// Exact bytes (case-sensitive).
    Lit(&'static [u8]),
    /// Between `min` and `max` bytes of a class (greedy, backtracking).
    Run(Class, u16, u16),
}

/// Matches `segs` at `s[pos..]`; returns the end of the longest match such that the byte after
/// it is not in `stop` (so a format is not matched as the prefix of a longer random string).
pub(crate) fn match_at(segs: &[Seg], s: &[u8], pos: usize, stop: Class) -> Option<usize> {
    let mut budget = 4096u32;
    m(segs, s, pos, stop, &mut budget)
}

fn m(segs: &[Seg], s: &[u8], pos: usize, stop: Class, budget: &mut u32) -> Option<usize> {
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    let Some((first, rest)) = segs.split_first() else {
        return match s.get(pos) {
            Some(&b) if in_class(stop, b) => None,
            _ => Some(pos),
        };
    };
    match *first {
        Seg::Lit(l) => {
            if s.len() >= pos + l.len() && &s[pos..pos + l.len()] == l {
                m(rest, s, pos + l.len(), stop, budget)
            } else {
                None
            }
        }
        Seg::Run(c, min, max) => {
            let (min, max) = (min as usize, max as usize);
            let mut n = 0;
            while n < max && pos + n < s.len() && in_class(c, s[pos + n]) {
                n += 1;
            }
            if n < min {
                return None;
            }
            let mut k = n;
            loop {
                if let Some(e) = m(rest, s, pos + k, stop, budget) {
                    return Some(e);
                }
                if k == min {
                    return None;
                }
                k -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_match_respects_the_stop_class() {
        let segs = [Seg::Lit(b"ab_"), Seg::Run(ALNUM, 4, 6)];
        assert_eq!(match_at(&segs, b"ab_1234", 0, ALNUM), Some(7));
        assert_eq!(match_at(&segs, b"ab_1234567", 0, ALNUM), None);
        assert_eq!(match_at(&segs, b"ab_123", 0, ALNUM), None);
        assert_eq!(match_at(&segs, b"ab_12345.", 0, ALNUM), Some(8));
    }

    #[test]
    fn backtracks_into_a_following_literal() {
        let segs = [Seg::Run(B64URL, 2, 10), Seg::Lit(b"-x")];
        assert_eq!(match_at(&segs, b"ab-cd-x", 0, 0), Some(7));
    }
}
