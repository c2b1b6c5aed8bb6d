//! What a decision means for each agency, and the events that tell them.
//!
//! Guarantees: [`entitlements_of`] is the complete set of entitlements in force after a decision,
//! each with the attributes its agency's topic carries and nothing more (data minimisation: the
//! education topic gets the school level, never income or health facts); [`diff`] turns the set in
//! force before and after into granted / changed / ended, and nothing for what did not change.
//! Payloads are built without `event_id`; the outbox adds it as the deterministic `ce_id`.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::policy::{CheckedHousehold, Decision};

/// One entitlement in force, as stored and compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitlementRow {
    pub agency: String,
    pub kind: String,
    pub id_number: String,
    /// Agency-specific attributes (`yearly_amount`, `student_level`, `category`), as a JSON object.
    pub attributes: Value,
    pub rules: Vec<String>,
}

impl EntitlementRow {
    pub fn key(&self) -> (String, String, String) {
        (self.agency.clone(), self.kind.clone(), self.id_number.clone())
    }
}

/// The change an agency is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Granted,
    Changed,
    Ended,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Granted => "granted",
            Change::Changed => "changed",
            Change::Ended => "ended",
        }
    }
}

/// The entitlements a decision puts in force.
pub fn entitlements_of(decision: &Decision, household: &CheckedHousehold) -> Vec<EntitlementRow> {
    decision
        .entitlements
        .iter()
        .map(|e| {
            let mut attributes = serde_json::Map::new();
            if let Some(amount) = e.amount {
                attributes.insert("yearly_amount".into(), json!(crate::money::round_yuan(amount).to_string()));
            }
            match e.agency {
                crate::policy::Agency::Education => {
                    let level = household.ids.iter().position(|id| *id == e.person).and_then(|i| household.input.members[i].student_level);
                    if let Some(level) = level {
                        attributes.insert("student_level".into(), json!(level));
                    }
                }
                crate::policy::Agency::Housing | crate::policy::Agency::Union => {
                    let category = e.category.unwrap_or(decision.household.category);
                    attributes.insert("category".into(), json!(category.as_str()));
                }
                _ => {}
            }
            EntitlementRow {
                agency: e.agency.as_str().to_string(),
                kind: e.kind.to_string(),
                id_number: e.person.as_str().to_string(),
                attributes: Value::Object(attributes),
                rules: e.rules.iter().map(|r| r.to_string()).collect(),
            }
        })
        .collect()
}

/// Granted, changed (attributes differ) and ended entitlements, in a stable order.
pub fn diff(before: &[EntitlementRow], after: &[EntitlementRow]) -> Vec<(Change, EntitlementRow)> {
    let old: BTreeMap<_, _> = before.iter().map(|e| (e.key(), e)).collect();
    let new: BTreeMap<_, _> = after.iter().map(|e| (e.key(), e)).collect();
    let mut out = Vec::new();
    for (key, e) in &new {
        match old.get(key) {
            None => out.push((Change::Granted, (*e).clone())),
            Some(o) if o.attributes != e.attributes => out.push((Change::Changed, (*e).clone())),
            Some(_) => {}
        }
    }
    for (key, e) in &old {
        if !new.contains_key(key) {
            out.push((Change::Ended, (*e).clone()));
        }
    }
    out
}

/// The payload of an entitlement event on the agency's topic (without `event_id`).
pub fn entitlement_payload(
    change: Change,
    e: &EntitlementRow,
    name: Option<&str>,
    household_id: &str,
    region: &str,
    effective: NaiveDate,
) -> Value {
    let mut v = json!({
        "change": change.as_str(),
        "agency": e.agency,
        "kind": e.kind,
        "id_number": e.id_number,
        "household_id": household_id,
        "region": region,
        "effective_date": effective,
        "rules": e.rules,
    });
    if let (Some(obj), Some(name)) = (v.as_object_mut(), name.filter(|n| !n.is_empty() && n.chars().count() <= 64)) {
        obj.insert("name".into(), json!(name));
    }
    if let (Some(obj), Some(attrs)) = (v.as_object_mut(), e.attributes.as_object()) {
        for (k, value) in attrs {
            obj.insert(k.clone(), value.clone());
        }
    }
    v
}

