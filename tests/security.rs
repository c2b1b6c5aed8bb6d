//! Least privilege on a secured broker of the test's own (`scripts/kafka --secure`: SCRAM-SHA-512
//! over TLS, mutual TLS, the StandardAuthorizer with default deny), with `doudi acl apply`'s plan:
//! doudi's components run end to end, each as its own principal; every principal is refused what
//! the plan does not give it; a wrong CA and an expired certificate are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::secure::{SecureKafka, env};
use doudi::config::KafkaSettings;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};

/// Runs doudi as a principal: the Kafka settings from `kafka`, the rest from `extra`.
fn doudi_as(kafka: &KafkaSettings, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(common::doudi_bin());
    command.args(args).env("DOUDI_LOG_LEVEL", "warn").env_remove("DOUDI_CONFIG").current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env(kafka) {
        command.env(k, v);
    }
    for (k, v) in extra {
        command.env(k, v);
    }
    let out = command.output().expect("doudi runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config(kafka: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.options {
        c.set(k, v);
    }
    c
}

/// Reads `topic` from its start in `group`: the records' values, or the error the broker gave.
fn read(kafka: &KafkaSettings, group: &str, topic: &str) -> Result<Vec<Value>, RDKafkaErrorCode> {
    let consumer: BaseConsumer = config(kafka)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut quiet_since = None;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                quiet_since = None;
                values.push(m.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null));
            }
            Some(Err(e)) => {
                if let Some(code) = e.rdkafka_error_code()
                    && matches!(
                        code,
                        RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::GroupAuthorizationFailed
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                {
                    return Err(code);
                }
            }
            None => {
                let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                if !values.is_empty() && since.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
        }
    }
    Ok(values)
}

/// Writes one record to `topic`: the broker's answer.
async fn write(kafka: &KafkaSettings, topic: &str, value: &Value) -> Result<(), RDKafkaErrorCode> {
    let producer: FutureProducer = config(kafka).set("message.timeout.ms", "15000").create().expect("producer");
    let body = value.to_string();
    let record = FutureRecord::to(topic).key("k").payload(&body);
    match producer.send(record, Duration::from_secs(20)).await {
        Ok(_) => Ok(()),
        Err((e, _)) => Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown)),
    }
}

