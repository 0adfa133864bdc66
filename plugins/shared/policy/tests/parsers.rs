//! Property tests of every parser of km-policy that reads outside input: the team trust file,
//! the signed envelope of a team policy, the bundle header of its signed payload, the roster,
//! shared approvals (one envelope, and the file of them), and local policy files. Each gets
//! arbitrary text and mutations of a valid input (valid up to one changed, inserted, removed or
//! truncated byte, the inputs a fuzzer finds interesting), and where km-policy has a writer,
//! what it writes is read back to the same value.
//!
//! The properties: an answer (`Ok` or an [`Error`]), never a panic; every error names the file
//! it is about; nothing verifies that was not signed (a mutated envelope either verifies to the
//! very payload that was signed, or is refused).
//!
//! The case budget is proptest's: 256 cases per property by default; `PROPTEST_CASES=100000
//! cargo test -p km-policy --test parsers` runs them longer (see FUZZING.md for the fuzz target
//! `policy`, which feeds the same parsers).

use km_policy::team::approvals::{approval_signing_input, approvals_text};
use km_policy::team::{
    approval_payload, load_approvals, payload, seal, seal_approval_ed25519, seal_ed25519,
    signing_input, verify, verify_approval, AdminKey, ApprovalHeader, BundleHeader, Roster,
    RosterEntry, RosterFile, TeamTrust, ROSTER, TRUST_FILE,
};
use km_policy::{load_local, Error, PolicyDir};
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// How a valid input is changed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len().max(1);
        match *m {
            Mutation::Flip(i, b) if !out.is_empty() => out[i % len] ^= b | 1,
            Mutation::Insert(i, b) => out.insert(i % (out.len() + 1), b),
            Mutation::Remove(i) if !out.is_empty() => {
                out.remove(i % len);
            }
            Mutation::Truncate(i) => out.truncate(i % (out.len() + 1)),
            Mutation::Duplicate(i, n) if !out.is_empty() => {
                let start = i % len;
                let end = (start + n % 64).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(start..start, piece);
            }
            _ => {}
        }
    }
    out
}

/// `bytes` as text: the parsers take `&str` (km hands plugins UTF-8 text), so invalid UTF-8
/// never reaches them.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fixed key pair from a seed byte (deterministic: a failing case replays).
fn keypair(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed")
}

fn public(key: &Ed25519KeyPair) -> AdminKey {
    AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32 bytes"))
}

const TEAM: &str = "acme";

fn trust() -> TeamTrust {
    TeamTrust::new(TEAM, vec![(Some("admin".into()), public(&keypair(1)))]).expect("trust")
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

/// A valid team policy envelope of `policy`, signed by the admin key.
fn sealed(policy: &str, body: &str) -> String {
    let payload = payload(&header(policy, 3), body).expect("payload");
    seal_ed25519(payload.as_bytes(), &keypair(1)).expect("seal")
}

/// A roster body: alice (approver) and bob (no role).
fn roster_body() -> String {
    toml::to_string(&RosterFile {
        members: vec![
            RosterEntry {
                id: "alice".into(),
                roles: vec!["approver".into()],
                public_key: public(&keypair(2)).to_pem(),
            },
            RosterEntry {
                id: "bob".into(),
                roles: vec![],
                public_key: public(&keypair(3)).to_pem(),
            },
        ],
    })
    .expect("roster")
}

/// A valid approval by alice of `name` for tool-guard.
fn approval(name: &str) -> String {
    let header = ApprovalHeader {
        team: TEAM.into(),
        policy: "tool-guard".into(),
        member: "alice".into(),
        issued_at: None,
    };
    let payload = approval_payload(
        &header,
        &format!("name = {}\n", toml::Value::String(name.to_owned())),
    )
    .expect("payload");
    seal_approval_ed25519(payload.as_bytes(), &keypair(2)).expect("seal")
}

/// A policy directory of team acme (trust file and roster) in which tests write files.
struct Team {
    dir: tempfile::TempDir,
    host: PolicyDir,
}

impl Team {
    fn new() -> Team {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = PolicyDir::new(dir.path().join("policies"), dir.path().join("state"));
        std::fs::create_dir_all(dir.path().join("policies/team")).expect("mkdir");
        let team = Team { dir, host };
        team.write(TRUST_FILE, &trust().to_toml());
        team.write("team/roster.toml", &sealed(ROSTER, &roster_body()));
        team
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join("policies").join(name), text).expect("write");
    }
}

