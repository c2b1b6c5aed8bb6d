//! `doudi lag` on the real broker: lag numbers, time lag, Burrow status transitions, the
//! cross-check with Kafka's own `kafka-consumer-groups --describe`, and `doudi lag serve` with its
//! status page rendered in headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use doudi::lag::{Follower, GroupLag, Options, Status};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

struct Fixture {
    topic: String,
    group: String,
    producer: FutureProducer,
    committer: BaseConsumer,
}

impl Fixture {
    async fn new(partitions: i32) -> Fixture {
        let kafka = common::kafka();
        let topic = common::unique("test.lag");
        let group = common::unique("test-lag-group");
        doudi::kafka::ensure_topic(&kafka, &topic, partitions, 1).await.unwrap();
        let producer = doudi::kafka::idempotent_producer(&kafka).unwrap();
        let committer: BaseConsumer = doudi::kafka::client_config(&kafka).set("group.id", &group).create().unwrap();
        Fixture { topic, group, producer, committer }
    }

    /// Produces `n` records to `partition`, with the given timestamp or now.
    async fn produce(&self, partition: i32, n: usize, timestamp_ms: Option<i64>) {
        for i in 0..n {
            let mut record = FutureRecord::<str, str>::to(&self.topic).partition(partition).payload("x").key("k");
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts + i as i64);
            }
            self.producer.send(record, Duration::from_secs(10)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Commits `offset` for `partition` as the group (as a consumer does after processing).
    fn commit(&self, partition: i32, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).unwrap();
        self.committer.commit(&tpl, CommitMode::Sync).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }

    async fn evaluate(&self, stop_after: Duration) -> (GroupLag, i64) {
        let kafka = common::kafka();
        // Commits become visible in __consumer_offsets at once; a fresh reader sees them all.
        let mut follower = Follower::start(&kafka, 10).unwrap();
        follower.wait_caught_up(Duration::from_secs(60)).await.unwrap();
        let log = follower.snapshot();
        let options = Options { groups: vec![self.group.clone()], stop_after };
        let report = tokio::task::spawn_blocking(move || doudi::lag::report(&kafka, &log, &options)).await.unwrap().unwrap();
        assert_eq!(report.groups.len(), 1, "exactly the test's group: {report:?}");
        (report.groups.into_iter().next().unwrap(), report.evaluated_at_ms)
    }
}

