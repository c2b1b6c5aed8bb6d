//! Agencies' acknowledgements: "we applied this entitlement" (or "we could not"), by the ack topic
//! or an HTTP callback, and the delivery gauges operators alert on.
//!
//! Guarantees: an acknowledgement is checked against its schema (`exchange.entitlement.ack.v1.json`)
//! before it is used. Its agency is who sent it, never the payload's `agency` field: the agency's
//! own topic `exchange.ack.<agency>.v1`, which only that agency's principal may write (`doudi acl
//! plan`), or the agency whose bearer token the callback received. An acknowledgement whose field
//! names another agency is refused (`outcome="refused"`). It moves only that agency's event to
//! `applied` or `failed`, and an `applied` event stays applied, so a repeated acknowledgement changes
//! nothing. The ack topics are read with `read_committed` and their offsets are committed after the
//! state is written. The callback compares tokens in constant time, over their SHA-256 digests so
//! that not even their length shows; it answers 401 without a valid token, 403 for an
//! acknowledgement of another agency, 400 naming the field of an invalid body, 404 for an unknown
//! event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use serde_json::{Value, json};
use sqlx::Row;

use super::DeliverError;
use crate::config::KafkaSettings;
use crate::db::{Database, now_rfc3339};
use crate::schema::Registry;
use crate::topics::AGENCIES;

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Applied,
    Failed,
    /// Already in that state: nothing changed.
    Repeated,
    /// No such event for that agency.
    Unknown,
    /// It names another agency than the one that sent it: ignored.
    Refused,
}

impl AckOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AckOutcome::Applied => "applied",
            AckOutcome::Failed => "failed",
            AckOutcome::Repeated => "repeated",
            AckOutcome::Unknown => "unknown",
            AckOutcome::Refused => "refused",
        }
    }
}

/// An acknowledgement that failed its schema: the JSON pointer and message (never the value).
#[derive(Debug)]
pub struct InvalidAck(pub String);

/// Checks an acknowledgement against its schema.
pub fn check(registry: &Registry, ack: &Value) -> Result<(), InvalidAck> {
    let schema = registry
        .schemas
        .get(crate::topics::ACK_SCHEMA)
        .ok_or_else(|| InvalidAck(format!("the schema {} is not loaded", crate::topics::ACK_SCHEMA)))?;
    match schema.violations(ack).first() {
        Some(v) => Err(InvalidAck(format!("{} at `{}`", v.message, v.pointer))),
        None => Ok(()),
    }
}

/// Applies one checked acknowledgement that `agency` sent.
pub async fn record(db: &Database, agency: &str, ack: &Value) -> Result<AckOutcome, DeliverError> {
    let text = |k: &str| ack.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (event_id, status) = (text("event_id"), text("status"));
    let agency = agency.to_string();
    if text("agency") != agency {
        metrics::counter!("doudi_delivery_acks_total", "agency" => agency, "outcome" => AckOutcome::Refused.as_str()).increment(1);
        return Ok(AckOutcome::Refused);
    }
    let at = ack.get("applied_at").and_then(Value::as_str).map(str::to_string).unwrap_or_else(now_rfc3339);
    let now = now_rfc3339();
    let changed = if status == "applied" {
        sqlx::query(
            "UPDATE deliveries SET state = 'applied', applied_at = $1, last_error = NULL, updated_at = $2 \
             WHERE ce_id = $3 AND agency = $4 AND state <> 'applied'",
        )
        .bind(&at)
        .bind(&now)
        .bind(&event_id)
        .bind(&agency)
        .execute(db.pool())
        .await?
        .rows_affected()
    } else {
        let reason = format!("the agency could not apply it: {}", text("reason"));
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', last_error = $1, updated_at = $2 \
             WHERE ce_id = $3 AND agency = $4 AND state IN ('pending', 'delivered')",
        )
        .bind(reason.chars().take(500).collect::<String>())
        .bind(&now)
        .bind(&event_id)
        .bind(&agency)
        .execute(db.pool())
        .await?
        .rows_affected()
    };
    let outcome = if changed > 0 {
        if status == "applied" { AckOutcome::Applied } else { AckOutcome::Failed }
    } else {
        let known = sqlx::query("SELECT 1 AS one FROM deliveries WHERE ce_id = $1 AND agency = $2")
            .bind(&event_id)
            .bind(&agency)
            .fetch_optional(db.pool())
            .await?
            .is_some();
        if known { AckOutcome::Repeated } else { AckOutcome::Unknown }
    };
    metrics::counter!("doudi_delivery_acks_total", "agency" => agency, "outcome" => outcome.as_str()).increment(1);
    Ok(outcome)
}

