//! What the matcher works with: its context, the inbound events it applies, the outbound topics it
//! writes, what a batch did, and why a batch failed (its transaction is then rolled back).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::Value;

use super::facts::Feed;
use crate::db::DbError;
use crate::envelope::KeyDeriver;
use crate::policy::Params;
use crate::schema::Registry;
use crate::topics::{AGENCIES, Affixes, REVIEW_TOPIC, STATUS_TOPIC, agency_topic};

/// The CloudEvents source of everything the matcher derives.
pub const MATCHER_SOURCE: &str = "doudi://matcher";

/// The outbound topics, by the catalogue name whose schema they follow.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Catalogue name → actual topic name (the same in production; tests add a suffix).
    pub names: BTreeMap<String, String>,
}

impl Outbound {
    /// Every outbound catalogue topic, each named `prefix + name + suffix`.
    pub fn with_affixes(prefix: &str, suffix: &str) -> Self {
        let affixes = Affixes::new(prefix, suffix);
        let mut all = vec![STATUS_TOPIC.to_string(), REVIEW_TOPIC.to_string()];
        all.extend(AGENCIES.iter().map(|a| agency_topic(a)));
        Outbound { names: all.into_iter().map(|n| (n.clone(), affixes.name(&n))).collect() }
    }

    pub fn actual(&self, catalogue: &str) -> String {
        self.names.get(catalogue).cloned().unwrap_or_else(|| catalogue.to_string())
    }
}

/// What the matcher needs besides the database.
#[derive(Clone)]
pub struct Context {
    pub params: Arc<Params>,
    pub keys: KeyDeriver,
    pub registry: Arc<Registry>,
    pub outbound: Outbound,
    /// Today, bounding birth dates in ID numbers (wall clock; decisions never use it).
    pub today: NaiveDate,
    /// Seals the audit entries of caseworkers' actions (`keys.audit_key`).
    pub auditor: crate::audit::Auditor,
}

/// One consumed inbound event.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub feed: Feed,
    pub partition: i32,
    pub offset: i64,
    pub ce_id: String,
    /// `ce_time` of the source record, RFC 3339.
    pub recorded_at: String,
    pub source_file: Option<String>,
    pub source_row: Option<String>,
    pub payload: Value,
}

/// Counts of what a batch did; no personal data.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchOutcome {
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub invalid: u64,
    /// Messages without a CloudEvents envelope or a JSON payload: sent to the feed's dead-letter
    /// topic, their offsets passed.
    #[serde(default)]
    pub unusable: u64,
    pub stale: u64,
    pub held: u64,
    pub households_evaluated: u64,
    pub decisions: u64,
    pub outbox: u64,
    pub review_tasks: u64,
    pub assessment_problems: u64,
    /// Audit entries the batch appended: written to the process log once it is committed.
    #[serde(skip)]
    pub audit: Vec<crate::audit::Entry>,
}

impl BatchOutcome {
    pub fn add(&mut self, o: &BatchOutcome) {
        self.events += o.events;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.invalid += o.invalid;
        self.unusable += o.unusable;
        self.stale += o.stale;
        self.held += o.held;
        self.households_evaluated += o.households_evaluated;
        self.decisions += o.decisions;
        self.outbox += o.outbox;
        self.review_tasks += o.review_tasks;
        self.assessment_problems += o.assessment_problems;
        self.audit.extend(o.audit.iter().cloned());
    }
}

/// Errors applying a batch: the transaction must be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("an outbound event for {topic} does not match its schema ({reason}); nothing was written")]
    InvalidOutbound { topic: String, reason: String },
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Db(DbError::Query(e))
    }
}
