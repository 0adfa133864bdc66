//! MCP clients' configuration files, and putting `km monitor --` in front of their stdio servers
//! (`km wrap`) or taking it away again (`km unwrap`).
//!
//! Where each client keeps its servers ([`known`]): Claude Desktop, Claude Code, Cursor, VS Code
//! and Windsurf, at their per-platform locations; any of their formats also by path. A server
//! entry with a `command` is a stdio server and is wrapped: its command becomes this `km`
//! (absolute path) and its arguments `monitor -- COMMAND ARGS...`; its environment and every other
//! field stay as they are. An entry with a `url` (or `serverUrl`, or a `type` naming a remote
//! transport) is a remote server km cannot stand in front of on stdio: it is listed, untouched.
//!
//! Files are edited, not rewritten: a concrete syntax tree (the `jsonc-parser` crate's, which keeps
//! every comment and every byte of whitespace) is changed only where a server is wrapped, so the
//! rest of the file stays byte for byte as its owner wrote it. km refuses a file it cannot parse
//! with the client's own rules (comments and trailing commas only where the client accepts them,
//! as VS Code does), and a file it would not write back exactly as it read it (before any edit).
//! See [`edit`] for the edits and [`record`] for the backups `unwrap` restores from.

pub(crate) mod edit;
pub(crate) mod record;

use std::path::{Path, PathBuf};

/// The MCP clients km knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Claude Desktop: `claude_desktop_config.json`, servers under `mcpServers`.
    ClaudeDesktop,
    /// Claude Code: `~/.claude.json` (servers under `mcpServers`, and each project's under
    /// `projects.PATH.mcpServers`) and a project's `.mcp.json`.
    ClaudeCode,
    /// Cursor: `~/.cursor/mcp.json` (and a project's `.cursor/mcp.json`), under `mcpServers`.
    Cursor,
    /// VS Code: the user's `mcp.json` (servers under `servers`) or `settings.json` (under
    /// `mcp.servers`); JSON with comments.
    VsCode,
    /// Windsurf: `~/.codeium/windsurf/mcp_config.json`, under `mcpServers`.
    Windsurf,
}

impl Client {
    /// Every client, in the order km looks for them.
    pub const ALL: [Client; 5] = [
        Client::ClaudeDesktop,
        Client::ClaudeCode,
        Client::Cursor,
        Client::VsCode,
        Client::Windsurf,
    ];

    /// The name people know it by.
    pub fn name(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "Claude Desktop",
            Client::ClaudeCode => "Claude Code",
            Client::Cursor => "Cursor",
            Client::VsCode => "VS Code",
            Client::Windsurf => "Windsurf",
        }
    }

    /// The spelling on the command line (`--client`).
    pub fn id(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "claude-desktop",
            Client::ClaudeCode => "claude-code",
            Client::Cursor => "cursor",
            Client::VsCode => "vscode",
            Client::Windsurf => "windsurf",
        }
    }

    /// The client named `id` (as [`Client::id`] spells it).
    pub fn from_id(id: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Whether the client's files may hold comments and trailing commas.
    pub fn allows_comments(self) -> bool {
        self == Client::VsCode
    }
}

/// A configuration file of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub client: Client,
    pub path: PathBuf,
}

/// The configuration files of every known client on this machine that exist, for the user
/// whose home is `home` (from `HOME`) and, on Linux, `XDG_CONFIG_HOME` when set.
pub fn known(home: &Path) -> Vec<ConfigFile> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"));
    let app_support = home.join("Library").join("Application Support");
    let candidates: Vec<(Client, PathBuf)> = vec![
        (
            Client::ClaudeDesktop,
            config_home
                .join("Claude")
                .join("claude_desktop_config.json"),
        ),
        (
            Client::ClaudeDesktop,
            app_support
                .join("Claude")
                .join("claude_desktop_config.json"),
        ),
        (Client::ClaudeCode, home.join(".claude.json")),
        (Client::Cursor, home.join(".cursor").join("mcp.json")),
        (
            Client::VsCode,
            config_home.join("Code").join("User").join("mcp.json"),
        ),
        (
            Client::VsCode,
            config_home.join("Code").join("User").join("settings.json"),
        ),
        (
            Client::VsCode,
            app_support.join("Code").join("User").join("mcp.json"),
        ),
        (
            Client::VsCode,
            app_support.join("Code").join("User").join("settings.json"),
        ),
        (
            Client::Windsurf,
            home.join(".codeium")
                .join("windsurf")
                .join("mcp_config.json"),
        ),
    ];
    candidates
        .into_iter()
        .filter(|(_, path)| path.is_file())
        .map(|(client, path)| ConfigFile { client, path })
        .collect()
}

/// The client a file given by path belongs to: from `--client`, else from its name and place.
pub fn guess(path: &Path) -> Client {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match (name.as_str(), parent.as_str()) {
        ("claude_desktop_config.json", _) => Client::ClaudeDesktop,
        (".claude.json" | ".mcp.json", _) => Client::ClaudeCode,
        ("mcp.json", ".cursor") => Client::Cursor,
        ("mcp.json", ".vscode" | "User") | ("settings.json", _) => Client::VsCode,
        ("mcp_config.json", _) => Client::Windsurf,
        _ => Client::ClaudeDesktop,
    }
}
