//! Synthetic households on an isolated exchange, the final state that must not depend on crashes
//! or outages, and the same input applied by one clean run.

use std::time::Duration;

use sqlx::Row;

/// Creates every outbound topic the matcher writes, named `test.<name>.<suffix>`; returns their names.
pub async fn outbound_topics(suffix: &str) -> Vec<String> {
    outbound_topics_on(&super::kafka(), suffix).await
}

/// [`outbound_topics`] on the broker of `kafka`.
pub async fn outbound_topics_on(kafka: &doudi::config::KafkaSettings, suffix: &str) -> Vec<String> {
    let names: Vec<String> = doudi::matcher::Outbound::with_affixes("test.", &format!(".{suffix}")).names.into_values().collect();
    for name in &names {
        doudi::kafka::ensure_topic(kafka, name, 3, 1).await.unwrap();
    }
    names
}

/// `households` synthetic households (a registration and an employment event each) on the inbound
/// topics `test.<feed>.<suffix>`, as a connector would write them (CloudEvents headers, HMAC keys).
pub async fn produce(suffix: &str, households: u32) {
    produce_on(&super::kafka(), suffix, households).await
}

/// [`produce`] on the broker of `kafka`.
pub async fn produce_on(kafka: &doudi::config::KafkaSettings, suffix: &str, households: u32) {
    produce_range_on(kafka, suffix, 0..households).await
}

/// Households numbered `range` (two events each) on the broker of `kafka`.
pub async fn produce_range_on(kafka: &doudi::config::KafkaSettings, suffix: &str, range: std::ops::Range<u32>) {
    use doudi::envelope::{Envelope, KeyDeriver};
    use doudi::matcher::synthetic;
    use rdkafka::producer::FutureRecord;
    let producer = doudi::kafka::idempotent_producer(kafka).unwrap();
    let keys = KeyDeriver::new(&doudi::config::Settings::default().keys);
    let mut pending = Vec::new();
    for n in range {
        for (feed, data, who) in [
            (doudi::matcher::Feed::Household, synthetic::household(n), synthetic::person(n, 0)),
            (doudi::matcher::Feed::Employment, synthetic::employment(n), synthetic::person(n, 1)),
        ] {
            let topic = format!("test.{}.{}", feed.topic(), suffix);
            let env = Envelope::new("doudi://test/synthetic", feed.topic(), feed.topic(), &format!("{n}"), &data, chrono::Utc::now());
            let headers = env.to_headers(&[("source_file", "synthetic"), ("source_row", &n.to_string())]);
            let key = keys.key(&doudi::idnum::IdNumber::parse(&who).unwrap());
            let payload = data.to_string();
            let record = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The final state that must not depend on crashes: current decisions and entitlements in force.
pub async fn final_state(url: &str) -> (Vec<String>, Vec<String>, i64) {
    let db = doudi::db::Database::connect(&doudi::config::DatabaseSettings { url: url.into(), ..Default::default() }).await.unwrap();
    let decisions = sqlx::query(
        "SELECT d.household_id, d.category, d.monthly_payment, d.size, d.rules, d.effective_date FROM decisions d \
         JOIN households h ON h.household_id = d.household_id AND h.decision_version = d.version ORDER BY d.household_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "{} {} {} {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2),
            r.get::<i64, _>(3),
            r.get::<String, _>(4),
            r.get::<String, _>(5)
        )
    })
    .collect();
    let entitlements = sqlx::query(
        "SELECT household_id, agency, kind, id_number, attributes FROM entitlements WHERE ended_on IS NULL ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "{} {} {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2),
            r.get::<String, _>(3),
            r.get::<String, _>(4)
        )
    })
    .collect();
    let facts: i64 = sqlx::query("SELECT COUNT(*) AS n FROM facts WHERE state = 'current'").fetch_one(db.pool()).await.unwrap().get("n");
    (decisions, entitlements, facts)
}

/// The same input applied by one uninterrupted run into another database, publishing to other
/// topics: the state every other run must end in.
pub async fn clean_reference(suffix: &str) -> (Vec<String>, Vec<String>, i64) {
    clean_reference_on(&super::kafka(), suffix).await
}

/// [`clean_reference`] reading the broker of `kafka`.
pub async fn clean_reference_on(kafka: &doudi::config::KafkaSettings, suffix: &str) -> (Vec<String>, Vec<String>, i64) {
    let clean = super::fresh_postgres().await;
    let reference_suffix = format!("{}-clean", suffix);
    let ctx = doudi::matcher::Context {
        params: std::sync::Arc::new(doudi::policy::Params::shipped().unwrap()),
        keys: doudi::envelope::KeyDeriver::new(&doudi::config::Settings::default().keys),
        registry: std::sync::Arc::new(
            doudi::schema::Registry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap(),
        ),
        outbound: doudi::matcher::Outbound::with_affixes("test.", &format!(".{reference_suffix}")),
        today: chrono::Local::now().date_naive(),
        auditor: doudi::audit::Auditor::new(doudi::config::DEVELOPMENT_AUDIT_KEY.as_bytes()),
    };
    outbound_topics_on(kafka, &reference_suffix).await;
    let options = doudi::matcher::MatchOptions {
        group: super::unique("clean"),
        inbound: doudi::matcher::MatchOptions::inbound_with_affixes("test.", &format!(".{}", suffix)),
        batch_size: 500,
        batch_wait: Duration::from_millis(200),
        until_idle: true,
        idle_after: Duration::from_secs(1),
        assignment_timeout: Duration::from_secs(60),
        owner: "clean".into(),
        outbox_retention: None,
    };
    let clean_db = doudi::db::Database::connect(&clean.settings).await.unwrap();
    doudi::matcher::run(&clean_db, kafka, &ctx, &options, std::future::pending()).await.unwrap();
    final_state(&clean.settings.url).await
}
