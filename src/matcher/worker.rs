//! `doudi match`: the consumer over the inbound topics, one database transaction per batch, and the
//! outbox relay.
//!
//! Guarantees:
//! - each batch is applied in one database transaction together with the next offset of every
//!   partition it covers; Kafka offsets are committed only after that transaction, and only up to
//!   the offset stored in it, so they never pass an event whose effects are not durable;
//! - the database's offsets are the truth: on assignment the consumer is positioned at the offsets
//!   this instance last saw in the database (never ahead of them), and an event below the stored
//!   offset is skipped because its effects are already there;
//! - ownership is fenced by an epoch per partition: claiming a partition increments it, and a batch
//!   whose epoch is no longer current is rolled back, so two matcher instances never apply the same
//!   partition;
//! - the relay publishes outbox rows in id order with an idempotent producer and marks them sent only
//!   after the broker acknowledged them: a crash in between may publish a row twice (same `ce_id`),
//!   never lose one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sqlx::{Acquire, Row};

use super::facts::Feed;
use super::{ApplyError, BatchOutcome, Bind, Context, Inbound, MATCHER_SOURCE, Pooled, Tx, apply_batch};
use crate::config::KafkaSettings;
use crate::db::{Database, DbError, now_rfc3339};
use crate::envelope::{Envelope, binary_mode_headers};

/// How `doudi match` runs.
#[derive(Clone, Debug)]
pub struct MatchOptions {
    /// Consumer group (and the key of the stored offsets).
    pub group: String,
    /// Actual inbound topic name → feed.
    pub inbound: BTreeMap<String, Feed>,
    /// Most events per batch (one database transaction).
    pub batch_size: usize,
    /// Longest wait to fill a batch.
    pub batch_wait: Duration,
    /// Exit once every partition is caught up and the outbox is published.
    pub until_idle: bool,
    /// How long no new event must arrive before `until_idle` checks the partitions.
    pub idle_after: Duration,
    /// Give up waiting for a first assignment after this long (`until_idle` only).
    pub assignment_timeout: Duration,
    /// Identifies this instance as a partition owner.
    pub owner: String,
    /// Sent outbox rows written longer ago than this are deleted, checked every 10 minutes
    /// (`None`: kept).
    pub outbox_retention: Option<Duration>,
}

impl MatchOptions {
    /// The catalogue topics, each named `prefix + name + suffix`.
    pub fn inbound_with_affixes(prefix: &str, suffix: &str) -> BTreeMap<String, Feed> {
        let affixes = crate::topics::Affixes::new(prefix, suffix);
        Feed::ALL.iter().map(|f| (affixes.name(f.topic()), *f)).collect()
    }
}

/// Errors that stop the matcher.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Producer(#[from] crate::kafka::KafkaError),
    #[error(transparent)]
    Policy(#[from] super::policy_change::PolicyChangeError),
    #[error("no partition of the inbound topics was assigned within {0:?}; is the broker up and do the topics exist?")]
    NoAssignment(Duration),
    #[error("a relay task stopped: {0}")]
    Task(String),
}

impl From<sqlx::Error> for MatchError {
    fn from(e: sqlx::Error) -> Self {
        MatchError::Db(DbError::Query(e))
    }
}

/// Partition changes reported by the consumer's rebalance callback.
#[derive(Default)]
struct Assignments {
    /// Partitions assigned since the loop last looked (to claim and position).
    assigned: Vec<(String, i32)>,
    revoked: Vec<(String, i32)>,
}

struct MatcherContext {
    changes: Arc<Mutex<Assignments>>,
    /// The next offset per partition as this instance last read or wrote it in the database. It may
    /// be behind the database (another instance moved on), never ahead: positioning there re-reads
    /// events that are then skipped, and never skips one.
    positions: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
}

impl ClientContext for MatcherContext {}

impl ConsumerContext for MatcherContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let list: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Position every assigned partition at the database's offset, not Kafka's.
                if let Ok(positions) = self.positions.lock() {
                    for (topic, partition) in &list {
                        if let Some(next) = positions.get(&(topic.clone(), *partition)) {
                            let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(*next));
                        }
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::warn!("Taking the assigned partitions failed: {e}");
                }
                if let Ok(mut changes) = self.changes.lock() {
                    changes.assigned.extend(list);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = consumer.unassign() {
                    tracing::warn!("Giving up the revoked partitions failed: {e}");
                }
                if let Ok(mut changes) = self.changes.lock() {
                    changes.revoked.extend(list);
                }
            }
            other => tracing::warn!("Consumer group rebalance failed: {:?}", other),
        }
    }
}

