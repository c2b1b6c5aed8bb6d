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

/// Reads `path` and hands each item to `emit`; stops early when `emit` returns false. A CSV or
/// XLSX header that lacks one of `expected` (see `ConnectorConfig::header_columns`) fails the
/// file, naming the missing columns and never the cells found (they may be a data row).
pub fn read(source: &SourceSection, path: &Path, expected: &[String], emit: &mut dyn FnMut(Item) -> bool) -> Result<(), SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::Open { path: path.display().to_string(), message: e.to_string() })?;
    match source {
        SourceSection::Csv { encoding, delimiter, max_row_bytes } => {
            let delimiter = delimiter.as_bytes().first().copied().unwrap_or(b',');
            read_csv(file, *encoding, delimiter, *max_row_bytes, path, expected, emit)
        }
        SourceSection::Xlsx { sheet } => read_xlsx(file, sheet, path, expected, emit),
        SourceSection::Jsonl => read_jsonl(BufReader::new(file), path, emit),
    }
}

/// The header at `row` has every expected column, or the file fails.
fn check_header(header: &Header, expected: &[String], path: &str, row: u64) -> Result<(), SourceError> {
    let missing: Vec<&str> = expected.iter().filter(|c| header.position(c).is_none()).map(String::as_str).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SourceError::Header {
        path: path.to_string(),
        row,
        message: format!(
            "表头缺少列：{}。第{row}行被当作表头；文件是否缺少表头行，或列名与连接器配置不同？（the header lacks {} column(s) the connector maps）",
            missing.iter().map(|c| format!("“{c}”")).collect::<Vec<_>>().join("、"),
            missing.len()
        ),
    })
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

/// A line the CSV reader never sees: a quote left open, or a row longer than allowed.
struct BadLine {
    line: u64,
    reason: String,
    original: Vec<u8>,
}

/// Where a CSV scan stands within a record (the csv crate's own quoting rules: a quote opens a
/// quoted field only at the field's start, and `""` inside one is a literal quote).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first half of `""`.
    QuoteInQuoted,
}

impl Quoting {
    fn after(self, byte: u8, delimiter: u8) -> Quoting {
        use Quoting::*;
        match (self, byte) {
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => Quoted,
            (QuoteInQuoted, b'"') => Quoted,
            (FieldStart, b'"') => Quoted,
            (_, b'\n') => FieldStart,
            (_, b) if b == delimiter => FieldStart,
            _ => Unquoted,
        }
    }
}

/// Feeds the CSV reader whole records only. A record whose quote stays open for more than
/// `max_row_bytes` (it would otherwise swallow the rest of the file into one field), or a line
/// longer than that, is taken out: its first line becomes a [`BadLine`] and an empty line in its
/// place (the reader skips it, and line numbers stay true), and reading goes on from the line after.
struct CsvGuard<R> {
    inner: R,
    delimiter: u8,
    max_row_bytes: usize,
    /// Lines of the record not yet known to end, with their line numbers.
    pending: std::collections::VecDeque<(u64, Vec<u8>)>,
    pending_bytes: usize,
    quoting: Quoting,
    /// Bytes ready for the reader.
    ready: Vec<u8>,
    at: usize,
    line: u64,
    eof: bool,
    bad: Arc<std::sync::Mutex<std::collections::VecDeque<BadLine>>>,
}