const LONG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_group_has_zero_lag_and_zero_time_lag() {
    let f = Fixture::new(1).await;
    f.produce(0, 5, None).await;
    f.commit(0, 5);
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!(g.status, Status::Ok);
    let p = &g.partitions[0];
    assert_eq!((p.committed, p.log_end, p.lag, p.time_lag_ms), (5, 5, 0, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_lag_is_the_first_unconsumed_records_own_timestamp() {
    let f = Fixture::new(1).await;
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    // Offsets 0..4 an hour ago (base+0 … base+3), then 4 more ten minutes ago.
    f.produce(0, 4, Some(base)).await;
    f.produce(0, 4, Some(base + 3_000_000)).await;
    f.commit(0, 2);
    let (g, evaluated_at) = f.evaluate(LONG).await;
    let p = &g.partitions[0];
    assert_eq!((p.committed, p.log_end, p.lag), (2, 8, 6));
    // The record at offset 2 was stamped base + 2: exactly that, not an interpolation.
    assert_eq!(p.time_lag_ms, Some(evaluated_at - (base + 2)));
    assert_eq!(g.time_lag_ms, p.time_lag_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_behind_is_warn_then_catching_up_is_ok() {
    let f = Fixture::new(1).await;
    for step in 1..=3 {
        f.produce(0, 5, None).await;
        f.commit(0, step * 2);
    }
    f.produce(0, 5, None).await;
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!(g.partitions[0].lag, 14);
    assert_eq!(g.status, Status::Warn, "{g:?}");

    // The consumer catches up: commits move faster than the log grows, lag goes down.
    f.commit(0, 12);
    f.commit(0, 20);
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!((g.partitions[0].lag, g.status), (0, Status::Ok), "{g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_committing_the_same_offset_is_stall_and_a_silent_one_is_stop() {
    let f = Fixture::new(1).await;
    f.produce(0, 10, None).await;
    for _ in 0..3 {
        f.commit(0, 3);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!((g.partitions[0].lag, g.status), (7, Status::Stall), "{g:?}");

    // No commit for longer than the window spans (≈ 0.7 s) and than the 2 s floor: STOP.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (g, _) = f.evaluate(Duration::from_secs(2)).await;
    assert_eq!(g.status, Status::Stop, "{g:?}");
    // With the default floor of minutes the same group is still STALL, not yet STOP.
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!(g.status, Status::Stall);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reset_to_an_earlier_offset_is_rewind() {
    let f = Fixture::new(1).await;
    f.produce(0, 10, None).await;
    f.commit(0, 8);
    f.commit(0, 2);
    let (g, _) = f.evaluate(LONG).await;
    assert_eq!((g.partitions[0].lag, g.status), (8, Status::Rewind), "{g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_caught_up_topic_is_ok_not_a_false_stop() {
    let f = Fixture::new(1).await;
    f.produce(0, 5, None).await;
    f.commit(0, 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Silent for longer than the floor, but nothing to consume.
    let (g, _) = f.evaluate(Duration::from_secs(1)).await;
    assert_eq!((g.partitions[0].lag, g.status), (0, Status::Ok), "{g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_agree_with_kafka_consumer_groups_describe() {
    let f = Fixture::new(3).await;
    f.produce(0, 7, None).await;
    f.produce(1, 3, None).await;
    f.produce(2, 12, None).await;
    f.commit(0, 7);
    f.commit(1, 1);
    f.commit(2, 4);
    let (g, _) = f.evaluate(LONG).await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
    let out = Command::new(script)
        .args(["cli", "kafka-consumer-groups", "--bootstrap-server", &common::kafka().bootstrap_servers, "--describe", "--group", &f.group])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    let mut theirs: Vec<(i32, i64, i64, i64)> = text
        .lines()
        .filter(|l| l.contains(&f.topic))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[2].parse().unwrap(), c[3].parse().unwrap(), c[4].parse().unwrap(), c[5].parse().unwrap())
        })
        .collect();
    theirs.sort();
    let ours: Vec<(i32, i64, i64, i64)> = g.partitions.iter().map(|p| (p.partition, p.committed, p.log_end, p.lag)).collect();
    assert_eq!(theirs.len(), 3, "kafka-consumer-groups output: {text}");
    assert_eq!(ours, theirs);
    assert_eq!(ours, vec![(0, 7, 7, 0), (1, 1, 3, 2), (2, 4, 12, 8)]);
    assert_eq!(g.lag, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_a_table_or_json_and_exits_1_when_a_group_is_not_ok() {
    let f = Fixture::new(1).await;
    f.produce(0, 6, None).await;
    f.commit(0, 6);
    let (code, table, err) = common::run_doudi(&["lag", "--group", &f.group]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains(&f.group) && table.contains("status OK") && table.contains("TIME-LAG"), "{table}");

    f.commit(0, 4);
    f.commit(0, 1);
    let (code, json, _) = common::run_doudi(&["lag", "--group", &f.group, "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["groups"][0]["status"], "REWIND");
    assert_eq!(report["groups"][0]["partitions"][0]["lag"], 5);

    let (code, _, err) = common::run_doudi(&["lag", "--group", "no-such-group-anywhere"]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_serve_exports_metrics_and_a_status_page_chromium_can_render() {
    let f = Fixture::new(1).await;
    f.produce(0, 9, None).await;
    f.commit(0, 4);
    let dlq = format!("dlq.{}", f.topic);
    doudi::kafka::ensure_topic(&common::kafka(), &dlq, 1, 1).await.unwrap();
    for _ in 0..2 {
        f.producer.send(FutureRecord::<str, str>::to(&dlq).payload("row"), Duration::from_secs(10)).await.unwrap();
    }

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let db = tempfile::tempdir().unwrap();
    let server = Command::new(common::doudi_bin())
        .args(["lag", "serve", "--listen", &addr, "--interval", "1s"])
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_DATABASE_URL", format!("sqlite://{}/status.db", db.path().display()))
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG")
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(server);
    let mut ready = false;
    for _ in 0..120 {
        if std::net::TcpStream::connect(&addr).is_ok() && common::http_get(&addr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "lag serve became ready");

    let group = &f.group;
    let topic = &f.topic;
    // The exporter evaluates every group on the broker each second; under load the first evaluation
    // may not have read this group's oldest record yet, so wait for the time lag to appear.
    let lag_seconds = format!("doudi_consumergroup_lag_seconds{{group=\"{group}\",topic=\"{topic}\"}}");
    let (mut status, mut metrics) = common::http_get(&addr, "/metrics").await;
    for _ in 0..60 {
        if metrics.contains(&lag_seconds) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        (status, metrics) = common::http_get(&addr, "/metrics").await;
    }
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("doudi_consumergroup_lag_messages{{group=\"{group}\",topic=\"{topic}\"}} 5")), "{metrics}");
    assert!(metrics.contains(&lag_seconds), "{metrics}");
    assert!(metrics.contains(&format!("doudi_consumergroup_status{{group=\"{group}\",status=\"")));
    assert!(metrics.contains(&format!("doudi_dlq_messages{{topic=\"{dlq}\"}} 2")), "{metrics}");
    assert!(!metrics.contains("partition="), "no per-partition series");

    let (_, html) = common::http_get(&addr, "/").await;
    assert!(html.contains(group.as_str()) && html.contains(&dlq) && html.contains("<table>"), "{html}");

    // Rendered by a real browser, as a county office would see it.
    let shot = db.path().join("status.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("chromium is installed by scripts/setup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    let dumped = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", &format!("http://{addr}/")])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(dom.contains(group.as_str()), "the browser's DOM shows the group");
    if let Ok(dir) = std::env::var("STATUS_PAGE_SCREENSHOT_DIR") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("status-page.png")).unwrap();
    }
}
