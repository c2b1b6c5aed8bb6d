//! Connector daemons: department feeds into validated, exactly-once Kafka topics.

pub mod config;
pub mod mapping;
pub mod offline;
pub mod pipeline;
pub mod snapshot;
pub mod source;
