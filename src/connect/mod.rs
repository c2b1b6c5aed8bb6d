//! Connector daemons: department feeds into validated, exactly-once Kafka topics.

pub mod compacted;
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
