//! Synthetic credentials for the tests, built with their checksums (never real values).

#![allow(dead_code)]

/// A GitHub classic PAT with a valid CRC32 checksum.
pub(crate) fn github_pat(random30: &str) -> String {
    assert_eq!(random30.len(), 30);
    format!(
        "ghp_{random30}{}",
        km_detect::synth::crc32_base62(random30.as_bytes())
    )
}

pub(crate) const AWS_KEY_ID: &str = "AKIAZ7QW3RT5YU2IOP4N";
pub(crate) const STRIPE_LIVE: &str = "sk_live_51Hq8ZpLk2Rt7Vb9Xc3Nm5Qw1Ey4Ui6Oa0Sd8Fg2Hj4Kl6";

/// One detector for every test of the binary: building one (its automaton) takes longer than the
/// scans the tests make with it, and the property tests make hundreds of cases.
pub(crate) fn detector() -> &'static km_detect::Detector {
    static DETECTOR: std::sync::OnceLock<km_detect::Detector> = std::sync::OnceLock::new();
    DETECTOR.get_or_init(km_detect::Detector::new)
}
