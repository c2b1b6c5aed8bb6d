//! Table-driven tests of every rule in docs/policy.md, with its boundaries, and property tests.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

use super::*;
use crate::idnum::complete;
use crate::money::round_yuan;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn params() -> Params {
    Params::shipped().expect("shipped parameters load")
}

/// A valid ID number issued in 220102 for someone born on `birth`; `seq` odd = male.
fn id(birth: &str, seq: u32) -> String {
    complete(&format!("220102{}{seq:03}", birth.replace('-', ""))).expect("17 digits")
}

/// A member with neutral defaults: local, non-agricultural, no income, able, supporters able.
fn member(birth: &str, seq: u32, relation: &str) -> Value {
    json!({
        "id_number": id(birth, seq), "relation": relation, "hukou_region": "220102",
        "income": {"wages": "0", "business": "0", "property": "0", "transfer": "0", "other": "0"},
    })
}

fn household(members: Vec<Value>) -> Value {
    json!({"region": "220102", "members": members, "assets": {"financial": "0", "vehicles": [], "homes": 1, "business_control": false}})
}

fn run(h: &Value, date: &str) -> Decision {
    assess_json(&params(), &h.to_string(), d(date)).unwrap_or_else(|e| panic!("assessment failed: {e}"))
}

fn money(d: Decimal) -> String {
    round_yuan(d).to_string()
}

fn kinds(decision: &Decision) -> Vec<(String, &'static str)> {
    decision.entitlements.iter().map(|e| (e.agency.as_str().to_string(), e.kind)).collect()
}

fn has(decision: &Decision, kind: &str) -> usize {
    decision.entitlements.iter().filter(|e| e.kind == kind).count()
}

// ---- The worked cases of docs/policy.md, exactly ------------------------------------------------------

#[test]
fn worked_tekun_single_person() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/tekun-single.json")).expect("example");
    let decision = assess_json(&params(), &text, d("2020-01-15")).expect("assess");
    let out = serde_json::to_value(&decision).expect("json");
    assert_eq!(
        out["household"],
        json!({"category": "tekun", "basis": null, "size": 1, "per_capita_income": "300.00", "monthly_payment": "1149.00"})
    );
    assert_eq!(
        out["entitlements"]
            .as_array()
            .expect("array")
            .iter()
            .map(|e| (e["agency"].clone(), e["kind"].clone(), e["person"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!("medical"), json!("premium_subsidy_full"), json!("2201**********0015")),
            (json!("medical"), json!("medical_assistance_class1"), json!("2201**********0015")),
        ]
    );
    assert_eq!(out["review_tasks"], json!([]));
    assert_eq!(out["rules"], json!(["A1", "W1", "T1", "T2", "T3"]));
    assert_eq!(out["payment"]["tekun"][0]["basic"], "793.00");
    assert_eq!(out["payment"]["tekun"][0]["care"], "356.00");
    assert!(!out.to_string().contains("220102195003070015"), "the decision must show ID numbers masked");
}

fn worked_case_1() -> Value {
    let mut head = member("1980-05-01", 11, "head");
    head["employed"] = json!(true);
    head["income"]["wages"] = json!("1200");
    let spouse = member("1982-03-02", 22, "spouse");
    let child = member("2011-06-01", 33, "child");
    household(vec![head, spouse, child])
}

#[test]
fn worked_case_1_dibao_with_minor_addon() {
    let decision = run(&worked_case_1(), "2020-01-15");
    assert_eq!(decision.household.category, Category::Dibao);
    assert_eq!(decision.household.basis, Some(Basis::Income));
    assert_eq!(money(decision.household.per_capita_income), "339.00");
    assert_eq!(money(decision.payment.dibao_gap), "813.00");
    assert_eq!(decision.payment.addons.len(), 1);
    assert_eq!((decision.payment.addons[0].reason, money(decision.payment.addons[0].amount)), ("minor", "91.50".into()));
    assert_eq!(money(decision.household.monthly_payment), "904.50");
    assert_eq!(decision.members[0].employment_cost, dec!(183));
    assert!(decision.rules.starts_with(&["A1", "W1", "I1", "I2", "I3", "D1", "P1", "P2"]));
    assert_eq!(has(&decision, "premium_subsidy_fixed"), 3);
    assert_eq!(has(&decision, "medical_assistance_class2"), 3);
    // The spouse is of working age, able and unemployed; the head is employed; no zero-employment.
    assert_eq!(has(&decision, "employment_assistance"), 1);
    assert_eq!(has(&decision, "zero_employment_family"), 0);
}

