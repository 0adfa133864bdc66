//! Assignments of secret-looking values: `API_KEY=...`, `token: "..."`, `"apiKey": "..."`,
//! `Authorization: Bearer ...`, `curl -u user:pass`, `<secretToken>...</secretToken>`.
//!
//! Two entry points share one classifier: [`text_assignment`] parses an assignment in free text
//! at a keyword the prefilter found, and [`json_member`] judges a JSON string value by its
//! object key. The classifier first tries the provider [`super::secrets::CONTEXT_RULES`]
//! (a keyword such as `twilio` near the identifier and the provider's value format), then the
//! generic rules, which need a secret-like identifier and a value that is random-looking
//! (entropy, a digit, no placeholder, not a code expression or a file path).

use super::secrets::{context_match, ContextVerdict};
use super::{Hit, RuleInfo};
use crate::finding::{Category, Confidence, Severity};
use crate::validate::{entropy, is_documented_example, is_placeholder};

/// The generic rules.
pub(crate) const RULES: &[RuleInfo] = &[
    RuleInfo {
        id: "generic-secret-assignment",
        category: Category::SECRET,
        description: "High-entropy value assigned to a secret-like name (api_key, token, secret, credential...)",
        severity: Severity::High,
    },
    RuleInfo {
        id: "generic-password-assignment",
        category: Category::SECRET,
        description: "Password-like value assigned to a password name (password, passwd, pwd, passphrase)",
        severity: Severity::High,
    },
    RuleInfo {
        id: "http-authorization-credentials",
        category: Category::SECRET,
        description: "Credentials in an Authorization / API-key header (Bearer, Basic, Token, custom schemes)",
        severity: Severity::High,
    },
    RuleInfo {
        id: "curl-user-credentials",
        category: Category::SECRET,
        description: "user:password passed with curl -u / --user",
        severity: Severity::High,
    },
];

/// Prefilter keywords that start an assignment check (lower case; matched case-insensitively).
pub(crate) const KEYWORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "passw",
    "pwd",
    "passphrase",
    "auth",
    "credential",
    "--user",
    "-u ",
];

const IDENT_MAX: usize = 96;
const VALUE_MAX: usize = 512;

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// What kind of secret name an identifier is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NameKind {
    Secret,
    Password,
    Authorization,
    None,
}

fn name_kind(ident_lower: &[u8]) -> NameKind {
    let has = |w: &[u8]| crate::validate::contains(ident_lower, w);
    let ends = |w: &[u8]| ident_lower.ends_with(w);
    const EXCLUDE_END: &[&[u8]] = &[
        b"id",
        b"ids",
        b"name",
        b"names",
        b"type",
        b"url",
        b"uri",
        b"path",
        b"file",
        b"dir",
        b"len",
        b"length",
        b"size",
        b"count",
        b"format",
        b"version",
        b"prefix",
        b"suffix",
        b"field",
        b"kind",
        b"mode",
        b"alg",
        b"algorithm",
        b"enabled",
        b"policy",
        b"expires",
        b"expiry",
        b"ttl",
        b"index",
        b"hash",
        b"digest",
        b"checksum",
        b"sha",
        b"fingerprint",
        b"endpoint",
        b"host",
        b"location",
        b"label",
        b"description",
        b"hint",
        b"env",
        b"var",
        b"variable",
        b"ref",
        b"arn",
        b"region",
        b"issuer",
        b"scope",
        b"scopes",
        b"status",
        b"usage",
        b"limit",
        b"timeout",
        b"at",
        b"time",
        b"date",
        b"tokens",
    ];
    const EXCLUDE_ANY: &[&[u8]] = &[
        b"public",
        b"pubkey",
        b"pub_key",
        b"tokeniz",
        b"keyboard",
        b"keyword",
        b"monkey",
        b"turkey",
        b"hockey",
        b"donkey",
        b"jockey",
        b"keyframe",
        b"keystroke",
        b"keycode",
        b"keypress",
        b"keydown",
        b"keyup",
        b"token_type",
        b"tokentype",
        b"max_token",
        b"maxtoken",
        b"sort_key",
        b"sortkey",
        b"primary_key",
        b"primarykey",
        b"foreign_key",
        b"partition_key",
        b"cache_key",
        b"cachekey",
        b"idempotency",
        b"dedup",
        b"i18n",
        b"translation",
        b"lookup_key",
        b"group_key",
        b"row_key",
        b"map_key",
        b"object_key",
        b"objectkey",
        b"s3_key",
        b"hotkey",
        b"shortcut",
        b"passthrough",
        b"keyspace",
        b"keyset",
        b"keychain_path",
        b"next_page_token",
        b"page_token",
        b"pagetoken",
        b"cursor",
        b"csrf_token_name",
        b"token_count",
        b"input_token",
        b"output_token",
        b"prompt_token",
        b"completion_token",
    ];
    if ident_lower.is_empty() || ident_lower.len() > IDENT_MAX {
        return NameKind::None;
    }
    const ROOTS: &[&[u8]] = &[
        b"key", b"token", b"secret", b"pass", b"pwd", b"auth", b"cred",
    ];
    if !ROOTS.iter().any(|r| has(r)) {
        return NameKind::None;
    }
    if has(b"authorization")
        || ends(b"x-api-key")
        || ends(b"x-auth-token")
        || ends(b"x-access-token")
    {
        return NameKind::Authorization;
    }
    // `author` is not `auth`, but `authorize`/`authority` tokens are.
    let author = has(b"author") && !has(b"authori");
    if author || EXCLUDE_ANY.iter().any(|w| has(w)) {
        return NameKind::None;
    }
    let base_excluded = EXCLUDE_END.iter().any(|w| ends(w));
    if base_excluded {
        return NameKind::None;
    }
    if has(b"passw") || has(b"passphrase") || ends(b"pwd") || has(b"_pwd") || ident_lower == b"pass"
    {
        return NameKind::Password;
    }
    if has(b"secret")
        || has(b"token")
        || has(b"credential")
        || has(b"apikey")
        || has(b"api_key")
        || has(b"api-key")
        || has(b"auth")
        || ends(b"key")
        || has(b"key_")
        || has(b"_key")
        || has(b"-key")
        || has(b"key-")
    {
        return NameKind::Secret;
    }
    NameKind::None
}

