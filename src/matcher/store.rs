//! Applying a batch of inbound events to the recipient database, inside the caller's transaction.
//!
//! Guarantees: [`apply_batch`] writes everything a batch causes (persons, memberships, facts with
//! provenance, decisions, entitlements, review tasks and outbox rows) through one connection that
//! the caller has put in a transaction, together with the consumed offsets; so the effects of an
//! event happen exactly once even when Kafka delivers it again. An event already applied (its
//! `ce_id` is in `processed_events`) changes nothing. A fact older than the current one for the same
//! person, source and field is stored as `stale` and changes nothing. A department's name that
//! differs from the registry's holds the event's facts and raises an `identity_conflict` task; it is
//! never merged silently. Every outbound payload is checked against its topic's schema before it is
//! written. Logs name topic, partition, offset and field, never personal data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use super::assemble::{StoredFact, StoredMember, assemble};
use super::facts::{Extracted, Feed, HouseholdRecord, PersonFact, extract};
use super::outbound::{Change, EntitlementRow, Summary, diff, entitlement_payload, entitlements_of, status_payload, task_detail};
use crate::db::{DbError, now_rfc3339};
use crate::envelope::{KeyDeriver, event_id_for_payload, event_type};
use crate::idnum::IdNumber;
use crate::policy::{Household, Params};
use crate::schema::Registry;

/// The CloudEvents source of everything the matcher derives.
pub const MATCHER_SOURCE: &str = "doudi://matcher";

/// The outbound topics, by the catalogue name whose schema they follow.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Catalogue name → actual topic name (the same in production; tests add a suffix).
    pub names: BTreeMap<String, String>,
}

pub const STATUS_TOPIC: &str = "exchange.recipient.status.v1";
pub const REVIEW_TOPIC: &str = "exchange.review-task.v1";

/// The catalogue topic of an agency's entitlements.
pub fn agency_topic(agency: &str) -> String {
    format!("exchange.entitlement.{agency}.v1")
}

impl Outbound {
    /// Every outbound catalogue topic, each named `prefix + name + suffix`.
    pub fn with_affixes(prefix: &str, suffix: &str) -> Self {
        let mut names = BTreeMap::new();
        let mut all = vec![STATUS_TOPIC.to_string(), REVIEW_TOPIC.to_string()];
        all.extend(["medical", "education", "housing", "hrss", "union"].iter().map(|a| agency_topic(a)));
        for n in all {
            names.insert(n.clone(), format!("{prefix}{n}{suffix}"));
        }
        Outbound { names }
    }

    pub fn actual(&self, catalogue: &str) -> String {
        self.names.get(catalogue).cloned().unwrap_or_else(|| catalogue.to_string())
    }
}

/// What the matcher needs besides the database.
#[derive(Clone)]
pub struct Context {
    pub params: Arc<Params>,
    pub keys: KeyDeriver,
    pub registry: Arc<Registry>,
    pub outbound: Outbound,
    /// Today, bounding birth dates in ID numbers (wall clock; decisions never use it).
    pub today: NaiveDate,
}

/// One consumed inbound event.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub feed: Feed,
    pub partition: i32,
    pub offset: i64,
    pub ce_id: String,
    /// `ce_time` of the source record, RFC 3339.
    pub recorded_at: String,
    pub source_file: Option<String>,
    pub source_row: Option<String>,
    pub payload: Value,
}

/// Counts of what a batch did; no personal data.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchOutcome {
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub stale: u64,
    pub held: u64,
    pub households_evaluated: u64,
    pub decisions: u64,
    pub outbox: u64,
    pub review_tasks: u64,
    pub assessment_problems: u64,
}

impl BatchOutcome {
    pub fn add(&mut self, o: &BatchOutcome) {
        self.events += o.events;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.invalid += o.invalid;
        self.stale += o.stale;
        self.held += o.held;
        self.households_evaluated += o.households_evaluated;
        self.decisions += o.decisions;
        self.outbox += o.outbox;
        self.review_tasks += o.review_tasks;
        self.assessment_problems += o.assessment_problems;
    }
}

