//! Deliver: agencies' entitlement events out, their acknowledgements in, and the reports on both.

use doudi::config::Settings;
use doudi::deliver::acks;
use doudi::deliver::config::DeliveryConfig;
use doudi::error::Failure;
use doudi::lifecycle::{Dependencies, Health, Shutdown};

use crate::Outcome;
use crate::cli::{AcksArgs, DeliverArgs, TopicAffixes};
use crate::daemon::{attempt, load_registry, open_database, start_ops_endpoint};

/// `doudi deliver`: a day's file (a batch run), or a webhook or table (a daemon).
pub(crate) async fn deliver(args: &DeliverArgs, settings: &Settings) -> Outcome {
    let config = DeliveryConfig::load(&args.config)?;
    let shutdown = Shutdown::on_signals();
    let health = Health::new("deliver");
    let daemon = !args.until_idle && !config.is_file();
    if daemon {
        let dependencies = Dependencies { database: Some(&settings.database), kafka: Some(&settings.kafka), work: Some(&health) };
        start_ops_endpoint(settings, dependencies, &shutdown).await?;
    }
    let Some(db) = attempt(daemon, &health, &shutdown, || open_database(settings)).await? else { return Ok(()) };
    let topic = args.topics.affixes().name(&config.topic());
    let today = doudi::db::china_date(chrono::Utc::now());
    let date = match (args.date, args.yesterday) {
        (Some(d), _) => d,
        (None, true) => today.pred_opt().unwrap_or(today),
        (None, false) => today,
    };
    if let Some(summary) = doudi::deliver::export::export_config_day(&db, &settings.kafka, &config, &topic, date).await? {
        outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
        return Ok(());
    }
    let Some(built) = attempt(daemon, &health, &shutdown, || doudi::deliver::build_sink(&config, &db)).await? else { return Ok(()) };
    let Some((sink, initial_backoff, max_backoff)) = built else {
        return Err(Failure::usage(format!("{}: the sink cannot run as a daemon", config.path.display())));
    };
    let options = doudi::deliver::DeliverOptions {
        topic,
        group: config.group(),
        until_idle: args.until_idle,
        idle_after: args.idle_after,
        initial_backoff,
        max_backoff,
    };
    let delivering = || doudi::deliver::run(&db, &settings.kafka, &config, &sink, &options, shutdown.clone().requested());
    let result = attempt(daemon, &health, &shutdown, delivering).await;
    match result {
        Ok(summary) => {
            if let (true, Some(summary)) = (args.until_idle, summary) {
                outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("The delivery stopped: {e}");
            Err(e)
        }
    }
}

/// `doudi acks`: acknowledgements from the ack topic and the HTTP callback; the delivery gauges.
pub(crate) async fn acks(args: &AcksArgs, settings: &Settings) -> Outcome {
    let registry = load_registry(&args.schemas).map_err(|f| f.context("--schemas"))?;
    let tokens = acks::tokens_from_env(&args.tokens)?;
    let tls = settings.http.data_tls()?;
    let https = tls.is_some();
    let shutdown = Shutdown::on_signals();
    let health = Health::new("acks");
    let daemon = args.until_idle.is_none();
    if daemon {
        let dependencies = Dependencies { database: Some(&settings.database), kafka: Some(&settings.kafka), work: Some(&health) };
        start_ops_endpoint(settings, dependencies, &shutdown).await?;
    }
    let Some(db) = attempt(daemon, &health, &shutdown, || open_database(settings)).await? else { return Ok(()) };
    if let Some(addr) = args.listen {
        let state = acks::CallbackState { db: db.clone(), registry: registry.clone(), tokens: std::sync::Arc::new(tokens) };
        let served = doudi::http::serve_maybe_tls(addr, acks::router(state), tls, shutdown.clone().requested()).await;
        let (bound, _task) = served.map_err(|e| Failure::infrastructure(format!("--listen {addr}: {e}")))?;
        tracing::info!(address = %bound, scheme = if https { "https" } else { "http" }, "serving the acknowledgement callback at /v1/acks");
    }
    tokio::spawn(acks::refresh_gauges_every(db.clone(), std::time::Duration::from_secs(15), shutdown.clone()));
    let affixes = args.topics.affixes();
    let topics: std::collections::BTreeMap<String, &'static str> =
        doudi::topics::AGENCIES.into_iter().map(|a| (affixes.name(&doudi::topics::ack_topic(a)), a)).collect();
    let consuming = || acks::consume(&db, &settings.kafka, &registry, &topics, &args.group, args.until_idle, shutdown.clone().requested());
    let result = attempt(daemon, &health, &shutdown, consuming).await;
    match result {
        Ok(read) => {
            if let (false, Some(read)) = (daemon, read) {
                outln!("{}", serde_json::json!({"read": read}));
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("Recording acknowledgements stopped: {e}");
            Err(e)
        }
    }
}

/// `doudi deliveries pending`: entitlement events not applied yet, masked. Any listed is a finding.
pub(crate) async fn pending(
    agency: Option<&str>,
    older_than: std::time::Duration,
    limit: usize,
    json: bool,
    settings: &Settings,
) -> Outcome {
    if let Some(a) = agency
        && !doudi::topics::is_agency(a)
    {
        return Err(Failure::usage(format!("--agency: `{a}` is not an agency ({})", doudi::topics::AGENCIES.join(", "))));
    }
    let db = open_database(settings).await?;
    let (total, rows) = doudi::deliver::report::pending(&db, agency, older_than, limit).await?;
    if json {
        for r in &rows {
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        out!("{}", doudi::deliver::report::render_pending(&rows));
    }
    let message = format!(
        "{total} entitlement event(s) not applied{}{}",
        if (rows.len() as u64) < total { format!(" (the oldest {} shown)", rows.len()) } else { String::new() },
        if older_than.is_zero() { String::new() } else { format!(" after {}", humantime::format_duration(older_than)) }
    );
    if total == 0 {
        eprintln!("doudi: {message}");
        Ok(())
    } else {
        Err(Failure::data(message))
    }
}

/// `doudi reconcile`: a day's control totals per agency. Any mismatch is a finding.
pub(crate) async fn reconcile(date: chrono::NaiveDate, no_kafka: bool, json: bool, topics: &TopicAffixes, settings: &Settings) -> Outcome {
    let db = open_database(settings).await?;
    let published = if no_kafka {
        None
    } else {
        Some(doudi::deliver::report::published_ids_of_agencies(&settings.kafka, &topics.affixes(), date).await?)
    };
    let lines = doudi::deliver::report::reconcile(&db, date, published.as_ref()).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&lines).unwrap_or_default());
    } else {
        out!("{}", doudi::deliver::report::render_reconcile(&lines));
    }
    let mismatches = lines.iter().filter(|l| !l.agrees).count();
    if mismatches > 0 {
        return Err(Failure::data(format!("{date}: {mismatches} of {} line(s) do not agree (count / sum of yearly amounts)", lines.len())));
    }
    eprintln!("doudi: {date}: all {} line(s) agree", lines.len());
    Ok(())
}
