//! A connector as a long-running process: watch a drop folder, serve HTTP push, or poll a table.
//!
//! Guarantees: a file moves to `done/` only after its last transaction committed, and to `failed/`
//! (with a `.reason.txt` beside it) only when it cannot be read at all; a broker failure leaves the
//! file in place to be retried. Each processed source is recorded as a job run in the database
//! (its last successful run feeds the status page). SIGTERM or SIGINT stops between files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::Transport;
use super::run::{ConnectError, Connector};
use crate::config::Settings;
use crate::db::Database;
use crate::lifecycle::Shutdown;

/// Runs the connector's transport until stopped.
pub async fn run(connector: Connector, settings: &Settings, shutdown: Shutdown) -> Result<(), ConnectError> {
    let db = match Database::connect(&settings.database).await {
        Ok(db) => Some(db),
        Err(e) => {
            tracing::warn!(error = %e, "the database is unavailable; job runs will not be recorded");
            None
        }
    };
    match connector.config.transport.clone() {
        Transport::Manual => Err(ConnectError::Config("transport is `manual`: use --input FILE --once".into())),
        Transport::DropFolder { path, pattern, poll_secs } => drop_folder(connector, db, &path, &pattern, poll_secs, shutdown).await,
        Transport::Http { bind, port, token_env, max_body_bytes } => {
            super::push::serve(connector, db, &bind, port, &token_env, max_body_bytes, shutdown).await
        }
        Transport::PostgresPoll { url_env, table, cursor_column, cursor_type, poll_secs, batch_rows } => {
            super::poll::run(connector, db, &url_env, &table, &cursor_column, &cursor_type, poll_secs, batch_rows, shutdown).await
        }
    }
}

/// Records a job run; failures to record are logged, never fatal.
pub async fn record_run(db: Option<&Database>, component: &str, name: &str, outcome: &str, summary: &serde_json::Value) {
    let Some(db) = db else { return };
    let result = async {
        let id = db.start_job(component, name).await?;
        db.finish_job(id, outcome, summary).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record the job run");
    }
}

fn files_to_process(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let matcher = glob::Pattern::new(pattern).ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    !name.starts_with('.') && matcher.as_ref().is_none_or(|m| m.matches(&name))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn move_into(file: &Path, folder: &str) -> std::io::Result<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new(".")).join(folder);
    std::fs::create_dir_all(&dir)?;
    let target = dir.join(file.file_name().unwrap_or_default());
    std::fs::rename(file, &target)?;
    Ok(target)
}

async fn drop_folder(
    mut connector: Connector,
    db: Option<Database>,
    dir: &Path,
    pattern: &str,
    poll_secs: u64,
    shutdown: Shutdown,
) -> Result<(), ConnectError> {
    let feed = connector.config.connector.name.clone();
    tracing::info!(connector = %feed, folder = %dir.display(), pattern, "watching the drop folder");
    let mut stop = std::pin::pin!(shutdown.requested());
    loop {
        for file in files_to_process(dir, pattern) {
            let label = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match connector.process_file(&file).await {
                Ok(summary) => {
                    let json = serde_json::to_value(&summary).unwrap_or_default();
                    record_run(db.as_ref(), "connector", &feed, "ok", &json).await;
                    metrics::gauge!("doudi_connector_last_success_timestamp_seconds", "connector" => feed.clone())
                        .set(chrono::Utc::now().timestamp() as f64);
                    if let Err(e) = move_into(&file, "done") {
                        tracing::error!(connector = %feed, file = %label, error = %e, "processed, but could not move the file to done/; it will be recognised as processed");
                    }
                }
                Err(ConnectError::Source(e)) => {
                    tracing::error!(connector = %feed, file = %label, error = %e, "the file cannot be read; moved to failed/ — an operator must act");
                    record_run(db.as_ref(), "connector", &feed, "failed", &serde_json::json!({"file": label, "error": e.to_string()}))
                        .await;
                    if let Ok(target) = move_into(&file, "failed") {
                        let _ = std::fs::write(target.with_extension("reason.txt"), e.to_string());
                    }
                }
                Err(e) => {
                    tracing::error!(connector = %feed, file = %label, error = %e, "processing stopped; the file stays and will be retried");
                    record_run(db.as_ref(), "connector", &feed, "failed", &serde_json::json!({"file": label, "error": e.to_string()}))
                        .await;
                    break;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => {
                tracing::info!(connector = %feed, "stopping");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(poll_secs)) => {}
        }
    }
}
