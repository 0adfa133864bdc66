//! PEM armour (RFC 7468) of keys, by pem-rfc7468 (through `der`'s `pem` feature).
//!
//! Encoding is pem-rfc7468's as it is: 64-character lines, LF, a final newline, what openssl
//! writes. Decoding is pem-rfc7468's too, after one step of km's own, kept for a measured
//! reason: pem-rfc7468 accepts only base64 lines of exactly 64 characters, and nothing after the
//! END line. km has always read, and openssl reads, PEM wrapped at other widths (76-column MIME
//! wrapping, one long line), lines with surrounding blanks, and a key followed by other text;
//! the key id test pins that (`keys::tests::key_id_is_stable_and_canonical`). So km finds the
//! first `-----BEGIN LABEL-----` block (explanatory text before it is allowed, as openssl may
//! write it), refuses headers (`Proc-Type:` marks legacy encrypted keys), re-wraps the body at
//! 64 columns, and hands that block to pem-rfc7468, which checks the label, the matching END
//! line and the base64 (constant-time, as befits private keys).

use der::pem::{self, LineEnding};

/// The base64 line width of RFC 7468 (and openssl).
const WIDTH: usize = 64;

/// The label and DER contents of the first PEM block in `text`.
pub(crate) fn decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim);
    let begin = lines
        .find(|line| line.starts_with("-----BEGIN "))
        .ok_or("no PEM block (-----BEGIN ...-----) found")?;
    let label = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_suffix("-----"))
        .ok_or("malformed PEM BEGIN line")?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    loop {
        let line = lines
            .next()
            .ok_or_else(|| format!("PEM block {label} has no END line"))?;
        if line == end {
            break;
        }
        if line.contains(':') {
            return Err(format!(
                "PEM block {label} has headers (an encrypted legacy key?); decrypt it with `openssl pkey`"
            ));
        }
        body.push_str(line);
    }
    if body.is_empty() {
        return Err(format!("PEM block {label} is empty"));
    }
    let mut block = format!("{begin}\n");
    // Base64 is ASCII, so splitting by bytes keeps it whole; a body that is not ASCII may be
    // garbled by the split, and pem-rfc7468 refuses it either way.
    for chunk in body.as_bytes().chunks(WIDTH) {
        block.push_str(&String::from_utf8_lossy(chunk));
        block.push('\n');
    }
    block.push_str(&end);
    block.push('\n');
    let (decoded_label, der) = pem::decode_vec(block.as_bytes())
        .map_err(|e| format!("PEM block {label} is not valid: {e}"))?;
    Ok((decoded_label.to_owned(), der))
}

/// PEM text with 64-character lines and a final newline.
pub(crate) fn encode(label: &'static str, der: &[u8]) -> Result<String, String> {
    pem::encode_string(label, LineEnding::LF, der)
        .map_err(|e| format!("cannot encode a {label} PEM block: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_leading_text_and_other_widths() {
        let der: Vec<u8> = (0..=255).collect();
        let pem_text = encode("PUBLIC KEY", &der).expect("encodes");
        let text = format!("some comment\n{pem_text}");
        assert_eq!(
            decode(&text).expect("decodes"),
            ("PUBLIC KEY".to_owned(), der.clone())
        );
        // The same base64 in 76-column lines, CRLF, blanks around lines, text after the block.
        let b64: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        let text = format!(
            "-----BEGIN PUBLIC KEY-----\r\n  {}  \r\n-----END PUBLIC KEY-----\r\nmore text\n",
            wrapped.join("\r\n")
        );
        assert_eq!(
            decode(&text).expect("decodes"),
            ("PUBLIC KEY".to_owned(), der)
        );
    }

    #[test]
    fn encoding_is_what_openssl_writes() {
        let text = encode("PUBLIC KEY", &[0u8; 60]).expect("encodes");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PUBLIC KEY-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "AAAAAAAAAAAAAAAA");
        assert_eq!(lines[3], "-----END PUBLIC KEY-----");
        assert!(text.ends_with("-----\n"));
    }

    #[test]
    fn garbage_is_an_error() {
        for text in [
            "",
            "hello",
            "-----BEGIN X-----\nAAAA\n",
            "-----BEGIN X-----\n!!!!\n-----END X-----\n",
            "-----BEGIN X-----\n-----END X-----\n",
            "-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END X-----\n",
            "-----BEGIN X-----\nAAA\n-----END X-----\n",
            "-----BEGIN X-----\nAA==AA==\n-----END X-----\n",
        ] {
            assert!(decode(text).is_err(), "{text:?}");
        }
    }
}