#[test]
fn worked_case_2_low_income() {
    let mut a = member("1970-01-01", 11, "head");
    a["income"]["transfer"] = json!("900");
    let mut b = member("1972-01-01", 22, "spouse");
    b["income"]["transfer"] = json!("900");
    let decision = run(&household(vec![a, b]), "2020-01-15");
    assert_eq!(decision.household.category, Category::LowIncome);
    assert_eq!(money(decision.household.per_capita_income), "900.00");
    assert_eq!(money(decision.household.monthly_payment), "0.00");
    assert_eq!(decision.rules.iter().filter(|r| **r == "L1").count(), 1);
    assert_eq!(has(&decision, "medical_assistance_class3"), 2);
    // Two working-age, able members, none employed: J2.
    assert_eq!(has(&decision, "zero_employment_family"), 1);
}

#[test]
fn worked_case_3_expense_poverty() {
    let mut a = member("1970-01-01", 11, "head");
    a["income"]["other"] = json!("1500");
    let mut b = member("1972-01-01", 22, "spouse");
    b["income"]["other"] = json!("1500");
    let mut h = household(vec![a, b]);
    h["medical_self_paid_12m"] = json!("30000");
    let decision = run(&h, "2020-01-15");
    assert_eq!((decision.household.category, decision.household.basis), (Category::Dibao, Some(Basis::Expense)));
    assert_eq!(money(decision.household.monthly_payment), "720.00");
    assert!(decision.rules.contains(&"E1") && !decision.rules.contains(&"D1"));
}

#[test]
fn worked_case_4_non_local_agricultural_head_with_young_permit() {
    let mut head = member("1980-01-01", 11, "head");
    head["hukou_region"] = json!("220721");
    head["hukou_type"] = json!("agricultural");
    head["residence_permit"] = json!({"region": "220102", "issued": "2019-05-15"});
    head["pension_months"] = json!(24);
    head["medical_insurance_months"] = json!(24);
    let decision = run(&household(vec![head]), "2020-01-15");
    assert_eq!(decision.household.category, Category::None);
    assert!(decision.rules.contains(&"R1"));
    assert!(decision.entitlements.is_empty());
}

// ---- Boundaries ------------------------------------------------------------------------------------

fn one_person_income(transfer: &str) -> Value {
    let mut head = member("1970-01-01", 11, "head");
    head["income"]["transfer"] = json!(transfer);
    household(vec![head])
}

#[test]
fn income_equal_to_the_standard_and_twice_the_standard() {
    let cases = [
        ("610", Category::Dibao, "0.00"),
        ("610.01", Category::LowIncome, "0.00"),
        ("609.99", Category::Dibao, "0.01"),
        ("1220", Category::LowIncome, "0.00"),
        ("1220.01", Category::None, "0.00"),
    ];
    for (income, category, payment) in cases {
        let decision = run(&one_person_income(income), "2020-01-15");
        assert_eq!(decision.household.category, category, "income {income}");
        assert_eq!(money(decision.household.monthly_payment), payment, "income {income}");
    }
}

#[test]
fn the_day_a_standard_changes() {
    // 长春: 610 until 2020-06-30, 650 from 2020-07-01.
    let h = one_person_income("620");
    let before = run(&h, "2020-06-30");
    let on = run(&h, "2020-07-01");
    assert_eq!(before.household.category, Category::LowIncome);
    assert_eq!(on.household.category, Category::Dibao);
    assert_eq!(money(on.household.monthly_payment), "30.00");
    assert_eq!(on.parameters.standard_from, d("2020-07-01"));
}

