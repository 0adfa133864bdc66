//! The few DER shapes km's keys need: reading SubjectPublicKeyInfo, PKCS#8 and PKCS#1 RSA keys
//! far enough to find the algorithm and the RSA modulus, and writing SPKI/PKCS#8 wrappers.
//!
//! Why hand-written: ring parses the keys themselves (strictly), but it only verifies RSA from a
//! PKCS#1 `RSAPublicKey` and does not tell the modulus length of a key it refuses. What is needed
//! here is a bounded walk over a handful of tag-length-value headers, which is smaller to audit
//! than an ASN.1 crate. Only definite lengths are accepted; every read is bounds-checked, so
//! hostile input gives an error, never a panic.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// OID 1.2.840.113549.1.1.1 (rsaEncryption), content bytes.
pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// OID 1.3.101.112 (Ed25519), content bytes.
pub(crate) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A cursor over DER bytes.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Reads one element, returning its tag and contents.
    pub(crate) fn any(&mut self) -> Result<(u8, &'a [u8]), &'static str> {
        let (&tag, after_tag) = self.rest.split_first().ok_or("truncated DER (no tag)")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte DER tags are not used in keys");
        }
        let (&first, mut after_len) = after_tag.split_first().ok_or("truncated DER (no length)")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err("unsupported DER length");
            }
            if after_len.len() < count {
                return Err("truncated DER length");
            }
            let (len_bytes, rest) = after_len.split_at(count);
            after_len = rest;
            len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if after_len.len() < len {
            return Err("truncated DER value");
        }
        let (value, rest) = after_len.split_at(len);
        self.rest = rest;
        Ok((tag, value))
    }

    /// Reads one element that must have `tag`.
    pub(crate) fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], &'static str> {
        match self.any()? {
            (t, value) if t == tag => Ok(value),
            _ => Err(what),
        }
    }
}

