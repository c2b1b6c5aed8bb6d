//! The matching service: from department facts to each household's status, in one shared database.
//!
//! `facts` reads what an inbound event says; `assemble` turns a household's registration and its
//! members' current facts into the policy engine's input; `outbound` turns decisions into the
//! entitlements each agency needs and their changes. A batch in one database transaction:
//! `context` (what the matcher works with), `batch` (the batch in memory and its reads), `apply`
//! (events applied in order), `evaluate` (households re-assessed, the decision step), `flush`
//! (the batch's writes). `worker` is the Kafka side (`doudi match`, the outbox relay); `show` is
//! `doudi recipients show`; `policy_change` and `calendar` re-evaluate without an inbound event.

mod apply;
pub mod assemble;
mod batch;
pub mod calendar;
pub mod casework;
mod context;
pub mod evaluate;
pub mod facts;
mod flush;
pub mod outbound;
pub mod policy_change;
pub mod show;
pub mod synthetic;
pub mod tasks;
pub mod worker;

pub use crate::db::sql::{Bind, Conn, Pooled, Record, Tx};
pub use apply::apply_batch;
pub use context::{ApplyError, BatchOutcome, Context, Inbound, MATCHER_SOURCE, Outbound};
pub use evaluate::{ReviewDue, reevaluate};
pub use facts::Feed;
pub use worker::{MatchOptions, RunSummary, prune_outbox, relay, relay_during, run};

/// Describes the matcher's metrics (the HELP lines of `/metrics`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "doudi_matcher_events_total",
        "Inbound events by outcome (applied, duplicate, invalid, stale, held, unusable: sent to the feed's dead-letter topic)."
    );
    describe_histogram!("doudi_matcher_batch_seconds", "Time to apply one batch of events in one database transaction.");
    describe_histogram!(
        "doudi_matcher_end_to_end_seconds",
        "Time from a department's record (its ce_time) to the household's change committed."
    );
    describe_counter!("doudi_matcher_entitlement_changes_total", "Entitlement events written, by agency and change.");
    describe_counter!("doudi_matcher_review_tasks_total", "Review tasks raised, by kind.");
    describe_counter!("doudi_matcher_published_total", "Outbox rows published to their topic.");
    describe_counter!(
        "doudi_matcher_fenced_total",
        "Partitions this instance stopped applying because another instance claimed them (when: batch_start, or batch_end with the batch rolled back)."
    );
    describe_counter!("doudi_matcher_outbox_pruned_total", "Sent outbox rows deleted after their retention.");
    describe_counter!("doudi_review_task_transitions_total", "Review-task transitions, by kind and the state reached.");
    metrics::describe_gauge!("doudi_review_tasks_open", "Review tasks open or in progress, by kind.");
    metrics::describe_gauge!("doudi_review_tasks_oldest_open_seconds", "Age of the oldest review task open or in progress, by kind.");
    metrics::describe_gauge!("doudi_review_tasks_overdue", "Review tasks open or in progress past their deadline (due_on), by kind.");
}
