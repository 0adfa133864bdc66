//! Interception (ABI 1.1) end to end: the real `km monitor`, the real signed `test-intercept`
//! and `test-observer` cdylibs, real child processes. Replacement changes exactly the targeted
//! lines; a blocked request is answered with its id and never reaches the server (even while the
//! server is in the middle of a long line); a blocked response becomes an error for its id; an
//! interceptor that panics, errs, hangs or answers badly fails closed (or, when its manifest or
//! config.toml says so, open) and the session goes on; a blocked notification is dropped; several
//! interceptors run by priority (the plugin's, or config.toml's), then name, each on the previous
//! one's output; without the signed capability nothing is intercepted; events reach other plugins;
//! a lossless observer misses nothing under a flood while a lossy one drops.

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use km_tests::KmEnv;
use serde_json::Value;

const INTERCEPT: &[&str] = &["--capability", "intercept"];

/// `km monitor` on `child` with the environment's plugins.
fn monitor(env: &KmEnv, child: &[&str]) -> Command {
    let mut cmd = env.km();
    cmd.arg("monitor").arg("--").args(child);
    cmd.env("KM_GRACE_MS", "300");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `km monitor` on `child`, feeding `input`; (success, stdout, stderr).
fn run(env: &KmEnv, child: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    let child = monitor(env, child).spawn().expect("km starts");
    let (status, stdout, stderr) = crate::monitor::exchange(child, input.to_vec());
    (
        status.success(),
        stdout,
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A server that writes what it reads to `record` and answers nothing.
fn recorder(record: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("cat > '{}'", record.display()),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What test-observer recorded.
fn seen(env: &KmEnv) -> Vec<Value> {
    let text = std::fs::read_to_string(env.data_dir("test-observer").join("seen.jsonl"))
        .expect("test-observer wrote seen.jsonl");
    text.lines().map(json).collect()
}

fn tool_call(id: u64, text: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
    )
}

#[test]
fn a_replacing_interceptor_changes_exactly_its_lines_in_a_mixed_stream() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config(
        "[plugins.test-intercept]\ndirections = \"client-to-server\"\nkinds = \"all\"\nreplace = [\"SECRET\", \"[gone]\"]\n",
    );
    let mixed = crate::monitor::mixed_messages(100_000);
    // Every 1000th line carries the target; the expected output has it replaced.
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for (i, line) in mixed.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            input.push(b'\n');
            expected.push(b'\n');
        }
        if i % 1000 == 7 {
            let changed = format!(
                r#"{{"jsonrpc":"2.0","id":"x{i}","method":"tools/call","params":{{"name":"echo","arguments":{{"text":"a SECRET and SECRET"}}}}}}"#
            );
            input.extend_from_slice(changed.as_bytes());
            expected.extend_from_slice(changed.replace("SECRET", "[gone]").as_bytes());
        } else {
            input.extend_from_slice(line);
            expected.extend_from_slice(line);
        }
    }
    let (ok, stdout, stderr) = run(&env, &["cat"], &input);
    assert!(ok, "{stderr}");
    crate::monitor::assert_same_bytes(&stdout, &expected, "the echoed stream");
    let digest = |b: &[u8]| km_durable::digest::sha256_hex(b);
    assert_eq!(digest(&stdout), digest(&expected));
}

