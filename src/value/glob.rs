//! Globs over `/`-separated relative paths, compiled while the config is read.

use serde::{Deserialize, Deserializer};

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
        super::parse_text(deserializer, "a glob such as **/*.csv", Glob::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_do_not_cross_directories_with_one_star() {
        let g = Glob::new("*.csv").unwrap();
        assert!(g.is_match("a.csv"));
        assert!(!g.is_match("x/a.csv"));
        assert!(Glob::new("**/*.csv").unwrap().is_match("x/y/a.csv"));
        assert!(Glob::new("a[").is_err());
    }
}
