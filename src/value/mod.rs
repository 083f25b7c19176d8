//! Config values that check themselves while they are read and are then carried typed:
//! durations, globs, names; and the kinds of `type:`-tagged enums.
//!
//! A leaf: nothing here imports another module of the crate, so the config loader and
//! every component can use these types without importing each other. Each type fails
//! at the value's own line (serde reports it), and code past the config never parses
//! the text again.

mod duration;
mod glob;
mod name;
mod tagged;

pub use duration::HumanDuration;
pub use glob::Glob;
pub use name::Name;
pub(crate) use tagged::kinds;
pub use tagged::{Kind, Tagged, variant};
