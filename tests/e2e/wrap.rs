//! `km wrap` and `km unwrap` through the real km on sample configurations of every supported
//! MCP client: every stdio server is wrapped, remote ones are listed and left alone, comments and
//! formatting survive, `--dry-run` changes nothing, a backup is written first, `unwrap` restores
//! a file nobody edited byte for byte and otherwise unwraps only km's entries, and a file km
//! cannot parse is refused and left untouched.

use std::path::{Path, PathBuf};

use km_tests::KmEnv;
use serde_json::Value;

/// A sample of each client's file: (client id, file name, text).
const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "claude-desktop",
        "claude_desktop_config.json",
        r#"{
  "mcpServers": {
    "everything": {
      "command": "node",
      "args": ["/opt/mcp/everything/dist/index.js", "stdio"],
      "env": { "LOG_LEVEL": "debug" }
    },
    "remote": { "url": "https://mcp.example.com/sse" }
  }
}
"#,
    ),
    (
        "claude-code",
        ".claude.json",
        r#"{"numStartups":3,"mcpServers":{"fs":{"type":"stdio","command":"npx","args":["-y","@modelcontextprotocol/server-filesystem","/tmp"],"env":{}}},"projects":{"/home/me/app":{"mcpServers":{"db":{"command":"uvx","args":["mcp-server-sqlite"]},"web":{"type":"http","url":"http://localhost:3000/mcp"}}}}}"#,
    ),
    (
        "cursor",
        "mcp.json",
        "{\n  \"mcpServers\": {\n    \"git\": { \"command\": \"uvx\", \"args\": [\"mcp-server-git\"] }\n  }\n}\n",
    ),
    (
        "vscode",
        "mcp.json",
        "{\n\t// Servers for this machine.\n\t\"servers\": {\n\t\t\"time\": {\n\t\t\t\"type\": \"stdio\",\n\t\t\t\"command\": \"uvx\", // via uv\n\t\t\t\"args\": [\"mcp-server-time\"],\n\t\t},\n\t},\n\t\"inputs\": [],\n}\n",
    ),
    (
        "windsurf",
        "mcp_config.json",
        "{\"mcpServers\": {\"memory\": {\"command\": \"npx\", \"args\": [\"-y\", \"@modelcontextprotocol/server-memory\"]}, \"docs\": {\"serverUrl\": \"https://docs.example.com/mcp\"}}}",
    ),
];

fn write_samples(env: &KmEnv) -> Vec<(&'static str, PathBuf, &'static str)> {
    SAMPLES
        .iter()
        .map(|(client, name, text)| {
            let dir = env.dir.path().join("clients").join(client);
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            (*client, path, *text)
        })
        .collect()
}

fn km_wrap(
    env: &KmEnv,
    verb: &str,
    client: &str,
    path: &Path,
    extra: &[&str],
) -> std::process::Output {
    env.km()
        .arg(verb)
        .args(["--client", client, "--config"])
        .arg(path)
        .args(extra)
        .output()
        .expect("km runs")
}

