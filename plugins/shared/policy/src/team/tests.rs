//! Team policies against the attacks they exist for: another key, an altered payload, an older
//! version, a version reused for other content, a bundle for another team or plugin, a deleted
//! file, and a setting the plugin does not know.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::Deserialize;

use super::*;
use crate::PolicyDir;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    mode: String,
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: PolicyDir,
    admin: Ed25519KeyPair,
}

fn keypair() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generates");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parses")
}

fn admin_key(key: &Ed25519KeyPair) -> AdminKey {
    AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32 bytes"))
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = PolicyDir::new(dir.path().join("policies"), dir.path().join("state"));
        std::fs::create_dir_all(dir.path().join("policies/team")).expect("mkdir");
        let admin = keypair();
        let fixture = Fixture {
            _dir: dir,
            host,
            admin,
        };
        let trust = TeamTrust::new("acme", vec![(None, admin_key(&fixture.admin))]).expect("trust");
        fixture.write(TRUST_FILE, &trust.to_toml());
        fixture
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.host.policies().join(name), text).expect("write");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.host.policies().join(name)).expect("remove");
    }

    fn bundle(&self, team: &str, policy: &str, version: u64, body: &str) -> String {
        self.bundle_by(&self.admin, team, policy, version, body)
    }

    fn bundle_by(
        &self,
        key: &Ed25519KeyPair,
        team: &str,
        policy: &str,
        version: u64,
        body: &str,
    ) -> String {
        let header = BundleHeader {
            team: team.into(),
            policy: policy.into(),
            version,
            issued_at: Some("2025-06-01T12:00:00Z".into()),
            issued_by: None,
        };
        let payload = payload(&header, body).expect("payload");
        seal_ed25519(payload.as_bytes(), key).expect("seals")
    }

    fn load(&self) -> TeamLoad<Rules> {
        load_team(&self.host, "tool-guard")
    }
}

fn mode(load: &TeamLoad<Rules>) -> Option<(&str, u64, bool)> {
    load.applied
        .as_ref()
        .map(|a| (a.policy.mode.as_str(), a.bundle.version(), a.from_record))
}

#[test]
fn a_signed_bundle_is_applied_and_recorded() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 3, "mode = \"block\"\n"),
    );
    let load = f.load();
    assert_eq!(load.problems, vec![]);
    assert_eq!(mode(&load), Some(("block", 3, false)));
    let applied = load.applied.expect("applied");
    assert_eq!(applied.bundle.team(), "acme");
    assert_eq!(applied.bundle.key_id(), admin_key(&f.admin).key_id());
    assert_eq!(
        applied.bundle.header().issued_at.as_deref(),
        Some("2025-06-01T12:00:00Z")
    );
    let record = f.host.state_dir().join("team-policy/tool-guard.toml");
    assert!(record.exists(), "recorded");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&record)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private: {mode:o}");
}

#[test]
fn no_trust_file_means_no_team_and_no_problem() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 1, "mode = \"x\"\n"),
    );
    f.remove(TRUST_FILE);
    assert_eq!(f.load(), TeamLoad::default());
}

#[test]
fn a_bundle_signed_by_another_key_is_refused() {
    let f = Fixture::new();
    let other = keypair();
    f.write(
        "team/tool-guard.toml",
        &f.bundle_by(&other, "acme", "tool-guard", 1, "mode = \"warn\"\n"),
    );
    let load = f.load();
    assert_eq!(load.applied, None);
    assert!(
        matches!(&load.problems[..], [Error::UntrustedSigner { signers, .. }] if signers == admin_key(&other).key_id()),
        "{:?}",
        load.problems
    );
}

#[test]
fn an_altered_payload_or_a_raw_signature_does_not_verify() {
    let f = Fixture::new();
    let text = f.bundle("acme", "tool-guard", 1, "mode = \"block\"\n");
    // Re-seal a different payload with the original signature.
    let header = BundleHeader {
        team: "acme".into(),
        policy: "tool-guard".into(),
        version: 1,
        issued_at: None,
        issued_by: None,
    };
    let loosened = payload(&header, "mode = \"warn\"\n").expect("payload");
    let original = envelope::Envelope::parse("x", &text).expect("parses");
    let key_id = admin_key(&f.admin).key_id().to_owned();
    let sig = f.admin.sign(&signing_input(&original.payload));
    let forged = seal(loosened.as_bytes(), &[(&key_id, sig.as_ref())]).expect("seals");
    f.write("team/tool-guard.toml", &forged);
    let load = f.load();
    assert_eq!(load.applied, None);
    assert!(
        matches!(&load.problems[..], [Error::BadSignature { key_id: k, .. }] if *k == key_id),
        "{:?}",
        load.problems
    );
    // A signature of the bare payload (no DSSE encoding) is not a team policy signature.
    let raw = f.admin.sign(loosened.as_bytes());
    f.write(
        "team/tool-guard.toml",
        &seal(loosened.as_bytes(), &[(&key_id, raw.as_ref())]).expect("seals"),
    );
    assert!(matches!(
        &f.load().problems[..],
        [Error::BadSignature { .. }]
    ));
}

