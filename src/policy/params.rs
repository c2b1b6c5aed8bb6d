//! The policy's parameters: dated series per region, read from `policy/*.toml`.
//!
//! Guarantees: a lookup for a region tries the region's own code, then its prefecture, then the
//! province, and at each level takes the entry with the latest `from` on or before the date; a
//! date before every entry of every level is an error naming the parameter, never a silent default.
//! Loading refuses unknown fields, malformed dates and amounts, and regions outside the province.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::division::{prefecture_of, province_of};

/// Why parameters could not be loaded or looked up.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot read policy file {path}: {message}")]
    Read { path: String, message: String },
    #[error("policy file field `{field}` is invalid: {message}")]
    Field { field: String, message: String },
    #[error("no `{parameter}` is configured for region {region} on {date} (nor for its prefecture or the province)")]
    Missing { parameter: &'static str, region: String, date: NaiveDate },
}

/// Whether a value is published or a placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sourced,
    Illustrative,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyMeta {
    pub id: String,
    pub version: String,
    pub province: String,
    #[serde(default)]
    pub title: String,
}

/// A dated money amount for one region.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatedAmount {
    pub region: String,
    pub from: NaiveDate,
    #[serde(with = "crate::money::strict")]
    pub yuan: Decimal,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Minimum wages per tier from a date (province-wide).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumWage {
    pub from: NaiveDate,
    #[serde(with = "crate::money::strict_vec")]
    pub tiers: Vec<Decimal>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A region's wage tier from a date.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WageTier {
    pub from: NaiveDate,
    pub region: String,
    pub tier: usize,
}

