//! The shared Postgres `process_state` store: the same rows and compare-and-set
//! transactions as SQLite, in a schema of its own (`state: {type: postgres}`), created
//! and migrated on first use under an advisory lock, so that instances starting
//! together do not race.
//!
//! A schema's version and the oldest release that can run against it are kept in
//! `<schema>.schema_version`. Schema changes are additive: a release one version older
//! keeps running against a schema marked compatible with it; one the schema is not
//! compatible with is refused with an error that says which release wrote it.
//!
//! Every write of a watcher takes a transaction-scoped advisory lock on the watcher
//! first: its version checks and its writes then see one state, whatever another
//! instance or a `highwater state` command is doing (a check for an absent key cannot
//! lock a row that does not exist). The statements of one transaction are pipelined:
//! a commit of a hundred members is a few round trips, not a hundred.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::{
    Action, Expect, Fence, Instance, Keys, Lease, Leases, Op, Peer, Record, Store, StoreError, StoreKind,
    Upgrade, check_expectation, prefix_end,
};
use crate::json::Json;
use crate::source::ErrorClass;
use crate::source::postgres::connect::{self, ConnectSettings, TlsMode};
use crate::source::postgres::values::quote_ident;
use crate::value::{EnvVar, HumanDuration, Kind, SecretFile};

/// Connections one process keeps to the store: the watchers' transactions are short,
/// and a handful of connections serve a thousand watchers.
const CONNECTIONS: usize = 4;

/// How long one store operation may take before its connection is given up: a server
/// that stopped answering (a cut network) must not hold a watcher forever. The
/// `lease_ttl`, within these bounds: a write that takes longer than a lease lasts
/// is no use to its watcher.
const OPERATION_TIMEOUT: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(30));

/// The record format this store's rows start at (the state version SQLite calls 2: a
/// pending batch keeps its `change`). Later formats come from the [`Upgrade`]s given.
const BASE_FORMAT: u32 = 2;

/// One version of the schema: its SQL (`{s}` stands for the quoted schema name) and
/// the oldest schema version a release must know to run against it. Append only; a
/// new version adds (tables, columns with defaults, indexes) and keeps
/// `compatible_from` at the version before it, so the release before runs on.
struct Migration {
    sql: &'static str,
    compatible_from: u32,
}

const MIGRATIONS: &[Migration] = &[
    // 1: the process_state table. Text columns in the "C" collation, so that keys
    // order by bytes as in SQLite and a key range (`prefix_end`) is a range of the
    // primary key. Values are kept as the text they were written as.
    Migration {
        sql: "CREATE TABLE {s}.process_state (
            namespace  text COLLATE \"C\" NOT NULL,
            name       text COLLATE \"C\" NOT NULL,
            key        text COLLATE \"C\" NOT NULL,
            value      text NOT NULL,
            version    bigint NOT NULL,
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (namespace, name, key)
        )",
        compatible_from: 1,
    },
    // 2: instances and leases (several instances share the watchers). A release that
    // knows only 1 would run every watcher unfenced beside them: it is refused.
    Migration {
        sql: "CREATE TABLE {s}.instances (
            id           text COLLATE \"C\" PRIMARY KEY,
            host         text NOT NULL,
            pid          bigint NOT NULL,
            version      text NOT NULL,
            watchers     text[] NOT NULL,
            started_at   timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL
        );
        CREATE TABLE {s}.leases (
            namespace   text COLLATE \"C\" NOT NULL,
            name        text COLLATE \"C\" NOT NULL,
            owner       text COLLATE \"C\" NOT NULL,
            epoch       bigint NOT NULL,
            acquired_at timestamptz NOT NULL,
            expires_at  timestamptz NOT NULL,
            PRIMARY KEY (namespace, name)
        );
        CREATE INDEX ON {s}.leases (owner)",
        compatible_from: 2,
    },
];

/// `state: {type: postgres}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string or URL, as the `postgres` source takes it; what it
    /// leaves out comes from the standard `PG*` variables. Better without a password:
    /// use `password_env` or `password_file`.
    #[serde(default)]
    pub connection: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<EnvVar>,
    /// A file holding the password (read at every connect), or `credential:NAME` for a
    /// systemd credential.
    #[serde(default)]
    pub password_file: Option<SecretFile>,
    /// `disable`, `prefer` (default), `require` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<TlsMode>,
    /// PEM file of the certificate authorities `verify-full` trusts (default: the
    /// system's).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// The schema the tables live in (created if missing; taken as written, quoted).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// How long a watcher's lease lasts without being renewed (renewed every third of
    /// it): an instance that dies or loses the store gives its watchers up within it.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

/// The shortest and longest `lease_ttl`: below 5 s one renewal that fails (a busy
/// store) stops every watcher; above an hour a dead instance's watchers stand still too
/// long.
const LEASE_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(3600));

fn default_schema() -> String {
    "highwater".to_string()
}

impl PostgresConfig {
    fn settings(&self) -> ConnectSettings {
        ConnectSettings {
            connection: self.connection.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
        }
    }
}

impl Kind for PostgresConfig {
    const TAG: &'static str = "postgres";
}

impl StoreKind for PostgresConfig {
    fn describe(&self) -> String {
        let place = connect::resolve(&self.settings()).map_or_else(|_| "?".to_string(), |t| t.describe());
        format!("{} {place} schema {}", Self::TAG, quote_ident(&self.schema))
    }

    fn open(&self, upgrades: &[Upgrade]) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(PostgresStore::new(self, upgrades)))
    }

    fn exists(&self) -> bool {
        // Only the server can tell; a read-only command asks it (and creates the schema,
        // which holds no rows, if it was missing).
        true
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = connect::validate(&self.settings());
        if self.schema.is_empty() || self.schema.len() > 63 || self.schema.contains('\0') {
            errors
                .push(("schema".into(), "must be 1 to 63 bytes, without NUL (a Postgres identifier)".into()));
        }
        let (low, high) = LEASE_TTL_RANGE;
        if self.lease_ttl.0 < low || self.lease_ttl.0 > high {
            errors.push((
                "lease_ttl".into(),
                format!("must be between {} and {}", HumanDuration(low), HumanDuration(high)),
            ));
        }
        errors
    }
}

