//! `type:`-tagged enums (a source, a sink, a store): the trait such an enum implements,
//! and [`kinds!`], which writes one from a table of kinds.
//!
//! Reading the mapping itself is the YAML reader's job (`config::yaml`), which keeps
//! line numbers; this side only names the kinds and reads the chosen one's keys.

use serde::Deserialize;
use serde::de::{self, MapAccess};

/// An enum read from a mapping whose `type` key picks the variant.
pub trait Tagged: Sized {
    /// What the mapping is, for messages ("source", "sink").
    const WHAT: &'static str;
    /// The accepted `type` values.
    const VARIANTS: &'static [&'static str];
    /// Reads the variant named `tag` (one of `VARIANTS`) from the other keys.
    fn from_tag<'de, A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error>;
}

/// The config of one kind: the `type` value that picks it. Spelled here and nowhere
/// else; messages, `highwater watchers` and events take it from this constant.
pub trait Kind {
    /// The `type` value.
    const TAG: &'static str;
}

/// Reads the struct of one variant from the rest of the mapping.
pub fn variant<'de, T: Deserialize<'de>, A: MapAccess<'de>>(rest: A) -> Result<T, A::Error> {
    T::deserialize(de::value::MapAccessDeserializer::new(rest))
}

/// Writes a `type:`-tagged config enum from a table with one line per kind:
///
/// ```text
/// kinds! {
///     /// Which source a watcher reads.
///     pub enum SourceConfig("source") as dyn SourceKind {
///         /// Files under a local directory.
///         LocalDir(local_dir::LocalDirConfig),
///     }
/// }
/// ```
///
/// Each config type implements [`Kind`] (its tag) and the family's trait (`SourceKind`:
/// describe, validate, build). The enum gets [`Tagged`], `kind()` (the tag) and `get()`
/// (the config behind the family's trait), so that nothing else matches on the kinds.
macro_rules! kinds {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($what:literal) as dyn $family:path {
            $( $(#[$vmeta:meta])* $variant:ident($config:ty), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant($config), )+
        }

        impl $crate::value::Tagged for $name {
            const WHAT: &'static str = $what;
            const VARIANTS: &'static [&'static str] = &[$( <$config as $crate::value::Kind>::TAG ),+];
            fn from_tag<'de, A: ::serde::de::MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error> {
                $(
                    if tag == <$config as $crate::value::Kind>::TAG {
                        return Ok($name::$variant($crate::value::variant(rest)?));
                    }
                )+
                Err(::serde::de::Error::unknown_variant(tag, Self::VARIANTS))
            }
        }

        impl $name {
            /// The `type` value.
            #[allow(dead_code, reason = "not every family shows its kind")]
            pub fn kind(&self) -> &'static str {
                match self {
                    $( $name::$variant(_) => <$config as $crate::value::Kind>::TAG, )+
                }
            }

            /// The kind's own config, through what every kind of the family offers.
            pub fn get(&self) -> &dyn $family {
                match self {
                    $( $name::$variant(config) => config, )+
                }
            }
        }
    };
}

pub(crate) use kinds;
