//! Shared helpers for the integration tests: the real broker and database started by `make test`.
//! Every test gets its own random topic, consumer group and job names.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use doudi::config::{DatabaseSettings, KafkaSettings};

/// A short random suffix for topic, group and job names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The broker `make test` starts (scripts/kafka), or DOUDI_KAFKA_BOOTSTRAP_SERVERS.
pub fn kafka() -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: std::env::var("DOUDI_KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        ..KafkaSettings::default()
    }
}

/// The PostgreSQL database `make test` starts (scripts/postgres). Tests that need it fail, rather
/// than skip, when it is not configured: a skipped database test would hide a broken layer.
pub fn postgres() -> DatabaseSettings {
    let url = std::env::var("DOUDI_TEST_DATABASE_URL")
        .expect("DOUDI_TEST_DATABASE_URL is not set: run the suite with `make test`, which starts PostgreSQL (scripts/postgres)");
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
