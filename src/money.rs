//! Money and rates: exact decimals, written as strings, rounded once.
//!
//! Guarantees: amounts are `rust_decimal::Decimal`, never floats. On the wire and in files they are
//! decimal strings such as `"610"` or `"1149.00"`; a JSON or TOML number is refused, because a
//! float may already have lost a cent. [`round_yuan`] rounds half-up (away from zero at .5) to
//! 0.01 yuan and is applied only to final results.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds to 0.01 yuan, half-up, and always shows two decimals.
pub fn round_yuan(amount: Decimal) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// Parses a decimal string: optional sign, digits, optional fraction. No exponent, no separators.
pub fn parse_strict(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let body = t.strip_prefix('-').unwrap_or(t);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (body.contains('.') && frac.is_empty()) {
        return Err(format!("`{t}` is not a decimal amount like \"610\" or \"1149.50\""));
    }
    Decimal::from_str_exact(t).map_err(|e| format!("`{t}` is not a decimal amount: {e}"))
}

/// serde for a `Decimal` written as a string.
pub mod strict {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let text = StrOnly::deserialize(d)?;
        super::parse_strict(&text.0).map_err(serde::de::Error::custom)
    }

    /// A string, refusing numbers with a message that says why.
    pub(super) struct StrOnly(pub String);

    impl<'de> Deserialize<'de> for StrOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = StrOnly;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a decimal amount written as a string, e.g. \"610.00\"")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOnly, E> {
                    Ok(StrOnly(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<StrOnly, E> {
                    Err(E::custom("amounts must be written as strings, e.g. \"610.00\""))
                }
                fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<StrOnly, E> {
                    Err(E::custom("amounts must be written as strings, e.g. \"610.00\""))
                }
                fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StrOnly, E> {
                    Err(E::custom("amounts must be written as strings, e.g. \"610.00\"; a number may have lost precision"))
                }
            }
            d.deserialize_any(V)
        }
    }
}

/// serde for a `Decimal` string that may be absent (defaults to zero).
pub mod strict_or_zero {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        super::strict::serialize(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        match Option::<super::strict::StrOnly>::deserialize(d)? {
            None => Ok(Decimal::ZERO),
            Some(text) => super::parse_strict(&text.0).map_err(serde::de::Error::custom),
        }
    }
}

/// serde for a list of `Decimal` strings.
pub mod strict_vec {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(values: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(values.len()))?;
        for v in values {
            seq.serialize_element(&v.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Decimal>, D::Error> {
        Vec::<super::strict::StrOnly>::deserialize(d)?
            .into_iter()
            .map(|t| super::parse_strict(&t.0).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn rounds_half_up_once() {
        assert_eq!(round_yuan(dec!(0.005)).to_string(), "0.01");
        assert_eq!(round_yuan(dec!(0.0049999)).to_string(), "0.00");
        assert_eq!(round_yuan(dec!(830)).to_string(), "830.00");
        assert_eq!(round_yuan(dec!(91.5)).to_string(), "91.50");
        // Three members sharing 1000: no early rounding.
        let per_capita = dec!(1000) / dec!(3);
        assert_eq!(round_yuan((dec!(610) - per_capita) * dec!(3)).to_string(), "830.00");
    }

    #[test]
    fn strict_parsing() {
        assert_eq!(parse_strict("610"), Ok(dec!(610)));
        assert_eq!(parse_strict("1149.50"), Ok(dec!(1149.50)));
        assert_eq!(parse_strict("-3.5"), Ok(dec!(-3.5)));
        for bad in ["", "1,800", "1e3", "12.", ".5", "abc", "１２"] {
            assert!(parse_strict(bad).is_err(), "{bad}");
        }
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(with = "strict")]
            a: Decimal,
        }
        assert!(serde_json::from_str::<T>(r#"{"a": 1.1}"#).is_err());
        assert_eq!(serde_json::from_str::<T>(r#"{"a": "1.10"}"#).map(|t| t.a).ok(), Some(dec!(1.10)));
    }
}
