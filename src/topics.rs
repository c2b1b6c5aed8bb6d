//! Topic names, defined once, and `doudi topics apply`.
//!
//! Every role builds the names of the topics it reads and writes from here: the outbound topics
//! (status, review tasks, one entitlement topic per agency), the acknowledgement topic, and the
//! dead-letter topic of any topic. A staging environment or a test adds a prefix and a suffix
//! ([`Affixes`]). `apply` creates the catalogue's topics with their partitions, cleanup policy and
//! retention; existing topics are left as they are (and reported), never deleted or shrunk.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::kafka::{KafkaError, admin};
use crate::schema::Catalogue;
use crate::schema::catalogue::Cleanup;

/// Households' status changes.
pub const STATUS_TOPIC: &str = "exchange.recipient.status.v1";
/// Review tasks for caseworkers.
pub const REVIEW_TOPIC: &str = "exchange.review-task.v1";
/// The schema of every agency's acknowledgement topic.
pub const ACK_SCHEMA: &str = "exchange.entitlement.ack.v1.json";

/// Every agency's entitlement topic starts so.
pub const ENTITLEMENT_TOPIC_PREFIX: &str = "exchange.entitlement.";

/// The agencies with an entitlement topic.
pub const AGENCIES: [&str; 5] = ["medical", "education", "housing", "hrss", "union"];

/// Every dead-letter topic starts so.
pub const DEAD_LETTER_PREFIX: &str = "dlq.";

/// The catalogue topic of an agency's entitlements.
pub fn agency_topic(agency: &str) -> String {
    format!("{ENTITLEMENT_TOPIC_PREFIX}{agency}.v1")
}

/// The catalogue topic an agency acknowledges on. Only the agency's own principal may write it
/// (`doudi acl plan`), so the agency of an acknowledgement is the topic it came on, never a field.
pub fn ack_topic(agency: &str) -> String {
    format!("exchange.ack.{agency}.v1")
}

/// The agency whose acknowledgement topic `catalogue_name` is.
pub fn agency_of_ack_topic(catalogue_name: &str) -> Option<&'static str> {
    AGENCIES.into_iter().find(|a| ack_topic(a) == catalogue_name)
}

/// Whether `name` is one of [`AGENCIES`].
pub fn is_agency(name: &str) -> bool {
    AGENCIES.contains(&name)
}

/// The dead-letter topic of `topic` (itself when it is one already).
pub fn dead_letter_topic(topic: &str) -> String {
    if topic.starts_with(DEAD_LETTER_PREFIX) { topic.to_string() } else { format!("{DEAD_LETTER_PREFIX}{topic}") }
}

/// The topic a dead-letter topic is for (`topic` itself when it is not one).
pub fn original_topic(topic: &str) -> &str {
    topic.strip_prefix(DEAD_LETTER_PREFIX).unwrap_or(topic)
}

/// Topic names of a staging environment or a test: `prefix + catalogue name + suffix`.
#[derive(Clone, Debug, Default)]
pub struct Affixes {
    pub prefix: String,
    pub suffix: String,
}

impl Affixes {
    pub fn new(prefix: &str, suffix: &str) -> Self {
        Affixes { prefix: prefix.to_string(), suffix: suffix.to_string() }
    }

    /// The actual name of the catalogue topic `catalogue`.
    pub fn name(&self, catalogue: &str) -> String {
        format!("{}{catalogue}{}", self.prefix, self.suffix)
    }
}

/// What happened to each topic.
#[derive(Debug, serde::Serialize)]
pub struct Applied {
    pub topic: String,
    pub created: bool,
}

pub async fn apply(settings: &KafkaSettings, catalogue: &Catalogue, replication: i32) -> Result<Vec<Applied>, KafkaError> {
    let admin = admin(settings)?;
    let retention: Vec<String> = catalogue
        .topics
        .iter()
        .map(|t| if t.retention_days < 0 { "-1".into() } else { (t.retention_days * 86_400_000).to_string() })
        .collect();
    let topics: Vec<NewTopic> = catalogue
        .topics
        .iter()
        .zip(&retention)
        .map(|(t, ms)| {
            let mut new = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication)).set(
                "cleanup.policy",
                match t.cleanup {
                    Cleanup::Delete => "delete",
                    Cleanup::Compact => "compact",
                },
            );
            if t.cleanup == Cleanup::Delete {
                new = new.set("retention.ms", ms);
            }
            new
        })
        .collect();
    let results = admin.create_topics(topics.iter(), &AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)))).await?;
    let mut applied = Vec::new();
    for result in results {
        match result {
            Ok(topic) => applied.push(Applied { topic, created: true }),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => applied.push(Applied { topic, created: false }),
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, message: code.to_string() }),
        }
    }
    Ok(applied)
}
