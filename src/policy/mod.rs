//! The policy engine: 吉民发〔2019〕38号 as explainable code over exact decimals.
//!
//! `params` reads the dated, per-region parameters; `household` is the checked input; `assess`
//! applies the rules of docs/policy.md §2 and derives the entitlements of §3; `check` enforces S1/S2 on
//! the parameters themselves. Nothing here does I/O except [`params::Params::load`].

pub mod assess;
pub mod check;
pub mod household;
pub mod params;

#[cfg(test)]
mod tests;

pub use assess::{Agency, Basis, Category, Decision, Entitlement, ReviewTask, assess, assess_explained};
pub use household::{CheckedHousehold, Household, InputError};
pub use params::Params;

use chrono::NaiveDate;

/// Any reason `doudi assess` refuses an input, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum AssessInputError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Assess(#[from] assess::AssessError),
}

/// Parses, checks and assesses a household given as JSON, with the explanation.
pub fn assess_json(params: &Params, json: &str, date: NaiveDate) -> Result<Decision, AssessInputError> {
    let household = Household::from_json(json)?.validate(date, &params.policy.province)?;
    Ok(assess_explained(params, &household, date)?)
}
