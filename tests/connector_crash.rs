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
    let text = text
        .replace("path = \"/var/lib/doudi/drop/edu-student\"", &format!("path = \"{}\"\npoll_secs = 1\nstable_secs = 1", drop.display()));
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

// ---------------------------------------------------------------------------------------------
// A feed never stalls silently: rows the broker would refuse, quotes left open, files that keep
// failing, partial uploads and the "late" signal across restarts.
// ---------------------------------------------------------------------------------------------

/// A topic of this test's own (and its dead-letter topic), with `max.message.bytes` if given.
async fn topic_with_limit(topic: &str, max_message_bytes: Option<&str>) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let admin = doudi::kafka::admin(&common::kafka()).unwrap();
    let mut new = NewTopic::new(topic, 3, TopicReplication::Fixed(1));
    if let Some(limit) = max_message_bytes {
        new = new.set("max.message.bytes", limit);
    }
    let dlq = format!("dlq.{topic}");
    let results = admin.create_topics([&new, &NewTopic::new(&dlq, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    for r in results {
        r.unwrap();
    }
}

async fn set_topic_limit(topic: &str, max_message_bytes: &str) {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let admin = doudi::kafka::admin(&common::kafka()).unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", max_message_bytes);
    for r in admin.alter_configs([&alter], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// A drop-folder daemon of `config` with its ops endpoint on a port of its own and an SQLite
/// database in `dir` (its job runs survive a restart there).
fn drop_daemon(dir: &Path, schemas: &Path, config: &Path) -> (std::process::Child, u16) {
    connector_daemon(dir, schemas, config, &common::kafka().bootstrap_servers, &[])
}

/// `doudi connect` as a daemon of any transport against the broker at `bootstrap`, with `env`
/// added; its log goes to `daemon.log` in `dir`, which [`wait_for`] shows on a timeout.
fn connector_daemon(dir: &Path, schemas: &Path, config: &Path, bootstrap: &str, env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let port = common::free_port();
    let child = Command::new(common::doudi_bin())
        .args(["connect", "--config", config.to_str().unwrap(), "--schemas", schemas.to_str().unwrap()])
        .env("DOUDI_HTTP_PORT", port.to_string())
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("DOUDI_DATABASE_URL", format!("sqlite://{}", dir.join("doudi.db").display()))
        .env("DOUDI_LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .env_remove("DOUDI_CONFIG")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    (child, port)
}

/// A drop-folder workspace: the connector's transport replaced by `transport` lines.
fn drop_workspace(dir: &Path, topic: &str, transport: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let name = format!("drop{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (schemas, config) = workspace(dir, topic, &name);
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"/var/lib/doudi/drop/edu-student\"", &format!("path = \"{}\"\npoll_secs = 1\n{transport}", drop.display()));
    std::fs::write(&config, text).unwrap();
    (schemas, config, drop, name)
}

/// Waits until `done`; on a timeout, fails with the tail of the daemon's log in `dir`.
async fn wait_for(dir: &Path, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        if std::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("{what}: not within {within:?}; the daemon's log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn student_row(i: usize, school: &str) -> String {
    let birth = chrono::NaiveDate::from_ymd_opt(2010, 1, 1).unwrap() + chrono::Duration::days(i as i64);
    let id = doudi::idnum::complete(&format!("220102{}{:03}", birth.format("%Y%m%d"), i % 1000)).unwrap();
    format!("学生{i},{id},小学,{school},在读,2019/9/1\r\n")
}

const STUDENT_HEADER: &str = "学生姓名,身份证件号,学段,学校名称,在读状态,变动日期\r\n";

fn gauge(metrics: &str, name: &str, connector: &str) -> Option<f64> {
    let prefix = format!("{name}{{connector=\"{connector}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// Regression: a row larger than the topic accepts failed its transaction five times and then the
/// file stayed in place for ever (the feed stalled); an unclosed quote swallowed the rest of the file.
/// Now both are dead letters naming their rows and the file completes. The "late" gauge comes back
/// from the job runs after a restart, not from the restart's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_row_and_an_open_quote_are_dead_letters_and_the_file_completes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.oversize.{}", uuid::Uuid::new_v4().simple());
    // A student record is ≈ 2.3 kB with the room kept for its headers; one with a 200-character
    // school name is ≈ 2.9 kB.
    topic_with_limit(&topic, Some("2600")).await;
    let (schemas, config, drop, name) = drop_workspace(dir.path(), &topic, "complete = \"rename\"");
    let mut text = String::from(STUDENT_HEADER);
    text.push_str(&student_row(1, "某小学"));
    text.push_str(&student_row(2, &"校".repeat(200)));
    text.push_str(&student_row(3, "\"某小学"));
    for i in 4..7 {
        text.push_str(&student_row(i, "某小学"));
    }
    std::fs::write(drop.join("2019-09.csv"), &text).unwrap();
    let reader = common::Reader::new(&[topic.as_str(), format!("dlq.{topic}").as_str()]);
    let (daemon, port) = drop_daemon(dir.path(), &schemas, &config);
    wait_for(dir.path(), "the file moves to done/", Duration::from_secs(60), || drop.join("done/2019-09.csv").exists()).await;
    let records = reader.until_quiet(Duration::from_secs(4)).await;
    let events: Vec<_> = records.iter().filter(|r| r.topic == topic).collect();
    let dead: Vec<_> = records.iter().filter(|r| r.topic != topic).collect();
    assert_eq!(events.len(), 4, "rows 2, 5, 6 and 7 (the good ones) are produced once each");
    let mut reasons: Vec<(String, String, String)> =
        dead.iter().map(|d| (d.headers["source_row"].clone(), d.headers["error_code"].clone(), d.headers["reason"].clone())).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!((reasons[0].0.as_str(), reasons[0].1.as_str()), ("3", "size"));
    assert!(reasons[0].2.contains("超过主题允许的 2600 字节"), "{}", reasons[0].2);
    assert_eq!((reasons[1].0.as_str(), reasons[1].1.as_str()), ("4", "size"));
    assert!(reasons[1].2.contains("引号没有闭合"), "{}", reasons[1].2);
    for r in &reasons {
        assert!(!r.2.contains("2201"), "no ID number in a reason: {}", r.2);
    }

    let (_, before) = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
    let last = gauge(&before, "doudi_connector_last_success_timestamp_seconds", &name).expect("the gauge after a success");
    common::stop_by_sigterm(daemon, "the drop-folder daemon");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (daemon, port) = drop_daemon(dir.path(), &schemas, &config);
    let mut after = String::new();
    wait_for(dir.path(), "the restarted daemon serves /metrics", Duration::from_secs(30), || {
        after = metrics_now(port);
        after.contains("doudi_connector_last_success_timestamp_seconds")
    })
    .await;
    let restored = gauge(&after, "doudi_connector_last_success_timestamp_seconds", &name).expect("the gauge after the restart");
    assert!((restored - last).abs() <= 1.0, "the last success survives the restart ({last} before, {restored} after)");
    common::stop_by_sigterm(daemon, "the restarted drop-folder daemon");
}

/// `/metrics` of a local port, blocking (for use inside a polling closure).
fn metrics_now(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// Regression: a file whose transaction kept failing stayed in the folder for ever, and every file
/// after it waited. Now it moves to failed/ after `max_attempts` failures in a row, with the reason
/// beside it and a metric the alert rule watches, and the next file goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_failing_moves_to_failed_and_the_next_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.failing.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let (schemas, config, drop, name) = drop_workspace(dir.path(), &topic, "complete = \"rename\"\nmax_attempts = 2");
    let (daemon, port) = drop_daemon(dir.path(), &schemas, &config);
    // Started with the broker's default limit; an operator then shrinks the topic's, so the broker
    // refuses every record of the next file.
    wait_for(dir.path(), "the daemon is up", Duration::from_secs(30), || {
        gauge(&metrics_now(port), "doudi_connector_last_success_timestamp_seconds", &name).is_some()
    })
    .await;
    set_topic_limit(&topic, "200").await;
    let rows: String = std::iter::once(STUDENT_HEADER.to_string()).chain((1..4).map(|i| student_row(i, "某小学"))).collect();
    std::fs::write(drop.join("a.csv"), &rows).unwrap();
    wait_for(dir.path(), "the failing file moves to failed/", Duration::from_secs(120), || drop.join("failed/a.csv").exists()).await;
    let reason = std::fs::read_to_string(drop.join("failed/a.reason.txt")).unwrap();
    assert!(reason.contains("2 attempts in a row failed"), "{reason}");
    let metrics = metrics_now(port);
    assert_eq!(gauge(&metrics, "doudi_connector_files_failed_total", &name), Some(1.0), "{metrics}");
    set_topic_limit(&topic, "1048588").await;
    std::fs::write(drop.join("b.csv"), &rows).unwrap();
    wait_for(dir.path(), "the next file goes through", Duration::from_secs(60), || drop.join("done/b.csv").exists()).await;
    common::stop_by_sigterm(daemon, "the drop-folder daemon");
}

/// A file appended in chunks while the daemon watches is read once complete: every row is produced
/// exactly once (size and modification time unchanged for `stable_secs`). Under the marker
/// convention a complete file waits for its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_upload_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.partial.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let (schemas, config, drop, _) = drop_workspace(dir.path(), &topic, "complete = \"stable\"\nstable_secs = 2");
    let reader = common::Reader::new(&[topic.as_str()]);
    let (daemon, _) = drop_daemon(dir.path(), &schemas, &config);
    let path = drop.join("2019-09.csv");
    std::fs::write(&path, STUDENT_HEADER).unwrap();
    for chunk in 0..8 {
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let text: String = (chunk * 5..chunk * 5 + 5).map(|i| student_row(i, "某小学")).collect();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(path.exists(), "the file was taken while still being written (after chunk {chunk})");
    }
    wait_for(dir.path(), "the complete file moves to done/", Duration::from_secs(30), || drop.join("done/2019-09.csv").exists()).await;
    let records = reader.until_quiet(Duration::from_secs(4)).await;
    let ids: HashSet<String> = records.iter().map(|r| r.payload["id_number"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!((records.len(), ids.len()), (40, 40), "every row exactly once");
    common::stop_by_sigterm(daemon, "the drop-folder daemon");

    // The marker convention: nothing is read before `<file>.done` exists.
    let dir = tempfile::tempdir().unwrap();
    let (schemas, config, drop, _) = drop_workspace(dir.path(), &topic, "complete = \"marker\"");
    let (daemon, _) = drop_daemon(dir.path(), &schemas, &config);
    let path = drop.join("2019-10.csv");
    std::fs::write(&path, format!("{STUDENT_HEADER}{}", student_row(99, "某小学"))).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(path.exists() && !drop.join("done").exists(), "a file without its marker is left alone");
    std::fs::write(drop.join("2019-10.csv.done"), "").unwrap();
    wait_for(dir.path(), "the marked file moves to done/", Duration::from_secs(30), || drop.join("done/2019-10.csv").exists()).await;
    assert!(drop.join("done/2019-10.csv.done").exists(), "the marker moves with its file");
    common::stop_by_sigterm(daemon, "the drop-folder daemon");
}

/// A full disk under the drop folder: the daemon keeps running, produces the complete file once
/// and moves it to done/ (a rename needs no room); an unreadable file still moves to failed/ even
/// though its reason cannot be written beside it (the log and the job run keep the reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_drop_folder_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.fulldisk.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let (schemas, config, drop, _) = drop_workspace(dir.path(), &topic, "complete = \"rename\"");
    let disk = common::Tmpfs::mount(&drop, "256k");
    let rows: String = std::iter::once(STUDENT_HEADER.to_string()).chain((1..21).map(|i| student_row(i, "某小学"))).collect();
    std::fs::write(drop.join("a.csv"), &rows).unwrap();
    std::fs::write(drop.join("b.csv"), encoding_rs::GBK.encode(STUDENT_HEADER).0).unwrap();
    disk.fill();
    let reader = common::Reader::new(&[topic.as_str()]);
    let (mut daemon, _) = drop_daemon(dir.path(), &schemas, &config);
    wait_for(dir.path(), "both files sorted on the full disk", Duration::from_secs(60), || {
        drop.join("done/a.csv").exists() && drop.join("failed/b.csv").exists()
    })
    .await;
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon keeps running on a full disk");
    let records = reader.until_quiet(Duration::from_secs(4)).await;
    assert_eq!(records.len(), 20, "every row of the complete file, once");
    common::stop_by_sigterm(daemon, "the drop-folder daemon on a full disk");
    std::mem::drop(disk);
}

// ---------------------------------------------------------------------------------------------
// Repeated SIGKILL of each connector transport as a daemon: whatever the moment, the topic ends
// with every record exactly once.
// ---------------------------------------------------------------------------------------------

/// The workspace's connector with `transport` (TOML lines) in place of its drop folder.
fn with_transport(config: &Path, transport: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let shipped = "[transport]\nkind = \"drop_folder\"\npath = \"/var/lib/doudi/drop/edu-student\"\npattern = \"*.csv\"";
    assert!(text.contains(shipped));
    std::fs::write(config, text.replace(shipped, &format!("[transport]\n{transport}"))).unwrap();
}

fn sigkill(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The drop-folder daemon killed four times while it works through a large file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_folder_daemon_killed_again_and_again_produces_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.killdrop.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let (schemas, config, drop, _) = drop_workspace(dir.path(), &topic, "complete = \"rename\"");
    let (input, bad) = students(dir.path());
    std::fs::rename(&input, drop.join("students.csv")).unwrap();
    for delay_ms in [0u64, 300, 150, 450] {
        let (mut daemon, port) = drop_daemon(dir.path(), &schemas, &config);
        // Each kill comes once this process has committed a batch, and then after a delay that
        // varies: always in the middle of the file, however fast the host.
        wait_for(dir.path(), "the daemon commits a batch", Duration::from_secs(60), || {
            drop.join("done/students.csv").exists()
                || metrics_now(port).lines().any(|l| l.starts_with("doudi_connector_records_produced_total{") && !l.ends_with(" 0"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        sigkill(&mut daemon);
        if delay_ms == 0 {
            assert!(!drop.join("done/students.csv").exists(), "the first kill came after the file was finished: make the file longer");
        }
    }
    let (daemon, port) = drop_daemon(dir.path(), &schemas, &config);
    wait_for(dir.path(), "the file is finished after the kills", Duration::from_secs(120), || drop.join("done/students.csv").exists())
        .await;
    // SIGTERM once the daemon is up (a signal in its first milliseconds, before its handler is
    // installed, ends it as the signal's default would).
    wait_for(dir.path(), "the last daemon is up", Duration::from_secs(60), || metrics_now(port).contains("doudi_connector")).await;
    common::stop_by_sigterm(daemon, "the drop-folder daemon");
    let counts = common::ce_id_counts(&common::kafka(), &[topic.as_str()]).await;
    assert_eq!(counts.len(), ROWS - bad, "every good row");
    assert!(counts.values().all(|n| *n == 1), "none twice");
}

/// The HTTP push daemon killed three times while a department's system sends 20 requests, each
/// retried with its Idempotency-Key until answered: every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_daemon_killed_again_and_again_takes_each_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.killpush.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let name = format!("push{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (schemas, config) = workspace(dir.path(), &topic, &name);
    let port = common::free_port();
    with_transport(&config, &format!("kind = \"http\"\nbind = \"127.0.0.1\"\nport = {port}\ntoken_env = \"TEST_PUSH_TOKEN\""));
    let token = "a-department-token-of-some-length";
    let spawn = || connector_daemon(dir.path(), &schemas, &config, &common::kafka().bootstrap_servers, &[("TEST_PUSH_TOKEN", token)]).0;
    let request = |n: usize| -> String {
        (0..100)
            .map(|i| {
                let row = student_row(n * 100 + i, "某小学");
                let cells: Vec<&str> = row.trim_end().split(',').collect();
                serde_json::json!({"学生姓名": cells[0], "身份证件号": cells[1], "学段": cells[2], "学校名称": cells[3], "在读状态": cells[4], "变动日期": cells[5]}).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut daemon = spawn();
    let mut kills = 0;
    for n in 0..20 {
        let body = request(n);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Kill the daemon while requests 3, 9 and 15 are in flight, and start it again: the
        // department's system gets no reply (or an error) and retries with the same key.
        if kills < 3 && n == 3 + 6 * kills {
            let in_flight = std::thread::spawn({
                let body = body.clone();
                move || push_request(port, token, n, &body)
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            sigkill(&mut daemon);
            kills += 1;
            daemon = spawn();
            let _ = in_flight.join();
        }
        while push_request(port, token, n, &body) != Some(200) {
            assert!(std::time::Instant::now() < deadline, "request {n} was never answered");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Every request once more, as a department's retry after a lost reply would: nothing new.
    for n in [0, 3, 9, 15, 19] {
        assert_eq!(push_request(port, token, n, &request(n)), Some(200));
    }
    common::stop_by_sigterm(daemon, "the push daemon");
    let counts = common::ce_id_counts(&common::kafka(), &[topic.as_str()]).await;
    assert_eq!(counts.len(), 2000, "every record");
    assert!(counts.values().all(|c| *c == 1), "none twice");
}

/// POSTs one request of JSON lines to HTTP push; the reply's status, or `None` without a reply.
fn push_request(port: u16, token: &str, n: usize, body: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: request-{n}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

/// Table polling killed three times while it reads a source table in batches: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polling_daemon_killed_again_and_again_reads_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.killpoll.{}", uuid::Uuid::new_v4().simple());
    topic_with_limit(&topic, None).await;
    let name = format!("poll{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (schemas, config) = workspace(dir.path(), &topic, &name);
    let source = common::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&source.settings.url).await.unwrap();
    sqlx::query("CREATE TABLE student_changes (seq BIGSERIAL PRIMARY KEY, \"学生姓名\" TEXT, \"身份证件号\" TEXT, \"学段\" TEXT, \"学校名称\" TEXT, \"在读状态\" TEXT, \"变动日期\" TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    const SOURCE_ROWS: usize = 4000;
    for chunk in 0..(SOURCE_ROWS / 500) {
        let mut insert = String::from(
            "INSERT INTO student_changes (\"学生姓名\", \"身份证件号\", \"学段\", \"学校名称\", \"在读状态\", \"变动日期\") VALUES ",
        );
        let values: Vec<String> = (chunk * 500..chunk * 500 + 500)
            .map(|i| {
                let row = student_row(i, "某小学");
                let cells: Vec<String> = row.trim_end().split(',').map(|c| format!("'{c}'")).collect();
                format!("({})", cells.join(","))
            })
            .collect();
        insert.push_str(&values.join(","));
        sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&pool).await.unwrap();
    }
    with_transport(
        &config,
        "kind = \"postgres_poll\"\nurl_env = \"TEST_SOURCE_URL\"\ntable = \"student_changes\"\ncursor_column = \"seq\"\ncursor_type = \"bigint\"\npoll_secs = 1\nbatch_rows = 100\nsettle_secs = 0",
    );
    let spawn = || {
        let env = [("TEST_SOURCE_URL", source.settings.url.as_str())];
        connector_daemon(dir.path(), &schemas, &config, &common::kafka().bootstrap_servers, &env).0
    };
    for delay_ms in [2500u64, 1200, 1800] {
        let mut daemon = spawn();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        sigkill(&mut daemon);
    }
    let daemon = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let counts = common::ce_id_counts(&common::kafka(), &[topic.as_str()]).await;
        if counts.len() >= SOURCE_ROWS || std::time::Instant::now() > deadline {
            break counts;
        }
    };
    common::stop_by_sigterm(daemon, "the polling daemon");
    assert_eq!(counts.len(), SOURCE_ROWS, "every row of the table");
    assert!(counts.values().all(|c| *c == 1), "none twice");
}

/// The drop-folder daemon on a broker of the test's own, behind a proxy: the network to the
/// broker is cut for 5 s and then the broker restarts, both in the middle of a large file. The
/// daemon keeps running, says not ready meanwhile, and finishes the file with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_folder_daemon_waits_out_a_network_cut_and_a_broker_restart_mid_file() {
    let kafka = common::proxy::OwnKafka::start().await;
    let settings = kafka.settings();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("test.brokerdrop.{}", uuid::Uuid::new_v4().simple());
    for t in [topic.clone(), format!("dlq.{topic}")] {
        doudi::kafka::ensure_topic(&settings, &t, 3, 1).await.unwrap();
    }
    let (schemas, config, drop, _) = drop_workspace(dir.path(), &topic, "complete = \"rename\"");
    let (input, bad) = students(dir.path());
    std::fs::rename(&input, drop.join("students.csv")).unwrap();
    let (mut daemon, port) = connector_daemon(dir.path(), &schemas, &config, &settings.bootstrap_servers, &[]);
    // The cut comes once the daemon has committed a batch of the file.
    wait_for(dir.path(), "the daemon commits a batch", Duration::from_secs(60), || {
        metrics_now(port).lines().any(|l| l.starts_with("doudi_connector_records_produced_total{") && !l.ends_with(" 0"))
    })
    .await;
    kafka.proxy.cut();
    assert!(!drop.join("done/students.csv").exists(), "the cut came after the file was finished: make the file longer");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon keeps running while the network is cut");
    kafka.proxy.resume();
    tokio::time::sleep(Duration::from_secs(1)).await;
    kafka.script("stop").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon keeps running while the broker is down");
    kafka.script("start").await;
    wait_for(dir.path(), "the file is finished after the outages", Duration::from_secs(240), || drop.join("done/students.csv").exists())
        .await;
    common::stop_by_sigterm(daemon, "the drop-folder daemon after the outages");
    let counts = common::ce_id_counts(&settings, &[topic.as_str()]).await;
    assert_eq!(counts.len(), ROWS - bad, "every good row");
    assert!(counts.values().all(|n| *n == 1), "none twice");
}
