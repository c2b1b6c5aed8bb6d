//! Canonical topics and their JSON Schemas: the catalogue, the compiled registry, custom formats,
//! compatibility with published versions, and the checks behind `doudi schemas`.

pub mod catalogue;
pub mod compat;
pub mod formats;
pub mod registry;

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

pub use catalogue::{Catalogue, Topic};
pub use registry::{Registry, Schema, Violation};

/// The lock file of published schemas, beside the schemas.
pub const LOCK_FILE: &str = "schemas.lock.json";
/// Fixtures: `fixtures/<schema stem>.jsonl`, one `{"valid": bool, "why": "...", "data": {...}}` a line.
pub const FIXTURES_DIR: &str = "fixtures";

/// One problem found by `doudi schemas check`.
#[derive(Debug, Serialize)]
pub struct Problem {
    pub file: String,
    pub message: String,
}

/// Runs every check on the schema folder. An empty list means the folder passes.
pub fn check(dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let problem = |file: &str, message: String| Problem { file: file.into(), message };
    let registry = match Registry::load(dir) {
        Ok(r) => r,
        Err(e) => return vec![problem("schemas", e.to_string())],
    };
    // Every schema file in the folder is in the catalogue (a stray schema is an unpublished topic).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && name != LOCK_FILE && !registry.schemas.contains_key(&name) {
                problems.push(problem(&name, "is not named by any topic in topics.toml".into()));
            }
        }
    }
    for (file, schema) in &registry.schemas {
        let expected_id = format!("https://schemas.doudi.jl.gov.cn/{file}");
        if schema.id != expected_id {
            problems.push(problem(file, format!("$id is `{}`, expected `{expected_id}`", schema.id)));
        }
        let examples = schema.examples();
        if examples.is_empty() {
            problems.push(problem(file, "has no examples".into()));
        }
        for (i, example) in examples.iter().enumerate() {
            for v in schema.violations(example) {
                problems.push(problem(file, format!("examples[{i}] is invalid at {v}")));
            }
        }
        problems.extend(check_fixtures(dir, file, schema));
    }
    problems.extend(check_field_purposes(&registry));
    problems.extend(check_compatibility(dir, &registry));
    problems
}

/// Data minimisation: every field an agency receives is listed with its purpose and legal basis,
/// and nothing is listed that the schema does not carry.
fn check_field_purposes(registry: &Registry) -> Vec<Problem> {
    let mut problems = Vec::new();
    for t in &registry.catalogue.topics {
        let agency_topic = t.name.starts_with(crate::topics::ENTITLEMENT_TOPIC_PREFIX);
        if !agency_topic && t.fields.is_empty() {
            continue;
        }
        let Some(schema) = registry.schemas.get(&t.schema) else { continue };
        let properties: std::collections::BTreeSet<&str> = schema
            .document
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let listed: std::collections::BTreeSet<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
        for missing in properties.difference(&listed) {
            problems.push(Problem {
                file: "topics.toml".into(),
                message: format!("topic `{}`: field `{missing}` has no purpose and legal basis in [[topic.fields]]", t.name),
            });
        }
        for extra in listed.difference(&properties) {
            problems.push(Problem {
                file: "topics.toml".into(),
                message: format!("topic `{}`: [[topic.fields]] lists `{extra}`, which its schema does not carry", t.name),
            });
        }
        for f in &t.fields {
            if f.purpose.trim().is_empty() || f.legal_basis.trim().is_empty() {
                problems.push(Problem {
                    file: "topics.toml".into(),
                    message: format!("topic `{}`: field `{}` needs a purpose and a legal basis", t.name, f.name),
                });
            }
        }
    }
    problems
}

/// Fixture lines and whether each validated as expected.
pub fn fixtures(dir: &Path, file: &str) -> Result<Vec<(usize, bool, String, Value)>, String> {
    let stem = file.trim_end_matches(".json");
    let path = dir.join(FIXTURES_DIR).join(format!("{stem}.jsonl"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), i + 1))?;
        let valid = v.get("valid").and_then(Value::as_bool).ok_or(format!("{}:{}: lacks `valid`", path.display(), i + 1))?;
        let why = v.get("why").and_then(Value::as_str).unwrap_or_default().to_string();
        let data = v.get("data").cloned().ok_or(format!("{}:{}: lacks `data`", path.display(), i + 1))?;
        out.push((i + 1, valid, why, data));
    }
    Ok(out)
}

