//! Personal data: e-mail addresses, phone numbers, payment card numbers, IBANs, US SSNs and
//! public IP addresses, each with a validator that keeps false positives low.
//!
//! One pass over the string visits the start of each digit run, each `@`, `+` and `(`; every
//! candidate is then validated by its format's rules:
//!
//! - cards: 12-19 digits, contiguous or in groups of 3-6 with one consistent separator, an
//!   issuer range (Visa, Mastercard incl. 2-series, Amex, Discover, JCB, Diners, UnionPay,
//!   Maestro) and Luhn; published test numbers (4111 1111 1111 1111, 4242...) are examples;
//! - IBAN: country code with its registered length and mod-97 (ISO 13616);
//! - SSN: `AAA-GG-SSSS` (dashes, or spaces/none next to an "SSN" keyword), area not 000, 666
//!   or 900-999, group not 00, serial not 0000; advertising numbers are examples;
//! - phones: E.164 (`+` country code, 8-15 digits) with a known country code, US/NANP
//!   `(NXX) NXX-XXXX` / `NXX-NXX-XXXX`, and other national formats only after a phone keyword;
//!   version strings, dates, times and decimal numbers do not qualify;
//! - IPv4/IPv6: only globally routable addresses are reported. Private (RFC 1918), loopback,
//!   link-local, CGNAT, multicast, reserved and documentation ranges describe infrastructure,
//!   not a person, and would flood every log with `127.0.0.1`; a dotted quad preceded by `v` or
//!   a version keyword is a version number.
//! - e-mail: RFC 5321 local part and a domain with an alphabetic TLD that is not a file
//!   extension; `example.com`/`.org`/`.net`/`.test` addresses are examples; `git@host:` SSH
//!   remotes are not addresses.

use super::{Hit, RuleInfo};
use crate::finding::{Category, Confidence, Severity};
use crate::validate::{iban_mod97_ok, luhn_ok};

/// The personal-data rules.
pub(crate) const RULES: &[RuleInfo] = &[
    info("email-address", "E-mail address", Severity::Low),
    info(
        "phone-number",
        "Phone number (E.164, NANP, or national format next to a phone keyword)",
        Severity::Medium,
    ),
    info(
        "payment-card-number",
        "Payment card number (issuer range + Luhn)",
        Severity::High,
    ),
    info(
        "iban",
        "International Bank Account Number (country length + mod-97)",
        Severity::High,
    ),
    info(
        "us-ssn",
        "US Social Security number (valid area/group/serial)",
        Severity::High,
    ),
    info("ipv4-address", "Public IPv4 address", Severity::Low),
    info(
        "ipv6-address",
        "Public (global unicast) IPv6 address",
        Severity::Low,
    ),
];

const fn info(id: &'static str, description: &'static str, severity: Severity) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::PII,
        description,
        severity,
    }
}

fn hit(
    rule: &'static str,
    severity: Severity,
    confidence: Confidence,
    start: usize,
    end: usize,
    example: bool,
) -> Hit {
    Hit {
        rule,
        category: Category::PII,
        severity: if example { Severity::Info } else { severity },
        confidence,
        start,
        end,
        example,
        priority: 0,
    }
}

