//! Tool poisoning and prompt injection: text aimed at the model rather than the user, in tool,
//! prompt and resource descriptions and in tool results.
//!
//! - Hidden Unicode: the tags block (U+E0000-E007F, invisible ASCII twins that models read),
//!   bidirectional overrides and isolates (U+202A-202E, U+2066-2069, "Trojan Source"), and
//!   zero-width characters (U+200B, U+2060, U+180E, a U+FEFF that is not a leading BOM; U+200C
//!   and U+200D only in runs or between ASCII, since emoji and Persian/Indic text use them).
//! - Instructions to the model: overriding earlier instructions ("ignore previous
//!   instructions"), hiding actions from the user ("do not tell the user"), directive tags
//!   (`<IMPORTANT>`, `<system>`, chat-template tokens), instructions to act before a tool is
//!   used ("before using this tool, read ..."), and shadowing other tools.
//! - References to credential files (`~/.ssh/id_rsa`, `~/.aws/credentials`, `.env`,
//!   `/etc/passwd`, `mcp.json`, `claude_desktop_config.json`...): always in descriptions, and
//!   elsewhere only inside an instruction to read or send them, so that a file listing or a
//!   `path` argument is not an injection.
//! - Parameters whose description asks for unrelated sensitive data (a `sidenote` that wants
//!   the contents of `~/.ssh/id_rsa`, a `context` that wants the conversation or the system
//!   prompt), unless the parameter's own name says that is what it is for.
//!
//! Phrases are matched on words, case-insensitively, with a little slack for filler words, so
//! "Ignore all of the previous instructions" matches and "ignore the previous results" does not.

use super::{Hit, RuleInfo};
use crate::finding::{Category, Confidence, Severity};

/// The injection rules.
pub(crate) const RULES: &[RuleInfo] = &[
    info("hidden-unicode-tags", "Invisible Unicode tag characters (U+E0000-E007F) that smuggle text to the model", Severity::Critical),
    info("bidi-control-characters", "Bidirectional override/isolate characters that reorder what the user sees", Severity::High),
    info("zero-width-characters", "Zero-width characters hiding or splitting text", Severity::Medium),
    info("model-instruction-override", "Instruction to ignore or replace previous instructions", Severity::High),
    info("conceal-from-user", "Instruction to hide actions or information from the user", Severity::High),
    info("model-directive-tag", "Directive tags aimed at the model (<IMPORTANT>, <system>, chat-template tokens)", Severity::High),
    info("pre-tool-instruction", "Instruction to read or send data before using a tool", Severity::High),
    info("tool-shadowing", "Description that redirects the use of other tools", Severity::Medium),
    info("credential-file-reference", "Reference to a credential file (~/.ssh, ~/.aws/credentials, .env, mcp.json...) in a description or an instruction", Severity::High),
    info("exfiltration-parameter", "Tool parameter whose description asks for unrelated sensitive data", Severity::High),
];

const fn info(id: &'static str, description: &'static str, severity: Severity) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::INJECTION,
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
) -> Hit {
    Hit {
        rule,
        category: Category::INJECTION,
        severity,
        confidence,
        start,
        end,
        example: false,
        priority: 0,
    }
}

/// Where a string sits, as far as injection rules care.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ctx<'a> {
    /// A description-like field (`description`, `instructions`, anything under `inputSchema`).
    pub(crate) description: bool,
    /// The property name when the string is `inputSchema...properties.<name>.description`.
    pub(crate) param: Option<&'a [u8]>,
}

