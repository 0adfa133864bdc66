//! The edits of `km wrap` and `km unwrap` on one configuration file's text.
//!
//! Wrapping a stdio server changes two values of its entry and nothing else: `command` becomes
//! this `km`, and `monitor`, `--` and the old command are put in front of `args` (which is added
//! right after `command` when the entry has none). Unwrapping undoes exactly that for the entries
//! km wrapped (their command is a `km` and their arguments start with `monitor --`, possibly
//! after `--home DIR`). Everything else in the file (other fields, other servers, comments,
//! whitespace, key order) is untouched: the edits are made on a concrete syntax tree.

use std::fmt;
use std::path::Path;

use jsonc_parser::cst::{CstArray, CstInputValue, CstNode, CstObject, CstRootNode};
use jsonc_parser::ParseOptions;

use super::Client;

/// Why a file is refused (it is left untouched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It does not parse by the client's rules.
    Parse(String),
    /// km would not write it back exactly as it read it.
    RoundTrip,
    /// Its top level is not an object.
    NotAnObject,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Parse(e) => write!(f, "it does not parse: {e}"),
            Refusal::RoundTrip => f.write_str(
                "km could not write it back exactly as it is (its formatting would change)",
            ),
            Refusal::NotAnObject => f.write_str("its top level is not a JSON object"),
        }
    }
}

/// What happened to one server entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Now runs through km.
    Wrapped,
    /// Already ran through km: left alone.
    AlreadyWrapped,
    /// km's wrapper taken away.
    Unwrapped,
    /// Did not run through km: left alone.
    NotWrapped,
    /// A remote (HTTP/SSE) server: km cannot stand in front of it on stdio.
    Remote,
    /// Not a server km understands (the reason); left alone.
    Skipped(String),
}

/// One server entry and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// Where its table is (`mcpServers`, `projects./home/me/app.mcpServers`, `mcp.servers`).
    pub(crate) table: String,
    pub(crate) name: String,
    pub(crate) outcome: Outcome,
}

/// A file's text before and after, and what happened to each server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edited {
    pub(crate) before: String,
    pub(crate) after: String,
    pub(crate) servers: Vec<Server>,
}

/// What `km wrap` puts in front of a command: `monitor --`, after `--home DIR` when km's home is
/// not the default one.
#[derive(Debug, Clone)]
pub(crate) struct Wrapper<'a> {
    pub(crate) km: &'a Path,
    pub(crate) home: Option<&'a Path>,
}

impl Wrapper<'_> {
    fn prefix(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(home) = self.home {
            words.push("--home".to_owned());
            words.push(home.to_string_lossy().into_owned());
        }
        words.push("monitor".to_owned());
        words.push("--".to_owned());
        words
    }
}

fn options(client: Client) -> ParseOptions {
    let loose = client.allows_comments();
    ParseOptions {
        allow_comments: loose,
        allow_trailing_commas: loose,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        ..ParseOptions::default()
    }
}

fn parse(text: &str, client: Client) -> Result<CstRootNode, Refusal> {
    // jsonc-parser's syntax tree keeps comments whatever its options say: a client that reads
    // strict JSON gets its file checked as strict JSON first.
    if !client.allows_comments() && !text.trim().is_empty() {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Refusal::Parse(e.to_string()))?;
    }
    let root =
        CstRootNode::parse(text, &options(client)).map_err(|e| Refusal::Parse(e.to_string()))?;
    if root.to_string() != text {
        return Err(Refusal::RoundTrip);
    }
    if root.value().is_none() {
        // An empty file: nothing to wrap.
        return Ok(root);
    }
    if root.object_value().is_none() {
        return Err(Refusal::NotAnObject);
    }
    Ok(root)
}

/// The tables of servers in a client's file: (where, table).
fn tables(root: &CstRootNode, client: Client) -> Vec<(String, CstObject)> {
    let Some(top) = root.object_value() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut add = |name: String, table: Option<CstObject>| {
        if let Some(table) = table {
            found.push((name, table));
        }
    };
    match client {
        Client::VsCode => {
            add("servers".into(), top.object_value("servers"));
            add(
                "mcp.servers".into(),
                top.object_value("mcp")
                    .and_then(|mcp| mcp.object_value("servers")),
            );
        }
        Client::ClaudeCode => {
            add("mcpServers".into(), top.object_value("mcpServers"));
            if let Some(projects) = top.object_value("projects") {
                for project in projects.properties() {
                    let name = project.decoded_name().unwrap_or_default();
                    add(
                        format!("projects.{name}.mcpServers"),
                        project
                            .object_value()
                            .and_then(|p| p.object_value("mcpServers")),
                    );
                }
            }
        }
        _ => add("mcpServers".into(), top.object_value("mcpServers")),
    }
    found
}

