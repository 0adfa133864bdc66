//! The commands against real pin files: what `list` and `diff` show, what `approve` and
//! `forget` change, and their errors.

use std::cell::RefCell;
use std::collections::HashSet;

use serde_json::{json, Value};

use super::*;
use crate::definition::Definition;
use crate::guard::{self, Context};
use crate::poison::Scanner;
use crate::policy::Policy;

const ID: &str = "0123456789abcdef";
const OTHER: &str = "fedcba9876543210";
const PLAIN: Style = Style { color: false };

/// Pins `tools` for server `id` in one list check.
fn session(store: &Store, id: &str, first: bool, tools: &[Value]) {
    let record = guard::record(
        id,
        &format!("node {id}.js"),
        &["node".into(), format!("{id}.js")],
        Some(json!({"name": format!("demo-{id}"), "version": "1.0"})),
        "2025-01-01T00:00:00Z",
    );
    let policy = Policy::default();
    let scanner = Scanner::default();
    let ctx = Context {
        record: &record,
        first_session: first,
        policy: &policy,
        scanner: &scanner,
        now: "2025-01-02T00:00:00Z",
    };
    let definitions: Vec<Option<Definition>> = tools
        .iter()
        .map(|t| Definition::from_element(Kind::Tool, t.clone()))
        .collect();
    let all: HashSet<String> = definitions
        .iter()
        .flatten()
        .map(|d| d.name.clone())
        .collect();
    store
        .update(id, Duration::from_secs(5), |pins| {
            guard::check_list(pins, &ctx, Kind::Tool, &definitions, Some(&all))
        })
        .expect("checked");
}

struct Run {
    code: i32,
    out: String,
    err: String,
    events: Vec<Value>,
}

fn run(store: &Store, args: &[&str]) -> Run {
    let events = RefCell::new(Vec::new());
    let emit = |e: &Value| events.borrow_mut().push(e.clone());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = run_with(&emit, store, &args, PLAIN);
    Run {
        code: output.exit_code,
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
        events: events.into_inner(),
    }
}

fn echo(description: &str) -> Value {
    json!({"name": "echo", "description": description, "inputSchema": {"type": "object"}})
}

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(dir.path());
    session(&store, ID, true, &[echo("Echoes"), json!({"name": "add"})]);
    session(
        &store,
        ID,
        false,
        &[echo("Echoes, backwards"), json!({"name": "add"})],
    );
    session(&store, OTHER, true, &[json!({"name": "ping"})]);
    (dir, store)
}

#[test]
fn list_shows_servers_definitions_and_pin_states() {
    let (_dir, store) = setup();
    let r = run(&store, &["list"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out
            .contains(&format!("node {ID}.js  {ID}  serverInfo: demo-{ID} 1.0")),
        "{}",
        r.out
    );
    let echo_line = r
        .out
        .lines()
        .find(|l| l.contains(" echo "))
        .expect("echo listed");
    assert!(echo_line.contains("HELD"), "{echo_line}");
    assert!(echo_line.contains("changed (description)"), "{echo_line}");
    let add_line = r
        .out
        .lines()
        .find(|l| l.contains(" add "))
        .expect("add listed");
    assert!(
        add_line.contains("pinned") && add_line.contains("first use"),
        "{add_line}"
    );
    assert!(r.out.contains("ping"));
    assert!(r.out.contains(&format!(
        "1 pending: review with `km plugin tool-guard diff {ID} NAME`"
    )));
    // One server, by label or serverInfo name.
    let one = run(&store, &["list", &format!("demo-{OTHER}")]);
    assert!(
        one.out.contains("ping") && !one.out.contains("echo"),
        "{}",
        one.out
    );
}

#[test]
fn diff_shows_the_change_and_how_to_approve_it() {
    let (_dir, store) = setup();
    let r = run(&store, &["diff", &ID[..6], "echo"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("tool echo of server"), "{}", r.out);
    assert!(r.out.contains("changed (held)"), "{}", r.out);
    assert!(
        r.out
            .contains("  ~ description: \"Echoes\" -> \"Echoes, backwards\""),
        "{}",
        r.out
    );
    assert!(r.out.contains("unchanged: inputSchema, name"), "{}", r.out);
    assert!(r.out.contains(&format!(
        "to approve: km plugin tool-guard approve {ID} echo --sha256 "
    )));
    let none = run(&store, &["diff", ID, "add"]);
    assert!(none.out.contains("no pending change"), "{}", none.out);
    let unknown = run(&store, &["diff", ID, "nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.err.contains("has no definition named \"nope\""),
        "{}",
        unknown.err
    );
    let server = run(&store, &["diff", "nosuch", "echo"]);
    assert_eq!(server.code, 2);
    assert!(
        server.err.contains("no pinned server matches \"nosuch\""),
        "{}",
        server.err
    );
    assert!(
        server.err.contains(ID),
        "lists the known servers: {}",
        server.err
    );
}

#[test]
fn approve_makes_the_reviewed_pending_definition_the_pin() {
    let (_dir, store) = setup();
    let stale = run(&store, &["approve", ID, "echo", "--sha256", "00000000"]);
    assert_eq!(stale.code, 2);
    assert!(stale.err.contains("review it again"), "{}", stale.err);
    let pending = store.read(ID).expect("reads").expect("file").tools["echo"]
        .pending
        .clone()
        .expect("pending");
    let r = run(
        &store,
        &["approve", ID, "echo", "--sha256", &pending.sha256[..12]],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("approved tool echo of server"), "{}", r.out);
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0]["change"], "approved");
    assert_eq!(r.events[0]["sha256"], pending.sha256.as_str());
    assert!(
        !r.events[0].to_string().contains("backwards"),
        "no content in events"
    );
    let pin = store.read(ID).expect("reads").expect("file").tools["echo"].clone();
    assert!(pin.pending.is_none());
    let trusted = pin.trusted.expect("trusted");
    assert_eq!(
        (trusted.sha256, trusted.by.as_str()),
        (pending.sha256, BY_USER)
    );
    let again = run(&store, &["approve", ID, "echo"]);
    assert_eq!(again.code, 2);
    assert!(again.err.contains("no pending change"), "{}", again.err);
}

