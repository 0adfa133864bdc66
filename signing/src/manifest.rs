//! The plugin manifest: what a signature vouches for.
//!
//! A small JSON object whose first field, `kind`, is [`MANIFEST_KIND`]: the domain separation
//! that keeps a km plugin signature from being mistaken for a signature over any other JSON the
//! same key may sign. [`Manifest::to_bytes`] gives the exact bytes that are signed (pretty JSON
//! plus a newline, so a human can read `m.json` before signing it with openssl); verifiers keep
//! those exact bytes and never re-serialise them. Unknown fields are refused: a field this
//! version cannot enforce must not be silently ignored (a new field means a new `kind`).

use std::time::SystemTime;

use km_abi::Tier;
use serde::{Deserialize, Serialize};

use crate::keys::KeyId;
use crate::Error;

/// The `kind` of every version-1 manifest.
pub const MANIFEST_KIND: &str = "km-plugin-manifest/v1";

/// The `kind` of a manifest that grants capabilities (and may ask to fail open). A km that knows
/// only v1 refuses it, so an intercepting plugin is never loaded as a silent observer by a km
/// that cannot enforce what it was granted.
pub const MANIFEST_KIND_V2: &str = "km-plugin-manifest/v2";

/// The capability to intercept lines (ABI 1.1): pass, replace or block them before they are
/// forwarded.
pub const CAPABILITY_INTERCEPT: &str = "intercept";

/// The capabilities this version knows; others in a v2 manifest are carried, shown, and grant
/// nothing.
pub const KNOWN_CAPABILITIES: &[&str] = &[CAPABILITY_INTERCEPT];

/// At most this many capabilities in one manifest.
const MAX_CAPABILITIES: usize = 16;

/// The largest manifest accepted, in bytes (real ones are well under 1 KiB).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024;

/// A signed description of one plugin library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_KIND`].
    pub kind: String,
    /// Plugin name: `[a-z0-9][a-z0-9-]{0,63}`.
    pub name: String,
    /// Plugin version (semver).
    pub version: String,
    /// The subscription tier the plugin needs.
    #[serde(with = "tier_serde")]
    pub tier: Tier,
    /// Target triple the library was built for, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// The km-abi version the plugin was built against (semver).
    pub abi_version: String,
    /// Lower-case hex SHA-256 of the library bytes.
    pub sha256: String,
    /// Size of the library in bytes.
    pub size: u64,
    /// When it was signed, RFC 3339 UTC (`2026-11-25T06:21:20Z`).
    pub issued_at: String,
    /// When the signature stops being valid, RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// Customer binding of a customer-specific build (checked by the plugin, not here).
    pub customer: Option<String>,
    /// v2: what the plugin may do beyond observing ([`CAPABILITY_INTERCEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// v2: when the plugin fails while intercepting, its lines pass instead of being blocked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    /// Id of the signing key.
    pub key_id: String,
}

mod tier_serde {
    use km_abi::Tier;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(tier: &Tier, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tier.as_str())
    }

    /// Exact lower-case names only: a manifest is machine-written.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tier, D::Error> {
        let s = String::deserialize(d)?;
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown tier {s:?} (expected free, pro or enterprise)"
                ))
            })
    }
}

/// What a signer states about a library: [`Manifest::describe`] adds what is computed from the
/// library's bytes (hash, size), the signing time and the key, and checks the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Plugin name.
    pub name: String,
    /// Plugin version: the one the plugin reports, which the loader holds it to.
    pub version: String,
    /// The tier it needs.
    pub tier: Tier,
    /// Target triple; `None`: the one this crate was built for.
    pub target: Option<String>,
    /// ABI version; `None`: this build's km-abi.
    pub abi_version: Option<String>,
    /// When the signature stops being valid.
    pub expires_at: Option<SystemTime>,
    /// Customer binding of a customer build.
    pub customer: Option<String>,
    /// Capabilities granted (v2).
    pub capabilities: Vec<String>,
    /// Fail open when intercepting fails (v2).
    pub fail_open: bool,
}

impl Claims {
    /// A plugin's name, version and tier, with no grants, no expiry, this target and ABI.
    pub fn new(name: &str, version: &str, tier: Tier) -> Claims {
        Claims {
            name: name.to_owned(),
            version: version.to_owned(),
            tier,
            target: None,
            abi_version: None,
            expires_at: None,
            customer: None,
            capabilities: Vec::new(),
            fail_open: false,
        }
    }
}

