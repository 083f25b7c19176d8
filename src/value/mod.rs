//! Config values that check themselves while they are read and are then carried typed:
//! durations, globs, names, HTTP URLs and headers, templates, secrets, `start:`, file
//! modes; and the kinds of `type:`-tagged enums.
//!
//! A leaf: nothing here imports another module of the crate, so the config loader and
//! every component can use these types without importing each other. Each type fails
//! at the value's own line (serde reports it), and code past the config never parses
//! the text again.

mod duration;
mod glob;
mod http;
mod mode;
mod name;
mod secret;
mod start;
mod tagged;
mod template;

pub use duration::HumanDuration;
pub use glob::Glob;
pub use http::{Header, Headers, HttpUrl};
pub use mode::FileMode;
pub use name::Name;
pub use secret::{EnvVar, Secret, SecretError, SecretFile, SecretReadError, SecretRef};
pub use start::Start;
pub(crate) use tagged::kinds;
pub use tagged::{Kind, Tagged, variant};
pub use template::Template;

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Deserializes a string through `parse`. The check runs inside the deserializer's own
/// call, so that its error carries the value's line and column (an error raised after
/// `String::deserialize` returned would be placed at the enclosing mapping).
pub(crate) fn parse_text<'de, D, T, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct TextVisitor<T, F>(&'static str, F, PhantomData<T>);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for TextVisitor<T, F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(TextVisitor(expecting, parse, PhantomData))
}
