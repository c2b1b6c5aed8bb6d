//! `doudi lag serve`: the lag exporter and the operators' status page.
//!
//! Guarantees: `/metrics` carries only group, topic and status labels (no partitions, no
//! personal data), rendered from the latest evaluation so a group that disappears leaves no
//! stale series; `/` is one server-rendered HTML page with inline styles, no scripts and no build
//! step, refreshing itself; `/api/lag` is the same report as `doudi lag --json`; `/readyz` is 200
//! once `__consumer_offsets` has been read to its end. Dead letters are counted, never shown.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::{KafkaSettings, Settings};
use crate::db::{Database, JobRun};
use crate::kafka::KafkaError;
use crate::kafka::compacted::EndAware;
use crate::lag::{Follower, Options, Report, Status, human_ms};

/// What the page and the metrics show, refreshed every interval.
pub struct Board {
    pub report: Option<Report>,
    /// Dead letters per dlq.* topic (committed records).
    pub dead_letters: BTreeMap<String, u64>,
    /// The last successful run of each connector, or why it is unknown.
    pub connectors: Result<Vec<JobRun>, String>,
    pub problem: Option<String>,
}

impl Default for Board {
    fn default() -> Self {
        Board { report: None, dead_letters: BTreeMap::new(), connectors: Err("not read yet".into()), problem: None }
    }
}

#[derive(Clone)]
struct App {
    board: Arc<RwLock<Board>>,
    follower: Follower,
    metrics: PrometheusHandle,
    refresh_secs: u64,
}

/// Counts the committed records of dlq.* topics, recounting a topic only when its offsets moved.
/// Its client is made on first use and kept.
#[derive(Default)]
pub struct DeadLetterCounter {
    seen: HashMap<String, (i64, u64)>,
    consumer: Option<BaseConsumer<EndAware>>,
}

impl DeadLetterCounter {
    pub fn count(&mut self, settings: &KafkaSettings) -> Result<BTreeMap<String, u64>, KafkaError> {
        let consumer = match self.consumer.take() {
            Some(c) => c,
            None => crate::kafka::reader_config(settings, &format!("doudi-status-{}", uuid::Uuid::new_v4().simple()))
                .set("enable.partition.eof", "true")
                .set("fetch.wait.max.ms", "10")
                .create_with_context(EndAware)?,
        };
        let counted = self.count_with(&consumer);
        self.consumer = Some(consumer);
        counted
    }

    fn count_with(&mut self, consumer: &BaseConsumer<EndAware>) -> Result<BTreeMap<String, u64>, KafkaError> {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        let topics: Vec<(String, Vec<i32>)> = metadata
            .topics()
            .iter()
            .filter(|t| t.name().starts_with(crate::topics::DEAD_LETTER_PREFIX))
            .map(|t| (t.name().to_string(), t.partitions().iter().map(|p| p.id()).collect()))
            .collect();
        // Every partition's log end in one request; a topic is re-read only when its ends moved.
        let ends = crate::lag::log_ends(consumer, topics.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (t.as_str(), *p))))?;
        let mut out = BTreeMap::new();
        for (topic, partitions) in &topics {
            let end_sum: i64 = partitions.iter().map(|p| ends.get(&(topic.clone(), *p)).copied().unwrap_or(0).max(0)).sum();
            let count = match self.seen.get(topic) {
                Some((sum, n)) if *sum == end_sum => *n,
                _ if end_sum == 0 => 0,
                _ => count_committed(consumer, topic, partitions)?,
            };
            self.seen.insert(topic.clone(), (end_sum, count));
            out.insert(topic.clone(), count);
        }
        Ok(out)
    }
}

/// Counts a topic's committed records by reading it (dead-letter topics are small).
fn count_committed(consumer: &BaseConsumer<EndAware>, topic: &str, partitions: &[i32]) -> Result<u64, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut ended = std::collections::HashSet::new();
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ended.len() < partitions.len() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.payload().is_some() => count += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            _ => {}
        }
    }
    consumer.unassign()?;
    Ok(count)
}

