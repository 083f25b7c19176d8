//! The `process_state` store: the trait, its transactions of ops, and the backends
//! (SQLite by default). What the keys mean is `outbox.rs`'s business.
//!
//! Rows are `(namespace, name, key) -> value` with a `version` for compare-and-set and
//! an `updated_at`. A watcher is `(namespace, name)`. The store is the only code that
//! touches the database.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::json::Json;
use crate::value::Kind;

/// One row of `process_state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The watcher's namespace.
    pub namespace: String,
    /// The watcher's name.
    pub name: String,
    /// What the row holds (the keys a watcher uses are named in `outbox.rs`).
    pub key: String,
    /// The JSON value, as the text it was written as: the store never parses it.
    pub value: Json,
    /// Starts at 1 and grows by one on every write: the compare-and-set token.
    pub version: i64,
    /// When the row was last written.
    pub updated_at: DateTime<Utc>,
}

/// What a write expects to find, so that two writers cannot silently overwrite each
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this version.
    Version(i64),
}

/// What an [`Op`] does to its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this value.
    Put(Json),
    /// Write this value and report no version for it (`None`): for rows whose version
    /// nobody reads, such as a set's members, written by the thousand, where reading
    /// each version back costs about as much as the write. Its expectation is `Any`.
    PutUntracked(Json),
    /// Remove the key (a no-op when it is absent and the expectation allows that).
    Delete,
    /// Remove every key that starts with the op's key (a range of the primary key, so
    /// its cost grows with the rows removed only). Its expectation must be `Any`.
    DeleteUnder,
    /// Change nothing: only the expectation must hold, so that a transaction can depend
    /// on a key it does not write.
    Check,
}

/// One change inside a [`Store::write`] transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// The key (within the watcher the transaction is for).
    pub key: String,
    /// What to do with it.
    pub action: Action,
    /// The precondition.
    pub expect: Expect,
}

impl Op {
    /// Writes `value` under `key`.
    pub fn put(key: impl Into<String>, value: Json, expect: Expect) -> Self {
        Op { key: key.into(), action: Action::Put(value), expect }
    }

    /// Writes `value` under `key`, whatever is there, without reporting the version
    /// written ([`Action::PutUntracked`]).
    pub fn put_untracked(key: impl Into<String>, value: Json) -> Self {
        Op { key: key.into(), action: Action::PutUntracked(value), expect: Expect::Any }
    }

    /// Deletes every key that starts with `prefix`.
    pub fn delete_under(prefix: impl Into<String>) -> Self {
        Op { key: prefix.into(), action: Action::DeleteUnder, expect: Expect::Any }
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        Op { key: key.into(), action: Action::Delete, expect }
    }

    /// Only checks `key` against `expect`.
    pub fn check(key: impl Into<String>, expect: Expect) -> Self {
        Op { key: key.into(), action: Action::Check, expect }
    }
}

/// Which keys of a watcher a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys<'a> {
    /// Keys that start with this prefix (every key for `""`).
    Under(&'a str),
    /// Keys that do not start with this prefix (a listing that must not load a large
    /// set of rows kept under it).
    NotUnder(&'a str),
}

/// The first string after every string that starts with `prefix`, in byte order (what
/// SQL's `<` on text compares): a key range `prefix <= key < end` holds exactly the keys
/// under `prefix`. None when no such string exists (a prefix of only U+10FFFF).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// What every store kind's config offers; each backend implements it (and
/// [`Kind`](crate::value::Kind) for its `type` value) and adds one line to
/// [`StateConfig`].
pub trait StoreKind {
    /// Where the store lives, for logs (never a password).
    fn describe(&self) -> String;

    /// Opens the store, bringing a store written by an earlier release to the newest
    /// format first (a copy of it taken before; `upgrades` in order).
    fn open(&self, upgrades: &[Upgrade]) -> Result<std::sync::Arc<dyn Store>, StoreError>;

    /// Whether the store was ever created: read-only commands look only then.
    fn exists(&self) -> bool;

    /// The daemon holding the store for itself ([`Store::claim`]), by pid, if one runs:
    /// the `state` commands that write say so (their change reaches it through
    /// compare-and-set). None for a store several daemons share.
    fn held_by(&self) -> Option<String> {
        None
    }

    /// Problems with the settings, as `(key, message)`, found without touching the
    /// network or the environment.
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

crate::value::kinds! {
    /// Which store the daemon uses (`state:` in the daemon file, tagged by `type`).
    pub enum StateConfig("state") as dyn StoreKind {
        /// The embedded SQLite file (default).
        Sqlite(SqliteConfig),
        /// A Postgres database several instances share.
        Postgres(postgres::PostgresConfig),
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig::Sqlite(SqliteConfig::default())
    }
}

/// `state: {type: sqlite}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; created, with its directory, on first use.
    #[serde(default = "default_sqlite_path")]
    pub path: std::path::PathBuf,
}

fn default_sqlite_path() -> std::path::PathBuf {
    std::path::PathBuf::from("highwater.db")
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig { path: default_sqlite_path() }
    }
}

