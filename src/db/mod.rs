//! The shared recipient database: one code path over SQLite (embedded default) and PostgreSQL.
//!
//! Guarantees: [`Database::connect`] applies every pending migration of the backend in use before it
//! returns (`migrations/sqlite` or `migrations/postgres`, kept equivalent table for table), so a handle
//! always sees the current schema. Queries use `$1`-style placeholders, which both backends accept
//! through sqlx's `Any` driver; on PostgreSQL a second, native pool serves the matcher's bulk
//! transactions ([`Database::postgres_pool`]). Timestamps are stored as RFC 3339 UTC text, money as
//! decimal text.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Row};

use crate::config::{DatabaseSettings, redact_url};

mod dialect;
pub mod sql;

pub use dialect::Backend;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Errors of the database layer. Messages carry the redacted URL, never data.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating database {url} failed: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Rows bound as JSON text were not UTF-8, or a multi-row statement's rows were not of one
    /// shape (they are built from Rust values, so this would be a bug, reported rather than
    /// papered over).
    #[error("the rows for {0} could not be encoded")]
    Encoding(String),
}

/// A pooled connection to the recipient database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
    /// On PostgreSQL, a second pool through the native driver, for the matcher's transactions
    /// (inbound batches, the policy change, the calendar review) and its relay: the `Any` driver
    /// converts every row read and every value bound. Each pool opens at most `max_connections`.
    native: Option<sqlx::PgPool>,
    backend: Backend,
}

/// One row of `job_runs`: what a doudi job did and when, for operators (last successful run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRun {
    pub id: i64,
    pub component: String,
    pub name: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: String,
    pub summary: String,
}

impl Database {
    /// Connects, creating an SQLite file if missing, and runs pending migrations.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DbError> {
        install_default_drivers();
        let url = settings.url.clone();
        let backend = Backend::of_url(&url);
        let connect_error = |source| DbError::Connect { url: redact_url(&url), source };
        if backend == Backend::Sqlite {
            // Create the file (and let the pool share it) before the Any driver opens it.
            let options = SqliteConnectOptions::from_str(&url).map_err(connect_error)?.create_if_missing(true);
            let conn = sqlx::ConnectOptions::connect(&options).await.map_err(connect_error)?;
            sqlx::Connection::close(conn).await.map_err(connect_error)?;
        }
        let mut options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { settings.max_connections })
            .acquire_timeout(Duration::from_secs(settings.connect_timeout_secs));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.map_err(connect_error)?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|source| DbError::Migrate { url: redact_url(&url), source })?;
        let native = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                // The matcher's statements read and write a chunk's rows by key. A parallel plan
                // forks a worker process per statement for them, and on a small server that costs
                // more than it saves (BENCHMARKS.md, "No parallel workers, event ids beside their
                // household, chunks read by range").
                let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .map_err(connect_error)?
                    .options([("max_parallel_workers_per_gather", "0")]);
                Some(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(settings.max_connections)
                        .acquire_timeout(Duration::from_secs(settings.connect_timeout_secs))
                        .connect_with(options)
                        .await
                        .map_err(connect_error)?,
                )
            }
        };
        Ok(Self { pool, native, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection of both pools.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(native) = &self.native {
            native.close().await;
        }
    }

    /// The native PostgreSQL pool (`None` on SQLite).
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        self.native.as_ref()
    }

    /// The number of migrations applied, for `doudi doctor` and readiness.
    pub async fn schema_version(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations WHERE success").fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Cheap liveness query for `/readyz`.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records the start of a job and returns its id.
    pub async fn start_job(&self, component: &str, name: &str) -> Result<i64, DbError> {
        let now = now_rfc3339();
        let row = sqlx::query(
            "INSERT INTO job_runs (component, name, started_at, outcome, summary) VALUES ($1, $2, $3, 'running', '{}') RETURNING id",
        )
        .bind(component)
        .bind(name)
        .bind(&now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("id")?)
    }

    /// Records how a job ended. `summary` is a JSON object of counts; it must hold no personal data.
    pub async fn finish_job(&self, id: i64, outcome: &str, summary: &serde_json::Value) -> Result<(), DbError> {
        sqlx::query("UPDATE job_runs SET finished_at = $1, outcome = $2, summary = $3 WHERE id = $4")
            .bind(now_rfc3339())
            .bind(outcome)
            .bind(summary.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The latest run of each (component, name) that ended with `ok`.
    pub async fn last_successful_runs(&self) -> Result<Vec<JobRun>, DbError> {
        let rows = sqlx::query(
            "SELECT id, component, name, started_at, finished_at, outcome, summary FROM job_runs j \
             WHERE outcome = 'ok' AND id = (SELECT MAX(id) FROM job_runs k WHERE k.component = j.component AND k.name = j.name AND k.outcome = 'ok') \
             ORDER BY component, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_run_from_row).collect()
    }

    /// When a component last finished a run well (RFC 3339), or else when it first ran at all.
    pub async fn last_success_or_first_run(&self, component: &str, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query(
            "SELECT MAX(CASE WHEN outcome = 'ok' THEN finished_at END) AS ok_at, MIN(started_at) AS first_at \
             FROM job_runs WHERE component = $1 AND name = $2",
        )
        .bind(component)
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        let ok_at: Option<String> = row.try_get("ok_at")?;
        let first_at: Option<String> = row.try_get("first_at")?;
        Ok(ok_at.or(first_at))
    }

    /// One job run by id.
    pub async fn job(&self, id: i64) -> Result<Option<JobRun>, DbError> {
        let row = sqlx::query("SELECT id, component, name, started_at, finished_at, outcome, summary FROM job_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_run_from_row).transpose()
    }
}

fn job_run_from_row(row: &sqlx::any::AnyRow) -> Result<JobRun, DbError> {
    Ok(JobRun {
        id: row.try_get("id")?,
        component: row.try_get("component")?,
        name: row.try_get("name")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        outcome: row.try_get("outcome")?,
        summary: row.try_get("summary")?,
    })
}

/// Now, as RFC 3339 UTC with microseconds: sorts as text on both backends.
pub fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
}

/// A time as stored: RFC 3339 in UTC with microseconds (sorts as text).
pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// China Standard Time (UTC+8, no daylight saving): the calendar of the province's offices.
pub const CHINA_STANDARD_TIME: chrono::FixedOffset = match chrono::FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

/// The first millisecond (Unix epoch) of `date` in China Standard Time.
pub fn china_day_start_ms(date: chrono::NaiveDate) -> i64 {
    use chrono::TimeZone;
    CHINA_STANDARD_TIME.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default()).single().map_or(0, |t| t.timestamp_millis())
}

/// The calendar day of `at` in China Standard Time.
pub fn china_date(at: chrono::DateTime<chrono::Utc>) -> chrono::NaiveDate {
    at.with_timezone(&CHINA_STANDARD_TIME).date_naive()
}
