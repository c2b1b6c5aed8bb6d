//! Running a connector against Kafka: exactly once, with dead letters and resumable progress.
//!
//! Guarantees (the KIP-618 pattern):
//! - records, dead letters and the source position are produced in one Kafka transaction per batch
//!   by a transactional producer; two alternate (`transactional.id = doudi-connect-<name>` and
//!   `doudi-connect-<name>.1`, which also fence a second instance of the same connector), and a
//!   transaction commits before the next one begins; a crash at any point leaves either the whole batch or
//!   none of it, and a restart resumes after the last committed position;
//! - a file already fully processed (same SHA-256) produces nothing;
//! - event ids are deterministic (`<sha256>:<row>` and content), so even a replay from a lost
//!   progress topic yields duplicates that consumers can drop by `ce_id`;
//! - logs carry the connector, file name, hash and row numbers, never the rows themselves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::ClientContext;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::config::ConnectorConfig;
use super::offline::snapshot_extra;
use super::pipeline::{DeadLetter, Event, Outcome, Prepared, Ready, prepare, process, process_batch};
use super::snapshot::{self, StateEntry};
use super::source::{self, Item};
use crate::config::Settings;
use crate::envelope::KeyDeriver;
use crate::kafka::compacted::read_latest;
use crate::kafka::{KafkaError, client_config};
use crate::schema::Registry;
use crate::schema::compat::fingerprint;

pub const PROGRESS_TOPIC: &str = "doudi.connect.progress.v1";
pub const STATE_TOPIC: &str = "doudi.connect.snapshot.v1";
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long librdkafka keeps retrying a record of a transaction (below [`TXN_TIMEOUT`]).
const MESSAGE_TIMEOUT_MS: &str = "45000";
/// The most of a row a dead letter carries (a JSON line may be 64 MiB).
const MAX_DEAD_LETTER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connector's configuration cannot run: a transport, a variable, an address.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka transaction failed: {0}")]
    Transaction(String),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("schema: {0}")]
    Schema(String),
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    /// A request reuses the identity of one already processed, with another content.
    #[error("{0}")]
    Conflict(String),
    /// Mapping a batch failed unexpectedly; nothing of the batch was produced.
    #[error("{0}")]
    Mapping(String),
}

impl From<rdkafka::error::KafkaError> for ConnectError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        ConnectError::Kafka(KafkaError::Client(e))
    }
}

/// What one run did (`doudi connect --once` prints it as JSON).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub connector: String,
    pub source: String,
    pub read: u64,
    pub produced: u64,
    pub dead_lettered: u64,
    pub unchanged: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    pub already_processed: bool,
    pub transactions: u64,
}

/// Where a source stands, as committed in the progress topic.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Position {
    pub connector: String,
    pub source: String,
    #[serde(default)]
    pub file: Option<String>,
    pub row: u64,
    pub done: bool,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub held: Vec<String>,
    pub updated_at: String,
    /// The SHA-256 of a pushed request's body: the same `Idempotency-Key` with another body is
    /// refused, never taken for the request already processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

/// A running connector: its config, schema, keys and transactional producer.
pub struct Connector {
    pub config: ConnectorConfig,
    registry: Arc<Registry>,
    keys: KeyDeriver,
    /// Two transactional producers used in turn: a transaction's commit markers are still being
    /// written when the next batch starts, and the coordinator answers CONCURRENT_TRANSACTIONS to
    /// the same `transactional.id` until they are (≈ 100 ms on a busy broker). Alternating ids
    /// lets the next batch start at once; one commit still finishes before the next begins, so
    /// the positions stay in order.
    producers: [ThreadedProducer<TxnContext>; 2],
    /// Index of the producer the next transaction uses.
    turn: usize,
    settings: Settings,
    positions: HashMap<String, Position>,
    /// The largest record the topic accepts, headers included (its `max.message.bytes`).
    max_record_bytes: usize,
}

/// librdkafka's own default `message.max.bytes`: the most a record may be whatever the topic allows.
const PRODUCER_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// The producer's batches, at most.
const PRODUCER_BATCH_BYTES: usize = 1_000_000;

