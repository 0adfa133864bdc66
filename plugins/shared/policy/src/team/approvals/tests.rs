//! Shared approvals against the attacks they exist for: a member without the role, a key the
//! roster does not list, one member's key speaking for another, an altered payload, another
//! team's approval, a signature made for something else, no roster, a stale roster.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::Deserialize;

use super::*;
use crate::team::roster::{RosterEntry, RosterFile};
use crate::team::{payload, seal_ed25519, BundleHeader};
use crate::PolicyDir;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approves {
    name: String,
}

fn keypair() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generates");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parses")
}

fn public(key: &Ed25519KeyPair) -> AdminKey {
    AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32 bytes"))
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: PolicyDir,
    admin: Ed25519KeyPair,
    alice: Ed25519KeyPair,
    bob: Ed25519KeyPair,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = PolicyDir::new(dir.path().join("policies"), dir.path().join("state"));
        std::fs::create_dir_all(dir.path().join("policies/team")).expect("mkdir");
        let f = Fixture {
            _dir: dir,
            host,
            admin: keypair(),
            alice: keypair(),
            bob: keypair(),
        };
        let trust = TeamTrust::new("acme", vec![(None, public(&f.admin))]).expect("trust");
        f.write(TRUST_FILE, &trust.to_toml());
        f.roster(1, true);
        f
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.host.policies().join(name), text).expect("write");
    }

    /// Publishes roster `version`: alice (approver when `alice_approves`) and bob (no role).
    fn roster(&self, version: u64, alice_approves: bool) {
        let roles: &[&str] = if alice_approves { &["approver"] } else { &[] };
        let body = toml::to_string(&RosterFile {
            members: vec![
                RosterEntry {
                    id: "alice".into(),
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                    public_key: public(&self.alice).to_pem(),
                },
                RosterEntry {
                    id: "bob".into(),
                    roles: vec![],
                    public_key: public(&self.bob).to_pem(),
                },
            ],
        })
        .expect("roster");
        let header = BundleHeader {
            team: "acme".into(),
            policy: ROSTER.into(),
            version,
            issued_at: None,
            issued_by: None,
        };
        let text = payload(&header, &body).expect("payload");
        self.write(
            "team/roster.toml",
            &seal_ed25519(text.as_bytes(), &self.admin).expect("seal"),
        );
    }

    fn approval(&self, key: &Ed25519KeyPair, team: &str, member: &str, name: &str) -> String {
        let header = ApprovalHeader {
            team: team.into(),
            policy: "tool-guard".into(),
            member: member.into(),
            issued_at: Some("2025-06-01T12:00:00Z".into()),
        };
        let text = approval_payload(&header, &format!("name = \"{name}\"\n")).expect("payload");
        seal_approval_ed25519(text.as_bytes(), key).expect("seal")
    }

    fn file(&self, envelopes: &[&str]) {
        self.write(
            "team/tool-guard.approvals.toml",
            &approvals_text("acme", "tool-guard", envelopes).expect("file"),
        );
    }

    fn load(&self) -> ApprovalLoad<Approves> {
        load_approvals(&self.host, "tool-guard", "approver")
    }
}

fn names(load: &ApprovalLoad<Approves>) -> Vec<(&str, &str)> {
    load.approvals
        .iter()
        .map(|a| (a.approval.member(), a.value.name.as_str()))
        .collect()
}

#[test]
fn only_an_approver_s_own_signed_approval_is_accepted() {
    let f = Fixture::new();
    let good = f.approval(&f.alice, "acme", "alice", "echo");
    let by_bob = f.approval(&f.bob, "acme", "bob", "rm");
    let impersonating = f.approval(&f.bob, "acme", "alice", "rm");
    let alice_for_bob = f.approval(&f.alice, "acme", "bob", "rm");
    let other_team = f.approval(&f.alice, "other", "alice", "rm");
    let stranger = f.approval(&keypair(), "acme", "alice", "rm");
    f.file(&[
        &good,
        &by_bob,
        &impersonating,
        &alice_for_bob,
        &other_team,
        &stranger,
    ]);
    let load = f.load();
    assert_eq!(names(&load), vec![("alice", "echo")]);
    assert_eq!(load.team.as_deref(), Some("acme"));
    let approval = &load.approvals[0].approval;
    assert_eq!(approval.key_id(), public(&f.alice).key_id());
    assert_eq!(
        approval.header().issued_at.as_deref(),
        Some("2025-06-01T12:00:00Z")
    );
    let described: Vec<String> = load.problems.iter().map(ToString::to_string).collect();
    assert!(
        matches!(&load.problems[0], Error::NotApproved { index: 1, role, .. } if role == "approver"),
        "{described:#?}"
    );
    assert!(
        matches!(&load.problems[1], Error::NotApproved { index: 2, .. }),
        "{described:#?}"
    );
    assert!(
        matches!(&load.problems[2], Error::BadApproval { index: 3, reason, .. } if reason.contains("names member bob")),
        "{described:#?}"
    );
    assert!(
        matches!(&load.problems[3], Error::BadApproval { index: 4, reason, .. } if reason.contains("team other")),
        "{described:#?}"
    );
    assert!(
        matches!(&load.problems[4], Error::NotApproved { index: 5, .. }),
        "{described:#?}"
    );
    assert_eq!(load.problems.len(), 5, "{described:#?}");
    assert!(described[0].contains("team/tool-guard.approvals.toml"));
}

