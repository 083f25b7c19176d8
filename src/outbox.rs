//! A watcher's place in the store: the keys `watermark`, `watermark/<member>`,
//! `pending`, `progress`, `start` and `dead_letter/*`, and every transaction that writes
//! them; and how records of an earlier release are rewritten ([`UPGRADES`]). No other
//! module names those keys.
//!
//! A source's state is its head (the row `watermark`) and its remembered members (one
//! row each under `watermark/`): rows of the one `process_state` table, so that export,
//! backup, migration and fencing cover them with the rest, and a range of the primary
//! key reads or drops them. A listing of watchers (`state list`) skips them.
//!
//! The delivery protocol, as the store sees it:
//! - **stage**: a batch goes to `pending` before its first delivery attempt, only if no
//!   batch is pending and the head is still the one it was polled from;
//! - **progress**: how many leading events of the pending batch the sink acknowledged,
//!   kept now and then in a small row of its own (`progress`, tied to the batch id) so a
//!   redelivery sends only the rest;
//! - **commit**: once the sink acknowledged it, the batch's [`ChangeSet`] is applied (the
//!   head, the members it puts and removes) and `pending` deleted, in one transaction
//!   checked by the head's version;
//! - **set aside**: the same, also keeping the batch under `dead_letter/<batch id>`;
//! - **replay**: a dead letter goes back to `pending`, with no state change;
//! - **set / reset**: an operator replaces or forgets the whole watermark; a pending
//!   batch is dropped with it (its items are found again if they lie past the new one).
//!
//! Every transaction is built by one function ([`Outbox::transact`]), so that a check
//! every write of a watcher must carry (with several instances: its lease) is added in
//! one place.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::event::Encoded;
use crate::json::Json;
use crate::source::{ChangeSet, SourceState};
use crate::state::{Expect, Fence, Keys, Op, Record, StateConfig, Store, StoreError, Upgrade};

/// The head of the source's state: where the next poll starts.
const WATERMARK: &str = "watermark";
/// Prefix of the keys that hold the source's remembered members.
const MEMBER_PREFIX: &str = "watermark/";
/// The batch written before its first delivery attempt.
const PENDING: &str = "pending";
/// How many leading events of the pending batch the sink acknowledged.
const PROGRESS: &str = "progress";
/// The `start:` the stored state began from.
const START: &str = "start";
/// Prefix of the keys that hold dead-lettered batches.
const DEAD_LETTER_PREFIX: &str = "dead_letter/";

/// The key a batch set aside is kept under (`dead_letter/<batch id>`).
pub fn dead_letter_key(batch_id: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{batch_id}")
}

/// The outbox record: a batch written before its first delivery attempt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "StoredBatch")]
pub struct PendingBatch {
    /// Hash of the batch's event ids: the same items give the same batch id.
    pub batch_id: String,
    /// When the batch was written.
    pub created_at: DateTime<Utc>,
    /// What the commit does to the state once the batch is acknowledged. None for a
    /// replayed dead-letter batch, whose delivery must not move the watermark.
    pub change: Option<ChangeSet>,
    /// The events, as encoded when first attempted: stored and sent as that text.
    pub events: Vec<Encoded>,
}

/// Stored as `{"batch_id", "created_at", "change", "events": [...]}`, each event the
/// text it was encoded as: the plain form, which dead letters and small pending batches
/// keep (a large pending batch is packed, see [`PACK_FROM`]).
impl Serialize for PendingBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut record = serializer.serialize_struct("PendingBatch", 4)?;
        record.serialize_field("batch_id", &self.batch_id)?;
        record.serialize_field("created_at", &self.created_at)?;
        record.serialize_field("change", &self.change)?;
        record.serialize_field("events", &Events(&self.events))?;
        record.end()
    }
}

/// A batch's events as a JSON array of the texts they were encoded as.
struct Events<'a>(&'a [Encoded]);

impl Serialize for Events<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|e| &e.json))
    }
}

/// A pending batch whose events come to at least this many bytes is stored packed: its
/// `change` and `events` compressed with LZ4 (a quarter of the bytes for a batch of
/// Postgres rows, a third for S3 keys, whose ETags do not compress), so that SQLite
/// writes, logs and checkpoints a fraction of them: 300,000 rows to a file took 16 %
/// less time, a cold 20,000-key S3 run 13 % less. A smaller batch stays plain, for an
/// operator to read.
const PACK_FROM: usize = 64 * 1024;

/// The packed form of a pending batch: `{"batch_id", "created_at", "count", "lz4"}`,
/// `lz4` being the base64 of an LZ4 block (after its uncompressed size, four bytes
/// little-endian) of `{"change", "events"}` as the plain form writes them. `count` is
/// the number of events, for `state list` and `status`, which do not unpack. The fields
/// before `lz4`, to encode; `lz4` is appended to them (base64 needs no escaping).
#[derive(Serialize)]
struct PackedHead<'a> {
    batch_id: &'a str,
    created_at: DateTime<Utc>,
    count: usize,
}

/// What a packed batch packs, to encode.
#[derive(Serialize)]
struct BodyRef<'a> {
    change: &'a Option<ChangeSet>,
    events: Events<'a>,
}

/// What a packed batch packs, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    change: Option<ChangeSet>,
    events: Vec<Box<RawValue>>,
}

/// The largest ratio an LZ4 block can expand by (a run of one byte): a stored size
/// beyond it is damage, refused before anything is allocated for it.
const LZ4_MAX_RATIO: usize = 255;

/// Encodes a pending batch into a buffer sized for it up front (its events are
/// copied in as they are, and a buffer grown by doubling moved megabytes several
/// times over, and touched fresh pages each time, for a batch of ten thousand);
/// packed when its events come to [`PACK_FROM`] bytes or more. `events` is
/// [`events_bytes`] of the batch, which the caller counted to decide where to encode it.
fn encode_batch(batch: &PendingBatch, events: usize) -> Result<Json, String> {
    // The events, a comma each, and room for the rest of the record (ids, the time
    // and the change: a new head, or members put and removed).
    let change = batch.change.as_ref().map_or(0, |c| {
        c.head.as_ref().map_or(0, Json::len)
            + c.put.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
            + c.remove.iter().map(|k| k.len() + 4).sum::<usize>()
    });
    let mut buffer = Vec::with_capacity(events + change + 256);
    if events >= PACK_FROM {
        let body = BodyRef { change: &batch.change, events: Events(&batch.events) };
        serde_json::to_writer(&mut buffer, &body).map_err(|e| e.to_string())?;
        if let Some(block) = pack(&buffer) {
            // Megabytes at a large `batch_size`: gone before the record is built.
            drop(buffer);
            let head = PackedHead {
                batch_id: &batch.batch_id,
                created_at: batch.created_at,
                count: batch.events.len(),
            };
            let head = serde_json::to_string(&head).map_err(|e| e.to_string())?;
            let mut text = String::with_capacity(head.len() + block.len() * 4 / 3 + 16);
            text.push_str(head.strip_suffix('}').unwrap_or(&head));
            text.push_str(",\"lz4\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(&block, &mut text);
            text.push_str("\"}");
            return Ok(Json::from_trusted(text));
        }
        buffer.clear();
    }
    serde_json::to_writer(&mut buffer, batch).map_err(|e| e.to_string())?;
    // SAFETY: serde_json writes only UTF-8 (strings are escaped from `str`, bytes
    // become arrays of numbers), as its own `to_string` relies on; checking the
    // megabytes of a pending batch again was 1 % of the daemon's CPU on a stream of
    // Postgres rows.
    let text = unsafe { String::from_utf8_unchecked(buffer) };
    Ok(Json::from_trusted(text))
}

/// The bytes of a batch's events, a comma each: what decides whether it is packed.
fn events_bytes(batch: &PendingBatch) -> usize {
    batch.events.iter().map(|e| e.text().len() + 1).sum()
}

/// Compresses `body` into the block a packed record's `lz4` holds; None for a body of
/// 4 GiB or more (its size does not fit the block's four bytes), which stays plain.
fn pack(body: &[u8]) -> Option<Vec<u8>> {
    let size = u32::try_from(body.len()).ok()?;
    let mut block = vec![0; 4 + lz4_flex::block::get_maximum_output_size(body.len())];
    block[..4].copy_from_slice(&size.to_le_bytes());
    let n = lz4_flex::block::compress_into(body, &mut block[4..]).ok()?;
    block.truncate(4 + n);
    Some(block)
}

/// The body of a packed record's `lz4`.
fn unpack(text: &str) -> Result<Body, String> {
    let block = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("`lz4` is not base64: {e}"))?;
    let (size, compressed) = match block.split_first_chunk::<4>() {
        Some((size, rest)) => (u32::from_le_bytes(*size) as usize, rest),
        None => return Err("`lz4` is too short".into()),
    };
    if size > compressed.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(format!("`lz4` claims {size} bytes from {} compressed", compressed.len()));
    }
    let body =
        lz4_flex::block::decompress(compressed, size).map_err(|e| format!("`lz4` does not unpack: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("the packed batch: {e}"))
}

/// A pending batch as any release stored it, plain or packed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBatch {
    batch_id: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    change: Option<ChangeSet>,
    /// Releases up to 0.1: the whole watermark the commit stores (null for a replay).
    #[serde(default)]
    next_watermark: Option<Json>,
    /// The plain form's events.
    #[serde(default)]
    events: Option<Vec<Box<RawValue>>>,
    /// The packed form's number of events and its body ([`PackedHead`]).
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    lz4: Option<String>,
}

