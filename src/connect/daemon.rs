//! A connector as a long-running process: watch a drop folder, serve HTTP push, or poll a table.
//!
//! Guarantees:
//! - a file is read only once it is complete, by the connector's convention (a marker file, a
//!   rename into the folder, or a size and modification time that stay unchanged);
//! - a file moves to `done/` only after its last transaction committed; to `failed/` (with a
//!   `.reason.txt` beside it) when it cannot be read at all, or after `max_attempts` failures in a
//!   row, and the daemon goes on with the next file;
//! - a broker outage is no file's fault: the daemon returns the error, waits with backoff and
//!   starts again, and the file stays in place;
//! - each processed source is recorded as a job run in the database; the last successful one,
//!   read back at start, feeds `doudi_connector_last_success_timestamp_seconds`, so the "connector
//!   late" alert holds across restarts, for every transport. SIGTERM or SIGINT stops between files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;

use super::config::{Completion, Transport};
use super::run::{ConnectError, Connector};
use crate::config::{DatabaseSettings, Settings};
use crate::db::Database;
use crate::error::{Class, Classify};
use crate::lifecycle::Shutdown;

/// Runs the connector's transport until stopped.
pub async fn run(connector: Connector, settings: &Settings, shutdown: Shutdown) -> Result<(), ConnectError> {
    let runs = RunLog::new(&settings.database, &connector.config.connector.name).await;
    match connector.config.transport.clone() {
        Transport::Manual => Err(ConnectError::Config("transport is `manual`: use --input FILE --once".into())),
        Transport::DropFolder { path, pattern, poll_secs, complete, stable_secs, max_attempts } => {
            let folder = DropFolder {
                dir: path,
                pattern,
                poll: Duration::from_secs(poll_secs),
                complete,
                stable: Duration::from_secs(stable_secs),
                max_attempts,
            };
            folder.watch(connector, runs, settings, shutdown).await
        }
        Transport::Http { bind, port, token_env, max_body_bytes } => {
            let tls = settings.http.data_tls().map_err(|e| ConnectError::Config(e.to_string()))?;
            let endpoint = super::push::Endpoint { bind: &bind, port, token_env: &token_env, max_body_bytes, tls };
            super::push::serve(connector, runs, endpoint, shutdown).await
        }
        Transport::PostgresPoll { url_env, table, cursor_column, cursor_type, poll_secs, batch_rows, settle_secs } => {
            let source =
                super::poll::Source { url_env, table, cursor_column, cursor_type, batch_rows, settle: Duration::from_secs(settle_secs) };
            super::poll::run(connector, runs, &source, poll_secs, shutdown).await
        }
    }
}

/// A connector's job runs in the database. The database may be away when the daemon starts or
/// later: recording is then retried at the next run, and never stops the feed.
pub struct RunLog {
    settings: DatabaseSettings,
    feed: String,
    db: Mutex<Option<Database>>,
}

impl RunLog {
    /// Connects if it can, and restores the connector's last success (or first run) into its gauge.
    pub async fn new(settings: &DatabaseSettings, feed: &str) -> Self {
        let log = RunLog { settings: settings.clone(), feed: feed.to_string(), db: Mutex::new(None) };
        let since = match log.database().await {
            Some(db) => db.last_success_or_first_run("connector", feed).await.ok().flatten(),
            None => None,
        };
        let at = since
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp())
            // Never ran: lateness counts from now, and the first run recorded keeps it across restarts.
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        metrics::gauge!("doudi_connector_last_success_timestamp_seconds", "connector" => feed.to_string()).set(at as f64);
        log
    }

    async fn database(&self) -> Option<Database> {
        let mut db = self.db.lock().await;
        if db.is_none() {
            match Database::connect(&self.settings).await {
                Ok(connected) => *db = Some(connected),
                Err(e) => tracing::warn!(connector = %self.feed, error = %e, "the database is unavailable; this job run is not recorded"),
            }
        }
        db.clone()
    }

    /// Records a run; an `ok` run also moves the connector's last-success gauge. Failing to record
    /// is logged, never fatal.
    pub async fn record(&self, outcome: &str, summary: &serde_json::Value) {
        if outcome == "ok" {
            metrics::gauge!("doudi_connector_last_success_timestamp_seconds", "connector" => self.feed.clone())
                .set(chrono::Utc::now().timestamp() as f64);
        }
        let Some(db) = self.database().await else { return };
        let result = async {
            let id = db.start_job("connector", &self.feed).await?;
            db.finish_job(id, outcome, summary).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(connector = %self.feed, error = %e, "could not record the job run");
            // The next run connects afresh.
            *self.db.lock().await = None;
        }
    }
}

/// Names an upload tool gives a file still being written.
const IN_PROGRESS_SUFFIXES: [&str; 5] = [".tmp", ".part", ".partial", ".filepart", ".uploading"];
const MARKER_SUFFIXES: [&str; 2] = [".done", ".ok"];

struct DropFolder {
    dir: PathBuf,
    pattern: String,
    poll: Duration,
    complete: Completion,
    stable: Duration,
    max_attempts: u32,
}

