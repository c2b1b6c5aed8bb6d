//! Polling a PostgreSQL table by a cursor column.
//!
//! Guarantees: rows are read in cursor order strictly after the committed cursor, and each batch
//! commits in one Kafka transaction together with its last cursor, so a restart resumes exactly
//! where the last commit left off. The cursor column must increase strictly with every change
//! (a sequence or a change counter); equal cursors across batches would be skipped.
//!
//! Rows are read only up to a *settled* cursor: the highest value the table held at least
//! `settle_secs` ago. Concurrent transactions commit out of cursor order (one takes sequence value
//! 5, another 6; 6 commits first); reading 6 at once would move the cursor past 5 for ever. Waiting
//! until 6 has been the highest value for `settle_secs` gives 5's transaction that long to commit.
//! It costs that much latency, and one indexed `MAX` per poll.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use super::daemon::RunLog;
use super::mapping::{ErrorCode, Fields};
use super::run::{ConnectError, Connector};
use super::source::{Item, RawRecord, ReadFailure};

/// A table to poll (identifiers were checked by the config loader).
pub struct Source {
    pub url_env: String,
    pub table: String,
    pub cursor_column: String,
    pub cursor_type: String,
    pub batch_rows: usize,
    pub settle: Duration,
}

/// The SQL that reads the next batch: after `$1` (the committed cursor), up to `$3` (the settled
/// cursor), at most `$2` rows.
pub fn batch_query(table: &str, cursor_column: &str, cursor_type: &str) -> String {
    format!(
        "SELECT row_to_json(t)::text AS record, t.{cursor_column}::text AS cursor FROM {table} t \
         WHERE ($1::text IS NULL OR t.{cursor_column} > $1::{cursor_type}) AND t.{cursor_column} <= $3::{cursor_type} \
         ORDER BY t.{cursor_column} LIMIT $2"
    )
}

/// The highest cursor value of a table, as seen over time: the settled one is the highest seen at
/// least `settle` ago.
pub struct Settling {
    settle: Duration,
    max_query: String,
    /// Values seen, oldest first, with when they were first seen.
    seen: VecDeque<(Instant, String)>,
}

impl Settling {
    pub fn new(table: &str, cursor_column: &str, settle: Duration) -> Self {
        Settling { settle, max_query: format!("SELECT MAX(t.{cursor_column})::text FROM {table} t"), seen: VecDeque::new() }
    }

    /// Looks at the table's highest cursor now; returns the settled one, if any yet.
    pub async fn settled(&mut self, pool: &sqlx::PgPool) -> Result<Option<String>, ConnectError> {
        let now: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(self.max_query.clone()))
            .fetch_one(pool)
            .await
            .map_err(|e| ConnectError::Io { path: "source table".into(), message: e.to_string() })?;
        let at = Instant::now();
        if let Some(value) = now
            && self.seen.back().is_none_or(|(_, last)| *last != value)
        {
            self.seen.push_back((at, value));
        }
        // Keep only the newest of the values old enough, and what came after it.
        while self.seen.len() > 1 && self.seen.get(1).is_some_and(|(t, _)| at.duration_since(*t) >= self.settle) {
            self.seen.pop_front();
        }
        Ok(self.seen.front().filter(|(t, _)| at.duration_since(*t) >= self.settle).map(|(_, v)| v.clone()))
    }
}

/// Reads one batch after the committed cursor, up to `settled`, and commits it; returns how many
/// rows were read.
pub async fn poll_once(
    connector: &mut Connector,
    pool: &sqlx::PgPool,
    query: &str,
    batch_rows: usize,
    settled: Option<&str>,
) -> Result<(u64, super::run::Summary), ConnectError> {
    let Some(settled) = settled else { return Ok((0, super::run::Summary::default())) };
    let cursor = connector.position("cursor").and_then(|p| p.cursor.clone());
    let rows = sqlx::query(sqlx::AssertSqlSafe(query.to_string()))
        .bind(cursor.clone())
        .bind(batch_rows as i64)
        .bind(settled)
        .fetch_all(pool)
        .await
        .map_err(|e| ConnectError::Io { path: "source table".into(), message: e.to_string() })?;
    if rows.is_empty() {
        return Ok((0, super::run::Summary::default()));
    }
    let mut items = Vec::with_capacity(rows.len());
    let mut last_cursor = cursor;
    for (i, row) in rows.iter().enumerate() {
        let n = i as u64 + 1;
        let text: String = row.try_get("record").unwrap_or_default();
        last_cursor = row.try_get::<Option<String>, _>("cursor").ok().flatten().or(last_cursor);
        items.push(match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(map)) => {
                Item::Record(RawRecord { row: n, sheet: None, fields: Fields::Object(map), original: text.into_bytes() })
            }
            _ => Item::Failure(ReadFailure {
                row: n,
                sheet: None,
                code: ErrorCode::Parse,
                column: None,
                reason: "数据库行无法读取".into(),
                original: text.into_bytes(),
            }),
        });
    }
    let count = items.len() as u64;
    let summary = connector.process_items("cursor", "table", items, last_cursor, None).await?;
    Ok((count, summary))
}

pub async fn run(
    mut connector: Connector,
    runs: RunLog,
    source: &Source,
    poll_secs: u64,
    shutdown: crate::lifecycle::Shutdown,
) -> Result<(), ConnectError> {
    let url_env = &source.url_env;
    let url = std::env::var(url_env)
        .map_err(|_| ConnectError::Config(format!("transport.url_env: environment variable {url_env} is not set")))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .map_err(|e| ConnectError::Io { path: "source database".into(), message: e.to_string() })?;
    let query = batch_query(&source.table, &source.cursor_column, &source.cursor_type);
    let mut settling = Settling::new(&source.table, &source.cursor_column, source.settle);
    let feed = connector.config.connector.name.clone();
    tracing::info!(connector = %feed, table = %source.table, cursor_column = %source.cursor_column, settle = ?source.settle, "polling the source table");
    let mut stop = std::pin::pin!(shutdown.clone().requested());
    loop {
        let polled = match settling.settled(&pool).await {
            Ok(settled) => poll_once(&mut connector, &pool, &query, source.batch_rows, settled.as_deref()).await,
            Err(e) => Err(e),
        };
        match polled {
            Ok((n, summary)) if n > 0 => {
                runs.record("ok", &serde_json::to_value(&summary).unwrap_or_default()).await;
                if n as usize == source.batch_rows && !shutdown.is_requested() {
                    continue; // more rows are waiting
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(connector = %feed, error = %e, "polling failed; retrying"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(poll_secs)) => {}
        }
    }
}
