//! What every long-running subcommand shares: its ops endpoint (`/healthz`, `/readyz` with the
//! checks of what it depends on, `/metrics`) and the database it opens.

use doudi::config::Settings;
use doudi::error::Failure;
use doudi::lifecycle::{Dependencies, Health, Shutdown, persist, readiness};

/// Serves `/healthz`, `/readyz` and `/metrics` on `http.bind`:`http.port` until `shutdown`, unless
/// the port is 0. A bad or taken address is a configuration error.
pub(crate) async fn start_ops_endpoint(settings: &Settings, dependencies: Dependencies<'_>, shutdown: &Shutdown) -> Result<(), Failure> {
    if settings.http.port == 0 {
        return Ok(());
    }
    let addr = ops_address(settings)?;
    let router = doudi::http::ops_router(doudi::telemetry::metrics_handle(), readiness(dependencies));
    match doudi::http::serve(addr, router, shutdown.clone().requested()).await {
        Ok((bound, _task)) => {
            tracing::info!(address = %bound, "serving /healthz, /readyz and /metrics");
            Ok(())
        }
        Err(e) => Err(Failure::usage(format!("http.port: cannot listen on {addr}: {e}"))),
    }
}

/// The address of the ops endpoint from `http.bind` and `http.port`.
pub(crate) fn ops_address(settings: &Settings) -> Result<std::net::SocketAddr, Failure> {
    format!("{}:{}", settings.http.bind, settings.http.port).parse().map_err(|e| Failure::usage(format!("http.bind: {e}")))
}

/// Opens (and migrates) the recipient database.
pub(crate) async fn open_database(settings: &Settings) -> Result<doudi::db::Database, Failure> {
    Ok(doudi::db::Database::connect(&settings.database).await?)
}

/// Who does an audited action (`--actor`, else `audit.actor` of the settings) and why (`--purpose`,
/// else `default_purpose` where the action has one). Refused, before anything is done, without both.
pub(crate) fn audited(
    args: &crate::cli::AuditArgs,
    settings: &Settings,
    what: &str,
    default_purpose: Option<&str>,
) -> Result<doudi::audit::Who, Failure> {
    let actor = args.actor.clone().or_else(|| Some(settings.audit.actor.clone()).filter(|a| !a.trim().is_empty()));
    let purpose = args.purpose.clone().or_else(|| default_purpose.map(str::to_string));
    doudi::audit::Who::required(actor.as_deref(), purpose.as_deref(), what).map_err(Failure::usage)
}

/// Appends an entry to the audit log.
pub(crate) async fn record_audit(
    db: &doudi::db::Database,
    settings: &Settings,
    who: &doudi::audit::Who,
    action: &str,
    person: Option<&doudi::idnum::IdNumber>,
    detail: serde_json::Value,
) -> Result<(), Failure> {
    let auditor = doudi::audit::Auditor::new(settings.keys.audit_key.as_bytes());
    doudi::audit::record(db, &auditor, who, action, person, detail)
        .await
        .map_err(|e| Failure::infrastructure(format!("the audit log: {e}")))?;
    Ok(())
}

/// The policy parameters of `path`, or the shipped ones.
pub(crate) fn load_policy(path: Option<&std::path::Path>) -> Result<doudi::policy::Params, Failure> {
    Ok(match path {
        Some(path) => doudi::policy::Params::load(path)?,
        None => doudi::policy::Params::shipped()?,
    })
}

/// The schema registry of `dir`: a bad one is a configuration error.
pub(crate) fn load_registry(dir: &std::path::Path) -> Result<std::sync::Arc<doudi::schema::Registry>, Failure> {
    doudi::schema::Registry::load(dir).map(std::sync::Arc::new).map_err(Failure::usage)
}

/// Runs `work` as a daemon does, waiting out the servers it depends on ([`persist`]; `None` when
/// stopped meanwhile), or once as a batch run does, which reports a failure at once.
pub(crate) async fn attempt<T, E, F, Fut>(daemon: bool, health: &Health, shutdown: &Shutdown, mut work: F) -> Result<Option<T>, Failure>
where
    E: Into<Failure>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    if daemon { persist(health, shutdown, work).await } else { work().await.map(Some).map_err(Into::into) }
}

/// Reads `topic` unmasked for an audited caller: refused without an actor and a purpose; then,
/// before anything is shown, one audit entry per person the records show (keyed hash), or one
/// without a person when they show none.
pub(crate) async fn unmasked_records(
    audit: &crate::cli::AuditArgs,
    action: &str,
    settings: &Settings,
    topic: &str,
    since_ms: Option<i64>,
    limit: usize,
) -> Result<Vec<doudi::tap::Tapped>, Failure> {
    let who = audited(audit, settings, action, None)?;
    let db = open_database(settings).await?;
    let mut records = Vec::new();
    doudi::tap::read(&settings.kafka, topic, since_ms, limit, false, doudi::tap::View::Unmasked, &mut |t| records.push(t)).await?;
    let mut people = std::collections::BTreeSet::new();
    for t in &records {
        // The record as it is printed: its value and its headers, in one text.
        people.extend(doudi::tap::id_numbers_in(&serde_json::to_string(t).unwrap_or_default()));
    }
    let detail = serde_json::json!({"topic": topic, "records": records.len()});
    if people.is_empty() {
        record_audit(&db, settings, &who, action, None, detail.clone()).await?;
    }
    for id in &people {
        if let Ok(person) = doudi::idnum::IdNumber::parse(id) {
            record_audit(&db, settings, &who, action, Some(&person), detail.clone()).await?;
        }
    }
    Ok(records)
}