/// What a whole run did, for `job_runs` and `--until-idle`'s summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunSummary {
    pub batches: u64,
    #[serde(flatten)]
    pub totals: BatchOutcome,
    pub published: u64,
    pub fenced_batches: u64,
}

/// A partition this instance owns: the epoch it claimed and the next offset to apply.
#[derive(Clone, Copy, Debug)]
struct Owned {
    epoch: i64,
    next: Option<i64>,
}

/// Runs the matcher until `stop` resolves, or (with `until_idle`) until caught up.
pub async fn run(
    db: &Database,
    kafka: &KafkaSettings,
    ctx: &Context,
    options: &MatchOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<RunSummary, MatchError> {
    let changes = Arc::new(Mutex::new(Assignments::default()));
    let positions = Arc::new(Mutex::new(stored_positions(db, &options.group).await?));
    let consumer: StreamConsumer<MatcherContext> = crate::kafka::reader_config(kafka, &options.group)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(MatcherContext { changes: changes.clone(), positions: positions.clone() })?;
    let topics: Vec<&str> = options.inbound.keys().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let producer = crate::kafka::idempotent_producer(kafka)?;
    let mut owned: BTreeMap<(String, i32), Owned> = BTreeMap::new();
    let mut summary = RunSummary::default();
    let started = Instant::now();
    let mut last_event = Instant::now();
    let mut last_prune: Option<Instant> = None;
    let mut ctx = ctx.clone();
    tokio::pin!(stop);
    loop {
        take_assignments(db, options, &changes, &mut owned).await?;
        let batch = collect_batch(&consumer, options, &mut stop).await;
        let Some(batch) = batch else { break };
        // Partitions assigned while the batch was collected are claimed before it is applied.
        take_assignments(db, options, &changes, &mut owned).await?;
        // Every 10 minutes, busy or idle.
        if let Some(retention) = options.outbox_retention
            && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
        {
            last_prune = Some(Instant::now());
            let pruned = prune_outbox(db, retention).await?;
            if pruned > 0 {
                tracing::info!(rows = pruned, "Deleted sent outbox rows written longer ago than the retention.");
            }
        }
        if batch.is_empty() {
            summary.published += relay(db, &producer).await?;
            if options.until_idle && last_event.elapsed() >= options.idle_after {
                if owned.is_empty() {
                    if started.elapsed() > options.assignment_timeout {
                        return Err(MatchError::NoAssignment(options.assignment_timeout));
                    }
                    continue;
                }
                if caught_up(&consumer, &owned)? && !queued_at_least(db, 1).await? {
                    break;
                }
            }
            continue;
        }
        last_event = Instant::now();
        tracing::debug!(events = batch.len(), "applying a batch");
        follow_policy(db, &mut ctx).await?;
        let timer = Instant::now();
        match apply(db, &ctx, options, &consumer, &mut owned, &positions, batch, &producer).await? {
            Some(outcome) => {
                summary.batches += 1;
                summary.totals.add(&outcome);
                metrics::histogram!("doudi_matcher_batch_seconds").record(timer.elapsed().as_secs_f64());
                for (name, n) in [
                    ("applied", outcome.applied),
                    ("duplicate", outcome.duplicates),
                    ("invalid", outcome.invalid),
                    ("stale", outcome.stale),
                    ("held", outcome.held),
                    ("unusable", outcome.unusable),
                ] {
                    metrics::counter!("doudi_matcher_events_total", "outcome" => name).increment(n);
                }
            }
            None => summary.fenced_batches += 1,
        }
        summary.published += relay(db, &producer).await?;
    }
    summary.published += relay(db, &producer).await?;
    Ok(summary)
}

/// Switches to the policy version in force when `doudi policy apply` recorded a new one.
async fn follow_policy(db: &Database, ctx: &mut Context) -> Result<(), MatchError> {
    let in_force = super::policy_change::version_in_force(db).await?;
    if in_force.is_none_or(|v| v == ctx.params.policy.version) {
        return Ok(());
    }
    if let Some((recorded, params)) = super::policy_change::in_force(db).await? {
        tracing::info!(from = %ctx.params.policy.version, to = %recorded.version, "The matcher decides with the policy version now in force.");
        ctx.params = Arc::new(params);
    }
    Ok(())
}

/// Takes in the partitions assigned and revoked since the last call: claims the new ones.
async fn take_assignments(
    db: &Database,
    options: &MatchOptions,
    changes: &Mutex<Assignments>,
    owned: &mut BTreeMap<(String, i32), Owned>,
) -> Result<(), MatchError> {
    let (assigned, revoked) = {
        let mut c = changes.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut c.assigned), std::mem::take(&mut c.revoked))
    };
    for tp in revoked {
        owned.remove(&tp);
    }
    for (topic, partition) in assigned {
        let claim = claim_partition(db, &options.group, &topic, partition, &options.owner).await?;
        tracing::debug!(topic = %topic, partition, epoch = claim.epoch, next = ?claim.next, "claimed a partition");
        owned.insert((topic, partition), claim);
    }
    Ok(())
}

