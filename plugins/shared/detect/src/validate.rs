//! Validators that confirm a format match: checksums embedded in token formats (GitHub/npm
//! CRC32 in base62, age's bech32), Luhn, IBAN mod-97, Shannon entropy, base64 decoding for
//! structural checks (JWT headers, Discord ids), and the placeholder/example heuristics.
//!
//! Hand-written because each is a few lines and none needs more than bytes in, answer out; a
//! crate per checksum would cost more build time than the code. CRC32 uses crc32fast (already
//! in the dependency graph), whose SIMD kernel is the part worth not rewriting.

/// Substring test. For the short haystacks and needles of the validators (identifiers,
/// values, a sentence), a plain window comparison beats building a memmem searcher per call
/// (measured: memmem's setup dominated the profile); long haystacks still use memmem.
#[inline]
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.len() >= 256 {
        return memchr::memmem::find(hay, needle).is_some();
    }
    let first = needle[0];
    hay.windows(needle.len())
        .any(|w| w[0] == first && w == needle)
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(s: &[u8]) -> f32 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f32;
    let mut h = 0.0f32;
    for &c in counts.iter().filter(|&&c| c > 0) {
        let p = c as f32 / n;
        h -= p * p.log2();
    }
    h
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Encodes `v` in base62 (0-9A-Za-z), left-padded with `0` to `width` digits.
pub(crate) fn base62_fixed(mut v: u64, width: usize) -> Vec<u8> {
    let mut out = vec![b'0'; width];
    let mut i = width;
    while v > 0 && i > 0 {
        i -= 1;
        out[i] = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// GitHub's (and npm's) token checksum: the last 6 characters are the CRC32 of the random
/// part before them, in base62, zero-padded. `body` is the token without its prefix.
pub(crate) fn crc32_base62_ok(body: &[u8]) -> bool {
    if body.len() <= 6 {
        return false;
    }
    let (random, check) = body.split_at(body.len() - 6);
    base62_fixed(u64::from(crc32fast::hash(random)), 6) == check
}

/// Luhn check over ASCII digits.
pub(crate) fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 check over a compact IBAN (uppercase letters and digits).
pub(crate) fn iban_mod97_ok(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let rearranged = iban[4..].iter().chain(iban[..4].iter());
    let mut rem: u32 = 0;
    for &c in rearranged {
        match c {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => {
                let v = u32::from(c - b'A') + 10;
                rem = (rem * 100 + v) % 97;
            }
            _ => return false,
        }
    }
    rem == 1
}

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn bech32_polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk: u32 = 1;
    for &v in values {
        let b = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (b >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// BIP-173 bech32 checksum of a whole string (`hrp1data`), case-insensitive as the spec
/// allows for a string in one case. age secret keys are bech32 with hrp `age-secret-key-`.
pub(crate) fn bech32_ok(s: &[u8]) -> bool {
    let Some(sep) = s.iter().rposition(|&c| c == b'1') else {
        return false;
    };
    if sep == 0 || sep + 7 > s.len() {
        return false;
    }
    let hrp: Vec<u8> = s[..sep].iter().map(|c| c.to_ascii_lowercase()).collect();
    let mut values: Vec<u8> = hrp.iter().map(|c| c >> 5).collect();
    values.push(0);
    values.extend(hrp.iter().map(|c| c & 31));
    for &c in &s[sep + 1..] {
        let lc = c.to_ascii_lowercase();
        match BECH32_CHARSET.iter().position(|&x| x == lc) {
            Some(p) => values.push(p as u8),
            None => return false,
        }
    }
    bech32_polymod(&values) == 1
}

/// Computes the 6 bech32 checksum characters for `hrp` and 5-bit `data` (used by tests and
/// the corpus generator to build valid synthetic values).
pub fn bech32_checksum(hrp: &[u8], data: &[u8]) -> [u8; 6] {
    let mut values: Vec<u8> = hrp.iter().map(|c| c >> 5).collect();
    values.push(0);
    values.extend(hrp.iter().map(|c| c & 31));
    values.extend_from_slice(data);
    values.extend_from_slice(&[0; 6]);
    let pm = bech32_polymod(&values) ^ 1;
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = BECH32_CHARSET[((pm >> (5 * (5 - i))) & 31) as usize];
    }
    out
}

fn b64_val(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    } as u32)
}

/// Decodes standard or URL-safe base64, padded or not. `None` on a byte outside both alphabets.
pub(crate) fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let s = match s.iter().position(|&c| c == b'=') {
        Some(p) => &s[..p],
        None => s,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | b64_val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// True when a value looks like a placeholder rather than a credential: runs of one character,
/// `xxxx`, template syntax, "your"/"replace"/"changeme" words, masked `****`, ellipses.
pub(crate) fn is_placeholder(v: &[u8]) -> bool {
    if v.is_empty() {
        return true;
    }
    let mut run = 1;
    for w in v.windows(2) {
        if w[0] == w[1] && w[0] != b'0' {
            run += 1;
            if run >= 6 {
                return true;
            }
        } else if w[0] == w[1] {
            run += 1;
            if run >= 8 {
                return true;
            }
        } else {
            run = 1;
        }
    }
    // Long values are judged by their first 512 bytes.
    let v = &v[..v.len().min(512)];
    let mut buf = [0u8; 512];
    let lower = &mut buf[..v.len()];
    lower.copy_from_slice(v);
    lower.make_ascii_lowercase();
    const WORDS: &[&[u8]] = &[
        b"xxxx",
        b"****",
        b"...",
        b"\xe2\x80\xa6",
        b"your_",
        b"your-",
        b"yourkey",
        b"your_key",
        b"yourtoken",
        b"yoursecret",
        b"<your",
        b"{{",
        b"${",
        b"$(",
        b"%s",
        b"changeme",
        b"change_me",
        b"replace",
        b"placeholder",
        b"redacted",
        b"insert_",
        b"put_your",
        b"dummy",
        b"fake",
        b"sample",
        b"notreal",
        b"not_real",
        b"0123456789",
        b"123456789",
        b"abcdefghij",
        b"abcdef123",
        b"qwerty",
        b"1234567890abcdef",
    ];
    if WORDS.iter().any(|w| contains(lower, w)) {
        return true;
    }
    // Very few distinct characters for the length: `abababab...`, `00000000000001`.
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &c in v {
        if !seen[c as usize] {
            seen[c as usize] = true;
            distinct += 1;
        }
    }
    (v.len() >= 12 && distinct <= 3) || (v.len() >= 24 && distinct <= 5)
}

/// Known documentation example credentials, published by their providers in docs and SDK
/// READMEs. Values that contain `EXAMPLE` (AWS's convention) are treated the same way.
const EXAMPLE_VALUES: &[&[u8]] = &[
    b"AKIAIOSFODNN7EXAMPLE",
    b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    b"je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
    b"sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    b"sk_test_BQokikJOvBiI2HlWgH4olfQ2",
    b"pk_test_TYooMQauvdEDq54NiTphI7jx",
    b"xoxb-not-a-real-token-this-will-not-work",
    b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
];

/// True when `v` is, or plainly marks itself as, a documentation example.
pub(crate) fn is_documented_example(v: &[u8]) -> bool {
    EXAMPLE_VALUES.contains(&v) || contains(v, b"EXAMPLE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_valid_and_rejects_off_by_one() {
        assert!(luhn_ok(b"4539578763621486"));
        assert!(!luhn_ok(b"4539578763621487"));
    }

    #[test]
    fn iban_mod97_matches_the_iso_example() {
        assert!(iban_mod97_ok(b"GB82WEST12345698765432"));
        assert!(!iban_mod97_ok(b"GB82WEST12345698765433"));
    }

    #[test]
    fn bech32_checksum_round_trips() {
        let data: Vec<u8> = (0..52u32).map(|i| ((i * 7) % 32) as u8).collect();
        let cs = bech32_checksum(b"age-secret-key-", &data);
        let mut s = b"AGE-SECRET-KEY-1".to_vec();
        s.extend(
            data.iter()
                .map(|&d| BECH32_CHARSET[d as usize].to_ascii_uppercase()),
        );
        s.extend(cs.iter().map(|c| c.to_ascii_uppercase()));
        assert!(bech32_ok(&s));
        let last = s.len() - 1;
        s[last] = if s[last] == b'Q' { b'P' } else { b'Q' };
        assert!(!bech32_ok(&s));
    }

    #[test]
    fn github_checksum_is_crc32_of_the_random_part_in_base62() {
        let random = b"abcdefghijklmnopqrstuvwxyzABCD";
        let mut body = random.to_vec();
        body.extend(base62_fixed(u64::from(crc32fast::hash(random)), 6));
        assert!(crc32_base62_ok(&body));
        body[0] = b'z';
        assert!(!crc32_base62_ok(&body));
    }

    #[test]
    fn placeholders_are_recognised() {
        assert!(is_placeholder(b"xxxxxxxxxxxxxxxx"));
        assert!(is_placeholder(b"<your-api-key>"));
        assert!(is_placeholder(b"${API_KEY}"));
        assert!(!is_placeholder(b"q8Zr2LmV0xPw7TnB4kYc"));
    }
}
