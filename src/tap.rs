//! `doudi tap` and `doudi dlq list`: read a topic as an operator, with personal data masked.
//!
//! Guarantees: ID numbers anywhere in a value (also inside free text such as a dead letter's
//! original row) are shown in the masked form `2201**********0015`; fields that name a person
//! (`name`, `…_name`, `姓名`) show only their first character; amounts and other facts are shown as
//! they are only in `tap` of topics that are not restricted: dead letters and restricted topics
//! also hide amounts and, in original rows that are not JSON, cells that look like names or
//! amounts. Reads are read_committed and never commit offsets.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset};
use serde::Serialize;
use serde_json::Value;

use crate::config::KafkaSettings;
use crate::kafka::KafkaError;

/// Masks every run of 15 or more ID-number characters in free text: an ID number, and any longer
/// number that may hold one (a 20-digit disability certificate number is the ID number and two more
/// digits).
pub fn mask_text(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let is_id_char = |c: char| c.is_ascii_digit() || c == 'X' || c == 'x' || ('０'..='９').contains(&c);
        if is_id_char(chars[i]) {
            let start = i;
            while i < chars.len() && is_id_char(chars[i]) {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            let len = i - start;
            out.push_str(&if len >= 15 { crate::idnum::mask(&run) } else { run });
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Masks a JSON value: ID numbers everywhere, names to their first character.
pub fn mask_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let masked = match (k.as_str(), v) {
                        (k, Value::String(s)) if is_name_key(k) => Value::String(mask_name(s)),
                        _ => mask_value(v),
                    };
                    (k.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_value).collect()),
        Value::String(s) => Value::String(mask_text(s)),
        other => other.clone(),
    }
}

/// Whether a key names a person (`name`, `head_name`, `姓名`, `学生姓名`, …).
fn is_name_key(key: &str) -> bool {
    key == "name" || key.ends_with("_name") || key.contains("姓名")
}

/// Whether a key names an amount of money (incomes, wages, payments).
fn is_amount_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["income", "wage", "amount", "paid", "salary", "pension", "收入", "工资", "金额", "费用", "补贴"].iter().any(|k| key.contains(k))
}

/// A name shown by its first character: `王**` for `王小明`.
pub fn mask_name(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| std::iter::once(c).chain(chars.map(|_| '*')).collect()).unwrap_or_default()
}

/// A cell of a delimited line that looks like a person's name (two to four Han characters, with a
/// middle dot for some minority names) or an amount (digits with a decimal point or thousands
/// separators).
pub(crate) fn mask_cell(cell: &str) -> String {
    let t = cell.trim();
    let han = |c: char| ('\u{4e00}'..='\u{9fff}').contains(&c) || c == '·';
    let n = t.chars().count();
    if (2..=4).contains(&n) && t.chars().all(han) {
        return mask_name(t);
    }
    let amount = t.chars().any(|c| c.is_ascii_digit())
        && t.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && (t.contains('.') || t.contains(','));
    if amount { "***".into() } else { cell.to_string() }
}

/// Masks a value of a restricted topic (dead letters, snapshots): what [`mask_value`] does, and
/// also amounts, and in an original row that is not JSON (a CSV line, whose columns are not
/// known here) every cell that looks like a name or an amount. Codes of two to four characters
/// ("小学", "在读") are masked too: the reason of a dead letter names the column, and the department
/// has its own file.
pub fn mask_restricted(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let masked = match v {
                        Value::String(s) if is_name_key(k) => Value::String(mask_name(s)),
                        _ if is_amount_key(k) => Value::String("***".into()),
                        _ => mask_restricted(v),
                    };
                    (k.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_restricted).collect()),
        Value::String(s) => {
            let cells: Vec<String> = mask_text(s).split(',').map(mask_cell).collect();
            Value::String(cells.join(","))
        }
        other => other.clone(),
    }
}

/// One record as an operator sees it.
#[derive(Debug, Serialize)]
pub struct Tapped {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub headers: serde_json::Map<String, Value>,
    pub value: Value,
}

/// How much of a record [`read`] shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// ID numbers and names masked ([`mask_value`]).
    Masked,
    /// A dead-letter or restricted topic: amounts and name-like cells of originals too
    /// ([`mask_restricted`]).
    Restricted,
    /// As the record is. Only for an audited caller (`--unmasked` with an actor and a purpose).
    Unmasked,
}

/// The ID numbers that `text` shows (valid ones, also as the first 18 characters of a longer run
/// such as a disability certificate number), for the audit log of an unmasked view.
pub fn id_numbers_in(text: &str) -> std::collections::BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == 'X' || chars[i] == 'x') {
                i += 1;
            }
            if i - start >= 18 {
                let candidate: String = chars[start..start + 18].iter().collect();
                if let Ok(id) = crate::idnum::IdNumber::parse(&candidate) {
                    found.insert(id.as_str().to_string());
                }
            }
        } else {
            i += 1;
        }
    }
    found
}

