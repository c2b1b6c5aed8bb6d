//! Re-assessing households: for each household a batch touched, its current facts are assembled,
//! assessed and compared with its current decision ([`decide`], a pure function); what changed is
//! queued as a new decision, entitlement rows, review tasks and outbox rows.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::apply::{raise_task, write_outbox};
use super::assemble::{StoredFact, StoredMember, assemble};
use super::batch::*;
use super::casework::{TaskChange, transition};
use super::context::{ApplyError, BatchOutcome, Context};
use super::flush::flush_derived;
use super::outbound::{Change, EntitlementRow, Summary, diff, entitlement_payload, entitlements_of, status_payload};
use crate::db::now_rfc3339;
use crate::db::sql::{Bind, Conn, execute_in, insert_rows, ot, select_in, t};
use crate::idnum::IdNumber;
use crate::topics::{STATUS_TOPIC, agency_topic};

/// New attributes, rules, end date and ending version of entitlement rows.
pub(super) type UpdateContent = (String, String, Option<String>, Option<i64>);

/// An entitlement change of a household's new decision, to be written to the outbox once the
/// names of the people concerned are read.
pub(super) struct EntitlementEvent {
    pub(super) change: Change,
    pub(super) entitlement: EntitlementRow,
    pub(super) household_id: String,
    pub(super) region: String,
    pub(super) date: NaiveDate,
    /// The decision version that made the change.
    pub(super) version: i64,
    pub(super) source_time: String,
}

/// A changed or ended entitlement, rewritten by id.
pub(super) struct EntitlementUpdate {
    pub(super) id: i64,
    pub(super) attributes: String,
    pub(super) rules: String,
    /// The end date and the decision version that ended it.
    pub(super) ended: Option<(String, i64)>,
}

/// A household as stored: what the decision step assesses and compares with.
pub struct Standing<'a> {
    pub household_id: &'a str,
    pub region: &'a str,
    /// The date of its registration.
    pub as_of: NaiveDate,
    /// Assessed no earlier than this date (a policy change, a calendar review).
    pub reevaluated_on: Option<NaiveDate>,
    /// The registration's own fields, as stored (JSON text).
    pub base: &'a str,
    pub members: &'a [StoredMember],
    pub facts: &'a [StoredFact],
    /// The summary of its current decision (`None` before the first).
    pub summary: Option<&'a Summary>,
    /// Its entitlements in force.
    pub entitlements: &'a [EntitlementRow],
    /// Its open review tasks raised by the policy, as (kind, person).
    pub open_tasks: &'a BTreeSet<(String, String)>,
    /// Tasks resolved for good: not raised again while the policy still raises them (a member's
    /// death, once reviewed).
    pub settled_tasks: &'a BTreeSet<(String, String)>,
}

/// What the decision step found.
#[derive(Debug)]
pub enum Step {
    /// The household's facts cannot be assessed; its current decision stands.
    Unassessable(String),
    /// Nothing changed: no new decision.
    Unchanged,
    /// A new decision.
    Decided(Box<Decided>),
}

/// A new decision and what it changes.
#[derive(Debug)]
pub struct Decided {
    pub summary: Summary,
    /// The assessment date.
    pub date: NaiveDate,
    /// The decision as stored (without its explanation, recomputed when shown).
    pub decision_json: String,
    /// Each member's status, for the status event.
    pub members_status: Value,
    /// The head of the household (`None` for a household without members).
    pub head: Option<IdNumber>,
    /// Entitlements granted, changed and ended.
    pub changes: Vec<(Change, EntitlementRow)>,
    /// Review tasks raised now and not open already, as (kind, person, rule).
    pub new_tasks: Vec<(String, String, String)>,
    /// Open review tasks the policy no longer raises, as (kind, person).
    pub cleared: Vec<(String, String)>,
    /// Whether the category or the monthly payment moved (a status event is due).
    pub status_moved: bool,
}

