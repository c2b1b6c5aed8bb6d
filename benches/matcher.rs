//! Matcher apply rate into PostgreSQL against a raw batched upsert of the same rows, on the same
//! database, in one run.
//!
//! `cargo bench --bench matcher` (PostgreSQL from scripts/postgres via DOUDI_TEST_DATABASE_URL;
//! DOUDI_BENCH_ROWS households, default 5,000, each with a registration and an employment event)
//! applies the events with `apply_batch` in transactions of 500, exactly as `doudi match` does
//! after consuming them (identity, facts with provenance, stale check, re-assessment, entitlement
//! and review-task diffs, outbox rows, processed ids), into a fresh database. Two baselines on the
//! same database: the events themselves (ce_id, person, payload) upserted into one table with
//! multi-row INSERT … ON CONFLICT in transactions of 500, and **the same rows the matcher wrote**
//! (every row it added or changed, in every table, read back afterwards) upserted raw into copies
//! of those tables (same columns and indexes) in as many transactions as the matcher used, each
//! table's rows sent as one JSON array (`json_populate_recordset`). Kafka is not in the loop: the
//! consumer is not the limit here.
//!
//! Then a policy change (issue 7): the households were decided under the parameters before the
//! 2020-07-01 standards of the four prefectures; `policy_change::apply` records the shipped version
//! and re-evaluates every household as of 2020-07-01 in chunks of 1,000, writing decisions,
//! entitlement changes, outbox rows and deliveries; with DOUDI_KAFKA_BOOTSTRAP_SERVERS set, the
//! relay then publishes the deltas to topics of this run (`bench.<id>.exchange.*`). Beside it, the
//! same rows the re-evaluation wrote, upserted raw in as many transactions, two at a time like the
//! re-evaluation's chunks.

#![allow(clippy::float_arithmetic)] // rates and durations in a benchmark report, never money

use std::sync::Arc;
use std::time::Instant;

use doudi::config::DatabaseSettings;
use doudi::db::Database;
use doudi::matcher::{Context, Feed, Inbound, Outbound, apply_batch, synthetic};
use sqlx::{Acquire, Connection};

const BATCH: usize = 500;