/// Prefilter anchors: (pattern, kind). Unicode anchors are byte sequences.
pub(crate) const ANCHORS: &[(&[u8], Kind)] = &[
    (b"\xF3\xA0\x80", Kind::Tags),
    (b"\xF3\xA0\x81", Kind::Tags),
    (b"\xE2\x80\x8B", Kind::ZeroWidth),
    (b"\xE2\x80\x8C", Kind::ZeroWidth),
    (b"\xE2\x80\x8D", Kind::ZeroWidth),
    (b"\xE2\x81\xA0", Kind::ZeroWidth),
    (b"\xEF\xBB\xBF", Kind::ZeroWidth),
    (b"\xE1\xA0\x8E", Kind::ZeroWidth),
    (b"\xE2\x80\xAA", Kind::Bidi),
    (b"\xE2\x80\xAB", Kind::Bidi),
    (b"\xE2\x80\xAC", Kind::Bidi),
    (b"\xE2\x80\xAD", Kind::Bidi),
    (b"\xE2\x80\xAE", Kind::Bidi),
    (b"\xE2\x81\xA6", Kind::Bidi),
    (b"\xE2\x81\xA7", Kind::Bidi),
    (b"\xE2\x81\xA8", Kind::Bidi),
    (b"\xE2\x81\xA9", Kind::Bidi),
    (b"ignore", Kind::Override),
    (b"disregard", Kind::Override),
    (b"forget", Kind::Override),
    (b"override", Kind::Override),
    (b"bypass", Kind::Override),
    (b"new instructions", Kind::NewInstructions),
    (b"updated instructions", Kind::NewInstructions),
    (b"you are now ", Kind::NewInstructions),
    (b"do not ", Kind::Conceal),
    (b"don't ", Kind::Conceal),
    (b"dont ", Kind::Conceal),
    (b"never ", Kind::Conceal),
    (b"without ", Kind::Conceal),
    (b"hide this", Kind::Conceal),
    (b"keep this", Kind::Conceal),
    (b"<important>", Kind::Tag),
    (b"</important>", Kind::Tag),
    (b"<system>", Kind::Tag),
    (b"</system>", Kind::Tag),
    (b"<instructions>", Kind::Tag),
    (b"<|im_start|>", Kind::Tag),
    (b"<|system|>", Kind::Tag),
    (b"<|endoftext|>", Kind::Tag),
    (b"[inst]", Kind::Tag),
    (b"<<sys>>", Kind::Tag),
    (b"<admin>", Kind::Tag),
    (b"before using", Kind::PreTool),
    (b"before calling", Kind::PreTool),
    (b"before invoking", Kind::PreTool),
    (b"before executing", Kind::PreTool),
    (b"before running", Kind::PreTool),
    (b"before you use", Kind::PreTool),
    (b"before you call", Kind::PreTool),
    (b"prior to using", Kind::PreTool),
    (b"prior to calling", Kind::PreTool),
    (b"instead of", Kind::Shadow),
    (b"rather than", Kind::Shadow),
    (b"all other tools", Kind::Shadow),
    (b"any other tool", Kind::Shadow),
    (b"id_rsa", Kind::CredFile),
    (b"id_ed25519", Kind::CredFile),
    (b"id_ecdsa", Kind::CredFile),
    (b"id_dsa", Kind::CredFile),
    (b".ssh/", Kind::CredFile),
    (b".aws/credentials", Kind::CredFile),
    (b".aws/config", Kind::CredFile),
    (b"/etc/passwd", Kind::CredFile),
    (b"/etc/shadow", Kind::CredFile),
    (b".env", Kind::CredFile),
    (b"mcp.json", Kind::CredFile),
    (b"claude_desktop_config.json", Kind::CredFile),
    (b".netrc", Kind::CredFile),
    (b".npmrc", Kind::CredFile),
    (b".pypirc", Kind::CredFile),
    (b".git-credentials", Kind::CredFile),
    (b".docker/config.json", Kind::CredFile),
    (b".kube/config", Kind::CredFile),
    (b"application_default_credentials.json", Kind::CredFile),
    (b"credentials.json", Kind::CredFile),
    (b".bash_history", Kind::CredFile),
    (b".zsh_history", Kind::CredFile),
    (b".gnupg", Kind::CredFile),
    (b"wallet.dat", Kind::CredFile),
];

/// What an anchor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Tags,
    ZeroWidth,
    Bidi,
    Override,
    NewInstructions,
    Conceal,
    Tag,
    PreTool,
    Shadow,
    CredFile,
}

fn lower(s: &[u8]) -> Vec<u8> {
    s.iter().map(|c| c.to_ascii_lowercase()).collect()
}

/// The next `n` words after `from` (lower-cased, letters and apostrophes), with their end.
fn words_after(s: &[u8], from: usize, n: usize) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = from;
    while out.len() < n && i < s.len() {
        while i < s.len() && !s[i].is_ascii_alphabetic() {
            if matches!(s[i], b'.' | b'!' | b'?' | b'\n' | b';') {
                return out;
            }
            i += 1;
        }
        let st = i;
        while i < s.len() && (s[i].is_ascii_alphabetic() || s[i] == b'\'') {
            i += 1;
        }
        if i > st {
            out.push((lower(&s[st..i]), i));
        }
    }
    out
}

fn word_start(s: &[u8], at: usize) -> bool {
    at == 0 || !s[at - 1].is_ascii_alphanumeric()
}

