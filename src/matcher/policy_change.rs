//! Policy parameter versions: which one is in force, what a new one changes, and re-evaluating the
//! households it affects.
//!
//! Guarantees: the version in force is the last one recorded in `policy_versions` (the matcher
//! records its `--policy` file as the first version of an empty database and otherwise follows the
//! database, so every instance decides with the same parameters). [`changes`] compares two versions
//! entry by entry: the regions of the entries added or removed, and the earliest date from which
//! one applies. [`apply`] re-evaluates every household of those regions as of no earlier than that
//! date, in chunks of one transaction each, and records the version last; so a crash part-way is
//! finished by running it again, and applying a recorded version again changes nothing. A version
//! string recorded with different parameters is refused: versions are never edited in place.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{ApplyError, BatchOutcome, Context, Tx, reevaluate};
use crate::db::{Database, DbError, now_rfc3339};
use crate::policy::Params;

/// A recorded version.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecordedVersion {
    pub version: String,
    pub effective_date: Option<NaiveDate>,
    pub regions: Vec<String>,
    pub sha256: String,
    pub applied_at: String,
}

/// What a new version changes compared with the one in force.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParameterChange {
    /// Region codes whose entries changed; the province's code means every region.
    pub regions: BTreeSet<String>,
    /// The earliest date from which a changed entry applies (`None`: nothing dated changed).
    pub effective_date: Option<NaiveDate>,
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplySummary {
    pub version: String,
    pub previous_version: Option<String>,
    pub already_applied: bool,
    pub effective_date: Option<NaiveDate>,
    pub regions: Vec<String>,
    pub households: u64,
    pub decisions: u64,
    pub outbox: u64,
    pub review_tasks: u64,
    pub assessment_problems: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyChangeError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("policy version {0} was applied before with different parameters; give the new parameters a new `policy.version`")]
    VersionReused(String),
    #[error("the recorded policy version {version} cannot be read: {reason}")]
    Unreadable { version: String, reason: String },
    #[error("a re-evaluation task stopped: {0}")]
    Task(String),
}

impl From<sqlx::Error> for PolicyChangeError {
    fn from(e: sqlx::Error) -> Self {
        PolicyChangeError::Db(DbError::Query(e))
    }
}

/// The SHA-256 of a version's parameters, as recorded.
pub fn fingerprint(params: &Params) -> (String, String) {
    let text = serde_json::to_string(params).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    (text, digest)
}