fn string_of(node: &CstNode) -> Option<String> {
    node.as_string_lit()?.decoded_value().ok()
}

fn strings_of(array: &CstArray) -> Option<Vec<String>> {
    array.elements().iter().map(string_of).collect()
}

/// Whether `command` is a `km` binary.
fn is_km(command: &str) -> bool {
    Path::new(command).file_name().is_some_and(|n| n == "km")
}

/// How many leading arguments are km's wrapper (`monitor --`, or `--home DIR monitor --`).
fn wrapper_len(args: &[String]) -> Option<usize> {
    match args {
        [m, d, ..] if m == "monitor" && d == "--" => Some(2),
        [h, _, m, d, ..] if h == "--home" && m == "monitor" && d == "--" => Some(4),
        _ => None,
    }
}

/// Whether an entry is a remote server.
fn is_remote(entry: &CstObject) -> bool {
    let remote_type = entry
        .get("type")
        .and_then(|p| p.value())
        .and_then(|v| string_of(&v))
        .is_some_and(|t| {
            matches!(
                t.as_str(),
                "http" | "sse" | "streamable-http" | "streamableHttp"
            )
        });
    remote_type || entry.get("url").is_some() || entry.get("serverUrl").is_some()
}

/// Wraps every stdio server of `text` (a file of `client`) with `wrapper`.
pub(crate) fn wrap(text: &str, client: Client, wrapper: &Wrapper<'_>) -> Result<Edited, Refusal> {
    let root = parse(text, client)?;
    let mut servers = Vec::new();
    for (table_name, table) in tables(&root, client) {
        for prop in table.properties() {
            let name = prop.decoded_name().unwrap_or_default();
            let outcome = match prop.object_value() {
                None => Outcome::Skipped("its entry is not an object".into()),
                Some(entry) => wrap_entry(&entry, wrapper),
            };
            servers.push(Server {
                table: table_name.clone(),
                name,
                outcome,
            });
        }
    }
    Ok(Edited {
        before: text.to_owned(),
        after: root.to_string(),
        servers,
    })
}

fn wrap_entry(entry: &CstObject, wrapper: &Wrapper<'_>) -> Outcome {
    if is_remote(entry) {
        return Outcome::Remote;
    }
    let Some(command_prop) = entry.get("command") else {
        return Outcome::Skipped("it has no command".into());
    };
    let Some(command_node) = command_prop.value() else {
        return Outcome::Skipped("its command has no value".into());
    };
    let (Some(command), Some(command_lit)) =
        (string_of(&command_node), command_node.as_string_lit())
    else {
        return Outcome::Skipped("its command is not a string".into());
    };
    let args = entry.get("args");
    let args_array = match &args {
        None => None,
        Some(prop) => match prop.array_value() {
            Some(array) if strings_of(&array).is_some() => Some(array),
            _ => return Outcome::Skipped("its args are not a list of strings".into()),
        },
    };
    let existing = args_array.as_ref().and_then(strings_of).unwrap_or_default();
    if is_km(&command) && wrapper_len(&existing).is_some() {
        return Outcome::AlreadyWrapped;
    }
    let raw_command = command_lit.raw_value();
    let mut prefix: Vec<CstInputValue> = wrapper
        .prefix()
        .into_iter()
        .map(CstInputValue::String)
        .collect();
    match args_array {
        Some(array) => {
            let lead_before = leading_space(&array);
            let separator = element_separator(&array);
            let count = prefix.len();
            for (i, word) in prefix.drain(..).enumerate() {
                array.insert(i, word);
            }
            // The old command moves as it was written (same escapes).
            let moved = array.insert(count, CstInputValue::String(command.clone()));
            if let Some(lit) = moved.as_string_lit() {
                lit.set_raw_value(raw_command);
            }
            // Inserting in front leaves the space before the first old element grown: the array
            // keeps its own leading space, and the old elements follow at its usual separator.
            set_leading_space(&array, &lead_before);
            {
                let separator = separator.unwrap_or_else(|| " ".to_owned());
                let after_comma: Option<CstNode> =
                    moved.next_siblings().skip_while(|n| !n.is_comma()).nth(1);
                if let Some(space) = after_comma.as_ref().and_then(CstNode::as_whitespace) {
                    space.set_value(separator);
                }
            }
        }
        None => {
            prefix.push(CstInputValue::String(command.clone()));
            let index = command_prop.property_index() + 1;
            let added = entry.insert(index, "args", CstInputValue::Array(prefix));
            if let Some(array) = added.array_value() {
                if let Some(lit) = array.elements().last().and_then(CstNode::as_string_lit) {
                    lit.set_raw_value(raw_command);
                }
            }
        }
    }
    command_prop.set_value(CstInputValue::String(
        wrapper.km.to_string_lossy().into_owned(),
    ));
    Outcome::Wrapped
}