/// Scans one decoded string for personal data.
pub(crate) fn scan(s: &[u8], out: &mut Vec<Hit>) {
    let mut i = 0;
    let n = s.len();
    // Positions before `skip` are inside something already reported.
    let mut skip = 0;
    while i < n {
        // Skip quickly to the next byte that can start a candidate: a digit, `@`, `+`, `(`, `:`.
        i = crate::swar::next_pii_trigger(s, i);
        if i >= n {
            break;
        }
        let b = s[i];
        if b.is_ascii_digit() {
            let prev = if i > 0 { s[i - 1] } else { b' ' };
            if !prev.is_ascii_digit() && i >= skip {
                let before = out.len();
                if !prev.is_ascii_alphabetic() || prev.is_ascii_uppercase() {
                    iban(s, i, out);
                }
                if out.len() == before
                    && !prev.is_ascii_alphanumeric()
                    && prev != b'.'
                    && prev != b'+'
                {
                    digits_candidate(s, i, prev, out);
                }
                if let Some(h) = out.get(before..).and_then(|h| h.last()) {
                    skip = h.end;
                }
            }
            // Jump over the rest of the digit run.
            while i < n && s[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        match b {
            b'@' if i >= skip => {
                let before = out.len();
                email(s, i, out);
                if let Some(h) = out.get(before..).and_then(|h| h.last()) {
                    skip = h.end;
                }
            }
            b'+' if i >= skip => {
                let before = out.len();
                phone_e164(s, i, out);
                if let Some(h) = out.get(before..).and_then(|h| h.last()) {
                    skip = h.end;
                }
            }
            b'(' if i >= skip && i + 1 < n && s[i + 1].is_ascii_digit() => {
                let before = out.len();
                phone_nanp(s, i, out);
                if let Some(h) = out.get(before..).and_then(|h| h.last()) {
                    skip = h.end;
                }
            }
            b':' if i >= skip => {
                let before = out.len();
                ipv6(s, i, out);
                if let Some(h) = out.get(before..).and_then(|h| h.last()) {
                    skip = h.end;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Collects digits from `start` allowing single separators from `seps`; returns (digits,
/// end, group lengths, separator used).
fn digit_groups(
    s: &[u8],
    start: usize,
    seps: &[u8],
    max_digits: usize,
) -> (Vec<u8>, usize, Vec<usize>, Option<u8>) {
    let mut digits = Vec::new();
    let mut groups = Vec::new();
    let mut sep: Option<u8> = None;
    let mut i = start;
    let mut cur = 0;
    while i < s.len() && digits.len() <= max_digits {
        let c = s[i];
        if c.is_ascii_digit() {
            digits.push(c);
            cur += 1;
            i += 1;
        } else if seps.contains(&c)
            && cur > 0
            && i + 1 < s.len()
            && s[i + 1].is_ascii_digit()
            && sep.is_none_or(|x| x == c)
        {
            sep = Some(c);
            groups.push(cur);
            cur = 0;
            i += 1;
        } else {
            break;
        }
    }
    if cur > 0 {
        groups.push(cur);
    }
    (digits, i, groups, sep)
}

fn next_is_word(s: &[u8], end: usize) -> bool {
    end < s.len() && (s[end].is_ascii_alphanumeric() || s[end] == b'_')
}

fn digits_candidate(s: &[u8], i: usize, prev: u8, out: &mut Vec<Hit>) {
    // Most digit runs (ids, counts, years, times) are too short for any format here except an
    // IPv4 address: count the digits of the candidate first, without allocating.
    let mut n = 0;
    let mut j = i;
    while j < s.len()
        && j - i < 24
        && (s[j].is_ascii_digit() || matches!(s[j], b' ' | b'-' | b'.' | b'(' | b')'))
    {
        n += usize::from(s[j].is_ascii_digit());
        j += 1;
    }
    if n < 9 {
        let mut k = i;
        while k < s.len() && s[k].is_ascii_digit() {
            k += 1;
        }
        if k < s.len() && s[k] == b'.' {
            ipv4(s, i, prev, out);
        }
        return;
    }
    if ssn(s, i, out) || card(s, i, out) || ipv4(s, i, prev, out) {
        return;
    }
    phone_national(s, i, out);
}

fn issuer_ok(d: &[u8]) -> bool {
    let len = d.len();
    let p = |k: usize| -> u32 {
        d[..k.min(len)]
            .iter()
            .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
    };
    let (p1, p2, p3, p4, p6) = (p(1), p(2), p(3), p(4), p(6));
    match p1 {
        4 => matches!(len, 13 | 16 | 19),
        2 | 5 => {
            ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16
                // Maestro: the well-known BINs only; the whole 50/56-58 block would make a
                // card of every Luhn-valid 19-digit timestamp starting with 5.
                || matches!(p4, 5018 | 5020 | 5038 | 5893) && (12..=19).contains(&len)
        }
        3 => {
            ((p2 == 34 || p2 == 37) && len == 15)
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
                || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39)
                    && (14..=19).contains(&len))
        }
        6 => {
            (p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || (622_126..=622_925).contains(&p6))
                && (16..=19).contains(&len)
                || (p2 == 62 && (16..=19).contains(&len))
                || ((p4 == 6304 || p4 == 6759 || p4 == 6761 || p4 == 6762 || p4 == 6763)
                    && (12..=19).contains(&len))
        }
        _ => false,
    }
}

/// Published test card numbers (networks' and payment processors' documentation).
const TEST_CARDS: &[&[u8]] = &[
    b"4111111111111111",
    b"4242424242424242",
    b"4012888888881881",
    b"4000056655665556",
    b"5555555555554444",
    b"5105105105105100",
    b"2223003122003222",
    b"378282246310005",
    b"371449635398431",
    b"6011111111111117",
    b"6011000990139424",
    b"3530111333300000",
    b"3566002020360505",
    b"30569309025904",
    b"38520000023237",
    b"6200000000000005",
    b"4000000000000002",
    b"4000000000009995",
    b"5200828282828210",
    b"4222222222222",
];

fn card(s: &[u8], i: usize, out: &mut Vec<Hit>) -> bool {
    let (d, end, groups, sep) = digit_groups(s, i, b" -", 19);
    if !(12..=19).contains(&d.len())
        || next_is_word(s, end)
        || (end < s.len() && s[end] == b'.' && end + 1 < s.len() && s[end + 1].is_ascii_digit())
    {
        return false;
    }
    if sep.is_some() && (groups.len() < 3 || groups.iter().any(|&g| !(3..=6).contains(&g))) {
        return false;
    }
    if !issuer_ok(&d) || !luhn_ok(&d) {
        return false;
    }
    let distinct = {
        let mut seen = [false; 10];
        d.iter().for_each(|&c| seen[(c - b'0') as usize] = true);
        seen.iter().filter(|&&x| x).count()
    };
    if distinct < 3 && !TEST_CARDS.contains(&d.as_slice()) {
        return false;
    }
    let example = TEST_CARDS.contains(&d.as_slice());
    out.push(hit(
        "payment-card-number",
        Severity::High,
        Confidence::High,
        i,
        end,
        example,
    ));
    true
}

fn ssn_parts_ok(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn ssn(s: &[u8], i: usize, out: &mut Vec<Hit>) -> bool {
    let (d, end, groups, sep) = digit_groups(s, i, b"- ", 9);
    if d.len() != 9
        || next_is_word(s, end)
        || (end < s.len() && s[end] == b'-' && end + 1 < s.len() && s[end + 1].is_ascii_digit())
    {
        return false;
    }
    let dashed = sep == Some(b'-') && groups == [3, 2, 4];
    let keyword = {
        let w = &s[i.saturating_sub(32)..i];
        let l: Vec<u8> = w.iter().map(|c| c.to_ascii_lowercase()).collect();
        memchr::memmem::find(&l, b"ssn").is_some()
            || memchr::memmem::find(&l, b"social security").is_some()
    };
    let shaped = dashed || (keyword && (groups == [3, 2, 4] || groups == [9]));
    if !shaped {
        return false;
    }
    let num = |a: &[u8]| a.iter().fold(0u32, |x, &c| x * 10 + u32::from(c - b'0'));
    let (area, group, serial) = (num(&d[..3]), num(&d[3..5]), num(&d[5..]));
    if !ssn_parts_ok(area, group, serial) {
        return false;
    }
    // Numbers printed on advertising and in documentation (Woolworth's wallet card, the
    // Social Security Administration's own examples).
    let example = matches!(
        d.as_slice(),
        b"078051120" | b"219099999" | b"457555462" | b"123456789"
    );
    out.push(hit(
        "us-ssn",
        Severity::High,
        Confidence::High,
        i,
        end,
        example,
    ));
    true
}

fn iban_len(cc: &[u8]) -> Option<usize> {
    Some(match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    })
}

/// `i` is the first check digit; the country code is the two bytes before it.
fn iban(s: &[u8], i: usize, out: &mut Vec<Hit>) {
    if i < 2 || !s[i - 2].is_ascii_uppercase() || !s[i - 1].is_ascii_uppercase() {
        return;
    }
    let start = i - 2;
    if start > 0 && s[start - 1].is_ascii_alphanumeric() {
        return;
    }
    let Some(want) = iban_len(&s[start..i]) else {
        return;
    };
    let mut compact = Vec::with_capacity(34);
    let mut j = start;
    let mut end = start;
    while j < s.len() && compact.len() < want {
        let c = s[j];
        if c.is_ascii_digit() || c.is_ascii_uppercase() {
            compact.push(c);
            j += 1;
            end = j;
        } else if c == b' '
            && compact.len() % 4 == 0
            && j + 1 < s.len()
            && s[j + 1].is_ascii_alphanumeric()
        {
            j += 1;
        } else {
            break;
        }
    }
    if compact.len() != want
        || next_is_word(s, end)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
    {
        return;
    }
    if iban_mod97_ok(&compact) {
        out.push(hit(
            "iban",
            Severity::High,
            Confidence::High,
            start,
            end,
            false,
        ));
    }
}

fn email(s: &[u8], at: usize, out: &mut Vec<Hit>) {
    let local_ok =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut a = at;
    while a > 0 && local_ok(s[a - 1]) && at - a < 64 {
        a -= 1;
    }
    while a < at && matches!(s[a], b'.' | b'-' | b'+') {
        a += 1;
    }
    if a == at || s[at - 1] == b'.' {
        return;
    }
    let local = &s[a..at];
    let mut b = at + 1;
    let mut last_dot = None;
    while b < s.len()
        && (s[b].is_ascii_alphanumeric() || s[b] == b'-' || s[b] == b'.')
        && b - at < 255
    {
        if s[b] == b'.' {
            if b + 1 >= s.len() || !s[b + 1].is_ascii_alphanumeric() {
                break;
            }
            last_dot = Some(b);
        }
        b += 1;
    }
    let Some(dot) = last_dot else {
        return;
    };
    let tld = &s[dot + 1..b];
    if tld.len() < 2 || tld.len() > 24 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return;
    }
    let tld_l: Vec<u8> = tld.iter().map(|c| c.to_ascii_lowercase()).collect();
    const FILE_EXT: &[&[u8]] = &[
        b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"js", b"ts", b"css", b"map", b"json",
        b"lock", b"md", b"txt", b"py", b"rs", b"go", b"tgz", b"gz", b"zip", b"ico", b"bmp", b"mjs",
        b"cjs", b"tsx", b"jsx",
    ];
    if FILE_EXT.contains(&tld_l.as_slice()) {
        return;
    }
    let domain: Vec<u8> = s[at + 1..b]
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // git@github.com:owner/repo — an SSH remote, not a person.
    if local == b"git" && b < s.len() && s[b] == b':' {
        return;
    }
    let example = [&b"example.com"[..], b"example.org", b"example.net"]
        .iter()
        .any(|d| domain.ends_with(d))
        || tld_l == b"test"
        || tld_l == b"example"
        || tld_l == b"invalid"
        || tld_l == b"localhost";
    out.push(hit(
        "email-address",
        Severity::Low,
        Confidence::High,
        a,
        b,
        example,
    ));
}

/// ITU-T E.164 country codes (1-3 digits) in use.
fn country_code_len(d: &[u8]) -> Option<usize> {
    let n = |k: usize| {
        d[..k]
            .iter()
            .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
    };
    if d.is_empty() {
        return None;
    }
    if d[0] == b'1' || d[0] == b'7' {
        return Some(1);
    }
    if d.len() < 2 {
        return None;
    }
    const TWO: &[u32] = &[
        20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
        56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    ];
    if TWO.contains(&n(2)) {
        return Some(2);
    }
    if d.len() < 3 {
        return None;
    }
    let three = n(3);
    let ok = matches!(three,
        210..=218 | 220..=269 | 290..=299 | 350..=359 | 370..=389 | 420..=423 | 500..=509 | 590..=599
        | 670..=692 | 800 | 808 | 850 | 852 | 853 | 855 | 856 | 870 | 878 | 880 | 881 | 882 | 883 | 886 | 888
        | 960..=979 | 992..=998);
    ok.then_some(3)
}

fn phone_e164(s: &[u8], plus: usize, out: &mut Vec<Hit>) {
    if plus > 0
        && (s[plus - 1].is_ascii_alphanumeric()
            || matches!(s[plus - 1], b'+' | b'=' | b'*' | b'/' | b')' | b'.'))
    {
        return;
    }
    let start = plus + 1;
    if start >= s.len() || !s[start].is_ascii_digit() {
        return;
    }
    let (d, end, groups, _) = digit_groups_phone(s, start);
    if !(8..=15).contains(&d.len()) || next_is_word(s, end) {
        return;
    }
    if groups.iter().any(|&g| g > 12) && groups.len() > 1 {
        return;
    }
    let Some(cc) = country_code_len(&d) else {
        return;
    };
    if d.len() - cc < 6 || (d[0] == b'1' && d.len() != 11) {
        return;
    }
    if d[cc..].iter().all(|&c| c == d[cc]) {
        return;
    }
    out.push(hit(
        "phone-number",
        Severity::Medium,
        Confidence::High,
        plus,
        end,
        false,
    ));
}

/// Digits with phone separators: single spaces, dashes, dots, and a parenthesised area code.
fn digit_groups_phone(s: &[u8], start: usize) -> (Vec<u8>, usize, Vec<usize>, u8) {
    let mut digits = Vec::new();
    let mut groups = Vec::new();
    let mut i = start;
    let mut cur = 0;
    let mut seps = 0u8;
    while i < s.len() && digits.len() <= 15 {
        let c = s[i];
        if c.is_ascii_digit() {
            digits.push(c);
            cur += 1;
            i += 1;
        } else if matches!(c, b' ' | b'-' | b'.')
            && cur > 0
            && i + 1 < s.len()
            && (s[i + 1].is_ascii_digit() || s[i + 1] == b'(')
        {
            groups.push(cur);
            cur = 0;
            seps += 1;
            i += 1;
        } else if c == b'(' && i + 1 < s.len() && s[i + 1].is_ascii_digit() {
            if cur > 0 {
                groups.push(cur);
                cur = 0;
            }
            i += 1;
        } else if c == b')'
            && cur > 0
            && i + 1 < s.len()
            && (s[i + 1] == b' ' || s[i + 1].is_ascii_digit())
        {
            groups.push(cur);
            cur = 0;
            i += 1;
            if i < s.len() && s[i] == b' ' {
                i += 1;
            }
        } else {
            break;
        }
    }
    if cur > 0 {
        groups.push(cur);
    }
    // Do not end on a separator.
    while i > start && !s[i - 1].is_ascii_digit() {
        i -= 1;
    }
    (digits, i, groups, seps)
}

fn nanp_ok(d: &[u8]) -> bool {
    d.len() == 10
        && (b'2'..=b'9').contains(&d[0])
        && (b'2'..=b'9').contains(&d[3])
        && !(d[1] == b'1' && d[2] == b'1')
}

fn phone_nanp(s: &[u8], open: usize, out: &mut Vec<Hit>) {
    // (NXX) NXX-XXXX
    if open > 0 && s[open - 1].is_ascii_alphanumeric() {
        return;
    }
    let (d, end, groups, _) = digit_groups_phone(s, open);
    if groups == [3, 3, 4] && nanp_ok(&d) && !next_is_word(s, end) && s[open + 4] == b')' {
        out.push(hit(
            "phone-number",
            Severity::Medium,
            Confidence::High,
            open,
            end,
            false,
        ));
    }
}

fn phone_keyword_before(s: &[u8], i: usize) -> bool {
    let w: Vec<u8> = s[i.saturating_sub(40)..i]
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const KW: &[&[u8]] = &[
        b"phone",
        b"tel",
        b"mobile",
        b"cell",
        b"fax",
        b"call ",
        b"sms",
        b"whatsapp",
        b"contact",
        b"telefon",
        b"t\xc3\xa9l",
        b"handy",
        b"number:",
    ];
    KW.iter().any(|k| memchr::memmem::find(&w[..], k).is_some())
}

fn phone_national(s: &[u8], i: usize, out: &mut Vec<Hit>) {
    // Most digit runs (ids, counts, years) are too short to be a phone number.
    let mut n = 0;
    let mut j = i;
    while j < s.len()
        && j - i < 24
        && (s[j].is_ascii_digit() || matches!(s[j], b' ' | b'-' | b'.' | b'(' | b')'))
    {
        n += usize::from(s[j].is_ascii_digit());
        j += 1;
    }
    if n < 9 {
        return;
    }
    let (d, end, groups, seps) = digit_groups_phone(s, i);
    if next_is_word(s, end)
        || (end < s.len()
            && matches!(s[end], b'.' | b':' | b'/')
            && end + 1 < s.len()
            && s[end + 1].is_ascii_digit())
    {
        return;
    }
    let text = &s[i..end];
    // Dates and versions: 2024-01-15, 1.2.3, 10.0.19041
    if text.contains(&b'.')
        && groups.len() >= 3
        && groups.iter().all(|&g| g <= 4)
        && !phone_keyword_before(s, i)
    {
        return;
    }
    let nanp = nanp_ok(&d) && groups == [3, 3, 4] && (text.contains(&b'-') || text.contains(&b'.'));
    let national = phone_keyword_before(s, i) && (9..=12).contains(&d.len()) && d[0] == b'0'
        || phone_keyword_before(s, i) && nanp_ok(&d);
    if nanp && seps == 2 || national && (seps >= 1 || groups.len() == 1) {
        out.push(hit(
            "phone-number",
            Severity::Medium,
            if nanp {
                Confidence::Medium
            } else {
                Confidence::Low
            },
            i,
            end,
            false,
        ));
    }
}

fn ipv4_public(o: [u32; 4]) -> bool {
    let [a, b, c, _] = o;
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..=127).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn ipv4(s: &[u8], i: usize, prev: u8, out: &mut Vec<Hit>) -> bool {
    if prev == b'v' || prev == b'V' || prev == b'.' {
        return false;
    }
    let mut o = [0u32; 4];
    let mut j = i;
    for (k, slot) in o.iter_mut().enumerate() {
        let st = j;
        while j < s.len() && s[j].is_ascii_digit() && j - st < 4 {
            j += 1;
        }
        let len = j - st;
        if len == 0 || len > 3 || (len > 1 && s[st] == b'0') {
            return false;
        }
        *slot = s[st..j]
            .iter()
            .fold(0, |a, &c| a * 10 + u32::from(c - b'0'));
        if *slot > 255 {
            return false;
        }
        if k < 3 {
            if j >= s.len() || s[j] != b'.' {
                return false;
            }
            j += 1;
        }
    }
    if next_is_word(s, j)
        || (j < s.len() && s[j] == b'.' && j + 1 < s.len() && s[j + 1].is_ascii_digit())
    {
        return false;
    }
    let w: Vec<u8> = s[i.saturating_sub(24)..i]
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if [
        &b"version"[..],
        b"ver ",
        b"ver.",
        b"build",
        b"release",
        b"oid",
        b"v=",
    ]
    .iter()
    .any(|k| memchr::memmem::find(&w, k).is_some())
    {
        return false;
    }
    if !ipv4_public(o) {
        return true; // an address, but not personal data: consumed, not reported
    }
    out.push(hit(
        "ipv4-address",
        Severity::Low,
        Confidence::Medium,
        i,
        j,
        false,
    ));
    true
}

fn ipv6(s: &[u8], colon: usize, out: &mut Vec<Hit>) {
    // Only at the first colon of a candidate whose first group is 2000::/3 (global unicast).
    let mut st = colon;
    while st > 0 && s[st - 1].is_ascii_hexdigit() && colon - st < 5 {
        st -= 1;
    }
    if colon - st != 4
        || (st > 0 && (s[st - 1].is_ascii_alphanumeric() || s[st - 1] == b':' || s[st - 1] == b'.'))
    {
        return;
    }
    if !matches!(s[st], b'2' | b'3') {
        return;
    }
    let mut j = st;
    let mut groups = 0;
    let mut double = false;
    let mut cur = 0;
    while j < s.len() {
        let c = s[j];
        if c.is_ascii_hexdigit() {
            cur += 1;
            if cur > 4 {
                return;
            }
        } else if c == b':' {
            if cur > 0 {
                groups += 1;
            } else if j > st && s[j - 1] == b':' {
                if double {
                    return;
                }
                double = true;
            }
            if j + 1 < s.len()
                && !(s[j + 1].is_ascii_hexdigit() || s[j + 1] == b':')
                && !(j > st && s[j - 1] == b':')
            {
                break;
            }
            cur = 0;
        } else {
            break;
        }
        j += 1;
    }
    if cur > 0 {
        groups += 1;
    }
    let mut end = j;
    while end > st && s[end - 1] == b':' && !(end >= 2 && s[end - 2] == b':') {
        end -= 1;
    }
    if next_is_word(s, end) || !(groups == 8 || (double && (2..8).contains(&groups))) {
        return;
    }
    let text: Vec<u8> = s[st..end].iter().map(|c| c.to_ascii_lowercase()).collect();
    if text.starts_with(b"2001:db8:")
        || text.starts_with(b"2001:0db8:")
        || text.starts_with(b"2001:db8::")
    {
        return;
    }
    out.push(hit(
        "ipv6-address",
        Severity::Low,
        Confidence::Medium,
        st,
        end,
        false,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        scan(s.as_bytes(), &mut out);
        out.iter().filter(|h| !h.example).map(|h| h.rule).collect()
    }

    #[test]
    fn cards_need_luhn_and_an_issuer() {
        assert_eq!(
            rules("card 4539 5787 6362 1486 ok"),
            ["payment-card-number"]
        );
        assert!(rules("card 4539 5787 6362 1487 ok").is_empty());
        assert!(rules("id 9539578763621486").is_empty());
    }

    #[test]
    fn ssn_ranges_are_checked() {
        assert_eq!(rules("SSN 536-22-1234"), ["us-ssn"]);
        assert!(rules("SSN 666-22-1234").is_empty());
        assert!(rules("SSN 936-22-1234").is_empty());
        assert!(rules("SSN 536-00-1234").is_empty());
    }

    #[test]
    fn versions_dates_and_private_addresses_are_not_personal_data() {
        assert!(rules("version 1.2.3.4 built 2024-01-15 12:30:00").is_empty());
        assert!(rules("listening on 127.0.0.1 and 192.168.1.20 and 10.0.0.1").is_empty());
        assert_eq!(rules("client 81.2.69.160 connected"), ["ipv4-address"]);
    }

    #[test]
    fn phones_and_emails() {
        assert_eq!(rules("call +44 20 7946 0958 now"), ["phone-number"]);
        assert_eq!(rules("(415) 555-2671"), ["phone-number"]);
        assert_eq!(
            rules("mail jane.doe@acme-corp.io please"),
            ["email-address"]
        );
        assert!(rules("git@github.com:org/repo.git").is_empty());
        assert!(rules("logo@2x.png").is_empty());
    }

    #[test]
    fn ibans_need_their_country_length_and_mod97() {
        assert_eq!(rules("IBAN GB82 WEST 1234 5698 7654 32"), ["iban"]);
        assert!(rules("IBAN GB82 WEST 1234 5698 7654 33").is_empty());
    }
}
