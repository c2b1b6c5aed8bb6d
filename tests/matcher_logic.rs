//! The matcher's database logic, on both backends: the same scenarios run on SQLite (the demo's
//! embedded default) and on the real PostgreSQL server. Events are applied with `apply_batch` in
//! one transaction each, as `doudi match` does; Kafka is exercised in tests/matcher.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::matching::*;
use doudi::config::DatabaseSettings;
use doudi::db::Database;
use doudi::matcher::{Feed, Inbound};
use serde_json::{Value, json};
use sqlx::Row;

#[tokio::test]
async fn facts_wait_for_their_household_and_employment_moves_it_between_categories() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000124";
        // Housing first: the person has no household yet; the fact is kept.
        let housing = fixture("housing-difficulty", |v| v["id_number"] == "220102198506150029");
        let o = apply(&db, &ctx, &[f.event(Feed::Housing, housing)]).await;
        assert_eq!((o.applied, o.households_evaluated, o.outbox), (1, 0, 0));
        // The household arrives: the housing difficulty applies to it.
        let o = apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        assert_eq!((o.applied, o.households_evaluated, o.decisions), (1, 1, 1));
        assert_eq!(category(&db, HH).await, ("dibao".to_string(), "904.50".to_string()), "POLICY.md worked case 1");
        let first = outbox_since(&db, 0).await;
        assert_eq!(
            labels(&first),
            sorted(vec![
                "exchange.entitlement.education.v1 granted student_aid 2201**********003X",
                "exchange.entitlement.housing.v1 granted housing_assistance 2201**********0029",
                "exchange.entitlement.hrss.v1 granted employment_assistance 2201**********0029",
                "exchange.entitlement.medical.v1 granted medical_assistance_class2 2201**********003X",
                "exchange.entitlement.medical.v1 granted medical_assistance_class2 2201**********0029",
                "exchange.entitlement.medical.v1 granted medical_assistance_class2 2201**********0113",
                "exchange.entitlement.medical.v1 granted premium_subsidy_fixed 2201**********003X",
                "exchange.entitlement.medical.v1 granted premium_subsidy_fixed 2201**********0029",
                "exchange.entitlement.medical.v1 granted premium_subsidy_fixed 2201**********0113",
                "exchange.recipient.status.v1 status ",
            ])
        );
        let education = first.iter().find(|r| r.0.contains("education")).unwrap();
        assert_eq!(education.3["student_level"], "primary");
        assert!(
            education.3.get("monthly_payment").is_none() && education.3.get("category").is_none(),
            "education sees no household finances"
        );

        // The head finds work (2019-12-01, 1800 a month): per capita (3000 − 2 × 183) / 3 = 878 > 610.
        let mark = last_outbox_id(&db).await;
        let employed = fixture("hrss-employment", |v| v["event"] == "employed");
        let o = apply(&db, &ctx, &[f.event(Feed::Employment, employed.clone())]).await;
        assert_eq!(o.decisions, 1);
        assert_eq!(category(&db, HH).await, ("low_income".to_string(), "0.00".to_string()));
        let moved = outbox_since(&db, mark).await;
        assert_eq!(
            labels(&moved),
            sorted(vec![
                "exchange.entitlement.housing.v1 changed housing_assistance 2201**********0029",
                "exchange.entitlement.hrss.v1 ended employment_assistance 2201**********0029",
                "exchange.entitlement.medical.v1 ended medical_assistance_class2 2201**********003X",
                "exchange.entitlement.medical.v1 ended medical_assistance_class2 2201**********0029",
                "exchange.entitlement.medical.v1 ended medical_assistance_class2 2201**********0113",
                "exchange.entitlement.medical.v1 ended premium_subsidy_fixed 2201**********003X",
                "exchange.entitlement.medical.v1 ended premium_subsidy_fixed 2201**********0029",
                "exchange.entitlement.medical.v1 ended premium_subsidy_fixed 2201**********0113",
                "exchange.entitlement.medical.v1 granted medical_assistance_class3 2201**********003X",
                "exchange.entitlement.medical.v1 granted medical_assistance_class3 2201**********0029",
                "exchange.entitlement.medical.v1 granted medical_assistance_class3 2201**********0113",
                "exchange.recipient.status.v1 status ",
            ])
        );
        let housing = moved.iter().find(|r| r.0.contains("housing")).unwrap();
        assert_eq!(housing.3["category"], "low_income");
        let status = moved.iter().find(|r| r.0.contains("status")).unwrap();
        assert_eq!((status.3["previous_category"].as_str(), status.3["category"].as_str()), (Some("dibao"), Some("low_income")));

        // An older employment fact arrives late: recorded as stale, changes nothing.
        let mark = last_outbox_id(&db).await;
        let older = json!({"id_number": "220102198506150029", "event": "unemployed", "date": "2019-11-01"});
        let o = apply(&db, &ctx, &[f.event(Feed::Employment, older)]).await;
        assert_eq!((o.stale, o.decisions, o.outbox), (1, 0, 0));
        let states: Vec<String> =
            sqlx::query("SELECT state FROM facts WHERE id_number = '220102198506150029' AND field = 'employment' ORDER BY id")
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("state"))
                .collect();
        assert_eq!(states, vec!["current", "stale"]);
        assert_eq!(category(&db, HH).await.0, "low_income");

        // The same event delivered again: nothing at all.
        let again = f.event(Feed::Employment, employed);
        let mut duplicate = again.clone();
        apply(&db, &ctx, &[again]).await;
        duplicate.offset += 100;
        let o = apply(&db, &ctx, &[duplicate]).await;
        assert_eq!((o.duplicates, o.applied, o.outbox), (1, 0, 0));
        assert_eq!(outbox_since(&db, mark).await.len(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_death_ends_entitlements_and_its_revocation_restores_them() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000123";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        assert_eq!(category(&db, HH).await, ("tekun".to_string(), "1084.00".to_string()));
        let mark = last_outbox_id(&db).await;
        let death = json!({"id_number": "220102195003070015", "name": "王某", "event": "death", "date": "2019-12-20", "source": "殡葬"});
        apply(&db, &ctx, &[f.event(Feed::Vital, death)]).await;
        let ended = outbox_since(&db, mark).await;
        assert_eq!(
            labels(&ended),
            sorted(vec![
                "exchange.entitlement.medical.v1 ended medical_assistance_class1 2201**********0015",
                "exchange.entitlement.medical.v1 ended premium_subsidy_full 2201**********0015",
                "exchange.recipient.status.v1 status ",
                "exchange.review-task.v1 deceased_member 2201**********0015",
            ])
        );
        assert!(ended.iter().all(|r| r.3.get("effective_date").is_none_or(|d| d == "2019-12-20")));
        let task = &ended.iter().find(|r| r.0.contains("review")).unwrap().3;
        assert!(task["detail"].as_str().unwrap().contains("2201**********0015"));
        assert!(!task["detail"].as_str().unwrap().contains("220102195003070015"), "task details are masked");
        assert_eq!(category(&db, HH).await.0, "none");

        let mark = last_outbox_id(&db).await;
        let revoked = json!({"id_number": "220102195003070015", "event": "death_revoked", "date": "2019-12-28", "source": "公安"});
        apply(&db, &ctx, &[f.event(Feed::Vital, revoked)]).await;
        let restored = outbox_since(&db, mark).await;
        assert_eq!(
            labels(&restored),
            sorted(vec![
                "exchange.entitlement.medical.v1 granted medical_assistance_class1 2201**********0015",
                "exchange.entitlement.medical.v1 granted premium_subsidy_full 2201**********0015",
                "exchange.recipient.status.v1 status ",
                "exchange.review-task.v1 deceased_member 2201**********0015",
            ])
        );
        let cancelled = &restored.iter().find(|r| r.0.contains("review")).unwrap().3;
        assert_eq!((cancelled["state"].as_str(), cancelled["transition"]["via"].as_str()), (Some("cancelled"), Some("matcher")));
        assert_eq!(category(&db, HH).await.0, "tekun");
        let task_state: String =
            sqlx::query("SELECT state FROM review_tasks WHERE kind = 'deceased_member'").fetch_one(db.pool()).await.unwrap().get("state");
        assert_eq!(task_state, "cancelled", "the revocation cancels the task the death raised");
        let history: i64 = sqlx::query("SELECT COUNT(*) AS n FROM entitlements WHERE household_id = $1")
            .bind(HH)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(history, 4, "ended entitlements stay as history beside the restored ones");
    })
    .await;
}

