//! The `Source` trait every watcher source implements, the state it keeps, and the
//! sources themselves.
//!
//! Sources only read: they never touch the store or a sink. A source is stateful: the
//! loop hands it the committed state once ([`Source::restore`]: a small head and the
//! remembered members), each poll returns batches that carry their [`ChangeSet`], and
//! after each commit the loop says so ([`Source::committed`]).

pub mod local_dir;
pub mod postgres;
pub mod s3;
pub mod window;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{Change, Item, ItemKind};
use crate::json::Json;
use crate::value::Start;

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

/// A source's committed state, as the store keeps it: a small head (times, cursors, a
/// snapshot) and, for a source that needs one, a set of remembered members (member
/// name -> small value), each stored as a row of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceState {
    /// The head; None when the watcher has no watermark (a first start, or after
    /// `highwater state reset`).
    pub head: Option<Json>,
    /// The remembered members, in name order.
    pub members: Vec<(String, Json)>,
}

/// What committing a batch does to its source's state, relative to the state after the
/// batch before it. Written by the source, stored with the pending batch, applied by the
/// outbox in the transaction that clears the batch, handed back to the source by
/// [`Source::committed`]; the loop never looks inside.
///
/// A commit writes only this: the head (one row) when it changed, each member put, each
/// member removed. Its cost grows with the change, not with the set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSet {
    /// The new head; None leaves the head as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Json>,
    /// Members added or replaced, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub put: BTreeMap<String, Json>,
    /// Members removed (applied before `put`: a name in both ends up put).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl ChangeSet {
    /// A change that replaces the head only.
    pub fn head(head: Json) -> Self {
        ChangeSet { head: Some(head), ..ChangeSet::default() }
    }

    /// True when committing it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.put.is_empty() && self.remove.is_empty()
    }
}

/// One batch of a poll: what is delivered together and committed together.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// New items, at most the limit the poll was given, in delivery order. A batch with
    /// no items is committed without a delivery: how a source stores progress that a
    /// restart must not lose although nothing was found (rare by contract: an idle
    /// poll writes nothing).
    pub items: Vec<Found>,
    /// What the commit of this batch does to the state.
    pub change: ChangeSet,
}

/// The result of one poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Polled {
    /// Zero or more batches, oldest first. Each change set is relative to the state after
    /// the batch before it (the first: to the state the poll started from), so the state
    /// after batch k is valid on its own: a crash after committing it loses nothing
    /// (the later batches are found again).
    pub batches: Vec<Batch>,
    /// True when more is waiting beyond these batches, so the loop polls again at once
    /// instead of sleeping.
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

    /// A stored head or member that this source cannot read (another source's, or
    /// edited by hand): an operator must reset or set it.
    pub fn unreadable_state(kind: &str, what: &str, error: impl std::fmt::Display) -> Self {
        SourceError::needs_attention(format!(
            "stored {what} is not a {kind} watermark ({error}); reset it with `highwater state reset`"
        ))
    }
}

/// A source of new items. The loop drives it in this order: [`Source::restore`] (at
/// start, and whenever the stored state changed outside the watcher), [`Source::begin`]
/// when no head is stored, then polls; after each commit, [`Source::committed`]. A poll
/// reads only what the source holds: it never re-reads the stored state.
#[async_trait]
pub trait Source: Send {
    /// The source kind, as in the config's `type` and the event's `source` field.
    fn kind(&self) -> &'static str;

    /// Takes the committed state, replacing whatever the source held (also whatever it
    /// had moved in memory past it). A state it cannot read needs an operator.
    fn restore(&mut self, state: SourceState) -> Result<(), SourceError>;

