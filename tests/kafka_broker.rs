//! Against the real Apache Kafka broker started by scripts/kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

#[tokio::test]
async fn round_trip_through_the_real_broker() {
    let kafka = common::kafka();
    let topic = common::unique("test.roundtrip");
    let group = common::unique("test-group");
    let rt = doudi::kafka::round_trip(&kafka, &topic, &group, Duration::from_secs(60)).await.expect("round trip");
    assert_eq!(rt.topic, topic);
    assert_eq!(rt.offset, 0);
    doudi::kafka::delete_topics(&kafka, &[&topic]).await.expect("delete");
}

#[tokio::test]
async fn idempotent_producer_keeps_per_key_order_and_consumer_commits_explicitly() {
    let kafka = common::kafka();
    let topic = common::unique("test.order");
    let group = common::unique("test-group");
    doudi::kafka::ensure_topic(&kafka, &topic, 3, 1).await.expect("topic");
    let producer = doudi::kafka::idempotent_producer(&kafka).expect("producer");
    let records: Vec<(String, String)> = (0..60).map(|i| (format!("person-{}", i % 4), format!("{i}"))).collect();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload)| producer.send(FutureRecord::to(&topic).key(key).payload(payload), Timeout::After(Duration::from_secs(30))))
        .collect();
    for d in deliveries {
        d.await.map_err(|(e, _)| e).expect("delivered");
    }
    let consumer = doudi::kafka::committed_consumer(&kafka, &group).expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut seen: std::collections::HashMap<String, Vec<u32>> = std::collections::HashMap::new();
    for _ in 0..60 {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.expect("in time").expect("message");
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let value: u32 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
        seen.entry(key).or_default().push(value);
        consumer.commit_message(&m, CommitMode::Sync).expect("commit");
    }
    assert_eq!(seen.len(), 4);
    for (key, values) in &seen {
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(values, &sorted, "order within {key}");
        assert_eq!(values.len(), 15);
    }
    // Nothing more: no duplicates from retries.
    assert!(tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await.is_err());
    doudi::kafka::delete_topics(&kafka, &[&topic]).await.expect("delete");
}