#[test]
fn a_blocked_request_is_answered_with_its_id_and_never_reaches_the_server() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.install("test-observer", "test-observer");
    env.write_config("[plugins.test-intercept]\nblock = \"FORBIDDEN\"\n");
    let record = env.dir.path().join("server-got.jsonl");
    let input = [
        tool_call(1, "fine"),
        tool_call(2, "FORBIDDEN"),
        r#"{"jsonrpc":"2.0","id":"three","method":"ping"}"#.to_owned(),
    ]
    .join("\n")
        + "\n";
    let (ok, stdout, stderr) = run(&env, &args(&recorder(&record)), input.as_bytes());
    assert!(ok, "{stderr}");
    let out = lines(&stdout);
    assert_eq!(
        out.len(),
        1,
        "only the answer to the blocked request: {out:?}"
    );
    let answer = json(&out[0]);
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["code"], -32050);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("test-intercept") && m.contains("test-rule")),
        "{answer}"
    );
    assert!(
        !out[0].contains("FORBIDDEN"),
        "the error never repeats the content"
    );
    let got = std::fs::read_to_string(&record).expect("the server's record");
    assert_eq!(
        got,
        format!(
            "{}\n{}\n",
            tool_call(1, "fine"),
            r#"{"jsonrpc":"2.0","id":"three","method":"ping"}"#
        ),
        "the server saw everything but the blocked request"
    );
    // Observers saw what was forwarded, the answer, and a verdict event without the content.
    let seen = seen(&env);
    let verdict = seen
        .iter()
        .find(|v| v["event"] == "verdict")
        .expect("a verdict event");
    assert_eq!(verdict["data"]["action"], "block");
    assert_eq!(verdict["data"]["id"], "2");
    assert_eq!(verdict["data"]["target"], "echo");
    assert!(!verdict.to_string().contains("FORBIDDEN"));
    let answered = seen
        .iter()
        .find(|v| v["kind"] == "response")
        .expect("the answer, as the client received it");
    let position = |wanted: &Value| seen.iter().position(|v| v == wanted);
    assert!(
        position(verdict) < position(answered),
        "the verdict comes before the answer it explains"
    );
    assert_eq!(answered["direction"], "response");
    assert_eq!(answered["correlation"], verdict["data"]["correlation_id"]);
    assert!(
        seen.iter()
            .all(|v| v["len"] != tool_call(2, "FORBIDDEN").len()),
        "the blocked request was not handed to observers"
    );
}

#[test]
fn the_answer_to_a_blocked_request_waits_for_the_end_of_a_line_the_server_is_writing() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config(
        "[plugins.test-intercept]\ndirections = \"client-to-server\"\nblock = \"FORBIDDEN\"\n",
    );
    // The server starts a 400,000-byte line, waits for a line from the client, then ends it.
    let half = "head -c 200000 /dev/zero | tr '\\0' A";
    let script = format!(
        "printf '{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"data\":\"'; {half}; \
         read line; {half}; printf '\"}}}}\\n'; cat >/dev/null"
    );
    let mut child = monitor(&env, &["sh", "-c", &script])
        .spawn()
        .expect("km starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    // Wait until the server is in the middle of its long line.
    let mut first = vec![0u8; 1000];
    stdout
        .read_exact(&mut first)
        .expect("the start of the long line");
    // The blocked request goes in now; then a line the server reads to finish its own (km
    // judges the first before it forwards the second, so the answer is waiting by then).
    writeln!(stdin, "{}", tool_call(9, "FORBIDDEN")).expect("write");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .expect("write");
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("the rest");
    let mut all = first;
    all.extend_from_slice(&rest);
    let status = child.wait().expect("km exits");
    let mut err = String::new();
    BufReader::new(stderr).read_to_string(&mut err).ok();
    assert!(status.success(), "{err}");
    let out = lines(&all);
    assert_eq!(out.len(), 2, "the long line whole, then the answer");
    let long_line = json(&out[0]);
    assert_eq!(
        long_line["params"]["data"].as_str().map(str::len),
        Some(400_000)
    );
    assert_eq!(json(&out[1])["id"], 9);
}

#[test]
fn a_blocked_response_becomes_an_error_for_its_id() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config(
        "[plugins.test-intercept]\ndirections = \"server-to-client\"\nmethods = [\"tools/call\"]\nblock = \"FORBIDDEN\"\n",
    );
    let server = km_tests::bin_dir().join("km-demo-server");
    let input = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_owned(),
        tool_call(2, "FORBIDDEN"),
        tool_call(3, "fine"),
    ]
    .join("\n")
        + "\n";
    let (ok, stdout, stderr) = run(
        &env,
        &[server.to_str().expect("utf-8 path")],
        input.as_bytes(),
    );
    assert!(ok, "{stderr}");
    let out: Vec<Value> = lines(&stdout).iter().map(|l| json(l)).collect();
    let by_id = |id: u64| out.iter().find(|v| v["id"] == id).expect("an answer");
    assert!(by_id(1)["result"].is_object(), "initialize passes");
    assert_eq!(
        by_id(2)["error"]["code"],
        -32050,
        "the echo of the trigger is blocked"
    );
    assert!(by_id(3)["result"].is_object(), "other calls pass");
}

/// A session where test-intercept is told to misbehave on the trigger `how`.
fn misbehaving(how: &str, extra_config: &str) -> (bool, Vec<Value>, String, String) {
    misbehaving_signed(INTERCEPT, how, extra_config)
}

