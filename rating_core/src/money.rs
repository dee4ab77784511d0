//! Exact money: decimal strings to integer minor or micro units, never floats.

use std::fmt;

/// Why a decimal amount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// Not a plain decimal number (`-12.34`, `0.5`, `100`).
    Malformed,
    /// More fractional digits than the scale allows (a float-rounded value).
    TooPrecise { scale: u32 },
    /// Does not fit in 64-bit units.
    Overflow,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => write!(f, "not a decimal amount"),
            Self::TooPrecise { scale } => {
                write!(f, "more than {scale} decimal places")
            }
            Self::Overflow => write!(f, "amount out of range"),
        }
    }
}

impl std::error::Error for MoneyError {}

/// Parses a decimal string into integer units of `10^-scale` (scale 2: cents).
///
/// Trailing zeros beyond the scale are accepted (`"1.500"` at scale 2 is 150);
/// any other digit beyond the scale is refused, never rounded.
///
/// # Errors
/// [`MoneyError`] when the text is not a decimal, is too precise, or overflows.
pub fn parse_units(text: &str, scale: u32) -> Result<i64, MoneyError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (digits.contains('.') && frac_part.is_empty())
    {
        return Err(MoneyError::Malformed);
    }
    let significant = frac_part.trim_end_matches('0');
    if significant.len() > scale as usize {
        return Err(MoneyError::TooPrecise { scale });
    }
    let mut units: i64 = 0;
    for b in int_part.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(i64::from(b - b'0')))
            .ok_or(MoneyError::Overflow)?;
    }
    let mut frac = significant.bytes();
    for _ in 0..scale {
        let digit = frac.next().map_or(0, |b| i64::from(b - b'0'));
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(digit))
            .ok_or(MoneyError::Overflow)?;
    }
    Ok(if negative { -units } else { units })
}

/// Formats integer units of `10^-scale` as a decimal string with exactly `scale` places.
#[must_use]
pub fn format_units(units: i64, scale: u32) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let magnitude = units.unsigned_abs();
    if scale == 0 {
        return format!("{sign}{magnitude}");
    }
    let divisor = 10u64.pow(scale);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor,
        width = scale as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minor_units() {
        assert_eq!(parse_units("12.34", 2), Ok(1234));
        assert_eq!(parse_units("-0.5", 2), Ok(-50));
        assert_eq!(parse_units("100", 0), Ok(100));
        assert_eq!(parse_units("1.500", 2), Ok(150));
    }

    #[test]
    fn refuses_float_rounded_and_malformed_amounts() {
        assert_eq!(
            parse_units("19.999999", 2),
            Err(MoneyError::TooPrecise { scale: 2 })
        );
        for bad in ["", ".5", "5.", "1e3", "1,00", "--1", "abc", "1.2.3"] {
            assert_eq!(parse_units(bad, 2), Err(MoneyError::Malformed), "{bad}");
        }
        assert_eq!(
            parse_units("99999999999999999999", 2),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn formats_round_trip() {
        for (units, scale) in [(1234, 2), (-50, 2), (0, 3), (7, 0), (-1, 6)] {
            assert_eq!(parse_units(&format_units(units, scale), scale), Ok(units));
        }
    }
}