impl Kind for SqliteConfig {
    const TAG: &'static str = "sqlite";
}

impl StoreKind for SqliteConfig {
    fn describe(&self) -> String {
        format!("{} {}", Self::TAG, self.path.display())
    }

    fn open(&self, upgrades: &[Upgrade]) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open_upgrading(&self.path, upgrades)?))
    }

    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn held_by(&self) -> Option<String> {
        sqlite::SqliteStore::held_by(&self.path)
    }
}

/// An empty store in memory: what a command that must create nothing (`once --dry-run`
/// before any state was written) reads instead of the configured one.
pub fn empty() -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(sqlite::SqliteStore::open_upgrading(Path::new(":memory:"), &[])?))
}

/// Opens the configured store (see [`StoreKind::open`]).
pub fn open(config: &StateConfig, upgrades: &[Upgrade]) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    config.get().open(upgrades)
}

/// Makes `store` this daemon's to write, or says why not: claimed for this process
/// ([`Store::claim`]) and proven writable ([`Store::probe_write`]). What `run` and
/// `once` do first.
pub async fn claim_for_writing(store: &dyn Store) -> Result<(), StoreError> {
    store.claim().await?;
    writable(store).await
}

/// The write probe of [`claim_for_writing`] alone (the daemon claims the store before it
/// waits for a shared one to answer, and probes once it does).
pub async fn writable(store: &dyn Store) -> Result<(), StoreError> {
    store.probe_write().await.map_err(|e| match e {
        StoreError::Backend { location, message } => StoreError::Backend {
            location,
            message: format!("cannot be written ({message}); refusing to start"),
        },
        other => other,
    })
}

impl StateConfig {
    /// Where the store lives, for logs (never a password).
    pub fn describe(&self) -> String {
        self.get().describe()
    }
}