/// [`misbehaving`], with test-intercept signed with `sign` (arguments to `km-sign sign`).
fn misbehaving_signed(
    sign: &[&str],
    how: &str,
    extra_config: &str,
) -> (bool, Vec<Value>, String, String) {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", sign);
    env.write_config(&format!(
        "[plugins.test-intercept]\ndirections = \"client-to-server\"\nmethods = [\"tools/call\"]\nbudget_ms = 300\n{how} = \"TRIGGER\"\n{extra_config}"
    ));
    let record = env.dir.path().join("server-got.jsonl");
    let input = [
        tool_call(1, "before"),
        tool_call(2, "TRIGGER"),
        tool_call(3, "after"),
        r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#.to_owned(),
    ]
    .join("\n")
        + "\n";
    let (ok, stdout, stderr) = run(&env, &args(&recorder(&record)), input.as_bytes());
    let answers = lines(&stdout).iter().map(|l| json(l)).collect();
    let got = std::fs::read_to_string(&record).unwrap_or_default();
    (ok, answers, got, stderr)
}

fn assert_fails_closed(how: &str, says: &str) {
    let (ok, answers, got, stderr) = misbehaving(how, "");
    assert!(ok, "the session goes on: {stderr}");
    let ids: Vec<Value> = answers.iter().map(|a| a["id"].clone()).collect();
    assert_eq!(
        ids,
        [2, 3],
        "the failed line and the later one it asked for are answered"
    );
    assert!(answers.iter().all(|a| a["error"]["code"] == -32050));
    assert_eq!(
        got,
        format!(
            "{}\n{}\n",
            tool_call(1, "before"),
            r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#
        ),
        "the server got the line before, and the ping it never asked for"
    );
    assert!(
        stderr.contains("plugin test-intercept") && stderr.contains(says),
        "{stderr}"
    );
    assert!(stderr.contains("disabled for this session"), "{stderr}");
    assert!(
        !stderr.contains("TRIGGER"),
        "no content in km's log: {stderr}"
    );
}

#[test]
fn an_interceptor_that_panics_fails_closed() {
    assert_fails_closed("panic", "panicked");
}

#[test]
fn an_interceptor_that_errs_fails_closed() {
    assert_fails_closed("fail", "failed");
}

#[test]
fn an_interceptor_that_hangs_fails_closed_and_the_session_goes_on() {
    assert_fails_closed("hang", "did not answer within its budget");
}

#[test]
fn bad_verdicts_fail_closed() {
    assert_fails_closed("two_lines", "more than one line");
    let (ok, answers, got, stderr) = misbehaving("unknown_action", "");
    assert!(ok, "{stderr}");
    // An action km does not know is a block (not a failure: the plugin stays enabled).
    let ids: Vec<Value> = answers.iter().map(|a| a["id"].clone()).collect();
    assert_eq!(ids, [2]);
    assert!(got.contains("\"after\""), "{got}");
}

#[test]
fn fail_open_lets_lines_pass_a_failed_interceptor() {
    let (ok, answers, got, stderr) =
        misbehaving("fail", "[intercept.test-intercept]\nfail_open = true\n");
    assert!(ok, "{stderr}");
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(
        got.lines().count(),
        4,
        "everything reached the server: {got}"
    );
    assert!(stderr.contains("fails open"), "{stderr}");
}

#[test]
fn a_manifest_that_says_fail_open_lets_lines_pass_a_failed_interceptor() {
    const FAIL_OPEN: &[&str] = &["--capability", "intercept", "--fail-open"];
    // No `fail_open` in config.toml: the signed manifest alone opts the plugin in.
    let (ok, answers, got, stderr) = misbehaving_signed(FAIL_OPEN, "fail", "");
    assert!(ok, "{stderr}");
    assert!(answers.is_empty(), "nothing was blocked: {answers:?}");
    assert_eq!(
        got,
        format!(
            "{}\n{}\n{}\n{}\n",
            tool_call(1, "before"),
            tool_call(2, "TRIGGER"),
            tool_call(3, "after"),
            r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#
        ),
        "everything reached the server, the failed line too"
    );
    assert!(
        stderr.contains("plugin test-intercept") && stderr.contains("fails open"),
        "{stderr}"
    );
    let env = KmEnv::new();
    let lib = env.install_signed("test-intercept", "test-intercept", FAIL_OPEN);
    let verify = env
        .km()
        .arg("verify-plugin")
        .arg(&lib)
        .output()
        .expect("verify-plugin");
    let shown = String::from_utf8_lossy(&verify.stderr);
    assert!(
        shown.contains("grants:   observe, intercept (fails open)\n"),
        "{shown}"
    );
}