#[test]
fn during_a_key_rotation_one_trusted_signature_is_enough_but_a_bad_one_is_not() {
    let f = Fixture::new();
    let next = keypair();
    let header = BundleHeader {
        team: "acme".into(),
        policy: "tool-guard".into(),
        version: 1,
        issued_at: None,
        issued_by: None,
    };
    let body = payload(&header, "mode = \"block\"\n").expect("payload");
    let input = signing_input(body.as_bytes());
    let admin_id = admin_key(&f.admin).key_id().to_owned();
    let next_id = admin_key(&next).key_id().to_owned();
    let good = f.admin.sign(&input);
    let by_next = next.sign(&input);
    f.write(
        "team/tool-guard.toml",
        &seal(
            body.as_bytes(),
            &[(&next_id, by_next.as_ref()), (&admin_id, good.as_ref())],
        )
        .expect("seals"),
    );
    assert_eq!(mode(&f.load()), Some(("block", 1, false)));
    f.write(
        "team/tool-guard.toml",
        &seal(
            body.as_bytes(),
            &[(&admin_id, by_next.as_ref()), (&next_id, by_next.as_ref())],
        )
        .expect("seals"),
    );
    let load = f.load();
    assert!(
        matches!(&load.problems[..], [Error::BadSignature { .. }]),
        "{:?}",
        load.problems
    );
    // The version verified before stays in force.
    assert_eq!(mode(&load), Some(("block", 1, true)));
}

#[test]
fn an_older_version_is_refused_and_the_applied_one_stays() {
    let f = Fixture::new();
    let v1 = f.bundle("acme", "tool-guard", 1, "mode = \"warn\"\n");
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 2, "mode = \"block\"\n"),
    );
    assert_eq!(mode(&f.load()), Some(("block", 2, false)));
    f.write("team/tool-guard.toml", &v1);
    let load = f.load();
    assert_eq!(mode(&load), Some(("block", 2, true)));
    assert!(
        matches!(
            &load.problems[..],
            [Error::Rollback {
                applied: 2,
                offered: 1,
                ..
            }]
        ),
        "{:?}",
        load.problems
    );
    // The same version again is fine; other content under the same version is not.
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 2, "mode = \"block\"\n"),
    );
    assert_eq!(f.load().problems, vec![], "re-signed identical payload");
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 2, "mode = \"warn\"\n"),
    );
    let load = f.load();
    assert!(matches!(
        &load.problems[..],
        [Error::Equivocation { version: 2, .. }]
    ));
    assert_eq!(mode(&load), Some(("block", 2, true)));
    // A newer one replaces it.
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 5, "mode = \"warn\"\n"),
    );
    assert_eq!(mode(&f.load()), Some(("warn", 5, false)));
}

#[test]
fn a_deleted_file_does_not_loosen_anything() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 4, "mode = \"block\"\n"),
    );
    f.load();
    f.remove("team/tool-guard.toml");
    let load = f.load();
    assert_eq!(mode(&load), Some(("block", 4, true)));
    assert!(matches!(
        &load.problems[..],
        [Error::Missing { version: 4, .. }]
    ));
    // Removing the trust file (leaving the team) does end it.
    f.remove(TRUST_FILE);
    assert_eq!(f.load(), TeamLoad::default());
}

#[test]
fn a_bundle_for_another_team_or_another_plugin_is_refused() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("other", "tool-guard", 1, "mode = \"x\"\n"),
    );
    let load = f.load();
    assert!(
        matches!(&load.problems[..], [Error::WrongTeam { expected, found, .. }] if expected == "acme" && found == "other"),
        "{:?}",
        load.problems
    );
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "advanced-filters", 1, "mode = \"x\"\n"),
    );
    let load = f.load();
    assert!(
        matches!(&load.problems[..], [Error::WrongPolicy { found, .. }] if found == "advanced-filters"),
        "{:?}",
        load.problems
    );
    assert_eq!(load.applied, None);
}