/// The SQL of the store's statements, with the schema spliced in (quoted), indexed by
/// [`Sql`].
struct Statements([String; SQL_COUNT]);

/// The statements the store prepares on each connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Sql {
    Get,
    Version,
    Lock,
    Put,
    Delete,
    DeleteUnder,
    Fence,
}
const SQL_COUNT: usize = 7;

impl Statements {
    fn new(schema: &str) -> Self {
        let t = format!("{}.process_state", quote_ident(schema));
        Statements([
            format!(
                "SELECT namespace, name, key, value, version, updated_at FROM {t}
                 WHERE namespace = $1 AND name = $2 AND key = $3"
            ),
            format!("SELECT version FROM {t} WHERE namespace = $1 AND name = $2 AND key = $3"),
            // Two keys: the store's schema, and the watcher. Collisions only serialize.
            "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))".to_string(),
            format!(
                "INSERT INTO {t} AS p (namespace, name, key, value, version, updated_at)
                 VALUES ($1, $2, $3, $4, 1, now())
                 ON CONFLICT (namespace, name, key) DO UPDATE
                 SET value = excluded.value, version = p.version + 1, updated_at = excluded.updated_at
                 RETURNING version"
            ),
            format!("DELETE FROM {t} WHERE namespace = $1 AND name = $2 AND key = $3"),
            format!(
                "DELETE FROM {t} WHERE namespace = $1 AND name = $2
                 AND key >= $3 AND ($4::text IS NULL OR key < $4)"
            ),
            // The lease a fenced write carries, locked until the write commits: an
            // instance taking the lease over waits for the write, and then sees it. By
            // the clock at the statement, not at the transaction's start (which may
            // have waited for the watcher's lock).
            format!(
                "SELECT owner, epoch, expires_at > clock_timestamp() FROM {}.leases
                 WHERE namespace = $1 AND name = $2 FOR SHARE",
                quote_ident(schema)
            ),
        ])
    }

    fn sql(&self, which: Sql) -> &str {
        &self.0[which as usize]
    }
}

/// Runs `$body` (an expression that may use `?`, of type `Result<_, StoreError>`) with
/// `$conn` bound to a ready connection of `$store`, within its operation timeout.
macro_rules! with_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        with_conn!($store, $store.operation_timeout, |$conn| $body)
    };
    ($store:expr, $limit:expr, |$conn:ident| $body:expr) => {{
        let store = $store;
        let mut guard = store.take_slot().await;
        let result = tokio::time::timeout($limit, async {
            let $conn = store.ready(&mut guard).await?;
            $body
        })
        .await;
        store.settle(&mut guard, result)
    }};
}

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: HashMap<Sql, Statement>,
}

impl Conn {
    async fn statement(&mut self, sql: &Statements, which: Sql) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(&which) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql.sql(which)).await?;
        self.prepared.insert(which, statement.clone());
        Ok(statement)
    }
}

/// The Postgres store. Connects on first use (a server that is down at start is waited
/// for by the daemon, see [`Store::connect`]), and again after a connection is lost.
pub struct PostgresStore {
    settings: ConnectSettings,
    /// The schema, as written (quoted wherever it is spliced).
    schema: String,
    /// `user@host:port/db schema "name"`, for messages (never a password).
    location: String,
    statements: Statements,
    /// The record format rows are brought to, and the steps that get them there.
    upgrades: Vec<Upgrade>,
    format: u32,
    /// The connections; a slot is None until used, and again once its connection broke.
    slots: Vec<tokio::sync::Mutex<Option<Conn>>>,
    /// Where the next caller that finds every slot busy waits.
    next: AtomicUsize,
    /// The schema was found (or made) this release's: checked once per process.
    migrated: AtomicBool,
    /// Held while the schema is checked, so that one task does it.
    migrating: tokio::sync::Mutex<()>,
    /// `lease_ttl`.
    lease_ttl: Duration,
    /// How long one operation may take ([`OPERATION_TIMEOUT`]).
    operation_timeout: Duration,
}

impl PostgresStore {
    /// A store for `config`; nothing is connected yet.
    pub fn new(config: &PostgresConfig, upgrades: &[Upgrade]) -> Self {
        let settings = config.settings();
        let place = connect::resolve(&settings).map_or_else(|_| "postgres".to_string(), |t| t.describe());
        let format = upgrades.iter().map(|u| u.to).max().unwrap_or(0).max(BASE_FORMAT);
        PostgresStore {
            location: format!("{place} schema {}", quote_ident(&config.schema)),
            statements: Statements::new(&config.schema),
            schema: config.schema.clone(),
            settings,
            upgrades: upgrades.to_vec(),
            format,
            slots: (0..CONNECTIONS).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            migrated: AtomicBool::new(false),
            migrating: tokio::sync::Mutex::new(()),
            lease_ttl: config.lease_ttl.0,
            operation_timeout: config.lease_ttl.0.clamp(OPERATION_TIMEOUT.0, OPERATION_TIMEOUT.1),
        }
    }

    /// A table of the schema, quoted.
    fn table(&self, name: &str) -> String {
        format!("{}.{name}", quote_ident(&self.schema))
    }

    /// How long a lease call may take: a third of the ttl, at most a second (the lease
    /// task's round), so that a store that stopped answering is noticed within the ttl.
    fn lease_call(&self) -> Duration {
        (self.lease_ttl / 3).min(Duration::from_secs(1))
    }

    /// The ttl as the milliseconds SQL adds to a time.
    fn ttl_ms(&self) -> f64 {
        self.lease_ttl.as_millis() as f64
    }

