//! `start:`, where a watcher without a watermark begins: `beginning`, `now`, or an RFC
//! 3339 time.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// Where a watcher that has no watermark begins. Each source maps it to its first
/// watermark; it is not looked at again once a watermark is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// Announce everything already there (the default).
    #[default]
    Beginning,
    /// Announce only what arrives after the watcher first runs.
    Now,
    /// Announce what arrived at or after this time.
    At(DateTime<Utc>),
}

impl Start {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Start, String> {
        match text.trim() {
            "beginning" => Ok(Start::Beginning),
            "now" => Ok(Start::Now),
            other => DateTime::parse_from_rfc3339(other).map(|t| Start::At(t.with_timezone(&Utc))).map_err(|_| {
                format!(
                    "`{other}` is not a start: write `beginning`, `now` or an RFC 3339 time such as 2026-11-25T00:00:00Z"
                )
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor keeps the value's line number (see `HumanDuration`).
        struct StartVisitor;
        impl Visitor<'_> for StartVisitor {
            type Value = Start;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`beginning`, `now` or an RFC 3339 time")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Start, E> {
                Start::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(StartVisitor)
    }
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Beginning => f.write_str("beginning"),
            Start::Now => f.write_str("now"),
            Start::At(at) => f.write_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts() {
        assert_eq!(Start::parse("beginning").unwrap(), Start::Beginning);
        assert_eq!(Start::parse("now").unwrap(), Start::Now);
        let at = Start::parse("2026-11-25T01:02:03+01:00").unwrap();
        assert_eq!(at.to_string(), "2026-11-25T00:02:03Z");
        assert_eq!(Start::parse(&at.to_string()).unwrap(), at);
        assert!(Start::parse("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