/// Reads `topic` from the beginning (or from `since_ms`), up to `limit` records; with `follow`,
/// keeps waiting for new records until `limit` is reached. What is shown follows `view`.
#[allow(clippy::too_many_arguments)]
pub async fn read(
    settings: &KafkaSettings,
    topic: &str,
    since_ms: Option<i64>,
    limit: usize,
    follow: bool,
    view: View,
    emit: &mut (dyn FnMut(Tapped) + Send),
) -> Result<usize, KafkaError> {
    let consumer: StreamConsumer<crate::kafka::compacted::EndAware> =
        crate::kafka::reader_config(settings, &format!("doudi-tap-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.partition.eof", if follow { "false" } else { "true" })
            .create_with_context(crate::kafka::compacted::EndAware)?;
    let (partitions, mut assignment) = crate::kafka::compacted::from_the_beginning(&consumer, topic)?;
    if partitions.is_empty() {
        return Err(KafkaError::CreateTopic { topic: topic.into(), message: "no such topic".into() });
    }
    if let Some(ms) = since_ms {
        assignment.set_all_offsets(Offset::Offset(ms))?;
        assignment = consumer.offsets_for_times(assignment, Duration::from_secs(10))?;
    }
    consumer.assign(&assignment)?;
    let mut at_end = std::collections::HashSet::new();
    let mut count = 0;
    while count < limit && (follow || at_end.len() < partitions.len()) {
        let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Err(_) if !follow => break,
            Err(_) => continue,
            Ok(m) => m,
        };
        match message {
            Ok(m) => {
                let header_text = |raw: &[u8]| {
                    let text = String::from_utf8_lossy(raw);
                    if view == View::Unmasked { text.into_owned() } else { mask_text(&text) }
                };
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), Value::String(header_text(h.value.unwrap_or_default())))).collect())
                    .unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                let value = match (serde_json::from_slice::<Value>(payload), view) {
                    (Ok(v), View::Unmasked) => v,
                    (Ok(v), View::Restricted) => mask_restricted(&v),
                    (Ok(v), View::Masked) => mask_value(&v),
                    (Err(_), View::Unmasked) => Value::String(String::from_utf8_lossy(payload).into_owned()),
                    (Err(_), View::Restricted) => mask_restricted(&Value::String(String::from_utf8_lossy(payload).into_owned())),
                    (Err(_), View::Masked) => Value::String(mask_text(&String::from_utf8_lossy(payload))),
                };
                emit(Tapped { partition: m.partition(), offset: m.offset(), timestamp_ms: m.timestamp().to_millis(), headers, value });
                count += 1;
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(count)
}

/// The heading of [`dead_letter_line`]'s table.
pub const DEAD_LETTER_HEADING: &str = "offset   row    error_code   stage      column         file                     reason";

/// A dead letter as one line: a JSON object with `json`, else a row of the table under
/// [`DEAD_LETTER_HEADING`]. Its headers are masked already ([`read`]).
pub fn dead_letter_line(t: &Tapped, json: bool) -> String {
    let h = |k: &str| t.headers.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    if json {
        let record = serde_json::json!({
            "topic": h("topic"), "error_code": h("error_code"), "stage": h("stage"), "reason": h("reason"),
            "source": {"file": h("source_file"), "file_sha256": h("source_sha256"), "sheet": h("source_sheet"),
                       "row": h("source_row").parse::<u64>().ok(), "column": h("source_column")},
            "original": t.value,
        });
        return record.to_string();
    }
    let row = if h("source_sheet").is_empty() { h("source_row") } else { format!("{}!{}", h("source_sheet"), h("source_row")) };
    format!(
        "{:<8} {:<6} {:<12} {:<10} {:<14} {:<24} {}",
        t.offset,
        row,
        h("error_code"),
        h("stage"),
        h("source_column"),
        h("source_file"),
        h("reason")
    )
}

/// `--since`: RFC 3339, or an age such as `24h`, `7d`, `30m`; returns epoch milliseconds.
pub fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| format!("`{text}` is neither RFC 3339 nor an age like 24h or 7d"))?;
    let seconds = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the age unit must be m, h or d")),
    };
    Ok(chrono::Utc::now().timestamp_millis() - seconds * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_dead_letter_heading_matches_its_rows() {
        let heading = format!("{:<8} {:<6} {:<12} {:<10} {:<14} {:<24} reason", "offset", "row", "error_code", "stage", "column", "file");
        assert_eq!(heading, DEAD_LETTER_HEADING);
        assert!(parse_since("7d").is_ok() && parse_since("2019-12-01T00:00:00Z").is_ok() && parse_since("7w").is_err());
    }

    #[test]
    fn masks_ids_in_text_and_names() {
        assert_eq!(mask_text("张某,220102201106010038,小学"), "张某,2201**********0038,小学");
        assert_eq!(mask_text("id 11010519491231002x and 220102500307001"), "id 1101**********002x and 2201*******7001");
        assert_eq!(mask_text("row 17, 2019/9/1, 1,800.00"), "row 17, 2019/9/1, 1,800.00");
        // Regression: a 20-digit disability certificate number holds the ID number; it printed whole.
        assert_eq!(mask_text("证号 22010219500307001511"), "证号 2201************1511");
        assert!(!mask_text("22010219500307001511").contains("195003070015"));
        let v = mask_value(
            &json!({"id_number": "220102195003070015", "name": "王某", "members": [{"id_number": "11010519491231002X", "name": "李四"}], "self_paid": "3480.50"}),
        );
        assert_eq!(
            v,
            json!({"id_number": "2201**********0015", "name": "王*", "members": [{"id_number": "1101**********002X", "name": "李*"}], "self_paid": "3480.50"})
        );
    }

    #[test]
    fn restricted_topics_hide_names_in_csv_originals_and_amounts() {
        let csv = mask_restricted(&json!("张小某,220102201106010038,小学,长春市南关区某小学,1,800.00"));
        let csv = csv.as_str().unwrap_or_default().to_string();
        assert!(!csv.contains("张小某") && !csv.contains("201106010038") && !csv.contains("800"), "{csv}");
        assert!(csv.contains("张**") && csv.contains("长春市南关区某小学"), "{csv}");
        let v = mask_restricted(&json!({"学生姓名": "张小某", "monthly_wage": "1800.00", "income": {"wages": "1200"}, "event": "x"}));
        assert_eq!(v, json!({"学生姓名": "张**", "monthly_wage": "***", "income": "***", "event": "x"}));
    }
}