#[tokio::test]
async fn a_name_that_conflicts_with_the_registry_is_held_for_review() {
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        const HH: &str = "JL-220102-2019-000124";
        apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
        let mark = last_outbox_id(&db).await;
        // Education reports the child under another name: not merged; held; a caseworker checks.
        let student = json!({"id_number": "22010220110601003X", "name": "刘某某", "student_level": "junior", "status": "enrolled", "changed_on": "2019-12-15"});
        let o = apply(&db, &ctx, &[f.event(Feed::Student, student)]).await;
        assert_eq!((o.held, o.decisions), (1, 0));
        let rows = outbox_since(&db, mark).await;
        assert_eq!(labels(&rows), vec!["exchange.review-task.v1 identity_conflict 2201**********003X"]);
        assert_eq!(rows[0].3["household_id"], HH);
        let state: String = sqlx::query("SELECT state FROM facts WHERE field = 'student_level'").fetch_one(db.pool()).await.unwrap().get("state");
        assert_eq!(state, "held");
        let name: String = sqlx::query("SELECT name FROM persons WHERE id_number = '22010220110601003X'").fetch_one(db.pool()).await.unwrap().get("name");
        assert_eq!(name, "张小某", "the registry's name stands");
        // The same name as registered is applied normally.
        let student = json!({"id_number": "22010220110601003X", "name": "张小某", "student_level": "junior", "status": "enrolled", "changed_on": "2019-12-15"});
        let o = apply(&db, &ctx, &[f.event(Feed::Student, student)]).await;
        assert_eq!((o.applied, o.held), (1, 0));
        let level: String = sqlx::query("SELECT attributes FROM entitlements WHERE kind = 'student_aid' AND ended_on IS NULL").fetch_one(db.pool()).await.unwrap().get("attributes");
        assert_eq!(level, r#"{"student_level":"junior"}"#);
    })
    .await;
}