#[test]
fn approve_all_and_forget() {
    let (_dir, store) = setup();
    session(
        &store,
        OTHER,
        false,
        &[json!({"name": "ping", "description": "now different"})],
    );
    let r = run(&store, &["approve", "--all"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out.lines().filter(|l| l.starts_with("approved")).count(),
        2,
        "{}",
        r.out
    );
    assert_eq!(r.events.len(), 2);
    let nothing = run(&store, &["approve", "--all"]);
    assert!(
        nothing.out.contains("nothing to approve"),
        "{}",
        nothing.out
    );
    let forgot = run(&store, &["forget", &format!("node {OTHER}.js")]);
    assert_eq!(forgot.code, 0, "{}", forgot.err);
    assert!(forgot.out.contains("trust on first use"));
    assert_eq!(store.ids().expect("ids"), [ID]);
}

#[test]
fn a_corrupt_pin_file_is_named_and_the_others_are_still_listed() {
    let (_dir, store) = setup();
    std::fs::write(store.path(OTHER), b"not json").expect("write");
    let r = run(&store, &["list"]);
    assert_eq!(r.code, 2);
    assert!(
        r.out.contains("echo"),
        "the readable server is listed: {}",
        r.out
    );
    assert!(
        r.err.contains(&store.path(OTHER).display().to_string()),
        "{}",
        r.err
    );
    assert!(r.err.contains("corrupt"), "{}", r.err);
    let diff = run(&store, &["diff", OTHER, "ping"]);
    assert!(diff.err.contains("corrupt"), "{}", diff.err);
    // approve --all approves the readable servers and names the corrupt one.
    let all = run(&store, &["approve", "--all"]);
    assert_eq!(all.code, 2);
    assert!(all.out.contains("approved tool echo"), "{}", all.out);
    assert!(all.err.contains("corrupt"), "{}", all.err);
    let forgot = run(&store, &["forget", OTHER]);
    assert_eq!(forgot.code, 0, "{}", forgot.err);
    assert_eq!(run(&store, &["list"]).code, 0);
}

#[test]
fn usage_errors_say_what_is_wrong() {
    let (_dir, store) = setup();
    for (args, needle) in [
        (&["frobnicate"][..], "unknown command"),
        (&["diff", ID][..], "usage: diff"),
        (&["approve"][..], "usage: approve"),
        (&["approve", ID, "echo", "--kind", "widget"][..], "--kind"),
        (&["list", "--verbose"][..], "unknown option --verbose"),
        (&["forget"][..], "usage: forget"),
    ] {
        let r = run(&store, args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.err.contains(needle), "{args:?}: {}", r.err);
    }
    let help = run(&store, &["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.out.contains("approve --all"));
}
