//! Applying a batch of inbound events to the recipient database, inside the caller's transaction.
//!
//! Guarantees: [`apply_batch`] reads what the whole batch needs in a few statements, applies the
//! events in memory in their order, and writes everything the batch causes (persons, memberships,
//! facts with provenance, decisions, entitlements, review tasks and outbox rows) with multi-row
//! statements through one connection that the caller has put in a transaction, together with the
//! consumed offsets; so the effects of an event happen exactly once even when Kafka delivers it
//! again. An event already applied (its
//! `ce_id` is in `processed_events`) changes nothing. A fact older than the current one for the same
//! person, source and field is stored as `stale` and changes nothing. A department's name that
//! differs from the registry's holds the event's facts and raises an `identity_conflict` task; it is
//! never merged silently. Every outbound payload is checked against its topic's schema before it is
//! written. Logs name topic, partition, offset and field, never personal data.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::batch::*;
use super::context::{ApplyError, BatchOutcome, Context, Inbound, MATCHER_SOURCE};
use super::evaluate::evaluate_households;
use super::facts::{Extracted, Feed, HouseholdRecord, PersonFact, extract};
use super::flush::{flush_derived, flush_events};
use super::outbound::task_detail;
use crate::db::now_rfc3339;
use crate::db::sql::{Bind, Conn, ot, t};
use crate::envelope::{event_id, event_type};
use crate::idnum::IdNumber;
use crate::topics::{ENTITLEMENT_TOPIC_PREFIX, REVIEW_TOPIC};

/// Applies `events` in order, then re-evaluates every household they touched. Reads are a few
/// statements for the whole batch; writes are multi-row statements.
pub async fn apply_batch(conn: &mut Conn<'_>, ctx: &Context, events: &[Inbound]) -> Result<BatchOutcome, ApplyError> {
    let mut outcome = BatchOutcome::default();
    let mut b = Batch::default();
    let extracted: Vec<Result<Extracted, super::facts::FactError>> =
        events.iter().map(|e| extract(e.feed, &e.payload, ctx.today)).collect();
    load_for_events(conn, &mut b, events, &extracted).await?;
    for (i, (event, x)) in events.iter().zip(&extracted).enumerate() {
        outcome.events += 1;
        if b.seen.contains(&event.ce_id) {
            outcome.duplicates += 1;
            continue;
        }
        b.seen.insert(event.ce_id.clone());
        let result = match x {
            Err(e) => {
                tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, field = %e.field,
                    "An inbound event could not be used and was recorded as invalid: {}", e.message);
                outcome.invalid += 1;
                "invalid"
            }
            Ok(Extracted::Household(record)) => apply_household(&mut b, ctx, i, event, record, &mut outcome)?,
            Ok(Extracted::Person { id, name, facts }) => apply_person(&mut b, ctx, i, event, id, name.as_deref(), facts, &mut outcome)?,
            Ok(Extracted::Resolution(r)) => super::casework::apply_resolution(&mut b, ctx, i, event, r, &mut outcome)?,
        };
        b.processed.push(vec![
            t(&event.ce_id),
            t(&event.topic),
            Bind::Int(i64::from(event.partition)),
            Bind::Int(event.offset),
            t(result),
            t(now_rfc3339()),
        ]);
    }
    flush_events(conn, ctx, &mut b, events).await?;
    evaluate_households(conn, ctx, &mut b, &mut outcome).await?;
    flush_derived(conn, &mut b).await?;
    outcome.audit = crate::audit::append(conn, &ctx.auditor, &std::mem::take(&mut b.audits)).await?;
    Ok(outcome)
}

/// How a name compares with the registry.
pub(super) enum Identity {
    Consistent,
    /// Civil affairs (the registry) gave a different name than a department did: the registry's name
    /// is kept, and a caseworker checks that the department's facts are about this person.
    RegistryCorrected,
    /// A department's name differs from the registered one: its facts are held.
    Conflict,
}

