//! Kafka clients built from [`KafkaSettings`], and the broker round trip used by `doudi doctor`.
//!
//! Guarantees: every client doudi makes starts from [`client_config`], so TLS and SASL options given
//! in configuration apply everywhere; producers are idempotent (`enable.idempotence=true`,
//! `acks=all`); consumers read committed data only (`isolation.level=read_committed`) and never
//! auto-commit: offsets move only after an effect is durable (the project's style rule 7).

pub mod compacted;

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;

/// Errors talking to Kafka. Messages name topics and brokers, never record contents.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic} failed: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("describing topic {topic} failed: {message}")]
    Describe { topic: String, message: String },
    #[error("timed out after {0:?} waiting for the round-trip message")]
    Timeout(Duration),
    #[error("the round-trip message came back different from what was sent")]
    Mismatch,
}

/// The base librdkafka configuration: bootstrap servers, client id and pass-through options.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers).set("client.id", &settings.client_id);
    for (name, value) in &settings.options {
        config.set(name, value);
    }
    config
}

/// An idempotent producer: no duplicates or reordering from retries within a session.
pub fn idempotent_producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    Ok(client_config(settings)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?)
}

/// The settings of every consumer doudi makes, in `group`: committed data only
/// (`isolation.level=read_committed`), and no offset committed by the client itself.
pub fn reader_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = client_config(settings);
    config.set("group.id", group).set("isolation.level", "read_committed").set("enable.auto.commit", "false");
    config
}

/// A consumer in `group` that sees committed data only and commits nothing by itself.
pub fn committed_consumer(settings: &KafkaSettings, group: &str) -> Result<StreamConsumer, KafkaError> {
    Ok(reader_config(settings, group).set("enable.auto.offset.store", "false").set("auto.offset.reset", "earliest").create()?)
}

/// Produces `value` (with `key` and `headers`) to the dead-letter topic of `topic`, and waits for
/// the broker's acknowledgement.
pub async fn send_dead_letter(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let dlq = crate::topics::dead_letter_topic(topic);
    let mut record = FutureRecord::to(&dlq).payload(value).headers(crate::envelope::headers(headers.iter().copied()));
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| KafkaError::Client(e))?;
    Ok(())
}

/// The offset a list holds for a partition, if it is a real one.
pub fn offset_in(tpl: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    tpl.find_partition(topic, partition).and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    })
}

/// Whether a broker answers a metadata request within a few seconds: tells a broker outage from
/// a failure of one record or one transaction.
pub async fn reachable(settings: &KafkaSettings) -> bool {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let Ok(consumer) = client_config(&settings).create::<rdkafka::consumer::BaseConsumer>() else { return false };
        consumer.fetch_metadata(None, Duration::from_secs(5)).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// An admin client for topic management.
pub fn admin(settings: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    Ok(client_config(settings).create()?)
}

/// Creates `topic` with `partitions` partitions (replication 1 is for single-node development only;
/// production topics come from the catalogue). An existing topic is not an error.
pub async fn ensure_topic(settings: &KafkaSettings, topic: &str, partitions: i32, replication: i32) -> Result<(), KafkaError> {
    let admin = admin(settings)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin.create_topics([&new], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?;
    for result in results {
        if let Err((topic, code)) = result
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(KafkaError::CreateTopic { topic, message: code.to_string() });
        }
    }
    Ok(())
}

/// The largest record batch `topic` accepts (its `max.message.bytes`, the broker's default unless
/// the topic overrides it), as the broker describes it.
pub async fn topic_max_message_bytes(settings: &KafkaSettings, topic: &str) -> Result<usize, KafkaError> {
    let admin = admin(settings)?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin.describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &options).await?;
    let described =
        results.into_iter().next().ok_or_else(|| KafkaError::Describe { topic: topic.to_string(), message: "no answer".into() })?;
    let resource = described.map_err(|code| KafkaError::Describe { topic: topic.to_string(), message: code.to_string() })?;
    resource
        .get("max.message.bytes")
        .and_then(|entry| entry.value.as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| KafkaError::Describe { topic: topic.to_string(), message: "max.message.bytes not described".into() })
}

/// Deletes topics; missing topics are ignored.
pub async fn delete_topics(settings: &KafkaSettings, topics: &[&str]) -> Result<(), KafkaError> {
    let admin = admin(settings)?;
    admin.delete_topics(topics, &AdminOptions::new()).await?;
    Ok(())
}

/// What a round trip measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundTrip {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub produce_ms: u128,
    pub consume_ms: u128,
}

/// Creates `topic`, produces one message with the idempotent producer, reads it back through a
/// `read_committed` consumer in `group`, and checks it is the same message.
pub async fn round_trip(settings: &KafkaSettings, topic: &str, group: &str, timeout: Duration) -> Result<RoundTrip, KafkaError> {
    ensure_topic(settings, topic, 1, 1).await?;
    let payload = format!("doudi round trip {}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, topic.as_bytes()));
    let producer = idempotent_producer(settings)?;
    let started = Instant::now();
    let delivery = producer
        .send(FutureRecord::to(topic).key("doctor").payload(&payload), Timeout::After(timeout))
        .await
        .map_err(|(e, _)| KafkaError::Client(e))?;
    let produce_ms = started.elapsed().as_millis();
    let consumer = committed_consumer(settings, group)?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let message = tokio::time::timeout(timeout, consumer.recv()).await.map_err(|_| KafkaError::Timeout(timeout))??;
    if message.payload() != Some(payload.as_bytes()) || message.offset() != delivery.offset {
        return Err(KafkaError::Mismatch);
    }
    consumer.commit_message(&message, rdkafka::consumer::CommitMode::Sync)?;
    Ok(RoundTrip {
        topic: topic.to_string(),
        partition: delivery.partition,
        offset: delivery.offset,
        produce_ms,
        consume_ms: started.elapsed().as_millis(),
    })
}
