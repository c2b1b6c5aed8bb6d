//! A batch in memory: everything one transaction of the matcher reads and will write, and the
//! bulk reads that fill it. Reads are a few statements for the whole batch, by key set or, for a
//! chunk of a re-evaluation on PostgreSQL, by id range ([`Span`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::Value;

use super::assemble::{StoredFact, StoredMember};
use super::context::{ApplyError, Inbound};
use super::facts::{Extracted, Feed, PersonFact};
use super::outbound::Summary;
use crate::db::sql::{Bind, Conn, Record, select_in, select_range};

pub(super) fn sorted_unique(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// A person as known in this batch.
#[derive(Clone, Debug)]
pub(super) struct Person {
    pub(super) name: Option<String>,
    pub(super) name_source: Option<String>,
    /// Not in the database yet.
    pub(super) new: bool,
    /// Name changed: to be written.
    pub(super) renamed: bool,
}

/// Where the current fact for (person, source, field) is.
#[derive(Clone, Debug)]
pub(super) struct Current {
    pub(super) effective: Option<NaiveDate>,
    pub(super) recorded_at: String,
    pub(super) offset: i64,
    /// Row id when in the database, else the index in `new_facts`.
    pub(super) db_id: Option<i64>,
    pub(super) new_index: Option<usize>,
}

#[derive(Clone, Debug)]
pub(super) struct NewFact {
    pub(super) event: usize,
    pub(super) id_number: String,
    pub(super) fact: PersonFact,
    pub(super) state: &'static str,
}

#[derive(Clone, Debug)]
pub(super) struct HouseholdRow {
    pub(super) region: String,
    pub(super) as_of: NaiveDate,
    /// The registration's own fields, as stored (JSON text).
    pub(super) base: String,
    pub(super) version: i64,
    /// The summary of decision `version` (`households.decision_summary`), compared with the next
    /// decision's; `None` before the first decision, or for a row written before the column was.
    pub(super) summary: Option<Summary>,
    /// Assessed no earlier than this date (set by a policy change or a calendar review).
    pub(super) reevaluated_on: Option<NaiveDate>,
    /// When the next periodic review is due.
    pub(super) next_review_on: Option<NaiveDate>,
    pub(super) dirty: Dirty,
}

/// What of a household row is to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Dirty {
    Clean,
    /// Only its decision version, date floor or next review (an existing row).
    Decision,
    /// The whole row (new, or registered again).
    Record,
}

impl HouseholdRow {
    pub(super) fn touch(&mut self) {
        self.dirty = self.dirty.max(Dirty::Decision);
    }
}

#[derive(Clone, Debug)]
pub(super) struct MemberRow {
    pub(super) db_id: Option<i64>,
    pub(super) household_id: String,
    pub(super) id_number: String,
    pub(super) relation: String,
    pub(super) record: Value,
    pub(super) valid_from: String,
    pub(super) valid_to: Option<String>,
    pub(super) ce_id: String,
}

/// A review task and its outbox row, waiting to be written.
#[derive(Clone, Debug)]
pub(super) struct NewTask {
    pub(super) task_id: String,
    pub(super) kind: String,
    pub(super) id_number: Option<String>,
    pub(super) household_id: Option<String>,
    pub(super) region: String,
    pub(super) created_on: NaiveDate,
    pub(super) rule: Option<String>,
    pub(super) detail: String,
}

/// A review task as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskRow {
    pub task_id: String,
    pub kind: String,
    pub id_number: Option<String>,
    pub household_id: Option<String>,
    pub region: String,
    pub created_on: String,
    pub rule: Option<String>,
    pub detail: String,
    pub state: String,
    pub assignee: Option<String>,
    pub outcome: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    pub due_on: Option<String>,
}

/// The columns of a task row the matcher reads.
pub const TASK_COLUMNS: &str =
    "task_id, kind, id_number, household_id, region, created_on, rule, detail, state, assignee, outcome, resolved_by, resolved_at, due_on";

pub fn task_row(r: &Record) -> Result<TaskRow, sqlx::Error> {
    Ok(TaskRow {
        task_id: r.try_get("task_id")?,
        kind: r.try_get("kind")?,
        id_number: r.try_get("id_number")?,
        household_id: r.try_get("household_id")?,
        region: r.try_get("region")?,
        created_on: r.try_get("created_on")?,
        rule: r.try_get("rule")?,
        detail: r.try_get("detail")?,
        state: r.try_get("state")?,
        assignee: r.try_get("assignee")?,
        outcome: r.try_get("outcome")?,
        resolved_by: r.try_get("resolved_by")?,
        resolved_at: r.try_get("resolved_at")?,
        due_on: r.try_get("due_on")?,
    })
}

