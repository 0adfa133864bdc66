//! The DER key formats km reads and writes, through RustCrypto's `der`, `spki`, `pkcs8` and
//! `pkcs1` crates: SubjectPublicKeyInfo (`openssl pkey -pubout`), PKCS#8 v1 and v2 private keys
//! (`openssl genpkey`, ring), PKCS#1 RSA keys (`openssl genrsa -traditional`).
//!
//! ring parses the key material itself, strictly, but it verifies RSA only from a PKCS#1
//! `RSAPublicKey`, takes Ed25519 public keys as 32 raw bytes, and does not tell the modulus
//! length of a key it refuses. So this module unwraps an SPKI into what ring takes, reads the
//! RSA modulus (and checks the public exponent, so that a key that can never verify is refused
//! when it is read), and writes the canonical wrappers: the SPKI a key id hashes, the PKCS#8 v1
//! document km stores.
//!
//! Parsing is strict DER: definite minimal lengths, canonical integers, no trailing data, exact
//! OIDs; every failure is a reason string for [`crate::Error::BadKey`]. The crates' own errors
//! name the position in the DER, never key material.

use der::asn1::{AnyRef, BitStringRef, UintRef};
use der::{Decode as _, Encode as _};
use pkcs8::PrivateKeyInfo;
use spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};

/// id-Ed25519 (RFC 8410).
pub(crate) const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// rsaEncryption (RFC 8017).
pub(crate) const RSA: ObjectIdentifier = pkcs1::ALGORITHM_OID;

/// The algorithm OID and the key bits of a SubjectPublicKeyInfo DER. The algorithm's parameters
/// must be absent or NULL (as RFC 8410 and RFC 3279 write them); the bit string has no unused
/// bits.
pub(crate) fn parse_spki(der: &[u8]) -> Result<(ObjectIdentifier, &[u8]), String> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a DER SubjectPublicKeyInfo (BEGIN PUBLIC KEY): {e}"))?;
    match spki.algorithm.parameters {
        None => {}
        Some(p) if p == AnyRef::NULL => {}
        Some(_) => return Err("unexpected algorithm parameters in the public key".to_owned()),
    }
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("the public key's bit string has unused bits")?;
    Ok((spki.algorithm.oid, key))
}

/// The canonical SubjectPublicKeyInfo DER for key bits: RSA with NULL parameters, Ed25519
/// without (how openssl writes them; a key id is the hash of exactly these bytes).
pub(crate) fn spki(oid: ObjectIdentifier, key: &[u8]) -> Result<Vec<u8>, String> {
    let parameters = (oid == RSA).then_some(AnyRef::NULL);
    SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).map_err(|e| e.to_string())?,
    }
    .to_der()
    .map_err(|e| format!("cannot encode the public key: {e}"))
}

/// The modulus length in bits of a PKCS#1 `RSAPublicKey`, whose exponent must be an odd number
/// from 3 to 2^33 - 1 (what ring verifies with).
pub(crate) fn rsa_public_bits(pkcs1_der: &[u8]) -> Result<usize, String> {
    let key = pkcs1::RsaPublicKey::from_der(pkcs1_der)
        .map_err(|e| format!("not a DER PKCS#1 RSA public key: {e}"))?;
    let e = key.public_exponent.as_bytes();
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    if !odd || !(2..=33).contains(&bit_length(e)) {
        return Err("RSA public exponent is not an odd number from 3 to 2^33".to_owned());
    }
    Ok(modulus_bits(key.modulus))
}

/// The modulus length in bits of a PKCS#1 `RSAPrivateKey`.
pub(crate) fn rsa_private_bits(pkcs1_der: &[u8]) -> Result<usize, String> {
    let key = pkcs1::RsaPrivateKey::from_der(pkcs1_der)
        .map_err(|e| format!("not a DER PKCS#1 RSA private key: {e}"))?;
    Ok(modulus_bits(key.modulus))
}

/// The algorithm OID and the private key octets of a PKCS#8 `PrivateKeyInfo` (v1) or
/// `OneAsymmetricKey` (v2, with the public key).
pub(crate) fn parse_pkcs8(der: &[u8]) -> Result<(ObjectIdentifier, &[u8]), String> {
    let info = PrivateKeyInfo::from_der(der)
        .map_err(|e| format!("not a DER PKCS#8 private key (BEGIN PRIVATE KEY): {e}"))?;
    Ok((info.algorithm.oid, info.private_key))
}

