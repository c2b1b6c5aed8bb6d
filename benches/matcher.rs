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
//! and re-evaluates every household as of 2020-07-01 in chunks of 1,000 (`DOUDI_BENCH_CHUNK`, as
//! `policy apply --chunk-size`), writing decisions,
//! entitlement changes, outbox rows and deliveries; with DOUDI_KAFKA_BOOTSTRAP_SERVERS set, the
//! relay publishes the deltas to topics of this run (`bench.<id>.exchange.*`) beside the
//! re-evaluation, a round whenever 5,000 are committed, as `doudi policy apply` does
//! (`relay_during`); the producer fetches the topics' metadata before the clock starts, as a
//! running relay's producer has. End to end is until the last delta is acknowledged.
//! `DOUDI_BENCH_RELAY_AFTER=1` publishes after the re-evaluation instead, as `policy apply` did
//! before (both modes are in BENCHMARKS.md). Beside it, the same rows the re-evaluation wrote,
//! upserted raw in as many transactions, three at a time like the re-evaluation's chunks (without
//! the relay's queue rows, which the relay has already deleted).
//!
//! At scale: `DOUDI_BENCH_COPIES=K` (at most 50) copies the decided households K − 1 times before
//! the policy change (new household ids, ID numbers of other issuing divisions with valid check
//! characters, their keys; the same facts, decisions and entitlements in force), so that
//! `DOUDI_BENCH_ROWS=20000 DOUDI_BENCH_COPIES=50` re-evaluates 1,000,000 households without deciding
//! each through the matcher first; the copies are vacuumed and analysed before the clock starts.
//! Above 100,000 households the same-rows baseline (every table read back twice into memory) is
//! left out.
//!
//! To measure the policy change again without deciding and copying the households each time:
//! `DOUDI_BENCH_SAVE_AS=NAME` keeps a copy of the database as it is just before the policy change
//! (a PostgreSQL template), and a later run with `DOUDI_BENCH_FROM=NAME` starts from a file copy of
//! it (PostgreSQL 15 or later) and measures the policy change only. Drop NAME by hand when done.
//! A saved database holds the migrations of the binary that saved it: after a migration is added
//! or edited, a later binary adds the new ones to its copy before the clock starts, and refuses a
//! copy whose applied migrations differ from its own (save it again then).

#![allow(clippy::float_arithmetic)] // rates and durations in a benchmark report, never money

use std::sync::Arc;
use std::time::Instant;

use doudi::config::DatabaseSettings;
use doudi::db::Database;
use doudi::matcher::{Context, Feed, Inbound, Outbound, apply_batch, synthetic};
use sqlx::{Acquire, Connection, Row};

const BATCH: usize = 500;

