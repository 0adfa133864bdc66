//! What a detector reports: [`Finding`], its [`Span`]s, and the open vocabularies it uses
//! ([`Category`], [`Severity`], [`Confidence`]).
//!
//! A finding never holds the matched value. That is a property of the type, not a convention:
//! no field of [`Finding`] or [`Span`] is text taken from the message (the path is built from
//! object keys and array indices only, and a key that is itself a finding is written as `*`),
//! so the derived `Debug`, the `Display` and the `Serialize` implementations cannot leak it. The
//! only trace of the value is the optional [`Fingerprint`], a truncated keyed hash.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// A finding's category. Open: plugins match on the constants and must treat an unknown
/// category as they treat the most sensitive one they know (new categories can be added
/// without a breaking change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Category(pub &'static str);

impl Category {
    /// Credentials: API keys, tokens, private keys, passwords in URLs and assignments.
    pub const SECRET: Category = Category("secret");
    /// Personal data: e-mail addresses, phone numbers, card numbers, IBANs, SSNs, IP addresses.
    pub const PII: Category = Category("pii");
    /// Tool poisoning and prompt injection: hidden Unicode, instructions aimed at the model,
    /// references to credential files, parameters that ask for unrelated data.
    pub const INJECTION: Category = Category("injection");

    /// The category's name as used in policies and events (`secret`, `pii`, `injection`).
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// How bad it is if the finding is real.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Worth recording only (documentation examples, low-value identifiers).
    Info,
    /// Personal data of limited sensitivity (an IP address, an e-mail address).
    Low,
    /// Sensitive personal data, weaker instructions to the model.
    Medium,
    /// Credentials of a known format, card numbers, hidden instructions.
    High,
    /// Private keys, cloud root credentials, database passwords.
    Critical,
}

impl Severity {
    /// Lower-case name (`info` .. `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// How sure the detector is that the match is what the rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Confidence {
    /// A heuristic (generic assignment of a random-looking value, a phrase).
    Low,
    /// The format matched, with no checksum to confirm it (or the checksum failed on a format
    /// that is still unmistakably a credential).
    Medium,
    /// The format matched and an embedded checksum or a structural check confirmed it.
    High,
}

impl Confidence {
    /// Lower-case name (`low`, `medium`, `high`).
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

/// Where in the JSON the match was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Location {
    /// Inside a string value.
    Value,
    /// Inside an object key (the path then ends in `*`).
    Key,
    /// Inside a JSON document held in a string value (the path has a `#` where it enters it).
    Nested,
    /// Across several sibling string fragments of one array or object (one span per fragment).
    Fragments,
    /// In text that is not JSON (a malformed line, or [`crate::Detector::scan_text`]).
    Text,
}

/// How the bytes of [`Span::raw`] are encoded in the scanned input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Encoding {
    /// `raw` is a JSON string token, quotes included; `decoded` is relative to its decoded value.
    JsonString,
    /// `raw` is plain text; `decoded` is relative to `raw.start` (the bytes are the text).
    Raw,
}

/// One matched range: where the string is in the input line, and where the match is inside
/// that string once decoded. The redactor needs both: it maps `decoded` back into `raw`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Span {
    /// Byte range of the encoded string in the scanned line (for [`Encoding::JsonString`] the
    /// whole token including both quotes).
    pub raw: Range<usize>,
    /// Byte range of the match inside the decoded string value.
    pub decoded: Range<usize>,
    /// How `raw` is encoded.
    pub encoding: Encoding,
}

/// A keyed hash of a matched value: the first 4 bytes of HMAC-SHA256(key, value), shown as 8
/// hex digits. Equal values give equal fingerprints under one key; without the key the value
/// cannot be recovered or confirmed by guessing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 4]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One detection. Holds no text from the message (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule id (kebab-case), e.g. `aws-access-key-id`.
    pub rule: &'static str,
    /// The rule's category.
    pub category: Category,
    /// Severity (documentation examples are always [`Severity::Info`]).
    pub severity: Severity,
    /// Confidence.
    pub confidence: Confidence,
    /// The value is a known documentation example (AWS's `AKIAIOSFODNN7EXAMPLE`, Stripe's
    /// published test keys, `4111 1111 1111 1111`...). Report it, do not treat it as a leak:
    /// see the crate README for what plugins do with examples.
    pub example: bool,
    /// Where the match is (value, key, nested JSON, fragments, plain text).
    pub location: Location,
    /// JSON path of the string, e.g. `params.arguments.headers.Authorization`.
    pub path: String,
    /// The matched ranges; one, except for [`Location::Fragments`].
    pub spans: Vec<Span>,
    /// Keyed hash of the matched value when the detector was given a fingerprint key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}, {}, {} confidence] at {}",
            self.rule,
            self.category,
            self.severity.as_str(),
            self.confidence.as_str(),
            if self.path.is_empty() {
                "$"
            } else {
                &self.path
            }
        )?;
        if self.example {
            f.write_str(" (documentation example)")?;
        }
        if let Some(fp) = self.fingerprint {
            write!(f, " hmac8={fp}")?;
        }
        Ok(())
    }
}

/// Why a line was not inspected completely. The plugin decides by policy what to do with such
/// a line (advanced-filters blocks it as uninspectable by default); findings reported before
/// the limit was hit are still valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Incomplete {
    /// The line is longer than [`crate::Limits::max_line_bytes`]; nothing was scanned.
    LineTooLarge {
        /// The line's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Containers nest deeper than [`crate::Limits::max_depth`]; scanning stopped there.
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More than [`crate::Limits::max_findings`] findings; the rest were not reported.
    TooManyFindings {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for Incomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incomplete::LineTooLarge { len, limit } => {
                write!(
                    f,
                    "line of {len} bytes is over the inspection limit of {limit} bytes"
                )
            }
            Incomplete::TooDeep { limit } => {
                write!(
                    f,
                    "JSON nests deeper than the inspection limit of {limit} levels"
                )
            }
            Incomplete::TooManyFindings { limit } => {
                write!(f, "more than {limit} findings; the rest were not reported")
            }
        }
    }
}

/// The result of scanning one line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Findings in line order.
    pub findings: Vec<Finding>,
    /// Set when the line was not inspected completely.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
    /// Set when the line is not valid JSON: the byte offset of the first error. The findings
    /// are then those of the line scanned as plain text ([`Location::Text`], [`Encoding::Raw`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed_at: Option<usize>,
}

impl Report {
    /// True when there is nothing to act on: no finding and a complete inspection.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.incomplete.is_none()
    }

    /// Findings that are not documentation examples.
    pub fn leaks(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.example)
    }
}
