//! Resident ID numbers (GB 11643-1999, 公民身份号码): normalisation, validation, masking.
//!
//! Guarantees: [`IdNumber`] only ever holds a valid 18-character number: 17 digits, then the
//! MOD 11-2 check character (`0`–`9` or `X`), with a real birth date (not in the future, not before
//! 1900) and a known province. Input may carry surrounding spaces (also U+3000), full-width digits
//! and a lowercase `x`; a legacy 15-digit number is upgraded (century 19, computed check character).
//! Errors never contain the number itself; [`mask`] gives the only form fit for logs:
//! `2201**********0015`.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::division::{Divisions, province_of};

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// Why a string is not a valid ID number. Never carries the number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the ID number is empty")]
    Empty,
    #[error("the ID number has {0} characters; it must have 18 (or 15 for a legacy number)")]
    Length(usize),
    #[error("the ID number may contain only digits and a final X")]
    Characters,
    #[error("the ID number's check character (last character) is wrong")]
    CheckCharacter,
    #[error("the ID number's birth date (characters 7–14) is not a real date")]
    BirthDate,
    #[error("the ID number's birth date (characters 7–14) is in the future")]
    FutureBirthDate,
    #[error("the ID number's birth date (characters 7–14) is before 1900")]
    AncientBirthDate,
    #[error("the ID number's first two digits are not a province code")]
    UnknownProvince,
}

/// Sex as encoded in character 17 (odd: male).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Male,
    Female,
}

/// A valid, normalised 18-character resident ID number.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdNumber(String);

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

impl IdNumber {
    /// Normalises and validates `raw`, judging "future" birth dates against `today`.
    pub fn parse_on(raw: &str, today: NaiveDate) -> Result<Self, IdError> {
        let chars = normalise_chars(raw);
        let digits = match chars.len() {
            0 => return Err(IdError::Empty),
            15 => {
                if !chars.iter().all(char::is_ascii_digit) {
                    return Err(IdError::Characters);
                }
                let mut upgraded: Vec<char> = chars[..6].to_vec();
                upgraded.extend(['1', '9']);
                upgraded.extend(&chars[6..]);
                let check = check_char(&upgraded);
                upgraded.push(check);
                upgraded
            }
            18 => {
                if !chars[..17].iter().all(char::is_ascii_digit) || !(chars[17].is_ascii_digit() || chars[17] == 'X') {
                    return Err(IdError::Characters);
                }
                if check_char(&chars[..17]) != chars[17] {
                    return Err(IdError::CheckCharacter);
                }
                chars
            }
            n => return Err(IdError::Length(n)),
        };
        let id = IdNumber(digits.into_iter().collect());
        let birth = id.birth_date_checked()?;
        if birth > today {
            return Err(IdError::FutureBirthDate);
        }
        if birth.year() < 1900 {
            return Err(IdError::AncientBirthDate);
        }
        let province = province_of(id.division()).ok_or(IdError::UnknownProvince)?;
        if !Divisions::shipped().known_ever(&province) {
            return Err(IdError::UnknownProvince);
        }
        Ok(id)
    }

    /// As [`IdNumber::parse_on`] with today's date.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        Self::parse_on(raw, chrono::Local::now().date_naive())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The six-digit division code of the place the number was issued (characters 1–6).
    pub fn division(&self) -> &str {
        &self.0[..6]
    }

    fn birth_date_checked(&self) -> Result<NaiveDate, IdError> {
        crate::dates::compact(&self.0[6..14]).ok_or(IdError::BirthDate)
    }

    /// Birth date (characters 7–14).
    pub fn birth_date(&self) -> NaiveDate {
        // Checked at construction.
        self.birth_date_checked().unwrap_or(NaiveDate::MIN)
    }

    /// Sex (character 17: odd is male).
    pub fn sex(&self) -> Sex {
        let digit = self.0.as_bytes()[16] - b'0';
        if digit % 2 == 1 { Sex::Male } else { Sex::Female }
    }

    /// Age in whole years on `date` (a person born on 29 February turns a year older on 1 March in
    /// common years).
    pub fn age_on(&self, date: NaiveDate) -> i32 {
        age_on(self.birth_date(), date)
    }

