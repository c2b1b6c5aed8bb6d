//! Unit and property tests of sources and mapping transforms (no broker needed).

use std::io::Write;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::config::{ConnectorConfig, Encoding, SourceSection, Transform};
use super::mapping::{Cell, ErrorCode, Fields, Header, excel_serial_date, map_record};
use super::source::{Item, read};

fn config(text: &str) -> ConnectorConfig {
    toml::from_str(text).expect("config parses")
}

fn read_all(source: &SourceSection, bytes: &[u8], suffix: &str) -> Result<Vec<Item>, super::source::SourceError> {
    read_expecting(source, bytes, suffix, &[])
}

fn read_expecting(
    source: &SourceSection,
    bytes: &[u8],
    suffix: &str,
    expected: &[String],
) -> Result<Vec<Item>, super::source::SourceError> {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().expect("tempfile");
    file.write_all(bytes).expect("write");
    let mut items = Vec::new();
    read(source, file.path(), expected, &mut |i| {
        items.push(i);
        true
    })?;
    Ok(items)
}

fn cells(item: &Item) -> Vec<String> {
    match item {
        Item::Record(r) => match &r.fields {
            Fields::Columns { cells, .. } => cells.iter().map(|c| format!("{c:?}")).collect(),
            Fields::Object(_) => vec![],
        },
        Item::Failure(f) => vec![format!("failure {:?} row {}", f.code, f.row)],
    }
}

