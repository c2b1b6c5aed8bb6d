//! Ops: the servers doudi needs, its configuration, topics, and consumer lag.

use std::path::Path;

use doudi::config::Settings;
use doudi::error::Failure;
use doudi::lifecycle::Shutdown;

use crate::Outcome;
use crate::cli::{LagArgs, LagCommand};
use crate::daemon::ops_address;

/// `doudi doctor`: the database and a Kafka round trip. A failed check is an infrastructure failure.
pub(crate) async fn doctor(no_kafka: bool, json: bool, settings: &Settings) -> Outcome {
    let checks = doudi::doctor::run(settings, !no_kafka).await;
    if json {
        outln!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
    } else {
        out!("{}", doudi::doctor::render(&checks));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 { Ok(()) } else { Err(Failure::infrastructure(format!("{failed} check(s) failed"))) }
}

/// `doudi config check`: the configuration as loaded, secrets redacted.
pub(crate) fn config_check(settings: &Settings) -> Outcome {
    outln!("{settings:#?}");
    Ok(())
}

/// `doudi topics apply`: the catalogue's topics created.
pub(crate) async fn topics_apply(schemas: &Path, replication: i32, settings: &Settings) -> Outcome {
    let catalogue = doudi::schema::Catalogue::load(schemas)?;
    let applied = doudi::topics::apply(&settings.kafka, &catalogue, replication).await?;
    let created = applied.iter().filter(|a| a.created).count();
    for a in &applied {
        outln!("{:<40} {}", a.topic, if a.created { "created" } else { "exists" });
    }
    outln!("{created} created, {} already existed", applied.len() - created);
    Ok(())
}

fn acl_plan_of(source: &crate::cli::AclSource) -> Result<Vec<doudi::acl::Entry>, Failure> {
    let catalogue = doudi::schema::Catalogue::load(&source.schemas)?;
    let connectors = doudi::acl::connectors_in(&source.connectors).map_err(Failure::usage)?;
    doudi::acl::plan(&catalogue, &connectors, &source.topics.affixes()).map_err(Failure::usage)
}

/// `doudi acl plan`: the ACLs, as `kafka-acls` commands or JSON.
pub(crate) fn acl_plan(source: &crate::cli::AclSource, json: bool) -> Outcome {
    let plan = acl_plan_of(source)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default());
    } else {
        out!("{}", doudi::acl::script(&plan));
    }
    Ok(())
}