#[test]
fn verify_plugin_shows_the_intercept_capability_it_grants() {
    let env = KmEnv::new();
    let lib = env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    let verify = env
        .km()
        .arg("verify-plugin")
        .arg(&lib)
        .output()
        .expect("verify-plugin");
    let shown = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{shown}");
    assert!(shown.contains("grants:   observe, intercept\n"), "{shown}");
}

#[test]
fn without_the_signed_capability_nothing_is_intercepted() {
    let env = KmEnv::new();
    env.install("test-intercept", "test-intercept");
    env.write_config("[plugins.test-intercept]\nblock = \"FORBIDDEN\"\n");
    let input = format!("{}\n", tool_call(1, "FORBIDDEN"));
    let (ok, stdout, stderr) = run(&env, &["cat"], input.as_bytes());
    assert!(ok, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout), input);
    assert!(
        stderr.contains("does not grant the intercept capability"),
        "{stderr}"
    );
    let verify = env
        .km()
        .args(["verify-plugin"])
        .arg(env.plugins.join("libtest_intercept.so"))
        .output()
        .expect("verify-plugin");
    assert!(String::from_utf8_lossy(&verify.stderr).contains("grants:   observe\n"));
}

#[test]
fn an_event_one_plugin_emits_reaches_another() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.install("test-observer", "test-observer");
    env.write_config(
        "[plugins.test-intercept]\nmethods = [\"tools/call\"]\nreplace = [\"SECRET\", \"x\"]\nemit = true\n",
    );
    let input = format!("{}\n", tool_call(1, "a SECRET"));
    let (ok, _, stderr) = run(&env, &["cat"], input.as_bytes());
    assert!(ok, "{stderr}");
    let seen = seen(&env);
    let event = seen
        .iter()
        .find(|v| v["event"] == "plugin")
        .expect("test-intercept's event");
    assert_eq!(event["data"]["plugin"], "test-intercept");
    assert_eq!(event["data"]["kind"], "finding");
    assert_eq!(event["data"]["data"]["target"], "echo");
    // The observer saw the line as forwarded, replaced.
    assert!(seen
        .iter()
        .any(|v| v["kind"] == "request" && v["len"] == tool_call(1, "a x").len()));
}

#[test]
fn a_batch_is_judged_element_by_element() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config(
        "[plugins.test-intercept]\ndirections = \"client-to-server\"\nblock = \"FORBIDDEN\"\n",
    );
    let record = env.dir.path().join("server-got.jsonl");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let batch = format!(
        "[{},{}, {initialized}]\n",
        tool_call(1, "fine"),
        tool_call(2, "FORBIDDEN"),
    );
    let (ok, stdout, stderr) = run(&env, &args(&recorder(&record)), batch.as_bytes());
    assert!(ok, "{stderr}");
    assert_eq!(json(&lines(&stdout)[0])["id"], 2);
    let got = std::fs::read_to_string(&record).expect("record");
    assert_eq!(got, format!("[{},{initialized}]\n", tool_call(1, "fine")));
}

#[test]
fn a_blocked_notification_is_dropped_and_answered_by_nothing() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config("[plugins.test-intercept]\nblock = \"FORBIDDEN\"\n");
    let record = env.dir.path().join("server-got.jsonl");
    let notification = |text: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"{text}"}}}}"#
        )
    };
    // The server sends a blocked notification and a fine one, then records what it reads: the
    // client's blocked notification must not reach it, and no error may come back for its own.
    let script = format!(
        "printf '%s\\n' '{}' '{}'; cat > '{}'",
        notification("FORBIDDEN from the server"),
        notification("fine from the server"),
        record.display()
    );
    let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
    let input = format!(
        "{}\n{}\n{ping}\n",
        notification("FORBIDDEN from the client"),
        notification("fine from the client"),
    );
    let (ok, stdout, stderr) = run(&env, &["sh", "-c", &script], input.as_bytes());
    assert!(ok, "{stderr}");
    assert_eq!(
        lines(&stdout),
        [notification("fine from the server")],
        "the client got the fine notification only, and no error for its blocked one"
    );
    assert_eq!(
        std::fs::read_to_string(&record).expect("the server's record"),
        format!("{}\n{ping}\n", notification("fine from the client")),
        "the server got the fine notification and the ping, and no error for its blocked one"
    );
}