fn tekun_in_baicheng(self_care: &str) -> Value {
    let mut head = member("1940-01-01", 11, "head");
    head["supporters"] = json!("none");
    head["self_care"] = json!(self_care);
    let mut h = household(vec![head]);
    h["region"] = json!("220802");
    h["members"][0]["hukou_region"] = json!("220802");
    h
}

#[test]
fn the_day_a_wage_tier_changes() {
    // 白城 moves from tier 3 (1580) to tier 4 (1540) on 2021-12-01. Care uses the wage in force on
    // 31 December of the previous year, so assessments in 2021 use 1580 and in 2022 use 1540.
    let h = tekun_in_baicheng("total_loss");
    let dec2021 = run(&h, "2021-12-01");
    let jan2022 = run(&h, "2022-01-01");
    assert_eq!(money(dec2021.payment.tekun[0].care), "474.00");
    assert_eq!(money(jan2022.payment.tekun[0].care), "462.00");
    // Basic: 1.3 × 520 (2020-12-31: 560? no — 白城 560 from 2020-07-01) = 728 for 2021; 1.3 × 560 = 728.
    assert_eq!(money(dec2021.payment.tekun[0].basic), "728.00");
    assert_eq!(money(jan2022.payment.tekun[0].basic), "728.00");
    for (self_care, care) in [("total_loss", "474.00"), ("partial_loss", "316.00"), ("able", "158.00")] {
        assert_eq!(money(run(&tekun_in_baicheng(self_care), "2021-06-01").payment.tekun[0].care), care);
    }
}

fn migrant(issued: &str, pension: u32, medical: u32) -> Value {
    let mut head = member("1980-01-01", 11, "head");
    head["hukou_region"] = json!("220721");
    head["hukou_type"] = json!("agricultural");
    head["residence_permit"] = json!({"region": "220104", "issued": issued});
    head["pension_months"] = json!(pension);
    head["medical_insurance_months"] = json!(medical);
    household(vec![head])
}

#[test]
fn residence_permit_twelve_month_boundary() {
    assert_eq!(run(&migrant("2019-01-15", 12, 12), "2020-01-15").household.category, Category::Dibao);
    assert_eq!(run(&migrant("2019-01-16", 12, 12), "2020-01-15").household.category, Category::None);
    assert_eq!(run(&migrant("2019-01-15", 11, 12), "2020-01-15").household.category, Category::None);
    assert_eq!(run(&migrant("2019-01-15", 12, 11), "2020-01-15").household.category, Category::None);
    // A non-local non-agricultural head is not eligible.
    let mut h = migrant("2018-01-01", 24, 24);
    h["members"][0]["hukou_type"] = json!("non_agricultural");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::None);
    // A permit for another prefecture does not count.
    let mut h = migrant("2018-01-01", 24, 24);
    h["members"][0]["residence_permit"]["region"] = json!("220202");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::None);
}

fn refuser(refusals: Value) -> Value {
    let mut head = member("1980-01-01", 11, "head");
    head["referral_refusals"] = refusals;
    household(vec![head])
}

#[test]
fn six_month_refusal_window() {
    let tasks =
        |r: Value| run(&refuser(r), "2020-01-15").review_tasks.iter().filter(|t| t.kind == "cancel_dibao_refused_referrals").count();
    // The window is (2019-07-15, 2020-01-15].
    assert_eq!(tasks(json!(["2019-07-15", "2019-12-01"])), 0);
    assert_eq!(tasks(json!(["2019-07-16", "2019-12-01"])), 1);
    assert_eq!(tasks(json!(["2019-12-01", "2020-01-15"])), 1);
    assert_eq!(tasks(json!(["2019-12-01", "2020-01-16"])), 0);
    // A refusal with a valid reason does not count.
    assert_eq!(tasks(json!(["2019-12-01", {"date": "2020-01-02", "reason": "照顾重病家属"}])), 0);
    assert_eq!(tasks(json!(["2019-12-01", {"date": "2020-01-02", "reason": ""}])), 1);
    // The amount is not changed automatically.
    let decision = run(&refuser(json!(["2019-12-01", "2020-01-02"])), "2020-01-15");
    assert_eq!(money(decision.household.monthly_payment), "610.00");
    assert!(decision.rules.contains(&"J1"));
}