/// The decision step: assemble the household's facts, assess them on the policy, and compare the
/// result with its current decision, entitlements and open tasks. Pure: no database, no clock.
pub fn decide(params: &crate::policy::Params, h: &Standing<'_>) -> Step {
    let (summary, date, new_entitlements, raised_tasks, decision_json, members_status, head) = if h.members.is_empty() {
        let empty = String::from(r#"{"members":[]}"#);
        (Summary::empty(&params.policy.version), h.as_of, Vec::new(), Vec::new(), empty, json!([]), None)
    } else {
        let floor = h.reevaluated_on.map_or(h.as_of, |d| d.max(h.as_of));
        let assessed = assemble(h.household_id, h.region, floor, h.base, h.members, h.facts)
            .and_then(|a| a.household.validate(a.date, &params.policy.province).map(|c| (c, a.date)))
            .map_err(|e| e.to_string())
            .and_then(|(c, date)| crate::policy::assess(params, &c, date).map(|d| (c, d, date)).map_err(|e| e.to_string()));
        let (checked, mut decision, date) = match assessed {
            Ok(x) => x,
            Err(problem) => return Step::Unassessable(problem),
        };
        let entitlements = entitlements_of(&decision, &checked);
        let tasks: Vec<(String, String, String)> =
            decision.review_tasks.iter().map(|t| (t.kind.to_string(), t.person.as_str().to_string(), t.rule.to_string())).collect();
        let members_status: Vec<Value> =
            decision.members.iter().map(|m| json!({"id_number": m.person.as_str(), "status": m.status.as_str()})).collect();
        let head = checked.ids[checked.head].clone();
        // Stored without its explanation (recomputed when shown), written straight to text.
        decision.explanation.clear();
        let json = serde_json::to_string(&decision).unwrap_or_default();
        (Summary::of(&decision), date, entitlements, tasks, json, Value::Array(members_status), Some(head))
    };
    let changes = diff(h.entitlements, &new_entitlements);
    let raised: BTreeSet<(String, String)> = raised_tasks.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect();
    let new_tasks: Vec<_> = raised_tasks
        .iter()
        .filter(|(k, p, _)| {
            let key = (k.clone(), p.clone());
            !h.open_tasks.contains(&key) && !h.settled_tasks.contains(&key)
        })
        .cloned()
        .collect();
    let cleared: Vec<_> = h.open_tasks.difference(&raised).cloned().collect();
    let summary_changed = h.summary != Some(&summary);
    if !summary_changed && changes.is_empty() && new_tasks.is_empty() && cleared.is_empty() {
        return Step::Unchanged;
    }
    let status_moved = match h.summary {
        Some(o) => o.category != summary.category || o.monthly_payment != summary.monthly_payment,
        None => summary.category != "none",
    };
    Step::Decided(Box::new(Decided { summary, date, decision_json, members_status, head, changes, new_tasks, cleared, status_moved }))
}

/// Re-assesses every affected household on its current facts and queues what changed.
pub(super) async fn evaluate_households(
    conn: &mut Conn<'_>,
    ctx: &Context,
    b: &mut Batch,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    let affected: Vec<String> = b.affected.keys().cloned().collect();
    if affected.is_empty() {
        return Ok(());
    }
    // Households not loaded yet (a person moved out of them) come in too.
    let missing: Vec<String> = affected.iter().filter(|h| !b.households.contains_key(*h)).cloned().collect();
    load_households(conn, b, &missing).await?;
    let mut state = households_state(conn, b.span.as_ref(), &affected).await?;
    // Each household's current decision summary is on its row; a row decided before the column
    // existed has its summary read from the decision, by (household, version).
    let unsummarised: Vec<(&str, i64)> = affected
        .iter()
        .filter_map(|h| b.households.get(h).filter(|row| row.version > 0 && row.summary.is_none()).map(|row| (h.as_str(), row.version)))
        .collect();
    let mut summaries: BTreeMap<(String, i64), Summary> = BTreeMap::new();
    let decided = if unsummarised.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT d.household_id, d.version, d.category, d.basis, d.size, d.per_capita_income, d.monthly_payment, d.policy_version, d.rules \
             FROM decisions d WHERE (d.household_id, d.version) IN ({})",
            conn.backend().key_pairs()
        );
        conn.fetch(sql, vec![t(serde_json::to_string(&unsummarised).unwrap_or_else(|_| "[]".into()))]).await?
    };
    for r in decided {
        summaries.insert(
            (r.try_get("household_id")?, r.try_get("version")?),
            Summary {
                category: r.try_get("category")?,
                basis: r.try_get("basis")?,
                size: r.try_get("size")?,
                per_capita_income: r.try_get("per_capita_income")?,
                monthly_payment: r.try_get("monthly_payment")?,
                policy_version: r.try_get("policy_version")?,
                rules: r.try_get("rules")?,
            },
        );
    }
    let mut in_force: BTreeMap<String, Vec<(i64, EntitlementRow)>> = BTreeMap::new();
    for r in select_households(
        conn,
        b.span.as_ref(),
        "SELECT id, household_id, agency, kind, id_number, attributes, rules FROM entitlements WHERE ended_on IS NULL AND household_id IN",
        "ORDER BY id",
        &affected,
    )
    .await?
    {
        in_force.entry(r.try_get("household_id")?).or_default().push((
            r.try_get("id")?,
            EntitlementRow {
                agency: r.try_get("agency")?,
                kind: r.try_get("kind")?,
                id_number: r.try_get("id_number")?,
                attributes: serde_json::from_str(&r.try_get::<String, _>("attributes")?).unwrap_or_default(),
                rules: serde_json::from_str(&r.try_get::<String, _>("rules")?).unwrap_or_default(),
            },
        ));
    }
    // Tasks the policy raised: the open ones (cancelled when it no longer raises them) and the
    // reviewed deaths (never raised again).
    let mut open_tasks: BTreeMap<String, BTreeMap<(String, String), TaskRow>> = BTreeMap::new();
    let mut settled_tasks: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM review_tasks WHERE ((state IN ('open', 'in_progress') AND kind NOT IN ('identity_conflict', 'periodic_review_due')) \
         OR (state = 'resolved' AND kind = 'deceased_member')) AND household_id IN"
    );
    for r in select_households(conn, b.span.as_ref(), &sql, "", &affected).await? {
        let task = task_row(&r)?;
        let (Some(household_id), key) = (task.household_id.clone(), (task.kind.clone(), task.id_number.clone().unwrap_or_default())) else {
            continue;
        };
        if task.state == "resolved" {
            settled_tasks.entry(household_id).or_default().insert(key);
        } else {
            open_tasks.entry(household_id).or_default().insert(key, task);
        }
    }
    let mut decisions = Vec::new();
    // Entitlement events wait for the names of their people, read once after the loop: only the
    // people an event names are looked up, not every member of every household.
    let mut entitlement_events: Vec<EntitlementEvent> = Vec::new();
    let mut grants = Vec::new();
    let mut updates: Vec<EntitlementUpdate> = Vec::new();
    let mut cleared: Vec<(TaskRow, String, String)> = Vec::new();
    let mut problems = Vec::new();
    let mut solved = Vec::new();
    let now = now_rfc3339();
    for household_id in &affected {
        outcome.households_evaluated += 1;
        let Some(stored) = b.households.get(household_id) else { continue };
        let (region, version) = (stored.region.clone(), stored.version);
        let (trigger, source_time) = b.affected.get(household_id).cloned().unwrap_or_default();
        let (members, facts) = state.remove(household_id).unwrap_or_default();
        let old_summary: Option<Summary> = stored.summary.clone().or_else(|| summaries.remove(&(household_id.clone(), version)));
        let before_rows = in_force.remove(household_id).unwrap_or_default();
        let before: Vec<EntitlementRow> = before_rows.iter().map(|r| r.1.clone()).collect();
        let open_rows = open_tasks.remove(household_id).unwrap_or_default();
        let open: BTreeSet<(String, String)> = open_rows.keys().cloned().collect();
        let settled = settled_tasks.remove(household_id).unwrap_or_default();
        let standing = Standing {
            household_id,
            region: &region,
            as_of: stored.as_of,
            reevaluated_on: stored.reevaluated_on,
            base: &stored.base,
            members: &members,
            facts: &facts,
            summary: old_summary.as_ref(),
            entitlements: &before,
            open_tasks: &open,
            settled_tasks: &settled,
        };
        let step = decide(&ctx.params, &standing);
        if let Step::Unassessable(problem) = step {
            tracing::warn!(trigger_event = %trigger, "A household could not be assessed; its current decision stands until its facts are corrected: {problem}");
            problems.push((household_id.clone(), problem, trigger.clone()));
            outcome.assessment_problems += 1;
            continue;
        }
        // An assessed household has no assessment problem left (one without members was not assessed).
        if !members.is_empty() {
            solved.push(t(household_id));
        }
        let Step::Decided(decided) = step else { continue };
        let Decided { summary, date, decision_json, members_status, head, changes, new_tasks, cleared: gone, status_moved } = *decided;
        let new_version = version + 1;
        outcome.decisions += 1;
        decisions.push(vec![
            t(household_id),
            Bind::Int(new_version),
            t(date.to_string()),
            t(&summary.category),
            ot(summary.basis.clone()),
            Bind::Int(summary.size),
            t(&summary.per_capita_income),
            t(&summary.monthly_payment),
            t(&summary.policy_version),
            t(&summary.rules),
            t(decision_json),
            t(&trigger),
            t(&now),
        ]);
        if let Some(h) = b.households.get_mut(household_id) {
            h.version = new_version;
            h.summary = Some(summary.clone());
            h.touch();
        }
        if status_moved {
            let key = head.as_ref().map(|h| ctx.keys.key(h)).unwrap_or_default();
            let payload = status_payload(household_id, &region, date, &summary, old_summary.as_ref(), members_status);
            write_outbox(
                b,
                ctx,
                STATUS_TOPIC,
                "event_id",
                &key,
                &format!("{household_id}/v{new_version}/status"),
                payload,
                Some(household_id),
                &source_time,
            )?;
            outcome.outbox += 1;
        }
        for (change, e) in &changes {
            let existing = before_rows.iter().find(|r| r.1.key() == e.key());
            match (change, existing) {
                (Change::Granted, _) => grants.push(vec![
                    t(household_id),
                    t(&e.agency),
                    t(&e.kind),
                    t(&e.id_number),
                    t(e.attributes.to_string()),
                    t(json!(e.rules).to_string()),
                    t(date.to_string()),
                    Bind::Int(new_version),
                ]),
                (Change::Changed, Some((id, ..))) => updates.push(EntitlementUpdate {
                    id: *id,
                    attributes: e.attributes.to_string(),
                    rules: json!(e.rules).to_string(),
                    ended: None,
                }),
                (Change::Ended, Some((id, old, ..))) => updates.push(EntitlementUpdate {
                    id: *id,
                    attributes: old.attributes.to_string(),
                    rules: json!(old.rules).to_string(),
                    ended: Some((date.to_string(), new_version)),
                }),
                _ => {}
            }
            entitlement_events.push(EntitlementEvent {
                change: *change,
                entitlement: e.clone(),
                household_id: household_id.clone(),
                region: region.clone(),
                date,
                version: new_version,
                source_time: source_time.clone(),
            });
        }
        for (kind, person, rule) in &new_tasks {
            let id = IdNumber::parse(person).ok();
            let identity =
                format!("{household_id}/v{new_version}/task/{kind}/{}", id.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default());
            raise_task(b, ctx, kind, id.as_ref(), Some(household_id), &region, date, Some(rule), &identity, &source_time, outcome)?;
        }
        for key in gone {
            if let Some(task) = open_rows.get(&key) {
                cleared.push((task.clone(), format!("{household_id}/v{new_version}"), source_time.clone()));
            }
        }
    }
    let mut names = BTreeMap::new();
    let named = sorted_unique(entitlement_events.iter().map(|x| x.entitlement.id_number.clone()));
    for r in select_in(conn, "SELECT id_number, name FROM persons WHERE id_number IN", "", &named).await? {
        if let Some(name) = r.try_get::<Option<String>, _>("name")? {
            names.insert(r.try_get::<String, _>("id_number")?, name);
        }
    }
    for x in entitlement_events {
        let e = &x.entitlement;
        let person = IdNumber::parse(&e.id_number).ok();
        let key = person.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default();
        let payload = entitlement_payload(x.change, e, names.get(&e.id_number).map(String::as_str), &x.household_id, &x.region, x.date);
        let identity = format!("{}/v{}/{}/{}/{key}", x.household_id, x.version, e.agency, e.kind);
        write_outbox(b, ctx, &agency_topic(&e.agency), "event_id", &key, &identity, payload, Some(&x.household_id), &x.source_time)?;
        outcome.outbox += 1;
        metrics::counter!("doudi_matcher_entitlement_changes_total", "agency" => e.agency.clone(), "change" => x.change.as_str())
            .increment(1);
    }
    insert_rows(
        conn,
        "decisions",
        &[
            "household_id",
            "version",
            "effective_date",
            "category",
            "basis",
            "size",
            "per_capita_income",
            "monthly_payment",
            "policy_version",
            "rules",
            "decision",
            "trigger_ce_id",
            "decided_at",
        ],
        decisions,
        "",
    )
    .await?;
    insert_rows(
        conn,
        "entitlements",
        &["household_id", "agency", "kind", "id_number", "attributes", "rules", "granted_on", "granted_version"],
        grants,
        "",
    )
    .await?;
    // Changed and ended rows are rewritten by id, one statement per distinct new content.
    let mut grouped: BTreeMap<UpdateContent, Vec<Bind>> = BTreeMap::new();
    for u in updates {
        let (ended_on, ended_version) = match u.ended {
            Some((on, version)) => (Some(on), Some(version)),
            None => (None, None),
        };
        grouped.entry((u.attributes, u.rules, ended_on, ended_version)).or_default().push(Bind::Int(u.id));
    }
    for ((attributes, rules, ended_on, ended_version), ids) in grouped {
        let version = Bind::OptInt(ended_version);
        execute_in(
            conn,
            "UPDATE entitlements SET attributes = $1, rules = $2, ended_on = $3, ended_version = $4 WHERE id IN",
            &[t(attributes), t(rules), ot(ended_on), version],
            &ids,
        )
        .await?;
    }
    // Tasks the policy no longer raises are cancelled: superseded by the event re-assessed here.
    for (task, cause, source_time) in &cleared {
        let change = TaskChange {
            to: "cancelled",
            actor: "doudi-matcher",
            via: "matcher",
            outcome: None,
            reason: Some("后续数据变化后，政策规则已不再提出此任务（家庭已重新评估）。"),
            assignee: None,
            cause,
            source_time,
        };
        transition(b, ctx, task, &change)?;
    }
    execute_in(conn, "DELETE FROM assessment_problems WHERE household_id IN", &[], &solved).await?;
    for (household_id, problem, trigger) in problems {
        conn.execute(
            "INSERT INTO assessment_problems (household_id, problem, ce_id, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (household_id) DO UPDATE SET problem = excluded.problem, ce_id = excluded.ce_id, recorded_at = excluded.recorded_at"
                .into(),
            vec![t(household_id), t(problem), t(trigger), t(&now)],
        )
        .await?;
    }
    Ok(())
}

