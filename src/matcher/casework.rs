//! The caseworker's loop: a review task's lifecycle, and what a caseworker's resolution does.
//!
//! Guarantees:
//! - a task is `open`, `in_progress` once assigned, `resolved` with an outcome named for its kind,
//!   or `cancelled` when a later event supersedes it; resolved and cancelled are final. Every
//!   transition is stored (`review_task_transitions`), published on `exchange.review-task.v1` and
//!   appended to the audit log, in the transaction of the batch that makes it;
//! - resolutions arrive as events of `dept.civil.review-resolution.v1`, from civil affairs' case
//!   system through Kafka, or from `doudi tasks` and the workbench, which apply the same event
//!   through [`super::apply_batch`] in a transaction of their own: one code path, exactly once by
//!   the event's id;
//! - per kind: `identity_conflict` "same person" releases the held facts (each becomes current
//!   unless a newer fact is, as if it had arrived in order) and keeps the department's name as a
//!   known variant, so the next record under it is not held again; "different person" rejects them
//!   and tells the department with a dead letter on its feed's dead-letter topic. J1 "confirmed" or
//!   "not confirmed" is recorded as a dated fact with the resolution's provenance, which the policy
//!   reads. "reviewed" may bring the household as the caseworker corrected it, applied as a
//!   civil-affairs registration. The household is then re-assessed and its deltas go through the
//!   outbox like any other;
//! - nothing here logs personal data; the caseworker's reason is stored with the transition and
//!   published to the caseworkers' topic, never written to the audit log's detail or to logs.

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::apply::{apply_fact, apply_household, supersede_older, write_outbox};
use super::batch::{Batch, Current, HeldFact};
pub use super::batch::{TASK_COLUMNS, TaskRow, task_row};
use super::context::{ApplyError, BatchOutcome, Context, Inbound, MATCHER_SOURCE};
use super::facts::{Feed, PersonFact, Resolution, ResolutionAction};
use crate::audit::{Pending, Who};
use crate::db::sql::{ot, t};
use crate::idnum::IdNumber;
use crate::topics::REVIEW_TOPIC;

/// The catalogue topic of caseworkers' actions.
pub const RESOLUTION_TOPIC: &str = "dept.civil.review-resolution.v1";

/// `Inbound::topic` of an action taken through `doudi tasks`.
pub const VIA_CLI: &str = "cli";
/// `Inbound::topic` of an action taken in the workbench.
pub const VIA_WORKBENCH: &str = "workbench";

/// The task states.
pub const STATES: [&str; 4] = ["open", "in_progress", "resolved", "cancelled"];

/// The outcomes a task of `kind` may be resolved with.
pub fn outcomes(kind: &str) -> &'static [&'static str] {
    match kind {
        "identity_conflict" => &["same_person", "different_person"],
        "cancel_dibao_refused_referrals" => &["confirmed", "not_confirmed"],
        "deceased_member" | "periodic_review_due" => &["reviewed"],
        _ => &[],
    }
}

/// Days a task of `kind` has to be resolved, from the day it was raised (docs/runbook.md).
pub fn deadline_days(kind: &str) -> u64 {
    match kind {
        // Held facts can cost a person a benefit: a week.
        "identity_conflict" => 7,
        // 最低生活保障审核确认办法: the township decides within 10 working days.
        "cancel_dibao_refused_referrals" => 14,
        "deceased_member" => 15,
        // A periodic review is due on the day it is raised and is done within the month.
        "periodic_review_due" => 30,
        _ => 30,
    }
}

/// The date by which a task raised on `created_on` should be resolved.
pub fn due_on(kind: &str, created_on: NaiveDate) -> NaiveDate {
    created_on.checked_add_days(chrono::Days::new(deadline_days(kind))).unwrap_or(created_on)
}

/// Why an action cannot be taken on a task (no personal data).
pub fn check(task: &TaskRow, action: &ResolutionAction) -> Result<(), String> {
    if matches!(task.state.as_str(), "resolved" | "cancelled") {
        return Err(format!("task {} is {} already; it cannot change any more", task.task_id, task.state));
    }
    if let ResolutionAction::Resolve { outcome, household, .. } = action {
        let allowed = outcomes(&task.kind);
        if !allowed.contains(&outcome.as_str()) {
            return Err(format!(
                "`{outcome}` is not an outcome of a {} task; use one of: {}",
                task.kind,
                if allowed.is_empty() { "(none: this kind is not resolved here)".to_string() } else { allowed.join(", ") }
            ));
        }
        if household.is_some() && outcome != "reviewed" {
            return Err("a corrected household comes only with the outcome `reviewed`".into());
        }
        if let Some((_, h)) = household
            && task.household_id.as_deref().is_some_and(|id| id != h.household_id)
        {
            return Err(format!("the corrected household is not the task's household ({})", task.household_id.as_deref().unwrap_or("")));
        }
    }
    Ok(())
}

