//! Declarative mapping of a source record (a CSV/XLSX row or a JSON object) to the canonical form.
//!
//! Guarantees: a mapping either yields a JSON object or a [`MapFailure`] naming the column and a
//! reason a caseworker can act on — in Chinese, without the offending value (it may be personal
//! data). Transforms run in the order configured; nothing here panics on any input.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use serde_json::{Map, Value};

use super::config::{ConnectorConfig, DerivedPart, FieldMap, MappingMode, Transform};
use crate::idnum::{IdError, IdNumber};

/// A dead letter's `error_code`: a small fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The bytes do not decode under the declared encoding.
    Decode,
    /// The row or line cannot be parsed (bad CSV quoting, invalid JSON, unreadable cell).
    Parse,
    /// A field is missing or a transform refused its value.
    Mapping,
    /// The mapped record does not satisfy the topic's schema.
    Validation,
    /// The same person appears more than once in one roster snapshot.
    Duplicate,
    /// The row, or the record made from it, is larger than the source or the topic allows.
    Size,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Decode => "decode",
            ErrorCode::Parse => "parse",
            ErrorCode::Mapping => "mapping",
            ErrorCode::Validation => "validation",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::Size => "size",
        }
    }

    /// The pipeline stage that produced this code.
    pub fn stage(self) -> &'static str {
        match self {
            ErrorCode::Decode | ErrorCode::Parse => "read",
            ErrorCode::Size => "size",
            ErrorCode::Mapping => "map",
            ErrorCode::Validation => "validate",
            ErrorCode::Duplicate => "snapshot",
        }
    }
}

/// A value as the source gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    /// A number cell, as text (spreadsheets store numbers as floats; their text is exact enough
    /// for identifiers and two-decimal amounts, and no arithmetic is done on it).
    Number(String),
    Date(NaiveDate),
    Bool(bool),
    Empty,
}

impl Cell {
    fn to_value(&self) -> Value {
        match self {
            Cell::Text(s) | Cell::Number(s) => Value::String(s.clone()),
            Cell::Date(d) => Value::String(iso_date(*d)),
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Empty => Value::Null,
        }
    }
}

/// The fields of one record.
#[derive(Clone, Debug)]
pub enum Fields {
    /// A row under a header (CSV, XLSX).
    Columns { header: Arc<Header>, cells: Vec<Cell> },
    /// A JSON object (JSON Lines, HTTP push, database rows).
    Object(Map<String, Value>),
}

/// Column names and their positions.
#[derive(Debug)]
pub struct Header {
    pub names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Header {
    pub fn new(names: Vec<String>) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Header { names, index }
    }
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// Why a record could not be mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFailure {
    pub code: ErrorCode,
    pub column: Option<String>,
    pub reason: String,
}

impl MapFailure {
    pub fn new(code: ErrorCode, column: Option<&str>, reason: impl Into<String>) -> Self {
        MapFailure { code, column: column.map(String::from), reason: reason.into() }
    }
}

fn id_reason(e: &IdError) -> &'static str {
    match e {
        IdError::Empty => "身份证号为空",
        IdError::Length(_) => "身份证号位数不对（应为18位，或15位旧号码）",
        IdError::Characters => "身份证号含有数字和末位X以外的字符",
        IdError::CheckCharacter => "身份证号校验码（最后一位）错误，请核对号码",
        IdError::BirthDate => "身份证号中的出生日期（第7–14位）不是有效日期",
        IdError::FutureBirthDate => "身份证号中的出生日期晚于今天",
        IdError::AncientBirthDate => "身份证号中的出生日期早于1900年",
        IdError::UnknownProvince => "身份证号前两位不是有效的省级代码",
    }
}

