//! The schemas, the topic catalogue and the compatibility check, seen from outside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use doudi::schema::{self, Registry};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

#[test]
fn the_shipped_schemas_pass_every_check() {
    let problems = schema::check(&schemas_dir());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_catalogue_topic_has_a_schema_and_every_feed_a_topic() {
    let registry = Registry::load(&schemas_dir()).unwrap();
    for topic in [
        "dept.civil.household.v1",
        "dept.hrss.employment.v1",
        "dept.edu.student.v1",
        "dept.housing.difficulty.v1",
        "dept.union.roster.v1",
        "dept.medical.settlement.v1",
        "dept.vital.event.v1",
        "dept.cdpf.disability.v1",
        "exchange.recipient.status.v1",
        "exchange.entitlement.medical.v1",
        "exchange.entitlement.education.v1",
        "exchange.entitlement.housing.v1",
        "exchange.entitlement.hrss.v1",
        "exchange.entitlement.union.v1",
        "exchange.review-task.v1",
        "dlq.dept.union.roster.v1",
    ] {
        let schema = registry.for_topic(topic).unwrap_or_else(|e| panic!("{topic}: {e}"));
        assert!(!schema.examples().is_empty());
    }
    assert!(registry.catalogue.topic("dlq.dept.edu.student.v1").unwrap().restricted);
}

#[test]
fn docs_topics_md_equals_the_catalogue() {
    let catalogue = schema::Catalogue::load(&schemas_dir()).unwrap();
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/topics.md")).unwrap();
    assert!(docs == catalogue.render_markdown(), "docs/topics.md is stale: run `doudi schemas docs > docs/topics.md`");
}

#[test]
fn an_independent_validator_agrees() {
    let dir = schemas_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/validate_schemas.py");
    let out = Command::new("python3").arg(&script).arg(&dir).output().expect("python3 runs (scripts/setup installs it)");
    assert!(out.status.success(), "Python jsonschema refused the schemas:\n{}", String::from_utf8_lossy(&out.stderr));
    let registry = Registry::load(&dir).unwrap();
    let mut compared = 0;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let verdict: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = verdict["schema"].as_str().unwrap();
        let index = verdict["index"].as_u64().unwrap() as usize;
        let python_valid = verdict["valid"].as_bool().unwrap();
        let schema = registry.schemas.get(file).unwrap_or_else(|| panic!("{file} not in the catalogue"));
        let (rust_valid, expected) = if verdict["kind"] == "example" {
            (schema.is_valid(schema.examples()[index]), true)
        } else {
            let fixtures = schema::fixtures(&dir, file).unwrap();
            let (_, expected, _, data) = fixtures.iter().find(|f| f.0 == index).unwrap();
            (schema.is_valid(data), *expected)
        };
        assert_eq!(python_valid, expected, "Python: {file} {} {index}", verdict["kind"]);
        assert_eq!(rust_valid, expected, "Rust: {file} {} {index}", verdict["kind"]);
        compared += 1;
    }
    assert!(compared > 200, "only {compared} verdicts compared");
}

/// A copy of the schema folder to break in a test.
fn scratch_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = schemas_dir();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    for entry in std::fs::read_dir(src.join("fixtures")).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.path().join("fixtures").join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_schema(dir: &Path, file: &str, change: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(file);
    let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut schema);
    std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
}

fn breaking_problems(dir: &Path) -> Vec<String> {
    schema::check(dir).into_iter().filter(|p| p.message.contains("breaking change")).map(|p| p.message).collect()
}

#[test]
fn compatibility_check_refuses_each_kind_of_breaking_change() {
    let file = "dept.edu.student.v1.json";
    // Removed field.
    let dir = scratch_copy();
    edit_schema(dir.path(), file, |s| {
        s["properties"].as_object_mut().unwrap().remove("school");
    });
    assert!(breaking_problems(dir.path()).iter().any(|p| p.contains("/school")), "removed");
    assert!(schema::publish(dir.path()).is_err(), "publish refuses a breaking change");
    // Renamed field.
    let dir = scratch_copy();
    edit_schema(dir.path(), file, |s| {
        let props = s["properties"].as_object_mut().unwrap();
        let v = props.remove("school").unwrap();
        props.insert("school_name".into(), v);
    });
    assert!(breaking_problems(dir.path()).iter().any(|p| p.contains("/school")), "renamed");
    // Narrowed type.
    let dir = scratch_copy();
    edit_schema(dir.path(), file, |s| s["properties"]["status"]["enum"] = serde_json::json!(["enrolled", "graduated"]));
    assert!(breaking_problems(dir.path()).iter().any(|p| p.contains("/status")), "narrowed");
    // New required field.
    let dir = scratch_copy();
    edit_schema(dir.path(), file, |s| {
        s["properties"]["grade"] = serde_json::json!({"type": "integer"});
        s["required"].as_array_mut().unwrap().push("grade".into());
        s["examples"][0]["grade"] = serde_json::json!(3);
    });
    assert!(breaking_problems(dir.path()).iter().any(|p| p.contains("new required field /grade")), "new required");
    // An additive change passes and can be published.
    let dir = scratch_copy();
    edit_schema(dir.path(), file, |s| s["properties"]["class_name"] = serde_json::json!({"type": "string"}));
    assert!(breaking_problems(dir.path()).is_empty());
    assert!(schema::publish(dir.path()).is_ok());
    assert!(schema::check(dir.path()).is_empty());
}

#[test]
fn validate_command_reports_line_and_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("students.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"id_number":"22010220110601003X","student_level":"primary","status":"enrolled","changed_on":"2019-09-01"}"#,
            "\n\n",
            r#"{"id_number":"220102201106010038","student_level":"primary","status":"enrolled","changed_on":"2019/9/1"}"#,
            "\nnot json\n"
        ),
    )
    .unwrap();
    let out = Command::new(common::doudi_bin())
        .args(["schemas", "validate", "--dir", schemas_dir().to_str().unwrap(), "--topic", "dept.edu.student.v1", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("students.jsonl:3: /id_number"), "{stdout}");
    assert!(stdout.contains("students.jsonl:3: /changed_on"), "{stdout}");
    assert!(stdout.contains("students.jsonl:4: /: not JSON"), "{stdout}");
    assert!(stdout.contains("3 lines, 1 valid, 2 invalid"), "{stdout}");
    assert!(!stdout.contains("220102201106010038"), "no values in errors: {stdout}");
}
