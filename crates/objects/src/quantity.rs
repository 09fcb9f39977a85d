//! Sizes as cStor writes them: Kubernetes quantity strings ("5Gi", "10G", "9630M") parsed to bytes
//! and formatted back, both exactly and in the short three-digit form of `get cvr`.
//!
//! Two formats come out of a [`Quantity`]:
//!
//! * The **exact form** ([`Quantity`]'s `Display`, also what YAML and JSON hold): the byte count
//!   written with the largest unit that divides it exactly, in the unit family the size was
//!   written in (binary `Ki Mi Gi Ti Pi Ei` or decimal `k M G T P E`), as Kubernetes
//!   canonicalises quantities. "5Gi" stays "5Gi", "5120Mi" becomes "5Gi", "10G" stays "10G",
//!   9 630 000 000 bytes is "9630M" and 9 625 040 000 bytes is "9625040k", exactly as the seed's
//!   `get cspi` listing shows them. Sizes not divisible by any unit are plain bytes ("81500").
//! * The **short form** ([`format_bytes_short`], [`Quantity::to_short_string`]): at most three
//!   significant digits with a decimal unit, like zfs prints sizes and like the seed's `get cvr`
//!   listing ("1.47G", "91.4M", "56k"). Exact multiples print without decimals ("56k", "10G").
//!   Rounding is half-up on the exact decimal value (1 475 000 000 bytes is "1.48G"); when
//!   rounding reaches 1000 of a unit the next unit is used (999 999 bytes is "1.00M"). Units
//!   are powers of 1000, so the short form parses back as a quantity within 0.5% of the bytes.
//!   (cStor passes zfs's binary sizes through under decimal unit names, a known inaccuracy;
//!   Tandem does not.)

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Binary units, largest first: the suffix and the bytes it stands for.
const BINARY_UNITS: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

/// Decimal units, largest first. The kilo unit is lower-case "k", as in Kubernetes; "K" is not
/// a unit (cStor rewrites zfs's "K" to "k" for this reason).
const DECIMAL_UNITS: [(&str, u64); 6] = [
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

/// Which unit family a size was written in; the exact form keeps it, so "1024k" does not come
/// back as "1000Ki".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuantityFamily {
    /// Plain bytes or `k M G T P E` (powers of 1000).
    #[default]
    Decimal,
    /// `Ki Mi Gi Ti Pi Ei` (powers of 1024).
    Binary,
}

