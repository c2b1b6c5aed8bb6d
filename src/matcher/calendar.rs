//! Dynamic management: the households whose decision can change on a date with no event at all.
//!
//! Guarantees: [`due_on`] finds exactly the households with a current member who reaches an age
//! the rules use (the working-age bounds, the 特困 minor age, 18 and 70) on the date, a dated
//! parameter of their region taking effect (every household on 1 January), a residence
//! permit reaching the months the residence rule asks, a counted refusal, a caseworker's J1 finding or a medical settlement
//! leaving its window, or whose periodic review falls due (national rules: every 12 months, every 6
//! for a household with an able-bodied member of working age). A review date is kept per household
//! (`households.next_review_on`), first set from the decision's effective date. A 29 February
//! birthday is reached on 1 March in other years.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Months, NaiveDate};
use serde_json::Value;
use sqlx::Row;

use super::ReviewDue;
use super::policy_change::PolicyChangeError;
use crate::db::Database;
use crate::policy::Params;

/// Why a household is re-evaluated on the date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    Birthday,
    /// A dated parameter of the household's region takes effect, or a new year begins (the 特困
    /// basic standard and the care share read the previous year's end).
    ParameterInForce,
    ResidencePermit,
    RefusalWindow,
    SettlementWindow,
    PeriodicReview,
}

/// The households due on a date, with why, and the periodic reviews among them.
#[derive(Clone, Debug, Default)]
pub struct Due {
    pub households: BTreeMap<String, BTreeSet<Boundary>>,
    pub reviews: BTreeMap<String, ReviewDue>,
}

impl Due {
    fn add(&mut self, household_id: String, why: Boundary) {
        self.households.entry(household_id).or_default().insert(why);
    }

    /// The summary `doudi review` prints: what was due on `date` and what re-evaluating it did.
    pub fn summary(&self, date: NaiveDate, totals: &super::BatchOutcome, published: u64, seconds: u64) -> Value {
        let by_boundary: BTreeMap<String, usize> = self
            .counts()
            .into_iter()
            .map(|(k, v)| (serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(), v))
            .collect();
        serde_json::json!({
            "date": date,
            "households": self.households.len(),
            "by_boundary": by_boundary,
            "periodic_reviews": self.reviews.len(),
            "decisions": totals.decisions,
            "outbox": totals.outbox,
            "review_tasks": totals.review_tasks,
            "assessment_problems": totals.assessment_problems,
            "published": published,
            "seconds": seconds,
        })
    }

    /// Households per boundary, for the summary.
    pub fn counts(&self) -> BTreeMap<Boundary, usize> {
        let mut out = BTreeMap::new();
        for why in self.households.values().flatten() {
            *out.entry(*why).or_insert(0) += 1;
        }
        out
    }
}

/// The birth dates of people who turn `age` on `date`.
pub fn born_turning(age: i32, date: NaiveDate) -> Vec<NaiveDate> {
    let year = date.year() - age;
    let mut out: Vec<NaiveDate> = NaiveDate::from_ymd_opt(year, date.month(), date.day()).into_iter().collect();
    // Someone born on 29 February reaches the age on 1 March in a year without one.
    let no_leap_day = NaiveDate::from_ymd_opt(date.year(), 2, 29).is_none();
    if date.month() == 3
        && date.day() == 1
        && no_leap_day
        && let Some(d) = NaiveDate::from_ymd_opt(year, 2, 29)
    {
        out.push(d);
    }
    out
}

/// The ages the rules look at, over every rule set of the parameters.
pub fn boundary_ages(params: &Params) -> BTreeSet<i32> {
    let mut ages = BTreeSet::from([18, 70]);
    for r in &params.rules {
        ages.extend([r.working_age.min, r.working_age.male_below, r.working_age.female_below, r.tekun.minor_age]);
    }
    ages
}

fn months_before(date: NaiveDate, months: u32) -> Option<NaiveDate> {
    date.checked_sub_months(Months::new(months))
}

/// The longest window any rule set uses, per kind (refusals, residence months).
fn windows(params: &Params) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let refusal = params.rules.iter().map(|r| r.referral.window_months).collect();
    let residence = params.rules.iter().map(|r| r.migrant.months).collect();
    (refusal, residence)
}

