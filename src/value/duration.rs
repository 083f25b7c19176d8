//! Durations as people write them: `500ms`, `30s`, `5m`, `2h`, `1d`, or bare seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A duration written as `500ms`, `30s`, `5m`, `2h` or `1d`, or a bare number of seconds.
/// Either form is at most [`HumanDuration::MAX`]: every timer the daemon sets from a
/// config value can then be added to the clock without overflowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The longest duration a config may give: ten years.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 86400);

    /// A number of seconds (a bare number in the config), checked against the cap.
    pub fn from_seconds(seconds: f64, written: &dyn fmt::Display) -> Result<Duration, String> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(format!("`{written}` is not a duration (it must not be negative)"));
        }
        if seconds > Self::MAX.as_secs_f64() {
            return Err(format!("`{written}` is too long a duration (at most 10 years)"));
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (write e.g. 500ms, 30s, 5m, 2h, 1d)"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => return Err(format!("`{other}` is not a duration unit (use ms, s, m, h or d)")),
        };
        Self::from_seconds(number * scale, &text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, not an untagged enum: untagged enums buffer the value and lose its
        // line number.
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 5m, 2h or 1d")
            }
            // Bare numbers go through the same cap as the text form: a value too large
            // for the clock must fail here, not in a watcher's timer.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                HumanDuration::from_seconds(v as f64, &v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                HumanDuration::from_seconds(v as f64, &v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                HumanDuration::from_seconds(v, &v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            let s = ms / 1000;
            match s {
                s if s != 0 && s.is_multiple_of(86400) => write!(f, "{}d", s / 86400),
                s if s != 0 && s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
                s if s != 0 && s.is_multiple_of(60) => write!(f, "{}m", s / 60),
                s => write!(f, "{s}s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(HumanDuration::parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(HumanDuration::parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(HumanDuration::parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(HumanDuration::parse("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(HumanDuration::parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            HumanDuration::parse("5x").unwrap_err(),
            "`x` is not a duration unit (use ms, s, m, h or d)"
        );
        assert!(HumanDuration::parse("soon").is_err());
        assert_eq!(HumanDuration(Duration::from_secs(7200)).to_string(), "2h");
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
    }

    fn from_yaml(text: &str) -> Result<HumanDuration, String> {
        serde_yaml::from_str::<HumanDuration>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_share_one_cap() {
        assert_eq!(from_yaml("30").unwrap(), HumanDuration(Duration::from_secs(30)));
        assert_eq!(from_yaml("1.5").unwrap(), HumanDuration(Duration::from_millis(1500)));
        assert_eq!(from_yaml("3650d").unwrap(), HumanDuration(HumanDuration::MAX));
        assert_eq!(from_yaml("315360000").unwrap(), HumanDuration(HumanDuration::MAX));
        for too_long in ["18446744073709551615", "1e300", "3651d", "315360001", "99999999999999999999h"] {
            let error = from_yaml(too_long).unwrap_err();
            assert!(error.contains("too long a duration"), "{too_long}: {error}");
        }
        for negative in ["-1", "-0.5", "-5s"] {
            assert!(from_yaml(negative).is_err(), "{negative}");
        }
        assert!(from_yaml(".nan").is_err());
        assert!(from_yaml(".inf").is_err());
    }
}