/// A value that is a reference in code or configuration rather than a literal secret.
fn is_code_like(v: &[u8]) -> bool {
    const REFS: &[&[u8]] = &[
        b"process.env",
        b"os.environ",
        b"os.getenv",
        b"getenv",
        b"system.getenv",
        b"env[",
        b"env.",
        b"environ[",
        b"secrets.",
        b"vault:",
        b"ssm:",
        b"arn:aws",
        b"import ",
        b"require(",
        b"config.",
        b"settings.",
        b"self.",
        b"this.",
        b"null",
        b"none",
        b"undefined",
        b"true",
        b"false",
        b"nil",
    ];
    let lower: Vec<u8> = v.iter().map(|c| c.to_ascii_lowercase()).collect();
    if REFS.iter().any(|r| lower.starts_with(r)) {
        return true;
    }
    let digits = v.iter().filter(|c| c.is_ascii_digit()).count();
    let low_digits = digits * 10 < v.len() * 3;
    // member access chains: Foo.bar, X25519.secret_length, os.path
    let segs: Vec<&[u8]> = v.split(|&c| c == b'.').collect();
    if segs.len() >= 2
        && segs.iter().all(|s| {
            !s.is_empty()
                && (s[0].is_ascii_alphabetic() || s[0] == b'_')
                && s.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
        })
        && low_digits
    {
        return true;
    }
    // UPPER_SNAKE constants and env var names: K8S_CRED, MY_API_TOKEN
    if v.iter()
        .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        && v.contains(&b'_')
        && low_digits
    {
        return true;
    }
    // snake_case or kebab words: secret_length, my-secret-name
    let words = v
        .split(|&c| c == b'_' || c == b'-')
        .filter(|w| !w.is_empty())
        .count();
    if words >= 2
        && v.iter()
            .all(|&c| c.is_ascii_lowercase() || c == b'_' || c == b'-')
    {
        return true;
    }
    // function calls
    v.ends_with(b")") || v.ends_with(b"()")
}

fn classes(v: &[u8]) -> (bool, bool, bool, bool) {
    let lower = v.iter().any(|c| c.is_ascii_lowercase());
    let upper = v.iter().any(|c| c.is_ascii_uppercase());
    let digit = v.iter().any(|c| c.is_ascii_digit());
    let other = v.iter().any(|c| !c.is_ascii_alphanumeric());
    (lower, upper, digit, other)
}

fn entropy_floor(len: usize) -> f32 {
    if len < 16 {
        2.8
    } else if len < 32 {
        3.2
    } else {
        3.5
    }
}