impl TryFrom<StoredBatch> for PendingBatch {
    type Error = serde_json::Error;

    fn try_from(stored: StoredBatch) -> Result<Self, Self::Error> {
        use serde::de::Error;
        let (change, events) = match (stored.lz4, stored.events) {
            (None, Some(events)) => (stored.change, events),
            (Some(packed), None) => {
                let body = unpack(&packed).map_err(serde_json::Error::custom)?;
                if let Some(count) = stored.count
                    && count != body.events.len()
                {
                    return Err(Error::custom(format!(
                        "the packed batch holds {} events, its `count` says {count}",
                        body.events.len()
                    )));
                }
                (body.change, body.events)
            }
            _ => return Err(Error::custom("a pending batch has either `events` or `lz4`")),
        };
        Ok(PendingBatch {
            batch_id: stored.batch_id,
            created_at: stored.created_at,
            change: change.or(stored.next_watermark.map(ChangeSet::head)),
            events: events.into_iter().map(Encoded::from_json).collect::<Result<_, _>>()?,
        })
    }
}

impl PendingBatch {
    /// A batch of `events` whose commit applies `change`; its id is derived from the
    /// event ids.
    pub fn new(events: Vec<Encoded>, change: ChangeSet, created_at: DateTime<Utc>) -> Self {
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

/// The `progress` row: leading events of batch `batch_id` that the sink acknowledged.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    batch_id: String,
    acked: usize,
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
    /// Leading events the sink acknowledged, as last kept (`progress`).
    acked: usize,
}

impl Staged {
    /// The batch, to deliver.
    pub fn batch(&self) -> &PendingBatch {
        &self.batch
    }

    /// Leading events the sink acknowledged, as last kept: a delivery sends the rest.
    pub fn acked(&self) -> usize {
        self.acked
    }
}

/// The committed state, handed to the loop when it is not the one the loop works from.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The stored head and members (no head: start afresh).
    pub state: SourceState,
    /// When the head was written.
    pub moved_at: Option<DateTime<Utc>>,
    /// This handle had seen another head before: someone else (an operator's
    /// `state set` or `reset`) changed it.
    pub replaced: bool,
}

/// What [`Outbox::load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The committed state, when it changed since this handle last loaded or wrote it
    /// (so on the first load whenever a head is stored); None when unchanged.
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

/// One watcher's state at a glance (`highwater state list`), read without its members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// The head row, if any.
    pub watermark: Option<Record>,
    /// Members remembered (counted, not read).
    pub remembered: u64,
    /// Events in the pending batch (0 when none).
    pub pending_events: usize,
    /// Batch ids of the dead letters, in key order.
    pub dead_letters: Vec<String>,
}

/// What [`Outbox::purge_dead_letters`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Purged {
    /// Batch ids of the dead letters deleted, in key order.
    pub removed: Vec<String>,
    /// Dead letters left (set aside at or after the time given).
    pub kept: usize,
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
    /// An operator asked for a write the outbox does not make; nothing was written.
    #[error("{0}")]
    Refused(String),
}

/// The steps of the state's format that concern records, for the store to run when it
/// opens a store of an earlier release: 2 keeps a pending batch's state change under
/// `change` (a head, members put and removed) instead of the whole next watermark under
/// `next_watermark` (0.1.0).
pub const UPGRADES: &[Upgrade] = &[Upgrade { to: 2, rewrite: upgrade_record }];

/// Opens the configured store, bringing one of an earlier release to this one's format
/// ([`UPGRADES`]; the store takes a copy first).
pub fn open(config: &StateConfig) -> Result<Arc<dyn Store>, StoreError> {
    crate::state::open(config, UPGRADES)
}

/// A record in today's form, when it is in an earlier one: pending batches and dead
/// letters are read in any form and written back in this one (their events as they
/// were); everything else stays.
fn upgrade_record(record: &Record) -> Option<Json> {
    let again = if record.key == PENDING {
        Json::encode(&record.value.decode_owned::<PendingBatch>().ok()?)
    } else if record.key.starts_with(DEAD_LETTER_PREFIX) {
        Json::encode(&record.value.decode_owned::<DeadLetter>().ok()?)
    } else {
        return None;
    };
    again.ok().filter(|text| *text != record.value)
}

/// A row as `state get` prints it: a packed pending batch turned into the plain form
/// (its events readable); anything else, and a batch that cannot be read, as stored.
pub fn make_readable(record: &mut Record) {
    if record.key != PENDING {
        return;
    }
    let Ok(stored) = record.value.decode_owned::<StoredBatch>() else { return };
    if stored.lz4.is_some()
        && let Ok(batch) = PendingBatch::try_from(stored)
        && let Ok(plain) = Json::encode(&batch)
    {
        record.value = plain;
    }
}

/// Every watcher in `store` with its state, by `(namespace, name)`. Member rows are
/// counted, not read.
pub async fn survey(store: &dyn Store) -> Result<BTreeMap<(String, String), Summary>, StoreError> {
    let mut out: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for record in store.list(None, None, Keys::NotUnder(MEMBER_PREFIX)).await? {
        let summary = out.entry((record.namespace.clone(), record.name.clone())).or_default();
        if record.key == PENDING {
            // Counted leniently: a listing must show a damaged batch, not fail on it.
            summary.pending_events = glance(&record.value).0;
        } else if let Some(batch_id) = record.key.strip_prefix(DEAD_LETTER_PREFIX) {
            summary.dead_letters.push(batch_id.to_string());
        } else if record.key == WATERMARK {
            summary.watermark = Some(record);
        }
    }
    for (watcher, n) in store.count(None, None, Keys::Under(MEMBER_PREFIX)).await? {
        out.entry(watcher).or_default().remembered = n;
    }
    Ok(out)
}

