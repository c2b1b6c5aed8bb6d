//! Tools that need no server: the policy engine on one household, the policy's bounds, the schemas
//! and ID numbers.

use std::path::Path;

use doudi::error::Failure;
use doudi::schema;

use crate::Outcome;
use crate::cli::SchemasCommand;
use crate::daemon::load_policy;

/// `doudi assess`: one household's decision as JSON.
pub(crate) fn assess(date: chrono::NaiveDate, policy: Option<&Path>, explain: bool, household: &Path) -> Outcome {
    let params = load_policy(policy)?;
    let text = if household == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(household)
    };
    let text = text.map_err(|e| Failure::usage(format!("cannot read {}: {e}", household.display())))?;
    let mut decision = doudi::policy::assess_json(&params, &text, date)?;
    if !explain {
        decision.explanation.clear();
    }
    outln!("{}", serde_json::to_string_pretty(&decision).unwrap_or_default());
    Ok(())
}

/// `doudi policy check`: every region and year against the S1 and S2 bounds.
pub(crate) fn policy_check(policy: Option<&Path>, json: bool) -> Outcome {
    let params = load_policy(policy)?;
    let rows = doudi::policy::check::check(&params);
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        out!("{}", doudi::policy::check::render(&rows));
    }
    let violations = rows.iter().filter(|r| !r.ok).count();
    if violations > 0 {
        return Err(Failure::data(format!("{violations} violation(s) of S1/S2 in {}", params.policy.version)));
    }
    eprintln!("doudi: policy {} version {}: {} checks passed", params.policy.id, params.policy.version, rows.len());
    Ok(())
}

/// `doudi schemas …`: check, publish, docs, validate.
pub(crate) fn schemas(command: SchemasCommand) -> Outcome {
    match command {
        SchemasCommand::Check { dir } => {
            let problems = schema::check(&dir);
            for p in &problems {
                outln!("{}: {}", p.file, p.message);
            }
            if !problems.is_empty() {
                return Err(Failure::data(format!("{} problem(s) in {}", problems.len(), dir.display())));
            }
            let count = schema::Registry::load(&dir).map(|r| (r.catalogue.topics.len(), r.schemas.len())).unwrap_or_default();
            outln!("ok: {} topics, {} schemas, examples, fixtures and published versions all pass", count.0, count.1);
            Ok(())
        }
        SchemasCommand::Publish { dir } => match schema::publish(&dir) {
            Ok(n) => {
                outln!("published {n} schemas to {}", dir.join(schema::LOCK_FILE).display());
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{}: {}", p.file, p.message);
                }
                Err(Failure::data("nothing published"))
            }
        },
        SchemasCommand::Docs { dir } => {
            out!("{}", schema::Catalogue::load(&dir)?.render_markdown());
            Ok(())
        }
        SchemasCommand::Validate { dir, topic, file } => {
            let registry = schema::Registry::load(&dir).map_err(Failure::usage)?;
            let schema = registry.for_topic(&topic)?;
            let result = if file == Path::new("-") {
                schema::validate_lines(schema, std::io::stdin().lock())
            } else {
                std::fs::File::open(&file).and_then(|f| schema::validate_lines(schema, std::io::BufReader::new(f)))
            };
            let (count, invalid) = result.map_err(|e| Failure::infrastructure(format!("cannot read {}: {e}", file.display())))?;
            for line in &invalid {
                for v in &line.violations {
                    outln!("{}:{}: {}", file.display(), line.line, v);
                }
            }
            outln!("{count} lines, {} valid, {} invalid ({topic})", count - invalid.len(), invalid.len());
            if invalid.is_empty() { Ok(()) } else { Err(Failure::data(format!("{} invalid line(s)", invalid.len()))) }
        }
    }
}

/// `doudi id`: resident ID numbers checked and described. Any invalid one is a finding.
pub(crate) async fn id(unmasked: bool, ids: &[String], audit: &crate::cli::AuditArgs, settings: &doudi::config::Settings) -> Outcome {
    if unmasked {
        let who = crate::daemon::audited(audit, settings, "id --unmasked", None)?;
        let db = crate::daemon::open_database(settings).await?;
        for raw in ids {
            let person = doudi::idnum::IdNumber::parse(raw).ok();
            let detail = if person.is_some() { serde_json::json!({}) } else { serde_json::json!({"valid": false}) };
            crate::daemon::record_audit(&db, settings, &who, "id --unmasked", person.as_ref(), detail).await?;
        }
    }
    let today = chrono::Local::now().date_naive();
    let mut invalid = 0;
    for raw in ids {
        let report = doudi::idnum::report(raw, today, unmasked);
        invalid += usize::from(!report.valid);
        outln!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    if invalid == 0 { Ok(()) } else { Err(Failure::data(format!("{invalid} invalid ID number(s)"))) }
}

/// `doudi audit verify`: the whole chain; exit 1 naming the first bad entry.
pub(crate) async fn audit_verify(settings: &doudi::config::Settings) -> Outcome {
    let db = crate::daemon::open_database(settings).await?;
    let auditor = doudi::audit::Auditor::new(settings.keys.audit_key.as_bytes());
    match doudi::audit::verify(&db, &auditor).await.map_err(|e| Failure::infrastructure(format!("the audit log: {e}")))? {
        Ok(n) => {
            outln!("{}", serde_json::json!({"verified": n}));
            Ok(())
        }
        Err(broken) => {
            outln!("{}", serde_json::json!({"verified": false, "first_bad_entry": broken.seq, "reason": broken.reason}));
            Err(Failure::data(format!("the audit log is broken at entry {}: {}", broken.seq, broken.reason)))
        }
    }
}

/// `doudi audit list`: entries, oldest first; a person is looked up by hashing the ID given.
pub(crate) async fn audit_list(
    since: Option<&str>,
    actor: Option<&str>,
    person: Option<&str>,
    json: bool,
    settings: &doudi::config::Settings,
) -> Outcome {
    let since = since
        .map(|s| doudi::tap::parse_since(s).map(|ms| doudi::db::rfc3339(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())))
        .transpose()
        .map_err(|m| Failure::usage(format!("--since: {m}")))?;
    let auditor = doudi::audit::Auditor::new(settings.keys.audit_key.as_bytes());
    let person = person
        .map(|raw| doudi::idnum::IdNumber::parse(raw).map(|id| auditor.person(&id)))
        .transpose()
        .map_err(|e| Failure::usage(format!("--person: {e}")))?;
    let db = crate::daemon::open_database(settings).await?;
    let entries = doudi::audit::list(&db, since.as_deref(), actor, person.as_deref())
        .await
        .map_err(|e| Failure::infrastructure(format!("the audit log: {e}")))?;
    for e in &entries {
        if json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            outln!(
                "{:>6}  {}  {:<20} {:<28} {:<14} {}",
                e.seq,
                e.at,
                e.actor,
                e.action,
                e.person.as_deref().map(|p| &p[..12]).unwrap_or("-"),
                e.purpose
            );
        }
    }
    Ok(())
}