/// A fact held for an identity conflict, as stored.
#[derive(Clone, Debug)]
pub(super) struct HeldFact {
    pub(super) id: i64,
    pub(super) id_number: String,
    pub(super) source: String,
    pub(super) field: String,
    pub(super) value: Value,
    pub(super) effective: Option<NaiveDate>,
    pub(super) recorded_at: String,
    pub(super) offset: i64,
    pub(super) topic: String,
    pub(super) ce_id: String,
    pub(super) source_file: Option<String>,
    pub(super) source_row: Option<String>,
}

/// Everything a batch reads and writes, in memory until it is flushed.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) seen: BTreeSet<String>,
    pub(super) persons: BTreeMap<String, Person>,
    pub(super) current: BTreeMap<(String, &'static str, String), Current>,
    pub(super) new_facts: Vec<NewFact>,
    pub(super) superseded: Vec<i64>,
    pub(super) households: BTreeMap<String, HouseholdRow>,
    /// Every membership row touched or loaded: current ones have `valid_to == None`.
    pub(super) members: Vec<MemberRow>,
    /// Current household of each person (index into `members`).
    pub(super) membership: BTreeMap<String, usize>,
    pub(super) open_conflicts: BTreeSet<String>,
    pub(super) tasks: Vec<NewTask>,
    pub(super) outbox: Vec<Vec<Bind>>,
    /// Delivery rows of the entitlement events in `outbox`.
    pub(super) deliveries: Vec<Vec<Bind>>,
    pub(super) processed: Vec<Vec<Bind>>,
    /// Household → (triggering ce_id, its source time).
    pub(super) affected: BTreeMap<String, (String, String)>,
    /// Set when the households re-evaluated are (nearly) every household of an id range: their
    /// rows are then read by that range.
    pub(super) span: Option<Span>,
    /// Review tasks that caseworkers' actions in the batch name, by id (as changed so far).
    pub(super) task_rows: BTreeMap<String, TaskRow>,
    /// Task rows to write back (their state changed).
    pub(super) task_updates: BTreeMap<String, TaskRow>,
    /// Rows of `review_task_transitions` to insert.
    pub(super) transitions: Vec<Vec<Bind>>,
    /// Audit entries, appended in the batch's transaction.
    pub(super) audits: Vec<crate::audit::Pending>,
    /// Held facts of the people whose identity conflicts are resolved in the batch.
    pub(super) held: Vec<HeldFact>,
    /// Names held for those people: (id_number, source, name).
    pub(super) held_names: Vec<(String, String, String)>,
    /// Known name variants of the batch's people.
    pub(super) variants: BTreeMap<String, BTreeSet<String>>,
    /// `name_variants` rows to upsert: id_number, source, name, state, task_id, updated_at.
    pub(super) variant_writes: Vec<Vec<Bind>>,
    /// Stored facts whose state changes (held facts released or rejected).
    pub(super) fact_states: Vec<(i64, &'static str)>,
}

/// A range of household ids, first and last inclusive, holding the households of a re-evaluation
/// chunk and at most as many others. The range compares bytes (`COLLATE "C"`, the collation of every
/// `household_id` column since migration 0006): the order of Rust's strings, in which the chunk's
/// ids are sorted. A chunk of a policy change is usually every household of its
/// range (ids sort by region), so its rows are read with one range scan of each index instead of
/// an index descent per household; rows of other households in the range are dropped as read.
///
/// `exact`: when the chunk's household rows were read, the range held the chunk's households and no
/// other. The chunk's other reads then keep every row without looking its household up among the
/// chunk's ids (a binary search per row of members, facts and entitlements: 6 % of doudi's CPU in a
/// policy change, BENCHMARKS.md). A household inserted into the range by another transaction after
/// that read could still bring rows in; they are ignored, as every row read is used through the
/// chunk's ids (`state.remove(id)`, `in_force.remove(id)`, `open_tasks.remove(id)`).
#[derive(Clone, Debug)]
pub(super) struct Span {
    pub(super) first: String,
    pub(super) last: String,
    pub(super) exact: bool,
}

/// Rows of `sql_prefix (keys) sql_suffix` as [`select_in`], read by `span` on PostgreSQL when
/// given and `keys` are sorted and inside it (otherwise by the keys). The rows must have a
/// `household_id` column; rows of other households of the range are dropped, unless the range
/// held only the chunk's households when they were read (`Span::exact`).
pub(super) async fn select_households(
    conn: &mut Conn<'_>,
    span: Option<&Span>,
    sql_prefix: &str,
    sql_suffix: &str,
    keys: &[String],
) -> Result<Vec<Record>, ApplyError> {
    if let Some(span) = span
        && let Some(column) = sql_prefix.strip_suffix(" IN")
        && keys.is_sorted()
        && keys.first().is_some_and(|k| *k >= span.first)
        && keys.last().is_some_and(|k| *k <= span.last)
        && let Some(rows) = select_range(conn, column, &span.first, &span.last, sql_suffix).await?
    {
        let mut out = Vec::new();
        for r in rows {
            if span.exact || among(keys, r.try_get("household_id")?) {
                out.push(r);
            }
        }
        return Ok(out);
    }
    Ok(select_in(conn, sql_prefix, sql_suffix, keys).await?)
}

/// Whether `id` is one of the sorted `keys`.
pub(super) fn among(keys: &[String], id: &str) -> bool {
    keys.binary_search_by(|k| k.as_str().cmp(id)).is_ok()
}

/// One round of bulk reads: what the batch's events need to be applied.
pub(super) async fn load_for_events(
    conn: &mut Conn<'_>,
    b: &mut Batch,
    events: &[Inbound],
    extracted: &[Result<Extracted, super::facts::FactError>],
) -> Result<(), ApplyError> {
    let ce_ids = sorted_unique(events.iter().map(|e| e.ce_id.clone()));
    for r in select_in(conn, "SELECT ce_id FROM processed_events WHERE ce_id IN", "", &ce_ids).await? {
        b.seen.insert(r.try_get("ce_id")?);
    }
    let mut ids = Vec::new();
    let mut household_ids = Vec::new();
    let mut task_ids = Vec::new();
    for x in extracted.iter().flatten() {
        match x {
            Extracted::Household(h) => {
                household_ids.push(h.household_id.clone());
                ids.extend(h.members.iter().map(|m| m.id.as_str().to_string()));
            }
            Extracted::Person { id, .. } => ids.push(id.as_str().to_string()),
            Extracted::Resolution(r) => {
                task_ids.push(r.task_id.clone());
                if let super::facts::ResolutionAction::Resolve { household: Some((_, h)), .. } = &r.action {
                    household_ids.push(h.household_id.clone());
                    ids.extend(h.members.iter().map(|m| m.id.as_str().to_string()));
                }
            }
        }
    }
    let mut conflicted = Vec::new();
    for r in select_in(conn, &format!("SELECT {TASK_COLUMNS} FROM review_tasks WHERE task_id IN"), "", &sorted_unique(task_ids)).await? {
        let task = task_row(&r)?;
        if let Some(id) = &task.id_number {
            ids.push(id.clone());
            if task.kind == "identity_conflict" {
                conflicted.push(id.clone());
            }
        }
        if let Some(h) = &task.household_id {
            household_ids.push(h.clone());
        }
        b.task_rows.insert(task.task_id.clone(), task);
    }
    let conflicted = sorted_unique(conflicted);
    for r in select_in(
        conn,
        "SELECT id, id_number, source, field, value, effective_date, recorded_at, kafka_offset, topic, ce_id, source_file, source_row \
         FROM facts WHERE state = 'held' AND id_number IN",
        "ORDER BY id",
        &conflicted,
    )
    .await?
    {
        b.held.push(HeldFact {
            id: r.try_get("id")?,
            id_number: r.try_get("id_number")?,
            source: r.try_get("source")?,
            field: r.try_get("field")?,
            value: serde_json::from_str(&r.try_get::<String, _>("value")?).unwrap_or_default(),
            effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(crate::dates::ymd),
            recorded_at: r.try_get("recorded_at")?,
            offset: r.try_get("kafka_offset")?,
            topic: r.try_get("topic")?,
            ce_id: r.try_get("ce_id")?,
            source_file: r.try_get("source_file")?,
            source_row: r.try_get("source_row")?,
        });
    }
    for r in
        select_in(conn, "SELECT id_number, source, name FROM name_variants WHERE state = 'held' AND id_number IN", "", &conflicted).await?
    {
        b.held_names.push((r.try_get("id_number")?, r.try_get("source")?, r.try_get("name")?));
    }
    let ids = sorted_unique(ids);
    for r in select_in(conn, "SELECT id_number, name FROM name_variants WHERE state = 'known' AND id_number IN", "", &ids).await? {
        b.variants.entry(r.try_get("id_number")?).or_default().insert(r.try_get("name")?);
    }
    for r in select_in(conn, "SELECT id_number, name, name_source FROM persons WHERE id_number IN", "", &ids).await? {
        b.persons.insert(
            r.try_get("id_number")?,
            Person { name: r.try_get("name")?, name_source: r.try_get("name_source")?, new: false, renamed: false },
        );
    }
    for r in select_in(
        conn,
        "SELECT id, id_number, source, field, effective_date, recorded_at, kafka_offset FROM facts WHERE state = 'current' AND id_number IN",
        "",
        &ids,
    )
    .await?
    {
        let source: String = r.try_get("source")?;
        let Some(feed) = Feed::ALL.iter().find(|f| f.topic() == source) else { continue };
        b.current.insert(
            (r.try_get("id_number")?, feed.topic(), r.try_get("field")?),
            Current {
                effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(crate::dates::ymd),
                recorded_at: r.try_get("recorded_at")?,
                offset: r.try_get("kafka_offset")?,
                db_id: Some(r.try_get("id")?),
                new_index: None,
            },
        );
    }
    for r in select_in(
        conn,
        "SELECT id_number FROM review_tasks WHERE kind = 'identity_conflict' AND state IN ('open', 'in_progress') AND id_number IN",
        "",
        &ids,
    )
    .await?
    {
        b.open_conflicts.insert(r.try_get("id_number")?);
    }
    // Current memberships of the batch's people, and every current member of the households involved.
    let mut households = household_ids;
    for r in select_in(conn, "SELECT household_id FROM household_members WHERE valid_to IS NULL AND id_number IN", "", &ids).await? {
        households.push(r.try_get("household_id")?);
    }
    let households = sorted_unique(households);
    load_households(conn, b, &households).await?;
    for r in select_in(
        conn,
        "SELECT id, household_id, id_number, relation, member, valid_from, ce_id FROM household_members WHERE valid_to IS NULL AND household_id IN",
        "ORDER BY id",
        &households,
    )
    .await?
    {
        let row = MemberRow {
            db_id: Some(r.try_get("id")?),
            household_id: r.try_get("household_id")?,
            id_number: r.try_get("id_number")?,
            relation: r.try_get("relation")?,
            record: serde_json::from_str(&r.try_get::<String, _>("member")?).unwrap_or_default(),
            valid_from: r.try_get("valid_from")?,
            valid_to: None,
            ce_id: r.try_get("ce_id")?,
        };
        b.membership.insert(row.id_number.clone(), b.members.len());
        b.members.push(row);
    }
    Ok(())
}

/// `households.decision_summary`: the summary of the decision it names. A row whose decision
/// version moved without it (written by an older doudi) is not trusted: the decision is read.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredSummary<S> {
    pub(super) version: i64,
    #[serde(flatten)]
    pub(super) summary: S,
}

