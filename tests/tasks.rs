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
        ("t-3", "periodic_review_due", None, "2020-06-01", "cancelled"),
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

use common::matching::*;
use doudi::db::Database;
use doudi::matcher::tasks::{TaskError, act};
use doudi::matcher::{Context, Feed};
use serde_json::{Value, json};
use sqlx::Row;

const CHILD: &str = "22010220110601003X";

async fn task_id(db: &Database, kind: &str) -> String {
    sqlx::query("SELECT task_id FROM review_tasks WHERE kind = $1 AND state IN ('open', 'in_progress') ORDER BY created_at")
        .bind(kind)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("task_id")
}

fn resolve(task: &str, outcome: &str) -> Value {
    json!({"task_id": task, "action": "resolve", "actor": "caseworker-07", "outcome": outcome, "reason": "经入户核实。"})
}

async fn fact_states(db: &Database, field: &str) -> Vec<String> {
    sqlx::query("SELECT state FROM facts WHERE field = $1 ORDER BY id")
        .bind(field)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("state"))
        .collect()
}

/// Education's record of the child of 000124 under a name the registry does not know: held.
async fn held_student(db: &Database, ctx: &Context, f: &mut Feeder, level: &str, on: &str) -> String {
    let student = json!({"id_number": CHILD, "name": "刘某某", "student_level": level, "status": "enrolled", "changed_on": on});
    let o = apply(db, ctx, &[f.event(Feed::Student, student)]).await;
    assert_eq!(o.held, 1);
    task_id(db, "identity_conflict").await
}

async fn audit_entries(db: &Database) -> Vec<doudi::audit::Entry> {
    doudi::audit::list(db, None, None, None).await.unwrap()
}

#[tokio::test]
async fn same_person_releases_the_held_facts_and_keeps_the_name_as_a_known_variant() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000124";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        let task = held_student(&db, &ctx, &mut f, "junior", "2019-12-15").await;
        assert_eq!(fact_states(&db, "student_level").await, ["held"]);
        let mark = last_outbox_id(&db).await;

        // An outcome of another kind, and an unknown task, are refused naming what is allowed.
        let wrong = act(&db, &ctx, "cli", resolve(&task, "confirmed")).await.unwrap_err();
        assert!(wrong.to_string().contains("same_person, different_person"), "{wrong}");
        let unknown = act(&db, &ctx, "cli", resolve("3a2b1c0d-9e8f-5a7b-8c6d-5e4f3a2b1c0d", "same_person")).await.unwrap_err();
        assert!(matches!(unknown, TaskError::NotFound(_)));

        let done = act(&db, &ctx, "cli", resolve(&task, "same_person")).await.unwrap();
        assert_eq!(
            (done.state.as_str(), done.outcome.as_deref(), done.resolved_by.as_deref()),
            ("resolved", Some("same_person"), Some("caseworker-07"))
        );
        assert_eq!(fact_states(&db, "student_level").await, ["current"], "the held fact is applied");
        let rows = outbox_since(&db, mark).await;
        assert_eq!(
            labels(&rows),
            sorted(vec![
                "exchange.entitlement.education.v1 changed student_aid 2201**********003X",
                "exchange.review-task.v1 identity_conflict 2201**********003X",
            ]),
            "the deltas the released fact causes, and the task's transition"
        );
        let event = &rows.iter().find(|r| r.0.contains("review")).unwrap().3;
        assert_eq!(event["task_id"], task.as_str());
        assert_eq!((event["state"].as_str(), event["outcome"].as_str()), (Some("resolved"), Some("same_person")));
        assert_eq!(event["transition"]["from"], "open");
        assert_eq!((event["transition"]["actor"].as_str(), event["transition"]["via"].as_str()), (Some("caseworker-07"), Some("cli")));
        ctx.registry.for_topic("exchange.review-task.v1").unwrap().violations(event).is_empty().then_some(()).expect("valid event");

        // Audited, with the chain intact and no personal data in the entry.
        let entries = audit_entries(&db).await;
        let entry = entries.iter().find(|e| e.action == "task.resolve").unwrap();
        assert_eq!(entry.actor, "caseworker-07");
        assert!(entry.person.is_some() && !entry.detail.contains(CHILD) && !entry.detail.contains("入户"), "{}", entry.detail);
        let auditor = doudi::audit::Auditor::new(doudi::config::DEVELOPMENT_AUDIT_KEY.as_bytes());
        assert_eq!(doudi::audit::verify(&db, &auditor).await.unwrap(), Ok(entries.len() as u64));

        // Final: the task cannot be resolved again.
        let again = act(&db, &ctx, "cli", resolve(&task, "different_person")).await.unwrap_err();
        assert!(again.to_string().contains("resolved already"), "{again}");

        // The department's name is now a known variant: its next record is applied, not held.
        let student =
            json!({"id_number": CHILD, "name": "刘某某", "student_level": "senior", "status": "enrolled", "changed_on": "2020-09-01"});
        let o = apply(&db, &ctx, &[f.event(Feed::Student, student)]).await;
        assert_eq!((o.applied, o.held, o.review_tasks), (1, 0, 0));
        let transitions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM review_task_transitions WHERE task_id = $1")
            .bind(&task)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(transitions, 1);
    })
    .await;
}

