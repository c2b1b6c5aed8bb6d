//! The `doudi` binary: one process per role, chosen by subcommand. Exit codes are decided here only:
//! 0 success; 1 the command ran and found a problem (invalid data, a failed check); 2 bad usage or
//! configuration; 3 an infrastructure failure (database, broker, file system).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use doudi::config::Settings;

#[derive(Parser)]
#[command(name = "doudi", version, about = "兜底 doudi — the social-assistance data exchange of 吉民发〔2019〕38号")]
struct Cli {
    /// Configuration file (TOML). Every field can also be set by a DOUDI_* environment variable.
    #[arg(long, global = true, env = "DOUDI_CONFIG")]
    config: Option<PathBuf>,
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
    let settings = match Settings::load(cli.config.as_deref()) {
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
            println!("{settings:#?}");
            ExitCode::SUCCESS
        }
        Command::Doctor { no_kafka, json } => {
            let checks = doudi::doctor::run(&settings, !no_kafka).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
            } else {
                for check in &checks {
                    println!("{:<20} {:<4} {:>6} ms  {}", check.name, if check.ok { "ok" } else { "FAIL" }, check.millis, check.detail);
                }
            }
            if checks.iter().all(|c| c.ok) { ExitCode::SUCCESS } else { ExitCode::from(exit::INFRASTRUCTURE) }
        }
    }
}
