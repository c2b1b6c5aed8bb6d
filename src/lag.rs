//! Consumer lag: offsets, lag in messages, time lag and a status per group (`doudi lag`).
//!
//! Guarantees:
//! - commits are read from `__consumer_offsets` itself (read_committed, so transactional offset
//!   commits count once their transaction commits), which gives every commit's own timestamp, as
//!   Burrow does; the last `window` commits per group and partition are kept;
//! - the log-end offset is the partition's high watermark, as `kafka-consumer-groups --describe`
//!   reports it, and the lag is log end minus committed offset (never below zero);
//! - the time lag is now minus the timestamp of the first record not yet consumed, read from the
//!   broker (never interpolated); it is 0 when the partition is caught up;
//! - the lag at each past commit is the log end *at that commit's time* (the broker's offset for
//!   that timestamp), so a window read at start-up evaluates as it would have live;
//! - the status of a partition follows Burrow's evaluation rules (see [`evaluate`]); a group's
//!   status is its worst partition's. Nothing here reads record values beyond their timestamps.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KafkaSettings;
use crate::kafka::compacted::{EndAware, from_the_beginning};
use crate::kafka::{KafkaError, client_config};

/// Kafka's internal topic of group offset commits.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Status of a partition or a group, in rising severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Caught up, or catching up.
    Ok,
    /// Committing and moving, but the lag never went down over the window: falling behind.
    Warn,
    /// An offset went backwards within the window (a reset or a replay).
    Rewind,
    /// Still committing, but the same offset every time while lag remains.
    Stall,
    /// No commit for longer than the window spans while lag remains: the consumer stopped.
    Stop,
    /// The group cannot be evaluated (its topic is gone, or an offset is beyond the log end).
    Err,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Rewind => "REWIND",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Err => "ERR",
        }
    }

    /// The value of `doudi_consumergroup_status`.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One offset commit as stored in `__consumer_offsets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// A commit in the evaluation window with the lag it had when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub lag: i64,
}

/// Burrow's rules for one partition, in this order:
/// 1. the current lag is zero: OK (an idle, caught-up partition never stops);
/// 2. an offset went down between two commits of the window: REWIND;
/// 3. the time since the last commit is longer than the window spans (first to last commit) and
///    longer than `stop_after_ms`: STOP;
/// 4. any commit of the window had zero lag: OK;
/// 5. every commit of the window has the same offset (at least two commits): STALL;
/// 6. the lag never went down from one commit to the next, ending at the current lag (at least
///    two commits): WARN;
/// 7. otherwise OK (catching up).
pub fn evaluate(window: &[Observed], current_lag: i64, now_ms: i64, stop_after_ms: i64) -> Status {
    if current_lag <= 0 {
        return Status::Ok;
    }
    let Some(last) = window.last() else { return Status::Ok };
    if window.windows(2).any(|w| w[1].offset < w[0].offset) {
        return Status::Rewind;
    }
    let first = window[0];
    let span = last.timestamp_ms - first.timestamp_ms;
    let silent = now_ms - last.timestamp_ms;
    if silent > span && silent > stop_after_ms {
        return Status::Stop;
    }
    if window.iter().any(|o| o.lag == 0) {
        return Status::Ok;
    }
    if window.len() >= 2 && window.iter().all(|o| o.offset == first.offset) {
        return Status::Stall;
    }
    if window.len() >= 2 {
        let mut lags: Vec<i64> = window.iter().map(|o| o.lag).collect();
        lags.push(current_lag);
        if lags.windows(2).all(|w| w[1] >= w[0]) {
            return Status::Warn;
        }
    }
    Status::Ok
}