/// The allocator of the `doudi` binary, so the benchmark measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let households: u32 = std::env::var("DOUDI_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    // Households per transaction of the policy change (`doudi policy apply --chunk-size`).
    let chunk_size: usize = std::env::var("DOUDI_BENCH_CHUNK").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1_000);
    let base = std::env::var("DOUDI_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://doudi:doudi@127.0.0.1:5432/doudi".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let name = format!("doudi_bench_{}", uuid::Uuid::new_v4().simple());
        // DOUDI_BENCH_FROM: a database saved by an earlier run (DOUDI_BENCH_SAVE_AS) with its
        // households decided under the earlier parameters; only the policy change is measured.
        let from = std::env::var("DOUDI_BENCH_FROM").ok();
        let template = from.as_ref().map(|t| format!(" TEMPLATE {t} STRATEGY FILE_COPY")).unwrap_or_default();
        admin(&base, format!("CREATE DATABASE {name}{template}")).await.expect("create database");
        let url = format!("{}/{name}", base.rsplit_once('/').map(|x| x.0).unwrap_or(&base));
        let settings = DatabaseSettings { url, ..DatabaseSettings::default() };
        let mut db = match Database::connect(&settings).await {
            Ok(db) => db,
            Err(e) => {
                // A saved database made by a binary with other migrations is refused here (sqlx
                // compares each applied migration's checksum): the copy is dropped, not left behind.
                let _ = admin(&base, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                let hint = from.as_ref().map_or(String::new(), |saved| {
                    format!(" If {saved} was saved by an older doudi, save it again with DOUDI_BENCH_SAVE_AS.")
                });
                eprintln!("The benchmark's database could not be opened: {e}.{hint}");
                std::process::exit(2);
            }
        };
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
            auditor: doudi::audit::Auditor::new(doudi::config::DEVELOPMENT_AUDIT_KEY.as_bytes()),
        };
        let households = match &from {
            Some(saved) => {
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM households").fetch_one(db.pool()).await.expect("count").get("n");
                println!("Database copied from {saved}: {n} households decided under the earlier parameters.");
                u32::try_from(n).expect("count")
            }
            None => seed(&db, &ctx, &before, households).await,
        };
        if let Ok(save) = std::env::var("DOUDI_BENCH_SAVE_AS") {
            // A template may have no other session: the pool is closed while it is copied.
            db.close().await;
            admin(&base, format!("CREATE DATABASE {save} TEMPLATE {name}")).await.expect("save");
            db = Database::connect(&settings).await.expect("database");
            println!("Saved as {save} (DOUDI_BENCH_FROM={save} measures the policy change again from there).");
        }
        let new_ctx = Context { params: Arc::new(doudi::policy::Params::shipped().expect("policy")), ..ctx.clone() };
        // The same-rows baseline needs every table in memory twice: measured up to 100,000 households.
        let same_rows = households <= 100_000;
        let decided = if same_rows { snapshot(db.pool()).await } else { Snapshot::new() };
        // The relay publishes beside the re-evaluation, as `doudi policy apply` does: a round
        // whenever 5,000 deltas are committed, the rest at the end. Its producer is made, and knows
        // its topics, before the clock starts: fetching metadata is not part of publishing a policy
        // change's deltas.
        let producer = match std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS") {
            Ok(bootstrap) => {
                let kafka = doudi::config::KafkaSettings { bootstrap_servers: bootstrap, ..Default::default() };
                for topic in ctx.outbound.names.values() {
                    doudi::kafka::ensure_topic(&kafka, topic, 12, 1).await.expect("topic");
                }
                let producer = doudi::kafka::idempotent_producer(&kafka).expect("producer");
                for topic in ctx.outbound.names.values() {
                    let (client, topic) = (producer.clone(), topic.clone());
                    tokio::task::spawn_blocking(move || {
                        rdkafka::producer::Producer::client(&client).fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))
                    })
                    .await
                    .expect("metadata task")
                    .expect("metadata");
                }
                Some(producer)
            }
            Err(_) => None,
        };
        let wal_before = wal(db.pool()).await;
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let reevaluation = async {
            let summary = doudi::matcher::policy_change::apply(&db, &new_ctx, chunk_size).await.expect("apply");
            (summary, started.elapsed())
        };
        let ((summary, reevaluated), published) = match &producer {
            Some(producer) if std::env::var_os("DOUDI_BENCH_RELAY_AFTER").is_some() => {
                let done = reevaluation.await;
                let published = doudi::matcher::relay(&db, producer).await.expect("relay");
                (done, Some((published, started.elapsed())))
            }
            Some(producer) => {
                let (done, published) = doudi::matcher::relay_during(&db, producer, reevaluation).await;
                (done, Some((published.expect("relay"), started.elapsed())))
            }
            None => (reevaluation.await, None),
        };
        let cpu_used = cpu_seconds().since(&cpu_before);
        let wal_used = wal(db.pool()).await.zip(wal_before).map(|(after, before)| after.since(&before));
        // The relay has taken its rows off the queue by now: the same-rows baseline below does not
        // write the queue's rows (nor delete them), which favours the baseline.
        let reevaluated_rows = if same_rows { snapshot(db.pool()).await } else { Snapshot::new() };
        let end_to_end = published.map_or(reevaluated, |p| p.1);
        let rate = f64::from(households) / end_to_end.as_secs_f64();
        let reevaluation_rate = f64::from(households) / reevaluated.as_secs_f64();
        let publishing =
            published.map(|(n, d)| format!("{n} events, the last {:.2} s after it", d.saturating_sub(reevaluated).as_secs_f64())).unwrap_or_else(|| "not measured (no broker)".into());
        let verdict = if 1_000_000.0 / rate < 60.0 { "met" } else { "not met" };
        let mut per_table = String::from("not read back at this size");
        if same_rows {
            let same = SameRows::prepare(db.pool(), "policy", &decided, &reevaluated_rows).await;
            let chunks = (households as usize).div_ceil(chunk_size);
            let raw_same = same.upsert(db.postgres_pool().expect("the benchmark runs on PostgreSQL"), chunks, 3).await;
            let raw_rate = f64::from(households) / raw_same.as_secs_f64();
            println!(
                "\n| households re-evaluated | re-evaluation | publishing, beside it | households/s end to end | raw upsert of the same {} rows | raw households/s | re-evaluation / raw | 1,000,000 at the end-to-end rate | goal |",
                same.rows()
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            println!(
                "| {} | {:.2} s | {publishing} | {rate:.0} | {:.2} s | {raw_rate:.0} | {:.3} | {:.0} s | < 60 s — {verdict} |",
                summary.households,
                reevaluated.as_secs_f64(),
                raw_same.as_secs_f64(),
                reevaluation_rate / raw_rate,
                1_000_000.0 / rate,
            );
            per_table = same.per_table();
        } else {
            println!("\n| households re-evaluated | re-evaluation | publishing, beside it | end to end | households/s end to end | 1,000,000 at the end-to-end rate | goal |");
            println!("|---|---|---|---|---|---|---|");
            println!(
                "| {} | {:.2} s | {publishing} | {:.2} s | {rate:.0} | {:.0} s | < 60 s — {verdict} |",
                summary.households,
                reevaluated.as_secs_f64(),
                end_to_end.as_secs_f64(),
                1_000_000.0 / rate,
            );
        }
        println!(
            "\npolicy {} → {}: regions {:?} from {:?}; {} decisions changed, {} outbox rows.",
            summary.previous_version.unwrap_or_default(),
            summary.version,
            summary.regions,
            summary.effective_date,
            summary.decisions,
            summary.outbox
        );
        println!("Rows written per table: {per_table}.");
        println!(
            "CPU used by the re-evaluation and the relay: doudi {:.1} s, PostgreSQL {:.1} s, the broker {:.1} s ({:.0} µs per household in all; two cores give {:.1} s of CPU per {:.1} s).",
            cpu_used.doudi,
            cpu_used.postgres,
            cpu_used.broker,
            (cpu_used.doudi + cpu_used.postgres + cpu_used.broker) * 1e6 / f64::from(households),
            2.0 * end_to_end.as_secs_f64(),
            end_to_end.as_secs_f64()
        );
        match wal_used {
            Some(w) => println!(
                "WAL written by the re-evaluation: {:.0} MB in {} records, {} of them full-page images; {} checkpoints started meanwhile. Blocks read: {} in shared buffers, {} from outside them.",
                w.bytes / 1e6,
                w.records,
                w.full_pages,
                w.checkpoints,
                w.hits,
                w.reads
            ),
            None => println!("WAL written by the re-evaluation: not available on this server (pg_stat_wal, pg_stat_bgwriter, pg_stat_database)."),
        }
        db.close().await;
        if std::env::var_os("DOUDI_BENCH_KEEP_DATABASE").is_some() {
            println!("Database {name} kept (DOUDI_BENCH_KEEP_DATABASE).");
        } else {
            // Without FORCE: terminating other sessions needs a privilege doudi's user lacks, and
            // the sessions left (the pool closing, autovacuum) end by themselves or are ended by the
            // server. Tried again for a while.
            let mut dropped = Ok(());
            for _ in 0..30 {
                dropped = admin(&base, format!("DROP DATABASE IF EXISTS {name}")).await;
                if dropped.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            if let Err(e) = dropped {
                println!("Database {name} not dropped ({e}): drop it by hand.");
            }
        }
    });
}