/// `api.example.com`, `5h.ca.iphmx.com`: dot-separated labels ending in an alphabetic TLD.
fn is_hostname(v: &[u8]) -> bool {
    let labels: Vec<&[u8]> = v.split(|&c| c == b'.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-'))
        && labels
            .last()
            .is_some_and(|t| (2..=24).contains(&t.len()) && t.iter().all(u8::is_ascii_alphabetic))
}

/// `uploads/2026/03/report-1f3a.pdf`, `assets/app.min.js`: a path ending in a file name.
fn is_file_path(v: &[u8]) -> bool {
    let Some(slash) = v.iter().rposition(|&c| c == b'/') else {
        return false;
    };
    let name = &v[slash + 1..];
    match name.iter().rposition(|&c| c == b'.') {
        Some(dot) => {
            let ext = &name[dot + 1..];
            dot > 0
                && (1..=5).contains(&ext.len())
                && ext.iter().all(u8::is_ascii_alphanumeric)
                && ext.iter().any(u8::is_ascii_alphabetic)
        }
        None => false,
    }
}

fn looks_like_non_secret(v: &[u8]) -> bool {
    v.iter().any(|c| c.is_ascii_whitespace())
        || is_hostname(v)
        || is_file_path(v)
        || crate::validate::contains(v, b"://")
        || v.starts_with(b"/")
        || v.starts_with(b"./")
        || v.starts_with(b"~/")
        || v.starts_with(b"../")
        || (v.contains(&b'@') && v.contains(&b'.') && !v.contains(&b':'))
        || is_code_like(v)
}

fn generic_secret_ok(v: &[u8]) -> bool {
    if v.len() < 12 || v.len() > VALUE_MAX || looks_like_non_secret(v) || is_placeholder(v) {
        return false;
    }
    let (lower, upper, digit, _) = classes(v);
    let letters = lower || upper;
    if !digit {
        return false;
    }
    // Slugs and identifiers are mostly separators; random tokens rarely are.
    let seps = v
        .iter()
        .filter(|&&c| matches!(c, b'-' | b'_' | b'.'))
        .count();
    if seps * 4 > v.len() {
        return false;
    }
    if !letters && (v.len() < 20 || entropy(v) < 3.0) {
        return false;
    }
    entropy(v) >= entropy_floor(v.len())
}

fn password_ok(v: &[u8]) -> bool {
    if v.len() < 8 || v.len() > 128 || looks_like_non_secret(v) || is_placeholder(v) {
        return false;
    }
    let lower: Vec<u8> = v.iter().map(|c| c.to_ascii_lowercase()).collect();
    if memchr::memmem::find(&lower, b"password").is_some()
        || lower.starts_with(b"<")
        || lower.starts_with(b"$")
    {
        return false;
    }
    let (l, u, d, o) = classes(v);
    let n = [l, u, d, o].iter().filter(|&&x| x).count();
    n >= 2 && (d || o) && entropy(v) >= 2.5
}

/// Strips an HTTP auth scheme (`Bearer x`, `Basic x`, `Token x`...) from a header value.
fn strip_scheme(v: &[u8]) -> (usize, bool) {
    const SCHEMES: &[&[u8]] = &[
        b"bearer ",
        b"basic ",
        b"token ",
        b"bot ",
        b"ssws ",
        b"api-token ",
        b"apikey ",
        b"api-key ",
        b"digest ",
        b"key ",
        b"dsn ",
        b"sso-key ",
    ];
    // Every scheme starts with one of these letters and ends with a space: most values are
    // told apart by their first byte or by having no space at all.
    if !matches!(
        v.first().map(u8::to_ascii_lowercase),
        Some(b'a' | b'b' | b'd' | b'k' | b's' | b't')
    ) || memchr::memchr(b' ', v).is_none()
    {
        return (0, false);
    }
    for s in SCHEMES {
        if v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s) {
            let mut off = s.len();
            while off < v.len() && v[off] == b' ' {
                off += 1;
            }
            return (off, *s == b"basic ");
        }
    }
    (0, false)
}

fn basic_ok(v: &[u8]) -> bool {
    match crate::validate::b64_decode(v) {
        Some(d) => match d.iter().position(|&c| c == b':') {
            Some(p) => {
                p > 0
                    && p + 1 < d.len()
                    && !is_placeholder(&d[p + 1..])
                    && d.iter().all(|c| !c.is_ascii_control())
            }
            None => false,
        },
        None => false,
    }
}

