//! Shared helpers for the integration tests: the real broker and database started by `make test`.
//! Every test gets its own random topic, consumer group and job names.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod matching;
pub mod postgres;
pub mod proxy;
pub mod secure;
pub mod synthetic;

use doudi::config::{DatabaseSettings, KafkaSettings};

/// A short random suffix for topic, group and job names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The broker `make test` starts (scripts/kafka), or DOUDI_KAFKA_BOOTSTRAP_SERVERS. A test that
/// needs it and finds no broker there stops at once with one line that says so.
pub fn kafka() -> KafkaSettings {
    let bootstrap_servers = std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    require_server("the Kafka broker", &bootstrap_servers, "scripts/kafka start");
    KafkaSettings { bootstrap_servers, ..KafkaSettings::default() }
}

/// Stops the test with one clear line when nothing listens at `address` (checked once per address
/// and test binary).
fn require_server(what: &str, address: &str, start: &str) {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|a| a == address) {
        return;
    }
    let first = address.split(',').next().unwrap_or(address);
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(first)
        .map(|mut addrs| addrs.any(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()))
        .unwrap_or(false);
    assert!(reachable, "{what} is not running at {first}: this test needs it. Start it with `{start}`, or run `make test`.");
    checked.push(address.to_string());
}

/// Runs the doudi binary against the test broker, with settings from the environment only;
/// returns the exit code, stdout and stderr.
pub fn run_doudi(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(doudi_bin())
        .args(args)
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", kafka().bootstrap_servers)
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A plain HTTP/1.1 GET over a real socket: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The PostgreSQL database `make test` starts (scripts/postgres). Tests that need it fail, rather
/// than skip, when it is not configured: a skipped database test would hide a broken layer.
pub fn postgres() -> DatabaseSettings {
    let url = std::env::var("DOUDI_TEST_DATABASE_URL")
        .expect("DOUDI_TEST_DATABASE_URL is not set: run the suite with `make test`, which starts PostgreSQL (scripts/postgres)");
    // postgres://user:password@host:port/database
    let authority = url.split("://").nth(1).unwrap_or("").rsplit('@').next().unwrap_or("").split('/').next().unwrap_or("");
    require_server("PostgreSQL", authority, "scripts/postgres start");
    DatabaseSettings { url, ..DatabaseSettings::default() }
}

/// A fresh SQLite file in a temporary folder (kept alive by the returned guard).
pub fn sqlite() -> (DatabaseSettings, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("doudi.db").display());
    (DatabaseSettings { url, ..DatabaseSettings::default() }, dir)
}

/// The release binary under test.
pub fn doudi_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_doudi"))
}

/// The shipped config of `feed`, renamed, writing to a fresh copy of its topic (and dlq topic), so
/// a test sees only its own records.
pub async fn isolated(feed: &str) -> (doudi::connect::config::ConnectorConfig, std::sync::Arc<doudi::schema::Registry>) {
    isolated_in(feed, &uuid::Uuid::new_v4().simple().to_string()).await
}

/// As [`isolated`], with the topic named `test.<catalogue name>.<suffix>`: several feeds with one
/// suffix make one isolated exchange (`doudi match --topic-prefix test. --topic-suffix .<suffix>`).
pub async fn isolated_in(feed: &str, suffix: &str) -> (doudi::connect::config::ConnectorConfig, std::sync::Arc<doudi::schema::Registry>) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut registry = doudi::schema::Registry::load(&root.join("schemas")).unwrap();
    let mut config =
        doudi::connect::config::ConnectorConfig::load(&root.join("connectors").join(format!("{feed}.toml")), &root.join("schemas"))
            .unwrap();
    let original = registry.catalogue.topic(&config.connector.topic).unwrap().clone();
    let topic = format!("test.{}.{suffix}", original.name);
    for name in [topic.clone(), format!("dlq.{topic}")] {
        let mut copy = if name.starts_with("dlq.") {
            registry.catalogue.topic(&format!("dlq.{}", original.name)).unwrap().clone()
        } else {
            original.clone()
        };
        copy.name = name.clone();
        registry.catalogue.topics.push(copy);
        doudi::kafka::ensure_topic(&kafka(), &name, 3, 1).await.unwrap();
    }
    config.connector.topic = topic;
    config.connector.name = format!("t{}-{feed}", &suffix[..suffix.len().min(16)]);
    (config, std::sync::Arc::new(registry))
}