    /// A failure of the server or the connection, as a store error: one that passes by
    /// itself (the server restarting, a lost connection) is `Unavailable`.
    fn error(&self, e: &tokio_postgres::Error) -> StoreError {
        let message = connect::message(e);
        match connect::classify(e) {
            ErrorClass::Transient | ErrorClass::Waiting => {
                StoreError::Unavailable { location: self.location.clone(), message }
            }
            _ => StoreError::Backend { location: self.location.clone(), message },
        }
    }

    /// A connection slot: a free one if there is one, else the next in turn.
    async fn take_slot(&self) -> tokio::sync::MutexGuard<'_, Option<Conn>> {
        match self.slots.iter().find_map(|slot| slot.try_lock().ok()) {
            Some(guard) => guard,
            None => {
                let at = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
                self.slots[at].lock().await
            }
        }
    }

    /// The slot's connection, made (and the schema checked) if need be.
    async fn ready<'g>(&self, slot: &'g mut Option<Conn>) -> Result<&'g mut Conn, StoreError> {
        if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.connect_one().await?);
        }
        slot.as_mut().ok_or_else(|| self.unavailable("no connection"))
    }

    /// The outcome of an operation: a connection that failed or took longer than
    /// the operation timeout is dropped, so the next call connects afresh.
    fn settle<T>(
        &self,
        slot: &mut Option<Conn>,
        result: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(self.unavailable("no answer in time")),
        };
        if matches!(result, Err(StoreError::Unavailable { .. })) {
            *slot = None;
        }
        result
    }

    fn unavailable(&self, message: &str) -> StoreError {
        StoreError::Unavailable { location: self.location.clone(), message: message.to_string() }
    }

    /// Opens one connection, checking (once per process) that the schema is this
    /// release's, creating or migrating it if need be.
    async fn connect_one(&self) -> Result<Conn, StoreError> {
        let target = connect::resolve(&self.settings)
            .map_err(|e| StoreError::Backend { location: self.location.clone(), message: e.message })?;
        let client = connect::connect(&target).await.map_err(|e| match e.class {
            ErrorClass::Transient | ErrorClass::Waiting => {
                StoreError::Unavailable { location: self.location.clone(), message: e.message }
            }
            _ => StoreError::Backend { location: self.location.clone(), message: e.message },
        })?;
        // A transaction left open by a connection the network cut (the client gone, the
        // server none the wiser) would hold its watcher's lock and lease row until TCP
        // gives up, which can take hours: the server ends it after the ttl.
        let idle = format!("SET idle_in_transaction_session_timeout = {}", self.lease_ttl.as_millis());
        client.batch_execute(&idle).await.map_err(|e| self.error(&e))?;
        let mut conn = Conn { client, prepared: HashMap::new() };
        if !self.migrated.load(Ordering::Acquire) {
            let _one = self.migrating.lock().await;
            if !self.migrated.load(Ordering::Acquire) {
                self.migrate(&mut conn.client).await?;
                self.migrated.store(true, Ordering::Release);
            }
        }
        Ok(conn)
    }

    /// Brings the schema to this release's version, or refuses one this release
    /// cannot run against. A schema that is up to date costs one query and no lock.
    async fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as u32;
        let s = quote_ident(&self.schema);
        let meta = format!("{s}.schema_version");
        let err = |e: tokio_postgres::Error| self.error(&e);
        let exists: Option<String> =
            client.query_one("SELECT to_regclass($1)::text", &[&meta]).await.map_err(err)?.get(0);
        if exists.is_some() {
            let row = client
                .query_opt(&format!("SELECT version, compatible_from, state_format FROM {meta}"), &[])
                .await
                .map_err(err)?;
            if let Some(row) = row {
                let found = Found { version: row.get(0), compatible_from: row.get(1), format: row.get(2) };
                if found.version as u32 == known && found.format as u32 == self.format {
                    return Ok(());
                }
            }
        }
        let tx = client.transaction().await.map_err(err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('highwater schema'), hashtext($1))",
            &[&self.schema],
        )
        .await
        .map_err(err)?;
        let has_schema: Option<String> =
            tx.query_one("SELECT to_regnamespace($1)::text", &[&s]).await.map_err(err)?.get(0);
        if has_schema.is_none() {
            tx.batch_execute(&format!("CREATE SCHEMA {s}")).await.map_err(err)?;
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {meta} (
                one             boolean PRIMARY KEY DEFAULT true CHECK (one),
                version         integer NOT NULL,
                compatible_from integer NOT NULL,
                state_format    integer NOT NULL,
                written_by      text NOT NULL,
                updated_at      timestamptz NOT NULL DEFAULT now()
            )"
        ))
        .await
        .map_err(err)?;
        let row = tx
            .query_opt(&format!("SELECT version, compatible_from, state_format, written_by FROM {meta}"), &[])
            .await
            .map_err(err)?;
        let (found, written_by) = match &row {
            Some(row) => {
                (Found { version: row.get(0), compatible_from: row.get(1), format: row.get(2) }, row.get(3))
            }
            None => (Found { version: 0, compatible_from: 0, format: self.format as i32 }, String::new()),
        };
        let backend = |message: String| StoreError::Backend { location: self.location.clone(), message };
        if found.format as u32 > self.format {
            return Err(backend(format!(
                "the state's records are in format {} ({written_by}); this highwater writes format {}: upgrade highwater",
                found.format, self.format
            )));
        }
        if found.version as u32 > known {
            if found.compatible_from as u32 > known {
                return Err(backend(format!(
                    "schema version {} ({written_by}) needs a highwater that knows version {} or later; this one knows {known}: upgrade highwater",
                    found.version, found.compatible_from
                )));
            }
            tracing::warn!(
                schema = %self.schema,
                version = found.version,
                known,
                written_by = %written_by,
                "The state's schema is newer than this release and marked compatible with it; running on it."
            );
            return tx.commit().await.map_err(err);
        }
        if found.version as u32 == known && found.format as u32 == self.format {
            // Another instance got here first, while this one waited for the lock.
            return tx.commit().await.map_err(err);
        }
        let mut compatible_from = found.compatible_from.max(0) as u32;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(found.version.max(0) as usize) {
            let version = index as u32 + 1;
            tx.batch_execute(&migration.sql.replace("{s}", &s))
                .await
                .map_err(|e| backend(format!("migration {version} failed: {}", connect::message(&e))))?;
            compatible_from = compatible_from.max(migration.compatible_from);
        }
        let mut rewritten = 0u64;
        for upgrade in self.upgrades.iter().filter(|u| u.to > found.format as u32 && u.to <= self.format) {
            rewritten += self.rewrite(&tx, upgrade).await?;
        }
        tx.execute(&format!("DELETE FROM {meta}"), &[]).await.map_err(err)?;
        let by = format!("highwater {}", env!("CARGO_PKG_VERSION"));
        tx.execute(
            &format!("INSERT INTO {meta} (version, compatible_from, state_format, written_by) VALUES ($1, $2, $3, $4)"),
            &[&(known as i32), &(compatible_from as i32), &(self.format as i32), &by],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        if found.version > 0 {
            tracing::warn!(
                schema = %self.schema,
                from = found.version,
                to = known,
                rows = rewritten,
                "Upgraded the state's schema to this release's version."
            );
        } else {
            tracing::info!(schema = %self.schema, version = known, "Created the state's schema.");
        }
        Ok(())
    }

    /// Rewrites, in `tx`, every row `upgrade` has a new value for. Returns how many.
    async fn rewrite(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        upgrade: &Upgrade,
    ) -> Result<u64, StoreError> {
        let err = |e: tokio_postgres::Error| self.error(&e);
        let t = format!("{}.process_state", quote_ident(&self.schema));
        let rows = tx
            .query(&format!("SELECT namespace, name, key, value, version, updated_at FROM {t}"), &[])
            .await
            .map_err(err)?;
        let mut count = 0;
        for row in &rows {
            let record = to_record(row);
            if let Some(value) = (upgrade.rewrite)(&record) {
                tx.execute(
                    &format!(
                        "UPDATE {t} SET value = $4, version = version + 1, updated_at = now()
                         WHERE namespace = $1 AND name = $2 AND key = $3"
                    ),
                    &[&record.namespace, &record.name, &record.key, &value.as_str()],
                )
                .await
                .map_err(err)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// The rows of a listing (`count`: its number of rows per watcher instead) of the
    /// keys `keys` of the watchers the filter names.
    async fn listing(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
        count: bool,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let (namespace, name) = (namespace.map(str::to_string), name.map(str::to_string));
        let (mode, from, to) = key_range(keys);
        let query = self.listing_sql(mode, count);
        with_conn!(self, |conn| {
            conn.client.query(&query, &[&namespace, &name, &from, &to]).await.map_err(|e| self.error(&e))
        })
    }

    fn listing_sql(&self, mode: usize, count: bool) -> String {
        let t = format!("{}.process_state", quote_ident(&self.schema));
        let condition = KEY_CONDITION[mode];
        if count {
            format!(
                "SELECT namespace, name, count(*) FROM {t}
                 WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR name = $2) AND {condition}
                 GROUP BY namespace, name"
            )
        } else {
            format!(
                "SELECT namespace, name, key, value, version, updated_at FROM {t}
                 WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR name = $2) AND {condition}
                 ORDER BY namespace, name, key"
            )
        }
    }
}