/// Which door an event came through.
fn via(event: &Inbound) -> &'static str {
    match event.topic.as_str() {
        VIA_CLI => "cli",
        VIA_WORKBENCH => "workbench",
        _ => "topic",
    }
}

/// One change of a task's state.
pub(super) struct TaskChange<'a> {
    pub(super) to: &'static str,
    pub(super) actor: &'a str,
    pub(super) via: &'static str,
    pub(super) outcome: Option<&'a str>,
    pub(super) reason: Option<&'a str>,
    pub(super) assignee: Option<&'a str>,
    /// What caused it: the resolution's ce_id, or the re-evaluation that superseded the task.
    pub(super) cause: &'a str,
    pub(super) source_time: &'a str,
}

/// Records `change` of `task`: the transition row, the task row, the event on the caseworkers'
/// topic and the audit entry, all in the batch's transaction.
pub(super) fn transition(b: &mut Batch, ctx: &Context, task: &TaskRow, change: &TaskChange<'_>) -> Result<(), ApplyError> {
    let at = crate::db::now_rfc3339();
    let mut after = task.clone();
    after.state = change.to.to_string();
    if let Some(a) = change.assignee {
        after.assignee = Some(a.to_string());
    }
    if change.to == "resolved" {
        after.outcome = change.outcome.map(str::to_string);
        after.resolved_by = Some(change.actor.to_string());
        after.resolved_at = Some(at.clone());
    }
    b.transitions.push(vec![
        t(&task.task_id),
        t(&task.state),
        t(change.to),
        t(change.actor),
        t(change.via),
        ot(change.assignee),
        ot(change.outcome),
        ot(change.reason),
        t(change.cause),
        t(&at),
    ]);
    let person = task.id_number.as_deref().and_then(|p| IdNumber::parse(p).ok());
    let mut payload = json!({
        "task_id": task.task_id, "kind": task.kind, "region": task.region, "created_on": task.created_on,
        "detail": task.detail, "state": change.to,
        "transition": {"from": task.state, "to": change.to, "actor": change.actor, "via": change.via, "at": at},
    });
    if let Some(obj) = payload.as_object_mut() {
        for (k, v) in [
            ("id_number", task.id_number.as_deref()),
            ("household_id", task.household_id.as_deref()),
            ("rule", task.rule.as_deref()),
            ("assignee", after.assignee.as_deref()),
            ("outcome", after.outcome.as_deref()),
            ("reason", change.reason),
            ("due_on", task.due_on.as_deref()),
        ] {
            if let Some(v) = v {
                obj.insert(k.into(), json!(v));
            }
        }
    }
    let key = person.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default();
    let identity = format!("task/{}/{}/{}", task.task_id, change.to, change.cause);
    write_outbox(b, ctx, REVIEW_TOPIC, "", &key, &identity, payload, task.household_id.as_deref(), change.source_time)?;
    let action = match change.to {
        "in_progress" => "task.assign",
        "resolved" => "task.resolve",
        _ => "task.cancel",
    };
    let purpose = match change.to {
        "in_progress" => format!("分派复核任务（{}）", task.kind),
        "resolved" => format!("办结复核任务（{}）：{}", task.kind, change.outcome.unwrap_or("")),
        _ => format!("复核任务已被后续事件取代（{}）", task.kind),
    };
    b.audits.push(Pending {
        who: Who { actor: change.actor.to_string(), purpose },
        action: action.into(),
        person,
        detail: json!({"task_id": task.task_id, "kind": task.kind, "from": task.state, "to": change.to,
                       "outcome": change.outcome, "assignee": change.assignee, "via": change.via, "cause": change.cause}),
    });
    metrics::counter!("doudi_review_task_transitions_total", "kind" => task.kind.clone(), "to" => change.to).increment(1);
    b.task_rows.insert(task.task_id.clone(), after.clone());
    b.task_updates.insert(after.task_id.clone(), after);
    Ok(())
}

