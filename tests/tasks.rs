//! `doudi tasks list`: the review tasks as a caseworker's queue, oldest first, filtered by kind
//! and state, one JSON object per line with the person masked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_list_prints_the_queue_oldest_first_with_the_person_masked_on_sqlite_and_postgresql() {
    let (sqlite, _dir) = common::sqlite();
    queue_is_listed(sqlite).await;
    let pg = common::fresh_postgres().await;
    queue_is_listed(pg.settings.clone()).await;
}

async fn queue_is_listed(settings: doudi::config::DatabaseSettings) {
    let db = doudi::db::Database::connect(&settings).await.unwrap();
    for (id, kind, person, created, state) in [
        ("t-2", "deceased_member", Some("220102195003070015"), "2020-03-05", "open"),
        ("t-1", "identity_conflict", Some("220102198506150029"), "2020-01-15", "open"),
        ("t-3", "periodic_review_due", None, "2020-06-01", "cleared"),
    ] {
        sqlx::query(
            "INSERT INTO review_tasks (task_id, kind, id_number, household_id, region, created_on, rule, detail, state, created_at) \
             VALUES ($1, $2, $3, 'JL-220102-2019-000123', '220102', $4, 'V1', '{}', $5, $4)",
        )
        .bind(id)
        .bind(kind)
        .bind(person)
        .bind(created)
        .bind(state)
        .execute(db.pool())
        .await
        .unwrap();
    }
    db.close().await;
    let env = [("DOUDI_DATABASE_URL", settings.url.as_str())];
    let (code, stdout, stderr) = common::run_doudi_env(&["tasks", "list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["t-1", "t-2", "t-3"], "oldest first");
    assert_eq!(lines[0]["kind"], "identity_conflict");
    assert_eq!(lines[0]["state"], "open");
    assert_eq!(lines[0]["household_id"], "JL-220102-2019-000123");
    assert_eq!(lines[0]["person"], "2201**********0029");
    assert_eq!(lines[2]["person"], serde_json::Value::Null);
    assert!(lines[0]["age_days"].as_i64().unwrap() > 365);
    assert!(!stdout.contains("220102198506150029") && !stdout.contains("220102195003070015"), "{stdout}");

    let (_, stdout, _) = common::run_doudi_env(&["tasks", "list", "--json", "--state", "open", "--kind", "deceased_member"], &env);
    let ids: Vec<String> =
        stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["t-2"]);
    let (code, table, _) = common::run_doudi_env(&["tasks", "list"], &env);
    assert_eq!(code, 0);
    assert!(
        table.contains("identity_conflict") && table.contains("2201**********0015") && !table.contains("220102195003070015"),
        "{table}"
    );
}
