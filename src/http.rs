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

/// Binds `addr` and serves `router` over plain HTTP until `shutdown` resolves. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    serve_maybe_tls(addr, router, None, shutdown).await
}

/// As [`serve`], over TLS when `tls` is given (from [`server_tls`]).
pub async fn serve_maybe_tls(
    addr: SocketAddr,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = match tls {
        None => tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await }),
        Some(config) => {
            let listener = TlsListener::new(listener, config);
            tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await })
        }
    };
    Ok((bound, task))
}

/// The TLS configuration of a data endpoint (HTTP push, the acknowledgement callback) from a PEM
/// certificate chain and its PEM private key, as `http.tls_cert` and `http.tls_key` name them. An
/// unreadable or unusable file is refused with the field it comes from and why (the path, never the
/// key's content).
pub fn server_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| ("http.tls_cert", format!("cannot read a PEM certificate from {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(("http.tls_cert", format!("{} holds no certificate", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("http.tls_key", format!("cannot read a PEM private key from {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("http.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| ("http.tls_key", format!("the key does not fit the certificate in {}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// The longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener that hands axum only connections whose TLS handshake completed. Handshakes run on
/// tasks of their own, so a slow or silent client never holds up the next one; one that fails (a
/// plain-HTTP client, an unknown CA on its side, a timeout) is counted in
/// `doudi_http_tls_handshake_failures_total` and logged at debug with its reason only.
/// axum's `Listener` is the extension point it offers for this; `axum-server` would replace
/// `axum::serve` and its graceful shutdown for the same few lines.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, accepted) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little rather than spin.
                            tracing::warn!("accepting a connection failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => handshake_failed(&e.to_string()),
                        Err(_) => handshake_failed("timed out"),
                    }
                });
            }
        });
        Self { accepted, local, acceptor: task }
    }
}

fn handshake_failed(reason: &str) {
    metrics::counter!("doudi_http_tls_handshake_failures_total").increment(1);
    tracing::debug!(reason, "a TLS handshake failed");
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(pair) => pair,
            // The acceptor ended: nothing more will come, and axum's shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
