//! All YAML parsing lives here (so that serde_yaml could be swapped in one place), plus
//! the helpers that keep line, column and key path on every error: a streaming reader
//! for `type:`-tagged enums, and the value types that validate while they parse.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::ConfigError;

/// Parses `text` (already env-expanded) from `file` into `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location();
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C" and sometimes prefixes the key path;
        // both are already in the error's own fields.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        // serde_yaml may prefix the message with the part of the key path it knows.
        let segments: Vec<&str> = path.split('.').collect();
        for n in (1..=segments.len()).rev() {
            if let Some(rest) = message.strip_prefix(&format!("{}: ", segments[..n].join("."))) {
                message = rest.to_string();
                break;
            }
        }
        ConfigError {
            file: file.to_path_buf(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            key: (path != "." && !path.is_empty()).then_some(path),
            message,
        }
    })
}

/// An enum read from a mapping whose `type` key picks the variant.
///
/// serde's own internally tagged enums buffer the whole mapping and so lose every line
/// number and key path inside it; [`deserialize_tagged`] streams the mapping instead.
pub trait Tagged: Sized {
    /// What the mapping is, for messages ("source", "sink").
    const WHAT: &'static str;
    /// The accepted `type` values.
    const VARIANTS: &'static [&'static str];
    /// Reads the variant named `tag` (one of `VARIANTS`) from the other keys.
    fn from_tag<'de, A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error>;
}

/// Reads the struct of one variant from the rest of the mapping.
pub fn variant<'de, T: Deserialize<'de>, A: MapAccess<'de>>(rest: A) -> Result<T, A::Error> {
    T::deserialize(de::value::MapAccessDeserializer::new(rest))
}

/// `Deserialize` for a [`Tagged`] enum.
pub fn deserialize_tagged<'de, D: Deserializer<'de>, T: Tagged>(deserializer: D) -> Result<T, D::Error> {
    struct TaggedVisitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a {} mapping with a `type` key", T::WHAT)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            // Keys written before `type` are kept as YAML values and replayed first;
            // everything after `type` streams with its line numbers.
            let mut before: Vec<(String, serde_yaml::Value)> = Vec::new();
            loop {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!(
                        "missing field `type` (one of {})",
                        T::VARIANTS.join(", ")
                    )));
                };
                if key == "type" {
                    let tag = map.next_value_seed(TagSeed(T::VARIANTS))?;
                    let rest = Chained { before: before.into_iter(), pending: None, live: map };
                    return T::from_tag(&tag, rest);
                }
                before.push((key, map.next_value()?));
            }
        }
    }

    deserializer.deserialize_map(TaggedVisitor(std::marker::PhantomData))
}

/// Reads the `type` value, refusing unknown kinds at the value's own line.
struct TagSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let tag = String::deserialize(deserializer)?;
        if self.0.contains(&tag.as_str()) { Ok(tag) } else { Err(de::Error::unknown_variant(&tag, self.0)) }
    }
}

/// A map access that yields buffered pairs, then the live mapping.
struct Chained<A> {
    before: std::vec::IntoIter<(String, serde_yaml::Value)>,
    /// The buffered value whose key was just yielded, with that key (buffered values
    /// have no line number, so their errors name the key instead).
    pending: Option<(String, serde_yaml::Value)>,
    live: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Chained<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.before.next() {
            Some((key, value)) => {
                self.pending = Some((key.clone(), value));
                seed.deserialize(key.into_deserializer()).map(Some)
            }
            None => self.live.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.pending.take() {
            Some((key, value)) => {
                seed.deserialize(value).map_err(|e| de::Error::custom(format!("{key}: {e}")))
            }
            None => self.live.next_value_seed(seed),
        }
    }
}

/// A duration written as `500ms`, `30s`, `5m`, `2h` or `1d`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
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
        let seconds = number * scale;
        if !seconds.is_finite() || seconds > 10.0 * 365.0 * 86400.0 {
            return Err(format!("`{text}` is too long a duration"));
        }
        Ok(Duration::from_secs_f64(seconds))
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
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                HumanDuration::parse(&v.to_string()).map(HumanDuration).map_err(E::custom)
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

/// A glob (`**/*.csv`), compiled while parsing so a bad pattern is reported at its line.
#[derive(Debug, Clone)]
pub struct Glob {
    /// The pattern as written.
    pub pattern: String,
    /// The compiled matcher.
    pub matcher: globset::GlobMatcher,
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Glob {
    /// Compiles a pattern; `*` does not cross `/`, `**` does.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("`{pattern}` is not a valid glob: {}", e.kind()))?;
        Ok(Glob { pattern: pattern.to_string(), matcher: glob.compile_matcher() })
    }

    /// True when `relative` (with `/` separators) matches.
    pub fn is_match(&self, relative: &str) -> bool {
        self.matcher.is_match(relative)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        Glob::new(&pattern).map_err(de::Error::custom)
    }
}

/// A namespace or watcher name: letters, digits, `_`, `-` and `.`; it shows up in
/// metrics labels, log fields and CLI arguments, so it stays plain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub String);

impl Name {
    /// Checks the characters.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 128 {
            return Err(format!("`{text}` must be 1 to 128 characters long"));
        }
        if !text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(format!("`{text}` may hold only letters, digits, `_`, `-` and `.`"));
        }
        Ok(Name(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::new(&text).map_err(de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Finds the line of a dotted key path in YAML text, for errors found after parsing
/// (cross-field checks). Approximate by design: it follows indentation, which is what
/// every config we ship and document uses.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let mut min_indent = 0usize;
    let mut found = None;
    let mut lines = text.lines().enumerate();
    for segment in path.split('.') {
        let needle = format!("{segment}:");
        found = None;
        for (index, line) in lines.by_ref() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.starts_with(&needle) && indent >= min_indent {
                found = Some(index + 1);
                min_indent = indent + 1;
                break;
            }
        }
        found?;
    }
    found
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

    #[test]
    fn names() {
        assert!(Name::new("orders-2024.v1").is_ok());
        assert!(Name::new("").is_err());
        assert!(Name::new("a b").is_err());
        assert!(Name::new("a/b").is_err());
    }

    #[test]
    fn globs_do_not_cross_directories_with_one_star() {
        let g = Glob::new("*.csv").unwrap();
        assert!(g.is_match("a.csv"));
        assert!(!g.is_match("x/a.csv"));
        assert!(Glob::new("**/*.csv").unwrap().is_match("x/y/a.csv"));
        assert!(Glob::new("a[").is_err());
    }

    #[test]
    fn locate_follows_indentation() {
        let text = "name: a\nsource:\n  type: x\n  path: p\nsink:\n  path: q\n";
        assert_eq!(locate(text, "source.path"), Some(4));
        assert_eq!(locate(text, "sink.path"), Some(6));
        assert_eq!(locate(text, "name"), Some(1));
        assert_eq!(locate(text, "nope"), None);
    }
}
