//! Match: the matching service, the shared recipient database, and the policy over time (policy
//! changes and the daily review).

use std::path::Path;
use std::sync::Arc;

use doudi::config::Settings;
use doudi::error::Failure;
use doudi::lifecycle::{Dependencies, Health, Shutdown};
use doudi::matcher::{Context, MatchOptions, Outbound};

use crate::Outcome;
use crate::cli::{MatchArgs, ReevaluateArgs};
use crate::daemon::{attempt, load_policy, load_registry, open_database, start_ops_endpoint};

/// `doudi match`: the matching service, until stopped (or idle, with `--until-idle`).
pub(crate) async fn run(args: MatchArgs, settings: &Settings) -> Outcome {
    let params = load_policy(args.policy.as_deref())?;
    let registry = load_registry(&args.schemas).map_err(|f| f.context("--schemas"))?;
    if args.batch_size == 0 {
        return Err(Failure::usage("--batch-size must be at least 1"));
    }
    let shutdown = Shutdown::on_signals();
    let health = Health::new("matcher");
    let daemon = !args.until_idle;
    if daemon {
        let dependencies = Dependencies { database: Some(&settings.database), kafka: Some(&settings.kafka), work: Some(&health) };
        start_ops_endpoint(settings, dependencies, &shutdown).await?;
    }
    // A daemon waits out the database; a batch run (--until-idle) reports it.
    let Some(db) = attempt(daemon, &health, &shutdown, || open_database(settings)).await? else { return Ok(()) };
    let establish = || doudi::matcher::policy_change::establish(&db, params.clone());
    let Some(params) = attempt(daemon, &health, &shutdown, establish).await? else { return Ok(()) };
    let affixes = args.topics.affixes();
    let ctx = matcher_context(params, registry, &affixes, settings);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let options = MatchOptions {
        group: args.group.clone(),
        inbound: MatchOptions::inbound_with_affixes(&affixes.prefix, &affixes.suffix),
        batch_size: args.batch_size,
        batch_wait: args.batch_wait,
        until_idle: args.until_idle,
        idle_after: args.idle_after,
        assignment_timeout: std::time::Duration::from_secs(60),
        owner: format!("{host}/{}/{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        outbox_retention: Some(args.outbox_retention),
    };
    if daemon {
        // The caseworkers' queue, for the overdue alert (docs/runbook.md, Review tasks).
        let every = std::time::Duration::from_secs(5);
        tokio::spawn(doudi::matcher::tasks::refresh_gauges_every(db.clone(), every, shutdown.clone()));
    }
    let job = db.start_job("matcher", &args.group).await.ok();
    let matching = || doudi::matcher::run(&db, &settings.kafka, &ctx, &options, shutdown.clone().requested());
    let result = attempt(daemon, &health, &shutdown, matching).await;
    match result {
        Ok(summary) => {
            let summary = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(id) = job {
                let _ = db.finish_job(id, "ok", &summary).await;
            }
            if args.until_idle {
                outln!("{summary}");
            }
            Ok(())
        }
        Err(e) => {
            if let Some(id) = job {
                let _ = db.finish_job(id, "failed", &serde_json::json!({"error": "see the log"})).await;
            }
            tracing::error!("The matcher stopped: {e}");
            Err(e)
        }
    }
}

/// `doudi tasks show`.
pub(crate) async fn tasks_show(id: &str, json: bool, settings: &Settings) -> Outcome {
    let db = open_database(settings).await?;
    let today = chrono::Local::now().date_naive();
    let task = doudi::matcher::tasks::show(&db, id, today).await.map_err(task_failure)?;
    if json {
        outln!("{}", serde_json::to_string(&task).unwrap_or_default());
        return Ok(());
    }
    outln!("task      {}", task.line.id);
    outln!("kind      {} ({})", task.line.kind, task.line.rule.as_deref().unwrap_or("-"));
    outln!("state     {}{}", task.line.state, task.assignee.as_deref().map(|a| format!(", assigned to {a}")).unwrap_or_default());
    outln!(
        "household {}  person {}  region {}",
        task.line.household_id.as_deref().unwrap_or("-"),
        task.line.person.as_deref().unwrap_or("-"),
        task.line.region
    );
    outln!(
        "raised    {} ({} days ago), due {}{}",
        task.line.created_on,
        task.line.age_days,
        task.due_on.as_deref().unwrap_or("-"),
        if task.overdue { "  OVERDUE" } else { "" }
    );
    outln!("detail    {}", task.detail);
    if let Some(o) = &task.outcome {
        outln!("outcome   {o} by {} at {}", task.resolved_by.as_deref().unwrap_or("-"), task.resolved_at.as_deref().unwrap_or("-"));
    }
    if !task.held_facts.is_empty() {
        outln!("held facts (applied or rejected when the identity is resolved):");
        for f in &task.held_facts {
            outln!(
                "  {:<28} {:<28} {:<10} {} {}",
                f.source,
                f.field,
                f.effective_date.as_deref().unwrap_or("-"),
                f.source_file.as_deref().unwrap_or(""),
                f.source_row.as_deref().map(|r| format!("row {r}")).unwrap_or_default()
            );
        }
    }
    outln!("history:");
    for t in &task.transitions {
        outln!(
            "  {} {} → {} by {} via {}{}{}",
            t.at,
            t.from,
            t.to,
            t.actor,
            t.via,
            t.assignee.as_deref().map(|a| format!(", to {a}")).unwrap_or_default(),
            t.outcome.as_deref().map(|o| format!(", {o}")).unwrap_or_default()
        );
    }
    if !task.outcomes.is_empty() {
        outln!("resolve with: doudi tasks resolve {} --outcome {} --reason TEXT", task.line.id, task.outcomes.join("|"));
    }
    Ok(())
}

/// A task error as the CLI reports it.
fn task_failure(e: doudi::matcher::tasks::TaskError) -> Failure {
    use doudi::matcher::tasks::TaskError;
    match e {
        TaskError::NotFound(_) | TaskError::Refused(_) => Failure::data(e.to_string()),
        TaskError::Apply(e) => Failure::from(e),
        TaskError::Database(e) => Failure::infrastructure(format!("review tasks: {e}")),
    }
}

/// A JSON file's content.
pub(crate) fn read_json_file(path: &Path) -> Result<serde_json::Value, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{} is not JSON: line {}, column {}", path.display(), e.line(), e.column())))
}

