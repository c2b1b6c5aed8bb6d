//! The rules of docs/policy.md §2 applied to one household on one date.
//!
//! Guarantees: pure (no I/O, no clock); every amount is exact until [`round_yuan`] at the end; every
//! comparison is inclusive where the policy says 低于（含）; every category, amount, entitlement and
//! review task carries the ids of the rules that produced it, and `Decision::rules` lists them in
//! the order of docs/policy.md. A decision holds ID numbers; its JSON form shows them masked only.

use chrono::{Datelike, Months, NaiveDate};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

use super::household::{CheckedHousehold, HukouType, SelfCare, Supporters};
use super::params::{Params, ParamsError, RuleSet, last_day_of};
use crate::division::prefecture_of;
use crate::idnum::{IdNumber, Sex};
use crate::money::round_yuan;

/// 老年人: 60 and over (老年人权益保障法), used by W1 and T1.
const ELDERLY_AGE: i32 = 60;
/// P2: aged 70 and over.
const ADDON_AGED: i32 = 70;
/// P2: minors are under 18.
const ADDON_MINOR_BELOW: i32 = 18;

/// Entitlement kinds in the order of docs/policy.md §3; decisions list entitlements in this order.
pub const ENTITLEMENT_KINDS: [&str; 10] = [
    "premium_subsidy_full",
    "premium_subsidy_fixed",
    "medical_assistance_class1",
    "medical_assistance_class2",
    "medical_assistance_class3",
    "student_aid",
    "housing_assistance",
    "employment_assistance",
    "zero_employment_family",
    "hardship_classification",
];

fn kind_rank(kind: &str) -> usize {
    ENTITLEMENT_KINDS.iter().position(|k| *k == kind).unwrap_or(ENTITLEMENT_KINDS.len())
}

/// Rule ids in the order of docs/policy.md; `Decision::rules` follows it.
pub const RULE_ORDER: [&str; 20] =
    ["A1", "A2", "R1", "W1", "I1", "I2", "I3", "AS1", "AS2", "T1", "T2", "T3", "D1", "L1", "E1", "P1", "P2", "J1", "J2", "V1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Tekun,
    Dibao,
    LowIncome,
    None,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Tekun => "tekun",
            Category::Dibao => "dibao",
            Category::LowIncome => "low_income",
            Category::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    Income,
    Expense,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agency {
    Medical,
    Education,
    Housing,
    Hrss,
    Union,
}

impl Agency {
    pub fn as_str(self) -> &'static str {
        match self {
            Agency::Medical => "medical",
            Agency::Education => "education",
            Agency::Housing => "housing",
            Agency::Hrss => "hrss",
            Agency::Union => "union",
        }
    }
}

/// Why an assessment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AssessError {
    #[error("field `date`: {0}")]
    Parameters(#[from] ParamsError),
}

// Both written through `collect_str`: serde_json formats them straight into its output (the
// same text as `masked()` and `to_string()`), without a string per value.
fn masked<S: Serializer>(id: &IdNumber, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::idnum::Masked(id.as_str()))
}

fn yuan<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&round_yuan(*d))
}

fn opt_yuan<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => yuan(d, s),
        None => s.serialize_none(),
    }
}

/// The household-level result (docs/policy.md §4 `household`).
#[derive(Clone, Debug, Serialize)]
pub struct HouseholdResult {
    pub category: Category,
    pub basis: Option<Basis>,
    /// Members counted (A2).
    pub size: usize,
    /// (Σ counted income − Σ employment cost) / size (I3), rounded for display only.
    #[serde(serialize_with = "yuan")]
    pub per_capita_income: Decimal,
    /// The whole monthly payment: 低保 gap + add-ons + 特困 support, rounded once.
    #[serde(serialize_with = "yuan")]
    pub monthly_payment: Decimal,
}