fn secret_hit(
    rule: &'static str,
    severity: Severity,
    confidence: Confidence,
    start: usize,
    end: usize,
    s: &[u8],
    priority: u8,
) -> Hit {
    let example = is_documented_example(&s[start..end]);
    Hit {
        rule,
        category: Category::SECRET,
        severity: if example { Severity::Info } else { severity },
        confidence,
        start,
        end,
        example,
        priority,
    }
}

/// Judges `value` (at `s[start..end]`) assigned to an identifier. `window` is the identifier
/// with up to 48 bytes of preceding context (original case, for word boundaries);
/// `ident_lower` is the identifier alone, lower-cased.
fn classify(
    window: &[u8],
    ident_lower: &[u8],
    s: &[u8],
    start: usize,
    end: usize,
    out: &mut Vec<Hit>,
) {
    let mut start = start;
    let kind = name_kind(ident_lower);
    let (skip, basic) = strip_scheme(&s[start..end]);
    start += skip;
    let v = &s[start..end];
    if v.is_empty() {
        return;
    }
    // Every provider format without a prefix is at least 24 characters long.
    let verdict = if v.len() >= 24 {
        context_match(window, v)
    } else {
        ContextVerdict::None
    };
    match verdict {
        ContextVerdict::Match(rule) => {
            out.push(secret_hit(
                rule.id,
                rule.severity,
                Confidence::Medium,
                start,
                end,
                s,
                1,
            ));
            return;
        }
        ContextVerdict::NotCredential => return,
        ContextVerdict::None => {}
    }
    match kind {
        NameKind::Authorization => {
            if (basic && basic_ok(v))
                || generic_secret_ok(v)
                || (v.len() >= 16
                    && !looks_like_non_secret(v)
                    && !is_placeholder(v)
                    && entropy(v) >= 3.5)
            {
                out.push(secret_hit(
                    "http-authorization-credentials",
                    Severity::High,
                    Confidence::Medium,
                    start,
                    end,
                    s,
                    2,
                ));
            }
        }
        NameKind::Password => {
            if password_ok(v) {
                out.push(secret_hit(
                    "generic-password-assignment",
                    Severity::High,
                    Confidence::Low,
                    start,
                    end,
                    s,
                    2,
                ));
            }
        }
        NameKind::Secret => {
            if generic_secret_ok(v) {
                out.push(secret_hit(
                    "generic-secret-assignment",
                    Severity::High,
                    Confidence::Low,
                    start,
                    end,
                    s,
                    2,
                ));
            }
        }
        NameKind::None => {}
    }
}