#[test]
fn birthday_at_sixteen_makes_a_child_of_working_age() {
    let mut h = worked_case_1();
    h["members"][2]["id_number"] = json!(id("2004-01-15", 33));
    let before = run(&h, "2020-01-14");
    let on = run(&h, "2020-01-15");
    let child = |d: &Decision| d.members[2].clone();
    assert!(!child(&before).able_to_work && !child(&before).working_age);
    assert!(child(&on).able_to_work && child(&on).working_age);
    assert_eq!(has(&before, "employment_assistance"), 1);
    assert_eq!(has(&on, "employment_assistance"), 2);
}

#[test]
fn birthday_at_eighteen_ends_the_minor_addon() {
    let mut h = worked_case_1();
    h["members"][2]["id_number"] = json!(id("2002-01-15", 33));
    assert_eq!(run(&h, "2020-01-14").payment.addons.iter().map(|a| a.reason).collect::<Vec<_>>(), vec!["minor"]);
    assert!(run(&h, "2020-01-15").payment.addons.is_empty());
}

#[test]
fn birthday_at_sixty_can_make_a_person_tekun() {
    let mut head = member("1960-01-15", 11, "head");
    head["supporters"] = json!("none");
    let h = household(vec![head]);
    assert_eq!(run(&h, "2020-01-14").household.category, Category::Dibao);
    assert_eq!(run(&h, "2020-01-15").household.category, Category::Tekun);
}

#[test]
fn birthday_at_seventy_starts_the_aged_addon() {
    let head = member("1950-01-15", 11, "head");
    let h = household(vec![head]);
    assert!(run(&h, "2020-01-14").payment.addons.is_empty());
    let on = run(&h, "2020-01-15");
    assert_eq!(on.payment.addons.iter().map(|a| (a.reason, money(a.amount))).collect::<Vec<_>>(), vec![("aged_70", "91.50".to_string())]);
    assert_eq!(money(on.household.monthly_payment), "701.50");
}

#[test]
fn death_before_on_and_after_the_date() {
    let mut h = worked_case_1();
    for (death, counted, tasks) in [("2020-01-14", false, 1), ("2020-01-15", false, 1), ("2020-01-16", true, 0)] {
        h["members"][1]["death_date"] = json!(death);
        let decision = run(&h, "2020-01-15");
        assert_eq!(decision.members[1].counted, counted, "death {death}");
        assert_eq!(decision.household.size, if counted { 3 } else { 2 }, "death {death}");
        assert_eq!(decision.review_tasks.iter().filter(|t| t.kind == "deceased_member").count(), tasks, "death {death}");
        let spouse = &decision.members[1].person;
        assert_eq!(decision.entitlements.iter().any(|e| &e.person == spouse), counted, "death {death}: entitlements end");
    }
}