/// One member's add-on (P2).
#[derive(Clone, Debug, Serialize)]
pub struct Addon {
    #[serde(serialize_with = "masked")]
    pub person: IdNumber,
    /// `serious_illness`, `severe_disability`, `aged_70` or `minor`: the highest applicable.
    pub reason: &'static str,
    #[serde(serialize_with = "yuan")]
    pub rate: Decimal,
    #[serde(serialize_with = "yuan")]
    pub amount: Decimal,
}

/// One 特困 member's support (T2).
#[derive(Clone, Debug, Serialize)]
pub struct TekunSupport {
    #[serde(serialize_with = "masked")]
    pub person: IdNumber,
    #[serde(serialize_with = "yuan")]
    pub basic: Decimal,
    #[serde(serialize_with = "yuan")]
    pub care: Decimal,
    pub self_care: SelfCare,
}

/// The parts of the monthly payment, each exact; shown rounded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PaymentParts {
    /// P1: (standard − x) × members assessed, for a 低保 household.
    #[serde(serialize_with = "yuan")]
    pub dibao_gap: Decimal,
    pub addons: Vec<Addon>,
    pub tekun: Vec<TekunSupport>,
}

/// One member's status on the date.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    #[serde(serialize_with = "masked")]
    pub person: IdNumber,
    pub age: i32,
    pub sex: Sex,
    /// Counted in the household (A2: not dead on the date).
    pub counted: bool,
    pub status: Category,
    pub able_to_work: bool,
    pub working_age: bool,
    #[serde(serialize_with = "yuan")]
    pub counted_income: Decimal,
    #[serde(serialize_with = "yuan")]
    pub employment_cost: Decimal,
}

/// One benefit one agency must provide (docs/policy.md §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entitlement {
    pub agency: Agency,
    pub kind: &'static str,
    #[serde(serialize_with = "masked")]
    pub person: IdNumber,
    /// Yearly amount where the kind has one (premium_subsidy_fixed).
    #[serde(serialize_with = "opt_yuan", skip_serializing_if = "Option::is_none")]
    pub amount: Option<Decimal>,
    /// The category the agency classifies by (union), when it needs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    pub rules: Vec<&'static str>,
}

/// Work for a caseworker; never an automatic change of amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewTask {
    pub kind: &'static str,
    #[serde(serialize_with = "masked")]
    pub person: IdNumber,
    pub rule: &'static str,
}

/// The parameters an assessment used, for the explanation and audit.
#[derive(Clone, Debug, Serialize)]
pub struct UsedParameters {
    pub policy_version: String,
    #[serde(serialize_with = "yuan")]
    pub standard: Decimal,
    pub standard_region: String,
    pub standard_from: NaiveDate,
    #[serde(serialize_with = "opt_yuan", skip_serializing_if = "Option::is_none")]
    pub tekun_basic: Option<Decimal>,
    #[serde(serialize_with = "opt_yuan", skip_serializing_if = "Option::is_none")]
    pub care_minimum_wage: Option<Decimal>,
}

/// Everything decided about a household on a date.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub date: NaiveDate,
    pub region: String,
    pub household: HouseholdResult,
    pub payment: PaymentParts,
    pub members: Vec<MemberStatus>,
    pub entitlements: Vec<Entitlement>,
    pub review_tasks: Vec<ReviewTask>,
    pub rules: Vec<&'static str>,
    pub parameters: UsedParameters,
    /// Step-by-step reasoning in Chinese, with the numbers (filled by `--explain`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explanation: Vec<String>,
}

/// Collects rule ids, then orders them as docs/policy.md does.
#[derive(Default)]
struct Fired(Vec<&'static str>);

impl Fired {
    fn add(&mut self, rule: &'static str) {
        if !self.0.contains(&rule) {
            self.0.push(rule);
        }
    }
    fn ordered(mut self) -> Vec<&'static str> {
        self.0.sort_by_key(|r| RULE_ORDER.iter().position(|o| o == r).unwrap_or(usize::MAX));
        self.0
    }
}