/// The last recorded version and its parameters, if any.
pub async fn in_force(db: &Database) -> Result<Option<(RecordedVersion, Params)>, PolicyChangeError> {
    let Some(r) = sqlx::query(
        "SELECT version, effective_date, regions, parameters, sha256, applied_at FROM policy_versions ORDER BY applied_at DESC, version DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let version: String = r.try_get("version")?;
    let params: Params = serde_json::from_str(&r.try_get::<String, _>("parameters")?)
        .map_err(|e| PolicyChangeError::Unreadable { version: version.clone(), reason: e.to_string() })?;
    let recorded = RecordedVersion {
        effective_date: r.try_get::<Option<String>, _>("effective_date")?.and_then(|d| d.parse().ok()),
        regions: serde_json::from_str(&r.try_get::<String, _>("regions")?).unwrap_or_default(),
        sha256: r.try_get("sha256")?,
        applied_at: r.try_get("applied_at")?,
        version,
    };
    Ok(Some((recorded, params)))
}

/// The version string in force, cheaply (the matcher asks before every batch).
pub async fn version_in_force(db: &Database) -> Result<Option<String>, PolicyChangeError> {
    Ok(sqlx::query("SELECT version FROM policy_versions ORDER BY applied_at DESC, version DESC LIMIT 1")
        .fetch_optional(db.pool())
        .await?
        .map(|r| r.try_get("version"))
        .transpose()?)
}

/// The parameters the matcher decides with: the version in force, or `file` recorded as the first
/// version when the database has none.
pub async fn establish(db: &Database, file: Params) -> Result<Params, PolicyChangeError> {
    if let Some((recorded, params)) = in_force(db).await? {
        if recorded.version != file.policy.version {
            tracing::warn!(
                in_force = %recorded.version, file = %file.policy.version,
                "The policy file differs from the version in force; the matcher decides with the version in force. Run `doudi policy apply` to change it."
            );
        }
        return Ok(params);
    }
    record(db, &file, None, std::slice::from_ref(&file.policy.province)).await?;
    finish(db, &file.policy.version, &BatchOutcome::default(), 0).await?;
    Ok(file)
}

/// Records `params` as the version in force, `applying`.
async fn record(db: &Database, params: &Params, effective: Option<NaiveDate>, regions: &[String]) -> Result<(), PolicyChangeError> {
    let (text, digest) = fingerprint(params);
    sqlx::query(
        "INSERT INTO policy_versions (version, state, policy_id, effective_date, regions, parameters, sha256, households, decisions, applied_at) \
         VALUES ($1, 'applying', $2, $3, $4, $5, $6, 0, 0, $7) ON CONFLICT (version) DO NOTHING",
    )
    .bind(&params.policy.version)
    .bind(&params.policy.id)
    .bind(effective.map(|d| d.to_string()))
    .bind(serde_json::to_string(regions).unwrap_or_default())
    .bind(text)
    .bind(digest)
    .bind(now_rfc3339())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Marks a version `applied` with what its re-evaluation did.
async fn finish(db: &Database, version: &str, totals: &BatchOutcome, households: u64) -> Result<(), PolicyChangeError> {
    sqlx::query("UPDATE policy_versions SET state = 'applied', households = $1, decisions = $2 WHERE version = $3")
        .bind(i64::try_from(households).unwrap_or(i64::MAX))
        .bind(i64::try_from(totals.decisions).unwrap_or(i64::MAX))
        .bind(version)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The entries of each dated section, keyed by (section, entry as JSON), with the entry's region
/// and first date.
pub(crate) fn entries(params: &Params) -> BTreeMap<(String, String), (Option<String>, Option<NaiveDate>)> {
    let mut out = BTreeMap::new();
    let Ok(Value::Object(sections)) = serde_json::to_value(params) else { return out };
    for (section, value) in sections {
        if section == "policy" {
            continue;
        }
        let Value::Array(items) = value else { continue };
        for item in items {
            let region = item.get("region").and_then(Value::as_str).map(str::to_string);
            let from = item.get("from").and_then(Value::as_str).and_then(|d| d.parse().ok()).or_else(|| {
                item.get("year").and_then(Value::as_i64).and_then(|y| i32::try_from(y).ok()).map(crate::policy::params::first_day_of)
            });
            out.insert((section.clone(), item.to_string()), (region, from));
        }
    }
    out
}

/// What `new` changes compared with `old`: the regions of every entry added or removed and the
/// earliest date among them. An entry without a region (minimum wages) concerns the province.
pub fn changes(old: &Params, new: &Params) -> ParameterChange {
    let a = entries(old);
    let b = entries(new);
    let mut regions = BTreeSet::new();
    let mut effective: Option<NaiveDate> = None;
    for (key, (region, from)) in a.iter().filter(|(k, _)| !b.contains_key(*k)).chain(b.iter().filter(|(k, _)| !a.contains_key(*k))) {
        let _ = key;
        regions.insert(region.clone().unwrap_or_else(|| new.policy.province.clone()));
        if let Some(from) = from {
            effective = Some(effective.map_or(*from, |e| e.min(*from)));
        }
    }
    if regions.contains(&new.policy.province) {
        regions = BTreeSet::from([new.policy.province.clone()]);
    }
    ParameterChange { regions, effective_date: effective }
}

/// The code prefix a region stands for: 220000 → every code starting 22, 220100 → 2201.
pub fn region_prefix(region: &str) -> &str {
    if let Some(p) = region.strip_suffix("0000") {
        p
    } else if let Some(p) = region.strip_suffix("00") {
        p
    } else {
        region
    }
}

/// The households of `regions`, in id order.
pub async fn households_in(db: &Database, regions: &BTreeSet<String>) -> Result<Vec<String>, PolicyChangeError> {
    let mut out = BTreeSet::new();
    for region in regions {
        for r in sqlx::query("SELECT household_id FROM households WHERE region LIKE $1")
            .bind(format!("{}%", region_prefix(region)))
            .fetch_all(db.pool())
            .await?
        {
            out.insert(r.try_get::<String, _>("household_id")?);
        }
    }
    Ok(out.into_iter().collect())
}

/// Chunks re-evaluated at once on PostgreSQL, each in its own transaction on its own connection (a
/// household is in exactly one chunk, so they never touch the same rows). Three keep two cores
/// busier than two while each chunk alternates between doudi's work and the database's
/// (BENCHMARKS.md). SQLite has one writer.
const PARALLEL_CHUNKS: usize = 3;

/// How [`reevaluate_all`] splits its households into transactions.
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    /// Households per transaction.
    pub size: usize,
    /// The households are every household of their regions, in id order (a policy change): a
    /// chunk is read by its id range when that range holds at most twice as many households.
    /// Households picked one by one (the calendar review) are read by their ids.
    pub by_range: bool,
}

/// Re-evaluates `households` in chunks, one transaction each; returns the totals.
pub async fn reevaluate_all(
    db: &Database,
    ctx: &Context,
    households: &[String],
    on: Option<NaiveDate>,
    trigger: &str,
    reviews: &BTreeMap<String, super::ReviewDue>,
    chunking: Chunking,
) -> Result<BatchOutcome, PolicyChangeError> {
    let mut totals = BatchOutcome::default();
    let parallel = db.backend().writers(PARALLEL_CHUNKS);
    let mut running = tokio::task::JoinSet::new();
    for chunk in households.chunks(chunking.size.max(1)) {
        if running.len() >= parallel
            && let Some(done) = running.join_next().await
        {
            totals.add(&done.map_err(|e| PolicyChangeError::Task(e.to_string()))??);
        }
        let chunk_reviews: BTreeMap<String, super::ReviewDue> =
            chunk.iter().filter_map(|h| reviews.get(h).map(|r| (h.clone(), r.clone()))).collect();
        let (db, ctx, chunk, trigger) = (db.clone(), ctx.clone(), chunk.to_vec(), trigger.to_string());
        let by_range = chunking.by_range;
        running.spawn(async move { reevaluate_chunk(&db, &ctx, &chunk, on, &trigger, &chunk_reviews, by_range).await });
    }
    while let Some(done) = running.join_next().await {
        totals.add(&done.map_err(|e| PolicyChangeError::Task(e.to_string()))??);
    }
    Ok(totals)
}

/// One chunk in one transaction. A matcher instance may have decided one of these households
/// meanwhile (the decision version is taken): the chunk is read again and retried.
async fn reevaluate_chunk(
    db: &Database,
    ctx: &Context,
    chunk: &[String],
    on: Option<NaiveDate>,
    trigger: &str,
    reviews: &BTreeMap<String, super::ReviewDue>,
    by_range: bool,
) -> Result<BatchOutcome, PolicyChangeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = Tx::begin(db).await.map_err(DbError::Query)?;
        let done = reevaluate(&mut tx.conn(), ctx, chunk, on, trigger, reviews, by_range).await;
        if let Ok(outcome) = &done {
            tx.commit().await.map_err(DbError::Query)?;
            crate::audit::logged(&outcome.audit);
        }
        match done {
            Ok(outcome) => return Ok(outcome),
            Err(e) if attempt < 3 => tracing::warn!("Re-evaluating a chunk of households failed and is retried: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Applies `new`: records it as the version in force (so every matcher instance decides with it from
/// its next batch), re-evaluates the households it affects, then marks it applied. A version left
/// `applying` by a crash is resumed; an applied one is not applied again.
pub async fn apply(db: &Database, ctx: &Context, chunk_size: usize) -> Result<ApplySummary, PolicyChangeError> {
    let new = &ctx.params;
    let (_, digest) = fingerprint(new);
    let mut summary = ApplySummary { version: new.policy.version.clone(), ..ApplySummary::default() };
    let recorded = sqlx::query("SELECT state, sha256, effective_date, regions FROM policy_versions WHERE version = $1")
        .bind(&new.policy.version)
        .fetch_optional(db.pool())
        .await?;
    let change = match recorded {
        Some(row) => {
            if row.try_get::<String, _>("sha256")? != digest {
                return Err(PolicyChangeError::VersionReused(new.policy.version.clone()));
            }
            if row.try_get::<String, _>("state")? == "applied" {
                summary.already_applied = true;
                return Ok(summary);
            }
            ParameterChange {
                regions: serde_json::from_str(&row.try_get::<String, _>("regions")?).unwrap_or_default(),
                effective_date: row.try_get::<Option<String>, _>("effective_date")?.and_then(|d| d.parse().ok()),
            }
        }
        None => {
            let current = in_force(db).await?;
            summary.previous_version = current.as_ref().map(|c| c.0.version.clone());
            let change = match &current {
                Some((_, old)) => changes(old, new),
                None => ParameterChange { regions: BTreeSet::from([new.policy.province.clone()]), effective_date: None },
            };
            record(db, new, change.effective_date, &change.regions.iter().cloned().collect::<Vec<_>>()).await?;
            change
        }
    };
    summary.effective_date = change.effective_date;
    summary.regions = change.regions.iter().cloned().collect();
    let households = households_in(db, &change.regions).await?;
    summary.households = households.len() as u64;
    let trigger = format!("policy:{}", new.policy.version);
    let chunking = Chunking { size: chunk_size, by_range: true };
    let totals = reevaluate_all(db, ctx, &households, change.effective_date, &trigger, &BTreeMap::new(), chunking).await?;
    summary.decisions = totals.decisions;
    summary.outbox = totals.outbox;
    summary.review_tasks = totals.review_tasks;
    summary.assessment_problems = totals.assessment_problems;
    finish(db, &new.policy.version, &totals, summary.households).await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_standard_changes_its_region_from_its_date() {
        let new = Params::shipped().expect("shipped policy");
        let mut old = new.clone();
        old.dibao_standard.retain(|e| !(e.region == "220100" && e.from >= NaiveDate::from_ymd_opt(2020, 7, 1).expect("date")));
        let change = changes(&old, &new);
        assert_eq!(change.regions, BTreeSet::from(["220100".to_string()]));
        assert_eq!(change.effective_date, NaiveDate::from_ymd_opt(2020, 7, 1));
        assert_eq!(changes(&new, &new), ParameterChange { regions: BTreeSet::new(), effective_date: None });
    }

    #[test]
    fn a_province_wide_entry_concerns_every_region() {
        let new = Params::shipped().expect("shipped policy");
        let mut old = new.clone();
        old.minimum_wage.pop();
        let change = changes(&old, &new);
        assert_eq!(change.regions, BTreeSet::from([new.policy.province.clone()]));
    }

    #[test]
    fn region_prefixes() {
        assert_eq!(region_prefix("220000"), "22");
        assert_eq!(region_prefix("220100"), "2201");
        assert_eq!(region_prefix("220102"), "220102");
    }
}

/// One recorded policy version, as `doudi policy versions` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VersionRow {
    pub version: String,
    pub state: String,
    pub effective_date: Option<String>,
    pub regions: String,
    pub households: i64,
    pub decisions: i64,
    pub applied_at: String,
}

/// The recorded policy versions, newest first.
pub async fn versions(db: &Database) -> Result<Vec<VersionRow>, PolicyChangeError> {
    let rows = sqlx::query(
        "SELECT version, state, effective_date, regions, households, decisions, applied_at FROM policy_versions ORDER BY applied_at DESC, version DESC",
    )
    .fetch_all(db.pool())
    .await
    .map_err(DbError::Query)?;
    Ok(rows
        .iter()
        .map(|r| VersionRow {
            version: r.try_get("version").unwrap_or_default(),
            state: r.try_get("state").unwrap_or_default(),
            effective_date: r.try_get::<Option<String>, _>("effective_date").ok().flatten(),
            regions: r.try_get("regions").unwrap_or_default(),
            households: r.try_get("households").unwrap_or_default(),
            decisions: r.try_get("decisions").unwrap_or_default(),
            applied_at: r.try_get("applied_at").unwrap_or_default(),
        })
        .collect())
}

/// The versions as a table.
pub fn render_versions(rows: &[VersionRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<9} {:<10} {:>10} {:>10} {:<28} regions",
        "version", "state", "effective", "households", "decisions", "applied at"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:<10} {:>10} {:>10} {:<28} {}",
            r.version,
            r.state,
            r.effective_date.as_deref().unwrap_or("-"),
            r.households,
            r.decisions,
            r.applied_at,
            r.regions
        );
    }
    out
}
