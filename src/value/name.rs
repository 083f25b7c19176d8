//! Namespace and watcher names.

use std::fmt;

use serde::{Deserialize, Deserializer};

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
        super::parse_text(deserializer, "a name of letters, digits, `_`, `-` and `.`", Name::new)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::new("orders-2024.v1").is_ok());
        assert!(Name::new("").is_err());
        assert!(Name::new("a b").is_err());
        assert!(Name::new("a/b").is_err());
    }
}
