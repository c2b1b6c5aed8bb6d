//! The topic catalogue (`schemas/topics.toml`): every topic doudi writes or reads, with its schema,
//! partitions, retention, key, writer and readers (purpose and legal basis). It drives topic
//! creation, access and `docs/topics.md`.
//!
//! Guarantees: names are unique; every inbound topic with `dead_letters = true` implies a restricted
//! `dlq.<name>` topic with the dead-letter schema; a reader always states a purpose and a legal basis.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The schema every dead-letter topic uses.
pub const DEAD_LETTER_SCHEMA: &str = "dlq.v1.json";

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the topic catalogue {path}: {message}")]
    Read { path: String, message: String },
    #[error("topic catalogue field `{field}` is invalid: {message}")]
    Field { field: String, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cleanup {
    Delete,
    Compact,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reader {
    /// Who reads (an agency or a doudi component).
    pub who: String,
    /// The broker principals (`User:` names without the prefix) that read for them: the ACLs of
    /// `doudi acl plan`. `doudi-connect-*` stands for every connector.
    #[serde(default)]
    pub principals: Vec<String>,
    /// What they need it for.
    pub purpose: String,
    /// The legal basis, e.g. `吉民发〔2019〕38号 第5条`.
    pub legal_basis: String,
}

/// Why a field of an outbound topic is shared with its readers (data minimisation).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPurpose {
    /// The top-level property of the topic's schema.
    pub name: String,
    /// What the reader needs it for.
    pub purpose: String,
    /// The legal basis for sharing it.
    pub legal_basis: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    pub name: String,
    /// File name in `schemas/`.
    pub schema: String,
    pub description: String,
    pub partitions: i32,
    pub cleanup: Cleanup,
    /// Retention in days (`-1` keeps forever; compacted topics keep the latest per key).
    pub retention_days: i64,
    /// What the message key is.
    pub key: String,
    /// Who writes it.
    pub writer: String,
    /// The broker principals that write it (as [`Reader::principals`]). `doudi acl plan` refuses a
    /// catalogue where a topic has none, or a reader names none.
    #[serde(default)]
    pub writers: Vec<String>,
    pub readers: Vec<Reader>,
    /// Holds raw or sensitive data: readable by named operators only.
    #[serde(default)]
    pub restricted: bool,
    /// Inbound topics: bad records go to `dlq.<name>`.
    #[serde(default)]
    pub dead_letters: bool,
    /// Agency topics: every field with its purpose and legal basis. `doudi schemas check` requires
    /// exactly the schema's properties here for every `exchange.entitlement.*` topic an agency reads.
    #[serde(default)]
    pub fields: Vec<FieldPurpose>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(rename = "topic")]
    pub topics: Vec<Topic>,
}

/// The principal of a department's IT staff, from an inbound topic `dept.<department>.<feed>.v1`:
/// `dept-<department>`.
pub fn department_principal(topic: &str) -> String {
    format!("dept-{}", topic.split('.').nth(1).unwrap_or("unknown"))
}