/// Errors applying a batch: the transaction must be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("an outbound event for {topic} does not match its schema ({reason}); nothing was written")]
    InvalidOutbound { topic: String, reason: String },
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Db(DbError::Query(e))
    }
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Applies `events` in order, then re-evaluates every household they touched.
pub async fn apply_batch(conn: &mut AnyConnection, ctx: &Context, events: &[Inbound]) -> Result<BatchOutcome, ApplyError> {
    let mut outcome = BatchOutcome::default();
    let mut affected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for event in events {
        outcome.events += 1;
        let seen = sqlx::query("SELECT 1 FROM processed_events WHERE ce_id = $1").bind(&event.ce_id).fetch_optional(&mut *conn).await?;
        if seen.is_some() {
            outcome.duplicates += 1;
            continue;
        }
        let result = match extract(event.feed, &event.payload, ctx.today) {
            Err(e) => {
                tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, field = %e.field,
                    "An inbound event could not be used and was recorded as invalid: {}", e.message);
                outcome.invalid += 1;
                "invalid"
            }
            Ok(Extracted::Household(record)) => apply_household(conn, ctx, event, &record, &mut affected, &mut outcome).await?,
            Ok(Extracted::Person { id, name, facts }) => {
                apply_person(conn, ctx, event, &id, name.as_deref(), &facts, &mut affected, &mut outcome).await?
            }
        };
        sqlx::query("INSERT INTO processed_events (ce_id, topic, kafka_partition, kafka_offset, outcome, processed_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&event.ce_id)
            .bind(&event.topic)
            .bind(i64::from(event.partition))
            .bind(event.offset)
            .bind(result)
            .bind(now_rfc3339())
            .execute(&mut *conn)
            .await?;
    }
    for (household_id, (trigger, source_time)) in &affected {
        evaluate_household(conn, ctx, household_id, trigger, source_time, &mut outcome).await?;
    }
    Ok(outcome)
}

/// How a name compares with the registry.
enum Identity {
    Consistent,
    /// Civil affairs (the registry) gave a different name than a department did: the registry's name
    /// is kept, and a caseworker checks that the department's facts are about this person.
    RegistryCorrected,
    /// A department's name differs from the registered one: its facts are held.
    Conflict,
}

async fn ensure_person(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &IdNumber,
    name: Option<&str>,
    topic: &str,
    registry: bool,
) -> Result<Identity, ApplyError> {
    let row =
        sqlx::query("SELECT name, name_source FROM persons WHERE id_number = $1").bind(id.as_str()).fetch_optional(&mut *conn).await?;
    let Some(row) = row else {
        sqlx::query("INSERT INTO persons (id_number, person_key, name, name_source, birth_date, sex, first_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(id.as_str())
            .bind(ctx.keys.key(id))
            .bind(name)
            .bind(name.map(|_| topic))
            .bind(id.birth_date().to_string())
            .bind(match id.sex() {
                crate::idnum::Sex::Male => "male",
                crate::idnum::Sex::Female => "female",
            })
            .bind(now_rfc3339())
            .execute(&mut *conn)
            .await?;
        return Ok(Identity::Consistent);
    };
    let known: Option<String> = row.try_get("name")?;
    let known_source: Option<String> = row.try_get("name_source")?;
    let Some(name) = name else { return Ok(Identity::Consistent) };
    match known {
        None => {
            sqlx::query("UPDATE persons SET name = $1, name_source = $2 WHERE id_number = $3")
                .bind(name)
                .bind(topic)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(Identity::Consistent)
        }
        Some(k) if k == name => {
            if registry && known_source.as_deref() != Some(topic) {
                sqlx::query("UPDATE persons SET name_source = $1 WHERE id_number = $2")
                    .bind(topic)
                    .bind(id.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(Identity::Consistent)
        }
        Some(_) if registry => {
            let from_registry = known_source.as_deref().is_some_and(|s| s.contains(Feed::Household.topic()));
            sqlx::query("UPDATE persons SET name = $1, name_source = $2 WHERE id_number = $3")
                .bind(name)
                .bind(topic)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(if from_registry { Identity::Consistent } else { Identity::RegistryCorrected })
        }
        Some(_) => Ok(Identity::Conflict),
    }
}

async fn current_household(conn: &mut AnyConnection, id_number: &str) -> Result<Option<(String, String)>, ApplyError> {
    let row = sqlx::query("SELECT m.household_id, h.region FROM household_members m JOIN households h ON h.household_id = m.household_id WHERE m.id_number = $1 AND m.valid_to IS NULL")
        .bind(id_number)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("household_id")?, r.try_get("region")?)),
        None => None,
    })
}

