//! The operational endpoint: /healthz, /readyz and /metrics over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let handle = doudi::telemetry::metrics_handle();
    metrics::counter!("doudi_test_records_in_total", "stage" => "test").increment(3);
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let check: doudi::http::ReadinessCheck = Arc::new(move || {
        let ok = flag.load(Ordering::SeqCst);
        Box::pin(async move { if ok { Ok(()) } else { Err("still starting".to_string()) } })
    });
    let router = doudi::http::ops_router(handle, vec![("database".into(), check)]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = doudi::http::serve("127.0.0.1:0".parse().unwrap(), router, async {
        let _ = rx.await;
    })
    .await
    .expect("bind");
    assert_eq!(common::http_get(&addr.to_string(), "/healthz").await.0, 200);
    let (status, body) = common::http_get(&addr.to_string(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("database") && body.contains("still starting"), "{body}");
    ready.store(true, Ordering::SeqCst);
    assert_eq!(common::http_get(&addr.to_string(), "/readyz").await.0, 200);
    let (status, body) = common::http_get(&addr.to_string(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("doudi_test_records_in_total{stage=\"test\"} 3"), "{body}");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
