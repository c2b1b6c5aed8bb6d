//! The audit log against the real PostgreSQL: a chain with nothing altered verifies; an edit, a
//! deletion and a reordering of entries in the database are each detected and named; an entry
//! sealed with another key is refused; the log never holds the ID number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use doudi::audit::{Auditor, Who, record, verify};
use doudi::db::Database;
use doudi::idnum::IdNumber;
use serde_json::json;

async fn exec(db: &Database, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(db.pool()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_a_deletion_and_a_reordering_are_each_detected() {
    let pg = common::fresh_postgres().await;
    let db = Database::connect(&pg.settings).await.unwrap();
    let auditor = Auditor::new(b"an-audit-key-for-the-tests-0123456789");
    let who = Who { actor: "caseworker-17".into(), purpose: "periodic review".into() };
    let id = IdNumber::parse("220102195003070015").unwrap();
    // Two writers at once: the numbering stays consecutive and the chain whole.
    let (a, b) = tokio::join!(
        async {
            for i in 0..4 {
                record(&db, &auditor, &who, "recipients show --unmasked", Some(&id), json!({"i": i})).await.unwrap();
            }
        },
        async {
            for i in 0..4 {
                record(&db, &auditor, &who, "policy apply", None, json!({"j": i})).await.unwrap();
            }
        }
    );
    let ((), ()) = (a, b);
    assert_eq!(verify(&db, &auditor).await.unwrap(), Ok(8));
    let stored: Vec<String> = sqlx::query_scalar("SELECT COALESCE(person, '') || actor || action || purpose || detail FROM audit_log")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert!(stored.iter().all(|s| !s.contains("220102195003070015") && !s.contains("19500307")));

    // An edit.
    exec(&db, "UPDATE audit_log SET purpose = 'curiosity' WHERE seq = 3").await;
    let broken = verify(&db, &auditor).await.unwrap().expect_err("an edit is detected");
    assert_eq!(broken.seq, 3);
    assert!(broken.reason.contains("edited"), "{}", broken.reason);
    exec(&db, "UPDATE audit_log SET purpose = 'periodic review' WHERE seq = 3").await;
    assert_eq!(verify(&db, &auditor).await.unwrap(), Ok(8));

    // A reordering: entries 2 and 5 swap places.
    exec(&db, "UPDATE audit_log SET seq = -2 WHERE seq = 2").await;
    exec(&db, "UPDATE audit_log SET seq = 2 WHERE seq = 5").await;
    exec(&db, "UPDATE audit_log SET seq = 5 WHERE seq = -2").await;
    let broken = verify(&db, &auditor).await.unwrap().expect_err("a reordering is detected");
    assert_eq!(broken.seq, 2);
    exec(&db, "UPDATE audit_log SET seq = -5 WHERE seq = 5").await;
    exec(&db, "UPDATE audit_log SET seq = 5 WHERE seq = 2").await;
    exec(&db, "UPDATE audit_log SET seq = 2 WHERE seq = -5").await;
    assert_eq!(verify(&db, &auditor).await.unwrap(), Ok(8));

    // Another key: a forger who can write the table cannot seal.
    let forger = Auditor::new(b"not-the-audit-key-0123456789abcdef");
    assert_eq!(verify(&db, &forger).await.unwrap().expect_err("another key").seq, 1);

    // A deletion, and one hidden by renumbering what follows.
    exec(&db, "DELETE FROM audit_log WHERE seq = 4").await;
    let broken = verify(&db, &auditor).await.unwrap().expect_err("a deletion is detected");
    assert_eq!(broken.seq, 5);
    assert!(broken.reason.contains("missing"), "{}", broken.reason);
    for seq in 5..=8 {
        exec(&db, &format!("UPDATE audit_log SET seq = {} WHERE seq = {seq}", seq - 1)).await;
    }
    let broken = verify(&db, &auditor).await.unwrap().expect_err("a renumbered deletion is detected");
    assert_eq!(broken.seq, 4);
    assert!(broken.reason.contains("link"), "{}", broken.reason);
}

/// `tap --unmasked` and `dlq list --unmasked` (the dead letters' originals, as a department needs
/// them to correct its rows): refused without an actor and a purpose, before anything is shown;
/// with them, every person shown is in the audit log first, by keyed hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_views_of_topics_and_dead_letters_are_audited_per_person() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let topic = format!("test.audit.{}", uuid::Uuid::new_v4().simple());
    let dlq = format!("dlq.{topic}");
    for t in [&topic, &dlq] {
        doudi::kafka::ensure_topic(&common::kafka(), t, 1, 1).await.unwrap();
    }
    let (first, second) = ("220102195003070015", "220102198506150029");
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    let payload = format!("{{\"id_number\": \"{first}\", \"name\": \"王某\"}}");
    producer.send(FutureRecord::to(&topic).key("k").payload(&payload), std::time::Duration::from_secs(10)).await.unwrap();
    let original = format!("{second}42,李某,2015-13-45,有效");
    let headers = OwnedHeaders::new()
        .insert(Header { key: "doudi_error_code", value: Some("format") })
        .insert(Header { key: "doudi_reason", value: Some("发证日期不是日期") });
    producer.send(FutureRecord::to(&dlq).key("k").payload(&original).headers(headers), std::time::Duration::from_secs(10)).await.unwrap();

    let (db, _dir) = common::sqlite();
    let env = [("DOUDI_DATABASE_URL", db.url.as_str()), ("DOUDI_AUDIT_ACTOR", "")];
    let unmasked = |args: &[&str]| common::run_doudi_env(args, &env);

    // Refused without an actor and a purpose; nothing shown.
    for args in [vec!["tap", "--topic", &topic, "--unmasked"], vec!["dlq", "list", "--topic", &topic, "--unmasked", "--actor", "ops-1"]] {
        let (code, stdout, stderr) = unmasked(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stdout.contains(first) && !stdout.contains(second), "{stdout}");
    }
    // Masked as ever without --unmasked.
    let (code, stdout, _) = unmasked(&["tap", "--topic", &topic]);
    assert_eq!(code, 0);
    assert!(!stdout.contains(first) && stdout.contains("2201**********0015"), "{stdout}");

    let audited = ["--actor", "ops-1", "--purpose", "correct the department's rows"];
    let (code, stdout, stderr) = unmasked(&[&["tap", "--topic", &topic, "--unmasked"][..], &audited].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(first) && stdout.contains("王某"), "shown as it is: {stdout}");
    let (code, stdout, stderr) = unmasked(&[&["dlq", "list", "--topic", &topic, "--unmasked", "--json"][..], &audited].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&original), "the original row, as the department sent it: {stdout}");

    for (person, action) in [(first, "tap --unmasked"), (second, "dlq list --unmasked")] {
        let (code, stdout, stderr) = unmasked(&["audit", "list", "--person", person, "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let entries: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(entries.len(), 1, "{person}: {stdout}");
        assert_eq!(entries[0]["action"], action);
        assert_eq!(entries[0]["actor"], "ops-1");
        assert_eq!(entries[0]["purpose"], "correct the department's rows");
        assert!(!stdout.contains(person), "the log holds a keyed hash, not the ID number: {stdout}");
    }
    let (code, stdout, _) = unmasked(&["audit", "verify"]);
    assert_eq!(code, 0, "{stdout}");
}
