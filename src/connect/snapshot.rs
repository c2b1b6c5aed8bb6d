//! Full-roster snapshots diffed against the previous one (F5).
//!
//! Guarantees: an identical snapshot yields no change; a person present twice in one snapshot is a
//! dead letter (every row of that person) and is neither added, changed nor removed; when more than
//! the configured share of the previous roster vanishes at once, the removals are *held* (not
//! emitted) until an operator confirms them.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::mapping::ErrorCode;
use super::pipeline::{DeadLetter, Event};
use crate::schema::compat::fingerprint;

/// What the previous snapshot held for one person (kept in a compacted topic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    pub record: Map<String, Value>,
    pub fingerprint: String,
}

/// A change to emit.
#[derive(Clone, Debug)]
pub struct Change {
    /// State key (the person's pseudonymous key).
    pub key: String,
    pub change: &'static str,
    pub record: Map<String, Value>,
    pub row: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Removals held back because too much of the roster vanished.
    pub held: Vec<Change>,
    pub duplicates: Vec<DeadLetter>,
}

/// The record as compared between snapshots: without the change and snapshot fields.
pub fn comparable(record: &Map<String, Value>, change_field: &str, snapshot_field: Option<&str>) -> Map<String, Value> {
    let mut r = record.clone();
    r.remove(change_field);
    if let Some(f) = snapshot_field {
        r.remove(f);
    }
    r
}

/// Diffs this snapshot's events (`key` = pseudonymous key of each) against `previous`.
pub fn diff(
    previous: &HashMap<String, StateEntry>,
    events: Vec<(String, Event, Vec<u8>)>,
    change_field: &str,
    snapshot_field: Option<&str>,
    max_removed_share: Decimal,
) -> Diff {
    let mut out = Diff::default();
    let mut by_key: BTreeMap<String, Vec<(Event, Vec<u8>)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (key, event, original) in events {
        if !by_key.contains_key(&key) {
            order.push(key.clone());
        }
        by_key.entry(key).or_default().push((event, original));
    }
    let mut present: HashMap<&str, ()> = HashMap::new();
    for key in &order {
        let rows = &by_key[key];
        present.insert(key, ());
        if rows.len() > 1 {
            let all_rows: Vec<String> = rows.iter().map(|(e, _)| e.row.to_string()).collect();
            for (event, original) in rows {
                out.duplicates.push(DeadLetter {
                    row: event.row,
                    sheet: event.sheet.clone(),
                    code: ErrorCode::Duplicate,
                    column: None,
                    reason: format!("同一人员在本期名单中出现多次（第{}行），请保留一行后重新报送", all_rows.join("、")),
                    original: original.clone(),
                });
            }
            continue;
        }
        let (event, _) = &rows[0];
        let record = comparable(&event.record, change_field, snapshot_field);
        let print = fingerprint(&Value::Object(record.clone()));
        match previous.get(key) {
            None => {
                out.added += 1;
                out.changes.push(Change { key: key.clone(), change: "added", record, row: Some(event.row) });
            }
            Some(old) if old.fingerprint != print => {
                out.changed += 1;
                out.changes.push(Change { key: key.clone(), change: "changed", record, row: Some(event.row) });
            }
            Some(_) => out.unchanged += 1,
        }
    }
    let mut removals: Vec<Change> = previous
        .iter()
        .filter(|(key, _)| !present.contains_key(key.as_str()))
        .map(|(key, old)| Change { key: key.clone(), change: "removed", record: old.record.clone(), row: None })
        .collect();
    removals.sort_by(|a, b| a.key.cmp(&b.key));
    let too_many = !previous.is_empty() && Decimal::from(removals.len()) > max_removed_share * Decimal::from(previous.len());
    if too_many {
        out.held = removals;
    } else {
        out.removed = removals.len();
        out.changes.extend(removals);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idnum::IdNumber;
    use serde_json::json;

    fn event(row: u64, id: &str, status: &str) -> (String, Event, Vec<u8>) {
        let record = json!({"id_number": id, "status": status}).as_object().cloned().unwrap_or_default();
        let key_id = IdNumber::parse(id).expect("valid");
        (format!("k-{id}"), Event { row, sheet: None, record, key_id, original: Vec::new() }, vec![])
    }

    fn state(entries: &[(&str, &str)]) -> HashMap<String, StateEntry> {
        entries
            .iter()
            .map(|(id, status)| {
                let record = json!({"id_number": id, "status": status}).as_object().cloned().unwrap_or_default();
                (format!("k-{id}"), StateEntry { fingerprint: fingerprint(&Value::Object(record.clone())), record })
            })
            .collect()
    }

    const A: &str = "220102195003070015";
    const B: &str = "11010519491231002X";
    const C: &str = "220102198506150029";

    #[test]
    fn identical_snapshot_changes_nothing() {
        let d = diff(
            &state(&[(A, "on_file"), (B, "on_file")]),
            vec![event(2, A, "on_file"), event(3, B, "on_file")],
            "change",
            None,
            Decimal::new(2, 1),
        );
        assert!(d.changes.is_empty() && d.held.is_empty());
        assert_eq!(d.unchanged, 2);
    }

    #[test]
    fn one_change_one_removal_one_addition() {
        let prev = state(&[
            (A, "on_file"),
            (B, "on_file"),
            ("220102198005010116", "on_file"),
            ("220802198005010114", "on_file"),
            ("110105194912310021", "on_file"),
        ]);
        let d = diff(
            &prev,
            vec![
                event(2, A, "left_hardship"),
                event(3, B, "on_file"),
                event(4, "220102198005010116", "on_file"),
                event(5, "220802198005010114", "on_file"),
                event(6, C, "on_file"),
            ],
            "change",
            None,
            Decimal::new(2, 1),
        );
        assert_eq!((d.added, d.changed, d.removed, d.unchanged), (1, 1, 1, 3));
        assert!(d.held.is_empty());
    }

    #[test]
    fn truncated_snapshot_holds_removals() {
        let prev = state(&[(A, "on_file"), (B, "on_file"), (C, "on_file")]);
        let d = diff(&prev, vec![event(2, A, "on_file")], "change", None, Decimal::new(2, 1));
        assert_eq!(d.held.len(), 2);
        assert_eq!(d.removed, 0);
        assert!(d.changes.is_empty());
    }

    #[test]
    fn duplicates_are_dead_letters_and_not_removed() {
        let prev = state(&[(A, "on_file"), (B, "on_file")]);
        let d = diff(
            &prev,
            vec![event(2, A, "on_file"), event(3, B, "on_file"), event(4, B, "left_hardship")],
            "change",
            None,
            Decimal::new(2, 1),
        );
        assert_eq!(d.duplicates.len(), 2);
        assert_eq!(d.duplicates.iter().map(|x| x.row).collect::<Vec<_>>(), vec![3, 4]);
        assert!(d.changes.is_empty() && d.held.is_empty());
    }
}