/// Extent of the sentence around `at` (bounded), for "is there an instruction nearby".
fn sentence(s: &[u8], at: usize) -> (usize, usize) {
    let mut a = at;
    while a > 0 && at - a < 160 && !matches!(s[a - 1], b'.' | b'\n' | b'!' | b'?') {
        a -= 1;
    }
    let mut b = at;
    while b < s.len() && b - at < 240 && !matches!(s[b], b'\n' | b'!' | b'?') {
        if s[b] == b'.' && b + 1 < s.len() && s[b + 1] == b' ' {
            break;
        }
        b += 1;
    }
    (a, b)
}

const DATA_VERBS: &[&[u8]] = &[
    b"read",
    b"cat ",
    b"open",
    b"send",
    b"upload",
    b"include",
    b"attach",
    b"copy",
    b"paste",
    b"provide",
    b"pass ",
    b"exfiltrat",
    b"contents of",
    b"content of",
    b"print",
    b"output",
    b"leak",
    b"share",
    b"forward",
    b"post ",
    b"fetch",
    b"load",
    b"extract",
    b"collect",
    b"append",
];

const SENSITIVE: &[&[u8]] = &[
    b"ssh",
    b"id_rsa",
    b"private key",
    b"api key",
    b"api_key",
    b"apikey",
    b"token",
    b"password",
    b"secret",
    b"credential",
    b".env",
    b"env var",
    b"environment variable",
    b"mcp.json",
    b"config file",
    b"conversation",
    b"chat history",
    b"previous messages",
    b"system prompt",
    b"cookie",
    b"session",
    b"~/",
    b"/etc/",
    b"keychain",
    b"wallet",
    b"seed phrase",
    b"mnemonic",
    b".aws",
    b"claude_desktop_config",
];

fn has_any(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| crate::validate::contains(hay, n))
}

/// Handles an anchor of `kind` found at `s[at..end]`.
pub(crate) fn anchor(
    kind: Kind,
    s: &[u8],
    at: usize,
    end: usize,
    ctx: Ctx<'_>,
    out: &mut Vec<Hit>,
) {
    match kind {
        Kind::Tags => unicode_run(s, at, "hidden-unicode-tags", Severity::Critical, out),
        Kind::Bidi => unicode_run(s, at, "bidi-control-characters", Severity::High, out),
        Kind::ZeroWidth => zero_width(s, at, end, out),
        Kind::Override => override_(s, at, end, out),
        Kind::NewInstructions => {
            if !word_start(s, at) {
                return;
            }
            let (a, b) = sentence(s, at);
            let l = lower(&s[a..b]);
            let anchor = lower(&s[at..end]);
            // "You are now connected", "see the new instructions for the installer" are prose:
            // a role change needs a role word, new instructions need a colon or an override.
            let ok = if anchor.starts_with(b"you are now") {
                words_after(s, end, 6).iter().any(|(w, _)| {
                    matches!(
                        w.as_slice(),
                        b"mode"
                            | b"assistant"
                            | b"ai"
                            | b"model"
                            | b"persona"
                            | b"role"
                            | b"unrestricted"
                            | b"jailbroken"
                            | b"dan"
                            | b"unfiltered"
                            | b"uncensored"
                    )
                })
            } else {
                s[end..].iter().take(3).any(|&c| c == b':')
                    || has_any(
                        &l,
                        &[
                            b"ignore",
                            b"instead",
                            b"from now on",
                            b"override",
                            b"supersede",
                            b"replace",
                        ],
                    )
            };
            if ok {
                out.push(hit(
                    "model-instruction-override",
                    Severity::High,
                    Confidence::Medium,
                    at,
                    b.max(end),
                ));
            }
        }
        Kind::Conceal => conceal(s, at, end, out),
        Kind::Tag => {
            let tag = lower(&s[at..end]);
            // `<system>` is also an XML element name; count it only where text is aimed at a
            // model (descriptions) or when an instruction follows it.
            if (tag == b"<system>" || tag == b"</system>" || tag == b"<admin>") && !ctx.description
            {
                let (_, b) = sentence(s, end);
                let l = lower(&s[end..b]);
                if !has_any(&l, DATA_VERBS)
                    && !has_any(&l, &[b"ignore", b"must", b"always", b"never"])
                {
                    return;
                }
            }
            out.push(hit(
                "model-directive-tag",
                Severity::High,
                Confidence::High,
                at,
                end,
            ));
        }
        Kind::PreTool => {
            let (a, b) = sentence(s, at);
            let l = lower(&s[a..b]);
            if memchr::memmem::find(&l, b"tool").is_some()
                && has_any(&l, DATA_VERBS)
                && has_any(&l, SENSITIVE)
            {
                out.push(hit(
                    "pre-tool-instruction",
                    Severity::High,
                    Confidence::Medium,
                    at,
                    b,
                ));
            }
        }
        Kind::Shadow => {
            if !ctx.description {
                return;
            }
            let (a, b) = sentence(s, at);
            let l = lower(&s[a..b]);
            let redirect = has_any(
                &l,
                &[
                    b"always use this",
                    b"must use this",
                    b"use this tool",
                    b"call this tool",
                    b"instead",
                    b"do not use",
                    b"never use",
                ],
            );
            if memchr::memmem::find(&l, b"tool").is_some()
                && redirect
                && has_any(&l, &[b"other tool", b"instead of", b"rather than"])
                && has_any(
                    &l,
                    &[b"must", b"always", b"never", b"do not", b"don't", b"only"],
                )
            {
                out.push(hit(
                    "tool-shadowing",
                    Severity::Medium,
                    Confidence::Low,
                    at,
                    b,
                ));
            }
        }
        Kind::CredFile => cred_file(s, at, end, ctx, out),
    }
}