    /// The masked form for logs and screens: `2201**********0015`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Age in whole years at `date` of someone born on `birth`.
pub fn age_on(birth: NaiveDate, date: NaiveDate) -> i32 {
    let mut age = date.year() - birth.year();
    if (date.month(), date.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    age
}

/// Masks any string that may hold an ID number: the first four and last four characters stay,
/// everything between becomes `*`; a string of eight characters or fewer is masked entirely.
pub fn mask(raw: &str) -> String {
    Masked(raw).to_string()
}

/// [`mask`] written straight into its destination (a decision being serialized), without the
/// intermediate strings.
pub struct Masked<'a>(pub &'a str);

impl std::fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let raw = self.0.trim();
        // Of `n` characters, the first four and the last four are shown when there are more than 8.
        let kept = |i: usize, n: usize| n > 8 && (i < 4 || i >= n - 4);
        // An ID number is ASCII: masked in a buffer and written at once (a decision masks every
        // member; one write per character went through the serializer's escaping each time).
        const ASCII_AT_MOST: usize = 32;
        if raw.is_ascii() && raw.len() <= ASCII_AT_MOST {
            let n = raw.len();
            let mut out = [b'*'; ASCII_AT_MOST];
            for (i, c) in raw.bytes().enumerate() {
                if kept(i, n) {
                    out[i] = c;
                }
            }
            return f.write_str(std::str::from_utf8(&out[..n]).map_err(|_| std::fmt::Error)?);
        }
        let n = raw.chars().count();
        for (i, c) in raw.chars().enumerate() {
            f.write_char(if kept(i, n) { c } else { '*' })?;
        }
        Ok(())
    }
}

fn normalise_chars(raw: &str) -> Vec<char> {
    raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{3000}' || c == '\u{feff}')
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            'x' | 'Ｘ' | 'ｘ' => 'X',
            other => other,
        })
        .collect()
}

/// Completes 17 digits with their check character, e.g. to build synthetic test data. `None` unless
/// `first17` is exactly 17 ASCII digits.
pub fn complete(first17: &str) -> Option<String> {
    let chars: Vec<char> = first17.chars().collect();
    (chars.len() == 17 && chars.iter().all(char::is_ascii_digit)).then(|| format!("{first17}{}", check_char(&chars)))
}

/// The MOD 11-2 check character of the first 17 digits.
fn check_char(first17: &[char]) -> char {
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap_or(0) * w).sum();
    CHECK_CHARS[(sum % 11) as usize]
}