/// Parses an assignment around the keyword at `s[kw_start..kw_end]`. `done` is the end of the
/// last identifier examined, so that one identifier with several keywords is judged once.
pub(crate) fn text_assignment(
    s: &[u8],
    kw_start: usize,
    kw_end: usize,
    done: &mut usize,
    out: &mut Vec<Hit>,
) {
    let kw = &s[kw_start..kw_end];
    if kw.eq_ignore_ascii_case(b"--user") || kw.eq_ignore_ascii_case(b"-u ") {
        curl_user(s, kw_start, kw_end, out);
        return;
    }
    if kw_start < *done {
        return;
    }
    let mut a = kw_start;
    while a > 0 && is_ident(s[a - 1]) && kw_start - a < IDENT_MAX {
        a -= 1;
    }
    let mut b = kw_end;
    while b < s.len() && is_ident(s[b]) && b - a < IDENT_MAX {
        b += 1;
    }
    *done = b;
    // Trailing '.' or '-' are punctuation, not part of the name.
    let mut ident_end = b;
    while ident_end > a && matches!(s[ident_end - 1], b'.' | b'-') {
        ident_end -= 1;
    }
    let ident = &s[a..ident_end];
    let xml = a > 0 && s[a - 1] == b'<';
    let quoted_ident = a > 0 && matches!(s[a - 1], b'"' | b'\'');
    let flag = a >= 1 && s[a - 1] == b'-' || (a >= 2 && &s[a - 2..a] == b"--");
    let mut p = ident_end;
    if p < s.len() && matches!(s[p], b'"' | b'\'' | b'`' | b']') {
        p += 1;
    }
    while p < s.len() && matches!(s[p], b' ' | b'\t') && p - ident_end < 8 {
        p += 1;
    }
    // A type between the name and the operator: `var token string = "..."`, `token: str = ...`.
    if p > ident_end && p < s.len() && s[p].is_ascii_alphabetic() {
        let mut q = p;
        while q < s.len()
            && (s[q].is_ascii_alphanumeric() || matches!(s[q], b'[' | b']' | b'<' | b'>'))
            && q - p < 24
        {
            q += 1;
        }
        let mut r = q;
        while r < s.len() && s[r] == b' ' {
            r += 1;
        }
        if r > q && r < s.len() && s[r] == b'=' && s.get(r + 1) != Some(&b'=') {
            p = r;
        }
    }
    let rest = &s[p..];
    let op_len = if xml {
        if rest.starts_with(b">") {
            1
        } else {
            0
        }
    } else if rest.starts_with(b":::=") {
        4
    } else if rest.starts_with(b"::=") {
        3
    } else if rest.starts_with(b"::") {
        0
    } else if rest.starts_with(b":=")
        || rest.starts_with(b"?=")
        || rest.starts_with(b"=>")
        || rest.starts_with(b"==")
        || rest.starts_with(b"!=")
        || rest.starts_with(b".=")
        || rest.starts_with(b"+=")
    {
        2
    } else if rest.starts_with(b"=")
        || rest.starts_with(b":")
        || (rest.starts_with(b",") && quoted_ident)
    {
        1
    } else if flag && p > ident_end {
        0
    } else {
        return;
    };
    if op_len == 0 && !(flag && p > ident_end) {
        return;
    }
    p += op_len;
    let ws_start = p;
    while p < s.len() && s[p].is_ascii_whitespace() && p - ws_start < 24 {
        p += 1;
        // A diff or quote marker at the start of a continuation line: `+    value`.
        if s[p - 1] == b'\n' && p < s.len() && matches!(s[p], b'+' | b'>') {
            p += 1;
        }
    }
    // Optional constructor-ish wrappers: `new Secret("...")`, `[]byte("...")` are left alone.
    if p >= s.len() {
        return;
    }
    let (vs, ve) = if matches!(s[p], b'"' | b'\'' | b'`') {
        let q = s[p];
        let vs = p + 1;
        let mut ve = vs;
        while ve < s.len() && s[ve] != q && s[ve] != b'\n' && ve - vs < VALUE_MAX {
            ve += 1;
        }
        if ve >= s.len() || s[ve] != q {
            return;
        }
        (vs, ve)
    } else {
        let vs = p;
        let mut ve = vs;
        while ve < s.len()
            && !s[ve].is_ascii_whitespace()
            && !matches!(
                s[ve],
                b'"' | b'\'' | b'`' | b',' | b';' | b')' | b']' | b'}' | b'<' | b'>' | b'&'
            )
            && ve - vs < VALUE_MAX
        {
            ve += 1;
        }
        // An auth scheme word: take the credential after it.
        let word: Vec<u8> = s[vs..ve].iter().map(|c| c.to_ascii_lowercase()).collect();
        if matches!(
            word.as_slice(),
            b"bearer"
                | b"basic"
                | b"token"
                | b"bot"
                | b"ssws"
                | b"api-token"
                | b"apikey"
                | b"api-key"
        ) && ve < s.len()
            && s[ve] == b' '
        {
            let mut ve2 = ve + 1;
            while ve2 < s.len()
                && !s[ve2].is_ascii_whitespace()
                && !matches!(
                    s[ve2],
                    b'"' | b'\'' | b'`' | b',' | b';' | b')' | b']' | b'}' | b'<' | b'>'
                )
            {
                ve2 += 1;
            }
            ve = ve2;
        }
        (vs, ve)
    };
    if ve <= vs {
        return;
    }
    let wstart = a.saturating_sub(48);
    let ident_lower: Vec<u8> = ident.iter().map(|c| c.to_ascii_lowercase()).collect();
    classify(&s[wstart..ident_end], &ident_lower, s, vs, ve, out);
}