/// Consumes the agencies' ack topics (`topics`: each actual topic name with its agency) until `stop`
/// (or, with `until_idle`, until nothing arrives for `idle_after` after every partition was read).
/// Returns how many acknowledgements were read.
pub async fn consume(
    db: &Database,
    kafka: &KafkaSettings,
    registry: &Registry,
    topics: &BTreeMap<String, &'static str>,
    group: &str,
    until_idle: Option<Duration>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<u64, DeliverError> {
    let consumer = crate::kafka::committed_consumer(kafka, group)?;
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let mut read = 0;
    let mut last = std::time::Instant::now();
    tokio::pin!(stop);
    loop {
        let m = tokio::select! {
            _ = &mut stop => break,
            m = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => m,
        };
        let m = match m {
            Err(_) => {
                if let Some(idle) = until_idle
                    && last.elapsed() >= idle
                    && consumer.assignment().map(|a| a.count() > 0).unwrap_or(false)
                {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!("Consuming acknowledgements failed, retrying: {e}");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        last = std::time::Instant::now();
        read += 1;
        let topic = m.topic();
        let Some(agency) = topics.get(topic) else {
            consumer.commit_message(&m, CommitMode::Async)?;
            continue;
        };
        let ack: Option<Value> = m.payload().and_then(|p| serde_json::from_slice(p).ok());
        match ack.map(|a| check(registry, &a).map(|()| a)) {
            Some(Ok(ack)) => {
                let outcome = record(db, agency, &ack).await?;
                if outcome == AckOutcome::Refused {
                    tracing::warn!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "An acknowledgement on {agency}'s topic names another agency; it is refused."
                    );
                } else if outcome == AckOutcome::Unknown {
                    tracing::warn!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "An acknowledgement names no event of its agency; it is ignored."
                    );
                }
            }
            Some(Err(InvalidAck(reason))) => {
                tracing::warn!(
                    topic,
                    partition = m.partition(),
                    offset = m.offset(),
                    "An acknowledgement is invalid and is ignored: {reason}"
                );
                metrics::counter!("doudi_delivery_acks_total", "agency" => "", "outcome" => "invalid").increment(1);
            }
            None => {
                tracing::warn!(topic, partition = m.partition(), offset = m.offset(), "An acknowledgement is not JSON and is ignored.");
                metrics::counter!("doudi_delivery_acks_total", "agency" => "", "outcome" => "invalid").increment(1);
            }
        }
        consumer.commit_message(&m, CommitMode::Async)?;
    }
    Ok(read)
}

/// What the callback needs.
#[derive(Clone)]
pub struct CallbackState {
    pub db: Database,
    pub registry: Arc<Registry>,
    /// Agency → its bearer token.
    pub tokens: Arc<BTreeMap<String, String>>,
}

/// The callback's tokens from `AGENCY=ENV_VAR` specifications (`--token`): each agency's bearer
/// token is read from the variable named, and must be at least 16 characters.
pub fn tokens_from_env(specs: &[String]) -> Result<BTreeMap<String, String>, DeliverError> {
    let mut tokens = BTreeMap::new();
    for spec in specs {
        let Some((agency, var)) = spec.split_once('=') else {
            return Err(DeliverError::Config(format!("--token: `{spec}` is not AGENCY=ENV_VAR")));
        };
        if !crate::topics::is_agency(agency) {
            return Err(DeliverError::Config(format!("--token: `{agency}` is not an agency ({})", AGENCIES.join(", "))));
        }
        match std::env::var(var) {
            Ok(token) if token.len() >= 16 => {
                tokens.insert(agency.to_string(), token);
            }
            _ => {
                return Err(DeliverError::Config(format!(
                    "--token: the environment variable {var} must hold a token of at least 16 characters"
                )));
            }
        }
    }
    Ok(tokens)
}

/// The agency whose token the request carries. Every token is compared, each in constant time over
/// the SHA-256 digests, so neither the time taken nor an early exit tells a caller how close a
/// guess was, which agency matched, or how long a token is.
fn agency_of_token<'a>(headers: &HeaderMap, tokens: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let mut found = None;
    for (agency, token) in tokens {
        if crate::http::secret_matches(given, token) {
            found = Some(agency.as_str());
        }
    }
    found
}

/// `POST /v1/acks`: one acknowledgement, or an array of them, of one agency.
pub async fn callback(State(state): State<CallbackState>, headers: HeaderMap, body: axum::body::Bytes) -> impl IntoResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "the body is not JSON"})));
    };
    let acks: Vec<Value> = match body {
        Value::Array(items) => items,
        other => vec![other],
    };
    let Some(agency) = agency_of_token(&headers, &state.tokens) else {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "a valid bearer token of an agency is required"})));
    };
    for (i, ack) in acks.iter().enumerate() {
        if let Err(InvalidAck(reason)) = check(&state.registry, ack) {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": format!("acknowledgement {i}: {reason}")})));
        }
        if ack.get("agency").and_then(Value::as_str) != Some(agency) {
            metrics::counter!("doudi_delivery_acks_total", "agency" => agency.to_string(), "outcome" => AckOutcome::Refused.as_str())
                .increment(1);
            return (
                StatusCode::FORBIDDEN,
                axum::Json(
                    json!({"error": format!("acknowledgement {i} names another agency: an agency acknowledges only its own entitlements")}),
                ),
            );
        }
    }
    let mut outcomes = Vec::with_capacity(acks.len());
    for ack in &acks {
        match record(&state.db, agency, ack).await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                tracing::warn!("Recording an acknowledgement failed: {e}");
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "the acknowledgement could not be recorded; retry"})));
            }
        }
    }
    if acks.len() == 1 && outcomes.first() == Some(&AckOutcome::Unknown) {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such event for this agency"})));
    }
    (StatusCode::OK, axum::Json(json!({"outcomes": outcomes})))
}