#[tokio::test]
async fn an_unusable_event_is_recorded_and_the_batch_goes_on() {
    let (settings, _dir): (DatabaseSettings, _) = common::sqlite();
    let db = Database::connect(&settings).await.unwrap();
    let ctx = context();
    let mut f = Feeder { offset: 0 };
    let bad = json!({"id_number": "220102195003070016", "event": "death", "date": "2019-12-20"});
    let good = household("JL-220102-2019-000123");
    let o = apply(&db, &ctx, &[f.event(Feed::Vital, bad), f.event(Feed::Household, good)]).await;
    assert_eq!((o.invalid, o.applied, o.decisions), (1, 1, 1));
    let outcome: String =
        sqlx::query("SELECT outcome FROM processed_events WHERE kafka_offset = 1").fetch_one(db.pool()).await.unwrap().get("outcome");
    assert_eq!(outcome, "invalid");
}

/// The shipped parameters without 长春's 2020-07-01 standard (650), as the version before it.
fn params_before_changchun_2020() -> doudi::policy::Params {
    let mut p = doudi::policy::Params::shipped().unwrap();
    let july = chrono::NaiveDate::from_ymd_opt(2020, 7, 1).unwrap();
    p.dibao_standard.retain(|e| !(e.region == "220100" && e.from >= july));
    p.policy.version = "2019-07-01.1".into();
    p
}