/// What the folder watch remembers of a file between scans.
#[derive(Default)]
struct Seen {
    /// Size and modification time, and since when they have been so.
    shape: Option<((u64, SystemTime), Instant)>,
    failures: u32,
}

impl DropFolder {
    fn candidates(&self) -> Vec<PathBuf> {
        let matcher = glob::Pattern::new(&self.pattern).ok();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        !name.starts_with('.')
                            && !IN_PROGRESS_SUFFIXES.iter().chain(MARKER_SUFFIXES.iter()).any(|s| name.ends_with(s))
                            && matcher.as_ref().is_none_or(|m| m.matches(&name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    fn marker(file: &Path) -> Option<PathBuf> {
        MARKER_SUFFIXES.iter().map(|s| PathBuf::from(format!("{}{s}", file.display()))).find(|m| m.exists())
    }

    /// Whether `file` is complete by the folder's convention.
    fn is_complete(&self, file: &Path, seen: &mut Seen) -> bool {
        match self.complete {
            Completion::Rename => true,
            Completion::Marker => Self::marker(file).is_some(),
            Completion::Stable => {
                let Ok(meta) = std::fs::metadata(file) else { return false };
                let shape = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                match seen.shape {
                    Some((previous, since)) if previous == shape => since.elapsed() >= self.stable,
                    _ => {
                        seen.shape = Some((shape, Instant::now()));
                        false
                    }
                }
            }
        }
    }

    /// Moves a file (and its marker) into `folder` beside it.
    fn move_into(file: &Path, folder: &str) -> std::io::Result<PathBuf> {
        let marker = Self::marker(file);
        let dir = file.parent().unwrap_or(Path::new(".")).join(folder);
        std::fs::create_dir_all(&dir)?;
        let target = dir.join(file.file_name().unwrap_or_default());
        std::fs::rename(file, &target)?;
        if let Some(marker) = marker {
            let _ = std::fs::rename(&marker, dir.join(marker.file_name().unwrap_or_default()));
        }
        Ok(target)
    }

    fn fail(&self, feed: &str, file: &Path, label: &str, reason: &str) {
        metrics::counter!("doudi_connector_files_failed_total", "connector" => feed.to_string()).increment(1);
        match Self::move_into(file, "failed") {
            Ok(target) => {
                if let Err(e) = std::fs::write(target.with_extension("reason.txt"), reason) {
                    tracing::error!(connector = %feed, file = %label, error = %e, "could not write the reason beside the failed file");
                }
            }
            Err(e) => tracing::error!(connector = %feed, file = %label, error = %e, "could not move the file to failed/"),
        }
    }

    async fn watch(self, mut connector: Connector, runs: RunLog, settings: &Settings, shutdown: Shutdown) -> Result<(), ConnectError> {
        let feed = connector.config.connector.name.clone();
        tracing::info!(connector = %feed, folder = %self.dir.display(), pattern = %self.pattern, complete = ?self.complete, "watching the drop folder");
        let mut stop = std::pin::pin!(shutdown.clone().requested());
        let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
        loop {
            let files = self.candidates();
            seen.retain(|path, _| files.contains(path));
            for file in files {
                if shutdown.is_requested() {
                    break;
                }
                let state = seen.entry(file.clone()).or_default();
                if !self.is_complete(&file, state) {
                    continue;
                }
                let label = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match connector.process_file(&file).await {
                    Ok(summary) => {
                        runs.record("ok", &serde_json::to_value(&summary).unwrap_or_default()).await;
                        seen.remove(&file);
                        if let Err(e) = Self::move_into(&file, "done") {
                            tracing::error!(connector = %feed, file = %label, error = %e, "processed, but could not move the file to done/; it will be recognised as processed");
                        }
                    }
                    Err(ConnectError::Source(e)) => {
                        tracing::error!(connector = %feed, file = %label, error = %e, "the file cannot be read; moved to failed/ — an operator must act");
                        runs.record("failed", &serde_json::json!({"file": label, "error": e.to_string()})).await;
                        seen.remove(&file);
                        self.fail(&feed, &file, &label, &e.to_string());
                    }
                    Err(e) if e.class() == Class::Infrastructure && !crate::kafka::reachable(&settings.kafka).await => {
                        // The broker is away: no file's fault. The daemon waits it out and starts again.
                        return Err(e);
                    }
                    Err(e) => {
                        runs.record("failed", &serde_json::json!({"file": label, "error": e.to_string()})).await;
                        let failures = {
                            let state = seen.entry(file.clone()).or_default();
                            state.failures += 1;
                            state.failures
                        };
                        if failures >= self.max_attempts {
                            tracing::error!(connector = %feed, file = %label, failures, error = %e, "the file failed too many times in a row; moved to failed/ — an operator must act");
                            let reason = format!("{failures} attempts in a row failed; the last: {e}");
                            seen.remove(&file);
                            self.fail(&feed, &file, &label, &reason);
                        } else {
                            tracing::error!(connector = %feed, file = %label, failures, max_attempts = self.max_attempts, error = %e, "processing failed; the file stays and will be retried");
                            // The next file is not held up by this one.
                        }
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!(connector = %feed, "stopping");
                    return Ok(());
                }
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}
