//! Polling a PostgreSQL table by a cursor column.
//!
//! Guarantees: rows are read in cursor order strictly after the committed cursor, and each batch
//! commits in one Kafka transaction together with its last cursor, so a restart resumes exactly
//! where the last commit left off. The cursor column must increase strictly with every change
//! (a sequence or a change counter); equal cursors across batches would be skipped.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use super::daemon::RunLog;
use super::mapping::{ErrorCode, Fields};
use super::run::{ConnectError, Connector};
use super::source::{Item, RawRecord, ReadFailure};

/// The SQL that reads the next batch (identifiers were checked by the config loader).
pub fn batch_query(table: &str, cursor_column: &str, cursor_type: &str) -> String {
    format!(
        "SELECT row_to_json(t)::text AS record, t.{cursor_column}::text AS cursor FROM {table} t \
         WHERE $1::text IS NULL OR t.{cursor_column} > $1::{cursor_type} ORDER BY t.{cursor_column} LIMIT $2"
    )
}

/// Reads one batch after `cursor` and commits it; returns how many rows were read.
pub async fn poll_once(
    connector: &mut Connector,
    pool: &sqlx::PgPool,
    query: &str,
    batch_rows: usize,
) -> Result<(u64, super::run::Summary), ConnectError> {
    let cursor = connector.position("cursor").and_then(|p| p.cursor.clone());
    let rows = sqlx::query(sqlx::AssertSqlSafe(query.to_string()))
        .bind(cursor.clone())
        .bind(batch_rows as i64)
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

#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut connector: Connector,
    runs: RunLog,
    url_env: &str,
    table: &str,
    cursor_column: &str,
    cursor_type: &str,
    poll_secs: u64,
    batch_rows: usize,
    shutdown: crate::lifecycle::Shutdown,
) -> Result<(), ConnectError> {
    let url = std::env::var(url_env)
        .map_err(|_| ConnectError::Config(format!("transport.url_env: environment variable {url_env} is not set")))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .map_err(|e| ConnectError::Io { path: "source database".into(), message: e.to_string() })?;
    let query = batch_query(table, cursor_column, cursor_type);
    let feed = connector.config.connector.name.clone();
    tracing::info!(connector = %feed, table, cursor_column, "polling the source table");
    let mut stop = std::pin::pin!(shutdown.clone().requested());
    loop {
        match poll_once(&mut connector, &pool, &query, batch_rows).await {
            Ok((n, summary)) if n > 0 => {
                runs.record("ok", &serde_json::to_value(&summary).unwrap_or_default()).await;
                if n as usize == batch_rows && !shutdown.is_requested() {
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