impl Catalogue {
    pub fn load(dir: &Path) -> Result<Self, CatalogueError> {
        let path = dir.join("topics.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CatalogueError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| CatalogueError::Read { path: "topics.toml".into(), message: e.to_string() })?;
        let mut catalogue: Catalogue = serde_path_to_error::deserialize(de)
            .map_err(|e| CatalogueError::Field { field: e.path().to_string(), message: e.into_inner().message().trim().to_string() })?;
        let dead_letter_topics: Vec<Topic> = catalogue
            .topics
            .iter()
            .filter(|t| t.dead_letters)
            .map(|t| Topic {
                name: crate::topics::dead_letter_topic(&t.name),
                schema: DEAD_LETTER_SCHEMA.into(),
                description: format!(
                    "Records for {} that could not be read, mapped or validated, with the reason and where they came from.",
                    t.name
                ),
                partitions: 1,
                cleanup: Cleanup::Delete,
                retention_days: 90,
                key: t.key.clone(),
                writer: format!("{}; the matcher for events it cannot apply", t.writer),
                writers: t.writers.iter().cloned().chain(["doudi-matcher".to_string()]).collect(),
                readers: vec![Reader {
                    who: "the feed's department IT staff, doudi operators, and the workbench (masked)".into(),
                    principals: vec!["doudi-ops".into(), "doudi-workbench".into(), department_principal(&t.name)],
                    purpose: "correct and resubmit rejected records (`doudi dlq list`, `doudi dlq replay`, the workbench's 退回记录)"
                        .into(),
                    legal_basis: "吉民发〔2019〕38号 第5条 (shared database: complete and correct data)".into(),
                }],
                restricted: true,
                dead_letters: false,
                fields: Vec::new(),
            })
            .collect();
        catalogue.topics.extend(dead_letter_topics);
        catalogue.check()?;
        Ok(catalogue)
    }

    fn check(&self) -> Result<(), CatalogueError> {
        for (i, t) in self.topics.iter().enumerate() {
            let field = |f: &str, message: String| Err(CatalogueError::Field { field: format!("topic[{i}].{f}"), message });
            if self.topics.iter().filter(|o| o.name == t.name).count() > 1 {
                return field("name", format!("`{}` is listed twice", t.name));
            }
            if !t.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')) {
                return field("name", format!("`{}` may use lower-case letters, digits, '.', '-' and '_' only", t.name));
            }
            if t.partitions < 1 {
                return field("partitions", "must be at least 1".into());
            }
            if t.readers.is_empty() || t.readers.iter().any(|r| r.purpose.trim().is_empty() || r.legal_basis.trim().is_empty()) {
                return field("readers", "every topic needs readers, each with a purpose and a legal basis".into());
            }
            for p in t.writers.iter().chain(t.readers.iter().flat_map(|r| &r.principals)) {
                if let Err(message) = crate::acl::check_principal_name(p) {
                    return field("writers", format!("principal `{p}`: {message}"));
                }
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Renders `docs/topics.md`.
    pub fn render_markdown(&self) -> String {
        let mut out = String::from(
            "# Topic catalogue\n\nGenerated from `schemas/topics.toml` by `doudi schemas docs`; a test keeps the two equal. Do not edit by hand.\n\n",
        );
        out.push_str("| topic | schema | partitions | retention | key | writer | restricted |\n|---|---|---|---|---|---|---|\n");
        for t in &self.topics {
            let retention = match (t.cleanup, t.retention_days) {
                (Cleanup::Compact, _) => "compacted".to_string(),
                (_, -1) => "forever".to_string(),
                (_, days) => format!("{days} days"),
            };
            out.push_str(&format!(
                "| `{}` | [{}](../schemas/{}) | {} | {} | {} | {} | {} |\n",
                t.name,
                t.schema,
                t.schema,
                t.partitions,
                retention,
                t.key,
                t.writer,
                if t.restricted { "yes" } else { "no" }
            ));
        }
        for t in &self.topics {
            out.push_str(&format!("\n## `{}`\n\n{}\n\n", t.name, t.description));
            let principals = |ps: &[String]| ps.iter().map(|p| format!("`User:{p}`")).collect::<Vec<_>>().join(", ");
            out.push_str(&format!("Written by {} (`doudi acl plan`).\n\n", principals(&t.writers)));
            out.push_str("| reader | principals | purpose | legal basis |\n|---|---|---|---|\n");
            for r in &t.readers {
                out.push_str(&format!("| {} | {} | {} | {} |\n", r.who, principals(&r.principals), r.purpose, r.legal_basis));
            }
            if !t.fields.is_empty() {
                out.push_str("\n| field | purpose | legal basis |\n|---|---|---|\n");
                for f in &t.fields {
                    out.push_str(&format!("| `{}` | {} | {} |\n", f.name, f.purpose, f.legal_basis));
                }
            }
        }
        out
    }
}