async fn decisions_count(db: &Database, household_id: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM decisions WHERE household_id = $1")
        .bind(household_id)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn a_policy_change_publishes_exactly_the_deltas_it_causes() {
    use doudi::matcher::policy_change;
    both_backends(|db| async move {
        let old = context_with(params_before_changchun_2020());
        policy_change::establish(&db, old.params.as_ref().clone()).await.unwrap();
        let mut f = Feeder { offset: 0 };
        // 000201 (长春, 220104) with 630 a head: low income under 610, 低保 under 650.
        let mut near = household("JL-220104-2019-000201");
        for m in near["members"].as_array_mut().unwrap() {
            m["income"]["transfer"] = json!("630");
        }
        // A 白城 household whose id sorts between two 长春 ones: a chunk of the change read by its id
        // range (on PostgreSQL) reads it too, and must leave it alone.
        let mut between = household("JL-220802-2019-000507");
        between["household_id"] = json!("JL-220102-2019-0001235");
        let events = vec![
            f.event(Feed::Household, household("JL-220102-2019-000123")),
            f.event(Feed::Household, household("JL-220102-2019-000124")),
            f.event(Feed::Household, near),
            f.event(Feed::Household, household("JL-220202-2019-000310")),
            f.event(Feed::Household, between),
        ];
        apply(&db, &old, &events).await;
        assert_eq!(category(&db, "JL-220104-2019-000201").await, ("low_income".to_string(), "0.00".to_string()));
        assert_eq!(category(&db, "JL-220102-2019-000124").await.1, "904.50", "POLICY.md worked case 1");
        let before_吉林 = decisions_count(&db, "JL-220202-2019-000310").await;
        let before_between = decisions_count(&db, "JL-220102-2019-0001235").await;

        // The summaries the matcher keeps on each household row are what migration 0004's backfill
        // builds from the decisions.
        let written = stored_summaries(&db).await;
        assert_eq!(written.len(), 5);
        sqlx::query("UPDATE households SET decision_summary = NULL").execute(db.pool()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(summary_backfill(&db))).execute(db.pool()).await.unwrap();
        assert_eq!(stored_summaries(&db).await, written);
        // A summary naming another decision than the row's (left by an older doudi) is not trusted:
        // this one claims the household is already 低保, and the status event below still says it
        // moves from low income.
        sqlx::query(
            "UPDATE households SET decision_summary = $1 WHERE household_id = 'JL-220104-2019-000201'",
        )
        .bind(json!({"version": 0, "category": "dibao", "basis": null, "size": 2, "per_capita_income": "630.00",
                     "monthly_payment": "40.00", "policy_version": "2020-07-01.1", "rules": ""}).to_string())
        .execute(db.pool())
        .await
        .unwrap();

        let mark = last_outbox_id(&db).await;
        let new = context();
        let summary = policy_change::apply(&db, &new, 2).await.unwrap();
        assert_eq!(summary.previous_version.as_deref(), Some("2019-07-01.1"));
        assert_eq!(summary.regions, vec!["220100".to_string()]);
        assert_eq!(summary.effective_date, chrono::NaiveDate::from_ymd_opt(2020, 7, 1));
        assert_eq!(summary.households, 3, "the three 长春 households, not 吉林's");
        let published = outbox_since(&db, mark).await;
        assert_eq!(
            labels(&published),
            sorted(vec![
                // 000123 and 000124 stay 低保 with a higher payment: a status change only.
                "exchange.recipient.status.v1 status ",
                "exchange.recipient.status.v1 status ",
                // 000201 moves from low income to 低保 (employment help it had already).
                "exchange.recipient.status.v1 status ",
                "exchange.entitlement.medical.v1 ended medical_assistance_class3 2201**********0215",
                "exchange.entitlement.medical.v1 ended medical_assistance_class3 2201**********0226",
                "exchange.entitlement.medical.v1 granted medical_assistance_class2 2201**********0215",
                "exchange.entitlement.medical.v1 granted medical_assistance_class2 2201**********0226",
                "exchange.entitlement.medical.v1 granted premium_subsidy_fixed 2201**********0215",
                "exchange.entitlement.medical.v1 granted premium_subsidy_fixed 2201**********0226",
            ])
        );
        for (topic, _, _, payload) in &published {
            assert_eq!(payload["effective_date"], "2020-07-01", "{topic}: decided as of the effective date");
            if topic.contains("entitlement") {
                // Names are read for the people the events name, after the households are decided.
                let registered: String = sqlx::query("SELECT name FROM persons WHERE id_number = $1")
                    .bind(payload["id_number"].as_str().unwrap())
                    .fetch_one(db.pool())
                    .await
                    .unwrap()
                    .get("name");
                assert_eq!(payload["name"].as_str(), Some(registered.as_str()), "{topic}: the person's registered name");
            }
        }
        let statuses: Vec<&Value> = published.iter().filter(|r| r.0.contains("status")).map(|r| &r.3).collect();
        assert!(statuses.iter().all(|s| s["policy_version"] == "2020-07-01.1"));
        let moved = statuses.iter().find(|s| s["household_id"] == "JL-220104-2019-000201").unwrap();
        assert_eq!((moved["previous_category"].as_str(), moved["category"].as_str()), (Some("low_income"), Some("dibao")));
        // Worked case 1 under 650: (650 − 335) × 3 = 945.00 and its add-ons move with the standard.
        assert_ne!(category(&db, "JL-220102-2019-000124").await.1, "904.50");
        assert_eq!(decisions_count(&db, "JL-220202-2019-000310").await, before_吉林, "other regions are not touched");
        assert_eq!(decisions_count(&db, "JL-220102-2019-0001235").await, before_between, "nor a household of another region inside a chunk's id range");
        // Deliveries follow every entitlement event.
        let deliveries: i64 = sqlx::query("SELECT COUNT(*) AS n FROM deliveries d JOIN outbox o ON o.ce_id = d.ce_id WHERE o.id > $1 AND d.state = 'pending'")
            .bind(mark)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(deliveries, 6);

        // The same version again: nothing.
        let mark = last_outbox_id(&db).await;
        let again = policy_change::apply(&db, &new, 2).await.unwrap();
        assert!(again.already_applied);
        assert_eq!(last_outbox_id(&db).await, mark);
        // The same version string with other parameters is refused.
        let mut edited = doudi::policy::Params::shipped().unwrap();
        edited.dibao_standard.retain(|e| e.region != "220800");
        assert!(matches!(
            policy_change::apply(&db, &context_with(edited), 2).await,
            Err(policy_change::PolicyChangeError::VersionReused(_))
        ));
        // A later event dated before the change is still decided under the new standard.
        let employed = json!({"id_number": "220102198506150029", "event": "unemployed", "date": "2020-03-01"});
        apply(&db, &new, &[f.event(Feed::Employment, employed)]).await;
        let latest = sqlx::query("SELECT d.effective_date FROM decisions d JOIN households h ON h.household_id = d.household_id AND h.decision_version = d.version WHERE d.household_id = 'JL-220102-2019-000124'")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(latest.get::<String, _>("effective_date"), "2020-07-01");
    })
    .await;
}

/// Every household's stored decision summary, parsed.
async fn stored_summaries(db: &Database) -> Vec<(String, Value)> {
    sqlx::query("SELECT household_id, decision_summary FROM households ORDER BY household_id")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("household_id"), serde_json::from_str(&r.get::<String, _>("decision_summary")).unwrap()))
        .collect()
}

