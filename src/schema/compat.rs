//! Compatibility of a schema with its published version.
//!
//! A published schema is recorded in `schemas/schemas.lock.json` with a fingerprint (SHA-256 of its
//! canonical JSON) and its *shape*: every property path with its types, enumerated values, the
//! constraints on it and whether it is required. A change is breaking, and refused, when it
//! removes or renames a field, narrows a type (fewer types or values, a new or tighter pattern,
//! format, bound or closed object), or adds a required field. Such a change needs a new major
//! version (a new topic `...v2` with its own schema). Additive changes (a new optional field, a
//! wider type) pass; `doudi schemas publish` then records them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What consumers rely on at one property path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldShape {
    pub required: bool,
    /// JSON types allowed; empty means any.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub types: BTreeSet<String>,
    /// Allowed values (`enum` / `const`), as JSON text; absent means unrestricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeSet<String>>,
    /// Other constraints (pattern, format, bounds, closed objects, conditionals), as JSON text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
}

pub type Shape = BTreeMap<String, FieldShape>;

/// One published schema in the lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub fingerprint: String,
    pub shape: Shape,
}

/// `schemas/schemas.lock.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub schemas: BTreeMap<String, Published>,
}

/// SHA-256 of the schema's canonical JSON (keys sorted, no insignificant space).
pub fn fingerprint(schema: &Value) -> String {
    let canonical = serde_json::to_string(&canonicalise(schema)).unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn canonicalise(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, canonicalise(v))).collect();
            serde_json::to_value(sorted).unwrap_or(Value::Null)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonicalise).collect()),
        other => other.clone(),
    }
}

const CONSTRAINT_KEYWORDS: [&str; 14] = [
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "additionalProperties",
    "allOf",
    "not",
    "multipleOf",
];

/// The shape of a schema document: every property path reachable from the root.
pub fn shape(schema: &Value) -> Shape {
    let mut out = Shape::new();
    walk(schema, schema, "", true, &mut out, 0);
    out
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => root.pointer(pointer).unwrap_or(node),
        None => node,
    }
}

fn walk(root: &Value, node: &Value, path: &str, required: bool, out: &mut Shape, depth: usize) {
    if depth > 32 {
        return;
    }
    let node = resolve(root, node);
    let mut field = FieldShape { required, ..FieldShape::default() };
    match node.get("type") {
        Some(Value::String(t)) => {
            field.types.insert(t.clone());
        }
        Some(Value::Array(ts)) => field.types.extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        field.values = Some(values.iter().map(Value::to_string).collect());
    }
    if let Some(c) = node.get("const") {
        field.values = Some(BTreeSet::from([c.to_string()]));
    }
    for keyword in CONSTRAINT_KEYWORDS {
        if let Some(v) = node.get(keyword) {
            field.constraints.insert(keyword.to_string(), canonicalise(v).to_string());
        }
    }
    if let Some(alternatives) = node.get("anyOf").or_else(|| node.get("oneOf")).and_then(Value::as_array) {
        let mut types = BTreeSet::new();
        for (i, alt) in alternatives.iter().enumerate() {
            let alt = resolve(root, alt);
            if let Some(t) = alt.get("type").and_then(Value::as_str) {
                types.insert(t.to_string());
            }
            walk(root, alt, &format!("{path}|{i}"), required, out, depth + 1);
        }
        if field.types.is_empty() {
            field.types = types;
        }
    }
    out.insert(if path.is_empty() { "/".into() } else { path.to_string() }, field);
    let required_names: BTreeSet<&str> =
        node.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            walk(root, sub, &format!("{path}/{name}"), required_names.contains(name.as_str()), out, depth + 1);
        }
    }
    if let Some(items) = node.get("items") {
        walk(root, items, &format!("{path}/[]"), required, out, depth + 1);
    }
}

/// Why a change breaks consumers; empty when compatible.
pub fn breaking_changes(published: &Shape, current: &Shape) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, old) in published {
        let Some(new) = current.get(path) else {
            problems.push(format!("field {path} was removed or renamed"));
            continue;
        };
        if new.required && !old.required {
            problems.push(format!("field {path} became required"));
        }
        if !old.types.is_empty() || !new.types.is_empty() {
            let lost: Vec<&String> = if new.types.is_empty() {
                vec![]
            } else {
                old.types.iter().filter(|t| !new.types.contains(*t) && !widened(t, &new.types)).collect()
            };
            if old.types.is_empty() && !new.types.is_empty() {
                problems.push(format!("field {path} now restricts its type to {:?}", new.types));
            } else if !lost.is_empty() {
                problems.push(format!("field {path} no longer accepts type {lost:?}"));
            }
        }
        match (&old.values, &new.values) {
            (None, Some(_)) => problems.push(format!("field {path} now restricts its values")),
            (Some(old_values), Some(new_values)) => {
                let lost: Vec<&String> = old_values.difference(new_values).collect();
                if !lost.is_empty() {
                    problems.push(format!("field {path} no longer accepts {lost:?}"));
                }
            }
            _ => {}
        }
        for (keyword, value) in &new.constraints {
            match old.constraints.get(keyword) {
                None => problems.push(format!("field {path} gained constraint {keyword}")),
                Some(old_value) if old_value != value && !loosened(keyword, old_value, value) => {
                    problems.push(format!("field {path} changed constraint {keyword} from {old_value} to {value}"))
                }
                _ => {}
            }
        }
    }
    for (path, new) in current {
        if !published.contains_key(path) && new.required && !path.contains('|') && parent_exists(published, path) {
            problems.push(format!("new required field {path}"));
        }
    }
    problems
}

