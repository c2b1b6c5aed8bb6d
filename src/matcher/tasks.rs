//! The review tasks as a caseworker's queue: listed oldest first, filtered by kind and state, each
//! with its person masked; shown with their history; and acted on through the same path as the
//! caseworkers' topic ([`act`]).

use serde::Serialize;
use sqlx::Row;

use crate::db::Database;

/// One task as `doudi tasks list --json` prints it (one object per line).
#[derive(Clone, Debug, Serialize)]
pub struct TaskLine {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub household_id: Option<String>,
    /// The person, masked (`2201**********0015`).
    pub person: Option<String>,
    pub region: String,
    pub created_on: String,
    /// Days since the task was raised, as of `today`.
    pub age_days: i64,
    pub rule: Option<String>,
    /// The date by which it should be resolved.
    pub due_on: Option<String>,
    /// Open or in progress past `due_on`.
    pub overdue: bool,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub kind: Option<String>,
    pub state: Option<String>,
    pub limit: usize,
}

/// The tasks that pass `filter`, oldest first (then by id, so the order is stable).
pub async fn list(db: &Database, filter: &TaskFilter, today: chrono::NaiveDate) -> Result<Vec<TaskLine>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT task_id, kind, state, household_id, id_number, region, created_on, rule, due_on FROM review_tasks \
         WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR state = $2) ORDER BY created_on, task_id LIMIT $3",
    )
    .bind(filter.kind.clone().unwrap_or_default())
    .bind(filter.state.clone().unwrap_or_default())
    .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let created_on: String = r.get("created_on");
            let age_days = chrono::NaiveDate::parse_from_str(&created_on, "%Y-%m-%d").map(|d| (today - d).num_days()).unwrap_or(0);
            let state: String = r.get("state");
            let due_on: Option<String> = r.get("due_on");
            let overdue = matches!(state.as_str(), "open" | "in_progress")
                && due_on.as_deref().and_then(crate::dates::ymd).is_some_and(|d| d < today);
            TaskLine {
                id: r.get("task_id"),
                kind: r.get("kind"),
                state,
                household_id: r.get("household_id"),
                person: r.get::<Option<String>, _>("id_number").map(|id| crate::idnum::mask(&id)),
                region: r.get("region"),
                created_on,
                age_days,
                rule: r.get("rule"),
                due_on,
                overdue,
            }
        })
        .collect())
}

/// Why an action on a task was not taken.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no review task {0}")]
    NotFound(String),
    /// The action does not fit the task or the schema (no personal data).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Apply(#[from] super::ApplyError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<crate::db::DbError> for TaskError {
    fn from(e: crate::db::DbError) -> Self {
        TaskError::Apply(super::ApplyError::Db(e))
    }
}

/// One stored transition of a task.
#[derive(Clone, Debug, Serialize)]
pub struct TransitionLine {
    pub from: String,
    pub to: String,
    pub actor: String,
    pub via: String,
    pub assignee: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

/// A held fact as a caseworker sees it: where it came from, never its value.
#[derive(Clone, Debug, Serialize)]
pub struct HeldLine {
    pub source: String,
    pub field: String,
    pub effective_date: Option<String>,
    pub source_file: Option<String>,
    pub source_row: Option<String>,
}

/// A task with its history, what is held for it and what may resolve it (`doudi tasks show`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub line: TaskLine,
    pub detail: String,
    pub assignee: Option<String>,
    pub outcome: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    pub due_on: Option<String>,
    pub overdue: bool,
    /// The outcomes a resolution may give.
    pub outcomes: Vec<String>,
    pub transitions: Vec<TransitionLine>,
    /// identity_conflict: the facts held until it is resolved.
    pub held_facts: Vec<HeldLine>,
}

/// The stored task `task_id`.
pub async fn find(db: &Database, task_id: &str) -> Result<Option<super::casework::TaskRow>, TaskError> {
    let sql = format!("SELECT {} FROM review_tasks WHERE task_id = $1", super::casework::TASK_COLUMNS);
    let mut conn = crate::db::sql::Pooled::acquire(db).await?;
    let rows = conn.conn().fetch(sql, vec![crate::db::sql::t(task_id)]).await?;
    Ok(match rows.first() {
        Some(r) => Some(super::casework::task_row(r)?),
        None => None,
    })
}