/// A yearly amount for one region (disposable income, configured 特困 basic).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct YearlyAmount {
    pub region: String,
    pub year: i32,
    #[serde(with = "crate::money::strict")]
    pub yuan: Decimal,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddonRates {
    #[serde(with = "crate::money::strict")]
    pub serious_illness: Decimal,
    #[serde(with = "crate::money::strict")]
    pub severe_disability: Decimal,
    #[serde(with = "crate::money::strict")]
    pub aged_70: Decimal,
    #[serde(with = "crate::money::strict")]
    pub minor: Decimal,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CareShare {
    #[serde(with = "crate::money::strict")]
    pub total_loss: Decimal,
    #[serde(with = "crate::money::strict")]
    pub partial_loss: Decimal,
    #[serde(with = "crate::money::strict")]
    pub able: Decimal,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssetCaps {
    pub dibao_financial_months: u32,
    pub low_income_financial_months: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingAge {
    pub min: i32,
    pub male_below: i32,
    pub female_below: i32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Referral {
    pub refusals: usize,
    pub window_months: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Migrant {
    pub months: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tekun {
    pub minor_age: i32,
}

/// A dated set of rule parameters; a later set replaces the whole earlier one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub region: String,
    pub from: NaiveDate,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(with = "crate::money::strict")]
    pub employment_cost_share: Decimal,
    #[serde(with = "crate::money::strict")]
    pub premium_subsidy_fixed_yuan: Decimal,
    #[serde(with = "crate::money::strict")]
    pub tekun_basic_factor: Decimal,
    pub addon_rate: AddonRates,
    pub care_share: CareShare,
    pub asset: AssetCaps,
    pub working_age: WorkingAge,
    pub referral: Referral,
    pub migrant: Migrant,
    pub tekun: Tekun,
}

/// Everything in one policy parameter file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub policy: PolicyMeta,
    pub dibao_standard: Vec<DatedAmount>,
    pub minimum_wage: Vec<MinimumWage>,
    pub wage_tier: Vec<WageTier>,
    #[serde(default)]
    pub disposable_income: Vec<YearlyAmount>,
    #[serde(default)]
    pub tekun_basic: Vec<YearlyAmount>,
    pub rules: Vec<RuleSet>,
}

/// The parameter file shipped in the repository, compiled in so that `doudi assess` works anywhere.
pub const SHIPPED: &str = include_str!("../../policy/jilin.toml");

/// A value together with the region level it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved<T> {
    pub value: T,
    /// The code whose entry applied (the county, its prefecture or the province).
    pub region: String,
    pub from: NaiveDate,
}

impl Params {
    /// The parameters compiled into the binary.
    pub fn shipped() -> Result<Self, ParamsError> {
        Self::parse(SHIPPED, "policy/jilin.toml")
    }

    /// Reads a parameter file.
    pub fn load(path: &Path) -> Result<Self, ParamsError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ParamsError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a parameter file's text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ParamsError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ParamsError::Read { path: origin.into(), message: e.to_string() })?;
        let mut params: Params = serde_path_to_error::deserialize(de)
            .map_err(|e| ParamsError::Field { field: e.path().to_string(), message: e.into_inner().message().trim().to_string() })?;
        params.check()?;
        params.dibao_standard.sort_by(|a, b| (&a.region, a.from).cmp(&(&b.region, b.from)));
        params.minimum_wage.sort_by_key(|w| w.from);
        params.wage_tier.sort_by(|a, b| (&a.region, a.from).cmp(&(&b.region, b.from)));
        params.rules.sort_by(|a, b| (&a.region, a.from).cmp(&(&b.region, b.from)));
        Ok(params)
    }

    fn check(&self) -> Result<(), ParamsError> {
        let field = |field: String, message: String| Err(ParamsError::Field { field, message });
        let province = &self.policy.province;
        if province_of(province).as_deref() != Some(province.as_str()) {
            return field("policy.province".into(), format!("`{province}` is not a province-level code"));
        }
        let prefix = &province[..2];
        let mut regions: Vec<(String, &str)> = Vec::new();
        regions.extend(self.dibao_standard.iter().enumerate().map(|(i, e)| (format!("dibao_standard[{i}].region"), e.region.as_str())));
        regions.extend(self.wage_tier.iter().enumerate().map(|(i, e)| (format!("wage_tier[{i}].region"), e.region.as_str())));
        regions
            .extend(self.disposable_income.iter().enumerate().map(|(i, e)| (format!("disposable_income[{i}].region"), e.region.as_str())));
        regions.extend(self.tekun_basic.iter().enumerate().map(|(i, e)| (format!("tekun_basic[{i}].region"), e.region.as_str())));
        regions.extend(self.rules.iter().enumerate().map(|(i, e)| (format!("rules[{i}].region"), e.region.as_str())));
        for (name, region) in regions {
            if province_of(region).is_none() || !region.starts_with(prefix) {
                return field(name, format!("`{region}` is not a six-digit division code in province {province}"));
            }
        }
        for (i, e) in self.dibao_standard.iter().enumerate() {
            if e.yuan <= Decimal::ZERO {
                return field(format!("dibao_standard[{i}].yuan"), "must be positive".into());
            }
        }
        for (i, w) in self.minimum_wage.iter().enumerate() {
            if w.tiers.is_empty() || w.tiers.iter().any(|t| *t <= Decimal::ZERO) {
                return field(format!("minimum_wage[{i}].tiers"), "must list positive wages, tier 1 first".into());
            }
        }
        for (i, t) in self.wage_tier.iter().enumerate() {
            let wages = self.minimum_wage.iter().filter(|w| w.from <= t.from).max_by_key(|w| w.from);
            let max = wages.map(|w| w.tiers.len()).unwrap_or(0);
            if t.tier == 0 || t.tier > max {
                return field(
                    format!("wage_tier[{i}].tier"),
                    format!("tier {} does not exist in the minimum wage in force on {}", t.tier, t.from),
                );
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let rates = [&r.addon_rate.serious_illness, &r.addon_rate.severe_disability, &r.addon_rate.aged_70, &r.addon_rate.minor];
            let shares = [&r.care_share.total_loss, &r.care_share.partial_loss, &r.care_share.able, &r.employment_cost_share];
            if rates.iter().chain(shares.iter()).any(|v| **v < Decimal::ZERO || **v > Decimal::ONE) {
                return field(format!("rules[{i}]"), "rates and shares must lie between 0 and 1".into());
            }
        }
        if !self.rules.iter().any(|r| r.region == *province) {
            return field("rules".into(), format!("needs at least one set for the province {province}"));
        }
        Ok(())
    }

    /// Region codes to try, most specific first.
    fn chain(&self, region: &str) -> Vec<String> {
        let mut chain = vec![region.to_string()];
        for code in [prefecture_of(region), Some(self.policy.province.clone())].into_iter().flatten() {
            if !chain.contains(&code) {
                chain.push(code);
            }
        }
        chain
    }

    fn resolve<'a, T>(
        &self,
        parameter: &'static str,
        region: &str,
        date: NaiveDate,
        entries: impl Iterator<Item = &'a T> + Clone,
        key: impl Fn(&T) -> (&str, NaiveDate),
    ) -> Result<Resolved<&'a T>, ParamsError>
    where
        T: 'a,
    {
        for code in self.chain(region) {
            let best = entries.clone().filter(|e| key(e).0 == code && key(e).1 <= date).max_by_key(|e| key(e).1);
            if let Some(entry) = best {
                return Ok(Resolved { value: entry, region: code, from: key(entry).1 });
            }
        }
        Err(ParamsError::Missing { parameter, region: region.to_string(), date })
    }

    /// The 低保 standard in force for `region` on `date` (yuan per person per month).
    pub fn standard(&self, region: &str, date: NaiveDate) -> Result<Resolved<Decimal>, ParamsError> {
        let r = self.resolve("dibao_standard", region, date, self.dibao_standard.iter(), |e| (e.region.as_str(), e.from))?;
        Ok(Resolved { value: r.value.yuan, region: r.region, from: r.from })
    }

    /// The wage tier (1-based) of `region` on `date`.
    pub fn tier(&self, region: &str, date: NaiveDate) -> Result<usize, ParamsError> {
        Ok(self.resolve("wage_tier", region, date, self.wage_tier.iter(), |e| (e.region.as_str(), e.from))?.value.tier)
    }

    /// The monthly minimum wage of `region`'s tier on `date`.
    pub fn minimum_wage(&self, region: &str, date: NaiveDate) -> Result<Resolved<Decimal>, ParamsError> {
        let tier = self.tier(region, date)?;
        let wages = self.minimum_wage.iter().filter(|w| w.from <= date).max_by_key(|w| w.from).ok_or(ParamsError::Missing {
            parameter: "minimum_wage",
            region: region.to_string(),
            date,
        })?;
        let value =
            *wages.tiers.get(tier - 1).ok_or(ParamsError::Missing { parameter: "minimum_wage tier", region: region.to_string(), date })?;
        Ok(Resolved { value, region: format!("tier {tier}"), from: wages.from })
    }

    /// The rule set in force for `region` on `date`.
    pub fn rules(&self, region: &str, date: NaiveDate) -> Result<&RuleSet, ParamsError> {
        Ok(self.resolve("rules", region, date, self.rules.iter(), |e| (e.region.as_str(), e.from))?.value)
    }

    /// Urban per-capita disposable income of `year` for `region` (falls back like the others).
    pub fn disposable_income(&self, region: &str, year: i32) -> Option<Resolved<Decimal>> {
        self.chain(region).into_iter().find_map(|code| {
            self.disposable_income.iter().find(|e| e.region == code && e.year == year).map(|e| Resolved {
                value: e.yuan,
                region: code.clone(),
                from: NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or(NaiveDate::MIN),
            })
        })
    }

    /// The configured 特困 basic standard of `year`, if any.
    pub fn configured_tekun_basic(&self, region: &str, year: i32) -> Option<&YearlyAmount> {
        self.chain(region).into_iter().find_map(|code| self.tekun_basic.iter().find(|e| e.region == code && e.year == year))
    }

    /// S2: the 特困 basic standard for `year`: configured, else ⌈factor × standard on 31 Dec of year−1⌉.
    pub fn tekun_basic(&self, region: &str, year: i32) -> Result<TekunBasic, ParamsError> {
        let dec31 = last_day_of(year - 1);
        let standard = self.standard(region, dec31)?;
        let factor = self.rules(region, dec31).or_else(|_| self.rules(region, first_day_of(year)))?.tekun_basic_factor;
        let bound = factor * standard.value;
        let computed = bound.ceil();
        let configured = self.configured_tekun_basic(region, year).map(|e| e.yuan);
        Ok(TekunBasic { value: configured.unwrap_or(computed), bound, previous_standard: standard.value, configured: configured.is_some() })
    }

    /// Every region code the file names, province first.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.dibao_standard.iter().map(|e| e.region.clone()).collect();
        regions.sort();
        regions.dedup();
        regions.sort_by_key(|r| (*r != self.policy.province, r.clone()));
        regions
    }

    /// The earliest date on which a standard is configured for the province (or any region).
    pub fn earliest(&self) -> Option<NaiveDate> {
        self.dibao_standard.iter().map(|e| e.from).min()
    }

    /// Standards per region, for listings.
    pub fn standards_by_region(&self) -> BTreeMap<String, Vec<&DatedAmount>> {
        let mut map: BTreeMap<String, Vec<&DatedAmount>> = BTreeMap::new();
        for e in &self.dibao_standard {
            map.entry(e.region.clone()).or_default().push(e);
        }
        map
    }
}

