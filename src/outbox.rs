//! A watcher's place in the store: the keys `watermark`, `pending` and `dead_letter/*`,
//! and every transaction that writes them. No other module names those keys.
//!
//! The delivery protocol, as the store sees it:
//! - **stage**: a batch goes to `pending` before its first delivery attempt, only if no
//!   batch is pending and the watermark is still the one it was polled from;
//! - **commit**: once the sink acknowledged it, the batch's [`StateChange`] is applied
//!   and `pending` deleted, in one transaction checked by version;
//! - **set aside**: the same, also keeping the batch under `dead_letter/<batch id>`;
//! - **replay**: a dead letter goes back to `pending`, with no state change;
//! - **set / reset**: an operator moves or forgets the watermark; a pending batch is
//!   dropped with it (its items are found again if they lie past the new watermark).
//!
//! Every transaction is built by one function ([`Outbox::transact`]), so that a check
//! every write of a watcher must carry (with several instances: its lease) is added in
//! one place.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::state::{Expect, Op, Record, Store, StoreError};

/// The watermark the next poll starts from.
const WATERMARK: &str = "watermark";
/// The batch written before its first delivery attempt.
const PENDING: &str = "pending";
/// Prefix of the keys that hold dead-lettered batches.
const DEAD_LETTER_PREFIX: &str = "dead_letter/";

/// The key a batch set aside is kept under (`dead_letter/<batch id>`).
pub fn dead_letter_key(batch_id: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{batch_id}")
}

/// What committing a batch does to its watcher's state. The loop carries it from the
/// poll to the commit and never looks inside; only this module turns it into writes.
///
/// Today a change replaces the whole watermark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateChange(serde_json::Value);

impl StateChange {
    /// The change a source that hands over whole watermarks makes: the watermark
    /// becomes `next`.
    pub fn replace_watermark(next: serde_json::Value) -> Self {
        StateChange(next)
    }

    /// Applies the change, once committed, to the state the next poll starts from.
    pub fn apply(self, state: &mut Option<serde_json::Value>) {
        *state = Some(self.0);
    }

    /// The write that stores the change, expecting the watermark at `expect`.
    fn op(&self, expect: Expect) -> Op {
        // Cloned for each attempt rather than once up front: a watermark can be megabytes
        // (a large remembered set) and almost every commit succeeds at once.
        Op::put(WATERMARK, self.0.clone(), expect)
    }
}

/// The outbox record: a batch written before its first delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingBatch {
    /// Hash of the batch's event ids: the same items give the same batch id.
    pub batch_id: String,
    /// When the batch was written.
    pub created_at: DateTime<Utc>,
    /// What the commit does to the state once the batch is acknowledged. None for a
    /// replayed dead-letter batch, whose delivery must not move the watermark. (Stored
    /// as `next_watermark`, the name it has always had in the store.)
    #[serde(rename = "next_watermark")]
    pub change: Option<StateChange>,
    /// The events, exactly as first attempted.
    pub events: Vec<Event>,
}

impl PendingBatch {
    /// A batch of `events` whose commit applies `change`; its id is derived from the
    /// event ids.
    pub fn new(events: Vec<Event>, change: StateChange, created_at: DateTime<Utc>) -> Self {
        let mut hasher = Sha256::new();
        for event in &events {
            hasher.update(event.id.as_bytes());
        }
        PendingBatch {
            batch_id: hex::encode(&hasher.finalize()[..12]),
            created_at,
            change: Some(change),
            events,
        }
    }
}

/// A batch the sink refused for good, kept under `dead_letter/<batch id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// What the sink said.
    pub reason: String,
    /// When it was set aside.
    pub failed_at: DateTime<Utc>,
    /// The batch (its state change already applied).
    pub batch: PendingBatch,
}

/// [`DeadLetter`] by reference, to encode one without copying the batch.
#[derive(Serialize)]
struct DeadLetterRef<'a> {
    reason: &'a str,
    failed_at: DateTime<Utc>,
    batch: &'a PendingBatch,
}