/// `doudi tasks assign|resolve`: the action goes through the caseworkers' path, with the actor
/// from --actor or the settings; the deltas are published unless --no-publish.
pub(crate) async fn tasks_act(
    mut payload: serde_json::Value,
    audit: &crate::cli::AuditArgs,
    args: &crate::cli::TaskApplyArgs,
    settings: &Settings,
) -> Outcome {
    let who = crate::daemon::audited(audit, settings, "acting on a review task", Some("review task"))?;
    payload["actor"] = serde_json::json!(who.actor);
    let registry = load_registry(&args.schemas).map_err(|f| f.context("--schemas"))?;
    let db = open_database(settings).await?;
    let params = match doudi::matcher::policy_change::in_force(&db).await.map_err(Failure::from)? {
        Some((_, params)) => params,
        None => load_policy(None)?,
    };
    let affixes = args.topics.affixes();
    let ctx = matcher_context(params, registry, &affixes, settings);
    let acting = doudi::matcher::tasks::act(&db, &ctx, doudi::matcher::casework::VIA_CLI, payload);
    let (task, published) = if args.no_publish {
        (acting.await, Ok(0))
    } else {
        let producer = doudi::kafka::idempotent_producer(&settings.kafka).map_err(Failure::from)?;
        let (task, published) = doudi::matcher::relay_during(&db, &producer, acting).await;
        (task, published.map_err(|e| Failure::from(e).context("publishing the outbox")))
    };
    let task = task.map_err(task_failure)?;
    // The action is committed: a failure to publish leaves its events to the matcher's relay.
    let published = published.map_err(|e| tracing::warn!("The task's events stay in the outbox for the matcher's relay: {e}")).ok();
    outln!(
        "{}",
        serde_json::json!({"id": task.task_id, "kind": task.kind, "state": task.state, "assignee": task.assignee,
                           "outcome": task.outcome, "published": published})
    );
    Ok(())
}