#[test]
fn gbk_and_gb18030_decode_and_bad_bytes_name_the_row() {
    let text = "姓名,类别\n张三,深度困难\n李四,相对困难\n";
    let (gbk, _, _) = encoding_rs::GBK.encode(text);
    let items = read_all(&SourceSection::Csv { encoding: Encoding::Gbk, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, &gbk, ".csv")
        .expect("reads");
    assert_eq!(items.len(), 2);
    assert_eq!(cells(&items[0]), vec![format!("{:?}", Cell::Text("张三".into())), format!("{:?}", Cell::Text("深度困难".into()))]);
    // A character outside GBK needs GB18030's four-byte form.
    let rare = "姓名\n𠀀某\n";
    let (gb18030, _, _) = encoding_rs::GB18030.encode(rare);
    let items =
        read_all(&SourceSection::Csv { encoding: Encoding::Gb18030, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, &gb18030, ".csv")
            .expect("reads");
    assert_eq!(cells(&items[0]), vec![format!("{:?}", Cell::Text("𠀀某".into()))]);
    // Bytes that are not GBK in a data row: a decode failure naming that row; the rest goes on.
    let mut bad = gbk.to_vec();
    bad.extend_from_slice(b"\xff\xfe,x\n");
    bad.extend_from_slice(&encoding_rs::GBK.encode("王五,意外致困\n").0);
    let items = read_all(&SourceSection::Csv { encoding: Encoding::Gbk, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, &bad, ".csv")
        .expect("reads");
    assert_eq!(items.len(), 4);
    assert!(matches!(&items[2], Item::Failure(f) if f.code == ErrorCode::Decode && f.row == 4 && f.reason.contains("第4行")));
    assert!(matches!(&items[3], Item::Record(r) if r.row == 5));
    // A GBK file declared as UTF-8 fails at its header, naming row 1.
    let err = read_all(&SourceSection::Csv { encoding: Encoding::Utf8, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, &gbk, ".csv")
        .expect_err("refused");
    assert!(err.to_string().contains("row 1"), "{err}");
}

#[test]
fn utf8_bom_is_stripped_and_column_counts_checked() {
    let bytes = b"\xef\xbb\xbfa,b\n1,2\n3\n\n4,5\n";
    let items =
        read_all(&SourceSection::Csv { encoding: Encoding::Utf8Bom, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, bytes, ".csv")
            .expect("reads");
    match &items[0] {
        Item::Record(r) => match &r.fields {
            Fields::Columns { header, .. } => assert_eq!(header.names, vec!["a", "b"]),
            _ => panic!("columns"),
        },
        _ => panic!("record"),
    }
    assert!(matches!(&items[1], Item::Failure(f) if f.code == ErrorCode::Parse && f.row == 3));
    assert_eq!(items.iter().map(Item::row).collect::<Vec<_>>(), vec![2, 3, 5]);
}

#[test]
fn jsonl_lines_and_failures() {
    let items = read_all(&SourceSection::Jsonl, b"{\"a\":1}\n\nnot json\n[1]\n{\"b\":2}\n", ".jsonl").expect("reads");
    let rows: Vec<(u64, bool)> = items.iter().map(|i| (i.row(), matches!(i, Item::Record(_)))).collect();
    assert_eq!(rows, vec![(1, true), (3, false), (4, false), (5, true)]);
}

#[test]
fn every_feed_date_format() {
    let c = config(
        r#"
[connector]
name = "t"
department = "t"
topic = "t"
[source]
format = "jsonl"
[[field]]
target = "d"
from = "d"
transforms = ["trim", { date = ["%Y年%m月%d日", "%Y/%m/%d", "%Y%m%d"] }]
[[field]]
target = "e"
from = "e"
transforms = ["excel_date"]
required = false
"#,
    );
    for (input, expected) in
        [("2019年3月5日", "2019-03-05"), ("2019/9/1", "2019-09-01"), ("20191203", "2019-12-03"), (" 2019年12月25日 ", "2019-12-25")]
    {
        let fields = Fields::Object(json!({"d": input}).as_object().cloned().unwrap_or_default());
        assert_eq!(map_record(&c, &fields).map(|m| m["d"].clone()), Ok(json!(expected)), "{input}");
    }
    for bad in ["2019年2月30日", "2019-13-01x", "19/9/1", ""] {
        let fields = Fields::Object(json!({"d": bad}).as_object().cloned().unwrap_or_default());
        assert!(map_record(&c, &fields).is_err(), "{bad}");
    }
    let fields = Fields::Object(json!({"d": "2019/9/1", "e": "43799"}).as_object().cloned().unwrap_or_default());
    assert_eq!(map_record(&c, &fields).map(|m| m["e"].clone()), Ok(json!("2019-11-30")));
    assert_eq!(excel_serial_date("1").map(|d| d.to_string()).as_deref(), Some("1900-01-01"));
    assert_eq!(excel_serial_date("61").map(|d| d.to_string()).as_deref(), Some("1900-03-01"));
    assert_eq!(excel_serial_date("43799.75").map(|d| d.to_string()).as_deref(), Some("2019-11-30"));
    assert!(excel_serial_date("-1").is_none() && excel_serial_date("x").is_none());
}

fn id_config() -> ConnectorConfig {
    config(
        r#"
[connector]
name = "t"
department = "t"
topic = "t"
[source]
format = "csv"
encoding = "utf-8"
[[field]]
target = "id_number"
from = "身份证号"
transforms = ["trim", "id_number"]
[[field]]
target = "amount"
from = "金额"
transforms = ["trim", "empty_as_null", "amount"]
required = false
"#,
    )
}

fn row(id: &str, amount: &str) -> Fields {
    Fields::Columns {
        header: std::sync::Arc::new(Header::new(vec!["身份证号".into(), "金额".into()])),
        cells: vec![Cell::Text(id.into()), Cell::Text(amount.into())],
    }
}

#[test]
fn fifteen_digit_ids_are_upgraded_and_errors_hide_the_number() {
    let c = id_config();
    let mapped = map_record(&c, &row("220102500307001", "")).expect("maps");
    assert_eq!(mapped["id_number"], "220102195003070015");
    assert!(!mapped.contains_key("amount"));
    let err = map_record(&c, &row("220102195003070016", "1")).expect_err("bad check character");
    assert_eq!(err.code, ErrorCode::Mapping);
    assert_eq!(err.column.as_deref(), Some("身份证号"));
    assert!(!err.reason.contains("220102195003070016"));
    let err = map_record(&c, &row("220102195003070015", "1,2,3.456")).expect_err("three decimals");
    assert_eq!(err.column.as_deref(), Some("金额"));
}

proptest! {
    #[test]
    fn amounts_with_thousands_separators(cents in 0i64..10_000_000_000) {
        let value = rust_decimal::Decimal::new(cents, 2);
        let plain = value.to_string();
        let (int, frac) = plain.split_once('.').unwrap_or((&plain, "00"));
        let grouped: Vec<String> = int.as_bytes().rchunks(3).rev().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        let written = format!("{}.{frac}", grouped.join(","));
        let mapped = map_record(&id_config(), &row("220102195003070015", &written)).expect("maps");
        prop_assert_eq!(mapped["amount"].as_str().map(|s| s.parse::<rust_decimal::Decimal>().ok()), Some(Some(value)));
    }

    #[test]
    fn id_numbers_normalise_from_untidy_forms(days in 0i64..40_000, seq in 0u32..1000, lower in any::<bool>(), wide in any::<bool>(), pad in "[ \t\u{3000}]{0,2}") {
        let birth = chrono::NaiveDate::from_ymd_opt(1910, 1, 1).expect("date") + chrono::Duration::days(days);
        let id = crate::idnum::complete(&format!("220102{}{seq:03}", birth.format("%Y%m%d"))).expect("17 digits");
        let mut untidy: String = if wide { id.chars().map(|c| if c.is_ascii_digit() { char::from_u32(c as u32 + 0xFEE0).unwrap_or(c) } else { c }).collect() } else { id.clone() };
        if lower { untidy = untidy.replace('X', "x"); }
        let untidy = format!("{pad}{untidy}{pad}");
        let mapped = map_record(&id_config(), &row(&untidy, "")).expect("maps");
        prop_assert_eq!(mapped["id_number"].as_str(), Some(id.as_str()));
    }

    #[test]
    fn dates_round_trip_through_every_feed_format(days in 0i64..50_000) {
        let date = chrono::NaiveDate::from_ymd_opt(1920, 1, 1).expect("date") + chrono::Duration::days(days);
        let c = config("[connector]\nname = \"t\"\ndepartment = \"t\"\ntopic = \"t\"\n[source]\nformat = \"jsonl\"\n[[field]]\ntarget = \"d\"\nfrom = \"d\"\ntransforms = [{ date = [\"%Y年%m月%d日\", \"%Y/%m/%d\", \"%Y%m%d\"] }]\n");
        for written in [format!("{}年{}月{}日", date.format("%Y"), date.format("%-m"), date.format("%-d")), date.format("%Y/%-m/%-d").to_string(), date.format("%Y%m%d").to_string()] {
            let fields = Fields::Object(json!({"d": written}).as_object().cloned().unwrap_or_default());
            prop_assert_eq!(map_record(&c, &fields).map(|m| m["d"].clone()), Ok(Value::String(date.to_string())));
        }
    }

    #[test]
    fn mapping_never_panics(id in "\\PC{0,30}", amount in "\\PC{0,20}") {
        let _ = map_record(&id_config(), &row(&id, &amount));
    }
}

#[test]
fn transforms_parse_from_toml() {
    let c = id_config();
    assert_eq!(c.fields[0].transforms, vec![Transform::Trim, Transform::IdNumber]);
}

#[test]
fn row_numbers_with_crlf_lf_and_blank_lines() {
    for (bytes, rows) in [
        (&b"h,i\r\na,1\r\nb,2\r\n"[..], vec![2, 3]),
        (&b"h,i\na,1\nb,2\n"[..], vec![2, 3]),
        (&b"h,i\na,1\n\n\nb,2"[..], vec![2, 5]),
        (&b"h,i\r\na,1\r\n\r\nb,2\r\n"[..], vec![2, 4]),
        (&b"h,i\na,\"x\ny\"\nb,2\n"[..], vec![2, 4]),
    ] {
        let items =
            read_all(&SourceSection::Csv { encoding: Encoding::Utf8, delimiter: ",".into(), max_row_bytes: 64 * 1024 }, bytes, ".csv")
                .expect("reads");
        assert_eq!(items.iter().map(Item::row).collect::<Vec<_>>(), rows, "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn row_numbers_of_a_longer_crlf_file() {
    let mut text = String::from("h,i\r\n");
    for i in 0..8 {
        text.push_str(&format!("某{i},{i}\r\n"));
    }
    let items = read_all(
        &SourceSection::Csv { encoding: Encoding::Utf8, delimiter: ",".into(), max_row_bytes: 64 * 1024 },
        text.as_bytes(),
        ".csv",
    )
    .expect("reads");
    assert_eq!(items.iter().map(Item::row).collect::<Vec<_>>(), (2..10).collect::<Vec<u64>>());
}

/// Regression: a mapping worker that panicked used to lose its chunk (`join().unwrap_or_default()`)
/// while the batch went on, so the rows after it were paired with the wrong row numbers and the
/// position moved past rows never produced. Now the whole batch fails, naming its rows.
#[test]
fn a_panicking_mapping_worker_fails_the_batch_instead_of_dropping_its_rows() {
    let c = id_config();
    let schema = crate::schema::Schema::compile(
        "t.json",
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "t", "title": "t", "description": "t",
               "examples": [{}], "type": "object"}),
    )
    .expect("schema compiles");
    let items = |n: u64| -> Vec<Item> {
        (1..=n)
            .map(|row| Item::Record(super::source::RawRecord { row, sheet: None, fields: row_fields(), original: b"x".to_vec() }))
            .collect()
    };
    let keys = crate::envelope::KeyDeriver::new(&crate::config::Settings::default().keys);
    let extra = serde_json::Map::new();
    let fine = |e: &super::pipeline::Event| e.row.to_string();
    let ready = super::pipeline::process_batch(&c, &schema, items(600), &extra, &keys, &fine, 1_000_000).expect("no worker fails");
    assert_eq!(ready.len(), 600, "one result per row");
    let panics_on_row_500 = |e: &super::pipeline::Event| {
        assert!(e.row != 500, "a bug in one row");
        e.row.to_string()
    };
    // With one core the batch is mapped on the calling thread, where a panic is the caller's.
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2 {
        let result = super::pipeline::process_batch(&c, &schema, items(600), &extra, &keys, &panics_on_row_500, 1_000_000);
        let err = result.err().expect("the batch fails");
        assert!(err.contains("rows") && !err.contains("220102"), "{err}");
    }
}

fn row_fields() -> Fields {
    row("220102195003070015", "1.00")
}

fn csv_limited(max_row_bytes: usize) -> SourceSection {
    SourceSection::Csv { encoding: Encoding::Utf8, delimiter: ",".into(), max_row_bytes }
}

fn failure_of(item: &Item) -> Option<(u64, ErrorCode, String)> {
    match item {
        Item::Failure(f) => Some((f.row, f.code, f.reason.clone())),
        Item::Record(_) => None,
    }
}

/// Regression: a quote left open used to swallow the rest of the file into one field, so one bad
/// row cost every row after it. Now the row is a dead letter naming it and reading goes on.
#[test]
fn an_unclosed_quote_is_one_dead_letter_and_the_rest_of_the_file_is_read() {
    let mut text = String::from("姓名,金额\n张三,\"100\n");
    for i in 0..200 {
        text.push_str(&format!("某{i},{i}\n"));
    }
    let items = read_all(&csv_limited(1024), text.as_bytes(), ".csv").expect("reads");
    let failures: Vec<_> = items.iter().filter_map(failure_of).collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].0, failures[0].1), (2, ErrorCode::Size));
    assert!(failures[0].2.contains("第2行的引号没有闭合"), "{}", failures[0].2);
    let records: Vec<u64> = items.iter().filter(|i| matches!(i, Item::Record(_))).map(Item::row).collect();
    assert_eq!(records, (3..203).collect::<Vec<u64>>(), "every later row is read, with its own line number");
}

#[test]
fn an_unclosed_quote_at_the_end_of_the_file_is_a_dead_letter_too() {
    let items = read_all(&csv_limited(1024), "h,i\na,1\nb,\"2\nc,3\n".as_bytes(), ".csv").expect("reads");
    let rows: Vec<_> = items.iter().map(|i| (i.row(), failure_of(i).map(|f| f.1))).collect();
    assert_eq!(rows, vec![(2, None), (3, Some(ErrorCode::Size)), (4, None)]);
}

#[test]
fn quoted_line_breaks_within_the_limit_stay_one_record() {
    let items = read_all(&csv_limited(1024), "h,i\na,\"x\ny\nz\"\nb,2\n".as_bytes(), ".csv").expect("reads");
    assert_eq!(items.iter().map(Item::row).collect::<Vec<_>>(), vec![2, 5]);
    assert_eq!(cells(&items[0])[1], format!("{:?}", Cell::Text("x\ny\nz".into())));
}

#[test]
fn a_line_over_the_limit_is_a_dead_letter_naming_its_row_and_cut_short() {
    let long = "x".repeat(10_000);
    let text = format!("h,i\na,1\nb,{long}\nc,3\n");
    let items = read_all(&csv_limited(1024), text.as_bytes(), ".csv").expect("reads");
    let rows: Vec<_> = items.iter().map(|i| (i.row(), failure_of(i).map(|f| f.1))).collect();
    assert_eq!(rows, vec![(2, None), (3, Some(ErrorCode::Size)), (4, None)]);
    let Item::Failure(f) = &items[1] else { unreachable!() };
    assert!(f.reason.contains("超过 1024 字节"), "{}", f.reason);
    assert!(f.original.len() <= super::pipeline::DEAD_LETTER_ORIGINAL_BYTES);
}

#[test]
fn a_stray_quote_inside_an_unquoted_field_is_literal_as_before() {
    let items = read_all(&csv_limited(1024), "h,i\na,1\"2\nb,3\n".as_bytes(), ".csv").expect("reads");
    assert_eq!(items.iter().map(|i| (i.row(), failure_of(i).is_none())).collect::<Vec<_>>(), vec![(2, true), (3, true)]);
}

#[test]
fn an_over_long_json_line_is_one_dead_letter() {
    // The JSONL limit is 64 MiB; the line after it keeps its own number.
    let mut text = String::from("{\"a\":1}\n{\"b\":\"");
    text.push_str(&"y".repeat(64 * 1024 * 1024 + 10));
    text.push_str("\"}\n{\"c\":3}\n");
    let items = read_all(&SourceSection::Jsonl, text.as_bytes(), ".jsonl").expect("reads");
    let rows: Vec<_> = items.iter().map(|i| (i.row(), failure_of(i).map(|f| f.1))).collect();
    assert_eq!(rows, vec![(1, None), (2, Some(ErrorCode::Size)), (3, None)]);
}

proptest! {
    /// Whatever the bytes, every line ends up as a record, a dead letter or nothing (blank), in
    /// order, and nothing after a bad line is lost.
    #[test]
    fn csv_rows_come_out_in_order_whatever_the_quoting(lines in proptest::collection::vec("[a-c\",]{0,12}", 1..40)) {
        let mut text = String::from("h,i\n");
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        let items = read_all(&csv_limited(256), text.as_bytes(), ".csv").expect("reads");
        let rows: Vec<u64> = items.iter().map(Item::row).collect();
        let mut sorted = rows.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&rows, &sorted);
        prop_assert!(rows.iter().all(|r| *r >= 2 && *r <= lines.len() as u64 + 1));
    }
}

/// A file without its header line: the first data row would be taken for the header and lost. The
/// file fails instead, naming the columns the connector maps that the header lacks (each once), and
/// never the cells it found, which are a person's data.
#[test]
fn a_header_without_the_mapped_columns_fails_the_file_naming_them() {
    let config = config(
        r#"
[connector]
name = "t"
department = "t"
topic = "t"
[source]
format = "csv"
encoding = "utf-8"
[[field]]
target = "certificate_no"
from = "残疾人证号"
[[field]]
target = "id_number"
from = "残疾人证号"
[[field]]
target = "name"
from = "姓名"
"#,
    );
    let expected = config.header_columns();
    assert_eq!(expected, vec!["残疾人证号".to_string(), "姓名".to_string()]);
    let headerless = "22010219650101357X42,诸葛明月\n22010219650101358X42,慕容秋水\n";
    let err = read_expecting(&config.source, headerless.as_bytes(), ".csv", &expected).expect_err("the file fails").to_string();
    assert!(err.contains("“残疾人证号”、“姓名”") && err.contains("row 1"), "{err}");
    assert!(!err.contains("诸葛明月") && !err.contains("2201"), "no cell of the row taken for a header: {err}");
    let with_header = format!("残疾人证号,姓名\n{headerless}");
    let items = read_expecting(&config.source, with_header.as_bytes(), ".csv", &expected).expect("reads");
    assert_eq!(items.len(), 2);
    // JSON Lines has no header to check.
    let jsonl = config_with_jsonl();
    assert!(jsonl.header_columns().is_empty());
}

fn config_with_jsonl() -> ConnectorConfig {
    config(
        r#"
[connector]
name = "t"
department = "t"
topic = "t"
[source]
format = "jsonl"
[[field]]
target = "id_number"
from = "证件号码"
"#,
    )
}