fn check_fixtures(dir: &Path, file: &str, schema: &Schema) -> Vec<Problem> {
    let mut problems = Vec::new();
    match fixtures(dir, file) {
        Err(message) => problems.push(Problem { file: file.into(), message }),
        Ok(lines) => {
            if !lines.iter().any(|l| l.1) || !lines.iter().any(|l| !l.1) {
                problems.push(Problem { file: file.into(), message: "needs both valid and invalid fixtures".into() });
            }
            for (line, valid, why, data) in lines {
                if schema.is_valid(&data) != valid {
                    problems.push(Problem {
                        file: file.into(),
                        message: format!("fixture line {line} ({why}) should be {}", if valid { "valid" } else { "invalid" }),
                    });
                }
            }
        }
    }
    problems
}

/// Reads the lock file (absent: nothing published yet).
pub fn read_lock(dir: &Path) -> Result<compat::Lock, String> {
    let path = dir.join(LOCK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(compat::Lock::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn check_compatibility(dir: &Path, registry: &Registry) -> Vec<Problem> {
    let lock = match read_lock(dir) {
        Ok(lock) => lock,
        Err(message) => return vec![Problem { file: LOCK_FILE.into(), message }],
    };
    let mut problems = Vec::new();
    for (file, published) in &lock.schemas {
        let Some(schema) = registry.schemas.get(file) else {
            problems.push(Problem { file: file.clone(), message: "is published but was deleted; a published version must stay".into() });
            continue;
        };
        if compat::fingerprint(&schema.document) == published.fingerprint {
            continue;
        }
        for change in compat::breaking_changes(&published.shape, &compat::shape(&schema.document)) {
            problems.push(Problem {
                file: file.clone(),
                message: format!("breaking change to a published version: {change}; publish a new major version instead"),
            });
        }
    }
    for file in registry.schemas.keys() {
        if !lock.schemas.contains_key(file) {
            problems.push(Problem { file: file.clone(), message: "is not published: run `doudi schemas publish` to record it".into() });
        }
    }
    problems
}

/// Records the current schemas as published. Refuses while any check fails, so a breaking change
/// can never be published over its old version.
pub fn publish(dir: &Path) -> Result<usize, Vec<Problem>> {
    let problems: Vec<Problem> = check(dir).into_iter().filter(|p| !p.message.contains("is not published")).collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let registry = Registry::load(dir).map_err(|e| vec![Problem { file: "schemas".into(), message: e.to_string() }])?;
    let lock = compat::Lock {
        schemas: registry
            .schemas
            .iter()
            .map(|(file, s)| {
                (file.clone(), compat::Published { fingerprint: compat::fingerprint(&s.document), shape: compat::shape(&s.document) })
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&lock).unwrap_or_default() + "\n";
    std::fs::write(dir.join(LOCK_FILE), text).map_err(|e| vec![Problem { file: LOCK_FILE.into(), message: e.to_string() }])?;
    Ok(lock.schemas.len())
}

/// One invalid line of a JSON Lines file.
#[derive(Debug, Serialize)]
pub struct InvalidLine {
    pub line: usize,
    pub violations: Vec<Violation>,
}

/// Validates each line of `reader` against `schema`; blank lines are skipped.
pub fn validate_lines(schema: &Schema, reader: impl BufRead) -> Result<(usize, Vec<InvalidLine>), std::io::Error> {
    let mut count = 0;
    let mut invalid = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        count += 1;
        let violations = match serde_json::from_str::<Value>(&line) {
            Ok(value) => schema.violations(&value),
            Err(e) => vec![Violation {
                pointer: String::new(),
                message: format!("not JSON: {}", e.to_string().split(" at line ").next().unwrap_or_default()),
            }],
        };
        if !violations.is_empty() {
            invalid.push(InvalidLine { line: i + 1, violations });
        }
    }
    Ok((count, invalid))
}
