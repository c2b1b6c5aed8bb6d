//! Synthetic canonical events for load tests and benchmarks: valid, deterministic, obviously fake
//! (names are `测试户<n>`), in the regions of the shipped policy.
//!
//! Guarantees: household `n` always has the same ID numbers (valid GB 11643 check characters), so a
//! crash test and its clean reference run see identical input.

use serde_json::{Value, json};

const REGIONS: [&str; 4] = ["220102", "220202", "222401", "220802"];

/// The ID number of member `member` (0 head, 1 spouse, 2 child) of synthetic household `n`.
pub fn person(n: u32, member: u32) -> String {
    let (year, seq) = match member {
        0 => (1960 + n % 20, 1 + 2 * (n % 400)),
        1 => (1962 + n % 20, 2 + 2 * (n % 400)),
        _ => (2008 + n % 8, 1 + 2 * (n % 400)),
    };
    let day = 1 + (n / 400) % 28;
    let month = 1 + (n / (400 * 28)) % 12;
    let region = REGIONS[(n % 4) as usize];
    crate::idnum::complete(&format!("{region}{year:04}{month:02}{day:02}{seq:03}")).unwrap_or_default()
}

/// The civil-affairs record of synthetic household `n`: a couple, a child in every third one,
/// incomes spread around the standard so the categories vary.
pub fn household(n: u32) -> Value {
    let region = REGIONS[(n % 4) as usize];
    let member = |m: u32, relation: &str, wages: u32, employed: bool| {
        json!({"id_number": person(n, m), "name": format!("测试户{n}"), "relation": relation, "hukou_region": region,
               "income": {"wages": wages.to_string(), "transfer": "100"}, "employed": employed, "work_ability": "able",
               "student_level": if m == 2 { json!("primary") } else { Value::Null }})
    };
    let mut members = vec![member(0, "head", (n * 37) % 1500, n.is_multiple_of(2)), member(1, "spouse", 0, false)];
    if n.is_multiple_of(3) {
        members.push(member(2, "child", 0, false));
    }
    json!({"household_id": format!("JL-{region}-2020-{:06}", n % 1_000_000), "as_of": "2020-01-02", "region": region,
           "members": members, "assets": {"financial": "1000", "vehicles": [], "homes": 1, "business_control": false},
           "medical_self_paid_12m": "0", "housing_difficulty": n.is_multiple_of(5)})
}

/// An employment event for the spouse of household `n`, dated after the registration.
pub fn employment(n: u32) -> Value {
    json!({"id_number": person(n, 1), "name": format!("测试户{n}"), "event": "employed", "date": "2020-01-10",
           "employer": "某公司", "monthly_wage": format!("{}.00", 600 + (n * 53) % 2400)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_people_are_valid_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..3000 {
            for m in 0..3 {
                let id = person(n, m);
                assert!(crate::idnum::IdNumber::parse(&id).is_ok(), "{n}/{m}");
                assert!(seen.insert(id), "{n}/{m} repeats");
            }
        }
        let h = household(7);
        assert!(crate::policy::Household::from_json(&h.to_string()).is_ok());
    }
}
