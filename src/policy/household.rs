//! A household's facts on a date: the input of the policy engine (`doudi assess`, docs/policy.md §4).
//!
//! Guarantees: [`Household::validate`] turns the wire form into [`CheckedHousehold`], in which every
//! ID number is valid and normalised, there is exactly one head, the region is a known division of
//! the policy's province, and every amount is a non-negative exact decimal. Errors name the field
//! (`members[1].id_number`) and never echo personal data.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::division::Divisions;
use crate::idnum::IdNumber;

/// The input as it arrives (F1 lines carry `household_id` and `as_of` too).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Household {
    /// Civil-affairs case number, e.g. `JL-220102-2019-000123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub household_id: Option<String>,
    /// Date the facts were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<NaiveDate>,
    /// GB/T 2260 code of where the household lives (county level, e.g. 220102).
    pub region: String,
    pub members: Vec<Member>,
    #[serde(default)]
    pub assets: Assets,
    /// Self-paid medical costs of all members settled in the 12 months up to the date.
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub medical_self_paid_12m: Decimal,
    #[serde(default)]
    pub housing_difficulty: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub relation: Relation,
    /// Division code of the member's hukou.
    pub hukou_region: String,
    #[serde(default)]
    pub hukou_type: HukouType,
    #[serde(default)]
    pub income: Income,
    #[serde(default)]
    pub employed: bool,
    #[serde(default)]
    pub work_ability: WorkAbility,
    #[serde(default)]
    pub disability: Option<Disability>,
    #[serde(default)]
    pub serious_illness: bool,
    #[serde(default)]
    pub self_care: SelfCare,
    /// Whether anyone is legally bound and able to support the member.
    #[serde(default)]
    pub supporters: Supporters,
    #[serde(default)]
    pub student_level: Option<StudentLevel>,
    #[serde(default)]
    pub union_roster: bool,
    #[serde(default)]
    pub referral_refusals: Vec<Refusal>,
    /// A caseworker's findings on the member's refused referrals (J1): confirmed ends 低保;
    /// not confirmed means the refusals up to that day were justified and no longer count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referral_reviews: Vec<ReferralReview>,
    #[serde(default)]
    pub death_date: Option<NaiveDate>,
    #[serde(default)]
    pub residence_permit: Option<ResidencePermit>,
    #[serde(default)]
    pub pension_months: u32,
    #[serde(default)]
    pub medical_insurance_months: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Head,
    Spouse,
    Child,
    Parent,
    Grandchild,
    Grandparent,
    Sibling,
    Other,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HukouType {
    #[default]
    NonAgricultural,
    Agricultural,
}

/// Monthly income by source (I1). Excluded items (assistance, awards, special-care pensions) are
/// never given here.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Income {
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub wages: Decimal,
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub business: Decimal,
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub property: Decimal,
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub transfer: Decimal,
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub other: Decimal,
}