/// The columns of a household row the matcher reads.
pub(super) const HOUSEHOLD_COLUMNS: &str =
    "household_id, region, as_of, base, decision_version, decision_summary, reevaluated_on, next_review_on";

/// Reads the stored rows of `household_ids` into the batch.
pub(super) async fn load_households(conn: &mut Conn<'_>, b: &mut Batch, household_ids: &[String]) -> Result<(), ApplyError> {
    let sql = format!("SELECT {HOUSEHOLD_COLUMNS} FROM households WHERE household_id IN");
    for r in select_in(conn, &sql, "", household_ids).await? {
        let (id, row) = household_row(&r)?;
        b.households.insert(id, row);
    }
    Ok(())
}

/// As [`load_households`] for sorted `household_ids`; on PostgreSQL, when the range from the first
/// to the last holds at most twice as many households, they are read by that range and the range
/// is returned for the chunk's other reads ([`Span`]). At most that many rows are read to find out.
pub(super) async fn load_households_by_range(
    conn: &mut Conn<'_>,
    b: &mut Batch,
    household_ids: &[String],
) -> Result<Option<Span>, ApplyError> {
    if let (Some(first), Some(last)) = (household_ids.first(), household_ids.last())
        && household_ids.is_sorted()
    {
        let mut span = Span { first: first.clone(), last: last.clone(), exact: false };
        let limit = 2 * household_ids.len();
        let select = format!("SELECT {HOUSEHOLD_COLUMNS} FROM households WHERE household_id");
        let suffix = format!("ORDER BY household_id LIMIT {}", limit + 1);
        if let Some(rows) = select_range(conn, &select, first, last, &suffix).await?
            && rows.len() <= limit
        {
            let (read, mut kept) = (rows.len(), 0);
            for r in rows {
                let (id, row) = household_row(&r)?;
                if among(household_ids, &id) {
                    b.households.insert(id, row);
                    kept += 1;
                }
            }
            span.exact = kept == read;
            return Ok(Some(span));
        }
    }
    load_households(conn, b, household_ids).await?;
    Ok(None)
}

