//! Exit codes by error class, one family of subcommands at a time: a problem found in the data
//! exits 1, bad usage or configuration 2, an infrastructure failure 3. None of these needs a
//! running server: the servers named are free ports where nothing listens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

/// Runs doudi with only `env` among the DOUDI_* variables; the exit code and stderr.
fn doudi(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(common::doudi_bin());
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOUDI_")) {
        cmd.env_remove(k);
    }
    cmd.env("DOUDI_LOG_LEVEL", "error").env("DOUDI_HTTP_PORT", "0").env("DOUDI_KEYS_DEVELOPMENT", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run doudi");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn no_database() -> String {
    format!("postgres://doudi:doudi@127.0.0.1:{}/doudi", common::free_port())
}

#[test]
fn connect_a_daemon_without_its_token_is_a_configuration_error_found_before_any_server() {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/hrss-employment.toml")).unwrap();
    let config = dir.path().join("hrss-employment.toml");
    std::fs::write(&config, shipped.replace("token_env = \"HRSS_PUSH_TOKEN\"", "token_env = \"DOUDI_TEST_UNSET_TOKEN\"")).unwrap();
    let broker = format!("127.0.0.1:{}", common::free_port());
    let (code, err) = doudi(&["connect", "--config", config.to_str().unwrap()], &[("DOUDI_KAFKA_BOOTSTRAP_SERVERS", &broker)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("transport.token_env") && err.contains("DOUDI_TEST_UNSET_TOKEN"), "{err}");
    // A manual transport cannot run as a daemon: also a configuration error.
    let manual = dir.path().join("manual.toml");
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/edu-student.toml")).unwrap();
    let start = text.find("[transport]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(&manual, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (code, err) = doudi(&["connect", "--config", manual.to_str().unwrap()], &[("DOUDI_KAFKA_BOOTSTRAP_SERVERS", &broker)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("transport.kind"), "{err}");
}

#[test]
fn match_a_bad_argument_is_usage_and_an_unreachable_database_is_infrastructure() {
    let (code, err) = doudi(&["match", "--batch-size", "0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    let db = no_database();
    let (code, err) = doudi(&["policy", "versions"], &[("DOUDI_DATABASE_URL", &db), ("DOUDI_DATABASE_CONNECT_TIMEOUT_SECS", "2")]);
    assert_eq!(code, Some(3), "{err}");
    assert!(!err.contains("doudi:doudi@"), "the password is redacted: {err}");
}

#[test]
fn deliver_an_unknown_agency_or_a_missing_token_is_usage() {
    let (code, err) = doudi(&["deliveries", "pending", "--agency", "nobody"], &[]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = doudi(&["acks", "--token", "medical=DOUDI_TEST_UNSET_TOKEN"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DOUDI_TEST_UNSET_TOKEN"), "{err}");
}

#[test]
fn ops_a_bad_catalogue_is_usage_and_a_failed_doctor_is_infrastructure() {
    let (code, err) = doudi(&["topics", "apply", "--schemas", "/nonexistent"], &[]);
    assert_eq!(code, Some(2), "{err}");
    let db = no_database();
    let (code, err) = doudi(&["doctor", "--no-kafka"], &[("DOUDI_DATABASE_URL", &db), ("DOUDI_DATABASE_CONNECT_TIMEOUT_SECS", "2")]);
    assert_eq!(code, Some(3), "{err}");
}

#[test]
fn tools_invalid_data_is_a_finding_and_a_missing_policy_file_is_usage() {
    let (code, err) = doudi(&["id", "220102195003070016"], &[]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = doudi(&["policy", "check", "--policy", "/nonexistent.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
}
