//! Reading what topics hold from a time on, to the end.
//!
//! Guarantees: [`read_between`] hands over every committed record (`read_committed`) of the given
//! topics whose offset lies between the first offset at or after `from_ms` and the first at or
//! after `until_ms` (or the end of the partition), each partition in offset order, and returns once
//! every partition's range is read — judged by the consumer's position, so transaction markers at
//! the end do not make it wait — or fails after `limit`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::DeliverError;
use crate::config::KafkaSettings;
use crate::kafka::offset_in;

pub fn read_between(
    kafka: &KafkaSettings,
    topics: &[String],
    from_ms: i64,
    until_ms: Option<i64>,
    limit: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), DeliverError> {
    let consumer: BaseConsumer = crate::kafka::reader_config(kafka, &format!("doudi-read-{}", uuid::Uuid::new_v4().simple())).create()?;
    let timeout = Duration::from_secs(10);
    let mut starts = TopicPartitionList::new();
    let mut stops = TopicPartitionList::new();
    let mut highs: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for p in metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            if high > 0 {
                starts.add_partition_offset(topic, p, Offset::Offset(from_ms))?;
                stops.add_partition_offset(topic, p, Offset::Offset(until_ms.unwrap_or(i64::MAX)))?;
                highs.insert((topic.clone(), p), high);
            }
        }
    }
    if highs.is_empty() {
        return Ok(());
    }
    let starts = consumer.offsets_for_times(starts, timeout)?;
    let stops = if until_ms.is_some() { Some(consumer.offsets_for_times(stops, timeout)?) } else { None };
    let mut assign = TopicPartitionList::new();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for ((topic, p), high) in highs {
        // No offset at or after the start: nothing to read there.
        let Some(start) = offset_in(&starts, &topic, p) else { continue };
        let end = stops.as_ref().and_then(|s| offset_in(s, &topic, p)).unwrap_or(high);
        if start < end {
            assign.add_partition_offset(&topic, p, Offset::Offset(start))?;
            ends.insert((topic, p), end);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assign)?;
    let deadline = Instant::now() + limit;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(DeliverError::Sink(format!("reading {} did not finish within {} s", topics.join(", "), limit.as_secs())));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                let Some(end) = ends.get(&key).copied() else { continue };
                if m.offset() < end {
                    each(&m);
                }
                if m.offset() + 1 >= end {
                    ends.remove(&key);
                }
            }
            Some(Err(e)) => tracing::warn!("Reading back published events failed, retrying: {e}"),
            None => {
                let positions = consumer.position()?;
                ends.retain(|(t, p), end| offset_in(&positions, t, *p).is_none_or(|at| at < *end));
            }
        }
    }
    Ok(())
}