/// A household row read with [`HOUSEHOLD_COLUMNS`].
pub(super) fn household_row(r: &Record) -> Result<(String, HouseholdRow), ApplyError> {
    let version: i64 = r.try_get("decision_version")?;
    Ok((
        r.try_get("household_id")?,
        HouseholdRow {
            region: r.try_get("region")?,
            as_of: crate::dates::ymd(&r.try_get::<String, _>("as_of")?).unwrap_or_default(),
            base: r.try_get("base")?,
            version,
            summary: r
                .try_get::<Option<&str>, _>("decision_summary")?
                .and_then(|s| serde_json::from_str::<StoredSummary<Summary>>(s).ok())
                .filter(|s| s.version == version)
                .map(|s| s.summary),
            reevaluated_on: r.try_get::<Option<String>, _>("reevaluated_on")?.as_deref().and_then(crate::dates::ymd),
            next_review_on: r.try_get::<Option<String>, _>("next_review_on")?.as_deref().and_then(crate::dates::ymd),
            dirty: Dirty::Clean,
        },
    ))
}

/// The current members of a household and their current facts (registrations left out), in a
/// stable order.
pub async fn household_state(conn: &mut Conn<'_>, household_id: &str) -> Result<(Vec<StoredMember>, Vec<StoredFact>), ApplyError> {
    let mut state = households_state(conn, None, &[household_id.to_string()]).await?;
    Ok(state.remove(household_id).unwrap_or_default())
}

