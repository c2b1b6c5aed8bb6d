//! The `doudi` binary: one process per role, chosen by subcommand. It parses the command line,
//! builds the runtime, dispatches to one short function per subcommand (grouped by role:
//! `connect`, `matching`, `deliver`, `ops`, `tools`) and maps a failure's class to the exit code,
//! here only: 0 success; 1 the command ran and found a problem (invalid data, a failed check);
//! 2 bad usage or configuration; 3 an infrastructure failure (database, broker, file system).

#[macro_use]
mod output;
mod cli;
mod connect;
mod daemon;
mod deliver;
mod matching;
mod ops;
mod tools;

use std::process::ExitCode;

use clap::Parser;

use cli::{
    AclCommand, AuditCommand, Cli, Command, ConfigCommand, DeliveriesCommand, DlqCommand, PolicyCommand, RecipientsCommand, TasksCommand,
    TopicsCommand,
};
use doudi::config::Settings;
use doudi::error::Failure;

/// mimalloc: the matcher's and the policy re-evaluation's work allocates and frees many small
/// strings and JSON values, where glibc's allocator spent a third of the process's time
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What a subcommand returns.
type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = Settings::load(cli.settings.as_deref()).map_err(Failure::from).and_then(|settings| {
        doudi::telemetry::init_logging(&settings.log);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::infrastructure(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(dispatch(cli.command, settings))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("doudi: {failure}");
            ExitCode::from(failure.class.exit_code())
        }
    }
}

async fn dispatch(command: Command, settings: Settings) -> Outcome {
    match command {
        // Connect: department feeds in, dead letters.
        Command::Connect(args) => connect::connect(args, &settings).await,
        Command::Dlq(DlqCommand::List { topic, since, limit, json, unmasked, audit }) => {
            let unmasked = if unmasked { Some(&audit) } else { None };
            connect::dlq_list(&topic, since.as_deref(), limit, json, unmasked, &settings).await
        }
        Command::Dlq(DlqCommand::Replay { topic, input, connector, connectors, schemas, audit }) => {
            connect::dlq_replay(&topic, &input, connector.as_deref(), &connectors, &schemas, &audit, &settings).await
        }
        // Match: the recipient database and the policy over time.
        Command::Match(args) => matching::run(args, &settings).await,
        Command::Policy(PolicyCommand::Apply { policy, run, audit }) => matching::policy_apply(&policy, &run, &audit, &settings).await,
        Command::Policy(PolicyCommand::Versions) => matching::policy_versions(&settings).await,
        Command::Review { date, run } => matching::review(date, &run, &settings).await,
        Command::Recipients(RecipientsCommand::Show { id_number, unmasked, json, policy, audit }) => {
            matching::recipients_show(&id_number, unmasked, json, policy.as_deref(), &audit, &settings).await
        }
        Command::Tasks(TasksCommand::List { kind, state, limit, json }) => matching::tasks_list(kind, state, limit, json, &settings).await,
        Command::Tasks(TasksCommand::Show { id, json }) => matching::tasks_show(&id, json, &settings).await,
        Command::Workbench(args) => matching::workbench(&args, &settings).await,
        Command::Tasks(TasksCommand::Assign { id, to, audit, apply }) => {
            let payload = serde_json::json!({"task_id": id, "action": "assign", "assignee": to});
            matching::tasks_act(payload, &audit, &apply, &settings).await
        }
        Command::Tasks(TasksCommand::Resolve { id, outcome, reason, decided_on, household, audit, apply }) => {
            let mut payload = serde_json::json!({"task_id": id, "action": "resolve", "outcome": outcome, "reason": reason});
            if let Some(d) = decided_on {
                payload["decided_on"] = serde_json::json!(d.to_string());
            }
            if let Some(path) = household {
                payload["household"] = matching::read_json_file(&path).map_err(|f| f.context("--household"))?;
            }
            matching::tasks_act(payload, &audit, &apply, &settings).await
        }
        // Deliver: agencies' entitlements out, acknowledgements in.
        Command::Deliver(args) => deliver::deliver(&args, &settings).await,
        Command::Acks(args) => deliver::acks(&args, &settings).await,
        Command::Deliveries(DeliveriesCommand::Pending { agency, older_than, limit, json }) => {
            deliver::pending(agency.as_deref(), older_than, limit, json, &settings).await
        }
        Command::Reconcile { date, no_kafka, json, topics } => deliver::reconcile(date, no_kafka, json, &topics, &settings).await,
        // Ops: the servers, topics, lag.
        Command::Doctor { no_kafka, json } => ops::doctor(no_kafka, json, &settings).await,
        Command::Config(ConfigCommand::Check) => ops::config_check(&settings),
        Command::Acl(AclCommand::Plan { source, json }) => ops::acl_plan(&source, json),
        Command::Acl(AclCommand::Apply { source, dry_run, bootstrap_server, json, audit }) => {
            ops::acl_apply(&source, bootstrap_server.as_deref(), dry_run, json, &audit, &settings).await
        }
        Command::Audit(AuditCommand::Verify) => tools::audit_verify(&settings).await,
        Command::Audit(AuditCommand::List { since, actor, person, json }) => {
            tools::audit_list(since.as_deref(), actor.as_deref(), person.as_deref(), json, &settings).await
        }
        Command::Topics(TopicsCommand::Apply { schemas, replication }) => ops::topics_apply(&schemas, replication, &settings).await,
        Command::Tap { topic, follow, limit, schemas, unmasked, audit } => {
            let unmasked = if unmasked { Some(&audit) } else { None };
            ops::tap(&topic, follow, limit, &schemas, unmasked, &settings).await
        }
        Command::Lag(args) => ops::lag(args, &settings).await,
        // Tools: no server needed.
        Command::Assess { date, policy, explain, household } => tools::assess(date, policy.as_deref(), explain, &household),
        Command::Policy(PolicyCommand::Check { policy, json }) => tools::policy_check(policy.as_deref(), json),
        Command::Schemas(command) => tools::schemas(command),
        Command::Id { unmasked, ids, audit } => tools::id(unmasked, &ids, &audit, &settings).await,
    }
}