impl<R: BufRead> CsvGuard<R> {
    /// Reads one physical line (with its `\n`), at most `max_row_bytes + 1` bytes of it; the rest of
    /// a longer line is read and dropped. `None` at the end of the input.
    fn next_line(&mut self) -> std::io::Result<Option<(Vec<u8>, bool)>> {
        let mut line = Vec::new();
        let limit = self.max_row_bytes as u64 + 1;
        let n = self.inner.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        let mut too_long = false;
        if !line.ends_with(b"\n") && n as u64 == limit {
            too_long = true;
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = self.inner.by_ref().take(1 << 20).read_until(b'\n', &mut rest)?;
                if m == 0 || rest.ends_with(b"\n") {
                    break;
                }
            }
        }
        Ok(Some((line, too_long)))
    }

    /// Adds a line to the pending record and releases what is settled.
    fn push(&mut self, number: u64, line: Vec<u8>, too_long: bool) {
        if too_long {
            // Whatever was pending ended in an open quote, and this line is unusable itself.
            self.reject_pending_first();
            self.reject(number, &line, format!("第{number}行超过 {} 字节的行长上限", self.max_row_bytes));
            self.rescan();
            return;
        }
        for byte in &line {
            self.quoting = self.quoting.after(*byte, self.delimiter);
        }
        self.pending_bytes += line.len();
        self.pending.push_back((number, line));
        self.settle();
    }

    /// Releases the pending lines once their record ends; takes out the first line when the
    /// record has grown past the limit.
    fn settle(&mut self) {
        loop {
            if self.pending_bytes > self.max_row_bytes {
                self.reject_pending_first();
                self.rescan();
                continue;
            }
            if self.quoting != Quoting::Quoted && self.quoting != Quoting::QuoteInQuoted || self.eof {
                for (_, line) in self.pending.drain(..) {
                    self.ready.extend_from_slice(&line);
                }
                self.pending_bytes = 0;
            }
            return;
        }
    }

    fn reject_pending_first(&mut self) {
        if let Some((number, line)) = self.pending.pop_front() {
            self.pending_bytes -= line.len();
            let reason = if line.len() > self.max_row_bytes {
                format!("第{number}行超过 {} 字节的行长上限", self.max_row_bytes)
            } else {
                format!("第{number}行的引号没有闭合（到 {} 字节内仍未闭合），该行未读入，从下一行继续读取", self.max_row_bytes)
            };
            self.reject(number, &line, reason);
        }
    }

    fn reject(&mut self, line: u64, original: &[u8], reason: String) {
        let original = original.strip_suffix(b"\n").unwrap_or(original);
        let original = original.strip_suffix(b"\r").unwrap_or(original);
        if let Ok(mut bad) = self.bad.lock() {
            bad.push_back(BadLine { line, reason, original: super::pipeline::cut_short(original) });
        }
        self.ready.push(b'\n');
    }

    /// Scans the pending lines again from a record's start (after the first was taken out).
    fn rescan(&mut self) {
        let lines: Vec<(u64, Vec<u8>)> = self.pending.drain(..).collect();
        self.pending_bytes = 0;
        self.quoting = Quoting::FieldStart;
        for (number, line) in lines {
            for byte in &line {
                self.quoting = self.quoting.after(*byte, self.delimiter);
            }
            self.pending_bytes += line.len();
            self.pending.push_back((number, line));
            if self.quoting != Quoting::Quoted && self.quoting != Quoting::QuoteInQuoted {
                for (_, line) in self.pending.drain(..) {
                    self.ready.extend_from_slice(&line);
                }
                self.pending_bytes = 0;
            }
        }
    }
}

