//! Inbound events to facts: what each canonical topic says about a person or a household.
//!
//! Guarantees: [`extract`] is pure; it reads only the canonical payload (the connectors have already
//! mapped and validated the department's export), normalises every ID number, and names each fact by
//! the field of the policy input it feeds (`employment`, `death`, `disability`, ...). Errors name the
//! field and never echo a value. Single-valued fields have one current fact per person and source;
//! accumulating facts (refused referrals, settlements) carry their own natural key in the field name,
//! so the same record sent twice is one fact.

use chrono::NaiveDate;
use serde_json::{Map, Value, json};

use crate::idnum::IdNumber;

/// The canonical inbound feeds the matcher reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feed {
    Household,
    Employment,
    Student,
    Housing,
    Roster,
    Settlement,
    Vital,
    Disability,
    /// Caseworkers' actions on review tasks (`dept.civil.review-resolution.v1`).
    Resolution,
}

impl Feed {
    pub const ALL: [Feed; 9] = [
        Feed::Household,
        Feed::Employment,
        Feed::Student,
        Feed::Housing,
        Feed::Roster,
        Feed::Settlement,
        Feed::Vital,
        Feed::Disability,
        Feed::Resolution,
    ];

    /// The catalogue topic of the feed.
    pub fn topic(self) -> &'static str {
        match self {
            Feed::Household => "dept.civil.household.v1",
            Feed::Employment => "dept.hrss.employment.v1",
            Feed::Student => "dept.edu.student.v1",
            Feed::Housing => "dept.housing.difficulty.v1",
            Feed::Roster => "dept.union.roster.v1",
            Feed::Settlement => "dept.medical.settlement.v1",
            Feed::Vital => "dept.vital.event.v1",
            Feed::Disability => "dept.cdpf.disability.v1",
            Feed::Resolution => "dept.civil.review-resolution.v1",
        }
    }
}

/// One fact about a person, before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PersonFact {
    /// The policy-input field it feeds; accumulating facts add `:<natural key>`.
    pub field: String,
    pub value: Value,
    /// The date the fact holds from; `None` when the source gives none (applies from the household's
    /// current date, ordered by arrival).
    pub effective: Option<NaiveDate>,
}