/// What a transactional producer reports back: only failed deliveries. `commit_transaction`
/// flushes and waits for every record of the transaction and fails if any of them failed, so
/// successful deliveries need no report, no per-record future and no wake-up; a failure's reason is
/// kept for the log line of the aborted attempt.
#[derive(Default)]
struct TxnContext {
    failure: std::sync::Mutex<Option<String>>,
}

impl TxnContext {
    /// The first delivery failure since the last call.
    fn take_failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl ClientContext for TxnContext {}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut failure) = self.failure.lock()
        {
            failure.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Waits until the broker has answered for every record enqueued in the open transaction,
/// checking every millisecond. `commit_transaction` would wait too, but through rust-rdkafka's
/// `flush`, which sleeps in `poll` for up to 100 ms between checks; with the producer's own thread
/// serving its events nothing wakes that sleep early, so every commit would take at least 100 ms
/// however fast the broker answered. Once nothing is in flight, the commit's own flush returns at once.
async fn acknowledged(producer: &ThreadedProducer<TxnContext>) -> Result<(), ConnectError> {
    let deadline = std::time::Instant::now() + TXN_TIMEOUT;
    while producer.in_flight_count() > 0 {
        // After a failed record the transaction can only be aborted; the rest of the batch stays
        // queued until then.
        if let Some(failure) = producer.context().take_failure() {
            return Err(ConnectError::Transaction(format!("a record was not delivered: {failure}")));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ConnectError::Transaction(format!("records not acknowledged within {} s", TXN_TIMEOUT.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A transactional producer for one of a connector's two `transactional.id`s; `init_transactions`
/// fences an older instance with the same id and aborts its open transaction.
fn transactional_producer(
    settings: &Settings,
    transactional_id: String,
    max_record_bytes: usize,
) -> Result<ThreadedProducer<TxnContext>, ConnectError> {
    let mut config = client_config(&settings.kafka);
    if !settings.kafka.options.contains_key("message.timeout.ms") {
        // A record the broker keeps refusing with a retriable error fails its delivery, and with it
        // the transaction, before `acknowledged` gives up waiting: the abort then finds nothing in
        // flight and the run ends with the record's reason instead of a stuck abort.
        config.set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    }
    let producer: ThreadedProducer<TxnContext> = config
        .set("transactional.id", transactional_id)
        // The commit is the check (see TxnContext).
        .set("delivery.report.only.error", "true")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Each transaction ends by waiting for its records, so a long linger only adds latency.
        .set("linger.ms", "5")
        .set("retry.backoff.ms", "10")
        // A batch larger than the topic's `max.message.bytes` is refused whole.
        .set("batch.size", PRODUCER_BATCH_BYTES.min(max_record_bytes).to_string())
        .set("compression.type", "lz4")
        .set("transaction.timeout.ms", "120000")
        .create_with_context(TxnContext::default())?;
    producer.init_transactions(TXN_TIMEOUT).map_err(|e| ConnectError::Transaction(format!("init: {e}")))?;
    Ok(producer)
}

/// The largest record `topic` takes: its `max.message.bytes` as the broker describes it, capped by
/// the producer's own limit. Not knowing it is no reason to stop: the producer's limit stands in.
async fn record_limit(settings: &Settings, topic: &str) -> usize {
    let configured = settings.kafka.options.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(PRODUCER_MAX_MESSAGE_BYTES);
    match crate::kafka::topic_max_message_bytes(&settings.kafka, topic).await {
        Ok(limit) => limit.min(configured),
        Err(e) => {
            tracing::warn!(topic, error = %e, limit = configured, "could not learn the topic's max.message.bytes; assuming the producer's limit");
            configured
        }
    }
}

fn sha256_file(path: &Path) -> Result<String, ConnectError> {
    let io = |e: std::io::Error| ConnectError::Io { path: path.display().to_string(), message: e.to_string() };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The envelope attributes shared by one batch's events.
struct BatchAttributes {
    source: String,
    kind: String,
    time: String,
    dataschema: String,
}

impl Connector {
    /// Starts the transactional producer (fencing any older instance) and loads the positions.
    pub async fn start(config: ConnectorConfig, registry: Arc<Registry>, settings: &Settings) -> Result<Self, ConnectError> {
        registry.for_topic(&config.connector.topic).map_err(|e| ConnectError::Schema(e.to_string()))?;
        let max_record_bytes = record_limit(settings, &config.connector.topic).await;
        let producers = [
            transactional_producer(settings, format!("doudi-connect-{}", config.connector.name), max_record_bytes)?,
            transactional_producer(settings, format!("doudi-connect-{}.1", config.connector.name), max_record_bytes)?,
        ];
        let prefix = format!("{}/", config.connector.name);
        let raw = read_latest(&settings.kafka, PROGRESS_TOPIC, &prefix, Duration::from_secs(60)).await?;
        let positions = raw.into_iter().filter_map(|(k, v)| serde_json::from_slice::<Position>(&v).ok().map(|p| (k, p))).collect();
        Ok(Connector {
            keys: KeyDeriver::new(&settings.keys),
            config,
            registry,
            producers,
            turn: 0,
            settings: settings.clone(),
            positions,
            max_record_bytes,
        })
    }

    /// Replaces both transactional producers with new ones (same ids, a new epoch).
    fn renew_producers(&mut self) -> Result<(), ConnectError> {
        let name = &self.config.connector.name;
        self.producers = [
            transactional_producer(&self.settings, format!("doudi-connect-{name}"), self.max_record_bytes)?,
            transactional_producer(&self.settings, format!("doudi-connect-{name}.1"), self.max_record_bytes)?,
        ];
        self.turn = 0;
        Ok(())
    }

    fn feed(&self) -> &str {
        &self.config.connector.name
    }

    fn position_key(&self, source: &str) -> String {
        format!("{}/{source}", self.feed())
    }

    /// The committed position of a source, if any.
    pub fn position(&self, source: &str) -> Option<&Position> {
        self.positions.get(&self.position_key(source))
    }

    /// The CloudEvents attributes every event of one batch shares (one `ce_time` per batch).
    fn batch_attributes(&self) -> BatchAttributes {
        BatchAttributes {
            source: self.config.event_source(),
            kind: crate::envelope::event_type(&self.config.connector.topic),
            time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            dataschema: self.registry.for_topic(&self.config.connector.topic).map(|s| s.id.clone()).unwrap_or_default(),
        }
    }

    fn event_record<'a>(
        &'a self,
        prepared: &'a Prepared,
        provenance: &[(&str, String)],
        shared: &BatchAttributes,
    ) -> BaseRecord<'a, str, [u8]> {
        let headers = crate::envelope::binary_mode_headers(
            &prepared.ce_id,
            &shared.source,
            &shared.kind,
            &shared.time,
            &shared.dataschema,
            provenance.iter().map(|(k, v)| (*k, v.as_str())),
        );
        BaseRecord::to(&self.config.connector.topic).key(prepared.key.as_str()).payload(prepared.payload.as_slice()).headers(headers)
    }

    fn dead_letter_headers(&self, d: &DeadLetter, file: &str, sha: &str) -> OwnedHeaders {
        let row = d.row.to_string();
        let pairs = [
            ("error_code", d.code.as_str()),
            ("stage", d.code.stage()),
            ("reason", d.reason.as_str()),
            ("topic", self.config.connector.topic.as_str()),
            ("source_file", file),
            ("source_sha256", sha),
            ("source_sheet", d.sheet.as_deref().unwrap_or("")),
            ("source_row", row.as_str()),
            ("source_column", d.column.as_deref().unwrap_or("")),
            ("connector", self.config.connector.name.as_str()),
        ];
        crate::envelope::headers(pairs)
    }

    /// Enqueues every record of a batch in the open transaction.
    fn send_batch(
        &self,
        producer: &ThreadedProducer<TxnContext>,
        batch: &Batch<'_>,
        positions: &[Position],
        dlq_topic: &str,
    ) -> Result<(), ConnectError> {
        let send = |record: BaseRecord<'_, str, [u8]>| producer.send(record).map_err(|(e, _)| ConnectError::from(e));
        let shared = self.batch_attributes();
        for (prepared, provenance) in &batch.events {
            send(self.event_record(prepared, provenance, &shared))?;
        }
        // A dead letter keeps as much of its row as a record can hold.
        let room = self.max_record_bytes.saturating_sub(super::pipeline::RECORD_OVERHEAD_BYTES).min(MAX_DEAD_LETTER_BYTES);
        for d in &batch.dead_letters {
            let original = &d.original[..d.original.len().min(room)];
            send(BaseRecord::to(dlq_topic).payload(original).headers(self.dead_letter_headers(d, batch.file, batch.sha)))?;
        }
        for (key, value) in &batch.state {
            let mut record = BaseRecord::to(STATE_TOPIC).key(key.as_str());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            send(record)?;
        }
        for p in positions {
            let key = self.position_key(&p.source);
            let payload = serde_json::to_vec(p).unwrap_or_default();
            send(BaseRecord::to(PROGRESS_TOPIC).key(key.as_str()).payload(payload.as_slice()))?;
        }
        Ok(())
    }

    /// Produces one transaction: events, dead letters, state updates and the new positions. The
    /// commit waits for every record and fails if any was not delivered; a failed attempt is
    /// aborted and the whole batch sent again.
    async fn commit_batch(&mut self, batch: &Batch<'_>, positions: Vec<Position>) -> Result<(), ConnectError> {
        let dlq_topic = crate::topics::dead_letter_topic(&self.config.connector.topic);
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let producer = &self.producers[self.turn];
            // A report left over from an aborted attempt is not this attempt's.
            producer.context().take_failure();
            producer.begin_transaction().map_err(|e| ConnectError::Transaction(format!("begin: {e}")))?;
            let sent = match self.send_batch(producer, batch, &positions, &dlq_topic) {
                Ok(()) => acknowledged(producer).await,
                Err(e) => Err(e),
            };
            let outcome = match sent {
                // Every record is acknowledged (or failed); the commit fails if any failed.
                Ok(()) => producer.commit_transaction(TXN_TIMEOUT).map_err(|e| match producer.context().take_failure() {
                    Some(delivery) => format!("{e} (a record was not delivered: {delivery})"),
                    None => e.to_string(),
                }),
                // Enqueueing failed (e.g. the local queue is full): abort and retry the batch.
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    metrics::histogram!("doudi_connector_batch_seconds", "connector" => self.feed().to_string())
                        .record(started.elapsed().as_secs_f64());
                    self.turn = 1 - self.turn;
                    for p in &positions {
                        self.positions.insert(self.position_key(&p.source), p.clone());
                    }
                    return Ok(());
                }
                Err(reason) => {
                    let _ = self.producers[self.turn].abort_transaction(TXN_TIMEOUT);
                    // The retry goes to the other producer: this one's abort markers are still
                    // being written, and the coordinator refuses its next transaction until they are.
                    self.turn = 1 - self.turn;
                    tracing::warn!(connector = self.feed(), attempt, reason = %reason, "a Kafka transaction failed and was aborted; retrying the batch");
                    if attempt >= 5 {
                        // A producer whose transactions keep failing may be left in a state only a
                        // new epoch clears (e.g. sequence numbers skipped by refused records): the
                        // next batch starts with new producers, which fence these.
                        if let Err(e) = self.renew_producers() {
                            tracing::warn!(connector = self.feed(), error = %e, "could not start new transactional producers; the next batch tries again");
                        }
                        return Err(ConnectError::Transaction(reason));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// Processes one file to the end, resuming after the committed position.
    pub async fn process_file(&mut self, path: &Path) -> Result<Summary, ConnectError> {
        let sha = sha256_file(path)?;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let source_id = format!("file:{sha}");
        let mut summary = Summary { connector: self.feed().to_string(), source: source_id.clone(), ..Summary::default() };
        let previous = self.position(&source_id).cloned();
        if let Some(p) = &previous
            && p.done
        {
            tracing::info!(connector = self.feed(), file = %file, sha256 = %sha, rows = p.rows, "file already processed; nothing to do");
            summary.already_processed = true;
            summary.unchanged = p.rows;
            return Ok(summary);
        }
        if self.config.snapshot.is_some() {
            return self.process_snapshot(path, &file, &sha, summary).await;
        }
        let resume_after = previous.map(|p| p.row).unwrap_or(0);
        if resume_after > 0 {
            tracing::info!(connector = self.feed(), file = %file, sha256 = %sha, row = resume_after, "resuming after the last committed row");
        }
        // Reading, mapping, validation and serialisation run on a blocking thread (in parallel chunks),
        // overlapped with producing and committing the previous batch here.
        let (tx, mut rx) = mpsc::channel::<Vec<(u64, Option<Ready>)>>(4);
        let mut reader = Some({
            let config = self.config.clone();
            let registry = self.registry.clone();
            let keys = self.keys.clone();
            let max_record_bytes = self.max_record_bytes;
            let path = path.to_path_buf();
            let sha = sha.clone();
            tokio::task::spawn_blocking(move || -> Result<(), ConnectError> {
                let schema = registry.for_topic(&config.connector.topic).map_err(|e| ConnectError::Schema(e.to_string()))?;
                let extra = Map::new();
                let identity = |e: &Event| format!("{sha}:{}{}", e.sheet.as_deref().map(|s| format!("{s}!")).unwrap_or_default(), e.row);
                let mut chunk: Vec<Item> = Vec::with_capacity(1024);
                let mut skipped: Vec<(u64, Option<Ready>)> = Vec::new();
                // A batch that fails to map stops the reading: nothing after it is sent, so the
                // position committed never passes a row that was not produced or dead-lettered.
                let flush = |chunk: &mut Vec<Item>, skipped: &mut Vec<(u64, Option<Ready>)>| -> Result<bool, String> {
                    let rows: Vec<u64> = chunk.iter().map(Item::row).collect();
                    let ready = process_batch(&config, schema, std::mem::take(chunk), &extra, &keys, &identity, max_record_bytes)?;
                    let mut out = std::mem::take(skipped);
                    out.extend(rows.into_iter().zip(ready.into_iter().map(Some)));
                    Ok(tx.blocking_send(out).is_ok())
                };
                let mut failed = None;
                source::read(&config.source, &path, &config.header_columns(), &mut |item| {
                    if item.row() <= resume_after {
                        skipped.push((item.row(), None));
                        return true;
                    }
                    chunk.push(item);
                    if chunk.len() < 1024 {
                        return true;
                    }
                    flush(&mut chunk, &mut skipped).unwrap_or_else(|e| {
                        failed = Some(e);
                        false
                    })
                })?;
                if failed.is_none() && (!chunk.is_empty() || !skipped.is_empty()) {
                    failed = flush(&mut chunk, &mut skipped).err();
                }
                match failed {
                    Some(message) => Err(ConnectError::Mapping(message)),
                    None => Ok(()),
                }
            })
        });
        let batch_rows = self.config.connector.batch_rows;
        let mut events = Vec::new();
        let mut dead = Vec::new();
        let mut last_row = resume_after;
        let mut rows_seen = 0u64;
        loop {
            let received = rx.recv().await;
            let end = received.is_none();
            for (row, ready) in received.unwrap_or_default() {
                rows_seen = rows_seen.max(row);
                let Some(ready) = ready else {
                    summary.unchanged += 1;
                    continue;
                };
                summary.read += 1;
                last_row = row;
                match ready {
                    Ready::Event(p) => {
                        let provenance =
                            vec![("source_file", file.clone()), ("source_sha256", sha.clone()), ("source_row", p.row.to_string())];
                        events.push((*p, provenance));
                    }
                    Ready::DeadLetter(d) => dead.push(d),
                }
            }
            if events.len() + dead.len() >= batch_rows || end {
                // The reader ends with an error for a file that cannot be read at all.
                if end && let Some(reader) = reader.take() {
                    match reader.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(ConnectError::Io { path: path.display().to_string(), message: e.to_string() }),
                    }
                }
                let position = Position {
                    connector: self.feed().to_string(),
                    source: source_id.clone(),
                    file: Some(file.clone()),
                    row: last_row,
                    done: end,
                    rows: if end { rows_seen } else { 0 },
                    cursor: None,
                    held: Vec::new(),
                    updated_at: crate::db::now_rfc3339(),
                    content_sha256: None,
                };
                let batch = Batch {
                    events: std::mem::take(&mut events),
                    dead_letters: std::mem::take(&mut dead),
                    state: Vec::new(),
                    file: &file,
                    sha: &sha,
                };
                self.commit_batch(&batch, vec![position]).await?;
                summary.transactions += 1;
                self.count(&batch, &mut summary);
                if end {
                    break;
                }
            }
        }
        tracing::info!(connector = self.feed(), file = %file, sha256 = %sha, read = summary.read, produced = summary.produced, dead_lettered = summary.dead_lettered, "file processed");
        Ok(summary)
    }

    fn count(&self, batch: &Batch<'_>, summary: &mut Summary) {
        summary.produced += batch.events.len() as u64;
        summary.dead_lettered += batch.dead_letters.len() as u64;
        let name = self.feed().to_string();
        metrics::counter!("doudi_connector_records_read_total", "connector" => name.clone())
            .increment((batch.events.len() + batch.dead_letters.len()) as u64);
        metrics::counter!("doudi_connector_records_produced_total", "connector" => name.clone()).increment(batch.events.len() as u64);
        for d in &batch.dead_letters {
            metrics::counter!("doudi_connector_records_dead_lettered_total", "connector" => name.clone(), "error_code" => d.code.as_str(), "stage" => d.code.stage()).increment(1);
        }
    }

    async fn load_state(&self) -> Result<HashMap<String, StateEntry>, ConnectError> {
        let prefix = format!("{}/", self.feed());
        let raw = read_latest(&self.settings.kafka, STATE_TOPIC, &prefix, Duration::from_secs(60)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_slice::<StateEntry>(&v).ok().map(|e| (k.trim_start_matches(&prefix).to_string(), e)))
            .collect())
    }

    /// A full roster snapshot: diff against the previous one, in one transaction.
    async fn process_snapshot(&mut self, path: &Path, file: &str, sha: &str, mut summary: Summary) -> Result<Summary, ConnectError> {
        let snapshot = self.config.snapshot.clone().ok_or_else(|| ConnectError::Config("not a snapshot connector".into()))?;
        let extra = snapshot_extra(&self.config, sha);
        let schema = self.registry.for_topic(&self.config.connector.topic).map_err(|e| ConnectError::Schema(e.to_string()))?;
        let mut events = Vec::new();
        let mut dead = Vec::new();
        let mut rows = 0u64;
        source::read(&self.config.source, path, &self.config.header_columns(), &mut |item| {
            rows = rows.max(item.row());
            let original = match &item {
                Item::Record(r) => r.original.clone(),
                Item::Failure(f) => f.original.clone(),
            };
            match process(&self.config, schema, item, &extra) {
                Outcome::Event(e) => events.push((self.keys.key(&e.key_id), e, original)),
                Outcome::DeadLetter(d) => dead.push(d),
            }
            true
        })?;
        summary.read = (events.len() + dead.len()) as u64;
        let by_key: HashMap<String, Event> = events.iter().map(|(k, e, _)| (k.clone(), e.clone())).collect();
        let previous = self.load_state().await?;
        let diff =
            snapshot::diff(&previous, events, &snapshot.change_field, snapshot.snapshot_field.as_deref(), snapshot.max_removed_share);
        dead.extend(diff.duplicates);
        let mut out_events = Vec::new();
        let mut state = Vec::new();
        let state_key = |k: &str| format!("{}/{k}", self.feed());
        for change in &diff.changes {
            let mut record = change.record.clone();
            record.insert(snapshot.change_field.clone(), Value::String(change.change.into()));
            if let Some(f) = &snapshot.snapshot_field {
                record.insert(f.clone(), Value::String(sha.into()));
            }
            let key_id = match by_key.get(&change.key) {
                Some(e) => e.key_id.clone(),
                None => match record.get(&snapshot.key).and_then(Value::as_str).and_then(|s| crate::idnum::IdNumber::parse(s).ok()) {
                    Some(id) => id,
                    None => continue,
                },
            };
            let row = change.row.unwrap_or(0);
            let identity = format!("{sha}:{}:{}", change.key, change.change);
            let provenance = vec![("source_file", file.to_string()), ("source_sha256", sha.to_string()), ("source_row", row.to_string())];
            let original = by_key.get(&change.key).map(|e| e.original.clone()).unwrap_or_default();
            let event = Event { row, sheet: None, record, key_id, original };
            match prepare(event, identity, &self.config.event_source(), &self.keys, self.max_record_bytes) {
                Ready::Event(prepared) => out_events.push((*prepared, provenance)),
                // Its state is left as it was: the next snapshot offers the change again.
                Ready::DeadLetter(d) => {
                    dead.push(d);
                    continue;
                }
            }
            let value = if change.change == "removed" {
                None
            } else {
                let entry = StateEntry { fingerprint: fingerprint(&Value::Object(change.record.clone())), record: change.record.clone() };
                Some(serde_json::to_vec(&entry).unwrap_or_default())
            };
            state.push((state_key(&change.key), value));
        }
        let held: Vec<String> = diff.held.iter().map(|c| c.key.clone()).collect();
        if !held.is_empty() {
            tracing::warn!(connector = self.feed(), file = %file, sha256 = %sha, held = held.len(), previous = previous.len(), "more of the roster vanished than allowed; removals are held until `doudi connect confirm`");
        }
        metrics::gauge!("doudi_connector_held_removals", "connector" => self.feed().to_string()).set(held.len() as f64);
        summary.added = Some(diff.added as u64);
        summary.changed = Some(diff.changed as u64);
        summary.removed = Some(diff.removed as u64);
        summary.held = Some(held.len() as u64);
        summary.unchanged = diff.unchanged as u64;
        let position = Position {
            connector: self.feed().to_string(),
            source: format!("file:{sha}"),
            file: Some(file.to_string()),
            row: rows,
            done: true,
            rows,
            cursor: None,
            held: Vec::new(),
            updated_at: crate::db::now_rfc3339(),
            content_sha256: None,
        };
        let held_position =
            Position { source: "held".into(), held, file: Some(file.to_string()), cursor: Some(sha.to_string()), ..position.clone() };
        let batch = Batch { events: out_events, dead_letters: dead, state, file, sha };
        // The held list and the file position commit together with the events.
        self.commit_batch(&batch, vec![held_position, position]).await?;
        summary.transactions += 1;
        self.count(&batch, &mut summary);
        Ok(summary)
    }
}

impl Connector {
    /// Processes records that arrived together (an HTTP request, a batch of table rows) in one
    /// transaction. `source_id` identifies them (`http:<Idempotency-Key>`, `cursor`); a request
    /// already committed is recognised and produces nothing. With `cursor`, the position records
    /// the cursor to resume from instead of marking the source done.
    pub async fn process_items(
        &mut self,
        source_id: &str,
        label: &str,
        items: Vec<Item>,
        cursor: Option<String>,
        content_sha256: Option<&str>,
    ) -> Result<Summary, ConnectError> {
        let mut summary = Summary { connector: self.feed().to_string(), source: source_id.to_string(), ..Summary::default() };
        if cursor.is_none()
            && let Some(p) = self.position(source_id)
            && p.done
        {
            if let (Some(stored), Some(given)) = (p.content_sha256.as_deref(), content_sha256)
                && stored != given
            {
                return Err(ConnectError::Conflict(format!(
                    "{source_id} was already processed with another content; send new records under a new key"
                )));
            }
            summary.already_processed = true;
            summary.unchanged = p.rows;
            return Ok(summary);
        }
        let schema = self.registry.for_topic(&self.config.connector.topic).map_err(|e| ConnectError::Schema(e.to_string()))?;
        let extra = Map::new();
        let mut events = Vec::new();
        let mut dead = Vec::new();
        let mut rows = 0;
        for item in items {
            rows = rows.max(item.row());
            summary.read += 1;
            match process(&self.config, schema, item, &extra) {
                Outcome::Event(e) => {
                    let identity = format!("{source_id}:{}", e.row);
                    let provenance = vec![("source_request", source_id.to_string()), ("source_row", e.row.to_string())];
                    match prepare(e, identity, &self.config.event_source(), &self.keys, self.max_record_bytes) {
                        Ready::Event(prepared) => events.push((*prepared, provenance)),
                        Ready::DeadLetter(d) => dead.push(d),
                    }
                }
                Outcome::DeadLetter(d) => dead.push(d),
            }
        }
        let position = Position {
            connector: self.feed().to_string(),
            source: source_id.to_string(),
            file: Some(label.to_string()),
            row: rows,
            done: cursor.is_none(),
            rows,
            cursor,
            held: Vec::new(),
            updated_at: crate::db::now_rfc3339(),
            content_sha256: content_sha256.map(str::to_string),
        };
        let batch = Batch { events, dead_letters: dead, state: Vec::new(), file: label, sha: source_id };
        self.commit_batch(&batch, vec![position]).await?;
        summary.transactions = 1;
        self.count(&batch, &mut summary);
        Ok(summary)
    }

    /// Releases removals held back by a truncated-looking snapshot (`doudi connect confirm`):
    /// emits `removed` for every held person still absent, with their state tombstones.
    pub async fn confirm_held(&mut self) -> Result<Summary, ConnectError> {
        let snapshot =
            self.config.snapshot.clone().ok_or_else(|| ConnectError::Config(format!("{} is not a snapshot connector", self.feed())))?;
        let held = self
            .position("held")
            .map(|p| (p.held.clone(), p.file.clone().unwrap_or_default(), p.cursor.clone().unwrap_or_default()))
            .unwrap_or_default();
        let mut summary =
            Summary { connector: self.feed().to_string(), source: "held".into(), removed: Some(0), held: Some(0), ..Summary::default() };
        if held.0.is_empty() {
            return Ok(summary);
        }
        let state = self.load_state().await?;
        let sha = format!("confirm-{}", crate::db::now_rfc3339());
        let mut events = Vec::new();
        let mut tombstones = Vec::new();
        for key in &held.0 {
            let Some(entry) = state.get(key) else { continue };
            let mut record = entry.record.clone();
            record.insert(snapshot.change_field.clone(), Value::String("removed".into()));
            if let Some(f) = &snapshot.snapshot_field {
                // The removal belongs to the snapshot that held it.
                record.insert(f.clone(), Value::String(held.2.clone()));
            }
            let Some(key_id) = record.get(&snapshot.key).and_then(Value::as_str).and_then(|s| crate::idnum::IdNumber::parse(s).ok()) else {
                continue;
            };
            let identity = format!("held:{key}:removed:{}", entry.fingerprint);
            let event = Event { row: 0, sheet: None, record, key_id, original: Vec::new() };
            match prepare(event, identity, &self.config.event_source(), &self.keys, self.max_record_bytes) {
                Ready::Event(prepared) => events.push((*prepared, vec![("source_file", held.1.clone())])),
                // The record was published before at this size; a topic shrunk since is a
                // configuration to fix, not a removal to drop.
                Ready::DeadLetter(d) => return Err(ConnectError::Config(d.reason)),
            }
            tombstones.push((format!("{}/{key}", self.feed()), None));
        }
        let now = crate::db::now_rfc3339();
        let cleared =
            Position { connector: self.feed().to_string(), source: "held".into(), updated_at: now, done: true, ..Position::default() };
        let batch = Batch { events, dead_letters: Vec::new(), state: tombstones, file: &held.1, sha: &sha };
        self.commit_batch(&batch, vec![cleared]).await?;
        summary.transactions = 1;
        summary.removed = Some(batch.events.len() as u64);
        self.count(&batch, &mut summary);
        metrics::gauge!("doudi_connector_held_removals", "connector" => self.feed().to_string()).set(0.0);
        Ok(summary)
    }
}

/// One transaction's content.
pub struct Batch<'a> {
    pub events: Vec<(Prepared, Vec<(&'static str, String)>)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Snapshot state updates: key and value (None = tombstone).
    pub state: Vec<(String, Option<Vec<u8>>)>,
    pub file: &'a str,
    pub sha: &'a str,
}