/// A periodic review falling due: the task is raised for the head and the next review scheduled.
#[derive(Clone, Debug)]
pub struct ReviewDue {
    pub next_review_on: NaiveDate,
}

/// Re-evaluates `household_ids` without an inbound event (a policy change, the calendar), as of
/// no earlier than `on`, writing what changed exactly as an inbound event would: decisions,
/// entitlements, review tasks, outbox rows and deliveries. From then on each household is assessed
/// no earlier than `on`. `trigger` names the cause in `decisions.trigger_ce_id` and in the
/// outbound events' identities, so that running it twice derives the same `ce_id`s. Households in
/// `reviews` also get a `periodic_review_due` task and their next review date. `by_range`: the
/// households are likely every household between the first and the last (sorted ids of a policy
/// change), so their rows may be read by that range ([`Span`]).
pub async fn reevaluate(
    conn: &mut Conn<'_>,
    ctx: &Context,
    household_ids: &[String],
    on: Option<NaiveDate>,
    trigger: &str,
    reviews: &BTreeMap<String, ReviewDue>,
    by_range: bool,
) -> Result<BatchOutcome, ApplyError> {
    let mut outcome = BatchOutcome::default();
    let mut b = Batch::default();
    if by_range {
        b.span = load_households_by_range(conn, &mut b, household_ids).await?;
    } else {
        load_households(conn, &mut b, household_ids).await?;
    }
    let source_time = now_rfc3339();
    for (household_id, h) in &mut b.households {
        if let Some(on) = on
            && h.reevaluated_on.is_none_or(|d| d < on)
        {
            h.reevaluated_on = Some(on);
            h.touch();
        }
        if let Some(due) = reviews.get(household_id) {
            h.next_review_on = Some(due.next_review_on);
            h.touch();
        }
        b.affected.insert(household_id.clone(), (trigger.to_string(), source_time.clone()));
    }
    let due: Vec<String> = reviews.keys().filter(|h| b.households.contains_key(*h)).cloned().collect();
    if !due.is_empty() {
        let mut heads: BTreeMap<String, String> = BTreeMap::new();
        for r in select_in(
            conn,
            "SELECT household_id, id_number, relation FROM household_members WHERE valid_to IS NULL AND household_id IN",
            "ORDER BY id",
            &due,
        )
        .await?
        {
            let household_id: String = r.try_get("household_id")?;
            let relation: String = r.try_get("relation")?;
            if relation == "head" || !heads.contains_key(&household_id) {
                heads.insert(household_id, r.try_get("id_number")?);
            }
        }
        for household_id in &due {
            let Some(head) = heads.get(household_id).and_then(|h| IdNumber::parse(h).ok()) else { continue };
            let region = b.households.get(household_id).map(|h| h.region.clone()).unwrap_or_default();
            let identity = format!("{household_id}/{trigger}/periodic_review_due");
            let created_on = on.unwrap_or(ctx.today);
            raise_task(
                &mut b,
                ctx,
                "periodic_review_due",
                Some(&head),
                Some(household_id),
                &region,
                created_on,
                None,
                &identity,
                &source_time,
                &mut outcome,
            )?;
        }
    }
    evaluate_households(conn, ctx, &mut b, &mut outcome).await?;
    flush_derived(conn, &mut b).await?;
    outcome.audit = crate::audit::append(conn, &ctx.auditor, &std::mem::take(&mut b.audits)).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "220102195003070015";
    static NONE_SETTLED: BTreeSet<(String, String)> = BTreeSet::new();

    fn standing<'a>(
        members: &'a [StoredMember],
        summary: Option<&'a Summary>,
        entitlements: &'a [EntitlementRow],
        open: &'a BTreeSet<(String, String)>,
    ) -> Standing<'a> {
        Standing {
            household_id: "JL-220102-2019-000123",
            region: "220102",
            as_of: NaiveDate::from_ymd_opt(2019, 12, 1).unwrap_or_default(),
            reevaluated_on: None,
            base: r#"{"assets": {}}"#,
            members,
            facts: &[],
            summary,
            entitlements,
            open_tasks: open,
            settled_tasks: &NONE_SETTLED,
        }
    }

    fn alone_without_income() -> Vec<StoredMember> {
        let record = json!({"id_number": HEAD, "relation": "head", "hukou_region": "220102",
            "income": {"wages": "0", "transfer": "0"}, "employed": false});
        vec![StoredMember { id_number: HEAD.into(), record: record.to_string() }]
    }

    fn params() -> crate::policy::Params {
        crate::policy::Params::shipped().unwrap_or_else(|e| panic!("the shipped policy loads: {e}"))
    }

    #[test]
    fn a_first_decision_grants_and_a_second_identical_one_changes_nothing() {
        let params = params();
        let members = alone_without_income();
        let open = BTreeSet::new();
        let Step::Decided(first) = decide(&params, &standing(&members, None, &[], &open)) else {
            panic!("a household's first assessment is a decision")
        };
        assert_ne!(first.summary.category, "none", "a person alone without income is assisted");
        assert!(first.status_moved);
        assert!(first.changes.iter().all(|(c, _)| *c == Change::Granted) && !first.changes.is_empty());
        assert_eq!(first.head.as_ref().map(IdNumber::as_str), Some(HEAD));

        // The same facts again, against what the first decision left: nothing to write.
        let granted: Vec<EntitlementRow> = first.changes.iter().map(|(_, e)| e.clone()).collect();
        let raised: BTreeSet<(String, String)> = first.new_tasks.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect();
        assert!(matches!(decide(&params, &standing(&members, Some(&first.summary), &granted, &raised)), Step::Unchanged));
    }

    #[test]
    fn a_household_left_without_members_ends_what_it_had() {
        let params = params();
        let members = alone_without_income();
        let open = BTreeSet::new();
        let Step::Decided(first) = decide(&params, &standing(&members, None, &[], &open)) else { panic!("decided") };
        let granted: Vec<EntitlementRow> = first.changes.iter().map(|(_, e)| e.clone()).collect();
        let Step::Decided(emptied) = decide(&params, &standing(&[], Some(&first.summary), &granted, &open)) else {
            panic!("an emptied household is a new decision")
        };
        assert_eq!(emptied.summary.category, "none");
        assert!(emptied.changes.iter().all(|(c, _)| *c == Change::Ended) && emptied.changes.len() == granted.len());
        assert!(emptied.head.is_none() && emptied.status_moved);
    }

    #[test]
    fn facts_that_cannot_be_assessed_leave_the_decision_standing() {
        let params = params();
        let members = vec![StoredMember { id_number: HEAD.into(), record: "not json".into() }];
        let open = BTreeSet::new();
        assert!(matches!(decide(&params, &standing(&members, None, &[], &open)), Step::Unassessable(_)));
    }
}