/// An algorithm OID and its optional parameters (tag and contents).
type AlgorithmId<'a> = (&'a [u8], Option<(u8, &'a [u8])>);

/// The algorithm OID and its optional parameters in an `AlgorithmIdentifier` sequence body.
pub(crate) fn algorithm_identifier(body: &[u8]) -> Result<AlgorithmId<'_>, &'static str> {
    let mut r = Reader::new(body);
    let oid = r.expect(TAG_OID, "algorithm identifier without an OID")?;
    let params = if r.is_empty() { None } else { Some(r.any()?) };
    if !r.is_empty() {
        return Err("trailing data in algorithm identifier");
    }
    Ok((oid, params))
}

/// Bit length of a DER INTEGER's content (a positive big-endian number, possibly with a leading
/// zero byte).
pub(crate) fn integer_bits(content: &[u8]) -> usize {
    let trimmed: &[u8] = {
        let start = content
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(content.len());
        &content[start..]
    };
    match trimmed.first() {
        None => 0,
        Some(&top) => (trimmed.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// The modulus length in bits of a PKCS#1 `RSAPublicKey` or `RSAPrivateKey`.
pub(crate) fn rsa_modulus_bits(pkcs1: &[u8], private: bool) -> Result<usize, &'static str> {
    let mut outer = Reader::new(pkcs1);
    let body = outer.expect(TAG_SEQUENCE, "RSA key is not a DER sequence")?;
    if !outer.is_empty() {
        return Err("trailing data after RSA key");
    }
    let mut r = Reader::new(body);
    if private {
        r.expect(TAG_INTEGER, "RSA private key without a version")?;
    }
    let n = r.expect(TAG_INTEGER, "RSA key without a modulus")?;
    if empty_or_negative(n) {
        return Err("RSA modulus is not a positive integer");
    }
    if !private {
        // The whole public key is checked here, so that a key that can never verify is refused
        // when it is read (e.g. by `km trust add`), not at every verification.
        let e = r.expect(TAG_INTEGER, "RSA public key without an exponent")?;
        if !r.is_empty() {
            return Err("trailing data in RSA public key");
        }
        let e_ok = e.len() <= 5 && e.last().is_some_and(|b| b & 1 == 1) && integer_bits(e) >= 2;
        if empty_or_negative(e) || !e_ok {
            return Err("RSA public exponent is not an odd number from 3 to 2^33");
        }
    }
    Ok(integer_bits(n))
}

/// Whether a DER INTEGER's content is empty or negative (top bit of the first byte set).
fn empty_or_negative(int: &[u8]) -> bool {
    int.first().map_or(true, |&b| b & 0x80 != 0)
}

/// Appends a DER element.
pub(crate) fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

fn element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    write(&mut out, tag, content);
    out
}

fn algorithm(oid: &[u8], null_params: bool) -> Vec<u8> {
    let mut body = element(TAG_OID, oid);
    if null_params {
        write(&mut body, TAG_NULL, &[]);
    }
    element(TAG_SEQUENCE, &body)
}

/// SubjectPublicKeyInfo for an RSA `RSAPublicKey` (PKCS#1) DER.
pub(crate) fn spki_rsa(pkcs1: &[u8]) -> Vec<u8> {
    spki(&algorithm(OID_RSA, true), pkcs1)
}

/// SubjectPublicKeyInfo for a raw 32-byte Ed25519 public key.
pub(crate) fn spki_ed25519(raw: &[u8]) -> Vec<u8> {
    spki(&algorithm(OID_ED25519, false), raw)
}

fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = alg.to_vec();
    write(&mut body, TAG_BIT_STRING, &bits);
    element(TAG_SEQUENCE, &body)
}

/// PKCS#8 v1 `PrivateKeyInfo` wrapping a PKCS#1 `RSAPrivateKey`.
pub(crate) fn pkcs8_rsa(pkcs1: &[u8]) -> Vec<u8> {
    let mut body = element(TAG_INTEGER, &[0]);
    body.extend_from_slice(&algorithm(OID_RSA, true));
    write(&mut body, TAG_OCTET_STRING, pkcs1);
    element(TAG_SEQUENCE, &body)
}

/// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 from the private key octets (the DER OCTET STRING
/// `CurvePrivateKey` holding the 32-byte seed). v1 because OpenSSL 3.0 does not read the v2
/// documents ring generates.
pub(crate) fn pkcs8_ed25519_v1(curve_private_key: &[u8]) -> Vec<u8> {
    let mut body = element(TAG_INTEGER, &[0]);
    body.extend_from_slice(&algorithm(OID_ED25519, false));
    write(&mut body, TAG_OCTET_STRING, curve_private_key);
    element(TAG_SEQUENCE, &body)
}

/// What a SubjectPublicKeyInfo holds: the algorithm OID and the key bits.
pub(crate) fn parse_spki(der: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut outer = Reader::new(der);
    let body = outer.expect(TAG_SEQUENCE, "public key is not a DER sequence")?;
    if !outer.is_empty() {
        return Err("trailing data after public key");
    }
    let mut r = Reader::new(body);
    let alg = r.expect(TAG_SEQUENCE, "public key without an algorithm identifier")?;
    let (oid, params) = algorithm_identifier(alg)?;
    let bits = r.expect(TAG_BIT_STRING, "public key without a key bit string")?;
    if !r.is_empty() {
        return Err("trailing data in public key");
    }
    match params {
        None => {}
        Some((TAG_NULL, [])) => {}
        Some(_) => return Err("unexpected algorithm parameters in public key"),
    }
    match bits.split_first() {
        Some((0, key)) => Ok((oid, key)),
        _ => Err("public key bit string has unused bits"),
    }
}

/// What a PKCS#8 `PrivateKeyInfo`/`OneAsymmetricKey` holds: the algorithm OID and the private
/// key octets.
pub(crate) fn parse_pkcs8(der: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut outer = Reader::new(der);
    let body = outer.expect(TAG_SEQUENCE, "private key is not a DER sequence")?;
    if !outer.is_empty() {
        return Err("trailing data after private key");
    }
    let mut r = Reader::new(body);
    r.expect(TAG_INTEGER, "private key without a version")?;
    let alg = r.expect(TAG_SEQUENCE, "private key without an algorithm identifier")?;
    let (oid, _) = algorithm_identifier(alg)?;
    let key = r.expect(TAG_OCTET_STRING, "private key without key octets")?;
    Ok((oid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70000] {
            let content = vec![7u8; len];
            let bytes = element(TAG_OCTET_STRING, &content);
            let mut r = Reader::new(&bytes);
            assert_eq!(
                r.expect(TAG_OCTET_STRING, "x").expect("reads"),
                &content[..]
            );
            assert!(r.is_empty());
        }
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0xff],
            &[0x1f, 0],
        ] {
            assert!(Reader::new(bytes).any().is_err(), "{bytes:?}");
        }
        assert!(parse_spki(&[0x30, 0x03, 0x30, 0x01, 0x06]).is_err());
        assert!(parse_pkcs8(&[0x30, 0x00]).is_err());
        assert!(rsa_modulus_bits(&[0x30, 0x00], false).is_err());
        // n = 0x80 (negative as DER), e = 3.
        assert!(
            rsa_modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x03], false).is_err()
        );
        // n = 0x7f, e = 2 (even).
        assert!(
            rsa_modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x02], false).is_err()
        );
        // n = 0x7f, e = 3, trailing integer.
        let trailing = [
            0x30, 0x09, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03, 0x02, 0x01, 0x01,
        ];
        assert!(rsa_modulus_bits(&trailing, false).is_err());
        assert_eq!(
            rsa_modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03], false),
            Ok(7)
        );
    }

    #[test]
    fn integer_bits_ignores_sign_padding() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01]), 1);
        assert_eq!(integer_bits(&[]), 0);
    }

    #[test]
    fn spki_round_trips() {
        let spki = spki_ed25519(&[9; 32]);
        assert_eq!(hex::encode(&spki[..12]), "302a300506032b6570032100");
        let (oid, key) = parse_spki(&spki).expect("parses");
        assert_eq!(oid, OID_ED25519);
        assert_eq!(key, &[9; 32]);
    }
}
