//! Writing a batch: multi-row statements for everything the batch's events and re-evaluations
//! changed, in the caller's transaction.

use std::collections::BTreeMap;

use super::batch::*;
use super::context::{ApplyError, Context, Inbound};
use crate::db::now_rfc3339;
use crate::db::sql::{Bind, Conn, execute_in, execute_values, insert_rows, ot, t};
use crate::idnum::IdNumber;

/// Writes what the events changed: persons, facts, households and memberships.
pub(super) async fn flush_events(conn: &mut Conn<'_>, ctx: &Context, b: &mut Batch, events: &[Inbound]) -> Result<(), ApplyError> {
    let now = now_rfc3339();
    let mut new_persons = Vec::new();
    for (id_number, p) in &b.persons {
        if p.new {
            let Ok(id) = IdNumber::parse(id_number) else { continue };
            new_persons.push(vec![
                t(id_number),
                t(ctx.keys.key(&id)),
                ot(p.name.clone()),
                ot(p.name_source.clone()),
                t(id.birth_date().to_string()),
                t(match id.sex() {
                    crate::idnum::Sex::Male => "male",
                    crate::idnum::Sex::Female => "female",
                }),
                t(&now),
            ]);
        } else if p.renamed {
            conn.execute(
                "UPDATE persons SET name = $1, name_source = $2 WHERE id_number = $3".into(),
                vec![ot(p.name.clone()), ot(p.name_source.clone()), t(id_number)],
            )
            .await?;
        }
    }
    insert_rows(
        conn,
        "persons",
        &["id_number", "person_key", "name", "name_source", "birth_date", "sex", "first_seen_at"],
        new_persons,
        "",
    )
    .await?;
    execute_in(
        conn,
        "UPDATE facts SET state = 'superseded' WHERE id IN",
        &[],
        &b.superseded.iter().map(|i| Bind::Int(*i)).collect::<Vec<_>>(),
    )
    .await?;
    let mut by_state: BTreeMap<&'static str, Vec<Bind>> = BTreeMap::new();
    for (id, state) in &b.fact_states {
        by_state.entry(state).or_default().push(Bind::Int(*id));
    }
    for (state, ids) in by_state {
        execute_in(conn, "UPDATE facts SET state = $1 WHERE id IN", &[t(state)], &ids).await?;
    }
    b.fact_states.clear();
    // One row per name (the last write wins: a name held and then settled in the same batch).
    let mut variants: BTreeMap<String, Vec<Bind>> = BTreeMap::new();
    for row in std::mem::take(&mut b.variant_writes) {
        let key = row.iter().take(3).map(|v| format!("{v:?}")).collect::<Vec<_>>().join("\u{1f}");
        variants.insert(key, row);
    }
    insert_rows(
        conn,
        "name_variants",
        &["id_number", "source", "name", "state", "task_id", "updated_at"],
        variants.into_values().collect(),
        "ON CONFLICT (id_number, source, name) DO UPDATE SET state = excluded.state, \
         task_id = COALESCE(excluded.task_id, name_variants.task_id), updated_at = excluded.updated_at",
    )
    .await?;
    let facts: Vec<Vec<Bind>> = b
        .new_facts
        .iter()
        .map(|f| {
            let e = &events[f.event];
            vec![
                t(&f.id_number),
                t(e.feed.topic()),
                t(&f.fact.field),
                t(f.fact.value.to_string()),
                ot(f.fact.effective.map(|d| d.to_string())),
                t(&e.recorded_at),
                t(f.state),
                t(&e.topic),
                Bind::Int(i64::from(e.partition)),
                Bind::Int(e.offset),
                t(&e.ce_id),
                ot(e.source_file.clone()),
                ot(e.source_row.clone()),
                t(&now),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "facts",
        &[
            "id_number",
            "source",
            "field",
            "value",
            "effective_date",
            "recorded_at",
            "state",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "ce_id",
            "source_file",
            "source_row",
            "applied_at",
        ],
        facts,
        "",
    )
    .await?;
    flush_households(conn, b).await?;
    let mut closes: BTreeMap<String, Vec<Bind>> = BTreeMap::new();
    let mut inserts = Vec::new();
    for m in &b.members {
        match (m.db_id, &m.valid_to) {
            (Some(id), Some(to)) => closes.entry(to.clone()).or_default().push(Bind::Int(id)),
            (Some(_), None) => {}
            (None, to) => inserts.push(vec![
                t(&m.household_id),
                t(&m.id_number),
                t(&m.relation),
                t(m.record.to_string()),
                t(&m.valid_from),
                ot(to.clone()),
                t(&m.ce_id),
            ]),
        }
    }
    for (to, ids) in &closes {
        execute_in(conn, "UPDATE household_members SET valid_to = $1 WHERE id IN", &[t(to)], ids).await?;
    }
    insert_rows(
        conn,
        "household_members",
        &["household_id", "id_number", "relation", "member", "valid_from", "valid_to", "ce_id"],
        inserts,
        "",
    )
    .await?;
    b.persons.values_mut().for_each(|p| {
        p.new = false;
        p.renamed = false;
    });
    Ok(())
}

pub(super) async fn flush_households(conn: &mut Conn<'_>, b: &mut Batch) -> Result<(), ApplyError> {
    let now = now_rfc3339();
    // On PostgreSQL an existing row whose decision alone moved is updated in those columns only
    // (a re-evaluation touches every household of a region); elsewhere every dirty row is upserted.
    let narrow = conn.backend().narrow_updates();
    let mut whole = Vec::new();
    let mut decided = Vec::new();
    for (id, h) in &b.households {
        let decision = || {
            [
                Bind::Int(h.version),
                ot(h.summary.as_ref().and_then(|summary| serde_json::to_string(&StoredSummary { version: h.version, summary }).ok())),
                ot(h.reevaluated_on.map(|d| d.to_string())),
                ot(h.next_review_on.map(|d| d.to_string())),
                t(&now),
            ]
        };
        match h.dirty {
            Dirty::Clean => {}
            Dirty::Decision if narrow => decided.push([t(id)].into_iter().chain(decision()).collect()),
            _ => whole.push([t(id), t(&h.region), t(h.as_of.to_string()), t(&h.base)].into_iter().chain(decision()).collect()),
        }
    }
    insert_rows(
        conn,
        "households",
        &[
            "household_id",
            "region",
            "as_of",
            "base",
            "decision_version",
            "decision_summary",
            "reevaluated_on",
            "next_review_on",
            "updated_at",
        ],
        whole,
        "ON CONFLICT (household_id) DO UPDATE SET region = excluded.region, as_of = excluded.as_of, base = excluded.base, \
         decision_version = excluded.decision_version, decision_summary = excluded.decision_summary, \
         reevaluated_on = excluded.reevaluated_on, next_review_on = excluded.next_review_on, updated_at = excluded.updated_at",
    )
    .await?;
    execute_values(conn, 6, decided, |values| {
        format!(
            "UPDATE households h SET decision_version = r.decision_version, decision_summary = r.decision_summary, \
             reevaluated_on = r.reevaluated_on, next_review_on = r.next_review_on, updated_at = r.updated_at \
             FROM ({values}) AS r (household_id, decision_version, decision_summary, reevaluated_on, next_review_on, updated_at) \
             WHERE h.household_id = r.household_id"
        )
    })
    .await?;
    b.households.values_mut().for_each(|h| h.dirty = Dirty::Clean);
    Ok(())
}

/// Writes decisions' consequences: households' versions, review tasks, the outbox and the
/// processed ids.
pub(super) async fn flush_derived(conn: &mut Conn<'_>, b: &mut Batch) -> Result<(), ApplyError> {
    flush_households(conn, b).await?;
    let now = now_rfc3339();
    let tasks: Vec<Vec<Bind>> = b
        .tasks
        .iter()
        .map(|k| {
            vec![
                t(&k.task_id),
                t(&k.kind),
                ot(k.id_number.clone()),
                ot(k.household_id.clone()),
                t(&k.region),
                t(k.created_on.to_string()),
                ot(k.rule.clone()),
                t(&k.detail),
                t("open"),
                t(&now),
                t(super::casework::due_on(&k.kind, k.created_on).to_string()),
                t(&now),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "review_tasks",
        &[
            "task_id",
            "kind",
            "id_number",
            "household_id",
            "region",
            "created_on",
            "rule",
            "detail",
            "state",
            "created_at",
            "due_on",
            "updated_at",
        ],
        tasks,
        "ON CONFLICT (task_id) DO NOTHING",
    )
    .await?;
    for task in std::mem::take(&mut b.task_updates).into_values() {
        conn.execute(
            "UPDATE review_tasks SET state = $1, assignee = $2, outcome = $3, resolved_by = $4, resolved_at = $5, updated_at = $6 \
             WHERE task_id = $7"
                .into(),
            vec![
                t(&task.state),
                ot(task.assignee),
                ot(task.outcome),
                ot(task.resolved_by),
                ot(task.resolved_at),
                t(&now),
                t(&task.task_id),
            ],
        )
        .await?;
    }
    insert_rows(
        conn,
        "review_task_transitions",
        &["task_id", "from_state", "to_state", "actor", "via", "assignee", "outcome", "reason", "ce_id", "at"],
        std::mem::take(&mut b.transitions),
        "",
    )
    .await?;
    insert_rows(
        conn,
        "outbox",
        &["topic", "message_key", "ce_id", "ce_type", "dataschema", "payload", "household_id", "source_time", "created_at"],
        std::mem::take(&mut b.outbox),
        conn.backend().outbox_conflict(),
    )
    .await?;
    insert_rows(
        conn,
        "deliveries",
        &[
            "ce_id",
            "agency",
            "kind",
            "change",
            "household_id",
            "id_number",
            "amount",
            "effective_date",
            "created_at",
            "created_on",
            "state",
            "updated_at",
        ],
        std::mem::take(&mut b.deliveries),
        "ON CONFLICT (ce_id) DO NOTHING",
    )
    .await?;
    insert_rows(
        conn,
        "processed_events",
        &["ce_id", "topic", "kafka_partition", "kafka_offset", "outcome", "processed_at"],
        std::mem::take(&mut b.processed),
        "",
    )
    .await?;
    Ok(())
}
