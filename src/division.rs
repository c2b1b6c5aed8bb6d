//! GB/T 2260 administrative division codes: the dated table in `schemas/divisions.csv`.
//!
//! Guarantees: [`Divisions::lookup`] knows a code only on the dates it was valid; a code's
//! prefecture is its first four digits followed by `00`, its province its first two followed by
//! `0000` (for a prefecture-level code such as 222400 the prefecture is itself).

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::NaiveDate;

const TABLE: &str = include_str!("../schemas/divisions.csv");

/// One division code and the dates it was in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Division {
    pub code: String,
    pub name: String,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
}

impl Division {
    pub fn valid_on(&self, date: NaiveDate) -> bool {
        self.valid_from.is_none_or(|from| from <= date) && self.valid_to.is_none_or(|to| date <= to)
    }
}

/// The whole table, loaded once.
pub struct Divisions {
    by_code: HashMap<String, Vec<Division>>,
}

impl Divisions {
    /// The table shipped with doudi.
    pub fn shipped() -> &'static Divisions {
        static TABLE_ONCE: OnceLock<Divisions> = OnceLock::new();
        TABLE_ONCE.get_or_init(|| Divisions::parse(TABLE))
    }

    fn parse(text: &str) -> Divisions {
        let mut by_code: HashMap<String, Vec<Division>> = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("code,")) {
            let fields: Vec<&str> = line.split(',').collect();
            let date = |i: usize| fields.get(i).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
            if let (Some(code), Some(name)) = (fields.first(), fields.get(1)) {
                by_code.entry(code.to_string()).or_default().push(Division {
                    code: code.to_string(),
                    name: name.to_string(),
                    valid_from: date(2),
                    valid_to: date(3),
                });
            }
        }
        Divisions { by_code }
    }

    /// The division with this code on `date`, if the table has it.
    pub fn lookup(&self, code: &str, date: NaiveDate) -> Option<&Division> {
        self.by_code.get(code)?.iter().find(|d| d.valid_on(date))
    }

    /// Whether the table has this code at any date.
    pub fn known_ever(&self, code: &str) -> bool {
        self.by_code.contains_key(code)
    }

    /// The most specific name for a code: its own, else its prefecture's, else its province's,
    /// joined from province down (e.g. `吉林省长春市南关区`).
    pub fn full_name(&self, code: &str) -> Option<String> {
        let any_name = |c: &str| self.by_code.get(c).and_then(|v| v.last()).map(|d| d.name.clone());
        let province = any_name(&province_of(code)?)?;
        let mut name = province;
        let prefecture = prefecture_of(code)?;
        if prefecture != province_of(code)?
            && let Some(p) = any_name(&prefecture)
        {
            name.push_str(&p);
        }
        if code != prefecture
            && let Some(c) = any_name(code)
        {
            name.push_str(&c);
        }
        Some(name)
    }
}

fn six_digits(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

/// The prefecture-level code of a six-digit division code (`220102` → `220100`).
pub fn prefecture_of(code: &str) -> Option<String> {
    six_digits(code).then(|| format!("{}00", &code[..4]))
}

/// The province-level code of a six-digit division code (`220102` → `220000`).
pub fn province_of(code: &str) -> Option<String> {
    six_digits(code).then(|| format!("{}0000", &code[..2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn knows_jilin_and_dates() {
        let t = Divisions::shipped();
        assert_eq!(t.lookup("220102", d("2020-01-15")).map(|x| x.name.as_str()), Some("南关区"));
        assert!(t.lookup("220381", d("2019-01-01")).is_some());
        assert!(t.lookup("220381", d("2021-01-01")).is_none());
        assert!(t.lookup("220184", d("2021-01-01")).is_some());
        assert!(t.lookup("229999", d("2020-01-01")).is_none());
        assert_eq!(t.full_name("220102").as_deref(), Some("吉林省长春市南关区"));
        assert_eq!(t.full_name("222401").as_deref(), Some("吉林省延边朝鲜族自治州延吉市"));
        assert_eq!(t.full_name("110105").as_deref(), Some("北京市"));
        assert_eq!(prefecture_of("220102").as_deref(), Some("220100"));
        assert_eq!(prefecture_of("222400").as_deref(), Some("222400"));
        assert_eq!(province_of("222401").as_deref(), Some("220000"));
        // Every Jilin prefecture is present.
        for p in ["220100", "220200", "220300", "220400", "220500", "220600", "220700", "220800", "222400"] {
            assert!(t.lookup(p, d("2020-01-01")).is_some(), "{p}");
        }
    }
}