/// `doudi workbench`: serves the caseworkers' web application until SIGTERM; or hashes a password.
pub(crate) async fn workbench(args: &crate::cli::WorkbenchArgs, settings: &Settings) -> Outcome {
    if let Some(crate::cli::WorkbenchAction::HashPassword) = args.action {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password).map_err(|e| Failure::usage(format!("reading the password: {e}")))?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.chars().count() < 12 {
            return Err(Failure::usage("a workbench password has at least 12 characters"));
        }
        outln!("{}", doudi::workbench::auth::hash_password(password).map_err(Failure::usage)?);
        return Ok(());
    }
    let path = args.accounts.as_ref().ok_or_else(|| Failure::usage("--accounts (DOUDI_WORKBENCH_ACCOUNTS) names the accounts file"))?;
    let accounts = doudi::workbench::auth::Accounts::load(path).map_err(|m| Failure::usage(m).context("--accounts"))?;
    if args.idle_minutes == 0 {
        return Err(Failure::usage("--idle-minutes must be at least 1"));
    }
    let registry = load_registry(&args.schemas).map_err(|f| f.context("--schemas"))?;
    let tls = settings.http.data_tls()?;
    let https = tls.is_some();
    let shutdown = Shutdown::on_signals();
    let health = Health::new("workbench");
    let dependencies = Dependencies { database: Some(&settings.database), kafka: None, work: Some(&health) };
    start_ops_endpoint(settings, dependencies, &shutdown).await?;
    let Some(db) = attempt(true, &health, &shutdown, || open_database(settings)).await? else { return Ok(()) };
    let affixes = args.topics.affixes();
    let ctx = matcher_context(load_policy(None)?, registry, &affixes, settings);
    let state = doudi::workbench::WorkbenchState {
        db,
        ctx,
        accounts: Arc::new(accounts),
        sessions: doudi::workbench::auth::Sessions::new(doudi::workbench::auth::Expiry {
            idle: std::time::Duration::from_secs(args.idle_minutes * 60),
            ..Default::default()
        }),
        kafka: settings.kafka.clone(),
        auditor: doudi::audit::Auditor::new(settings.keys.audit_key.as_bytes()),
        https,
        affixes,
    };
    let served = doudi::http::serve_maybe_tls(args.listen, doudi::workbench::router(state), tls, shutdown.clone().requested()).await;
    let (bound, task) = served.map_err(|e| Failure::infrastructure(format!("--listen {}: {e}", args.listen)))?;
    tracing::info!(address = %bound, scheme = if https { "https" } else { "http" }, "Serving the workbench.");
    let _ = task.await;
    Ok(())
}

/// The matcher's context: the parameters, the keys of the settings, the schemas and the topic names.
fn matcher_context(
    params: doudi::policy::Params,
    registry: Arc<doudi::schema::Registry>,
    affixes: &doudi::topics::Affixes,
    settings: &Settings,
) -> Context {
    Context {
        params: Arc::new(params),
        keys: doudi::envelope::KeyDeriver::new(&settings.keys),
        registry,
        outbound: Outbound::with_affixes(&affixes.prefix, &affixes.suffix),
        today: chrono::Local::now().date_naive(),
        auditor: doudi::audit::Auditor::new(settings.keys.audit_key.as_bytes()),
    }
}

/// The matcher's context for re-evaluations outside `doudi match`.
fn reevaluation_context(params: doudi::policy::Params, args: &ReevaluateArgs, settings: &Settings) -> Result<Context, Failure> {
    let registry = load_registry(&args.schemas).map_err(|f| f.context("--schemas"))?;
    if args.chunk_size == 0 {
        return Err(Failure::usage("--chunk-size must be at least 1"));
    }
    let affixes = args.topics.affixes();
    Ok(matcher_context(params, registry, &affixes, settings))
}

/// Runs `work` (a re-evaluation) while publishing what it writes to the outbox, a round at a time as
/// its chunks commit and the rest at the end, unless told not to. Returns the work's output and how
/// many rows were published; a failure to publish leaves the rest in the outbox for the next relay
/// (the running matcher's).
async fn publishing<T>(
    db: &doudi::db::Database,
    args: &ReevaluateArgs,
    settings: &Settings,
    work: impl std::future::Future<Output = T>,
) -> (T, Result<u64, Failure>) {
    if args.no_publish {
        return (work.await, Ok(0));
    }
    let producer = match doudi::kafka::idempotent_producer(&settings.kafka) {
        Ok(p) => p,
        Err(e) => return (work.await, Err(e.into())),
    };
    let (out, published) = doudi::matcher::relay_during(db, &producer, work).await;
    (out, published.map_err(|e| Failure::from(e).context("publishing the outbox")))
}

