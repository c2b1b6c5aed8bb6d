//! A connector's configuration (`connectors/<feed>.toml`): where records come from, how each maps
//! to the canonical form, and which topic it goes to. Department specifics live here, never in code.
//!
//! Guarantees: unknown fields are refused; [`ConnectorConfig::load`] checks every cross-field rule
//! (the topic is in the catalogue, code lists exist, snapshots name their key, transports have what
//! they need) and names the field at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::schema::Catalogue;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read connector config {path}: {message}")]
    Read { path: String, message: String },
    #[error("connector config {path}: field `{field}` is invalid: {message}")]
    Field { path: String, field: String, message: String },
}

/// The whole connector file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub connector: ConnectorSection,
    pub source: SourceSection,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default)]
    pub snapshot: Option<SnapshotSection>,
    #[serde(default)]
    pub test: Option<TestSection>,
    #[serde(default)]
    pub mapping: MappingSection,
    #[serde(default, rename = "field")]
    pub fields: Vec<FieldMap>,
    /// Named code lists: source text → canonical value.
    #[serde(default)]
    pub code_lists: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Where the config file was loaded from (set by `load`).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSection {
    /// Short name, unique across connectors: used in metrics, the transactional id and progress keys.
    pub name: String,
    /// The department it serves, for people (e.g. `教育 education`).
    pub department: String,
    /// The canonical topic records go to.
    pub topic: String,
    /// Rows per Kafka transaction (records, dead letters and the source position commit together).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// The canonical field whose ID number keys the message (HMAC). A path may pick an array
    /// element by a field's value, e.g. `members[relation=head].id_number`.
    #[serde(default = "default_key_field")]
    pub key_field: String,
}

fn default_key_field() -> String {
    "id_number".into()
}

/// `doudi connect test`: fixture input and the expected outcome, beside the config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestSection {
    /// Input file, relative to the config.
    pub input: PathBuf,
    /// Expected canonical records, one JSON object a line, in order.
    pub expected: PathBuf,
    /// Expected dead letters: `{"row": N, "error_code": "...", "column": "..."}` a line.
    pub expected_dead_letters: PathBuf,
}

fn default_batch_rows() -> usize {
    // Back-to-back transactions pay the coordinator's marker round (≈100 ms on a single broker);
    // 10,000 rows amortise it while the process stays under 100 MB (BENCHMARKS.md).
    10_000
}

/// The format of the records.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "format", rename_all = "snake_case")]
pub enum SourceSection {
    Csv {
        encoding: Encoding,
        #[serde(default = "comma")]
        delimiter: String,
        /// The most bytes one row may span, quoted line breaks included. A longer row, or a quote
        /// left open past it, is a dead letter naming the row, and reading goes on at the next line.
        #[serde(default = "default_max_row_bytes")]
        max_row_bytes: usize,
    },
    Xlsx {
        sheet: String,
    },
    Jsonl,
}

fn comma() -> String {
    ",".into()
}

