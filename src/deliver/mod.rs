//! Benefits follow status: delivering each agency's entitlement events to agencies that do not
//! consume Kafka, tracking every entitlement's delivery state, and the reports on it.
//!
//! `config` is `connectors/<agency>-out.toml`; `sink` holds the HTTP and table sinks (one event at a
//! time); `export` the daily file; `acks` the agencies' acknowledgements; `report` the pending list
//! and reconciliation.
//!
//! Guarantees of [`run`] (HTTP and table sinks): events are taken in partition order with
//! `read_committed`; an event's offset is committed only after the sink accepted it or, when the
//! agency rejected it, after its dead letter (`dlq.<topic>`, with the status and the response) is
//! acknowledged by the broker. A retryable failure is retried with exponential backoff and
//! jitter for as long as it takes, never skipped; stopping mid-retry leaves the event uncommitted,
//! so it is sent again after a restart with the same `Idempotency-Key`. Each event's delivery state
//! moves `pending` → `delivered` (or `failed`), never back, and never over `applied`.

pub mod acks;
pub mod config;
pub mod export;
pub mod range;
pub mod report;
pub mod sink;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::db::{Database, DbError, now_rfc3339};
use crate::envelope::Envelope;
use crate::kafka::send_dead_letter;
use config::DeliveryConfig;
use sink::{Event, SendError, Sink};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The delivery's configuration cannot run (a variable not set, a bad URL or certificate).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Producer(#[from] crate::kafka::KafkaError),
    #[error("{0}")]
    Sink(String),
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for DeliverError {
    fn from(e: sqlx::Error) -> Self {
        DeliverError::Db(DbError::Query(e))
    }
}

/// How a delivery run behaves.
#[derive(Clone, Debug)]
pub struct DeliverOptions {
    /// The actual topic read (the catalogue name, with a test's prefix or suffix).
    pub topic: String,
    pub group: String,
    /// Stop once every partition has been read to its end.
    pub until_idle: bool,
    pub idle_after: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// What a run did; no personal data.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeliverSummary {
    pub read: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retries: u64,
}

/// The value of the environment variable a config's `field` names; a config error when unset.
fn required_env(config: &DeliveryConfig, field: &str, var: &str) -> Result<String, DeliverError> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(DeliverError::Config(format!("{}: field `{field}`: the environment variable {var} is not set", config.path.display()))),
    }
}

/// The sink of a webhook or table delivery, with the backoff between its retries. `None` for a
/// file delivery, which is a batch run ([`export::export_config_day`]).
pub async fn build_sink(config: &DeliveryConfig, db: &Database) -> Result<Option<(Sink, Duration, Duration)>, DeliverError> {
    use config::Sink as SinkConfig;
    match &config.sink {
        SinkConfig::File { .. } => Ok(None),
        SinkConfig::Http { url, token_env, ca_file, timeout_secs, initial_backoff_ms, max_backoff_secs, .. } => {
            let token = token_env.as_deref().map(|var| required_env(config, "sink.token_env", var)).transpose()?;
            let sink = sink::HttpSink::new(url, token, ca_file.as_deref(), Duration::from_secs(*timeout_secs))
                .map_err(|e| DeliverError::Config(format!("{}: {e}", config.path.display())))?;
            Ok(Some((Sink::Http(sink), Duration::from_millis(*initial_backoff_ms), Duration::from_secs(*max_backoff_secs))))
        }
        SinkConfig::Table { database_url_env, table, columns } => {
            let pool = match database_url_env {
                Some(var) => {
                    let url = required_env(config, "sink.database_url_env", var)?;
                    sqlx::any::install_default_drivers();
                    sqlx::AnyPool::connect(&url)
                        .await
                        .map_err(|e| DeliverError::Sink(format!("connecting to the agency's database failed: {e}")))?
                }
                None => db.pool().clone(),
            };
            let sink = sink::TableSink::new(pool, table, columns)
                .await
                .map_err(|e| DeliverError::Sink(format!("creating the agency's table {table} failed: {e}")))?;
            Ok(Some((Sink::Table(sink), Duration::from_millis(500), Duration::from_secs(60))))
        }
    }
}

/// Marks an event delivered by `sink` (from `pending` or after failed attempts; never over `applied`).
pub async fn mark_delivered(db: &Database, ce_ids: &[String], sink: &str) -> Result<u64, DeliverError> {
    let now = now_rfc3339();
    let mut n = 0;
    for chunk in ce_ids.chunks(500) {
        let sql = format!(
            "UPDATE deliveries SET state = 'delivered', sink = $1, delivered_at = $2, updated_at = $2 \
             WHERE state = 'pending' AND ce_id IN ({})",
            (3..chunk.len() + 3).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sink).bind(&now);
        for id in chunk {
            q = q.bind(id);
        }
        n += q.execute(db.pool()).await?.rows_affected();
    }
    Ok(n)
}