/// `doudi acl apply`: the broker's ACLs made equal to the plan.
pub(crate) async fn acl_apply(
    source: &crate::cli::AclSource,
    bootstrap: Option<&str>,
    dry_run: bool,
    json: bool,
    audit: &crate::cli::AuditArgs,
    settings: &Settings,
) -> Outcome {
    let who = if dry_run {
        None
    } else {
        Some(crate::daemon::audited(audit, settings, "acl apply", Some("make the broker's ACLs equal to the plan"))?)
    };
    let plan = acl_plan_of(source)?;
    let tls = doudi::acl::AdminTls::from_settings(&settings.kafka, bootstrap).map_err(Failure::usage)?;
    let mut admin = doudi::acl::Admin::connect(&tls).await.map_err(Failure::infrastructure)?;
    let current = admin.list().await.map_err(Failure::infrastructure)?;
    let difference = doudi::acl::difference(&plan, &current);
    if json {
        outln!(
            "{}",
            serde_json::json!({"dry_run": dry_run, "add": difference.add, "remove": difference.remove, "unchanged": difference.unchanged})
        );
    } else {
        for e in &difference.add {
            outln!("+ {} {} {} {} {}", e.principal, e.operation.as_str(), e.resource_type.as_str(), e.pattern.as_str(), e.resource);
        }
        for e in &difference.remove {
            outln!("- {} {} {} {} {}", e.principal, e.operation.as_str(), e.resource_type.as_str(), e.pattern.as_str(), e.resource);
        }
        outln!(
            "{} to add, {} to remove, {} unchanged{}",
            difference.add.len(),
            difference.remove.len(),
            difference.unchanged,
            if dry_run { " (dry run: nothing changed)" } else { "" }
        );
    }
    if dry_run || (difference.add.is_empty() && difference.remove.is_empty()) {
        return Ok(());
    }
    let db = crate::daemon::open_database(settings).await?;
    admin.apply(&difference).await.map_err(Failure::infrastructure)?;
    if let Some(who) = &who {
        let detail = serde_json::json!({"added": difference.add, "removed": difference.remove});
        crate::daemon::record_audit(&db, settings, who, "acl apply", None, detail).await?;
    }
    // The broker answers once its controller has the change; its own view follows a moment later.
    // Done means the broker shows exactly the plan.
    let began = std::time::Instant::now();
    loop {
        let now = doudi::acl::difference(&plan, &admin.list().await.map_err(Failure::infrastructure)?);
        if now.add.is_empty() && now.remove.is_empty() {
            return Ok(());
        }
        if began.elapsed() > std::time::Duration::from_secs(60) {
            return Err(Failure::infrastructure(format!(
                "the broker accepted the change but after 60 s still shows {} rules missing and {} extra",
                now.add.len(),
                now.remove.len()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `doudi tap`: a topic's records, masked; with `--unmasked` (audited), as they are.
pub(crate) async fn tap(
    topic: &str,
    follow: bool,
    limit: usize,
    schemas: &Path,
    unmasked: Option<&crate::cli::AuditArgs>,
    settings: &Settings,
) -> Outcome {
    if let Some(audit) = unmasked {
        let records = crate::daemon::unmasked_records(audit, "tap --unmasked", settings, topic, None, limit).await?;
        for t in records {
            outln!("{}", serde_json::to_string(&t).unwrap_or_default());
        }
        return Ok(());
    }
    // Restricted: a dead-letter topic, or a topic the catalogue marks restricted (under any prefix or
    // suffix); when the catalogue cannot be read, every topic is treated as restricted.
    let restricted = topic.starts_with(doudi::topics::DEAD_LETTER_PREFIX)
        || doudi::schema::Catalogue::load(schemas)
            .map(|c| c.topics.iter().any(|t| t.restricted && topic.contains(t.name.as_str())))
            .unwrap_or(true);
    let view = if restricted { doudi::tap::View::Restricted } else { doudi::tap::View::Masked };
    doudi::tap::read(&settings.kafka, topic, None, limit, follow, view, &mut |t| {
        outln!("{}", serde_json::to_string(&t).unwrap_or_default());
    })
    .await?;
    Ok(())
}

/// `doudi lag`: the report once or with `--watch`; `doudi lag serve`: metrics and the status page.
pub(crate) async fn lag(args: LagArgs, settings: &Settings) -> Outcome {
    if let Some(LagCommand::Serve { listen, interval, evaluation }) = args.command {
        let addr = match listen {
            Some(addr) => addr,
            None => ops_address(settings)?,
        };
        let options = doudi::lag::Options { groups: Vec::new(), stop_after: evaluation.stop_after };
        let shutdown = Shutdown::on_signals();
        let metrics = doudi::telemetry::metrics_handle();
        doudi::status::serve(settings, addr, interval, evaluation.window, options, metrics, shutdown.requested())
            .await
            .map_err(Failure::infrastructure)?;
        return Ok(());
    }
    let mut follower = doudi::lag::Follower::start(&settings.kafka, args.evaluation.window)?;
    follower
        .wait_caught_up(std::time::Duration::from_secs(120))
        .await
        .map_err(|e| Failure::from(e).context("reading __consumer_offsets"))?;
    let options = doudi::lag::Options { groups: args.group.clone(), stop_after: args.evaluation.stop_after };
    let consumer = std::sync::Arc::new(doudi::lag::evaluation_consumer(&settings.kafka)?);
    let shutdown = if args.watch { Shutdown::on_signals() } else { Shutdown::never() };
    loop {
        let log = follower.snapshot();
        let (consumer, opts) = (consumer.clone(), options.clone());
        let report = tokio::task::spawn_blocking(move || doudi::lag::report_with(&consumer, &log, &opts)).await??;
        if args.json {
            outln!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            if args.watch {
                out!("\x1b[2J\x1b[H");
            }
            out!("{}", doudi::lag::render_text(&report));
        }
        if !args.group.is_empty() && report.groups.is_empty() {
            return Err(Failure::data(format!("no committed offsets for {}", args.group.join(", "))));
        }
        if !args.watch {
            let unhealthy = report.groups.iter().filter(|g| g.status != doudi::lag::Status::Ok).count();
            return if unhealthy == 0 { Ok(()) } else { Err(Failure::data(format!("{unhealthy} group(s) not OK"))) };
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = shutdown.clone().requested() => return Ok(()),
        }
    }
}