fn working_age(rules: &RuleSet, age: i32, sex: Sex) -> bool {
    let below = match sex {
        Sex::Male => rules.working_age.male_below,
        Sex::Female => rules.working_age.female_below,
    };
    age >= rules.working_age.min && age < below
}

/// The explanation, built only when asked for: batch re-evaluation does not pay for the text.
struct Steps {
    enabled: bool,
    lines: Vec<String>,
}

impl Steps {
    fn add(&mut self, line: impl FnOnce() -> String) {
        if self.enabled {
            self.lines.push(line());
        }
    }
}

/// Applies every rule to `household` on `date`.
pub fn assess(params: &Params, household: &CheckedHousehold, date: NaiveDate) -> Result<Decision, AssessError> {
    evaluate(params, household, date, false)
}

/// As [`assess`], with the step-by-step explanation in Chinese (`Decision::explanation`).
pub fn assess_explained(params: &Params, household: &CheckedHousehold, date: NaiveDate) -> Result<Decision, AssessError> {
    evaluate(params, household, date, true)
}

fn evaluate(params: &Params, household: &CheckedHousehold, date: NaiveDate, explain: bool) -> Result<Decision, AssessError> {
    let h = &household.input;
    let standard = params.standard(&h.region, date)?;
    let std = standard.value;
    let rules = params.rules(&h.region, date)?;
    let mut fired = Fired::default();
    let mut steps = Steps { enabled: explain, lines: Vec::new() };
    let mut review_tasks = Vec::new();
    let mut parameters = UsedParameters {
        policy_version: params.policy.version.clone(),
        standard: std,
        standard_region: standard.region.clone(),
        standard_from: standard.from,
        tekun_basic: None,
        care_minimum_wage: None,
    };
    steps.add(|| {
        format!(
            "评估日期 {date}，家庭所在地 {}（{}）；适用低保标准 {} 元/人·月（{} 自 {} 起执行，参数版本 {}）。",
            h.region,
            crate::division::Divisions::shipped().full_name(&h.region).unwrap_or_default(),
            round_yuan(std),
            standard.region,
            standard.from,
            params.policy.version
        )
    });

    // A1, A2, W1, I1, I2 per member.
    fired.add("A1");
    let mut members: Vec<MemberStatus> = Vec::with_capacity(h.members.len());
    let mut w1_derived = false;
    for (m, id) in h.members.iter().zip(&household.ids) {
        let age = id.age_on(date);
        let counted = m.death_date.is_none_or(|d| d > date);
        if !counted {
            fired.add("A2");
            fired.add("V1");
            review_tasks.push(ReviewTask { kind: "deceased_member", person: id.clone(), rule: "V1" });
            steps.add(|| {
                format!(
                    "成员 {} 已于 {} 死亡，不计入家庭人口（A2），其待遇终止，生成复核任务（V1）。",
                    id.masked(),
                    m.death_date.unwrap_or(date)
                )
            });
        }
        let by_w1 = age >= ELDERLY_AGE || age < rules.working_age.min || m.disability.is_some_and(|d| d.severe());
        if by_w1 && counted {
            w1_derived = true;
        }
        let able = !by_w1 && m.work_ability == super::household::WorkAbility::Able;
        let counted_income = m.income.counted();
        let employment_cost =
            if m.employed { (m.income.wages + m.income.business).min(rules.employment_cost_share * std) } else { Decimal::ZERO };
        members.push(MemberStatus {
            person: id.clone(),
            age,
            sex: id.sex(),
            counted,
            status: Category::None,
            able_to_work: able,
            working_age: working_age(rules, age, id.sex()),
            counted_income,
            employment_cost,
        });
    }
    if w1_derived {
        fired.add("W1");
    }
    let counted: Vec<usize> = (0..members.len()).filter(|&i| members[i].counted).collect();
    let size = counted.len();
    let total_net: Decimal = counted.iter().map(|&i| members[i].counted_income - members[i].employment_cost).sum();
    let per_capita_all = if size == 0 { Decimal::ZERO } else { total_net / Decimal::from(size) };
    steps.add(|| format!("家庭成员 {} 人，计入家庭人口 {} 人。", members.len(), size));

    let mut decision = Decision {
        date,
        region: h.region.clone(),
        household: HouseholdResult {
            category: Category::None,
            basis: None,
            size,
            per_capita_income: per_capita_all,
            monthly_payment: Decimal::ZERO,
        },
        payment: PaymentParts::default(),
        members: Vec::new(),
        entitlements: Vec::new(),
        review_tasks: Vec::new(),
        rules: Vec::new(),
        parameters: parameters.clone(),
        explanation: Vec::new(),
    };

    if size == 0 {
        steps.add(|| "没有计入的家庭成员，不予认定。".into());
        return Ok(finish(decision, members, review_tasks, fired, steps, h, household, rules.premium_subsidy_fixed_yuan));
    }

    // R1: residence, judged on the head.
    let head = &h.members[household.head];
    let household_prefecture = prefecture_of(&h.region);
    let local = prefecture_of(&head.hukou_region) == household_prefecture;
    if !local {
        fired.add("R1");
        let months = rules.migrant.months;
        let eligible_migrant = head.hukou_type == HukouType::Agricultural
            && head.residence_permit.as_ref().is_some_and(|p| {
                prefecture_of(&p.region) == household_prefecture
                    && p.issued.checked_add_months(Months::new(months)).is_some_and(|due| due <= date)
            })
            && head.pension_months >= months
            && head.medical_insurance_months >= months;
        if !eligible_migrant {
            steps.add(|| format!(
                "户主户籍不在本地，且不满足进城农业人口条件（持本地居住证满 {months} 个月并缴纳养老、医疗保险各满 {months} 个月），不予认定（R1）。"
            ));
            return Ok(finish(decision, members, review_tasks, fired, steps, h, household, rules.premium_subsidy_fixed_yuan));
        }
        steps.add(|| {
            format!("户主为进城农业人口，持本地居住证满 {months} 个月，养老、医疗保险缴费均满 {months} 个月，按本地居民认定（R1）。")
        });
    }

    // AS1 / AS2 on the whole counted household.
    let assets = &h.assets;
    let financial_per_capita = assets.financial / Decimal::from(size);
    let other_assets_ok = assets.vehicles.iter().all(|v| v.exempt) && assets.homes <= 1 && !assets.business_control;
    let as1 = other_assets_ok && financial_per_capita <= Decimal::from(rules.asset.dibao_financial_months) * std;
    let as2 = other_assets_ok && financial_per_capita <= Decimal::from(rules.asset.low_income_financial_months) * std;

    // T1: which counted members are 特困.
    let minor_age = rules.tekun.minor_age;
    let mut tekun_members: Vec<usize> = Vec::new();
    for &i in &counted {
        let (m, s) = (&h.members[i], &members[i]);
        let category_person = s.age >= ELDERLY_AGE || m.disability.is_some() || s.age < minor_age;
        let no_income_source = s.counted_income <= std && as1;
        let no_supporter = matches!(m.supporters, Supporters::None | Supporters::Unable);
        if category_person && !s.able_to_work && no_income_source && no_supporter {
            tekun_members.push(i);
        }
    }
    if !tekun_members.is_empty() {
        fired.add("T1");
        fired.add("T2");
        fired.add("T3");
        let basic = params.tekun_basic(&h.region, date.year())?;
        let wage = params.minimum_wage(&h.region, last_day_of(date.year() - 1))?;
        parameters.tekun_basic = Some(basic.value);
        parameters.care_minimum_wage = Some(wage.value);
        for &i in &tekun_members {
            let m = &h.members[i];
            let share = match m.self_care {
                SelfCare::TotalLoss => rules.care_share.total_loss,
                SelfCare::PartialLoss => rules.care_share.partial_loss,
                SelfCare::Able => rules.care_share.able,
            };
            let care = share * wage.value;
            members[i].status = Category::Tekun;
            steps.add(|| {
                format!(
                    "成员 {}（{} 岁）符合特困人员条件（T1）：{}，无劳动能力，本人月收入 {} 元 ≤ 低保标准 {} 元，{}。",
                    members[i].person.masked(),
                    members[i].age,
                    if members[i].age >= ELDERLY_AGE {
                        "老年人"
                    } else if members[i].age < minor_age {
                        "未成年人"
                    } else {
                        "残疾人"
                    },
                    round_yuan(members[i].counted_income),
                    round_yuan(std),
                    if m.supporters == Supporters::None {
                        "无法定赡养抚养扶养义务人"
                    } else {
                        "法定义务人无履行能力"
                    }
                )
            });
            steps.add(|| format!(
                "特困供养（T2）：基本生活标准 {} 元（{} × 上年末低保标准 {} 元{}）+ 照料护理 {} 元（{} × 上年末最低工资 {} 元）= {} 元/月。",
                round_yuan(basic.value),
                rules.tekun_basic_factor,
                round_yuan(basic.previous_standard),
                if basic.configured { "，按配置值" } else { "，向上取整到元" },
                round_yuan(care),
                share,
                round_yuan(wage.value),
                round_yuan(basic.value + care)
            ));
            decision.payment.tekun.push(TekunSupport {
                person: members[i].person.clone(),
                basic: basic.value,
                care,
                self_care: m.self_care,
            });
        }
    } else if !as1 && counted.iter().any(|&i| members[i].age >= ELDERLY_AGE || h.members[i].disability.is_some()) {
        fired.add("AS1");
    }
    decision.parameters = parameters;
    let tekun_total: Decimal = decision.payment.tekun.iter().map(|t| t.basic + t.care).sum();

    let remaining: Vec<usize> = counted.iter().copied().filter(|i| !tekun_members.contains(i)).collect();
    if remaining.is_empty() {
        decision.household.category = Category::Tekun;
        decision.household.monthly_payment = tekun_total;
        steps.add(|| format!("全部计入成员均为特困人员，家庭按特困供养，月供养金合计 {} 元（T3）。", round_yuan(tekun_total)));
        return Ok(finish(decision, members, review_tasks, fired, steps, h, household, rules.premium_subsidy_fixed_yuan));
    }
    if !tekun_members.is_empty() {
        steps.add(|| format!("特困成员单独供养；其余 {} 名成员按家庭认定，只计其人数和收入（T3）。", remaining.len()));
    }

    // I1–I3 over the members assessed as the household.
    fired.add("I1");
    fired.add("I3");
    let n = Decimal::from(remaining.len());
    let gross: Decimal = remaining.iter().map(|&i| members[i].counted_income).sum();
    let deductions: Decimal = remaining.iter().map(|&i| members[i].employment_cost).sum();
    if deductions > Decimal::ZERO {
        fired.add("I2");
    }
    let net = gross - deductions;
    let per_capita = net / n;
    if !tekun_members.is_empty() {
        decision.household.per_capita_income = per_capita;
    }
    steps.add(|| {
        format!(
            "家庭月收入 {} 元，扣除就业成本 {} 元（I2：每名就业成员 min(工资+经营收入, {} × 标准)），人均月收入 {} 元（I3）。",
            round_yuan(gross),
            round_yuan(deductions),
            rules.employment_cost_share,
            round_yuan(per_capita)
        )
    });

    let double = Decimal::TWO * std;
    let d1 = per_capita <= std && as1;
    let l1 = per_capita > std && per_capita <= double && as2;
    let medical = h.medical_self_paid_12m;
    let (category, basis, x) = if d1 {
        fired.add("D1");
        steps.add(|| {
            format!(
                "人均月收入 {} 元 ≤ 低保标准 {} 元，且家庭财产符合低保条件，认定为低保家庭（D1）。",
                round_yuan(per_capita),
                round_yuan(std)
            )
        });
        if medical > Decimal::ZERO {
            // Item 3 deducts self-paid medical costs from income. Applying it only when D1 fails
            // (the literal order of E1) would let a household that earns more be paid more, so a
            // 低保 household with medical costs is paid on the adjusted income, which is lower.
            let adjusted = (Decimal::from(12) * net - medical) / n / Decimal::from(12);
            fired.add("E1");
            steps.add(|| {
                format!(
                    "近 12 个月个人自付医疗费 {} 元，扣减后人均月收入 {} 元，按扣减后收入计算低保金（E1）。",
                    round_yuan(medical),
                    round_yuan(adjusted)
                )
            });
            (Category::Dibao, Some(Basis::Expense), adjusted)
        } else {
            (Category::Dibao, Some(Basis::Income), per_capita)
        }
    } else {
        if per_capita <= std {
            fired.add("AS1");
            steps.add(|| "人均收入在低保标准以内，但家庭财产不符合低保条件（AS1）。".into());
        } else if per_capita <= double && !as2 {
            fired.add("AS2");
            steps.add(|| "人均收入在低收入标准以内，但家庭财产不符合低收入条件（AS2）。".into());
        }
        let expense = if medical > Decimal::ZERO {
            let adjusted = (Decimal::from(12) * net - medical) / n / Decimal::from(12);
            steps.add(|| {
                format!(
                    "因病支出：近 12 个月个人自付医疗费 {} 元，扣减后人均月收入 {} 元（E1）。",
                    round_yuan(medical),
                    round_yuan(adjusted)
                )
            });
            if adjusted <= std && as1 {
                fired.add("E1");
                steps.add(|| {
                    format!("扣减后人均 {} 元 ≤ 低保标准 {} 元，按支出型贫困认定为低保家庭（E1）。", round_yuan(adjusted), round_yuan(std))
                });
                Some((Category::Dibao, Some(Basis::Expense), adjusted))
            } else if !l1 && adjusted <= double && as2 {
                fired.add("E1");
                steps.add(|| {
                    format!(
                        "扣减后人均 {} 元 ≤ 2 倍低保标准 {} 元，按支出型贫困认定为低收入家庭（E1）。",
                        round_yuan(adjusted),
                        round_yuan(double)
                    )
                });
                Some((Category::LowIncome, Some(Basis::Expense), adjusted))
            } else {
                None
            }
        } else {
            None
        };
        match expense {
            Some(found) => found,
            None if l1 => {
                fired.add("L1");
                steps.add(|| {
                    format!(
                        "低保标准 {} 元 < 人均月收入 {} 元 ≤ 2 倍标准 {} 元，且财产符合低收入条件，认定为低收入家庭（L1）。",
                        round_yuan(std),
                        round_yuan(per_capita),
                        round_yuan(double)
                    )
                });
                (Category::LowIncome, Some(Basis::Income), per_capita)
            }
            None => {
                if per_capita > double {
                    steps.add(|| {
                        format!(
                            "人均月收入 {} 元 > 2 倍低保标准 {} 元，不符合低保和低收入条件。",
                            round_yuan(per_capita),
                            round_yuan(double)
                        )
                    });
                }
                (Category::None, None, per_capita)
            }
        }
    };
    // J1 confirmed (item 8): a caseworker confirmed a member's refusals within the window; 低保 is
    // cancelled from the finding's date for as long as the window holds it.
    let referral_since = date.checked_sub_months(Months::new(rules.referral.window_months)).unwrap_or(NaiveDate::MIN);
    let confirmed = remaining.iter().find_map(|&i| {
        let on =
            h.members[i].referral_reviews.iter().filter(|r| r.confirmed && r.on > referral_since && r.on <= date).map(|r| r.on).max()?;
        Some((i, on))
    });
    let (category, basis) = match confirmed {
        Some((i, on)) if category == Category::Dibao => {
            fired.add("J1");
            steps.add(|| {
                format!(
                    "成员 {} 在劳动年龄内有劳动能力，半年内无正当理由两次以上拒绝职业介绍，经民政于 {} 核实确认，依第8条取消低保（J1）。",
                    members[i].person.masked(),
                    on
                )
            });
            (Category::None, None)
        }
        _ => (category, basis),
    };
    for &i in &remaining {
        members[i].status = category;
    }
    decision.household.category = category;
    decision.household.basis = basis;

    let mut payment = tekun_total;
    if category == Category::Dibao {
        fired.add("P1");
        // x cannot make the gap exceed the whole standard: the policy fills up to the standard.
        let x = x.max(Decimal::ZERO);
        let gap = (std - x) * n;
        decision.payment.dibao_gap = gap;
        payment += gap;
        steps.add(|| format!("低保金（P1）=（{} − {}）× {} = {} 元。", round_yuan(std), round_yuan(x), remaining.len(), round_yuan(gap)));
        let rates = &rules.addon_rate;
        for &i in &remaining {
            let (m, s) = (&h.members[i], &members[i]);
            let candidates = [
                (m.serious_illness, "serious_illness", rates.serious_illness, "重病患者"),
                (m.disability.is_some_and(|d| d.severe()), "severe_disability", rates.severe_disability, "重残人员"),
                (s.age >= ADDON_AGED, "aged_70", rates.aged_70, "70 周岁以上老年人"),
                (s.age < ADDON_MINOR_BELOW, "minor", rates.minor, "未成年人"),
            ];
            // The highest applicable rate only; rates never add up. Ties keep the first listed.
            let best = candidates.iter().filter(|c| c.0).fold(None::<&(bool, &str, Decimal, &str)>, |best, c| match best {
                Some(b) if b.2 >= c.2 => Some(b),
                _ => Some(c),
            });
            if let Some((_, reason, rate, label)) = best {
                fired.add("P2");
                let amount = *rate * std;
                payment += amount;
                steps.add(|| {
                    format!(
                        "成员 {}（{}）增发 {} × {} = {} 元（P2，取最高一项）。",
                        s.person.masked(),
                        label,
                        rate,
                        round_yuan(std),
                        round_yuan(amount)
                    )
                });
                decision.payment.addons.push(Addon { person: s.person.clone(), reason, rate: *rate, amount });
            }
        }
    }
    decision.household.monthly_payment = payment;
    if category != Category::None || !tekun_members.is_empty() {
        steps.add(|| format!("每月救助金合计 {} 元（只在最后一步四舍五入到分）。", round_yuan(payment)));
    }

    // J1: refused referrals (a review task; the amount is not changed).
    if category == Category::Dibao {
        let since = date.checked_sub_months(Months::new(rules.referral.window_months)).unwrap_or(NaiveDate::MIN);
        for &i in &remaining {
            let (m, s) = (&h.members[i], &members[i]);
            // Refusals up to a caseworker's finding were reviewed: they no longer count.
            let reviewed_until = m.referral_reviews.iter().map(|r| r.on).filter(|on| *on <= date).max().unwrap_or(NaiveDate::MIN);
            let refusals = m
                .referral_refusals
                .iter()
                .filter_map(|r| r.counting_date())
                .filter(|d| *d > since && *d <= date && *d > reviewed_until)
                .count();
            if s.working_age && s.able_to_work && !m.employed && refusals >= rules.referral.refusals {
                fired.add("J1");
                review_tasks.push(ReviewTask { kind: "cancel_dibao_refused_referrals", person: s.person.clone(), rule: "J1" });
                steps.add(|| format!(
                    "成员 {} 在劳动年龄内有劳动能力，{} 至 {} 期间无正当理由拒绝职业介绍 {} 次，生成取消低保复核任务（J1），金额不自动变更。",
                    s.person.masked(),
                    since,
                    date,
                    refusals
                ));
            }
        }
    }
    Ok(finish(decision, members, review_tasks, fired, steps, h, household, rules.premium_subsidy_fixed_yuan))
}