/// Runs one statement of this benchmark's own text on a connection of its own to the server's
/// default database (creating, saving and dropping the run's database), closed right after.
async fn admin(base: &str, sql: String) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(base).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    conn.close().await
}

/// Registers and decides `households` through the matcher (with the baselines of the first table),
/// copies them as DOUDI_BENCH_COPIES asks, and records `before` as the version in force. Returns
/// the number of households.
async fn seed(db: &Database, ctx: &Context, before: &doudi::policy::Params, households: u32) -> u32 {
    let mut events = Vec::with_capacity(households as usize * 2);
    for (feed, make) in [(Feed::Household, synthetic::household as fn(u32) -> serde_json::Value), (Feed::Employment, synthetic::employment)]
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
    // On the native driver, as the matcher's own transactions are.
    let native = db.postgres_pool().expect("the benchmark runs on PostgreSQL");
    for chunk in events.chunks(BATCH) {
        let mut tx = native.begin().await.expect("begin");
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
        let mut tx = doudi::matcher::Tx::begin(db).await.expect("begin");
        let outcome = apply_batch(&mut tx.conn(), ctx, chunk).await.expect("apply");
        tx.commit().await.expect("commit");
        decisions += outcome.decisions;
        outbox += outcome.outbox;
    }
    let matcher = started.elapsed();
    let written = snapshot(db.pool()).await;
    let same = SameRows::prepare(db.pool(), "apply", &empty, &written).await;
    let same_raw = same.upsert(native, events.len().div_ceil(BATCH), 1).await;
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
    sqlx::raw_sql("DELETE FROM outbox_pending").execute(db.pool()).await.expect("mark sent");
    let copies: u32 = std::env::var("DOUDI_BENCH_COPIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 50);
    if copies > 1 {
        let started = Instant::now();
        let rows = clone_households(db.pool(), &ctx.keys, copies).await;
        println!(
            "\nThe {households} decided households copied {} more times under new household ids and ID numbers ({rows} rows) in {:.0} s: {} households.",
            copies - 1,
            started.elapsed().as_secs_f64(),
            u64::from(households) * u64::from(copies)
        );
    }
    doudi::matcher::policy_change::establish(db, before.clone()).await.expect("establish");
    households * copies
}

/// The server's write-ahead log so far (`pg_stat_wal`, `pg_stat_bgwriter`): cluster-wide, so it
/// counts whatever else the server did meanwhile (nothing else runs during the benchmark).
struct Wal {
    records: i64,
    full_pages: i64,
    bytes: f64,
    checkpoints: i64,
    /// Blocks this database found in shared buffers, and read from outside them (the OS).
    hits: i64,
    reads: i64,
}

impl Wal {
    fn since(&self, before: &Wal) -> Wal {
        Wal {
            records: self.records - before.records,
            full_pages: self.full_pages - before.full_pages,
            bytes: self.bytes - before.bytes,
            checkpoints: self.checkpoints - before.checkpoints,
            hits: self.hits - before.hits,
            reads: self.reads - before.reads,
        }
    }
}

/// `None` where the server lacks these views (before PostgreSQL 14; from 17 the checkpoint
/// counters moved to `pg_stat_checkpointer`).
async fn wal(pool: &sqlx::AnyPool) -> Option<Wal> {
    let row = sqlx::query(
        "SELECT w.wal_records, w.wal_fpi, w.wal_bytes::float8 AS wal_bytes, b.checkpoints_timed + b.checkpoints_req AS checkpoints, \
         d.blks_hit, d.blks_read FROM pg_stat_wal w, pg_stat_bgwriter b, pg_stat_database d WHERE d.datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    Some(Wal {
        records: row.try_get("wal_records").ok()?,
        full_pages: row.try_get("wal_fpi").ok()?,
        bytes: row.try_get("wal_bytes").ok()?,
        checkpoints: row.try_get("checkpoints").ok()?,
        hits: row.try_get("blks_hit").ok()?,
        reads: row.try_get("blks_read").ok()?,
    })
}

