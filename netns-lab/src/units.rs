//! Link properties written the way `tc` writes them: rates (`10gbit`), delays (`20ms`) and loss
//! (`0.5%`).
//!
//! This module only parses and prints; it never touches the kernel. Each type round-trips through
//! its string form, which is how it appears in topology YAML and in a lab's `state.json`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a rate, delay or loss string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{text}`: {reason}")]
pub struct UnitError {
    kind: &'static str,
    text: String,
    reason: &'static str,
}

impl UnitError {
    fn new(kind: &'static str, text: &str, reason: &'static str) -> Self {
        Self {
            kind,
            text: text.to_owned(),
            reason,
        }
    }
}

/// Splits `"10gbit"` into `("10", "gbit")`.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses a non-negative decimal number (`"10"`, `"1.5"`), rejecting signs, exponents and NaN.
fn parse_number(number: &str) -> Option<f64> {
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    number.parse::<f64>().ok().filter(|value| value.is_finite())
}

/// A link rate in bits per second, written like `tc` rates: `bit`, `kbit`, `mbit`, `gbit`,
/// `tbit` (powers of 1000, as in `tc`), with an optional fraction (`1.5mbit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    bits_per_second: u64,
}

impl Rate {
    /// The slowest rate a lab link accepts. Below it the `tbf` token bucket for the smallest
    /// burst ([`Rate::tbf_burst_bytes`]) would span more time than `tc` can encode.
    pub const MIN: Rate = Rate {
        bits_per_second: 100_000,
    };
    /// The fastest rate a lab link accepts: far above what a veth pair carries, and low enough
    /// that the `tbf` burst (10 ms of traffic) fits the kernel's 32-bit burst field.
    pub const MAX: Rate = Rate {
        bits_per_second: 1_000_000_000_000,
    };

    /// Smallest `tbf` burst, in bytes: ten full-size Ethernet frames, so a burst never holds
    /// less than a handful of MTU-sized packets (bigger GSO packets are split by `tbf`).
    pub const MIN_BURST_BYTES: u64 = 16 * 1024;
    /// How much traffic, in milliseconds at the configured rate, the `tbf` burst holds.
    pub const BURST_MILLIS: u64 = 10;

    /// A rate of `bits_per_second`, if it lies within [`Rate::MIN`]..=[`Rate::MAX`].
    pub fn from_bits_per_second(bits_per_second: u64) -> Option<Rate> {
        let rate = Rate { bits_per_second };
        (Self::MIN..=Self::MAX).contains(&rate).then_some(rate)
    }

    /// The rate in bits per second.
    pub fn bits_per_second(self) -> u64 {
        self.bits_per_second
    }

    /// The `tbf` burst (bucket size) for this rate, in bytes:
    /// `max(rate / 8 * BURST_MILLIS / 1000, MIN_BURST_BYTES)`.
    ///
    /// A token bucket refills between timer ticks; the bucket must hold at least the traffic of
    /// one tick or the link never reaches its rate. The coarsest Linux tick is 10 ms (HZ=100),
    /// so the bucket holds 10 ms of traffic at the rate: 12.5 MB at 10gbit, 125 kB at 100mbit.
    /// Slow links keep at least [`Rate::MIN_BURST_BYTES`] so that one burst passes several
    /// full-size frames.
    pub fn tbf_burst_bytes(self) -> u64 {
        let per_window = self.bits_per_second / 8 * Self::BURST_MILLIS / 1000;
        per_window.max(Self::MIN_BURST_BYTES)
    }
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "rate";
        let (number, unit) = split_number(text.trim());
        let number =
            parse_number(number).ok_or_else(|| UnitError::new(KIND, text, "expected a number"))?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            _ => {
                return Err(UnitError::new(
                    KIND,
                    text,
                    "expected a unit: bit, kbit, mbit, gbit or tbit",
                ))
            }
        };
        let bits = (number * scale).round();
        let in_range =
            bits >= Self::MIN.bits_per_second as f64 && bits <= Self::MAX.bits_per_second as f64;
        if !in_range {
            return Err(UnitError::new(
                KIND,
                text,
                "must be between 100kbit and 1tbit",
            ));
        }
        // `bits` is a whole number inside MIN..=MAX, which u64 holds exactly.
        let bits_per_second = bits as u64;
        Ok(Rate { bits_per_second })
    }
}