/// A fenced write's lease check: the lease must be the fence's owner and epoch, and in
/// force by the server's clock.
fn check_fence(
    namespace: &str,
    name: &str,
    fence: &Fence,
    lease: Option<&tokio_postgres::Row>,
) -> Result<(), StoreError> {
    let found = lease.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)));
    let message = match found {
        Some((owner, epoch, true)) if owner == fence.owner && epoch == fence.epoch => return Ok(()),
        Some((owner, epoch, live)) if owner == fence.owner && epoch == fence.epoch && !live => {
            "the lease expired".to_string()
        }
        Some((owner, epoch, _)) => format!("held by {owner} at epoch {epoch}"),
        None => "no lease".to_string(),
    };
    Err(StoreError::Fenced { namespace: namespace.into(), name: name.into(), epoch: fence.epoch, message })
}

/// The schema's row of `schema_version`.
struct Found {
    version: i32,
    compatible_from: i32,
    format: i32,
}

/// A listing's key conditions: keys in `[$3, $4)`; keys outside it (`$4` NULL: no
/// upper end).
const KEY_CONDITION: [&str; 2] =
    ["key >= $3 AND ($4::text IS NULL OR key < $4)", "(key < $3 OR ($4::text IS NOT NULL AND key >= $4))"];

fn key_range(keys: Keys<'_>) -> (usize, String, Option<String>) {
    match keys {
        Keys::Under(prefix) => (0, prefix.to_string(), prefix_end(prefix)),
        Keys::NotUnder(prefix) => (1, prefix.to_string(), prefix_end(prefix)),
    }
}

fn to_record(row: &tokio_postgres::Row) -> Record {
    Record {
        namespace: row.get(0),
        name: row.get(1),
        key: row.get(2),
        value: Json::from_trusted(row.get(3)),
        version: row.get(4),
        updated_at: row.get::<_, DateTime<Utc>>(5),
    }
}