#[test]
fn mixed_household_with_one_tekun_member() {
    // An 80-year-old with no able supporter lives with a son who earns; the son's household alone is assessed.
    let mut elder = member("1939-05-01", 11, "parent");
    elder["supporters"] = json!("unable");
    elder["self_care"] = json!("total_loss");
    elder["income"]["transfer"] = json!("200");
    let mut son = member("1975-02-01", 13, "head");
    son["income"]["wages"] = json!("500");
    son["employed"] = json!(true);
    let decision = run(&household(vec![son, elder]), "2020-01-15");
    assert_eq!(decision.members[1].status, Category::Tekun);
    assert_eq!(decision.members[0].status, Category::Dibao);
    assert_eq!(decision.household.category, Category::Dibao);
    // Son alone: 500 − min(500, 183) = 317; gap 610 − 317 = 293. Elder: 793 + 0.30 × 1780 = 1327.
    assert_eq!(money(decision.payment.dibao_gap), "293.00");
    assert_eq!(money(decision.payment.tekun[0].basic + decision.payment.tekun[0].care), "1327.00");
    assert_eq!(money(decision.household.monthly_payment), "1620.00");
    // The elder gets T2, not a P2 add-on, and full premium subsidy; the son gets the fixed one.
    assert!(decision.payment.addons.is_empty());
    assert_eq!(has(&decision, "premium_subsidy_full"), 1);
    assert_eq!(has(&decision, "premium_subsidy_fixed"), 1);
    assert!(decision.rules.contains(&"T3") && decision.rules.contains(&"D1"));
}

#[test]
fn exempt_and_non_exempt_vehicles() {
    let mut h = one_person_income("300");
    h["assets"]["vehicles"] = json!([{"exempt": true, "note": "残疾人代步车"}]);
    assert_eq!(run(&h, "2020-01-15").household.category, Category::Dibao);
    h["assets"]["vehicles"] = json!([{"exempt": false}]);
    let decision = run(&h, "2020-01-15");
    assert_eq!(decision.household.category, Category::None);
    assert!(decision.rules.contains(&"AS1"));
}

#[test]
fn financial_assets_caps() {
    // Per capita cap: 24 × 610 = 14640 for 低保, 36 × 610 = 21960 for 低收入.
    let mut h = one_person_income("300");
    h["assets"]["financial"] = json!("14640");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::Dibao);
    h["assets"]["financial"] = json!("14640.01");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::None);
    let mut h = one_person_income("900");
    h["assets"]["financial"] = json!("21960");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::LowIncome);
    h["assets"]["financial"] = json!("21960.01");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::None);
    let mut h = one_person_income("300");
    h["assets"]["homes"] = json!(2);
    assert_eq!(run(&h, "2020-01-15").household.category, Category::None);
}

#[test]
fn expense_poverty_upgrades_low_income_to_dibao() {
    let mut h = one_person_income("900");
    assert_eq!(run(&h, "2020-01-15").household.category, Category::LowIncome);
    // adjusted = (12 × 900 − 3480) / 1 / 12 = 610 ≤ 610.
    h["medical_self_paid_12m"] = json!("3480");
    let decision = run(&h, "2020-01-15");
    assert_eq!((decision.household.category, decision.household.basis), (Category::Dibao, Some(Basis::Expense)));
    assert_eq!(money(decision.household.monthly_payment), "0.00");
    h["medical_self_paid_12m"] = json!("3479.99");
    let decision = run(&h, "2020-01-15");
    assert_eq!((decision.household.category, decision.household.basis), (Category::LowIncome, Some(Basis::Income)));
    // Expense poverty can also reach 低收入 from nothing.
    let mut h = one_person_income("1300");
    h["medical_self_paid_12m"] = json!("1200");
    let decision = run(&h, "2020-01-15");
    assert_eq!((decision.household.category, decision.household.basis), (Category::LowIncome, Some(Basis::Expense)));
}

#[test]
fn addons_do_not_stack() {
    let mut child = member("2010-01-01", 33, "child");
    child["serious_illness"] = json!(true);
    child["disability"] = json!({"grade": 1, "type": "physical"});
    let mut h = one_person_income("0");
    h["members"].as_array_mut().expect("members").push(child);
    let decision = run(&h, "2020-01-15");
    let child_addons: Vec<_> = decision.payment.addons.iter().filter(|a| a.person == decision.members[1].person).collect();
    assert_eq!(child_addons.len(), 1);
    assert_eq!((child_addons[0].reason, money(child_addons[0].amount)), ("serious_illness", "183.00".to_string()));
}