impl<R: BufRead> Read for CsvGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.ready.len() {
            self.ready.clear();
            self.at = 0;
            if self.eof {
                return Ok(0);
            }
            match self.next_line()? {
                Some((line, too_long)) => {
                    self.line += 1;
                    self.push(self.line, line, too_long);
                }
                None => {
                    // A quote still open at the end of the file: its record is what is pending.
                    self.eof = true;
                    if self.quoting == Quoting::Quoted {
                        while !self.pending.is_empty() {
                            self.reject_pending_first();
                            self.rescan();
                            if self.quoting != Quoting::Quoted {
                                break;
                            }
                        }
                    }
                    for (_, line) in self.pending.drain(..) {
                        self.ready.extend_from_slice(&line);
                    }
                    self.pending_bytes = 0;
                }
            }
        }
        let n = buf.len().min(self.ready.len() - self.at);
        buf[..n].copy_from_slice(&self.ready[self.at..self.at + n]);
        self.at += n;
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
    max_row_bytes: usize,
    path: &Path,
    expected: &[String],
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), SourceError> {
    let shown = path.display().to_string();
    let recent = std::sync::Arc::new(std::sync::Mutex::new((0u64, std::collections::VecDeque::with_capacity(RECENT_WINDOW))));
    let bad = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let guard = CsvGuard {
        inner: BufReader::with_capacity(64 * 1024, file),
        delimiter,
        max_row_bytes,
        pending: Default::default(),
        pending_bytes: 0,
        quoting: Quoting::FieldStart,
        ready: Vec::with_capacity(64 * 1024),
        at: 0,
        line: 0,
        eof: false,
        bad: bad.clone(),
    };
    let tracked = RecentBytes { inner: guard, recent: recent.clone() };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter).buffer_capacity(64 * 1024).from_reader(tracked);
    let mut record = csv::ByteRecord::new();
    let mut header: Option<Arc<Header>> = None;
    // Lines the guard took out, as dead letters, in order with the records around them.
    let taken_out = |before: u64, header: bool, emit: &mut dyn FnMut(Item) -> bool| -> Result<bool, SourceError> {
        let Ok(mut bad) = bad.lock() else { return Ok(true) };
        while bad.front().is_some_and(|b| b.line < before) {
            let Some(b) = bad.pop_front() else { break };
            if !header {
                return Err(SourceError::Header { path: shown.clone(), row: b.line, message: b.reason });
            }
            let item = Item::Failure(ReadFailure {
                row: b.line,
                sheet: None,
                code: ErrorCode::Size,
                column: None,
                reason: b.reason,
                original: b.original,
            });
            if !emit(item) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    loop {
        let row = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => {
                taken_out(u64::MAX, header.is_some(), emit)?;
                return Ok(());
            }
            Ok(true) => {}
            Err(e) => {
                let row = e.position().map(|p| p.line()).unwrap_or(row);
                if header.is_none() {
                    return Err(SourceError::Header {
                        path: shown.clone(),
                        row,
                        message: format!("the header cannot be parsed as CSV: {e}"),
                    });
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
        if !taken_out(row, header.is_some(), emit)? {
            return Ok(());
        }
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
            let parsed = Header::new(cells.into_iter().map(|c| c.trim().to_string()).collect());
            check_header(&parsed, expected, &shown, row)?;
            header = Some(Arc::new(parsed));
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

fn read_xlsx(
    file: std::fs::File,
    sheet: &str,
    path: &Path,
    expected: &[String],
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), SourceError> {
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
                let parsed = Header::new(names);
                check_header(&parsed, expected, &shown, row_number)?;
                *header = Some(Arc::new(parsed));
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

/// The longest JSON line read.
const MAX_JSON_LINE_BYTES: u64 = 64 * 1024 * 1024;

fn read_jsonl(mut reader: impl BufRead, path: &Path, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), SourceError> {
    let mut line = Vec::new();
    let mut row = 0u64;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_JSON_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(|e| SourceError::Read { path: path.display().to_string(), message: e.to_string() })?;
        if n == 0 {
            return Ok(());
        }
        row += 1;
        if n as u64 == MAX_JSON_LINE_BYTES && !line.ends_with(b"\n") {
            // The rest of the line is not the next row: skip to its end.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = reader
                    .by_ref()
                    .take(1 << 20)
                    .read_until(b'\n', &mut rest)
                    .map_err(|e| SourceError::Read { path: path.display().to_string(), message: e.to_string() })?;
                if m == 0 || rest.ends_with(b"\n") {
                    break;
                }
            }
            let failure = ReadFailure {
                row,
                sheet: None,
                code: ErrorCode::Size,
                column: None,
                reason: format!("第{row}行超过 {MAX_JSON_LINE_BYTES} 字节的行长上限"),
                original: super::pipeline::cut_short(&line),
            };
            if !emit(Item::Failure(failure)) {
                return Ok(());
            }
            continue;
        }
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