/// S2's computed bound and the value used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TekunBasic {
    /// The basic standard applied (configured or computed).
    pub value: Decimal,
    /// factor × last year's standard (unrounded): the least the value may be.
    pub bound: Decimal,
    pub previous_standard: Decimal,
    pub configured: bool,
}

pub fn last_day_of(year: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, 12, 31).unwrap_or(NaiveDate::MAX)
}

pub fn first_day_of(year: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or(NaiveDate::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn shipped_parameters_load() {
        let p = Params::shipped().expect("loads");
        assert_eq!(p.standard("220102", d("2020-01-15")).expect("std").value, Decimal::from(610));
        assert_eq!(p.standard("220102", d("2020-01-15")).expect("std").region, "220100");
        // The day a standard changes, and the day before.
        assert_eq!(p.standard("220100", d("2020-06-30")).expect("std").value, Decimal::from(610));
        assert_eq!(p.standard("220100", d("2020-07-01")).expect("std").value, Decimal::from(650));
        // A prefecture without entries falls back to the province.
        let siping = p.standard("220302", d("2020-01-15")).expect("std");
        assert_eq!((siping.value, siping.region.as_str()), (Decimal::from(520), "220000"));
        // Wage tiers change on 2021-12-01.
        assert_eq!(p.minimum_wage("220800", d("2021-11-30")).expect("w").value, Decimal::from(1580));
        assert_eq!(p.minimum_wage("220800", d("2021-12-01")).expect("w").value, Decimal::from(1540));
        assert_eq!(p.minimum_wage("220200", d("2021-12-01")).expect("w").value, Decimal::from(1760));
        // S2: 1.3 × 610 = 793.
        let tb = p.tekun_basic("220102", 2020).expect("tb");
        assert_eq!(tb.value, Decimal::from(793));
        assert!(matches!(p.standard("220100", d("2017-12-31")), Err(ParamsError::Missing { .. })));
    }

    #[test]
    fn bad_files_name_the_field() {
        let bad = SHIPPED.replacen("yuan = \"560\"", "yuan = \"five hundred\"", 1);
        let err = Params::parse(&bad, "x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("dibao_standard[0].yuan"), "{err}");
        let bad = SHIPPED.replacen("region = \"220100\"  # 长春市", "region = \"210100\"", 1);
        let err = Params::parse(&bad, "x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("dibao_standard[0].region"), "{err}");
        let bad = SHIPPED.replacen("tekun_basic_factor = \"1.3\"", "tekun_basic_factor = \"1.3\"\nbonus = 1", 1);
        let err = Params::parse(&bad, "x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("bonus"), "{err}");
    }
}
