//! The command line: every subcommand and its arguments, as clap structs. Nothing here runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "doudi", version, about = "兜底 doudi — the social-assistance data exchange of 吉民发〔2019〕38号")]
pub(crate) struct Cli {
    /// Settings file (TOML: Kafka, database, logs, keys). Every field can also be set by a DOUDI_*
    /// environment variable.
    #[arg(long, global = true, env = "DOUDI_CONFIG")]
    pub(crate) settings: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Check that the database and the Kafka broker are reachable and work, end to end.
    Doctor {
        /// Skip the Kafka round trip (database only).
        #[arg(long)]
        no_kafka: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Assess one household on a date with the policy engine and print the decision as JSON.
    Assess {
        /// Assessment date, YYYY-MM-DD.
        #[arg(long)]
        date: chrono::NaiveDate,
        /// Policy parameter file (default: the shipped policy/jilin.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Add a step-by-step explanation in Chinese, fit to show a caseworker or an applicant.
        #[arg(long)]
        explain: bool,
        /// Household JSON file (docs/policy.md §4), or - for standard input.
        household: PathBuf,
    },
    /// Policy parameter tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run a connector: a department feed into its validated topic, exactly once.
    Connect(ConnectArgs),
    /// Kafka topics from the catalogue.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Topic catalogue and JSON Schema tools.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Broker access control from the topic catalogue: what each principal may do (least privilege).
    #[command(subcommand)]
    Acl(AclCommand),
    /// The tamper-evident audit log of unmasked access and administrative actions.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Dead letters: what the connectors refused, and why.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Consumer lag per group, topic and partition: offsets, lag, time lag and Burrow's status
    /// (OK, WARN, REWIND, STALL, STOP, ERR). Exit 1 when a group is not OK.
    Lag(LagArgs),
    /// Run the matching service: apply the inbound topics to the shared recipient database (one
    /// transaction per batch), re-assess households and publish their changes through the outbox.
    Match(MatchArgs),
    /// The shared recipient database.
    #[command(subcommand)]
    Recipients(RecipientsCommand),
    /// Review tasks for caseworkers (identity conflicts, refused referrals, deceased members,
    /// periodic reviews), oldest first, the person masked.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// The caseworkers' workbench: a web application in Chinese (task queue, task pages with the
    /// resolution form, recipient lookup, dead letters, deliveries, audit log), local accounts.
    Workbench(WorkbenchArgs),
    /// Deliver an agency's entitlement events to a sink (`connectors/<agency>-out.toml`): an HTTP
    /// webhook or a table (a daemon), or the daily file of --date (a batch run).
    Deliver(DeliverArgs),
    /// Record agencies' acknowledgements from the ack topic and the HTTP callback (`POST /v1/acks`),
    /// and serve the delivery gauges on the ops port.
    Acks(AcksArgs),
    /// Delivery state of entitlement events.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Control totals of a day's entitlement events per agency, kind and change (counts and sums of
    /// amounts): in the database, published, delivered and acknowledged. Exit 1 on any mismatch.
    Reconcile {
        /// The day (China Standard Time), YYYY-MM-DD.
        #[arg(long)]
        date: chrono::NaiveDate,
        /// Count what the outbox marked sent instead of reading the topics back (a delivery whose
        /// outbox row was pruned after it was sent counts as published).
        #[arg(long)]
        no_kafka: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        topics: TopicAffixes,
    },
    /// Dynamic management: re-evaluate exactly the households whose facts cross a date boundary on
    /// --date (birthdays at the ages the rules use, residence permits, windows of refusals and
    /// medical settlements) or whose periodic review is due (with a `periodic_review_due` task), and
    /// publish the deltas. Run daily. Prints a JSON summary.
    Review {
        /// The day to review, YYYY-MM-DD (default: today in China Standard Time).
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
        #[command(flatten)]
        run: ReevaluateArgs,
    },
    /// Print a live view of a topic with personal data masked.
    Tap {
        #[arg(long)]
        topic: String,
        /// Keep waiting for new records.
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Schema folder with topics.toml (which topics are restricted).
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Show the records as they are (personal data: do not log or share the output). Needs
        /// --actor and --purpose; each person shown is recorded in the audit log before the output.
        #[arg(long, conflicts_with = "follow")]
        unmasked: bool,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Check and describe resident ID numbers (GB 11643); prints one JSON object per argument.
    Id {
        /// Show the numbers unmasked (the output is then personal data: do not log or share it).
        /// Needs --actor and --purpose; recorded in the audit log.
        #[arg(long)]
        unmasked: bool,
        #[command(flatten)]
        audit: AuditArgs,
        /// ID numbers (18 characters, or legacy 15 digits).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ConnectArgs {
    #[command(subcommand)]
    pub(crate) action: Option<ConnectAction>,
    /// Connector config, e.g. connectors/edu-student.toml.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Process this file and exit (with --once), printing a JSON summary.
    #[arg(long)]
    pub(crate) input: Option<PathBuf>,
    /// Process --input once and exit instead of running as a daemon.
    #[arg(long, requires = "input")]
    pub(crate) once: bool,
    /// Schema folder with topics.toml.
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum ConnectAction {
    /// Check a connector config without running it.
    Validate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
    },
    /// Run the mapping on the fixture input beside the config and compare with the expected
    /// records and dead letters (no Kafka needed).
    Test {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Write the current output as the expected files instead of comparing.
        #[arg(long)]
        update: bool,
    },
    /// Release roster removals held back because too much of the roster vanished at once.
    Confirm {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

#[derive(clap::Args)]
pub(crate) struct MatchArgs {
    /// Consumer group; the stored offsets are kept per group.
    #[arg(long, default_value = "doudi-matcher")]
    pub(crate) group: String,
    /// Exit once every partition is caught up and the outbox is published (batch runs, demo, tests).
    #[arg(long)]
    pub(crate) until_idle: bool,
    /// Policy parameter file (default: the shipped policy/jilin.toml).
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    /// Most events per batch (one database transaction).
    #[arg(long, default_value_t = 500)]
    pub(crate) batch_size: usize,
    /// Longest wait to fill a batch.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub(crate) batch_wait: std::time::Duration,
    /// With --until-idle: how long without a new event before checking that every partition is read.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) idle_after: std::time::Duration,
    /// Sent outbox rows written longer ago than this are deleted (checked every 10 minutes). Keep
    /// it longer than the reconciliation window.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub(crate) outbox_retention: std::time::Duration,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(clap::Args)]
pub(crate) struct DeliverArgs {
    /// Delivery config, e.g. connectors/housing-out.toml.
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Exit once every partition has been read to its end (HTTP and table sinks).
    #[arg(long)]
    pub(crate) until_idle: bool,
    /// File sinks: the day to export (China Standard Time; default today).
    #[arg(long, conflicts_with = "yesterday")]
    pub(crate) date: Option<chrono::NaiveDate>,
    /// File sinks: export yesterday (China Standard Time), as the nightly CronJob does.
    #[arg(long)]
    pub(crate) yesterday: bool,
    /// With --until-idle: how long without a new event before checking the partitions' ends.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) idle_after: std::time::Duration,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(clap::Args)]
pub(crate) struct AcksArgs {
    /// Serve the HTTP callback here (default: only the ack topic is read).
    #[arg(long)]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// An agency's callback token, as AGENCY=ENV_VAR (the variable holds the token). Repeatable.
    #[arg(long = "token", value_name = "AGENCY=ENV_VAR")]
    pub(crate) tokens: Vec<String>,
    #[arg(long, default_value = "doudi-acks")]
    pub(crate) group: String,
    /// Exit when no acknowledgement arrived for this long (tests, batch runs).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) until_idle: Option<std::time::Duration>,
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(Subcommand)]
pub(crate) enum DeliveriesCommand {
    /// Entitlement events not applied yet (pending, delivered or failed), oldest first, masked.
    /// Exit 1 when any is listed.
    Pending {
        #[arg(long)]
        agency: Option<String>,
        /// Only events older than this (e.g. 24h).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Show at most this many (the count of all is printed at the end).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TasksCommand {
    /// The tasks, oldest first: a table, or with --json one JSON object per line and task (id,
    /// kind, state, household_id, person masked, region, created_on, age_days, rule).
    List {
        /// Only this kind, e.g. identity_conflict, cancel_dibao_refused_referrals, deceased_member.
        #[arg(long)]
        kind: Option<String>,
        /// Only this state (open, in_progress, resolved, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One task: what to check, its deadline, its history, the facts held for it (sources, never
    /// values) and the outcomes that resolve it. The person is masked.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Assign a task to a caseworker (open or in progress → in progress). Stored, published and
    /// audited with the actor.
    Assign {
        id: String,
        /// The caseworker it goes to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        audit: AuditArgs,
        #[command(flatten)]
        apply: TaskApplyArgs,
    },
    /// Resolve a task with an outcome of its kind: identity_conflict same_person | different_person;
    /// cancel_dibao_refused_referrals confirmed | not_confirmed; deceased_member and
    /// periodic_review_due reviewed. The household is re-assessed and the deltas published.
    Resolve {
        id: String,
        #[arg(long)]
        outcome: String,
        /// The finding, in the caseworker's words (stored with the task and sent to the case
        /// systems; never logged).
        #[arg(long)]
        reason: String,
        /// The date the finding holds from (default: today).
        #[arg(long)]
        decided_on: Option<chrono::NaiveDate>,
        /// reviewed: the household as corrected, a dept.civil.household.v1 record in a JSON file.
        #[arg(long)]
        household: Option<PathBuf>,
        #[command(flatten)]
        audit: AuditArgs,
        #[command(flatten)]
        apply: TaskApplyArgs,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct WorkbenchArgs {
    #[command(subcommand)]
    pub(crate) action: Option<WorkbenchAction>,
    /// Serve the workbench here.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub(crate) listen: std::net::SocketAddr,
    /// The local accounts (TOML: [[account]] user, password (an Argon2id hash), role
    /// caseworker|supervisor|auditor, counties). docs/security.md, Workbench.
    #[arg(long, env = "DOUDI_WORKBENCH_ACCOUNTS")]
    pub(crate) accounts: Option<PathBuf>,
    /// Minutes of inactivity after which a session ends.
    #[arg(long, default_value_t = 30)]
    pub(crate) idle_minutes: u64,
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(Subcommand)]
pub(crate) enum WorkbenchAction {
    /// Print the Argon2id hash of the password read from standard input, for the accounts file.
    HashPassword,
}

/// What acting on a task needs besides the task.
#[derive(clap::Args)]
pub(crate) struct TaskApplyArgs {
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    /// Leave the deltas in the outbox for the running matcher's relay instead of publishing them.
    #[arg(long)]
    pub(crate) no_publish: bool,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(Subcommand)]
pub(crate) enum RecipientsCommand {
    /// A person's household, current decision with its explanation, entitlements, review tasks and
    /// the facts behind them with their sources. Masked unless --unmasked (that use is logged).
    Show {
        /// Resident ID number.
        id_number: String,
        /// Show ID numbers, names and fact values in full. Needs --actor and --purpose; recorded in
        /// the audit log.
        #[arg(long)]
        unmasked: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters (masked): reason, file, sheet, row and column.
    List {
        /// The topic the records were meant for (or its dlq.* topic).
        #[arg(long)]
        topic: String,
        /// Only dead letters since this time: RFC 3339 (2019-12-01T00:00:00Z) or an age (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Show the original rows as the department sent them (personal data), to correct them.
        /// Needs --actor and --purpose; each person shown is recorded in the audit log first.
        #[arg(long)]
        unmasked: bool,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Re-submit corrected records through the feed's own connector (mapping, validation,
    /// exactly once). Rows still wrong go back to the dead-letter topic with their reason; the same
    /// file submitted twice produces nothing the second time. Exit 1 when any row was refused.
    Replay {
        /// The topic the records were meant for (or its dlq.* topic).
        #[arg(long)]
        topic: String,
        /// Corrected records: JSON Lines (or a JSON array), one object per row, keyed by the feed's
        /// own column or field names as `dlq list` shows them.
        #[arg(long)]
        input: PathBuf,
        /// The connector to use when several write the topic (its `connector.name`).
        #[arg(long)]
        connector: Option<String>,
        #[arg(long, default_value = "connectors")]
        connectors: PathBuf,
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct LagArgs {
    #[command(subcommand)]
    pub(crate) command: Option<LagCommand>,
    /// Only this group (repeatable).
    #[arg(long)]
    pub(crate) group: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Re-evaluate every --interval until interrupted.
    #[arg(long)]
    pub(crate) watch: bool,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) interval: std::time::Duration,
    #[command(flatten)]
    pub(crate) evaluation: LagEvaluation,
}

#[derive(clap::Args, Clone)]
pub(crate) struct LagEvaluation {
    /// Commits per partition in the evaluation window (Burrow's default is 10).
    #[arg(long, default_value_t = 10)]
    pub(crate) window: usize,
    /// A partition with lag is STOP only after at least this long without a commit.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) stop_after: std::time::Duration,
}

#[derive(Subcommand)]
pub(crate) enum LagCommand {
    /// Serve Prometheus metrics (doudi_consumergroup_*) and the HTML status page.
    Serve {
        /// Address to listen on (default: http.bind and http.port of the settings).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[command(flatten)]
        evaluation: LagEvaluation,
    },
}

#[derive(Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create every catalogue topic that does not exist yet (partitions, cleanup, retention).
    Apply {
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Replication factor (1 for a single development broker; 3 in production).
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

/// Who does an audited action, and why (docs/security.md, "The audit log").
#[derive(clap::Args, Clone, Default)]
pub(crate) struct AuditArgs {
    /// Who acts, as the deployment's identity system names them (default: audit.actor of the
    /// settings, DOUDI_AUDIT_ACTOR). Recorded in the audit log.
    #[arg(long)]
    pub(crate) actor: Option<String>,
    /// Why, recorded in the audit log (required for unmasked access to personal data).
    #[arg(long)]
    pub(crate) purpose: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole audit log: numbering, each entry's link to the one before and its MAC.
    /// Exit 1 naming the first bad entry.
    Verify,
    /// Audit log entries, oldest first.
    List {
        /// Only entries since this time: RFC 3339 or an age (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this actor's entries.
        #[arg(long)]
        actor: Option<String>,
        /// Only entries about this person (the ID number is hashed with the audit key; the log never holds it).
        #[arg(long)]
        person: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AclCommand {
    /// Print the ACLs every principal needs: as `kafka-acls` commands, or JSON with --json (one
    /// array of {principal, operation, resource_type, resource, pattern}).
    Plan {
        #[command(flatten)]
        source: AclSource,
        #[arg(long)]
        json: bool,
    },
    /// Make the broker's ACLs equal to the plan: add what is missing, remove everything else, and
    /// print the difference. Logs in as the broker's super user with mutual TLS (the settings'
    /// kafka.options: security.protocol = SSL, ssl.ca.location, ssl.certificate.location,
    /// ssl.key.location).
    Apply {
        #[command(flatten)]
        source: AclSource,
        /// Print the difference only.
        #[arg(long)]
        dry_run: bool,
        /// The broker's mutual-TLS listener (default: the first of kafka.bootstrap_servers).
        #[arg(long)]
        bootstrap_server: Option<String>,
        /// Print the difference as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

#[derive(clap::Args)]
pub(crate) struct AclSource {
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    /// The connector configs (each `[connector]` gets its principal and transactional ids).
    #[arg(long, default_value = "connectors")]
    pub(crate) connectors: PathBuf,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(Subcommand)]
pub(crate) enum SchemasCommand {
    /// Check every schema, example, fixture and the catalogue, and refuse breaking changes to
    /// published versions. Exit 1 on any problem.
    Check {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Validate data payloads, one JSON object per line, against a topic's schema. Exit 1 when any
    /// line is invalid; each error is printed with its line number and JSON pointer.
    Validate {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// Topic whose schema applies, e.g. dept.edu.student.v1.
        #[arg(long)]
        topic: String,
        /// JSON Lines file, or - for standard input.
        file: PathBuf,
    },
    /// Record the current schemas as published (schemas.lock.json). Refused while a check fails.
    Publish {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Print the topic catalogue as Markdown (docs/topics.md).
    Docs {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

/// Topic names of a staging environment or a test: `prefix + catalogue name + suffix`.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct TopicAffixes {
    /// Prefix of every topic name (staging environments, tests).
    #[arg(long, default_value = "")]
    pub(crate) topic_prefix: String,
    /// Suffix of every topic name (staging environments, tests).
    #[arg(long, default_value = "")]
    pub(crate) topic_suffix: String,
}

impl TopicAffixes {
    pub(crate) fn affixes(&self) -> doudi::topics::Affixes {
        doudi::topics::Affixes::new(&self.topic_prefix, &self.topic_suffix)
    }
}

/// What re-evaluating households without an inbound event needs (policy apply, review).
#[derive(clap::Args)]
pub(crate) struct ReevaluateArgs {
    #[arg(long, default_value = "schemas")]
    pub(crate) schemas: PathBuf,
    /// Households per database transaction.
    #[arg(long, default_value_t = 1000)]
    pub(crate) chunk_size: usize,
    /// Leave the deltas in the outbox for the running matcher's relay instead of publishing them.
    #[arg(long)]
    pub(crate) no_publish: bool,
    #[command(flatten)]
    pub(crate) topics: TopicAffixes,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print every region and year with the S1 and S2 bounds; exit 1 on any violation.
    Check {
        /// Policy parameter file (default: the shipped policy/jilin.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record a new parameter version (after `policy check`), re-evaluate every household of the
    /// regions it changes as of its effective date, and publish only the resulting deltas. Applying
    /// the same version again does nothing. Prints a JSON summary.
    Apply {
        /// The new policy parameter file.
        #[arg(long)]
        policy: PathBuf,
        #[command(flatten)]
        run: ReevaluateArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// The policy versions recorded, newest first.
    Versions,
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load and check the configuration, then print it with secrets redacted.
    Check,
}
