//! What is overdue, and whether the numbers agree.
//!
//! Guarantees: [`pending`] lists every entitlement event not yet applied (pending, delivered or
//! failed) older than the given age, with the person masked. [`reconcile`] gives, per agency, kind
//! and change of the day's events (China Standard Time), the count and the sum of amounts four
//! times — recorded in the database, published to Kafka (read back from the topics by `ce_id`
//! unless told to trust the outbox), delivered (accepted by the agency or its sink) and
//! acknowledged — and says which rows disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use sqlx::Row;

use super::DeliverError;
use crate::db::Database;
use crate::idnum::IdNumber;

/// One overdue event, masked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Overdue {
    pub event_id: String,
    pub agency: String,
    pub kind: String,
    pub change: String,
    pub household_id: String,
    pub person: String,
    pub effective_date: String,
    pub state: String,
    pub created_at: String,
    pub age_hours: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Events not applied yet, created before now − `older_than`: how many there are, and the oldest
/// `limit` of them.
pub async fn pending(db: &Database, agency: Option<&str>, older_than: Duration, limit: usize) -> Result<(u64, Vec<Overdue>), DeliverError> {
    let now = chrono::Utc::now();
    let cutoff = crate::db::rfc3339(now - chrono::Duration::from_std(older_than).unwrap_or_default());
    let filter = "FROM deliveries WHERE state IN ('pending', 'delivered', 'failed') AND created_at <= $1 AND ($2 = '' OR agency = $2)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {filter}")))
        .bind(&cutoff)
        .bind(agency.unwrap_or(""))
        .fetch_one(db.pool())
        .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT ce_id, agency, kind, change, household_id, id_number, effective_date, state, created_at, attempts, last_error \
         {filter} ORDER BY created_at, ce_id LIMIT $3"
    )))
    .bind(&cutoff)
    .bind(agency.unwrap_or(""))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("id_number")?;
        let created_at: String = r.try_get("created_at")?;
        let age_hours =
            chrono::DateTime::parse_from_rfc3339(&created_at).map(|t| (now - t.with_timezone(&chrono::Utc)).num_hours()).unwrap_or(0);
        out.push(Overdue {
            event_id: r.try_get("ce_id")?,
            agency: r.try_get("agency")?,
            kind: r.try_get("kind")?,
            change: r.try_get("change")?,
            household_id: r.try_get("household_id")?,
            person: IdNumber::parse(&id).map(|i| i.masked()).unwrap_or_else(|_| "(invalid)".into()),
            effective_date: r.try_get("effective_date")?,
            state: r.try_get("state")?,
            created_at,
            age_hours,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
        });
    }
    Ok((u64::try_from(total).unwrap_or(0), out))
}

/// Counts and the sum of amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Total {
    pub count: u64,
    pub amount: Decimal,
}

impl Total {
    fn add(&mut self, amount: Decimal) {
        self.count += 1;
        self.amount += amount;
    }
}

/// One line of the reconciliation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlTotals {
    pub agency: String,
    pub kind: String,
    pub change: String,
    pub database: Total,
    pub published: Total,
    pub delivered: Total,
    pub acknowledged: Total,
    pub agrees: bool,
}

/// The day's control totals. `published` holds the `ce_id`s read back from Kafka, or `None` to
/// count the outbox rows the relay sent (no longer queued in `outbox_pending`).
pub async fn reconcile(db: &Database, date: NaiveDate, published: Option<&BTreeSet<String>>) -> Result<Vec<ControlTotals>, DeliverError> {
    let rows = sqlx::query(
        "SELECT d.ce_id, d.agency, d.kind, d.change, d.amount, d.state, p.id AS pending_id FROM deliveries d \
         LEFT JOIN outbox o ON o.household_id = d.household_id AND o.ce_id = d.ce_id LEFT JOIN outbox_pending p ON p.id = o.id \
         WHERE d.created_on = $1 ORDER BY d.agency, d.kind, d.change",
    )
    .bind(date.to_string())
    .fetch_all(db.pool())
    .await?;
    let mut lines: BTreeMap<(String, String, String), ControlTotals> = BTreeMap::new();
    for r in rows {
        let (agency, kind, change): (String, String, String) = (r.try_get("agency")?, r.try_get("kind")?, r.try_get("change")?);
        let ce_id: String = r.try_get("ce_id")?;
        let amount: Decimal = r.try_get::<Option<String>, _>("amount")?.and_then(|a| a.parse().ok()).unwrap_or_default();
        let state: String = r.try_get("state")?;
        // A delivery row is written with its outbox row, which is queued until sent and deleted
        // only once sent (`prune_outbox`): a delivery is published unless its row is still queued.
        let sent = r.try_get::<Option<i64>, _>("pending_id")?.is_none();
        let line = lines.entry((agency.clone(), kind.clone(), change.clone())).or_insert_with(|| ControlTotals {
            agency,
            kind,
            change,
            database: Total::default(),
            published: Total::default(),
            delivered: Total::default(),
            acknowledged: Total::default(),
            agrees: false,
        });
        line.database.add(amount);
        if published.map_or(sent, |p| p.contains(&ce_id)) {
            line.published.add(amount);
        }
        if state == "delivered" || state == "applied" {
            line.delivered.add(amount);
        }
        if state == "applied" {
            line.acknowledged.add(amount);
        }
    }
    Ok(lines
        .into_values()
        .map(|mut l| {
            l.agrees = l.published == l.database && l.delivered == l.database && l.acknowledged == l.database;
            l
        })
        .collect())
}

/// The `ce_id`s on `topics` published from the start of `date` (China Standard Time) on.
pub fn published_ids(kafka: &crate::config::KafkaSettings, topics: &[String], date: NaiveDate) -> Result<BTreeSet<String>, DeliverError> {
    let from_ms = crate::db::china_day_start_ms(date);
    let mut ids = BTreeSet::new();
    super::range::read_between(kafka, topics, from_ms, None, Duration::from_secs(300), |m| {
        use rdkafka::message::Message;
        if let Some(id) = m.headers().and_then(|h| crate::envelope::Envelope::from_headers(h).ok()).map(|e| e.id) {
            ids.insert(id);
        }
    })?;
    Ok(ids)
}

/// The pending report as a table, one line per event (masked).
pub fn render_pending(rows: &[Overdue]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:<8} {:<20} {:<24} {:<10} {:<9} {:>6} {:>8}  last error",
        "agency", "kind", "change", "person", "household", "effective", "state", "age h", "attempts"
    );
    for r in rows {
        let _ = writeln!(
            out,
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
    out
}

/// The control totals as a table, one line per agency, kind and change.
pub fn render_reconcile(lines: &[ControlTotals]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:<8} {:>16} {:>16} {:>16} {:>16}  ",
        "agency", "kind", "change", "database", "published", "delivered", "acknowledged"
    );
    let cell = |t: &Total| format!("{} / {}", t.count, t.amount);
    for l in lines {
        let _ = writeln!(
            out,
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
    out
}

/// The ids of `date`'s entitlement events on every agency's topic (named with `affixes`), read
/// back from Kafka.
pub async fn published_ids_of_agencies(
    kafka: &crate::config::KafkaSettings,
    affixes: &crate::topics::Affixes,
    date: NaiveDate,
) -> Result<BTreeSet<String>, DeliverError> {
    let topics: Vec<String> = crate::topics::AGENCIES.iter().map(|a| affixes.name(&crate::topics::agency_topic(a))).collect();
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || published_ids(&kafka, &topics, date))
        .await
        .map_err(|e| DeliverError::Sink(format!("reading the agencies' topics stopped: {e}")))?
}
