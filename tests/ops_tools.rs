//! `doudi dlq list` and `doudi tap` on the real broker: what a caseworker and an operator see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use doudi::config::Settings;
use doudi::connect::run::Connector;

fn doudi(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::doudi_bin())
        .args(args)
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_LOG_LEVEL", "warn")
        .env_remove("DOUDI_CONFIG")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_tap_are_masked() {
    let (config, registry) = common::isolated("edu-student").await;
    let topic = config.connector.topic.clone();
    let input = config.relative(&config.test.clone().unwrap().input);
    let settings = Settings { kafka: common::kafka(), ..Settings::default() };
    let summary = Connector::start(config, registry, &settings).await.unwrap().process_file(&input).await.unwrap();
    assert_eq!((summary.produced, summary.dead_lettered), (4, 3));

    let (code, table, err) = doudi(&["dlq", "list", "--topic", &topic]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 dead letter(s)"), "{err}");
    for expected in ["学段", "身份证件号", "变动日期", "edu-student.csv"] {
        assert!(table.contains(expected), "{expected} in {table}");
    }
    let (_, json, _) = doudi(&["dlq", "list", "--topic", &topic, "--json"]);
    let rows: Vec<u64> =
        json.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["source"]["row"].as_u64().unwrap()).collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(sorted, vec![5, 6, 7]);
    assert!(!json.contains("220103200303030269"), "the original row is masked: {json}");
    assert!(json.contains("2201**********0269"), "{json}");

    let (code, tapped, _) = doudi(&["tap", "--topic", &topic, "--limit", "10"]);
    assert_eq!(code, 0);
    assert_eq!(tapped.lines().count(), 4);
    for line in tapped.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["value"]["id_number"].as_str().unwrap();
        assert!(id.contains("**********"), "{id}");
        assert!(v["value"]["name"].as_str().unwrap().ends_with('*'));
        assert!(v["headers"]["ce_id"].is_string());
    }
    let (code, _, err) = doudi(&["dlq", "list", "--topic", &topic, "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
}