/// Every stdio server's (command, args) in a client's file, strict JSON or not.
fn stdio_servers(text: &str) -> Vec<(String, Vec<String>)> {
    // The VS Code sample has comments and trailing commas: strip them for serde_json.
    let cleaned: String = text
        .lines()
        .map(|l| l.split(" //").next().unwrap_or(l))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(",\n\t\t},", "\n\t\t},")
        .replace(",\n\t},", "\n\t},")
        .replace(",\n}", "\n}")
        .replace("],\n\t\t}", "]\n\t\t}");
    let value: Value = serde_json::from_str(&cleaned).unwrap_or_else(|e| panic!("{e}: {cleaned}"));
    let mut found = Vec::new();
    let mut tables = vec![&value["mcpServers"], &value["servers"]];
    if let Some(projects) = value["projects"].as_object() {
        tables.extend(projects.values().map(|p| &p["mcpServers"]));
    }
    for table in tables.into_iter().filter_map(Value::as_object) {
        for entry in table.values() {
            if let Some(command) = entry["command"].as_str() {
                let args = entry["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                found.push((command.to_owned(), args));
            }
        }
    }
    found
}

#[test]
fn every_clients_stdio_servers_are_wrapped_and_unwrapped_byte_for_byte() {
    let env = KmEnv::new();
    let km = km_tests::km_bin().canonicalize().expect("km's path");
    for (client, path, original) in write_samples(&env) {
        // A dry run shows a diff and changes nothing.
        let dry = km_wrap(&env, "wrap", client, &path, &["--dry-run"]);
        assert!(dry.status.success(), "{}", km_tests::describe(&dry));
        let shown = String::from_utf8_lossy(&dry.stdout);
        assert!(
            shown.contains("+++") && shown.contains("monitor"),
            "{shown}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), original);

        let out = km_wrap(&env, "wrap", client, &path, &[]);
        assert!(out.status.success(), "{}", km_tests::describe(&out));
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(report.contains("backup: "), "{report}");
        let wrapped = std::fs::read_to_string(&path).expect("read");
        let before = stdio_servers(original);
        let after = stdio_servers(&wrapped);
        assert_eq!(before.len(), after.len(), "{client}");
        for ((command, args), (new_command, new_args)) in before.iter().zip(&after) {
            assert_eq!(Path::new(new_command), km.as_path(), "{client}");
            // The tests' KM_HOME is not ~/.km: the wrapper names it, so the client's km finds it.
            let mut expected = vec![
                "--home".to_owned(),
                env.home.display().to_string(),
                "monitor".to_owned(),
                "--".to_owned(),
                command.clone(),
            ];
            expected.extend(args.iter().cloned());
            assert_eq!(new_args, &expected, "{client}");
        }
        if client == "vscode" {
            assert!(
                wrapped.contains("// Servers for this machine.") && wrapped.contains("// via uv")
            );
        }
        if matches!(client, "claude-desktop" | "claude-code" | "windsurf") {
            assert!(
                report.contains("remote (HTTP/SSE) server: not wrappable"),
                "{report}"
            );
        }
        // Wrapping again changes nothing.
        let again = km_wrap(&env, "wrap", client, &path, &[]);
        assert!(again.status.success());
        assert!(String::from_utf8_lossy(&again.stdout).contains("already runs through km monitor"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), wrapped);

        let out = km_wrap(&env, "unwrap", client, &path, &[]);
        assert!(out.status.success(), "{}", km_tests::describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("restored exactly"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            original,
            "{client}: byte for byte"
        );
    }
}

#[test]
fn a_file_edited_since_keeps_its_edits_and_loses_only_kms_wrapper() {
    let env = KmEnv::new();
    let (client, path, original) = write_samples(&env).remove(2);
    assert!(km_wrap(&env, "wrap", client, &path, &[]).status.success());
    // The user adds a server by hand after km wrapped the file.
    let edited = std::fs::read_to_string(&path).expect("read").replace(
        "\"mcpServers\": {\n",
        "\"mcpServers\": {\n    \"added\": { \"command\": \"my-server\" },\n",
    );
    std::fs::write(&path, &edited).expect("edit");
    let out = km_wrap(&env, "unwrap", client, &path, &[]);
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    let now = std::fs::read_to_string(&path).expect("read");
    assert!(
        now.contains("\"added\": { \"command\": \"my-server\" }"),
        "the edit stays: {now}"
    );
    assert_eq!(
        now.replace("    \"added\": { \"command\": \"my-server\" },\n", ""),
        original,
        "km's own entry is back as it was"
    );
}

#[test]
fn a_file_km_cannot_parse_is_refused_and_left_untouched() {
    let env = KmEnv::new();
    let dir = env.dir.path().join("broken");
    std::fs::create_dir_all(&dir).expect("dir");
    for (client, text) in [
        ("cursor", "{\"mcpServers\": {\"a\": {\"command\": \"x\"}"),
        (
            "claude-desktop",
            "{\n  // a comment Claude Desktop would not read\n  \"mcpServers\": {}\n}",
        ),
    ] {
        let path = dir.join(format!("{client}.json"));
        std::fs::write(&path, text).expect("write");
        let out = km_wrap(&env, "wrap", client, &path, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", km_tests::describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("left untouched"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }
}

/// The path of server-everything, installed by scripts/test; `None` (the test says why) when the
/// tests run by hand without it, except in CI, where its absence fails the test.
fn everything() -> Option<PathBuf> {
    match std::env::var_os("KM_TEST_MCP_EVERYTHING") {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os("CI").is_some() => {
            panic!("KM_TEST_MCP_EVERYTHING is not set in CI: scripts/test installs it")
        }
        None => {
            eprintln!("skipped: KM_TEST_MCP_EVERYTHING is not set (run ./scripts/test)");
            None
        }
    }
}

#[test]
fn a_wrapped_server_relays_a_real_session_for_a_node_style_client() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;

    let Some(server) = everything() else {
        return;
    };
    let env = KmEnv::new();
    env.install("test-observer", "test-observer");
    // km's home is HOME/.km, and the client passes only HOME and PATH: km finds it from HOME.
    let user_home = env.dir.path().join("user");
    std::fs::create_dir_all(&user_home).expect("user home");
    let km_home = user_home.join(".km");
    std::fs::rename(&env.home, &km_home).expect("move KM_HOME under HOME");
    let config = env.dir.path().join("claude_desktop_config.json");
    let original = format!(
        "{{\n  \"mcpServers\": {{\n    \"everything\": {{\n      \"command\": \"node\",\n      \"args\": [{}, \"stdio\"]\n    }}\n  }}\n}}\n",
        serde_json::to_string(&server.display().to_string()).expect("json")
    );
    std::fs::write(&config, &original).expect("write");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let out = std::process::Command::new(km_tests::km_bin())
        .env_clear()
        .env("HOME", &user_home)
        .env("PATH", &path)
        .args(["wrap", "--config"])
        .arg(&config)
        .output()
        .expect("km wrap");
    assert!(out.status.success(), "{}", km_tests::describe(&out));

    // Start the wrapped command as a Node-based client does: socketpair stdio, HOME and PATH.
    let wrapped: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("JSON");
    let entry = &wrapped["mcpServers"]["everything"];
    let args: Vec<String> = entry["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(
        &args[..2],
        ["monitor", "--"],
        "no --home: HOME/.km is the default"
    );
    let mut cmd = std::process::Command::new(entry["command"].as_str().expect("command"));
    cmd.args(&args)
        .env_clear()
        .env("HOME", &user_home)
        .env("PATH", &path)
        .env("KM_GRACE_MS", "300")
        .stderr(std::process::Stdio::piped());
    let (child, mut stdin, stdout) = km_tests::spawn_client(
        cmd,
        km_tests::ClientStdio::SocketPairs,
        Duration::from_secs(60),
    );
    let mut stdout = BufReader::new(stdout);
    let mut ask = |stdin: &mut km_tests::ClientStdin, line: &str, id: u64| -> Value {
        writeln!(stdin, "{line}").expect("write");
        loop {
            let mut answer = String::new();
            assert!(
                stdout.read_line(&mut answer).expect("read") > 0,
                "km ended early"
            );
            let value: Value = serde_json::from_str(&answer).expect("JSON");
            if value["id"] == id {
                return value;
            }
        }
    };
    let init = ask(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"node-like","version":"1"}}}"#,
        1,
    );
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .expect("write");
    let sum = ask(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":2,"b":3}}}"#,
        2,
    );
    assert_eq!(
        sum["result"]["content"][0]["text"], "The sum of 2 and 3 is 5.",
        "{sum}"
    );
    stdin.end();
    let _ = child.wait("the wrapped km", String::new);
    let seen = std::fs::read_to_string(km_home.join("state/plugins/test-observer/seen.jsonl"))
        .expect("the plugin saw the session");
    assert!(
        seen.contains("get-sum") || seen.contains("tools/call"),
        "{seen}"
    );

    // And back, byte for byte.
    let out = std::process::Command::new(km_tests::km_bin())
        .env_clear()
        .env("HOME", &user_home)
        .env("PATH", &path)
        .args(["unwrap", "--config"])
        .arg(&config)
        .output()
        .expect("km unwrap");
    assert!(out.status.success(), "{}", km_tests::describe(&out));
    assert_eq!(std::fs::read_to_string(&config).expect("read"), original);
}
