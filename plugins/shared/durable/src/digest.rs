//! SHA-256 digests in lower-case hex, and the hex encoder itself: the one place in the
//! workspace that spells bytes as hex, so that every digest km prints, signs or compares is
//! written the same way.
//!
//! The hash is ring's (already in every crate that needs a digest: km, the signing library and
//! the plugin SDK). The encoding is a table lookup per byte, hand-written because the `hex`
//! crate's encoder collects an iterator of `char`s: about 1 000 instructions per digest, which
//! compliance-reporting pays twice for every record of its audit trail (callgrind).

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of `bytes` in lower-case hex (64 characters), as manifests, packages and
/// `sha256sum` spell it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

/// `bytes` in lower-case hex, two characters a byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256(b"abc")[..2], [0xba, 0x78]);
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
        let every: Vec<u8> = (0..=255).collect();
        assert_eq!(hex(&every), ::hex::encode(&every));
    }
}
