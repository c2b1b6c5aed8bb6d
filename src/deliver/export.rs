//! The daily file an agency imports: every entitlement event of one day (China Standard Time).
//!
//! Guarantees: the file holds each event of the day once (a relay's repeat is dropped by
//! `ce_id`), in the order it was published, with the configured columns; it is written to a
//! temporary file in the same folder, flushed to disk and renamed, so an importer never sees half a
//! file; the manifest beside it (counts, amount total, SHA-256 of the file) is written the same way
//! after it. Running the same day again rewrites the same two files, identical when no event was
//! added. An event a GBK file cannot hold (a character outside GBK) is dead-lettered and marked
//! failed instead of being written wrong; the rest of the file goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use rdkafka::Message;
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::{Column, FileEncoding, FileFormat, column_value};
use super::{DeliverError, mark_delivered, mark_failed};
use crate::config::KafkaSettings;
use crate::db::{Database, china_day_start_ms};
use crate::envelope::Envelope;
use crate::kafka::send_dead_letter;

/// What an export wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportSummary {
    pub date: String,
    pub file: String,
    pub manifest: String,
    pub rows: u64,
    pub dead_lettered: u64,
    pub sha256: String,
    pub delivered: u64,
}

struct DayEvent {
    timestamp: i64,
    partition: i32,
    offset: i64,
    ce_id: String,
    key: Option<Vec<u8>>,
    raw: Vec<u8>,
    payload: Value,
}

/// The first millisecond of `date` and of the next day, China Standard Time.
fn day_bounds(date: NaiveDate) -> (i64, i64) {
    (china_day_start_ms(date), china_day_start_ms(date.succ_opt().unwrap_or(date)))
}

/// Reads every event of `topic` published on `date`, once each, in publishing order.
fn read_day(kafka: &KafkaSettings, topic: &str, date: NaiveDate) -> Result<Vec<DayEvent>, DeliverError> {
    let (start_ms, end_ms) = day_bounds(date);
    let mut out = Vec::new();
    super::range::read_between(kafka, &[topic.to_string()], start_ms, Some(end_ms), Duration::from_secs(120), |m| {
        let ts = m.timestamp().to_millis().unwrap_or(0);
        if !(start_ms..end_ms).contains(&ts) {
            return;
        }
        let raw = m.payload().unwrap_or_default().to_vec();
        out.push(DayEvent {
            timestamp: ts,
            partition: m.partition(),
            offset: m.offset(),
            ce_id: m.headers().and_then(|h| Envelope::from_headers(h).ok()).map(|e| e.id).unwrap_or_default(),
            key: m.key().map(<[u8]>::to_vec),
            payload: serde_json::from_slice(&raw).unwrap_or(Value::Null),
            raw,
        });
    })?;
    out.sort_by_key(|e| (e.timestamp, e.partition, e.offset));
    let mut seen = BTreeSet::new();
    out.retain(|e| seen.insert(e.ce_id.clone()));
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, renamed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("export");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk leaves no half-written temporary file behind, only the error.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// One event's cells, or the column a GBK file cannot hold.
fn encode_row(columns: &[Column], payload: &Value, encoding: FileEncoding) -> Result<Vec<Vec<u8>>, String> {
    columns
        .iter()
        .map(|c| {
            let text = column_value(c, payload);
            match encoding {
                FileEncoding::Utf8 => Ok(text.into_bytes()),
                FileEncoding::Gbk => {
                    let (bytes, _, unmappable) = encoding_rs::GBK.encode(&text);
                    if unmappable { Err(c.name.clone()) } else { Ok(bytes.into_owned()) }
                }
            }
        })
        .collect()
}

fn csv_bytes(columns: &[Column], rows: &[Vec<Vec<u8>>], encoding: FileEncoding) -> Result<Vec<u8>, DeliverError> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    let header: Vec<Vec<u8>> = columns
        .iter()
        .map(|c| match encoding {
            FileEncoding::Utf8 => c.name.clone().into_bytes(),
            FileEncoding::Gbk => encoding_rs::GBK.encode(&c.name).0.into_owned(),
        })
        .collect();
    w.write_record(&header).map_err(|e| DeliverError::Sink(e.to_string()))?;
    for r in rows {
        w.write_record(r).map_err(|e| DeliverError::Sink(e.to_string()))?;
    }
    w.into_inner().map_err(|e| DeliverError::Sink(e.to_string()))
}

fn xlsx_bytes(columns: &[Column], rows: &[Vec<Vec<u8>>]) -> Result<Vec<u8>, DeliverError> {
    let err = |e: rust_xlsxwriter::XlsxError| DeliverError::Sink(format!("building the XLSX file: {e}"));
    let mut book = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    let sheet = book.add_worksheet();
    sheet.set_name("entitlements").map_err(err)?;
    for (c, column) in columns.iter().enumerate() {
        let col = u16::try_from(c).map_err(|_| DeliverError::Sink("too many columns".into()))?;
        sheet.write_string_with_format(0, col, &column.name, &bold).map_err(err)?;
    }
    for (r, row) in rows.iter().enumerate() {
        let line = u32::try_from(r + 1).map_err(|_| DeliverError::Sink("too many rows for one sheet".into()))?;
        for (c, cell) in row.iter().enumerate() {
            let col = u16::try_from(c).map_err(|_| DeliverError::Sink("too many columns".into()))?;
            sheet.write_string(line, col, String::from_utf8_lossy(cell)).map_err(err)?;
        }
    }
    book.save_to_buffer().map_err(err)
}

