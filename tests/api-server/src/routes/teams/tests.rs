//! The team endpoints in process, on the state the real start-up builds (a customers file and a
//! teams directory in a temporary directory): who may do what, what is verified, and what a
//! change of the teams directory does.

use km_policy::team::{
    approval_payload, payload, seal_approval_ed25519, seal_ed25519, AdminKey, ApprovalHeader,
    BundleHeader,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

use crate::http::{Method, Request, Response};
use crate::routes::router;
use crate::state::AppState;
use crate::testing::{customer, write_customers, write_file, Fixture};

fn keypair() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generates");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parses")
}

fn public(key: &Ed25519KeyPair) -> AdminKey {
    AdminKey::from_raw(key.public_key().as_ref().try_into().expect("32 bytes"))
}

struct Team {
    fixture: Fixture,
    state: AppState,
    admin: Ed25519KeyPair,
}

const TEAM_TOML: &str = r#"
[[members]]
id = "alice"
customer = "cust_a"
role = "approver"

[[members]]
id = "bob"
customer = "cust_b"
role = "member"

[[members]]
id = "carol"
customer = "cust_c"
role = "admin"
"#;

impl Team {
    fn new() -> Team {
        let fixture = Fixture::new();
        write_customers(
            &fixture.customers(),
            &[
                customer("cust_a", "key-a", "enterprise"),
                customer("cust_b", "key-b", "enterprise"),
                customer("cust_c", "key-c", "enterprise"),
                customer("cust_d", "key-d", "enterprise"),
                customer("cust_p", "key-p", "pro"),
            ],
        );
        let admin = keypair();
        std::fs::create_dir_all(fixture.path("teams/acme")).expect("mkdir");
        Team::write_team(&fixture, &admin, TEAM_TOML);
        let mut config = fixture.config();
        config.teams_dir = Some(fixture.path("teams"));
        let state = fixture.state(&config);
        Team {
            fixture,
            state,
            admin,
        }
    }

    fn write_team(fixture: &Fixture, admin: &Ed25519KeyPair, members: &str) {
        let text = format!(
            "[[admin_keys]]\npublic_key = \"\"\"\n{}\"\"\"\n{members}",
            public(admin).to_pem()
        );
        write_file(&fixture.path("teams/acme/team.toml"), &text);
    }

    /// A token for the customer of `api_key` (`key-x` is `cust_x`'s), asked as their build
    /// asks: signed with its stamped credentials.
    fn token(&self, api_key: &str) -> String {
        let customer = format!("cust_{}", api_key.trim_start_matches("key-"));
        let request = crate::testing::signed_auth_of(
            "team-collaboration",
            "enterprise",
            api_key,
            &customer,
            crate::store::now(),
            &crate::testing::nonce(),
        );
        let answer = router().handle(&self.state, &request);
        assert_eq!(answer.status, 200, "{:?}", answer.body_json());
        answer.body_json()["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    fn call(&self, api_key: Option<&str>, method: Method, target: &str, body: &Value) -> Response {
        let mut request = Request::new(method, target);
        if let Some(key) = api_key {
            request.headers.push((
                "authorization".into(),
                format!("Bearer {}", self.token(key)),
            ));
        }
        if !body.is_null() {
            request.body = body.to_string().into_bytes();
        }
        router().handle(&self.state, &request)
    }

    fn get(&self, api_key: &str, target: &str) -> Response {
        self.call(Some(api_key), Method::Get, target, &Value::Null)
    }

    fn post(&self, api_key: &str, target: &str, body: &Value) -> Response {
        self.call(Some(api_key), Method::Post, target, body)
    }

    fn bundle(&self, key: &Ed25519KeyPair, policy: &str, version: u64, body: &str) -> String {
        let header = BundleHeader {
            team: "acme".into(),
            policy: policy.into(),
            version,
            issued_at: None,
            issued_by: None,
        };
        let text = payload(&header, body).expect("payload");
        seal_ed25519(text.as_bytes(), key).expect("seal")
    }
}

fn approval(key: &Ed25519KeyPair, member: &str, name: &str) -> String {
    let header = ApprovalHeader {
        team: "acme".into(),
        policy: "tool-guard".into(),
        member: member.into(),
        issued_at: None,
    };
    let text = approval_payload(
        &header,
        &format!("server = \"demo\"\nname = \"{name}\"\nsha256 = \"00\"\n"),
    )
    .expect("payload");
    seal_approval_ed25519(text.as_bytes(), key).expect("seal")
}

#[test]
fn only_members_of_the_team_with_an_enterprise_token_get_in() {
    let t = Team::new();
    let me = t.get("key-a", "/api/teams/acme/me");
    assert_eq!(me.status, 200, "{:?}", me.body_json());
    assert_eq!(me.body_json()["member"], "alice");
    assert_eq!(me.body_json()["role"], "approver");
    assert_eq!(
        me.body_json()["admin_key_ids"],
        json!([public(&t.admin).key_id()])
    );
    let outsider = t.get("key-d", "/api/teams/acme/me");
    assert_eq!(outsider.status, 403);
    assert!(outsider.body_json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("not a member of team acme")));
    // An unknown team answers exactly like a team one is not in.
    let unknown = t.get("key-a", "/api/teams/nope/me");
    assert_eq!(unknown.status, 403);
    assert_eq!(t.get("key-p", "/api/teams/acme/me").status, 403, "Pro");
    let anonymous = t.call(None, Method::Get, "/api/teams/acme/me", &Value::Null);
    assert_eq!(anonymous.status, 401);
}