/// Up to `batch_size` messages, waiting at most `batch_wait` after the first. `None` when `stop`
/// fired.
async fn collect_batch<'c>(
    consumer: &'c StreamConsumer<MatcherContext>,
    options: &MatchOptions,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Vec<BorrowedMessage<'c>>> {
    let mut batch = Vec::new();
    let deadline = tokio::time::Instant::now() + options.batch_wait;
    while batch.len() < options.batch_size {
        tokio::select! {
            _ = stop.as_mut() => return None,
            received = tokio::time::timeout_at(deadline, consumer.recv()) => match received {
                Err(_) => break,
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    tracing::warn!("Consuming failed, retrying: {e}");
                    break;
                }
            }
        }
    }
    Some(batch)
}

/// Applies one batch in one transaction. `None` when this instance was fenced off a partition.
#[allow(clippy::too_many_arguments)]
async fn apply(
    db: &Database,
    ctx: &Context,
    options: &MatchOptions,
    consumer: &StreamConsumer<MatcherContext>,
    owned: &mut BTreeMap<(String, i32), Owned>,
    positions: &Mutex<BTreeMap<(String, i32), i64>>,
    batch: Vec<BorrowedMessage<'_>>,
    producer: &FutureProducer,
) -> Result<Option<BatchOutcome>, MatchError> {
    let mut tx = Tx::begin(db).await?;
    // Lock and read the stored offsets of the batch's partitions; check the epochs.
    let mut partitions: BTreeMap<(String, i32), (i64, Option<i64>)> = BTreeMap::new();
    // The row locks taken here make a claim by another instance wait until this batch ends, so a
    // fence shows at the start of a batch; the epoch checked again at the end (the rollback below)
    // guards a database without row locks.
    let mut fenced_at_start = false;
    for m in &batch {
        let tp = (m.topic().to_string(), m.partition());
        if partitions.contains_key(&tp) {
            continue;
        }
        let Some(own) = owned.get(&tp) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, "a message of a partition this instance does not own is left to its owner");
            continue;
        };
        let lock = db.backend().row_lock();
        let row = tx
            .conn()
            .fetch(
                format!("SELECT next_offset, epoch FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3{lock}"),
                vec![Bind::Text(Some(options.group.clone())), Bind::Text(Some(tp.0.clone())), Bind::Int(i64::from(tp.1))],
            )
            .await?
            .into_iter()
            .next();
        let (next, epoch) = match row {
            Some(r) => (r.try_get::<i64, _>("next_offset")?, r.try_get::<i64, _>("epoch")?),
            None => (-1, -1),
        };
        if epoch != own.epoch {
            tracing::warn!(topic = %tp.0, partition = tp.1, "Another matcher instance claimed this partition; this instance stops applying it.");
            metrics::counter!("doudi_matcher_fenced_total", "when" => "batch_start").increment(1);
            owned.remove(&tp);
            fenced_at_start = true;
            continue;
        }
        partitions.insert(tp, (epoch, (next >= 0).then_some(next)));
    }
    // Skip what the database already holds; the rest of each partition follows in order.
    let mut events = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut first_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut unusable: Vec<(&BorrowedMessage<'_>, String)> = Vec::new();
    for m in &batch {
        let tp = (m.topic().to_string(), m.partition());
        let Some((_, stored)) = partitions.get(&tp) else { continue };
        first_offsets.entry(tp.clone()).or_insert(m.offset());
        if stored.is_some_and(|s| m.offset() < s) {
            continue; // applied before: its effects are in the database already
        }
        next.insert(tp.clone(), m.offset() + 1);
        match inbound(m, options).map_err(str::to_string).and_then(|e| checked(e, ctx)) {
            Ok(e) => {
                events.push(e);
                messages.push(m);
            }
            Err(reason) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, offset = m.offset(), "An inbound message cannot be used and goes to the feed's dead-letter topic: {reason}.");
                unusable.push((m, reason));
            }
        }
    }
    if fenced_at_start && events.is_empty() && unusable.is_empty() {
        // Nothing of the batch is this instance's any more.
        tx.rollback().await?;
        return Ok(None);
    }
    let mut outcome = match isolated(&mut tx, ctx, &events).await? {
        Ok(outcome) => outcome,
        // One event the database or an outbound schema refuses must not hold up the others, nor
        // fail this batch again and again: the events are applied one by one, each within a
        // savepoint, and those refused on their own go to the dead-letter topic.
        Err(refused) => {
            tracing::warn!(
                events = events.len(),
                "A batch was refused ({refused}); applying its events one by one to set aside the one that cannot be applied."
            );
            let mut total = BatchOutcome::default();
            for (event, m) in events.iter().zip(&messages) {
                match isolated(&mut tx, ctx, std::slice::from_ref(event)).await? {
                    Ok(one) => total.add(&one),
                    Err(reason) => {
                        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, "An inbound event cannot be applied and goes to the feed's dead-letter topic: {reason}.");
                        unusable.push((m, reason));
                    }
                }
            }
            total
        }
    };
    outcome.events += unusable.len() as u64;
    outcome.unusable = unusable.len() as u64;
    let now = now_rfc3339();
    for (tp, offset) in &next {
        let Some((epoch, _)) = partitions.get(tp) else { continue };
        let updated = tx
            .conn()
            .execute(
                "UPDATE consumer_offsets SET next_offset = $1, updated_at = $2 WHERE consumer_group = $3 AND topic = $4 AND kafka_partition = $5 AND epoch = $6"
                    .into(),
                vec![
                    Bind::Int(*offset),
                    Bind::Text(Some(now.clone())),
                    Bind::Text(Some(options.group.clone())),
                    Bind::Text(Some(tp.0.clone())),
                    Bind::Int(i64::from(tp.1)),
                    Bind::Int(*epoch),
                ],
            )
            .await?;
        if updated != 1 {
            metrics::counter!("doudi_matcher_fenced_total", "when" => "batch_end").increment(1);
            tx.rollback().await?;
            owned.remove(tp);
            tracing::warn!(topic = %tp.0, partition = tp.1, "The batch was rolled back: another matcher instance claimed one of its partitions.");
            // The consumer has read past the batch: put the partitions this instance still owns
            // back where the database is, so the rolled-back events are applied again.
            for (other, first) in &first_offsets {
                if other == tp || !owned.contains_key(other) {
                    continue;
                }
                let stored = partitions.get(other).and_then(|p| p.1).unwrap_or(*first);
                if let Err(e) = consumer.seek(&other.0, other.1, Offset::Offset(stored), Duration::from_secs(5)) {
                    tracing::warn!(topic = %other.0, partition = other.1, "Seeking back after a rolled-back batch failed; restarting the matcher re-reads from the database's offset: {e}");
                }
            }
            return Ok(None);
        }
    }
    // Messages that cannot be used reach the feed's dead-letter topic before their offsets pass
    // them; a crash between the two sends them again (their headers name the same offset).
    for (m, reason) in unusable {
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        let headers = [
            ("topic", m.topic()),
            ("error_code", "unusable"),
            ("stage", "match"),
            ("reason", reason.as_str()),
            ("source_partition", partition.as_str()),
            ("source_offset", offset.as_str()),
        ];
        crate::kafka::send_dead_letter(producer, m.topic(), m.key(), m.payload().unwrap_or_default(), &headers).await?;
    }
    tx.commit().await?;
    crate::audit::logged(&outcome.audit);
    // Only now may Kafka's committed offsets move, and only to what the database holds.
    let mut commit = TopicPartitionList::new();
    let mut known = positions.lock().unwrap_or_else(|p| p.into_inner());
    for (tp, offset) in &next {
        if let Some(own) = owned.get_mut(tp) {
            own.next = Some(*offset);
        }
        known.insert(tp.clone(), *offset);
        commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(*offset))?;
    }
    if commit.count() > 0
        && let Err(e) = consumer.commit(&commit, CommitMode::Async)
    {
        tracing::warn!("Committing Kafka offsets failed (the database holds them; the next commit repairs it): {e}");
    }
    drop(known);
    Ok(Some(outcome))
}