async fn insert_fact(
    conn: &mut AnyConnection,
    event: &Inbound,
    id_number: &str,
    fact: &PersonFact,
    state: &str,
) -> Result<i64, ApplyError> {
    let row = sqlx::query(
        "INSERT INTO facts (id_number, source, field, value, effective_date, recorded_at, state, topic, kafka_partition, kafka_offset, ce_id, source_file, source_row, applied_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
    )
    .bind(id_number)
    .bind(event.feed.topic())
    .bind(&fact.field)
    .bind(fact.value.to_string())
    .bind(fact.effective.map(|d| d.to_string()))
    .bind(&event.recorded_at)
    .bind(state)
    .bind(&event.topic)
    .bind(i64::from(event.partition))
    .bind(event.offset)
    .bind(&event.ce_id)
    .bind(event.source_file.as_deref())
    .bind(event.source_row.as_deref())
    .bind(now_rfc3339())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

/// Stores a fact as current unless the one held for the same person, source and field is newer.
/// Returns whether it became current.
async fn apply_fact(conn: &mut AnyConnection, event: &Inbound, id_number: &str, fact: &PersonFact) -> Result<bool, ApplyError> {
    let current = sqlx::query("SELECT id, effective_date, recorded_at, kafka_offset FROM facts WHERE id_number = $1 AND source = $2 AND field = $3 AND state = 'current'")
        .bind(id_number)
        .bind(event.feed.topic())
        .bind(&fact.field)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = current {
        let held_date: Option<String> = row.try_get("effective_date")?;
        let held_recorded: String = row.try_get("recorded_at")?;
        let held_offset: i64 = row.try_get("kafka_offset")?;
        let newer = match (fact.effective, held_date.as_deref().and_then(parse_date)) {
            (Some(new), Some(held)) if new != held => new > held,
            _ => (event.recorded_at.as_str(), event.offset) >= (held_recorded.as_str(), held_offset),
        };
        if !newer {
            insert_fact(conn, event, id_number, fact, "stale").await?;
            return Ok(false);
        }
        let held_id: i64 = row.try_get("id")?;
        sqlx::query("UPDATE facts SET state = 'superseded' WHERE id = $1").bind(held_id).execute(&mut *conn).await?;
    }
    insert_fact(conn, event, id_number, fact, "current").await?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
async fn apply_person(
    conn: &mut AnyConnection,
    ctx: &Context,
    event: &Inbound,
    id: &IdNumber,
    name: Option<&str>,
    facts: &[PersonFact],
    affected: &mut BTreeMap<String, (String, String)>,
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let household = current_household(conn, id.as_str()).await?;
    if let Identity::Conflict = ensure_person(conn, ctx, id, name, &event.topic, false).await? {
        for fact in facts {
            insert_fact(conn, event, id.as_str(), fact, "held").await?;
        }
        outcome.held += 1;
        let region = household.as_ref().map_or_else(|| id.division().to_string(), |h| h.1.clone());
        let on = facts
            .iter()
            .filter_map(|f| f.effective)
            .max()
            .or_else(|| event.recorded_at.get(..10).and_then(parse_date))
            .unwrap_or(ctx.today);
        raise_identity_conflict(conn, ctx, id, household.as_ref().map(|h| h.0.as_str()), &region, on, event, outcome).await?;
        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset,
            "A department's name for a person differs from the registry: the facts are held and a caseworker review task was raised.");
        return Ok("held");
    }
    let mut any = false;
    for fact in facts {
        if apply_fact(conn, event, id.as_str(), fact).await? {
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
        affected.entry(household_id).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    }
    Ok("applied")
}

async fn apply_household(
    conn: &mut AnyConnection,
    ctx: &Context,
    event: &Inbound,
    record: &HouseholdRecord,
    affected: &mut BTreeMap<String, (String, String)>,
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let registration = |m: &super::facts::RegisteredMember| PersonFact {
        field: format!("registration:{}", record.household_id),
        value: json!({"household_id": record.household_id, "relation": m.relation}),
        effective: Some(record.as_of),
    };
    let held =
        sqlx::query("SELECT as_of FROM households WHERE household_id = $1").bind(&record.household_id).fetch_optional(&mut *conn).await?;
    if let Some(row) = &held {
        let as_of: String = row.try_get("as_of")?;
        if parse_date(&as_of).is_some_and(|held| record.as_of < held) {
            for m in &record.members {
                insert_fact(conn, event, m.id.as_str(), &registration(m), "stale").await?;
            }
            outcome.stale += 1;
            return Ok("stale");
        }
    }
    for m in &record.members {
        if let Identity::RegistryCorrected = ensure_person(conn, ctx, &m.id, m.name.as_deref(), &event.topic, true).await? {
            raise_identity_conflict(conn, ctx, &m.id, Some(&record.household_id), &record.region, record.as_of, event, outcome).await?;
        }
    }
    let now = now_rfc3339();
    sqlx::query(
        "INSERT INTO households (household_id, region, as_of, base, decision_version, updated_at) VALUES ($1, $2, $3, $4, 0, $5) \
         ON CONFLICT (household_id) DO UPDATE SET region = excluded.region, as_of = excluded.as_of, base = excluded.base, updated_at = excluded.updated_at",
    )
    .bind(&record.household_id)
    .bind(&record.region)
    .bind(record.as_of.to_string())
    .bind(record.base.to_string())
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    let current = sqlx::query("SELECT id, id_number, relation, member FROM household_members WHERE household_id = $1 AND valid_to IS NULL")
        .bind(&record.household_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut kept = BTreeSet::new();
    for row in &current {
        let row_id: i64 = row.try_get("id")?;
        let id_number: String = row.try_get("id_number")?;
        let relation: String = row.try_get("relation")?;
        let member: Option<Value> = serde_json::from_str(&row.try_get::<String, _>("member")?).ok();
        let same =
            record.members.iter().any(|m| m.id.as_str() == id_number && m.relation == relation && member.as_ref() == Some(&m.record));
        if same {
            kept.insert(id_number);
        } else {
            sqlx::query("UPDATE household_members SET valid_to = $1 WHERE id = $2")
                .bind(record.as_of.to_string())
                .bind(row_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    for m in &record.members {
        let fact_id = insert_fact(conn, event, m.id.as_str(), &registration(m), "current").await?;
        if kept.contains(m.id.as_str()) {
            continue;
        }
        // A person registered here leaves any other household they were in.
        let elsewhere =
            sqlx::query("SELECT id, household_id FROM household_members WHERE id_number = $1 AND valid_to IS NULL AND household_id <> $2")
                .bind(m.id.as_str())
                .bind(&record.household_id)
                .fetch_all(&mut *conn)
                .await?;
        for row in elsewhere {
            let row_id: i64 = row.try_get("id")?;
            let other: String = row.try_get("household_id")?;
            sqlx::query("UPDATE household_members SET valid_to = $1 WHERE id = $2")
                .bind(record.as_of.to_string())
                .bind(row_id)
                .execute(&mut *conn)
                .await?;
            affected.entry(other).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
        }
        sqlx::query("INSERT INTO household_members (household_id, id_number, relation, member, valid_from, valid_to, fact_id) VALUES ($1, $2, $3, $4, $5, NULL, $6)")
            .bind(&record.household_id)
            .bind(m.id.as_str())
            .bind(&m.relation)
            .bind(m.record.to_string())
            .bind(record.as_of.to_string())
            .bind(fact_id)
            .execute(&mut *conn)
            .await?;
    }
    outcome.applied += 1;
    affected.entry(record.household_id.clone()).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    Ok("applied")
}

#[allow(clippy::too_many_arguments)]
async fn raise_identity_conflict(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &IdNumber,
    household_id: Option<&str>,
    region: &str,
    on: NaiveDate,
    trigger: &Inbound,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    let open = sqlx::query("SELECT 1 FROM review_tasks WHERE kind = 'identity_conflict' AND id_number = $1 AND state = 'open'")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if open.is_some() {
        return Ok(());
    }
    let identity = format!("identity_conflict/{}/{}", ctx.keys.key(id), trigger.ce_id);
    raise_task(conn, ctx, "identity_conflict", Some(id), household_id, region, on, None, &identity, &trigger.recorded_at, outcome).await
}

#[allow(clippy::too_many_arguments)]
async fn raise_task(
    conn: &mut AnyConnection,
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
    let task_id = write_outbox(conn, ctx, REVIEW_TOPIC, "task_id", &key, identity, payload, household_id, source_time).await?;
    sqlx::query("INSERT INTO review_tasks (task_id, kind, id_number, household_id, region, created_on, rule, detail, state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', $9)")
        .bind(&task_id)
        .bind(kind)
        .bind(person.map(IdNumber::as_str))
        .bind(household_id)
        .bind(region)
        .bind(on.to_string())
        .bind(rule)
        .bind(&detail)
        .bind(now_rfc3339())
        .execute(&mut *conn)
        .await?;
    outcome.review_tasks += 1;
    outcome.outbox += 1;
    metrics::counter!("doudi_matcher_review_tasks_total", "kind" => kind.to_string()).increment(1);
    Ok(())
}

/// Writes one outbox row: the payload gets its deterministic id under `id_field` and is checked
/// against the schema of `catalogue_topic`. Returns the id.
#[allow(clippy::too_many_arguments)]
async fn write_outbox(
    conn: &mut AnyConnection,
    ctx: &Context,
    catalogue_topic: &str,
    id_field: &str,
    key: &str,
    identity: &str,
    mut payload: Value,
    household_id: Option<&str>,
    source_time: &str,
) -> Result<String, ApplyError> {
    let ce_id = event_id_for_payload(MATCHER_SOURCE, identity, payload.to_string().as_bytes());
    if let Some(obj) = payload.as_object_mut() {
        obj.insert(id_field.into(), json!(ce_id));
    }
    let schema = ctx
        .registry
        .for_topic(catalogue_topic)
        .map_err(|e| ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: e.to_string() })?;
    if let Some(v) = schema.violations(&payload).first() {
        return Err(ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: format!("{} at {}", v.message, v.pointer) });
    }
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, ce_id, ce_type, dataschema, payload, household_id, source_time, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (ce_id) DO NOTHING",
    )
    .bind(ctx.outbound.actual(catalogue_topic))
    .bind(key)
    .bind(&ce_id)
    .bind(event_type(catalogue_topic))
    .bind(schema.id.as_str())
    .bind(payload.to_string())
    .bind(household_id)
    .bind(source_time)
    .bind(now_rfc3339())
    .execute(&mut *conn)
    .await?;
    Ok(ce_id)
}

async fn person_names(conn: &mut AnyConnection, ids: &[String]) -> Result<BTreeMap<String, String>, ApplyError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql = format!("SELECT id_number, name FROM persons WHERE id_number IN ({})", placeholders(1, ids.len()));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id);
    }
    let mut out = BTreeMap::new();
    for row in q.fetch_all(&mut *conn).await? {
        if let Some(name) = row.try_get::<Option<String>, _>("name")? {
            out.insert(row.try_get("id_number")?, name);
        }
    }
    Ok(out)
}

