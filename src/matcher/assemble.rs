//! The policy input of a household, assembled from what civil affairs registered and what the other
//! departments reported since.
//!
//! Guarantees: [`assemble`] is pure and order-independent: it depends only on the household record,
//! its current members and their current facts, never on the order they arrived in. The department
//! that owns a field is its source of truth (employment for wages, education for the student level,
//! the union for the roster, the federation for disability, vital events for death and hukou, 医保 for
//! self-paid costs); the registered value is used until that department reports. The assessment
//! date is the latest of the registration date and the members' dated facts, so a replay decides on
//! the same date however long after it runs.

use chrono::{Months, NaiveDate};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::policy::household::{Assets, Disability, Member, Refusal, StudentLevel, field_json, field_value};
use crate::policy::{Household, InputError};

/// A current fact of a member, as stored.
#[derive(Clone, Debug)]
pub struct StoredFact {
    pub id_number: String,
    pub field: String,
    pub value: Value,
    pub effective: Option<NaiveDate>,
}

/// A current member as registered: the member's JSON record as stored.
#[derive(Clone, Debug)]
pub struct StoredMember {
    pub id_number: String,
    pub record: String,
}

/// The assembled household and the date to assess it on.
#[derive(Clone, Debug)]
pub struct Assembled {
    pub household: Household,
    pub date: NaiveDate,
}

/// What a stored registration (`households.base`) holds besides its members: the household's own
/// fields. Its region, id and date are the row's, given separately.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    #[serde(default)]
    assets: Assets,
    #[serde(default, with = "crate::money::strict_or_zero")]
    medical_self_paid_12m: Decimal,
    #[serde(default)]
    housing_difficulty: bool,
    #[serde(default, rename = "region")]
    _region: IgnoredAny,
    #[serde(default, rename = "household_id")]
    _household_id: IgnoredAny,
    #[serde(default, rename = "as_of")]
    _as_of: IgnoredAny,
    #[serde(default, rename = "members")]
    _members: IgnoredAny,
}

/// Builds the `doudi assess` input of a household from its registration (`base`, the stored JSON)
/// and its members' facts, typed as it is built. A field that does not parse is named in the
/// error, without its value.
pub fn assemble(
    household_id: &str,
    region: &str,
    as_of: NaiveDate,
    base: &str,
    members: &[StoredMember],
    facts: &[StoredFact],
) -> Result<Assembled, InputError> {
    let date = facts.iter().filter_map(|f| f.effective).fold(as_of, NaiveDate::max);
    let window_start = date.checked_sub_months(Months::new(12)).unwrap_or(date);
    let registration: Registration = field_json(base, "(registration)")?;
    let mut housing: Option<(Option<NaiveDate>, bool)> = None;
    let mut settlements: Option<Decimal> = None;
    let mut members_out = Vec::with_capacity(members.len());
    for (i, stored) in members.iter().enumerate() {
        let at = format!("members[{i}]");
        let mut member: Member = field_json(&stored.record, &at)?;
        for f in facts.iter().filter(|f| f.id_number == stored.id_number) {
            let kind = f.field.split(':').next().unwrap_or_default();
            let field = |name: &str| format!("{at}.{name} ({kind})");
            match kind {
                "employment" => {
                    member.employed = field_value(&f.value["employed"], &field("employed"))?;
                    member.income.wages = field_value::<Money>(&f.value["wages"], &field("income.wages"))?.0;
                }
                "student_level" => {
                    member.student_level = field_value::<Option<StudentLevel>>(&f.value["level"], &field("student_level"))?;
                }
                "union_roster" => member.union_roster = field_value(&f.value["on"], &field("union_roster"))?,
                "death" => member.death_date = field_value(&f.value["date"], &field("death_date"))?,
                "hukou_region" => member.hukou_region = field_value(&f.value["region"], &field("hukou_region"))?,
                "disability" => member.disability = field_value::<Option<Disability>>(&f.value, &field("disability"))?,
                "pension_months" => member.pension_months = field_value(&f.value["months"], &field("pension_months"))?,
                "medical_insurance_months" => {
                    member.medical_insurance_months = field_value(&f.value["months"], &field("medical_insurance_months"))?;
                }
                "housing_difficulty" => {
                    let value = f.value["value"].as_bool().unwrap_or(false);
                    if housing.is_none_or(|(d, _)| f.effective >= d) {
                        housing = Some((f.effective, value));
                    }
                }
                "referral_refusal" => {
                    let date: NaiveDate = field_value(&f.value["date"], &field("referral_refusals.date"))?;
                    let reason: Option<String> = field_value(&f.value["reason"], &field("referral_refusals.reason"))?;
                    if !member.referral_refusals.iter().any(|r| r.date() == date) {
                        member.referral_refusals.push(Refusal::Detailed { date, reason });
                    }
                }
                "referral_review" => {
                    let on: NaiveDate = field_value(&f.value["on"], &field("referral_reviews.on"))?;
                    let confirmed: bool = field_value(&f.value["confirmed"], &field("referral_reviews.confirmed"))?;
                    // A finding takes effect on its date: one made after the assessment date is not known yet.
                    if on <= date {
                        member.referral_reviews.push(crate::policy::household::ReferralReview { on, confirmed });
                    }
                }
                "medical_settlement" => {
                    let on = f.effective.unwrap_or(date);
                    let paid = f.value["self_paid"].as_str().and_then(|s| crate::money::parse_strict(s).ok()).unwrap_or_default();
                    let total = settlements.get_or_insert(Decimal::ZERO);
                    if on > window_start && on <= date {
                        *total += paid;
                    }
                }
                _ => {}
            }
        }
        members_out.push(member);
    }
    let household = Household {
        household_id: Some(household_id.to_string()),
        as_of: Some(as_of),
        region: region.to_string(),
        members: members_out,
        assets: registration.assets,
        // 医保's settlements are the verified figure; the declared one stands only until 医保 reports.
        medical_self_paid_12m: settlements.unwrap_or(registration.medical_self_paid_12m),
        housing_difficulty: housing.map_or(registration.housing_difficulty, |(_, value)| value),
    };
    Ok(Assembled { household, date })
}