/// CPU seconds (user and system) used so far by this process, by PostgreSQL's processes and by
/// the broker (a JVM), read from /proc on Linux; zero elsewhere.
#[derive(Default)]
struct CpuSeconds {
    doudi: f64,
    postgres: f64,
    broker: f64,
}

impl CpuSeconds {
    fn since(&self, before: &CpuSeconds) -> CpuSeconds {
        CpuSeconds { doudi: self.doudi - before.doudi, postgres: self.postgres - before.postgres, broker: self.broker - before.broker }
    }
}

fn cpu_seconds() -> CpuSeconds {
    // Clock ticks per second: 100 on every Linux this runs on (sysconf would need libc).
    const TICKS: f64 = 100.0;
    let mut out = CpuSeconds::default();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state … utime stime: fields 14 and 15, the 12th and 13th after the name.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map(|x| x.1).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let seconds = (ticks(11) + ticks(12)) / TICKS;
        if pid == me {
            out.doudi += seconds;
        } else if name.starts_with("postgres") {
            out.postgres += seconds;
        } else if name == "java" {
            out.broker += seconds;
        }
    }
    out
}

/// The first column of every row of `sql` (a statement of this benchmark's own text), as text.
async fn texts(pool: &sqlx::AnyPool, sql: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(pool).await.expect(sql).iter().map(|r| r.get(0)).collect()
}