/// Applies one field's transforms.
fn apply(config: &ConnectorConfig, column: &str, transforms: &[Transform], mut value: Value) -> Result<Value, MapFailure> {
    let fail = |reason: String| MapFailure::new(ErrorCode::Mapping, Some(column), format!("{column}：{reason}"));
    for t in transforms {
        if value.is_null() {
            break;
        }
        value = match t {
            Transform::Trim => match value {
                Value::String(s) => {
                    Value::String(s.trim_matches(|c: char| c.is_whitespace() || c == '\u{3000}' || c == '\u{feff}').to_string())
                }
                other => other,
            },
            Transform::Upper => match value {
                Value::String(s) => Value::String(s.to_ascii_uppercase()),
                other => other,
            },
            Transform::EmptyAsNull => match &value {
                Value::String(s) if s.is_empty() => Value::Null,
                _ => value,
            },
            Transform::IdNumber => {
                let text = as_text(&value).ok_or_else(|| fail("身份证号应为文本".into()))?;
                match IdNumber::parse(&text) {
                    Ok(id) => Value::String(id.as_str().to_string()),
                    Err(e) => return Err(fail(id_reason(&e).into())),
                }
            }
            Transform::Amount => {
                let text = as_text(&value).ok_or_else(|| fail("金额应为数字".into()))?;
                let cleaned: String = text.chars().filter(|c| !matches!(c, ',' | '，' | ' ' | '\u{3000}' | '¥' | '￥')).collect();
                let amount = crate::money::parse_strict(&cleaned).map_err(|_| fail("不是有效金额（例：1,800.00）".into()))?;
                if amount.is_sign_negative() {
                    return Err(fail("金额不能为负数".into()));
                }
                if amount.scale() > 2 {
                    return Err(fail("金额最多两位小数".into()));
                }
                Value::String(amount.to_string())
            }
            Transform::Integer => {
                let text = as_text(&value).ok_or_else(|| fail("应为整数".into()))?;
                let text = text.strip_suffix(".0").unwrap_or(&text);
                let n: i64 = text.parse().map_err(|_| fail("不是整数".into()))?;
                Value::from(n)
            }
            Transform::Date(formats) => {
                let text = as_text(&value).ok_or_else(|| fail("日期应为文本或日期单元格".into()))?;
                let date = formats
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once("%Y-%m-%d"))
                    .find_map(|f| NaiveDate::parse_from_str(&text, f).ok())
                    // chrono's %Y takes any number of digits: "19/9/1" would be the year 19.
                    .filter(|d| (1900..=2100).contains(&d.year()))
                    .ok_or_else(|| {
                        fail(format!("不是有效日期（应写作 {}）", formats.iter().map(|f| date_example(f)).collect::<Vec<_>>().join(" 或 ")))
                    })?;
                Value::String(iso_date(date))
            }
            Transform::ExcelDate => {
                let text = as_text(&value).ok_or_else(|| fail("应为 Excel 日期序号".into()))?;
                let date = excel_serial_date(&text).ok_or_else(|| fail("不是有效的 Excel 日期序号".into()))?;
                Value::String(iso_date(date))
            }
            Transform::CodeList(list) => {
                let text = as_text(&value).ok_or_else(|| fail("代码值应为文本".into()))?;
                let codes = config.code_lists.get(list).ok_or_else(|| fail(format!("代码表 {list} 未定义")))?;
                match codes.get(text.as_str()) {
                    Some(v) => toml_to_json(v),
                    None => {
                        let allowed: Vec<&str> = codes.keys().map(String::as_str).collect();
                        return Err(fail(format!("取值不在代码表中，应为：{}", allowed.join("、"))));
                    }
                }
            }
            Transform::Slice([start, end]) => {
                let text = as_text(&value).ok_or_else(|| fail("应为文本".into()))?;
                let chars: Vec<char> = text.chars().collect();
                if chars.len() < *end {
                    return Err(fail(format!("长度不足 {end} 位")));
                }
                Value::String(chars[*start..*end].iter().collect())
            }
        };
    }
    Ok(value)
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Boolean(b) => Value::Bool(*b),
        other => Value::String(other.to_string()),
    }
}

/// How a date format looks to a person: `%Y年%m月%d日` → `2019年12月25日`.
fn date_example(format: &str) -> String {
    format.replace("%Y", "2019").replace("%m", "12").replace("%d", "25").replace("%-m", "12").replace("%-d", "25")
}

/// An Excel serial day number (1900 system, with its fictitious 1900-02-29) as a date.
pub fn excel_serial_date(text: &str) -> Option<NaiveDate> {
    let whole = text.trim().split('.').next()?;
    let serial: i64 = whole.parse().ok()?;
    if !(1..=2_958_465).contains(&serial) {
        return None;
    }
    let epoch = if serial > 60 { NaiveDate::from_ymd_opt(1899, 12, 30)? } else { NaiveDate::from_ymd_opt(1899, 12, 31)? };
    epoch.checked_add_signed(chrono::Duration::days(serial))
}

fn source_value(fields: &Fields, from: &str) -> Option<Value> {
    match fields {
        Fields::Columns { header, cells } => header.position(from).map(|i| cells.get(i).map(Cell::to_value).unwrap_or(Value::Null)),
        Fields::Object(map) => Some(map.get(from).cloned().unwrap_or(Value::Null)),
    }
}

fn derive(output: &Map<String, Value>, from: &str, part: DerivedPart) -> Option<Value> {
    let id = IdNumber::parse(output.get(from)?.as_str()?).ok()?;
    Some(match part {
        DerivedPart::BirthDate => Value::String(iso_date(id.birth_date())),
        DerivedPart::Sex => serde_json::to_value(id.sex()).ok()?,
        DerivedPart::Division => Value::String(id.division().to_string()),
    })
}