/// Whether a client with `kafka` gets the broker's metadata at all.
fn connects(kafka: &KafkaSettings) -> bool {
    let consumer: BaseConsumer = config(kafka).set("group.id", "agency-medical-probe").create().expect("client");
    consumer.fetch_metadata(None, Duration::from_secs(10)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_broker_allows_each_principal_its_plan_and_nothing_else() {
    let broker = SecureKafka::start();
    let admin = broker.mtls("doudi-admin");
    let pg = common::fresh_postgres().await;
    let audited = [("DOUDI_DATABASE_URL", pg.settings.url.as_str()), ("DOUDI_AUDIT_ACTOR", "ops-admin-1")];

    // The administrator creates the topics and applies the plan; a second apply changes nothing,
    // and a rule that is not in the plan is removed.
    let (code, _, stderr) = doudi_as(&admin, &["topics", "apply"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = doudi_as(&admin, &["acl", "apply", "--json"], &[("DOUDI_DATABASE_URL", pg.settings.url.as_str())]);
    assert_eq!(code, 2, "acl apply names who applies it: {stderr}");
    let (code, stdout, stderr) = doudi_as(&admin, &["acl", "apply", "--json"], &audited);
    assert_eq!(code, 0, "{stderr}");
    let applied: Value = serde_json::from_str(&stdout).unwrap();
    let (_, plan, _) = doudi_as(&admin, &["acl", "plan", "--json"], &[]);
    let plan: Vec<Value> = serde_json::from_str(&plan).unwrap();
    assert_eq!(applied["add"].as_array().unwrap().len(), plan.len());
    for entry in &plan {
        let keys: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["operation", "pattern", "principal", "resource", "resource_type"]);
    }
    let stray = doudi::acl::Entry {
        principal: "User:intruder".into(),
        operation: doudi::acl::Operation::Read,
        resource_type: doudi::acl::ResourceType::Topic,
        resource: "dlq.dept.civil.household.v1".into(),
        pattern: doudi::acl::Pattern::Literal,
    };
    let tls = doudi::acl::AdminTls::from_settings(&admin, None).unwrap();
    let mut session = doudi::acl::Admin::connect(&tls).await.unwrap();
    session.apply(&doudi::acl::difference(&[stray], &[])).await.unwrap();
    let (code, stdout, stderr) = doudi_as(&admin, &["acl", "apply", "--json"], &audited);
    assert_eq!(code, 0, "{stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["add"], json!([]));
    assert_eq!(again["remove"].as_array().unwrap().len(), 1, "the stray rule is removed: {again}");
    assert_eq!(again["remove"][0]["principal"], "User:intruder");
    assert_eq!(again["unchanged"], plan.len());
    let (code, stdout, _) = doudi_as(&admin, &["audit", "list", "--json", "--actor", "ops-admin-1"], &audited);
    assert_eq!(code, 0);
    let actions: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(actions.len(), 2, "each apply that changed something is in the audit log: {stdout}");
    assert!(actions.iter().all(|a| a["action"] == "acl apply"));

    // End to end, each component as its own principal: the civil-affairs connector with SCRAM over
    // TLS, the matcher and the acks recorder with mutual TLS.
    let connector = broker.scram("doudi-connect-civil-household", "connector-password-0123456789");
    let (code, stdout, stderr) = doudi_as(
        &connector,
        &["connect", "--config", "connectors/civil-household.toml", "--input", "connectors/samples/civil-household.jsonl", "--once"],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let db_env = [("DOUDI_DATABASE_URL", pg.settings.url.as_str())];
    let matcher = broker.mtls("doudi-matcher");
    let (code, stdout, stderr) = doudi_as(&matcher, &["match", "--until-idle"], &db_env);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // The agency reads its own topic, and acknowledges on its own ack topic.
    let medical = broker.mtls("agency-medical");
    let events = read(&medical, "agency-medical-payments", "exchange.entitlement.medical.v1").expect("medical reads its topic");
    assert!(!events.is_empty(), "the matcher published medical entitlements");
    let event_id = events[0]["event_id"].as_str().unwrap().to_string();
    let ack = json!({"event_id": event_id, "agency": "medical", "status": "applied"});
    write(&medical, "exchange.ack.medical.v1", &ack).await.expect("medical acknowledges on its own topic");
    let acks = broker.mtls("doudi-acks");
    let (code, stdout, stderr) = doudi_as(&acks, &["acks", "--until-idle", "5s"], &db_env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let state: String =
        sqlx::query_scalar("SELECT state FROM deliveries WHERE ce_id = $1").bind(&event_id).fetch_one(db.pool()).await.unwrap();
    assert_eq!(state, "applied");

    // Refusals. An agency reads no other agency's topic and no dead letters.
    let housing = broker.scram("agency-housing", "housing-password-0123456789");
    assert_eq!(read(&medical, "agency-medical-x", "exchange.entitlement.housing.v1"), Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(read(&housing, "agency-housing-x", "exchange.entitlement.medical.v1"), Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(read(&medical, "agency-medical-x", "dlq.dept.civil.household.v1"), Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    // ... nor uses another agency's consumer groups.
    assert_eq!(read(&medical, "agency-housing-x", "exchange.entitlement.medical.v1"), Err(RDKafkaErrorCode::GroupAuthorizationFailed));
    // An agency cannot acknowledge another agency's entitlement: housing's ack topic is closed to it.
    let forged = json!({"event_id": event_id, "agency": "housing", "status": "applied"});
    assert_eq!(write(&medical, "exchange.ack.housing.v1", &forged).await, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    // A connector writes its own department's topic only, and reads none.
    assert_eq!(write(&connector, "dept.hrss.employment.v1", &json!({})).await, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(write(&connector, "exchange.entitlement.medical.v1", &json!({})).await, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(read(&connector, "doudi-reader-x", "dept.civil.household.v1"), Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    // The matcher does not write acknowledgements; the department reads its own dead letters only.
    assert_eq!(write(&matcher, "exchange.ack.medical.v1", &ack).await, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    let civil_staff = broker.mtls("dept-civil");
    assert_eq!(read(&civil_staff, "doudi-tap-x", "dlq.dept.hrss.employment.v1"), Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    // A principal the plan does not name can do nothing.
    let intruder = broker.mtls("intruder");
    for topic in ["dlq.dept.civil.household.v1", "exchange.entitlement.medical.v1", "exchange.recipient.status.v1"] {
        assert!(read(&intruder, "agency-medical-y", topic).is_err(), "{topic}");
    }
    assert!(write(&intruder, "dept.civil.household.v1", &json!({})).await.is_err());

    // TLS: a client that trusts another CA refuses the broker; the broker refuses an expired
    // client certificate, and a wrong password. The same client with the right ones connects.
    assert!(connects(&medical), "the control connects");
    let other_ca = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls"))
        .args(["ca", other_ca.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let wrong_ca = broker.mtls_with(&format!("{}/agency-medical", broker.tls()), &format!("{}/ca.pem", other_ca.path().display()));
    assert!(!connects(&wrong_ca), "a broker whose certificate another CA signed is refused");
    broker.script(&["cert", "agency-medical-old", "--expired"]);
    let expired = broker.mtls_with(&format!("{}/agency-medical-old", broker.tls()), &format!("{}/ca.pem", broker.tls()));
    assert!(!connects(&expired), "an expired client certificate is refused");
    let mut wrong_password = housing.clone();
    wrong_password.options.insert("sasl.password".into(), "not-the-password-0123456789".into());
    assert!(!connects(&wrong_password), "a wrong SCRAM password is refused");
}