pub fn default_max_row_bytes() -> usize {
    64 * 1024
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Encoding {
    /// UTF-8; a byte-order mark, if present, is skipped.
    #[serde(rename = "utf-8")]
    Utf8,
    /// UTF-8 that starts with a byte-order mark.
    #[serde(rename = "utf-8-bom")]
    Utf8Bom,
    #[serde(rename = "gbk")]
    Gbk,
    #[serde(rename = "gb18030")]
    Gb18030,
}

/// How files or records arrive when running as a daemon.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    /// Only `--input FILE --once`.
    #[default]
    Manual,
    /// Watch a folder; processed files move to `done/`, unreadable ones to `failed/`.
    DropFolder {
        path: PathBuf,
        /// File name pattern, e.g. `*.csv`.
        pattern: String,
        #[serde(default = "default_poll_secs")]
        poll_secs: u64,
        /// How the connector knows a file is completely uploaded.
        #[serde(default)]
        complete: Completion,
        /// For `complete = "stable"`: how long a file's size and modification time must stay
        /// unchanged before it is read.
        #[serde(default = "default_stable_secs")]
        stable_secs: u64,
        /// Failed attempts in a row after which a file moves to `failed/` and the next file goes on.
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
    },
    /// Serve HTTP push: `POST /v1/records` with a JSON or JSON Lines body.
    Http {
        #[serde(default = "default_bind")]
        bind: String,
        port: u16,
        /// Environment variable holding the department's bearer token.
        token_env: String,
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: usize,
    },
    /// Poll a PostgreSQL table by a cursor column.
    PostgresPoll {
        /// Environment variable holding the source database URL.
        url_env: String,
        table: String,
        /// Strictly increasing column (e.g. a bigint id or a change sequence).
        cursor_column: String,
        /// SQL type of the cursor (`bigint`, `timestamptz`, `text`).
        cursor_type: String,
        #[serde(default = "default_poll_secs")]
        poll_secs: u64,
        #[serde(default = "default_batch_rows")]
        batch_rows: usize,
        /// How long a cursor value must have been the table's highest before rows up to it are
        /// read. A transaction that took a lower value (a sequence) but commits later than a
        /// higher one is still read if it commits within this time; set it above the longest
        /// transaction that writes the table. 0 reads at once and may skip such rows.
        #[serde(default = "default_settle_secs")]
        settle_secs: u64,
    },
}

fn default_poll_secs() -> u64 {
    10
}
fn default_settle_secs() -> u64 {
    30
}
fn default_stable_secs() -> u64 {
    10
}
fn default_max_attempts() -> u32 {
    5
}

/// The convention by which a department's upload tells the connector a file is complete. A file
/// is never read while it is still being written. Under every convention, names starting with `.`
/// or ending in `.tmp`, `.part`, `.partial`, `.filepart` or `.uploading` are never read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// `x.csv` is read once `x.csv.done` or `x.csv.ok` exists beside it; the marker moves with it.
    Marker,
    /// Files are uploaded under a temporary name and renamed into place: any file present is complete.
    Rename,
    /// A file is complete once its size and modification time stay unchanged for `stable_secs`.
    #[default]
    Stable,
}
fn default_bind() -> String {
    "0.0.0.0".into()
}
fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}

/// Full-roster snapshots: each file is the whole roster and is diffed against the previous one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSection {
    /// Canonical field identifying a person in the roster.
    pub key: String,
    /// Canonical field that receives `added` / `changed` / `removed`.
    pub change_field: String,
    /// Canonical field that receives the snapshot file's SHA-256.
    #[serde(default)]
    pub snapshot_field: Option<String>,
    /// If more than this share of the previous roster vanishes at once, removals are held until
    /// `doudi connect confirm`.
    #[serde(default = "default_max_removed_share", with = "crate::money::strict")]
    pub max_removed_share: Decimal,
}