fn widened(old_type: &str, new_types: &BTreeSet<String>) -> bool {
    old_type == "integer" && new_types.contains("number")
}

fn parent_exists(published: &Shape, path: &str) -> bool {
    let parent = path.rsplit_once('/').map(|(p, _)| if p.is_empty() { "/" } else { p }).unwrap_or("/");
    published.contains_key(parent)
}

/// Whether a changed bound only accepts more.
fn loosened(keyword: &str, old: &str, new: &str) -> bool {
    let (Ok(old), Ok(new)) = (old.parse::<f64>(), new.parse::<f64>()) else {
        // additionalProperties false → true/absent loosens; other text changes do not.
        return keyword == "additionalProperties" && old == "false" && new != "false";
    };
    match keyword {
        "minimum" | "exclusiveMinimum" | "minLength" | "minItems" => new <= old,
        "maximum" | "exclusiveMaximum" | "maxLength" | "maxItems" => new >= old,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "type": "object", "additionalProperties": false, "required": ["id", "kind"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "kind": {"enum": ["a", "b"]},
                "amount": {"type": "string", "maxLength": 10},
                "count": {"type": "integer", "minimum": 0},
                "nested": {"type": "object", "properties": {"x": {"type": "string"}}}
            }
        })
    }

    fn breaks(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut new = base();
        change(&mut new);
        breaking_changes(&shape(&base()), &shape(&new))
    }

    #[test]
    fn identical_and_additive_changes_pass() {
        assert!(breaks(|_| {}).is_empty());
        assert!(breaks(|s| s["properties"]["note"] = json!({"type": "string"})).is_empty(), "new optional field");
        assert!(breaks(|s| s["properties"]["kind"]["enum"] = json!(["a", "b", "c"])).is_empty(), "wider enum");
        assert!(breaks(|s| s["properties"]["amount"]["type"] = json!(["string", "null"])).is_empty(), "wider type");
        assert!(breaks(|s| s["properties"]["amount"]["maxLength"] = json!(20)).is_empty(), "looser bound");
        assert!(breaks(|s| s["properties"]["count"]["type"] = json!("number")).is_empty(), "integer to number");
    }

    #[test]
    fn removed_field_breaks() {
        let p = breaks(|s| {
            s["properties"].as_object_mut().map(|m| m.remove("amount"));
        });
        assert!(p.iter().any(|p| p.contains("/amount") && p.contains("removed")), "{p:?}");
    }

    #[test]
    fn renamed_field_breaks() {
        let p = breaks(|s| {
            let m = s["properties"].as_object_mut().expect("object");
            let v = m.remove("amount").expect("amount");
            m.insert("sum".into(), v);
        });
        assert!(p.iter().any(|p| p.contains("/amount")), "{p:?}");
    }

    #[test]
    fn narrowed_type_breaks() {
        assert!(!breaks(|s| s["properties"]["kind"]["enum"] = json!(["a"])).is_empty(), "fewer values");
        assert!(!breaks(|s| s["properties"]["count"]["type"] = json!("string")).is_empty(), "other type");
        assert!(!breaks(|s| s["properties"]["amount"]["maxLength"] = json!(5)).is_empty(), "tighter bound");
        assert!(!breaks(|s| s["properties"]["amount"]["pattern"] = json!("^[0-9]+$")).is_empty(), "new pattern");
        assert!(!breaks(|s| s["properties"]["nested"]["additionalProperties"] = json!(false)).is_empty(), "closed object");
        assert!(!breaks(|s| s["properties"]["nested"]["properties"]["x"]["format"] = json!("date")).is_empty(), "new format");
    }

    #[test]
    fn new_required_field_breaks() {
        let p = breaks(|s| {
            s["properties"]["region"] = json!({"type": "string"});
            s["required"] = json!(["id", "kind", "region"]);
        });
        assert!(p.iter().any(|p| p.contains("new required field /region")), "{p:?}");
        let p = breaks(|s| s["required"] = json!(["id", "kind", "amount"]));
        assert!(p.iter().any(|p| p.contains("/amount became required")), "{p:?}");
    }

    #[test]
    fn fingerprint_ignores_key_order() {
        let a = json!({"a": 1, "b": [1, {"c": 2, "d": 3}]});
        let b = json!({"b": [1, {"d": 3, "c": 2}], "a": 1});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"a": 2})));
    }
}