/// A PKCS#8 v1 `PrivateKeyInfo` (no public key inside): RSA with NULL parameters, Ed25519
/// without. v1 because OpenSSL 3.0 does not read the v2 documents ring generates.
pub(crate) fn pkcs8_v1(oid: ObjectIdentifier, private_key: &[u8]) -> Result<Vec<u8>, String> {
    let parameters = (oid == RSA).then_some(AnyRef::NULL);
    PrivateKeyInfo::new(AlgorithmIdentifierRef { oid, parameters }, private_key)
        .to_der()
        .map_err(|e| format!("cannot encode the private key: {e}"))
}

fn modulus_bits(n: UintRef<'_>) -> usize {
    bit_length(n.as_bytes())
}

/// The bit length of a big-endian unsigned number.
fn bit_length(be: &[u8]) -> usize {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    match be[start..].first() {
        None => 0,
        Some(&top) => (be.len() - start - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_encodings_are_the_documented_bytes() {
        let spki = spki(ED25519, &[9; 32]).expect("encodes");
        assert_eq!(hex::encode(&spki[..12]), "302a300506032b6570032100");
        assert_eq!(
            parse_spki(&spki).expect("parses"),
            (ED25519, &[9u8; 32][..])
        );
        // RSA: rsaEncryption with NULL parameters, as openssl writes.
        let spki = spki_rsa_for_test(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03]);
        assert_eq!(
            hex::encode(&spki[..17]),
            "301a300d06092a864886f70d0101010500"
        );
        let seed = [0x04, 0x20]
            .iter()
            .chain(&[5u8; 32])
            .copied()
            .collect::<Vec<_>>();
        let doc = pkcs8_v1(ED25519, &seed).expect("encodes");
        assert_eq!(hex::encode(&doc[..16]), "302e020100300506032b657004220420");
        assert_eq!(parse_pkcs8(&doc).expect("parses"), (ED25519, &seed[..]));
    }

    fn spki_rsa_for_test(pkcs1: &[u8]) -> Vec<u8> {
        spki(RSA, pkcs1).expect("encodes")
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0xff],
            &[0x1f, 0],
            &[0x30, 0x03, 0x30, 0x01, 0x06],
        ] {
            assert!(parse_spki(bytes).is_err(), "{bytes:?}");
            assert!(parse_pkcs8(bytes).is_err(), "{bytes:?}");
            assert!(rsa_public_bits(bytes).is_err(), "{bytes:?}");
            assert!(rsa_private_bits(bytes).is_err(), "{bytes:?}");
        }
        assert!(parse_pkcs8(&[0x30, 0x00]).is_err());
        assert!(rsa_public_bits(&[0x30, 0x00]).is_err());
        // n = 0x80 (negative as DER), e = 3.
        assert!(rsa_public_bits(&[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x03]).is_err());
        // n = 0x7f, e = 2 (even).
        assert!(rsa_public_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x02]).is_err());
        // n = 0x7f, e = 1.
        assert!(rsa_public_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x01]).is_err());
        // n = 0x7f, e = 3, trailing integer inside, or trailing bytes after.
        let trailing = [
            0x30, 0x09, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03, 0x02, 0x01, 0x01,
        ];
        assert!(rsa_public_bits(&trailing).is_err());
        assert!(rsa_public_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03, 0x00]).is_err());
        // A non-minimal length (BER, not DER).
        assert!(rsa_public_bits(&[0x30, 0x81, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03]).is_err());
        assert_eq!(
            rsa_public_bits(&[0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x03]),
            Ok(7)
        );
    }

    #[test]
    fn spki_parameters_and_bit_strings_are_checked() {
        let good = spki(ED25519, &[1; 32]).expect("encodes");
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_spki(&trailing).is_err(), "trailing data");
        // Unused bits in the key's bit string (the byte after the BIT STRING header).
        let mut unused = good.clone();
        unused[11] = 1;
        assert!(parse_spki(&unused).is_err(), "unused bits");
        // Parameters that are neither absent nor NULL: an INTEGER.
        let with_int = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: ED25519,
                parameters: Some(AnyRef::new(der::Tag::Integer, &[1]).expect("integer")),
            },
            subject_public_key: BitStringRef::from_bytes(&[1; 32]).expect("bits"),
        }
        .to_der()
        .expect("encodes");
        assert!(parse_spki(&with_int).is_err(), "parameters");
    }

    #[test]
    fn bit_lengths_ignore_leading_zeros() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0x00]), 0);
        assert_eq!(bit_length(&[]), 0);
    }
}