#[test]
fn an_admin_publishes_signed_versions_and_nothing_else_gets_through() {
    let t = Team::new();
    let v2 = t.bundle(
        &t.admin,
        "team-collaboration",
        2,
        "blocked_tools = [\"rm\"]\n",
    );
    let publish = |key: &str, policy: &str, envelope: &str| {
        t.post(
            key,
            "/api/teams/acme/policies",
            &json!({"policy": policy, "envelope": envelope}),
        )
    };
    assert_eq!(publish("key-c", "team-collaboration", &v2).status, 201);
    assert_eq!(publish("key-c", "team-collaboration", &v2).status, 200);
    let other = t.bundle(&t.admin, "team-collaboration", 2, "blocked_tools = []\n");
    assert_eq!(publish("key-c", "team-collaboration", &other).status, 409);
    let v1 = t.bundle(&t.admin, "team-collaboration", 1, "");
    let older = publish("key-c", "team-collaboration", &v1);
    assert_eq!(
        (older.status, older.body_json()["latest"].clone()),
        (409, json!(2))
    );
    let forged = t.bundle(&keypair(), "team-collaboration", 3, "");
    let refused = publish("key-c", "team-collaboration", &forged);
    assert_eq!(refused.status, 422);
    assert!(refused.body_json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("not signed by an admin key of team acme")));
    let renamed = publish("key-c", "tool-guard", &v2);
    assert_eq!(renamed.status, 422, "a bundle under another policy's name");
    let by_member = publish(
        "key-b",
        "team-collaboration",
        &t.bundle(&t.admin, "team-collaboration", 4, ""),
    );
    assert_eq!(by_member.status, 403);
    assert!(by_member.body_json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("has the member role: only admins publish")));
    let served = t.get("key-b", "/api/teams/acme/policies").body_json();
    assert_eq!(
        served["policies"],
        json!([{"policy": "team-collaboration", "version": 2, "envelope": v2}])
    );
}

#[test]
fn the_teams_directory_brings_policies_and_member_changes() {
    let t = Team::new();
    let v5 = t.bundle(&t.admin, "tool-guard", 5, "[defaults]\nnew = \"block\"\n");
    write_file(&t.fixture.path("teams/acme/tool-guard.toml"), &v5);
    // A file that does not verify is skipped, and the rest applied.
    write_file(
        &t.fixture.path("teams/acme/roster.toml"),
        &t.bundle(&keypair(), "roster", 1, ""),
    );
    let served = t.get("key-a", "/api/teams/acme/policies").body_json();
    assert_eq!(
        served["policies"].as_array().map(Vec::len),
        Some(1),
        "{served}"
    );
    assert_eq!(served["policies"][0]["version"], 5);
    // bob leaves the team: his token no longer gets in; a broken team.toml changes nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    Team::write_team(
        &t.fixture,
        &t.admin,
        "[[members]]\nid = \"alice\"\ncustomer = \"cust_a\"\nrole = \"approver\"\n",
    );
    assert_eq!(t.get("key-b", "/api/teams/acme/me").status, 403);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_file(&t.fixture.path("teams/acme/team.toml"), "admin_keys = 3\n");
    assert_eq!(t.get("key-a", "/api/teams/acme/me").status, 200);
    assert_eq!(t.get("key-b", "/api/teams/acme/me").status, 403);
}

#[test]
fn admins_manage_members_the_directory_does_not_list() {
    let t = Team::new();
    let add = json!({"id": "dave", "customer": "cust_d", "role": "approver"});
    assert_eq!(t.post("key-b", "/api/teams/acme/members", &add).status, 403);
    assert_eq!(t.post("key-c", "/api/teams/acme/members", &add).status, 200);
    assert_eq!(
        t.get("key-d", "/api/teams/acme/me").body_json()["role"],
        "approver"
    );
    let bob = json!({"id": "bob", "customer": "cust_b", "role": "admin"});
    let managed = t.post("key-c", "/api/teams/acme/members", &bob);
    assert_eq!(managed.status, 409, "{:?}", managed.body_json());
    let bad = json!({"id": "eve", "customer": "cust_x", "role": "boss"});
    assert_eq!(t.post("key-c", "/api/teams/acme/members", &bad).status, 400);
    let listed = t.get("key-b", "/api/teams/acme/members").body_json();
    let ids: Vec<&str> = listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol", "dave"]);
}