/// A household as civil affairs registered it (F1): it replaces the composition.
#[derive(Clone, Debug, PartialEq)]
pub struct HouseholdRecord {
    pub household_id: String,
    pub as_of: NaiveDate,
    pub region: String,
    /// The record without `members`, `household_id` and `as_of`.
    pub base: Value,
    pub members: Vec<RegisteredMember>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredMember {
    pub id: IdNumber,
    pub name: Option<String>,
    pub relation: String,
    /// The member record as registered, with the normalised ID number and without the name.
    pub record: Value,
}

/// What one inbound event says.
#[derive(Clone, Debug, PartialEq)]
pub enum Extracted {
    Household(HouseholdRecord),
    Person { id: IdNumber, name: Option<String>, facts: Vec<PersonFact> },
    Resolution(Box<Resolution>),
}

/// A caseworker's action on a review task (`dept.civil.review-resolution.v1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub task_id: String,
    pub actor: String,
    pub action: ResolutionAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResolutionAction {
    Assign {
        assignee: String,
    },
    Resolve {
        outcome: String,
        reason: String,
        decided_on: Option<NaiveDate>,
        /// The household as the caseworker corrected it: the record as sent and as read.
        household: Option<(Value, HouseholdRecord)>,
    },
}

fn resolution(payload: &Value, today: NaiveDate) -> Result<Extracted, FactError> {
    let task_id = text(payload, "task_id")?.to_string();
    let actor = text(payload, "actor")?.trim().to_string();
    if actor.is_empty() {
        return Err(err("actor", "is blank"));
    }
    let action = match text(payload, "action")? {
        "assign" => ResolutionAction::Assign { assignee: text(payload, "assignee")?.trim().to_string() },
        "resolve" => {
            let household = match payload.get("household") {
                None | Some(Value::Null) => None,
                Some(h) => match household(h, today).map_err(|e| err(format!("household.{}", e.field), e.message))? {
                    Extracted::Household(record) => Some((h.clone(), record)),
                    _ => None,
                },
            };
            ResolutionAction::Resolve {
                outcome: text(payload, "outcome")?.to_string(),
                reason: text(payload, "reason")?.to_string(),
                decided_on: opt_date(payload, "decided_on")?,
                household,
            }
        }
        _ => return Err(err("action", "is neither assign nor resolve")),
    };
    Ok(Extracted::Resolution(Box::new(Resolution { task_id, actor, action })))
}

/// Why an inbound payload could not be used (field named, value never echoed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FactError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FactError {
    FactError { field: field.into(), message: message.into() }
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, FactError> {
    v.get(field).and_then(Value::as_str).ok_or_else(|| err(field, "is missing or not a string"))
}

fn opt_text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn date(v: &Value, field: &str) -> Result<NaiveDate, FactError> {
    crate::dates::ymd(text(v, field)?).ok_or_else(|| err(field, "is not a date YYYY-MM-DD"))
}

fn opt_date(v: &Value, field: &str) -> Result<Option<NaiveDate>, FactError> {
    match opt_text(v, field) {
        None => Ok(None),
        Some(_) => date(v, field).map(Some),
    }
}

fn id(v: &Value, field: &str, today: NaiveDate) -> Result<IdNumber, FactError> {
    IdNumber::parse_on(text(v, field)?, today).map_err(|e| err(field, e.to_string()))
}

fn fact(field: impl Into<String>, value: Value, effective: Option<NaiveDate>) -> PersonFact {
    PersonFact { field: field.into(), value, effective }
}

/// The facts in one canonical payload of `feed`. `today` bounds birth dates in ID numbers.
pub fn extract(feed: Feed, payload: &Value, today: NaiveDate) -> Result<Extracted, FactError> {
    if !payload.is_object() {
        return Err(err("(document)", "is not a JSON object"));
    }
    match feed {
        Feed::Household => return household(payload, today),
        Feed::Resolution => return resolution(payload, today),
        _ => {}
    }
    let person = id(payload, "id_number", today)?;
    let name = opt_text(payload, "name").map(str::to_string);
    let facts = match feed {
        Feed::Household | Feed::Resolution => Vec::new(),
        Feed::Employment => {
            let on = date(payload, "date")?;
            match text(payload, "event")? {
                "employed" => {
                    let wage = opt_text(payload, "monthly_wage").unwrap_or("0");
                    crate::money::parse_strict(wage).map_err(|_| err("monthly_wage", "is not a decimal amount"))?;
                    vec![fact("employment", json!({"employed": true, "wages": wage}), Some(on))]
                }
                "unemployed" => vec![fact("employment", json!({"employed": false, "wages": "0"}), Some(on))],
                "referral_refused" => {
                    let reason = opt_text(payload, "refusal_reason");
                    vec![fact(format!("referral_refusal:{on}"), json!({"date": on, "reason": reason}), Some(on))]
                }
                "pension_paid" | "medical_insurance_paid" => {
                    let months = payload.get("months_paid").and_then(Value::as_u64).ok_or_else(|| err("months_paid", "is missing"))?;
                    let field = if text(payload, "event")? == "pension_paid" { "pension_months" } else { "medical_insurance_months" };
                    vec![fact(field, json!({"months": months}), Some(on))]
                }
                _ => return Err(err("event", "is not a known employment event")),
            }
        }
        Feed::Student => {
            let on = date(payload, "changed_on")?;
            let level = match text(payload, "status")? {
                "enrolled" => Value::String(text(payload, "student_level")?.to_string()),
                _ => Value::Null,
            };
            vec![fact("student_level", json!({"level": level}), Some(on))]
        }
        Feed::Housing => {
            let on = date(payload, "determined_on")?;
            let value =
                payload.get("housing_difficulty").and_then(Value::as_bool).ok_or_else(|| err("housing_difficulty", "is missing"))?;
            vec![fact("housing_difficulty", json!({"value": value}), Some(on))]
        }
        Feed::Roster => {
            let on_file = text(payload, "change")? != "removed" && text(payload, "status")? == "on_file";
            let category = opt_text(payload, "hardship_category");
            vec![fact("union_roster", json!({"on": on_file, "hardship_category": category}), opt_date(payload, "filed_on")?)]
        }
        Feed::Settlement => {
            let on = date(payload, "settled_on")?;
            let paid = text(payload, "self_paid")?;
            let paid = crate::money::parse_strict(paid).map_err(|_| err("self_paid", "is not a decimal amount"))?;
            let total = opt_text(payload, "total_cost").unwrap_or("");
            vec![fact(
                format!("medical_settlement:{on}:{paid}:{total}"),
                json!({"settled_on": on, "self_paid": paid.to_string()}),
                Some(on),
            )]
        }
        Feed::Vital => {
            let on = date(payload, "date")?;
            match text(payload, "event")? {
                "death" => vec![fact("death", json!({"date": on}), Some(on))],
                "death_revoked" => vec![fact("death", json!({"date": null, "revoked_on": on}), Some(on))],
                "hukou_moved_out" => {
                    // Without a destination the hukou is simply no longer in any province division.
                    let region = opt_text(payload, "new_hukou_region").unwrap_or(MOVED_OUT_UNKNOWN);
                    vec![fact("hukou_region", json!({"region": region}), Some(on))]
                }
                _ => return Err(err("event", "is not a known vital event")),
            }
        }
        Feed::Disability => {
            let value = match text(payload, "status")? {
                "valid" => {
                    let grade = payload.get("grade").and_then(Value::as_u64).ok_or_else(|| err("grade", "is missing"))?;
                    json!({"grade": grade, "type": text(payload, "category")?})
                }
                _ => Value::Null,
            };
            vec![fact("disability", value, opt_date(payload, "issued_on")?)]
        }
    };
    Ok(Extracted::Person { id: person, name, facts })
}

/// The hukou region recorded when a person moved out to a place the feed does not name.
pub const MOVED_OUT_UNKNOWN: &str = "000000";

fn household(payload: &Value, today: NaiveDate) -> Result<Extracted, FactError> {
    let household_id = text(payload, "household_id")?.to_string();
    let as_of = date(payload, "as_of")?;
    let region = text(payload, "region")?.to_string();
    let members_in = payload.get("members").and_then(Value::as_array).ok_or_else(|| err("members", "is missing"))?;
    let mut members = Vec::with_capacity(members_in.len());
    for (i, m) in members_in.iter().enumerate() {
        let person = id(m, "id_number", today).map_err(|e| err(format!("members[{i}].{}", e.field), e.message))?;
        if members.iter().any(|x: &RegisteredMember| x.id == person) {
            return Err(err(format!("members[{i}].id_number"), "the same person is listed twice"));
        }
        let relation = text(m, "relation").map_err(|e| err(format!("members[{i}].relation"), e.message))?.to_string();
        let mut record: Map<String, Value> = m.as_object().cloned().unwrap_or_default();
        let name = record.remove("name").and_then(|n| n.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string));
        record.insert("id_number".into(), Value::String(person.as_str().to_string()));
        members.push(RegisteredMember { id: person, name, relation, record: Value::Object(record) });
    }
    let mut base = payload.as_object().cloned().unwrap_or_default();
    for k in ["members", "household_id", "as_of"] {
        base.remove(k);
    }
    Ok(Extracted::Household(HouseholdRecord { household_id, as_of, region, base: Value::Object(base), members }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")
    }

    #[test]
    fn employment_events_become_dated_facts() {
        let p = json!({"id_number": " 220102198506150029 ", "name": "李某", "event": "employed", "date": "2019-12-01", "monthly_wage": "1800.00"});
        let Ok(Extracted::Person { id, name, facts }) = extract(Feed::Employment, &p, today()) else { panic!("extracted") };
        assert_eq!(id.as_str(), "220102198506150029");
        assert_eq!(name.as_deref(), Some("李某"));
        assert_eq!(facts, vec![fact("employment", json!({"employed": true, "wages": "1800.00"}), NaiveDate::from_ymd_opt(2019, 12, 1))]);
        let r = json!({"id_number": "220102198506150029", "event": "referral_refused", "date": "2019-12-10", "refusal_reason": ""});
        let Ok(Extracted::Person { facts, .. }) = extract(Feed::Employment, &r, today()) else { panic!("extracted") };
        assert_eq!(facts[0].field, "referral_refusal:2019-12-10");
        assert_eq!(facts[0].value["reason"], Value::Null, "an empty reason is no reason");
    }

    #[test]
    fn revocation_and_cancellation_clear_the_field() {
        let v = json!({"id_number": "220102195003070015", "event": "death_revoked", "date": "2019-12-28"});
        let Ok(Extracted::Person { facts, .. }) = extract(Feed::Vital, &v, today()) else { panic!("extracted") };
        assert_eq!(facts[0].field, "death");
        assert_eq!(facts[0].value["date"], Value::Null);
        let d = json!({"id_number": "220802198207070625", "certificate_no": "22080219820707062563", "category": "mental", "grade": 3, "status": "cancelled"});
        let Ok(Extracted::Person { facts, .. }) = extract(Feed::Disability, &d, today()) else { panic!("extracted") };
        assert_eq!(facts[0].value, Value::Null);
        assert_eq!(facts[0].effective, None);
    }

    #[test]
    fn households_keep_the_record_without_names() {
        let h = json!({"household_id": "JL-220102-2019-000123", "as_of": "2019-12-01", "region": "220102",
            "members": [{"id_number": "220102195003070015", "name": "王某", "relation": "head", "hukou_region": "220102"}],
            "assets": {"financial": "2000"}});
        let Ok(Extracted::Household(r)) = extract(Feed::Household, &h, today()) else { panic!("extracted") };
        assert_eq!(r.members[0].name.as_deref(), Some("王某"));
        assert!(r.members[0].record.get("name").is_none());
        assert_eq!(r.base, json!({"region": "220102", "assets": {"financial": "2000"}}));
    }

    #[test]
    fn errors_name_the_field_not_the_value() {
        let bad = json!({"id_number": "220102195003070016", "event": "death", "date": "2019-12-20"});
        let e = extract(Feed::Vital, &bad, today()).expect_err("bad check digit");
        assert_eq!(e.field, "id_number");
        assert!(!e.to_string().contains("220102195003070016"));
        let e = extract(Feed::Student, &json!({"id_number": "220102195003070015", "status": "enrolled"}), today()).expect_err("no date");
        assert_eq!(e.field, "changed_on");
        assert!(extract(Feed::Vital, &json!([1]), today()).is_err());
    }
}