fn default_max_removed_share() -> Decimal {
    Decimal::new(20, 2)
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSection {
    /// `fields`: the record is built from the `[[field]]` entries only. `passthrough`: the input
    /// object is kept and the entries transform fields in place (paths such as `members[*].id_number`).
    #[serde(default)]
    pub mode: MappingMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingMode {
    #[default]
    Fields,
    Passthrough,
}

/// One canonical field and how to get it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    /// Canonical field (a path in passthrough mode).
    pub target: String,
    /// Source column (CSV/XLSX header) or JSON key/path.
    #[serde(default)]
    pub from: Option<String>,
    /// A constant value instead of a column.
    #[serde(default, rename = "const")]
    pub constant: Option<toml::Value>,
    /// Derive from another canonical field's ID number: `birth_date`, `sex` or `division`.
    #[serde(default)]
    pub derive: Option<Derive>,
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// A required field that is missing or empty makes the record a dead letter.
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Derive {
    /// The canonical field holding the ID number (mapped earlier).
    pub from: String,
    pub part: DerivedPart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedPart {
    BirthDate,
    Sex,
    Division,
}

/// A step applied to a value, in order.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Strip surrounding white space (also U+3000 and BOM).
    Trim,
    /// Upper-case ASCII letters (e.g. a trailing x in a certificate number).
    Upper,
    /// Normalise a resident ID number (full-width, lower-case x, 15 digits) and validate it.
    IdNumber,
    /// A money amount: thousands separators removed, at most two decimals, as a string.
    Amount,
    /// A whole number.
    Integer,
    /// A date in one of the formats (chrono syntax, e.g. `%Y年%m月%d日`, `%Y/%m/%d`, `%Y%m%d`),
    /// written as `YYYY-MM-DD`. Excel cells holding dates are accepted as they are.
    Date(Vec<String>),
    /// An Excel serial day number (1900 date system) to `YYYY-MM-DD`.
    ExcelDate,
    /// Look the value up in a named code list.
    CodeList(String),
    /// Characters `[start, end)` of the value (by character, not byte).
    Slice([usize; 2]),
    /// An empty string becomes absent.
    EmptyAsNull,
}

impl ConnectorConfig {
    /// The columns a CSV or XLSX file's header must have: every `from` of a `fields` mapping. A
    /// header without one of them would dead-letter every row, and when the header line is missing
    /// altogether the first data row would be taken for it and lost; so such a file fails whole,
    /// naming the missing columns. JSON Lines and passthrough mappings have no header.
    pub fn header_columns(&self) -> Vec<String> {
        let tabular = matches!(self.source, SourceSection::Csv { .. } | SourceSection::Xlsx { .. });
        if !tabular || self.mapping.mode != MappingMode::Fields {
            return Vec::new();
        }
        let mut columns: Vec<String> = Vec::new();
        for from in self.fields.iter().filter_map(|f| f.from.as_ref()) {
            if !columns.contains(from) {
                columns.push(from.clone());
            }
        }
        columns
    }

    /// Checks what running the connector as a daemon needs beyond its file: a transport, and the
    /// environment variables it names (a bearer token of at least 16 characters, a source
    /// database URL). Run at start-up, before any server is contacted, so that a misconfigured
    /// daemon stops naming the field instead of failing later as if a server were down.
    pub fn check_daemon(&self) -> Result<(), ConfigError> {
        let field =
            |field: &str, message: String| ConfigError::Field { path: self.path.display().to_string(), field: field.into(), message };
        match &self.transport {
            Transport::Manual => Err(field("transport.kind", "is `manual`: use --input FILE --once, or set a daemon transport".into())),
            Transport::Http { token_env, .. } if std::env::var(token_env).map_or(true, |t| t.len() < 16) => Err(field(
                "transport.token_env",
                format!("the environment variable {token_env} must hold the department's bearer token (at least 16 characters)"),
            )),
            Transport::PostgresPoll { url_env, .. } if std::env::var(url_env).map_or(true, |u| u.is_empty()) => {
                Err(field("transport.url_env", format!("the environment variable {url_env} is not set")))
            }
            _ => Ok(()),
        }
    }

    /// Reads and checks a connector file against the topic catalogue in `schemas_dir`.
    pub fn load(path: &Path, schemas_dir: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        let de =
            toml::Deserializer::parse(&text).map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        let mut config: ConnectorConfig = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Field {
            path: path.display().to_string(),
            field: e.path().to_string(),
            message: e.into_inner().message().trim().to_string(),
        })?;
        config.path = path.to_path_buf();
        let catalogue = Catalogue::load(schemas_dir)
            .map_err(|e| ConfigError::Read { path: schemas_dir.display().to_string(), message: e.to_string() })?;
        config.check(&catalogue)?;
        Ok(config)
    }

    fn check(&self, catalogue: &Catalogue) -> Result<(), ConfigError> {
        let field = |field: String, message: String| Err(ConfigError::Field { path: self.path.display().to_string(), field, message });
        let name = &self.connector.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return field("connector.name".into(), "use lower-case letters, digits and '-'".into());
        }
        match catalogue.topic(&self.connector.topic) {
            None => return field("connector.topic".into(), format!("`{}` is not in schemas/topics.toml", self.connector.topic)),
            Some(t) if !t.dead_letters => {
                return field("connector.topic".into(), format!("`{}` is not an inbound topic with dead letters", self.connector.topic));
            }
            Some(_) => {}
        }
        if self.connector.batch_rows == 0 || self.connector.batch_rows > 100_000 {
            return field("connector.batch_rows".into(), "must be between 1 and 100000".into());
        }
        if let Transport::DropFolder { max_attempts, stable_secs, .. } = &self.transport {
            if *max_attempts == 0 {
                return field("transport.max_attempts".into(), "must be at least 1".into());
            }
            if *stable_secs > 86_400 {
                return field("transport.stable_secs".into(), "must be at most 86400 (one day)".into());
            }
        }
        if let SourceSection::Csv { max_row_bytes, .. } = &self.source
            && !(256..=16 * 1024 * 1024).contains(max_row_bytes)
        {
            return field("source.max_row_bytes".into(), "must be between 256 and 16777216".into());
        }
        if let SourceSection::Csv { delimiter, .. } = &self.source
            && delimiter.len() != 1
        {
            return field("source.delimiter".into(), "must be one ASCII character".into());
        }
        if self.fields.is_empty() && self.mapping.mode == MappingMode::Fields {
            return field("field".into(), "a connector in `fields` mode needs at least one [[field]]".into());
        }
        let mut targets: Vec<&str> = Vec::new();
        for (i, f) in self.fields.iter().enumerate() {
            let sources = usize::from(f.from.is_some()) + usize::from(f.constant.is_some()) + usize::from(f.derive.is_some());
            if sources != 1 {
                return field(format!("field[{i}]"), "needs exactly one of `from`, `const` or `derive`".into());
            }
            if let Some(d) = &f.derive
                && !targets.contains(&d.from.as_str())
            {
                return field(format!("field[{i}].derive.from"), format!("`{}` must be mapped by an earlier [[field]]", d.from));
            }
            for t in &f.transforms {
                if let Transform::CodeList(list) = t
                    && !self.code_lists.contains_key(list)
                {
                    return field(format!("field[{i}].transforms"), format!("code list `{list}` is not defined under [code_lists]"));
                }
                if let Transform::Slice([start, end]) = t
                    && start >= end
                {
                    return field(format!("field[{i}].transforms"), "slice needs start < end".into());
                }
                if let Transform::Date(formats) = t
                    && formats.is_empty()
                {
                    return field(format!("field[{i}].transforms"), "date needs at least one format".into());
                }
            }
            if self.mapping.mode == MappingMode::Fields && targets.contains(&f.target.as_str()) {
                return field(format!("field[{i}].target"), format!("`{}` is mapped twice", f.target));
            }
            targets.push(&f.target);
        }
        if let Some(s) = &self.snapshot {
            if !targets.contains(&s.key.as_str()) {
                return field("snapshot.key".into(), format!("`{}` is not a mapped field", s.key));
            }
            if s.max_removed_share <= Decimal::ZERO || s.max_removed_share > Decimal::ONE {
                return field("snapshot.max_removed_share".into(), "must be above 0 and at most 1".into());
            }
        }
        match &self.transport {
            Transport::Http { token_env, .. } if token_env.is_empty() => {
                field("transport.token_env".into(), "must name an environment variable".into())
            }
            Transport::PostgresPoll { cursor_type, table, cursor_column, .. } => {
                if !matches!(cursor_type.as_str(), "bigint" | "integer" | "timestamptz" | "timestamp" | "text" | "numeric") {
                    return field(
                        "transport.cursor_type".into(),
                        "must be bigint, integer, numeric, timestamp, timestamptz or text".into(),
                    );
                }
                let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                if !ident(table) {
                    return field("transport.table".into(), "must be a plain (schema.)table name".into());
                }
                if !ident(cursor_column) {
                    return field("transport.cursor_column".into(), "must be a plain column name".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A path relative to the config file's folder.
    pub fn relative(&self, path: &Path) -> PathBuf {
        self.path.parent().map(|dir| dir.join(path)).unwrap_or_else(|| path.to_path_buf())
    }

    /// The CloudEvents source of this connector's records.
    pub fn event_source(&self) -> String {
        format!("doudi://connector/{}", self.connector.name)
    }
}