/// A fresh PostgreSQL database on the test server, dropped when the guard goes: each test sees only
/// its own recipients.
pub struct FreshPostgres {
    pub settings: DatabaseSettings,
    name: String,
}

pub async fn fresh_postgres() -> FreshPostgres {
    use sqlx::Connection;
    let base = postgres();
    let name = format!("doudi_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base.url).await.expect("connect to the test server");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create a test database");
    let url = match base.url.rsplit_once('/') {
        Some((server, db)) => match db.split_once('?') {
            Some((_, query)) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        },
        None => panic!("DOUDI_TEST_DATABASE_URL has no database name"),
    };
    FreshPostgres { settings: DatabaseSettings { url, ..base }, name }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        let base = postgres().url;
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            // A failed drop (the server's connection limit reached by test binaries running side
            // by side, a session still closing) is tried again for 10 s; a last failure is printed
            // with the database's name, never ignored.
            rt.block_on(async move {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let mut last = None;
                for _ in 0..20 {
                    match sqlx::PgConnection::connect(&base).await {
                        Ok(mut conn) => match sqlx::raw_sql(sqlx::AssertSqlSafe(drop.clone())).execute(&mut conn).await {
                            Ok(_) => return,
                            Err(e) => last = Some(e),
                        },
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                if let Some(e) = last {
                    eprintln!("test database {name} not dropped ({e}): drop it by hand");
                }
            });
        })
        .join();
    }
}

/// Reads committed records from many topics as they arrive, one stage at a time.
pub struct Reader {
    consumer: rdkafka::consumer::StreamConsumer,
}

/// One record read back: topic, key, payload and headers.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub payload: serde_json::Value,
    pub headers: std::collections::HashMap<String, String>,
}

impl Reader {
    pub fn new(topics: &[&str]) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer = doudi::kafka::committed_consumer(&kafka(), &unique("test-reader")).unwrap();
        consumer.subscribe(topics).unwrap();
        Reader { consumer }
    }

    /// Everything that arrives until `quiet` passes without a record.
    pub async fn until_quiet(&self, quiet: std::time::Duration) -> Vec<Record> {
        use rdkafka::Message;
        use rdkafka::message::Headers;
        let mut out = Vec::new();
        while let Ok(m) = tokio::time::timeout(quiet, self.consumer.recv()).await {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
                .unwrap_or_default();
            out.push(Record {
                topic: m.topic().to_string(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default(),
                headers,
            });
        }
        out
    }
}

/// Runs the doudi binary with extra environment variables; returns the exit code, stdout and stderr.
pub fn run_doudi_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(doudi_bin());
    command
        .args(args)
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", kafka().bootstrap_servers)
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `promtool check metrics` on a `/metrics` body: what it said (nothing when it is content).
pub fn promtool_check(body: &str) -> Result<(), String> {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by scripts/setup)");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() { Ok(()) } else { Err(said) }
}

/// A free TCP port on the loopback interface (nothing listens there once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The longest a daemon may take to stop after SIGTERM (the chart's grace periods are longer).
pub const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends SIGTERM to `child` and asserts that it exits with status 0 within [`STOP_WITHIN`].
pub fn stop_by_sigterm(mut child: std::process::Child, what: &str) {
    let sent = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + STOP_WITHIN;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert_eq!(status.code(), Some(0), "{what} after SIGTERM: {err}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not stop within {STOP_WITHIN:?} of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A small tmpfs mounted for a test (a disk that fills up), unmounted when dropped, even when
/// the test fails. Mounting needs root, as `make test` runs on this project's machines.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs (this test needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { path: path.to_path_buf() }
    }

    /// Writes a filler file until the disk is full; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        let filler = self.path.join(".filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        let _ = std::io::Write::write_all(&mut f, &[0u8; 1]);
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// How many times each `ce_id` is on `topics` of the broker of `kafka` (read_committed), read
/// until 5 s pass without a record.
pub async fn ce_id_counts(kafka: &KafkaSettings, topics: &[&str]) -> std::collections::HashMap<String, usize> {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Headers;
    let consumer = doudi::kafka::committed_consumer(kafka, &unique("test-ce-ids")).unwrap();
    consumer.subscribe(topics).unwrap();
    let mut seen = std::collections::HashMap::new();
    while let Ok(m) = tokio::time::timeout(std::time::Duration::from_secs(5), consumer.recv()).await {
        let m = m.unwrap();
        let id = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()));
        *seen.entry(id.unwrap_or_default()).or_insert(0) += 1;
    }
    seen
}