fn unicode_run(s: &[u8], at: usize, rule: &'static str, sev: Severity, out: &mut Vec<Hit>) {
    if out
        .iter()
        .any(|h| h.rule == rule && h.start <= at && at < h.end)
    {
        return;
    }
    let mut end = at;
    // Extend over the run of characters of the same family (4-byte tags, 3-byte bidi).
    loop {
        let rest = &s[end..];
        let step = if rule == "hidden-unicode-tags" {
            (rest.len() >= 4
                && rest[0] == 0xF3
                && rest[1] == 0xA0
                && (rest[2] == 0x80 || rest[2] == 0x81))
                .then_some(4)
        } else {
            (rest.len() >= 3
                && rest[0] == 0xE2
                && ((rest[1] == 0x80 && (0xAA..=0xAE).contains(&rest[2]))
                    || (rest[1] == 0x81 && (0xA6..=0xA9).contains(&rest[2]))))
            .then_some(3)
        };
        match step {
            Some(n) => end += n,
            None => break,
        }
    }
    if end > at {
        out.push(hit(rule, sev, Confidence::High, at, end));
    }
}

fn zero_width(s: &[u8], at: usize, end: usize, out: &mut Vec<Hit>) {
    if out
        .iter()
        .any(|h| h.rule == "zero-width-characters" && h.start <= at && at < h.end)
    {
        return;
    }
    let ch = &s[at..end];
    let is_zw = |r: &[u8]| -> usize {
        for z in [
            "\u{200B}", "\u{200C}", "\u{200D}", "\u{2060}", "\u{FEFF}", "\u{180E}",
        ] {
            if r.starts_with(z.as_bytes()) {
                return z.len();
            }
        }
        0
    };
    let mut e = at;
    let mut count = 0;
    loop {
        let n = is_zw(&s[e..]);
        if n == 0 {
            break;
        }
        e += n;
        count += 1;
    }
    // A BOM at the very start of a string is a byte order mark, not hiding anything.
    if ch == "\u{FEFF}".as_bytes() && at == 0 && count == 1 {
        return;
    }
    let joiner = ch == "\u{200C}".as_bytes() || ch == "\u{200D}".as_bytes();
    if joiner && count == 1 {
        // ZWJ/ZWNJ belong in emoji sequences and some scripts: only suspicious between ASCII.
        let before_ascii = at > 0 && s[at - 1].is_ascii_alphanumeric();
        let after_ascii = e < s.len() && s[e].is_ascii_alphanumeric();
        if !(before_ascii && after_ascii) {
            return;
        }
    }
    out.push(hit(
        "zero-width-characters",
        Severity::Medium,
        Confidence::High,
        at,
        e,
    ));
}