/// A session through two interceptors: test-verdicts (priority 100), which in a `tools/call`
/// result replaces `@example.com` by `@redacted.invalid`, and test-intercept (priority 500
/// unless `settings` says otherwise), which replaces `redacted` by `C`; `config` is added to
/// config.toml. Returns the result's text as the client got it: `bob@C.invalid` when
/// test-verdicts ran first and test-intercept acted on its output, `bob@redacted.invalid` when
/// test-intercept ran first (it then finds nothing to replace). test-verdicts' library file
/// sorts first, so km loads it first: an order by name is not the order of loading.
fn chained(settings: &str, config: &str) -> String {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.place_signed(
        &env.plugins.join("a_verdicts.so"),
        &km_tests::library("test-verdicts"),
        "test-verdicts",
        "1.0.0",
        "free",
        INTERCEPT,
    );
    env.write_config(&format!(
        "[plugins.test-intercept]\nmethods = [\"tools/call\"]\nreplace = [\"redacted\", \"C\"]\n{settings}{config}"
    ));
    let result = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"mail bob@example.com"}]}}"#;
    let script = format!("read call; printf '%s\\n' '{result}'; cat >/dev/null");
    let input = format!("{}\n", tool_call(1, "hi"));
    let (ok, stdout, stderr) = run(&env, &["sh", "-c", &script], input.as_bytes());
    assert!(ok, "{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 1, "{out:?}");
    json(&out[0])["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {}", out[0]))
        .to_owned()
}

#[test]
fn interceptors_run_by_priority_and_each_sees_the_previous_ones_output() {
    // test-verdicts (100) before test-intercept (500): the second replaces what the first wrote.
    assert_eq!(chained("", ""), "mail bob@C.invalid");
    // test-intercept asks for 50: it runs first, finds no `redacted`, and test-verdicts' output
    // is final.
    assert_eq!(chained("priority = 50\n", ""), "mail bob@redacted.invalid");
}

#[test]
fn interceptors_of_equal_priority_run_by_name() {
    // Both at 100: test-intercept before test-verdicts by name, although test-verdicts is loaded
    // first.
    assert_eq!(chained("priority = 100\n", ""), "mail bob@redacted.invalid");
}

#[test]
fn config_toml_overrides_an_interceptors_priority() {
    // test-intercept asks for 50, config.toml puts it at 200, after test-verdicts.
    assert_eq!(
        chained(
            "priority = 50\n",
            "[intercept.test-intercept]\npriority = 200\n"
        ),
        "mail bob@C.invalid"
    );
    // test-verdicts, which asks for 100 and has no settings of its own, is moved after
    // test-intercept (500).
    assert_eq!(
        chained("", "[intercept.test-verdicts]\npriority = 900\n"),
        "mail bob@redacted.invalid"
    );
}

#[test]
fn a_line_longer_than_km_inspects_is_blocked_by_default() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    env.write_config(
        "[monitor]\ninspect_limit = 4096\n[plugins.test-intercept]\ndirections = \"client-to-server\"\nblock = \"FORBIDDEN\"\n",
    );
    let record = env.dir.path().join("server-got.jsonl");
    let long = tool_call(5, &"B".repeat(100_000));
    let input = format!("{long}\n{}\n", tool_call(6, "short"));
    let (ok, stdout, stderr) = run(&env, &args(&recorder(&record)), input.as_bytes());
    assert!(ok, "{stderr}");
    let answer = json(&lines(&stdout)[0]);
    assert_eq!(answer["id"], 5);
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("km-inspection-limit")));
    assert_eq!(
        std::fs::read_to_string(&record).expect("record"),
        format!("{}\n", tool_call(6, "short"))
    );
}

