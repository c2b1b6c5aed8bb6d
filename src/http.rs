//! The operational HTTP endpoint every long-running doudi process serves.
//!
//! `/healthz` answers 200 while the process runs; `/readyz` answers 200 only when every readiness
//! check passes (for example the database answers), else 503 with the failing check's name;
//! `/metrics` renders the Prometheus registry. Nothing here exposes personal data.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Whether a presented secret (a bearer token) equals the expected one, in constant time: the
/// SHA-256 digests are compared, so neither the time taken nor an early exit reveals how much of a
/// guess was right or how long the secret is. An empty secret never matches.
pub fn secret_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let expected_digest: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    !expected.is_empty() && bool::from(given.ct_eq(&expected_digest))
}

/// A named readiness check. It returns `Err(reason)` when the process should not get traffic.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    checks: Arc<Vec<(String, ReadinessCheck)>>,
}

/// The router, so that other components can add their own routes to it.
pub fn ops_router(metrics: PrometheusHandle, checks: Vec<(String, ReadinessCheck)>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Ops { metrics, checks: Arc::new(checks) })
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    for (name, check) in ops.checks.iter() {
        if let Err(reason) = check().await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {name}: {reason}\n"));
        }
    }
    (StatusCode::OK, "ready\n".to_string())
}

async fn render_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], ops.metrics.render())
}

/// Binds `addr` and serves `router` until `shutdown` resolves. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await });
    Ok((bound, task))
}