/// A reader over a record of Kafka's internal formats.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    /// A STRING: int16 length then UTF-8 (length -1 is null).
    fn string(&mut self) -> Option<String> {
        let len = self.i16()?;
        if len < 0 {
            return Some(String::new());
        }
        self.take(len as usize).map(|b| String::from_utf8_lossy(b).into_owned())
    }
    /// A COMPACT_STRING: unsigned varint length + 1, then UTF-8.
    fn compact_string(&mut self) -> Option<String> {
        let len = self.uvarint()?;
        if len == 0 {
            return Some(String::new());
        }
        self.take(usize::try_from(len - 1).ok()?).map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// The key of an offset commit record: (group, topic, partition). Other record kinds (group
/// metadata, KIP-848 group records) are `None`.
pub fn decode_key(key: &[u8]) -> Option<(String, String, i32)> {
    let mut b = Bytes(key);
    match b.i16()? {
        0 | 1 => Some((b.string()?, b.string()?, b.i32()?)),
        _ => None,
    }
}

/// The value of an offset commit record, versions 0 to 4 (Kafka 4 writes version 4, a flexible
/// version; `konsumer_offsets` 0.3 stops at 3, which is why this is not that crate).
pub fn decode_value(value: &[u8]) -> Option<Commit> {
    let mut b = Bytes(value);
    let version = b.i16()?;
    let offset = b.i64()?;
    let timestamp_ms = match version {
        0..=2 => {
            b.string()?;
            b.i64()?
        }
        3 => {
            b.i32()?;
            b.string()?;
            b.i64()?
        }
        4 => {
            b.i32()?;
            b.compact_string()?;
            b.i64()?
        }
        _ => return None,
    };
    Some(Commit { offset, timestamp_ms })
}

/// (group, topic, partition).
type CommitKey = (String, String, i32);

/// The recent commits per (group, topic, partition).
#[derive(Clone, Debug, Default)]
pub struct CommitLog {
    window: usize,
    commits: BTreeMap<CommitKey, VecDeque<Commit>>,
}

impl CommitLog {
    pub fn new(window: usize) -> Self {
        CommitLog { window: window.max(1), commits: BTreeMap::new() }
    }

    /// Applies one record of `__consumer_offsets` (a tombstone forgets the partition's commits).
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(k) = decode_key(key) else { return };
        match value.and_then(decode_value) {
            Some(commit) => {
                let ring = self.commits.entry(k).or_default();
                // The same commit can be read twice after a consumer restart; keep it once.
                if ring.back() != Some(&commit) {
                    ring.push_back(commit);
                }
                while ring.len() > self.window {
                    ring.pop_front();
                }
            }
            None if value.is_none() => {
                self.commits.remove(&k);
            }
            None => {}
        }
    }

    pub fn groups(&self) -> BTreeSet<String> {
        self.commits.keys().map(|(g, _, _)| g.clone()).collect()
    }
}

/// Follows `__consumer_offsets` into a shared [`CommitLog`].
#[derive(Clone)]
pub struct Follower {
    pub log: Arc<Mutex<CommitLog>>,
    caught_up: tokio::sync::watch::Receiver<bool>,
}

