//! The custom JSON Schema formats of doudi's schemas, registered with the `jsonschema` crate.
//!
//! - `cn-id-number`: GB 11643 in normalised form (18 characters, upper-case X, MOD 11-2 check
//!   character, a real past birth date, a known province). Normalisation (lower-case x, spaces,
//!   full-width digits, 15-digit upgrade) happens in the connectors, before validation.
//! - `cn-division`: a GB/T 2260 code in the dated table `schemas/divisions.csv` (any date).
//! - `decimal-yuan`: a non-negative amount with at most two decimals, as a string.

use crate::division::Divisions;
use crate::idnum::IdNumber;

pub fn is_id_number(s: &str) -> bool {
    IdNumber::parse(s).is_ok_and(|id| id.as_str() == s)
}

pub fn is_division(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) && Divisions::shipped().known_ever(s)
}

pub fn is_decimal_yuan(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int_ok = !int.is_empty() && int.len() <= 12 && int.bytes().all(|b| b.is_ascii_digit()) && (int == "0" || !int.starts_with('0'));
    let frac_ok = if s.contains('.') { (1..=2).contains(&frac.len()) && frac.bytes().all(|b| b.is_ascii_digit()) } else { true };
    int_ok && frac_ok
}

/// Validation options for draft 2020-12 with doudi's formats asserted.
pub fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .with_format("cn-id-number", is_id_number)
        .with_format("cn-division", is_division)
        .with_format("decimal-yuan", is_decimal_yuan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(is_id_number("11010519491231002X"));
        assert!(!is_id_number("11010519491231002x"), "only the normalised form");
        assert!(!is_id_number("110105194912310021"));
        assert!(is_division("220102") && is_division("220381") && !is_division("229999") && !is_division("22010"));
        for ok in ["0", "610", "1149.00", "0.5", "123456789012.99"] {
            assert!(is_decimal_yuan(ok), "{ok}");
        }
        for bad in ["", "-1", "01", "1.", "1.234", "1,800", "1e3", " 1", "1234567890123"] {
            assert!(!is_decimal_yuan(bad), "{bad}");
        }
    }
}
