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