impl Follower {
    /// Starts reading from the beginning in a background task.
    pub fn start(settings: &KafkaSettings, window: usize) -> Result<Follower, KafkaError> {
        let consumer: StreamConsumer<EndAware> =
            crate::kafka::reader_config(settings, &format!("doudi-lag-{}", uuid::Uuid::new_v4().simple()))
                .set("enable.partition.eof", "true")
                .create_with_context(EndAware)?;
        let (partitions, assignment) = from_the_beginning(&consumer, OFFSETS_TOPIC)?;
        consumer.assign(&assignment)?;
        let log = Arc::new(Mutex::new(CommitLog::new(window)));
        let (tx, caught_up) = tokio::sync::watch::channel(partitions.is_empty());
        let shared = log.clone();
        tokio::spawn(async move {
            let mut at_end = HashSet::new();
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        if let Some(key) = m.key()
                            && let Ok(mut log) = shared.lock()
                        {
                            log.apply(key, m.payload());
                        }
                    }
                    Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                        at_end.insert(p);
                        if at_end.len() >= partitions.len() {
                            let _ = tx.send(true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading __consumer_offsets failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(Follower { log, caught_up })
    }

    /// Waits until every partition of `__consumer_offsets` has been read to its end once.
    pub async fn wait_caught_up(&mut self, timeout: Duration) -> Result<(), KafkaError> {
        tokio::time::timeout(timeout, self.caught_up.wait_for(|c| *c))
            .await
            .map_err(|_| KafkaError::Timeout(timeout))?
            .map(|_| ())
            .map_err(|_| KafkaError::Timeout(timeout))
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    pub fn snapshot(&self) -> CommitLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// One partition of one group.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub log_end: i64,
    pub lag: i64,
    /// Milliseconds from the first unconsumed record's timestamp to now; 0 when caught up; absent
    /// when that record could not be read (e.g. removed by retention).
    pub time_lag_ms: Option<i64>,
    pub last_commit_ms: i64,
    pub commits_in_window: usize,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One topic of one group.
#[derive(Clone, Debug, Serialize)]
pub struct TopicLag {
    pub topic: String,
    pub lag: i64,
    pub time_lag_ms: Option<i64>,
    pub status: Status,
}

/// A group's report.
#[derive(Clone, Debug, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub status: Status,
    /// The coordinator's view: Stable, Empty, PreparingRebalance, Dead…
    pub state: String,
    pub members: usize,
    pub lag: i64,
    pub time_lag_ms: Option<i64>,
    pub topics: Vec<TopicLag>,
    pub partitions: Vec<PartitionLag>,
}

/// Everything `doudi lag` shows, at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub evaluated_at_ms: i64,
    pub groups: Vec<GroupLag>,
}

/// How a report is evaluated.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only these groups (all when empty).
    pub groups: Vec<String>,
    /// A STOP needs at least this long without a commit.
    pub stop_after: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The client an evaluation asks the broker with (metadata, offsets, record timestamps); it never
/// joins a group or commits. Long-running callers keep one across evaluations.
pub fn evaluation_consumer(settings: &KafkaSettings) -> Result<BaseConsumer, KafkaError> {
    Ok(client_config(settings)
        .set("group.id", format!("doudi-lag-{}", uuid::Uuid::new_v4().simple()))
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?)
}

/// Builds a report from the commits read so far, with a client of its own.
pub fn report(settings: &KafkaSettings, log: &CommitLog, options: &Options) -> Result<Report, KafkaError> {
    report_with(&evaluation_consumer(settings)?, log, options)
}

/// Builds a report from the commits read so far.
pub fn report_with(consumer: &BaseConsumer, log: &CommitLog, options: &Options) -> Result<Report, KafkaError> {
    let evaluated_at_ms = now_ms();
    let wanted = |g: &str| options.groups.is_empty() || options.groups.iter().any(|w| w == g);
    let entries: Vec<(&CommitKey, &VecDeque<Commit>)> =
        log.commits.iter().filter(|((g, _, _), ring)| wanted(g) && !ring.is_empty()).collect();

    // Which partitions exist, and their log ends (one ListOffsets request for all).
    let metadata = consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
    let existing: HashSet<(String, i32)> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(move |p| (t.name().to_string(), p.id()))).collect();
    let partitions: BTreeSet<(String, i32)> =
        entries.iter().map(|((_, t, p), _)| (t.clone(), *p)).filter(|tp| existing.contains(tp)).collect();
    let log_end = offsets_at(consumer, partitions.iter().map(|(t, p)| (t.as_str(), *p, Offset::End)))?;

    // The log end at each past commit's time, in rounds (a partition once per request).
    let mut at_time: HashMap<(String, i32, i64), i64> = HashMap::new();
    let mut pending: BTreeMap<(String, i32), BTreeSet<i64>> = BTreeMap::new();
    for ((_, t, p), ring) in &entries {
        if existing.contains(&(t.clone(), *p)) {
            pending.entry((t.clone(), *p)).or_default().extend(ring.iter().map(|c| c.timestamp_ms));
        }
    }
    while pending.values().any(|s| !s.is_empty()) {
        let round: Vec<(String, i32, i64)> =
            pending.iter_mut().filter_map(|((t, p), set)| set.pop_first().map(|ts| (t.clone(), *p, ts))).collect();
        let found = offsets_at(consumer, round.iter().map(|(t, p, ts)| (t.as_str(), *p, Offset::Offset(*ts))))?;
        for (t, p, ts) in round {
            // No record at or after that time: everything was already written, so the end now.
            let end = found
                .get(&(t.clone(), p))
                .copied()
                .filter(|o| *o >= 0)
                .unwrap_or_else(|| log_end.get(&(t.clone(), p)).copied().unwrap_or(0));
            at_time.insert((t, p, ts), end);
        }
    }

    // The timestamp of the first unconsumed record, per lagging (group, partition).
    let mut first_unconsumed: BTreeSet<(String, i32, i64)> = BTreeSet::new();
    for ((_, t, p), ring) in &entries {
        if let (Some(last), Some(end)) = (ring.back(), log_end.get(&(t.clone(), *p)))
            && last.offset < *end
            && last.offset >= 0
        {
            first_unconsumed.insert((t.clone(), *p, last.offset));
        }
    }
    let record_times = record_timestamps(consumer, &first_unconsumed)?;

    let states = group_states(consumer);
    let mut groups: BTreeMap<String, Vec<PartitionLag>> = BTreeMap::new();
    for ((group, topic, partition), ring) in entries {
        let Some(last) = ring.back().copied() else { continue };
        let end = log_end.get(&(topic.clone(), *partition)).copied();
        let mut row = PartitionLag {
            topic: topic.clone(),
            partition: *partition,
            committed: last.offset,
            log_end: end.unwrap_or(-1),
            lag: 0,
            time_lag_ms: None,
            last_commit_ms: last.timestamp_ms,
            commits_in_window: ring.len(),
            status: Status::Ok,
            problem: None,
        };
        match end {
            None => {
                row.status = Status::Err;
                row.problem = Some("the partition no longer exists".into());
            }
            Some(end) if last.offset > end => {
                row.status = Status::Err;
                row.problem = Some(format!("committed offset {} is beyond the log end {end}", last.offset));
            }
            Some(end) => {
                row.lag = (end - last.offset.max(0)).max(0);
                row.time_lag_ms = if row.lag == 0 {
                    Some(0)
                } else {
                    record_times.get(&(topic.clone(), *partition, last.offset)).map(|ts| (evaluated_at_ms - ts).max(0))
                };
                let window: Vec<Observed> = ring
                    .iter()
                    .map(|c| {
                        let end_then = at_time.get(&(topic.clone(), *partition, c.timestamp_ms)).copied().unwrap_or(end);
                        Observed { offset: c.offset, timestamp_ms: c.timestamp_ms, lag: (end_then - c.offset).max(0) }
                    })
                    .collect();
                let stop_after = i64::try_from(options.stop_after.as_millis()).unwrap_or(i64::MAX);
                row.status = evaluate(&window, row.lag, evaluated_at_ms, stop_after);
            }
        }
        groups.entry(group.clone()).or_default().push(row);
    }

    let groups = groups
        .into_iter()
        .map(|(group, partitions)| {
            let mut topics: BTreeMap<&str, TopicLag> = BTreeMap::new();
            for p in &partitions {
                let t = topics.entry(p.topic.as_str()).or_insert_with(|| TopicLag {
                    topic: p.topic.clone(),
                    lag: 0,
                    time_lag_ms: Some(0),
                    status: Status::Ok,
                });
                t.lag += p.lag;
                t.time_lag_ms = match (t.time_lag_ms, p.time_lag_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                t.status = t.status.max(p.status);
            }
            let topics: Vec<TopicLag> = topics.into_values().collect();
            let (state, members) = states.get(&group).cloned().unwrap_or_else(|| ("Unknown".into(), 0));
            GroupLag {
                status: partitions.iter().map(|p| p.status).max().unwrap_or(Status::Ok),
                lag: partitions.iter().map(|p| p.lag).sum(),
                time_lag_ms: topics.iter().try_fold(0, |acc, t| t.time_lag_ms.map(|v| acc.max(v))),
                group,
                state,
                members,
                topics,
                partitions,
            }
        })
        .collect();
    Ok(Report { evaluated_at_ms, groups })
}

/// The log end (high watermark) of many partitions, in one request.
pub fn log_ends<'a, C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: impl Iterator<Item = (&'a str, i32)>,
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    offsets_at(consumer, partitions.map(|(t, p)| (t, p, Offset::End)))
}

/// ListOffsets for many partitions in one request: by timestamp, or `Offset::End` for the log end.
fn offsets_at<'a, C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    wanted: impl Iterator<Item = (&'a str, i32, Offset)>,
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in wanted {
        tpl.add_partition_offset(t, p, o)?;
    }
    if tpl.count() == 0 {
        return Ok(HashMap::new());
    }
    let answered = consumer.offsets_for_times(tpl, REQUEST_TIMEOUT)?;
    Ok(answered
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect())
}