/// Migration 0004's statement that fills `households.decision_summary`, for this backend.
fn summary_backfill(db: &Database) -> String {
    let backend = match db.backend() {
        doudi::db::Backend::Postgres => "postgres",
        doudi::db::Backend::Sqlite => "sqlite",
    };
    let text = std::fs::read_to_string(format!("{}/migrations/{backend}/0004_lighter_writes.sql", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let start = text.find("UPDATE households").unwrap();
    text[start..start + text[start..].find(';').unwrap()].to_string()
}

/// What `doudi review --date D` does: the households due on D, re-evaluated as of D.
#[tokio::test]
async fn review_re_evaluates_the_households_that_cross_a_date_and_raises_periodic_reviews() {
    use doudi::matcher::calendar::Boundary;
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        // 000123's head (born 1950-03-07) with a supporter and no disability: 低保 without add-on.
        let mut supported = household("JL-220102-2019-000123");
        supported["members"][0]["supporters"] = json!("able");
        supported["members"][0]["disability"] = Value::Null;
        apply(&db, &ctx, &[f.event(Feed::Household, supported), f.event(Feed::Household, household("JL-220102-2019-000124"))]).await;
        assert_eq!(category(&db, "JL-220102-2019-000123").await, ("dibao".to_string(), "310.00".to_string()), "610 − 300");
        let review = |date: &'static str| review_on(db.clone(), ctx.clone(), date);
        // 2020-03-07: the head of 000123 (born 1950-03-07) turns 70: the aged-70 add-on applies.
        let mark = last_outbox_id(&db).await;
        let due = review("2020-03-07").await;
        assert_eq!(due.households.keys().collect::<Vec<_>>(), vec!["JL-220102-2019-000123"]);
        assert_eq!(due.households["JL-220102-2019-000123"], [Boundary::Birthday].into_iter().collect());
        let published = outbox_since(&db, mark).await;
        assert_eq!(labels(&published), sorted(vec!["exchange.recipient.status.v1 status "]));
        assert_eq!(published[0].3["effective_date"], "2020-03-07");
        assert_eq!(category(&db, "JL-220102-2019-000123").await.1, "401.50", "310.00 + the aged-70 add-on 0.15 × 610");
        // The same day again: nothing new.
        let mark = last_outbox_id(&db).await;
        review("2020-03-07").await;
        assert_eq!(last_outbox_id(&db).await, mark);
        // A day with no boundary: nobody.
        assert!(review("2020-03-08").await.households.is_empty());
        // 2020-06-01: six months after 000124's decision (able-bodied members): its periodic review.
        let mark = last_outbox_id(&db).await;
        let due = review("2020-06-01").await;
        assert_eq!(due.households.keys().collect::<Vec<_>>(), vec!["JL-220102-2019-000124"]);
        let published = outbox_since(&db, mark).await;
        assert_eq!(labels(&published), sorted(vec!["exchange.review-task.v1 periodic_review_due 2201**********0029"]));
        let next: String = sqlx::query("SELECT next_review_on FROM households WHERE household_id = 'JL-220102-2019-000124'")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("next_review_on");
        assert_eq!(next, "2020-12-01");
        // Reviewed: not due again the next day, and the task stays open for the caseworker.
        assert!(review("2020-06-02").await.households.is_empty());
        let open: i64 = sqlx::query("SELECT COUNT(*) AS n FROM review_tasks WHERE kind = 'periodic_review_due' AND state = 'open'")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(open, 1);
        // 2020-07-01: 长春's new standard (650) takes effect for both households.
        let mark = last_outbox_id(&db).await;
        let due = review("2020-07-01").await;
        assert_eq!(due.households.len(), 2);
        assert!(due.households.values().all(|why| why.contains(&Boundary::ParameterInForce)));
        assert_eq!(category(&db, "JL-220102-2019-000123").await.1, "447.50", "650 − 300 + 0.15 × 650");
        assert!(outbox_since(&db, mark).await.iter().filter(|r| r.0.contains("status")).count() == 2);
        // 000123 (no able-bodied member) is reviewed yearly: 2020-12-01.
        let due = review("2020-12-01").await;
        assert!(due.households["JL-220102-2019-000123"].contains(&Boundary::PeriodicReview));
    })
    .await;
}