/// What to make of the answer to one statement of a write.
enum Answer {
    /// The lock, a delete: nothing.
    Nothing,
    /// The version found for op `index`, to check against its expectation.
    Found(usize),
    /// The version op `index` wrote.
    Wrote(usize),
    /// The watcher's lease, to check against the write's fence.
    Lease,
}

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Option<Record>, StoreError> {
        let params = [namespace.to_string(), name.to_string(), key.to_string()];
        with_conn!(self, |conn| {
            let statement = conn.statement(&self.statements, Sql::Get).await.map_err(|e| self.error(&e))?;
            let row = conn
                .client
                .query_opt(&statement, &[&params[0], &params[1], &params[2]])
                .await
                .map_err(|e| self.error(&e))?;
            Ok(row.as_ref().map(to_record))
        })
    }

    async fn version(&self, namespace: &str, name: &str, key: &str) -> Result<Option<i64>, StoreError> {
        let params = [namespace.to_string(), name.to_string(), key.to_string()];
        with_conn!(self, |conn| {
            let statement =
                conn.statement(&self.statements, Sql::Version).await.map_err(|e| self.error(&e))?;
            let row = conn
                .client
                .query_opt(&statement, &[&params[0], &params[1], &params[2]])
                .await
                .map_err(|e| self.error(&e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = self.listing(namespace, name, keys, false).await?;
        Ok(rows.iter().map(to_record).collect())
    }

    async fn count(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<BTreeMap<(String, String), u64>, StoreError> {
        let rows = self.listing(namespace, name, keys, true).await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), u64::try_from(r.get::<_, i64>(2)).unwrap_or(0)))
            .collect())
    }

    async fn backup(&self, _to: &Path) -> Result<(), StoreError> {
        Err(StoreError::Backend {
            location: self.location.clone(),
            message:
                "`state backup` copies a SQLite store; for Postgres use pg_dump, or `highwater state export`"
                    .into(),
        })
    }

    async fn write_fenced(
        &self,
        namespace: &str,
        name: &str,
        fence: Option<&Fence>,
        ops: Vec<Op>,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let watcher = format!("{namespace}/{name}");
        let schema = self.schema.clone();
        with_conn!(self, |conn| {
            let err = |e: tokio_postgres::Error| self.error(&e);
            for which in [Sql::Lock, Sql::Version, Sql::Put, Sql::Delete, Sql::DeleteUnder, Sql::Fence] {
                conn.statement(&self.statements, which).await.map_err(err)?;
            }
            let st = |which| conn.prepared.get(&which).cloned();
            let (Some(lock), Some(version), Some(put), Some(delete), Some(delete_under), Some(lease)) = (
                st(Sql::Lock),
                st(Sql::Version),
                st(Sql::Put),
                st(Sql::Delete),
                st(Sql::DeleteUnder),
                st(Sql::Fence),
            ) else {
                return Err(self.unavailable("statements not prepared"));
            };
            // Owned parameters first; the pipelined statements borrow them.
            let ends: Vec<Option<String>> = ops
                .iter()
                .map(|op| if op.action == Action::DeleteUnder { prefix_end(&op.key) } else { None })
                .collect();
            let texts: Vec<Option<&str>> = ops
                .iter()
                .map(|op| match &op.action {
                    Action::Put(value) | Action::PutUntracked(value) => Some(value.as_str()),
                    _ => None,
                })
                .collect();
            for op in &ops {
                if op.action == Action::DeleteUnder && op.expect != Expect::Any {
                    return Err(StoreError::Backend {
                        location: self.location.clone(),
                        message: format!("a range delete of {:?} must expect anything", op.key),
                    });
                }
            }
            type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;
            let mut plan: Vec<(&Statement, Params<'_>, Answer)> = Vec::with_capacity(ops.len() * 2 + 1);
            plan.push((&lock, vec![&schema, &watcher], Answer::Nothing));
            if fence.is_some() {
                plan.push((&lease, vec![&namespace, &name], Answer::Lease));
            }
            for (index, op) in ops.iter().enumerate() {
                let base: Params<'_> = vec![&namespace, &name, &op.key];
                if op.expect != Expect::Any || op.action == Action::Check {
                    plan.push((&version, base.clone(), Answer::Found(index)));
                }
                match &op.action {
                    Action::Check => {}
                    Action::Put(_) => {
                        let mut params = base;
                        params.push(&texts[index]);
                        plan.push((&put, params, Answer::Wrote(index)));
                    }
                    // Pipelined with the rest, the version it returns costs no round trip.
                    Action::PutUntracked(_) => {
                        let mut params = base;
                        params.push(&texts[index]);
                        plan.push((&put, params, Answer::Nothing));
                    }
                    Action::Delete => plan.push((&delete, base, Answer::Nothing)),
                    Action::DeleteUnder => {
                        let mut params = base;
                        params.push(&ends[index]);
                        plan.push((&delete_under, params, Answer::Nothing));
                    }
                }
            }
            let tx = conn.client.transaction().await.map_err(err)?;
            let queries: Vec<_> =
                plan.iter().map(|(statement, params, _)| tx.query(*statement, params)).collect();
            // Sent together, answered in order; a failed expectation rolls the
            // whole transaction back (the transaction is dropped uncommitted).
            let results = futures_util::future::join_all(queries).await;
            let mut written: Vec<Option<i64>> = vec![None; ops.len()];
            for ((_, _, answer), result) in plan.iter().zip(results) {
                let rows = result.map_err(err)?;
                match answer {
                    Answer::Nothing => {}
                    Answer::Found(index) => {
                        let current = rows.first().map(|r| r.get::<_, i64>(0));
                        check_expectation(&namespace, &name, &ops[*index], current)?;
                    }
                    Answer::Wrote(index) => {
                        written[*index] = rows.first().map(|r| r.get::<_, i64>(0));
                    }
                    Answer::Lease => {
                        if let Some(fence) = fence {
                            check_fence(&namespace, &name, fence, rows.first())?;
                        }
                    }
                }
            }
            tx.commit().await.map_err(err)?;
            Ok(written)
        })
    }

    async fn rename(&self, from: (&str, &str), to: (&str, &str)) -> Result<u64, StoreError> {
        let (from_ns, from_name) = (from.0.to_string(), from.1.to_string());
        let (to_ns, to_name) = (to.0.to_string(), to.1.to_string());
        let t = format!("{}.process_state", quote_ident(&self.schema));
        let schema = self.schema.clone();
        with_conn!(self, |conn| {
            let err = |e: tokio_postgres::Error| self.error(&e);
            let lock = conn.statement(&self.statements, Sql::Lock).await.map_err(err)?;
            let tx = conn.client.transaction().await.map_err(err)?;
            // Both watchers, in one order, so that two renames cannot deadlock.
            let mut watchers = [format!("{from_ns}/{from_name}"), format!("{to_ns}/{to_name}")];
            watchers.sort();
            for watcher in &watchers {
                tx.query(&lock, &[&schema, watcher]).await.map_err(err)?;
            }
            let taken: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE namespace = $1 AND name = $2"),
                    &[&to_ns, &to_name],
                )
                .await
                .map_err(err)?
                .get(0);
            if taken > 0 {
                return Err(StoreError::rename_target_taken(to_ns, to_name, taken));
            }
            let moved = tx
                .execute(
                    &format!("UPDATE {t} SET namespace = $3, name = $4 WHERE namespace = $1 AND name = $2"),
                    &[&from_ns, &from_name, &to_ns, &to_name],
                )
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(moved)
        })
    }

    async fn connect(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            conn.client.simple_query("SELECT 1").await.map_err(|e| self.error(&e))?;
            Ok(())
        })
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
}