/// A size in bytes, remembering the unit family it was written in.
///
/// Equality, ordering and hashing look at the bytes only: "5Gi" equals "5120Mi", as cStor's
/// `Quantity.Cmp` would say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    bytes: u64,
    family: QuantityFamily,
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty size: expected a size such as \"5Gi\", \"10G\" or a number of bytes")]
    Empty,
    #[error("invalid size {input:?}: sizes cannot be negative")]
    Negative { input: String },
    #[error(
        "invalid size {input:?}: expected a number of bytes, optionally followed by a unit \
         (Ki, Mi, Gi, Ti, Pi, Ei for powers of 1024; k, M, G, T, P, E for powers of 1000)"
    )]
    InvalidNumber { input: String },
    #[error("invalid size {input:?}: unknown unit {unit:?}{hint}")]
    UnknownUnit {
        input: String,
        unit: String,
        /// Either empty or "; did you mean ...", so the message reads whole.
        hint: String,
    },
    #[error("invalid size {input:?}: it is not a whole number of bytes")]
    NotWholeBytes { input: String },
    #[error("invalid size {input:?}: larger than the largest supported size, {max} bytes", max = u64::MAX)]
    TooLarge { input: String },
}

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        bytes: 0,
        family: QuantityFamily::Decimal,
    };

    /// A size in bytes, written with decimal units (or plain bytes) in its exact form.
    pub const fn from_bytes(bytes: u64) -> Self {
        Quantity {
            bytes,
            family: QuantityFamily::Decimal,
        }
    }

    /// A size in bytes, written with binary units in its exact form when it divides by 1024.
    pub const fn from_bytes_binary(bytes: u64) -> Self {
        Quantity {
            bytes,
            family: QuantityFamily::Binary,
        }
    }

    pub const fn bytes(&self) -> u64 {
        self.bytes
    }

    pub const fn family(&self) -> QuantityFamily {
        self.family
    }

    pub const fn is_zero(&self) -> bool {
        self.bytes == 0
    }

    /// Parses a Kubernetes quantity string: a non-negative decimal number (fractions allowed as
    /// long as the result is whole bytes, e.g. "1.5Gi", "1.47G"), then an optional unit, or a
    /// decimal exponent ("1e9"). Surrounding whitespace is ignored. Units are case-sensitive,
    /// as in Kubernetes; a near miss ("K", "GB", "GiB", "gi") gets a suggestion.
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let input = text.trim();
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        let owned_input = || input.to_string();
        if input.starts_with('-') {
            return Err(QuantityError::Negative {
                input: owned_input(),
            });
        }
        let unsigned = input.strip_prefix('+').unwrap_or(input);

        let number_length = unsigned
            .find(|character: char| !(character.is_ascii_digit() || character == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_length);
        let (integer_digits, fraction_digits) = match number.split_once('.') {
            Some((integer, fraction)) => (integer, fraction),
            None => (number, ""),
        };
        let has_digit = !(integer_digits.is_empty() && fraction_digits.is_empty());
        if !has_digit || fraction_digits.contains('.') {
            return Err(QuantityError::InvalidNumber {
                input: owned_input(),
            });
        }

        // The value is mantissa * multiplier * 10^exponent / 10^fraction_length; work in u128 so
        // nothing below u64::MAX bytes can overflow on the way.
        let too_large = || QuantityError::TooLarge {
            input: owned_input(),
        };
        let mut mantissa: u128 = 0;
        for digit in integer_digits.bytes().chain(fraction_digits.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|value| value.checked_add(u128::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        let mut decimal_exponent: i64 = -(fraction_digits.len() as i64);
        let multiplier: u64 = match parse_exponent(suffix) {
            Some(exponent) => {
                decimal_exponent += exponent;
                1
            }
            None => unit_multiplier(suffix).ok_or_else(|| QuantityError::UnknownUnit {
                input: owned_input(),
                unit: suffix.to_string(),
                hint: unit_hint(suffix),
            })?,
        };

        let mut value = mantissa
            .checked_mul(u128::from(multiplier))
            .ok_or_else(too_large)?;
        if decimal_exponent > 0 && value != 0 {
            // 10^39 already exceeds u128, so a larger exponent overflows whatever the mantissa.
            let scale = u32::try_from(decimal_exponent)
                .ok()
                .and_then(|exponent| 10u128.checked_pow(exponent))
                .ok_or_else(too_large)?;
            value = value.checked_mul(scale).ok_or_else(too_large)?;
        } else if decimal_exponent < 0 {
            let divisor = u32::try_from(-decimal_exponent)
                .ok()
                .and_then(|exponent| 10u128.checked_pow(exponent));
            match divisor {
                Some(divisor) if value.is_multiple_of(divisor) => value /= divisor,
                // A divisor beyond u128 leaves a whole result only for zero.
                None if value == 0 => {}
                _ => {
                    return Err(QuantityError::NotWholeBytes {
                        input: owned_input(),
                    })
                }
            }
        }
        let bytes = u64::try_from(value).map_err(|_| too_large())?;
        let family = if suffix.ends_with('i') {
            QuantityFamily::Binary
        } else {
            QuantityFamily::Decimal
        };
        Ok(Quantity { bytes, family })
    }

    /// The short form, e.g. "1.47G" (see the module docs for the rounding).
    pub fn to_short_string(&self) -> String {
        format_bytes_short(self.bytes)
    }
}

/// `Some(exponent)` when the suffix is a decimal exponent like "e3", "E+9" or "e-2". A bare "E"
/// is the exa unit, not an exponent.
fn parse_exponent(suffix: &str) -> Option<i64> {
    let rest = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))?;
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'+') => (false, &rest[1..]),
        Some(b'-') => (true, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // Anything past a few digits overflows (or underflows to a fraction) anyway; clamp so the
    // caller reports "too large" / "not whole" instead of failing to parse the exponent.
    let magnitude = digits.parse::<i64>().unwrap_or(i64::from(u16::MAX));
    Some(if negative { -magnitude } else { magnitude })
}

fn unit_multiplier(suffix: &str) -> Option<u64> {
    if suffix.is_empty() {
        return Some(1);
    }
    BINARY_UNITS
        .iter()
        .chain(DECIMAL_UNITS.iter())
        .find(|(unit, _)| *unit == suffix)
        .map(|(_, multiplier)| *multiplier)
}

