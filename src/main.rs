//! The `doudi` binary: one process per role, chosen by subcommand. Exit codes are decided here only:
//! 0 success; 1 the command ran and found a problem (invalid data, a failed check); 2 bad usage or
//! configuration; 3 an infrastructure failure (database, broker, file system).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use doudi::config::Settings;

/// mimalloc: the matcher's and the policy re-evaluation's work allocates and frees many small
/// strings and JSON values; glibc's allocator spent a third of the process's time there
/// (BENCHMARKS.md, runs 6–7).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes to standard output. When the reader has gone away (`doudi … | head`), the process ends
/// quietly with status 141, as one killed by SIGPIPE would, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(141)
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => {
        out!("\n")
    };
    ($($arg:tt)*) => {
        out!("{}\n", format_args!($($arg)*))
    };
}

#[derive(Parser)]
#[command(name = "doudi", version, about = "兜底 doudi — the social-assistance data exchange of 吉民发〔2019〕38号")]
struct Cli {
    /// Settings file (TOML: Kafka, database, logs, keys). Every field can also be set by a DOUDI_*
    /// environment variable.
    #[arg(long, global = true, env = "DOUDI_CONFIG")]
    settings: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Household JSON file (POLICY.md §4), or - for standard input.
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
    },
    /// Check and describe resident ID numbers (GB 11643); prints one JSON object per argument.
    Id {
        /// Show the numbers unmasked (the output is then personal data: do not log or share it).
        #[arg(long)]
        unmasked: bool,
        /// ID numbers (18 characters, or legacy 15 digits).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ConnectArgs {
    #[command(subcommand)]
    action: Option<ConnectAction>,
    /// Connector config, e.g. connectors/edu-student.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Process this file and exit (with --once), printing a JSON summary.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Process --input once and exit instead of running as a daemon.
    #[arg(long, requires = "input")]
    once: bool,
    /// Schema folder with topics.toml.
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
}

#[derive(Subcommand)]
enum ConnectAction {
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
    },
}

#[derive(clap::Args)]
struct MatchArgs {
    /// Consumer group; the stored offsets are kept per group.
    #[arg(long, default_value = "doudi-matcher")]
    group: String,
    /// Exit once every partition is caught up and the outbox is published (batch runs, demo, tests).
    #[arg(long)]
    until_idle: bool,
    /// Policy parameter file (default: the shipped policy/jilin.toml).
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Most events per batch (one database transaction).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Longest wait to fill a batch.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    batch_wait: std::time::Duration,
    /// With --until-idle: how long without a new event before checking that every partition is read.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    idle_after: std::time::Duration,
    /// Sent outbox rows written longer ago than this are deleted (checked every 10 minutes). Keep
    /// it longer than the reconciliation window.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    outbox_retention: std::time::Duration,
    #[command(flatten)]
    topics: TopicAffixes,
}

#[derive(clap::Args)]
struct DeliverArgs {
    /// Delivery config, e.g. connectors/housing-out.toml.
    #[arg(long)]
    config: PathBuf,
    /// Exit once every partition has been read to its end (HTTP and table sinks).
    #[arg(long)]
    until_idle: bool,
    /// File sinks: the day to export (China Standard Time; default today).
    #[arg(long, conflicts_with = "yesterday")]
    date: Option<chrono::NaiveDate>,
    /// File sinks: export yesterday (China Standard Time), as the nightly CronJob does.
    #[arg(long)]
    yesterday: bool,
    /// With --until-idle: how long without a new event before checking the partitions' ends.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    idle_after: std::time::Duration,
    #[command(flatten)]
    topics: TopicAffixes,
}

