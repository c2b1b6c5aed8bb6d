//! One lifecycle for every long-running process: a stop on SIGTERM or SIGINT, and readiness checks
//! of what the process depends on.
//!
//! Guarantees: [`Shutdown::on_signals`] resolves every clone of it once SIGTERM (what Kubernetes
//! sends) or SIGINT arrives; a daemon given one finishes or abandons its current unit of work
//! without loss and returns, and the process exits with status 0. [`readiness`] builds the
//! `/readyz` checks of the database and the broker: each check answers within a few seconds, and
//! sets `doudi_dependency_up` for the dependency it checks. No check reports personal data.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::KafkaSettings;
use crate::db::Database;
use crate::http::ReadinessCheck;

/// A stop request, shared by every task of a process.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Stops on SIGTERM or SIGINT. Must be called inside the Tokio runtime.
    pub fn on_signals() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            signal().await;
            tracing::info!("Stopping: a signal asked the process to stop.");
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// A stop that `trigger` sends (tests, and processes stopped by their caller).
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Never stops.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // The sender lives as long as the process, so `requested` never ends.
        std::mem::forget(tx);
        Shutdown(rx)
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested (at once when it already was).
    pub async fn requested(mut self) {
        // An error means the sender is gone without a stop: then a stop never comes.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The dependencies a process has, for its readiness checks.
#[derive(Default)]
pub struct Dependencies<'a> {
    pub database: Option<&'a Database>,
    pub kafka: Option<&'a KafkaSettings>,
}

/// The `/readyz` checks of `dependencies`: `database` runs `SELECT 1`; `broker` asks a broker for
/// the cluster's metadata.
pub fn readiness(dependencies: Dependencies<'_>) -> Vec<(String, ReadinessCheck)> {
    let mut checks: Vec<(String, ReadinessCheck)> = Vec::new();
    if let Some(db) = dependencies.database {
        let db = db.clone();
        checks.push((
            "database".into(),
            Arc::new(move || {
                let db = db.clone();
                Box::pin(async move {
                    let result = match tokio::time::timeout(CHECK_TIMEOUT, db.ping()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err("the database does not answer".to_string()),
                        Err(_) => Err(format!("the database did not answer within {CHECK_TIMEOUT:?}")),
                    };
                    dependency_up("database", result.is_ok());
                    result
                })
            }),
        ));
    }
    if let Some(kafka) = dependencies.kafka {
        let client: Option<Arc<rdkafka::consumer::BaseConsumer>> = crate::kafka::client_config(kafka).create().ok().map(Arc::new);
        checks.push((
            "broker".into(),
            Arc::new(move || {
                let client = client.clone();
                Box::pin(async move {
                    let result = match client {
                        None => Err("the Kafka client could not be created".to_string()),
                        Some(client) => {
                            let metadata = tokio::task::spawn_blocking(move || {
                                use rdkafka::consumer::Consumer as _;
                                client.fetch_metadata(None, CHECK_TIMEOUT).map(|m| m.brokers().len())
                            })
                            .await;
                            match metadata {
                                Ok(Ok(n)) if n > 0 => Ok(()),
                                Ok(Ok(_)) => Err("the cluster has no brokers".to_string()),
                                Ok(Err(e)) => Err(format!("no broker answered: {e}")),
                                Err(_) => Err("the broker check was interrupted".to_string()),
                            }
                        }
                    };
                    dependency_up("broker", result.is_ok());
                    result
                })
            }),
        ));
    }
    checks
}

fn dependency_up(dependency: &'static str, up: bool) {
    metrics::gauge!("doudi_dependency_up", "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

/// Describes this module's metrics.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "doudi_dependency_up",
        "Whether the dependency (database, broker) answered the last readiness check: 1 yes, 0 no."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_requested_stop_reaches_every_clone() {
        let (tx, stop) = Shutdown::manual();
        let other = stop.clone();
        assert!(!other.is_requested());
        let _ = tx.send(true);
        tokio::time::timeout(Duration::from_secs(1), stop.requested()).await.expect("the stop arrives");
        assert!(other.is_requested());
    }
}