#[test]
fn approvals_need_the_role_and_the_members_own_registered_key() {
    let t = Team::new();
    let alice = keypair();
    let bob = keypair();
    let approve = |api_key: &str, envelope: &str| {
        t.post(
            api_key,
            "/api/teams/acme/approvals",
            &json!({"policy": "tool-guard", "envelope": envelope}),
        )
    };
    let envelope = approval(&alice, "alice", "echo");
    assert_eq!(
        approve("key-a", &envelope).status,
        409,
        "no key registered yet"
    );
    let pem = public(&alice).to_pem();
    let registered = t.post("key-a", "/api/teams/acme/key", &json!({"public_key": pem}));
    assert_eq!(registered.body_json()["key_id"], public(&alice).key_id());
    // Another member cannot claim the same key.
    assert_eq!(
        t.post("key-b", "/api/teams/acme/key", &json!({"public_key": pem}))
            .status,
        409
    );
    assert_eq!(approve("key-a", &envelope).status, 201);
    assert_eq!(approve("key-a", &envelope).status, 200, "held already");
    let by_other_key = approval(&keypair(), "alice", "rm");
    assert_eq!(approve("key-a", &by_other_key).status, 422);
    let for_bob = approval(&alice, "bob", "rm");
    assert_eq!(
        approve("key-a", &for_bob).status,
        422,
        "alice speaking for bob"
    );
    t.post(
        "key-b",
        "/api/teams/acme/key",
        &json!({"public_key": public(&bob).to_pem()}),
    );
    let refused = approve("key-b", &approval(&bob, "bob", "rm"));
    assert_eq!(refused.status, 403);
    assert!(refused.body_json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("only approvers and admins approve for the team")));
    let listed = t
        .get("key-b", "/api/teams/acme/approvals?policy=tool-guard")
        .body_json();
    let approvals = listed["approvals"].as_array().expect("approvals");
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["member"], "alice");
    assert_eq!(approvals[0]["envelope"], envelope.as_str());
    assert_eq!(
        t.get("key-b", "/api/teams/acme/approvals").status,
        400,
        "policy is required"
    );
}

#[test]
fn session_summaries_are_the_callers_and_filtered_by_member_and_time() {
    let t = Team::new();
    let session = |api_key: &str, id: &str, ended_at: i64| {
        t.post(
            api_key,
            "/api/teams/acme/sessions",
            &json!({"summary": {"id": id, "ended_at": ended_at, "member": "someone-else", "tools": {"echo": {"calls": 2}}}}),
        )
    };
    assert_eq!(session("key-a", "s1", 100).status, 201);
    assert_eq!(session("key-a", "s1", 100).status, 200);
    assert_eq!(
        session("key-b", "s1", 200).status,
        201,
        "ids are per member"
    );
    assert_eq!(session("key-b", "s2", 300).status, 201);
    let bad = t.post(
        "key-a",
        "/api/teams/acme/sessions",
        &json!({"summary": {"id": 3}}),
    );
    assert_eq!(bad.status, 400);
    let all = t.get("key-c", "/api/teams/acme/sessions").body_json();
    let seen: Vec<(String, String)> = all["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["member"].as_str().unwrap_or("").to_owned(),
                s["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("bob".to_owned(), "s2".to_owned()),
            ("bob".to_owned(), "s1".to_owned()),
            ("alice".to_owned(), "s1".to_owned()),
        ]
    );
    assert_eq!(all["sessions"][2]["team"], "acme");
    let bobs = t
        .get("key-a", "/api/teams/acme/sessions?member=bob&since=250")
        .body_json();
    assert_eq!(bobs["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        t.get("key-a", "/api/teams/acme/sessions?since=x").status,
        400
    );
}

#[test]
fn the_lying_api_controls_serve_what_they_are_given() {
    let t = Team::new();
    let v2 = t.bundle(&t.admin, "team-collaboration", 2, "");
    t.post(
        "key-c",
        "/api/teams/acme/policies",
        &json!({"policy": "team-collaboration", "envelope": v2}),
    );
    let mut put = Request::new(
        Method::Put,
        "/control/teams/acme/policies/team-collaboration",
    );
    put.body = b"forged".to_vec();
    assert_eq!(router().handle(&t.state, &put).status, 200);
    let served = t.get("key-a", "/api/teams/acme/policies").body_json();
    assert_eq!(served["policies"][0]["envelope"], "forged");
    let delete = Request::new(
        Method::Delete,
        "/control/teams/acme/policies/team-collaboration",
    );
    assert_eq!(router().handle(&t.state, &delete).status, 200);
    let served = t.get("key-a", "/api/teams/acme/policies").body_json();
    assert_eq!(served["policies"][0]["envelope"], v2.as_str());
    let mut post = Request::new(Method::Post, "/control/teams/acme/approvals");
    post.body = json!({"policy": "tool-guard", "member": "bob", "envelope": "unchecked"})
        .to_string()
        .into_bytes();
    assert_eq!(router().handle(&t.state, &post).status, 200);
    let listed = t
        .get("key-a", "/api/teams/acme/approvals?policy=tool-guard")
        .body_json();
    assert_eq!(listed["approvals"][0]["member"], "bob");
}