/// Current members and their current facts of each household.
pub(super) type HouseholdStates = BTreeMap<String, (Vec<StoredMember>, Vec<StoredFact>)>;

/// As [`household_state`], for many households in one statement.
pub(super) async fn households_state(
    conn: &mut Conn<'_>,
    span: Option<&Span>,
    household_ids: &[String],
) -> Result<HouseholdStates, ApplyError> {
    let mut out: HouseholdStates = BTreeMap::new();
    // One row per current member and current fact (registrations left out), or per member without
    // facts: the memberships are read once for both.
    let facts = conn.backend().current_facts_join();
    let sql = format!(
        "SELECT m.id AS membership, m.household_id, m.id_number, m.member, f.field, f.value, f.effective_date \
         FROM household_members m {facts} WHERE m.valid_to IS NULL AND m.household_id IN"
    );
    let mut last_membership = None;
    for r in select_households(conn, span, &sql, "ORDER BY m.id, f.field, f.id", household_ids).await? {
        let membership: i64 = r.try_get("membership")?;
        let household_id: String = r.try_get("household_id")?;
        let id_number: String = r.try_get("id_number")?;
        let state = out.entry(household_id).or_default();
        if last_membership != Some(membership) {
            last_membership = Some(membership);
            state.0.push(StoredMember { id_number: id_number.clone(), record: r.try_get("member")? });
        }
        if let Some(field) = r.try_get::<Option<String>, _>("field")? {
            state.1.push(StoredFact {
                id_number,
                field,
                value: serde_json::from_str(r.try_get::<Option<&str>, _>("value")?.unwrap_or("null")).unwrap_or_default(),
                effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(crate::dates::ymd),
            });
        }
    }
    // Facts by person and field, each field's in id order (the sort is stable).
    for (_, facts) in out.values_mut() {
        facts.sort_by(|a, b| (&a.id_number, &a.field).cmp(&(&b.id_number, &b.field)));
    }
    Ok(out)
}