impl Manifest {
    /// The exact bytes that get signed: pretty JSON in field order, then `"\n"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and a unit enum cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// The manifest of `lib` as `claims` describe it, to be signed by `key_id` at `now`; every
    /// value checked as [`Manifest::validate`] checks a signed one, and an expiry in the past
    /// refused.
    pub fn describe(
        claims: &Claims,
        key_id: &KeyId,
        lib: &[u8],
        now: SystemTime,
    ) -> Result<Manifest, Error> {
        let expires_at = match claims.expires_at {
            Some(when) if when <= now => {
                return Err(Error::InvalidInput {
                    what: "expiry",
                    value: format_timestamp(when),
                    reason: "it is in the past".to_owned(),
                })
            }
            Some(when) => Some(format_timestamp(when)),
            None => None,
        };
        let manifest = Manifest {
            kind: Manifest::kind_for(&claims.capabilities, claims.fail_open).to_owned(),
            name: claims.name.clone(),
            version: claims.version.clone(),
            tier: claims.tier,
            target: claims
                .target
                .clone()
                .unwrap_or_else(|| target_triple().to_owned()),
            abi_version: claims
                .abi_version
                .clone()
                .unwrap_or_else(|| km_abi::ABI_VERSION.to_owned()),
            sha256: sha256_hex(lib),
            size: lib.len() as u64,
            issued_at: format_timestamp(now),
            expires_at,
            customer: claims.customer.clone(),
            capabilities: claims.capabilities.clone(),
            fail_open: claims.fail_open,
            key_id: key_id.to_string(),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses and validates signed manifest bytes (see [`Manifest::validate`]).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(malformed(format!(
                "{} bytes, larger than {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The kind a manifest with these grants must have: v2 when it grants anything, else v1.
    pub fn kind_for(capabilities: &[String], fail_open: bool) -> &'static str {
        if capabilities.is_empty() && !fail_open {
            MANIFEST_KIND
        } else {
            MANIFEST_KIND_V2
        }
    }

    /// Whether the manifest grants `capability`.
    pub fn grants(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Checks every field's form: kind, name, semver versions, hash, timestamps, capabilities,
    /// key id.
    pub fn validate(&self) -> Result<(), Error> {
        match self.kind.as_str() {
            MANIFEST_KIND => {
                if !self.capabilities.is_empty() || self.fail_open {
                    return Err(malformed(format!(
                        "capabilities and fail_open need kind {MANIFEST_KIND_V2:?}"
                    )));
                }
            }
            MANIFEST_KIND_V2 => check_capabilities(&self.capabilities)?,
            other => {
                return Err(malformed(format!(
                    "kind is {other:?}, expected {MANIFEST_KIND:?} or {MANIFEST_KIND_V2:?}"
                )))
            }
        }
        check_name(&self.name).map_err(|e| malformed(e.to_string()))?;
        semver::Version::parse(&self.version)
            .map_err(|e| malformed(format!("version {:?} is not semver: {e}", self.version)))?;
        semver::Version::parse(&self.abi_version).map_err(|e| {
            malformed(format!(
                "abi_version {:?} is not semver: {e}",
                self.abi_version
            ))
        })?;
        if self.target.is_empty()
            || self.target.len() > 100
            || !self
                .target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(malformed(format!(
                "target {:?} is not a target triple",
                self.target
            )));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(malformed(format!(
                "sha256 {:?} is not 64 lower-case hex characters",
                self.sha256
            )));
        }
        parse_timestamp(&self.issued_at).map_err(|e| malformed(format!("issued_at: {e}")))?;
        if let Some(expires) = &self.expires_at {
            parse_timestamp(expires).map_err(|e| malformed(format!("expires_at: {e}")))?;
        }
        if let Some(customer) = &self.customer {
            if customer.is_empty() || customer.len() > 200 || customer.chars().any(char::is_control)
            {
                return Err(malformed(format!(
                    "customer {customer:?} is not a valid customer id"
                )));
            }
        }
        let id: KeyId = self
            .key_id
            .parse()
            .map_err(|_| malformed(format!("key_id {:?} is not a key id", self.key_id)))?;
        if id.as_str() != self.key_id {
            return Err(malformed(format!(
                "key_id {:?} must be lower-case",
                self.key_id
            )));
        }
        Ok(())
    }

    /// The version, parsed.
    pub fn semver(&self) -> Result<semver::Version, Error> {
        semver::Version::parse(&self.version)
            .map_err(|e| malformed(format!("version {:?}: {e}", self.version)))
    }
}

fn malformed(reason: String) -> Error {
    Error::MalformedManifest { reason }
}

/// Capability names: `[a-z][a-z0-9-]{0,31}`, each once, at most [`MAX_CAPABILITIES`].
fn check_capabilities(capabilities: &[String]) -> Result<(), Error> {
    if capabilities.len() > MAX_CAPABILITIES {
        return Err(malformed(format!(
            "{} capabilities, more than {MAX_CAPABILITIES}",
            capabilities.len()
        )));
    }
    for (i, capability) in capabilities.iter().enumerate() {
        let ok = capability.len() <= 32
            && capability.starts_with(|c: char| c.is_ascii_lowercase())
            && capability
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
        if !ok {
            return Err(malformed(format!(
                "capability {capability:?} is not a capability name"
            )));
        }
        if capabilities[..i].contains(capability) {
            return Err(malformed(format!(
                "capability {capability:?} is listed twice"
            )));
        }
    }
    Ok(())
}

/// Checks a plugin name: `[a-z0-9][a-z0-9-]{0,63}`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            what: "plugin name",
            value: name.to_owned(),
            reason: "1 to 64 characters a-z, 0-9 and '-', not starting with '-'".to_owned(),
        })
    }
}