#[test]
fn an_altered_payload_or_a_signature_made_for_a_policy_does_not_verify() {
    let f = Fixture::new();
    let header = ApprovalHeader {
        team: "acme".into(),
        policy: "tool-guard".into(),
        member: "alice".into(),
        issued_at: None,
    };
    let approved = approval_payload(&header, "name = \"echo\"\n").expect("payload");
    let widened = approval_payload(&header, "name = \"rm\"\n").expect("payload");
    let key_id = public(&f.alice).key_id().to_owned();
    let sig = f.alice.sign(&approval_signing_input(approved.as_bytes()));
    let forged = seal_approval(widened.as_bytes(), &[(&key_id, sig.as_ref())]).expect("seal");
    // Alice's signature of the same bytes as a team policy (DSSE with the policy type).
    let as_policy = f
        .alice
        .sign(&crate::team::signing_input(widened.as_bytes()));
    let cross = seal_approval(widened.as_bytes(), &[(&key_id, as_policy.as_ref())]).expect("seal");
    f.file(&[&forged, &cross]);
    let load = f.load();
    assert!(load.approvals.is_empty());
    assert!(
        load.problems.iter().all(
            |p| matches!(p, Error::BadApproval { reason, .. } if reason.contains("does not verify"))
        ),
        "{:?}",
        load.problems
    );
    assert_eq!(load.problems.len(), 2);
}

#[test]
fn without_a_roster_nothing_is_accepted_and_a_stale_roster_cannot_restore_a_role() {
    let f = Fixture::new();
    let good = f.approval(&f.alice, "acme", "alice", "echo");
    f.file(&[&good]);
    assert_eq!(names(&f.load()), vec![("alice", "echo")]);
    // Version 2 takes alice's role away: her approvals stop counting.
    f.roster(2, false);
    let load = f.load();
    assert!(load.approvals.is_empty());
    assert!(matches!(&load.problems[..], [Error::NotApproved { .. }]));
    // Replaying version 1 is a rollback: version 2 stays in force.
    f.roster(1, true);
    let load = f.load();
    assert!(load.approvals.is_empty(), "{:?}", load.approvals);
    assert!(
        matches!(
            &load.problems[..],
            [
                Error::Rollback {
                    applied: 2,
                    offered: 1,
                    ..
                },
                Error::NotApproved { .. }
            ]
        ),
        "{:?}",
        load.problems
    );
    // A machine that never had a roster cannot verify approvals at all.
    let g = Fixture::new();
    std::fs::remove_file(g.host.policies().join("team/roster.toml")).expect("rm");
    g.file(&[&g.approval(&g.alice, "acme", "alice", "echo")]);
    let load = g.load();
    assert!(load.approvals.is_empty());
    assert!(matches!(&load.problems[..], [Error::NoRoster { .. }]));
}

#[test]
fn no_team_or_no_file_means_no_approvals_and_a_file_for_another_team_is_refused() {
    let f = Fixture::new();
    assert_eq!(f.load(), ApprovalLoad::default_for("acme"));
    f.write(
        "team/tool-guard.approvals.toml",
        &approvals_text("other", "tool-guard", &[]).expect("file"),
    );
    assert!(matches!(&f.load().problems[..], [Error::WrongTeam { .. }]));
    f.write(
        "team/tool-guard.approvals.toml",
        &approvals_text("acme", "advanced-filters", &[]).expect("file"),
    );
    assert!(matches!(
        &f.load().problems[..],
        [Error::WrongPolicy { .. }]
    ));
    std::fs::remove_file(f.host.policies().join(TRUST_FILE)).expect("rm");
    assert_eq!(f.load(), ApprovalLoad::default());
    assert!(approvals_text("acme", "tool-guard", &["not an envelope"]).is_err());
}

#[test]
fn the_api_s_check_of_one_approval_uses_the_member_s_registered_key() {
    let f = Fixture::new();
    let text = f.approval(&f.alice, "acme", "alice", "echo");
    let alice = public(&f.alice);
    let verified = verify_approval("upload", &text, "acme", "tool-guard", "approver", |k| {
        (k == alice.key_id()).then_some(("alice", &alice))
    })
    .expect("verifies");
    assert_eq!(verified.member(), "alice");
    assert_eq!(verified.parse::<Approves>().expect("parses").name, "echo");
    let bob = public(&f.bob);
    let err = verify_approval("upload", &text, "acme", "tool-guard", "approver", |k| {
        (k == bob.key_id()).then_some(("bob", &bob))
    })
    .expect_err("another member's key");
    assert!(matches!(err, Error::NotApproved { .. }), "{err}");
    let err = verify_approval("upload", "x = 1", "acme", "tool-guard", "approver", |_| {
        None
    })
    .expect_err("garbage");
    assert!(matches!(err, Error::Envelope { .. }), "{err}");
}

impl<A> ApprovalLoad<A> {
    fn default_for(team: &str) -> Self {
        ApprovalLoad {
            team: Some(team.to_owned()),
            ..ApprovalLoad::default()
        }
    }
}