/// The leases: a row per watcher in `leases` (owner, epoch, expiry by the server's
/// clock), a row per instance in `instances`. Each call is one statement (or one
/// short transaction), so a thousand watchers cost a few round trips per renewal.
#[async_trait]
impl Leases for PostgresStore {
    fn ttl(&self) -> Duration {
        self.lease_ttl
    }

    async fn heartbeat(&self, me: &Instance) -> Result<Vec<Peer>, StoreError> {
        let instances = self.table("instances");
        // `xmax = 0`: the row was inserted, not updated (an instance's first heartbeat).
        let upsert = format!(
            "INSERT INTO {instances} AS i (id, host, pid, version, watchers, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp())
             ON CONFLICT (id) DO UPDATE SET watchers = excluded.watchers, heartbeat_at = excluded.heartbeat_at
             RETURNING i.xmax = 0"
        );
        // Instances gone for an hour are forgotten, by each instance as it registers; the
        // live ones are those heard from within the ttl.
        let forget =
            format!("DELETE FROM {instances} WHERE heartbeat_at < clock_timestamp() - interval '1 hour'");
        let live = format!(
            "SELECT id, watchers FROM {instances}
             WHERE heartbeat_at > clock_timestamp() - $1 * interval '1 millisecond' ORDER BY id"
        );
        let (pid, version, ttl) = (i64::from(me.pid), env!("CARGO_PKG_VERSION").to_string(), self.ttl_ms());
        with_conn!(self, self.lease_call(), |conn| {
            let err = |e: tokio_postgres::Error| self.error(&e);
            let registered: bool = conn
                .client
                .query_one(&upsert, &[&me.id, &me.host, &pid, &version, &me.watchers])
                .await
                .map_err(err)?
                .get(0);
            if registered {
                conn.client.execute(&forget, &[]).await.map_err(err)?;
            }
            let rows = conn.client.query(&live, &[&ttl]).await.map_err(err)?;
            Ok(rows.iter().map(|r| Peer { id: r.get(0), watchers: r.get(1) }).collect())
        })
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let query = format!(
            "SELECT namespace, name, owner, epoch, expires_at > clock_timestamp() FROM {}
             ORDER BY namespace, name",
            self.table("leases")
        );
        with_conn!(self, self.lease_call(), |conn| {
            let rows = conn.client.query(&query, &[]).await.map_err(|e| self.error(&e))?;
            Ok(rows
                .iter()
                .map(|r| Lease {
                    watcher: format!("{}/{}", r.get::<_, String>(0), r.get::<_, String>(1)),
                    owner: r.get(2),
                    epoch: r.get(3),
                    live: r.get(4),
                })
                .collect())
        })
    }

    async fn acquire_many(
        &self,
        owner: &str,
        watchers: &[(String, String)],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // Taken only when not in force; a write fenced by the previous holding that is
        // in flight holds the row (FOR SHARE) and is waited for. One statement for all.
        let query = format!(
            "INSERT INTO {} AS l (namespace, name, owner, epoch, acquired_at, expires_at)
             SELECT w.namespace, w.name, $3, 1, clock_timestamp(),
                    clock_timestamp() + $4 * interval '1 millisecond'
             FROM unnest($1::text[], $2::text[]) AS w(namespace, name)
             ON CONFLICT (namespace, name) DO UPDATE
             SET owner = excluded.owner, epoch = l.epoch + 1, acquired_at = excluded.acquired_at,
                 expires_at = clock_timestamp() + $4 * interval '1 millisecond'
             WHERE l.expires_at <= clock_timestamp()
             RETURNING namespace, name, epoch",
            self.table("leases")
        );
        let namespaces: Vec<&str> = watchers.iter().map(|w| w.0.as_str()).collect();
        let names: Vec<&str> = watchers.iter().map(|w| w.1.as_str()).collect();
        let ttl = self.ttl_ms();
        with_conn!(self, self.lease_call(), |conn| {
            let rows = conn
                .client
                .query(&query, &[&namespaces, &names, &owner, &ttl])
                .await
                .map_err(|e| self.error(&e))?;
            Ok(rows
                .iter()
                .map(|r| (format!("{}/{}", r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2)))
                .collect())
        })
    }

    async fn renew(&self, owner: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let query = format!(
            "UPDATE {} SET expires_at = clock_timestamp() + $2 * interval '1 millisecond'
             WHERE owner = $1 AND expires_at > clock_timestamp()
             RETURNING namespace, name, epoch",
            self.table("leases")
        );
        let ttl = self.ttl_ms();
        with_conn!(self, self.lease_call(), |conn| {
            let rows = conn.client.query(&query, &[&owner, &ttl]).await.map_err(|e| self.error(&e))?;
            Ok(rows
                .iter()
                .map(|r| (format!("{}/{}", r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2)))
                .collect())
        })
    }

