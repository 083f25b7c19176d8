//! Globs over `/`-separated relative paths, compiled while the config is read.

use serde::{Deserialize, Deserializer};

/// Longest pattern accepted: a real glob is a few dozen characters, and globset's
/// compiler panics on some patterns hundreds of kilobytes long.
const MAX_PATTERN: usize = 1024;

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
        if pattern.len() > MAX_PATTERN {
            return Err(format!("is {} bytes long; a glob may have at most {MAX_PATTERN}", pattern.len()));
        }
        // globset has panicked on odd patterns; a config value must never take the
        // process down, so a panic here is one more invalid pattern.
        let compiled = std::panic::catch_unwind(|| {
            globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map(|glob| glob.compile_matcher())
                .map_err(|e| e.kind().to_string())
        });
        match compiled {
            Ok(Ok(matcher)) => Ok(Glob { pattern: pattern.to_string(), matcher }),
            Ok(Err(kind)) => Err(format!("`{pattern}` is not a valid glob: {kind}")),
            Err(_) => Err(format!("`{pattern}` is not a glob this program can compile")),
        }
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

    #[test]
    fn huge_patterns_are_an_error_not_a_panic() {
        let error = Glob::new(&"a*".repeat(200_000)).unwrap_err();
        assert_eq!(error, "is 400000 bytes long; a glob may have at most 1024");
        assert!(Glob::new(&"{a,".repeat(300)).is_err());
    }
}
