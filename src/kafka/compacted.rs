//! Reading a compacted topic to its end: the latest value per key under a prefix.
//!
//! Guarantees: reads with `read_committed` from the beginning of every partition until librdkafka
//! reports the end of each (partition EOF, which accounts for transaction markers), so the result
//! reflects every committed transaction at the time of the call; a tombstone removes the key.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::kafka::KafkaError;

/// A consumer context that does not report the end of a partition as an error: here it is the
/// expected signal that the topic has been read to its end.
pub struct EndAware;

impl ClientContext for EndAware {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            rdkafka::error::KafkaError::PartitionEOF(_)
                | rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::error!(error = %error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for EndAware {}

/// The partitions of `topic` and an assignment of each at its beginning.
pub fn from_the_beginning<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
) -> Result<(Vec<i32>, TopicPartitionList), KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    Ok((partitions, assignment))
}

/// Latest value per key (keys starting with `prefix`).
pub async fn read_latest(
    settings: &KafkaSettings,
    topic: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<u8>>, KafkaError> {
    let consumer: StreamConsumer<EndAware> =
        crate::kafka::reader_config(settings, &format!("doudi-reader-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(EndAware)?;
    let (partitions, assignment) = from_the_beginning(&consumer, topic)?;
    consumer.assign(&assignment)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut latest = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while at_end.len() < partitions.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv()).await.map_err(|_| KafkaError::Timeout(timeout))?;
        match message {
            Ok(m) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
                if !key.starts_with(prefix) {
                    continue;
                }
                match m.payload() {
                    Some(value) => latest.insert(key.to_string(), value.to_vec()),
                    None => latest.remove(key),
                };
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(latest)
}
