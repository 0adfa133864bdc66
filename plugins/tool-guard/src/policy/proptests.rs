//! Property tests of tool-guard's policy parser (`KM_HOME/policies/tool-guard.toml` and the
//! team's signed `team/tool-guard.toml`): arbitrary text and mutations of a valid policy load or
//! give an error naming the file, never a panic, and a policy written with any actions for the
//! defaults and per server decides exactly what it says (a server's entry over `[defaults]`, by
//! id, then label, then serverInfo name). `PROPTEST_CASES=100000 cargo test -p tool-guard --lib
//! proptests` runs them longer (FUZZING.md: the fuzz target `policy`).

use km_policy::team::{payload, seal_ed25519, AdminKey, BundleHeader, TeamTrust, TRUST_FILE};
use km_policy::PolicyDir;
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::*;

const SERVER: ServerNames<'static> = ServerNames {
    id: "0123456789abcdef",
    label: "node server.js",
    info_name: Some("demo"),
};

const SITUATIONS: [Situation; 5] = [
    Situation::FirstUse,
    Situation::New,
    Situation::Changed,
    Situation::Poisoned,
    Situation::Unadvertised,
];

const VALID: &str = "[defaults]\nfirst_use = \"approve\"\nnew = \"warn\"\nchanged = \"block\"\n\
    poisoned = \"block\"\nunadvertised = \"warn\"\n\n[servers.\"node server.js\"]\nnew = \"block\"\n\n\
    [servers.demo]\nchanged = \"warn\"\n";

/// A policy directory holding `files` (name under `policies/`, text).
fn host(files: &[(&str, &str)]) -> (tempfile::TempDir, PolicyDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("policies/team")).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).expect("write");
    }
    let host = PolicyDir::new(dir.path().join("policies"), dir.path().join("state"));
    (dir, host)
}

fn mutated(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, byte, how) in edits {
        let i = at % (bytes.len() + 1);
        match how % 3 {
            0 if i < bytes.len() => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            _ if i < bytes.len() => {
                bytes.remove(i);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Approve),
        Just(Action::Warn),
        Just(Action::Block)
    ]
}

/// `[rules]`-shaped keys for one table: an action or nothing per situation.
fn rules() -> impl Strategy<Value = Vec<Option<Action>>> {
    proptest::collection::vec(proptest::option::of(action()), 5)
}

fn table(name: &str, rules: &[Option<Action>]) -> String {
    let mut out = format!("[{name}]\n");
    for (situation, action) in SITUATIONS.iter().zip(rules) {
        if let Some(action) = action {
            out.push_str(&format!("{} = \"{action}\"\n", situation.key()));
        }
    }
    out
}

const TOMLISH: &str = "(?s)[\\[\\]a-z_.=\"' 0-9\n{}#,\\-*:]{0,300}";

proptest! {
    #[test]
    fn local_policies_of_arbitrary_text(text in TOMLISH) {
        let (_dir, host) = host(&[("tool-guard.toml", &text)]);
        if let Err(err) = Policy::load(&host) {
            prop_assert!(err.to_string().contains("tool-guard.toml"), "{}", err);
        }
    }

    #[test]
    fn local_policies_mutated(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)) {
        let text = mutated(VALID, &edits);
        let (_dir, host) = host(&[("tool-guard.toml", &text)]);
        match Policy::load(&host) {
            Ok(policy) => {
                for situation in SITUATIONS {
                    let _ = policy.decide(&SERVER, situation);
                }
            }
            Err(err) => prop_assert!(err.to_string().contains("tool-guard.toml"), "{}", err),
        }
    }

    #[test]
    fn a_policy_decides_what_it_says(
        defaults in rules(),
        by_id in proptest::option::of(rules()),
        by_label in proptest::option::of(rules()),
        by_name in proptest::option::of(rules()),
    ) {
        let mut text = table("defaults", &defaults);
        let entries = [
            (by_id.as_ref(), SERVER.id),
            (by_label.as_ref(), SERVER.label),
            (by_name.as_ref(), "demo"),
        ];
        for (rules, name) in entries {
            if let Some(rules) = rules {
                text.push_str(&table(&format!("servers.{}", toml::Value::String(name.to_owned())), rules));
            }
        }
        let (_dir, host) = host(&[("tool-guard.toml", &text)]);
        let policy = Policy::load(&host).expect("valid");
        for (i, situation) in SITUATIONS.into_iter().enumerate() {
            let expected = entries
                .iter()
                .filter_map(|(rules, _)| rules.and_then(|r| r[i]))
                .chain(defaults[i])
                .next()
                .unwrap_or(situation.default_action());
            prop_assert_eq!(policy.decide(&SERVER, situation).value, expected, "{}\n{}", situation.key(), text);
        }
    }

    #[test]
    fn signed_team_policies_of_arbitrary_text(text in TOMLISH) {
        // Hostile text signed by the team's admin key: what only signed bytes reach.
        let admin = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).expect("seed");
        let key = AdminKey::from_raw(admin.public_key().as_ref().try_into().expect("32 bytes"));
        let trust = TeamTrust::new("acme", vec![(None, key)]).expect("trust");
        let header = BundleHeader {
            team: "acme".into(),
            policy: POLICY.into(),
            version: 1,
            issued_at: None,
            issued_by: None,
        };
        let body = payload(&header, "").expect("header").replace('\n', &format!("\n{text}\n"));
        let envelope = seal_ed25519(body.as_bytes(), &admin).expect("seal");
        let (_dir, host) = host(&[
            (TRUST_FILE, &trust.to_toml()),
            ("team/tool-guard.toml", &envelope),
        ]);
        let policy = Policy::load(&host).expect("no local policy: team problems are not errors");
        for problem in policy.team_problems() {
            let problem = problem.to_string();
            prop_assert!(problem.contains("team/tool-guard"), "{}", problem);
        }
        for situation in SITUATIONS {
            let _ = policy.decide(&SERVER, situation);
        }
    }
}