/// A suggestion for a unit written the way people often write it: "K" or "KB" for "k", "GiB" for
/// "Gi", "gi" for "Gi". Units compare case-insensitively after dropping a trailing "B".
fn unit_hint(suffix: &str) -> String {
    let without_byte_sign = if suffix.len() > 1 {
        suffix.trim_end_matches(['B', 'b'])
    } else {
        suffix
    };
    let candidates: Vec<&str> = BINARY_UNITS
        .iter()
        .chain(DECIMAL_UNITS.iter())
        .map(|(unit, _)| *unit)
        .filter(|unit| unit.eq_ignore_ascii_case(without_byte_sign))
        .collect();
    match candidates.as_slice() {
        [] => "; units are Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) and k, M, G, T, P, E \
               (powers of 1000), and a plain number is bytes"
            .to_string(),
        [only] => format!("; did you mean {only:?}? (units are case-sensitive)"),
        several => format!(
            "; did you mean one of {}? (units are case-sensitive)",
            several
                .iter()
                .map(|unit| format!("{unit:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Quantity::parse(text)
    }
}

/// The exact form: the largest unit of the quantity's family that divides the bytes exactly.
impl fmt::Display for Quantity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes == 0 {
            return formatter.write_str("0");
        }
        let units: &[(&str, u64)] = match self.family {
            QuantityFamily::Binary => &BINARY_UNITS,
            QuantityFamily::Decimal => &DECIMAL_UNITS,
        };
        for (unit, multiplier) in units {
            if self.bytes.is_multiple_of(*multiplier) {
                return write!(formatter, "{}{}", self.bytes / multiplier, unit);
            }
        }
        write!(formatter, "{}", self.bytes)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl From<u64> for Quantity {
    fn from(bytes: u64) -> Self {
        Quantity::from_bytes(bytes)
    }
}

/// A byte count for people, in binary units: "256 MiB", "1.5 GiB", "100 TiB", "12 B".
pub fn format_bytes_binary(bytes: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    let (unit, size) = UNITS
        .into_iter()
        .find(|(_, size)| bytes >= *size)
        .unwrap_or(("B", 1));
    let value = bytes as f64 / size as f64;
    if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// The short form of a byte count: at most three significant digits and a decimal unit, e.g.
/// "1.47G", "91.4M", "56k", "999". See the module docs for the rounding.
pub fn format_bytes_short(bytes: u64) -> String {
    if bytes < 1000 {
        return bytes.to_string();
    }
    // Smallest first here, so `unit_index` can climb when rounding carries to 1000.
    let units: Vec<(&str, u64)> = DECIMAL_UNITS.iter().rev().copied().collect();
    let mut unit_index = units
        .iter()
        .rposition(|(_, multiplier)| bytes >= *multiplier)
        .unwrap_or(0);
    loop {
        let (unit, multiplier) = units[unit_index];
        let whole_units = bytes / multiplier;
        if bytes.is_multiple_of(multiplier) && whole_units < 1000 {
            return format!("{whole_units}{unit}");
        }
        let first_decimals: u32 = match whole_units {
            0..=9 => 2,
            10..=99 => 1,
            _ => 0,
        };
        // Rounding can add a digit (9.996 -> 10.00), so step down to fewer decimals until the
        // rounded value has at most three significant digits.
        for decimals in (0..=first_decimals).rev() {
            let scale = 10u128.pow(decimals);
            let multiplier_wide = u128::from(multiplier);
            let rounded = (u128::from(bytes) * scale + multiplier_wide / 2) / multiplier_wide;
            if rounded < 1000 {
                let integer_part = rounded / scale;
                if decimals == 0 {
                    return format!("{integer_part}{unit}");
                }
                let fraction_part = rounded % scale;
                return format!(
                    "{integer_part}.{fraction_part:0width$}{unit}",
                    width = decimals as usize
                );
            }
        }
        if unit_index + 1 < units.len() {
            unit_index += 1;
        } else {
            // Only reachable above 999.5E, which u64 cannot hold; print exactly to be safe.
            return format!("{whole_units}{unit}");
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Accepts a quantity string, or a plain number of bytes (YAML `storage: 1073741824`, which
/// Kubernetes also accepts).
struct QuantityVisitor;

impl<'de> Visitor<'de> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a size such as \"5Gi\", \"10G\" or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Quantity, E> {
        Quantity::parse(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<Quantity, E> {
        Ok(Quantity::from_bytes(bytes))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Quantity, E> {
        u64::try_from(number)
            .map(Quantity::from_bytes)
            .map_err(|_| {
                E::custom(QuantityError::Negative {
                    input: number.to_string(),
                })
            })
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Quantity, E> {
        // Only whole numbers that f64 holds exactly; anything else is almost certainly a typo.
        const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
        if number.is_finite() && number >= 0.0 && number.fract() == 0.0 && number < EXACT_LIMIT {
            Ok(Quantity::from_bytes(number as u64))
        } else if number < 0.0 {
            Err(E::custom(QuantityError::Negative {
                input: number.to_string(),
            }))
        } else {
            Err(E::custom(QuantityError::NotWholeBytes {
                input: number.to_string(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input`; on success checks the bytes and the exact form it prints back as, on
    /// failure checks the message.
    /// Bytes and exact form on success, the message on failure.
    type ExpectedParse = Result<(u64, &'static str), &'static str>;

    fn check_parse(input: &str, expected: ExpectedParse) {
        let actual = Quantity::parse(input)
            .map(|quantity| (quantity.bytes(), quantity.to_string()))
            .map_err(|error| error.to_string());
        let expected = expected
            .map(|(bytes, exact)| (bytes, exact.to_string()))
            .map_err(str::to_string);
        assert_eq!(actual, expected, "parsing {input:?}");
    }

    #[test]
    fn parse_table() {
        let gib = 1u64 << 30;
        let table: &[(&str, ExpectedParse)] = &[
            // Plain bytes and decimal units.
            ("0", Ok((0, "0"))),
            ("81500", Ok((81_500, "81500"))),
            ("56k", Ok((56_000, "56k"))),
            ("10G", Ok((10_000_000_000, "10G"))),
            ("9630M", Ok((9_630_000_000, "9630M"))),
            ("9625040k", Ok((9_625_040_000, "9625040k"))),
            ("1000M", Ok((1_000_000_000, "1G"))),
            ("2T", Ok((2_000_000_000_000, "2T"))),
            ("3P", Ok((3_000_000_000_000_000, "3P"))),
            ("1E", Ok((1_000_000_000_000_000_000, "1E"))),
            // Binary units.
            ("5Gi", Ok((5 * gib, "5Gi"))),
            ("5120Mi", Ok((5 * gib, "5Gi"))),
            ("1536Mi", Ok((1536 << 20, "1536Mi"))),
            ("1Ki", Ok((1024, "1Ki"))),
            ("2Ti", Ok((2 << 40, "2Ti"))),
            ("1Pi", Ok((1 << 50, "1Pi"))),
            ("15Ei", Ok((15 << 60, "15Ei"))),
            // A family is kept: 1024k is also 1000Ki, but it was written in decimal.
            ("1024k", Ok((1_024_000, "1024k"))),
            ("1000Ki", Ok((1_024_000, "1000Ki"))),
            // Fractions that come to whole bytes, and exponents.
            ("1.5Gi", Ok((3 << 29, "1536Mi"))),
            ("1.47G", Ok((1_470_000_000, "1470M"))),
            ("0.5Ki", Ok((512, "512"))),
            (".5k", Ok((500, "500"))),
            ("1e3", Ok((1000, "1k"))),
            ("1E3", Ok((1000, "1k"))),
            ("25e-1", Err("invalid size \"25e-1\": it is not a whole number of bytes")),
            ("2500e-1", Ok((250, "250"))),
            ("+5Gi", Ok((5 * gib, "5Gi"))),
            ("  5Gi ", Ok((5 * gib, "5Gi"))),
            ("18446744073709551615", Ok((u64::MAX, "18446744073709551615"))),
            // Refusals.
            ("", Err("empty size: expected a size such as \"5Gi\", \"10G\" or a number of bytes")),
            ("-5Gi", Err("invalid size \"-5Gi\": sizes cannot be negative")),
            ("1.5", Err("invalid size \"1.5\": it is not a whole number of bytes")),
            ("0.1k5", Err("invalid size \"0.1k5\": unknown unit \"k5\"; units are Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) and k, M, G, T, P, E (powers of 1000), and a plain number is bytes")),
            ("Gi", Err("invalid size \"Gi\": expected a number of bytes, optionally followed by a unit (Ki, Mi, Gi, Ti, Pi, Ei for powers of 1024; k, M, G, T, P, E for powers of 1000)")),
            ("1.2.3G", Err("invalid size \"1.2.3G\": expected a number of bytes, optionally followed by a unit (Ki, Mi, Gi, Ti, Pi, Ei for powers of 1024; k, M, G, T, P, E for powers of 1000)")),
            ("10K", Err("invalid size \"10K\": unknown unit \"K\"; did you mean \"k\"? (units are case-sensitive)")),
            ("10GB", Err("invalid size \"10GB\": unknown unit \"GB\"; did you mean \"G\"? (units are case-sensitive)")),
            ("10GiB", Err("invalid size \"10GiB\": unknown unit \"GiB\"; did you mean \"Gi\"? (units are case-sensitive)")),
            ("10gi", Err("invalid size \"10gi\": unknown unit \"gi\"; did you mean \"Gi\"? (units are case-sensitive)")),
            ("10m", Err("invalid size \"10m\": unknown unit \"m\"; did you mean \"M\"? (units are case-sensitive)")),
            ("16Ei", Err("invalid size \"16Ei\": larger than the largest supported size, 18446744073709551615 bytes")),
            ("18446744073709551616", Err("invalid size \"18446744073709551616\": larger than the largest supported size, 18446744073709551615 bytes")),
            ("1e400", Err("invalid size \"1e400\": larger than the largest supported size, 18446744073709551615 bytes")),
            ("0e400", Ok((0, "0"))),
            ("99999999999999999999999999999999999999999", Err("invalid size \"99999999999999999999999999999999999999999\": larger than the largest supported size, 18446744073709551615 bytes")),
        ];
        for (input, expected) in table {
            check_parse(input, *expected);
        }
    }

    fn check_short(bytes: u64, expected: &str) {
        assert_eq!(format_bytes_short(bytes), expected, "short form of {bytes}");
        // The short form must parse back to within rounding of the original.
        let parsed = Quantity::parse(expected).map(|quantity| quantity.bytes());
        let parsed = parsed.unwrap_or_else(|error| panic!("{expected:?} does not parse: {error}"));
        let difference = parsed.abs_diff(bytes);
        assert!(
            difference as f64 <= bytes as f64 * 0.005,
            "{expected:?} is {parsed} bytes, too far from {bytes}"
        );
    }

    #[test]
    fn short_form_table() {
        let table: &[(u64, &str)] = &[
            (0, "0"),
            (999, "999"),
            (1000, "1k"),
            (1001, "1.00k"),
            (56_000, "56k"),
            (81_500, "81.5k"),
            (91_400_000, "91.4M"),
            (42_400_000, "42.4M"),
            (1_470_000_000, "1.47G"),
            (1_473_741_824, "1.47G"),
            (1_260_000_000, "1.26G"),
            (1_475_000_000, "1.48G"), // half-up
            (1_474_999_999, "1.47G"),
            (9_630_000_000, "9.63G"),
            (10_000_000_000, "10G"),
            (9_996_000_000, "10.0G"), // the carry drops a decimal instead of printing "10.00G"
            (99_960_000_000, "100G"),
            (999_999, "1.00M"), // the carry moves to the next unit
            (999_500_000_000, "1.00T"),
            (123_456_789_012, "123G"),
            (5 << 30, "5.37G"),
            (u64::MAX, "18.4E"),
        ];
        for (bytes, expected) in table {
            check_short(*bytes, expected);
        }
    }

    #[test]
    fn equality_ignores_the_unit_family() {
        assert_eq!(Quantity::parse("5Gi"), Quantity::parse("5120Mi"));
        assert_eq!(Quantity::parse("1024k"), Quantity::parse("1000Ki"));
        assert!(Quantity::from_bytes(1) < Quantity::from_bytes(2));
    }

    #[test]
    fn deserializes_strings_and_numbers() {
        let check = |json: &str, expected: Result<u64, &str>| {
            let actual = serde_json::from_str::<Quantity>(json)
                .map(|quantity| quantity.bytes())
                .map_err(|error| error.to_string());
            assert_eq!(
                actual,
                expected.map_err(str::to_string),
                "deserializing {json}"
            );
        };
        check("\"5Gi\"", Ok(5 << 30));
        check("1073741824", Ok(1 << 30));
        check("1000.0", Ok(1000));
        check(
            "-1",
            Err("invalid size \"-1\": sizes cannot be negative at line 1 column 2"),
        );
        check(
            "1.5",
            Err("invalid size \"1.5\": it is not a whole number of bytes at line 1 column 3"),
        );
        check(
            "true",
            Err("invalid type: boolean `true`, expected a size such as \"5Gi\", \"10G\" or a number of bytes at line 1 column 4"),
        );
    }
}