#[tokio::test]
async fn review_catches_a_refusal_leaving_its_window_and_a_residence_permit_coming_of_age() {
    use doudi::matcher::calendar::Boundary;
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        // 000507: its head refused referrals on 2019-10-01 and 2019-11-15 (registered with the
        // household): two within six months, a caseworker is asked to review (J1).
        // A migrant household: agricultural hukou elsewhere, a 长春 residence permit of 2019-05-15.
        let mut migrant = household("JL-220102-2019-000123");
        migrant["household_id"] = json!("JL-220102-2020-000900");
        migrant["as_of"] = json!("2020-01-10");
        let head = &mut migrant["members"][0];
        head["hukou_region"] = json!("220721");
        head["hukou_type"] = json!("agricultural");
        head["residence_permit"] = json!({"region": "220102", "issued": "2019-05-15"});
        head["pension_months"] = json!(24);
        head["medical_insurance_months"] = json!(24);
        apply(&db, &ctx, &[f.event(Feed::Household, household("JL-220802-2019-000507")), f.event(Feed::Household, migrant)]).await;
        let open = |db: Database| async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM review_tasks WHERE kind = 'cancel_dibao_refused_referrals' AND state = 'open'",
            )
            .fetch_one(db.pool())
            .await
            .unwrap()
        };
        assert_eq!(open(db.clone()).await, 1);
        assert_eq!(category(&db, "JL-220102-2020-000900").await.0, "none", "the permit is not 12 months old yet");
        let review = |date: &'static str| review_on(db.clone(), ctx.clone(), date);
        // 2020-04-01: the 2019-10-01 refusal leaves the six months; one refusal is left.
        let due = review("2020-04-01").await;
        assert_eq!(due.households.get("JL-220802-2019-000507"), Some(&[Boundary::RefusalWindow].into_iter().collect()));
        assert_eq!(open(db.clone()).await, 0, "the data no longer raises the task: cancelled");
        // 2020-05-15: the permit is 12 months old; the household is assessed as local (R1).
        let mark = last_outbox_id(&db).await;
        let due = review("2020-05-15").await;
        assert!(due.households["JL-220102-2020-000900"].contains(&Boundary::ResidencePermit));
        assert_ne!(category(&db, "JL-220102-2020-000900").await.0, "none");
        let status = outbox_since(&db, mark).await.into_iter().find(|r| r.0.contains("status")).unwrap();
        assert_eq!((status.3["previous_category"].as_str(), status.3["effective_date"].as_str()), (Some("none"), Some("2020-05-15")));
    })
    .await;
}

