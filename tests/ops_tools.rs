//! `doudi dlq list` and `doudi tap` on the real broker: what a caseworker and an operator see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use doudi::config::Settings;
use doudi::connect::run::Connector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_tap_are_masked() {
    let (config, registry) = common::isolated("edu-student").await;
    let topic = config.connector.topic.clone();
    let input = config.relative(&config.test.clone().unwrap().input);
    let settings = Settings { kafka: common::kafka(), ..Settings::default() };
    let summary = Connector::start(config, registry, &settings).await.unwrap().process_file(&input).await.unwrap();
    assert_eq!((summary.produced, summary.dead_lettered), (4, 3));

    let (code, table, err) = common::run_doudi(&["dlq", "list", "--topic", &topic]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 dead letter(s)"), "{err}");
    for expected in ["学段", "身份证件号", "变动日期", "edu-student.csv"] {
        assert!(table.contains(expected), "{expected} in {table}");
    }
    let (_, json, _) = common::run_doudi(&["dlq", "list", "--topic", &topic, "--json"]);
    let rows: Vec<u64> =
        json.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["source"]["row"].as_u64().unwrap()).collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(sorted, vec![5, 6, 7]);
    assert!(!json.contains("220103200303030269"), "the original row is masked: {json}");
    assert!(json.contains("2201**********0269"), "{json}");

    let (code, tapped, _) = common::run_doudi(&["tap", "--topic", &topic, "--limit", "10"]);
    assert_eq!(code, 0);
    assert_eq!(tapped.lines().count(), 4);
    for line in tapped.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["value"]["id_number"].as_str().unwrap();
        assert!(id.contains("**********"), "{id}");
        assert!(v["value"]["name"].as_str().unwrap().ends_with('*'));
        assert!(v["headers"]["ce_id"].is_string());
    }
    let (code, _, err) = common::run_doudi(&["dlq", "list", "--topic", &topic, "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
}

/// Reads a whole topic (read_committed) into its JSON values.
async fn read_all(topic: &str) -> Vec<serde_json::Value> {
    let mut values = Vec::new();
    doudi::tap::read(&common::kafka(), topic, None, 10_000, false, doudi::tap::View::Masked, &mut |t| values.push(t.value)).await.unwrap();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_dead_letters_replay_exactly_once_and_still_wrong_rows_return_to_the_dlq() {
    let (config, registry) = common::isolated("edu-student").await;
    let topic = config.connector.topic.clone();
    let input = config.relative(&config.test.clone().unwrap().input);
    let settings = Settings { kafka: common::kafka(), ..Settings::default() };
    let mut connector = Connector::start(config, registry, &settings).await.unwrap();
    let summary = connector.process_file(&input).await.unwrap();
    assert_eq!((summary.produced, summary.dead_lettered), (4, 3));

    // The caseworker corrects rows 5 (学段) and 7 (变动日期); row 6's ID number is still wrong.
    let fixed = [
        r#"{"学生姓名":"某学生乙","身份证件号":"220103200303030269","学段":"高校","学校名称":"某大学","在读状态":"在读","变动日期":"2019/9/1"}"#,
        r#"{"学生姓名":"某学生丙","身份证件号":"220104200808080281","学段":"初中","学校名称":"某初中","在读状态":"在读","变动日期":"2019/9/1"}"#,
        r#"{"学生姓名":"某学生丁","身份证件号":"220105200909090306","学段":"初中","学校名称":"某初中","在读状态":"退学","变动日期":"2019/11/1"}"#,
    ]
    .join("\n");
    let first = doudi::connect::replay::replay(&mut connector, fixed.as_bytes(), "fixed.jsonl").await.unwrap();
    assert_eq!((first.read, first.produced, first.dead_lettered), (3, 2, 1));
    // The same file again: recognised, nothing produced.
    let again = doudi::connect::replay::replay(&mut connector, fixed.as_bytes(), "fixed.jsonl").await.unwrap();
    assert!(again.already_processed);
    assert_eq!((again.produced, again.dead_lettered), (0, 0));
    // The last row, now with a valid ID number.
    let id = doudi::idnum::complete("22010420080808028").unwrap();
    let last = format!(
        r#"{{"学生姓名":"某学生丙","身份证件号":"{id}","学段":"初中","学校名称":"某初中","在读状态":"在读","变动日期":"2019/9/1"}}"#
    );
    let second = doudi::connect::replay::replay(&mut connector, last.as_bytes(), "fixed-2.jsonl").await.unwrap();
    assert_eq!((second.produced, second.dead_lettered), (1, 0));

    let events = read_all(&topic).await;
    assert_eq!(events.len(), 7, "4 good rows + 3 corrected, each once");
    let levels: Vec<&str> = events.iter().filter_map(|e| e["student_level"].as_str()).collect();
    assert!(levels.contains(&"university"), "the corrected 学段 is mapped like any row: {levels:?}");
    let dead = read_all(&format!("dlq.{topic}")).await;
    assert_eq!(dead.len(), 4, "the 3 original dead letters + the one still wrong");

    // The command finds the connector by topic, and says which field names it expects.
    let dir = tempfile::tempdir().unwrap();
    let missing = doudi::connect::replay::find_config(dir.path(), std::path::Path::new("schemas"), &topic, None).unwrap_err();
    assert!(missing.contains("no connector"), "{missing}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let found =
        doudi::connect::replay::find_config(&root.join("connectors"), &root.join("schemas"), "dlq.dept.edu.student.v1", None).unwrap();
    assert!(found.ends_with("edu-student.toml"));
}
