//! Tool definitions: the API tool-guard and advanced-filters use on a `tools/list` entry.
//!
//! A tool definition is scanned like any line (so its description, its schema's titles,
//! descriptions and defaults, and its annotations are all covered, with paths relative to the
//! tool object), with two differences: the input must be a JSON object with a string `name`,
//! and a parameter that asks for secrets is not reported when the tool's own name says that
//! handling secrets is its job (`store_secret`, `set_api_key`, `ssh_config`...).

use serde_json::Value;

use crate::engine::Detector;
use crate::finding::Report;
use crate::Error;

/// A tool definition given in parts.
#[derive(Clone, Copy, Debug)]
pub struct ToolDefinition<'a> {
    /// `name`.
    pub name: &'a str,
    /// `description`, if any.
    pub description: Option<&'a str>,
    /// `inputSchema` as JSON text.
    pub input_schema: &'a [u8],
}

const SECRET_HANDLING: &[&str] = &[
    "secret",
    "credential",
    "password",
    "passwd",
    "key",
    "token",
    "ssh",
    "vault",
    "env",
    "auth",
    "login",
    "keychain",
];

impl Detector {
    /// Scans a tool object (an element of a `tools/list` result's `tools`): findings with
    /// paths such as `description` or `inputSchema.properties.sidenote.description`.
    pub fn inspect_tool(&self, tool_json: &[u8]) -> Result<Report, Error> {
        let v: Value =
            serde_json::from_slice(tool_json).map_err(|e| Error::InvalidToolDefinition {
                reason: format!("not JSON: {e}"),
            })?;
        let name = v
            .as_object()
            .ok_or_else(|| Error::InvalidToolDefinition {
                reason: "not a JSON object".into(),
            })?
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::InvalidToolDefinition {
                reason: "no string \"name\"".into(),
            })?
            .to_ascii_lowercase();
        let mut report = self.scan_line(tool_json);
        if SECRET_HANDLING.iter().any(|w| name.contains(w)) {
            report
                .findings
                .retain(|f| f.rule != "exfiltration-parameter");
        }
        Ok(report)
    }

    /// [`Detector::inspect_tool`] on a definition given in parts.
    pub fn inspect_tool_parts(&self, tool: &ToolDefinition<'_>) -> Result<Report, Error> {
        let schema: Value = serde_json::from_slice(tool.input_schema).map_err(|e| {
            Error::InvalidToolDefinition {
                reason: format!("inputSchema is not JSON: {e}"),
            }
        })?;
        let mut obj = serde_json::Map::new();
        obj.insert("name".into(), Value::String(tool.name.to_owned()));
        if let Some(d) = tool.description {
            obj.insert("description".into(), Value::String(d.to_owned()));
        }
        obj.insert("inputSchema".into(), schema);
        let json =
            serde_json::to_vec(&Value::Object(obj)).map_err(|e| Error::InvalidToolDefinition {
                reason: e.to_string(),
            })?;
        self.inspect_tool(&json)
    }
}
