//! Human-readable durations (`50us`, `500ms`, `1s`, `2m`, `1h`) and sizes (`64KiB`, `256MiB`).
//!
//! They are parsed at deserialisation time so that a bad value is reported by
//! serde_yaml together with the key path it was found at.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration written with a unit suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// A byte size written with an optional unit suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

/// The longest duration accepted anywhere: a year.
const MAX_DURATION_SECS: u64 = 31_536_000;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number followed by us, ms, s, m or h"
        ));
    }
    // Exact decimal arithmetic in nanoseconds: through f64, `16994078416ms` came out as
    // 16994078.416000001s. Digits below a nanosecond are dropped.
    let bad_number = || format!("invalid duration {s:?}: {num:?} is not a number");
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(bad_number());
    }
    let unit_ns: u128 = match unit.trim() {
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if int.bytes().chain(frac.bytes()).all(|b| b == b'0') => 0,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: a unit is required (us, ms, s, m or h)"
            ))
        }
        u => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {u:?} (use us, ms, s, m or h)"
            ))
        }
    };
    let out_of_range = || format!("invalid duration {s:?}: out of range");
    let int = int.trim_start_matches('0');
    if int.len() > 20 {
        return Err(out_of_range());
    }
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad_number())?
    };
    // 18 fractional digits are finer than a nanosecond of the largest unit (an hour).
    let frac18: u128 = format!("{:0<18}", &frac[..frac.len().min(18)])
        .parse()
        .map_err(|_| bad_number())?;
    let nanos = whole * unit_ns + frac18 * unit_ns / 1_000_000_000_000_000_000;
    if nanos > MAX_DURATION_SECS as u128 * 1_000_000_000 {
        return Err(out_of_range());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number optionally followed by B, KiB, MiB or GiB"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: {num:?} is not a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Accepts a string or a bare integer, so `max_size: 1024` works as well as `max_size: 1KiB`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    S(String),
    I(u64),
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d).map_err(|_| {
            de::Error::custom(
                "invalid duration: expected a string such as \"500ms\", \"1s\" or \"2m\"",
            )
        })? {
            StrOrInt::S(s) => parse_duration(&s).map(Dur).map_err(de::Error::custom),
            StrOrInt::I(0) => Ok(Dur(Duration::ZERO)),
            StrOrInt::I(n) => Err(de::Error::custom(format!(
                "invalid duration {n}: a unit is required, for example \"{n}s\""
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d).map_err(|_| {
            de::Error::custom("invalid size: expected a string such as \"64KiB\" or a byte count")
        })? {
            StrOrInt::S(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
            StrOrInt::I(n) => Ok(Size(n)),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("1.5us").unwrap(), Duration::from_nanos(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ms").is_err());
    }

    /// Found by the `units` fuzz target: whole milliseconds must not pick up float error.
    #[test]
    fn durations_are_exact() {
        assert_eq!(
            parse_duration("16994078416ms"),
            Ok(Duration::from_millis(16_994_078_416))
        );
        assert_eq!(parse_duration("0.001s"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.0000000015s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(31_536_000)));
        assert!(parse_duration("8760.001h").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration(".s").is_err());
        assert!(parse_duration("99999999999999999999999999h").is_err());
        assert_eq!(parse_duration("0.0"), Ok(Duration::ZERO));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("8KiB").unwrap(), 8 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