#[test]
fn a_setting_the_plugin_does_not_know_is_an_error_and_the_last_good_version_stays() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 1, "mode = \"block\"\n"),
    );
    f.load();
    f.write(
        "team/tool-guard.toml",
        &f.bundle(
            "acme",
            "tool-guard",
            2,
            "mode = \"block\"\nnew_rule = true\n",
        ),
    );
    let load = f.load();
    assert!(
        matches!(&load.problems[..], [Error::Parse { message, .. }] if message.contains("new_rule")),
        "{:?}",
        load.problems
    );
    assert_eq!(mode(&load), Some(("block", 1, true)));
    // The refused version was not recorded: version 1 is still acceptable afterwards.
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 1, "mode = \"block\"\n"),
    );
    assert_eq!(f.load().problems, vec![]);
}

#[test]
fn a_corrupt_trust_file_or_record_is_reported() {
    let f = Fixture::new();
    f.write(
        "team/tool-guard.toml",
        &f.bundle("acme", "tool-guard", 1, "mode = \"block\"\n"),
    );
    f.load();
    std::fs::write(
        f.host.state_dir().join("team-policy/tool-guard.toml"),
        "garbage",
    )
    .expect("write");
    let load = f.load();
    assert!(
        matches!(&load.problems[..], [Error::State { .. }]),
        "{:?}",
        load.problems
    );
    assert_eq!(mode(&load), Some(("block", 1, false)));
    f.write(TRUST_FILE, "team = 3\n");
    let load = f.load();
    assert!(matches!(&load.problems[..], [Error::Trust { .. }]));
    assert_eq!(load.applied, None);
}

#[test]
fn payloads_keep_the_header_apart_from_the_policy() {
    let header = BundleHeader {
        team: "acme".into(),
        policy: "tool-guard".into(),
        version: 1,
        issued_at: None,
        issued_by: None,
    };
    assert!(payload(&header, "[bundle]\nx = 1\n").is_err());
    assert!(payload(&header, "not toml = = 1").is_err());
    let bad = BundleHeader {
        version: 0,
        ..header.clone()
    };
    assert!(payload(&bad, "").is_err());
    let text = payload(&header, "mode = \"block\"\n").expect("payload");
    assert!(
        text.starts_with(
            "bundle = { team = \"acme\", policy = \"tool-guard\", version = 1 }\nmode"
        ),
        "{text}"
    );
}

#[test]
fn an_offered_bundle_is_verified_recorded_and_never_rolled_back() {
    let f = Fixture::new();
    let v2 = f.bundle("acme", "tool-guard", 2, "mode = \"block\"\n");
    let offered = accept_offered::<Rules>(&f.host, "tool-guard", &v2).expect("accepted");
    assert!(offered.newer);
    assert_eq!(offered.policy.mode, "block");
    assert_eq!(offered.bundle.version(), 2);
    let again = accept_offered::<toml::Table>(&f.host, "tool-guard", &v2).expect("the same");
    assert!(!again.newer);
    let v1 = f.bundle("acme", "tool-guard", 1, "mode = \"warn\"\n");
    assert!(
        matches!(
            accept_offered::<toml::Table>(&f.host, "tool-guard", &v1),
            Err(Error::Rollback {
                applied: 2,
                offered: 1,
                ..
            })
        ),
        "an older version"
    );
    let other = keypair();
    let forged = f.bundle_by(&other, "acme", "tool-guard", 9, "mode = \"warn\"\n");
    assert!(matches!(
        accept_offered::<toml::Table>(&f.host, "tool-guard", &forged),
        Err(Error::UntrustedSigner { .. })
    ));
    // A version with a setting the type does not know is refused and not recorded.
    let v3 = f.bundle("acme", "tool-guard", 3, "mode = \"x\"\nextra = 1\n");
    assert!(matches!(
        accept_offered::<Rules>(&f.host, "tool-guard", &v3),
        Err(Error::Parse { .. })
    ));
    assert!(accept_offered::<Rules>(&f.host, "tool-guard", &v2).is_ok());
    // The file written from an accepted offer loads against the same record.
    f.write("team/tool-guard.toml", &v2);
    let load = f.load();
    assert_eq!(load.problems, vec![]);
    assert_eq!(mode(&load), Some(("block", 2, false)));
    f.remove(TRUST_FILE);
    assert!(matches!(
        accept_offered::<toml::Table>(&f.host, "tool-guard", &v2),
        Err(Error::Trust { .. })
    ));
}

#[test]
fn a_bundle_cannot_be_named_after_the_trust_file_or_an_approvals_file() {
    for policy in ["trust", "tool-guard.approvals"] {
        let header = BundleHeader {
            team: "acme".into(),
            policy: policy.into(),
            version: 1,
            issued_at: None,
            issued_by: None,
        };
        let err = payload(&header, "x = 1\n").expect_err(policy);
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
}
