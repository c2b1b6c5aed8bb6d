//! Policy engine throughput: households assessed per second on one core.
//!
//! `cargo bench --bench policy` prints a table: the time to re-evaluate N synthetic households
//! (default 1,000,000; DOUDI_BENCH_ROWS overrides) on one thread, as after a change of standard,
//! against the goal of 10 seconds for 1,000,000. Households are realistic: 1–5 members with ages,
//! incomes, disabilities, students and assets drawn from a fixed seed across the four reference
//! regions, so the mix of 特困, 低保, 低收入 and none is like a real caseload.

#![allow(clippy::float_arithmetic)] // rates and durations in a benchmark report, never money

use std::time::Instant;

use chrono::NaiveDate;
use doudi::policy::household::{Assets, Disability, DisabilityKind, Household, Income, Member, Relation, StudentLevel, Supporters};
use doudi::policy::{Category, Params, assess};
use rust_decimal::Decimal;

/// A small deterministic generator (xorshift), so every run assesses the same caseload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn synthetic(rng: &mut Rng, n: u64) -> Household {
    let regions = ["220102", "220202", "222401", "220802"];
    let region = regions[rng.below(4) as usize];
    let size = 1 + rng.below(5) as usize;
    let members = (0..size)
        .map(|i| {
            let age_days = if i == 0 { 7000 + rng.below(22000) } else { rng.below(30000) };
            let birth = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap_or_default() - chrono::Duration::days(age_days as i64);
            let seq = (n * 7 + i as u64) % 1000;
            let first17 = format!("{region}{}{seq:03}", birth.format("%Y%m%d"));
            let id = doudi::idnum::complete(&first17).unwrap_or_default();
            let employed = rng.below(3) == 0;
            Member {
                id_number: id,
                name: None,
                relation: if i == 0 { Relation::Head } else { Relation::Child },
                hukou_region: region.into(),
                hukou_type: Default::default(),
                income: Income {
                    wages: if employed { Decimal::new(rng.below(300_000) as i64, 2) } else { Decimal::ZERO },
                    transfer: Decimal::new(rng.below(60_000) as i64, 2),
                    ..Income::default()
                },
                employed,
                work_ability: Default::default(),
                disability: (rng.below(10) == 0).then(|| Disability { grade: 1 + rng.below(4) as u8, kind: DisabilityKind::Physical }),
                serious_illness: rng.below(20) == 0,
                self_care: Default::default(),
                supporters: if rng.below(4) == 0 { Supporters::None } else { Supporters::Able },
                student_level: (rng.below(5) == 0).then_some(StudentLevel::Primary),
                union_roster: rng.below(15) == 0,
                referral_refusals: vec![],
                referral_reviews: Vec::new(),
                death_date: None,
                residence_permit: None,
                pension_months: 0,
                medical_insurance_months: 0,
            }
        })
        .collect();
    Household {
        household_id: None,
        as_of: None,
        region: region.into(),
        members,
        assets: Assets { financial: Decimal::new(rng.below(2_000_000) as i64, 2), vehicles: vec![], homes: 1, business_control: false },
        medical_self_paid_12m: if rng.below(8) == 0 { Decimal::new(rng.below(5_000_000) as i64, 2) } else { Decimal::ZERO },
        housing_difficulty: rng.below(6) == 0,
    }
}

fn main() {
    let n: usize = std::env::var("DOUDI_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let params = Params::shipped().expect("shipped parameters");
    let date = NaiveDate::from_ymd_opt(2020, 7, 1).unwrap_or_default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let households: Vec<_> = (0..n as u64).filter_map(|i| synthetic(&mut rng, i).validate(date, "220000").ok()).collect();
    let prepared = started.elapsed();

    let started = Instant::now();
    let mut categories = [0usize; 4];
    let mut total = Decimal::ZERO;
    for h in &households {
        let decision = assess(&params, h, date).expect("assessable");
        categories[decision.household.category as usize] += 1;
        total += decision.household.monthly_payment;
    }
    let elapsed = started.elapsed();
    let per_second = households.len() as f64 / elapsed.as_secs_f64();
    let projected = 1_000_000.0 / per_second;
    println!("policy engine, one thread, date {date}, standard change of 2020-07-01");
    println!("| households | prepare (parse+validate) | assess | households/s | 1,000,000 projected | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.2} s | {:.2} s | {:.0} | {:.2} s | < 10 s ({}) |",
        households.len(),
        prepared.as_secs_f64(),
        elapsed.as_secs_f64(),
        per_second,
        projected,
        if projected < 10.0 { "met" } else { "NOT met" }
    );
    println!(
        "mix: tekun {} dibao {} low_income {} none {}; monthly total {} yuan",
        categories[Category::Tekun as usize],
        categories[Category::Dibao as usize],
        categories[Category::LowIncome as usize],
        categories[Category::None as usize],
        doudi::money::round_yuan(total)
    );
}