fn override_(s: &[u8], at: usize, end: usize, out: &mut Vec<Hit>) {
    if !word_start(s, at) {
        return;
    }
    const QUAL: &[&[u8]] = &[
        b"previous",
        b"prior",
        b"above",
        b"earlier",
        b"preceding",
        b"all",
        b"any",
        b"system",
        b"original",
        b"your",
        b"these",
        b"those",
        b"the",
        b"other",
        b"every",
        b"existing",
        b"initial",
        b"developer",
        b"safety",
    ];
    const OBJ: &[&[u8]] = &[
        b"instructions",
        b"instruction",
        b"prompt",
        b"prompts",
        b"rules",
        b"directions",
        b"guidelines",
        b"guidance",
        b"directives",
        b"constraints",
        b"restrictions",
        b"policies",
        b"commands",
        b"orders",
        b"programming",
        b"messages",
    ];
    const STRONG: &[&[u8]] = &[
        b"previous",
        b"prior",
        b"above",
        b"earlier",
        b"preceding",
        b"all",
        b"system",
        b"original",
        b"your",
        b"safety",
        b"developer",
        b"initial",
    ];
    let words = words_after(s, end, 6);
    let mut strong = false;
    let mut qual = false;
    for (w, wend) in &words {
        if STRONG.contains(&w.as_slice()) {
            strong = true;
        }
        if QUAL.contains(&w.as_slice()) {
            qual = true;
            continue;
        }
        if OBJ.contains(&w.as_slice()) {
            if qual && strong {
                out.push(hit(
                    "model-instruction-override",
                    Severity::High,
                    Confidence::High,
                    at,
                    *wend,
                ));
            }
            return;
        }
        if matches!(
            w.as_slice(),
            b"of"
                | b"and"
                | b"or"
                | b"my"
                | b"our"
                | b"that"
                | b"you"
                | b"were"
                | b"given"
                | b"received"
                | b"have"
                | b"been"
        ) {
            continue;
        }
        if !qual {
            return;
        }
    }
}

fn conceal(s: &[u8], at: usize, end: usize, out: &mut Vec<Hit>) {
    if !word_start(s, at) {
        return;
    }
    let first = lower(&s[at..end]);
    let words = words_after(s, end, 7);
    let ws: Vec<&[u8]> = words.iter().map(|(w, _)| w.as_slice()).collect();
    let who = |w: &[u8]| {
        matches!(
            w,
            b"user" | b"users" | b"human" | b"humans" | b"anyone" | b"operator" | b"client"
        )
    };
    const TELL: &[&[u8]] = &[
        b"tell",
        b"inform",
        b"mention",
        b"reveal",
        b"notify",
        b"alert",
        b"show",
        b"disclose",
        b"let",
        b"warn",
        b"telling",
        b"informing",
        b"mentioning",
        b"revealing",
        b"notifying",
        b"alerting",
        b"showing",
        b"asking",
        b"disclosing",
        b"warning",
        b"letting",
        b"knowing",
    ];
    let Some(pos_who) = ws.iter().position(|w| who(w)) else {
        // "keep this secret", "hide this from ..." without naming the user
        if (first.starts_with(b"hide this") || first.starts_with(b"keep this"))
            && ws.iter().take(3).any(|w| {
                matches!(
                    *w,
                    b"secret" | b"hidden" | b"private" | b"confidential" | b"from"
                )
            })
        {
            let e = words.get(2).map_or(end, |w| w.1);
            out.push(hit(
                "conceal-from-user",
                Severity::High,
                Confidence::Medium,
                at,
                e,
            ));
        }
        return;
    };
    let before = &ws[..pos_who];
    let ok = if first.starts_with(b"without") {
        before.first().is_some_and(|w| TELL.contains(w))
            || (before.first() == Some(&&b"the"[..])
                && ws
                    .get(pos_who + 1)
                    .is_some_and(|w| matches!(*w, b"knowing" | b"noticing" | b"seeing")))
    } else if first.starts_with(b"hide") || first.starts_with(b"keep") {
        before
            .iter()
            .any(|w| matches!(*w, b"from" | b"secret" | b"hidden"))
    } else {
        before.first().is_some_and(|w| TELL.contains(w))
    };
    if ok && pos_who <= 4 {
        let e = words[pos_who].1;
        out.push(hit(
            "conceal-from-user",
            Severity::High,
            Confidence::High,
            at,
            e,
        ));
    }
}