/// A batch in the outbox, with the version of its row: the token its commit checks.
#[derive(Debug)]
pub struct Staged {
    /// The batch.
    batch: PendingBatch,
    /// Version of the `pending` row, as the store reported it.
    version: i64,
}

impl Staged {
    /// The batch, to deliver.
    pub fn batch(&self) -> &PendingBatch {
        &self.batch
    }
}

/// The committed state, handed to the loop when it is not the one the loop works from.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The stored watermark; None when there is none (start from the beginning).
    pub value: Option<serde_json::Value>,
    /// When it was written.
    pub moved_at: Option<DateTime<Utc>>,
    /// This handle had seen another watermark before: someone else (an operator's
    /// `state set` or `reset`) changed it.
    pub replaced: bool,
}

/// What [`Outbox::load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The committed state, when it changed since this handle last loaded or wrote it
    /// (so on the first load whenever a watermark is stored); None when unchanged.
    pub watermark: Option<Committed>,
    /// The batch waiting for delivery, if any: it goes before any new poll.
    pub pending: Option<Staged>,
}

/// What [`Outbox::replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The batch is pending again, with this many events.
    Queued {
        /// Events in the batch.
        events: usize,
    },
    /// No dead letter has that batch id.
    NotFound,
    /// A batch is pending already; nothing was changed.
    PendingExists,
}