/// Parses a manifest timestamp: RFC 3339 in UTC (`2026-11-25T06:21:20Z`, fractions allowed).
pub fn parse_timestamp(s: &str) -> Result<SystemTime, Error> {
    if !s.ends_with('Z') {
        return Err(bad_date(
            s,
            "expected RFC 3339 in UTC, e.g. 2027-01-31T00:00:00Z",
        ));
    }
    humantime::parse_rfc3339(s).map_err(|e| bad_date(s, &e.to_string()))
}

/// Parses a date given by a user: `YYYY-MM-DD` (00:00:00 UTC that day), RFC 3339 in UTC, or
/// RFC 3339 with a numeric offset (`2027-01-31T09:00:00+02:00`).
pub fn parse_date(s: &str) -> Result<SystemTime, Error> {
    let hint = "use YYYY-MM-DD or RFC 3339, e.g. 2027-01-31 or 2027-01-31T09:00:00+02:00";
    if s.len() == 10 {
        return parse_timestamp(&format!("{s}T00:00:00Z")).map_err(|_| bad_date(s, hint));
    }
    if s.ends_with('Z') || s.ends_with('z') {
        return parse_timestamp(&s.to_ascii_uppercase()).map_err(|_| bad_date(s, hint));
    }
    // A trailing +HH:MM / -HH:MM offset: parse the local time as UTC, then shift by it.
    let split = s
        .len()
        .checked_sub(6)
        .filter(|&i| s.is_char_boundary(i))
        .ok_or_else(|| bad_date(s, hint))?;
    let (local, offset) = s.split_at(split);
    let ob = offset.as_bytes();
    let digits = |a: u8, b: u8| -> Option<u64> {
        (a.is_ascii_digit() && b.is_ascii_digit())
            .then(|| u64::from(a - b'0') * 10 + u64::from(b - b'0'))
    };
    let (sign, hours, minutes) = match ob {
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            match (digits(*h1, *h2), digits(*m1, *m2)) {
                (Some(h), Some(m)) if h < 24 && m < 60 => (*sign, h, m),
                _ => return Err(bad_date(s, hint)),
            }
        }
        _ => return Err(bad_date(s, hint)),
    };
    let as_utc = parse_timestamp(&format!("{local}Z")).map_err(|_| bad_date(s, hint))?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    // 10:00+02:00 is 08:00Z: subtract a positive offset, add a negative one.
    let shifted = if sign == b'+' {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    };
    shifted.ok_or_else(|| bad_date(s, hint))
}

