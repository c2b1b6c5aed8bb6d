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
    source::read(&config.source, path, &mut |item| {
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