#[tokio::test]
async fn review_catches_a_medical_settlement_leaving_its_twelve_months() {
    use doudi::matcher::calendar::Boundary;
    both_backends(|db| async move {
        let ctx = context();
        let mut f = Feeder { offset: 0 };
        // 000310 (吉林): 1,500 a head, but 26,519.50 self-paid on 2019-08-15 and 3,480.50 on
        // 2019-12-03 make it expense-poor (E1).
        let settlements: Vec<Inbound> = ["220202196811020315", "220202196901200424"]
            .iter()
            .map(|id| f.event(Feed::Settlement, fixture("medical-settlement", |v| v["id_number"] == *id)))
            .collect();
        apply(&db, &ctx, &[f.event(Feed::Household, household("JL-220202-2019-000310"))]).await;
        apply(&db, &ctx, &settlements).await;
        let before = category(&db, "JL-220202-2019-000310").await;
        assert_eq!(before.0, "dibao");
        // 2020-08-15: the large settlement is twelve months old and leaves the window.
        let mark = last_outbox_id(&db).await;
        let due = review_on(db.clone(), ctx.clone(), "2020-08-15").await;
        assert!(due.households["JL-220202-2019-000310"].contains(&Boundary::SettlementWindow));
        let after = category(&db, "JL-220202-2019-000310").await;
        assert_ne!(after, before, "without the settlement the household is no longer expense-poor");
        let status = outbox_since(&db, mark).await.into_iter().find(|r| r.0.contains("status")).unwrap();
        assert_eq!((status.3["previous_category"].as_str(), status.3["effective_date"].as_str()), (Some("dibao"), Some("2020-08-15")));
        // The day before, nothing: the settlement still counts.
        let mark = last_outbox_id(&db).await;
        assert!(!review_on(db.clone(), ctx.clone(), "2020-08-14").await.households.contains_key("JL-220202-2019-000310"));
        assert_eq!(last_outbox_id(&db).await, mark);
    })
    .await;
}