/// Reads the record at each (topic, partition, offset) and returns its timestamp. A control
/// record (transaction marker) at that offset is skipped by the client: the next record counts.
fn record_timestamps(
    consumer: &BaseConsumer,
    wanted: &BTreeSet<(String, i32, i64)>,
) -> Result<HashMap<(String, i32, i64), i64>, KafkaError> {
    let mut found = HashMap::new();
    // Several groups can wait at different offsets of one partition: one assignment per round.
    let mut rounds: Vec<Vec<&(String, i32, i64)>> = Vec::new();
    for w in wanted {
        match rounds.iter_mut().find(|r| !r.iter().any(|x| x.0 == w.0 && x.1 == w.1)) {
            Some(round) => round.push(w),
            None => rounds.push(vec![w]),
        }
    }
    for round in rounds {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &round {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
        }
        consumer.assign(&tpl)?;
        let mut open: HashMap<(String, i32), i64> = round.iter().map(|(t, p, o)| ((t.clone(), *p), *o)).collect();
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while !open.is_empty() && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition());
                    if let Some(asked) = open.remove(&key)
                        && let Some(ts) = m.timestamp().to_millis()
                    {
                        found.insert((key.0, key.1, asked), ts);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    open.retain(|(_, partition), _| *partition != p);
                }
                Some(Err(_)) | None => {}
            }
        }
        consumer.unassign()?;
    }
    Ok(found)
}

