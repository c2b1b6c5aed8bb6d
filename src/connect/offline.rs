//! Running a connector's mapping without Kafka: `doudi connect test` and the mapping benchmarks.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::config::ConnectorConfig;
use super::pipeline::{DeadLetter, Event, Outcome, process};
use super::snapshot;
use super::source::{self, SourceError};
use crate::envelope::KeyDeriver;
use crate::schema::Schema;

/// Everything one file produced.
#[derive(Debug, Default)]
pub struct OfflineRun {
    pub read: usize,
    pub events: Vec<Event>,
    pub dead_letters: Vec<DeadLetter>,
}

/// The fields a snapshot connector adds before validation: a placeholder change and the file hash.
pub fn snapshot_extra(config: &ConnectorConfig, file_sha256: &str) -> Map<String, Value> {
    let mut extra = Map::new();
    if let Some(s) = &config.snapshot {
        extra.insert(s.change_field.clone(), Value::String("added".into()));
        if let Some(f) = &s.snapshot_field {
            extra.insert(f.clone(), Value::String(file_sha256.into()));
        }
    }
    extra
}

/// Reads, maps and validates a whole file. A snapshot is diffed against an empty previous roster.
pub fn run_file(
    config: &ConnectorConfig,
    schema: &Schema,
    path: &Path,
    keys: &KeyDeriver,
    file_sha256: &str,
) -> Result<OfflineRun, SourceError> {
    let extra = snapshot_extra(config, file_sha256);
    let mut run = OfflineRun::default();
    let mut originals: HashMap<u64, Vec<u8>> = HashMap::new();
    source::read(&config.source, path, &config.header_columns(), &mut |item| {
        run.read += 1;
        let original = match &item {
            source::Item::Record(r) => r.original.clone(),
            source::Item::Failure(f) => f.original.clone(),
        };
        match process(config, schema, item, &extra) {
            Outcome::Event(e) => {
                if config.snapshot.is_some() {
                    originals.insert(e.row, original);
                }
                run.events.push(e);
            }
            Outcome::DeadLetter(d) => run.dead_letters.push(d),
        }
        true
    })?;
    if let Some(s) = &config.snapshot {
        let events: Vec<(String, Event, Vec<u8>)> = std::mem::take(&mut run.events)
            .into_iter()
            .map(|e| (keys.key(&e.key_id), originals.remove(&e.row).unwrap_or_default(), e))
            .map(|(k, o, e)| (k, e, o))
            .collect();
        let rows: HashMap<String, Event> = events.iter().map(|(k, e, _)| (k.clone(), e.clone())).collect();
        let diff = snapshot::diff(&HashMap::new(), events, &s.change_field, s.snapshot_field.as_deref(), s.max_removed_share);
        for change in diff.changes {
            if let Some(mut e) = rows.get(&change.key).cloned() {
                e.record.insert(s.change_field.clone(), Value::String(change.change.into()));
                run.events.push(e);
            }
        }
        run.events.sort_by_key(|e| e.row);
        run.dead_letters.extend(diff.duplicates);
    }
    run.dead_letters.sort_by_key(|d| d.row);
    Ok(run)
}

/// The outcome of `doudi connect test`.
#[derive(Debug, Default)]
pub struct TestReport {
    pub connector: String,
    pub input: String,
    pub events: usize,
    pub dead_letters: usize,
    pub mismatches: Vec<String>,
    pub updated: bool,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for TestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.updated {
            "expected files written"
        } else if self.passed() {
            "passed"
        } else {
            "FAILED"
        };
        writeln!(f, "{}: {} — {} records, {} dead letters from {}", self.connector, verdict, self.events, self.dead_letters, self.input)?;
        for m in &self.mismatches {
            writeln!(f, "  - {m}")?;
        }
        Ok(())
    }
}

fn read_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display()))).collect()
}

fn write_lines(path: &Path, values: &[Value]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let text: String = values.iter().map(|v| format!("{}\n", serde_json::to_string(v).unwrap_or_default())).collect();
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs the config's `[test]` fixture and compares (or, with `update`, rewrites) the expectations.
pub fn test_fixtures(
    config: &ConnectorConfig,
    registry: &crate::schema::Registry,
    keys: &KeyDeriver,
    update: bool,
) -> Result<TestReport, String> {
    let test = config.test.as_ref().ok_or_else(|| format!("{} has no [test] section", config.path.display()))?;
    let schema = registry.for_topic(&config.connector.topic).map_err(|e| e.to_string())?;
    let input = config.relative(&test.input);
    let sha = {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(&input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
        hex::encode(Sha256::digest(&bytes))
    };
    let run = run_file(config, schema, &input, keys, &sha).map_err(|e| e.to_string())?;
    let events: Vec<Value> = run.events.iter().map(|e| Value::Object(e.record.clone())).collect();
    let dead: Vec<Value> = run
        .dead_letters
        .iter()
        .map(|d| serde_json::json!({"row": d.row, "error_code": d.code.as_str(), "column": d.column, "reason": d.reason}))
        .collect();
    let mut report = TestReport {
        connector: config.connector.name.clone(),
        input: test.input.display().to_string(),
        events: events.len(),
        dead_letters: dead.len(),
        ..TestReport::default()
    };
    let expected_path = config.relative(&test.expected);
    let dead_path = config.relative(&test.expected_dead_letters);
    if update {
        write_lines(&expected_path, &events)?;
        write_lines(&dead_path, &dead)?;
        report.updated = true;
        return Ok(report);
    }
    let expected = read_lines(&expected_path)?;
    if expected.len() != events.len() {
        report.mismatches.push(format!("{} records expected, {} produced", expected.len(), events.len()));
    }
    for (i, (want, got)) in expected.iter().zip(&events).enumerate() {
        if want != got {
            report.mismatches.push(format!(
                "record {} (row {}) differs from line {} of {}",
                i + 1,
                run.events[i].row,
                i + 1,
                test.expected.display()
            ));
        }
    }
    let expected_dead = read_lines(&dead_path)?;
    if expected_dead.len() != dead.len() {
        report.mismatches.push(format!("{} dead letters expected, {} produced", expected_dead.len(), dead.len()));
    }
    for (want, got) in expected_dead.iter().zip(&dead) {
        // Row, error code and column must match; the reason is compared only when the fixture gives it.
        let same = want["row"] == got["row"]
            && want["error_code"] == got["error_code"]
            && want["column"] == got["column"]
            && (want.get("reason").is_none() || want["reason"] == got["reason"]);
        if !same {
            report.mismatches.push(format!("dead letter at row {} differs: expected {want}", got["row"]));
        }
    }
    Ok(report)
}
