//! `doudi policy check`: the bounds the policy itself puts on the parameters.
//!
//! S1 (item 1): every 低保 standard taking effect in year y lies within
//! [0.20 × disposable income of y−2 ÷ 12, 0.40 × the region's minimum wage in force on 31 Dec y−2].
//! S2 (item 9): the 特困 basic standard of year y is at least factor × the standard in force on
//! 31 Dec y−1. A bound that cannot be computed (missing data) is itself a violation: an unchecked
//! standard is not a passing one.

use chrono::Datelike;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::Serialize;

use super::params::{Params, last_day_of};
use crate::division::Divisions;
use crate::money::round_yuan;

/// S1: share of the disposable income of two years earlier (yearly, so ÷ 12).
pub const S1_INCOME_SHARE: Decimal = dec!(0.20);
/// S1: share of the minimum wage of two years earlier.
pub const S1_WAGE_SHARE: Decimal = dec!(0.40);

/// One checked standard (S1) or year (S2).
#[derive(Debug, Serialize)]
pub struct CheckRow {
    pub rule: &'static str,
    pub region: String,
    pub region_name: String,
    pub year: i32,
    pub value: Option<Decimal>,
    pub lower: Option<Decimal>,
    pub upper: Option<Decimal>,
    pub ok: bool,
    pub note: String,
}

/// Checks every region and year; rows with `ok == false` are violations.
pub fn check(params: &Params) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    let names = Divisions::shipped();
    let name = |code: &str| names.full_name(code).unwrap_or_default();
    for (region, entries) in params.standards_by_region() {
        for e in &entries {
            let y = e.from.year();
            let income = params.disposable_income(&region, y - 2);
            let wage = params.minimum_wage(&region, last_day_of(y - 2)).ok();
            let lower = income.as_ref().map(|i| S1_INCOME_SHARE * i.value / Decimal::from(12));
            let upper = wage.as_ref().map(|w| S1_WAGE_SHARE * w.value);
            let mut note = format!("standard {} from {}", e.yuan, e.from);
            let ok = match (lower, upper) {
                (Some(lo), Some(hi)) => {
                    note.push_str(&format!(
                        "; 0.20 × {} / 12 and 0.40 × {} ({} on {})",
                        income.as_ref().map(|i| i.value).unwrap_or_default(),
                        wage.as_ref().map(|w| w.value).unwrap_or_default(),
                        wage.as_ref().map(|w| w.region.as_str()).unwrap_or_default(),
                        last_day_of(y - 2)
                    ));
                    lo <= e.yuan && e.yuan <= hi
                }
                (None, _) => {
                    note.push_str(&format!("; no disposable income configured for {}", y - 2));
                    false
                }
                (_, None) => {
                    note.push_str(&format!("; no minimum wage in force on {}", last_day_of(y - 2)));
                    false
                }
            };
            rows.push(CheckRow {
                rule: "S1",
                region: region.clone(),
                region_name: name(&region),
                year: y,
                value: Some(e.yuan),
                lower: lower.map(round_yuan),
                upper: upper.map(round_yuan),
                ok,
                note,
            });
        }
        let first = entries.iter().map(|e| e.from.year()).min().unwrap_or(0);
        let last = entries.iter().map(|e| e.from.year()).max().unwrap_or(0);
        for y in (first + 1)..=(last + 1) {
            match params.tekun_basic(&region, y) {
                Ok(tb) => rows.push(CheckRow {
                    rule: "S2",
                    region: region.clone(),
                    region_name: name(&region),
                    year: y,
                    value: Some(tb.value),
                    lower: Some(round_yuan(tb.bound)),
                    upper: None,
                    ok: tb.value >= tb.bound,
                    note: format!(
                        "特困 basic {} ({}) ≥ factor × standard {} on {}",
                        tb.value,
                        if tb.configured { "configured" } else { "computed" },
                        tb.previous_standard,
                        last_day_of(y - 1)
                    ),
                }),
                Err(e) => rows.push(CheckRow {
                    rule: "S2",
                    region: region.clone(),
                    region_name: name(&region),
                    year: y,
                    value: None,
                    lower: None,
                    upper: None,
                    ok: false,
                    note: e.to_string(),
                }),
            }
        }
    }
    rows
}