#[derive(clap::Args)]
struct AcksArgs {
    /// Serve the HTTP callback here (default: only the ack topic is read).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// An agency's callback token, as AGENCY=ENV_VAR (the variable holds the token). Repeatable.
    #[arg(long = "token", value_name = "AGENCY=ENV_VAR")]
    tokens: Vec<String>,
    #[arg(long, default_value = "doudi-acks")]
    group: String,
    /// Exit when no acknowledgement arrived for this long (tests, batch runs).
    #[arg(long, value_parser = humantime::parse_duration)]
    until_idle: Option<std::time::Duration>,
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    #[command(flatten)]
    topics: TopicAffixes,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
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
enum RecipientsCommand {
    /// A person's household, current decision with its explanation, entitlements, review tasks and
    /// the facts behind them with their sources. Masked unless --unmasked (that use is logged).
    Show {
        /// Resident ID number.
        id_number: String,
        /// Show ID numbers, names and fact values in full. Recorded in the access log.
        #[arg(long)]
        unmasked: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
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
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct LagArgs {
    #[command(subcommand)]
    command: Option<LagCommand>,
    /// Only this group (repeatable).
    #[arg(long)]
    group: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Re-evaluate every --interval until interrupted.
    #[arg(long)]
    watch: bool,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    #[command(flatten)]
    evaluation: LagEvaluation,
}

#[derive(clap::Args, Clone)]
struct LagEvaluation {
    /// Commits per partition in the evaluation window (Burrow's default is 10).
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// A partition with lag is STOP only after at least this long without a commit.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    stop_after: std::time::Duration,
}

#[derive(Subcommand)]
enum LagCommand {
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
enum TopicsCommand {
    /// Create every catalogue topic that does not exist yet (partitions, cleanup, retention).
    Apply {
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Replication factor (1 for a single development broker; 3 in production).
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
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
struct TopicAffixes {
    /// Prefix of every topic name (staging environments, tests).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Suffix of every topic name (staging environments, tests).
    #[arg(long, default_value = "")]
    topic_suffix: String,
}

impl TopicAffixes {
    fn name(&self, catalogue: &str) -> String {
        format!("{}{catalogue}{}", self.topic_prefix, self.topic_suffix)
    }
}

/// What re-evaluating households without an inbound event needs (policy apply, review).
#[derive(clap::Args)]
struct ReevaluateArgs {
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Households per database transaction.
    #[arg(long, default_value_t = 1000)]
    chunk_size: usize,
    /// Leave the deltas in the outbox for the running matcher's relay instead of publishing them.
    #[arg(long)]
    no_publish: bool,
    #[command(flatten)]
    topics: TopicAffixes,
}

#[derive(Subcommand)]
enum PolicyCommand {
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
    },
    /// The policy versions recorded, newest first.
    Versions,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and check the configuration, then print it with secrets redacted.
    Check,
}

/// Exit codes, in one place.
mod exit {
    pub const FOUND_PROBLEM: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INFRASTRUCTURE: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.settings.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    doudi::telemetry::init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("doudi: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    runtime.block_on(run(cli.command, settings))
}

async fn run(command: Command, settings: Settings) -> ExitCode {
    match command {
        Command::Config(ConfigCommand::Check) => {
            outln!("{settings:#?}");
            ExitCode::SUCCESS
        }
        Command::Assess { date, policy, explain, household } => assess(date, policy, explain, &household),
        Command::Policy(PolicyCommand::Check { policy, json }) => {
            let params = match load_policy(policy.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let rows = doudi::policy::check::check(&params);
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                out!("{}", doudi::policy::check::render(&rows));
            }
            let violations = rows.iter().filter(|r| !r.ok).count();
            if violations > 0 {
                eprintln!("doudi: {violations} violation(s) of S1/S2 in {}", params.policy.version);
                ExitCode::from(exit::FOUND_PROBLEM)
            } else {
                eprintln!("doudi: policy {} version {}: {} checks passed", params.policy.id, params.policy.version, rows.len());
                ExitCode::SUCCESS
            }
        }
        Command::Policy(PolicyCommand::Apply { policy, run }) => policy_apply(&policy, &run, &settings).await,
        Command::Policy(PolicyCommand::Versions) => policy_versions(&settings).await,
        Command::Review { date, run } => review(date, &run, &settings).await,
        Command::Deliver(args) => deliver(&args, &settings).await,
        Command::Acks(args) => acks(&args, &settings).await,
        Command::Deliveries(DeliveriesCommand::Pending { agency, older_than, limit, json }) => {
            deliveries_pending(agency.as_deref(), older_than, limit, json, &settings).await
        }
        Command::Reconcile { date, no_kafka, json, topics } => reconcile(date, no_kafka, json, &topics, &settings).await,
        Command::Schemas(command) => schemas(command),
        Command::Connect(args) => connect(args, &settings).await,
        Command::Tap { topic, follow, limit } => {
            let result = doudi::tap::read(&settings.kafka, &topic, None, limit, follow, &mut |t| {
                outln!("{}", serde_json::to_string(&t).unwrap_or_default());
            })
            .await;
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("doudi: {e}");
                    ExitCode::from(exit::INFRASTRUCTURE)
                }
            }
        }
        Command::Lag(args) => lag(args, &settings).await,
        Command::Match(args) => run_matcher(args, &settings).await,
        Command::Recipients(RecipientsCommand::Show { id_number, unmasked, json, policy }) => {
            recipients_show(&id_number, unmasked, json, policy.as_deref(), &settings).await
        }
        Command::Dlq(DlqCommand::Replay { topic, input, connector, connectors, schemas }) => {
            dlq_replay(&topic, &input, connector.as_deref(), &connectors, &schemas, &settings).await
        }
        Command::Dlq(DlqCommand::List { topic, since, limit, json }) => {
            let topic = if topic.starts_with("dlq.") { topic } else { format!("dlq.{topic}") };
            let since_ms = match since.as_deref().map(parse_since).transpose() {
                Ok(ms) => ms,
                Err(message) => {
                    eprintln!("doudi: --since: {message}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            if !json {
                outln!("{:<8} {:<6} {:<12} {:<10} {:<14} {:<24} reason", "offset", "row", "error_code", "stage", "column", "file");
            }
            let result = doudi::tap::read(&settings.kafka, &topic, since_ms, limit, false, &mut |t| {
                let h = |k: &str| t.headers.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                if json {
                    let record = serde_json::json!({
                        "topic": h("topic"), "error_code": h("error_code"), "stage": h("stage"), "reason": h("reason"),
                        "source": {"file": h("source_file"), "file_sha256": h("source_sha256"), "sheet": h("source_sheet"),
                                   "row": h("source_row").parse::<u64>().ok(), "column": h("source_column")},
                        "original": t.value,
                    });
                    outln!("{record}");
                } else {
                    let row =
                        if h("source_sheet").is_empty() { h("source_row") } else { format!("{}!{}", h("source_sheet"), h("source_row")) };
                    outln!(
                        "{:<8} {:<6} {:<12} {:<10} {:<14} {:<24} {}",
                        t.offset,
                        row,
                        h("error_code"),
                        h("stage"),
                        h("source_column"),
                        h("source_file"),
                        h("reason")
                    );
                }
            })
            .await;
            match result {
                Ok(n) => {
                    eprintln!("doudi: {n} dead letter(s) in {topic}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("doudi: {e}");
                    ExitCode::from(exit::INFRASTRUCTURE)
                }
            }
        }
        Command::Topics(TopicsCommand::Apply { schemas, replication }) => {
            let catalogue = match doudi::schema::Catalogue::load(&schemas) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("doudi: {e}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            match doudi::topics::apply(&settings.kafka, &catalogue, replication).await {
                Ok(applied) => {
                    let created = applied.iter().filter(|a| a.created).count();
                    for a in &applied {
                        outln!("{:<40} {}", a.topic, if a.created { "created" } else { "exists" });
                    }
                    outln!("{created} created, {} already existed", applied.len() - created);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("doudi: {e}");
                    ExitCode::from(exit::INFRASTRUCTURE)
                }
            }
        }
        Command::Id { unmasked, ids } => {
            let today = chrono::Local::now().date_naive();
            let mut all_valid = true;
            for raw in &ids {
                let report = doudi::idnum::report(raw, today, unmasked);
                all_valid &= report.valid;
                outln!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            if all_valid { ExitCode::SUCCESS } else { ExitCode::from(exit::FOUND_PROBLEM) }
        }
        Command::Doctor { no_kafka, json } => {
            let checks = doudi::doctor::run(&settings, !no_kafka).await;
            if json {
                outln!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
            } else {
                for check in &checks {
                    outln!("{:<20} {:<4} {:>6} ms  {}", check.name, if check.ok { "ok" } else { "FAIL" }, check.millis, check.detail);
                }
            }
            if checks.iter().all(|c| c.ok) { ExitCode::SUCCESS } else { ExitCode::from(exit::INFRASTRUCTURE) }
        }
    }
}

fn load_policy(path: Option<&std::path::Path>) -> Result<doudi::policy::Params, ExitCode> {
    let loaded = match path {
        Some(path) => doudi::policy::Params::load(path),
        None => doudi::policy::Params::shipped(),
    };
    loaded.map_err(|e| {
        eprintln!("doudi: {e}");
        ExitCode::from(exit::USAGE)
    })
}

fn assess(date: chrono::NaiveDate, policy: Option<PathBuf>, explain: bool, household: &std::path::Path) -> ExitCode {
    let params = match load_policy(policy.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let text = if household == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(household)
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            eprintln!("doudi: cannot read {}: {e}", household.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    match doudi::policy::assess_json(&params, &text, date) {
        Ok(mut decision) => {
            if !explain {
                decision.explanation.clear();
            }
            outln!("{}", serde_json::to_string_pretty(&decision).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            ExitCode::from(exit::FOUND_PROBLEM)
        }
    }
}

fn schemas(command: SchemasCommand) -> ExitCode {
    use doudi::schema;
    match command {
        SchemasCommand::Check { dir } => {
            let problems = schema::check(&dir);
            for p in &problems {
                outln!("{}: {}", p.file, p.message);
            }
            if problems.is_empty() {
                let count = schema::Registry::load(&dir).map(|r| (r.catalogue.topics.len(), r.schemas.len())).unwrap_or_default();
                outln!("ok: {} topics, {} schemas, examples, fixtures and published versions all pass", count.0, count.1);
                ExitCode::SUCCESS
            } else {
                eprintln!("doudi: {} problem(s) in {}", problems.len(), dir.display());
                ExitCode::from(exit::FOUND_PROBLEM)
            }
        }
        SchemasCommand::Publish { dir } => match schema::publish(&dir) {
            Ok(n) => {
                outln!("published {n} schemas to {}", dir.join(schema::LOCK_FILE).display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{}: {}", p.file, p.message);
                }
                eprintln!("doudi: nothing published");
                ExitCode::from(exit::FOUND_PROBLEM)
            }
        },
        SchemasCommand::Docs { dir } => match schema::Catalogue::load(&dir) {
            Ok(catalogue) => {
                out!("{}", catalogue.render_markdown());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("doudi: {e}");
                ExitCode::from(exit::USAGE)
            }
        },
        SchemasCommand::Validate { dir, topic, file } => {
            let registry = match schema::Registry::load(&dir) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("doudi: {e}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            let schema = match registry.for_topic(&topic) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("doudi: {e}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            let result = if file == std::path::Path::new("-") {
                schema::validate_lines(schema, std::io::stdin().lock())
            } else {
                std::fs::File::open(&file).and_then(|f| schema::validate_lines(schema, std::io::BufReader::new(f)))
            };
            match result {
                Ok((count, invalid)) => {
                    for line in &invalid {
                        for v in &line.violations {
                            outln!("{}:{}: {}", file.display(), line.line, v);
                        }
                    }
                    outln!("{count} lines, {} valid, {} invalid ({topic})", count - invalid.len(), invalid.len());
                    if invalid.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(exit::FOUND_PROBLEM) }
                }
                Err(e) => {
                    eprintln!("doudi: cannot read {}: {e}", file.display());
                    ExitCode::from(exit::INFRASTRUCTURE)
                }
            }
        }
    }
}

fn load_connector(
    config: &std::path::Path,
    schemas: &std::path::Path,
) -> Result<(doudi::connect::config::ConnectorConfig, std::sync::Arc<doudi::schema::Registry>), ExitCode> {
    let registry = doudi::schema::Registry::load(schemas).map_err(|e| {
        eprintln!("doudi: {e}");
        ExitCode::from(exit::USAGE)
    })?;
    let config = doudi::connect::config::ConnectorConfig::load(config, schemas).map_err(|e| {
        eprintln!("doudi: {e}");
        ExitCode::from(exit::USAGE)
    })?;
    Ok((config, std::sync::Arc::new(registry)))
}

/// Loads a connector config and starts its transactional producers (exit 2 on a bad config, 3
/// when Kafka cannot be reached).
async fn start_connector(
    config: &std::path::Path,
    schemas: &std::path::Path,
    settings: &Settings,
) -> Result<doudi::connect::run::Connector, ExitCode> {
    let (c, registry) = load_connector(config, schemas)?;
    doudi::connect::run::Connector::start(c, registry, settings).await.map_err(|e| {
        eprintln!("doudi: {e}");
        ExitCode::from(exit::INFRASTRUCTURE)
    })
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `http.bind`:`http.port` beside a long-running
/// command, unless the port is 0 (exit 2 when the address is bad or taken).
async fn start_ops_endpoint(settings: &Settings) -> Result<(), ExitCode> {
    if settings.http.port == 0 {
        return Ok(());
    }
    let addr = ops_address(settings)?;
    let router = doudi::http::ops_router(doudi::telemetry::metrics_handle(), Vec::new());
    match doudi::http::serve(addr, router, std::future::pending()).await {
        Ok((bound, _task)) => {
            tracing::info!(address = %bound, "serving /healthz, /readyz and /metrics");
            Ok(())
        }
        Err(e) => {
            eprintln!("doudi: http.port: cannot listen on {addr}: {e}");
            Err(ExitCode::from(exit::USAGE))
        }
    }
}

/// The address of the ops endpoint from `http.bind` and `http.port`.
fn ops_address(settings: &Settings) -> Result<std::net::SocketAddr, ExitCode> {
    format!("{}:{}", settings.http.bind, settings.http.port).parse().map_err(|e| {
        eprintln!("doudi: http.bind: {e}");
        ExitCode::from(exit::USAGE)
    })
}

async fn connect(args: ConnectArgs, settings: &Settings) -> ExitCode {
    use doudi::connect::offline;
    match args.action {
        Some(ConnectAction::Validate { config, schemas }) => match load_connector(&config, &schemas) {
            Ok((c, _)) => {
                outln!("{}: ok ({} → {}, {} fields)", config.display(), c.connector.name, c.connector.topic, c.fields.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(ConnectAction::Test { config, schemas, update }) => {
            let (c, registry) = match load_connector(&config, &schemas) {
                Ok(x) => x,
                Err(code) => return code,
            };
            match offline::test_fixtures(&c, &registry, &doudi::envelope::KeyDeriver::new(&settings.keys), update) {
                Ok(report) => {
                    outln!("{report}");
                    if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(exit::FOUND_PROBLEM) }
                }
                Err(e) => {
                    eprintln!("doudi: {e}");
                    ExitCode::from(exit::USAGE)
                }
            }
        }
        Some(ConnectAction::Confirm { config, schemas }) => match start_connector(&config, &schemas, settings).await {
            Ok(mut connector) => print_summary(connector.confirm_held().await),
            Err(code) => code,
        },
        None => {
            let Some(config) = args.config else {
                eprintln!("doudi: connect needs --config connectors/<feed>.toml");
                return ExitCode::from(exit::USAGE);
            };
            let mut connector = match start_connector(&config, &args.schemas, settings).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let (Some(input), true) = (args.input, args.once) {
                print_summary(connector.process_file(&input).await)
            } else {
                // The ops endpoint (/healthz, /readyz, /metrics) runs beside the daemon.
                if let Err(code) = start_ops_endpoint(settings).await {
                    return code;
                }
                match doudi::connect::daemon::run(connector, settings).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("doudi: {e}");
                        ExitCode::from(exit::INFRASTRUCTURE)
                    }
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn open_database(settings: &Settings) -> Result<doudi::db::Database, ExitCode> {
    doudi::db::Database::connect(&settings.database).await.map_err(|e| {
        eprintln!("doudi: {e}");
        ExitCode::from(exit::INFRASTRUCTURE)
    })
}

async fn run_matcher(args: MatchArgs, settings: &Settings) -> ExitCode {
    use doudi::matcher::{Context, MatchOptions, Outbound};
    let params = match load_policy(args.policy.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let registry = match doudi::schema::Registry::load(&args.schemas) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("doudi: --schemas: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if args.batch_size == 0 {
        eprintln!("doudi: --batch-size must be at least 1");
        return ExitCode::from(exit::USAGE);
    }
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let params = match doudi::matcher::policy_change::establish(&db, params).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    let ctx = Context {
        params: std::sync::Arc::new(params),
        keys: doudi::envelope::KeyDeriver::new(&settings.keys),
        registry: std::sync::Arc::new(registry),
        outbound: Outbound::with_affixes(&args.topics.topic_prefix, &args.topics.topic_suffix),
        today: chrono::Local::now().date_naive(),
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let options = MatchOptions {
        group: args.group.clone(),
        inbound: MatchOptions::inbound_with_affixes(&args.topics.topic_prefix, &args.topics.topic_suffix),
        batch_size: args.batch_size,
        batch_wait: args.batch_wait,
        until_idle: args.until_idle,
        idle_after: args.idle_after,
        assignment_timeout: std::time::Duration::from_secs(60),
        owner: format!("{host}/{}/{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        outbox_retention: Some(args.outbox_retention),
    };
    if !args.until_idle
        && let Err(code) = start_ops_endpoint(settings).await
    {
        return code;
    }
    let job = db.start_job("matcher", &args.group).await.ok();
    let result = doudi::matcher::run(&db, &settings.kafka, &ctx, &options, shutdown_signal()).await;
    match result {
        Ok(summary) => {
            let summary = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(id) = job {
                let _ = db.finish_job(id, "ok", &summary).await;
            }
            if args.until_idle {
                outln!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(id) = job {
                let _ = db.finish_job(id, "failed", &serde_json::json!({"error": "see the log"})).await;
            }
            tracing::error!("The matcher stopped: {e}");
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

/// The matcher's context for re-evaluations outside `doudi match`.
fn reevaluation_context(
    params: doudi::policy::Params,
    args: &ReevaluateArgs,
    settings: &Settings,
) -> Result<doudi::matcher::Context, ExitCode> {
    let registry = doudi::schema::Registry::load(&args.schemas).map_err(|e| {
        eprintln!("doudi: --schemas: {e}");
        ExitCode::from(exit::USAGE)
    })?;
    if args.chunk_size == 0 {
        eprintln!("doudi: --chunk-size must be at least 1");
        return Err(ExitCode::from(exit::USAGE));
    }
    Ok(doudi::matcher::Context {
        params: std::sync::Arc::new(params),
        keys: doudi::envelope::KeyDeriver::new(&settings.keys),
        registry: std::sync::Arc::new(registry),
        outbound: doudi::matcher::Outbound::with_affixes(&args.topics.topic_prefix, &args.topics.topic_suffix),
        today: chrono::Local::now().date_naive(),
    })
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
) -> (T, Result<u64, ExitCode>) {
    if args.no_publish {
        return (work.await, Ok(0));
    }
    let producer = match doudi::kafka::idempotent_producer(&settings.kafka) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("doudi: {e}");
            return (work.await, Err(ExitCode::from(exit::INFRASTRUCTURE)));
        }
    };
    let (out, published) = doudi::matcher::relay_during(db, &producer, work).await;
    let published = published.map_err(|e| {
        eprintln!("doudi: publishing the outbox: {e}");
        ExitCode::from(exit::INFRASTRUCTURE)
    });
    (out, published)
}

async fn policy_apply(policy: &std::path::Path, args: &ReevaluateArgs, settings: &Settings) -> ExitCode {
    let params = match load_policy(Some(policy)) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let violations = doudi::policy::check::check(&params).iter().filter(|r| !r.ok).count();
    if violations > 0 {
        eprintln!("doudi: {violations} violation(s) of S1/S2 in {}; run `doudi policy check` and fix them first", params.policy.version);
        return ExitCode::from(exit::FOUND_PROBLEM);
    }
    let ctx = match reevaluation_context(params, args, settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let (applied, published) = publishing(&db, args, settings, doudi::matcher::policy_change::apply(&db, &ctx, args.chunk_size)).await;
    let summary = match applied {
        Ok(s) => s,
        Err(e @ doudi::matcher::policy_change::PolicyChangeError::VersionReused(_)) => {
            eprintln!("doudi: --policy: {e}");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    let published = match published {
        Ok(n) => n,
        Err(code) => return code,
    };
    let mut out = serde_json::to_value(&summary).unwrap_or_default();
    if let Some(obj) = out.as_object_mut() {
        obj.insert("published".into(), published.into());
        obj.insert("seconds".into(), started.elapsed().as_secs().into());
    }
    outln!("{out}");
    ExitCode::SUCCESS
}

async fn policy_versions(settings: &Settings) -> ExitCode {
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let rows = sqlx::query(
        "SELECT version, state, effective_date, regions, households, decisions, applied_at FROM policy_versions ORDER BY applied_at DESC, version DESC",
    )
    .fetch_all(db.pool())
    .await;
    match rows {
        Ok(rows) => {
            use sqlx::Row;
            outln!(
                "{:<16} {:<9} {:<10} {:>10} {:>10} {:<28} regions",
                "version",
                "state",
                "effective",
                "households",
                "decisions",
                "applied at"
            );
            for r in rows {
                outln!(
                    "{:<16} {:<9} {:<10} {:>10} {:>10} {:<28} {}",
                    r.try_get::<String, _>("version").unwrap_or_default(),
                    r.try_get::<String, _>("state").unwrap_or_default(),
                    r.try_get::<Option<String>, _>("effective_date").ok().flatten().unwrap_or_else(|| "-".into()),
                    r.try_get::<i64, _>("households").unwrap_or_default(),
                    r.try_get::<i64, _>("decisions").unwrap_or_default(),
                    r.try_get::<String, _>("applied_at").unwrap_or_default(),
                    r.try_get::<String, _>("regions").unwrap_or_default(),
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

async fn review(date: Option<chrono::NaiveDate>, args: &ReevaluateArgs, settings: &Settings) -> ExitCode {
    use doudi::matcher::policy_change;
    let date = date.unwrap_or_else(|| doudi::db::china_date(chrono::Utc::now()));
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    // The version in force decides; the shipped file only for a database without one.
    let params = match policy_change::in_force(&db).await {
        Ok(Some((_, p))) => p,
        Ok(None) => match load_policy(None) {
            Ok(p) => p,
            Err(code) => return code,
        },
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    let ctx = match reevaluation_context(params, args, settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let work = doudi::matcher::calendar::review(&db, &ctx, date, args.chunk_size);
    let (result, published) = publishing(&db, args, settings, work).await;
    let (due, totals) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    let published = match published {
        Ok(n) => n,
        Err(code) => return code,
    };
    let out = serde_json::json!({
        "date": date,
        "households": due.households.len(),
        "by_boundary": due.counts().into_iter().map(|(k, v)| (serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(), v)).collect::<std::collections::BTreeMap<_, _>>(),
        "periodic_reviews": due.reviews.len(),
        "decisions": totals.decisions,
        "outbox": totals.outbox,
        "review_tasks": totals.review_tasks,
        "assessment_problems": totals.assessment_problems,
        "published": published,
        "seconds": started.elapsed().as_secs(),
    });
    outln!("{out}");
    ExitCode::SUCCESS
}

async fn deliver(args: &DeliverArgs, settings: &Settings) -> ExitCode {
    use doudi::deliver::config::{DeliveryConfig, Sink as SinkConfig};
    use doudi::deliver::sink::{HttpSink, Sink, TableSink};
    let config = match DeliveryConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let topic = args.topics.name(&config.topic());
    let sink = match &config.sink {
        SinkConfig::File { directory, format, encoding, file_prefix, columns } => {
            let today = doudi::db::china_date(chrono::Utc::now());
            let date = match (args.date, args.yesterday) {
                (Some(d), _) => d,
                (None, true) => today.pred_opt().unwrap_or(today),
                (None, false) => today,
            };
            let result = doudi::deliver::export::export_day(
                &db,
                &settings.kafka,
                &config.delivery.name,
                &topic,
                date,
                directory,
                file_prefix,
                *format,
                *encoding,
                columns,
            )
            .await;
            return match result {
                Ok(summary) => {
                    outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("doudi: {e}");
                    ExitCode::from(exit::INFRASTRUCTURE)
                }
            };
        }
        SinkConfig::Http { url, token_env, ca_file, timeout_secs, .. } => {
            let token = match token_env {
                Some(var) => match std::env::var(var) {
                    Ok(t) if !t.is_empty() => Some(t),
                    _ => {
                        eprintln!("doudi: {}: field `sink.token_env`: the environment variable {var} is not set", config.path.display());
                        return ExitCode::from(exit::USAGE);
                    }
                },
                None => None,
            };
            match HttpSink::new(url, token, ca_file.as_deref(), std::time::Duration::from_secs(*timeout_secs)) {
                Ok(s) => Sink::Http(s),
                Err(e) => {
                    eprintln!("doudi: {}: {e}", config.path.display());
                    return ExitCode::from(exit::USAGE);
                }
            }
        }
        SinkConfig::Table { database_url_env, table, columns } => {
            let pool = match database_url_env {
                Some(var) => {
                    let Ok(url) = std::env::var(var) else {
                        eprintln!(
                            "doudi: {}: field `sink.database_url_env`: the environment variable {var} is not set",
                            config.path.display()
                        );
                        return ExitCode::from(exit::USAGE);
                    };
                    sqlx::any::install_default_drivers();
                    match sqlx::AnyPool::connect(&url).await {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!("doudi: connecting to the agency's database failed: {e}");
                            return ExitCode::from(exit::INFRASTRUCTURE);
                        }
                    }
                }
                None => db.pool().clone(),
            };
            match TableSink::new(pool, table, columns).await {
                Ok(s) => Sink::Table(s),
                Err(e) => {
                    eprintln!("doudi: creating the agency's table {table} failed: {e}");
                    return ExitCode::from(exit::INFRASTRUCTURE);
                }
            }
        }
    };
    let (initial_backoff, max_backoff) = match &config.sink {
        SinkConfig::Http { initial_backoff_ms, max_backoff_secs, .. } => {
            (std::time::Duration::from_millis(*initial_backoff_ms), std::time::Duration::from_secs(*max_backoff_secs))
        }
        _ => (std::time::Duration::from_millis(500), std::time::Duration::from_secs(60)),
    };
    let options = doudi::deliver::DeliverOptions {
        topic,
        group: config.group(),
        until_idle: args.until_idle,
        idle_after: args.idle_after,
        initial_backoff,
        max_backoff,
    };
    if !args.until_idle
        && let Err(code) = start_ops_endpoint(settings).await
    {
        return code;
    }
    match doudi::deliver::run(&db, &settings.kafka, &config, &sink, &options, shutdown_signal()).await {
        Ok(summary) => {
            if args.until_idle {
                outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("The delivery stopped: {e}");
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

async fn acks(args: &AcksArgs, settings: &Settings) -> ExitCode {
    use doudi::deliver::acks;
    let registry = match doudi::schema::Registry::load(&args.schemas) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            eprintln!("doudi: --schemas: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let mut tokens = std::collections::BTreeMap::new();
    for t in &args.tokens {
        let Some((agency, var)) = t.split_once('=') else {
            eprintln!("doudi: --token: `{t}` is not AGENCY=ENV_VAR");
            return ExitCode::from(exit::USAGE);
        };
        if !doudi::matcher::store::AGENCIES.contains(&agency) {
            eprintln!("doudi: --token: `{agency}` is not an agency ({})", doudi::matcher::store::AGENCIES.join(", "));
            return ExitCode::from(exit::USAGE);
        }
        match std::env::var(var) {
            Ok(token) if token.len() >= 16 => {
                tokens.insert(agency.to_string(), token);
            }
            _ => {
                eprintln!("doudi: --token: the environment variable {var} must hold a token of at least 16 characters");
                return ExitCode::from(exit::USAGE);
            }
        }
    }
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    if args.until_idle.is_none()
        && let Err(code) = start_ops_endpoint(settings).await
    {
        return code;
    }
    if let Some(addr) = args.listen {
        let state = acks::CallbackState { db: db.clone(), registry: registry.clone(), tokens: std::sync::Arc::new(tokens) };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("doudi: --listen {addr}: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        };
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, acks::router(state)).await {
                tracing::error!("The acknowledgement callback stopped: {e}");
            }
        });
    }
    let gauges_db = db.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = acks::refresh_gauges(&gauges_db).await {
                tracing::warn!("Refreshing the delivery gauges failed: {e}");
            }
            tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        }
    });
    let topic = args.topics.name(acks::ACK_TOPIC);
    match acks::consume(&db, &settings.kafka, &registry, &topic, &args.group, args.until_idle, shutdown_signal()).await {
        Ok(read) => {
            if args.until_idle.is_some() {
                outln!("{}", serde_json::json!({"read": read}));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("Recording acknowledgements stopped: {e}");
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

async fn deliveries_pending(
    agency: Option<&str>,
    older_than: std::time::Duration,
    limit: usize,
    json: bool,
    settings: &Settings,
) -> ExitCode {
    if let Some(a) = agency
        && !doudi::matcher::store::AGENCIES.contains(&a)
    {
        eprintln!("doudi: --agency: `{a}` is not an agency ({})", doudi::matcher::store::AGENCIES.join(", "));
        return ExitCode::from(exit::USAGE);
    }
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let (total, rows) = match doudi::deliver::report::pending(&db, agency, older_than, limit).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    if json {
        for r in &rows {
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        outln!(
            "{:<10} {:<26} {:<8} {:<20} {:<24} {:<10} {:<9} {:>6} {:>8}  last error",
            "agency",
            "kind",
            "change",
            "person",
            "household",
            "effective",
            "state",
            "age h",
            "attempts"
        );
        for r in &rows {
            outln!(
                "{:<10} {:<26} {:<8} {:<20} {:<24} {:<10} {:<9} {:>6} {:>8}  {}",
                r.agency,
                r.kind,
                r.change,
                r.person,
                r.household_id,
                r.effective_date,
                r.state,
                r.age_hours,
                r.attempts,
                r.last_error.as_deref().unwrap_or("")
            );
        }
    }
    eprintln!(
        "doudi: {total} entitlement event(s) not applied{}{}",
        if (rows.len() as u64) < total { format!(" (the oldest {} shown)", rows.len()) } else { String::new() },
        if older_than.is_zero() { String::new() } else { format!(" after {}", humantime::format_duration(older_than)) }
    );
    if total == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::FOUND_PROBLEM) }
}

async fn reconcile(date: chrono::NaiveDate, no_kafka: bool, json: bool, affixes: &TopicAffixes, settings: &Settings) -> ExitCode {
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let published = if no_kafka {
        None
    } else {
        let topics: Vec<String> =
            doudi::matcher::store::AGENCIES.iter().map(|a| affixes.name(&doudi::matcher::store::agency_topic(a))).collect();
        let kafka = settings.kafka.clone();
        match tokio::task::spawn_blocking(move || doudi::deliver::report::published_ids(&kafka, &topics, date)).await {
            Ok(Ok(ids)) => Some(ids),
            Ok(Err(e)) => {
                eprintln!("doudi: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
            Err(e) => {
                eprintln!("doudi: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        }
    };
    let lines = match doudi::deliver::report::reconcile(&db, date, published.as_ref()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&lines).unwrap_or_default());
    } else {
        outln!(
            "{:<10} {:<26} {:<8} {:>16} {:>16} {:>16} {:>16}  ",
            "agency",
            "kind",
            "change",
            "database",
            "published",
            "delivered",
            "acknowledged"
        );
        for l in &lines {
            let cell = |t: &doudi::deliver::report::Total| format!("{} / {}", t.count, t.amount);
            outln!(
                "{:<10} {:<26} {:<8} {:>16} {:>16} {:>16} {:>16}  {}",
                l.agency,
                l.kind,
                l.change,
                cell(&l.database),
                cell(&l.published),
                cell(&l.delivered),
                cell(&l.acknowledged),
                if l.agrees { "ok" } else { "MISMATCH" }
            );
        }
    }
    let mismatches = lines.iter().filter(|l| !l.agrees).count();
    if mismatches > 0 {
        eprintln!("doudi: {date}: {mismatches} of {} line(s) do not agree (count / sum of yearly amounts)", lines.len());
        ExitCode::from(exit::FOUND_PROBLEM)
    } else {
        eprintln!("doudi: {date}: all {} line(s) agree", lines.len());
        ExitCode::SUCCESS
    }
}

async fn recipients_show(raw: &str, unmasked: bool, json: bool, policy: Option<&std::path::Path>, settings: &Settings) -> ExitCode {
    let id = match doudi::idnum::IdNumber::parse(raw) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("doudi: ID_NUMBER: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let params = match load_policy(policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let db = match open_database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let actor = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    match doudi::matcher::show::report(&db, &params, &id, unmasked, &actor).await {
        Ok(Some(report)) => {
            if json {
                outln!("{report}");
            } else {
                out!("{}", doudi::matcher::show::render_text(&report));
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("doudi: no person {} in the recipient database", id.masked());
            ExitCode::from(exit::FOUND_PROBLEM)
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

async fn dlq_replay(
    topic: &str,
    input: &std::path::Path,
    connector: Option<&str>,
    connectors: &std::path::Path,
    schemas: &std::path::Path,
    settings: &Settings,
) -> ExitCode {
    let config = match doudi::connect::replay::find_config(connectors, schemas, topic, connector) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("doudi: {message}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let body = match std::fs::read(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("doudi: --input: cannot read {}: {e}", input.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    let mut connector = match start_connector(&config, schemas, settings).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let label = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match doudi::connect::replay::replay(&mut connector, &body, &label).await {
        Ok(summary) => {
            outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
            tracing::info!(connector = %summary.connector, file = %label, produced = summary.produced, dead_lettered = summary.dead_lettered, "dead letters replayed");
            if summary.dead_lettered > 0 { ExitCode::from(exit::FOUND_PROBLEM) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

async fn lag(args: LagArgs, settings: &Settings) -> ExitCode {
    if let Some(LagCommand::Serve { listen, interval, evaluation }) = args.command {
        let addr = match listen.map(Ok).unwrap_or_else(|| ops_address(settings)) {
            Ok(a) => a,
            Err(code) => return code,
        };
        let options = doudi::lag::Options { groups: Vec::new(), stop_after: evaluation.stop_after };
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        return match doudi::status::serve(
            settings,
            addr,
            interval,
            evaluation.window,
            options,
            doudi::telemetry::metrics_handle(),
            shutdown,
        )
        .await
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("doudi: {e}");
                ExitCode::from(exit::INFRASTRUCTURE)
            }
        };
    }
    let mut follower = match doudi::lag::Follower::start(&settings.kafka, args.evaluation.window) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    if let Err(e) = follower.wait_caught_up(std::time::Duration::from_secs(120)).await {
        eprintln!("doudi: reading __consumer_offsets: {e}");
        return ExitCode::from(exit::INFRASTRUCTURE);
    }
    let options = doudi::lag::Options { groups: args.group.clone(), stop_after: args.evaluation.stop_after };
    let consumer = match doudi::lag::evaluation_consumer(&settings.kafka) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            eprintln!("doudi: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    loop {
        let log = follower.snapshot();
        let (consumer, opts) = (consumer.clone(), options.clone());
        let evaluated = tokio::task::spawn_blocking(move || doudi::lag::report_with(&consumer, &log, &opts)).await;
        let report = match evaluated.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("doudi: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        };
        if args.json {
            outln!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            if args.watch {
                out!("\x1b[2J\x1b[H");
            }
            out!("{}", doudi::lag::render_text(&report));
        }
        if !args.group.is_empty() && report.groups.is_empty() {
            eprintln!("doudi: no committed offsets for {}", args.group.join(", "));
            return ExitCode::from(exit::FOUND_PROBLEM);
        }
        if !args.watch {
            let healthy = report.groups.iter().all(|g| g.status == doudi::lag::Status::Ok);
            return if healthy { ExitCode::SUCCESS } else { ExitCode::from(exit::FOUND_PROBLEM) };
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// Prints a connector run's summary as JSON (stdout) or its error (stderr), and picks the exit code.
fn print_summary(result: Result<doudi::connect::run::Summary, doudi::connect::run::ConnectError>) -> ExitCode {
    match result {
        Ok(summary) => {
            outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("doudi: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

/// `--since`: RFC 3339, or an age such as `24h`, `7d`, `30m`; returns epoch milliseconds.
fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| format!("`{text}` is neither RFC 3339 nor an age like 24h or 7d"))?;
    let seconds = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the age unit must be m, h or d")),
    };
    Ok(chrono::Utc::now().timestamp_millis() - seconds * 1000)
}
