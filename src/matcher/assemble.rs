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
use serde_json::{Map, Value, json};

/// A current fact of a member, as stored.
#[derive(Clone, Debug)]
pub struct StoredFact {
    pub id_number: String,
    pub field: String,
    pub value: Value,
    pub effective: Option<NaiveDate>,
}

/// A current member as registered.
#[derive(Clone, Debug)]
pub struct StoredMember {
    pub id_number: String,
    pub record: Value,
}

/// The assembled household and the date to assess it on.
#[derive(Clone, Debug)]
pub struct Assembled {
    pub household: Value,
    pub date: NaiveDate,
}

/// Builds the `doudi assess` input of a household from its registration and its members' facts.
pub fn assemble(
    household_id: &str,
    region: &str,
    as_of: NaiveDate,
    base: &Value,
    members: Vec<StoredMember>,
    facts: &[StoredFact],
) -> Assembled {
    let date = facts.iter().filter_map(|f| f.effective).fold(as_of, NaiveDate::max);
    let window_start = date.checked_sub_months(Months::new(12)).unwrap_or(date);
    let mut out: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
    out.insert("household_id".into(), json!(household_id));
    out.insert("as_of".into(), json!(as_of));
    out.insert("region".into(), json!(region));
    let mut housing: Option<(Option<NaiveDate>, bool)> = None;
    let mut settlements: Option<Decimal> = None;
    let mut members_out = Vec::with_capacity(members.len());
    for member in members {
        let mut record: Map<String, Value> = match member.record {
            Value::Object(record) => record,
            _ => Map::new(),
        };
        let mut refusals: Vec<Value> = record.get("referral_refusals").and_then(Value::as_array).cloned().unwrap_or_default();
        for f in facts.iter().filter(|f| f.id_number == member.id_number) {
            match f.field.split(':').next().unwrap_or_default() {
                "employment" => {
                    record.insert("employed".into(), f.value["employed"].clone());
                    let income = record.entry("income").or_insert_with(|| json!({}));
                    if let Some(income) = income.as_object_mut() {
                        income.insert("wages".into(), f.value["wages"].clone());
                    }
                }
                "student_level" => {
                    record.insert("student_level".into(), f.value["level"].clone());
                }
                "union_roster" => {
                    record.insert("union_roster".into(), f.value["on"].clone());
                }
                "death" => {
                    record.insert("death_date".into(), f.value["date"].clone());
                }
                "hukou_region" => {
                    record.insert("hukou_region".into(), f.value["region"].clone());
                }
                "disability" => {
                    record.insert("disability".into(), f.value.clone());
                }
                "pension_months" => {
                    record.insert("pension_months".into(), f.value["months"].clone());
                }
                "medical_insurance_months" => {
                    record.insert("medical_insurance_months".into(), f.value["months"].clone());
                }
                "housing_difficulty" => {
                    let value = f.value["value"].as_bool().unwrap_or(false);
                    if housing.is_none_or(|(d, _)| f.effective >= d) {
                        housing = Some((f.effective, value));
                    }
                }
                "referral_refusal" => {
                    let counted = |r: &Value| r.as_str().or_else(|| r.get("date").and_then(Value::as_str)).map(str::to_string);
                    let date = f.value["date"].as_str().map(str::to_string);
                    if !refusals.iter().any(|r| counted(r) == date) {
                        refusals.push(json!({"date": f.value["date"], "reason": f.value["reason"]}));
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
        record.insert("referral_refusals".into(), Value::Array(refusals));
        members_out.push(Value::Object(record));
    }
    out.insert("members".into(), Value::Array(members_out));
    if let Some((_, value)) = housing {
        out.insert("housing_difficulty".into(), json!(value));
    }
    // 医保's settlements are the verified figure; the declared one stands only until 医保 reports.
    if let Some(total) = settlements {
        out.insert("medical_self_paid_12m".into(), json!(total.to_string()));
    }
    Assembled { household: Value::Object(out), date }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn member(id: &str) -> StoredMember {
        StoredMember {
            id_number: id.into(),
            record: json!({"id_number": id, "relation": "head", "hukou_region": "220102", "income": {"wages": "0", "transfer": "300"}, "employed": false}),
        }
    }

    fn f(id: &str, field: &str, value: Value, on: Option<&str>) -> StoredFact {
        StoredFact { id_number: id.into(), field: field.into(), value, effective: on.map(d) }
    }

    const P: &str = "220102195003070015";

    #[test]
    fn department_facts_override_the_registration_and_move_the_date() {
        let facts = [
            f(P, "employment", json!({"employed": true, "wages": "1800.00"}), Some("2019-12-01")),
            f(P, "death", json!({"date": "2019-12-20"}), Some("2019-12-20")),
            f(P, "union_roster", json!({"on": true}), None),
        ];
        let a = assemble("JL-220102-2019-000123", "220102", d("2019-11-01"), &json!({"assets": {}}), vec![member(P)], &facts);
        assert_eq!(a.date, d("2019-12-20"));
        let m = &a.household["members"][0];
        assert_eq!(m["employed"], json!(true));
        assert_eq!(m["income"], json!({"wages": "1800.00", "transfer": "300"}));
        assert_eq!(m["death_date"], json!("2019-12-20"));
        assert_eq!(m["union_roster"], json!(true));
        let parsed = crate::policy::Household::from_json(&a.household.to_string());
        assert!(parsed.is_ok(), "assembled input parses: {parsed:?}");
    }

    #[test]
    fn settlements_replace_the_declared_costs_within_twelve_months() {
        let facts = [
            f(P, "medical_settlement:a", json!({"self_paid": "1000.50"}), Some("2019-06-01")),
            f(P, "medical_settlement:b", json!({"self_paid": "99"}), Some("2018-11-30")),
            f(P, "medical_settlement:c", json!({"self_paid": "1"}), Some("2018-12-01")),
        ];
        let a = assemble("h", "220102", d("2019-12-01"), &json!({"medical_self_paid_12m": "30000"}), vec![member(P)], &facts);
        assert_eq!(a.household["medical_self_paid_12m"], json!("1000.50"), "2018-12-01 is outside (date − 12 months, date]");
        let a = assemble("h", "220102", d("2019-12-01"), &json!({"medical_self_paid_12m": "30000"}), vec![member(P)], &[]);
        assert_eq!(a.household["medical_self_paid_12m"], json!("30000"));
    }

    #[test]
    fn refusals_merge_without_duplicates_and_order_does_not_matter() {
        let mut facts = vec![
            f(P, "referral_refusal:2019-12-10", json!({"date": "2019-12-10", "reason": null}), Some("2019-12-10")),
            f(P, "referral_refusal:2019-11-01", json!({"date": "2019-11-01", "reason": null}), Some("2019-11-01")),
            f(P, "housing_difficulty", json!({"value": true}), Some("2019-11-20")),
        ];
        let mut m = member(P);
        m.record["referral_refusals"] = json!(["2019-11-01"]);
        let a = assemble("h", "220102", d("2019-10-01"), &json!({}), vec![m.clone()], &facts);
        facts.reverse();
        let b = assemble("h", "220102", d("2019-10-01"), &json!({}), vec![m], &facts);
        assert_eq!(a.household["members"][0]["referral_refusals"].as_array().map(Vec::len), Some(2));
        assert_eq!(a.household["housing_difficulty"], json!(true));
        assert_eq!(a.date, b.date);
        assert_eq!(a.household["housing_difficulty"], b.household["housing_difficulty"]);
    }
}