/// Derives entitlements (docs/policy.md §3) from the statuses and completes the decision.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut decision: Decision,
    members: Vec<MemberStatus>,
    review_tasks: Vec<ReviewTask>,
    mut fired: Fired,
    mut steps: Steps,
    h: &super::household::Household,
    household: &CheckedHousehold,
    premium_subsidy_fixed: Decimal,
) -> Decision {
    let category = decision.household.category;
    let mut entitlements = Vec::new();
    let premium_fixed = Some(premium_subsidy_fixed);
    let any_tekun = members.iter().any(|m| m.status == Category::Tekun);
    let grant = |agency, kind, person: &IdNumber, amount, category, rules: &[&'static str]| Entitlement {
        agency,
        kind,
        person: person.clone(),
        amount,
        category,
        rules: rules.to_vec(),
    };
    for (m, input) in members.iter().zip(&h.members) {
        if !m.counted {
            continue;
        }
        match m.status {
            Category::Tekun => {
                entitlements.push(grant(Agency::Medical, "premium_subsidy_full", &m.person, None, None, &["T1"]));
                entitlements.push(grant(Agency::Medical, "medical_assistance_class1", &m.person, None, None, &["T1"]));
            }
            Category::Dibao => {
                entitlements.push(grant(Agency::Medical, "premium_subsidy_fixed", &m.person, premium_fixed, None, &["D1"]));
                entitlements.push(grant(Agency::Medical, "medical_assistance_class2", &m.person, None, None, &["D1"]));
            }
            Category::LowIncome => {
                entitlements.push(grant(Agency::Medical, "medical_assistance_class3", &m.person, None, None, &["L1"]));
            }
            Category::None => {}
        }
        if input.student_level.is_some() && m.status != Category::None {
            entitlements.push(grant(Agency::Education, "student_aid", &m.person, None, None, &[]));
        }
        if matches!(m.status, Category::Dibao | Category::LowIncome) && m.working_age && m.able_to_work && !input.employed {
            entitlements.push(grant(Agency::Hrss, "employment_assistance", &m.person, None, None, &["W1"]));
        }
        if input.union_roster {
            entitlements.push(grant(Agency::Union, "hardship_classification", &m.person, None, Some(m.status), &[]));
        }
    }
    let head = &household.ids[household.head];
    let head_counted = members[household.head].counted;
    let representative = if head_counted { Some(head) } else { members.iter().find(|m| m.counted).map(|m| &m.person) };
    if let Some(rep) = representative {
        if h.housing_difficulty && (category != Category::None || any_tekun) {
            entitlements.push(grant(Agency::Housing, "housing_assistance", rep, None, Some(category), &[]));
        }
        if matches!(category, Category::Dibao | Category::LowIncome) {
            let assessed = members.iter().zip(&h.members).filter(|(m, _)| m.counted && m.status != Category::Tekun);
            let any_able = assessed.clone().any(|(m, _)| m.working_age && m.able_to_work);
            let none_employed = members.iter().zip(&h.members).filter(|(m, _)| m.counted).all(|(_, i)| !i.employed);
            if any_able && none_employed {
                fired.add("J2");
                steps.add(|| "家庭有劳动年龄内有劳动能力的成员但无人就业，认定为零就业家庭，推送人社部门就业援助（J2）。".into());
                entitlements.push(grant(Agency::Hrss, "zero_employment_family", rep, None, None, &["J2"]));
            }
        }
    }
    entitlements.sort_by(|a, b| (a.agency, kind_rank(a.kind), &a.person).cmp(&(b.agency, kind_rank(b.kind), &b.person)));
    // Rules on entitlements name the household rule that produced the category.
    let category_rule = fired.0.iter().copied().find(|r| matches!(*r, "D1" | "L1" | "E1"));
    for e in &mut entitlements {
        if let Some(rule) = category_rule
            && matches!(e.rules.first(), Some(&"D1") | Some(&"L1"))
        {
            e.rules = vec![rule];
        }
    }
    decision.members = members;
    decision.entitlements = entitlements;
    decision.review_tasks = review_tasks;
    decision.rules = fired.ordered();
    decision.explanation = steps.lines;
    decision
}