/// One watcher's state at a glance (`highwater state list`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// The watermark row, if any.
    pub watermark: Option<Record>,
    /// Events in the pending batch (0 when none).
    pub pending_events: usize,
    /// Batch ids of the dead letters, in key order.
    pub dead_letters: Vec<String>,
}

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed, or changed underneath ([`StoreError::Conflict`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be encoded; nothing was written.
    #[error("cannot encode {key} of {namespace}/{name}: {message}")]
    Encode {
        /// The watcher's namespace.
        namespace: String,
        /// The watcher's name.
        name: String,
        /// The key the record was for.
        key: String,
        /// What the encoder said.
        message: String,
    },
}

/// Every watcher in `store` with its state, by `(namespace, name)`.
pub async fn survey(store: &dyn Store) -> Result<BTreeMap<(String, String), Summary>, StoreError> {
    let mut out: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for record in store.list(None, None).await? {
        let summary = out.entry((record.namespace.clone(), record.name.clone())).or_default();
        if record.key == PENDING {
            // Counted leniently: a listing must show a damaged batch, not fail on it.
            summary.pending_events = event_count(&record.value);
        } else if let Some(batch_id) = record.key.strip_prefix(DEAD_LETTER_PREFIX) {
            summary.dead_letters.push(batch_id.to_string());
        } else if record.key == WATERMARK {
            summary.watermark = Some(record);
        }
    }
    Ok(out)
}

/// The number of events in a stored pending batch, 0 when it has none it can count.
fn event_count(pending: &serde_json::Value) -> usize {
    pending.get("events").and_then(|e| e.as_array()).map_or(0, Vec::len)
}

/// One watcher's place in the store: the handle both the loop and the `state` commands
/// go through.
pub struct Outbox {
    /// Where the rows live.
    store: Arc<dyn Store>,
    /// The watcher's namespace.
    namespace: String,
    /// The watcher's name.
    name: String,
    /// Version of the stored watermark the loop's state derives from (None: no row):
    /// what staging and committing expect to find, so that a watermark changed by
    /// someone else is never overwritten. Taken from what the store reports, never
    /// predicted.
    seen: Option<i64>,
}

impl Outbox {
    /// The handle of watcher `namespace/name` in `store`.
    pub fn new(store: Arc<dyn Store>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Outbox { store, namespace: namespace.into(), name: name.into(), seen: None }
    }

    /// Reads the committed watermark (reported only when it changed since this handle
    /// last saw it) and the pending batch.
    pub async fn load(&mut self) -> Result<Loaded, OutboxError> {
        let stored = self.get(WATERMARK).await?;
        let version = stored.as_ref().map(|r| r.version);
        let pending = match self.get(PENDING).await? {
            Some(record) => {
                Some(Staged { batch: self.decode(PENDING, record.value)?, version: record.version })
            }
            None => None,
        };
        // Moved only once everything was read: a failed load reports the change again.
        let watermark = (version != self.seen).then(|| Committed {
            moved_at: stored.as_ref().map(|r| r.updated_at),
            value: stored.map(|r| r.value),
            replaced: self.seen.is_some(),
        });
        self.seen = version;
        Ok(Loaded { watermark, pending })
    }

    /// Writes `batch` to the outbox: only if no batch is pending and the watermark is
    /// still the one this handle last loaded or committed.
    pub async fn stage(&mut self, batch: PendingBatch) -> Result<Staged, OutboxError> {
        let value = self.encode(PENDING, &batch)?;
        let written = self
            .transact(vec![
                Op::put(PENDING, value, Expect::Absent),
                Op::check(WATERMARK, self.expect_watermark()),
            ])
            .await?;
        let version = self.version_written(&written, 0)?;
        Ok(Staged { batch, version })
    }

    /// After the sink acknowledged the batch: applies its state change and clears the
    /// outbox, in one transaction. Returns the change, for the loop to apply to its
    /// state in memory (None for a replayed batch).
    pub async fn commit(&mut self, staged: &mut Staged) -> Result<Option<StateChange>, OutboxError> {
        self.settle(staged, None).await
    }

    /// After the sink refused the batch for good: as [`Self::commit`], also keeping the
    /// batch under its dead-letter key ([`dead_letter_key`]).
    pub async fn set_aside(
        &mut self,
        staged: &mut Staged,
        reason: &str,
    ) -> Result<Option<StateChange>, OutboxError> {
        let key = dead_letter_key(&staged.batch.batch_id);
        let letter = DeadLetterRef { reason, failed_at: Utc::now(), batch: &staged.batch };
        let value = self.encode(&key, &letter)?;
        self.settle(staged, Some(Op::put(key, value, Expect::Any))).await
    }

    /// Commits `staged`, with `extra` in the same transaction.
    async fn settle(
        &mut self,
        staged: &mut Staged,
        extra: Option<Op>,
    ) -> Result<Option<StateChange>, OutboxError> {
        let mut ops = Vec::with_capacity(3);
        if let Some(change) = &staged.batch.change {
            ops.push(change.op(self.expect_watermark()));
        }
        let moves_watermark = !ops.is_empty();
        ops.push(Op::delete(PENDING, Expect::Version(staged.version)));
        ops.extend(extra);
        let written = self.transact(ops).await?;
        if moves_watermark {
            self.seen = Some(self.version_written(&written, 0)?);
        }
        Ok(staged.batch.change.take())
    }

    /// Applies a state change that no batch carries (a poll that announced nothing but
    /// whose source asked for its watermark to be stored, `Source::store_idle`), checked
    /// against the watermark this handle last saw. False when someone else changed the
    /// watermark meanwhile (the next load reports it); nothing is written then.
    pub async fn store_idle(&mut self, change: &StateChange) -> Result<bool, OutboxError> {
        match self.transact(vec![change.op(self.expect_watermark())]).await {
            Ok(written) => {
                self.seen = Some(self.version_written(&written, 0)?);
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Queues dead letter `batch_id` for delivery again, without a state change, and
    /// removes the dead letter, in one transaction.
    pub async fn replay(&self, batch_id: &str) -> Result<Replay, OutboxError> {
        let key = dead_letter_key(batch_id);
        let Some(record) = self.get(&key).await? else {
            return Ok(Replay::NotFound);
        };
        let dead: DeadLetter = self.decode(&key, record.value)?;
        let batch = PendingBatch { change: None, ..dead.batch };
        let events = batch.events.len();
        let value = self.encode(PENDING, &batch)?;
        let ops =
            vec![Op::put(PENDING, value, Expect::Absent), Op::delete(key, Expect::Version(record.version))];
        match self.transact(ops).await {
            Ok(_) => Ok(Replay::Queued { events }),
            Err(StoreError::Conflict { key, .. }) if key == PENDING => Ok(Replay::PendingExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the watermark and drops the pending batch. Returns the number of events of
    /// the batch dropped, if there was one.
    pub async fn set_watermark(&self, value: serde_json::Value) -> Result<Option<usize>, OutboxError> {
        let dropped = self.pending_events().await?;
        self.transact(vec![Op::put(WATERMARK, value, Expect::Any), Op::delete(PENDING, Expect::Any)]).await?;
        Ok(dropped)
    }

    /// Forgets the watermark and the pending batch, so that the next poll starts from
    /// the beginning; dead letters stay. Returns the number of events of the batch
    /// dropped, if there was one.
    pub async fn reset(&self) -> Result<Option<usize>, OutboxError> {
        let dropped = self.pending_events().await?;
        self.transact(vec![Op::delete(WATERMARK, Expect::Any), Op::delete(PENDING, Expect::Any)]).await?;
        Ok(dropped)
    }

    /// Writes any key (`highwater state set`). The watermark is set as
    /// [`Self::set_watermark`] sets it, and the number of events of a pending batch it
    /// dropped is returned.
    pub async fn set_key(&self, key: &str, value: serde_json::Value) -> Result<Option<usize>, OutboxError> {
        if key == WATERMARK {
            return self.set_watermark(value).await;
        }
        self.transact(vec![Op::put(key, value, Expect::Any)]).await?;
        Ok(None)
    }

    /// Deletes any key (`highwater state delete`); false when it did not exist.
    pub async fn delete_key(&self, key: &str) -> Result<bool, OutboxError> {
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        self.transact(vec![Op::delete(key, Expect::Any)]).await?;
        Ok(true)
    }

    /// Every row of this watcher, ordered by key.
    pub async fn rows(&self) -> Result<Vec<Record>, StoreError> {
        self.store.list(Some(&self.namespace), Some(&self.name)).await
    }

    /// The one place a transaction of this outbox is written: a precondition every
    /// write must carry goes here.
    async fn transact(&self, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        self.store.write(&self.namespace, &self.name, ops).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.store.get(&self.namespace, &self.name, key).await
    }

    /// Events of the pending batch, if one is stored.
    async fn pending_events(&self) -> Result<Option<usize>, StoreError> {
        Ok(self.get(PENDING).await?.map(|record| event_count(&record.value)))
    }

    fn expect_watermark(&self) -> Expect {
        self.seen.map_or(Expect::Absent, Expect::Version)
    }

    /// The version op `index` of a transaction wrote.
    fn version_written(&self, written: &[Option<i64>], index: usize) -> Result<i64, StoreError> {
        written.get(index).copied().flatten().ok_or_else(|| StoreError::Backend {
            location: "process_state".into(),
            message: format!(
                "{}/{}: the store reported no version for a write it acknowledged",
                self.namespace, self.name
            ),
        })
    }

    fn encode<T: Serialize>(&self, key: &str, record: &T) -> Result<serde_json::Value, OutboxError> {
        serde_json::to_value(record).map_err(|e| OutboxError::Encode {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        value: serde_json::Value,
    ) -> Result<T, StoreError> {
        serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{Change, FileItem, Item, event_id};
    use crate::state::sqlite::SqliteStore;

    fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        (dir, store)
    }

    fn batch(names: &[&str], next: serde_json::Value) -> PendingBatch {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let events = names
            .iter()
            .map(|n| Event {
                id: event_id("ns", "w", &[n]),
                namespace: "ns".into(),
                watcher: "w".into(),
                source: "list".into(),
                change: Change::Created,
                item: Item::File(FileItem {
                    path: n.to_string(),
                    relative_path: n.to_string(),
                    size: 1,
                    modified: now,
                }),
                watermark: serde_json::Value::Null,
                emitted_at: now,
            })
            .collect();
        PendingBatch::new(events, StateChange::replace_watermark(next), now)
    }

    fn is_conflict(result: Result<impl std::fmt::Debug, OutboxError>) -> bool {
        matches!(result, Err(OutboxError::Store(StoreError::Conflict { .. })))
    }

    async fn watermark(outbox: &Outbox) -> Option<serde_json::Value> {
        outbox.get(WATERMARK).await.unwrap().map(|r| r.value)
    }

    #[tokio::test]
    async fn stage_then_commit_moves_the_watermark_and_clears_the_outbox() {
        let (_dir, store) = open();
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let loaded = outbox.load().await.unwrap();
        assert!(loaded.watermark.is_none() && loaded.pending.is_none(), "{loaded:?}");

        let mut staged = outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        let again = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap();
        assert_eq!(again.pending.map(|s| s.batch), Some(staged.batch().clone()));

        let change = outbox.commit(&mut staged).await.unwrap();
        let mut state = None;
        change.expect("a polled batch carries a change").apply(&mut state);
        assert_eq!(state, Some(json!(1)));
        assert_eq!(watermark(&outbox).await, Some(json!(1)));
        assert!(outbox.get(PENDING).await.unwrap().is_none());

        // The next batch commits against the version the store reported.
        let mut staged = outbox.stage(batch(&["b"], json!(2))).await.unwrap();
        outbox.commit(&mut staged).await.unwrap();
        let record = outbox.get(WATERMARK).await.unwrap().unwrap();
        assert_eq!((record.value, record.version), (json!(2), 2));
        // What this handle wrote is not news to it.
        assert!(outbox.load().await.unwrap().watermark.is_none());
    }

    #[tokio::test]
    async fn stage_refuses_a_second_batch_and_a_moved_watermark() {
        let (_dir, store) = open();
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        outbox.load().await.unwrap();
        outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        assert!(is_conflict(outbox.stage(batch(&["b"], json!(2))).await));

        let operator = Outbox::new(Arc::clone(&store), "ns", "w");
        assert_eq!(operator.set_watermark(json!(5)).await.unwrap(), Some(1));
        assert!(is_conflict(outbox.stage(batch(&["b"], json!(2))).await), "polled from an old watermark");

        let loaded = outbox.load().await.unwrap();
        let committed = loaded.watermark.expect("changed outside");
        assert_eq!((committed.value, committed.replaced), (Some(json!(5)), false));
        outbox.stage(batch(&["b"], json!(6))).await.unwrap();
    }

    #[tokio::test]
    async fn a_commit_after_an_operator_moved_the_watermark_is_refused() {
        let (_dir, store) = open();
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let mut first = outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        outbox.commit(&mut first).await.unwrap();
        let mut staged = outbox.stage(batch(&["b"], json!(2))).await.unwrap();

        let operator = Outbox::new(Arc::clone(&store), "ns", "w");
        operator.set_key(WATERMARK, json!(0)).await.unwrap();
        operator.set_key(PENDING, serde_json::to_value(staged.batch()).unwrap()).await.unwrap();
        assert!(is_conflict(outbox.commit(&mut staged).await));
        assert!(staged.batch().change.is_some(), "a refused commit keeps the change");
        assert_eq!(watermark(&outbox).await, Some(json!(0)));

        let loaded = outbox.load().await.unwrap();
        let committed = loaded.watermark.expect("changed outside");
        assert_eq!((committed.value, committed.replaced), (Some(json!(0)), true));
        assert!(committed.moved_at.is_some());

        assert_eq!(operator.reset().await.unwrap(), Some(1));
        let loaded = outbox.load().await.unwrap();
        assert_eq!(loaded.watermark.map(|c| (c.value, c.replaced)), Some((None, true)));
        assert!(loaded.pending.is_none());
    }

    #[tokio::test]
    async fn set_aside_keeps_a_dead_letter_and_replay_queues_it_without_a_change() {
        let (_dir, store) = open();
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let mut staged = outbox.stage(batch(&["a", "b"], json!(2))).await.unwrap();
        let batch_id = staged.batch().batch_id.clone();
        let change = outbox.set_aside(&mut staged, "HTTP 400").await.unwrap();
        assert!(change.is_some(), "a batch set aside moves the watermark too");
        assert_eq!(watermark(&outbox).await, Some(json!(2)));

        let summary = survey(&*store).await.unwrap().remove(&("ns".into(), "w".into())).unwrap();
        assert_eq!((summary.pending_events, summary.dead_letters.clone()), (0, vec![batch_id.clone()]));
        let letter = outbox.get(&dead_letter_key(&batch_id)).await.unwrap().unwrap();
        let letter: DeadLetter = serde_json::from_value(letter.value).unwrap();
        assert_eq!(letter.reason, "HTTP 400");
        assert_eq!(letter.batch.change, Some(StateChange::replace_watermark(json!(2))));

        assert_eq!(outbox.replay("nope").await.unwrap(), Replay::NotFound);
        assert_eq!(outbox.replay(&batch_id).await.unwrap(), Replay::Queued { events: 2 });
        assert!(outbox.get(&dead_letter_key(&batch_id)).await.unwrap().is_none());
        let mut replayed = outbox.load().await.unwrap().pending.expect("queued");
        assert_eq!(replayed.batch().change, None);
        assert_eq!(replayed.batch().events, letter.batch.events);

        // A replay cannot push out a batch that is pending.
        let mut other = Outbox::new(Arc::clone(&store), "ns", "w");
        other.load().await.unwrap();
        assert!(is_conflict(other.stage(batch(&["c"], json!(3))).await), "pending is taken");
        outbox.set_key(&dead_letter_key("x"), serde_json::to_value(&letter).unwrap()).await.unwrap();
        assert_eq!(outbox.replay("x").await.unwrap(), Replay::PendingExists);

        assert_eq!(outbox.commit(&mut replayed).await.unwrap(), None);
        assert_eq!(watermark(&outbox).await, Some(json!(2)), "a replay leaves the watermark");
    }

    #[tokio::test]
    async fn operator_keys_and_rows() {
        let (_dir, store) = open();
        let outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        assert_eq!(outbox.set_key("note", json!("hi")).await.unwrap(), None);
        assert_eq!(outbox.set_key(WATERMARK, json!(1)).await.unwrap(), None, "nothing pending to drop");
        let keys: Vec<String> = outbox.rows().await.unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, vec!["note", WATERMARK]);
        assert!(outbox.delete_key("note").await.unwrap());
        assert!(!outbox.delete_key("note").await.unwrap());
        assert_eq!(outbox.rows().await.unwrap().len(), 1);
    }

    /// A pending batch and a dead letter exactly as earlier releases stored them: a store
    /// written by them keeps working, and what is written back is the same JSON.
    #[tokio::test]
    async fn records_of_earlier_releases_read_back_unchanged() {
        let pending = json!({
            "batch_id": "b48e1fffa13db343f155e9f5",
            "created_at": "2026-11-25T23:55:22.639928223Z",
            "events": [{
                "emitted_at": "2026-11-25T23:55:22.639928223Z",
                "id": "4ada51052e0b976dc7371b50d53bb070",
                "item": {"kind": "file", "modified": "2026-11-25T23:55:20.770267364Z",
                         "path": "inbox/a.csv", "relative_path": "a.csv", "size": 2},
                "namespace": "t", "source": "local_dir", "type": "created", "watcher": "inbox",
                "watermark": null
            }],
            "next_watermark": {"high_ns": 1795650920770267364_u64, "seen": {"a.csv": [1, 1, 2]}}
        });
        let batch: PendingBatch = serde_json::from_value(pending.clone()).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(serde_json::to_value(&batch).unwrap(), pending);

        let letter =
            json!({"reason": "HTTP 400", "failed_at": "2026-11-25T23:55:23.000001Z", "batch": pending});
        let decoded: DeadLetter = serde_json::from_value(letter.clone()).unwrap();
        assert_eq!(decoded.batch, batch);
        let by_ref =
            DeadLetterRef { reason: &decoded.reason, failed_at: decoded.failed_at, batch: &decoded.batch };
        assert_eq!(serde_json::to_value(&by_ref).unwrap(), letter);

        let mut replayed = letter["batch"].clone();
        replayed["next_watermark"] = serde_json::Value::Null;
        let decoded: PendingBatch = serde_json::from_value(replayed.clone()).unwrap();
        assert_eq!(decoded.change, None);
        assert_eq!(serde_json::to_value(&decoded).unwrap(), replayed);
    }
}