/// An amount as the household's fields hold it: a decimal string, absent or null for zero.
#[derive(Deserialize)]
#[serde(transparent)]
struct Money(#[serde(with = "crate::money::strict_or_zero")] Decimal);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn record(id: &str) -> Value {
        json!({"id_number": id, "relation": "head", "hukou_region": "220102", "income": {"wages": "0", "transfer": "300"}, "employed": false})
    }

    fn member(id: &str) -> StoredMember {
        StoredMember { id_number: id.into(), record: record(id).to_string() }
    }

    fn f(id: &str, field: &str, value: Value, on: Option<&str>) -> StoredFact {
        StoredFact { id_number: id.into(), field: field.into(), value, effective: on.map(d) }
    }

    fn money(s: &str) -> Decimal {
        crate::money::parse_strict(s).expect("amount")
    }

    const P: &str = "220102195003070015";

    #[test]
    fn department_facts_override_the_registration_and_move_the_date() {
        let facts = [
            f(P, "employment", json!({"employed": true, "wages": "1800.00"}), Some("2019-12-01")),
            f(P, "death", json!({"date": "2019-12-20"}), Some("2019-12-20")),
            f(P, "union_roster", json!({"on": true}), None),
        ];
        let a = assemble("JL-220102-2019-000123", "220102", d("2019-11-01"), &json!({"assets": {}}).to_string(), &[member(P)], &facts)
            .expect("assembled");
        assert_eq!(a.date, d("2019-12-20"));
        let m = &a.household.members[0];
        assert!(m.employed);
        assert_eq!((m.income.wages, m.income.transfer), (money("1800.00"), money("300")));
        assert_eq!(m.death_date, Some(d("2019-12-20")));
        assert!(m.union_roster);
        assert_eq!(a.household.household_id.as_deref(), Some("JL-220102-2019-000123"));
        assert_eq!(a.household.as_of, Some(d("2019-11-01")));
    }

    #[test]
    fn settlements_replace_the_declared_costs_within_twelve_months() {
        let facts = [
            f(P, "medical_settlement:a", json!({"self_paid": "1000.50"}), Some("2019-06-01")),
            f(P, "medical_settlement:b", json!({"self_paid": "99"}), Some("2018-11-30")),
            f(P, "medical_settlement:c", json!({"self_paid": "1"}), Some("2018-12-01")),
        ];
        let base = json!({"medical_self_paid_12m": "30000"});
        let a = assemble("h", "220102", d("2019-12-01"), &base.to_string(), &[member(P)], &facts).expect("assembled");
        assert_eq!(a.household.medical_self_paid_12m, money("1000.50"), "2018-12-01 is outside (date − 12 months, date]");
        let a = assemble("h", "220102", d("2019-12-01"), &base.to_string(), &[member(P)], &[]).expect("assembled");
        assert_eq!(a.household.medical_self_paid_12m, money("30000"));
    }

    #[test]
    fn refusals_merge_without_duplicates_and_order_does_not_matter() {
        let mut facts = vec![
            f(P, "referral_refusal:2019-12-10", json!({"date": "2019-12-10", "reason": null}), Some("2019-12-10")),
            f(P, "referral_refusal:2019-11-01", json!({"date": "2019-11-01", "reason": null}), Some("2019-11-01")),
            f(P, "housing_difficulty", json!({"value": true}), Some("2019-11-20")),
        ];
        let mut r = record(P);
        r["referral_refusals"] = json!(["2019-11-01"]);
        let m = StoredMember { id_number: P.into(), record: r.to_string() };
        let a = assemble("h", "220102", d("2019-10-01"), &json!({}).to_string(), std::slice::from_ref(&m), &facts).expect("assembled");
        facts.reverse();
        let b = assemble("h", "220102", d("2019-10-01"), &json!({}).to_string(), &[m], &facts).expect("assembled");
        assert_eq!(a.household.members[0].referral_refusals.len(), 2);
        assert!(a.household.housing_difficulty);
        assert_eq!(a.date, b.date);
        assert_eq!(a.household.housing_difficulty, b.household.housing_difficulty);
        let dates = |h: &Household| h.members[0].referral_refusals.iter().filter_map(Refusal::counting_date).collect::<Vec<_>>();
        let (mut x, mut y) = (dates(&a.household), dates(&b.household));
        x.sort();
        y.sort();
        assert_eq!(x, y);
    }

    #[test]
    fn the_registration_keeps_its_own_fields_and_the_row_gives_id_region_and_date() {
        let base = json!({"region": "220199", "assets": {"financial": "2000"}, "housing_difficulty": true});
        let a = assemble("h", "220102", d("2019-10-01"), &base.to_string(), &[member(P)], &[]).expect("assembled");
        assert_eq!(a.household.region, "220102");
        assert_eq!(a.household.assets.financial, money("2000"));
        assert!(a.household.housing_difficulty);
        let parsed = Household::from_json(&serde_json::to_string(&a.household).expect("json"));
        assert!(parsed.is_ok(), "the assembled input is a valid `doudi assess` input: {parsed:?}");
    }

    #[test]
    fn a_field_that_does_not_parse_is_named_without_its_value() {
        let facts = [f(P, "employment", json!({"employed": true, "wages": "18x0"}), Some("2019-12-01"))];
        let e = assemble("h", "220102", d("2019-11-01"), &json!({}).to_string(), &[member(P)], &facts).expect_err("bad wages");
        assert_eq!(e.field, "members[0].income.wages (employment)");
        assert!(!e.message.contains("18x0"), "{e}");
        let mut r = record(P);
        r["relation"] = json!("cousin");
        let e = assemble(
            "h",
            "220102",
            d("2019-11-01"),
            &json!({}).to_string(),
            &[StoredMember { id_number: P.into(), record: r.to_string() }],
            &[],
        )
        .expect_err("bad relation");
        assert_eq!(e.field, "members[0].relation");
        assert!(!e.message.contains("cousin"), "{e}");
        let e = assemble("h", "220102", d("2019-11-01"), &json!({"assets": {"financial": 5}}).to_string(), &[member(P)], &[])
            .expect_err("number");
        assert_eq!(e.field, "(registration).assets.financial");
        let e =
            assemble("h", "220102", d("2019-11-01"), &json!({"surprise": 1}).to_string(), &[member(P)], &[]).expect_err("unknown field");
        assert_eq!(e.field, "(registration).surprise");
    }
}
