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

/// Deepest nesting of flow collections (`[`, `{`) accepted. Configs nest three or four
/// levels; the YAML parser takes time quadratic in the depth (a 200 KB file of
/// brackets took 37 s), so deeper text is refused before it is parsed.
const MAX_DEPTH: usize = 32;

/// Most errors reported for one file.
const MAX_ERRORS: usize = 50;

/// Parses `text` (already env-expanded) from `file` into `T`, or reports every error
/// it can find: the first at its exact line and column (from the parser), the others
/// at the line of their key.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, Vec<ConfigError>> {
    check_depth(file, text)?;
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(deserializer) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let location = inner.location();
            let mut message = clean_message(inner.to_string(), &path);
            let line = location.as_ref().map(|l| l.line());
            let key = match (unknown_tail(&path), line) {
                (Some(known), Some(line)) => {
                    // The parser's words for what is nearly always an indentation slip.
                    if ["mapping values are not allowed", "did not find expected key"]
                        .iter()
                        .any(|m| message.starts_with(m))
                    {
                        message.push_str(" (is this line indented like the keys beside it?)");
                    }
                    parent_key(text, known, line)
                }
                _ => key_of(&path),
            };
            let mut first = ConfigError {
                file: file.to_path_buf(),
                line,
                column: location.as_ref().map(|l| l.column()),
                key,
                message,
            };
            place_duplicate(text, &mut first);
            let mut errors = vec![first];
            more_errors::<T>(file, text, &mut errors);
            Err(errors)
        }
    }
}

/// serde_yaml appends " at line L column C" and sometimes prefixes the key path; both
/// are already in the error's own fields. An unknown key or kind close to a known one
/// is answered with that one ([`suggest`]).
fn clean_message(mut message: String, path: &str) -> String {
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let segments: Vec<&str> = path.split('.').collect();
    for n in (1..=segments.len()).rev() {
        if let Some(rest) = message.strip_prefix(&format!("{}: ", segments[..n].join("."))) {
            message = rest.to_string();
            break;
        }
    }
    suggest(message)
}

/// Rewrites serde's "unknown field `prefx`, expected one of `bucket`, `prefix`, …" (or
/// "unknown variant") into "unknown field `prefx`; did you mean `prefix`?" when one of
/// the expected names is close to what was written ([`closest`]). Otherwise the list
/// stays: it is the best help there is.
fn suggest(message: String) -> String {
    for what in ["unknown field `", "unknown variant `"] {
        let Some(rest) = message.strip_prefix(what) else { continue };
        let Some((written, rest)) = rest.split_once('`') else { break };
        let Some(expected) = rest.strip_prefix(", expected ") else { break };
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if let Some(best) = closest(written, &known) {
            return format!("{what}{written}`; did you mean `{best}`?");
        }
        break;
    }
    message
}

/// The known name closest to `written` by edit distance (a transposition counts as one
/// edit), if it is close enough to be what was meant: at most one edit in three
/// characters (`pth` → `path`, `prefx` → `prefix`, `pol_interval` → `poll_interval`),
/// the cut-off rustc uses for its own suggestions. Case alone is always close. The
/// first of equally close names wins.
pub(crate) fn closest<'a>(written: &str, known: &[&'a str]) -> Option<&'a str> {
    let length = written.chars().count();
    // One edit in a name of one letter is a different name.
    let cutoff = (length.max(3) / 3).min(length.saturating_sub(1));
    known
        .iter()
        .map(|k| {
            let d = if k.eq_ignore_ascii_case(written) { 0 } else { edit_distance(written, k) };
            (d, *k)
        })
        .filter(|(d, _)| *d <= cutoff)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// transpositions of neighbours each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: the one before the previous is needed for transpositions.
    let mut older = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(older[j - 2] + 1);
            }
            current[j] = d;
        }
        std::mem::swap(&mut older, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// When the parser failed before it could read a key (serde_path_to_error shows that
/// key as `?`, as in `source.?`: an indentation slip), the known part of the path.
fn unknown_tail(path: &str) -> Option<&str> {
    if path == "?" {
        return Some("");
    }
    path.strip_suffix(".?")
}

/// The key path of the error at `line` after an indentation slip: the keys the line
/// sits under by its indentation (the nearest line above indented less, then the one
/// above that, …), when they agree with what the parser knew (`known`, a prefix);
/// otherwise `known` alone. `  region: x` followed by `    prefix: in/` puts the
/// error under `source.region`, where the slip made it.
fn parent_key(text: &str, known: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bound = lines.get(line.saturating_sub(1)).map_or(usize::MAX, |l| indent(l));
    let mut keys = Vec::new();
    for l in lines.iter().take(line.saturating_sub(1)).rev() {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || indent(l) >= bound {
            continue;
        }
        bound = indent(l);
        if let Some((key, rest)) = trimmed.split_once(':')
            && (rest.is_empty() || rest.starts_with([' ', '\t']))
            && !key.is_empty()
            && key.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c))
        {
            keys.push(key);
        }
        if bound == 0 {
            break;
        }
    }
    keys.reverse();
    let found = keys.join(".");
    let agrees = known.is_empty() || found == known || found.starts_with(&format!("{known}."));
    let path = if agrees { found } else { known.to_string() };
    (!path.is_empty()).then_some(path)
}