/// The whitespace (no newline) between an array's `[` and its first element.
fn leading_space(array: &CstArray) -> String {
    array
        .children()
        .into_iter()
        .skip(1)
        .map_while(|n| n.as_whitespace().map(|w| w.value()))
        .collect()
}

/// Makes the whitespace between `[` and the first element `space` (on one line only: a newline
/// there is the array's layout, which jsonc-parser keeps itself).
fn set_leading_space(array: &CstArray, space: &str) {
    let leading: Vec<_> = array
        .children()
        .into_iter()
        .skip(1)
        .map_while(|n| n.as_whitespace())
        .collect();
    let current: String = leading.iter().map(|w| w.value()).collect();
    if current == space {
        return;
    }
    let mut nodes = leading.into_iter();
    match nodes.next() {
        Some(first) if !space.is_empty() => first.set_value(space.to_owned()),
        Some(first) => first.remove(),
        None => {}
    }
    for rest in nodes {
        rest.remove();
    }
}

/// The whitespace after the commas of a one-line array (`" "` in `["a", "b"]`), if it has a
/// comma followed by whitespace.
fn element_separator(array: &CstArray) -> Option<String> {
    let children = array.children();
    children.iter().enumerate().find_map(|(i, n)| {
        if !n.is_comma() {
            return None;
        }
        children
            .get(i + 1)
            .and_then(CstNode::as_whitespace)
            .map(|w| w.value())
    })
}

/// Takes km's wrapper away from every server of `text` km wrapped. `original` is the file as it
/// was before `km wrap`, when km kept it: an entry that had no `args` then loses the `args` km
/// added.
pub(crate) fn unwrap(
    text: &str,
    client: Client,
    original: Option<&str>,
) -> Result<Edited, Refusal> {
    let root = parse(text, client)?;
    let had_args = |table: &str, name: &str| -> bool {
        let Some(original) = original else {
            return true;
        };
        let Ok(root) = parse(original, client) else {
            return true;
        };
        tables(&root, client)
            .into_iter()
            .filter(|(t, _)| t == table)
            .any(|(_, table)| {
                table
                    .object_value(name)
                    .is_some_and(|entry| entry.get("args").is_some())
            })
    };
    let mut servers = Vec::new();
    for (table_name, table) in tables(&root, client) {
        for prop in table.properties() {
            let name = prop.decoded_name().unwrap_or_default();
            let outcome = match prop.object_value() {
                None => Outcome::Skipped("its entry is not an object".into()),
                Some(entry) => unwrap_entry(&entry, || had_args(&table_name, &name)),
            };
            servers.push(Server {
                table: table_name.clone(),
                name,
                outcome,
            });
        }
    }
    Ok(Edited {
        before: text.to_owned(),
        after: root.to_string(),
        servers,
    })
}

fn unwrap_entry(entry: &CstObject, had_args: impl FnOnce() -> bool) -> Outcome {
    if is_remote(entry) {
        return Outcome::Remote;
    }
    let (Some(command_prop), Some(args_prop)) = (entry.get("command"), entry.get("args")) else {
        return Outcome::NotWrapped;
    };
    let command = command_prop.value().and_then(|v| string_of(&v));
    let Some(array) = args_prop.array_value() else {
        return Outcome::NotWrapped;
    };
    let Some(args) = strings_of(&array) else {
        return Outcome::NotWrapped;
    };
    let Some(len) = wrapper_len(&args).filter(|_| command.as_deref().is_some_and(is_km)) else {
        return Outcome::NotWrapped;
    };
    let elements = array.elements();
    let Some(original) = elements.get(len).and_then(CstNode::as_string_lit) else {
        return Outcome::Skipped("km's wrapper has no command after `--`".into());
    };
    let raw = original.raw_value();
    let decoded = original.decoded_value().unwrap_or_default();
    let lead_before = leading_space(&array);
    for element in elements.into_iter().take(len + 1) {
        element.remove();
    }
    set_leading_space(&array, &lead_before);
    command_prop.set_value(CstInputValue::String(decoded));
    if let Some(lit) = command_prop
        .value()
        .as_ref()
        .and_then(CstNode::as_string_lit)
    {
        lit.set_raw_value(raw);
    }
    if array.elements().is_empty() && !had_args() {
        args_prop.remove();
    }
    Outcome::Unwrapped
}

#[cfg(test)]
mod tests;