pub(super) fn ensure_person(b: &mut Batch, id: &IdNumber, name: Option<&str>, topic: &str, registry: bool) -> Identity {
    if !b.persons.contains_key(id.as_str()) {
        b.persons.insert(
            id.as_str().to_string(),
            Person { name: name.map(str::to_string), name_source: name.map(|_| topic.to_string()), new: true, renamed: false },
        );
        return Identity::Consistent;
    }
    let Some(name) = name else { return Identity::Consistent };
    // A name a caseworker found to be this person's ("same person") is not a conflict.
    if !registry && b.variants.get(id.as_str()).is_some_and(|known| known.contains(name)) {
        return Identity::Consistent;
    }
    let Some(person) = b.persons.get_mut(id.as_str()) else { return Identity::Consistent };
    match person.name.as_deref() {
        None => {
            person.name = Some(name.to_string());
            person.name_source = Some(topic.to_string());
            person.renamed = true;
            Identity::Consistent
        }
        Some(k) if k == name => {
            if registry && person.name_source.as_deref() != Some(topic) {
                person.name_source = Some(topic.to_string());
                person.renamed = true;
            }
            Identity::Consistent
        }
        Some(_) if registry => {
            let from_registry = person.name_source.as_deref().is_some_and(|s| s.contains(Feed::Household.topic()));
            person.name = Some(name.to_string());
            person.name_source = Some(topic.to_string());
            person.renamed = true;
            if from_registry { Identity::Consistent } else { Identity::RegistryCorrected }
        }
        Some(_) => Identity::Conflict,
    }
}

pub(super) fn current_household(b: &Batch, id_number: &str) -> Option<(String, String)> {
    let m = b.membership.get(id_number).map(|i| &b.members[*i])?;
    let region = b.households.get(&m.household_id).map(|h| h.region.clone()).unwrap_or_default();
    Some((m.household_id.clone(), region))
}

pub(super) fn push_fact(b: &mut Batch, event: usize, id_number: &str, fact: &PersonFact, state: &'static str) -> usize {
    b.new_facts.push(NewFact { event, id_number: id_number.to_string(), fact: fact.clone(), state });
    b.new_facts.len() - 1
}

/// Whether a fact (its effective date, then its arrival) is at least as new as the current one for
/// `key`; if so, that current fact is superseded and the caller makes its own current.
pub(super) fn supersede_older(
    b: &mut Batch,
    key: &(String, &'static str, String),
    effective: Option<NaiveDate>,
    recorded_at: &str,
    offset: i64,
) -> bool {
    let Some(current) = b.current.get(key) else { return true };
    let newer = match (effective, current.effective) {
        (Some(new), Some(old)) if new != old => new > old,
        _ => (recorded_at, offset) >= (current.recorded_at.as_str(), current.offset),
    };
    if newer {
        match (current.db_id, current.new_index) {
            (Some(id), _) => b.superseded.push(id),
            (None, Some(i)) => b.new_facts[i].state = "superseded",
            _ => {}
        }
    }
    newer
}

/// Makes a fact current unless the one held for the same person, source and field is newer.
pub(super) fn apply_fact(b: &mut Batch, index: usize, event: &Inbound, id_number: &str, fact: &PersonFact) -> bool {
    let key = (id_number.to_string(), event.feed.topic(), fact.field.clone());
    if !supersede_older(b, &key, fact.effective, &event.recorded_at, event.offset) {
        push_fact(b, index, id_number, fact, "stale");
        return false;
    }
    let i = push_fact(b, index, id_number, fact, "current");
    b.current.insert(
        key,
        Current {
            effective: fact.effective,
            recorded_at: event.recorded_at.clone(),
            offset: event.offset,
            db_id: None,
            new_index: Some(i),
        },
    );
    true
}

#[allow(clippy::too_many_arguments)]
pub(super) fn apply_person(
    b: &mut Batch,
    ctx: &Context,
    index: usize,
    event: &Inbound,
    id: &IdNumber,
    name: Option<&str>,
    facts: &[PersonFact],
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let household = current_household(b, id.as_str());
    if let Identity::Conflict = ensure_person(b, id, name, &event.topic, false) {
        for fact in facts {
            push_fact(b, index, id.as_str(), fact, "held");
        }
        if let Some(name) = name {
            let source = event.feed.topic().to_string();
            if !b.held_names.iter().any(|(i, s, n)| i == id.as_str() && *s == source && n == name) {
                b.held_names.push((id.as_str().to_string(), source.clone(), name.to_string()));
            }
            b.variant_writes.push(vec![t(id.as_str()), t(source), t(name), t("held"), ot(None::<String>), t(crate::db::now_rfc3339())]);
        }
        outcome.held += 1;
        let region = household.as_ref().map_or_else(|| id.division().to_string(), |h| h.1.clone());
        let on = facts
            .iter()
            .filter_map(|f| f.effective)
            .max()
            .or_else(|| event.recorded_at.get(..10).and_then(crate::dates::ymd))
            .unwrap_or(ctx.today);
        raise_identity_conflict(b, ctx, id, household.as_ref().map(|h| h.0.as_str()), &region, on, event, outcome)?;
        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset,
            "A department's name for a person differs from the registry: the facts are held and a caseworker review task was raised.");
        return Ok("held");
    }
    let mut any = false;
    for fact in facts {
        if apply_fact(b, index, event, id.as_str(), fact) {
            any = true;
        } else {
            outcome.stale += 1;
        }
    }
    if !any {
        return Ok("stale");
    }
    outcome.applied += 1;
    if let Some((household_id, _)) = household {
        b.affected.entry(household_id).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    }
    Ok("applied")
}