/// Applies a caseworker's action. Returns the event's outcome: `applied`, or `invalid` when the task
/// is unknown, final already, or the outcome is not one of its kind (logged without personal data).
pub(super) fn apply_resolution(
    b: &mut Batch,
    ctx: &Context,
    index: usize,
    event: &Inbound,
    r: &Resolution,
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let Some(task) = b.task_rows.get(&r.task_id).cloned() else {
        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset,
            "A caseworker's action names a review task that does not exist; it was recorded as invalid.");
        outcome.invalid += 1;
        return Ok("invalid");
    };
    if let Err(why) = check(&task, &r.action) {
        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, task_id = %task.task_id,
            "A caseworker's action cannot be taken and was recorded as invalid: {why}");
        outcome.invalid += 1;
        return Ok("invalid");
    }
    let via = via(event);
    match &r.action {
        ResolutionAction::Assign { assignee } => {
            let change = TaskChange {
                to: "in_progress",
                actor: &r.actor,
                via,
                outcome: None,
                reason: None,
                assignee: Some(assignee),
                cause: &event.ce_id,
                source_time: &event.recorded_at,
            };
            transition(b, ctx, &task, &change)?;
        }
        ResolutionAction::Resolve { outcome: result, reason, decided_on, household } => {
            let on = decided_on.unwrap_or_else(|| crate::db::china_date(chrono::Utc::now()));
            if let Some((sent, record)) = household {
                if let Err(why) = corrected_household(&ctx.registry, sent) {
                    tracing::warn!(topic = %event.topic, offset = event.offset, task_id = %task.task_id,
                        "A resolution's corrected household was recorded as invalid: {why}");
                    outcome.invalid += 1;
                    return Ok("invalid");
                }
                if b.households.get(&record.household_id).is_some_and(|h| record.as_of < h.as_of) {
                    tracing::warn!(topic = %event.topic, offset = event.offset, task_id = %task.task_id,
                        "A corrected household is older than the registered one (as_of); the resolution was recorded as invalid.");
                    outcome.invalid += 1;
                    return Ok("invalid");
                }
                apply_household(b, ctx, index, event, record, outcome)?;
            }
            let person = task.id_number.as_deref().and_then(|p| IdNumber::parse(p).ok());
            match (task.kind.as_str(), result.as_str(), person.as_ref()) {
                ("identity_conflict", "same_person", Some(p)) => {
                    release_held(b, p, &task.task_id);
                    b.open_conflicts.remove(p.as_str());
                }
                ("identity_conflict", "different_person", Some(p)) => {
                    reject_held(b, ctx, p, &task.task_id, &event.recorded_at)?;
                    b.open_conflicts.remove(p.as_str());
                }
                ("cancel_dibao_refused_referrals", finding, Some(p)) => {
                    let fact = PersonFact {
                        field: format!("referral_review:{}", task.task_id),
                        value: json!({"on": on, "confirmed": finding == "confirmed"}),
                        effective: Some(on),
                    };
                    apply_fact(b, index, event, p.as_str(), &fact);
                }
                _ => {}
            }
            // The person's household (or the task's) is re-assessed with what the resolution changed.
            let household = person
                .as_ref()
                .and_then(|p| super::apply::current_household(b, p.as_str()).map(|h| h.0))
                .or_else(|| task.household_id.clone());
            if let Some(h) = household
                && b.households.contains_key(&h)
            {
                b.affected.entry(h).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
            }
            let change = TaskChange {
                to: "resolved",
                actor: &r.actor,
                via,
                outcome: Some(result),
                reason: Some(reason),
                assignee: None,
                cause: &event.ce_id,
                source_time: &event.recorded_at,
            };
            transition(b, ctx, &task, &change)?;
        }
    }
    outcome.applied += 1;
    Ok("applied")
}

/// "Same person": each held fact of `person` is applied as if it had arrived in order, and the
/// names held with them become known variants.
fn release_held(b: &mut Batch, person: &IdNumber, task_id: &str) {
    let held: Vec<HeldFact> = b.held.iter().filter(|h| h.id_number == person.as_str()).cloned().collect();
    for h in held {
        let Some(feed) = Feed::ALL.iter().copied().find(|f| f.topic() == h.source) else { continue };
        let key = (h.id_number.clone(), feed.topic(), h.field.clone());
        if !supersede_older(b, &key, h.effective, &h.recorded_at, h.offset) {
            b.fact_states.push((h.id, "stale"));
            continue;
        }
        b.fact_states.push((h.id, "current"));
        b.current.insert(
            key,
            Current { effective: h.effective, recorded_at: h.recorded_at, offset: h.offset, db_id: Some(h.id), new_index: None },
        );
    }
    settle_variants(b, person, task_id, "known");
}

