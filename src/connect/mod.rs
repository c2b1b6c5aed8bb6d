//! Connector daemons: department feeds into validated, exactly-once Kafka topics.

pub mod config;
pub mod daemon;
pub mod mapping;
pub mod offline;
pub mod pipeline;
pub mod poll;
pub mod push;
pub mod replay;
pub mod run;
pub mod snapshot;

pub mod source;
#[cfg(test)]
mod tests;

/// Describes the connectors' metrics (the HELP lines of `/metrics`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("doudi_connector_records_read_total", "Rows and records read from a department's source.");
    describe_counter!("doudi_connector_records_produced_total", "Records produced to the feed's topic, committed.");
    describe_counter!(
        "doudi_connector_records_dead_lettered_total",
        "Rows refused and produced to the feed's dead-letter topic with their reason."
    );
    describe_histogram!("doudi_connector_batch_seconds", "Time to produce and commit one transaction of records.");
    describe_gauge!(
        "doudi_connector_held_removals",
        "Roster removals held back until an operator confirms them (too much of the roster vanished at once)."
    );
    describe_gauge!(
        "doudi_connector_last_success_timestamp_seconds",
        "Unix time of the connector's last source processed without failure (a file, a pushed request, a polled batch), restored from its job runs at start."
    );
    describe_counter!("doudi_connector_files_failed_total", "Files moved to failed/: unreadable, or failed max_attempts times in a row.");
}