/// Months between periodic reviews for a decision: 6 with an able-bodied member of working age.
pub fn review_interval(decision: &Value) -> u32 {
    let able = decision.get("members").and_then(Value::as_array).is_some_and(|members| {
        members.iter().any(|m| {
            let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
            flag("counted") && flag("able_to_work") && flag("working_age")
        })
    });
    if able { 6 } else { 12 }
}

/// What `doudi review --date D` does: the households due on `date`, re-evaluated as of it in
/// chunks of `chunk_size` (read by their ids: they are picked one by one).
pub async fn review(
    db: &Database,
    ctx: &super::Context,
    date: NaiveDate,
    chunk_size: usize,
) -> Result<(Due, super::BatchOutcome), PolicyChangeError> {
    let due = due_on(db, &ctx.params, date).await?;
    let households: Vec<String> = due.households.keys().cloned().collect();
    let chunking = super::policy_change::Chunking { size: chunk_size, by_range: false };
    let totals =
        super::policy_change::reevaluate_all(db, ctx, &households, Some(date), &format!("review:{date}"), &due.reviews, chunking).await?;
    Ok((due, totals))
}

/// Every household due on `date`.
pub async fn due_on(db: &Database, params: &Params, date: NaiveDate) -> Result<Due, PolicyChangeError> {
    let mut due = Due::default();
    // Birthdays.
    let dates: Vec<String> = boundary_ages(params).into_iter().flat_map(|a| born_turning(a, date)).map(|d| d.to_string()).collect();
    for chunk in dates.chunks(50) {
        let sql = format!(
            "SELECT DISTINCT m.household_id FROM household_members m JOIN persons p ON p.id_number = m.id_number \
             WHERE m.valid_to IS NULL AND p.birth_date IN ({})",
            (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q.bind(d);
        }
        for r in q.fetch_all(db.pool()).await? {
            due.add(r.try_get("household_id")?, Boundary::Birthday);
        }
    }
    // Parameters taking effect today, and the new year.
    let mut regions: BTreeSet<String> = super::policy_change::entries(params)
        .into_values()
        .filter(|(_, from)| *from == Some(date))
        .map(|(region, _)| region.unwrap_or_else(|| params.policy.province.clone()))
        .collect();
    if date.month() == 1 && date.day() == 1 {
        regions.insert(params.policy.province.clone());
    }
    if regions.contains(&params.policy.province) {
        regions = BTreeSet::from([params.policy.province.clone()]);
    }
    for household_id in super::policy_change::households_in(db, &regions).await? {
        due.add(household_id, Boundary::ParameterInForce);
    }
    let (refusal_windows, residence_months) = windows(params);
    // Refusals leave (date − window, date] the day after they are window months old.
    for months in refusal_windows {
        let Some(day) = months_before(date, months) else { continue };
        for r in facts_dated(db, "referral_refusal:%", day).await? {
            due.add(r, Boundary::RefusalWindow);
        }
        // A caseworker's confirmation (J1) ends 低保 for the same window.
        for r in facts_dated(db, "referral_review:%", day).await? {
            due.add(r, Boundary::RefusalWindow);
        }
        // Refusals registered by civil affairs with the household (a superset: another field with
        // the same date only costs a re-evaluation that changes nothing).
        for r in sqlx::query(
            "SELECT DISTINCT household_id FROM household_members WHERE valid_to IS NULL AND member LIKE '%\"referral_refusals\":[{%' AND member LIKE $1 \
             UNION SELECT DISTINCT household_id FROM household_members WHERE valid_to IS NULL AND member LIKE '%\"referral_refusals\":[\"%' AND member LIKE $1",
        )
        .bind(format!("%\"{day}\"%"))
        .fetch_all(db.pool())
        .await?
        {
            due.add(r.try_get("household_id")?, Boundary::RefusalWindow);
        }
    }
    // Medical settlements count over (date − 12 months, date].
    if let Some(day) = months_before(date, 12) {
        for r in facts_dated(db, "medical_settlement:%", day).await? {
            due.add(r, Boundary::SettlementWindow);
        }
    }
    // Residence permits reaching the months the residence rule asks.
    for months in residence_months {
        let Some(issued) = months_before(date, months) else { continue };
        for r in sqlx::query("SELECT DISTINCT household_id FROM household_members WHERE valid_to IS NULL AND member LIKE $1")
            .bind(format!("%\"issued\":\"{issued}\"%"))
            .fetch_all(db.pool())
            .await?
        {
            due.add(r.try_get("household_id")?, Boundary::ResidencePermit);
        }
    }
    // Periodic reviews of recipients.
    let mut schedule: Vec<(String, NaiveDate)> = Vec::new();
    for r in sqlx::query(
        "SELECT h.household_id, h.next_review_on, d.effective_date, d.decision FROM households h \
         JOIN decisions d ON d.household_id = h.household_id AND d.version = h.decision_version \
         WHERE d.category <> 'none' AND (h.next_review_on IS NULL OR h.next_review_on <= $1)",
    )
    .bind(date.to_string())
    .fetch_all(db.pool())
    .await?
    {
        let household_id: String = r.try_get("household_id")?;
        let decision: Value = serde_json::from_str(&r.try_get::<String, _>("decision")?).unwrap_or_default();
        let interval = review_interval(&decision);
        let next: Option<NaiveDate> = r.try_get::<Option<String>, _>("next_review_on")?.and_then(|d| d.parse().ok());
        let due_date = match next {
            Some(d) => d,
            None => {
                let decided: Option<NaiveDate> = r.try_get::<String, _>("effective_date")?.parse().ok();
                match decided.and_then(|d| d.checked_add_months(Months::new(interval))) {
                    Some(d) => d,
                    None => continue,
                }
            }
        };
        if due_date <= date {
            let next_review_on = date.checked_add_months(Months::new(interval)).unwrap_or(date);
            due.reviews.insert(household_id.clone(), ReviewDue { next_review_on });
            due.add(household_id, Boundary::PeriodicReview);
        } else if next.is_none() {
            schedule.push((household_id, due_date));
        }
    }
    // Reviews not due yet are scheduled, so that tomorrow's run does not read them again.
    for (household_id, on) in schedule {
        sqlx::query("UPDATE households SET next_review_on = $1 WHERE household_id = $2 AND next_review_on IS NULL")
            .bind(on.to_string())
            .bind(household_id)
            .execute(db.pool())
            .await?;
    }
    Ok(due)
}

async fn facts_dated(db: &Database, field_pattern: &str, day: NaiveDate) -> Result<Vec<String>, PolicyChangeError> {
    let mut out = Vec::new();
    for r in sqlx::query(
        "SELECT DISTINCT m.household_id FROM facts f JOIN household_members m ON m.id_number = f.id_number AND m.valid_to IS NULL \
         WHERE f.state = 'current' AND f.field LIKE $1 AND f.effective_date = $2",
    )
    .bind(field_pattern)
    .bind(day.to_string())
    .fetch_all(db.pool())
    .await?
    {
        out.push(r.try_get("household_id")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }

    #[test]
    fn birthdays_including_the_leap_day() {
        assert_eq!(born_turning(60, d(2026, 11, 29)), vec![d(1966, 11, 29)]);
        assert_eq!(born_turning(16, d(2026, 3, 1)), vec![d(2010, 3, 1)]);
        assert_eq!(born_turning(18, d(2026, 3, 1)), vec![d(2008, 3, 1), d(2008, 2, 29)]);
        assert_eq!(born_turning(18, d(2028, 3, 1)), vec![d(2010, 3, 1)]);
    }

    #[test]
    fn the_shipped_rules_give_the_ages_of_the_policy() {
        let params = Params::shipped().expect("shipped");
        let ages = boundary_ages(&params);
        for age in [16, 18, 55, 60, 70] {
            assert!(ages.contains(&age), "{age} missing from {ages:?}");
        }
    }

    #[test]
    fn able_bodied_households_are_reviewed_twice_a_year() {
        let able = json!({"members": [{"counted": true, "able_to_work": true, "working_age": true}]});
        let old = json!({"members": [{"counted": true, "able_to_work": false, "working_age": false}]});
        let dead = json!({"members": [{"counted": false, "able_to_work": true, "working_age": true}]});
        assert_eq!(review_interval(&able), 6);
        assert_eq!(review_interval(&old), 12);
        assert_eq!(review_interval(&dead), 12);
    }
}