/// One watcher's state as `highwater status` shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Glance {
    /// When the head was last written (the last commit), if there is one.
    pub moved_at: Option<DateTime<Utc>>,
    /// Events in the pending batch (0 when none).
    pub pending_events: usize,
    /// When the pending batch was written (None when none, or it cannot be read).
    pub pending_since: Option<DateTime<Utc>>,
    /// Batches held under dead-letter keys.
    pub dead_letters: u64,
}

/// Every watcher in `store` at a glance, by `(namespace, name)`, in memory that does
/// not grow with what they remember or hold: members and dead letters are counted, not
/// read; the pending batches (one a watcher at most) and the heads are read.
pub async fn glance_all(store: &dyn Store) -> Result<BTreeMap<(String, String), Glance>, StoreError> {
    let mut out: BTreeMap<(String, String), Glance> =
        store.count(None, None, Keys::Under("")).await?.into_keys().map(|w| (w, Glance::default())).collect();
    for (watcher, n) in store.count(None, None, Keys::Under(DEAD_LETTER_PREFIX)).await? {
        out.entry(watcher).or_default().dead_letters = n;
    }
    for record in store.list(None, None, Keys::Under(PENDING)).await? {
        if record.key == PENDING {
            let glanced = out.entry((record.namespace.clone(), record.name.clone())).or_default();
            // Leniently: a status must show a damaged batch, not fail on it.
            (glanced.pending_events, glanced.pending_since) = glance(&record.value);
        }
    }
    for ((namespace, name), glanced) in &mut out {
        glanced.moved_at = store.get(namespace, name, WATERMARK).await?.map(|head| head.updated_at);
    }
    Ok(out)
}

/// The number of events in a stored pending batch (0 when it has none it can count)
/// and when it was written.
fn glance(pending: &Json) -> (usize, Option<DateTime<Utc>>) {
    #[derive(Deserialize)]
    struct Glance {
        #[serde(default)]
        events: Vec<serde::de::IgnoredAny>,
        /// A packed batch's number of events.
        #[serde(default)]
        count: Option<usize>,
        #[serde(default)]
        created_at: Option<DateTime<Utc>>,
    }
    pending.decode::<Glance>().map_or((0, None), |g| (g.count.unwrap_or(g.events.len()), g.created_at))
}

/// The whole watermark as one JSON document, as `state get W watermark` prints it and
/// `state set W watermark` takes it: the head alone while no member is remembered, else
/// `{"head": …, "members": {"<member>": …, …}}`.
pub fn assemble(state: &SourceState) -> Result<Json, serde_json::Error> {
    let head = state.head.clone().unwrap_or_else(Json::null);
    if state.members.is_empty() {
        return Ok(head);
    }
    struct Members<'a>(&'a [(String, Json)]);
    impl Serialize for Members<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (name, value) in self.0 {
                map.serialize_entry(name, value)?;
            }
            map.end()
        }
    }
    #[derive(Serialize)]
    struct Whole<'a> {
        head: &'a Json,
        members: Members<'a>,
    }
    Json::encode(&Whole { head: &head, members: Members(&state.members) })
}

/// Reads a whole watermark written as [`assemble`] writes it.
pub fn disassemble(whole: Json) -> SourceState {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Whole {
        head: Json,
        members: BTreeMap<String, Json>,
    }
    match whole.decode::<Whole>() {
        Ok(Whole { head, members }) => {
            SourceState { head: Some(head), members: members.into_iter().collect() }
        }
        Err(_) => SourceState { head: Some(whole), members: Vec::new() },
    }
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
    /// Version of the stored head the loop's state derives from (None: no row): what
    /// staging and committing expect to find, so that a state changed by someone else
    /// is never overwritten. Taken from what the store reports, never predicted.
    seen: Option<i64>,
    /// The next load reports the stored state even if its head did not change (the
    /// loop's copy of it is in doubt).
    stale: bool,
    /// The lease the watcher runs under when several instances share the store: every
    /// write carries it, and the store refuses it once the lease is gone.
    fence: Option<Fence>,
}

impl Outbox {
    /// The handle of watcher `namespace/name` in `store`.
    pub fn new(store: Arc<dyn Store>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Outbox { store, namespace: namespace.into(), name: name.into(), seen: None, stale: true, fence: None }
    }

    /// Makes every write of this handle conditional on `fence`, the lease the watcher
    /// runs under ([`Store::write_fenced`]).
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Has the next [`Self::load`] report the stored state whether or not it changed:
    /// the loop's copy of it is in doubt (a refused write, a source that could not take
    /// a change).
    pub fn reload_next(&mut self) {
        self.stale = true;
    }

    /// Whether the store is still there to be written ([`Store::check`]): a cycle looks
    /// first, since an idle one writes nothing that would fail.
    pub async fn check_store(&self) -> Result<(), OutboxError> {
        Ok(self.store.check().await?)
    }

    /// True when a batch is pending.
    pub async fn has_pending(&self) -> Result<bool, OutboxError> {
        Ok(self.get(PENDING).await?.is_some())
    }

    /// Reads the committed state (reported, with its members, on the first load and
    /// then only when the head changed since this handle last saw it) and the pending
    /// batch. An unchanged state costs two point reads.
    pub async fn load(&mut self) -> Result<Loaded, OutboxError> {
        // The version alone: the head's value is read only when it changed.
        let mut version = self.store.version(&self.namespace, &self.name, WATERMARK).await?;
        let mut watermark = None;
        if version != self.seen || self.stale {
            let replaced = self.seen.is_some() && version != self.seen;
            // One listing reads the head and its members as of one moment.
            let rows =
                self.store.list(Some(&self.namespace), Some(&self.name), Keys::Under(WATERMARK)).await?;
            let mut head = None;
            let mut members = Vec::new();
            for record in rows {
                if record.key == WATERMARK {
                    head = Some(record);
                } else if let Some(member) = record.key.strip_prefix(MEMBER_PREFIX) {
                    members.push((member.to_string(), record.value));
                }
            }
            version = head.as_ref().map(|r| r.version);
            watermark = Some(Committed {
                moved_at: head.as_ref().map(|r| r.updated_at),
                state: SourceState { head: head.map(|r| r.value), members },
                replaced,
            });
        }
        let pending = match self.get(PENDING).await? {
            Some(record) => {
                let batch: PendingBatch = self.decode(PENDING, &record.value)?;
                let acked = self.acked(&batch).await?;
                Some(Staged { batch, version: record.version, acked })
            }
            None => None,
        };
        // Moved only once everything was read: a failed load reports the change again.
        self.seen = version;
        self.stale = false;
        Ok(Loaded { watermark, pending })
    }

    /// Writes `batch` to the outbox: only if no batch is pending and the head is still
    /// the one this handle last loaded or committed.
    pub async fn stage(&mut self, batch: PendingBatch) -> Result<Staged, OutboxError> {
        // A batch to pack is encoded on the blocking pool, off the loop's thread: a poll
        // reading ahead meanwhile (the same task) goes on instead of waiting for it.
        let events = events_bytes(&batch);
        let (batch, encoded) = if events >= PACK_FROM {
            match tokio::task::spawn_blocking(move || {
                let encoded = encode_batch(&batch, events);
                (batch, encoded)
            })
            .await
            {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(self.encode_error(PENDING, e.to_string())),
            }
        } else {
            let encoded = encode_batch(&batch, events);
            (batch, encoded)
        };
        let value = encoded.map_err(|message| self.encode_error(PENDING, message))?;
        // The batch is written last: a SQLite store reads a large row whole when a key
        // lookup next to it compares against it, so the small rows go first.
        let written = self
            .transact(vec![
                Op::check(WATERMARK, self.expect_watermark()),
                Op::delete(PROGRESS, Expect::Any),
                Op::put(PENDING, value, Expect::Absent),
            ])
            .await?;
        let version = self.version_written(&written, 2)?;
        Ok(Staged { batch, version, acked: 0 })
    }

