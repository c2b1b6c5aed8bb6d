//! HTTP push: departments POST records to `/v1/records` (JSON object, JSON array or JSON Lines).
//!
//! Guarantees: a request needs the department's bearer token and an `Idempotency-Key` header;
//! the records of one request commit in one Kafka transaction together with that key, so a retried
//! request is recognised and produces nothing, and the same key with another body is refused (409). Bad records are dead letters with their line number;
//! the response says how many were produced and dead-lettered, never their content.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use super::daemon::RunLog;
use super::mapping::{ErrorCode, Fields};
use super::run::{ConnectError, Connector};
use super::source::{Item, RawRecord, ReadFailure, parse_json_line};

struct Push {
    connector: Mutex<Connector>,
    token_hash: [u8; 32],
    runs: Option<RunLog>,
}

/// Splits a body into items: a JSON array or object, or JSON Lines.
pub fn items_from_body(body: &[u8]) -> Vec<Item> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &body[i..]).unwrap_or(&[]);
    if trimmed.first() == Some(&b'[') {
        return match serde_json::from_slice::<Vec<Value>>(trimmed) {
            Ok(values) => values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let row = i as u64 + 1;
                    let original = serde_json::to_vec(&v).unwrap_or_default();
                    match v {
                        Value::Object(map) => Item::Record(RawRecord { row, sheet: None, fields: Fields::Object(map), original }),
                        _ => Item::Failure(ReadFailure {
                            row,
                            sheet: None,
                            code: ErrorCode::Parse,
                            column: None,
                            reason: format!("第{row}项不是 JSON 对象"),
                            original,
                        }),
                    }
                })
                .collect(),
            Err(e) => vec![Item::Failure(ReadFailure {
                row: 1,
                sheet: None,
                code: ErrorCode::Parse,
                column: None,
                reason: format!("请求体不是有效的 JSON 数组（第{}列附近）", e.column()),
                original: body.to_vec(),
            })],
        };
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            let row = i as u64 + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match parse_json_line(line, row) {
                Ok(fields) => Item::Record(RawRecord { row, sheet: None, fields, original: line.to_vec() }),
                Err((code, reason)) => Item::Failure(ReadFailure { row, sheet: None, code, column: None, reason, original: line.to_vec() }),
            }
        })
        .collect()
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

async fn receive(State(push): State<Arc<Push>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if token.is_empty() || !bool::from(presented.ct_eq(&push.token_hash)) {
        return problem(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty() && k.len() <= 128) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header (at most 128 characters) is required, so that a retried request is not applied twice",
        );
    };
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return problem(StatusCode::BAD_REQUEST, "the Idempotency-Key may use letters, digits and - _ . : only");
    }
    let items = items_from_body(&body);
    if items.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "the body holds no records");
    }
    let source = format!("http:{key}");
    let content = hex::encode(Sha256::digest(&body));
    let mut connector = push.connector.lock().await;
    let feed = connector.config.connector.name.clone();
    match connector.process_items(&source, "http", items, None, Some(&content)).await {
        Ok(summary) => {
            let json = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(runs) = &push.runs {
                runs.record("ok", &json).await;
            }
            (StatusCode::OK, axum::Json(json)).into_response()
        }
        Err(ConnectError::Conflict(_)) => problem(
            StatusCode::CONFLICT,
            "this Idempotency-Key was already used for a request with another body; send new records under a new key",
        ),
        Err(e @ ConnectError::Kafka(_)) | Err(e @ ConnectError::Transaction(_)) => {
            tracing::error!(connector = %feed, error = %e, "a pushed request could not be committed; the department should retry it");
            problem(StatusCode::SERVICE_UNAVAILABLE, "the exchange could not store the records; retry with the same Idempotency-Key")
        }
        Err(e) => {
            tracing::error!(connector = %feed, error = %e, "a pushed request failed");
            problem(StatusCode::INTERNAL_SERVER_ERROR, "the request could not be processed")
        }
    }
}

/// The push router for one connector.
pub fn router(connector: Connector, token: &str, runs: Option<RunLog>, max_body_bytes: usize) -> Router {
    let state = Arc::new(Push { connector: Mutex::new(connector), token_hash: Sha256::digest(token.as_bytes()).into(), runs });
    Router::new().route("/v1/records", post(receive)).layer(DefaultBodyLimit::max(max_body_bytes)).with_state(state)
}

/// Where and how HTTP push is served: the connector's `[transport]` and, for HTTPS, the
/// deployment's `http.tls_cert` / `http.tls_key`.
pub struct Endpoint<'a> {
    pub bind: &'a str,
    pub port: u16,
    pub token_env: &'a str,
    pub max_body_bytes: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves push until `shutdown`; a request in progress is answered first.
pub async fn serve(
    connector: Connector,
    runs: RunLog,
    endpoint: Endpoint<'_>,
    shutdown: crate::lifecycle::Shutdown,
) -> Result<(), ConnectError> {
    let Endpoint { bind, port, token_env, max_body_bytes, tls } = endpoint;
    let token = std::env::var(token_env).ok().filter(|t| t.len() >= 16).ok_or_else(|| {
        ConnectError::Config(format!(
            "transport.token_env: environment variable {token_env} must hold the department's bearer token (at least 16 characters)"
        ))
    })?;
    let feed = connector.config.connector.name.clone();
    let app = router(connector, &token, Some(runs), max_body_bytes);
    let addr: std::net::SocketAddr =
        format!("{bind}:{port}").parse().map_err(|e| ConnectError::Config(format!("transport.bind/port: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (bound, task) = crate::http::serve_maybe_tls(addr, app, tls, shutdown.requested())
        .await
        .map_err(|e| ConnectError::Io { path: addr.to_string(), message: e.to_string() })?;
    tracing::info!(connector = %feed, address = %bound, scheme, "serving HTTP push at /v1/records");
    task.await
        .map_err(|e| ConnectError::Io { path: bound.to_string(), message: e.to_string() })?
        .map_err(|e| ConnectError::Io { path: bound.to_string(), message: e.to_string() })
}
