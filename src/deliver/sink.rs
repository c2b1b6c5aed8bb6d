//! Sinks that take one entitlement event at a time: an agency's HTTP endpoint and a table it reads.
//!
//! Guarantees: [`Sink::send`] says exactly one of three things about an event — the agency
//! accepted it, it may be retried (a 5xx, 408, 425, 429, a timeout, a connection or database
//! error), or the agency rejected it for good (any other 4xx, with the status and the start of the
//! response). The HTTP sink sends the event's `ce_id` as `Idempotency-Key`, so a retry or a
//! redelivery after a crash is recognised by the agency. The table sink upserts by (`kind`,
//! `id_number`): the row always holds the latest event about that entitlement.

use std::time::Duration;

use serde_json::Value;
use sqlx::AnyPool;

use super::config::{Column, column_value};

/// One event to deliver.
#[derive(Clone, Debug)]
pub struct Event {
    pub ce_id: String,
    pub ce_type: String,
    pub payload: Value,
    pub raw: Vec<u8>,
}

/// What the sink made of an event.
#[derive(Debug)]
pub enum SendError {
    /// Try again later (the reason has no personal data).
    Retry(String),
    /// The agency refused it: dead letter, state `failed`.
    Rejected { status: Option<u16>, reason: String, response: String },
}

/// The longest part of a response kept with a dead letter. An agency's reply may quote the event it
/// refuses: ID numbers (and longer numbers that hold one) are masked, and so is the event's own
/// name wherever the reply repeats it ([`reply_for_dead_letter`]).
const RESPONSE_KEPT: usize = 512;

/// The part of an agency's reply kept with a dead letter: at most [`RESPONSE_KEPT`] bytes, ID
/// numbers masked, and the refused event's person's name shown by its first character only.
pub fn reply_for_dead_letter(body: &[u8], event: &Value) -> String {
    // A JSON reply is read first, so that a name written as `\uXXXX` escapes is seen as itself.
    let whole = match serde_json::from_slice::<Value>(body) {
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut kept = String::new();
    for c in whole.chars() {
        if kept.len() + c.len_utf8() > RESPONSE_KEPT {
            break;
        }
        kept.push(c);
    }
    let mut text = crate::tap::mask_text(&kept);
    if let Some(name) = event.get("name").and_then(Value::as_str).filter(|n| n.chars().count() > 1) {
        text = text.replace(name, &crate::tap::mask_name(name));
    }
    text
}

pub enum Sink {
    Http(HttpSink),
    Table(TableSink),
}

impl Sink {
    pub async fn send(&self, event: &Event) -> Result<(), SendError> {
        match self {
            Sink::Http(s) => s.send(event).await,
            Sink::Table(s) => s.send(event).await,
        }
    }

    /// The label stored in `deliveries.sink`.
    pub fn label(&self) -> &'static str {
        match self {
            Sink::Http(_) => "http",
            Sink::Table(_) => "table",
        }
    }
}

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<String>,
}

/// rustls needs one process-wide crypto provider; ring is the one the rest of doudi uses.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpSink {
    pub fn new(url: &str, token: Option<String>, ca_file: Option<&std::path::Path>, timeout: Duration) -> Result<Self, String> {
        install_crypto_provider();
        let url = reqwest::Url::parse(url).map_err(|e| format!("sink.url: {e}"))?;
        let mut builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).user_agent("doudi-deliver");
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("sink.ca_file: cannot read {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("sink.ca_file: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("sink: cannot build the HTTP client: {e}"))?;
        Ok(HttpSink { client, url, token })
    }

    async fn send(&self, event: &Event) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("Idempotency-Key", &event.ce_id)
            .header("Content-Type", "application/json")
            .header("ce-id", &event.ce_id)
            .header("ce-type", &event.ce_type)
            .header("ce-specversion", "1.0")
            .body(event.raw.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(SendError::Retry("the request timed out".into())),
            Err(e) if e.is_connect() => return Err(SendError::Retry("cannot connect to the agency's endpoint".into())),
            Err(e) => return Err(SendError::Retry(format!("the request failed: {}", without_url(&e)))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        if status.is_server_error() || matches!(code, 408 | 425 | 429) {
            return Err(SendError::Retry(format!("the agency answered HTTP {code}")));
        }
        let body = response.bytes().await.unwrap_or_default();
        let response = reply_for_dead_letter(&body, &event.payload);
        Err(SendError::Rejected { status: Some(code), reason: format!("the agency rejected the event with HTTP {code}"), response })
    }
}

/// A reqwest error's text without the URL (which may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<agency endpoint>");
    }
    text
}

pub struct TableSink {
    pool: AnyPool,
    table: String,
    columns: Vec<Column>,
}

impl TableSink {
    /// Connects and creates the table if it is missing.
    pub async fn new(pool: AnyPool, table: &str, columns: &[Column]) -> Result<Self, sqlx::Error> {
        let key: Vec<&str> =
            ["kind", "id_number"].iter().filter_map(|f| columns.iter().find(|c| c.field == *f).map(|c| c.name.as_str())).collect();
        let defs: Vec<String> = columns.iter().map(|c| format!("{} TEXT", c.name)).collect();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} ({}, doudi_event_id TEXT NOT NULL, doudi_delivered_at TEXT NOT NULL, PRIMARY KEY ({}))",
            defs.join(", "),
            key.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
        Ok(TableSink { pool, table: table.to_string(), columns: columns.to_vec() })
    }

    async fn send(&self, event: &Event) -> Result<(), SendError> {
        let key: Vec<&str> =
            ["kind", "id_number"].iter().filter_map(|f| self.columns.iter().find(|c| c.field == *f).map(|c| c.name.as_str())).collect();
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).chain(["doudi_event_id", "doudi_delivered_at"]).collect();
        let updates: Vec<String> = names.iter().filter(|n| !key.contains(n)).map(|n| format!("{n} = excluded.{n}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
            self.table,
            names.join(", "),
            (1..=names.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", "),
            key.join(", "),
            updates.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in &self.columns {
            q = q.bind(column_value(c, &event.payload));
        }
        q = q.bind(event.ce_id.clone()).bind(crate::db::now_rfc3339());
        q.execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| SendError::Retry(format!("writing the agency's table failed: {}", sql_error(&e))))
    }
}

/// A database error without the values a message may quote: the SQLSTATE for the server's errors.
fn sql_error(e: &sqlx::Error) -> String {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) => format!("SQLSTATE {code}"),
        None => match e {
            sqlx::Error::PoolTimedOut => "no database connection became free in time".into(),
            sqlx::Error::Io(io) => format!("I/O: {io}"),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod reply_tests {
    use super::*;

    #[test]
    fn a_reply_that_quotes_the_person_keeps_neither_name_nor_id_number() {
        let event = serde_json::json!({"name": "王小明", "id_number": "220102195003070015"});
        let reply = r#"{"error": "\u738b\u5c0f\u660e not insured", "detail": "王小明 22010219500307001542 220102195003070015"}"#;
        let kept = reply_for_dead_letter(reply.as_bytes(), &event);
        assert!(
            !kept.contains("王小明") && !kept.contains("738b") && !kept.contains("220102195003070015") && !kept.contains("19500307"),
            "{kept}"
        );
        assert!(kept.contains("王**") && kept.contains("not insured"), "{kept}");
    }
}