/// Exports `date`'s events of `topic` as the file delivery `config` says; `None` when `config`
/// is not a file delivery.
pub async fn export_config_day(
    db: &Database,
    kafka: &KafkaSettings,
    config: &super::config::DeliveryConfig,
    topic: &str,
    date: NaiveDate,
) -> Result<Option<ExportSummary>, DeliverError> {
    let super::config::Sink::File { directory, format, encoding, file_prefix, columns } = &config.sink else { return Ok(None) };
    let summary = export_day(db, kafka, &config.delivery.name, topic, date, directory, file_prefix, *format, *encoding, columns).await?;
    Ok(Some(summary))
}

/// Exports `date`'s events of `topic` into `directory`, marks them delivered and dead-letters
/// what cannot be written.
#[allow(clippy::too_many_arguments)]
pub async fn export_day(
    db: &Database,
    kafka: &KafkaSettings,
    name: &str,
    topic: &str,
    date: NaiveDate,
    directory: &Path,
    prefix: &str,
    format: FileFormat,
    encoding: FileEncoding,
    columns: &[Column],
) -> Result<ExportSummary, DeliverError> {
    let events = {
        let kafka = kafka.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || read_day(&kafka, &topic, date))
            .await
            .map_err(|e| DeliverError::Sink(format!("reading the day's events stopped: {e}")))??
    };
    let producer = crate::kafka::idempotent_producer(kafka)?;
    let label = format!("file:{name}");
    let mut rows = Vec::new();
    let mut written = Vec::new();
    let mut summary = ExportSummary { date: date.to_string(), ..ExportSummary::default() };
    let mut by_change: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut amount = Decimal::ZERO;
    for (i, e) in events.iter().enumerate() {
        match encode_row(columns, &e.payload, encoding) {
            Ok(row) => {
                rows.push(row);
                written.push(e.ce_id.clone());
                let field = |k: &str| e.payload.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                *by_change.entry(field("change")).or_default() += 1;
                *by_kind.entry(field("kind")).or_default() += 1;
                amount += field("yearly_amount").parse::<Decimal>().unwrap_or_default();
            }
            Err(column) => {
                let reason = format!("column `{column}` holds a character that GBK cannot encode; the event is left out of the file");
                tracing::warn!(topic, event_id = %e.ce_id, row = i + 2, "An event could not be written to the export and was dead-lettered: {reason}");
                let headers = [
                    ("error_code", "unencodable"),
                    ("stage", "deliver"),
                    ("reason", reason.as_str()),
                    ("event_id", e.ce_id.as_str()),
                    ("delivery", name),
                    ("source_column", column.as_str()),
                ];
                send_dead_letter(&producer, topic, e.key.as_deref(), &e.raw, &headers).await?;
                mark_failed(db, &e.ce_id, &label, &reason).await?;
                summary.dead_lettered += 1;
            }
        }
    }
    let (bytes, extension) = match format {
        FileFormat::Csv => (csv_bytes(columns, &rows, encoding)?, "csv"),
        FileFormat::Xlsx => (xlsx_bytes(columns, &rows)?, "xlsx"),
    };
    std::fs::create_dir_all(directory)?;
    let file: PathBuf = directory.join(format!("{prefix}-{date}.{extension}"));
    let manifest_path: PathBuf = directory.join(format!("{prefix}-{date}.manifest.json"));
    let sha = hex::encode(Sha256::digest(&bytes));
    write_atomically(&file, &bytes)?;
    let manifest = serde_json::json!({
        "file": file.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
        "date": date,
        "topic": topic,
        "format": extension,
        "encoding": match (format, encoding) { (FileFormat::Xlsx, _) => "xlsx", (_, FileEncoding::Gbk) => "gbk", _ => "utf-8" },
        "rows": rows.len(),
        "by_change": by_change,
        "by_kind": by_kind,
        "yearly_amount_total": crate::money::round_yuan(amount).to_string(),
        "dead_lettered": summary.dead_lettered,
        "sha256": sha,
    });
    write_atomically(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap_or_default().as_bytes())?;
    summary.delivered = mark_delivered(db, &written, &label).await?;
    summary.rows = rows.len() as u64;
    summary.sha256 = sha;
    summary.file = file.display().to_string();
    summary.manifest = manifest_path.display().to_string();
    metrics::counter!("doudi_delivery_events_total", "delivery" => name.to_string(), "outcome" => "delivered").increment(summary.delivered);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_china_standard_time() {
        let (start, end) = day_bounds(NaiveDate::from_ymd_opt(2026, 11, 29).expect("date"));
        // 2026-11-29 00:00 +08:00 is 2026-11-28 16:00 UTC.
        assert_eq!(start, 1_795_881_600_000);
        assert_eq!(end - start, 86_400_000);
    }

    #[test]
    fn gbk_rows_refuse_what_gbk_cannot_hold() {
        let columns = vec![Column { name: "姓名".into(), field: "name".into(), codes: Default::default() }];
        let ok = encode_row(&columns, &serde_json::json!({"name": "王某"}), FileEncoding::Gbk).expect("gbk");
        assert_eq!(encoding_rs::GBK.decode(&ok[0]).0, "王某");
        assert_eq!(encode_row(&columns, &serde_json::json!({"name": "王😀"}), FileEncoding::Gbk), Err("姓名".to_string()));
    }
}
