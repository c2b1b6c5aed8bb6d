//! Every long-running process as Kubernetes runs it: it becomes ready once its database and broker
//! answer, its `/metrics` passes `promtool check metrics`, and SIGTERM stops it with status 0
//! within 10 s (`common::STOP_WITHIN`; the chart's grace period is longer).
//!
//! The daemons: the connector's three transports (drop folder, HTTP push, table polling), `match`,
//! `deliver` (webhook and table), `acks` and `lag serve`. Each runs against the test broker and its
//! own PostgreSQL database, with its own topics and groups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `doudi args` with its ops endpoint on a free port; returns the process and the port.
fn spawn(args: &[&str], database_url: &str, env: &[(&str, &str)]) -> (Child, u16) {
    let port = common::free_port();
    let mut cmd = Command::new(common::doudi_bin());
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DOUDI_CONFIG")
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_DATABASE_URL", database_url)
        .env("DOUDI_HTTP_PORT", port.to_string())
        .env("DOUDI_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("start doudi"), port)
}

/// Waits until `/readyz` answers 200 (or the process ends, or 60 s pass).
async fn wait_ready(child: &mut Child, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("{what} ended before it was ready ({status}): {err}");
        }
        let addr = format!("127.0.0.1:{port}");
        if tokio::net::TcpStream::connect(&addr).await.is_ok() && common::http_get(&addr, "/readyz").await.0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{what} was not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `promtool check metrics` on the process's `/metrics`: no complaint.
async fn check_metrics(port: u16, what: &str) -> String {
    let (status, body) = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
    assert_eq!(status, 200, "{what}: /metrics");
    if let Err(said) = common::promtool_check(&body) {
        panic!("{what}: promtool check metrics: {said}\n{body}");
    }
    body
}

/// A copy of a shipped connector config with another `[transport]` (and no fixtures).
fn connector_with_transport(dir: &Path, feed: &str, transport: &str) -> String {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors").join(format!("{feed}.toml"))).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in shipped.lines() {
        if line.starts_with('[') {
            skipping = line == "[transport]" || line == "[test]";
            if line == "[transport]" {
                out.push_str(transport);
                out.push('\n');
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join(format!("{feed}.toml"));
    std::fs::write(&path, out).unwrap();
    path.to_string_lossy().into_owned()
}

/// Runs one daemon through its life: ready, metrics checked, stopped by SIGTERM.
async fn lives_and_stops(what: &str, args: &[&str], database_url: &str, env: &[(&str, &str)]) -> String {
    let (mut child, port) = spawn(args, database_url, env);
    wait_ready(&mut child, port, what).await;
    let metrics = check_metrics(port, what).await;
    common::stop_by_sigterm(child, what);
    metrics
}

#[tokio::test]
async fn every_connector_transport_is_ready_and_stops_on_sigterm() {
    let pg = common::fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let drop_config = connector_with_transport(
        dir.path(),
        "edu-student",
        &format!("[transport]\nkind = \"drop_folder\"\npath = \"{}\"\npattern = \"*.csv\"\npoll_secs = 1", drop.display()),
    );
    let metrics = lives_and_stops("connect (drop folder)", &["connect", "--config", &drop_config], &pg.settings.url, &[]).await;
    assert!(metrics.contains("# HELP doudi_dependency_up"), "{metrics}");

    let push_port = common::free_port();
    let push_config = connector_with_transport(
        dir.path(),
        "hrss-employment",
        &format!("[transport]\nkind = \"http\"\nbind = \"127.0.0.1\"\nport = {push_port}\ntoken_env = \"TEST_PUSH_TOKEN\""),
    );
    let token = ("TEST_PUSH_TOKEN", "a-push-token-of-thirty-two-chars");
    lives_and_stops("connect (HTTP push)", &["connect", "--config", &push_config], &pg.settings.url, &[token]).await;

    let poll_config = connector_with_transport(
        dir.path(),
        "cdpf-disability",
        "[transport]\nkind = \"postgres_poll\"\nurl_env = \"TEST_SOURCE_URL\"\ntable = \"no_such_table\"\ncursor_column = \"id\"\ncursor_type = \"bigint\"\npoll_secs = 1",
    );
    let source = ("TEST_SOURCE_URL", pg.settings.url.as_str());
    lives_and_stops("connect (table polling)", &["connect", "--config", &poll_config], &pg.settings.url, &[source]).await;
}

#[tokio::test]
async fn the_matcher_acks_and_lag_serve_are_ready_and_stop_on_sigterm() {
    let pg = common::fresh_postgres().await;
    let suffix = format!(".{}", uuid::Uuid::new_v4().simple());
    let group = common::unique("lifecycle-matcher");
    lives_and_stops("match", &["match", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &suffix], &pg.settings.url, &[])
        .await;

    for agency in doudi::topics::AGENCIES {
        let ack_topic = format!("test.{}{suffix}", doudi::topics::ack_topic(agency));
        doudi::kafka::ensure_topic(&common::kafka(), &ack_topic, 1, 1).await.unwrap();
    }
    let acks_group = common::unique("lifecycle-acks");
    let callback = format!("127.0.0.1:{}", common::free_port());
    let token = ("TEST_ACK_TOKEN", "an-ack-token-of-thirty-two-chars");
    lives_and_stops(
        "acks",
        &[
            "acks",
            "--group",
            &acks_group,
            "--listen",
            &callback,
            "--token",
            "medical=TEST_ACK_TOKEN",
            "--topic-prefix",
            "test.",
            "--topic-suffix",
            &suffix,
        ],
        &pg.settings.url,
        &[token],
    )
    .await;

    let port = common::free_port().to_string();
    let (mut child, _) = spawn(&["lag", "serve", "--listen", &format!("127.0.0.1:{port}"), "--interval", "1s"], &pg.settings.url, &[]);
    let port: u16 = port.parse().unwrap();
    wait_ready(&mut child, port, "lag serve").await;
    check_metrics(port, "lag serve").await;
    common::stop_by_sigterm(child, "lag serve");
}

#[tokio::test]
async fn deliveries_to_a_webhook_and_a_table_are_ready_and_stop_on_sigterm() {
    let pg = common::fresh_postgres().await;
    let suffix = format!(".{}", uuid::Uuid::new_v4().simple());
    for agency in ["medical", "education"] {
        let topic = format!("test.{}{suffix}", doudi::topics::agency_topic(agency));
        doudi::kafka::ensure_topic(&common::kafka(), &topic, 1, 1).await.unwrap();
    }
    let token = ("MEDICAL_SINK_TOKEN", "a-sink-token-of-thirty-two-chars");
    for (what, config) in [("deliver (webhook)", "connectors/medical-out.toml"), ("deliver (table)", "connectors/education-out.toml")] {
        lives_and_stops(
            what,
            &["deliver", "--config", config, "--topic-prefix", "test.", "--topic-suffix", &suffix],
            &pg.settings.url,
            &[token],
        )
        .await;
    }
}
