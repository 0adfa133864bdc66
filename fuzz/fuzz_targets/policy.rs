//! The policy parsers: km-policy's team trust file, envelope, bundle header, roster and shared
//! approvals (one envelope and the file of them), and the policy files of tool-guard and
//! advanced-filters, whose parsers are compiled into the target from the plugins' own source
//! with `#[path]` (tool-guard is a cdylib only, and both keep their policy private).
//!
//! Input: byte 0 picks the parser, the rest is the text (as UTF-8, lossily: km hands policies
//! to plugins as text). Signed inputs are signed here with fixed keys, so that the fuzzer
//! reaches what only signed bytes reach (the bundle header, the roster, an approval's header,
//! the plugins' team layers). Properties besides "an answer": what parses from a writer's
//! format re-parses to the same value; a verified bundle or approval is of the team, policy and
//! member it was checked for; errors name their file.
#![no_main]
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use km_policy::team::approvals::approvals_text;
use km_policy::team::{
    load_approvals, payload, seal_approval_ed25519, seal_ed25519, verify, verify_approval,
    AdminKey, BundleHeader, Roster, RosterEntry, RosterFile, TeamTrust, ROSTER, TRUST_FILE,
};
use km_policy::PolicyHost;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

// tool-guard's policy and the modules it needs, from its source.
#[path = "../../plugins/tool-guard/src/canonical.rs"]
mod canonical;
#[path = "../../plugins/tool-guard/src/definition.rs"]
mod definition;
#[path = "../../plugins/tool-guard/src/policy.rs"]
mod tool_guard_policy;

// advanced-filters' policy and its glob, from its source.
#[path = "../../plugins/advanced-filters/src/policy.rs"]
mod filters_policy;
#[path = "../../plugins/advanced-filters/src/glob.rs"]
mod glob;

const TEAM: &str = "acme";

struct Keys {
    admin: Ed25519KeyPair,
    alice: Ed25519KeyPair,
    trust: TeamTrust,
    roster: String,
    detector: km_detect::Detector,
}

fn public(key: &Ed25519KeyPair) -> AdminKey {
    AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32 bytes"))
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |seed: u8| Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed");
        let (admin, alice) = (key(1), key(2));
        let trust = TeamTrust::new(TEAM, vec![(None, public(&admin))]).expect("trust");
        let body = toml::to_string(&RosterFile {
            members: vec![RosterEntry {
                id: "alice".into(),
                roles: vec!["approver".into()],
                public_key: public(&alice).to_pem(),
            }],
        })
        .expect("roster");
        let roster = seal_ed25519(
            payload(&header(ROSTER, 1), &body)
                .expect("payload")
                .as_bytes(),
            &admin,
        )
        .expect("seal");
        Keys {
            admin,
            alice,
            trust,
            roster,
            detector: km_detect::Detector::new(),
        }
    })
}

fn header(policy: &str, version: u64) -> BundleHeader {
    BundleHeader {
        team: TEAM.into(),
        policy: policy.into(),
        version,
        issued_at: None,
        issued_by: None,
    }
}

/// Policy files in memory, and a fresh state directory (so that no run's rollback record
/// decides another run's answer).
struct Host {
    files: HashMap<String, String>,
    state: tempfile::TempDir,
}

impl Host {
    fn new(files: &[(&str, &str)]) -> Host {
        Host {
            files: files
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
                .collect(),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }
}

impl PolicyHost for Host {
    fn read_policy(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.files.get(name).cloned())
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }
}

fn names(err: &impl std::fmt::Display, file: &str) {
    let text = err.to_string();
    assert!(
        text.contains(file),
        "the error does not name {file}: {text}"
    );
}