/// The household summary compared between decisions; stored as JSON in
/// `households.decision_summary` beside the decision's version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub category: String,
    pub basis: Option<String>,
    pub size: i64,
    pub per_capita_income: String,
    pub monthly_payment: String,
    pub policy_version: String,
    pub rules: String,
}

impl Summary {
    pub fn of(decision: &Decision) -> Self {
        let h = &decision.household;
        Summary {
            category: h.category.as_str().to_string(),
            basis: h.basis.map(|b| serde_json::to_value(b).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
            size: i64::try_from(h.size).unwrap_or(i64::MAX),
            per_capita_income: crate::money::round_yuan(h.per_capita_income).to_string(),
            monthly_payment: crate::money::round_yuan(h.monthly_payment).to_string(),
            policy_version: decision.parameters.policy_version.clone(),
            rules: decision.rules.join(" "),
        }
    }

    /// The summary of a household nobody is assessed in any more (every member moved away).
    pub fn empty(policy_version: &str) -> Self {
        Summary {
            category: "none".into(),
            basis: None,
            size: 0,
            per_capita_income: "0.00".into(),
            monthly_payment: "0.00".into(),
            policy_version: policy_version.into(),
            rules: String::new(),
        }
    }
}

/// The payload of a status change (without `event_id`).
pub fn status_payload(
    household_id: &str,
    region: &str,
    effective: NaiveDate,
    new: &Summary,
    old: Option<&Summary>,
    members: Value,
) -> Value {
    json!({
        "household_id": household_id,
        "region": region,
        "effective_date": effective,
        "category": new.category,
        "previous_category": old.map_or("none", |o| o.category.as_str()),
        "basis": new.basis,
        "size": new.size,
        "monthly_payment": new.monthly_payment,
        "previous_monthly_payment": old.map_or("0.00", |o| o.monthly_payment.as_str()),
        "policy_version": new.policy_version,
        "rules": if new.rules.is_empty() { Vec::new() } else { new.rules.split(' ').collect::<Vec<_>>() },
        "members": members,
    })
}

/// What a caseworker should check, with the person masked.
pub fn task_detail(kind: &str, masked_person: &str) -> String {
    match kind {
        "deceased_member" => format!("成员 {masked_person} 已死亡，请核对家庭人口与待遇终止。"),
        "cancel_dibao_refused_referrals" => {
            format!("成员 {masked_person} 六个月内两次无正当理由拒绝职业介绍，请依第8条审核是否停发低保。")
        }
        "identity_conflict" => format!("来源数据中 {masked_person} 的姓名与登记不一致，相关事实已暂缓应用，请核对身份。"),
        _ => format!("请核对 {masked_person} 的情况。"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, id: &str, attrs: Value) -> EntitlementRow {
        EntitlementRow { agency: "medical".into(), kind: kind.into(), id_number: id.into(), attributes: attrs, rules: vec!["D1".into()] }
    }

    #[test]
    fn diff_reports_only_differences() {
        let a = row("premium_subsidy_fixed", "1", json!({"yearly_amount": "150.00"}));
        let b = row("medical_assistance_class2", "1", json!({}));
        let c = row("premium_subsidy_fixed", "2", json!({"yearly_amount": "150.00"}));
        assert!(diff(&[a.clone(), b.clone()], &[b.clone(), a.clone()]).is_empty());
        let mut a2 = a.clone();
        a2.attributes = json!({"yearly_amount": "200.00"});
        let mut rules_only = b.clone();
        rules_only.rules = vec!["E1".into()];
        let d = diff(&[a, b], &[a2, c, rules_only]);
        let kinds: Vec<_> = d.iter().map(|(ch, e)| (ch.as_str(), e.id_number.as_str(), e.kind.as_str())).collect();
        assert_eq!(kinds, vec![("changed", "1", "premium_subsidy_fixed"), ("granted", "2", "premium_subsidy_fixed")]);
        assert_eq!(diff(&[row("k", "3", json!({}))], &[]).first().map(|x| x.0), Some(Change::Ended));
    }
}