/// `doudi policy apply`: a new parameter version, its households re-evaluated, the deltas published.
pub(crate) async fn policy_apply(policy: &Path, args: &ReevaluateArgs, audit: &crate::cli::AuditArgs, settings: &Settings) -> Outcome {
    let who = crate::daemon::audited(audit, settings, "policy apply", Some("apply a policy parameter version"))?;
    let params = load_policy(Some(policy))?;
    let violations = doudi::policy::check::check(&params).iter().filter(|r| !r.ok).count();
    if violations > 0 {
        return Err(Failure::data(format!(
            "{violations} violation(s) of S1/S2 in {}; run `doudi policy check` and fix them first",
            params.policy.version
        )));
    }
    let ctx = reevaluation_context(params, args, settings)?;
    let db = open_database(settings).await?;
    let started = std::time::Instant::now();
    let (applied, published) = publishing(&db, args, settings, doudi::matcher::policy_change::apply(&db, &ctx, args.chunk_size)).await;
    let summary = applied.map_err(|e| {
        let failure = Failure::from(e);
        if failure.class == doudi::error::Class::Usage { failure.context("--policy") } else { failure }
    })?;
    let mut out = serde_json::to_value(&summary).unwrap_or_default();
    if let Some(obj) = out.as_object_mut() {
        obj.insert("published".into(), published?.into());
        obj.insert("seconds".into(), started.elapsed().as_secs().into());
    }
    crate::daemon::record_audit(
        &db,
        settings,
        &who,
        "policy apply",
        None,
        serde_json::json!({"policy": policy.display().to_string(), "summary": out}),
    )
    .await?;
    outln!("{out}");
    Ok(())
}

/// `doudi policy versions`: the recorded versions, newest first.
pub(crate) async fn policy_versions(settings: &Settings) -> Outcome {
    let db = open_database(settings).await?;
    let rows = doudi::matcher::policy_change::versions(&db).await?;
    out!("{}", doudi::matcher::policy_change::render_versions(&rows));
    Ok(())
}

/// `doudi review`: the households due on a date re-evaluated, the deltas published.
pub(crate) async fn review(date: Option<chrono::NaiveDate>, args: &ReevaluateArgs, settings: &Settings) -> Outcome {
    let date = date.unwrap_or_else(|| doudi::db::china_date(chrono::Utc::now()));
    let db = open_database(settings).await?;
    // The version in force decides; the shipped file only for a database without one.
    let params = match doudi::matcher::policy_change::in_force(&db).await? {
        Some((_, p)) => p,
        None => load_policy(None)?,
    };
    let ctx = reevaluation_context(params, args, settings)?;
    let started = std::time::Instant::now();
    let work = doudi::matcher::calendar::review(&db, &ctx, date, args.chunk_size);
    let (result, published) = publishing(&db, args, settings, work).await;
    let (due, totals) = result?;
    outln!("{}", due.summary(date, &totals, published?, started.elapsed().as_secs()));
    Ok(())
}

/// `doudi recipients show`: a person's household, decision, entitlements and facts, masked.
pub(crate) async fn recipients_show(
    raw: &str,
    unmasked: bool,
    json: bool,
    policy: Option<&Path>,
    audit: &crate::cli::AuditArgs,
    settings: &Settings,
) -> Outcome {
    let who = if unmasked { Some(crate::daemon::audited(audit, settings, "recipients show --unmasked", None)?) } else { None };
    let id = doudi::idnum::IdNumber::parse(raw).map_err(|e| Failure::usage(format!("ID_NUMBER: {e}")))?;
    let params = load_policy(policy)?;
    let db = open_database(settings).await?;
    if let Some(who) = &who {
        crate::daemon::record_audit(&db, settings, who, "recipients show --unmasked", Some(&id), serde_json::json!({})).await?;
    }
    let Some(report) = doudi::matcher::show::report(&db, &params, &id, unmasked).await? else {
        return Err(Failure::data(format!("no person {} in the recipient database", id.masked())));
    };
    if json {
        outln!("{report}");
    } else {
        out!("{}", doudi::matcher::show::render_text(&report));
    }
    Ok(())
}

/// `doudi tasks list`: the review tasks, oldest first, the person masked.
pub(crate) async fn tasks_list(kind: Option<String>, state: Option<String>, limit: usize, json: bool, settings: &Settings) -> Outcome {
    let db = open_database(settings).await?;
    let filter = doudi::matcher::tasks::TaskFilter { kind, state, limit };
    let today = chrono::Local::now().date_naive();
    let tasks =
        doudi::matcher::tasks::list(&db, &filter, today).await.map_err(|e| Failure::infrastructure(format!("review tasks: {e}")))?;
    if json {
        for t in &tasks {
            outln!("{}", serde_json::to_string(t).unwrap_or_default());
        }
    } else {
        outln!("{:<38} {:<32} {:<8} {:<24} {:<20} {:>5}", "id", "kind", "state", "household", "person", "age d");
        for t in &tasks {
            outln!(
                "{:<38} {:<32} {:<8} {:<24} {:<20} {:>5}",
                t.id,
                t.kind,
                t.state,
                t.household_id.as_deref().unwrap_or("-"),
                t.person.as_deref().unwrap_or("-"),
                t.age_days
            );
        }
    }
    Ok(())
}