/// What `doudi id` prints for one argument.
#[derive(Debug, Serialize)]
pub struct IdReport {
    pub input: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalised: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgraded_from_15: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub division: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub division_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Builds the report for one raw argument. The input is echoed masked unless `unmasked`.
pub fn report(raw: &str, today: NaiveDate, unmasked: bool) -> IdReport {
    let shown = |s: &str| if unmasked { s.to_string() } else { mask(s) };
    match IdNumber::parse_on(raw, today) {
        Ok(id) => IdReport {
            input: shown(raw.trim()),
            valid: true,
            normalised: Some(shown(id.as_str())),
            upgraded_from_15: Some(normalise_chars(raw).len() == 15),
            birth_date: Some(id.birth_date()),
            sex: Some(id.sex()),
            division: Some(id.division().to_string()),
            division_name: Divisions::shipped().full_name(id.division()),
            error: None,
        },
        Err(e) => IdReport {
            input: shown(raw.trim()),
            valid: false,
            normalised: None,
            upgraded_from_15: None,
            birth_date: None,
            sex: None,
            division: None,
            division_name: None,
            error: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 28).expect("date")
    }

    #[test]
    fn the_standards_own_example() {
        let id = IdNumber::parse_on("11010519491231002X", today()).expect("valid");
        assert_eq!(id.birth_date(), NaiveDate::from_ymd_opt(1949, 12, 31).expect("date"));
        assert_eq!(id.sex(), Sex::Female);
        assert_eq!(id.division(), "110105");
    }

    #[test]
    fn normalises_untidy_input() {
        for raw in [
            "11010519491231002x",
            " 11010519491231002X\t",
            "\u{3000}１１０１０５１９４９１２３１００２Ｘ",
            "１１０１０５１９４９１２３１００２ｘ",
        ] {
            assert_eq!(IdNumber::parse_on(raw, today()).map(|i| i.as_str().to_string()), Ok("11010519491231002X".into()), "{raw:?}");
        }
    }

    #[test]
    fn upgrades_fifteen_digits() {
        // 220102 500307 001 → 220102 19500307 001 + check
        let id = IdNumber::parse_on("220102500307001", today()).expect("valid");
        assert_eq!(id.as_str().len(), 18);
        assert!(id.as_str().starts_with("22010219500307001"));
        assert_eq!(id.birth_date(), NaiveDate::from_ymd_opt(1950, 3, 7).expect("date"));
        assert_eq!(IdNumber::parse_on(id.as_str(), today()), Ok(id));
        assert_eq!(IdNumber::parse_on("220102501307001", today()), Err(IdError::BirthDate));
    }

    #[test]
    fn rejects_bad_numbers() {
        assert_eq!(IdNumber::parse_on("110105194912310021", today()), Err(IdError::CheckCharacter));
        assert_eq!(IdNumber::parse_on("1101051949123100", today()), Err(IdError::Length(16)));
        assert_eq!(IdNumber::parse_on("", today()), Err(IdError::Empty));
        assert_eq!(IdNumber::parse_on("11010519491231002A", today()), Err(IdError::Characters));
        // 2 Feb 30th does not exist.
        let bad_date = with_check("11010519490230002");
        assert_eq!(IdNumber::parse_on(&bad_date, today()), Err(IdError::BirthDate));
        let future = with_check("11010520301231002");
        assert_eq!(IdNumber::parse_on(&future, today()), Err(IdError::FutureBirthDate));
        let ancient = with_check("11010518891231002");
        assert_eq!(IdNumber::parse_on(&ancient, today()), Err(IdError::AncientBirthDate));
        let province = with_check("99010519491231002");
        assert_eq!(IdNumber::parse_on(&province, today()), Err(IdError::UnknownProvince));
    }

    #[test]
    fn errors_never_carry_the_number() {
        for raw in ["110105194912310021", "99010519491231002X", "1101051949123100"] {
            let message = IdNumber::parse_on(raw, today()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!message.contains("1101051949"), "{message}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask("220102195003070015"), "2201**********0015");
        assert_eq!(mask("12345678"), "********");
        let id = IdNumber::parse_on("11010519491231002X", today()).expect("valid");
        assert_eq!(format!("{id:?}"), "IdNumber(1101**********002X)");
    }

    #[test]
    fn ages_in_whole_years() {
        let birth = NaiveDate::from_ymd_opt(1950, 3, 7).expect("date");
        assert_eq!(age_on(birth, NaiveDate::from_ymd_opt(2010, 3, 6).expect("date")), 59);
        assert_eq!(age_on(birth, NaiveDate::from_ymd_opt(2010, 3, 7).expect("date")), 60);
        let leap = NaiveDate::from_ymd_opt(2000, 2, 29).expect("date");
        assert_eq!(age_on(leap, NaiveDate::from_ymd_opt(2018, 2, 28).expect("date")), 17);
        assert_eq!(age_on(leap, NaiveDate::from_ymd_opt(2018, 3, 1).expect("date")), 18);
    }

    fn with_check(first17: &str) -> String {
        complete(first17).expect("17 digits")
    }

    proptest::proptest! {
        #[test]
        fn any_valid_number_round_trips(days in 0i64..45_000, seq in 0u32..1000, div in proptest::sample::select(vec!["220102", "222401", "110105", "220881"])) {
            let birth = NaiveDate::from_ymd_opt(1901, 1, 1).expect("date") + chrono::Duration::days(days);
            let first17 = format!("{div}{}{seq:03}", birth.format("%Y%m%d"));
            let id = IdNumber::parse_on(&with_check(&first17), today()).expect("valid");
            proptest::prop_assert_eq!(id.birth_date(), birth);
            proptest::prop_assert_eq!(IdNumber::parse_on(&id.as_str().to_lowercase(), today()), Ok(id.clone()));
            // Changing any one of the first 17 digits breaks the check (MOD 11-2 catches single errors)
            // unless it also makes the date invalid first.
            let mut wrong: Vec<char> = id.as_str().chars().collect();
            wrong[16] = if wrong[16] == '9' { '0' } else { char::from(wrong[16] as u8 + 1) };
            let wrong: String = wrong.into_iter().collect();
            proptest::prop_assert_eq!(IdNumber::parse_on(&wrong, today()), Err(IdError::CheckCharacter));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,24}") {
            let _ = IdNumber::parse_on(&s, today());
            let _ = mask(&s);
        }
    }
}
