//! A delivery's configuration (`connectors/<agency>-out.toml`): which agency's entitlement topic is
//! delivered, and to what sink. Agency specifics live here, never in code.
//!
//! Guarantees: unknown fields are refused; [`DeliveryConfig::load`] checks every cross-field rule
//! (a known agency, a URL the HTTP sink can use, column lists naming payload fields, SQL
//! identifiers) and names the field at fault.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::topics::{AGENCIES, agency_topic};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryConfigError {
    #[error("cannot read delivery config {path}: {message}")]
    Read { path: String, message: String },
    #[error("delivery config {path}: field `{field}` is invalid: {message}")]
    Field { path: String, field: String, message: String },
}

/// The whole delivery file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub delivery: DeliverySection,
    pub sink: Sink,
    /// Where the config file was loaded from (set by `load`).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Short name, unique across deliveries: used in metrics, the consumer group and the sink label.
    pub name: String,
    /// The agency whose entitlement topic is delivered: medical, education, housing, hrss or union.
    pub agency: String,
    /// The agency, for people (e.g. `住建 housing`).
    pub department: String,
    /// Consumer group (default `doudi-deliver-<name>`).
    #[serde(default)]
    pub group: Option<String>,
}

/// Where the events go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sink {
    /// POST each event as JSON to the agency's endpoint, one at a time and in order.
    Http {
        /// `https://…` (plain `http://` only for a host on the loopback interface).
        url: String,
        /// Environment variable holding the bearer token the agency gave us (optional).
        #[serde(default)]
        token_env: Option<String>,
        /// A PEM file of the certificate authorities to trust for this endpoint, besides the system's.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Time allowed for one request, in seconds.
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
        /// First retry delay, in milliseconds; doubled after each failure (with jitter: up to as much again, at random).
        #[serde(default = "default_initial_backoff_ms")]
        initial_backoff_ms: u64,
        /// Longest delay between retries, in seconds. Retries of a 5xx or a timeout never stop.
        #[serde(default = "default_max_backoff_secs")]
        max_backoff_secs: u64,
    },
    /// A daily file the agency imports: every event of the day (China Standard Time), in order.
    File {
        /// Folder the files are written to (created if missing).
        directory: PathBuf,
        /// `csv` or `xlsx`.
        format: FileFormat,
        /// For CSV: `utf-8` or `gbk`.
        #[serde(default)]
        encoding: FileEncoding,
        /// The file is `<file_prefix>-<YYYY-MM-DD>.<format>`, with a `.manifest.json` beside it.
        file_prefix: String,
        /// The columns, in order.
        columns: Vec<Column>,
    },
    /// Upsert each event into a table the agency reads, keyed by the entitlement.
    Table {
        /// Environment variable holding the database URL (default: doudi's own database).
        #[serde(default)]
        database_url_env: Option<String>,
        /// The table (created if missing, with every column as text).
        table: String,
        /// The columns; the key is (`kind`, `id_number`) and must be among them.
        columns: Vec<Column>,
    },
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Csv,
    Xlsx,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum FileEncoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "gbk")]
    Gbk,
}

/// One column: a heading (or table column) and the event field it holds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The column heading in a file, or the column name in a table.
    pub name: String,
    /// The event's field (`id_number`, `kind`, `yearly_amount`, …); `rules` is joined with spaces.
    pub field: String,
    /// Values of this field written as the agency's own codes (e.g. `granted` → `新增`).
    #[serde(default)]
    pub codes: std::collections::BTreeMap<String, String>,
}

fn default_timeout_secs() -> u64 {
    10
}
fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_secs() -> u64 {
    300
}

