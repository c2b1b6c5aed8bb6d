//! The schemas in `schemas/`, compiled once, and validation of payloads against them.
//!
//! Guarantees: a [`Registry`] only holds schemas that are valid JSON Schema 2020-12 and carry
//! `$id`, `title`, `description` and `examples`; validation asserts `format` (including doudi's
//! custom formats). Error messages never contain the offending value, only where it is (a JSON
//! pointer) and what was expected, so they are fit for logs and dead letters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::catalogue::Catalogue;
use super::formats;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema {path}: {message}")]
    Read { path: String, message: String },
    #[error("schema {file} is not valid JSON Schema 2020-12 at {pointer}: {message}")]
    Invalid { file: String, pointer: String, message: String },
    #[error("schema {file} lacks `{field}`")]
    Missing { file: String, field: &'static str },
    #[error("no schema is registered for topic {0}")]
    UnknownTopic(String),
}

/// One validation failure: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer into the payload, e.g. `/members/0/id_number` (empty for the whole document).
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", if self.pointer.is_empty() { "/" } else { &self.pointer }, self.message)
    }
}

/// A compiled schema.
pub struct Schema {
    pub file: String,
    pub id: String,
    pub document: Value,
    validator: jsonschema::Validator,
}

impl Schema {
    /// Compiles one schema document, checking it against the 2020-12 meta-schema first.
    pub fn compile(file: &str, document: Value) -> Result<Self, SchemaError> {
        if let Err(e) = jsonschema::draft202012::meta::validate(&document) {
            return Err(SchemaError::Invalid { file: file.into(), pointer: e.instance_path().to_string(), message: e.to_string() });
        }
        for field in ["$id", "title", "description", "examples"] {
            if document.get(field).is_none() {
                return Err(SchemaError::Missing { file: file.into(), field });
            }
        }
        let validator = formats::options().build(&document).map_err(|e| SchemaError::Invalid {
            file: file.into(),
            pointer: e.schema_path().to_string(),
            message: e.to_string(),
        })?;
        let id = document.get("$id").and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(Schema { file: file.into(), id, document, validator })
    }

    /// Every violation of `payload`, without values. The validator's fast check decides first;
    /// the errors are only collected for a payload that fails.
    ///
    /// The validator's own messages quote the instance: a value, a whole object (`{…} is not of
    /// type "string"`) or the names of unexpected properties, any of which can be an ID number or a
    /// name a department sent by mistake. They reach dead letters, logs and HTTP replies, so the
    /// instance is replaced by what it is ("the value", "the object", "the array"), unexpected
    /// property names are masked like the cells of a row, and ID numbers are masked in what is left,
    /// the pointer included.
    pub fn violations(&self, payload: &Value) -> Vec<Violation> {
        if self.validator.is_valid(payload) {
            return Vec::new();
        }
        self.validator
            .iter_errors(payload)
            .map(|e| {
                let message = match e.kind() {
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                        let names: Vec<String> =
                            unexpected.iter().map(|n| format!("'{}'", crate::tap::mask_text(&crate::tap::mask_cell(n)))).collect();
                        format!("properties the schema does not allow: {}", names.join(", "))
                    }
                    _ => {
                        let shown = e.instance();
                        let what = match &**shown {
                            Value::Object(_) => "the object",
                            Value::Array(_) => "the array",
                            _ => "the value",
                        };
                        let rendered = shown.to_string();
                        let message = e.to_string();
                        if rendered.is_empty() { message } else { message.replace(&rendered, what) }
                    }
                };
                let pointer = crate::tap::mask_text(&e.instance_path().to_string());
                Violation { pointer, message: crate::tap::mask_text(&message) }
            })
            .collect()
    }

    pub fn is_valid(&self, payload: &Value) -> bool {
        self.validator.is_valid(payload)
    }

    /// The `examples` of the schema.
    pub fn examples(&self) -> Vec<&Value> {
        self.document.get("examples").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
    }
}

/// Every schema of the catalogue, by topic.
pub struct Registry {
    pub dir: PathBuf,
    pub catalogue: Catalogue,
    /// By schema file name.
    pub schemas: BTreeMap<String, Schema>,
}

impl Registry {
    /// Loads the catalogue and compiles every schema file it names.
    pub fn load(dir: &Path) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let catalogue = Catalogue::load(dir)?;
        let mut schemas = BTreeMap::new();
        for topic in &catalogue.topics {
            if schemas.contains_key(&topic.schema) {
                continue;
            }
            let document = read_json(&dir.join(&topic.schema))?;
            schemas.insert(topic.schema.clone(), Schema::compile(&topic.schema, document)?);
        }
        Ok(Registry { dir: dir.to_path_buf(), catalogue, schemas })
    }

    /// The schema of `topic`.
    pub fn for_topic(&self, topic: &str) -> Result<&Schema, SchemaError> {
        let t = self.catalogue.topic(topic).ok_or_else(|| SchemaError::UnknownTopic(topic.into()))?;
        self.schemas.get(&t.schema).ok_or_else(|| SchemaError::UnknownTopic(topic.into()))
    }
}

pub fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|e| SchemaError::Read { path: path.display().to_string(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| SchemaError::Read { path: path.display().to_string(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_never_quote_the_instance() {
        let schema = Schema::compile(
            "t.json",
            serde_json::json!({
                "$id": "https://doudi.example/t.json",
                "title": "t",
                "description": "a test schema",
                "examples": [],
                "type": "object",
                "additionalProperties": false,
                "required": ["event_id"],
                "properties": {
                    "event_id": {"type": "string", "format": "uuid"},
                    "status": {"enum": ["applied", "rejected"]},
                    "person": {"type": "string"}
                }
            }),
        )
        .expect("compiles");
        let payload = serde_json::json!({
            "event_id": "220102197903031117",
            "status": "上官飞燕",
            "person": {"id": "220102197903031117", "name": "上官飞燕"},
            "220102197903031117": "上官飞燕",
            "上官飞燕": 1
        });
        let violations = schema.violations(&payload);
        assert!(violations.len() >= 4, "{violations:?}");
        let all = format!("{violations:?}");
        assert!(!all.contains("197903031") && !all.contains("上官飞燕"), "{all}");
        assert!(all.contains("properties the schema does not allow") && all.contains("/person"), "{all}");
    }
}
