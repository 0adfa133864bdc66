//! PEM armour (RFC 7468): the text form of keys that openssl reads and writes.
//!
//! Only what keys need: the first `-----BEGIN LABEL-----` block of a text (explanatory text
//! before it is allowed, as openssl may write it), base64 body, matching END line. Headers
//! (`Proc-Type:`, which marks legacy encrypted keys) are refused.

use base64::Engine as _;

/// The label and DER contents of the first PEM block in `text`.
pub(crate) fn decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let line = lines
            .next()
            .ok_or("no PEM block (-----BEGIN ...-----) found")?;
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let label = rest
                .strip_suffix("-----")
                .ok_or("malformed PEM BEGIN line")?;
            break label.to_owned();
        }
    };
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
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| format!("PEM block {label} is not valid base64: {e}"))?;
    if der.is_empty() {
        return Err(format!("PEM block {label} is empty"));
    }
    Ok((label, der))
}

/// PEM text with 64-character lines and a final newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting by bytes keeps character boundaries.
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_leading_text() {
        let der: Vec<u8> = (0..=255).collect();
        let text = format!("some comment\n{}", encode("PUBLIC KEY", &der));
        assert_eq!(
            decode(&text).expect("decodes"),
            ("PUBLIC KEY".to_owned(), der)
        );
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
        ] {
            assert!(decode(text).is_err(), "{text:?}");
        }
    }
}