/// A date as `YYYY-MM-DD` (what `format("%Y-%m-%d")` gives for the years 0–9999, without parsing
/// the format string for every value).
fn iso_date(date: NaiveDate) -> String {
    let mut text = String::with_capacity(10);
    let _ = write!(text, "{:04}-{:02}-{:02}", date.year(), date.month(), date.day());
    text
}

/// Maps one record to its canonical JSON object.
pub fn map_record(config: &ConnectorConfig, fields: &Fields) -> Result<Map<String, Value>, MapFailure> {
    match config.mapping.mode {
        MappingMode::Fields => map_fields(config, fields),
        MappingMode::Passthrough => {
            let Fields::Object(input) = fields else {
                return Err(MapFailure::new(ErrorCode::Parse, None, "passthrough mapping needs JSON records"));
            };
            let mut output = input.clone();
            for f in &config.fields {
                let Some(path) = &f.from else { continue };
                transform_path(config, f, &mut output, path)?;
            }
            Ok(output)
        }
    }
}

fn map_fields(config: &ConnectorConfig, fields: &Fields) -> Result<Map<String, Value>, MapFailure> {
    let mut output = Map::new();
    for f in &config.fields {
        let column = f.from.as_deref().unwrap_or(&f.target);
        let raw = if let Some(from) = &f.from {
            match source_value(fields, from) {
                Some(v) => v,
                None => return Err(MapFailure::new(ErrorCode::Parse, Some(from), format!("文件缺少列“{from}”"))),
            }
        } else if let Some(c) = &f.constant {
            toml_to_json(c)
        } else if let Some(d) = &f.derive {
            derive(&output, &d.from, d.part).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let value = apply(config, column, &f.transforms, raw)?;
        let empty = value.is_null() || value.as_str().is_some_and(str::is_empty);
        if empty {
            if f.required {
                return Err(MapFailure::new(ErrorCode::Mapping, Some(column), format!("{column}：必填项为空")));
            }
            continue;
        }
        output.insert(f.target.clone(), value);
    }
    Ok(output)
}

/// Applies a field's transforms at every place its path names (`members[*].id_number`).
fn transform_path(config: &ConnectorConfig, f: &FieldMap, root: &mut Map<String, Value>, path: &str) -> Result<(), MapFailure> {
    fn walk(config: &ConnectorConfig, f: &FieldMap, node: &mut Value, segments: &[&str], shown: String) -> Result<(), MapFailure> {
        let Some((first, rest)) = segments.split_first() else {
            let value = std::mem::take(node);
            let mapped = apply(config, &shown, &f.transforms, value)?;
            if (mapped.is_null() || mapped.as_str().is_some_and(str::is_empty)) && f.required {
                return Err(MapFailure::new(ErrorCode::Mapping, Some(&shown), format!("{shown}：必填项为空")));
            }
            *node = mapped;
            return Ok(());
        };
        let (key, all) = match first.strip_suffix("[*]") {
            Some(k) => (k, true),
            None => (*first, false),
        };
        let Some(obj) = node.as_object_mut() else { return Ok(()) };
        let Some(child) = obj.get_mut(key) else {
            if f.required && rest.is_empty() {
                return Err(MapFailure::new(ErrorCode::Mapping, Some(&shown), format!("{shown}{key}：必填项缺失")));
            }
            return Ok(());
        };
        if all {
            let Some(items) = child.as_array_mut() else {
                return Err(MapFailure::new(ErrorCode::Mapping, Some(key), format!("{key}：应为数组")));
            };
            for (i, item) in items.iter_mut().enumerate() {
                walk(config, f, item, rest, format!("{shown}{key}[{i}]."))?;
            }
            Ok(())
        } else {
            walk(config, f, child, rest, format!("{shown}{key}."))
        }
    }
    let segments: Vec<&str> = path.split('.').collect();
    let mut node = Value::Object(std::mem::take(root));
    let result = walk(config, f, &mut node, &segments, String::new());
    if let Value::Object(map) = node {
        *root = map;
    }
    result.map_err(|mut e| {
        if let Some(c) = &mut e.column {
            *c = c.trim_end_matches('.').to_string();
        }
        e.reason = e.reason.replace(".：", "：");
        e
    })
}

/// The value at a key path such as `id_number` or `members[relation=head].id_number`.
pub fn lookup<'a>(record: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let first = segments.next()?;
    let mut node = select(record, first)?;
    for segment in segments {
        node = select(node.as_object()?, segment)?;
    }
    Some(node)
}

fn select<'a>(object: &'a Map<String, Value>, segment: &str) -> Option<&'a Value> {
    match segment.split_once('[') {
        None => object.get(segment),
        Some((key, filter)) => {
            let (field, wanted) = filter.strip_suffix(']')?.split_once('=')?;
            object.get(key)?.as_array()?.iter().find(|item| item.get(field).and_then(Value::as_str) == Some(wanted))
        }
    }
}
