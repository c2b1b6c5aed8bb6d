//! The `doudi` binary as a user runs it: subcommands, exit codes, errors that name the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

/// `doudi` with no settings from the environment but `env`, on a development machine (the
/// built-in keys allowed; [`doudi_strict`] without that).
fn doudi(args: &[&str], env: &[(&str, &str)]) -> Output {
    doudi_strict(args, &[&[("DOUDI_KEYS_DEVELOPMENT", "true")], env].concat())
}

fn doudi_strict(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::doudi_bin());
    cmd.args(args).env_remove("DOUDI_CONFIG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOUDI_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run doudi")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_subcommands_that_exist() {
    let out = doudi(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for sub in ["doctor", "config", "assess", "policy", "id"] {
        assert!(help.contains(sub), "{sub} in {help}");
    }
}

#[test]
fn the_built_in_keys_are_refused_outside_development() {
    let out = doudi_strict(&["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("keys.hmac_secret") && err.contains("DOUDI_KEYS_DEVELOPMENT"), "{err}");
    let own = [("DOUDI_KEYS_HMAC_SECRET", "a-deployment-secret-0123456789"), ("DOUDI_KEYS_AUDIT_KEY", "a-deployment-audit-key-0123456789")];
    let out = doudi_strict(&["config", "check"], &own);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("0123456789"), "the secrets stay out of config check's output");
}

#[test]
fn bad_configuration_stops_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doudi.toml");
    std::fs::write(&path, "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\nlinger = 5\n").unwrap();
    let out = doudi(&["--settings", path.to_str().unwrap(), "config", "check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("linger"), "{}", text(&out.stderr));
    let out = doudi(&["config", "check"], &[("DOUDI_HTTP_PORT", "nine")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("DOUDI_HTTP_PORT"), "{}", text(&out.stderr));
    let out = doudi(&["config", "check"], &[("DOUDI_DATABASE_URL", "postgres://u:topsecret@h/d")]);
    assert!(out.status.success());
    assert!(!text(&out.stdout).contains("topsecret"));
}

#[test]
fn assess_prints_the_contract_and_explains() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/tekun-single.json");
    let out = doudi(&["assess", "--date", "2020-01-15", example], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["household"]["monthly_payment"], "1149.00");
    assert_eq!(decision["rules"], serde_json::json!(["A1", "W1", "T1", "T2", "T3"]));
    assert!(decision.get("explanation").is_none());
    let out = doudi(&["assess", "--date", "2020-01-15", "--explain", example], &[]);
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = decision["explanation"].as_array().unwrap();
    assert!(steps.iter().any(|s| s.as_str().unwrap().contains("793.00")), "{steps:?}");
    assert!(!text(&out.stdout).contains("220102195003070015"));
}

#[test]
fn assess_refuses_bad_input_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.json");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/tekun-single.json")).unwrap();
    std::fs::write(&path, example.replace("\"relation\": \"head\"", "\"relation\": \"spouse\"")).unwrap();
    let out = doudi(&["assess", "--date", "2020-01-15", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("head"), "{}", text(&out.stderr));
    std::fs::write(&path, example.replace("220102195003070015", "220102195003070016")).unwrap();
    let out = doudi(&["assess", "--date", "2020-01-15", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("members[0].id_number") && !err.contains("220102195003070016"), "{err}");
    let out = doudi(&["assess", "--date", "2016-01-15", concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/tekun-single.json")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("date"), "{}", text(&out.stderr));
}

#[test]
fn policy_check_passes_on_the_shipped_parameters_and_fails_on_a_violation() {
    let out = doudi(&["policy", "check"], &[]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let table = text(&out.stdout);
    for region in ["220100", "220200", "222400", "220800"] {
        assert!(table.contains(region), "{region}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/jilin.toml")).unwrap();
    std::fs::write(&path, shipped.replacen("yuan = \"650\"", "yuan = \"900\"", 1)).unwrap();
    let out = doudi(&["policy", "check", "--policy", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("VIOLATION"));
}

#[test]
fn id_reports_and_exit_codes() {
    let out = doudi(&["id", " 11010519491231002x ", "220102500307001"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[0]["normalised"], "1101**********002X");
    assert_eq!(lines[0]["birth_date"], "1949-12-31");
    assert_eq!(lines[0]["sex"], "female");
    assert_eq!(lines[0]["division_name"], "北京市");
    assert_eq!(lines[1]["upgraded_from_15"], true);
    assert_eq!(lines[1]["division_name"], "吉林省长春市南关区");
    let out = doudi(&["id", "--unmasked", "11010519491231002x"], &[]);
    assert_eq!(out.status.code(), Some(2), "unmasked needs --actor and --purpose");
    assert!(text(&out.stdout).is_empty());
    let audit_db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/audit.db", audit_db.path().display());
    let out = doudi(
        &["id", "--unmasked", "--actor", "caseworker-17", "--purpose", "check a form", "11010519491231002x"],
        &[("DOUDI_DATABASE_URL", url.as_str())],
    );
    assert!(text(&out.stdout).contains("\"normalised\":\"11010519491231002X\""));
    let out = doudi(&["audit", "list", "--json"], &[("DOUDI_DATABASE_URL", url.as_str())]);
    assert!(text(&out.stdout).contains("\"action\":\"id --unmasked\""), "{}", text(&out.stdout));
    let out = doudi(&["id", "11010519491231002X", "110105194912310021"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("check character"));
}