#[tokio::test]
async fn different_person_rejects_the_held_facts_and_tells_the_department_with_a_dead_letter() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000124";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        let task = held_student(&db, &ctx, &mut f, "junior", "2019-12-15").await;
        let mark = last_outbox_id(&db).await;
        act(&db, &ctx, "cli", resolve(&task, "different_person")).await.unwrap();
        assert_eq!(fact_states(&db, "student_level").await, ["rejected"]);
        let rows = sqlx::query("SELECT topic, ce_type, payload FROM outbox WHERE id > $1 ORDER BY id")
            .bind(mark)
            .fetch_all(db.pool())
            .await
            .unwrap();
        let topics: Vec<String> = rows.iter().map(|r| r.get::<String, _>("topic")).collect();
        assert_eq!(topics, ["dlq.dept.edu.student.v1", "exchange.review-task.v1"], "no entitlement moves");
        assert_eq!(rows[0].get::<String, _>("ce_type"), doudi::matcher::casework::DEAD_LETTER_TYPE);
        let (headers, original) = doudi::matcher::casework::dead_letter_parts(&rows[0].get::<String, _>("payload")).unwrap();
        let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(
            (h("error_code").as_str(), h("stage").as_str(), h("topic").as_str()),
            ("identity_rejected", "review", "dept.edu.student.v1")
        );
        assert_eq!((h("source_file").as_str(), h("task_id").as_str()), ("test.jsonl", task.as_str()));
        assert!(h("reason").contains("2201**********003X") && !h("reason").contains(CHILD), "{}", h("reason"));
        assert!(original.contains("student_level"));
        let variant: String = sqlx::query("SELECT state FROM name_variants WHERE id_number = $1")
            .bind(CHILD)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("state");
        assert_eq!(variant, "rejected");
        // The same name again is held again, with a new task: the rejection is not a known name.
        let student =
            json!({"id_number": CHILD, "name": "刘某某", "student_level": "senior", "status": "enrolled", "changed_on": "2020-09-01"});
        let o = apply(&db, &ctx, &[f.event(Feed::Student, student)]).await;
        assert_eq!((o.held, o.review_tasks), (1, 1));
    })
    .await;
}

async fn decision(db: &Database, household_id: &str) -> (String, String) {
    let r = sqlx::query("SELECT d.category, d.rules FROM decisions d JOIN households h ON h.household_id = d.household_id AND h.decision_version = d.version WHERE d.household_id = $1")
        .bind(household_id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    (r.get("category"), r.get("rules"))
}

#[tokio::test]
async fn a_confirmed_refusal_ends_dibao_and_a_justified_one_stops_counting() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        // 000507's head refused two referrals within six months (J1): a task, 低保 unchanged.
        const HH: &str = "JL-220802-2019-000507";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        assert_eq!(decision(&db, HH).await.0, "dibao");
        let task = task_id(&db, "cancel_dibao_refused_referrals").await;

        // Assigned first: in progress, stored and published.
        let mark = last_outbox_id(&db).await;
        let assigned = act(
            &db,
            &ctx,
            "workbench",
            json!({"task_id": task, "action": "assign", "actor": "supervisor-01", "assignee": "caseworker-07"}),
        )
        .await
        .unwrap();
        assert_eq!((assigned.state.as_str(), assigned.assignee.as_deref()), ("in_progress", Some("caseworker-07")));
        let rows = outbox_since(&db, mark).await;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].3["state"].as_str(), rows[0].3["transition"]["via"].as_str()), (Some("in_progress"), Some("workbench")));

        // Confirmed on 2020-01-20: 低保 ends from that day (J1), the agencies are told.
        let mark = last_outbox_id(&db).await;
        let mut confirmed = resolve(&task, "confirmed");
        confirmed["decided_on"] = json!("2020-01-20");
        act(&db, &ctx, "cli", confirmed).await.unwrap();
        let (category, rules) = decision(&db, HH).await;
        assert_eq!(category, "none");
        assert!(rules.split(' ').any(|r| r == "J1"), "{rules}");
        let rows = outbox_since(&db, mark).await;
        let status = &rows.iter().find(|r| r.0.contains("status")).unwrap().3;
        assert_eq!((status["previous_category"].as_str(), status["effective_date"].as_str()), (Some("dibao"), Some("2020-01-20")));
        assert!(rows.iter().any(|r| r.1.starts_with("ended")), "{:?}", labels(&rows));
        let review =
            sqlx::query("SELECT source, topic, ce_id FROM facts WHERE field LIKE 'referral_review:%'").fetch_one(db.pool()).await.unwrap();
        assert_eq!(
            (review.get::<String, _>("source").as_str(), review.get::<String, _>("topic").as_str()),
            ("dept.civil.review-resolution.v1", "cli"),
            "the finding keeps its provenance"
        );

        // The same household elsewhere, found justified: the refusals no longer count, 低保 stays,
        // and the re-assessment raises no new task.
        let mut other = household(HH);
        other["household_id"] = json!("JL-220802-2019-000508");
        for m in other["members"].as_array_mut().unwrap() {
            let id = m["id_number"].as_str().unwrap().to_string();
            // Another family with the same facts: other sequence numbers, the same birth dates and sexes.
            m["id_number"] = json!(doudi::idnum::complete(&format!("{}9{}", &id[..14], &id[15..17])).unwrap());
        }
        apply(&db, &ctx, &[f.event(Feed::Household, other)]).await;
        let second = sqlx::query("SELECT task_id FROM review_tasks WHERE household_id = 'JL-220802-2019-000508'")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get::<String, _>("task_id");
        let mut justified = resolve(&second, "not_confirmed");
        justified["decided_on"] = json!("2020-01-20");
        act(&db, &ctx, "cli", justified).await.unwrap();
        assert_eq!(decision(&db, "JL-220802-2019-000508").await.0, "dibao");
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM review_tasks WHERE household_id = 'JL-220802-2019-000508' AND state IN ('open', 'in_progress')",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(open, 0);
    })
    .await;
}

