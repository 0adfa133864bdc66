//! The rule catalogue: the shapes of rules ([`TokenRule`], [`ContextRule`], custom matchers)
//! and the list every detector is built from. The detectors themselves live in the submodules
//! by category; [`crate::engine`] compiles their prefixes and keywords into one prefilter.

pub(crate) mod generic;
pub(crate) mod injection;
pub(crate) mod pii;
pub(crate) mod secrets;

use serde::Serialize;

use crate::finding::{Category, Confidence, Severity};
use crate::spec::{Class, Seg, WORD};

/// What every rule says about itself (listed by `km plugin advanced-filters rules`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    /// Stable kebab-case id.
    pub id: &'static str,
    /// Category.
    pub category: Category,
    /// One-line description.
    pub description: &'static str,
    /// Severity of a real (non-example) match.
    pub severity: Severity,
}

/// A validator run on a token-format match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Format only.
    None,
    /// GitHub/npm: last 6 characters are base62(CRC32(random part)). A failed checksum lowers
    /// the confidence to medium instead of discarding the match (see the README).
    Crc32Base62,
    /// age: the whole key is bech32 with a valid checksum; otherwise no match.
    Bech32,
    /// The body must start with base64 of a JSON object (`eyJ`) that decodes to `{"`.
    Base64Json,
    /// Grafana service-account tokens end in `_` + 8 hex digits of CRC32 over the rest.
    Crc32Hex8,
    /// The body decodes (base64) to text that starts with `bedrock.amazonaws.com`.
    BedrockPresigned,
    /// OpenAI: the body carries the `T3BlbkFJ` marker (base64 of "OpenAI").
    OpenAiMarker,
}

/// A credential whose format starts with a distinctive prefix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenRule {
    pub(crate) id: &'static str,
    pub(crate) description: &'static str,
    pub(crate) severity: Severity,
    /// Case-sensitive prefixes (the prefilter finds them case-insensitively).
    pub(crate) prefixes: &'static [&'static str],
    /// The rest of the token after the prefix.
    pub(crate) body: &'static [Seg],
    pub(crate) check: Check,
    /// Minimum Shannon entropy of the body (bits per byte).
    pub(crate) min_entropy: f32,
    /// The byte before the prefix must not be in this class (word boundary); 0 disables.
    pub(crate) left_stop: Class,
}

/// Word characters and `.`: a token preceded by either is part of something longer.
pub(crate) const LEFT_STOP: Class = WORD | (1u128 << b'.');

impl TokenRule {
    pub(crate) const fn new(
        id: &'static str,
        description: &'static str,
        severity: Severity,
        prefixes: &'static [&'static str],
        body: &'static [Seg],
    ) -> Self {
        TokenRule {
            id,
            description,
            severity,
            prefixes,
            body,
            check: Check::None,
            min_entropy: 2.5,
            left_stop: LEFT_STOP,
        }
    }
    pub(crate) const fn check(mut self, c: Check) -> Self {
        self.check = c;
        self
    }
    pub(crate) const fn entropy(mut self, e: f32) -> Self {
        self.min_entropy = e;
        self
    }
    pub(crate) const fn no_left_boundary(mut self) -> Self {
        self.left_stop = 0;
        self
    }
}

/// A credential without a distinctive prefix, recognised by a provider keyword near an
/// assignment (`TWILIO_AUTH_TOKEN=...`, `"datadog": {"api_key": "..."}`) and a value format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ContextRule {
    pub(crate) id: &'static str,
    pub(crate) description: &'static str,
    pub(crate) severity: Severity,
    /// Lower-case keywords, any of which must occur in the identifier or just before it.
    pub(crate) keywords: &'static [&'static str],
    /// The whole value must match this.
    pub(crate) value: &'static [Seg],
    pub(crate) min_entropy: f32,
    /// The provider has no other credential format: a value named after it that does not match
    /// is not a credential, and the generic rules leave it alone.
    pub(crate) exclusive: bool,
}

/// A match found by a rule inside one decoded string, before it becomes a [`crate::Finding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) rule: &'static str,
    pub(crate) category: Category,
    pub(crate) severity: Severity,
    pub(crate) confidence: Confidence,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) example: bool,
    /// Lower wins when two hits overlap (specific formats before generic heuristics).
    pub(crate) priority: u8,
}

/// Every rule's description, in catalogue order, each id once.
pub(crate) fn catalogue() -> Vec<RuleInfo> {
    let mut out: Vec<RuleInfo> = Vec::new();
    let mut push = |info: RuleInfo| {
        if !out.iter().any(|r| r.id == info.id) {
            out.push(info);
        }
    };
    for r in secrets::TOKEN_RULES {
        push(RuleInfo {
            id: r.id,
            category: Category::SECRET,
            description: r.description,
            severity: r.severity,
        });
    }
    for r in secrets::CUSTOM_RULES {
        push(*r);
    }
    for r in secrets::CONTEXT_RULES {
        push(RuleInfo {
            id: r.id,
            category: Category::SECRET,
            description: r.description,
            severity: r.severity,
        });
    }
    for r in generic::RULES {
        push(*r);
    }
    for r in pii::RULES {
        push(*r);
    }
    for r in injection::RULES {
        push(*r);
    }
    out
}