/// Runs the exporter until `shutdown`: evaluates every `interval` and serves on `addr`.
pub async fn serve(
    settings: &Settings,
    addr: SocketAddr,
    interval: Duration,
    window: usize,
    options: Options,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, String> {
    let follower = Follower::start(&settings.kafka, window).map_err(|e| e.to_string())?;
    let board = Arc::new(RwLock::new(Board::default()));
    let app = App { board: board.clone(), follower: follower.clone(), metrics, refresh_secs: interval.as_secs().max(1) };
    let router = Router::new()
        .route("/", get(page))
        .route("/api/lag", get(api))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app);
    let (bound, server) = crate::http::serve(addr, router, shutdown).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(address = %bound, "lag exporter and status page listening");

    let kafka = settings.kafka.clone();
    let database = settings.database.clone();
    let refresher = tokio::spawn(async move {
        let mut follower = follower;
        let _ = follower.wait_caught_up(Duration::from_secs(120)).await;
        let mut counter = DeadLetterCounter::default();
        let mut evaluator: Option<Arc<BaseConsumer>> = None;
        let mut db: Option<Database> = None;
        loop {
            let log = follower.snapshot();
            let (kafka2, options2, reuse) = (kafka.clone(), options.clone(), evaluator.clone());
            let evaluated = tokio::task::spawn_blocking(move || {
                let consumer = match reuse {
                    Some(c) => Ok(c),
                    None => crate::lag::evaluation_consumer(&kafka2).map(Arc::new),
                };
                let report = consumer
                    .as_ref()
                    .map_err(|e| e.to_string())
                    .and_then(|c| crate::lag::report_with(c, &log, &options2).map_err(|e| e.to_string()));
                let dead = counter.count(&kafka2);
                (report, dead, counter, consumer.ok())
            })
            .await;
            let connectors = match &db {
                Some(d) => d.last_successful_runs().await.map_err(|e| e.to_string()),
                None => match Database::connect(&database).await {
                    Ok(d) => {
                        let runs = d.last_successful_runs().await.map_err(|e| e.to_string());
                        db = Some(d);
                        runs
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            match evaluated {
                Ok((report, dead, returned, consumer)) => {
                    counter = returned;
                    evaluator = consumer;
                    if let Ok(mut b) = board.write() {
                        b.problem = None;
                        match report {
                            Ok(r) => b.report = Some(r),
                            Err(e) => b.problem = Some(format!("evaluating lag failed: {e}")),
                        }
                        match dead {
                            Ok(d) => b.dead_letters = d,
                            Err(e) => b.problem = Some(format!("counting dead letters failed: {e}")),
                        }
                        b.connectors = connectors;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "lag evaluation task failed");
                    counter = DeadLetterCounter::default();
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
    let _ = server.await;
    refresher.abort();
    Ok(bound)
}

async fn ready(State(app): State<App>) -> impl IntoResponse {
    let evaluated = app.board.read().map(|b| b.report.is_some()).unwrap_or(false);
    if app.follower.is_caught_up() && evaluated {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: __consumer_offsets is still being read\n")
    }
}

async fn api(State(app): State<App>) -> impl IntoResponse {
    let body = app.board.read().ok().and_then(|b| b.report.as_ref().and_then(|r| serde_json::to_string(r).ok()));
    match body {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no evaluation yet\n").into_response(),
    }
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The Prometheus text for one board (the lag series; the process registry is appended).
pub fn render_metrics(board: &Board) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP doudi_consumergroup_lag_messages Messages not yet consumed, per group and topic.");
    let _ = writeln!(out, "# TYPE doudi_consumergroup_lag_messages gauge");
    if let Some(r) = &board.report {
        for g in &r.groups {
            for t in &g.topics {
                let _ = writeln!(
                    out,
                    "doudi_consumergroup_lag_messages{{group=\"{}\",topic=\"{}\"}} {}",
                    label(&g.group),
                    label(&t.topic),
                    t.lag
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP doudi_consumergroup_lag_seconds Age of the oldest record not yet consumed, per group and topic.");
    let _ = writeln!(out, "# TYPE doudi_consumergroup_lag_seconds gauge");
    if let Some(r) = &board.report {
        for g in &r.groups {
            for t in &g.topics {
                if let Some(ms) = t.time_lag_ms {
                    let _ = writeln!(
                        out,
                        "doudi_consumergroup_lag_seconds{{group=\"{}\",topic=\"{}\"}} {}",
                        label(&g.group),
                        label(&t.topic),
                        seconds(ms)
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP doudi_consumergroup_status Group status: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP, 5 ERR.");
    let _ = writeln!(out, "# TYPE doudi_consumergroup_status gauge");
    if let Some(r) = &board.report {
        for g in &r.groups {
            let _ = writeln!(
                out,
                "doudi_consumergroup_status{{group=\"{}\",status=\"{}\"}} {}",
                label(&g.group),
                g.status.as_str(),
                g.status.code()
            );
        }
        let _ = writeln!(out, "# HELP doudi_lag_evaluated_timestamp_seconds When the lag was last evaluated.");
        let _ = writeln!(out, "# TYPE doudi_lag_evaluated_timestamp_seconds gauge");
        let _ = writeln!(out, "doudi_lag_evaluated_timestamp_seconds {}", seconds(r.evaluated_at_ms));
    }
    let _ = writeln!(out, "# HELP doudi_dlq_messages Dead letters held in each dead-letter topic.");
    let _ = writeln!(out, "# TYPE doudi_dlq_messages gauge");
    for (topic, n) in &board.dead_letters {
        let _ = writeln!(out, "doudi_dlq_messages{{topic=\"{}\"}} {n}", label(topic));
    }
    out
}

async fn metrics_text(State(app): State<App>) -> impl IntoResponse {
    let mut text = app.board.read().map(|b| render_metrics(&b)).unwrap_or_default();
    text.push_str(&app.metrics.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn colour(status: Status) -> &'static str {
    match status {
        Status::Ok => "#1a7f37",
        Status::Warn => "#9a6700",
        Status::Rewind => "#8250df",
        Status::Stall | Status::Stop | Status::Err => "#cf222e",
    }
}

/// The status page for one board.
pub fn render_page(board: &Board, refresh_secs: u64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh_secs}\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>doudi 兜底 — 运行状态 status</title>\
<style>body{{font-family:sans-serif;margin:1.5em;color:#1f2328}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
th,td{{border:1px solid #d0d7de;padding:.3em .7em;text-align:left}}td.n{{text-align:right}}\
.badge{{color:#fff;padding:.1em .5em;border-radius:.3em;font-weight:bold}}.note{{color:#59636e}}</style></head><body>\
<h1>doudi 兜底 — 运行状态 / status</h1>"
    );
    if let Some(problem) = &board.problem {
        let _ = write!(h, "<p class=\"badge\" style=\"background:#cf222e\">{}</p>", escape(problem));
    }
    match &board.report {
        None => h.push_str("<p>正在读取消费位点 / reading consumer offsets…</p>"),
        Some(r) => {
            let when = chrono::DateTime::from_timestamp_millis(r.evaluated_at_ms).map(|t| t.to_rfc3339()).unwrap_or_default();
            let _ = write!(h, "<p class=\"note\">evaluated at {}</p>", escape(&when));
            h.push_str("<h2>消费组 / Consumer groups</h2><table><tr><th>group</th><th>status</th><th>state</th><th>lag (messages)</th><th>time lag</th></tr>");
            for g in &r.groups {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><span class=\"badge\" style=\"background:{}\">{}</span></td><td>{} ({})</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    escape(&g.group),
                    colour(g.status),
                    g.status.as_str(),
                    escape(&g.state),
                    g.members,
                    g.lag,
                    human_ms(g.time_lag_ms)
                );
            }
            h.push_str("</table><h2>主题积压 / Lag per topic</h2><table><tr><th>group</th><th>topic</th><th>status</th><th>lag (messages)</th><th>time lag</th></tr>");
            for g in &r.groups {
                for t in &g.topics {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td><span class=\"badge\" style=\"background:{}\">{}</span></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                        escape(&g.group),
                        escape(&t.topic),
                        colour(t.status),
                        t.status.as_str(),
                        t.lag,
                        human_ms(t.time_lag_ms)
                    );
                }
            }
            h.push_str("</table>");
        }
    }
    h.push_str("<h2>死信 / Dead letters</h2><table><tr><th>topic</th><th>dead letters</th></tr>");
    for (topic, n) in &board.dead_letters {
        let _ = write!(h, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", escape(topic));
    }
    h.push_str("</table><p class=\"note\">Inspect with <code>doudi dlq list --topic TOPIC</code> (masked).</p>");
    h.push_str("<h2>接入任务 / Connectors' last successful run</h2>");
    match &board.connectors {
        Ok(runs) => {
            h.push_str("<table><tr><th>component</th><th>name</th><th>finished</th></tr>");
            for run in runs {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&run.component),
                    escape(&run.name),
                    escape(run.finished_at.as_deref().unwrap_or("-"))
                );
            }
            h.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(h, "<p class=\"note\">unknown: {}</p>", escape(e));
        }
    }
    h.push_str("</body></html>");
    h
}

async fn page(State(app): State<App>) -> impl IntoResponse {
    let html = app.board.read().map(|b| render_page(&b, app.refresh_secs)).unwrap_or_default();
    Html(html)
}
