//! SIGKILL `doudi connect` mid-file, again and again, then let it finish: the topic holds every
//! record exactly once (read_committed), and every bad row exactly once in the dead-letter topic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;

const ROWS: usize = 30_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of schemas/ whose catalogue also has this test's topic, and a connector config for it.
fn workspace(dir: &Path, topic: &str, name: &str) -> (PathBuf, PathBuf) {
    let schemas = dir.join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    for entry in std::fs::read_dir(root().join("schemas")).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), schemas.join(entry.file_name())).unwrap();
        }
    }
    let mut catalogue = std::fs::read_to_string(schemas.join("topics.toml")).unwrap();
    catalogue.push_str(&format!(
        "\n[[topic]]\nname = \"{topic}\"\nschema = \"dept.edu.student.v1.json\"\ndescription = \"crash test\"\npartitions = 3\ncleanup = \"delete\"\nretention_days = 1\nkey = \"HMAC\"\nwriter = \"test\"\ndead_letters = true\n[[topic.readers]]\nwho = \"test\"\npurpose = \"test\"\nlegal_basis = \"test\"\n"
    ));
    std::fs::write(schemas.join("topics.toml"), catalogue).unwrap();
    let config = std::fs::read_to_string(root().join("connectors/edu-student.toml"))
        .unwrap()
        .replace("name = \"edu-student\"", &format!("name = \"{name}\""))
        .replace("topic = \"dept.edu.student.v1\"", &format!("topic = \"{topic}\"\nbatch_rows = 250"));
    let config_path = dir.join("connector.toml");
    std::fs::write(&config_path, config).unwrap();
    (schemas, config_path)
}

/// A large UTF-8-with-BOM student file; every 997th row has a wrong check character.
fn students(dir: &Path) -> (PathBuf, usize) {
    let mut text = String::from("\u{feff}学生姓名,身份证件号,学段,学校名称,在读状态,变动日期\r\n");
    let mut bad = 0;
    for i in 0..ROWS {
        let birth = chrono::NaiveDate::from_ymd_opt(2005, 1, 1).unwrap() + chrono::Duration::days((i % 3000) as i64);
        let mut id = doudi::idnum::complete(&format!("2201{:02}{}{:03}", 2 + (i / 3000) % 5, birth.format("%Y%m%d"), i % 1000)).unwrap();
        if i % 997 == 0 {
            bad += 1;
            let last = if id.ends_with('1') { '2' } else { '1' };
            id.pop();
            id.push(last);
        }
        text.push_str(&format!("学生{i},{id},小学,某小学,在读,2019/9/1\r\n"));
    }
    let path = dir.join("students.csv");
    std::fs::write(&path, text).unwrap();
    (path, bad)
}

fn run(schemas: &Path, config: &Path, input: &Path) -> std::process::Child {
    Command::new(common::doudi_bin())
        .args([
            "connect",
            "--config",
            config.to_str().unwrap(),
            "--schemas",
            schemas.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--once",
        ])
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_file_never_loses_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("test.crash.{suffix}");
    let name = format!("crash{}", &suffix[..12]);
    for t in [topic.clone(), format!("dlq.{topic}")] {
        doudi::kafka::ensure_topic(&common::kafka(), &t, 3, 1).await.unwrap();
    }
    let (schemas, config) = workspace(dir.path(), &topic, &name);
    let (input, bad) = students(dir.path());

    let mut kills = 0;
    for delay_ms in [900u64, 1400, 700, 1800, 1100] {
        let mut child = run(&schemas, &config, &input);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let finished = run(&schemas, &config, &input).wait_with_output().unwrap();
    assert!(finished.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&finished.stdout).unwrap();
    assert!(kills >= 2, "the file finished before enough kills ({kills}); make it larger");

    let consumer = doudi::kafka::committed_consumer(&common::kafka(), &common::unique("test-group")).unwrap();
    consumer.subscribe(&[topic.as_str(), format!("dlq.{topic}").as_str()]).unwrap();
    let (mut records, mut dead) = (0usize, 0usize);
    let mut ids = HashSet::new();
    let mut rows = HashSet::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
        let m = m.unwrap();
        let headers: Vec<(String, String)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        let get = |k: &str| headers.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
        if m.topic() == topic {
            records += 1;
            assert!(ids.insert(get("ce_id")), "duplicate ce_id");
            assert!(rows.insert(get("source_row")), "row {} delivered twice", get("source_row"));
        } else {
            dead += 1;
            assert!(rows.insert(get("source_row")), "dead letter row {} twice", get("source_row"));
        }
    }
    assert_eq!(records, ROWS - bad, "every good row exactly once (kills: {kills}, last run: {summary})");
    assert_eq!(dead, bad, "every bad row exactly once");
    doudi::kafka::delete_topics(&common::kafka(), &[&topic, &format!("dlq.{topic}")]).await.unwrap();
}