#[test]
fn grade_three_intellectual_disability_is_severe_but_physical_is_not() {
    let mut h = one_person_income("0");
    h["members"][0]["disability"] = json!({"grade": 3, "type": "intellectual"});
    let decision = run(&h, "2020-01-15");
    assert_eq!(decision.payment.addons.first().map(|a| a.reason), Some("severe_disability"));
    assert!(!decision.members[0].able_to_work);
    h["members"][0]["disability"] = json!({"grade": 3, "type": "physical"});
    let decision = run(&h, "2020-01-15");
    assert!(decision.payment.addons.is_empty());
    assert!(decision.members[0].able_to_work);
}

#[test]
fn rounding_happens_only_at_the_end() {
    let mut members = vec![member("1970-01-01", 11, "head"), member("1972-01-01", 22, "spouse"), member("1990-01-01", 33, "child")];
    members[0]["income"]["other"] = json!("1000");
    let decision = run(&household(members), "2020-01-15");
    // per capita 333.333…; (610 − 333.333…) × 3 = 830 exactly; rounding early would give 830.01.
    assert_eq!(money(decision.household.per_capita_income), "333.33");
    assert_eq!(money(decision.household.monthly_payment), "830.00");
}

#[test]
fn benefits_follow_status() {
    let mut head = member("1980-01-01", 11, "head");
    head["union_roster"] = json!(true);
    let mut student = member("2005-03-01", 22, "child");
    student["student_level"] = json!("senior");
    let mut h = household(vec![head, student]);
    h["housing_difficulty"] = json!(true);
    let decision = run(&h, "2020-01-15");
    assert_eq!(decision.household.category, Category::Dibao);
    let k = kinds(&decision);
    for expected in [
        ("education", "student_aid"),
        ("housing", "housing_assistance"),
        ("hrss", "employment_assistance"),
        ("hrss", "zero_employment_family"),
        ("union", "hardship_classification"),
    ] {
        assert!(k.contains(&(expected.0.to_string(), expected.1)), "{expected:?} in {k:?}");
    }
    let union = decision.entitlements.iter().find(|e| e.kind == "hardship_classification").expect("union");
    assert_eq!(union.category, Some(Category::Dibao));
    assert_eq!(decision.entitlements.iter().find(|e| e.kind == "premium_subsidy_fixed").and_then(|e| e.amount), Some(dec!(150)));
    // The same household above the line keeps only the union classification (category none).
    h["members"][0]["income"]["wages"] = json!("5000");
    let decision = run(&h, "2020-01-15");
    assert_eq!(kinds(&decision), vec![("union".to_string(), "hardship_classification")]);
    assert_eq!(decision.entitlements[0].category, Some(Category::None));
}

// ---- Bad input names the field ---------------------------------------------------------------------

