//! PostgreSQL over TLS that verifies: doudi connects with `sslmode=verify-full` to a server whose
//! certificate a CA made for the test signed, and refuses a server whose CA or host name is wrong.
//! The server is the test's own (scripts/postgres serves TLS with a generated CA), listening on
//! 127.0.0.1, which its certificate names, and 127.0.0.2, which it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::postgres::OwnPostgres;
use doudi::config::DatabaseSettings;
use doudi::db::Database;
use sqlx::Row;

fn settings(url: &str) -> DatabaseSettings {
    DatabaseSettings { url: url.to_string(), connect_timeout_secs: 10, ..DatabaseSettings::default() }
}

/// A CA of its own that never signed the server's certificate.
fn other_ca() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls"))
        .args(["ca", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = dir.path().join("ca.pem").to_string_lossy().into_owned();
    (dir, ca)
}

async fn refused(url: &str) -> String {
    let err = match Database::connect(&settings(url)).await {
        Ok(_) => panic!("the connection is refused"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("doudi:doudi@"), "the password stays out of the error: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_to_the_right_server_and_refuses_a_wrong_ca_or_host() {
    let server = OwnPostgres::start_listening("127.0.0.1,127.0.0.2");
    let verified = server.verify_full_url();
    assert!(verified.contains("sslmode=verify-full") && verified.contains("sslrootcert="), "{verified}");

    // The right CA and the right host: connected, migrated, and the session is encrypted.
    let db = Database::connect(&settings(&verified)).await.expect("verify-full connects");
    let row =
        sqlx::query("SELECT ssl::text AS ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(db.pool()).await.unwrap();
    assert_eq!(row.get::<String, _>("ssl"), "true", "the session uses TLS");
    assert!(row.get::<String, _>("version").starts_with("TLSv1."), "{}", row.get::<String, _>("version"));
    db.close().await;

    // A CA that did not sign the server's certificate.
    let (_dir, wrong_ca) = other_ca();
    let ca = format!("{}/ca.pem", server.tls());
    let err = refused(&verified.replace(&ca, &wrong_ca)).await;
    assert!(err.contains("invalid peer certificate"), "{err}");

    // The right CA, but a host name (127.0.0.2) the certificate does not name.
    let err = refused(&verified.replace("127.0.0.1", "127.0.0.2")).await;
    assert!(err.contains("invalid peer certificate") && err.contains("not valid for name"), "{err}");

    // Why the docs say verify-full: `require` encrypts but checks nothing, and goes on with a
    // server that the wrong CA would never have vouched for.
    let require = verified.replace("sslmode=verify-full", "sslmode=require").replace(&ca, &wrong_ca).replace("127.0.0.1", "127.0.0.2");
    let db = Database::connect(&settings(&require)).await.expect("require does not verify");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_the_verified_database_and_names_a_refused_one() {
    let server = OwnPostgres::start();
    let verified = server.verify_full_url();
    let doctor = |url: &str| {
        std::process::Command::new(common::doudi_bin())
            .args(["doctor", "--json", "--no-kafka"])
            .env("DOUDI_DATABASE_URL", url)
            .env("DOUDI_KEYS_DEVELOPMENT", "true")
            .output()
            .unwrap()
    };
    let out = doctor(&verified);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verify-full"), "doctor shows the database it checked: {stdout}");
    assert!(!stdout.contains("doudi:doudi@"), "{stdout}");

    let (_dir, wrong_ca) = other_ca();
    let out = doctor(&verified.replace(&format!("{}/ca.pem", server.tls()), &wrong_ca));
    assert!(!out.status.success(), "doctor fails on a server it cannot verify");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("database") && !all.contains("doudi:doudi@"), "{all}");
}