    async fn release(&self, owner: &str, watcher: (&str, &str), epoch: i64) -> Result<(), StoreError> {
        let query = format!(
            "UPDATE {} SET expires_at = clock_timestamp()
             WHERE namespace = $1 AND name = $2 AND owner = $3 AND epoch = $4",
            self.table("leases")
        );
        let (namespace, name) = (watcher.0.to_string(), watcher.1.to_string());
        with_conn!(self, self.lease_call(), |conn| {
            conn.client
                .execute(&query, &[&namespace, &name, &owner, &epoch])
                .await
                .map_err(|e| self.error(&e))?;
            Ok(())
        })
    }

    async fn leave(&self, owner: &str) -> Result<(), StoreError> {
        let release = format!(
            "UPDATE {} SET expires_at = clock_timestamp() WHERE owner = $1 AND expires_at > clock_timestamp()",
            self.table("leases")
        );
        let forget = format!("DELETE FROM {} WHERE id = $1", self.table("instances"));
        with_conn!(self, self.lease_call(), |conn| {
            let err = |e: tokio_postgres::Error| self.error(&e);
            conn.client.execute(&release, &[&owner]).await.map_err(err)?;
            conn.client.execute(&forget, &[&owner]).await.map_err(err)?;
            Ok(())
        })
    }
}

