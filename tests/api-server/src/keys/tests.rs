//! The signing key: written 0600, read back, signing tokens plugins accept; unusable keys refused.

use super::*;
use km_plugin_sdk::auth::verify_token;
use km_plugin_sdk::Tier;

fn payload(now: i64) -> TokenPayload {
    TokenPayload {
        v: 1,
        cus: "cust_a".into(),
        plg: "api-logger".into(),
        tier: Tier::Pro,
        feat: vec!["api_logging".into()],
        iat: now,
        exp: now + 60,
        jti: "00".into(),
    }
}

#[test]
fn a_generated_key_reads_back_and_signs_tokens_plugins_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.key");
    let public = generate(&path).expect("generate");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server.key.pub")).expect("pub file"),
        format!("{public}\n")
    );
    let signer = TokenSigner::read(&path).expect("read back");
    assert_eq!(signer.public_key_base64(), public);
    let now = km_plugin_sdk::auth::now_unix();
    let token = signer.sign_token(&payload(now)).expect("sign");
    let claims = verify_token(
        &token,
        signer.public_key(),
        "api-logger",
        Some("cust_a"),
        now,
    )
    .expect("the token verifies with the server's public key");
    assert_eq!(claims.tier, Tier::Pro);
    let other = TokenSigner::generate().expect("another key");
    assert!(verify_token(&token, other.public_key(), "api-logger", None, now).is_err());
}

#[test]
fn unusable_keys_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.key");
    std::fs::write(&path, b"not a key").expect("write");
    let err = format!(
        "{:#}",
        TokenSigner::read(&path).expect_err("junk is refused")
    );
    assert!(err.contains("junk.key"), "{err}");
    let rsa = PrivateKey::generate(Algorithm::RsaPkcs1Sha256).expect("rsa key");
    let rsa_path = dir.path().join("rsa.key");
    rsa.write_pem_file(&rsa_path, true).expect("write rsa");
    let err = format!(
        "{:#}",
        TokenSigner::read(&rsa_path).expect_err("RSA is refused")
    );
    assert!(err.contains("Ed25519 keys only"), "{err}");
}