pub(super) fn apply_household(
    b: &mut Batch,
    ctx: &Context,
    index: usize,
    event: &Inbound,
    record: &HouseholdRecord,
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let registration = |m: &super::facts::RegisteredMember| PersonFact {
        field: format!("registration:{}", record.household_id),
        value: json!({"household_id": record.household_id, "relation": m.relation}),
        effective: Some(record.as_of),
    };
    if b.households.get(&record.household_id).is_some_and(|h| record.as_of < h.as_of) {
        for m in &record.members {
            push_fact(b, index, m.id.as_str(), &registration(m), "stale");
        }
        outcome.stale += 1;
        return Ok("stale");
    }
    // A household a caseworker corrected in a resolution is civil affairs' registration too.
    let registry_topic = if event.feed == Feed::Resolution { Feed::Household.topic() } else { event.topic.as_str() };
    for m in &record.members {
        if let Identity::RegistryCorrected = ensure_person(b, &m.id, m.name.as_deref(), registry_topic, true) {
            raise_identity_conflict(b, ctx, &m.id, Some(&record.household_id), &record.region, record.as_of, event, outcome)?;
        }
    }
    let (version, summary, reevaluated_on, next_review_on) = b
        .households
        .get(&record.household_id)
        .map_or((0, None, None, None), |h| (h.version, h.summary.clone(), h.reevaluated_on, h.next_review_on));
    b.households.insert(
        record.household_id.clone(),
        HouseholdRow {
            region: record.region.clone(),
            as_of: record.as_of,
            base: record.base.to_string(),
            version,
            summary,
            reevaluated_on,
            next_review_on,
            dirty: Dirty::Record,
        },
    );
    let as_of = record.as_of.to_string();
    // Current members that stay exactly as they were keep their row; the others are closed.
    let mut kept = BTreeSet::new();
    for i in 0..b.members.len() {
        let row = &b.members[i];
        if row.household_id != record.household_id || row.valid_to.is_some() {
            continue;
        }
        let same = record.members.iter().any(|m| m.id.as_str() == row.id_number && m.relation == row.relation && m.record == row.record);
        if same {
            kept.insert(row.id_number.clone());
        } else {
            let id_number = row.id_number.clone();
            b.members[i].valid_to = Some(as_of.clone());
            if b.membership.get(&id_number) == Some(&i) {
                b.membership.remove(&id_number);
            }
        }
    }
    for m in &record.members {
        let fact = registration(m);
        apply_fact(b, index, event, m.id.as_str(), &fact);
        if kept.contains(m.id.as_str()) {
            continue;
        }
        // A person registered here leaves any other household they were in.
        if let Some(&i) = b.membership.get(m.id.as_str())
            && b.members[i].household_id != record.household_id
        {
            b.members[i].valid_to = Some(as_of.clone());
            let other = b.members[i].household_id.clone();
            b.affected.entry(other).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
        }
        b.membership.insert(m.id.as_str().to_string(), b.members.len());
        b.members.push(MemberRow {
            db_id: None,
            household_id: record.household_id.clone(),
            id_number: m.id.as_str().to_string(),
            relation: m.relation.clone(),
            record: m.record.clone(),
            valid_from: as_of.clone(),
            valid_to: None,
            ce_id: event.ce_id.clone(),
        });
    }
    outcome.applied += 1;
    b.affected.entry(record.household_id.clone()).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    Ok("applied")
}