    /// Maps `start:` to the first state of a watcher that has no watermark, as a change
    /// set from the empty state (called after `restore` with an empty state). The loop
    /// stores a non-empty one before the first poll. The default supports `beginning`
    /// only (nothing to store) and refuses the other forms.
    async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
        match start {
            Start::Beginning => Ok(ChangeSet::default()),
            other => Err(SourceError::needs_attention(format!(
                "the {} source does not support `start: {other}` yet; remove `start:` or use `start: beginning`",
                self.kind()
            ))),
        }
    }

    /// Looks for items past the state the source holds, in batches of at most `limit`
    /// items. Must not move the state that [`Source::committed`] moves: after a crash
    /// the loop restores the committed state and polls again. A poll that returns no
    /// batch may move the source's own position in memory (nothing to announce, nothing
    /// to lose); nothing is stored for it.
    async fn poll(&mut self, limit: usize) -> Result<Polled, SourceError>;

    /// The batch carrying `change` was committed (or set aside): the source applies it
    /// to the state it holds. An error makes the loop restore the source from the store.
    fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError>;

    /// Whether the loop may poll again while the batch this source handed out last is
    /// still being delivered (reading ahead, so that the next batch is read from the
    /// server while the sink takes this one). A source that says so polls on from the
    /// newest state it handed out, and takes [`Source::committed`] for each batch in
    /// the order it handed them out; [`Source::restore`] drops whatever it read ahead
    /// (the loop restores the source whenever it drops a batch it took without
    /// committing it). The default is no: every poll starts from the committed state.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// Checks that the source's resource exists and is readable (a bucket, a table and
    /// its columns, a directory), for `highwater check --connect` and the log at start.
    /// The default has nothing to check.
    async fn check(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Items skipped as unusable since the last call (a row whose cursor is NULL), for
    /// the watcher's `items_skipped` counter. The source logs each skip itself.
    fn take_skipped(&mut self) -> u64 {
        0
    }

    /// Objects a scheduled listing found that no event notification had announced,
    /// since the last call (the `s3` source with `notifications`: the queue lost or
    /// filtered them), for the watcher's `items_unnotified` counter. The source logs
    /// them itself.
    fn take_unnotified(&mut self) -> u64 {
        0
    }

    /// A short form of the state the source holds, for the events of its next poll
    /// (their `watermark` field). Never the remembered set.
    fn summary(&self) -> serde_json::Value;

    /// A short form of a stored state for `highwater state list`, from its head and the
    /// number of members remembered (the members themselves are not loaded).
    fn summarize(&self, head: &Json, remembered: u64) -> serde_json::Value;
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

    /// The kind of item every event of this source carries, as configured (`emit`):
    /// what a sink's templates may name.
    fn item_kind(&self) -> ItemKind;

    /// Whether the kind maps this `start:` to a first watermark (see
    /// [`Source::begin`]), so that `highwater check` reports one it cannot. The default
    /// takes `beginning` only; a kind that overrides [`Source::begin`] overrides this.
    fn check_start(&self, start: &Start) -> Result<(), String> {
        match start {
            Start::Beginning => Ok(()),
            other => Err(format!("`{other}` is not supported by this source kind yet; use `beginning`")),
        }
    }
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

    /// The kind of item its events carry (see [`SourceKind::item_kind`]).
    pub fn item_kind(&self) -> ItemKind {
        self.get().item_kind()
    }

    /// Checks that need more than one key; returns `(key under source, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        self.get().validate()
    }

    /// Builds the runtime source (see [`SourceKind::build`]).
    pub fn build(&self) -> Box<dyn Source> {
        self.get().build()
    }

    /// See [`SourceKind::check_start`].
    pub fn check_start(&self, start: &Start) -> Result<(), String> {
        self.get().check_start(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind that keeps every default.
    struct Plain;

    impl SourceKind for Plain {
        fn describe(&self) -> String {
            "plain".into()
        }
        fn build(&self) -> Box<dyn Source> {
            unreachable!("not built")
        }
        fn item_kind(&self) -> ItemKind {
            ItemKind::File
        }
    }

    #[test]
    fn a_kind_takes_start_beginning_only_unless_it_says_otherwise() {
        assert_eq!(Plain.check_start(&Start::Beginning), Ok(()));
        let refused = Plain.check_start(&Start::Now).unwrap_err();
        assert!(refused.contains("`now` is not supported"), "{refused}");
        let change = ChangeSet { remove: vec!["x".into()], ..ChangeSet::default() };
        assert!(!change.is_empty() && ChangeSet::default().is_empty());
        let text = Json::encode(&change).unwrap();
        assert_eq!(text.as_str(), r#"{"remove":["x"]}"#);
        assert_eq!(text.decode::<ChangeSet>().unwrap(), change);
    }
}