/// The task with its transitions and held facts, the person masked.
pub async fn show(db: &Database, task_id: &str, today: chrono::NaiveDate) -> Result<TaskDetail, TaskError> {
    let task = find(db, task_id).await?.ok_or_else(|| TaskError::NotFound(task_id.to_string()))?;
    let transitions = sqlx::query(
        "SELECT from_state, to_state, actor, via, assignee, outcome, reason, at FROM review_task_transitions WHERE task_id = $1 ORDER BY id",
    )
    .bind(task_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| TransitionLine {
        from: r.get("from_state"),
        to: r.get("to_state"),
        actor: r.get("actor"),
        via: r.get("via"),
        assignee: r.get("assignee"),
        outcome: r.get("outcome"),
        reason: r.get("reason"),
        at: r.get("at"),
    })
    .collect();
    let mut held_facts = Vec::new();
    if task.kind == "identity_conflict"
        && let Some(id) = &task.id_number
    {
        for r in sqlx::query(
            "SELECT source, field, effective_date, source_file, source_row FROM facts WHERE id_number = $1 AND state = 'held' ORDER BY id",
        )
        .bind(id)
        .fetch_all(db.pool())
        .await?
        {
            held_facts.push(HeldLine {
                source: r.get("source"),
                field: r.get("field"),
                effective_date: r.get("effective_date"),
                source_file: r.get("source_file"),
                source_row: r.get("source_row"),
            });
        }
    }
    let created = chrono::NaiveDate::parse_from_str(&task.created_on, "%Y-%m-%d").ok();
    let open = matches!(task.state.as_str(), "open" | "in_progress");
    let overdue = open && task.due_on.as_deref().and_then(crate::dates::ymd).is_some_and(|d| d < today);
    Ok(TaskDetail {
        line: TaskLine {
            id: task.task_id.clone(),
            kind: task.kind.clone(),
            state: task.state.clone(),
            household_id: task.household_id.clone(),
            person: task.id_number.as_deref().map(crate::idnum::mask),
            region: task.region.clone(),
            created_on: task.created_on.clone(),
            age_days: created.map(|d| (today - d).num_days()).unwrap_or(0),
            rule: task.rule.clone(),
            due_on: task.due_on.clone(),
            overdue,
        },
        detail: task.detail.clone(),
        assignee: task.assignee.clone(),
        outcome: task.outcome.clone(),
        resolved_by: task.resolved_by.clone(),
        resolved_at: task.resolved_at.clone(),
        due_on: task.due_on.clone(),
        overdue,
        outcomes: if open { super::casework::outcomes(&task.kind).iter().map(|s| s.to_string()).collect() } else { Vec::new() },
        transitions,
        held_facts,
    })
}