/// Alice's key as `verify_approval` wants it.
fn alice_signer(key_id: &str) -> Option<(&'static str, &'static AdminKey)> {
    static ALICE: std::sync::OnceLock<AdminKey> = std::sync::OnceLock::new();
    let alice = ALICE.get_or_init(|| public(&keypair(2)));
    (key_id == alice.key_id()).then_some(("alice", alice))
}

/// Asserts that `err` names `file`.
fn names(err: &Error, file: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        err.to_string().contains(file),
        "the error does not name {file}: {err}"
    );
    Ok(())
}

/// Text shaped like TOML (keys, tables, strings, numbers), so that the parsers get past the
/// first byte more often than with arbitrary characters.
const TOMLISH: &str = "(?s)[\\[\\]a-z_.=\"' 0-9\n{}#,\\-+:]{0,300}";

proptest! {
    #[test]
    fn trust_files_of_arbitrary_text(text in TOMLISH) {
        match TeamTrust::parse(&text) {
            Ok(trust) => prop_assert_eq!(TeamTrust::parse(&trust.to_toml()).expect("re-parses"), trust),
            Err(err) => names(&err, TRUST_FILE)?,
        }
    }

    #[test]
    fn trust_files_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let valid = trust().to_toml();
        let text = text(&apply(valid.as_bytes(), &mutations));
        match TeamTrust::parse(&text) {
            Ok(trust) => prop_assert_eq!(TeamTrust::parse(&trust.to_toml()).expect("re-parses"), trust),
            Err(err) => names(&err, TRUST_FILE)?,
        }
    }

    #[test]
    fn trust_files_round_trip(
        team in "[A-Za-z0-9._-]{1,64}",
        keys in proptest::collection::vec((any::<u8>(), proptest::option::of("[ -~]{0,40}")), 1..4),
    ) {
        let keys = keys
            .into_iter()
            .map(|(seed, label)| (label, public(&keypair(seed))))
            .collect();
        let trust = TeamTrust::new(&team, keys).expect("valid");
        prop_assert_eq!(TeamTrust::parse(&trust.to_toml()).expect("parses"), trust);
    }

    #[test]
    fn envelopes_of_arbitrary_text(text in TOMLISH) {
        let err = verify("team/tool-guard.toml", &text, &trust(), "tool-guard")
            .expect_err("nothing verifies that the admin key did not sign");
        names(&err, "team/tool-guard.toml")?;
    }

    #[test]
    fn envelopes_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let valid = sealed("tool-guard", "[defaults]\nchanged = \"block\"\n");
        let signed = verify("team/tool-guard.toml", &valid, &trust(), "tool-guard").expect("valid");
        let text = text(&apply(valid.as_bytes(), &mutations));
        match verify("team/tool-guard.toml", &text, &trust(), "tool-guard") {
            // Only a change the payload does not see (a comment, whitespace in the base64).
            Ok(bundle) => prop_assert_eq!(bundle.payload_sha256(), signed.payload_sha256()),
            Err(err) => names(&err, "team/tool-guard.toml")?,
        }
    }

    #[test]
    fn signed_payloads_of_arbitrary_text(text in TOMLISH) {
        // Hostile text signed by the admin key itself: the header and the body are parsed.
        let envelope = seal_ed25519(text.as_bytes(), &keypair(1)).expect("seal");
        match verify("team/tool-guard.toml", &envelope, &trust(), "tool-guard") {
            Ok(bundle) => {
                prop_assert_eq!(bundle.team(), TEAM);
                prop_assert_eq!(&bundle.header().policy, "tool-guard");
                prop_assert!(bundle.version() >= 1);
                prop_assert!(!bundle.body().contains_key("bundle"));
            }
            Err(err) => names(&err, "team/tool-guard.toml")?,
        }
    }

    #[test]
    fn signed_payloads_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let valid = payload(&header("tool-guard", 7), "[defaults]\nnew = \"warn\"\n").expect("payload");
        let text = text(&apply(valid.as_bytes(), &mutations));
        let envelope = seal_ed25519(text.as_bytes(), &keypair(1)).expect("seal");
        if let Err(err) = verify("team/tool-guard.toml", &envelope, &trust(), "tool-guard") {
            names(&err, "team/tool-guard.toml")?;
        }
    }

    #[test]
    fn bundles_round_trip(
        policy in "[a-z0-9_-]{1,20}",
        version in prop_oneof![1..=i64::MAX as u64, 1..=u64::MAX],
        issued_at in proptest::option::of("[ -~]{0,30}"),
        issued_by in proptest::option::of("\\PC{0,30}"),
        value in "\\PC{0,40}",
    ) {
        prop_assume!(policy != "trust");
        let header = BundleHeader {
            team: TEAM.into(),
            policy: policy.clone(),
            version,
            issued_at,
            issued_by,
        };
        let body = format!("[rules]\nvalue = {}\n", toml::Value::String(value.clone()));
        if i64::try_from(version).is_err() {
            // TOML cannot hold it: the writer refuses it rather than seal what never verifies.
            let err = payload(&header, &body).expect_err("a version TOML cannot hold");
            prop_assert!(err.to_string().contains("version"), "{}", err);
            return Ok(());
        }
        let payload = payload(&header, &body).expect("payload");
        // Two signatures, the first by a key the trust file does not list (a rotation).
        let admin = keypair(1);
        let next = keypair(9);
        let sig = |key: &Ed25519KeyPair| key.sign(&signing_input(payload.as_bytes())).as_ref().to_vec();
        let (next_sig, admin_sig) = (sig(&next), sig(&admin));
        let envelope = seal(
            payload.as_bytes(),
            &[(public(&next).key_id(), &next_sig), (public(&admin).key_id(), &admin_sig)],
        )
        .expect("seal");
        let file = format!("team/{policy}.toml");
        let bundle = verify(&file, &envelope, &trust(), &policy).expect("verifies");
        prop_assert_eq!(bundle.header(), &header);
        let admin_id = public(&admin).key_id().to_owned();
        prop_assert_eq!(bundle.key_id(), admin_id.as_str());
        let rules: toml::Table = bundle.parse().expect("the body");
        prop_assert_eq!(&rules["rules"]["value"], &toml::Value::String(value));
    }

    #[test]
    fn rosters_of_arbitrary_text(text in TOMLISH) {
        // As a signed team policy named `roster` (how plugins read it).
        let envelope = seal_ed25519(
            payload(&header(ROSTER, 1), "").expect("header").replace('\n', &format!("\n{text}\n")).as_bytes(),
            &keypair(1),
        )
        .expect("seal");
        if let Ok(bundle) = verify("team/roster.toml", &envelope, &trust(), ROSTER) {
            if let Err(err) = bundle.parse::<Roster>() {
                names(&err, "team/roster.toml")?;
            }
        }
        // And its body alone.
        let _ = toml::from_str::<Roster>(&text);
    }

    #[test]
    fn rosters_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let text = text(&apply(roster_body().as_bytes(), &mutations));
        match toml::from_str::<RosterFile>(&text) {
            Ok(file) => {
                // What the writer writes of it reads back to the same entries.
                let again: RosterFile = toml::from_str(&toml::to_string(&file).expect("writes")).expect("re-reads");
                prop_assert_eq!(&again, &file);
                match file.check() {
                    Ok(roster) => prop_assert_eq!(roster.members().len(), file.members.len()),
                    Err(reason) => prop_assert!(reason.contains("member"), "{}", reason),
                }
            }
            Err(_) => prop_assert!(toml::from_str::<Roster>(&text).is_err()),
        }
    }

    #[test]
    fn rosters_round_trip(
        members in proptest::collection::btree_map(
            "[A-Za-z0-9._@+-]{1,30}",
            (proptest::collection::vec("[a-z0-9_-]{1,12}", 0..3), any::<u8>()),
            0..6,
        ),
    ) {
        // Distinct keys: one seed per member.
        let members: Vec<RosterEntry> = members
            .into_iter()
            .enumerate()
            .map(|(i, (id, (roles, _)))| RosterEntry {
                id,
                roles,
                public_key: public(&keypair(u8::try_from(i).expect("few") + 100)).to_pem(),
            })
            .collect();
        let file = RosterFile { members };
        let text = toml::to_string(&file).expect("writes");
        let roster: Roster = toml::from_str(&text).expect("reads back");
        prop_assert_eq!(roster.members().len(), file.members.len());
        for (member, entry) in roster.members().iter().zip(&file.members) {
            prop_assert_eq!(member.id(), entry.id.as_str());
            prop_assert_eq!(member.roles(), entry.roles.as_slice());
            prop_assert_eq!(member.key().to_pem(), entry.public_key.clone());
        }
    }

    #[test]
    fn approvals_of_arbitrary_text(text in TOMLISH) {
        let file = "team/tool-guard.approvals.toml";
        let err = verify_approval(file, &text, TEAM, "tool-guard", "approver", alice_signer)
            .expect_err("nothing verifies that alice did not sign");
        names(&err, file)?;
        // Hostile text signed by alice herself: its header is parsed.
        let envelope = seal_approval_ed25519(text.as_bytes(), &keypair(2)).expect("seal");
        match verify_approval(file, &envelope, TEAM, "tool-guard", "approver", alice_signer) {
            Ok(approval) => {
                prop_assert_eq!(approval.member(), "alice");
                prop_assert_eq!(&approval.header().team, TEAM);
            }
            Err(err) => names(&err, file)?,
        }
    }

    #[test]
    fn approvals_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let file = "team/tool-guard.approvals.toml";
        let valid = approval("create_issue");
        let signed = verify_approval(file, &valid, TEAM, "tool-guard", "approver", alice_signer).expect("valid");
        let text = text(&apply(valid.as_bytes(), &mutations));
        match verify_approval(file, &text, TEAM, "tool-guard", "approver", alice_signer) {
            Ok(approval) => prop_assert_eq!(approval.payload_sha256(), signed.payload_sha256()),
            Err(err) => names(&err, file)?,
        }
    }

    #[test]
    fn approvals_files_mutated(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let team = Team::new();
        let file = "team/tool-guard.approvals.toml";
        let one = approval("create_issue");
        let two = approval("delete_issue");
        let valid = approvals_text(TEAM, "tool-guard", &[&one, &two]).expect("writes");
        let signed: Vec<String> = [&one, &two]
            .iter()
            .map(|e| {
                verify_approval(file, e, TEAM, "tool-guard", "approver", alice_signer)
                    .expect("valid")
                    .payload_sha256()
                    .to_owned()
            })
            .collect();
        team.write(file, &text(&apply(valid.as_bytes(), &mutations)));
        let load = load_approvals::<toml::Table>(&team.host, "tool-guard", "approver");
        for approval in &load.approvals {
            prop_assert!(signed.contains(&approval.approval.payload_sha256().to_owned()));
        }
        for problem in &load.problems {
            names(problem, file)?;
        }
    }

    #[test]
    fn approvals_files_round_trip(names_approved in proptest::collection::vec("\\PC{1,30}", 0..5)) {
        let team = Team::new();
        let envelopes: Vec<String> = names_approved.iter().map(|n| approval(n)).collect();
        let refs: Vec<&str> = envelopes.iter().map(String::as_str).collect();
        team.write(
            "team/tool-guard.approvals.toml",
            &approvals_text(TEAM, "tool-guard", &refs).expect("writes"),
        );
        let load = load_approvals::<toml::Table>(&team.host, "tool-guard", "approver");
        prop_assert!(load.problems.is_empty(), "{:?}", load.problems);
        let read: Vec<&str> = load
            .approvals
            .iter()
            .map(|a| a.value["name"].as_str().expect("a name"))
            .collect();
        let written: Vec<&str> = names_approved.iter().map(String::as_str).collect();
        prop_assert_eq!(read, written);
    }

    #[test]
    fn local_policies_of_arbitrary_text(text in TOMLISH) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tool-guard.toml"), &text).expect("write");
        let host = PolicyDir::new(dir.path(), dir.path().join("state"));
        if let Err(err) = load_local::<toml::Table>(&host, "tool-guard") {
            names(&err, "tool-guard.toml")?;
        }
    }
}

#[test]
fn the_signing_input_of_approvals_differs_from_that_of_policies() {
    // An approval's signature can never pass for a team policy's, nor the other way round.
    assert_ne!(approval_signing_input(b"x"), signing_input(b"x"));
}

/// Found by `bundles_round_trip`: `payload` wrote a version above `i64::MAX` (TOML integers are
/// 64-bit signed) into a payload whose own reader then refused it, so a bundle could be sealed
/// and published that no machine would ever verify. The writer now refuses such a version.
#[test]
fn a_version_toml_cannot_hold_is_refused_when_sealing() {
    let body = "[rules]\n";
    for version in [i64::MAX as u64 + 1, u64::MAX] {
        let err = payload(&header("tool-guard", version), body).expect_err("refused");
        assert!(err.to_string().contains("version must be 1 to"), "{err}");
    }
    let text = payload(&header("tool-guard", i64::MAX as u64), body).expect("the largest");
    let envelope = seal_ed25519(text.as_bytes(), &keypair(1)).expect("seal");
    let bundle =
        verify("team/tool-guard.toml", &envelope, &trust(), "tool-guard").expect("verifies");
    assert_eq!(bundle.version(), i64::MAX as u64);
}
