use std::path::Path;

use super::*;

const KM: &str = "/opt/km/bin/km";

fn wrapper() -> Wrapper<'static> {
    Wrapper {
        km: Path::new(KM),
        home: None,
    }
}

fn outcomes(edited: &Edited) -> Vec<(&str, &Outcome)> {
    edited
        .servers
        .iter()
        .map(|s| (s.name.as_str(), &s.outcome))
        .collect()
}

const DESKTOP: &str = r#"{
  "mcpServers": {
    "github": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-github"],
      "env": { "GITHUB_TOKEN": "x" }
    },
    "files": {
      "command": "C:\\Tools\\fs-server.exe"
    },
    "remote": { "url": "https://mcp.example.com/sse" }
  },
  "globalShortcut": "Ctrl+Space"
}
"#;

#[test]
fn wrapping_changes_only_command_and_args_and_unwrapping_restores_every_byte() {
    let wrapped = wrap(DESKTOP, Client::ClaudeDesktop, &wrapper()).expect("wraps");
    assert_eq!(
        outcomes(&wrapped),
        [
            ("github", &Outcome::Wrapped),
            ("files", &Outcome::Wrapped),
            ("remote", &Outcome::Remote)
        ]
    );
    let value: serde_json::Value = serde_json::from_str(&wrapped.after).expect("valid JSON");
    let github = &value["mcpServers"]["github"];
    assert_eq!(github["command"], KM);
    assert_eq!(
        github["args"],
        serde_json::json!([
            "monitor",
            "--",
            "npx",
            "-y",
            "@modelcontextprotocol/server-github"
        ])
    );
    assert_eq!(github["env"]["GITHUB_TOKEN"], "x", "the environment stays");
    assert_eq!(
        value["mcpServers"]["files"]["args"],
        serde_json::json!(["monitor", "--", "C:\\Tools\\fs-server.exe"])
    );
    assert!(
        wrapped.after.contains(r#""C:\\Tools\\fs-server.exe""#),
        "escapes kept as written"
    );
    assert!(wrapped
        .after
        .ends_with("\"globalShortcut\": \"Ctrl+Space\"\n}\n"));
    // Without the backup (the file was edited since), km's own entries are unwrapped; with the
    // original at hand, the args km added are removed too: the file is as it was.
    let unwrapped = unwrap(&wrapped.after, Client::ClaudeDesktop, Some(DESKTOP)).expect("unwraps");
    assert_eq!(unwrapped.after, DESKTOP);
    let again = wrap(&wrapped.after, Client::ClaudeDesktop, &wrapper()).expect("wraps");
    assert_eq!(
        again.after, wrapped.after,
        "an already wrapped server is left alone"
    );
    assert_eq!(again.servers[0].outcome, Outcome::AlreadyWrapped);
}

const VSCODE: &str = r#"{
	// The servers of this machine.
	"servers": {
		"time": {
			"type": "stdio",
			"command": "uvx", // installed with uv
			"args": [
				"mcp-server-time", /* the tz */ "--local-timezone=Europe/Paris",
			],
		},
		"web": { "type": "http", "url": "http://localhost:3000/mcp" },
	},
	"inputs": [],
}"#;

#[test]
fn comments_and_trailing_commas_survive_in_vs_code_files() {
    let wrapped = wrap(VSCODE, Client::VsCode, &wrapper()).expect("wraps");
    assert_eq!(
        outcomes(&wrapped),
        [("time", &Outcome::Wrapped), ("web", &Outcome::Remote)]
    );
    for kept in [
        "// The servers of this machine.",
        "// installed with uv",
        "/* the tz */",
    ] {
        assert!(
            wrapped.after.contains(kept),
            "{kept} kept:\n{}",
            wrapped.after
        );
    }
    let unwrapped = unwrap(&wrapped.after, Client::VsCode, None).expect("unwraps");
    assert_eq!(unwrapped.after, VSCODE, "byte for byte");
}

#[test]
fn a_non_default_home_goes_in_front_and_claude_code_projects_are_found() {
    let text = r#"{"mcpServers":{"a":{"command":"srv-a","args":[]}},"projects":{"/w/app":{"mcpServers":{"b":{"command":"srv-b","args":["x"]}}}}}"#;
    let home = Path::new("/data/km home");
    let w = Wrapper {
        km: Path::new(KM),
        home: Some(home),
    };
    let wrapped = wrap(text, Client::ClaudeCode, &w).expect("wraps");
    let value: serde_json::Value = serde_json::from_str(&wrapped.after).expect("JSON");
    assert_eq!(
        value["projects"]["/w/app"]["mcpServers"]["b"]["args"],
        serde_json::json!(["--home", "/data/km home", "monitor", "--", "srv-b", "x"])
    );
    assert_eq!(wrapped.servers[1].table, "projects./w/app.mcpServers");
    let unwrapped = unwrap(&wrapped.after, Client::ClaudeCode, Some(text)).expect("unwraps");
    assert_eq!(unwrapped.after, text);
}

#[test]
fn files_km_cannot_parse_or_keep_are_refused() {
    // Strict JSON clients do not accept comments: km does not either.
    let commented = "{\n  // hi\n  \"mcpServers\": {}\n}";
    assert!(matches!(
        wrap(commented, Client::Cursor, &wrapper()),
        Err(Refusal::Parse(_))
    ));
    assert!(wrap(commented, Client::VsCode, &wrapper()).is_ok());
    for bad in ["{\"mcpServers\": {", "[1, 2]", "{\"a\": 1,}"] {
        assert!(
            wrap(bad, Client::ClaudeDesktop, &wrapper()).is_err(),
            "{bad}"
        );
    }
    // Entries km does not understand are reported and left alone.
    let odd = r#"{"mcpServers":{"n":{"command":42},"m":{"command":"x","args":"y"},"o":"str"}}"#;
    let edited = wrap(odd, Client::ClaudeDesktop, &wrapper()).expect("parses");
    assert_eq!(edited.after, odd);
    assert!(edited
        .servers
        .iter()
        .all(|s| matches!(s.outcome, Outcome::Skipped(_))));
}

#[test]
fn one_line_arrays_keep_their_spacing_both_ways() {
    // The common layouts come back byte for byte even without the backup; spaces just inside
    // the brackets (`[ "x" ]`) come back only from the backup, which unwrap prefers.
    for args in [
        r#"["x"]"#,
        r#"["x","y"]"#,
        r#"["x", "y"]"#,
        "[]",
        "[\n  \"x\"\n]",
        "[\n    \"x\",\n    \"y\"\n  ]",
    ] {
        let text = format!(r#"{{"mcpServers":{{"b":{{"command":"srv","args":{args}}}}}}}"#);
        let wrapped = wrap(&text, Client::Cursor, &wrapper()).expect("wraps");
        let value: serde_json::Value = serde_json::from_str(&wrapped.after).expect("JSON");
        assert_eq!(
            value["mcpServers"]["b"]["args"][2], "srv",
            "{}",
            wrapped.after
        );
        let back = unwrap(&wrapped.after, Client::Cursor, Some(&text)).expect("unwraps");
        assert_eq!(back.after, text, "wrapped as {}", wrapped.after);
    }
}
