//! The matching service: from department facts to each household's status, in one shared database.
//!
//! `facts` reads what an inbound event says; `assemble` turns a household's registration and its
//! members' current facts into the policy engine's input; `outbound` turns decisions into the
//! entitlements each agency needs and their changes; `store` applies a batch in one database
//! transaction; `worker` is the Kafka side (`doudi match`, the outbox relay); `show` is
//! `doudi recipients show`.

pub mod assemble;
pub mod calendar;
pub mod facts;
pub mod outbound;
pub mod policy_change;
pub mod show;
pub mod store;
pub mod synthetic;
pub mod worker;

pub use facts::Feed;
pub use store::{BatchOutcome, Bind, Conn, Context, Inbound, Outbound, Pooled, Record, Tx, apply_batch};
pub use worker::{MatchOptions, RunSummary, prune_outbox, relay, relay_during, run};