fn cred_file(s: &[u8], at: usize, end: usize, ctx: Ctx<'_>, out: &mut Vec<Hit>) {
    let pat = lower(&s[at..end]);
    // Boundaries: `.env` must be a file name (not process.env, not .environment).
    if pat == b".env" {
        let tail = lower(&s[end..s.len().min(end + 9)]);
        if [
            &b".example"[..],
            b".sample",
            b".template",
            b".dist",
            b".tmpl",
        ]
        .iter()
        .any(|t| tail.starts_with(t))
        {
            return;
        }
        let before_ok = at == 0
            || matches!(
                s[at - 1],
                b'/' | b' ' | b'~' | b'"' | b'\'' | b'`' | b'(' | b'\n' | b'\t' | b':'
            );
        let after_ok = end == s.len() || !s[end].is_ascii_alphanumeric();
        if !before_ok || !after_ok {
            return;
        }
    }
    if pat == b"credentials.json" && at > 0 && s[at - 1] == b'_' {
        return; // application_default_credentials.json has its own anchor
    }
    // Extend to the whole path token.
    let mut a = at;
    while a > 0
        && !matches!(
            s[a - 1],
            b' ' | b'\n' | b'\t' | b'"' | b'\'' | b'`' | b'(' | b'<' | b'>' | b','
        )
        && at - a < 128
    {
        a -= 1;
    }
    let mut b = end;
    while b < s.len()
        && !matches!(
            s[b],
            b' ' | b'\n' | b'\t' | b'"' | b'\'' | b'`' | b')' | b'<' | b'>' | b','
        )
        && b - end < 128
    {
        b += 1;
    }
    while b > end && matches!(s[b - 1], b'.' | b':' | b';') {
        b -= 1;
    }
    if out
        .iter()
        .any(|h| h.rule == "credential-file-reference" && h.start <= a && b <= h.end)
    {
        return;
    }
    if ctx.description {
        out.push(hit(
            "credential-file-reference",
            Severity::High,
            Confidence::Medium,
            a,
            b,
        ));
        return;
    }
    // Outside descriptions: only inside an instruction, on the same line, before the path.
    let mut ls = a;
    while ls > 0 && a - ls < 100 && s[ls - 1] != b'\n' {
        ls -= 1;
    }
    let l = lower(&s[ls..a]);
    const IMPERATIVE: &[&[u8]] = &[
        b"read ",
        b"cat ",
        b"send ",
        b"upload ",
        b"include ",
        b"attach ",
        b"exfiltrat",
        b"contents of",
        b"content of",
        b"leak ",
        b"forward ",
        b"post ",
        b"print ",
        b"output ",
    ];
    // The verb must govern the path: at most a few words between them.
    let near = IMPERATIVE
        .iter()
        .any(|v| match memchr::memmem::rfind(&l, v) {
            Some(p) => {
                l[p + v.len()..]
                    .split(|c| *c == b' ')
                    .filter(|w| !w.is_empty())
                    .count()
                    <= 3
            }
            None => false,
        });
    if near {
        out.push(hit(
            "credential-file-reference",
            Severity::High,
            Confidence::Medium,
            a,
            b,
        ));
    }
}

/// Judges the description of tool parameter `name`.
/// One automaton over the sensitive objects, built on first use: parameter descriptions are
/// many and mostly innocent, and this rejects them in one pass.
fn sensitive_matcher() -> &'static aho_corasick::AhoCorasick {
    static M: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(SENSITIVE)
            .expect("a fixed set of literals")
    })
}

pub(crate) fn param_description(name: &[u8], s: &[u8], out: &mut Vec<Hit>) {
    if s.len() > 4096 || !sensitive_matcher().is_match(s) {
        return;
    }
    let l = lower(s);
    let name_l = lower(name);
    const ASK: &[&[u8]] = &[
        b"pass ",
        b"provide",
        b"include",
        b"put ",
        b"add ",
        b"paste",
        b"insert",
        b"copy",
        b"read",
        b"send",
        b"contents",
        b"content of",
        b"full text",
        b"entire",
        b"fill",
        b"must contain",
        b"should contain",
        b"value of",
        b"append",
    ];
    if !has_any(&l, ASK) {
        return;
    }
    // Sensitive objects the parameter asks for, minus those its own name announces.
    let asked: Vec<&&[u8]> = SENSITIVE
        .iter()
        .filter(|w| memchr::memmem::find(&l, w).is_some())
        .collect();
    if asked.is_empty() {
        return;
    }
    let related = asked.iter().all(|w| {
        let key: &[u8] = match **w {
            b"api key" | b"api_key" | b"apikey" => b"key",
            b"private key" => b"key",
            b"password" => b"pass",
            b"credential" => b"cred",
            b"conversation" | b"chat history" | b"previous messages" => b"history",
            other => other,
        };
        let key = key.strip_prefix(b"~/").unwrap_or(key);
        !key.is_empty() && memchr::memmem::find(&name_l, key).is_some()
    });
    if related {
        return;
    }
    out.push(hit(
        "exfiltration-parameter",
        Severity::High,
        Confidence::Medium,
        0,
        s.len(),
    ));
}
