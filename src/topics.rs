//! `doudi topics apply`: creates the catalogue's topics with their partitions, cleanup policy and
//! retention. Existing topics are left as they are (and reported), never deleted or shrunk.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::kafka::{KafkaError, admin};
use crate::schema::Catalogue;
use crate::schema::catalogue::Cleanup;

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