/// A readable table of the rows.
pub fn render(rows: &[CheckRow]) -> String {
    let mut out = format!(
        "{:<4} {:<7} {:<24} {:>5} {:>9} {:>9} {:>9}  {:<9} {}\n",
        "rule", "region", "name", "year", "value", "lower", "upper", "result", "detail"
    );
    let show = |d: &Option<Decimal>| d.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
    for r in rows {
        out.push_str(&format!(
            "{:<4} {:<7} {:<24} {:>5} {:>9} {:>9} {:>9}  {:<9} {}\n",
            r.rule,
            r.region,
            r.region_name,
            r.year,
            show(&r.value),
            show(&r.lower),
            show(&r.upper),
            if r.ok { "ok" } else { "VIOLATION" },
            r.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::params::SHIPPED;

    #[test]
    fn shipped_parameters_pass() {
        let rows = check(&Params::shipped().expect("loads"));
        let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{}", render(&rows));
        // 长春 2020: lower 0.2 × 28319 / 12 = 471.98 (2018 data is 2016-based for 2018 entries).
        let cc2019 = rows.iter().find(|r| r.rule == "S1" && r.region == "220100" && r.year == 2019).expect("row");
        assert_eq!(cc2019.lower.map(|d| d.to_string()).as_deref(), Some("471.98"));
        assert_eq!(cc2019.upper.map(|d| d.to_string()).as_deref(), Some("712.00"));
        let s2 = rows.iter().find(|r| r.rule == "S2" && r.region == "220100" && r.year == 2020).expect("row");
        assert_eq!(s2.value, Some(Decimal::from(793)));
    }

    #[test]
    fn too_high_and_too_low_standards_fail() {
        let high = SHIPPED.replacen("yuan = \"610\"", "yuan = \"713\"", 1);
        assert!(check(&Params::parse(&high, "t").expect("loads")).iter().any(|r| !r.ok && r.region == "220100" && r.year == 2019));
        let low = SHIPPED.replacen("yuan = \"610\"", "yuan = \"471\"", 1);
        assert!(check(&Params::parse(&low, "t").expect("loads")).iter().any(|r| !r.ok && r.region == "220100" && r.year == 2019));
    }

    #[test]
    fn configured_tekun_basic_below_bound_fails() {
        let text = format!("{SHIPPED}\n[[tekun_basic]]\nregion = \"220100\"\nyear = 2020\nyuan = \"792\"\nstatus = \"illustrative\"\n");
        let rows = check(&Params::parse(&text, "t").expect("loads"));
        assert!(rows.iter().any(|r| r.rule == "S2" && !r.ok && r.year == 2020 && r.region == "220100"));
        let text = text.replace("yuan = \"792\"", "yuan = \"793\"");
        assert!(check(&Params::parse(&text, "t").expect("loads")).iter().all(|r| r.ok));
    }

    proptest::proptest! {
        /// A configured standard outside the S1 bounds is always caught.
        #[test]
        fn s1_violations_are_always_caught(cents in 0i64..200_000) {
            let value = Decimal::new(cents, 2);
            let text = SHIPPED.replacen("yuan = \"610\"", &format!("yuan = \"{value}\""), 1);
            let Ok(params) = Params::parse(&text, "t") else { return Ok(()); };
            let rows = check(&params);
            let row = rows.iter().find(|r| r.rule == "S1" && r.region == "220100" && r.year == 2019 && r.value == Some(value));
            let lower = Decimal::new(2, 1) * Decimal::from(28319) / Decimal::from(12);
            let upper = Decimal::from(712);
            let outside = value < lower || value > upper;
            proptest::prop_assert!(row.is_some());
            proptest::prop_assert_eq!(row.map(|r| !r.ok), Some(outside));
        }
    }
}