/// The current members of a household and their current facts (registrations left out), in a
/// stable order.
pub async fn household_state(conn: &mut AnyConnection, household_id: &str) -> Result<(Vec<StoredMember>, Vec<StoredFact>), ApplyError> {
    let member_rows =
        sqlx::query("SELECT id_number, member FROM household_members WHERE household_id = $1 AND valid_to IS NULL ORDER BY id")
            .bind(household_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut members = Vec::with_capacity(member_rows.len());
    for r in &member_rows {
        members.push(StoredMember {
            id_number: r.try_get("id_number")?,
            record: serde_json::from_str(&r.try_get::<String, _>("member")?).unwrap_or_default(),
        });
    }
    let ids: Vec<String> = members.iter().map(|m| m.id_number.clone()).collect();
    let mut facts = Vec::new();
    if !ids.is_empty() {
        let sql = format!(
            "SELECT id_number, field, value, effective_date FROM facts WHERE state = 'current' AND id_number IN ({}) ORDER BY id_number, field, id",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let field: String = r.try_get("field")?;
            if field.starts_with("registration:") {
                continue;
            }
            facts.push(StoredFact {
                id_number: r.try_get("id_number")?,
                field,
                value: serde_json::from_str(&r.try_get::<String, _>("value")?).unwrap_or_default(),
                effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(parse_date),
            });
        }
    }
    Ok((members, facts))
}

/// Re-assesses one household on its current facts and writes what changed.
async fn evaluate_household(
    conn: &mut AnyConnection,
    ctx: &Context,
    household_id: &str,
    trigger: &str,
    source_time: &str,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    outcome.households_evaluated += 1;
    let Some(row) = sqlx::query("SELECT region, as_of, base, decision_version FROM households WHERE household_id = $1")
        .bind(household_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(());
    };
    let region: String = row.try_get("region")?;
    let as_of = parse_date(&row.try_get::<String, _>("as_of")?).unwrap_or(ctx.today);
    let base: Value = serde_json::from_str(&row.try_get::<String, _>("base")?).unwrap_or_default();
    let version: i64 = row.try_get("decision_version")?;

    let (members, facts) = household_state(conn, household_id).await?;

    let old_summary = if version > 0 {
        let r = sqlx::query("SELECT category, basis, size, per_capita_income, monthly_payment, policy_version, rules FROM decisions WHERE household_id = $1 AND version = $2")
            .bind(household_id)
            .bind(version)
            .fetch_one(&mut *conn)
            .await?;
        Some(Summary {
            category: r.try_get("category")?,
            basis: r.try_get("basis")?,
            size: r.try_get("size")?,
            per_capita_income: r.try_get("per_capita_income")?,
            monthly_payment: r.try_get("monthly_payment")?,
            policy_version: r.try_get("policy_version")?,
            rules: r.try_get("rules")?,
        })
    } else {
        None
    };

    // Assess, or (nobody left) decide that nothing is in force.
    let (summary, date, new_entitlements, raised_tasks, decision_json, members_status, head) = if members.is_empty() {
        (Summary::empty(&ctx.params.policy.version), as_of, Vec::new(), Vec::new(), json!({"members": []}), json!([]), None)
    } else {
        let assembled = assemble(household_id, &region, as_of, &base, &members, &facts);
        let date = assembled.date;
        let checked = serde_json::from_value::<Household>(assembled.household)
            .map_err(|e| format!("field `{}`: {}", "(household)", e.to_string().split(" at line ").next().unwrap_or_default()))
            .and_then(|h| h.validate(date, &ctx.params.policy.province).map_err(|e| e.to_string()));
        let assessed = checked.and_then(|c| crate::policy::assess(&ctx.params, &c, date).map(|d| (c, d)).map_err(|e| e.to_string()));
        let (checked, decision) = match assessed {
            Ok(x) => x,
            Err(problem) => {
                tracing::warn!(trigger_event = %trigger, "A household could not be assessed; its current decision stands until its facts are corrected: {problem}");
                sqlx::query(
                    "INSERT INTO assessment_problems (household_id, problem, ce_id, recorded_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (household_id) DO UPDATE SET problem = excluded.problem, ce_id = excluded.ce_id, recorded_at = excluded.recorded_at",
                )
                .bind(household_id)
                .bind(&problem)
                .bind(trigger)
                .bind(now_rfc3339())
                .execute(&mut *conn)
                .await?;
                outcome.assessment_problems += 1;
                return Ok(());
            }
        };
        sqlx::query("DELETE FROM assessment_problems WHERE household_id = $1").bind(household_id).execute(&mut *conn).await?;
        let entitlements = entitlements_of(&decision, &checked);
        let tasks: Vec<(String, String, String)> =
            decision.review_tasks.iter().map(|t| (t.kind.to_string(), t.person.as_str().to_string(), t.rule.to_string())).collect();
        let members_status: Vec<Value> =
            decision.members.iter().map(|m| json!({"id_number": m.person.as_str(), "status": m.status.as_str()})).collect();
        let head = checked.ids[checked.head].clone();
        let mut json = serde_json::to_value(&decision).unwrap_or_default();
        if let Some(obj) = json.as_object_mut() {
            obj.remove("explanation");
        }
        (Summary::of(&decision), date, entitlements, tasks, json, Value::Array(members_status), Some(head))
    };

    // Entitlements in force before.
    let mut before = Vec::new();
    for r in sqlx::query("SELECT agency, kind, id_number, attributes, rules FROM entitlements WHERE household_id = $1 AND ended_on IS NULL")
        .bind(household_id)
        .fetch_all(&mut *conn)
        .await?
    {
        before.push(EntitlementRow {
            agency: r.try_get("agency")?,
            kind: r.try_get("kind")?,
            id_number: r.try_get("id_number")?,
            attributes: serde_json::from_str(&r.try_get::<String, _>("attributes")?).unwrap_or_default(),
            rules: serde_json::from_str(&r.try_get::<String, _>("rules")?).unwrap_or_default(),
        });
    }
    let changes = diff(&before, &new_entitlements);

    // Review tasks the engine raises now, against those open for this household.
    let mut open = BTreeSet::new();
    for r in
        sqlx::query("SELECT kind, id_number FROM review_tasks WHERE household_id = $1 AND state = 'open' AND kind <> 'identity_conflict'")
            .bind(household_id)
            .fetch_all(&mut *conn)
            .await?
    {
        open.insert((r.try_get::<String, _>("kind")?, r.try_get::<Option<String>, _>("id_number")?.unwrap_or_default()));
    }
    let raised: BTreeSet<(String, String)> = raised_tasks.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect();
    let new_tasks: Vec<_> = raised_tasks.iter().filter(|(k, p, _)| !open.contains(&(k.clone(), p.clone()))).cloned().collect();
    let cleared: Vec<_> = open.difference(&raised).cloned().collect();

    let summary_changed = old_summary.as_ref() != Some(&summary);
    if !summary_changed && changes.is_empty() && new_tasks.is_empty() && cleared.is_empty() {
        return Ok(());
    }
    let new_version = version + 1;
    outcome.decisions += 1;
    sqlx::query(
        "INSERT INTO decisions (household_id, version, effective_date, category, basis, size, per_capita_income, monthly_payment, policy_version, rules, decision, trigger_ce_id, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(household_id)
    .bind(new_version)
    .bind(date.to_string())
    .bind(&summary.category)
    .bind(summary.basis.as_deref())
    .bind(summary.size)
    .bind(&summary.per_capita_income)
    .bind(&summary.monthly_payment)
    .bind(&summary.policy_version)
    .bind(&summary.rules)
    .bind(decision_json.to_string())
    .bind(trigger)
    .bind(now_rfc3339())
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE households SET decision_version = $1 WHERE household_id = $2")
        .bind(new_version)
        .bind(household_id)
        .execute(&mut *conn)
        .await?;

    // The status change, when category or payment moved (a first decision of `none` moves nothing).
    let status_moved = match &old_summary {
        Some(o) => o.category != summary.category || o.monthly_payment != summary.monthly_payment,
        None => summary.category != "none",
    };
    if status_moved {
        let key = head.as_ref().map(|h| ctx.keys.key(h)).unwrap_or_default();
        let payload = status_payload(household_id, &region, date, &summary, old_summary.as_ref(), members_status);
        write_outbox(
            conn,
            ctx,
            STATUS_TOPIC,
            "event_id",
            &key,
            &format!("{household_id}/v{new_version}/status"),
            payload,
            Some(household_id),
            source_time,
        )
        .await?;
        outcome.outbox += 1;
    }

    let persons: Vec<String> = changes.iter().map(|(_, e)| e.id_number.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let names = person_names(conn, &persons).await?;
    for (change, e) in &changes {
        match change {
            Change::Granted => {
                sqlx::query("INSERT INTO entitlements (household_id, agency, kind, id_number, attributes, rules, granted_on, granted_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(household_id)
                    .bind(&e.agency)
                    .bind(&e.kind)
                    .bind(&e.id_number)
                    .bind(e.attributes.to_string())
                    .bind(json!(e.rules).to_string())
                    .bind(date.to_string())
                    .bind(new_version)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Changed => {
                sqlx::query("UPDATE entitlements SET attributes = $1, rules = $2 WHERE household_id = $3 AND agency = $4 AND kind = $5 AND id_number = $6 AND ended_on IS NULL")
                    .bind(e.attributes.to_string())
                    .bind(json!(e.rules).to_string())
                    .bind(household_id)
                    .bind(&e.agency)
                    .bind(&e.kind)
                    .bind(&e.id_number)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Ended => {
                sqlx::query("UPDATE entitlements SET ended_on = $1, ended_version = $2 WHERE household_id = $3 AND agency = $4 AND kind = $5 AND id_number = $6 AND ended_on IS NULL")
                    .bind(date.to_string())
                    .bind(new_version)
                    .bind(household_id)
                    .bind(&e.agency)
                    .bind(&e.kind)
                    .bind(&e.id_number)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let person = IdNumber::parse(&e.id_number).ok();
        let key = person.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default();
        let payload = entitlement_payload(*change, e, names.get(&e.id_number).map(String::as_str), household_id, &region, date);
        let identity = format!("{household_id}/v{new_version}/{}/{}/{key}", e.agency, e.kind);
        write_outbox(conn, ctx, &agency_topic(&e.agency), "event_id", &key, &identity, payload, Some(household_id), source_time).await?;
        outcome.outbox += 1;
        metrics::counter!("doudi_matcher_entitlement_changes_total", "agency" => e.agency.clone(), "change" => change.as_str())
            .increment(1);
    }

    for (kind, person, rule) in &new_tasks {
        let id = IdNumber::parse(person).ok();
        let identity = format!("{household_id}/v{new_version}/task/{kind}/{}", id.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default());
        raise_task(conn, ctx, kind, id.as_ref(), Some(household_id), &region, date, Some(rule), &identity, source_time, outcome).await?;
    }
    for (kind, person) in &cleared {
        sqlx::query(
            "UPDATE review_tasks SET state = 'cleared' WHERE household_id = $1 AND kind = $2 AND id_number = $3 AND state = 'open'",
        )
        .bind(household_id)
        .bind(kind)
        .bind(person)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