pub fn router(state: CallbackState) -> axum::Router {
    axum::Router::new().route("/v1/acks", axum::routing::post(callback)).with_state(state)
}

/// Refreshes the delivery gauges every `interval` until `shutdown`; a failure is logged and tried
/// again at the next interval.
pub async fn refresh_gauges_every(db: Database, interval: Duration, shutdown: crate::lifecycle::Shutdown) {
    let mut stop = std::pin::pin!(shutdown.requested());
    loop {
        if let Err(e) = refresh_gauges(&db).await {
            tracing::warn!("Refreshing the delivery gauges failed: {e}");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Sets the delivery gauges: per agency, the age of the oldest event not yet accepted
/// (`pending`), of the oldest not yet applied (`pending` or `delivered`), and the count of events in
/// each open state (`pending`, `delivered`, `failed`).
///
/// One statement over the open deliveries only, through their partial index (`deliveries_open`):
/// applied deliveries, nearly all of a table that grows by every entitlement change, are never
/// read, so a refresh costs what is open, not what was ever delivered. How many were applied is
/// `doudi_delivery_acks_total{outcome="applied"}`.
pub async fn refresh_gauges(db: &Database) -> Result<(), DeliverError> {
    let now = chrono::Utc::now();
    let age = |at: Option<&str>| -> f64 {
        at.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                Duration::from_millis(u64::try_from((now - t.with_timezone(&chrono::Utc)).num_milliseconds()).unwrap_or(0)).as_secs_f64()
            })
            .unwrap_or(0.0)
    };
    // Per agency and open state: how many, and since when.
    let mut open: BTreeMap<(String, String), (i64, Option<String>)> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT agency, state, COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries \
         WHERE state IN ('pending', 'delivered', 'failed') GROUP BY agency, state",
    )
    .fetch_all(db.pool())
    .await?
    {
        open.insert((r.try_get("agency")?, r.try_get("state")?), (r.try_get("n")?, r.try_get("oldest")?));
    }
    for agency in AGENCIES {
        let of = |state: &str| open.get(&(agency.to_string(), state.to_string()));
        let oldest = |state: &str| of(state).and_then(|(_, at)| at.as_deref());
        // RFC 3339 times in UTC compare as text.
        let unapplied = [oldest("pending"), oldest("delivered")].into_iter().flatten().min();
        metrics::gauge!("doudi_delivery_oldest_pending_seconds", "agency" => agency).set(age(oldest("pending")));
        metrics::gauge!("doudi_delivery_oldest_unapplied_seconds", "agency" => agency).set(age(unapplied));
        for state in ["pending", "delivered", "failed"] {
            let n = of(state).map_or(0, |(n, _)| *n);
            metrics::gauge!("doudi_deliveries", "agency" => agency, "state" => state).set(n as f64);
        }
    }
    Ok(())
}