#[test]
fn responses_are_judged_by_their_own_method_list_when_the_plugin_gives_one() {
    let env = KmEnv::new();
    env.install_signed("test-intercept", "test-intercept", INTERCEPT);
    // It judges tools/call requests and tools/list results, not tools/call results: a result
    // past the inspection limit is not its business, so it is not blocked for it.
    env.write_config(
        "[monitor]\ninspect_limit = 4096\n[plugins.test-intercept]\nmethods = [\"tools/call\"]\nresponse_methods = [\"tools/list\"]\n",
    );
    let big = "C".repeat(20_000);
    let call = tool_call(1, "x");
    let call_result = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{big}"}}]}}}}"#
    );
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let list_result =
        format!(r#"{{"jsonrpc":"2.0","id":2,"result":{{"tools":[],"pad":"{big}"}}}}"#);
    // A server that answers each request once it has read it.
    let script = format!(
        "read a; printf '%s\\n' '{call_result}'; read b; printf '%s\\n' '{list_result}'; cat >/dev/null"
    );
    let input = format!("{call}\n{list}\n");
    let (ok, stdout, stderr) = run(&env, &["sh", "-c", &script], input.as_bytes());
    assert!(ok, "{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], call_result, "the tools/call result passes whole");
    let blocked = json(&out[1]);
    assert_eq!(blocked["id"], 2);
    assert!(blocked["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("km-inspection-limit")));
}

#[test]
fn a_lossless_observer_misses_nothing_under_a_flood_while_a_lossy_one_drops() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    env.install("test-slow", "test-slow");
    env.write_config("[plugins.test-observer]\nlossless = true\nslow_us = 20\n");
    let count = 20_000;
    let input: String = (0..count)
        .map(|i| format!("{}\n", tool_call(i, "flood")))
        .collect();
    let (ok, stdout, stderr) = run(&env, &["cat"], input.as_bytes());
    assert!(ok, "{stderr}");
    assert_eq!(stdout.len(), input.len());
    let seen = seen(&env);
    let messages = seen.iter().filter(|v| v.get("seq").is_some()).count();
    assert_eq!(messages, 2 * count as usize, "every line, both ways");
    assert!(
        seen.iter()
            .any(|v| v["event"] == "end" && v["data"]["drops"] == 0),
        "no drops for the lossless observer"
    );
    assert!(
        stderr.contains("plugin test-slow missed"),
        "the lossy one dropped: {stderr}"
    );
}

#[test]
fn a_lossless_observer_gets_a_gap_event_when_backpressure_is_refused() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    env.write_config(
        "[monitor]\nbackpressure = false\n[plugins.test-observer]\nlossless = true\nslow_us = 500\n",
    );
    let count = 20_000;
    let input: String = (0..count)
        .map(|i| format!("{}\n", tool_call(i, "flood")))
        .collect();
    let (ok, _, stderr) = run(&env, &["cat"], input.as_bytes());
    assert!(ok, "{stderr}");
    let seen = seen(&env);
    let gaps: u64 = seen
        .iter()
        .filter(|v| v["event"] == "gap")
        .filter_map(|v| v["data"]["missed"].as_u64())
        .sum();
    let messages = seen.iter().filter(|v| v.get("seq").is_some()).count() as u64;
    assert!(gaps > 0, "the relay did not wait, so messages were missed");
    assert!(
        messages + gaps >= 2 * count - 1,
        "what was handled plus what was reported missing covers the stream: {messages} + {gaps}"
    );
}

fn read_child(mut child: Child) -> (bool, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .ok();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .ok();
    let status = child.wait().expect("exits");
    (status.success(), out, err)
}

#[test]
fn observers_get_progress_correlated_to_its_request() {
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    let request = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"tok"}}}"#;
    let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok","progress":1}}"#;
    // `cat` sends the progress back, as a server would.
    let mut child = monitor(&env, &["cat"]).spawn().expect("km starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{request}\n{progress}").expect("write");
    }
    let (ok, _, err) = read_child(child);
    assert!(ok, "{err}");
    let seen = seen(&env);
    let progress_back = seen
        .iter()
        .find(|v| v["direction"] == "response" && v["method"] == "notifications/progress")
        .expect("the progress notification from the server side");
    assert_eq!(progress_back["correlation"], "c1");
}

#[test]
fn a_lossless_plugin_that_stops_taking_messages_cannot_hold_the_session() {
    let env = KmEnv::new();
    env.install("test-hang", "test-hang");
    let count = 20_000;
    let input: String = (0..count)
        .map(|i| format!("{}\n", tool_call(i, "flood")))
        .collect();
    // Every plugin lossless, and a short stall limit for the test.
    let mut cmd = env.km();
    cmd.args(["monitor", "--lossless", "--", "cat"])
        .env("KM_GRACE_MS", "300")
        .env("KM_LOSSLESS_STALL_MS", "500")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("km starts");
    let (status, stdout, stderr) = crate::monitor::exchange(child, input.clone().into_bytes());
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.len(), input.len(), "the stream went through");
    assert!(
        stderr.contains("plugin test-hang asked for every message but has taken none"),
        "{stderr}"
    );
}
