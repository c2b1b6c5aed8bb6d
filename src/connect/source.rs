//! Sources: CSV (UTF-8, UTF-8 with BOM, GBK, GB18030), XLSX (a sheet by name) and JSON Lines, read
//! as a stream of records with their provenance.
//!
//! Guarantees: memory stays bounded by one row (plus, for XLSX, the workbook's shared strings);
//! every record carries its physical row (CSV line, sheet row, JSONL line, 1-based; the header is
//! row 1); a row that cannot be decoded or parsed becomes a [`ReadFailure`] and reading goes on; a
//! file whose header cannot be read is a [`SourceError`] naming the row.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use calamine::{DataRef, Reader, Xlsx};
use serde_json::Value;

use super::config::{Encoding, SourceSection};
use super::mapping::{Cell, ErrorCode, Fields, Header};

/// A record read from the source.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub row: u64,
    pub sheet: Option<String>,
    pub fields: Fields,
    /// The original row or line, verbatim where the encoding allows (for the dead-letter value).
    pub original: Vec<u8>,
}

/// A row that could not be read: already a dead letter.
pub type ReadFailure = super::pipeline::DeadLetter;

#[derive(Clone, Debug)]
pub enum Item {
    Record(RawRecord),
    Failure(ReadFailure),
}

impl Item {
    pub fn row(&self) -> u64 {
        match self {
            Item::Record(r) => r.row,
            Item::Failure(f) => f.row,
        }
    }
}

/// The file as a whole cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {message}")]
    Open { path: String, message: String },
    #[error("{path} row {row}: {message}")]
    Header { path: String, row: u64, message: String },
    #[error("{path}: sheet `{sheet}` not found (sheets: {available})")]
    Sheet { path: String, sheet: String, available: String },
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

/// Reads `path` and hands each item to `emit`; stops early when `emit` returns false.
pub fn read(source: &SourceSection, path: &Path, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::Open { path: path.display().to_string(), message: e.to_string() })?;
    match source {
        SourceSection::Csv { encoding, delimiter } => {
            read_csv(file, *encoding, delimiter.as_bytes().first().copied().unwrap_or(b','), path, emit)
        }
        SourceSection::Xlsx { sheet } => read_xlsx(file, sheet, path, emit),
        SourceSection::Jsonl => read_jsonl(BufReader::new(file), path, emit),
    }
}

/// Decodes one field under the declared encoding; `None` if the bytes are not valid in it.
fn decode(bytes: &[u8], encoding: Encoding) -> Option<String> {
    match encoding {
        Encoding::Utf8 | Encoding::Utf8Bom => std::str::from_utf8(bytes).ok().map(String::from),
        Encoding::Gbk => encoding_rs::GBK.decode_without_bom_handling_and_without_replacement(bytes).map(|c| c.into_owned()),
        Encoding::Gb18030 => encoding_rs::GB18030.decode_without_bom_handling_and_without_replacement(bytes).map(|c| c.into_owned()),
    }
}

fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Utf8 => "UTF-8",
        Encoding::Utf8Bom => "UTF-8 (BOM)",
        Encoding::Gbk => "GBK",
        Encoding::Gb18030 => "GB18030",
    }
}

fn join_raw(record: &csv::ByteRecord, delimiter: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        let quote = field.iter().any(|b| *b == delimiter || *b == b'"' || *b == b'\n' || *b == b'\r');
        if quote {
            out.push(b'"');
            for b in field {
                if *b == b'"' {
                    out.push(b'"');
                }
                out.push(*b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field);
        }
    }
    out
}

/// Remembers the most recent bytes read, so that a record's true first line can be found: the csv
/// crate reports a record's position *before* any blank lines it skipped.
struct RecentBytes<R> {
    inner: R,
    recent: std::sync::Arc<std::sync::Mutex<(u64, std::collections::VecDeque<u8>)>>,
}

const RECENT_WINDOW: usize = 1 << 20;

impl<R: Read> Read for RecentBytes<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut guard) = self.recent.lock() {
            let (start, bytes) = &mut *guard;
            bytes.extend(&buf[..n]);
            if bytes.len() > RECENT_WINDOW {
                let excess = bytes.len() - RECENT_WINDOW;
                bytes.drain(..excess);
                *start += excess as u64;
            }
        }
        Ok(n)
    }
}

/// The line a record really starts on, given the position csv reported for it.
fn first_line(recent: &std::sync::Mutex<(u64, std::collections::VecDeque<u8>)>, byte: u64, line: u64) -> u64 {
    let Ok(guard) = recent.lock() else { return line };
    let (start, bytes) = &*guard;
    let mut line = line;
    let mut at = byte;
    while at >= *start {
        match bytes.get((at - start) as usize) {
            Some(b'\n') => line += 1,
            Some(b'\r') => {}
            _ => break,
        }
        at += 1;
    }
    line
}

