//! `doudi doctor`: proves that this process can reach every real part it depends on.
//!
//! It loads the configuration, opens and migrates the database, writes and reads back a job run,
//! and sends one message through the broker and back (random topic and group, deleted afterwards).
//! Each step is reported with its outcome and timing; no step is skipped silently.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Settings, redact_url};
use crate::db::Database;
use crate::kafka;

/// The outcome of one check.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub millis: u128,
}

/// Runs every check; `kafka` false skips the broker (reported as skipped, not as passed).
pub async fn run(settings: &Settings, with_kafka: bool) -> Vec<Check> {
    let mut checks = Vec::new();

    let started = Instant::now();
    let db = Database::connect(&settings.database).await;
    match &db {
        Ok(db) => {
            let version = db.schema_version().await.unwrap_or(-1);
            checks.push(Check {
                name: "database",
                ok: true,
                detail: format!("{} ({:?}), {version} migrations applied", redact_url(&settings.database.url), db.backend()),
                millis: started.elapsed().as_millis(),
            });
        }
        Err(e) => checks.push(Check { name: "database", ok: false, detail: e.to_string(), millis: started.elapsed().as_millis() }),
    }
    if let Ok(db) = &db {
        let started = Instant::now();
        let detail = async {
            let id = db.start_job("doctor", "self-check").await?;
            db.finish_job(id, "ok", &serde_json::json!({"checks": "database"})).await?;
            let run = db.job(id).await?;
            Ok::<_, crate::db::DbError>(match run {
                Some(run) if run.outcome == "ok" => (true, format!("wrote and read back job run {id}")),
                _ => (false, format!("job run {id} did not read back as written")),
            })
        }
        .await;
        let (ok, detail) = detail.unwrap_or_else(|e| (false, e.to_string()));
        checks.push(Check { name: "database write/read", ok, detail, millis: started.elapsed().as_millis() });
    }

    if with_kafka {
        let started = Instant::now();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("doudi.doctor.{suffix}");
        let group = format!("doudi-doctor-{suffix}");
        let result = kafka::round_trip(&settings.kafka, &topic, &group, Duration::from_secs(30)).await;
        let _ = kafka::delete_topics(&settings.kafka, &[&topic]).await;
        checks.push(match result {
            Ok(rt) => Check {
                name: "kafka round trip",
                ok: true,
                detail: format!(
                    "{} via {}: produced at partition {} offset {} in {} ms, read back (read_committed) in {} ms",
                    rt.topic, settings.kafka.bootstrap_servers, rt.partition, rt.offset, rt.produce_ms, rt.consume_ms
                ),
                millis: started.elapsed().as_millis(),
            },
            Err(e) => Check { name: "kafka round trip", ok: false, detail: e.to_string(), millis: started.elapsed().as_millis() },
        });
    } else {
        checks.push(Check { name: "kafka round trip", ok: true, detail: "skipped (--no-kafka)".into(), millis: 0 });
    }
    checks
}

/// The checks as a table, one line each.
pub fn render(checks: &[Check]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(out, "{:<20} {:<4} {:>6} ms  {}", check.name, if check.ok { "ok" } else { "FAIL" }, check.millis, check.detail);
    }
    out
}