impl fmt::Display for Rate {
    /// Prints the largest unit that keeps the number whole: `10gbit`, `1500kbit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1_000_000_000_000, "tbit"),
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ];
        let bits = self.bits_per_second;
        for (scale, unit) in UNITS {
            if bits % scale == 0 {
                return write!(f, "{}{unit}", bits / scale);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// A one-way delay (or jitter), written `0`, `250us`, `20ms`, `1.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Delay(Duration);

impl Delay {
    /// The longest delay a link accepts; anything longer is a typo, not a network.
    pub const MAX: Duration = Duration::from_secs(10);

    /// The delay as a [`Duration`].
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Whether this is no delay at all.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for Delay {
    fn from(duration: Duration) -> Self {
        Delay(duration)
    }
}

impl FromStr for Delay {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "delay";
        let trimmed = text.trim();
        if trimmed == "0" {
            return Ok(Delay(Duration::ZERO));
        }
        let (number, unit) = split_number(trimmed);
        let number =
            parse_number(number).ok_or_else(|| UnitError::new(KIND, text, "expected a number"))?;
        let seconds = match unit {
            "us" => number / 1e6,
            "ms" => number / 1e3,
            "s" => number,
            _ => return Err(UnitError::new(KIND, text, "expected a unit: us, ms or s")),
        };
        if seconds > Self::MAX.as_secs_f64() {
            return Err(UnitError::new(KIND, text, "must be at most 10s"));
        }
        Ok(Delay(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Delay {
    /// Prints whole microseconds when the delay is not a whole number of milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        if micros == 0 {
            write!(f, "0")
        } else if micros % 1000 == 0 {
            write!(f, "{}ms", micros / 1000)
        } else {
            write!(f, "{micros}us")
        }
    }
}

/// A packet loss probability in percent, at least 0 and below [`Loss::LIMIT_PERCENT`], written
/// `0.5%` or as a plain number `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Loss(f64);

impl Loss {
    /// Loss must stay below this many percent: a link that drops every packet is no link, and
    /// the lab would only look broken.
    pub const LIMIT_PERCENT: f64 = 100.0;

    /// The loss in percent.
    pub fn percent(self) -> f64 {
        self.0
    }

    /// Whether no packet is lost.
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }

    fn from_percent(percent: f64, text: &str) -> Result<Loss, UnitError> {
        if (0.0..Self::LIMIT_PERCENT).contains(&percent) {
            Ok(Loss(percent))
        } else {
            Err(UnitError::new(
                "loss",
                text,
                "must be at least 0% and below 100%",
            ))
        }
    }
}

impl FromStr for Loss {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let number = trimmed.strip_suffix('%').unwrap_or(trimmed).trim_end();
        let percent = parse_number(number)
            .ok_or_else(|| UnitError::new("loss", text, "expected a percentage like 0.5%"))?;
        Loss::from_percent(percent, text)
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Serializes a value through its `Display` form.
macro_rules! serialize_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}
serialize_as_string!(Rate, Delay, Loss);

/// Deserializes any of the unit types from a string, or (for `Loss` and a zero `Delay`) from a
/// plain YAML number.
struct UnitVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T> Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        self.visit_str(&value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        self.visit_str(&value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        self.visit_str(&value.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(UnitVisitor(
            std::marker::PhantomData,
            "a rate like `10gbit` or `100mbit`",
        ))
    }
}

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor(std::marker::PhantomData, "a delay like `20ms`"))
    }
}

impl<'de> Deserialize<'de> for Loss {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor(
            std::marker::PhantomData,
            "a loss percentage like `0.5%`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_tc_units() {
        let cases = [
            ("10gbit", 10_000_000_000),
            ("100mbit", 100_000_000),
            ("1.5mbit", 1_500_000),
            ("250kbit", 250_000),
            ("100000bit", 100_000),
            ("1tbit", 1_000_000_000_000),
            ("10Gbit", 10_000_000_000),
        ];
        for (text, bits) in cases {
            let rate: Rate = text.parse().expect(text);
            assert_eq!(rate.bits_per_second(), bits, "{text}");
        }
    }

    #[test]
    fn rates_reject_bad_input() {
        for text in [
            "", "10", "gbit", "10gbps", "-1mbit", "1e9bit", "99kbit", "2tbit", ".5mbit",
        ] {
            assert!(text.parse::<Rate>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn rates_print_in_the_largest_whole_unit() {
        let print = |bits| Rate::from_bits_per_second(bits).map(|rate| rate.to_string());
        assert_eq!(print(10_000_000_000).as_deref(), Some("10gbit"));
        assert_eq!(print(1_500_000).as_deref(), Some("1500kbit"));
        assert_eq!(print(100_001).as_deref(), Some("100001bit"));
        assert_eq!(print(1), None);
    }

    #[test]
    fn tbf_burst_holds_ten_milliseconds_or_the_minimum() {
        let burst = |text: &str| text.parse::<Rate>().map(Rate::tbf_burst_bytes);
        assert_eq!(burst("10gbit"), Ok(12_500_000));
        assert_eq!(burst("100mbit"), Ok(125_000));
        assert_eq!(burst("1mbit"), Ok(16_384));
        assert_eq!(burst("1tbit"), Ok(1_250_000_000));
    }

    #[test]
    fn delays_parse_and_print() {
        let parse = |text: &str| text.parse::<Delay>().map(Delay::duration);
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse("20").is_err());
        assert!(parse("11s").is_err());
        assert_eq!(Delay::from(Duration::from_millis(20)).to_string(), "20ms");
        assert_eq!(Delay::from(Duration::from_micros(250)).to_string(), "250us");
    }

    #[test]
    fn loss_parses_with_and_without_percent_sign() {
        assert_eq!("0.5%".parse::<Loss>().map(Loss::percent), Ok(0.5));
        assert_eq!("3".parse::<Loss>().map(Loss::percent), Ok(3.0));
        assert_eq!("99.9%".parse::<Loss>().map(Loss::percent), Ok(99.9));
        assert_eq!("0".parse::<Loss>().map(Loss::percent), Ok(0.0));
        let error = "100%".parse::<Loss>().map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("invalid loss `100%`: must be at least 0% and below 100%".to_owned())
        );
        assert!("101%".parse::<Loss>().is_err());
        assert!("-1%".parse::<Loss>().is_err());
        assert!("half".parse::<Loss>().is_err());
    }
}
