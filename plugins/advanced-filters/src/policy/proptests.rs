//! Property tests of advanced-filters' policy parser (`KM_HOME/policies/advanced-filters.toml`
//! and the team's signed `team/advanced-filters.toml`): arbitrary text and mutations of a valid
//! policy give a policy or an error naming the file, never a panic, and a policy written with
//! known rules and actions decides exactly what it says. `PROPTEST_CASES=100000 cargo test -p
//! advanced-filters --lib proptests` runs them longer (FUZZING.md: the fuzz target `policy`).

use km_policy::team::{payload, seal_ed25519, AdminKey, BundleHeader, TeamTrust, TRUST_FILE};
use km_policy::PolicyDir;
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::*;

/// A valid policy with every section (the module docs' example, with real hashes).
const VALID: &str = r#"
[defaults]
secrets = "redact"
pii = "log"
injection = "block"
examples = "log"
uninspectable = "block"
marker = "rule"

[rules]
ipv4-address = "allow"

[[override]]
server = "npx server-github"
tool = "create_*"
method = "tools/call"
direction = "request"
path = "params.arguments.body*"
categories = ["pii"]
rules = ["email-address"]
values = ["hmac:00112233445566778899aabbccddeeff"]
patterns = ["sk_test_*"]
action = "block"

[allow]
values = ["hmac:ffeeddccbbaa99887766554433221100"]
patterns = ["*@example.org"]
paths = ["params.arguments.commit_sha"]

[risk]
flag = 50
block_calls_at = 0
exfiltration = "log"

[limits]
max_line_bytes = 8388608
"#;

fn detector() -> &'static Detector {
    static DETECTOR: std::sync::OnceLock<Detector> = std::sync::OnceLock::new();
    DETECTOR.get_or_init(Detector::new)
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
        Just(Action::Allow),
        Just(Action::Log),
        Just(Action::Redact),
        Just(Action::Block)
    ]
}

const TOMLISH: &str = "(?s)[\\[\\]a-z_.=\"' 0-9\n{}#,\\-*:]{0,300}";

proptest! {
    #[test]
    fn local_policies_of_arbitrary_text(text in TOMLISH) {
        if let Err(err) = Policy::parse(&text, detector()) {
            prop_assert!(err.to_string().contains(FILE), "{}", err);
        }
    }

    #[test]
    fn local_policies_mutated(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)) {
        prop_assert!(Policy::parse(VALID, detector()).is_ok());
        let text = mutated(VALID, &edits);
        match Policy::parse(&text, detector()) {
            Ok(policy) => {
                // What the plugin asks of a policy answers.
                let layers = Layers::local(policy);
                let _ = (layers.max_line_bytes(), layers.flag_at(), layers.marker(), layers.counts());
            }
            Err(err) => prop_assert!(err.to_string().contains(FILE), "{}", err),
        }
    }

    #[test]
    fn a_policy_decides_what_it_says(
        secrets in proptest::option::of(action()),
        picks in proptest::collection::btree_map(any::<prop::sample::Index>().prop_map(|i| i.index(usize::MAX)), action(), 0..6),
    ) {
        let rules = detector().rules();
        let chosen: std::collections::BTreeMap<&str, Action> = picks
            .iter()
            .map(|(i, a)| (rules[i % rules.len()].id, *a))
            .collect();
        let mut text = String::new();
        if let Some(a) = secrets {
            text.push_str(&format!("[defaults]\nsecrets = \"{}\"\n", a.as_str()));
        }
        text.push_str("[rules]\n");
        for (id, a) in &chosen {
            text.push_str(&format!("{id} = \"{}\"\n", a.as_str()));
        }
        let layers = Layers::local(Policy::parse(&text, detector()).expect("valid"));
        for rule in rules {
            // A rule named in [rules] gets its action; any other its category's default (only
            // `secrets` is set here, which also stands for categories without a key of their own).
            let expected = match chosen.get(rule.id) {
                Some(a) => *a,
                None if rule.category == Category::PII || rule.category == Category::INJECTION => {
                    builtin(rule.category)
                }
                None => secrets.unwrap_or(builtin(rule.category)),
            };
            prop_assert_eq!(layers.rule_default(rule.id, rule.category), expected, "{}", rule.id);
        }
    }

    #[test]
    fn signed_team_policies_of_arbitrary_text(text in TOMLISH) {
        // Hostile text signed by the team's admin key: the team layer km-policy hands over.
        let admin = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).expect("seed");
        let key = AdminKey::from_raw(admin.public_key().as_ref().try_into().expect("32 bytes"));
        let trust = TeamTrust::new("acme", vec![(None, key)]).expect("trust");
        let header = BundleHeader {
            team: "acme".into(),
            policy: NAME.into(),
            version: 1,
            issued_at: None,
            issued_by: None,
        };
        let body = payload(&header, "").expect("header").replace('\n', &format!("\n{text}\n"));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies/team")).expect("mkdir");
        std::fs::write(dir.path().join("policies").join(TRUST_FILE), trust.to_toml()).expect("write");
        std::fs::write(
            dir.path().join("policies").join(TEAM_FILE),
            seal_ed25519(body.as_bytes(), &admin).expect("seal"),
        )
        .expect("write");
        let host = PolicyDir::new(dir.path().join("policies"), dir.path().join("state"));
        let loaded = load(&host, detector());
        prop_assert!(loaded.error.is_none(), "no local file: {:?}", loaded.error);
        for problem in &loaded.team_problems {
            prop_assert!(problem.contains(TEAM_FILE), "{}", problem);
        }
        let _ = loaded.layers.max_line_bytes();
    }
}
