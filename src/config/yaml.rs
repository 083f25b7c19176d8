//! All YAML parsing lives here (so that serde_yaml could be swapped in one place), plus
//! the helpers that keep line, column and key path on every error: a streaming reader
//! for `type:`-tagged enums ([`crate::value::Tagged`]) and the lines of keys checked
//! after parsing.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::ConfigError;
use crate::value::Tagged;

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

/// `Deserialize` for a [`Tagged`] enum, for `#[serde(deserialize_with)]`.
///
/// serde's own internally tagged enums buffer the whole mapping and so lose every line
/// number and key path inside it; this streams the mapping instead.
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
    fn locate_follows_indentation() {
        let text = "name: a\nsource:\n  type: x\n  path: p\nsink:\n  path: q\n";
        assert_eq!(locate(text, "source.path"), Some(4));
        assert_eq!(locate(text, "sink.path"), Some(6));
        assert_eq!(locate(text, "name"), Some(1));
        assert_eq!(locate(text, "nope"), None);
    }
}
