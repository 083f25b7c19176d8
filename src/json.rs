//! `Json`: JSON text carried as text. What the store holds and what a source hands over
//! as its state are encoded once by whoever writes them and parsed only by whoever
//! reads them; the code in between (the store, the loop) moves text. A leaf: it imports
//! nothing of the crate.

use std::fmt;

use serde::de::{DeserializeOwned, Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value as text. Equality is equality of the text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(String);

impl Json {
    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Json, serde_json::Error> {
        serde_json::to_string(value).map(Json)
    }

    /// Text that is JSON because this process wrote it as [`Json`] (a store reading back
    /// its own rows). Not checked: a reader that finds otherwise reports it then.
    pub fn from_trusted(text: String) -> Json {
        Json(text)
    }

    /// Text from outside (an operator's file), checked to be one JSON value.
    pub fn parse(text: impl Into<String>) -> Result<Json, serde_json::Error> {
        let text = text.into();
        serde_json::from_str::<IgnoredAny>(&text)?;
        Ok(Json(text))
    }

    /// `null`.
    pub fn null() -> Json {
        Json("null".to_string())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Bytes of text.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Decodes the text into `T`, borrowing from it where `T` can.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Decodes the text into an owned `T`.
    pub fn decode_owned<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl From<Box<RawValue>> for Json {
    fn from(raw: Box<RawValue>) -> Self {
        Json(String::from(raw.get()))
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Embedded as the value it holds, not as a string.
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Read as the text of whatever value stands there (from JSON input only).
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)
            .map_err(|e| D::Error::custom(format!("expected JSON text: {e}")))?;
        Ok(Json::from(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_as_written_and_embedded_raw() {
        let exact = Json::parse(r#"{"n": 1.000000000000000000001, "b": [1,2]}"#).unwrap();
        #[derive(Serialize, Deserialize)]
        struct Outer {
            inner: Json,
        }
        let text = serde_json::to_string(&Outer { inner: exact.clone() }).unwrap();
        assert_eq!(text, r#"{"inner":{"n": 1.000000000000000000001, "b": [1,2]}}"#);
        let back: Outer = serde_json::from_str(&text).unwrap();
        assert_eq!(back.inner, exact, "the number's digits survive");
        assert!(Json::parse("{not json").is_err());
        assert_eq!(Json::encode(&vec![1, 2]).unwrap().as_str(), "[1,2]");
        let n: Vec<i32> = Json::encode(&vec![3]).unwrap().decode().unwrap();
        assert_eq!(n, vec![3]);
    }
}