    /// Keeps how many leading events of `staged` the sink acknowledged, if the batch is
    /// still the one pending. A redelivery then sends only the rest.
    pub async fn save_progress(&self, staged: &Staged, acked: usize) -> Result<(), OutboxError> {
        let progress = Progress { batch_id: staged.batch.batch_id.clone(), acked };
        let value = self.encode(PROGRESS, &progress)?;
        self.transact(vec![
            Op::put(PROGRESS, value, Expect::Any),
            Op::check(PENDING, Expect::Version(staged.version)),
        ])
        .await?;
        Ok(())
    }

    /// The kept progress of `batch` (0 when none is kept, or it is another batch's).
    async fn acked(&self, batch: &PendingBatch) -> Result<usize, OutboxError> {
        let Some(record) = self.get(PROGRESS).await? else { return Ok(0) };
        // Leniently: a progress row that cannot be read costs a redelivery of the
        // whole batch, never the batch.
        Ok(match record.value.decode::<Progress>() {
            Ok(p) if p.batch_id == batch.batch_id => p.acked.min(batch.events.len()),
            _ => 0,
        })
    }

    /// After the sink acknowledged the batch: applies its state change and clears the
    /// outbox, in one transaction. Returns the change, for the loop to hand to the
    /// source (None for a replayed batch).
    pub async fn commit(&mut self, staged: &mut Staged) -> Result<Option<ChangeSet>, OutboxError> {
        self.settle(staged, None).await
    }

    /// After the sink refused the batch for good: as [`Self::commit`], also keeping the
    /// batch under its dead-letter key ([`dead_letter_key`]).
    pub async fn set_aside(
        &mut self,
        staged: &mut Staged,
        reason: &str,
    ) -> Result<Option<ChangeSet>, OutboxError> {
        let key = dead_letter_key(&staged.batch.batch_id);
        let letter = DeadLetterRef { reason, failed_at: Utc::now(), batch: &staged.batch };
        let value = self.encode(&key, &letter)?;
        self.settle(staged, Some(Op::put(key, value, Expect::Any))).await
    }

    /// Applies a change with no batch to deliver (a first state for `start:`, or a
    /// batch without items), checked like a commit. A change that writes nothing writes
    /// nothing.
    pub async fn apply(&mut self, change: &ChangeSet) -> Result<(), OutboxError> {
        if change.is_empty() {
            return Ok(());
        }
        let ops = self.change_ops(change);
        let written = self.transact(ops).await?;
        if change.head.is_some() {
            self.seen = Some(self.version_written(&written, 0)?);
        }
        Ok(())
    }

    /// Stores the first state `start:` mapped to, and the `start:` it came from (so that
    /// a changed `start:` can be told apart later), checked like a commit.
    pub async fn begin(&mut self, change: &ChangeSet, start: &str) -> Result<(), OutboxError> {
        let mut ops = self.change_ops(change);
        ops.push(Op::put(START, self.encode(START, &start)?, Expect::Any));
        let written = self.transact(ops).await?;
        if change.head.is_some() {
            self.seen = Some(self.version_written(&written, 0)?);
        }
        Ok(())
    }

    /// The `start:` the stored state began from (None: `beginning`, or a state older
    /// than the setting).
    pub async fn stored_start(&self) -> Result<Option<String>, OutboxError> {
        match self.get(START).await? {
            Some(record) => Ok(Some(self.decode(START, &record.value)?)),
            None => Ok(None),
        }
    }

    /// The writes of `change`, the head's (a put, or a check that it is ours) first.
    fn change_ops(&self, change: &ChangeSet) -> Vec<Op> {
        // Cloned for each attempt rather than moved: almost every commit succeeds at
        // once, and a change is as small as its batch.
        let mut ops = Vec::with_capacity(2 + change.put.len() + change.remove.len());
        match &change.head {
            Some(head) => ops.push(Op::put(WATERMARK, head.clone(), self.expect_watermark())),
            None => ops.push(Op::check(WATERMARK, self.expect_watermark())),
        }
        for member in &change.remove {
            ops.push(Op::delete(format!("{MEMBER_PREFIX}{member}"), Expect::Any));
        }
        for (member, value) in &change.put {
            ops.push(Op::put_untracked(format!("{MEMBER_PREFIX}{member}"), value.clone()));
        }
        ops
    }

    /// Commits `staged`, with `extra` in the same transaction.
    async fn settle(
        &mut self,
        staged: &mut Staged,
        extra: Option<Op>,
    ) -> Result<Option<ChangeSet>, OutboxError> {
        // The batch is deleted first: a SQLite store reads a large row whole when a key
        // lookup next to it compares against it, so the other rows come after it is gone.
        let mut ops = vec![Op::delete(PENDING, Expect::Version(staged.version))];
        if let Some(change) = &staged.batch.change {
            ops.extend(self.change_ops(change));
        }
        let moves_head = staged.batch.change.as_ref().is_some_and(|c| c.head.is_some());
        ops.push(Op::delete(PROGRESS, Expect::Any));
        ops.extend(extra);
        let written = self.transact(ops).await?;
        if moves_head {
            self.seen = Some(self.version_written(&written, 1)?);
        }
        Ok(staged.batch.change.take())
    }

    /// How many batches are held under dead-letter keys: one range of the primary key,
    /// counted, not read.
    pub async fn dead_letters(&self) -> Result<u64, StoreError> {
        let counted = self
            .store
            .count(Some(&self.namespace), Some(&self.name), Keys::Under(DEAD_LETTER_PREFIX))
            .await?;
        Ok(counted.into_values().sum())
    }

