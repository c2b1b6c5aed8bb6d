//! Connector throughput against the broker's own producer, on the same broker, in one run.
//!
//! `cargo bench --bench connector` (broker from scripts/kafka; DOUDI_BENCH_ROWS rows, default
//! 200,000) generates a GBK CSV of student records, runs the edu-student mapping over it into a
//! fresh 3-partition topic through doudi's transactional, exactly-once path (decode, map, validate
//! against the schema, HMAC key, CloudEvents headers, progress commit), then runs Kafka's
//! `kafka-producer-perf-test` with records of the same average size and the same producer settings
//! (idempotent, acks=all, lz4, linger 20 ms), then doudi's connector again on a fresh topic, and
//! prints the rates and the ratio of doudi's mean to perf-test's. It also times the reading side
//! alone (read, map, validate, serialise; nothing produced).

#![allow(clippy::float_arithmetic)] // rates and durations in a benchmark report, never money

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use doudi::config::{KafkaSettings, Settings};
use doudi::connect::config::{ConnectorConfig, Encoding, SourceSection};
use doudi::connect::run::Connector;
use doudi::schema::Registry;

/// The allocator of the `doudi` binary, so the benchmark measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rows: usize = std::env::var("DOUDI_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let kafka = KafkaSettings {
        bootstrap_servers: std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        ..KafkaSettings::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    // A GBK CSV of valid student records.
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("students-gbk.csv");
    {
        let mut text = String::with_capacity(rows * 80);
        text.push_str("学生姓名,身份证件号,学段,学校名称,在读状态,变动日期\r\n");
        for i in 0..rows {
            let birth = chrono::NaiveDate::from_ymd_opt(2003, 1, 1).unwrap_or_default() + chrono::Duration::days((i % 5000) as i64);
            let id = doudi::idnum::complete(&format!("2201{:02}{}{:03}", 2 + (i / 5000) % 5, birth.format("%Y%m%d"), i % 1000))
                .unwrap_or_default();
            text.push_str(&format!("学生{i},{id},初中,长春市第{}中学,在读,2019/9/1\r\n", i % 90));
        }
        let mut file = std::fs::File::create(&csv).expect("create");
        file.write_all(&encoding_rs::GBK.encode(&text).0).expect("write");
    }
    let csv_bytes = std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0);

    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let perf_topic = format!("bench.perftest.{suffix}");
    let settings = Settings { kafka: kafka.clone(), ..Settings::default() };
    // The shipped edu-student connector, reading the generated file as GBK.
    let gbk_config = || {
        let mut config = ConnectorConfig::load(&root.join("connectors/edu-student.toml"), &root.join("schemas")).expect("config");
        config.source = SourceSection::Csv { encoding: Encoding::Gbk, delimiter: ",".into(), max_row_bytes: 64 * 1024 };
        config
    };
    // One connector run on its own topic and connector name: (seconds, transactions, average
    // record size on the wire, read back: value + key + header names and values).
    let run_connector = |round: usize| -> (f64, u64, usize) {
        let topic = format!("bench.connector.{suffix}.{round}");
        let mut registry = Registry::load(&root.join("schemas")).expect("schemas");
        let mut config = gbk_config();
        for (name, from) in
            [(topic.clone(), "dept.edu.student.v1".to_string()), (format!("dlq.{topic}"), "dlq.dept.edu.student.v1".to_string())]
        {
            let mut t = registry.catalogue.topic(&from).expect("topic").clone();
            t.name = name;
            registry.catalogue.topics.push(t);
        }
        config.connector.topic = topic.clone();
        config.connector.name = format!("bench{}-{round}", &suffix[..12]);
        if let Some(rows) = std::env::var("DOUDI_BENCH_BATCH").ok().and_then(|v| v.parse().ok()) {
            config.connector.batch_rows = rows;
        }
        runtime.block_on(async {
            for t in [&topic, &format!("dlq.{topic}")] {
                doudi::kafka::ensure_topic(&kafka, t, 3, 1).await.expect("topic");
            }
            let mut connector = Connector::start(config, Arc::new(registry), &settings).await.expect("connector");
            let started = Instant::now();
            let summary = connector.process_file(&csv).await.expect("process");
            let elapsed = started.elapsed();
            assert_eq!(summary.produced as usize, rows, "every row produced");
            use rdkafka::Message;
            use rdkafka::consumer::Consumer;
            use rdkafka::message::Headers;
            let consumer = doudi::kafka::committed_consumer(&kafka, &format!("bench-{suffix}-{round}")).expect("consumer");
            consumer.subscribe(&[topic.as_str()]).expect("subscribe");
            let mut total = 0usize;
            for _ in 0..1000 {
                let m = consumer.recv().await.expect("message");
                total += m.payload_len() + m.key().map(<[u8]>::len).unwrap_or(0);
                total +=
                    m.headers().map(|h| h.iter().map(|h| h.key.len() + h.value.map(<[u8]>::len).unwrap_or(0)).sum::<usize>()).unwrap_or(0);
            }
            (elapsed.as_secs_f64(), summary.transactions, total / 1000)
        })
    };

    // doudi, Kafka's producer, doudi again: the machine's load drifts over a run (the host is
    // shared), so doudi is measured on both sides of the raw producer and its mean compared.
    let (first, transactions, avg_size) = run_connector(0);
    runtime.block_on(doudi::kafka::ensure_topic(&kafka, &perf_topic, 3, 1)).expect("topic");
    let script = root.join("scripts/kafka");
    let output = Command::new(&script)
        .args([
            "cli",
            "kafka-producer-perf-test",
            "--topic",
            &perf_topic,
            "--num-records",
            &rows.to_string(),
            "--record-size",
            &avg_size.to_string(),
            "--throughput",
            "-1",
            "--producer-props",
            &format!("bootstrap.servers={}", kafka.bootstrap_servers),
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=20",
            "batch.size=1000000",
            "compression.type=lz4",
        ])
        .output()
        .expect("kafka-producer-perf-test runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().rev().find(|l| l.contains("records sent")).unwrap_or_default().to_string();
    let theirs: f64 =
        last.split(" records sent, ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);

    let (second, _, _) = run_connector(1);
    let rates = [rows as f64 / first, rows as f64 / second];
    let ours = (rates[0] + rates[1]) / 2.0;

    // The same file read, mapped, validated and serialised in chunks of 1,024 as the connector's
    // reader does, with nothing produced: what the reading side alone costs on this machine.
    let mapping_only = {
        let registry = Registry::load(&root.join("schemas")).expect("schemas");
        let config = gbk_config();
        let schema = registry.for_topic(&config.connector.topic).expect("schema");
        let keys = doudi::envelope::KeyDeriver::new(&settings.keys);
        let extra = serde_json::Map::new();
        let identity = |e: &doudi::connect::pipeline::Event| format!("bench:{}", e.row);
        let started = Instant::now();
        let mut chunk = Vec::with_capacity(1024);
        let mut ready = 0usize;
        doudi::connect::source::read(&config.source, &csv, &config.header_columns(), &mut |item| {
            chunk.push(item);
            if chunk.len() == 1024 {
                ready += doudi::connect::pipeline::process_batch(
                    &config,
                    schema,
                    std::mem::take(&mut chunk),
                    &extra,
                    &keys,
                    &identity,
                    1_000_000,
                )
                .expect("mapped")
                .len();
            }
            true
        })
        .expect("read");
        ready +=
            doudi::connect::pipeline::process_batch(&config, schema, chunk, &extra, &keys, &identity, 1_000_000).expect("mapped").len();
        assert_eq!(ready, rows, "every row mapped");
        rows as f64 / started.elapsed().as_secs_f64()
    };

    println!("connector throughput, {rows} rows, GBK CSV of {:.1} MB, broker {}", csv_bytes as f64 / 1e6, kafka.bootstrap_servers);
    println!("| producer | records/s | notes |");
    println!("|---|---|---|");
    println!(
        "| doudi connect (edu-student mapping, GBK) | {ours:.0} | decode + map + schema validation + HMAC key + CloudEvents headers, {transactions} transactions; mean of {:.0} before and {:.0} after perf-test |",
        rates[0], rates[1]
    );
    println!(
        "| doudi mapping only, nothing produced | {mapping_only:.0} | the same file read, mapped, validated and serialised as the connector's reader does |"
    );
    println!(
        "| kafka-producer-perf-test | {theirs:.0} | {avg_size}-byte records (doudi's average value + key + headers), idempotent, acks=all, lz4, linger 20 ms |"
    );
    println!("| ratio | {:.2} | goal ≥ 0.50 |", ours / theirs);
    println!("perf-test: {last}");
}