#[allow(clippy::too_many_arguments)]
pub(super) fn raise_identity_conflict(
    b: &mut Batch,
    ctx: &Context,
    id: &IdNumber,
    household_id: Option<&str>,
    region: &str,
    on: NaiveDate,
    trigger: &Inbound,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    if !b.open_conflicts.insert(id.as_str().to_string()) {
        return Ok(());
    }
    let identity = format!("identity_conflict/{}/{}", ctx.keys.key(id), trigger.ce_id);
    raise_task(b, ctx, "identity_conflict", Some(id), household_id, region, on, None, &identity, &trigger.recorded_at, outcome)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn raise_task(
    b: &mut Batch,
    ctx: &Context,
    kind: &str,
    person: Option<&IdNumber>,
    household_id: Option<&str>,
    region: &str,
    on: NaiveDate,
    rule: Option<&str>,
    identity: &str,
    source_time: &str,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    let detail = task_detail(kind, &person.map(IdNumber::masked).unwrap_or_default());
    let mut payload = json!({"kind": kind, "region": region, "created_on": on, "detail": detail});
    if let Some(obj) = payload.as_object_mut() {
        if let Some(p) = person {
            obj.insert("id_number".into(), json!(p.as_str()));
        }
        if let Some(h) = household_id {
            obj.insert("household_id".into(), json!(h));
        }
        if let Some(r) = rule {
            obj.insert("rule".into(), json!(r));
        }
    }
    let key = person.map(|p| ctx.keys.key(p)).unwrap_or_default();
    let task_id = write_outbox(b, ctx, REVIEW_TOPIC, "task_id", &key, identity, payload, household_id, source_time)?;
    b.tasks.push(NewTask {
        task_id,
        kind: kind.to_string(),
        id_number: person.map(|p| p.as_str().to_string()),
        household_id: household_id.map(str::to_string),
        region: region.to_string(),
        created_on: on,
        rule: rule.map(str::to_string),
        detail,
    });
    outcome.review_tasks += 1;
    outcome.outbox += 1;
    metrics::counter!("doudi_matcher_review_tasks_total", "kind" => kind.to_string()).increment(1);
    Ok(())
}

/// Queues one outbox row: the payload gets its deterministic id under `id_field` (unless empty: the
/// payload names its subject itself, as a task's later events name the task) and is checked
/// against the schema of `catalogue_topic`. Returns the id.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_outbox(
    b: &mut Batch,
    ctx: &Context,
    catalogue_topic: &str,
    id_field: &str,
    key: &str,
    identity: &str,
    mut payload: Value,
    household_id: Option<&str>,
    source_time: &str,
) -> Result<String, ApplyError> {
    let ce_id = event_id(MATCHER_SOURCE, identity, &payload);
    if !id_field.is_empty()
        && let Some(obj) = payload.as_object_mut()
    {
        obj.insert(id_field.into(), json!(ce_id));
    }
    let schema = ctx
        .registry
        .for_topic(catalogue_topic)
        .map_err(|e| ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: e.to_string() })?;
    if let Some(v) = schema.violations(&payload).first() {
        return Err(ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: format!("{} at {}", v.message, v.pointer) });
    }
    if catalogue_topic.starts_with(ENTITLEMENT_TOPIC_PREFIX) {
        let field = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let now = chrono::Utc::now();
        let at = crate::db::rfc3339(now);
        b.deliveries.push(vec![
            t(&ce_id),
            t(field("agency")),
            t(field("kind")),
            t(field("change")),
            t(field("household_id")),
            t(field("id_number")),
            ot(payload.get("yearly_amount").and_then(Value::as_str)),
            t(field("effective_date")),
            t(&at),
            t(crate::db::china_date(now).to_string()),
            t("pending"),
            t(&at),
        ]);
    }
    b.outbox.push(vec![
        t(ctx.outbound.actual(catalogue_topic)),
        t(key),
        t(&ce_id),
        t(event_type(catalogue_topic)),
        t(&schema.id),
        t(payload.to_string()),
        ot(household_id),
        t(source_time),
        t(now_rfc3339()),
    ]);
    Ok(ce_id)
}