/// The fields an entitlement event may carry (the union of the agencies' schemas).
pub const EVENT_FIELDS: [&str; 13] = [
    "event_id",
    "change",
    "agency",
    "kind",
    "id_number",
    "name",
    "household_id",
    "region",
    "effective_date",
    "rules",
    "yearly_amount",
    "student_level",
    "category",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

impl DeliveryConfig {
    pub fn load(path: &Path) -> Result<Self, DeliveryConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DeliveryConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        let de = toml::Deserializer::parse(&text)
            .map_err(|e| DeliveryConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        let mut config: DeliveryConfig = serde_path_to_error::deserialize(de).map_err(|e| DeliveryConfigError::Field {
            path: path.display().to_string(),
            field: e.path().to_string(),
            message: e.into_inner().message().trim().to_string(),
        })?;
        config.path = path.to_path_buf();
        config.check()?;
        Ok(config)
    }

    /// The catalogue topic delivered.
    /// Whether the sink is the daily file (a batch run, not a daemon).
    pub fn is_file(&self) -> bool {
        matches!(self.sink, Sink::File { .. })
    }

    pub fn topic(&self) -> String {
        agency_topic(&self.delivery.agency)
    }

    pub fn group(&self) -> String {
        self.delivery.group.clone().unwrap_or_else(|| format!("doudi-deliver-{}", self.delivery.name))
    }

    fn check(&self) -> Result<(), DeliveryConfigError> {
        let field = |field: &str, message: String| {
            Err(DeliveryConfigError::Field { path: self.path.display().to_string(), field: field.to_string(), message })
        };
        if !is_identifier(&self.delivery.name.replace('-', "_")) {
            return field("delivery.name", "use lower-case letters, digits, '-' and '_'".into());
        }
        if !AGENCIES.contains(&self.delivery.agency.as_str()) {
            return field("delivery.agency", format!("`{}` is not one of {}", self.delivery.agency, AGENCIES.join(", ")));
        }
        let check_columns = |columns: &[Column], prefix: &str| -> Result<(), DeliveryConfigError> {
            if columns.is_empty() {
                return field(&format!("{prefix}.columns"), "list at least one column".into());
            }
            for (i, c) in columns.iter().enumerate() {
                if !EVENT_FIELDS.contains(&c.field.as_str()) {
                    return field(
                        &format!("{prefix}.columns[{i}].field"),
                        format!("`{}` is not an event field ({})", c.field, EVENT_FIELDS.join(", ")),
                    );
                }
                if c.name.trim().is_empty() {
                    return field(&format!("{prefix}.columns[{i}].name"), "must not be empty".into());
                }
            }
            Ok(())
        };
        match &self.sink {
            Sink::Http { url, timeout_secs, initial_backoff_ms, max_backoff_secs, token_env, .. } => {
                let Ok(parsed) = reqwest::Url::parse(url) else { return field("sink.url", "is not a URL".into()) };
                let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]" | "::1"));
                if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
                    return field("sink.url", "must be https:// (plain http:// only on the loopback interface)".into());
                }
                if *timeout_secs == 0 {
                    return field("sink.timeout_secs", "must be at least 1".into());
                }
                if *initial_backoff_ms == 0 || initial_backoff_ms / 1000 > *max_backoff_secs {
                    return field("sink.initial_backoff_ms", "must be above 0 and at most max_backoff_secs".into());
                }
                if let Some(var) = token_env
                    && var.trim().is_empty()
                {
                    return field("sink.token_env", "must name an environment variable".into());
                }
            }
            Sink::File { columns, file_prefix, format, encoding, .. } => {
                check_columns(columns, "sink")?;
                if file_prefix.is_empty() || file_prefix.contains(['/', '\\']) {
                    return field("sink.file_prefix", "must be a plain file name prefix".into());
                }
                if *format == FileFormat::Xlsx && *encoding != FileEncoding::Utf8 {
                    return field("sink.encoding", "applies to CSV only (XLSX is always Unicode)".into());
                }
            }
            Sink::Table { table, columns, .. } => {
                check_columns(columns, "sink")?;
                if !is_identifier(table) {
                    return field("sink.table", "must be a lower-case SQL identifier".into());
                }
                for (i, c) in columns.iter().enumerate() {
                    if !is_identifier(&c.name) {
                        return field(&format!("sink.columns[{i}].name"), "must be a lower-case SQL identifier".into());
                    }
                }
                for key in ["kind", "id_number"] {
                    if !columns.iter().any(|c| c.field == key) {
                        return field("sink.columns", format!("the key field `{key}` must be one of the columns"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A column's value in an event: text, `rules` joined with spaces, codes translated.
pub fn column_value(column: &Column, event: &serde_json::Value) -> String {
    let raw = match event.get(&column.field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    column.codes.get(&raw).cloned().unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<DeliveryConfig, DeliveryConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x-out.toml");
        std::fs::write(&path, text).expect("write");
        DeliveryConfig::load(&path)
    }

    #[test]
    fn shipped_configs_load() {
        for entry in glob::glob("connectors/*-out.toml").expect("glob").flatten() {
            DeliveryConfig::load(&entry).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let base = "[delivery]\nname = \"x\"\nagency = \"education\"\ndepartment = \"教育\"\n";
        let e = load(&format!("{base}[sink]\nkind = \"http\"\nurl = \"http://agency.example/x\"\n")).expect_err("plain http");
        assert!(e.to_string().contains("`sink.url`"), "{e}");
        let e = load(&base.replace("education", "police")).expect_err("agency");
        assert!(e.to_string().contains("delivery"), "{e}");
        let e = load(&format!(
            "{base}[sink]\nkind = \"table\"\ntable = \"edu\"\n[[sink.columns]]\nname = \"kind\"\nfield = \"kind\"\n[[sink.columns]]\nname = \"income\"\nfield = \"income\"\n"
        ))
        .expect_err("field");
        assert!(e.to_string().contains("`sink.columns[1].field`"), "{e}");
        let e = load(&format!("{base}[sink]\nkind = \"http\"\nurl = \"https://a.example/\"\nretries = 3\n")).expect_err("unknown");
        assert!(e.to_string().contains("retries"), "{e}");
    }

    #[test]
    fn column_values() {
        let c = Column { name: "变动".into(), field: "change".into(), codes: [("granted".to_string(), "新增".to_string())].into() };
        assert_eq!(column_value(&c, &serde_json::json!({"change": "granted"})), "新增");
        let r = Column { name: "rules".into(), field: "rules".into(), codes: Default::default() };
        assert_eq!(column_value(&r, &serde_json::json!({"rules": ["D1", "E2"]})), "D1 E2");
    }
}