/// Copies every decided household of the run `copies - 1` times, as if more households had been
/// registered and decided: each copy's household ids get the copy's number, and its people ID numbers of
/// another (fictitious) issuing division of the province with a recomputed check character, and
/// their pseudonymous keys; everything else (facts, decision history, entitlements in force, open
/// review tasks) is the template's. Two statements at a time. Returns the rows written.
async fn clone_households(pool: &sqlx::AnyPool, keys: &doudi::envelope::KeyDeriver, copies: u32) -> u64 {
    use sqlx::Row;
    let people: Vec<(String, String)> = sqlx::query("SELECT id_number, person_key FROM persons ORDER BY id_number")
        .fetch_all(pool)
        .await
        .expect("persons")
        .iter()
        .map(|r| (r.get("id_number"), r.get("person_key")))
        .collect();
    let households = texts(pool, "SELECT household_id FROM households").await;
    let patterns: Vec<&str> = people
        .iter()
        .map(|p| p.0.as_str())
        .chain(people.iter().map(|p| p.1.as_str()))
        .chain(households.iter().map(String::as_str))
        .collect();
    let matcher =
        aho_corasick::AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostLongest).build(&patterns).expect("patterns");
    let mut written = 0;
    let tables = ["persons", "households", "household_members", "facts", "decisions", "entitlements", "review_tasks"];
    let mut templates = Vec::new();
    for table in tables {
        let columns = texts(
            pool,
            &format!(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = '{table}' AND column_name <> 'id' ORDER BY ordinal_position"
            ),
        )
        .await;
        // Entitlements in force only: ended ones are history no re-evaluation reads.
        let filter = if table == "entitlements" { "WHERE ended_on IS NULL" } else { "" };
        let rows = texts(pool, &format!("SELECT (to_jsonb(t) - 'id')::text FROM {table} t {filter}")).await;
        templates.push((table, columns.join(", "), rows));
    }
    let mut running: tokio::task::JoinSet<Result<(), sqlx::Error>> = tokio::task::JoinSet::new();
    for copy in 1..copies {
        let ids: Vec<String> =
            people.iter().map(|(id, _)| doudi::idnum::complete(&format!("22{:02}{}", 50 + copy, &id[4..17])).expect("ID number")).collect();
        let replacements: Vec<String> = ids
            .iter()
            .cloned()
            .chain(ids.iter().map(|id| keys.key(&doudi::idnum::IdNumber::parse(id).expect("ID number"))))
            // JL-220102-2020-000123 → JL-220102-202007-000123: each copy's households stay together
            // in id order, as households registered in one period are.
            .chain(households.iter().map(|h| match h.rsplit_once('-') {
                Some((head, seq)) => format!("{head}{copy:02}-{seq}"),
                None => format!("{h}-{copy:02}"),
            }))
            .collect();
        for (table, columns, rows) in &templates {
            for chunk in rows.chunks(10_000) {
                let mut json = String::from("[");
                for (i, row) in chunk.iter().enumerate() {
                    if i > 0 {
                        json.push(',');
                    }
                    matcher.replace_all_with(row, &mut json, |m, _, out| {
                        out.push_str(&replacements[m.pattern().as_usize()]);
                        true
                    });
                }
                json.push(']');
                // Review tasks are keyed by an event id: the copy's get a suffix.
                let select = columns.replace("task_id", &format!("task_id || '-{copy:02}'"));
                let sql = format!(
                    "INSERT INTO {table} ({columns}) SELECT {select} FROM json_populate_recordset(NULL::{table}, CAST($1 AS json))"
                );
                if running.len() >= 2 {
                    running.join_next().await.expect("task").expect("join").expect("copy");
                }
                let pool = pool.clone();
                running.spawn(async move { sqlx::query(sqlx::AssertSqlSafe(sql)).bind(json).execute(&pool).await.map(|_| ()) });
                written += chunk.len() as u64;
            }
            // The next table refers to this one's rows.
            while let Some(done) = running.join_next().await {
                done.expect("task").expect("copy");
            }
        }
    }
    while let Some(done) = running.join_next().await {
        done.expect("task").expect("copy");
    }
    // At rest, as a database of a million households is: statistics current, the copied rows'
    // visibility recorded. Otherwise autovacuum works through the 13 million new rows during the
    // timed re-evaluation, and the re-evaluation's reads set every copied row's hint bits.
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(pool).await.expect("vacuum");
    written
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
            // A table of its key alone (the relay's queue) has nothing to update.
            let conflict = if set.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", set.join(", ")) };
            let sql = format!(
                "INSERT INTO {raw} SELECT * FROM json_populate_recordset(NULL::{raw}, CAST($1 AS json)) ON CONFLICT ({}) {conflict}",
                key.join(", "),
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
    async fn upsert(&self, pool: &sqlx::PgPool, transactions: usize, parallel: usize) -> std::time::Duration {
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
