//! The command line: the original flags keep their meaning and defaults, and what clap cannot
//! check is checked.

use super::*;

fn parse(args: &[&str]) -> Result<Command, String> {
    let cli = Cli::try_parse_from(std::iter::once("km-api-server").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    cli.into_command().map_err(|e| e.to_string())
}

#[test]
fn serve_flags_keep_their_meaning_and_defaults() {
    let Ok(Command::Serve(c)) = parse(&[
        "--signing-key",
        "k",
        "--customers",
        "c.json",
        "--events",
        "e.jsonl",
    ]) else {
        panic!("expected a serve command");
    };
    assert_eq!(c.listen, "127.0.0.1:0".parse().expect("address"));
    assert_eq!(c.token_ttl, 900);
    assert_eq!(c.delay_ms, 0);
    assert_eq!(c.fail_after, None);
    assert_eq!(c.db, DbLocation::Memory);
    assert_eq!(c.events, Some(PathBuf::from("e.jsonl")));
}

#[test]
fn non_loopback_addresses_are_refused() {
    let err = parse(&[
        "--signing-key",
        "k",
        "--customers",
        "c",
        "--listen",
        "0.0.0.0:8080",
    ])
    .expect_err("a wildcard address is refused");
    assert!(err.contains("loopback addresses only"), "{err}");
    assert!(parse(&[
        "--signing-key",
        "k",
        "--customers",
        "c",
        "--listen",
        "[::1]:0"
    ])
    .is_ok());
}

#[test]
fn customers_are_required_unless_a_database_holds_them() {
    assert!(parse(&["--signing-key", "k"]).is_err());
    assert!(parse(&["--signing-key", "k", "--db", "api.sqlite"]).is_ok());
    assert!(
        parse(&["--customers", "c"]).is_err(),
        "--signing-key is required"
    );
}

#[test]
fn gen_key_stands_alone() {
    assert!(matches!(
        parse(&["--gen-key", "out.key"]),
        Ok(Command::GenKey { .. })
    ));
    assert!(parse(&["--gen-key", "out.key", "--signing-key", "k"]).is_err());
}

#[test]
fn numbers_are_checked() {
    let base = ["--signing-key", "k", "--customers", "c"];
    for bad in [
        &["--token-ttl", "0"][..],
        &["--token-ttl", "x"],
        &["--delay-ms", "-1"],
        &["--fail-after", "many"],
    ] {
        let args: Vec<&str> = base.iter().chain(bad).copied().collect();
        assert!(parse(&args).is_err(), "{bad:?} is refused");
    }
}

#[test]
fn tls_flags_go_together_and_name_known_versions() {
    let Ok(Command::Serve(c)) = parse(&[
        "--signing-key",
        "k",
        "--customers",
        "c.json",
        "--tls-cert",
        "cert.pem",
        "--tls-key",
        "key.pem",
    ]) else {
        panic!("parses");
    };
    let tls = c.tls.as_ref().expect("tls");
    assert_eq!(tls.versions, vec![crate::config::TlsVersion::Tls13]);
    let Ok(Command::Serve(c)) = parse(&[
        "--signing-key",
        "k",
        "--customers",
        "c.json",
        "--tls-cert",
        "cert.pem",
        "--tls-key",
        "key.pem",
        "--tls-versions",
        "1.2,1.3,1.2",
    ]) else {
        panic!("parses");
    };
    assert_eq!(
        c.tls.as_ref().expect("tls").versions,
        vec![
            crate::config::TlsVersion::Tls12,
            crate::config::TlsVersion::Tls13
        ]
    );
    for bad in [
        &["--tls-cert", "cert.pem"][..],
        &["--tls-key", "key.pem"][..],
        &["--tls-cert", "c", "--tls-key", "k", "--tls-versions", "1.1"][..],
    ] {
        let mut args = vec!["--signing-key", "k", "--customers", "c.json"];
        args.extend_from_slice(bad);
        assert!(parse(&args).is_err(), "{bad:?}");
    }
}