/// The state that must not depend on the order facts arrive in: the household's current decision
/// and the entitlements in force.
async fn order_free_state(db: &Database, household_id: &str) -> (String, String, Vec<String>) {
    let (category, payment) = category(db, household_id).await;
    let entitlements = sqlx::query(
        "SELECT agency, kind, id_number FROM entitlements WHERE household_id = $1 AND ended_on IS NULL ORDER BY agency, kind, id_number",
    )
    .bind(household_id)
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| format!("{} {} {}", r.get::<String, _>(0), r.get::<String, _>(1), doudi::idnum::mask(&r.get::<String, _>(2))))
    .collect();
    (category, payment, entitlements)
}

/// A household's six events — its registration, a member's employment, a child's schooling, the
/// housing office's finding, a death and the death's revocation — applied one by one in `order`.
async fn household_in_order(order: &[usize]) -> (String, String, Vec<String>) {
    const HH: &str = "JL-220102-2019-000124";
    let events = [
        (Feed::Household, household(HH)),
        (Feed::Employment, fixture("hrss-employment", |v| v["id_number"] == "220102198506150029")),
        (Feed::Student, fixture("edu-student", |v| v["id_number"] == "22010220110601003X")),
        (Feed::Housing, fixture("housing-difficulty", |v| v["id_number"] == "220102198506150029")),
        (Feed::Vital, json!({"id_number": "220102198506150029", "name": "李某", "event": "death", "date": "2019-12-20", "source": "殡葬"})),
        (Feed::Vital, json!({"id_number": "220102198506150029", "event": "death_revoked", "date": "2019-12-28", "source": "公安"})),
    ];
    let (settings, _dir) = common::sqlite();
    let db = Database::connect(&settings).await.unwrap();
    let ctx = context();
    let mut f = Feeder { offset: 0 };
    for &i in order {
        let (feed, payload) = events[i].clone();
        apply(&db, &ctx, &[f.event(feed, payload)]).await;
    }
    order_free_state(&db, HH).await
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..proptest::prelude::ProptestConfig::default() })]
    /// Out-of-order facts: whatever order a household's events arrive in, it ends with the same
    /// decision and the same entitlements in force as when they arrive in order.
    #[test]
    fn any_order_of_a_households_events_gives_the_same_final_state(
        order in proptest::strategy::Strategy::prop_shuffle(proptest::strategy::Just((0..6).collect::<Vec<usize>>()))
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (in_order, shuffled) = runtime.block_on(async { (household_in_order(&[0, 1, 2, 3, 4, 5]).await, household_in_order(&order).await) });
        proptest::prop_assert!(!in_order.2.is_empty(), "the household holds entitlements: {:?}", in_order);
        proptest::prop_assert_eq!(in_order, shuffled, "order {:?}", order);
    }
}