impl StoreError {
    /// A rename refused because watcher `namespace/name`, its target, already holds
    /// `taken` rows (both backends say it the same way).
    pub(crate) fn rename_target_taken(namespace: String, name: String, taken: i64) -> Self {
        StoreError::Conflict {
            namespace,
            name,
            key: String::new(),
            expected: "no rows".into(),
            found: format!("{taken} rows"),
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of a write did not hold: another writer got there first. Nothing
    /// of the transaction was written.
    #[error(
        "state of {namespace}/{name} key {key:?} changed underneath us (expected {expected}, found {found})"
    )]
    Conflict {
        /// The watcher's namespace.
        namespace: String,
        /// The watcher's name.
        name: String,
        /// The key whose precondition failed.
        key: String,
        /// What the write expected.
        expected: String,
        /// What was there.
        found: String,
    },
    /// The database could not be opened, read or written.
    #[error("state store {location}: {message}")]
    Backend {
        /// Where the store lives (a file path, or a connection without its password).
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The store cannot be reached for now (a server restarting, a lost connection):
    /// it passes by itself, and the daemon waits for it at start.
    #[error("state store {location} cannot be reached: {message}")]
    Unavailable {
        /// Where the store lives (never with a password).
        location: String,
        /// What went wrong.
        message: String,
    },
    /// A write of a watcher whose lease this instance no longer holds (it expired, or
    /// another instance took it): nothing was written, and the watcher must stop here.
    #[error("lease of {namespace}/{name} is no longer held by this instance (epoch {epoch}): {message}")]
    Fenced {
        /// The watcher's namespace.
        namespace: String,
        /// The watcher's name.
        name: String,
        /// The epoch the write carried.
        epoch: i64,
        /// What the store found instead.
        message: String,
    },
    /// A stored value is not what the reader expected.
    #[error("state of {namespace}/{name} key {key:?} is not valid: {message}")]
    Corrupt {
        /// The watcher's namespace.
        namespace: String,
        /// The watcher's name.
        name: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A step of the state's format, that a store runs when it opens a store of an earlier
/// one: after a copy of the store as it was, in one transaction with the step's own
/// schema change, every row `rewrite` returns a value for is rewritten (its version
/// grows). The store does not know what the rows mean: `outbox.rs` gives the steps.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade {
    /// The format version the step reaches.
    pub to: u32,
    /// The new value of a row that changes; None for one that stays.
    pub rewrite: fn(&Record) -> Option<Json>,
}

/// The `process_state` store.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads one key.
    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Option<Record>, StoreError>;

    /// The version of one key, without its value (None: no row): what a reader that
    /// holds the value already checks to know whether it changed.
    async fn version(&self, namespace: &str, name: &str, key: &str) -> Result<Option<i64>, StoreError>;

    /// Lists rows, optionally narrowed to a namespace, a name and a range of keys,
    /// ordered by namespace, name, key.
    async fn list(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<Vec<Record>, StoreError>;

    /// Counts rows per watcher, narrowed as [`Store::list`] narrows, without reading
    /// their values.
    async fn count(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<BTreeMap<(String, String), u64>, StoreError>;

    /// Writes a consistent copy of the whole store to the new file `to`, while the store
    /// is in use (SQLite's online backup).
    async fn backup(&self, to: &Path) -> Result<(), StoreError>;

    /// Applies every op for one watcher in one transaction: all of them or none. Fails
    /// with [`StoreError::Conflict`] when a precondition does not hold. Returns, for each
    /// op in order, the version it wrote: `Some` for a put, `None` for an untracked put,
    /// a delete or a check. Callers take versions from here, never by predicting them.
    async fn write(&self, namespace: &str, name: &str, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        self.write_fenced(namespace, name, None, ops).await
    }

    /// [`Store::write`], and with a `fence`, only while the fence's lease is still the
    /// watcher's, checked in the same transaction: fails with [`StoreError::Fenced`] (and
    /// writes nothing) when the lease expired or passed to another instance or epoch. A
    /// store without leases takes no fence.
    async fn write_fenced(
        &self,
        namespace: &str,
        name: &str,
        fence: Option<&Fence>,
        ops: Vec<Op>,
    ) -> Result<Vec<Option<i64>>, StoreError>;

    /// The leases of a store several instances share (None: a store one daemon holds).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// Moves every row of one watcher to another name, in one transaction (for
    /// `highwater state rename`: a watcher's name is part of its identity). Returns the
    /// rows moved. Fails with [`StoreError::Conflict`] when the new name has rows.
    async fn rename(&self, from: (&str, &str), to: (&str, &str)) -> Result<u64, StoreError>;

    /// Makes this process the one daemon that writes the store, for as long as the
    /// store stays open: `run` and `once` call it first. A store only one daemon may
    /// write (SQLite: a lock file beside the database, holding the pid) refuses a second
    /// one with an error naming the holder; one that several share (their watchers
    /// fenced by leases) has nothing to do.
    async fn claim(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Proves that the store takes writes: a transaction that puts a row and deletes it
    /// again, leaving nothing (in a namespace no watcher can have: names are never
    /// empty). `run` and `once` refuse to start on a store that cannot be written
    /// (read-only, immutable, a full disk) rather than retry forever.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let probe = "write-probe";
        let ops = vec![Op::put(probe, Json::null(), Expect::Any), Op::delete(probe, Expect::Any)];
        self.write("", "", ops).await.map(|_| ())
    }

    /// A cheap look, without writing, at whether the store is still there to be written
    /// (SQLite: the database file open is still the one at its path, not deleted or
    /// replaced). Every watcher cycle and `/readyz` call it: an idle watcher writes
    /// nothing, and would not otherwise notice.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Makes sure the store answers and its schema is this release's (a shared store
    /// connects, and creates or migrates its schema, on first use). What the daemon
    /// waits for at start while it fails with [`StoreError::Unavailable`].
    async fn connect(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The lease a watcher runs under, carried by each of its writes ([`Store::write_fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The instance holding the lease.
    pub owner: String,
    /// The lease's epoch: it grows every time the lease changes hands (or is taken again
    /// after it expired), so that a write of an earlier holding is refused.
    pub epoch: i64,
}

/// An instance as it registers itself in a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Unique for one run of one process: `host:pid:started`.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The watchers (`namespace/name`) this instance has configured: only those can be
    /// given to it.
    pub watchers: Vec<String>,
}

/// A live instance, as another one sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub id: String,
    /// The watchers it has configured.
    pub watchers: Vec<String>,
}

/// One watcher's lease, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The watcher, `namespace/name`.
    pub watcher: String,
    /// The instance that holds (or last held) it.
    pub owner: String,
    /// Its epoch.
    pub epoch: i64,
    /// Still in force, by the store's clock.
    pub live: bool,
}

/// Leases in a store several instances share: who runs which watcher. Every time is
/// the store's clock, never an instance's: two hosts need not agree on the time.
#[async_trait]
pub trait Leases: Send + Sync {
    /// How long a lease lasts unrenewed (`lease_ttl`); an instance whose heartbeat is
    /// older is no longer live.
    fn ttl(&self) -> std::time::Duration;

    /// Registers `me` (or records that it is alive) and returns every live instance,
    /// itself included.
    async fn heartbeat(&self, me: &Instance) -> Result<Vec<Peer>, StoreError>;

    /// Every lease, in force or not.
    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Takes the leases of `watchers` (`namespace`, `name`) for `owner` where nobody
    /// holds them in force; their epochs grow. Returns those taken, as
    /// `(namespace/name, epoch)`.
    async fn acquire_many(
        &self,
        owner: &str,
        watchers: &[(String, String)],
    ) -> Result<Vec<(String, i64)>, StoreError>;

    /// [`Leases::acquire_many`] of one watcher: its epoch, or None when another
    /// instance holds it.
    async fn acquire(&self, owner: &str, watcher: (&str, &str)) -> Result<Option<i64>, StoreError> {
        let taken = self.acquire_many(owner, &[(watcher.0.to_string(), watcher.1.to_string())]).await?;
        Ok(taken.first().map(|(_, epoch)| *epoch))
    }

    /// Extends every lease `owner` holds in force by the ttl; returns them, as
    /// `(namespace/name, epoch)`. A lease that expired first is not among them: it is
    /// lost, even when nobody took it yet.
    async fn renew(&self, owner: &str) -> Result<Vec<(String, i64)>, StoreError>;

    /// Gives up the lease of `watcher` at `epoch` at once (its watcher has stopped), so
    /// that another instance takes it without waiting for it to expire.
    async fn release(&self, owner: &str, watcher: (&str, &str), epoch: i64) -> Result<(), StoreError>;

    /// Gives up every lease of `owner` and removes its registration: a graceful stop.
    async fn leave(&self, owner: &str) -> Result<(), StoreError>;
}

/// Checks one op's precondition against the version found; shared by every backend.
pub(crate) fn check_expectation(
    namespace: &str,
    name: &str,
    op: &Op,
    current: Option<i64>,
) -> Result<(), StoreError> {
    let ok = match (op.expect, current) {
        (Expect::Any, _) => true,
        (Expect::Absent, None) => true,
        (Expect::Version(want), Some(have)) => want == have,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let describe = |v: Option<i64>| v.map_or_else(|| "no row".to_string(), |v| format!("version {v}"));
    let expected = match op.expect {
        Expect::Any => "anything".to_string(),
        Expect::Absent => "no row".to_string(),
        Expect::Version(v) => format!("version {v}"),
    };
    Err(StoreError::Conflict {
        namespace: namespace.to_string(),
        name: name.to_string(),
        key: op.key.clone(),
        expected,
        found: describe(current),
    })
}
