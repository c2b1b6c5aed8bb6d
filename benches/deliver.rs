//! Webhook delivery rate against the HTTP round trips alone, to the same test agency, in one run.
//!
//! `cargo bench --bench deliver` (the broker from scripts/kafka via DOUDI_KAFKA_BOOTSTRAP_SERVERS,
//! PostgreSQL from scripts/postgres via DOUDI_TEST_DATABASE_URL) publishes DOUDI_BENCH_ROWS
//! entitlement events (default 5,000; one key per three events, over three partitions) to a topic
//! of this run, with their pending delivery rows, and delivers them with `doudi deliver`'s loop
//! (`deliver::run`, HTTP sink) to an agency on 127.0.0.1 that accepts every event: each event
//! POSTed with its idempotency key, marked delivered, its offset committed. Beside it, the limit:
//! the same bodies POSTed one after the other to the same agency with the same client settings, and
//! nothing else. The delivery rows of the run are deleted at the end.

#![allow(clippy::float_arithmetic)] // rates and durations in a benchmark report, never money

use std::time::{Duration, Instant};

use doudi::config::{DatabaseSettings, KafkaSettings};
use doudi::db::Database;
use doudi::deliver::{DeliverOptions, sink};
use rdkafka::producer::FutureRecord;

/// The allocator of the `doudi` binary, so the benchmark measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let events: usize = std::env::var("DOUDI_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let url = std::env::var("DOUDI_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://doudi:doudi@127.0.0.1:5432/doudi".into());
    let bootstrap = std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        doudi::deliver::sink::install_crypto_provider();
        let kafka = KafkaSettings { bootstrap_servers: bootstrap, ..KafkaSettings::default() };
        let db = Database::connect(&DatabaseSettings { url, ..DatabaseSettings::default() }).await.expect("database");
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("bench.{run}.exchange.entitlement.medical.v1");
        doudi::kafka::ensure_topic(&kafka, &topic, 3, 1).await.expect("topic");
        doudi::kafka::ensure_topic(&kafka, &doudi::topics::dead_letter_topic(&topic), 1, 1).await.expect("dead-letter topic");

        // The events and their pending deliveries.
        let producer = doudi::kafka::idempotent_producer(&kafka).expect("producer");
        let now = doudi::db::now_rfc3339();
        let mut bodies = Vec::with_capacity(events);
        let mut pending = Vec::with_capacity(events);
        for i in 0..events {
            let ce_id = uuid::Uuid::new_v4().to_string();
            let body = serde_json::json!({
                "event_id": ce_id, "change": "granted", "agency": "medical", "kind": "premium_subsidy_fixed",
                "id_number": "220102201106010037", "name": "王某", "household_id": format!("JL-220102-2019-{:06}", i / 3),
                "region": "220102", "effective_date": "2020-07-01", "yearly_amount": "150.00", "rules": ["D1"],
            })
            .to_string();
            let headers = doudi::envelope::binary_mode_headers(
                &ce_id,
                "doudi://matcher",
                &doudi::envelope::event_type("exchange.entitlement.medical.v1"),
                &now,
                "https://schemas.doudi.jl.gov.cn/entitlement-medical.v1.json",
                std::iter::empty(),
            );
            let key = format!("key-{}", i / 3);
            pending.push(producer.send_result(FutureRecord::to(&topic).key(&key).payload(&body).headers(headers)).expect("enqueue"));
            bodies.push((ce_id, body));
        }
        for p in pending {
            p.await.expect("delivery").expect("published");
        }
        let ids: Vec<String> = bodies.iter().map(|(id, _)| id.clone()).collect();
        let pool = db.postgres_pool().expect("the benchmark runs on PostgreSQL");
        sqlx::query(
            "INSERT INTO deliveries (ce_id, agency, kind, change, household_id, id_number, amount, effective_date, created_at, created_on, \
             state, updated_at) SELECT id, 'medical', 'premium_subsidy_fixed', 'granted', 'JL-220102-2019-000123', '220102201106010037', \
             '150.00', '2020-07-01', $2, '2020-07-01', 'pending', $2 FROM UNNEST($1::text[]) AS id",
        )
        .bind(&ids)
        .bind(&now)
        .execute(pool)
        .await
        .expect("pending deliveries");

        let (agency, seen) = agency().await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("medical-out.toml");
        std::fs::write(
            &path,
            format!(
                "[delivery]\nname = \"bench-{run}\"\nagency = \"medical\"\ndepartment = \"医保 medical insurance\"\n\n\
                 [sink]\nkind = \"http\"\nurl = \"{agency}\"\ntimeout_secs = 10\n"
            ),
        )
        .expect("config");
        let config = doudi::deliver::config::DeliveryConfig::load(&path).expect("config loads");
        let http = || sink::HttpSink::new(&agency, None, None, Duration::from_secs(10)).expect("client");
        let options = DeliverOptions {
            topic: topic.clone(),
            group: format!("bench-deliver-{run}"),
            until_idle: true,
            idle_after: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };

        let started = Instant::now();
        let summary = doudi::deliver::run(&db, &kafka, &config, &sink::Sink::Http(http()), &options, std::future::pending())
            .await
            .expect("delivery run");
        let delivered = started.elapsed();
        assert_eq!(summary.delivered as usize, events, "every event delivered");
        let marked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE ce_id = ANY($1) AND state = 'delivered'")
            .bind(&ids)
            .fetch_one(pool)
            .await
            .expect("count");

        // The limit: the same bodies POSTed one after the other, nothing else.
        let raw = sink::Sink::Http(http());
        let started = Instant::now();
        for (ce_id, body) in &bodies {
            let event = sink::Event {
                ce_id: ce_id.clone(),
                ce_type: String::new(),
                payload: serde_json::Value::Null,
                raw: body.clone().into_bytes(),
            };
            raw.send(&event).await.expect("accepted");
        }
        let posted = started.elapsed();

        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        println!("\n| events | doudi deliver (HTTP sink) | events/s | the same POSTs alone | POSTs/s | ratio |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {events} | {:.2} s (200 ms of it waiting to be idle) | {:.0} | {:.2} s | {:.0} | {:.2} |",
            delivered.as_secs_f64(),
            rate(delivered),
            posted.as_secs_f64(),
            rate(posted),
            posted.as_secs_f64() / delivered.as_secs_f64()
        );
        println!(
            "\n{marked} of {events} deliveries marked delivered; the agency saw {} requests (both runs).",
            seen.load(std::sync::atomic::Ordering::Relaxed)
        );
        sqlx::query("DELETE FROM deliveries WHERE ce_id = ANY($1)").bind(&ids).execute(pool).await.expect("clean up");
        db.close().await;
    });
}

/// A test agency on 127.0.0.1 that accepts every event; its URL and how many requests it saw.
async fn agency() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/entitlements",
        axum::routing::post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { "{}" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("agency") });
    (format!("http://{addr}/entitlements"), seen)
}
