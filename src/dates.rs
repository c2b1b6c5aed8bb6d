//! Calendar dates read from stored text, the common shapes without chrono's format parser.
//!
//! Guarantee: each function gives exactly what `NaiveDate::parse_from_str` gives with its format,
//! for every input. The exact shape (`YYYY-MM-DD`, or the 8 digits `YYYYMMDD` of an ID number) is
//! read directly; anything else is handed to chrono. Re-evaluating a household reads a few dozen
//! dates (its members' birth dates, each fact's dates), and chrono's format parser was ~3 % of the
//! re-evaluation's CPU (BENCHMARKS.md).

use chrono::NaiveDate;

/// Reads `N` ASCII digits as a number; `None` if any is not a digit.
fn digits<const N: usize>(b: &[u8]) -> Option<u32> {
    let b: &[u8; N] = b.get(..N)?.try_into().ok()?;
    b.iter().try_fold(0_u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
}

/// `YYYY-MM-DD`, as `NaiveDate::parse_from_str(s, "%Y-%m-%d")`.
pub fn ymd(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && let (Some(y), Some(m), Some(d)) = (digits::<4>(b), digits::<2>(&b[5..]), digits::<2>(&b[8..]))
    {
        return NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// `YYYYMMDD`, as `NaiveDate::parse_from_str(s, "%Y%m%d")`.
pub fn compact(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() == 8
        && let (Some(y), Some(m), Some(d)) = (digits::<4>(b), digits::<2>(&b[4..]), digits::<2>(&b[6..]))
    {
        return NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d);
    }
    NaiveDate::parse_from_str(s, "%Y%m%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_exact_shapes_and_the_rest() {
        assert_eq!(ymd("2020-07-01"), NaiveDate::from_ymd_opt(2020, 7, 1));
        assert_eq!(ymd("2021-02-29"), None);
        assert_eq!(ymd("2020-7-1"), NaiveDate::from_ymd_opt(2020, 7, 1)); // chrono's reading
        assert_eq!(ymd("2020-07-01x"), None);
        assert_eq!(ymd(""), None);
        assert_eq!(compact("19810229"), None);
        assert_eq!(compact("19840229"), NaiveDate::from_ymd_opt(1984, 2, 29));
        assert_eq!(compact("1984022"), NaiveDate::from_ymd_opt(1984, 2, 2)); // chrono's reading
        assert_eq!(compact("0000"), None);
    }

    proptest! {
        #[test]
        fn ymd_reads_what_chrono_reads(s in "[0-9+ -]{0,12}", y in 0_u32..10_000, m in 0_u32..14, d in 0_u32..33) {
            prop_assert_eq!(ymd(&s), NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok());
            let exact = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(ymd(&exact), NaiveDate::parse_from_str(&exact, "%Y-%m-%d").ok());
        }

        #[test]
        fn compact_reads_what_chrono_reads(s in "[0-9+ -]{0,10}", y in 0_u32..10_000, m in 0_u32..14, d in 0_u32..33) {
            prop_assert_eq!(compact(&s), NaiveDate::parse_from_str(&s, "%Y%m%d").ok());
            let exact = format!("{y:04}{m:02}{d:02}");
            prop_assert_eq!(compact(&exact), NaiveDate::parse_from_str(&exact, "%Y%m%d").ok());
        }
    }
}