/// Each group's state and member count, as the coordinator reports them.
fn group_states(consumer: &BaseConsumer) -> HashMap<String, (String, usize)> {
    match consumer.fetch_group_list(None, REQUEST_TIMEOUT) {
        Ok(list) => list.groups().iter().map(|g| (g.name().to_string(), (g.state().to_string(), g.members().len()))).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing consumer groups failed; states shown as Unknown");
            HashMap::new()
        }
    }
}

/// `12.3 s`, `4 min 05 s`, `2 h 03 min`: a time lag for people.
pub fn human_ms(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{} s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// The plain-text table of `doudi lag`.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    if report.groups.is_empty() {
        out.push_str("no consumer group has committed offsets\n");
    }
    for g in &report.groups {
        out.push_str(&format!(
            "GROUP {}  status {}  state {} ({} members)  lag {}  time lag {}\n",
            g.group,
            g.status.as_str(),
            g.state,
            g.members,
            g.lag,
            human_ms(g.time_lag_ms)
        ));
        out.push_str(&format!(
            "  {:<40} {:>9} {:>12} {:>12} {:>10} {:>14}  {}\n",
            "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "TIME-LAG", "STATUS"
        ));
        for p in &g.partitions {
            out.push_str(&format!(
                "  {:<40} {:>9} {:>12} {:>12} {:>10} {:>14}  {}{}\n",
                p.topic,
                p.partition,
                p.committed,
                p.log_end,
                p.lag,
                human_ms(p.time_lag_ms),
                p.status.as_str(),
                p.problem.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(offset: i64, ts: i64, lag: i64) -> Observed {
        Observed { offset, timestamp_ms: ts, lag }
    }

    #[test]
    fn caught_up_and_idle_partitions_are_ok_however_old_the_commit() {
        assert_eq!(evaluate(&[obs(10, 0, 0)], 0, 10_000_000, 1000), Status::Ok);
        assert_eq!(evaluate(&[obs(10, 0, 5), obs(15, 1000, 0)], 0, 99_000_000, 1000), Status::Ok);
    }

    #[test]
    fn falling_behind_is_warn_and_catching_up_is_ok() {
        let behind = [obs(10, 0, 5), obs(20, 1000, 8), obs(30, 2000, 12)];
        assert_eq!(evaluate(&behind, 15, 2500, 60_000), Status::Warn);
        let catching_up = [obs(10, 0, 50), obs(40, 1000, 30), obs(70, 2000, 10)];
        assert_eq!(evaluate(&catching_up, 10, 2500, 60_000), Status::Ok);
    }

    #[test]
    fn same_offset_while_committing_is_stall_and_silence_is_stop() {
        let stalled = [obs(10, 0, 5), obs(10, 1000, 6), obs(10, 2000, 7)];
        assert_eq!(evaluate(&stalled, 7, 2500, 60_000), Status::Stall);
        // Silent for longer than the window spans and than the floor.
        assert_eq!(evaluate(&stalled, 7, 2000 + 60_001, 60_000), Status::Stop);
        // Silent longer than the span but not yet the floor: still STALL.
        assert_eq!(evaluate(&stalled, 7, 2000 + 3000, 60_000), Status::Stall);
        // A single commit with lag, long ago.
        assert_eq!(evaluate(&[obs(3, 0, 4)], 4, 120_000, 60_000), Status::Stop);
    }

    #[test]
    fn an_offset_going_down_is_rewind() {
        let rewound = [obs(30, 0, 0), obs(10, 1000, 20)];
        assert_eq!(evaluate(&rewound, 20, 1500, 60_000), Status::Rewind);
    }

    #[test]
    fn a_lag_of_zero_in_the_window_means_ok_unless_stopped() {
        let w = [obs(10, 0, 0), obs(10, 1000, 3)];
        assert_eq!(evaluate(&w, 3, 1500, 60_000), Status::Ok);
        assert_eq!(evaluate(&w, 3, 1000 + 60_001, 60_000), Status::Stop);
    }

    #[test]
    fn decodes_offset_commit_records_of_every_version() {
        let mut key = vec![0, 1];
        for s in ["g1", "topic.a"] {
            key.extend_from_slice(&(s.len() as i16).to_be_bytes());
            key.extend_from_slice(s.as_bytes());
        }
        key.extend_from_slice(&7i32.to_be_bytes());
        assert_eq!(decode_key(&key), Some(("g1".into(), "topic.a".into(), 7)));
        assert_eq!(decode_key(&[0, 2, 0, 1, b'g']), None, "group metadata records are not commits");

        let v3: Vec<u8> = [
            &3i16.to_be_bytes()[..],
            &42i64.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &0i16.to_be_bytes(),
            &1_700_000_000_000i64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(decode_value(&v3), Some(Commit { offset: 42, timestamp_ms: 1_700_000_000_000 }));
        let v4: Vec<u8> = [
            &4i16.to_be_bytes()[..],
            &43i64.to_be_bytes(),
            &5i32.to_be_bytes(),
            &[3, b'm', b'd'],
            &1_700_000_000_001i64.to_be_bytes(),
            &[0],
        ]
        .concat();
        assert_eq!(decode_value(&v4), Some(Commit { offset: 43, timestamp_ms: 1_700_000_000_001 }));
        let v1: Vec<u8> =
            [&1i16.to_be_bytes()[..], &44i64.to_be_bytes(), &0i16.to_be_bytes(), &9i64.to_be_bytes(), &10i64.to_be_bytes()].concat();
        assert_eq!(decode_value(&v1), Some(Commit { offset: 44, timestamp_ms: 9 }));
        assert_eq!(decode_value(&[0, 4, 1]), None, "truncated values are ignored, not a panic");
        assert_eq!(decode_value(&[0, 9]), None);
    }

    #[test]
    fn the_log_keeps_a_window_and_forgets_on_tombstones() {
        let mut key = vec![0, 1];
        for s in ["g", "t"] {
            key.extend_from_slice(&(s.len() as i16).to_be_bytes());
            key.extend_from_slice(s.as_bytes());
        }
        key.extend_from_slice(&0i32.to_be_bytes());
        let value =
            |o: i64| [&3i16.to_be_bytes()[..], &o.to_be_bytes(), &0i32.to_be_bytes(), &0i16.to_be_bytes(), &o.to_be_bytes()].concat();
        let mut log = CommitLog::new(3);
        for o in 1..=5 {
            log.apply(&key, Some(&value(o)));
        }
        let ring = &log.commits[&("g".to_string(), "t".to_string(), 0)];
        assert_eq!(ring.iter().map(|c| c.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
        log.apply(&key, None);
        assert!(log.groups().is_empty());
    }
}
