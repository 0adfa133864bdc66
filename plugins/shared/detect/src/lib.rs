//! km-detect: the detectors km's plugins share (advanced-filters, tool-guard,
//! compliance-reporting): secrets, personal data and tool poisoning in MCP JSON-RPC lines.
//!
//! A [`Detector`] scans a line in one pass over its bytes: it validates the JSON, decodes each
//! string (keys included) only when it has an escape, runs one multi-pattern prefilter over
//! it and validates candidates with per-rule checks (checksums, issuer ranges, entropy,
//! structure). Each [`Finding`] names its rule, category and JSON path and carries the byte
//! ranges that [`redact`] needs, but never the matched value (not in `Debug`, `Display` or
//! serialisation; at most a keyed [`Fingerprint`]).
//!
//! ```
//! use km_detect::{redact, Category, Detector, Marker};
//!
//! let detector = Detector::new();
//! let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"http","arguments":{"headers":{"X-Key":"AKIAZ7QW3RT5YU2IOP4N"}}}}"#;
//! let report = detector.scan_line(line);
//! let f = &report.findings[0];
//! assert_eq!(f.rule, "aws-access-key-id");
//! assert_eq!(f.category, Category::SECRET);
//! assert_eq!(f.path, "params.arguments.headers.X-Key");
//!
//! let secrets: Vec<_> = report.findings.iter().filter(|f| f.category == Category::SECRET).cloned().collect();
//! let redacted = redact(line, &secrets, Marker::Rule).expect("findings of this line");
//! assert!(std::str::from_utf8(&redacted).unwrap().contains(r#""X-Key":"[REDACTED:aws-access-key-id]""#));
//!
//! // A clean line comes back borrowed, byte for byte.
//! let clean = br#"{"jsonrpc":"2.0","id":8,"result":{}}"#;
//! let r = detector.scan_line(clean);
//! assert!(r.is_clean());
//! assert!(matches!(redact(clean, &r.findings, Marker::Rule), Ok(std::borrow::Cow::Borrowed(_))));
//! ```
//!
//! What is not checked: numbers (a card number sent as a JSON number is not found; only
//! strings are scanned), secrets hidden in object keys that no rule recognises (they then
//! appear in paths), encodings beyond JSON (base64 or URL-encoded secrets are found only
//! where a rule's format is itself base64, like JWTs), and whether a credential is live.

#![forbid(unsafe_code)]

mod anchors;
mod decode;
mod engine;
pub mod eval;
mod finding;
mod json;
mod redact;
mod rules;
mod spec;
mod swar;
mod tool;
mod validate;

pub use decode::encode_json_string_content;
pub use engine::{Detector, DetectorBuilder, Fingerprinter, Limits};
pub use finding::{
    Category, Confidence, Encoding, Finding, Fingerprint, Incomplete, Location, Report, Severity,
    Span,
};
pub use redact::{matched_value, redact, Marker};
pub use rules::RuleInfo;
pub use tool::ToolDefinition;

/// Test-data helpers: checksum computations the corpus generator and tests use to build valid
/// synthetic values. Not for detection.
pub mod synth {
    pub use crate::validate::bech32_checksum;

    /// GitHub/npm token checksum: base62 of CRC32 of `random`, 6 characters.
    pub fn crc32_base62(random: &[u8]) -> String {
        String::from_utf8(crate::validate::base62_fixed(
            u64::from(crc32fast::hash(random)),
            6,
        ))
        .unwrap_or_default()
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A finding's span does not fit in the line given to [`redact`].
    #[error("finding span {start}..{end} is outside the line of {len} bytes")]
    SpanOutOfRange {
        /// Span start.
        start: usize,
        /// Span end.
        end: usize,
        /// Line length.
        len: usize,
    },
    /// A finding's span says JSON string but the bytes there are not a string token.
    #[error("finding span at byte {offset} does not point at a JSON string of this line")]
    NotAJsonString {
        /// Where the span starts.
        offset: usize,
    },
    /// A tool definition given to [`Detector::inspect_tool`] is not usable.
    #[error("invalid tool definition: {reason}")]
    InvalidToolDefinition {
        /// What is wrong.
        reason: String,
    },
    /// A fingerprint key shorter than 16 bytes.
    #[error("fingerprint key of {len} bytes is too short (at least 16)")]
    FingerprintKeyTooShort {
        /// Its length.
        len: usize,
    },
}