fn error_of(h: &Value, date: &str) -> String {
    match assess_json(&params(), &h.to_string(), d(date)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_names_the_field() {
    let mut h = worked_case_1();
    h["members"][0]["relation"] = json!("spouse");
    assert!(error_of(&h, "2020-01-15").contains("head"));
    let mut h = worked_case_1();
    h["members"][1]["id_number"] = json!("220102198203020221");
    let e = error_of(&h, "2020-01-15");
    assert!(e.contains("members[1].id_number") && !e.contains("220102198203020221"), "{e}");
    let mut h = worked_case_1();
    h["region"] = json!("229999");
    assert!(error_of(&h, "2020-01-15").contains("region"));
    let mut h = worked_case_1();
    h["region"] = json!("110105");
    assert!(error_of(&h, "2020-01-15").contains("region"));
    assert!(error_of(&worked_case_1(), "2017-06-01").contains("date"));
    let mut h = worked_case_1();
    h["members"][0]["income"]["wages"] = json!(1200.5);
    assert!(error_of(&h, "2020-01-15").contains("members[0].income.wages"));
    let mut h = worked_case_1();
    h["members"][0]["salary"] = json!("1");
    assert!(error_of(&h, "2020-01-15").contains("salary"));
    let mut h = worked_case_1();
    h["members"][0]["relation"] = json!("boss");
    let e = error_of(&h, "2020-01-15");
    assert!(e.contains("members[0].relation") && e.contains("`head`") && !e.contains("boss"), "{e}");
    let mut h = worked_case_1();
    h["members"][0]["name"] = json!(12);
    let e = error_of(&h, "2020-01-15");
    assert!(e.contains("members[0].name") && !e.contains("12"), "{e}");
    let mut h = worked_case_1();
    h["members"][0]["id_number"] = json!(220102198005010111u64);
    let e = error_of(&h, "2020-01-15");
    assert!(e.contains("members[0].id_number") && !e.contains("220102198005010111"), "{e}");
}

// ---- Properties -------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn arb_member(relation: &'static str) -> impl Strategy<Value = Value> {
        (
            0i64..32_000,
            0u32..500,
            0i64..300_000,
            0i64..100_000,
            any::<bool>(),
            prop::sample::select(vec!["able", "unable", "none"]),
            prop::sample::select(vec!["able", "partial_loss", "total_loss"]),
            prop::option::of((1u8..=4, prop::sample::select(vec!["physical", "intellectual", "mental", "visual"]))),
            any::<bool>(),
        )
            .prop_map(move |(days, seq, wages, transfer, employed, supporters, self_care, disability, ill)| {
                let birth = d("1930-01-01") + chrono::Duration::days(days);
                let mut m = member(&birth.format("%Y-%m-%d").to_string(), seq, relation);
                m["income"]["wages"] = json!(Decimal::new(wages, 2).to_string());
                m["income"]["transfer"] = json!(Decimal::new(transfer, 2).to_string());
                m["employed"] = json!(employed);
                m["supporters"] = json!(supporters);
                m["self_care"] = json!(self_care);
                m["serious_illness"] = json!(ill);
                if let Some((grade, kind)) = disability {
                    m["disability"] = json!({"grade": grade, "type": kind});
                }
                m
            })
    }

    fn arb_household() -> impl Strategy<Value = Value> {
        (arb_member("head"), prop::collection::vec(arb_member("child"), 0..4), 0i64..3_000_000, 0i64..5_000_000).prop_map(
            |(head, others, financial, medical)| {
                let mut members = vec![head];
                members.extend(others);
                let mut h = household(members);
                h["assets"]["financial"] = json!(Decimal::new(financial, 2).to_string());
                h["medical_self_paid_12m"] = json!(Decimal::new(medical, 2).to_string());
                h
            },
        )
    }

    fn assess_ok(h: &Value) -> Option<Decision> {
        // Random sequence numbers can collide into the same person; such inputs are refused, not assessed.
        assess_json(&params(), &h.to_string(), d("2020-01-15")).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn payment_is_never_negative(h in arb_household()) {
            if let Some(decision) = assess_ok(&h) {
                prop_assert!(decision.household.monthly_payment >= Decimal::ZERO);
                prop_assert!(decision.payment.dibao_gap >= Decimal::ZERO);
            }
        }

        #[test]
        fn more_income_never_raises_the_payment(h in arb_household(), who in 0usize..5, extra in 1i64..200_000, field in prop::sample::select(vec!["wages", "transfer", "other"])) {
            let Some(before) = assess_ok(&h) else { return Ok(()); };
            let mut richer = h.clone();
            let n = richer["members"].as_array().map(Vec::len).unwrap_or(1);
            let m = &mut richer["members"][who % n];
            let old = m["income"][field].as_str().map(|s| s.parse::<Decimal>().unwrap_or_default()).unwrap_or_default();
            m["income"][field] = json!((old + Decimal::new(extra, 2)).to_string());
            let after = assess_ok(&richer).expect("still valid");
            prop_assert!(after.household.monthly_payment <= before.household.monthly_payment,
                "payment rose from {} to {}", before.household.monthly_payment, after.household.monthly_payment);
        }
    }
}