#[tokio::test]
async fn a_reviewed_death_with_the_household_corrected_is_not_raised_again() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000124";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        let death = json!({"id_number": "220102198302110113", "event": "death", "date": "2020-02-01", "source": "殡葬"});
        apply(&db, &ctx, &[f.event(Feed::Vital, death)]).await;
        let task = task_id(&db, "deceased_member").await;
        // The caseworker corrects the composition: the spouse is no longer a member.
        let mut corrected = household(HH);
        corrected["as_of"] = json!("2020-02-10");
        corrected["members"].as_array_mut().unwrap().retain(|m| m["id_number"] != "220102198302110113");
        let mut reviewed = resolve(&task, "reviewed");
        reviewed["household"] = corrected.clone();
        // A corrected household that is not the task's is refused.
        let mut elsewhere = reviewed.clone();
        elsewhere["household"]["household_id"] = json!("JL-220102-2019-000999");
        assert!(act(&db, &ctx, "cli", elsewhere).await.unwrap_err().to_string().contains("not the task's household"));
        let mut bad = reviewed.clone();
        bad["household"]["region"] = json!("999999");
        let refused = act(&db, &ctx, "cli", bad).await.unwrap_err().to_string();
        assert!(refused.contains("dept.civil.household.v1") && refused.contains("/region"), "{refused}");

        act(&db, &ctx, "cli", reviewed).await.unwrap();
        let members: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM household_members WHERE household_id = $1 AND valid_to IS NULL")
            .bind(HH)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(members, 2, "the corrected composition is the registration now");
        // Re-assessing again (another fact of the household) raises no second death task.
        let student = json!({"id_number": CHILD, "name": "张小某", "student_level": "junior", "status": "enrolled", "changed_on": "2020-03-01"});
        apply(&db, &ctx, &[f.event(Feed::Student, student)]).await;
        let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM review_tasks WHERE kind = 'deceased_member'").fetch_one(db.pool()).await.unwrap();
        assert_eq!(tasks, 1);

        // Reviewed without a correction (000123: the deceased is still registered): re-assessing
        // the household does not raise the death again.
        const ALONE: &str = "JL-220102-2019-000123";
        apply(&db, &ctx, &[f.event(Feed::Household, household(ALONE))]).await;
        let death = json!({"id_number": "220102195003070015", "event": "death", "date": "2020-02-01", "source": "殡葬"});
        apply(&db, &ctx, &[f.event(Feed::Vital, death)]).await;
        let task = sqlx::query_scalar::<_, String>("SELECT task_id FROM review_tasks WHERE kind = 'deceased_member' AND household_id = $1")
            .bind(ALONE)
            .fetch_one(db.pool())
            .await
            .unwrap();
        act(&db, &ctx, "cli", resolve(&task, "reviewed")).await.unwrap();
        let disability = json!({"id_number": "220102195003070015", "certificate_no": "22010219500307001513", "category": "physical", "grade": 3, "status": "valid", "issued_on": "2020-03-01"});
        let o = apply(&db, &ctx, &[f.event(Feed::Disability, disability)]).await;
        assert_eq!(o.review_tasks, 0, "a reviewed death is settled");
        let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM review_tasks WHERE kind = 'deceased_member' AND household_id = $1")
            .bind(ALONE)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(tasks, 1);
    })
    .await;
}