fn read_csv(
    file: std::fs::File,
    encoding: Encoding,
    delimiter: u8,
    path: &Path,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), SourceError> {
    let shown = path.display().to_string();
    let recent = std::sync::Arc::new(std::sync::Mutex::new((0u64, std::collections::VecDeque::with_capacity(RECENT_WINDOW))));
    let tracked = RecentBytes { inner: BufReader::with_capacity(64 * 1024, file), recent: recent.clone() };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter).buffer_capacity(64 * 1024).from_reader(tracked);
    let mut record = csv::ByteRecord::new();
    let mut header: Option<Arc<Header>> = None;
    loop {
        let row = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                let row = e.position().map(|p| p.line()).unwrap_or(row);
                if header.is_none() {
                    return Err(SourceError::Header { path: shown, row, message: format!("the header cannot be parsed as CSV: {e}") });
                }
                if !emit(Item::Failure(ReadFailure {
                    row,
                    sheet: None,
                    code: ErrorCode::Parse,
                    column: None,
                    reason: format!("第{row}行不是有效的 CSV 行"),
                    original: Vec::new(),
                })) {
                    return Ok(());
                }
                continue;
            }
        }
        let row = record.position().map(|p| first_line(&recent, p.byte(), p.line())).unwrap_or(row);
        let original = join_raw(&record, delimiter);
        let mut cells = Vec::with_capacity(record.len());
        let mut failed_column = None;
        for (i, bytes) in record.iter().enumerate() {
            let bytes = if i == 0 && header.is_none() { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes) } else { bytes };
            match decode(bytes, encoding) {
                Some(text) => cells.push(text),
                None => {
                    failed_column = Some(i);
                    break;
                }
            }
        }
        let Some(header_ref) = &header else {
            if let Some(i) = failed_column {
                return Err(SourceError::Header {
                    path: shown,
                    row,
                    message: format!(
                        "the header (column {}) is not valid {}: is the file in the declared encoding?",
                        i + 1,
                        encoding_name(encoding)
                    ),
                });
            }
            header = Some(Arc::new(Header::new(cells.into_iter().map(|c| c.trim().to_string()).collect())));
            continue;
        };
        if record.iter().all(|f| f.iter().all(|b| b.is_ascii_whitespace())) {
            continue;
        }
        let item = if let Some(i) = failed_column {
            let column = header_ref.names.get(i).cloned();
            Item::Failure(ReadFailure {
                row,
                sheet: None,
                code: ErrorCode::Decode,
                reason: format!("第{row}行“{}”列不是有效的 {} 编码文本", column.as_deref().unwrap_or("?"), encoding_name(encoding)),
                column,
                original,
            })
        } else if cells.len() != header_ref.names.len() {
            Item::Failure(ReadFailure {
                row,
                sheet: None,
                code: ErrorCode::Parse,
                column: None,
                reason: format!("第{row}行有{}列，表头有{}列", cells.len(), header_ref.names.len()),
                original,
            })
        } else {
            Item::Record(RawRecord {
                row,
                sheet: None,
                fields: Fields::Columns { header: header_ref.clone(), cells: cells.into_iter().map(Cell::Text).collect() },
                original,
            })
        };
        if !emit(item) {
            return Ok(());
        }
    }
}

fn cell_of(data: &DataRef<'_>) -> Result<Cell, String> {
    Ok(match data {
        DataRef::Empty => Cell::Empty,
        DataRef::String(s) => Cell::Text(s.clone()),
        DataRef::SharedString(s) => Cell::Text((*s).to_string()),
        DataRef::Int(i) => Cell::Number(i.to_string()),
        DataRef::Float(f) => Cell::Number(f.to_string()),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::DateTime(dt) => Cell::Date(dt.as_datetime().ok_or("单元格日期无效")?.date()),
        DataRef::DateTimeIso(s) => Cell::Text(s.get(..10).unwrap_or(s).to_string()),
        DataRef::DurationIso(s) => Cell::Text(s.clone()),
        DataRef::Error(e) => return Err(format!("单元格含有错误值 {e}")),
    })
}