    /// Queues dead letter `batch_id` for delivery again, without a state change, and
    /// removes the dead letter, in one transaction.
    pub async fn replay(&self, batch_id: &str) -> Result<Replay, OutboxError> {
        let key = dead_letter_key(batch_id);
        let Some(record) = self.get(&key).await? else {
            return Ok(Replay::NotFound);
        };
        let dead: DeadLetter = self.decode(&key, &record.value)?;
        let batch = PendingBatch { change: None, ..dead.batch };
        let events = batch.events.len();
        let value = self.encode(PENDING, &batch)?;
        let ops = vec![
            Op::put(PENDING, value, Expect::Absent),
            Op::delete(key, Expect::Version(record.version)),
            Op::delete(PROGRESS, Expect::Any),
        ];
        match self.transact(ops).await {
            Ok(_) => Ok(Replay::Queued { events }),
            Err(StoreError::Conflict { key, .. }) if key == PENDING => Ok(Replay::PendingExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the dead letters set aside before `before` (`highwater state
    /// purge-dead-letters`), in one transaction, each only if it is still the row read
    /// (a replay meanwhile makes it a conflict, and nothing is deleted). Returns the
    /// batch ids deleted and how many dead letters stay.
    pub async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<Purged, OutboxError> {
        /// Only the time of a dead letter: the batch inside is skipped, not decoded.
        #[derive(Deserialize)]
        struct FailedAt {
            failed_at: DateTime<Utc>,
        }
        let rows =
            self.store.list(Some(&self.namespace), Some(&self.name), Keys::Under(DEAD_LETTER_PREFIX)).await?;
        let mut purged = Purged::default();
        let mut ops = Vec::new();
        for record in rows {
            // A letter whose time cannot be read is aged by its row's last write.
            let failed_at =
                record.value.decode::<FailedAt>().map_or(record.updated_at, |letter| letter.failed_at);
            if failed_at < before {
                purged.removed.push(record.key[DEAD_LETTER_PREFIX.len()..].to_string());
                ops.push(Op::delete(record.key, Expect::Version(record.version)));
            } else {
                purged.kept += 1;
            }
        }
        if !ops.is_empty() {
            self.transact(ops).await?;
        }
        Ok(purged)
    }

    /// The whole stored state: the head and every member (for `state get W watermark`
    /// and `state export`). None when no head is stored.
    pub async fn state(&self) -> Result<Option<(Record, SourceState)>, OutboxError> {
        let rows = self.store.list(Some(&self.namespace), Some(&self.name), Keys::Under(WATERMARK)).await?;
        let mut head = None;
        let mut members = Vec::new();
        for record in rows {
            if record.key == WATERMARK {
                head = Some(record);
            } else if let Some(member) = record.key.strip_prefix(MEMBER_PREFIX) {
                members.push((member.to_string(), record.value));
            }
        }
        Ok(head.map(|record| {
            let state = SourceState { head: Some(record.value.clone()), members };
            (record, state)
        }))
    }

    /// Replaces the whole state (head and members) and drops the pending batch. Returns
    /// the number of events of the batch dropped, if there was one.
    pub async fn set_state(&self, state: SourceState) -> Result<Option<usize>, OutboxError> {
        let dropped = self.pending_events().await?;
        let mut ops = vec![Op::delete_under(MEMBER_PREFIX)];
        ops.push(match state.head {
            Some(head) => Op::put(WATERMARK, head, Expect::Any),
            None => Op::delete(WATERMARK, Expect::Any),
        });
        for (member, value) in state.members {
            ops.push(Op::put_untracked(format!("{MEMBER_PREFIX}{member}"), value));
        }
        ops.push(Op::delete(PENDING, Expect::Any));
        ops.push(Op::delete(PROGRESS, Expect::Any));
        self.transact(ops).await?;
        Ok(dropped)
    }

    /// Sets the whole watermark from its one-document form ([`assemble`]) and drops the
    /// pending batch. Returns the number of events of the batch dropped, if any.
    pub async fn set_watermark(&self, whole: Json) -> Result<Option<usize>, OutboxError> {
        self.set_state(disassemble(whole)).await
    }

    /// Writes a watcher's whole state as `state export` printed it (`state import`): the
    /// watermark in its one-document form ([`assemble`]) and every other key, in one
    /// transaction. A watcher that has state already is refused unless `replace`, which
    /// drops what it had first. Versions start afresh: they are the store's own.
    pub async fn import(
        &self,
        watermark: Option<Json>,
        keys: BTreeMap<String, Json>,
        replace: bool,
    ) -> Result<(), OutboxError> {
        if let Some(key) = keys.keys().find(|k| k.as_str() == WATERMARK || k.starts_with(MEMBER_PREFIX)) {
            return Err(OutboxError::Refused(format!(
                "{}/{}: key {key:?} belongs under \"watermark\", not \"keys\"",
                self.namespace, self.name
            )));
        }
        let mut ops = Vec::new();
        if replace {
            ops.push(Op::delete_under(""));
        } else if !self
            .store
            .list(Some(&self.namespace), Some(&self.name), Keys::NotUnder(MEMBER_PREFIX))
            .await?
            .is_empty()
            || self
                .store
                .count(Some(&self.namespace), Some(&self.name), Keys::Under(MEMBER_PREFIX))
                .await?
                .values()
                .any(|n| *n > 0)
        {
            return Err(OutboxError::Refused(format!(
                "{}/{} has state already; import with --replace to drop it first",
                self.namespace, self.name
            )));
        }
        if let Some(whole) = watermark {
            let state = disassemble(whole);
            if let Some(head) = state.head {
                ops.push(Op::put(WATERMARK, head, if replace { Expect::Any } else { Expect::Absent }));
            }
            for (member, value) in state.members {
                ops.push(Op::put_untracked(format!("{MEMBER_PREFIX}{member}"), value));
            }
        }
        for (key, value) in keys {
            let expect = if replace { Expect::Any } else { Expect::Absent };
            ops.push(Op::put(key, value, expect));
        }
        if !ops.is_empty() {
            self.transact(ops).await?;
        }
        Ok(())
    }

    /// Forgets the state (head and members) and the pending batch, so that the next
    /// poll starts from the beginning (or where `start:` says); dead letters stay.
    /// Returns the number of events of the batch dropped, if there was one.
    pub async fn reset(&self) -> Result<Option<usize>, OutboxError> {
        let dropped = self.pending_events().await?;
        self.transact(vec![
            Op::delete(WATERMARK, Expect::Any),
            Op::delete_under(MEMBER_PREFIX),
            Op::delete(PENDING, Expect::Any),
            Op::delete(PROGRESS, Expect::Any),
            Op::delete(START, Expect::Any),
        ])
        .await?;
        Ok(dropped)
    }

    /// Writes any key (`highwater state set`). The watermark is set whole, as
    /// [`Self::set_watermark`] sets it (and the number of events of a pending batch it
    /// dropped is returned); a member alone is refused.
    pub async fn set_key(&self, key: &str, value: Json) -> Result<Option<usize>, OutboxError> {
        if key == WATERMARK {
            return self.set_watermark(value).await;
        }
        self.refuse_member(key)?;
        self.transact(vec![Op::put(key, value, Expect::Any)]).await?;
        Ok(None)
    }

    /// Deletes any key (`highwater state delete`); false when it did not exist. The
    /// watermark goes with its members; a member alone is refused.
    pub async fn delete_key(&self, key: &str) -> Result<bool, OutboxError> {
        self.refuse_member(key)?;
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        let mut ops = vec![Op::delete(key, Expect::Any)];
        if key == WATERMARK {
            ops.push(Op::delete_under(MEMBER_PREFIX));
        }
        self.transact(ops).await?;
        Ok(true)
    }

    /// Members are written with their head, never alone: the loop notices a state
    /// changed outside it by the head's version.
    fn refuse_member(&self, key: &str) -> Result<(), OutboxError> {
        if key.starts_with(MEMBER_PREFIX) {
            return Err(OutboxError::Refused(format!(
                "{key:?} is a member of the watermark; edit the watermark whole (`state get {ns}/{name} watermark > FILE`, edit, `state set {ns}/{name} watermark --file FILE`)",
                ns = self.namespace,
                name = self.name
            )));
        }
        Ok(())
    }

    /// Every row of this watcher but the members, ordered by key.
    pub async fn rows(&self) -> Result<Vec<Record>, StoreError> {
        self.store.list(Some(&self.namespace), Some(&self.name), Keys::NotUnder(MEMBER_PREFIX)).await
    }

    /// The one place a transaction of this outbox is written: a precondition every
    /// write must carry goes here.
    async fn transact(&self, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        self.store.write_fenced(&self.namespace, &self.name, self.fence.as_ref(), ops).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.store.get(&self.namespace, &self.name, key).await
    }

    /// Events of the pending batch, if one is stored.
    async fn pending_events(&self) -> Result<Option<usize>, StoreError> {
        Ok(self.get(PENDING).await?.map(|record| glance(&record.value).0))
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

    fn encode<T: Serialize>(&self, key: &str, record: &T) -> Result<Json, OutboxError> {
        Json::encode(record).map_err(|e| self.encode_error(key, e.to_string()))
    }

    fn encode_error(&self, key: &str, message: String) -> OutboxError {
        OutboxError::Encode {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: key.to_string(),
            message,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, key: &str, value: &Json) -> Result<T, StoreError> {
        value.decode_owned().map_err(|e| StoreError::Corrupt {
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
    use crate::event::{Change, Event, FileItem, Item, event_id};
    use crate::state::sqlite::SqliteStore;

    fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        (dir, store)
    }

    fn j(value: serde_json::Value) -> Json {
        Json::encode(&value).unwrap()
    }

    fn events(names: &[&str]) -> Vec<Encoded> {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        names
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
            .map(|e| Encoded::of(&e).unwrap())
            .collect()
    }

    /// A batch whose commit makes the head `next`.
    fn batch(names: &[&str], next: serde_json::Value) -> PendingBatch {
        with_change(names, ChangeSet::head(j(next)))
    }

    fn with_change(names: &[&str], change: ChangeSet) -> PendingBatch {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        PendingBatch::new(events(names), change, now)
    }

    fn is_conflict(result: Result<impl std::fmt::Debug, OutboxError>) -> bool {
        matches!(result, Err(OutboxError::Store(StoreError::Conflict { .. })))
    }

    async fn watermark(outbox: &Outbox) -> Option<Json> {
        outbox.get(WATERMARK).await.unwrap().map(|r| r.value)
    }

    async fn keys(store: &Arc<dyn Store>) -> Vec<String> {
        store.list(Some("ns"), Some("w"), Keys::Under("")).await.unwrap().into_iter().map(|r| r.key).collect()
    }

    async fn stage_then_commit_moves_the_watermark_and_clears_the_outbox(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let loaded = outbox.load().await.unwrap();
        let first = loaded.watermark.expect("the first load reports the state, also an empty one");
        assert_eq!((first.state, first.replaced), (SourceState::default(), false));
        assert!(loaded.pending.is_none());

        let mut staged = outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        let again = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap();
        assert_eq!(again.pending.map(|s| s.batch), Some(staged.batch().clone()));

        let change = outbox.commit(&mut staged).await.unwrap();
        assert_eq!(change, Some(ChangeSet::head(j(json!(1)))));
        assert_eq!(watermark(&outbox).await, Some(j(json!(1))));
        assert!(outbox.get(PENDING).await.unwrap().is_none());

        // The next batch commits against the version the store reported.
        let mut staged = outbox.stage(batch(&["b"], json!(2))).await.unwrap();
        outbox.commit(&mut staged).await.unwrap();
        let record = outbox.get(WATERMARK).await.unwrap().unwrap();
        assert_eq!((record.value, record.version), (j(json!(2)), 2));
        // What this handle wrote is not news to it.
        assert!(outbox.load().await.unwrap().watermark.is_none());
        // Unless its copy is in doubt.
        outbox.reload_next();
        let reported = outbox.load().await.unwrap().watermark.expect("reported again");
        assert_eq!((reported.state.head, reported.replaced), (Some(j(json!(2))), false));
    }

    async fn a_commit_writes_the_head_and_the_members_its_change_names(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        outbox.load().await.unwrap();
        let mut change = ChangeSet::head(j(json!({"high": 1})));
        change.put.insert("a".into(), j(json!([1])));
        change.put.insert("b/c".into(), j(json!([2])));
        let mut staged = outbox.stage(with_change(&["a"], change.clone())).await.unwrap();
        assert_eq!(outbox.commit(&mut staged).await.unwrap(), Some(change));
        assert_eq!(keys(&store).await, ["watermark", "watermark/a", "watermark/b/c"]);

        // Members only, the head kept (checked, not written).
        let change = ChangeSet { remove: vec!["a".into()], ..ChangeSet::default() };
        let mut staged = outbox.stage(with_change(&["b"], change)).await.unwrap();
        outbox.commit(&mut staged).await.unwrap();
        assert_eq!(keys(&store).await, ["watermark", "watermark/b/c"]);
        assert_eq!(store.get("ns", "w", WATERMARK).await.unwrap().unwrap().version, 1);

        // Another handle loads head and members together; the listing counts them.
        let loaded = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap();
        let state = loaded.watermark.unwrap().state;
        assert_eq!(state.members, vec![("b/c".to_string(), j(json!([2])))]);
        let summary = survey(&*store).await.unwrap().remove(&("ns".into(), "w".into())).unwrap();
        assert_eq!((summary.remembered, summary.watermark.map(|r| r.key)), (1, Some("watermark".into())));

        // A change with no batch: the same checks.
        let mut change = ChangeSet::head(j(json!({"high": 2})));
        change.put.insert("d".into(), j(json!([3])));
        outbox.apply(&change).await.unwrap();
        assert_eq!(keys(&store).await, ["watermark", "watermark/b/c", "watermark/d"]);
        outbox.apply(&ChangeSet::default()).await.unwrap();
        let mut stranger = Outbox::new(Arc::clone(&store), "ns", "w");
        assert!(is_conflict(stranger.apply(&change).await), "a handle that never loaded expects no head");
    }

    async fn the_whole_watermark_is_read_set_and_reset_with_its_members(store: Arc<dyn Store>) {
        let outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let whole = Json::parse(r#"{"head": {"high": 1.50}, "members": {"x": [1], "y/z": [2]}}"#).unwrap();
        assert_eq!(outbox.set_key(WATERMARK, whole).await.unwrap(), None);
        assert_eq!(keys(&store).await, ["watermark", "watermark/x", "watermark/y/z"]);
        let (record, state) = outbox.state().await.unwrap().unwrap();
        assert_eq!(record.value.as_str(), r#"{"high": 1.50}"#, "stored as written");
        assert_eq!(
            assemble(&state).unwrap().as_str(),
            r#"{"head":{"high": 1.50},"members":{"x":[1],"y/z":[2]}}"#
        );

        // A bare head replaces the members too.
        outbox.set_watermark(j(json!({"high": 2}))).await.unwrap();
        assert_eq!(keys(&store).await, ["watermark"]);
        assert_eq!(assemble(&outbox.state().await.unwrap().unwrap().1).unwrap(), j(json!({"high": 2})));

        // Members are not edited alone.
        assert!(matches!(outbox.set_key("watermark/x", j(json!(1))).await, Err(OutboxError::Refused(_))));
        assert!(matches!(outbox.delete_key("watermark/x").await, Err(OutboxError::Refused(_))));

        outbox.set_watermark(Json::parse(r#"{"head": 1, "members": {"m": 2}}"#).unwrap()).await.unwrap();
        assert_eq!(outbox.reset().await.unwrap(), None);
        assert!(keys(&store).await.is_empty());
        outbox.set_watermark(Json::parse(r#"{"head": 1, "members": {"m": 2}}"#).unwrap()).await.unwrap();
        assert!(outbox.delete_key(WATERMARK).await.unwrap());
        assert!(keys(&store).await.is_empty(), "the watermark goes with its members");
    }

    async fn stage_refuses_a_second_batch_and_a_moved_watermark(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        outbox.load().await.unwrap();
        outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        assert!(is_conflict(outbox.stage(batch(&["b"], json!(2))).await));

        let operator = Outbox::new(Arc::clone(&store), "ns", "w");
        assert_eq!(operator.set_watermark(j(json!(5))).await.unwrap(), Some(1));
        assert!(is_conflict(outbox.stage(batch(&["b"], json!(2))).await), "polled from an old watermark");

        let loaded = outbox.load().await.unwrap();
        let committed = loaded.watermark.expect("changed outside");
        assert_eq!((committed.state.head, committed.replaced), (Some(j(json!(5))), false));
        outbox.stage(batch(&["b"], json!(6))).await.unwrap();
    }

    async fn a_commit_after_an_operator_moved_the_watermark_is_refused(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let mut first = outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        outbox.commit(&mut first).await.unwrap();
        let mut staged = outbox.stage(batch(&["b"], json!(2))).await.unwrap();

        let operator = Outbox::new(Arc::clone(&store), "ns", "w");
        operator.set_key(WATERMARK, j(json!(0))).await.unwrap();
        operator.set_key(PENDING, Json::encode(staged.batch()).unwrap()).await.unwrap();
        assert!(is_conflict(outbox.commit(&mut staged).await));
        assert!(staged.batch().change.is_some(), "a refused commit keeps the change");
        assert_eq!(watermark(&outbox).await, Some(j(json!(0))));

        let loaded = outbox.load().await.unwrap();
        let committed = loaded.watermark.expect("changed outside");
        assert_eq!((committed.state.head, committed.replaced), (Some(j(json!(0))), true));
        assert!(committed.moved_at.is_some());

        assert_eq!(operator.reset().await.unwrap(), Some(1));
        let loaded = outbox.load().await.unwrap();
        assert_eq!(loaded.watermark.map(|c| (c.state.head, c.replaced)), Some((None, true)));
        assert!(loaded.pending.is_none());
    }

    async fn set_aside_keeps_a_dead_letter_and_replay_queues_it_without_a_change(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let mut staged = outbox.stage(batch(&["a", "b"], json!(2))).await.unwrap();
        let batch_id = staged.batch().batch_id.clone();
        let change = outbox.set_aside(&mut staged, "HTTP 400").await.unwrap();
        assert!(change.is_some(), "a batch set aside moves the watermark too");
        assert_eq!(watermark(&outbox).await, Some(j(json!(2))));

        let summary = survey(&*store).await.unwrap().remove(&("ns".into(), "w".into())).unwrap();
        assert_eq!((summary.pending_events, summary.dead_letters.clone()), (0, vec![batch_id.clone()]));
        let glanced =
            glance_all(&*store).await.unwrap().remove(&("ns".to_string(), "w".to_string())).unwrap();
        assert_eq!((glanced.pending_events, glanced.pending_since, glanced.dead_letters), (0, None, 1));
        assert!(glanced.moved_at.is_some());
        let letter = outbox.get(&dead_letter_key(&batch_id)).await.unwrap().unwrap();
        let letter: DeadLetter = letter.value.decode_owned().unwrap();
        assert_eq!(letter.reason, "HTTP 400");
        assert_eq!(letter.batch.change, Some(ChangeSet::head(j(json!(2)))));

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
        outbox.set_key(&dead_letter_key("x"), Json::encode(&letter).unwrap()).await.unwrap();
        assert_eq!(outbox.replay("x").await.unwrap(), Replay::PendingExists);

        assert_eq!(outbox.commit(&mut replayed).await.unwrap(), None);
        assert_eq!(watermark(&outbox).await, Some(j(json!(2))), "a replay leaves the watermark");
    }

    async fn dead_letters_older_than_a_time_are_purged_and_the_rest_kept(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let mut staged = outbox.stage(batch(&["a"], json!(1))).await.unwrap();
        let fresh = staged.batch().batch_id.clone();
        outbox.set_aside(&mut staged, "HTTP 400").await.unwrap();
        let letter: DeadLetter =
            outbox.get(&dead_letter_key(&fresh)).await.unwrap().unwrap().value.decode_owned().unwrap();
        let old = DeadLetter { failed_at: letter.failed_at - chrono::Duration::days(40), ..letter.clone() };
        outbox.set_key(&dead_letter_key("old"), Json::encode(&old).unwrap()).await.unwrap();
        outbox.set_key("other", j(json!(1))).await.unwrap();
        let other_watcher = Outbox::new(Arc::clone(&store), "ns", "v");
        other_watcher.set_key(&dead_letter_key("old"), Json::encode(&old).unwrap()).await.unwrap();

        let cutoff = letter.failed_at - chrono::Duration::days(30);
        let purged = outbox.purge_dead_letters(cutoff).await.unwrap();
        assert_eq!(purged, Purged { removed: vec!["old".into()], kept: 1 });
        assert!(outbox.get(&dead_letter_key("old")).await.unwrap().is_none());
        assert!(outbox.get(&dead_letter_key(&fresh)).await.unwrap().is_some(), "younger: kept");
        assert!(outbox.get("other").await.unwrap().is_some(), "not a dead letter: kept");
        assert!(other_watcher.get(&dead_letter_key("old")).await.unwrap().is_some(), "another watcher's");
        // Again: nothing left that old.
        assert_eq!(outbox.purge_dead_letters(cutoff).await.unwrap(), Purged { removed: vec![], kept: 1 });
        // Everything up to now.
        let all = outbox.purge_dead_letters(Utc::now()).await.unwrap();
        assert_eq!(all, Purged { removed: vec![fresh], kept: 0 });
    }

    async fn operator_keys_and_rows(store: Arc<dyn Store>) {
        let outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        assert_eq!(outbox.set_key("note", j(json!("hi"))).await.unwrap(), None);
        assert_eq!(outbox.set_key(WATERMARK, j(json!(1))).await.unwrap(), None, "nothing pending to drop");
        let keys: Vec<String> = outbox.rows().await.unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, vec!["note", WATERMARK]);
        assert!(outbox.delete_key("note").await.unwrap());
        assert!(!outbox.delete_key("note").await.unwrap());
        assert_eq!(outbox.rows().await.unwrap().len(), 1);
    }

    /// A pending batch and a dead letter exactly as earlier releases stored them: a store
    /// written by them keeps working.
    #[tokio::test]
    async fn records_of_earlier_releases_are_read() {
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
        let batch: PendingBatch = j(pending.clone()).decode_owned().unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].id, "4ada51052e0b976dc7371b50d53bb070");
        assert_eq!((&*batch.events[0].watcher, batch.events[0].kind.as_ref()), ("inbox", "file"));
        assert_eq!(batch.change, Some(ChangeSet::head(j(pending["next_watermark"].clone()))));

        let letter =
            json!({"reason": "HTTP 400", "failed_at": "2026-11-25T23:55:23.000001Z", "batch": pending});
        let decoded: DeadLetter = j(letter.clone()).decode_owned().unwrap();
        assert_eq!(decoded.batch, batch);

        let mut replayed = letter["batch"].clone();
        replayed["next_watermark"] = serde_json::Value::Null;
        let decoded: PendingBatch = j(replayed).decode_owned().unwrap();
        assert_eq!(decoded.change, None);
        // Written back in today's form, and read again the same.
        let again: PendingBatch = Json::encode(&decoded).unwrap().decode_owned().unwrap();
        assert_eq!(again, decoded);
    }

    async fn progress_is_kept_with_its_batch_and_goes_with_it(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        outbox.load().await.unwrap();
        let mut staged = outbox.stage(batch(&["a", "b", "c"], json!(1))).await.unwrap();
        assert_eq!(staged.acked(), 0);
        outbox.save_progress(&staged, 2).await.unwrap();
        let again = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap().pending.unwrap();
        assert_eq!(again.acked(), 2);
        // The stored text of the events is what was staged, byte for byte.
        assert_eq!(again.batch().events, staged.batch().events);
        outbox.commit(&mut staged).await.unwrap();
        assert_eq!(keys(&store).await, ["watermark"], "the commit clears the progress");

        // Progress of another batch does not count.
        let other = outbox.stage(batch(&["x"], json!(2))).await.unwrap();
        outbox.save_progress(&other, 1).await.unwrap();
        outbox.transact(vec![Op::delete(PENDING, Expect::Any)]).await.unwrap();
        let staged = outbox.stage(batch(&["y", "z"], json!(3))).await.unwrap();
        let value = Json::encode(&Progress { batch_id: other.batch().batch_id.clone(), acked: 1 }).unwrap();
        outbox.transact(vec![Op::put(PROGRESS, value, Expect::Any)]).await.unwrap();
        let loaded = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap().pending.unwrap();
        assert_eq!(loaded.acked(), 0);
        // A batch that is no longer pending keeps no progress.
        outbox.reset().await.unwrap();
        assert!(outbox.save_progress(&staged, 1).await.is_err());
    }

    /// A batch whose events come to more than [`PACK_FROM`] bytes: names long enough
    /// that a few hundred of them do.
    fn large_batch(n: usize) -> PendingBatch {
        let names: Vec<String> = (0..n).map(|i| format!("incoming/2026/11/27/part-{i:06}.csv")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let put = names.iter().map(|n| (n.to_string(), j(json!([1, 2, 3])))).collect();
        with_change(
            &names,
            ChangeSet { head: Some(j(json!({"high_ms": 5}))), put, remove: vec!["old".into()] },
        )
    }

    async fn a_large_batch_is_stored_packed_and_read_back_whole(store: Arc<dyn Store>) {
        let mut outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        outbox.load().await.unwrap();
        let batch = large_batch(2000);
        let plain = Json::encode(&batch).unwrap();
        assert!(plain.len() > PACK_FROM);
        let mut staged = outbox.stage(batch.clone()).await.unwrap();

        let stored = outbox.get(PENDING).await.unwrap().expect("pending");
        let record: serde_json::Value = stored.value.decode().unwrap();
        assert_eq!(record["count"], 2000);
        assert!(
            record.get("events").is_none() && record.get("change").is_none(),
            "packed: {}",
            record["lz4"]
        );
        assert!(
            stored.value.len() * 4 < plain.len(),
            "{} bytes packed, {} plain",
            stored.value.len(),
            plain.len()
        );

        // Read back byte for byte; counted without unpacking; shown plain.
        let loaded = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap().pending.unwrap();
        assert_eq!(loaded.batch(), &batch);
        assert_eq!(
            loaded.batch().events.iter().map(Encoded::text).collect::<Vec<_>>(),
            batch.events.iter().map(Encoded::text).collect::<Vec<_>>()
        );
        assert_eq!(outbox.pending_events().await.unwrap(), Some(2000));
        let summary = survey(&*store).await.unwrap().remove(&("ns".into(), "w".into())).unwrap();
        assert_eq!(summary.pending_events, 2000);
        let mut shown = stored.clone();
        make_readable(&mut shown);
        assert_eq!(shown.value, plain);

        // A dead letter keeps the plain form; replayed, it is pending again as it was.
        outbox.set_aside(&mut staged, "refused").await.unwrap();
        let letter = outbox.get(&dead_letter_key(&batch.batch_id)).await.unwrap().expect("dead letter");
        assert!(letter.value.decode::<serde_json::Value>().unwrap()["batch"]["events"].is_array());
        assert_eq!(outbox.replay(&batch.batch_id).await.unwrap(), Replay::Queued { events: 2000 });
        let replayed = Outbox::new(Arc::clone(&store), "ns", "w").load().await.unwrap().pending.unwrap();
        assert_eq!(replayed.batch().events, batch.events);
    }

    #[test]
    fn small_batches_stay_plain() {
        let small = batch(&["a", "b"], json!(1));
        assert_eq!(encode_batch(&small, events_bytes(&small)).unwrap(), Json::encode(&small).unwrap());
    }

    /// A packed batch that was damaged is reported as corrupt (naming the watcher and
    /// the key), never a panic or an allocation of what its size claims.
    #[tokio::test]
    async fn a_damaged_packed_batch_is_reported_not_unpacked() {
        let (_dir, store) = open();
        let outbox = Outbox::new(Arc::clone(&store), "ns", "w");
        let large = large_batch(2000);
        let good: serde_json::Value = encode_batch(&large, events_bytes(&large)).unwrap().decode().unwrap();
        let lz4 = good["lz4"].as_str().unwrap().to_string();
        let engine = base64::engine::general_purpose::STANDARD;
        let mut block = engine.decode(&lz4).unwrap();
        block[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = engine.encode(&block);
        let whole = engine.decode(&lz4).unwrap();
        let truncated = engine.encode(&whole[..whole.len() - 100]);
        let damaged = [
            ("not base64", json!({"lz4": "%%%"})),
            ("too short", json!({"lz4": "AAA="})),
            ("claims", json!({"lz4": huge})),
            ("does not unpack", json!({"lz4": truncated})),
            ("its `count` says 7", json!({"lz4": lz4, "count": 7})),
            ("either `events` or `lz4`", json!({"lz4": lz4, "events": []})),
            ("either `events` or `lz4`", json!({})),
        ];
        for (expected, fields) in damaged {
            let mut record = json!({"batch_id": "b", "created_at": "2026-11-27T00:00:00Z"});
            record.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            outbox.set_key(PENDING, j(record)).await.unwrap();
            let mut reader = Outbox::new(Arc::clone(&store), "ns", "w");
            match reader.load().await {
                Err(OutboxError::Store(StoreError::Corrupt { key, message, .. })) => {
                    assert_eq!(key, PENDING);
                    assert!(message.contains(expected), "{expected}: {message}");
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn whole_watermarks_without_members_are_the_head_alone() {
        let head = j(json!({"head": 1}));
        let state = SourceState { head: Some(head.clone()), members: Vec::new() };
        assert_eq!(assemble(&state).unwrap(), head);
        let bare = disassemble(j(json!({"high_ms": 5, "seen": {"k": 1}})));
        assert_eq!((bare.head, bare.members.len()), (Some(j(json!({"high_ms": 5, "seen": {"k": 1}}))), 0));
    }
    /// Each case above, on a SQLite file and on a Postgres schema of its own.
    macro_rules! on_every_store {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let (_dir, store) = super::open();
                        super::$name(store).await;
                    }
                )*
            }
            mod on_postgres {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let schema = crate::state::postgres::testing::Schema::new();
                        super::$name(schema.shared()).await;
                        schema.drop().await;
                    }
                )*
            }
        };
    }

    on_every_store!(
        stage_then_commit_moves_the_watermark_and_clears_the_outbox,
        a_commit_writes_the_head_and_the_members_its_change_names,
        the_whole_watermark_is_read_set_and_reset_with_its_members,
        stage_refuses_a_second_batch_and_a_moved_watermark,
        a_commit_after_an_operator_moved_the_watermark_is_refused,
        set_aside_keeps_a_dead_letter_and_replay_queues_it_without_a_change,
        operator_keys_and_rows,
        progress_is_kept_with_its_batch_and_goes_with_it,
        dead_letters_older_than_a_time_are_purged_and_the_rest_kept,
        a_large_batch_is_stored_packed_and_read_back_whole
    );
}
