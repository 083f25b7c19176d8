//! The `Source` trait every watcher source implements, and the sources themselves.
//!
//! Sources only read: they never touch the store or a sink. The watcher loop hands a
//! source the stored watermark and gets back what is new plus the watermark that
//! follows it.

pub mod local_dir;
pub mod postgres;
pub mod s3;
pub mod window;

use async_trait::async_trait;

use crate::event::{Change, Item};

/// One new thing a source found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// What happened to the item.
    pub change: Change,
    /// The item, as it goes into the event.
    pub item: Item,
    /// What identifies this item (and this version of it) within the watcher: the
    /// input of the event id. Two polls that find the same item must give equal parts.
    pub identity: Vec<String>,
}

/// The result of one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    /// New items, at most the limit the poll was given, in the order they should be
    /// delivered.
    pub items: Vec<Found>,
    /// The watermark to store once every item above has been acknowledged. Owned by the
    /// source: the loop stores it and hands it back, and never looks inside.
    pub next: serde_json::Value,
    /// True when the source stopped at the limit and more is waiting, so the loop polls
    /// again at once instead of sleeping.
    pub more: bool,
}

/// How the loop should treat a failed poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A passing fault (network, throttling, a server restart): retry with backoff.
    Transient,
    /// Needs an operator (missing bucket, table or directory, access denied, bad
    /// credentials): the watcher is in error state and retries slowly.
    NeedsAttention,
    /// Another session holds what the source needs (a table lock): retried like a
    /// passing fault, with the watcher in state `waiting`.
    Waiting,
}

/// A failed poll. The message names the item or resource and never holds a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// How the loop should retry.
    pub class: ErrorClass,
    /// What went wrong, for logs and `highwater once`.
    pub message: String,
    /// The underlying error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    /// A passing fault.
    pub fn transient(message: impl Into<String>) -> Self {
        SourceError { class: ErrorClass::Transient, message: message.into(), source: None }
    }

    /// A fault that needs an operator.
    pub fn needs_attention(message: impl Into<String>) -> Self {
        SourceError { class: ErrorClass::NeedsAttention, message: message.into(), source: None }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// A source of new items.
#[async_trait]
pub trait Source: Send {
    /// The source kind, as in the config's `type` and the event's `source` field.
    fn kind(&self) -> &'static str;

    /// Looks for items past `watermark` (None on a watcher's first poll), returning at
    /// most `limit` of them. Must not have side effects that a repeat of the same call
    /// would notice: after a crash the loop polls again from the same watermark.
    async fn poll(
        &mut self,
        watermark: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<Polled, SourceError>;

    /// Checks that the source's resource exists and is readable (a bucket, a table and
    /// its columns, a directory), for `highwater check --connect` and the log at start.
    /// The default has nothing to check.
    async fn check(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// After a poll that found nothing: true when the watermark it returned must be
    /// stored all the same, because a restart must not lose it (the `s3` source in
    /// ordered mode: when its last full listing ran). Rare by contract: a source asks
    /// for it at most once per its own schedule, so an idle watcher stays quiet.
    fn store_idle(&self) -> bool {
        false
    }

    /// Items skipped as unusable since the last call (a row whose cursor is NULL), for
    /// the watcher's `items_skipped` counter. The source logs each skip itself.
    fn take_skipped(&mut self) -> u64 {
        0
    }

    /// A short form of a stored watermark for events and `highwater state list`: the
    /// stored one may carry a large remembered set that has no place in every event.
    fn summarize(&self, watermark: &serde_json::Value) -> serde_json::Value {
        watermark.clone()
    }
}

/// Reads a stored watermark back into the source's own type (None on a watcher's first
/// poll). One that does not fit (another source's, or edited by hand) needs an operator.
pub fn read_watermark<T: serde::de::DeserializeOwned>(
    kind: &str,
    watermark: Option<&serde_json::Value>,
) -> Result<Option<T>, SourceError> {
    // Deserialized from the borrowed value: a watermark can hold many thousands of
    // remembered items, and a copy of it per poll would be wasted memory.
    watermark
        .map(|value| {
            T::deserialize(value).map_err(|e| {
                SourceError::needs_attention(format!(
                    "stored watermark is not a {kind} watermark ({e}); reset it with `highwater state reset`"
                ))
            })
        })
        .transpose()
}

/// What every source kind's config offers; each kind's module implements it (and
/// [`Kind`](crate::value::Kind) for its `type` value) and adds one line to
/// [`SourceConfig`].
pub trait SourceKind {
    /// One line for `highwater watchers` (never a secret).
    fn describe(&self) -> String;

    /// Checks that need more than one key; `(key under source, message)` pairs.
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Builds the runtime source. Cheap and local: connections are made by the first
    /// poll, so a server that is down at start is a retried poll error, not a failed
    /// start.
    fn build(&self) -> Box<dyn Source>;
}

crate::value::kinds! {
    /// Which source a watcher reads (`source:` in a watcher file, tagged by `type`).
    pub enum SourceConfig("source") as dyn SourceKind {
        /// Files under a local directory.
        LocalDir(local_dir::LocalDirConfig),
        /// Objects under an S3 prefix.
        S3(s3::S3Config),
        /// New rows of a Postgres table.
        Postgres(postgres::PostgresConfig),
    }
}

impl SourceConfig {
    /// One line for `highwater watchers` (never a secret).
    pub fn describe(&self) -> String {
        self.get().describe()
    }

    /// Checks that need more than one key; returns `(key under source, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        self.get().validate()
    }

    /// Builds the runtime source (see [`SourceKind::build`]).
    pub fn build(&self) -> Box<dyn Source> {
        self.get().build()
    }
}
