//! doudi's own data endpoints over TLS (rustls): HTTP push and the acknowledgement callback serve
//! HTTPS with the certificate and key that `http.tls_cert` and `http.tls_key` name. A client that
//! trusts the CA that signed them gets its answers; one that trusts another CA, or speaks plain
//! HTTP, gets none, and neither holds up the next client. An expired server certificate is refused
//! by a verifying client. Bad files stop start-up naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use doudi::config::HttpSettings;
use doudi::connect::run::Connector;

fn tls_script(args: &[&str]) {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls")).args(args).output().unwrap();
    assert!(out.status.success(), "scripts/tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA in `dir` and a server certificate for 127.0.0.1 / localhost named `name`, signed by it.
fn server_certificate(dir: &Path, name: &str, extra: &[&str]) -> HttpSettings {
    let d = dir.to_str().unwrap();
    tls_script(&[&["cert", d, name, "--server"], extra].concat());
    HttpSettings { tls_cert: format!("{d}/{name}.pem"), tls_key: format!("{d}/{name}.key"), ..HttpSettings::default() }
}

/// A client that trusts only the CA in `ca_dir`.
fn client_trusting(ca_dir: &Path) -> reqwest::Client {
    doudi::deliver::sink::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_dir.join("ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(20)).build().unwrap()
}

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("connectors/samples/hrss-employment.jsonl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_serves_https_with_the_configured_certificate() {
    doudi::deliver::sink::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let http = server_certificate(dir.path(), "push", &[]);
    let tls = http.data_tls().expect("the certificate and key load").expect("TLS is configured");

    let (config, registry) = common::isolated("hrss-employment").await;
    let settings = doudi::config::Settings { kafka: common::kafka(), ..Default::default() };
    let connector = Connector::start(config, registry, &settings).await.unwrap();
    let app = doudi::connect::push::router(connector, "test-token-0123456789", None, 1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = doudi::http::serve_maybe_tls("127.0.0.1:0".parse().unwrap(), app, Some(tls), async {
        let _ = rx.await;
    })
    .await
    .unwrap();

    // A client that opens a connection and never says a word does not hold up the others.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();

    // A plain-HTTP client gets no HTTP answer.
    let plain = reqwest::Client::new().post(format!("http://{addr}/v1/records")).body("x").send().await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200, "plain HTTP is not served");

    // A client that trusts another CA refuses the server.
    let other = tempfile::tempdir().unwrap();
    tls_script(&["ca", other.path().to_str().unwrap()]);
    let err = client_trusting(other.path()).post(format!("https://{addr}/v1/records")).body("x").send().await.expect_err("refused");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");

    // The right CA: the department's records are taken, over TLS, by host name and by address.
    let client = client_trusting(dir.path());
    let body = std::fs::read_to_string(samples()).unwrap();
    let reply = client
        .post(format!("https://localhost:{}/v1/records", addr.port()))
        .bearer_auth("test-token-0123456789")
        .header("Idempotency-Key", "tls-1")
        .header("Content-Type", "application/x-ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let summary = reply.text().await.unwrap();
    assert!(summary.contains("\"produced\":6"), "{summary}");
    let wrong = client.post(format!("https://{addr}/v1/records")).bearer_auth("wrong-token-000000000").body(body).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops on shutdown").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let http = server_certificate(dir.path(), "expired", &["--expired"]);
    let tls = http.data_tls().unwrap().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _task) = doudi::http::serve_maybe_tls("127.0.0.1:0".parse().unwrap(), app, Some(tls), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let err = client_trusting(dir.path()).get(format!("https://{addr}/")).send().await.expect_err("an expired certificate is refused");
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    let _ = tx.send(());
}

/// `doudi acks` as a daemon with the deployment's TLS settings, on ack topics of its own.
async fn acks_daemon(listen: &str, db: &str, tls: &[(&str, String)]) -> std::process::Child {
    let suffix = format!(".{}", uuid::Uuid::new_v4().simple());
    for agency in doudi::topics::AGENCIES {
        doudi::kafka::ensure_topic(&common::kafka(), &format!("{}{suffix}", doudi::topics::ack_topic(agency)), 1, 1).await.unwrap();
    }
    let mut command = std::process::Command::new(common::doudi_bin());
    command
        .args(["acks", "--listen", listen, "--token", "medical=T_ACK_TOKEN"])
        .args(["--topic-suffix", &suffix, "--group", &format!("t-acks-tls-{}", uuid::Uuid::new_v4().simple())])
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_DATABASE_URL", db)
        .env("DOUDI_KEYS_DEVELOPMENT", "true")
        .env("DOUDI_LOG_LEVEL", "warn")
        .env("DOUDI_HTTP_PORT", "0")
        .env("T_ACK_TOKEN", "medical-ack-token-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in tls {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acknowledgement_callback_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let http = server_certificate(dir.path(), "acks", &[]);
    let (db, _db_dir) = common::sqlite();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let tls = [("DOUDI_HTTP_TLS_CERT", http.tls_cert.clone()), ("DOUDI_HTTP_TLS_KEY", http.tls_key.clone())];
    let daemon = acks_daemon(&listen, &db.url, &tls).await;
    let client = client_trusting(dir.path());
    let ack = serde_json::json!({"event_id": uuid::Uuid::new_v4().to_string(), "agency": "medical", "status": "applied"});
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = client.post(format!("https://{listen}/v1/acks")).bearer_auth("medical-ack-token-0123456789").json(&ack).send().await
        {
            answered = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(404), "an unknown event, answered over HTTPS");
    let status =
        client.post(format!("https://{listen}/v1/acks")).bearer_auth("wrong-token-0123456789").json(&ack).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 401);
    let plain = reqwest::Client::new().post(format!("http://{listen}/v1/acks")).json(&ack).send().await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
    drop(client);
    common::stop_by_sigterm(daemon, "doudi acks serving HTTPS");
}

#[test]
fn bad_tls_files_stop_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = server_certificate(dir.path(), "good", &[]);
    let other = server_certificate(dir.path(), "other", &[]);
    let doctor = |vars: &[(&str, &str)]| {
        let mut command = std::process::Command::new(common::doudi_bin());
        command.args(["doctor", "--no-kafka"]).env("DOUDI_KEYS_DEVELOPMENT", "true");
        command.env("DOUDI_DATABASE_URL", format!("sqlite://{}/x.db", dir.path().display()));
        for (k, v) in vars {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = format!("{}/missing.pem", dir.path().display());
    for (vars, field) in [
        (vec![("DOUDI_HTTP_TLS_CERT", missing.as_str()), ("DOUDI_HTTP_TLS_KEY", good.tls_key.as_str())], "http.tls_cert"),
        (vec![("DOUDI_HTTP_TLS_CERT", good.tls_cert.as_str()), ("DOUDI_HTTP_TLS_KEY", other.tls_key.as_str())], "http.tls_key"),
        (vec![("DOUDI_HTTP_TLS_CERT", good.tls_cert.as_str())], "http.tls_key"),
        (vec![("DOUDI_HTTP_TLS_CERT", good.tls_key.as_str()), ("DOUDI_HTTP_TLS_KEY", good.tls_key.as_str())], "http.tls_cert"),
    ] {
        let (code, stderr) = doctor(&vars);
        assert_eq!(code, Some(2), "a configuration error: {stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "the key's content stays out: {stderr}");
    }
    let (code, stderr) = doctor(&[("DOUDI_HTTP_TLS_CERT", &good.tls_cert), ("DOUDI_HTTP_TLS_KEY", &good.tls_key)]);
    assert_eq!(code, Some(0), "{stderr}");
}