/// A Postgres schema of a test's own, for the tests of this store and of the outbox.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The test server (`HIGHWATER_TEST_PG_URL`, which scripts/test.sh sets).
    pub fn url() -> String {
        std::env::var("HIGHWATER_TEST_PG_URL").unwrap_or_else(|_| {
            panic!("HIGHWATER_TEST_PG_URL is not set: run the tests with scripts/test.sh")
        })
    }

    pub fn config(url: &str, schema: &str) -> PostgresConfig {
        PostgresConfig {
            connection: Some(url.to_string()),
            password_env: None,
            password_file: None,
            sslmode: Some(TlsMode::Disable),
            sslrootcert: None,
            schema: schema.to_string(),
            lease_ttl: default_lease_ttl(),
        }
    }

    /// A schema of its own for one test, dropped when it ends.
    pub struct Schema {
        pub name: String,
    }

    impl Schema {
        pub fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("hw store {}.{nanos}.{n}", std::process::id());
            Schema { name }
        }

        /// A store on the schema, as the trait object the outbox takes.
        pub fn shared(&self) -> Arc<dyn Store> {
            Arc::new(self.store())
        }

        pub fn store(&self) -> PostgresStore {
            PostgresStore::new(&config(&url(), &self.name), &[])
        }

        /// Drops the schema (at the end of a test that passed; a failed one leaves it
        /// to look at).
        pub async fn drop(self) {
            self.sql("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {s} CASCADE").await;
        }

        pub async fn sql(&self, text: &str) {
            let target = connect::resolve(&config(&url(), &self.name).settings()).unwrap();
            let client = connect::connect(&target).await.unwrap();
            client.batch_execute(&text.replace("{s}", &quote_ident(&self.name))).await.unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::testing::{Schema, config, url};

    #[tokio::test]
    async fn the_shared_suite() {
        let schema = Schema::new();
        let store = schema.store();
        store.connect().await.unwrap();
        crate::state::suite::run(&store).await;
        schema.drop().await;
    }

    #[tokio::test]
    async fn instances_racing_to_create_the_schema_all_start() {
        let schema = Schema::new();
        let stores: Vec<PostgresStore> = (0..4).map(|_| schema.store()).collect();
        let started = futures_util::future::join_all(stores.iter().map(|s| s.connect())).await;
        for result in started {
            result.unwrap();
        }
        schema.drop().await;
    }

    #[tokio::test]
    async fn two_writers_expecting_no_row_cannot_both_win() {
        let schema = Schema::new();
        let (a, b) = (schema.store(), schema.store());
        a.connect().await.unwrap();
        for round in 0..20 {
            let key = format!("k{round}");
            let op = || vec![Op::put(key.clone(), Json::parse("1").unwrap(), Expect::Absent)];
            let (x, y) = tokio::join!(a.write("ns", "w", op()), b.write("ns", "w", op()));
            let wins = [x.is_ok(), y.is_ok()].iter().filter(|w| **w).count();
            assert_eq!(wins, 1, "round {round}: {x:?} {y:?}");
        }
        schema.drop().await;
    }

    #[tokio::test]
    async fn a_schema_this_release_cannot_run_on_is_refused_and_a_compatible_one_is_used() {
        let schema = Schema::new();
        schema.store().connect().await.unwrap();
        schema.sql("UPDATE {s}.schema_version SET version = 7, compatible_from = 1, written_by = 'highwater 9.0'").await;
        let compatible = schema.store();
        compatible.connect().await.unwrap();
        compatible
            .write("ns", "w", vec![Op::put("k", Json::parse("1").unwrap(), Expect::Any)])
            .await
            .unwrap();
        schema.sql("UPDATE {s}.schema_version SET compatible_from = 5").await;
        let err = schema.store().connect().await.unwrap_err().to_string();
        assert!(
            err.contains("schema version 7 (highwater 9.0) needs a highwater that knows version 5 or later")
                && err.contains("upgrade highwater"),
            "{err}"
        );
        assert!(!err.contains("password"), "{err}");
        schema.drop().await;
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_unavailable_not_broken() {
        let store = PostgresStore::new(&config("postgres://postgres@127.0.0.1:9/none", "hw"), &[]);
        let err = store.connect().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    }

    #[test]
    fn a_lease_ttl_out_of_range_is_a_config_error() {
        let mut c = config("postgres://h/db", "hw");
        assert!(c.validate().is_empty());
        for secs in [1, 4000] {
            c.lease_ttl = HumanDuration(Duration::from_secs(secs));
            let errors = c.validate();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].0, "lease_ttl");
            assert!(errors[0].1.contains("between 5s and 1h"), "{errors:?}");
        }
    }

    fn me(id: &str) -> Instance {
        Instance { id: id.into(), host: "h".into(), pid: 1, watchers: vec!["ns/w".into()] }
    }

    fn put(key: &str) -> Vec<Op> {
        vec![Op::put(key, Json::parse("1").unwrap(), Expect::Any)]
    }

    #[tokio::test]
    async fn a_fenced_write_goes_through_only_under_the_lease_in_force() {
        let schema = Schema::new();
        let store = schema.store();
        let fence = |owner: &str, epoch| Fence { owner: owner.into(), epoch };
        let err = store.write_fenced("ns", "w", Some(&fence("a", 1)), put("k")).await.unwrap_err();
        assert!(matches!(&err, StoreError::Fenced { .. }) && err.to_string().contains("no lease"), "{err}");
        assert_eq!(store.acquire("a", ("ns", "w")).await.unwrap(), Some(1));
        store.write_fenced("ns", "w", Some(&fence("a", 1)), put("k")).await.unwrap();
        // Held in force: nobody else takes it.
        assert_eq!(store.acquire("b", ("ns", "w")).await.unwrap(), None);
        store.release("a", ("ns", "w"), 1).await.unwrap();
        assert_eq!(store.acquire("b", ("ns", "w")).await.unwrap(), Some(2));
        let err = store.write_fenced("ns", "w", Some(&fence("a", 1)), put("k2")).await.unwrap_err();
        assert!(err.to_string().contains("held by b at epoch 2"), "{err}");
        // Refused whole: nothing of it was written.
        assert!(store.get("ns", "w", "k2").await.unwrap().is_none());
        store.write_fenced("ns", "w", Some(&fence("b", 2)), put("k2")).await.unwrap();
        // Many at once: those held in force are left out.
        let wanted: Vec<(String, String)> =
            ["w", "x", "y"].iter().map(|n| ("ns".to_string(), n.to_string())).collect();
        let mut taken = store.acquire_many("a", &wanted).await.unwrap();
        taken.sort();
        assert_eq!(taken, vec![("ns/x".to_string(), 1), ("ns/y".to_string(), 1)]);
        schema.drop().await;
    }

    #[tokio::test]
    async fn a_lease_that_expired_is_neither_renewed_nor_written_under() {
        let schema = Schema::new();
        let store = schema.store();
        assert_eq!(store.acquire("a", ("ns", "w")).await.unwrap(), Some(1));
        assert_eq!(store.renew("a").await.unwrap(), vec![("ns/w".to_string(), 1)]);
        schema.sql("UPDATE {s}.leases SET expires_at = clock_timestamp() - interval '1 second'").await;
        assert_eq!(store.renew("a").await.unwrap(), vec![]);
        let fence = Fence { owner: "a".into(), epoch: 1 };
        let err = store.write_fenced("ns", "w", Some(&fence), put("k")).await.unwrap_err();
        assert!(err.to_string().contains("the lease expired"), "{err}");
        // Taken again, by anyone, under a new epoch.
        assert_eq!(store.acquire("a", ("ns", "w")).await.unwrap(), Some(2));
        schema.drop().await;
    }

    #[tokio::test]
    async fn a_takeover_waits_for_a_fenced_write_in_flight() {
        let schema = Schema::new();
        let store = Arc::new(schema.store());
        assert_eq!(store.acquire("a", ("ns", "w")).await.unwrap(), Some(1));
        schema.sql("UPDATE {s}.leases SET expires_at = clock_timestamp() - interval '1 second'").await;
        // A write's lease check, held open: as a fenced write holds it until it commits.
        let target = connect::resolve(&config(&url(), &schema.name).settings()).unwrap();
        let writer = connect::connect(&target).await.unwrap();
        let t = quote_ident(&schema.name);
        writer.batch_execute(&format!("BEGIN; SELECT epoch FROM {t}.leases FOR SHARE")).await.unwrap();
        let taker = Arc::clone(&store);
        let takeover = tokio::spawn(async move { taker.acquire("b", ("ns", "w")).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!takeover.is_finished(), "the lease changed hands under a write in flight");
        writer.batch_execute("COMMIT").await.unwrap();
        assert_eq!(takeover.await.unwrap().unwrap(), Some(2));
        schema.drop().await;
    }

    #[tokio::test]
    async fn instances_see_each_other_until_one_leaves() {
        let schema = Schema::new();
        let store = schema.store();
        store.heartbeat(&me("a")).await.unwrap();
        let peers = store.heartbeat(&me("b")).await.unwrap();
        assert_eq!(peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(peers[0].watchers, ["ns/w"]);
        assert_eq!(store.acquire("a", ("ns", "w")).await.unwrap(), Some(1));
        store.leave("a").await.unwrap();
        let peers = store.heartbeat(&me("b")).await.unwrap();
        assert_eq!(peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["b"]);
        let leases = store.list_leases().await.unwrap();
        assert_eq!((leases.len(), leases[0].live), (1, false));
        assert_eq!(store.acquire("b", ("ns", "w")).await.unwrap(), Some(2));
        schema.drop().await;
    }

    /// A rewrite for the tests: the row `a` becomes 10.
    fn ten(record: &Record) -> Option<Json> {
        (record.key == "a").then(|| Json::parse("10").unwrap())
    }

    #[tokio::test]
    async fn records_of_an_earlier_format_are_rewritten_once() {
        let schema = Schema::new();
        let store = schema.store();
        store.write("ns", "w", vec![Op::put("a", Json::parse("1").unwrap(), Expect::Any)]).await.unwrap();
        drop(store);
        let upgraded = PostgresStore::new(&config(&url(), &schema.name), &[Upgrade { to: 3, rewrite: ten }]);
        let a = upgraded.get("ns", "w", "a").await.unwrap().unwrap();
        assert_eq!((a.value.as_str(), a.version), ("10", 2));
        // An older release (format 2) now refuses the store.
        let err = schema.store().connect().await.unwrap_err().to_string();
        assert!(err.contains("format 3"), "{err}");
        schema.drop().await;
    }
}
