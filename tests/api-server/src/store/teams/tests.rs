//! The team tables under concurrent writers: several members publishing, approving and sending
//! sessions at once lose nothing, and two admins publishing the same version cannot both win.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::config::DbLocation;
use crate::store::customers::{Customer, FileCustomer};

fn store_with_team() -> Arc<Store> {
    let store = Store::open(&DbLocation::Memory).expect("opens");
    let customers: Vec<FileCustomer> = (0..8)
        .map(|i| FileCustomer {
            customer: Customer {
                id: format!("c{i}"),
                api_key_sha256: format!("{i:064x}"),
                tier: km_plugin_sdk::Tier::Enterprise,
                features: vec![],
                subscription_end: i64::MAX,
                customer_token: None,
                seat_limit: None,
            },
            entry_sha256: format!("{i}"),
        })
        .collect();
    store.sync_file_customers(&customers).expect("customers");
    store
        .sync_file_team(&FileTeam {
            name: "acme".into(),
            admin_keys: vec![],
            members: (0..8)
                .map(|i| (format!("m{i}"), format!("c{i}"), Role::Member))
                .collect(),
        })
        .expect("team");
    Arc::new(store)
}

#[test]
fn concurrent_publications_of_one_version_store_it_once() {
    let store = store_with_team();
    let outcomes: Vec<PolicyAdded> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .add_team_policy(&NewPolicy {
                        team: "acme",
                        policy: "tool-guard",
                        version: 3,
                        payload_sha256: &format!("{:064x}", i % 2),
                        key_id: "k",
                        envelope: "e",
                        published_by: None,
                    })
                    .expect("writes")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let stored = outcomes
        .iter()
        .filter(|o| **o == PolicyAdded::Stored)
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        PolicyAdded::Stored | PolicyAdded::Held | PolicyAdded::Equivocation
    )));
    let latest = store.latest_team_policies("acme").expect("reads");
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].version, 3);
}

#[test]
fn concurrent_members_lose_no_session_and_no_approval() {
    let store = store_with_team();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..25 {
                    let member = format!("m{i}");
                    store
                        .add_team_session("acme", &member, &format!("s{n}"), n, &json!({"n": n}))
                        .expect("session");
                    store
                        .add_team_approval(
                            "acme",
                            "tool-guard",
                            &member,
                            &format!("{:060x}{i:02x}{n:02x}", 0),
                            "e",
                            true,
                        )
                        .expect("approval");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let sessions = store.team_sessions("acme", None, None, 500).expect("reads");
    assert_eq!(sessions.len(), 200);
    let approvals = store
        .team_approvals("acme", "tool-guard", 4096)
        .expect("reads");
    assert_eq!(approvals.len(), 200);
    assert!(approvals.windows(2).all(|w| w[0].seq < w[1].seq));
}