const SAVEPOINT: &str = "doudi_events";

/// Applies `events` within a savepoint of `tx`. `Ok(Err(reason))` when the database or an
/// outbound schema refused them (the savepoint is rolled back, the transaction goes on); `Err`
/// when the database cannot be reached or the transaction cannot go on. The reason names no value.
async fn isolated(tx: &mut Tx, ctx: &Context, events: &[Inbound]) -> Result<Result<BatchOutcome, String>, MatchError> {
    tx.conn().execute(format!("SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
    match apply_batch(&mut tx.conn(), ctx, events).await {
        Ok(outcome) => {
            tx.conn().execute(format!("RELEASE SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
            Ok(Ok(outcome))
        }
        Err(e) => match refusal(&e) {
            Some(reason) => {
                tx.conn().execute(format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
                tx.conn().execute(format!("RELEASE SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
                Ok(Err(reason))
            }
            None => Err(e.into()),
        },
    }
}

/// Why the events were refused, when the refusal is theirs: a value the database will not store
/// (say a NUL character in a name), a constraint, an outbound event its schema refuses. A lost
/// connection, a deadlock or a serialisation failure is not the events' doing (`None`).
fn refusal(e: &ApplyError) -> Option<String> {
    match e {
        ApplyError::InvalidOutbound { topic, reason } => {
            Some(format!("the outbound event for {topic} does not match its schema ({reason})"))
        }
        ApplyError::Db(DbError::Query(sqlx::Error::Database(db))) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // SQLSTATE classes 08 (connection), 40 (transaction rollback), 53 (resources), 57
            // (operator intervention) and 58 (system) are the server's state, not the event's.
            let transient = ["08", "40", "53", "57", "58"].iter().any(|class| code.starts_with(class));
            // SQLite reports busy and locked databases with codes 5 and 6.
            let busy = matches!(code.as_str(), "5" | "6" | "261" | "262" | "517");
            (!transient && !busy).then(|| format!("the database refused it (SQLSTATE {code})"))
        }
        ApplyError::Db(DbError::Encoding(what)) => Some(format!("its rows for {what} could not be encoded")),
        _ => None,
    }
}

fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let headers = m.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| String::from_utf8(v.to_vec()).ok())
}

/// The event, if its payload is valid. Caseworkers' actions come straight from civil affairs' case
/// system, not through a connector that validated them: they are checked against their schema here
/// (the reason names the field, never the value).
fn checked(event: Inbound, ctx: &Context) -> Result<Inbound, String> {
    if event.feed != Feed::Resolution {
        return Ok(event);
    }
    let schema = ctx.registry.for_topic(Feed::Resolution.topic()).map_err(|e| e.to_string())?;
    match schema.violations(&event.payload).first() {
        Some(v) => Err(format!(
            "it does not match {}: {} at {}",
            Feed::Resolution.topic(),
            v.message,
            if v.pointer.is_empty() { "/" } else { v.pointer.as_str() }
        )),
        None => Ok(event),
    }
}

/// The inbound event a message carries, or why it carries none.
fn inbound(m: &BorrowedMessage<'_>, options: &MatchOptions) -> Result<Inbound, &'static str> {
    let feed = *options.inbound.get(m.topic()).ok_or("the message is on a topic the matcher does not read")?;
    let (envelope, payload) = Envelope::of_message(m)?;
    Ok(Inbound {
        topic: m.topic().to_string(),
        feed,
        partition: m.partition(),
        offset: m.offset(),
        ce_id: envelope.id,
        recorded_at: envelope.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source_file: header(m, "source_file").or_else(|| header(m, "source_request")),
        source_row: header(m, "source_row"),
        payload,
    })
}

/// The stored next offset of every partition of `group`.
async fn stored_positions(db: &Database, group: &str) -> Result<BTreeMap<(String, i32), i64>, MatchError> {
    let mut out = BTreeMap::new();
    for r in sqlx::query("SELECT topic, kafka_partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND next_offset >= 0")
        .bind(group)
        .fetch_all(db.pool())
        .await?
    {
        let partition: i64 = r.try_get("kafka_partition")?;
        out.insert((r.try_get("topic")?, i32::try_from(partition).unwrap_or_default()), r.try_get("next_offset")?);
    }
    Ok(out)
}

/// Claims a partition for this instance: bumps its epoch and returns the stored next offset.
async fn claim_partition(db: &Database, group: &str, topic: &str, partition: i32, owner: &str) -> Result<Owned, MatchError> {
    let row = sqlx::query(
        "INSERT INTO consumer_offsets (consumer_group, topic, kafka_partition, next_offset, epoch, owner, updated_at) VALUES ($1, $2, $3, -1, 1, $4, $5) \
         ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET epoch = consumer_offsets.epoch + 1, owner = excluded.owner, updated_at = excluded.updated_at \
         RETURNING next_offset, epoch",
    )
    .bind(group)
    .bind(topic)
    .bind(i64::from(partition))
    .bind(owner)
    .bind(now_rfc3339())
    .fetch_one(db.pool())
    .await?;
    let next: i64 = row.try_get("next_offset")?;
    Ok(Owned { epoch: row.try_get("epoch")?, next: (next >= 0).then_some(next) })
}

/// Every owned partition has been read to its end (transaction markers included). The log ends
/// come from one ListOffsets request for all partitions.
fn caught_up(consumer: &StreamConsumer<MatcherContext>, owned: &BTreeMap<(String, i32), Owned>) -> Result<bool, MatchError> {
    let mut wanted = TopicPartitionList::new();
    for (topic, partition) in owned.keys() {
        wanted.add_partition_offset(topic, *partition, Offset::End)?;
    }
    let ends = consumer.offsets_for_times(wanted, Duration::from_secs(10))?;
    let positions = consumer.position()?;
    for ((topic, partition), own) in owned {
        let Some(end) = crate::kafka::offset_in(&ends, topic, *partition) else { return Ok(false) };
        if end == 0 {
            continue;
        }
        let position = crate::kafka::offset_in(&positions, topic, *partition);
        let at = position.into_iter().chain(own.next).max().unwrap_or(-1);
        if at < end {
            tracing::debug!(topic, partition, at, end, "not caught up yet");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether at least `n` outbox rows are queued (counting no further than `n`).
async fn queued_at_least(db: &Database, n: i64) -> Result<bool, MatchError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM (SELECT id FROM outbox_pending LIMIT $1) q").bind(n).fetch_one(db.pool()).await?;
    Ok(row.try_get::<i64, _>("n")? >= n)
}

/// Advisory lock key of the outbox relay (PostgreSQL): one relay publishes at a time, so that two
/// matcher instances, `policy apply` and `review` never interleave their copies of the same rows
/// and per-household order holds.
pub const RELAY_LOCK: i64 = 0x646f_7564_6901;

/// Outbox rows read and handed to the producer at once.
const RELAY_ROUND: i64 = 5_000;

/// A row handed to the producer: its id, topic, source time and the broker's answer to come.
type InFlight = (i64, String, String, rdkafka::producer::DeliveryFuture);

/// Publishes unsent outbox rows in id order; marks the acknowledged rows sent. Returns how many.
/// On PostgreSQL, if another process is relaying, returns 0 at once and leaves the rows to it.
///
/// Rounds are pipelined: the next round is read and handed to the producer while the broker
/// acknowledges the previous one, which is then marked sent. At the first failed record the run
/// stops; records handed over after it may already be published and are published again (same
/// `ce_id`) when the failed one is retried.
pub async fn relay(db: &Database, producer: &FutureProducer) -> Result<u64, MatchError> {
    // One relay at a time: a transaction-level advisory lock on a connection of its own, held for
    // the whole run and released when the transaction ends, however the run ends.
    let mut lock_conn = if db.backend().has_advisory_locks() { Some(db.pool().acquire().await.map_err(DbError::Query)?) } else { None };
    let lock = match lock_conn.as_mut() {
        Some(conn) => {
            let mut tx = conn.begin().await.map_err(DbError::Query)?;
            let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *tx)
                .await?
                .try_get("locked")?;
            if !locked {
                return Ok(0);
            }
            Some(tx)
        }
        None => None,
    };
    // The round's ids are taken from the queue first, then their rows looked up by id.
    let ids = db.backend().ids_from("id", "SELECT id FROM outbox_pending WHERE id > $1 ORDER BY id LIMIT $2");
    let round_sql = format!(
        "SELECT id, topic, message_key, ce_id, ce_type, dataschema, payload, source_time, created_at FROM outbox WHERE {ids} ORDER BY id"
    );
    let mut published = 0;
    let mut after = 0_i64;
    let mut previous: Option<Vec<InFlight>> = None;
    let mut marking: Option<tokio::task::JoinHandle<Result<(), MatchError>>> = None;
    loop {
        // A connection per round, given back before the round is marked: SQLite's pool has one.
        let rows = Pooled::acquire(db)
            .await
            .map_err(DbError::Query)?
            .conn()
            .fetch(round_sql.clone(), vec![Bind::Int(after), Bind::Int(RELAY_ROUND)])
            .await?;
        let mut current = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let topic: String = r.try_get("topic")?;
            let key: &str = r.try_get("message_key")?;
            let ce_id: &str = r.try_get("ce_id")?;
            let ce_type: &str = r.try_get("ce_type")?;
            let schema: &str = r.try_get("dataschema")?;
            let payload: &str = r.try_get("payload")?;
            let created: &str = r.try_get("created_at")?;
            // A dead letter a caseworker's rejection sends back goes out as a connector's would: the
            // original as the value, the reason and the source in headers.
            let dead_letter = if ce_type == super::casework::DEAD_LETTER_TYPE { super::casework::dead_letter_parts(payload) } else { None };
            let record = match &dead_letter {
                Some((pairs, original)) => {
                    let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain([("ce_id", ce_id)]);
                    FutureRecord::to(&topic).key(key).payload(original.as_str()).headers(crate::envelope::headers(pairs))
                }
                None => {
                    let headers = binary_mode_headers(ce_id, MATCHER_SOURCE, ce_type, created, schema, std::iter::empty());
                    FutureRecord::to(&topic).key(key).payload(payload).headers(headers)
                }
            };
            let delivery = producer.send_result(record).map_err(|(e, _)| MatchError::Kafka(e))?;
            after = id;
            current.push((id, topic, r.try_get("source_time")?, delivery));
        }
        if let Some(round) = previous.take() {
            let (delivered, failure) = settle(round).await;
            published += delivered.len() as u64;
            // Marking runs beside the next round; one at a time.
            marked(marking.take()).await?;
            let db = db.clone();
            marking = Some(tokio::spawn(async move { mark_sent(&db, &delivered).await }));
            if let Some(e) = failure {
                tracing::warn!("Publishing the outbox failed; unsent rows are retried: {e}");
                break;
            }
        }
        if current.is_empty() {
            break;
        }
        previous = Some(current);
    }
    marked(marking.take()).await?;
    if let Some(tx) = lock {
        tx.commit().await?;
    }
    Ok(published)
}

/// How often [`relay_during`] looks at the queue while its work goes on.
const RELAY_PAUSE: Duration = Duration::from_millis(200);

/// Runs `work` (a re-evaluation writing to the outbox, chunk by chunk) while the relay publishes
/// what it commits, then publishes what is left. While the work goes on, a relay run starts once a
/// full round (5,000 rows) is queued: the broker handles a few large batches per partition rather
/// than many small ones (BENCHMARKS.md). Returns the
/// work's output and how many rows were published, or the relay's error; the work always runs to
/// its end, and whatever the relay could not publish stays in the outbox for the next relay. The
/// last run starts once the work has ended, so nothing committed by the work is left behind. On
/// SQLite (one writer, the demo's database) only that last run happens.
pub async fn relay_during<T>(
    db: &Database,
    producer: &FutureProducer,
    work: impl std::future::Future<Output = T>,
) -> (T, Result<u64, MatchError>) {
    let finished = tokio::sync::Notify::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    let working = async {
        let out = work.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        finished.notify_one();
        out
    };
    let relaying = async {
        let mut published = 0;
        loop {
            // Read before the run: the run after the work ended is the last one.
            let last = done.load(std::sync::atomic::Ordering::SeqCst);
            // With one writer (SQLite) the relay waits for the work's last chunk.
            if last || (db.backend().writers(2) > 1 && queued_at_least(db, RELAY_ROUND).await?) {
                published += relay(db, producer).await?;
            }
            if last {
                return Ok(published);
            }
            tokio::select! {
                _ = tokio::time::sleep(RELAY_PAUSE) => {}
                _ = finished.notified() => {}
            }
        }
    };
    tokio::join!(working, relaying)
}

/// Waits for a round's acknowledgements. Returns the rows acknowledged before the first failure,
/// and the failure.
async fn settle(round: Vec<InFlight>) -> (Vec<Bind>, Option<rdkafka::error::KafkaError>) {
    let mut delivered = Vec::with_capacity(round.len());
    let mut failure = None;
    for (id, topic, source_time, delivery) in round {
        match delivery.await {
            Ok(Ok(_)) if failure.is_none() => {
                delivered.push(Bind::Int(id));
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&source_time) {
                    let ms = u64::try_from((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds()).unwrap_or(0);
                    metrics::histogram!("doudi_matcher_end_to_end_seconds", "topic" => topic.clone())
                        .record(Duration::from_millis(ms).as_secs_f64());
                }
                metrics::counter!("doudi_matcher_published_total", "topic" => topic).increment(1);
            }
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(rdkafka::error::KafkaError::Canceled)),
        }
    }
    (delivered, failure)
}

/// Waits for a marking task, if any, and passes on its failure.
async fn marked(marking: Option<tokio::task::JoinHandle<Result<(), MatchError>>>) -> Result<(), MatchError> {
    match marking {
        Some(task) => task.await.map_err(|e| MatchError::Task(e.to_string()))?,
        None => Ok(()),
    }
}

/// How often the matcher prunes the outbox.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Outbox rows deleted per statement when pruning.
const PRUNE_ROUND: i64 = 10_000;

/// Deletes the sent outbox rows written longer than `retention` ago, oldest first, in statements of
/// `PRUNE_ROUND` rows; returns how many. Unsent rows (still in `outbox_pending`) are never deleted.
/// The scan stops at the first row written within the retention (ids grow with time, so the rows
/// beyond it are recent). `reconcile --no-kafka` counts a delivery whose outbox row is gone as
/// published: a delivery row is written in the same transaction as its outbox row, and only sent
/// rows are deleted.
pub async fn prune_outbox(db: &Database, retention: Duration) -> Result<u64, MatchError> {
    let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = chrono::Utc::now().checked_sub_signed(age) else { return Ok(0) };
    let cutoff = crate::db::rfc3339(cutoff);
    let bound: i64 = sqlx::query("SELECT id FROM outbox WHERE created_at >= $1 ORDER BY id LIMIT 1")
        .bind(&cutoff)
        .fetch_optional(db.pool())
        .await?
        .map(|r| r.try_get("id"))
        .transpose()?
        .unwrap_or(i64::MAX);
    let mut pruned = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE o.id < $1 AND o.created_at < $2 \
                 AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.id = o.id) ORDER BY o.id LIMIT $3)",
        )
        .bind(bound)
        .bind(&cutoff)
        .bind(PRUNE_ROUND)
        .execute(db.pool())
        .await?
        .rows_affected();
        pruned += done;
        metrics::counter!("doudi_matcher_outbox_pruned_total").increment(done);
        if done < PRUNE_ROUND as u64 {
            return Ok(pruned);
        }
    }
}

/// Marks rows sent: takes them off the relay's queue.
async fn mark_sent(db: &Database, ids: &[Bind]) -> Result<(), MatchError> {
    let mut conn = Pooled::acquire(db).await.map_err(DbError::Query)?;
    crate::db::sql::execute_in(&mut conn.conn(), "DELETE FROM outbox_pending WHERE id IN", &[], ids).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbound_schema_refusal_is_the_events_and_a_lost_server_is_not() {
        let outbound = ApplyError::InvalidOutbound { topic: "exchange.recipient.status.v1".into(), reason: "/category".into() };
        assert_eq!(
            refusal(&outbound).as_deref(),
            Some("the outbound event for exchange.recipient.status.v1 does not match its schema (/category)")
        );
        for server in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(std::io::Error::other("reset")), sqlx::Error::WorkerCrashed] {
            assert_eq!(refusal(&ApplyError::Db(DbError::Query(server))), None, "waited out, never dead-lettered");
        }
    }
}
