//! Text with `{field}` placeholders filled from an event's item (Airflow's
//! `partition_key`).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A template: literal text and item fields. `{field}` is replaced by that field of
/// the item, `{{` and `}}` are literal braces. Checked while read.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    /// The text as written, for `Debug` and messages.
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => field.push(c),
                            _ => {
                                return Err(format!(
                                    "`{text}`: write `{{field}}` with an item field name, `{{{{` for a brace"
                                ));
                            }
                        }
                    }
                    if field.is_empty() {
                        return Err(format!("`{text}`: `{{}}` names no field"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err(format!("`{text}`: unmatched `}}` (write `}}}}` for a brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { text: text.to_string(), pieces })
    }

    /// The item fields it names, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(field) => Some(field.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// Fills the template from an item (a JSON object); the error names the missing
    /// field.
    pub fn render(&self, item: &serde_json::Value) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => match item.get(field) {
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        out.push_str(&v.to_string())
                    }
                    _ => return Err(format!("the item has no field `{field}` to fill it with")),
                },
            }
        }
        if out.trim().is_empty() {
            return Err("the key came out empty".into());
        }
        Ok(out)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.text)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::parse_text(deserializer, "a template such as `day={date}`", Template::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_braces() {
        let item = serde_json::json!({"relative_path": "a.csv", "size": 3});
        let t = Template::parse("file={relative_path} {{{size}}}").unwrap();
        assert_eq!(t.render(&item).unwrap(), "file=a.csv {3}");
        assert_eq!(
            Template::parse("{bucket}").unwrap().render(&item).unwrap_err(),
            "the item has no field `bucket` to fill it with"
        );
        assert!(Template::parse("{unclosed").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{}").is_err());
    }
}
