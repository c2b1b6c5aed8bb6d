//! Connect: department feeds into their topics, and the dead letters they leave.

use std::path::Path;
use std::sync::Arc;

use doudi::config::Settings;
use doudi::connect::config::ConnectorConfig;
use doudi::connect::run::{Connector, Summary};
use doudi::error::Failure;
use doudi::lifecycle::{Dependencies, Health, Shutdown, persist};
use doudi::schema::Registry;

use crate::Outcome;
use crate::cli::{ConnectAction, ConnectArgs};
use crate::daemon::{load_registry, start_ops_endpoint};

/// `doudi connect …`: validate, test, confirm, one file, or the daemon.
pub(crate) async fn connect(args: ConnectArgs, settings: &Settings) -> Outcome {
    match args.action {
        Some(ConnectAction::Validate { config, schemas }) => {
            let (c, _) = load_connector(&config, &schemas)?;
            outln!("{}: ok ({} → {}, {} fields)", config.display(), c.connector.name, c.connector.topic, c.fields.len());
            Ok(())
        }
        Some(ConnectAction::Test { config, schemas, update }) => {
            let (c, registry) = load_connector(&config, &schemas)?;
            let keys = doudi::envelope::KeyDeriver::new(&settings.keys);
            let report = doudi::connect::offline::test_fixtures(&c, &registry, &keys, update).map_err(Failure::usage)?;
            outln!("{report}");
            if report.passed() { Ok(()) } else { Err(Failure::data(format!("{}: the fixtures do not match", config.display()))) }
        }
        Some(ConnectAction::Confirm { config, schemas, audit }) => {
            let who = crate::daemon::audited(&audit, settings, "connect confirm", Some("release roster removals held back"))?;
            let db = crate::daemon::open_database(settings).await?;
            let mut connector = start_connector(&config, &schemas, settings).await?;
            let summary = connector.confirm_held().await?;
            let detail =
                serde_json::json!({"config": config.display().to_string(), "summary": serde_json::to_value(&summary).unwrap_or_default()});
            crate::daemon::record_audit(&db, settings, &who, "connect confirm", None, detail).await?;
            print_summary(summary);
            Ok(())
        }
        None => {
            let config = args.config.ok_or_else(|| Failure::usage("connect needs --config connectors/<feed>.toml"))?;
            let (c, registry) = load_connector(&config, &args.schemas)?;
            if let (Some(input), true) = (args.input, args.once) {
                let mut connector = Connector::start(c, registry, settings).await?;
                print_summary(connector.process_file(&input).await?);
                return Ok(());
            }
            c.check_daemon()?;
            let shutdown = Shutdown::on_signals();
            let health = Health::new("connector");
            let dependencies = Dependencies { database: None, kafka: Some(&settings.kafka), work: Some(&health) };
            start_ops_endpoint(settings, dependencies, &shutdown).await?;
            // The broker is waited out at start and whenever the transport fails.
            let running = || {
                let (c, registry, shutdown) = (c.clone(), registry.clone(), shutdown.clone());
                async move { doudi::connect::daemon::run(Connector::start(c, registry, settings).await?, settings, shutdown).await }
            };
            persist(&health, &shutdown, running).await?;
            Ok(())
        }
    }
}

/// `doudi dlq list`: a feed's dead letters, masked, as a table or JSON lines.
pub(crate) async fn dlq_list(
    topic: &str,
    since: Option<&str>,
    limit: usize,
    json: bool,
    unmasked: Option<&crate::cli::AuditArgs>,
    settings: &Settings,
) -> Outcome {
    let topic = doudi::topics::dead_letter_topic(topic);
    let since_ms = since.map(doudi::tap::parse_since).transpose().map_err(|m| Failure::usage(format!("--since: {m}")))?;
    let records = match unmasked {
        Some(audit) => Some(crate::daemon::unmasked_records(audit, "dlq list --unmasked", settings, &topic, since_ms, limit).await?),
        None => None,
    };
    if !json {
        outln!("{}", doudi::tap::DEAD_LETTER_HEADING);
    }
    let n = match records {
        Some(records) => {
            for t in &records {
                outln!("{}", doudi::tap::dead_letter_line(t, json));
            }
            records.len()
        }
        None => {
            doudi::tap::read(&settings.kafka, &topic, since_ms, limit, false, doudi::tap::View::Restricted, &mut |t| {
                outln!("{}", doudi::tap::dead_letter_line(&t, json));
            })
            .await?
        }
    };
    eprintln!("doudi: {n} dead letter(s) in {topic}");
    Ok(())
}

/// `doudi dlq replay`: corrected rows through the feed's own connector.
pub(crate) async fn dlq_replay(
    topic: &str,
    input: &Path,
    connector: Option<&str>,
    connectors: &Path,
    schemas: &Path,
    audit: &crate::cli::AuditArgs,
    settings: &Settings,
) -> Outcome {
    let who = crate::daemon::audited(audit, settings, "dlq replay", Some("re-submit corrected records"))?;
    let db = crate::daemon::open_database(settings).await?;
    let config = doudi::connect::replay::find_config(connectors, schemas, topic, connector).map_err(Failure::usage)?;
    let body = std::fs::read(input).map_err(|e| Failure::usage(format!("--input: cannot read {}: {e}", input.display())))?;
    let mut connector = start_connector(&config, schemas, settings).await?;
    let label = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let summary = doudi::connect::replay::replay(&mut connector, &body, &label).await?;
    let detail = serde_json::json!({"topic": topic, "connector": summary.connector, "produced": summary.produced, "dead_lettered": summary.dead_lettered});
    crate::daemon::record_audit(&db, settings, &who, "dlq replay", None, detail).await?;
    outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    tracing::info!(connector = %summary.connector, file = %label, produced = summary.produced, dead_lettered = summary.dead_lettered, "dead letters replayed");
    if summary.dead_lettered > 0 { Err(Failure::data(format!("{} row(s) refused again", summary.dead_lettered))) } else { Ok(()) }
}

fn load_connector(config: &Path, schemas: &Path) -> Result<(ConnectorConfig, Arc<Registry>), Failure> {
    let registry = load_registry(schemas)?;
    let config = ConnectorConfig::load(config, schemas)?;
    Ok((config, registry))
}

/// Loads a connector config and starts its transactional producers.
async fn start_connector(config: &Path, schemas: &Path, settings: &Settings) -> Result<Connector, Failure> {
    let (c, registry) = load_connector(config, schemas)?;
    Ok(Connector::start(c, registry, settings).await?)
}

fn print_summary(summary: Summary) {
    outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
}