/// "Different person": the held facts are rejected and each event they came with goes back to its
/// department as a dead letter on its feed's dead-letter topic.
fn reject_held(b: &mut Batch, ctx: &Context, person: &IdNumber, task_id: &str, source_time: &str) -> Result<(), ApplyError> {
    let held: Vec<HeldFact> = b.held.iter().filter(|h| h.id_number == person.as_str()).cloned().collect();
    let mut events: std::collections::BTreeMap<(String, String), Vec<&HeldFact>> = std::collections::BTreeMap::new();
    for h in &held {
        b.fact_states.push((h.id, "rejected"));
        events.entry((h.topic.clone(), h.ce_id.clone())).or_default().push(h);
    }
    let reason = format!(
        "经民政核实（复核任务 {task_id}），该记录的身份证号 {} 与所报姓名不属于同一人，记录未予采用。请核对身份证号和姓名后重新报送。",
        person.masked()
    );
    for ((topic, ce_id), facts) in events {
        let first = facts[0];
        let original = json!({
            "ce_id": ce_id,
            "facts": facts.iter().map(|f| json!({"field": f.field, "value": f.value, "effective_date": f.effective})).collect::<Vec<_>>(),
        });
        let headers = [
            ("topic", topic.clone()),
            ("error_code", "identity_rejected".to_string()),
            ("stage", "review".to_string()),
            ("reason", reason.clone()),
            ("source_file", first.source_file.clone().unwrap_or_default()),
            ("source_row", first.source_row.clone().unwrap_or_default()),
            ("source_ce_id", ce_id.clone()),
            ("task_id", task_id.to_string()),
        ];
        let dead_letter = json!({"headers": headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                                 "original": original.to_string()});
        let ce = crate::envelope::event_id(MATCHER_SOURCE, &format!("rejected/{task_id}/{ce_id}"), &dead_letter);
        b.outbox.push(vec![
            t(crate::topics::dead_letter_topic(&topic)),
            t(ctx.keys.key(person)),
            t(&ce),
            t(DEAD_LETTER_TYPE),
            t(ctx.registry.for_topic("dlq.v1").map(|s| s.id.clone()).unwrap_or_else(|_| "dlq.v1.json".into())),
            t(dead_letter.to_string()),
            ot(None::<String>),
            t(source_time),
            t(crate::db::now_rfc3339()),
        ]);
    }
    settle_variants(b, person, task_id, "rejected");
    Ok(())
}

/// `ce_type` of an outbox row that is a dead letter: the relay sends its `original` as the value and
/// its `headers` as the message's headers, as a connector's dead letters are.
pub const DEAD_LETTER_TYPE: &str = "doudi.dead-letter";

/// The dead letter an outbox row of [`DEAD_LETTER_TYPE`] holds: its headers and value.
pub fn dead_letter_parts(payload: &str) -> Option<(Vec<(String, String)>, String)> {
    let v: Value = serde_json::from_str(payload).ok()?;
    let headers = v.get("headers")?.as_object()?.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
    Some((headers, v.get("original")?.as_str()?.to_string()))
}

/// The held names of `person` become `state` (known or rejected).
fn settle_variants(b: &mut Batch, person: &IdNumber, task_id: &str, state: &'static str) {
    let now = crate::db::now_rfc3339();
    let held: Vec<(String, String)> =
        b.held_names.iter().filter(|(id, ..)| id == person.as_str()).map(|(_, source, name)| (source.clone(), name.clone())).collect();
    for (source, name) in held {
        if state == "known" {
            b.variants.entry(person.as_str().to_string()).or_default().insert(name.clone());
        }
        b.variant_writes.push(vec![t(person.as_str()), t(source), t(name), t(state), t(task_id), t(&now)]);
    }
    b.held_names.retain(|(id, ..)| id != person.as_str());
}

/// Checks a resolution's corrected household (a whole civil-affairs registration) against that
/// topic's schema; the error names the field, never the value.
pub fn corrected_household(registry: &crate::schema::Registry, household: &Value) -> Result<(), String> {
    let schema = registry.for_topic(Feed::Household.topic()).map_err(|e| e.to_string())?;
    match schema.violations(household).first() {
        Some(v) => {
            Err(format!("the corrected household does not match {}: {} at household{}", Feed::Household.topic(), v.message, v.pointer))
        }
        None => Ok(()),
    }
}