fn key_of(path: &str) -> Option<String> {
    (path != "." && !path.is_empty()).then(|| path.to_string())
}

/// A key given twice is reported by serde at the start of its mapping; this moves the
/// error to the second occurrence of the key.
fn place_duplicate(text: &str, error: &mut ConfigError) {
    let Some(field) = error.message.strip_prefix("duplicate field `").and_then(|m| m.strip_suffix('`'))
    else {
        return;
    };
    let parent = error.key.clone().unwrap_or_default();
    let path = if parent.is_empty() { field.to_string() } else { format!("{parent}.{field}") };
    if let Some(first) = locate(text, &path) {
        let indent = |line: &str| line.len() - line.trim_start().len();
        let first_line = text.lines().nth(first - 1).unwrap_or("");
        let needle = format!("{field}:");
        let second =
            text.lines().enumerate().skip(first).find(|(_, line)| {
                line.trim_start().starts_with(&needle) && indent(line) == indent(first_line)
            });
        if let Some((index, line)) = second {
            error.line = Some(index + 1);
            error.column = Some(indent(line) + 1);
            error.key = Some(path);
        }
    }
}

/// After the first error, looks for the others: the file is read again as a plain YAML
/// tree, each top-level key on its own, and every bad key found is dropped so that the
/// next one shows. Only errors in values are reported here (a key that is missing
/// because it was dropped is not an error of its own). The lines come from the key
/// paths ([`locate`]).
fn more_errors<T: DeserializeOwned>(file: &Path, text: &str, errors: &mut Vec<ConfigError>) {
    let Ok(serde_yaml::Value::Mapping(tree)) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return;
    };
    for (key, value) in tree {
        let mut single = serde_yaml::Mapping::new();
        single.insert(key, value);
        let mut document = serde_yaml::Value::Mapping(single);
        while errors.len() < MAX_ERRORS {
            let Err(err) = serde_path_to_error::deserialize::<_, T>(document.clone()) else { break };
            let path = err.path().to_string();
            let message = clean_message(err.into_inner().to_string(), &path);
            if message.starts_with("missing field") {
                break;
            }
            let key = key_of(&path);
            if !errors.iter().any(|e| e.key == key) {
                errors.push(ConfigError {
                    file: file.to_path_buf(),
                    line: locate(text, &path),
                    column: None,
                    key: key.clone(),
                    message,
                });
            }
            if key.is_none() || !drop_path(&mut document, &path) {
                break;
            }
        }
    }
}