fn curl_user(s: &[u8], kw_start: usize, kw_end: usize, out: &mut Vec<Hit>) {
    if kw_start > 0 && !matches!(s[kw_start - 1], b' ' | b'\t' | b'\n' | b'\\') {
        return;
    }
    let mut p = kw_end;
    if p < s.len() && (s[p] == b'=' || s[p] == b' ') {
        p += 1;
    }
    if p >= s.len() {
        return;
    }
    let (vs, ve) = if matches!(s[p], b'"' | b'\'') {
        let q = s[p];
        let vs = p + 1;
        match memchr::memchr(q, &s[vs..]) {
            Some(n) if n < 256 => (vs, vs + n),
            _ => return,
        }
    } else {
        let vs = p;
        let mut ve = vs;
        while ve < s.len() && !s[ve].is_ascii_whitespace() && ve - vs < 256 {
            ve += 1;
        }
        (vs, ve)
    };
    let v = &s[vs..ve];
    let Some(colon) = v.iter().position(|&c| c == b':') else {
        return;
    };
    let (user, pass) = (&v[..colon], &v[colon + 1..]);
    if user.is_empty()
        || pass.len() < 4
        || pass.starts_with(b"$")
        || user.starts_with(b"$")
        || is_placeholder(v)
        || pass.contains(&b'{')
    {
        return;
    }
    if entropy(pass) < 2.5 {
        return;
    }
    out.push(secret_hit(
        "curl-user-credentials",
        Severity::High,
        Confidence::Medium,
        vs,
        ve,
        s,
        1,
    ));
}

/// Judges a JSON string value by its object key `key` (original case) under `parent`.
pub(crate) fn json_member(key: &[u8], parent: Option<&[u8]>, s: &[u8], out: &mut Vec<Hit>) {
    // Cheap exits first: this runs for every string value that has a key.
    if s.len() < 8 || key.is_empty() || key.len() > IDENT_MAX {
        return;
    }
    // Trim surrounding whitespace; a value with inner whitespace is prose unless it is a
    // header value with a scheme (handled by classify).
    let mut a = 0;
    let mut b = s.len();
    while a < b && s[a].is_ascii_whitespace() {
        a += 1;
    }
    while b > a && s[b - 1].is_ascii_whitespace() {
        b -= 1;
    }
    if b - a > VALUE_MAX + 16 || b - a < 8 {
        return;
    }
    let (skip, _) = strip_scheme(&s[a..b]);
    if s[a + skip..b].iter().any(|c| c.is_ascii_whitespace()) {
        return;
    }
    let mut lower = [0u8; IDENT_MAX];
    let key_lower = &mut lower[..key.len()];
    key_lower.copy_from_slice(key);
    key_lower.make_ascii_lowercase();
    if name_kind(key_lower) == NameKind::None && b - a - skip < 24 {
        // Neither a secret-like name nor long enough for a provider format.
        return;
    }
    let mut window = Vec::with_capacity(key.len() + parent.map_or(0, |p| p.len() + 1));
    if let Some(p) = parent {
        window.extend_from_slice(p);
        window.push(b'.');
    }
    window.extend_from_slice(key);
    classify(&window, key_lower, s, a, b, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<&'static str> {
        let s = s.as_bytes();
        let mut out = Vec::new();
        let mut done = 0;
        let lower: Vec<u8> = s.iter().map(|c| c.to_ascii_lowercase()).collect();
        for kw in KEYWORDS {
            let mut from = 0;
            while let Some(p) = memchr::memmem::find(&lower[from..], kw.as_bytes()) {
                let st = from + p;
                text_assignment(s, st, st + kw.len(), &mut done, &mut out);
                from = st + 1;
            }
            done = 0;
        }
        out.sort_by_key(|h| (h.start, h.end));
        out.dedup_by_key(|h| (h.start, h.end));
        out.iter().map(|h| h.rule).collect()
    }

    #[test]
    fn assignments_of_random_values_are_found() {
        assert_eq!(
            text("API_KEY=q8Zr2LmV0xPw7TnB4kYc"),
            ["generic-secret-assignment"]
        );
        assert_eq!(
            text("const secretToken = \"p3Xk9vQm2Lr7Tb4Wz8Yh\";"),
            ["generic-secret-assignment"]
        );
        assert_eq!(
            text("db_password: Tr0ub4dor&3x"),
            ["generic-password-assignment"]
        );
    }

    #[test]
    fn references_placeholders_and_ids_are_not() {
        assert!(text("API_KEY=os.getenv(\"API_KEY\")").is_empty());
        assert!(text("api_key = \"<your-api-key>\"").is_empty());
        assert!(text("key_id = \"4c9a1f3e-2b7d-4e8a-9f10-6d5c3b2a1e0f\"").is_empty());
        assert!(text("public_key = \"9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit\"").is_empty());
        assert!(text("secret_length = X25519.secret_length").is_empty());
        assert!(text("Use the key to open the door").is_empty());
    }
}
