//! Faults a provincial deployment meets, against real servers: a daemon waits out its database
//! going away and coming back, says so on `/readyz`, and loses nothing and applies nothing twice.
//!
//! Each test runs a PostgreSQL server of its own (its own port and data folder, started and stopped
//! by `scripts/postgres`), so that stopping it never touches the server the other tests use; the
//! guard stops it and removes its folder even when the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Row;

use common::postgres::OwnPostgres;

/// `/readyz`'s status, or `None` when nothing answers.
async fn readyz(port: u16) -> Option<u16> {
    let addr = format!("127.0.0.1:{port}");
    tokio::net::TcpStream::connect(&addr).await.ok()?;
    Some(common::http_get(&addr, "/readyz").await.0)
}

/// Waits (up to `limit`) until `condition` holds, checking every 200 ms.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A count from the server, or `None` while it is away.
async fn count(url: &str, sql: &str) -> Option<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut conn).await.ok()?;
    row.try_get::<i64, _>(0).ok()
}

/// `doudi args` as a daemon against `database_url` and the test broker, its ops endpoint on `port`.
fn daemon(args: &[&str], database_url: &str, port: u16) -> Child {
    daemon_on(args, database_url, port, &common::kafka().bootstrap_servers)
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// The matcher as a daemon: PostgreSQL stops in the middle of its work and starts again. The
/// matcher keeps running, says not ready while the database is away, resumes by itself, and ends
/// in the state of a clean run: every event applied once, every change published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matcher_waits_out_a_postgresql_restart_and_loses_nothing() {
    const HOUSEHOLDS: u32 = 400;
    let server = OwnPostgres::start();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    for feed in doudi::matcher::Feed::ALL {
        doudi::kafka::ensure_topic(&common::kafka(), &format!("test.{}.{suffix}", feed.topic()), 3, 1).await.unwrap();
    }
    common::synthetic::outbound_topics(&suffix).await;
    common::synthetic::produce(&suffix, HOUSEHOLDS).await;

    let port = common::free_port();
    let (group, suffix_arg) = (common::unique("fault"), format!(".{suffix}"));
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let args =
        ["match", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix_arg, "--batch-size", "20", "--schemas", schemas];
    let mut matcher = daemon(&args, &server.url, port);

    let events = i64::from(HOUSEHOLDS) * 2;
    let processed = "SELECT COUNT(*) FROM processed_events";
    wait_until("the matcher applies its first batches", Duration::from_secs(60), || async {
        count(&server.url, processed).await.is_some_and(|n| n > 0)
    })
    .await;
    server.stop();
    wait_until("/readyz says not ready while the database is away", Duration::from_secs(30), || async { readyz(port).await == Some(503) })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(&mut matcher), "the matcher keeps running while the database is away");
    server.restart();
    wait_until("every event applied after the database returned", Duration::from_secs(180), || async {
        count(&server.url, processed).await == Some(events)
    })
    .await;
    wait_until("everything published", Duration::from_secs(60), || async {
        count(&server.url, "SELECT COUNT(*) FROM outbox_pending").await == Some(0)
    })
    .await;
    wait_until("/readyz says ready again", Duration::from_secs(60), || async { readyz(port).await == Some(200) }).await;
    let (_, metrics) = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
    assert!(metrics.contains("doudi_component_up{component=\"matcher\"} 1"), "{metrics}");

    common::stop_by_sigterm(matcher, "the matcher, after the outage");

    let (decisions, entitlements, facts) = common::synthetic::final_state(&server.url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference(&suffix).await;
    assert_eq!(decisions.len(), HOUSEHOLDS as usize);
    assert_eq!(decisions, b_decisions, "the decisions equal a clean run's");
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}