fn read_xlsx(file: std::fs::File, sheet: &str, path: &Path, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), SourceError> {
    let shown = path.display().to_string();
    let mut workbook: Xlsx<_> =
        Xlsx::new(BufReader::new(file)).map_err(|e| SourceError::Open { path: shown.clone(), message: e.to_string() })?;
    let names = workbook.sheet_names();
    if !names.iter().any(|n| n == sheet) {
        return Err(SourceError::Sheet { path: shown, sheet: sheet.into(), available: names.join(", ") });
    }
    let mut cells_reader =
        workbook.worksheet_cells_reader(sheet).map_err(|e| SourceError::Read { path: shown.clone(), message: e.to_string() })?;
    let mut header: Option<Arc<Header>> = None;
    let mut current_row: Option<u32> = None;
    let mut cells: Vec<(u32, Result<Cell, String>)> = Vec::new();
    let sheet_name = Some(sheet.to_string());
    let mut flush =
        |row: u32, cells: &mut Vec<(u32, Result<Cell, String>)>, header: &mut Option<Arc<Header>>| -> Result<bool, SourceError> {
            let row_number = u64::from(row) + 1;
            let taken = std::mem::take(cells);
            let Some(h) = header.as_ref() else {
                let mut names = Vec::new();
                for (col, cell) in taken {
                    let text = match cell {
                        Ok(Cell::Text(t)) | Ok(Cell::Number(t)) => t.trim().to_string(),
                        _ => String::new(),
                    };
                    while names.len() < col as usize {
                        names.push(String::new());
                    }
                    names.push(text);
                }
                *header = Some(Arc::new(Header::new(names)));
                return Ok(true);
            };
            let mut values = vec![Cell::Empty; h.names.len()];
            let mut original_parts = vec![String::new(); h.names.len()];
            let mut failure = None;
            for (col, cell) in taken {
                match cell {
                    Ok(cell) => {
                        if let Some(slot) = values.get_mut(col as usize) {
                            original_parts[col as usize] = match &cell {
                                Cell::Text(t) | Cell::Number(t) => t.clone(),
                                Cell::Date(d) => d.to_string(),
                                Cell::Bool(b) => b.to_string(),
                                Cell::Empty => String::new(),
                            };
                            *slot = cell;
                        }
                    }
                    Err(reason) => failure = Some((col, reason)),
                }
            }
            let original = original_parts.join(",").into_bytes();
            if values.iter().all(|c| *c == Cell::Empty) {
                return Ok(true);
            }
            let item = match failure {
                Some((col, reason)) => {
                    let column = h.names.get(col as usize).cloned();
                    Item::Failure(ReadFailure {
                        row: row_number,
                        sheet: sheet_name.clone(),
                        code: ErrorCode::Parse,
                        reason: format!("第{row_number}行“{}”列：{reason}", column.as_deref().unwrap_or("?")),
                        column,
                        original,
                    })
                }
                None => Item::Record(RawRecord {
                    row: row_number,
                    sheet: sheet_name.clone(),
                    fields: Fields::Columns { header: h.clone(), cells: values },
                    original,
                }),
            };
            Ok(emit(item))
        };
    loop {
        let next = cells_reader.next_cell().map_err(|e| SourceError::Read { path: shown.clone(), message: e.to_string() })?;
        let Some(cell) = next else { break };
        let (row, col) = cell.get_position();
        if current_row.is_some_and(|r| r != row)
            && let Some(r) = current_row
            && !flush(r, &mut cells, &mut header)?
        {
            return Ok(());
        }
        current_row = Some(row);
        cells.push((col, cell_of(cell.get_value())));
    }
    if let Some(r) = current_row {
        flush(r, &mut cells, &mut header)?;
    }
    Ok(())
}

fn read_jsonl(mut reader: impl BufRead, path: &Path, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), SourceError> {
    let mut line = Vec::new();
    let mut row = 0u64;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(64 * 1024 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(|e| SourceError::Read { path: path.display().to_string(), message: e.to_string() })?;
        if n == 0 {
            return Ok(());
        }
        row += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let bytes = if row == 1 { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes) } else { bytes };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match parse_json_line(bytes, row) {
            Ok(fields) => Item::Record(RawRecord { row, sheet: None, fields, original: bytes.to_vec() }),
            Err((code, reason)) => Item::Failure(ReadFailure { row, sheet: None, code, column: None, reason, original: bytes.to_vec() }),
        };
        if !emit(item) {
            return Ok(());
        }
    }
}

/// Parses one JSON Lines line into an object.
pub fn parse_json_line(bytes: &[u8], row: u64) -> Result<Fields, (ErrorCode, String)> {
    let text = std::str::from_utf8(bytes).map_err(|_| (ErrorCode::Decode, format!("第{row}行不是有效的 UTF-8 文本")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Fields::Object(map)),
        Ok(_) => Err((ErrorCode::Parse, format!("第{row}行不是 JSON 对象"))),
        Err(e) => Err((ErrorCode::Parse, format!("第{row}行不是有效的 JSON（第{}列附近）", e.column()))),
    }
}
