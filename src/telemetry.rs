//! Logging and metrics set-up, shared by every subcommand.
//!
//! Guarantees: logs go to stderr (stdout is reserved for command output such as JSON summaries), in
//! the configured format; metrics are recorded into one Prometheus registry whose rendering backs
//! `/metrics`. Metric names follow `doudi_<component>_<noun>_<unit>[_total]` (the project's style rule 5).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The buckets of every histogram, in seconds: from a millisecond to five minutes.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Every component's metric descriptions: each `/metrics` carries a HELP line for every metric.
fn describe_metrics() {
    crate::connect::describe_metrics();
    crate::matcher::describe_metrics();
    crate::deliver::describe_metrics();
    crate::lifecycle::describe_metrics();
    metrics::describe_counter!(
        "doudi_http_tls_handshake_failures_total",
        "TLS handshakes on a data endpoint (HTTP push, acknowledgement callback) that failed or timed out."
    );
}

/// Installs the global tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.with_target(false).try_init(),
    };
}

/// Installs the global metrics recorder (once) and returns the handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            // Durations are histograms (summable across replicas), never summaries.
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(DURATION_BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); the handle still renders ours.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_metrics();
            }
            handle
        })
        .clone()
}