/// Removes the value at a key path (`source.events[1]`) from a tree; false when
/// there is none.
fn drop_path(tree: &mut serde_yaml::Value, path: &str) -> bool {
    let mut steps = Vec::new();
    for segment in path.split('.') {
        let (key, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            steps.push(Err(key.to_string()));
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            match index.trim_end_matches(']').parse::<usize>() {
                Ok(i) => steps.push(Ok(i)),
                Err(_) => return false,
            }
        }
    }
    let Some(last) = steps.pop() else { return false };
    let mut node = tree;
    for step in steps {
        let next = match (step, node) {
            (Err(key), serde_yaml::Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Ok(i), serde_yaml::Value::Sequence(seq)) => seq.get_mut(i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Err(key), serde_yaml::Value::Mapping(map)) => map.remove(key.as_str()).is_some(),
        (Ok(i), serde_yaml::Value::Sequence(seq)) if i < seq.len() => {
            seq.remove(i);
            true
        }
        _ => false,
    }
}

/// Refuses flow collections nested deeper than [`MAX_DEPTH`], at the line and column
/// where the limit is crossed. Quoted text and comments are skipped; this is a guard
/// against pathological input, not a YAML parser.
fn check_depth(file: &Path, text: &str) -> Result<(), Vec<ConfigError>> {
    let mut depth = 0usize;
    for (index, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if previous.is_whitespace() => break,
                    '\'' | '"' if previous.is_whitespace() || "[{,:".contains(previous) => quote = Some(c),
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(vec![ConfigError {
                                file: file.to_path_buf(),
                                line: Some(index + 1),
                                column: Some(column + 1),
                                key: None,
                                message: format!("nested more than {MAX_DEPTH} levels deep"),
                            }]);
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            previous = c;
        }
    }
    Ok(())
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: crate::value::Name,
        every: crate::value::HumanDuration,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        count: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
        #[serde(default)]
        b: u32,
    }

    fn errors(text: &str) -> Vec<String> {
        let errors = parse::<Doc>(Path::new("f.yaml"), text).expect_err("invalid");
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_bad_key_is_reported_at_its_own_line() {
        let text = "every: 5s\nname: bad/name\ninner:\n  a: x\n  b: 2\n  c: 3\ncount: many\nextra: 1\n";
        assert_eq!(
            errors(text),
            [
                "f.yaml:2:7: name: `bad/name` may hold only letters, digits, `_`, `-` and `.`",
                "f.yaml:4: inner.a: invalid type: string \"x\", expected u32",
                "f.yaml:6: inner.c: unknown field `c`, expected `a` or `b`",
                "f.yaml:7: count: invalid type: string \"many\", expected u32",
                "f.yaml:8: extra: unknown field `extra`, expected one of `name`, `every`, `inner`, `count`",
            ]
        );
    }

    #[test]
    fn a_dropped_key_is_not_reported_again_as_missing() {
        assert_eq!(
            errors("name: a\nevery: soon\n"),
            ["f.yaml:2:8: every: `soon` is not a duration (write e.g. 500ms, 30s, 5m, 2h, 1d)"]
        );
    }

    #[test]
    fn a_duplicate_key_is_placed_at_its_second_line() {
        assert_eq!(errors("name: a\nevery: 1s\nname: b\n"), ["f.yaml:3:1: name: duplicate field `name`"]);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let text = format!("name: a\nevery: 1s\ninner: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
        assert_eq!(errors(&text), ["f.yaml:3:40: nested more than 32 levels deep"]);
        // Brackets inside quotes and comments do not count.
        let quoted = format!(
            "name: a\nevery: 1s # {}\ninner: {{a: 1, b: 2}}\nx: '{}'\n",
            "[".repeat(40),
            "{".repeat(40)
        );
        assert!(errors(&quoted).iter().all(|e| !e.contains("nested")), "{:?}", errors(&quoted));
    }

    #[test]
    fn a_misspelt_key_gets_the_closest_known_one() {
        assert_eq!(
            errors("name: a\nevery: 1s\nconut: 2\n"),
            ["f.yaml:3:1: conut: unknown field `conut`; did you mean `count`?"]
        );
        assert_eq!(
            errors("name: a\nevery: 1s\ninner:\n  a: 1\n  B: 2\n"),
            ["f.yaml:5:3: inner.B: unknown field `B`; did you mean `b`?"]
        );
        // Nothing close: the list of known keys stays.
        assert_eq!(
            errors("name: a\nevery: 1s\nsomething: 2\n"),
            [
                "f.yaml:3:1: something: unknown field `something`, expected one of `name`, `every`, `inner`, `count`"
            ]
        );
        let known = ["bucket", "prefix", "glob", "region", "poll_interval", "path"];
        assert_eq!(closest("prefx", &known), Some("prefix"));
        assert_eq!(closest("perfix", &known), Some("prefix"), "a transposition is one edit");
        assert_eq!(closest("pth", &known), Some("path"));
        assert_eq!(closest("pol_interval", &known), Some("poll_interval"));
        assert_eq!(closest("regoin", &known), Some("region"));
        assert_eq!(closest("asset", &known), None);
        assert_eq!(closest("x", &known), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn an_indentation_slip_names_the_key_it_happened_under() {
        // A key indented deeper than its neighbours: it continues the value above.
        type Nested = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;
        let text = "source:\n  type: s3\n  region: x\n    prefix: in/\nsink: {}\n";
        let reported: Vec<String> = parse::<Nested>(Path::new("f.yaml"), text)
            .expect_err("a slip")
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            reported,
            [
                "f.yaml:4:11: source.region: mapping values are not allowed in this context (is this line indented like the keys beside it?)"
            ]
        );
        assert_eq!(parent_key(text, "source", 4), Some("source.region".into()));
        assert_eq!(parent_key(text, "", 4), Some("source.region".into()));
        assert_eq!(parent_key(text, "sink", 4), Some("sink".into()), "the parser's word wins");
        // A key indented less than its neighbours, but not back to the top.
        let text = "name: a\nevery: 1s\ninner:\n  a: 1\n b: 2\n";
        let reported = errors(text);
        assert!(reported[0].starts_with("f.yaml:5:2: inner: "), "{reported:?}");
        assert!(reported.iter().all(|e| !e.contains(".?") && !e.contains(": ?:")), "{reported:?}");
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