fn bad_date(value: &str, reason: &str) -> Error {
    Error::InvalidInput {
        what: "date",
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Formats a time as RFC 3339 UTC with whole seconds, the form manifests use.
pub fn format_timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Lower-case hex SHA-256 of `bytes`: the workspace's one digest helper, re-exported so that
/// users of this crate need no other.
pub use km_durable::digest::sha256_hex;

/// The target triple this crate (and so the km that links it) was compiled for.
pub fn target_triple() -> &'static str {
    env!("KM_SIGNING_TARGET")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            kind: MANIFEST_KIND.to_owned(),
            name: "api-logger".to_owned(),
            version: "1.2.3".to_owned(),
            tier: Tier::Pro,
            target: "x86_64-unknown-linux-gnu".to_owned(),
            abi_version: "1.0.0".to_owned(),
            sha256: sha256_hex(b"lib"),
            size: 3,
            issued_at: "2026-11-25T06:21:20Z".to_owned(),
            expires_at: Some("2027-01-01T00:00:00Z".to_owned()),
            customer: None,
            capabilities: Vec::new(),
            fail_open: false,
            key_id: "0123456789abcdef0123456789abcdef".to_owned(),
        }
    }

    #[test]
    fn capabilities_need_v2_and_v1_bytes_do_not_change() {
        let v1 = sample();
        let text = String::from_utf8(v1.to_bytes()).expect("utf-8");
        assert!(!text.contains("capabilities") && !text.contains("fail_open"));
        let mut v2 = sample();
        v2.capabilities = vec![CAPABILITY_INTERCEPT.to_owned(), "future-thing".to_owned()];
        assert!(
            matches!(
                Manifest::parse(&v2.to_bytes()),
                Err(Error::MalformedManifest { .. })
            ),
            "capabilities in a v1 manifest"
        );
        v2.kind = Manifest::kind_for(&v2.capabilities, false).to_owned();
        assert_eq!(v2.kind, MANIFEST_KIND_V2);
        let parsed = Manifest::parse(&v2.to_bytes()).expect("a v2 manifest");
        assert!(parsed.grants(CAPABILITY_INTERCEPT) && !parsed.grants("network"));
        for bad in [vec!["Intercept"], vec!["intercept", "intercept"], vec![""]] {
            let mut m = v2.clone();
            m.capabilities = bad.iter().map(|s| s.to_string()).collect();
            assert!(Manifest::parse(&m.to_bytes()).is_err(), "{bad:?}");
        }
        let mut fail_open = sample();
        fail_open.fail_open = true;
        assert!(Manifest::parse(&fail_open.to_bytes()).is_err());
        fail_open.kind = MANIFEST_KIND_V2.to_owned();
        assert!(
            Manifest::parse(&fail_open.to_bytes())
                .expect("v2")
                .fail_open
        );
    }

    #[test]
    fn bytes_round_trip_and_kind_comes_first() {
        let m = sample();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(
            text.starts_with("{\n  \"kind\": \"km-plugin-manifest/v1\",\n"),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        assert!(text.contains("\"tier\": \"pro\""));
        assert_eq!(Manifest::parse(&bytes).expect("parses"), m);
    }

    #[test]
    fn invalid_fields_are_malformed() {
        let cases: Vec<fn(&mut Manifest)> = vec![
            |m| m.kind = "other/v1".into(),
            |m| m.name = "Bad_Name".into(),
            |m| m.name = "-x".into(),
            |m| m.name = "a".repeat(65),
            |m| m.version = "1.2".into(),
            |m| m.abi_version = "one".into(),
            |m| m.sha256 = "AB".repeat(32),
            |m| m.issued_at = "yesterday".into(),
            |m| m.expires_at = Some("2027-01-01T00:00:00+02:00".into()),
            |m| m.key_id = "ABCDEF0123456789abcdef0123456789".into(),
            |m| m.target = "x86_64 linux".into(),
        ];
        for (i, edit) in cases.iter().enumerate() {
            let mut m = sample();
            edit(&mut m);
            assert!(
                matches!(
                    Manifest::parse(&m.to_bytes()),
                    Err(Error::MalformedManifest { .. })
                ),
                "case {i}"
            );
        }
    }

    #[test]
    fn unknown_fields_wrong_tier_and_garbage_are_refused() {
        let text = String::from_utf8(sample().to_bytes()).expect("utf-8");
        let extra = text.replacen("{\n", "{\n  \"sandbox\": false,\n", 1);
        assert!(matches!(
            Manifest::parse(extra.as_bytes()),
            Err(Error::MalformedManifest { .. })
        ));
        let tier = text.replace("\"pro\"", "\"Pro\"");
        assert!(matches!(
            Manifest::parse(tier.as_bytes()),
            Err(Error::MalformedManifest { .. })
        ));
        for bytes in [&b""[..], b"null", b"[]", b"{", &[0xff, 0xfe]] {
            assert!(matches!(
                Manifest::parse(bytes),
                Err(Error::MalformedManifest { .. })
            ));
        }
        assert!(matches!(
            Manifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1]),
            Err(Error::MalformedManifest { .. })
        ));
    }

    #[test]
    fn timestamps() {
        let day = parse_date("2027-01-31").expect("date");
        assert_eq!(format_timestamp(day), "2027-01-31T00:00:00Z");
        assert_eq!(
            parse_timestamp("2027-01-31T00:00:00Z").expect("rfc3339"),
            day
        );
        assert_eq!(parse_date("2027-01-31T00:00:00Z").expect("rfc3339"), day);
        assert_eq!(
            parse_date("2027-01-31T02:30:00+02:30").expect("offset"),
            day
        );
        assert_eq!(
            parse_date("2027-01-30T21:00:00-03:00").expect("offset"),
            day
        );
        for bad in [
            "2027-13-01",
            "31/01/2027",
            "2027-01-31T00:00:00+25:00",
            "",
            "+01:00",
            "é2027-01-31T00:00:0+01:00",
        ] {
            assert!(
                matches!(parse_date(bad), Err(Error::InvalidInput { .. })),
                "{bad}"
            );
        }
        // Manifests hold UTC timestamps only.
        for bad in ["2027-01-31", "2027-01-31T00:00:00+01:00", "yesterday"] {
            assert!(
                matches!(parse_timestamp(bad), Err(Error::InvalidInput { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn target_triple_is_the_build_target() {
        assert!(
            target_triple().contains(std::env::consts::ARCH),
            "{}",
            target_triple()
        );
    }
}
