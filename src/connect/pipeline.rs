//! What happens to one record between the source and Kafka: map, validate, key.
//!
//! Guarantees: every source item ends as exactly one [`Outcome`]: an event for the topic, or a
//! dead letter with its error code, stage, row, column and a reason without personal data.

use serde_json::{Map, Value};

use super::config::ConnectorConfig;
use super::mapping::{ErrorCode, MapFailure, lookup, map_record};
use super::source::Item;
use crate::idnum::IdNumber;
use crate::schema::Schema;

/// A record ready for the topic.
#[derive(Clone, Debug)]
pub struct Event {
    pub row: u64,
    pub sheet: Option<String>,
    pub record: Map<String, Value>,
    /// The ID number that keys the message (HMAC'd before it leaves the process).
    pub key_id: IdNumber,
    /// The source row as read, kept until the event is serialised: a record too large for the
    /// topic becomes a dead letter carrying it, cut short.
    pub original: Vec<u8>,
}

/// An event serialised for Kafka: value, pseudonymous key and deterministic `ce_id`. The mapped
/// record itself is dropped once serialised, so a large transaction holds bytes, not trees.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub row: u64,
    pub sheet: Option<String>,
    pub payload: Vec<u8>,
    pub key: String,
    pub ce_id: String,
    pub identity: String,
}

/// Room left in a record for its CloudEvents and provenance headers and the batch's framing.
pub const RECORD_OVERHEAD_BYTES: usize = 2048;

/// How much of an unusable row a dead letter keeps.
pub const DEAD_LETTER_ORIGINAL_BYTES: usize = 4096;

/// The first `DEAD_LETTER_ORIGINAL_BYTES` of a row, for a dead letter whose row is too large.
pub fn cut_short(original: &[u8]) -> Vec<u8> {
    original[..original.len().min(DEAD_LETTER_ORIGINAL_BYTES)].to_vec()
}

/// Serialises an event; `identity` names the source record (e.g. `<sha256>:<row>`). An event that
/// would not fit in a record of `max_record_bytes` (the topic's `max.message.bytes`, headers
/// included) becomes a dead letter: the broker would refuse it, and with it the whole transaction,
/// again and again.
pub fn prepare(event: Event, identity: String, source: &str, keys: &crate::envelope::KeyDeriver, max_record_bytes: usize) -> Ready {
    let payload = serde_json::to_vec(&event.record).unwrap_or_default();
    let key = keys.key(&event.key_id);
    let size = payload.len() + key.len() + RECORD_OVERHEAD_BYTES;
    if size > max_record_bytes {
        let row = event.row;
        return Ready::DeadLetter(DeadLetter {
            row,
            sheet: event.sheet,
            code: ErrorCode::Size,
            column: None,
            reason: format!(
                "第{row}行转换后约 {size} 字节，超过主题允许的 {max_record_bytes} 字节（原始行 {} 字节，死信只保留前 {} 字节）",
                event.original.len(),
                DEAD_LETTER_ORIGINAL_BYTES.min(event.original.len())
            ),
            original: cut_short(&event.original),
        });
    }
    let ce_id = crate::envelope::event_id_for_payload(source, &identity, &payload);
    Ready::Event(Box::new(Prepared { row: event.row, sheet: event.sheet, payload, key, ce_id, identity }))
}

/// A record that goes to `dlq.<topic>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub row: u64,
    pub sheet: Option<String>,
    pub code: ErrorCode,
    pub column: Option<String>,
    pub reason: String,
    pub original: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Event(Event),
    DeadLetter(DeadLetter),
}

fn dead(row: u64, sheet: Option<String>, failure: MapFailure, original: Vec<u8>) -> Outcome {
    Outcome::DeadLetter(DeadLetter { row, sheet, code: failure.code, column: failure.column, reason: failure.reason, original })
}

/// Maps, validates and keys one item. `extra` fields (a snapshot's change and file hash) are added
/// before validation.
pub fn process(config: &ConnectorConfig, schema: &Schema, item: Item, extra: &Map<String, Value>) -> Outcome {
    let record = match item {
        Item::Failure(f) => return Outcome::DeadLetter(f),
        Item::Record(r) => r,
    };
    let mapped = match map_record(config, &record.fields) {
        Ok(mut m) => {
            m.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        }
        Err(failure) => return dead(record.row, record.sheet, failure, record.original),
    };
    let value = Value::Object(mapped);
    let violations = schema.violations(&value);
    let Value::Object(mapped) = value else {
        return dead(record.row, record.sheet, MapFailure::new(ErrorCode::Mapping, None, "映射结果不是对象"), record.original);
    };
    if let Some(first) = violations.first() {
        let column = first.pointer.trim_start_matches('/').split('/').next().map(String::from).filter(|c| !c.is_empty());
        let reason = format!(
            "第{}行不符合 {} 的数据规范：{}",
            record.row,
            config.connector.topic,
            violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("；")
        );
        return Outcome::DeadLetter(DeadLetter {
            row: record.row,
            sheet: record.sheet,
            code: ErrorCode::Validation,
            column,
            reason,
            original: record.original,
        });
    }
    let key_field = &config.connector.key_field;
    let key_id = lookup(&mapped, key_field).and_then(Value::as_str).and_then(|s| IdNumber::parse(s).ok());
    let Some(key_id) = key_id else {
        return dead(
            record.row,
            record.sheet,
            MapFailure::new(ErrorCode::Mapping, Some(key_field), format!("{key_field}：缺少用作消息键的身份证号")),
            record.original,
        );
    };
    Outcome::Event(Event { row: record.row, sheet: record.sheet, record: mapped, key_id, original: record.original })
}

/// A mapped item: prepared for Kafka, or a dead letter.
pub enum Ready {
    Event(Box<Prepared>),
    DeadLetter(DeadLetter),
}

/// Maps, validates and serialises a batch, in parallel on the machine's cores for larger batches;
/// the results keep the items' order, one per item. `identity` names each event's source record.
/// A worker that panics fails the whole batch (`Err` with the rows it held): its rows are never
/// dropped while the others go on, which would let the source position move past them.
pub fn process_batch(
    config: &ConnectorConfig,
    schema: &Schema,
    items: Vec<Item>,
    extra: &Map<String, Value>,
    keys: &crate::envelope::KeyDeriver,
    identity: &(dyn Fn(&Event) -> String + Sync),
    max_record_bytes: usize,
) -> Result<Vec<Ready>, String> {
    let source = config.event_source();
    let one = |item: Item| match process(config, schema, item, extra) {
        Outcome::Event(e) => {
            let id = identity(&e);
            prepare(e, id, &source, keys, max_record_bytes)
        }
        Outcome::DeadLetter(d) => Ready::DeadLetter(d),
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    if threads < 2 || items.len() < 256 {
        return Ok(items.into_iter().map(one).collect());
    }
    let chunk = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Item>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let part: Vec<Item> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        chunks.push(part);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|part| {
                let rows = (part.first().map(Item::row), part.last().map(Item::row));
                (rows, scope.spawn(|| part.into_iter().map(one).collect::<Vec<_>>()))
            })
            .collect();
        let mut out = Vec::new();
        for ((first, last), handle) in handles {
            match handle.join() {
                Ok(ready) => out.extend(ready),
                Err(_) => {
                    let (first, last) = (first.unwrap_or_default(), last.unwrap_or_default());
                    return Err(format!("mapping rows {first} to {last} failed unexpectedly (a bug); nothing of this batch was produced"));
                }
            }
        }
        Ok(out)
    })
}
