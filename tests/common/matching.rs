//! The matcher's database logic without Kafka: events applied with `apply_batch` in one
//! transaction each, as `doudi match` does, on SQLite and on the real PostgreSQL.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use doudi::db::Database;
use doudi::matcher::{BatchOutcome, Context, Feed, Inbound, Outbound, Tx, apply_batch};
use serde_json::Value;
use sqlx::Row;

pub fn context() -> Context {
    context_with(doudi::policy::Params::shipped().unwrap())
}

pub fn context_with(params: doudi::policy::Params) -> Context {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    Context {
        params: Arc::new(params),
        keys: doudi::envelope::KeyDeriver::from_secret(b"test-secret-0123456789"),
        registry: Arc::new(doudi::schema::Registry::load(&root.join("schemas")).unwrap()),
        outbound: Outbound::with_affixes("", ""),
        today: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        auditor: doudi::audit::Auditor::new(doudi::config::DEVELOPMENT_AUDIT_KEY.as_bytes()),
    }
}

/// The canonical record of a fixture (what the connector produced from the sample feed).
pub fn fixture(feed: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/fixtures").join(feed).join("expected.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|v| pick(v)).expect("fixture record")
}

pub fn household(id: &str) -> Value {
    fixture("civil-household", |v| v["household_id"] == id)
}

pub struct Feeder {
    pub offset: i64,
}

impl Feeder {
    pub fn event(&mut self, feed: Feed, payload: Value) -> Inbound {
        self.offset += 1;
        Inbound {
            topic: feed.topic().to_string(),
            feed,
            partition: 0,
            offset: self.offset,
            ce_id: uuid::Uuid::new_v4().to_string(),
            recorded_at: format!("2020-01-01T00:00:{:02}.000Z", self.offset % 60),
            source_file: Some("test.jsonl".into()),
            source_row: Some(self.offset.to_string()),
            payload,
        }
    }
}

pub async fn apply(db: &Database, ctx: &Context, events: &[Inbound]) -> BatchOutcome {
    let mut tx = Tx::begin(db).await.unwrap();
    let outcome = apply_batch(&mut tx.conn(), ctx, events).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

/// Outbox rows after id `after`: (topic, change or kind, masked person, payload).
pub async fn outbox_since(db: &Database, after: i64) -> Vec<(String, String, String, Value)> {
    let rows = sqlx::query("SELECT topic, payload FROM outbox WHERE id > $1 ORDER BY id").bind(after).fetch_all(db.pool()).await.unwrap();
    rows.iter()
        .map(|r| {
            let payload: Value = serde_json::from_str(&r.get::<String, _>("payload")).unwrap();
            let what = payload.get("change").or_else(|| payload.get("kind")).and_then(Value::as_str).unwrap_or("status").to_string();
            let label = match payload.get("kind").and_then(Value::as_str) {
                Some(kind) if payload.get("change").is_some() => format!("{what} {kind}"),
                _ => what,
            };
            let person = payload["id_number"].as_str().map(doudi::idnum::mask).unwrap_or_default();
            (r.get::<String, _>("topic"), label, person, payload)
        })
        .collect()
}

pub async fn last_outbox_id(db: &Database) -> i64 {
    sqlx::query("SELECT COALESCE(MAX(id), 0) AS n FROM outbox").fetch_one(db.pool()).await.unwrap().get::<i64, _>("n")
}

pub fn labels(rows: &[(String, String, String, Value)]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|(t, l, p, _)| format!("{t} {l} {p}")).collect();
    v.sort();
    v
}

pub fn sorted(expected: Vec<&str>) -> Vec<String> {
    let mut v: Vec<String> = expected.into_iter().map(String::from).collect();
    v.sort();
    v
}

pub async fn both_backends<F, Fut>(scenario: F)
where
    F: Fn(Database) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (settings, _dir) = super::sqlite();
    scenario(Database::connect(&settings).await.unwrap()).await;
    let pg = super::fresh_postgres().await;
    scenario(Database::connect(&pg.settings).await.unwrap()).await;
}

pub async fn category(db: &Database, household_id: &str) -> (String, String) {
    let r = sqlx::query("SELECT d.category, d.monthly_payment FROM decisions d JOIN households h ON h.household_id = d.household_id AND h.decision_version = d.version WHERE d.household_id = $1")
        .bind(household_id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    (r.get("category"), r.get("monthly_payment"))
}

/// `doudi review --date` on `db`: what was due.
pub async fn review_on(db: Database, ctx: Context, date: &str) -> doudi::matcher::calendar::Due {
    let date: chrono::NaiveDate = date.parse().unwrap();
    doudi::matcher::calendar::review(&db, &ctx, date, 100).await.unwrap().0
}