/// The allocator of the `doudi` binary, so the benchmark measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let households: u32 = std::env::var("DOUDI_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let base = std::env::var("DOUDI_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://doudi:doudi@127.0.0.1:5432/doudi".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let name = format!("doudi_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create database");
        let url = format!("{}/{name}", base.rsplit_once('/').map(|x| x.0).unwrap_or(&base));
        let db = Database::connect(&DatabaseSettings { url, ..DatabaseSettings::default() }).await.expect("database");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut before = doudi::policy::Params::shipped().expect("policy");
        let july = chrono::NaiveDate::from_ymd_opt(2020, 7, 1).expect("date");
        before.dibao_standard.retain(|e| e.from < july);
        before.policy.version = "2019-07-01.1".into();
        let prefix = format!("bench.{}.", uuid::Uuid::new_v4().simple());
        let ctx = Context {
            params: Arc::new(before.clone()),
            keys: doudi::envelope::KeyDeriver::from_secret(b"bench-secret-0123456789"),
            registry: Arc::new(doudi::schema::Registry::load(&root.join("schemas")).expect("schemas")),
            outbound: Outbound::with_affixes(&prefix, ""),
            today: chrono::Local::now().date_naive(),
        };
        let mut events = Vec::with_capacity(households as usize * 2);
        for (feed, make) in
            [(Feed::Household, synthetic::household as fn(u32) -> serde_json::Value), (Feed::Employment, synthetic::employment)]
        {
            for n in 0..households {
                let offset = events.len() as i64;
                events.push(Inbound {
                    topic: feed.topic().into(),
                    feed,
                    partition: 0,
                    offset,
                    ce_id: uuid::Uuid::new_v4().to_string(),
                    recorded_at: "2020-01-10T00:00:00.000Z".into(),
                    source_file: Some("bench".into()),
                    source_row: Some(n.to_string()),
                    payload: make(n),
                });
            }
        }

        // Raw batched upsert of the same rows.
        sqlx::raw_sql("CREATE TABLE raw_events (ce_id TEXT PRIMARY KEY, id_number TEXT NOT NULL, payload TEXT NOT NULL)")
            .execute(db.pool())
            .await
            .expect("table");
        let started = Instant::now();
        for chunk in events.chunks(BATCH) {
            let mut conn = db.pool().acquire().await.expect("conn");
            let mut tx = conn.begin().await.expect("begin");
            let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
            let sql = format!(
                "INSERT INTO raw_events (ce_id, id_number, payload) VALUES {} ON CONFLICT (ce_id) DO UPDATE SET payload = excluded.payload",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                let id = e
                    .payload
                    .get("id_number")
                    .or_else(|| e.payload.pointer("/members/0/id_number"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                q = q.bind(e.ce_id.clone()).bind(id).bind(e.payload.to_string());
            }
            q.execute(&mut *tx).await.expect("upsert");
            tx.commit().await.expect("commit");
        }
        let raw = started.elapsed();

        // The matcher's apply path.
        let empty = snapshot(db.pool()).await;
        let started = Instant::now();
        let mut decisions = 0;
        let mut outbox = 0;
        for chunk in events.chunks(BATCH) {
            let mut conn = db.pool().acquire().await.expect("conn");
            let mut tx = conn.begin().await.expect("begin");
            let outcome = apply_batch(&mut tx, &ctx, chunk).await.expect("apply");
            tx.commit().await.expect("commit");
            decisions += outcome.decisions;
            outbox += outcome.outbox;
        }
        let matcher = started.elapsed();
        let written = snapshot(db.pool()).await;
        let same = SameRows::prepare(db.pool(), "apply", &empty, &written).await;
        let same_raw = same.upsert(db.pool(), events.len().div_ceil(BATCH), 1).await;
        let n = events.len() as f64;
        let events_rate = n / raw.as_secs_f64();
        let same_rate = n / same_raw.as_secs_f64();
        let matcher_rate = n / matcher.as_secs_f64();
        println!(
            "| events | matcher apply | raw upsert of the events | raw upsert of the same {} rows | matcher events/s | same rows raw, events/s | ratio | goal |",
            same.rows()
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.2} s | {:.2} s ({:.0}/s) | {:.2} s | {:.0} | {:.0} | {:.3} | ≥ 20,000/s and ≥ 0.5 — {} |",
            events.len(),
            matcher.as_secs_f64(),
            raw.as_secs_f64(),
            events_rate,
            same_raw.as_secs_f64(),
            matcher_rate,
            same_rate,
            matcher_rate / same_rate,
            if matcher_rate >= 20_000.0 && matcher_rate / same_rate >= 0.5 { "met" } else { "not met" }
        );
        println!(
            "\n{households} households: {decisions} decisions, {outbox} outbox rows; batches of {BATCH} events, one transaction each.\nRows written per table: {}.",
            same.per_table()
        );

        // A policy change: every household re-evaluated as of 2020-07-01.
        sqlx::raw_sql("UPDATE outbox SET sent_at = created_at").execute(db.pool()).await.expect("mark sent");
        doudi::matcher::policy_change::establish(&db, before.clone()).await.expect("establish");
        let new_ctx = Context { params: Arc::new(doudi::policy::Params::shipped().expect("policy")), ..ctx.clone() };
        let decided = snapshot(db.pool()).await;
        let started = Instant::now();
        let summary = doudi::matcher::policy_change::apply(&db, &new_ctx, 1_000).await.expect("apply");
        let reevaluated = started.elapsed();
        // Read before the relay marks the outbox rows sent: its bookkeeping is not the re-evaluation's.
        let reevaluated_rows = snapshot(db.pool()).await;
        let mut published = None;
        if let Ok(bootstrap) = std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS") {
            let kafka = doudi::config::KafkaSettings { bootstrap_servers: bootstrap, ..Default::default() };
            for topic in ctx.outbound.names.values() {
                doudi::kafka::ensure_topic(&kafka, topic, 12, 1).await.expect("topic");
            }
            let producer = doudi::kafka::idempotent_producer(&kafka).expect("producer");
            let started = Instant::now();
            let n = doudi::matcher::relay(&db, &producer).await.expect("relay");
            published = Some((n, started.elapsed()));
        }
        let same = SameRows::prepare(db.pool(), "policy", &decided, &reevaluated_rows).await;
        let chunks = (households as usize).div_ceil(1_000);
        let raw_same = same.upsert(db.pool(), chunks, 2).await;
        let end_to_end = reevaluated + published.map(|p| p.1).unwrap_or_default();
        let rate = f64::from(households) / end_to_end.as_secs_f64();
        let reevaluation_rate = f64::from(households) / reevaluated.as_secs_f64();
        let raw_rate = f64::from(households) / raw_same.as_secs_f64();
        println!(
            "\n| households re-evaluated | re-evaluation | publishing | households/s end to end | raw upsert of the same {} rows | raw households/s | re-evaluation / raw | 1,000,000 at the end-to-end rate | goal |",
            same.rows()
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.2} s | {} | {:.0} | {:.2} s | {:.0} | {:.3} | {:.0} s | < 60 s — {} |",
            summary.households,
            reevaluated.as_secs_f64(),
            published.map(|(n, d)| format!("{n} events in {:.2} s", d.as_secs_f64())).unwrap_or_else(|| "not measured (no broker)".into()),
            rate,
            raw_same.as_secs_f64(),
            raw_rate,
            reevaluation_rate / raw_rate,
            1_000_000.0 / rate,
            if 1_000_000.0 / rate < 60.0 { "met" } else { "not met" }
        );
        println!(
            "\npolicy {} → {}: regions {:?} from {:?}; {} decisions changed, {} outbox rows.",
            summary.previous_version.unwrap_or_default(),
            summary.version,
            summary.regions,
            summary.effective_date,
            summary.decisions,
            summary.outbox
        );
        println!("Rows written per table: {}.", same.per_table());
        drop(db);
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut admin).await;
    });
}