impl Income {
    pub fn counted(&self) -> Decimal {
        self.wages + self.business + self.property + self.transfer + self.other
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkAbility {
    #[default]
    Able,
    Unable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Disability {
    /// 1 (most severe) to 4.
    pub grade: u8,
    #[serde(rename = "type")]
    pub kind: DisabilityKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabilityKind {
    Visual,
    Hearing,
    Speech,
    Physical,
    Intellectual,
    Mental,
    Multiple,
}

impl Disability {
    /// Severe: grade 1–2, or grade 3 intellectual or mental (W1, P2).
    pub fn severe(&self) -> bool {
        self.grade <= 2 || (self.grade == 3 && matches!(self.kind, DisabilityKind::Intellectual | DisabilityKind::Mental))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfCare {
    #[default]
    Able,
    PartialLoss,
    TotalLoss,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Supporters {
    /// Has a legal supporter able to support (the default: 特困 needs a finding otherwise).
    #[default]
    Able,
    /// Legal supporters exist but cannot fulfil the duty.
    Unable,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StudentLevel {
    Preschool,
    Primary,
    Junior,
    Senior,
    Vocational,
    University,
}

/// A refused job referral: a date, or an object with the date and the reason given. A refusal with
/// a reason does not count (F2).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Refusal {
    Date(NaiveDate),
    Detailed {
        date: NaiveDate,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Refusal {
    /// The date of the refusal.
    pub fn date(&self) -> NaiveDate {
        match self {
            Refusal::Date(d) | Refusal::Detailed { date: d, .. } => *d,
        }
    }

    /// The date, if the refusal counts (no valid reason given).
    pub fn counting_date(&self) -> Option<NaiveDate> {
        match self {
            Refusal::Date(d) => Some(*d),
            Refusal::Detailed { date, reason } => reason.as_deref().map(str::trim).is_none_or(str::is_empty).then_some(*date),
        }
    }
}

/// A caseworker's finding on a member's refused referrals (J1), dated.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReferralReview {
    pub on: NaiveDate,
    pub confirmed: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencePermit {
    /// Division code the permit is for.
    pub region: String,
    pub issued: NaiveDate,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Assets {
    #[serde(default, with = "crate::money::strict_or_zero")]
    pub financial: Decimal,
    #[serde(default)]
    pub vehicles: Vec<Vehicle>,
    #[serde(default = "one")]
    pub homes: u32,
    #[serde(default)]
    pub business_control: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    /// Exempt: used for a disability or as the sole livelihood.
    #[serde(default)]
    pub exempt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An input error naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

fn input_error(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError { field: field.into(), message: message.into() }
}

/// Removes quoted input values from a serde message ("invalid type: string \"王某\", expected u32"),
/// which could be personal data, keeping field and variant names, which are ours.
fn without_values(message: &str) -> String {
    if ["unknown field", "missing field", "duplicate field"].iter().any(|p| message.starts_with(p)) {
        return message.to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown variant `").and_then(|r| r.split_once("`, ")) {
        return format!("unknown value, {}", rest.1);
    }
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match (quote, c) {
            (None, '`' | '"') => {
                quote = Some(c);
                out.push_str("(value)");
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

/// Reads a `T` from one JSON value standing for `field`, naming the field of any error as a parsed
/// document would (quoted input values left out). The path is only tracked again after a failure.
pub fn field_value<'de, T: Deserialize<'de>>(value: &'de serde_json::Value, field: &str) -> Result<T, InputError> {
    T::deserialize(value).or_else(|_| serde_path_to_error::deserialize(value).map_err(|e| named(e, field)))
}

/// Parses a JSON document standing for `field` (e.g. `members[0]`) as [`field_value`] does.
pub fn field_json<'de, T: Deserialize<'de>>(text: &'de str, field: &str) -> Result<T, InputError> {
    serde_json::from_str(text)
        .or_else(|_| serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(|e| named(e, field)))
}

/// The error of a value standing for `field` (empty: the whole document), named by its path.
fn named(e: serde_path_to_error::Error<serde_json::Error>, field: &str) -> InputError {
    let path = e.path().to_string();
    let message = without_values(e.into_inner().to_string().split(" at line ").next().unwrap_or_default());
    let name = match (field, path.as_str()) {
        ("", ".") => "(document)".to_string(),
        ("", _) => path,
        (_, ".") => field.to_string(),
        _ => format!("{field}.{path}"),
    };
    input_error(name, message)
}

/// A household whose every field has been checked.
#[derive(Clone, Debug)]
pub struct CheckedHousehold {
    pub input: Household,
    /// Normalised ID numbers, index-aligned with `input.members`.
    pub ids: Vec<IdNumber>,
    /// Index of the head in `members`.
    pub head: usize,
}

impl Household {
    /// Parses a JSON household, naming the field of any error.
    pub fn from_json(text: &str) -> Result<Household, InputError> {
        field_json(text, "")
    }

    /// Checks the household for an assessment on `date` in `province` (e.g. `220000`).
    pub fn validate(self, date: NaiveDate, province: &str) -> Result<CheckedHousehold, InputError> {
        let divisions = Divisions::shipped();
        if !self.region.starts_with(&province[..2]) || divisions.lookup(&self.region, date).is_none() {
            return Err(input_error("region", "is not a known division code of the province on the assessment date"));
        }
        if self.members.is_empty() {
            return Err(input_error("members", "must list at least the head"));
        }
        let heads: Vec<usize> = self.members.iter().enumerate().filter(|(_, m)| m.relation == Relation::Head).map(|(i, _)| i).collect();
        let head = match heads.as_slice() {
            [one] => *one,
            [] => return Err(input_error("members", "has no member with relation \"head\"")),
            _ => return Err(input_error(format!("members[{}].relation", heads[1]), "a household has exactly one head")),
        };
        let mut ids = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            let id = IdNumber::parse_on(&m.id_number, date.max(chrono::Local::now().date_naive()))
                .map_err(|e| input_error(format!("members[{i}].id_number"), e.to_string()))?;
            if ids.contains(&id) {
                return Err(input_error(format!("members[{i}].id_number"), "the same person is listed twice"));
            }
            ids.push(id);
            if m.hukou_region.len() != 6 || !m.hukou_region.bytes().all(|b| b.is_ascii_digit()) {
                return Err(input_error(format!("members[{i}].hukou_region"), "must be a six-digit division code"));
            }
            if let Some(permit) = &m.residence_permit
                && (permit.region.len() != 6 || !permit.region.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(input_error(format!("members[{i}].residence_permit.region"), "must be a six-digit division code"));
            }
            if let Some(dis) = &m.disability
                && !(1..=4).contains(&dis.grade)
            {
                return Err(input_error(format!("members[{i}].disability.grade"), "must be 1, 2, 3 or 4"));
            }
            let income = [
                ("wages", m.income.wages),
                ("business", m.income.business),
                ("property", m.income.property),
                ("transfer", m.income.transfer),
                ("other", m.income.other),
            ];
            for (name, value) in income {
                if value < Decimal::ZERO {
                    return Err(input_error(format!("members[{i}].income.{name}"), "must not be negative"));
                }
            }
        }
        if self.assets.financial < Decimal::ZERO {
            return Err(input_error("assets.financial", "must not be negative"));
        }
        if self.medical_self_paid_12m < Decimal::ZERO {
            return Err(input_error("medical_self_paid_12m", "must not be negative"));
        }
        Ok(CheckedHousehold { input: self, ids, head })
    }
}