/// `doudi acks` started while its database is down waits for it (not ready, still running) and
/// works once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_its_database_waits_for_it() {
    let server = OwnPostgres::start();
    server.stop();
    let suffix = format!(".{}", uuid::Uuid::new_v4().simple());
    for agency in doudi::topics::AGENCIES {
        doudi::kafka::ensure_topic(&common::kafka(), &format!("test.{}{suffix}", doudi::topics::ack_topic(agency)), 1, 1).await.unwrap();
    }
    let port = common::free_port();
    let group = common::unique("fault-acks");
    let mut acks = daemon(&["acks", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix], &server.url, port);
    wait_until("/readyz answers, not ready", Duration::from_secs(30), || async { readyz(port).await == Some(503) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(&mut acks), "acks waits for its database instead of exiting");
    server.restart();
    wait_until("/readyz says ready once the database is up", Duration::from_secs(90), || async { readyz(port).await == Some(200) }).await;
    common::stop_by_sigterm(acks, "acks, after waiting for its database");
}

/// `doudi args` as a daemon against `database_url` and the broker at `bootstrap`, its ops endpoint
/// on `port`; a database connection attempt gives up after 2 s, so outages show quickly.
fn daemon_on(args: &[&str], database_url: &str, port: u16, bootstrap: &str) -> Child {
    Command::new(common::doudi_bin())
        .args(args)
        .env_remove("DOUDI_CONFIG")
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("DOUDI_DATABASE_URL", database_url)
        .env("DOUDI_DATABASE_CONNECT_TIMEOUT_SECS", "2")
        .env("DOUDI_HTTP_PORT", port.to_string())
        .env("DOUDI_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The matcher, its relay and education's delivery under load while the network to the broker is
/// cut for 8 s, and then while the broker itself restarts: the matcher keeps running, says not ready while it
/// cannot reach the broker, resumes by itself, and ends in the state of a clean run. Every change
/// is published, and a change published twice (the relay re-sends what it had not marked sent)
/// carries the same `ce_id`, which consumers drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matcher_and_relay_wait_out_a_network_cut_and_a_broker_restart() {
    const HOUSEHOLDS: u32 = 400;
    let kafka = common::proxy::OwnKafka::start().await;
    let settings = kafka.settings();
    let pg = common::fresh_postgres().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    for feed in doudi::matcher::Feed::ALL {
        doudi::kafka::ensure_topic(&settings, &format!("test.{}.{suffix}", feed.topic()), 3, 1).await.unwrap();
    }
    let outbound = common::synthetic::outbound_topics_on(&settings, &suffix).await;
    common::synthetic::produce_on(&settings, &suffix, HOUSEHOLDS).await;

    let port = common::free_port();
    let (group, suffix_arg) = (common::unique("fault-broker"), format!(".{suffix}"));
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let args =
        ["match", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix_arg, "--batch-size", "10", "--schemas", schemas];
    let mut matcher = daemon_on(&args, &pg.settings.url, port, &settings.bootstrap_servers);
    // Education's delivery into a table works beside it through the same outages.
    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("education-out.toml");
    std::fs::write(
        &delivery,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/education-out.toml"))
            .unwrap()
            .replace("table = \"education_student_aid\"", &format!("table = \"broker_aid_{}\"", &suffix[..8])),
    )
    .unwrap();
    let deliver_args = ["deliver", "--config", delivery.to_str().unwrap(), "--topic-prefix", "test.", "--topic-suffix", &suffix_arg];
    let deliver_port = common::free_port();
    let mut deliver = daemon_on(&deliver_args, &pg.settings.url, deliver_port, &settings.bootstrap_servers);
    let url = pg.settings.url.clone();
    let processed = "SELECT COUNT(*) FROM processed_events";
    let events = i64::from(HOUSEHOLDS) * 2;

    wait_until("the matcher applies its first batches", Duration::from_secs(90), || async {
        count(&url, processed).await.is_some_and(|n| n > 0)
    })
    .await;
    // A network cut of 8 s between doudi and the broker.
    let cut_at = Instant::now();
    kafka.proxy.cut();
    wait_until("/readyz says not ready while the broker cannot be reached", Duration::from_secs(30), || async {
        readyz(port).await == Some(503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(cut_at.elapsed())).await;
    assert!(alive(&mut matcher), "the matcher keeps running while the network is cut");
    kafka.proxy.resume();
    let before = count(&url, processed).await.unwrap_or(0);
    wait_until("the matcher goes on after the network returns", Duration::from_secs(90), || async {
        count(&url, processed).await.is_some_and(|n| n > before || n == events)
    })
    .await;
    // The broker restarts.
    kafka.script("stop").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(&mut matcher), "the matcher keeps running while the broker is down");
    assert!(alive(&mut deliver), "the delivery keeps running while the broker is down");
    kafka.script("start").await;
    wait_until("every event applied after the broker returned", Duration::from_secs(240), || async {
        count(&url, processed).await == Some(events)
    })
    .await;
    wait_until("everything published", Duration::from_secs(90), || async {
        count(&url, "SELECT COUNT(*) FROM outbox_pending").await == Some(0)
    })
    .await;
    wait_until("/readyz says ready again", Duration::from_secs(60), || async { readyz(port).await == Some(200) }).await;
    let undelivered = "SELECT COUNT(*) FROM deliveries WHERE agency = 'education' AND state <> 'delivered'";
    wait_until("every education entitlement delivered", Duration::from_secs(90), || async { count(&url, undelivered).await == Some(0) })
        .await;
    assert!(count(&url, "SELECT COUNT(*) FROM deliveries WHERE agency = 'education'").await.unwrap_or(0) > 0, "education had work");
    common::stop_by_sigterm(deliver, "the delivery, after the broker's outages");
    common::stop_by_sigterm(matcher, "the matcher, after the broker's outages");

    let published = common::ce_id_counts(&settings, &outbound.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let outbox = count(&url, "SELECT COUNT(DISTINCT ce_id) FROM outbox").await.unwrap();
    assert_eq!(published.len() as i64, outbox, "every change in the outbox is on its topic, none lost");
    let (decisions, entitlements, facts) = common::synthetic::final_state(&url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference_on(&settings, &suffix).await;
    assert_eq!(decisions.len(), HOUSEHOLDS as usize);
    assert_eq!(decisions, b_decisions, "the decisions equal a clean run's");
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}

/// What the soak measured after one fault.
struct Recovery {
    fault: &'static str,
    seconds: f64,
}

/// `make chaos`: load plus random faults for `CHAOS_SECONDS` (default 120), then a table of what
/// went in and came out and how long each fault took to recover from. Not part of `make test`.
///
/// The load is synthetic households arriving every second on the inbound topics (two events
/// each), applied by the matcher, published by its relay, and delivered to education's table by
/// `doudi deliver`. The faults, chosen at random: a network cut of 4–10 s between doudi and the
/// broker, a broker restart, a PostgreSQL restart, a SIGKILL of the matcher, a SIGKILL of the
/// delivery (each killed daemon is started again at once, as Kubernetes would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: run it with `make chaos`"]
async fn chaos() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let mut seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("chaos: {seconds} s of load and faults, seed {seed} (CHAOS_SEED to repeat)");
    let mut random = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let kafka = common::proxy::OwnKafka::start().await;
    let settings = kafka.settings();
    let pg = OwnPostgres::start();
    let url = pg.url.clone();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    for feed in doudi::matcher::Feed::ALL {
        doudi::kafka::ensure_topic(&settings, &format!("test.{}.{suffix}", feed.topic()), 3, 1).await.unwrap();
    }
    let outbound = common::synthetic::outbound_topics_on(&settings, &suffix).await;
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let (group, suffix_arg) = (common::unique("chaos"), format!(".{suffix}"));
    let match_args =
        ["match", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix_arg, "--batch-size", "50", "--schemas", schemas];
    let dir = tempfile::tempdir().unwrap();
    let table = format!("chaos_aid_{}", &suffix[..8]);
    let delivery = dir.path().join("education-out.toml");
    std::fs::write(
        &delivery,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/education-out.toml"))
            .unwrap()
            .replace("table = \"education_student_aid\"", &format!("table = \"{table}\"")),
    )
    .unwrap();
    let deliver_args = ["deliver", "--config", delivery.to_str().unwrap(), "--topic-prefix", "test.", "--topic-suffix", &suffix_arg];
    let (match_port, deliver_port) = (common::free_port(), common::free_port());
    let mut matcher = daemon_on(&match_args, &url, match_port, &settings.bootstrap_servers);
    let mut deliver = daemon_on(&deliver_args, &url, deliver_port, &settings.bootstrap_servers);

    // The load: 20 households a second, produced in the background (a producer that meets a fault
    // waits it out, as a connector does).
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (settings, suffix, produced, stop_load) = (settings.clone(), suffix.clone(), produced.clone(), stop_load.clone());
        async move {
            let mut next = 0u32;
            while !stop_load.load(std::sync::atomic::Ordering::SeqCst) {
                common::synthetic::produce_range_on(&settings, &suffix, next..next + 20).await;
                next += 20;
                produced.store(next, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let processed = "SELECT COUNT(*) FROM processed_events";
    let started = Instant::now();
    let mut recoveries = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(3 + random(5))).await;
        let fault = match random(5) {
            0 => {
                kafka.proxy.cut();
                tokio::time::sleep(Duration::from_secs(4 + random(7))).await;
                kafka.proxy.resume();
                "network cut to the broker"
            }
            1 => {
                kafka.script("stop").await;
                kafka.script("start").await;
                "broker restart"
            }
            2 => {
                pg.stop();
                tokio::time::sleep(Duration::from_secs(2)).await;
                pg.restart();
                "PostgreSQL restart"
            }
            3 => {
                let _ = matcher.kill();
                let _ = matcher.wait();
                matcher = daemon_on(&match_args, &url, match_port, &settings.bootstrap_servers);
                "SIGKILL of the matcher"
            }
            _ => {
                let _ = deliver.kill();
                let _ = deliver.wait();
                deliver = daemon_on(&deliver_args, &url, deliver_port, &settings.bootstrap_servers);
                "SIGKILL of the delivery"
            }
        };
        // Recovered: new load got through after the fault ended, and everything produced so far
        // is applied (lag 0).
        let before = produced.load(std::sync::atomic::Ordering::SeqCst);
        let ended = Instant::now();
        wait_until(&format!("recovery from a {fault}"), Duration::from_secs(300), || async {
            let now = produced.load(std::sync::atomic::Ordering::SeqCst);
            now > before && count(&url, processed).await.is_some_and(|n| n >= i64::from(now) * 2)
        })
        .await;
        recoveries.push(Recovery { fault, seconds: ended.elapsed().as_secs_f64() });
        assert!(alive(&mut matcher) && alive(&mut deliver), "no daemon exits because a server went away");
    }
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let households = produced.load(std::sync::atomic::Ordering::SeqCst);
    let events = i64::from(households) * 2;
    wait_until("every event applied", Duration::from_secs(300), || async { count(&url, processed).await == Some(events) }).await;
    wait_until("everything published", Duration::from_secs(120), || async {
        count(&url, "SELECT COUNT(*) FROM outbox_pending").await == Some(0)
    })
    .await;
    let to_deliver = "SELECT COUNT(*) FROM deliveries WHERE agency = 'education' AND state NOT IN ('delivered', 'applied')";
    wait_until("everything delivered", Duration::from_secs(120), || async { count(&url, to_deliver).await == Some(0) }).await;
    common::stop_by_sigterm(matcher, "the matcher after the soak");
    common::stop_by_sigterm(deliver, "the delivery after the soak");

    let applied = count(&url, "SELECT COUNT(DISTINCT ce_id) FROM processed_events").await.unwrap();
    let outbox = count(&url, "SELECT COUNT(DISTINCT ce_id) FROM outbox").await.unwrap();
    let published = common::ce_id_counts(&settings, &outbound.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let published_twice: usize = published.values().map(|n| n - 1).sum();
    let to_education = count(&url, "SELECT COUNT(*) FROM deliveries WHERE agency = 'education'").await.unwrap();
    let delivered =
        count(&url, "SELECT COUNT(*) FROM deliveries WHERE agency = 'education' AND state IN ('delivered', 'applied')").await.unwrap();
    let rows = count(&url, &format!("SELECT COUNT(*) FROM {table}")).await.unwrap();
    let distinct_rows = count(&url, &format!("SELECT COUNT(DISTINCT (id_number, kind)) FROM {table}")).await.unwrap();
    let lost = (events - applied) + (outbox - published.len() as i64) + (to_education - delivered);
    println!();
    println!("| measure | count |");
    println!("|---|---|");
    println!("| seconds of load and faults | {} |", started.elapsed().as_secs());
    println!("| events in (households × 2) | {events} |");
    println!("| applied (distinct events in the database) | {applied} |");
    println!("| published (distinct changes on the outbound topics / in the outbox) | {} / {outbox} |", published.len());
    println!("| published again with the same ce_id (consumers drop them) | {published_twice} |");
    println!("| delivered to education (of its deliveries) | {delivered} / {to_education} |");
    println!("| lost | {lost} |");
    println!("| effects applied twice (rows in education's table per entitlement) | {} |", rows - distinct_rows);
    println!();
    println!("| fault | seconds to recover |");
    println!("|---|---|");
    for r in &recoveries {
        println!("| {} | {:.1} |", r.fault, r.seconds);
    }
    assert_eq!(lost, 0, "nothing lost");
    assert_eq!(rows, distinct_rows, "nothing applied twice");
    let (decisions, entitlements, facts) = common::synthetic::final_state(&url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference_on(&settings, &suffix).await;
    assert_eq!(decisions.len(), households as usize);
    assert_eq!(decisions, b_decisions, "the decisions equal a clean run's");
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}

/// The matcher under load while the network to PostgreSQL is cut for 8 s (a TCP proxy between
/// them closes every connection and refuses new ones): it keeps running, says not ready, resumes
/// by itself, and ends in the state of a clean run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matcher_waits_out_a_network_cut_to_postgresql() {
    const HOUSEHOLDS: u32 = 400;
    let server = OwnPostgres::start();
    let proxy = common::proxy::Proxy::start(server.port).await;
    let through_proxy = server.url.replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port));
    assert_ne!(through_proxy, server.url, "the URL names the server's port: {}", server.url);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    for feed in doudi::matcher::Feed::ALL {
        doudi::kafka::ensure_topic(&common::kafka(), &format!("test.{}.{suffix}", feed.topic()), 3, 1).await.unwrap();
    }
    common::synthetic::outbound_topics(&suffix).await;
    common::synthetic::produce(&suffix, HOUSEHOLDS).await;
    let port = common::free_port();
    let (group, suffix_arg) = (common::unique("fault-pgcut"), format!(".{suffix}"));
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let args =
        ["match", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix_arg, "--batch-size", "20", "--schemas", schemas];
    let mut matcher = daemon(&args, &through_proxy, port);
    let events = i64::from(HOUSEHOLDS) * 2;
    let processed = "SELECT COUNT(*) FROM processed_events";
    wait_until("the matcher applies its first batches", Duration::from_secs(60), || async {
        count(&server.url, processed).await.is_some_and(|n| n > 0)
    })
    .await;
    let cut_at = Instant::now();
    proxy.cut();
    wait_until("/readyz says not ready while the database cannot be reached", Duration::from_secs(30), || async {
        readyz(port).await == Some(503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(cut_at.elapsed())).await;
    assert!(alive(&mut matcher), "the matcher keeps running while the network is cut");
    proxy.resume();
    wait_until("every event applied after the network returned", Duration::from_secs(180), || async {
        count(&server.url, processed).await == Some(events)
    })
    .await;
    wait_until("everything published", Duration::from_secs(60), || async {
        count(&server.url, "SELECT COUNT(*) FROM outbox_pending").await == Some(0)
    })
    .await;
    wait_until("/readyz says ready again", Duration::from_secs(60), || async { readyz(port).await == Some(200) }).await;
    common::stop_by_sigterm(matcher, "the matcher, after the cut");
    let (decisions, entitlements, facts) = common::synthetic::final_state(&server.url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference(&suffix).await;
    assert_eq!(decisions.len(), HOUSEHOLDS as usize);
    assert_eq!(decisions, b_decisions, "the decisions equal a clean run's");
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}
