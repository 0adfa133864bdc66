//! Property tests of km's parsers of local files: `config.toml` through
//! `Config::load_file` (StrictModes, cap, TOML, the settings' types), and policy files through
//! the host service plugins call (`read_policy` / `write_policy`: the name check, then
//! `policy_files` with its StrictModes). Arbitrary input is answered, never a panic; generated
//! valid input is read back exactly; a policy name never reaches outside `KM_HOME/policies`.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000 cargo test -p km-cli --test
//! parsers` runs them longer (FUZZING.md).

use std::path::Path;

use abi_stable::std_types::{RStr, RString};
use km_cli::config::Config;
use km_cli::host::{PluginHost, Verbosity};
use proptest::prelude::*;

fn write_private(path: &Path, bytes: &[u8]) {
    km_durable::write_atomic(path, bytes, 0o600).expect("write");
}

proptest! {
    #[test]
    fn config_files_of_arbitrary_text(text in "(?s)[\\[\\]a-z_.=\" 0-9\n{}#,\\-]{0,300}") {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        write_private(&path, text.as_bytes());
        let _ = Config::load_file(&path);
    }

    #[test]
    fn config_files_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        write_private(&path, &bytes);
        let _ = Config::load_file(&path);
    }

    #[test]
    fn valid_config_files_are_read_back(
        key in "[a-zA-Z0-9_]{1,40}",
        url in "https://[a-z]{1,10}\\.example/[a-z]{0,5}",
        refresh in 1..100_000i64,
        plugin in "[a-z][a-z0-9-]{0,15}",
        setting in "[a-z]{1,8}",
        value in any::<i32>(),
        limit in 1..1_000_000u32,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let text = format!(
            "api_key = {key:?}\napi_url = {url:?}\nrefresh_interval_secs = {refresh}\n\
             [monitor]\ninspect_limit = {limit}\n[plugins.{plugin}]\n{setting} = {value}\n"
        );
        write_private(&path, text.as_bytes());
        let config = Config::load_file(&path).expect("a valid file");
        prop_assert_eq!(config.api_key.as_deref(), Some(key.as_str()));
        prop_assert_eq!(config.api_url.as_deref(), Some(url.as_str()));
        prop_assert_eq!(config.refresh_interval_secs, Some(refresh as u64));
        prop_assert_eq!(config.monitor.inspect_limit, Some(u64::from(limit)));
        let settings: serde_json::Value = serde_json::from_str(&config.plugin_settings_json(&plugin)).expect("JSON");
        prop_assert_eq!(&settings[&setting], &serde_json::json!(value));
    }

    #[test]
    fn policy_names_never_reach_outside_the_policy_directory(
        name in "(\\.\\.|[a-z0-9._/-]|/|\\\\|%2e|\u{0}){0,24}",
        text in "[ -~\n]{0,64}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("km").join("policies");
        let host = PluginHost::new("probe", dir.path().join("data"), Verbosity::Quiet, None)
            .with_policies(policies.clone())
            .into_abi();
        let wrote = host
            .write_policy(RStr::from_str(&name), RStr::from_str(&text))
            .into_result()
            .is_ok();
        let read = host.read_policy(RStr::from_str(&name)).into_result();
        if wrote {
            prop_assert_eq!(
                read.ok().and_then(|r| r.into_option()).map(RString::into_string),
                Some(text.clone())
            );
        }
        // Nothing was written beside the policy directory.
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "km" && n != "data")
            .collect();
        prop_assert!(outside.is_empty(), "{:?}", outside);
        let in_home: Vec<_> = std::fs::read_dir(dir.path().join("km"))
            .map(|d| d.map(|e| e.expect("entry").file_name()).filter(|n| n != "policies").collect())
            .unwrap_or_default();
        prop_assert!(in_home.is_empty(), "{:?}", in_home);
    }
}
