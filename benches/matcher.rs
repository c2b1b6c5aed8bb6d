//! Matcher apply rate into PostgreSQL against a raw batched upsert of the same rows, on the same
//! database, in one run.
//!
//! `cargo bench --bench matcher` (PostgreSQL from scripts/postgres via DOUDI_TEST_DATABASE_URL;
//! DOUDI_BENCH_ROWS households, default 5,000, each with a registration and an employment event)
//! applies the events with `apply_batch` in transactions of 500, exactly as `doudi match` does
//! after consuming them (identity, facts with provenance, stale check, re-assessment, entitlement
//! and review-task diffs, outbox rows, processed ids), into a fresh database. The baseline upserts
//! the same events (ce_id, person, payload) into one table with multi-row INSERT … ON CONFLICT in
//! transactions of 500. Kafka is not in the loop: the consumer is not the limit here.
//!
//! Then a policy change (issue 7): the households were decided under the parameters before the
//! 2020-07-01 standards of the four prefectures; `policy_change::apply` records the shipped version
//! and re-evaluates every household as of 2020-07-01 in chunks of 1,000, writing decisions,
//! entitlement changes, outbox rows and deliveries; with DOUDI_KAFKA_BOOTSTRAP_SERVERS set, the
//! relay then publishes the deltas to topics of this run (`bench.<id>.exchange.*`). Beside it, a raw
//! batched upsert of one decision-sized row per household on the same database.

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
        let n = events.len() as f64;
        let raw_rate = n / raw.as_secs_f64();
        let matcher_rate = n / matcher.as_secs_f64();
        println!("| events | matcher apply | raw batched upsert | matcher events/s | raw events/s | ratio | goal |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.2} s | {:.2} s | {:.0} | {:.0} | {:.3} | ≥ 20,000/s and ≥ 0.5 — {} |",
            events.len(),
            matcher.as_secs_f64(),
            raw.as_secs_f64(),
            matcher_rate,
            raw_rate,
            matcher_rate / raw_rate,
            if matcher_rate >= 20_000.0 && matcher_rate / raw_rate >= 0.5 { "met" } else { "not met" }
        );
        println!(
            "\n{households} households: {decisions} decisions, {outbox} outbox rows; batches of {BATCH} events, one transaction each."
        );

        // A policy change: every household re-evaluated as of 2020-07-01.
        sqlx::raw_sql("UPDATE outbox SET sent_at = created_at").execute(db.pool()).await.expect("mark sent");
        doudi::matcher::policy_change::establish(&db, before.clone()).await.expect("establish");
        let new_ctx = Context { params: Arc::new(doudi::policy::Params::shipped().expect("policy")), ..ctx.clone() };
        let started = Instant::now();
        let summary = doudi::matcher::policy_change::apply(&db, &new_ctx, 1_000).await.expect("apply");
        let reevaluated = started.elapsed();
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
        sqlx::raw_sql("CREATE TABLE raw_decisions (household_id TEXT PRIMARY KEY, decision TEXT NOT NULL)")
            .execute(db.pool())
            .await
            .expect("table");
        let sample: String = sqlx::query_scalar("SELECT decision FROM decisions LIMIT 1").fetch_one(db.pool()).await.expect("decision");
        let ids: Vec<String> = (0..households).map(|n| format!("H{n:07}")).collect();
        let started = Instant::now();
        for chunk in ids.chunks(1_000) {
            let mut conn = db.pool().acquire().await.expect("conn");
            let mut tx = conn.begin().await.expect("begin");
            let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
            let sql = format!(
                "INSERT INTO raw_decisions (household_id, decision) VALUES {} ON CONFLICT (household_id) DO UPDATE SET decision = excluded.decision",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone()).bind(sample.clone());
            }
            q.execute(&mut *tx).await.expect("upsert");
            tx.commit().await.expect("commit");
        }
        let raw_decisions = started.elapsed();
        let end_to_end = reevaluated + published.map(|p| p.1).unwrap_or_default();
        let rate = f64::from(households) / end_to_end.as_secs_f64();
        let raw_rate = f64::from(households) / raw_decisions.as_secs_f64();
        println!("\n| households re-evaluated | re-evaluation | publishing | households/s | raw decision upsert/s | ratio | 1,000,000 at this rate | goal |");
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.2} s | {} | {:.0} | {:.0} | {:.3} | {:.0} s | < 60 s — {} |",
            summary.households,
            reevaluated.as_secs_f64(),
            published.map(|(n, d)| format!("{n} events in {:.2} s", d.as_secs_f64())).unwrap_or_else(|| "not measured (no broker)".into()),
            rate,
            raw_rate,
            rate / raw_rate,
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
        drop(db);
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut admin).await;
    });
}