/// tool-guard's and advanced-filters' policies from `host`, used the way the plugins use them.
fn plugins_load(host: &Host) {
    use tool_guard_policy::{ServerNames, Situation};
    match tool_guard_policy::Policy::load(host) {
        Ok(policy) => {
            let server = ServerNames {
                id: "0123456789abcdef",
                label: "node server.js",
                info_name: Some("demo"),
            };
            for situation in [
                Situation::FirstUse,
                Situation::New,
                Situation::Changed,
                Situation::Poisoned,
                Situation::Unadvertised,
            ] {
                let _ = policy.decide(&server, situation);
            }
            let _ = policy.team_approval(&server, definition::Kind::Tool, "x", "00");
            let _ = policy.team_problems();
        }
        Err(err) => names(&err, "tool-guard.toml"),
    }
    let loaded = filters_policy::load(host, &keys().detector);
    if let Some(err) = &loaded.error {
        names(err, "advanced-filters.toml");
    }
    let _ = loaded.layers.max_line_bytes();
    let _ = loaded.layers.counts();
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text = text.as_ref();
    let k = keys();
    match which % 8 {
        // The trust file, and its writer.
        0 => match TeamTrust::parse(text) {
            Ok(trust) => assert_eq!(
                TeamTrust::parse(&trust.to_toml()).expect("re-parses"),
                trust
            ),
            Err(err) => names(&err, TRUST_FILE),
        },
        // An envelope as it arrives (no key signed it).
        1 => match verify("team/tool-guard.toml", text, &k.trust, "tool-guard") {
            Ok(bundle) => {
                assert_eq!(bundle.team(), TEAM);
                assert_eq!(bundle.header().policy, "tool-guard");
            }
            Err(err) => names(&err, "team/tool-guard.toml"),
        },
        // Text signed by the admin key: the bundle header, then the body as every policy type,
        // and as the team file of both plugins.
        2 => {
            let envelope = seal_ed25519(text.as_bytes(), &k.admin).expect("seal");
            for policy in ["tool-guard", "advanced-filters", ROSTER] {
                let file = format!("team/{policy}.toml");
                match verify(&file, &envelope, &k.trust, policy) {
                    Ok(bundle) => {
                        assert_eq!(bundle.team(), TEAM);
                        assert_eq!(bundle.header().policy, policy);
                        assert!(bundle.version() >= 1);
                        if let Err(err) = bundle.parse::<Roster>() {
                            names(&err, &file);
                        }
                        let _ = bundle.parse::<toml::Table>();
                    }
                    Err(err) => names(&err, &file),
                }
            }
            let trust = k.trust.to_toml();
            plugins_load(&Host::new(&[
                (TRUST_FILE, &trust),
                ("team/tool-guard.toml", &envelope),
                ("team/advanced-filters.toml", &envelope),
            ]));
        }
        // A roster's body, and its writer.
        3 => {
            let _ = toml::from_str::<Roster>(text);
            if let Ok(file) = toml::from_str::<RosterFile>(text) {
                let again: RosterFile =
                    toml::from_str(&toml::to_string(&file).expect("writes")).expect("re-reads");
                assert_eq!(again, file);
                let _ = file.check();
            }
        }
        // One approval: as it arrives, and signed by alice.
        4 => {
            let file = "team/tool-guard.approvals.toml";
            let alice = public(&k.alice);
            let signer = |key_id: &str| (key_id == alice.key_id()).then_some(("alice", &alice));
            if let Err(err) = verify_approval(file, text, TEAM, "tool-guard", "approver", signer) {
                names(&err, file);
            }
            let envelope = seal_approval_ed25519(text.as_bytes(), &k.alice).expect("seal");
            match verify_approval(file, &envelope, TEAM, "tool-guard", "approver", signer) {
                Ok(approval) => {
                    assert_eq!(approval.member(), "alice");
                    assert_eq!(approval.header().team, TEAM);
                    assert_eq!(approval.header().policy, "tool-guard");
                    let _ = approval.parse::<toml::Table>();
                }
                Err(err) => names(&err, file),
            }
        }
        // A file of approvals, in a team with a roster; and the approvals file's writer.
        5 => {
            let file = "team/tool-guard.approvals.toml";
            let trust = k.trust.to_toml();
            let host = Host::new(&[
                (TRUST_FILE, &trust),
                ("team/roster.toml", &k.roster),
                (file, text),
            ]);
            let load = load_approvals::<toml::Table>(&host, "tool-guard", "approver");
            for problem in &load.problems {
                names(problem, file);
            }
            if let Ok(written) = approvals_text(TEAM, "tool-guard", &[text]) {
                let host = Host::new(&[
                    (TRUST_FILE, &trust),
                    ("team/roster.toml", &k.roster),
                    (file, &written),
                ]);
                let load = load_approvals::<toml::Table>(&host, "tool-guard", "approver");
                assert!(load.approvals.len() <= 1);
            }
        }
        // tool-guard's local policy file.
        6 => plugins_load(&Host::new(&[("tool-guard.toml", text)])),
        // advanced-filters' local policy file, parsed alone and loaded.
        _ => {
            if let Err(err) = filters_policy::Policy::parse(text, &k.detector) {
                names(&err, "advanced-filters.toml");
            }
            plugins_load(&Host::new(&[("advanced-filters.toml", text)]));
        }
    }
});
