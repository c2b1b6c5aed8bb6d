//! One lifecycle for every long-running process: a stop on SIGTERM or SIGINT, and readiness checks
//! of what the process depends on.
//!
//! Guarantees: [`Shutdown::on_signals`] resolves every clone of it once SIGTERM (what Kubernetes
//! sends) or SIGINT arrives; a daemon given one finishes or abandons its current unit of work
//! without loss and returns, and the process exits with status 0. [`persist`] waits out the
//! failures of the servers a daemon depends on, with capped exponential backoff and jitter, while
//! its [`Health`] says not ready; anything else (a configuration error) is returned at once.
//! [`readiness`] builds the `/readyz` checks of the work, the database and the broker: each check
//! answers within a few seconds, and sets `doudi_dependency_up` for the dependency it checks. No
//! check reports personal data.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{DatabaseSettings, KafkaSettings};
use crate::error::{Class, Failure};
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

/// Whether the process's own work is running, or waiting out a failure of a server it depends on.
/// Shared by the work and the `/readyz` check named `work`.
#[derive(Clone, Debug)]
pub struct Health {
    component: &'static str,
    waiting: Arc<std::sync::Mutex<Option<String>>>,
}

impl Health {
    pub fn new(component: &'static str) -> Self {
        metrics::gauge!("doudi_component_up", "component" => component).set(1.0);
        Health { component, waiting: Arc::new(std::sync::Mutex::new(None)) }
    }

    fn set(&self, waiting: Option<String>) {
        let up = waiting.is_none();
        if let Ok(mut w) = self.waiting.lock() {
            *w = waiting;
        }
        metrics::gauge!("doudi_component_up", "component" => self.component).set(if up { 1.0 } else { 0.0 });
    }

    /// The `/readyz` check: not ready while the work waits out a failure.
    pub fn check(&self) -> (String, ReadinessCheck) {
        let waiting = self.waiting.clone();
        (
            "work".to_string(),
            Arc::new(move || {
                let reason = waiting.lock().ok().and_then(|w| w.clone());
                Box::pin(async move { reason.map_or(Ok(()), Err) })
            }),
        )
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not an infrastructure failure
/// (returned at once: a configuration error stops the process), or a stop is requested (`Ok(None)`).
/// An infrastructure failure (a server restarting, a cut network, a refused connection) is logged,
/// shown on `/readyz` and in `doudi_component_up`, and tried again after a capped exponential
/// backoff with jitter: from 0.5 s to 30 s, for as long as it takes.
pub async fn persist<T, E, F, Fut>(health: &Health, shutdown: &Shutdown, mut attempt: F) -> Result<Option<T>, Failure>
where
    E: Into<Failure>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = backoff();
    loop {
        if shutdown.is_requested() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let running = attempt();
        tokio::pin!(running);
        // Long work (a daemon's loop) that has run a while without failing has recovered.
        let result = tokio::select! {
            result = &mut running => result,
            _ = tokio::time::sleep(RECOVERED_AFTER) => {
                health.set(None);
                running.await
            }
        };
        let error: Failure = match result {
            Ok(value) => {
                health.set(None);
                return Ok(Some(value));
            }
            Err(e) => e.into(),
        };
        if error.class != Class::Infrastructure {
            return Err(error);
        }
        if started.elapsed() > RESET_AFTER {
            // It ran well for a while before this failure: a new outage starts from the shortest wait.
            backoff = self::backoff();
        }
        let delay = backoff.next().unwrap_or(MAX_RETRY_DELAY);
        tracing::warn!(component = health.component, retry_in = ?delay, "A server doudi depends on failed; waiting it out: {error}");
        // `/readyz` says what is waited for, not the failure's text: the log names it.
        health.set(Some(format!("waiting for a server it depends on, retrying in {delay:?} (the log names the failure)")));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.clone().requested() => return Ok(None),
        }
    }
}

/// The shortest and the longest wait between two attempts.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// An attempt still running after this long has recovered: the work is ready again.
const RECOVERED_AFTER: Duration = Duration::from_secs(5);
/// An attempt that ran this long before failing starts the waits again from the shortest.
const RESET_AFTER: Duration = Duration::from_secs(60);

/// Capped exponential backoff with jitter, without a limit on the attempts.
fn backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_RETRY_DELAY)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The dependencies a process has, for its readiness checks.
#[derive(Default)]
pub struct Dependencies<'a> {
    pub database: Option<&'a DatabaseSettings>,
    pub kafka: Option<&'a KafkaSettings>,
    /// The process's own work ([`persist`]).
    pub work: Option<&'a Health>,
}

/// The `/readyz` checks of `dependencies`: `work` is the process's own; `database` runs
/// `SELECT 1` on a connection of its own (opened when first checked, so that the endpoint answers
/// while the database is still away); `broker` asks a broker for the cluster's metadata.
pub fn readiness(dependencies: Dependencies<'_>) -> Vec<(String, ReadinessCheck)> {
    let mut checks: Vec<(String, ReadinessCheck)> = Vec::new();
    if let Some(health) = dependencies.work {
        checks.push(health.check());
    }
    if let Some(settings) = dependencies.database {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).acquire_timeout(CHECK_TIMEOUT).connect_lazy(&settings.url).ok();
        checks.push((
            "database".into(),
            Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    let ping = async {
                        match pool {
                            Some(pool) => sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()),
                            None => Err(sqlx::Error::PoolClosed),
                        }
                    };
                    let result = match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
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
    metrics::describe_gauge!(
        "doudi_component_up",
        "Whether the component's work is running (1) or waiting out a failure of a server it depends on (0)."
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