/// Marks an event failed (rejected), with a reason that carries no personal data.
pub async fn mark_failed(db: &Database, ce_id: &str, sink: &str, reason: &str) -> Result<(), DeliverError> {
    let now = now_rfc3339();
    sqlx::query(
        "UPDATE deliveries SET state = 'failed', sink = $1, last_error = $2, attempts = attempts + 1, updated_at = $3 \
         WHERE ce_id = $4 AND state IN ('pending', 'delivered')",
    )
    .bind(sink)
    .bind(reason)
    .bind(&now)
    .bind(ce_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn record_attempt(db: &Database, ce_id: &str, reason: &str) -> Result<(), DeliverError> {
    sqlx::query("UPDATE deliveries SET attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE ce_id = $3 AND state = 'pending'")
        .bind(reason)
        .bind(now_rfc3339())
        .bind(ce_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

fn event_of(m: &BorrowedMessage<'_>) -> Result<Event, &'static str> {
    let (envelope, payload) = Envelope::of_message(m)?;
    Ok(Event { ce_id: envelope.id, ce_type: envelope.kind, payload, raw: m.payload().unwrap_or_default().to_vec() })
}

/// Events settled (accepted or dead-lettered) are marked and their offsets committed together, at
/// the latest after this many events…
const SETTLE_EVENTS: usize = 500;
/// …or this long after the first of them; at once when the topic is idle, before a retry wait and
/// when the run stops: marking and committing each event alone costs far more than the POST
/// (BENCHMARKS.md, "deliver").
const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// Events a run has settled, not yet marked delivered and committed.
struct Settled {
    /// Events the agency accepted, to mark delivered.
    delivered: Vec<String>,
    /// The next offset to commit per topic and partition.
    offsets: BTreeMap<(String, i32), i64>,
    /// When the first of them was settled.
    since: Option<Instant>,
}

impl Settled {
    fn new() -> Self {
        Self { delivered: Vec::new(), offsets: BTreeMap::new(), since: None }
    }

    /// Records a message as settled; `delivered`: the agency accepted its event.
    fn add(&mut self, topic: &str, partition: i32, offset: i64, delivered: Option<String>) {
        self.delivered.extend(delivered);
        self.offsets.insert((topic.to_string(), partition), offset + 1);
        self.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.delivered.len() >= SETTLE_EVENTS || self.since.is_some_and(|t| t.elapsed() >= SETTLE_EVERY)
    }

    /// Marks the accepted events delivered, then commits the offsets: an event is never committed
    /// before it is settled, and a crash in between delivers it again (same idempotency key).
    async fn flush(&mut self, db: &Database, consumer: &StreamConsumer, label: &str) -> Result<(), DeliverError> {
        if !self.delivered.is_empty() {
            mark_delivered(db, &self.delivered, label).await?;
            self.delivered.clear();
        }
        if !self.offsets.is_empty() {
            let mut commit = TopicPartitionList::new();
            for ((topic, partition), offset) in &self.offsets {
                commit.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
            consumer.commit(&commit, CommitMode::Sync)?;
            self.offsets.clear();
        }
        self.since = None;
        Ok(())
    }
}

/// Delivers the topic's events to `sink` until `stop` resolves (or, with `until_idle`, until every
/// partition is read to its end), one at a time and in order. Settled events are marked and
/// committed in groups ([`SETTLE_EVENTS`], [`SETTLE_EVERY`]).
pub async fn run(
    db: &Database,
    kafka: &KafkaSettings,
    config: &DeliveryConfig,
    sink: &Sink,
    options: &DeliverOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<DeliverSummary, DeliverError> {
    let consumer = crate::kafka::committed_consumer(kafka, &options.group)?;
    consumer.subscribe(&[options.topic.as_str()])?;
    let producer = crate::kafka::idempotent_producer(kafka)?;
    let name = config.delivery.name.clone();
    let label = format!("{}:{}", sink.label(), name);
    let mut summary = DeliverSummary::default();
    let mut settled = Settled::new();
    let mut last_message = Instant::now();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => break,
            m = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => m,
        };
        let m = match message {
            Err(_) => {
                settled.flush(db, &consumer, &label).await?;
                if options.until_idle && last_message.elapsed() >= options.idle_after && caught_up(&consumer)? {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!("Consuming failed, retrying: {e}");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        last_message = Instant::now();
        summary.read += 1;
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        let mut accepted = None;
        match event_of(&m) {
            Err(reason) => {
                tracing::warn!(topic = %topic, partition, offset, "A message could not be delivered and was dead-lettered: {reason}");
                let headers = [("error_code", "unreadable"), ("stage", "deliver"), ("reason", reason), ("delivery", name.as_str())];
                send_dead_letter(&producer, &options.topic, m.key(), m.payload().unwrap_or_default(), &headers).await?;
                summary.dead_lettered += 1;
            }
            Ok(event) => {
                let mut backoff = backon::ExponentialBuilder::default()
                    .with_min_delay(options.initial_backoff)
                    .with_max_delay(options.max_backoff)
                    .with_jitter()
                    .without_max_times()
                    .build();
                let outcome = loop {
                    match sink.send(&event).await {
                        Ok(()) => break Ok(()),
                        Err(SendError::Rejected { status, reason, response }) => break Err((status, reason, response)),
                        Err(SendError::Retry(reason)) => {
                            // What was settled before this event is marked while it waits.
                            settled.flush(db, &consumer, &label).await?;
                            summary.retries += 1;
                            metrics::counter!("doudi_delivery_retries_total", "delivery" => name.clone()).increment(1);
                            record_attempt(db, &event.ce_id, &reason).await?;
                            let delay = backoff.next().unwrap_or(options.max_backoff);
                            tracing::warn!(topic = %topic, partition, offset, event_id = %event.ce_id, retry_in_ms = delay.as_millis() as u64,
                                "Delivering an event failed and is retried: {reason}");
                            tokio::select! {
                                // Nothing is left settled and unmarked (flushed above).
                                _ = &mut stop => return Ok(summary),
                                _ = tokio::time::sleep(delay) => {}
                            }
                        }
                    }
                };
                match outcome {
                    Ok(()) => {
                        accepted = Some(event.ce_id);
                        summary.delivered += 1;
                        metrics::counter!("doudi_delivery_events_total", "delivery" => name.clone(), "outcome" => "delivered").increment(1);
                    }
                    Err((status, reason, response)) => {
                        tracing::warn!(topic = %topic, partition, offset, event_id = %event.ce_id,
                            "The agency rejected an event; it is dead-lettered and marked failed: {reason}");
                        let status = status.map(|s| s.to_string()).unwrap_or_default();
                        let headers = [
                            ("error_code", "rejected"),
                            ("stage", "deliver"),
                            ("reason", reason.as_str()),
                            ("http_status", status.as_str()),
                            ("response", response.as_str()),
                            ("event_id", event.ce_id.as_str()),
                            ("delivery", name.as_str()),
                        ];
                        send_dead_letter(&producer, &options.topic, m.key(), &event.raw, &headers).await?;
                        mark_failed(db, &event.ce_id, &label, &reason).await?;
                        summary.dead_lettered += 1;
                        metrics::counter!("doudi_delivery_events_total", "delivery" => name.clone(), "outcome" => "rejected").increment(1);
                    }
                }
            }
        }
        settled.add(&topic, partition, offset, accepted);
        if settled.due() {
            settled.flush(db, &consumer, &label).await?;
        }
    }
    settled.flush(db, &consumer, &label).await?;
    Ok(summary)
}

/// Every assigned partition has been read to its end. A partition with nothing left to read has
/// no position yet: its committed offset says where the group is.
fn caught_up(consumer: &StreamConsumer) -> Result<bool, DeliverError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(false);
    }
    let positions = consumer.position()?;
    let committed = consumer.committed(Duration::from_secs(10))?;
    let offset_in = crate::kafka::offset_in;
    for e in assignment.elements() {
        let (_, high) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?;
        if high == 0 {
            continue;
        }
        let at = offset_in(&positions, e.topic(), e.partition()).or_else(|| offset_in(&committed, e.topic(), e.partition()));
        if at.is_none_or(|at| at < high) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Describes delivery's metrics (the HELP lines of `/metrics`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!("doudi_delivery_events_total", "Entitlement events handled by a delivery, by outcome.");
    describe_counter!("doudi_delivery_retries_total", "Attempts to send an event that are retried later.");
    describe_counter!("doudi_delivery_acks_total", "Acknowledgements recorded, by agency and outcome.");
    describe_gauge!("doudi_deliveries", "Entitlement events in each open delivery state, by agency.");
    describe_gauge!(
        "doudi_delivery_oldest_pending_seconds",
        "Age of the agency's oldest event not yet accepted by its sink (0 when none)."
    );
    describe_gauge!(
        "doudi_delivery_oldest_unapplied_seconds",
        "Age of the agency's oldest event not yet acknowledged as applied (0 when none)."
    );
}