/// The daemon watching a drop folder: a good file is produced and moves to done/, a file in the
/// wrong encoding moves to failed/ with a reason naming its row, and nothing else happens to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_folder_daemon_processes_and_sorts_files() {
    let dir = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("test.drop.{suffix}");
    let name = format!("drop{}", &suffix[..12]);
    for t in [topic.clone(), format!("dlq.{topic}")] {
        doudi::kafka::ensure_topic(&common::kafka(), &t, 3, 1).await.unwrap();
    }
    let (schemas, config) = workspace(dir.path(), &topic, &name);
    let drop = dir.path().join("drop");
    std::fs::create_dir(&drop).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("path = \"/var/lib/doudi/drop/edu-student\"", &format!("path = \"{}\"\npoll_secs = 1", drop.display()));
    std::fs::write(&config, text).unwrap();
    std::fs::copy(root().join("connectors/samples/edu-student.csv"), drop.join("2019-09.csv")).unwrap();
    std::fs::write(drop.join("2019-10.csv"), encoding_rs::GBK.encode("学生姓名,身份证件号,学段,学校名称,在读状态,变动日期\r\n").0).unwrap();
    std::fs::write(drop.join("notes.txt"), "not a feed file").unwrap();
    let port = common::free_port();
    let mut daemon = Command::new(common::doudi_bin())
        .args(["connect", "--config", config.to_str().unwrap(), "--schemas", schemas.to_str().unwrap()])
        .env("DOUDI_HTTP_PORT", port.to_string())
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_DATABASE_URL", format!("sqlite://{}", dir.path().join("doudi.db").display()))
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(drop.join("done/2019-09.csv").exists() && drop.join("failed/2019-10.csv").exists()) {
        assert!(std::time::Instant::now() < deadline, "the daemon did not sort the files in time");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The ops endpoint runs beside the daemon and counts what it did.
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    };
    assert!(metrics.contains(&format!("doudi_connector_records_produced_total{{connector=\"{name}\"}} 4")), "{metrics}");
    assert!(metrics.contains("error_code=\"mapping\""), "{metrics}");
    assert!(metrics.contains(&format!("doudi_connector_batch_seconds_count{{connector=\"{name}\"}}")), "{metrics}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let reason = std::fs::read_to_string(drop.join("failed/2019-10.reason.txt")).unwrap();
    assert!(reason.contains("row 1"), "{reason}");
    assert!(drop.join("notes.txt").exists(), "files not matching the pattern are left alone");
    let consumer = doudi::kafka::committed_consumer(&common::kafka(), &common::unique("test-group")).unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let mut count = 0;
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(4), consumer.recv()).await {
        m.unwrap();
        count += 1;
    }
    assert_eq!(count, 4, "the four good rows of the sample");
    // The run was recorded as the connector's last successful run.
    let db = doudi::db::Database::connect(&doudi::config::DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("doudi.db").display()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(db.last_successful_runs().await.unwrap().iter().any(|r| r.component == "connector" && r.name == name));
}