/// Takes a caseworker's action (a `dept.civil.review-resolution.v1` payload) that came through
/// `via` (`cli` or `workbench`): checked against the schema and the task, then applied through
/// [`super::apply_batch`], the path of the topic's events, in a transaction of its own (tried again
/// when a matcher instance decided the same household meanwhile). Returns the task as it now is.
pub async fn act(
    db: &Database,
    ctx: &super::Context,
    via: &str,
    payload: serde_json::Value,
) -> Result<super::casework::TaskRow, TaskError> {
    use super::facts::{Extracted, Feed, extract};
    let schema = ctx.registry.for_topic(Feed::Resolution.topic()).map_err(|e| TaskError::Refused(e.to_string()))?;
    if let Some(v) = schema.violations(&payload).first() {
        return Err(TaskError::Refused(format!(
            "the action does not match {}: {} at {}",
            Feed::Resolution.topic(),
            v.message,
            if v.pointer.is_empty() { "/" } else { v.pointer.as_str() }
        )));
    }
    let Ok(Extracted::Resolution(resolution)) = extract(Feed::Resolution, &payload, ctx.today) else {
        return Err(TaskError::Refused("the action could not be read".into()));
    };
    let task = find(db, &resolution.task_id).await?.ok_or_else(|| TaskError::NotFound(resolution.task_id.clone()))?;
    super::casework::check(&task, &resolution.action).map_err(TaskError::Refused)?;
    if let super::facts::ResolutionAction::Resolve { household: Some((sent, _)), .. } = &resolution.action {
        super::casework::corrected_household(&ctx.registry, sent).map_err(TaskError::Refused)?;
    }
    let now = crate::db::now_rfc3339();
    let ce_id = crate::envelope::event_id(&format!("doudi://{via}"), &format!("{}/{now}", resolution.task_id), &payload);
    let event = super::Inbound {
        topic: via.to_string(),
        feed: Feed::Resolution,
        partition: 0,
        offset: 0,
        ce_id,
        recorded_at: now,
        source_file: None,
        source_row: None,
        payload,
    };
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let mut tx = crate::db::sql::Tx::begin(db).await?;
        match super::apply_batch(&mut tx.conn(), ctx, std::slice::from_ref(&event)).await {
            Ok(outcome) if outcome.invalid > 0 => {
                tx.rollback().await?;
                return Err(TaskError::Refused("the task changed meanwhile; look at it again with `doudi tasks show`".into()));
            }
            Ok(outcome) => {
                tx.commit().await?;
                break outcome;
            }
            Err(e) if attempt < 3 => {
                tracing::warn!("A caseworker's action is tried again: {e}");
                let _ = tx.rollback().await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    crate::audit::logged(&outcome.audit);
    find(db, &resolution.task_id).await?.ok_or_else(|| TaskError::NotFound(resolution.task_id.clone()))
}

/// The kinds of task the matcher raises.
pub const KINDS: [&str; 4] = ["identity_conflict", "cancel_dibao_refused_referrals", "deceased_member", "periodic_review_due"];

/// Sets the queue gauges per kind: open tasks (open or in progress), the age of the oldest, and how
/// many are past their deadline (`due_on` before `today`, China time). One statement over the open
/// tasks only, through their partial index.
pub async fn refresh_gauges(db: &Database, today: chrono::NaiveDate) -> Result<(), sqlx::Error> {
    let mut open: std::collections::BTreeMap<String, (i64, Option<String>, i64)> = std::collections::BTreeMap::new();
    for r in sqlx::query(
        "SELECT kind, COUNT(*) AS n, MIN(created_at) AS oldest, SUM(CASE WHEN due_on < $1 THEN 1 ELSE 0 END) AS overdue \
         FROM review_tasks WHERE state IN ('open', 'in_progress') GROUP BY kind",
    )
    .bind(today.to_string())
    .fetch_all(db.pool())
    .await?
    {
        open.insert(r.try_get("kind")?, (r.try_get("n")?, r.try_get("oldest")?, r.try_get::<Option<i64>, _>("overdue")?.unwrap_or(0)));
    }
    let now = chrono::Utc::now();
    for kind in KINDS {
        let (n, oldest, overdue) = open.get(kind).cloned().unwrap_or((0, None, 0));
        let age = oldest.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map_or(0.0, |t| {
            let ms = (now - t.with_timezone(&chrono::Utc)).num_milliseconds();
            std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()
        });
        metrics::gauge!("doudi_review_tasks_open", "kind" => kind).set(n as f64);
        metrics::gauge!("doudi_review_tasks_oldest_open_seconds", "kind" => kind).set(age);
        metrics::gauge!("doudi_review_tasks_overdue", "kind" => kind).set(overdue as f64);
    }
    Ok(())
}

/// Refreshes the queue gauges every `interval` until `shutdown`; a failure (the database is away)
/// is logged and tried again at the next interval.
pub async fn refresh_gauges_every(db: Database, interval: std::time::Duration, shutdown: crate::lifecycle::Shutdown) {
    let mut stop = std::pin::pin!(shutdown.requested());
    loop {
        if let Err(e) = refresh_gauges(&db, crate::db::china_date(chrono::Utc::now())).await {
            tracing::warn!("Refreshing the review-task gauges failed: {e}");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
