//! The database layer on both backends, from the same code: SQLite (embedded) and PostgreSQL (real
//! server started by scripts/postgres).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use doudi::config::DatabaseSettings;
use doudi::db::{Backend, Database};

async fn write_and_read(settings: &DatabaseSettings, backend: Backend) {
    let db = Database::connect(settings).await.expect("connect and migrate");
    assert_eq!(db.backend(), backend);
    assert!(db.schema_version().await.expect("version") >= 1);
    db.ping().await.expect("ping");
    let name = common::unique("job");
    let first = db.start_job("test", &name).await.expect("start");
    db.finish_job(first, "ok", &serde_json::json!({"read": 3})).await.expect("finish");
    let second = db.start_job("test", &name).await.expect("start");
    db.finish_job(second, "failed", &serde_json::json!({"error": "broker unreachable"})).await.expect("finish");
    assert!(second > first);
    let run = db.job(first).await.expect("read").expect("exists");
    assert_eq!((run.outcome.as_str(), run.summary.as_str()), ("ok", r#"{"read":3}"#));
    assert!(run.finished_at.is_some());
    let last: Vec<_> = db.last_successful_runs().await.expect("runs").into_iter().filter(|r| r.name == name).collect();
    assert_eq!(last.len(), 1, "the failed later run does not replace the last successful one");
    assert_eq!(last[0].id, first);
    // Connecting again does not re-apply migrations.
    let again = Database::connect(settings).await.expect("reconnect");
    assert_eq!(again.schema_version().await.unwrap(), db.schema_version().await.unwrap());
}

#[tokio::test]
async fn sqlite_write_and_read() {
    let (settings, _dir) = common::sqlite();
    write_and_read(&settings, Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_write_and_read() {
    // A fresh database: migrations are checked from the first one, whatever the server held before.
    let pg = common::fresh_postgres().await;
    write_and_read(&pg.settings, Backend::Postgres).await;
}

#[tokio::test]
async fn postgres_matcher_connections_plan_without_parallel_workers() {
    let pg = common::fresh_postgres().await;
    let db = Database::connect(&pg.settings).await.expect("connect and migrate");
    let native = db.postgres_pool().expect("a native pool on PostgreSQL");
    let setting: String = sqlx::query_scalar("SHOW max_parallel_workers_per_gather").fetch_one(native).await.expect("show");
    assert_eq!(setting, "0", "the matcher's key lookups fork no parallel workers");
    // Other connections (reports, `doudi show`) keep the server's setting, whatever the server's
    // configuration gives: the value is not one their connection set for itself.
    let source = "SELECT source FROM pg_settings WHERE name = 'max_parallel_workers_per_gather'";
    let shared: String = sqlx::query_scalar(source).fetch_one(db.pool()).await.expect("source");
    assert!(!matches!(shared.as_str(), "client" | "session"), "the shared pool keeps the server's value (set by: {shared})");
    let own: String = sqlx::query_scalar(source).fetch_one(native).await.expect("source");
    assert_eq!(own, "client", "the native pool asks for it when it connects");
    db.close().await;
}

#[tokio::test]
async fn postgres_outbox_skips_an_event_derived_again_with_or_without_a_household() {
    let pg = common::fresh_postgres().await;
    let db = Database::connect(&pg.settings).await.expect("connect and migrate");
    // The matcher's insert (store.rs), on the key of migration 0007.
    let insert = |household: Option<&'static str>, ce_id: &'static str| {
        sqlx::query(
            "INSERT INTO outbox (topic, message_key, ce_id, ce_type, dataschema, payload, household_id, source_time, created_at) \
             VALUES ('t', 'k', $1, 'x', 's', '{}', $2, 'now', 'now') ON CONFLICT (household_id, ce_id) DO NOTHING",
        )
        .bind(ce_id)
        .bind(household)
        .execute(db.pool())
    };
    for _ in 0..2 {
        insert(Some("H1"), "e1").await.expect("insert");
        insert(None, "e2").await.expect("insert");
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(db.pool()).await.expect("count");
    assert_eq!(rows, 2, "each event is queued once, with or without a household");
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_pending").fetch_one(db.pool()).await.expect("count");
    assert_eq!(queued, 2, "a skipped duplicate is not queued again");
    db.close().await;
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error_without_the_password() {
    let settings = DatabaseSettings {
        url: "postgres://doudi:s3cret@127.0.0.1:1/doudi".into(),
        connect_timeout_secs: 2,
        ..DatabaseSettings::default()
    };
    let err = Database::connect(&settings).await.expect_err("refused").to_string();
    assert!(err.contains("127.0.0.1:1") && !err.contains("s3cret"), "{err}");
}
