//! What is pinned: the definitions a server advertises (tools, prompts, resource templates),
//! the lists that carry them, and what identifies each one.
//!
//! A definition is the whole object the server sent in its list, except `_meta`, which MCP
//! reserves for protocol metadata that may change from one answer to the next (progress tokens,
//! timestamps) and which is not shown to the model. Every other member is part of the pin: for a
//! tool `name`, `title`, `description`, `inputSchema`, `outputSchema`, `annotations`, and
//! whatever a later MCP version adds (an added member is a change, reviewed like any other).
//!
//! Two hashes of the canonical form ([`crate::canonical`]): `sha256`, of the whole definition,
//! is the pin; `body_sha256`, of the definition without its `name`, recognises a tool that was
//! renamed and is otherwise identical.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical;

/// What kind of definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// An element of `tools/list`'s `tools`; used by `tools/call`.
    Tool,
    /// An element of `prompts/list`'s `prompts`; used by `prompts/get`.
    Prompt,
    /// An element of `resources/templates/list`'s `resourceTemplates`.
    ResourceTemplate,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Tool, Kind::Prompt, Kind::ResourceTemplate];

    /// `tool`, `prompt`, `resource-template`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::ResourceTemplate => "resource-template",
        }
    }

    /// The kind named `name` (as [`Kind::as_str`] spells it, or its plural).
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        match name {
            "tool" | "tools" => Some(Kind::Tool),
            "prompt" | "prompts" => Some(Kind::Prompt),
            "resource-template" | "resource-templates" | "template" | "templates" => {
                Some(Kind::ResourceTemplate)
            }
            _ => None,
        }
    }

    /// The method whose result lists this kind.
    pub(crate) fn list_method(self) -> &'static str {
        match self {
            Kind::Tool => "tools/list",
            Kind::Prompt => "prompts/list",
            Kind::ResourceTemplate => "resources/templates/list",
        }
    }

    /// The member of that result holding the array.
    pub(crate) fn list_key(self) -> &'static str {
        match self {
            Kind::Tool => "tools",
            Kind::Prompt => "prompts",
            Kind::ResourceTemplate => "resourceTemplates",
        }
    }

    /// The kind a list method returns.
    pub(crate) fn of_list_method(method: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.list_method() == method)
    }

    /// The method that uses one definition by name (`tools/call`, `prompts/get`); resource
    /// templates are used through `resources/read` with a URI, which names no template.
    pub(crate) fn use_method(self) -> Option<&'static str> {
        match self {
            Kind::Tool => Some("tools/call"),
            Kind::Prompt => Some("prompts/get"),
            Kind::ResourceTemplate => None,
        }
    }

    /// The kind a use method uses.
    pub(crate) fn of_use_method(method: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.use_method() == Some(method))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One definition as the server advertised it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Definition {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    /// The definition without `_meta`.
    pub(crate) value: Value,
    /// SHA-256 of its canonical form: the pin.
    pub(crate) sha256: String,
    /// SHA-256 of its canonical form without `name`.
    pub(crate) body_sha256: String,
}

impl Definition {
    /// The definition an element of a list holds; `None` when it is not an object with a
    /// string `name` (such an element cannot be pinned, and is not let through).
    pub(crate) fn from_element(kind: Kind, element: Value) -> Option<Definition> {
        let Value::Object(mut map) = element else {
            return None;
        };
        map.remove("_meta");
        let name = map.get("name")?.as_str()?.to_owned();
        Some(Definition::new(kind, name, map))
    }

    fn new(kind: Kind, name: String, map: Map<String, Value>) -> Definition {
        let mut body = map.clone();
        body.remove("name");
        let value = Value::Object(map);
        Definition {
            kind,
            name,
            sha256: canonical::sha256(&value),
            body_sha256: canonical::sha256(&Value::Object(body)),
            value,
        }
    }

    /// A stored definition, with its hashes computed again (a pin file's hashes are never
    /// trusted over its definitions).
    pub(crate) fn from_stored(kind: Kind, value: &Value) -> Option<Definition> {
        Definition::from_element(kind, value.clone())
    }
}

/// The top-level members in which two definitions differ, in a stable order: the usual MCP
/// members first, then the others alphabetically.
pub(crate) fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    const ORDER: [&str; 9] = [
        "name",
        "title",
        "description",
        "inputSchema",
        "outputSchema",
        "annotations",
        "arguments",
        "uriTemplate",
        "mimeType",
    ];
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut fields: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    fields.sort_by_key(|f| {
        (
            ORDER.iter().position(|o| o == f).unwrap_or(ORDER.len()),
            f.clone(),
        )
    });
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn meta_is_left_out_and_the_rest_is_pinned() {
        let a = Definition::from_element(
            Kind::Tool,
            json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}, "_meta": {"t": 1}}),
        )
        .expect("a definition");
        let b = Definition::from_element(
            Kind::Tool,
            json!({"_meta": {"t": 2}, "inputSchema": {"type": "object"}, "description": "Echo", "name": "echo"}),
        )
        .expect("a definition");
        assert_eq!(a.sha256, b.sha256);
        assert!(a.value.get("_meta").is_none());
        for changed in [
            json!({"name": "echo", "description": "Echo!", "inputSchema": {"type": "object"}}),
            json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object", "required": ["x"]}}),
            json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}}),
            json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}, "icons": []}),
        ] {
            let c = Definition::from_element(Kind::Tool, changed).expect("a definition");
            assert_ne!(a.sha256, c.sha256, "{}", c.value);
        }
    }

    #[test]
    fn a_rename_keeps_the_body_hash() {
        let a = Definition::from_element(Kind::Tool, json!({"name": "a", "description": "d"}))
            .expect("def");
        let b = Definition::from_element(Kind::Tool, json!({"name": "b", "description": "d"}))
            .expect("def");
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.body_sha256, b.body_sha256);
    }

    #[test]
    fn elements_without_a_string_name_are_not_definitions() {
        assert!(Definition::from_element(Kind::Tool, json!({"description": "x"})).is_none());
        assert!(Definition::from_element(Kind::Tool, json!({"name": 3})).is_none());
        assert!(Definition::from_element(Kind::Tool, json!("echo")).is_none());
    }

    #[test]
    fn changed_fields_come_in_a_stable_order() {
        let old = json!({"name": "a", "description": "d", "inputSchema": {}, "zeta": 1});
        let new = json!({"name": "a", "description": "e", "inputSchema": {"x": 1}, "annotations": {}, "alpha": 2});
        assert_eq!(
            changed_fields(&old, &new),
            ["description", "inputSchema", "annotations", "alpha", "zeta"]
        );
    }

    #[test]
    fn kinds_map_to_their_methods() {
        for kind in Kind::ALL {
            assert_eq!(Kind::of_list_method(kind.list_method()), Some(kind));
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            if let Some(method) = kind.use_method() {
                assert_eq!(Kind::of_use_method(method), Some(kind));
            }
        }
        assert_eq!(Kind::of_use_method("resources/read"), None);
    }
}