/// Every table of the run's database: its primary-key columns and every row as `row_to_json`
/// text, in primary-key order.
type Snapshot = std::collections::BTreeMap<String, (Vec<String>, Vec<String>)>;

async fn snapshot(pool: &sqlx::AnyPool) -> Snapshot {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
         AND table_name NOT LIKE 'raw\\_%' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut out = Snapshot::new();
    for table in tables {
        let key = primary_key(pool, &table).await;
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT row_to_json(x)::text FROM {table} x ORDER BY {}", key.join(", "))))
                .fetch_all(pool)
                .await
                .expect("rows");
        out.insert(table, (key, rows));
    }
    out
}

async fn primary_key(pool: &sqlx::AnyPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = CAST($1 AS regclass) AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
    )
    .bind(table.to_string())
    .fetch_all(pool)
    .await
    .expect("primary key")
}

/// The rows a stage added or changed, ready to be upserted raw into copies of their tables.
struct SameRows {
    /// (table, upsert statement, the rows in primary-key order)
    tables: Vec<(String, String, Vec<String>)>,
}

impl SameRows {
    /// Creates `raw_<stage>_<table>` (same columns, defaults and indexes) holding the rows of
    /// `before`, and keeps the rows of `after` that `before` does not have.
    async fn prepare(pool: &sqlx::AnyPool, stage: &str, before: &Snapshot, after: &Snapshot) -> SameRows {
        let mut tables = Vec::new();
        for (table, (key, rows)) in after {
            let old: std::collections::HashSet<&String> = before.get(table).map(|(_, r)| r.iter().collect()).unwrap_or_default();
            let changed: Vec<String> = rows.iter().filter(|r| !old.contains(r)).cloned().collect();
            if changed.is_empty() {
                continue;
            }
            let raw = format!("raw_{stage}_{table}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE TABLE {raw} (LIKE {table} INCLUDING ALL)")))
                .execute(pool)
                .await
                .expect("copy");
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table.clone())
            .fetch_all(pool)
            .await
            .expect("columns");
            let set: Vec<String> = columns.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
            let sql = format!(
                "INSERT INTO {raw} SELECT * FROM json_populate_recordset(NULL::{raw}, CAST($1 AS json)) ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                set.join(", ")
            );
            if let Some((_, existing)) = before.get(table).filter(|(_, r)| !r.is_empty()) {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(format!("[{}]", existing.join(","))).execute(pool).await.expect("seed");
            }
            tables.push((table.clone(), sql, changed));
        }
        SameRows { tables }
    }

    fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.2.len()).sum()
    }

    fn per_table(&self) -> String {
        self.tables.iter().map(|(table, _, rows)| format!("{table} {}", rows.len())).collect::<Vec<_>>().join(", ")
    }

    /// Upserts the rows in `transactions` transactions (each holding its share of every table),
    /// `parallel` at a time; returns the time taken.
    async fn upsert(&self, pool: &sqlx::AnyPool, transactions: usize, parallel: usize) -> std::time::Duration {
        let transactions = transactions.max(1);
        let work: Arc<Vec<Vec<(String, String)>>> = Arc::new(
            (0..transactions)
                .map(|i| {
                    self.tables
                        .iter()
                        .filter_map(|(_, sql, rows)| {
                            let per = rows.len().div_ceil(transactions);
                            let part = rows.get(i * per..((i + 1) * per).min(rows.len()))?;
                            (!part.is_empty()).then(|| (sql.clone(), format!("[{}]", part.join(","))))
                        })
                        .collect()
                })
                .collect(),
        );
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for lane in 0..parallel.max(1) {
            let (pool, work) = (pool.clone(), work.clone());
            running.spawn(async move {
                for statements in work.iter().skip(lane).step_by(parallel.max(1)) {
                    let mut conn = pool.acquire().await.expect("conn");
                    let mut tx = conn.begin().await.expect("begin");
                    for (sql, rows) in statements {
                        sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(rows.clone()).execute(&mut *tx).await.expect("raw upsert");
                    }
                    tx.commit().await.expect("commit");
                }
            });
        }
        while let Some(lane) = running.join_next().await {
            lane.expect("raw upsert lane");
        }
        started.elapsed()
    }
}
