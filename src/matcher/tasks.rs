//! The review tasks as a caseworker's queue: listed oldest first, filtered by kind and state, each
//! with its person masked. Read-only: resolving tasks is issue #32's next step.

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
        "SELECT task_id, kind, state, household_id, id_number, region, created_on, rule FROM review_tasks \
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
            TaskLine {
                id: r.get("task_id"),
                kind: r.get("kind"),
                state: r.get("state"),
                household_id: r.get("household_id"),
                person: r.get::<Option<String>, _>("id_number").map(|id| crate::idnum::mask(&id)),
                region: r.get("region"),
                created_on,
                age_days,
                rule: r.get("rule"),
            }
        })
        .collect())
}
