//! The embedded SQLite `process_state` store: one file, WAL mode, versioned schema.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Action, Expect, Fence, Keys, Op, Record, Store, StoreError, Upgrade, check_expectation, prefix_end,
};
use crate::json::Json;

/// Schema and format versions, applied in order; `PRAGMA user_version` records how many
/// ran. A version is its SQL and, when its records change shape, the rewrite `outbox.rs`
/// hands in as an [`Upgrade`] with the same number. Append only: a released version
/// never changes.
const MIGRATIONS: &[&str] = &[
    // 1 (0.1.0): the process_state table.
    "CREATE TABLE process_state (
        namespace  TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        value      TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        updated_at TEXT    NOT NULL,
        PRIMARY KEY (namespace, name, key)
    ) WITHOUT ROWID;",
    // 2: records only (a pending batch's `change`; see `outbox::UPGRADES`).
    "",
];

/// The versions whose records change shape: opening a store that holds rows of an
/// earlier version needs their [`Upgrade`].
const RECORD_VERSIONS: &[u32] = &[2];

/// The log size (in 4 KiB pages: 64 MB) at which a commit checkpoints it. At 16 MB,
/// batches of ten thousand table rows (4 MB each) were checkpointed every fourth
/// batch, each checkpoint reading back and writing again the same pages; at 64 MB,
/// every sixteenth, which made such a stream 5–10 % faster. The log file stays at its
/// largest size between checkpoints (SQLite reuses it from the start).
const CHECKPOINT_PAGES: i64 = 16_384;

/// How long a writer waits for another process (say `highwater state set` while the
/// daemon runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct SqliteStore {
    /// The connection, behind a mutex because rusqlite connections are not `Sync`;
    /// calls run on the blocking pool so that a slow disk never stalls the runtime.
    conn: Arc<Mutex<Connection>>,
    /// The file, for error messages.
    path: PathBuf,
    /// The file opened (device and inode; None in memory): a database deleted or
    /// replaced while open is told from the one at `path` by it, so that nothing is
    /// written to an unlinked file that no later start would read.
    identity: Option<(u64, u64)>,
    /// The lock file beside the database while this process holds it ([`Store::claim`]):
    /// closing it releases the lock.
    lock: Arc<Mutex<Option<File>>>,
}

/// How long a daemon starting waits for the lock: long enough for a `state` command
/// that looks whether a daemon runs (it holds the lock for an instant), far shorter
/// than any daemon's life.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Mode of the files the store creates (the database, its `-wal` and `-shm`, which
/// SQLite creates with the database's mode, and the lock file): a pending batch can
/// carry customer data.
const FILE_MODE: u32 = 0o600;

/// The head of every put: the rows' values follow it.
macro_rules! insert {
    () => {
        "INSERT INTO process_state (namespace, name, key, value, version, updated_at) VALUES "
    };
}

/// The tail of every put: a row already there is overwritten, its version one more.
macro_rules! on_conflict {
    () => {
        " ON CONFLICT (namespace, name, key) DO UPDATE
         SET value = excluded.value, version = process_state.version + 1,
             updated_at = excluded.updated_at"
    };
}

/// A put: the row written, whatever was there, its version one more than before.
macro_rules! upsert {
    () => {
        concat!(insert!(), "(?1, ?2, ?3, ?4, 1, ?5)", on_conflict!())
    };
}

/// [`Action::Put`]: the upsert, and the version it wrote.
const PUT: &str = concat!(upsert!(), " RETURNING version");

/// [`Action::PutUntracked`]: the upsert alone.
const PUT_UNTRACKED: &str = upsert!();

/// Rows of one multi-row [`Action::PutUntracked`] upsert: a commit's members go in by
/// the hundred, one pass of SQLite's statement machine (and one statement cache lookup)
/// for each hundred rather than for each row, which took a third off the commit of
/// 20,000 new S3 keys.
const PUT_ROWS: usize = 100;

/// The upsert of [`PUT_ROWS`] rows: `?1` namespace, `?2` name, `?3` the time, then a key
/// and a value for each row.
static PUT_UNTRACKED_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let rows: Vec<String> =
        (0..PUT_ROWS).map(|i| format!("(?1, ?2, ?{}, ?{}, 1, ?3)", 4 + 2 * i, 5 + 2 * i)).collect();
    format!("{}{}{}", insert!(), rows.join(", "), on_conflict!())
});

/// Upserts `rows` (keys and values) without returning their versions: [`PUT_ROWS`] at a
/// time in one statement, a shorter run row by row. A key twice in one statement is
/// written twice, in order, as row by row.
fn put_untracked(
    conn: &Connection,
    namespace: &str,
    name: &str,
    now: &str,
    rows: &[(String, Json)],
) -> rusqlite::Result<()> {
    if rows.len() == PUT_ROWS {
        let mut stmt = conn.prepare_cached(&PUT_UNTRACKED_ROWS)?;
        stmt.raw_bind_parameter(1, namespace)?;
        stmt.raw_bind_parameter(2, name)?;
        stmt.raw_bind_parameter(3, now)?;
        for (i, (key, value)) in rows.iter().enumerate() {
            stmt.raw_bind_parameter(4 + 2 * i, key)?;
            stmt.raw_bind_parameter(5 + 2 * i, value.as_str())?;
        }
        stmt.raw_execute()?;
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(PUT_UNTRACKED)?;
    for (key, value) in rows {
        stmt.execute(params![namespace, name, key, value.as_str(), now])?;
    }
    Ok(())
}

/// The version of one row, None when there is none.
fn version_of(conn: &Connection, namespace: &str, name: &str, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT version FROM process_state WHERE namespace = ?1 AND name = ?2 AND key = ?3")?
        .query_row(params![namespace, name, key], |r| r.get(0))
        .optional()
}

/// The lock file of the database at `path`: `<file>.lock`, beside it.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Device and inode of the file at `path`.
fn identity_of(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether the file at `path` is still the one opened (`identity`).
fn same_file(path: &Path, identity: Option<(u64, u64)>) -> Result<(), StoreError> {
    let Some(opened) = identity else { return Ok(()) };
    let failed = |message: String| StoreError::Backend { location: path.display().to_string(), message };
    match identity_of(path) {
        Ok(now) if now == opened => Ok(()),
        Ok(_) => Err(failed(
            "the database file was replaced by another file while in use; nothing more is written \
             to the old one. Restart highwater to use the new file"
                .into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(failed(
            "the database file was deleted or moved away while in use; nothing more is written to \
             it. Put it back at its path (highwater goes on by itself), or restart highwater, which \
             starts an empty store (every watcher from its `start:`)"
                .into(),
        )),
        Err(e) => Err(failed(format!("cannot look at the database file: {e}"))),
    }
}

/// The pid a lock file names, for the message that refuses a second daemon.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(64).read_to_string(&mut text);
    match text.trim() {
        "" => "unknown".to_string(),
        pid => pid.to_string(),
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the store at `path` and brings a
    /// new or empty one up to date. One with rows of an earlier version needs
    /// [`Self::open_upgrading`].
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_upgrading(path, &[])
    }

    /// Opens the store at `path` and brings it up to date: a file of an earlier version
    /// that holds rows is first copied whole with the online backup, next to it
    /// (`<file>.v<version>.<time>.bak`: what that release reads), then the versions
    /// run, their SQL and the rows their [`Upgrade`]s rewrite, in one transaction. A new
    /// file is created with mode 0600.
    pub fn open_upgrading(path: &Path, upgrades: &[Upgrade]) -> Result<Self, StoreError> {
        let backend = |message: String| StoreError::Backend { location: path.display().to_string(), message };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| backend(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        let in_memory = path.as_os_str() == ":memory:";
        if !in_memory {
            // Created here, not by SQLite, for its mode (SQLite's default lets anyone on
            // the host read it; its -wal and -shm take the database's mode). One that
            // exists stays as it is; any other failure is SQLite's to report below.
            let _ = std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path);
        }
        let cannot_open = |e: rusqlite::Error| {
            backend(format!(
                "cannot open: {e} (the file and its directory must be writable: SQLite keeps -wal and -shm \
                 files beside it)"
            ))
        };
        let mut conn = Connection::open(path).map_err(cannot_open)?;
        let identity = if in_memory { None } else { identity_of(path).ok() };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| backend(e.to_string()))?;
        // WAL lets readers (the `state` command) run beside the daemon. NORMAL sync can
        // lose the last commits on power loss, never on a process crash; either way the
        // outbox is redelivered or the items are found again with the same ids, so the
        // delivery promise holds.
        // Switching a new file to WAL needs it alone for an instant, and SQLite answers
        // "busy" at once rather than through the busy timeout: wait as that would.
        let since = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && since.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(
                    e @ rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error { code: rusqlite::ErrorCode::DatabaseBusy, .. },
                        _,
                    ),
                ) => {
                    return Err(backend(e.to_string()));
                }
                Err(e) => return Err(cannot_open(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| backend(e.to_string()))?;
        // A page cache (8 MB, from the default 2 MB) that holds a pending batch of some
        // thousands of events (ten thousand table rows are about 4 MB of overflow
        // pages): SQLite reads such a row whole whenever a key lookup compares against
        // it, and with the default each of those reads went back to the file page by
        // page. A setting of the connection, so it applies to new and existing files
        // alike; pages are only taken as they are used.
        conn.pragma_update(None, "cache_size", -8192).map_err(|e| backend(e.to_string()))?;
        // Checkpoints every 64 MB of log instead of SQLite's 4 MB: a pending batch is
        // written to pages its predecessor freed, so a longer log holds the same pages
        // several times and a checkpoint copies each once.
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(|e| backend(e.to_string()))?;
        // A new file is brought to the newest version silently; one an earlier release
        // wrote is worth a line.
        if let Some(done) = migrate(&mut conn, path, upgrades).map_err(backend)?.filter(|d| d.from > 0) {
            let backup = done.backup.as_ref().map(|p| p.display().to_string());
            tracing::warn!(
                from = done.from,
                to = done.to,
                rows = done.rows,
                backup = backup.as_deref().unwrap_or("-"),
                "Upgraded the state to this release's format; the copy taken before is what the earlier release reads."
            );
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            identity,
            lock: Arc::default(),
        })
    }

    /// Takes the lock file beside the database (`<file>.lock`, an `flock` holding this
    /// process's id), waiting [`LOCK_WAIT`] at most. Blocking: call it off the runtime.
    fn lock_file(path: &Path) -> Result<File, StoreError> {
        let lock = lock_path(path);
        let failed = |message: String| StoreError::Backend { location: path.display().to_string(), message };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&lock)
            .map_err(|e| failed(format!("cannot open the lock file {}: {e}", lock.display())))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(failed(format!(
                        "in use by another highwater daemon (pid {}, lock file {}): one daemon per \
                         SQLite file. Stop that one first, or give this one its own state.path",
                        holder(&mut file),
                        lock.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(failed(format!("cannot lock {}: {e}", lock.display())));
                }
            }
        }
        // The pid is for people (and the message above); the lock is the flock, which
        // the kernel drops when this process ends however it ends.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        written.map_err(|e| failed(format!("cannot write the lock file {}: {e}", lock.display())))?;
        Ok(file)
    }

    /// The pid of the daemon holding the database at `path`, if one does (for the
    /// `state` commands that write, which go on beside it). Takes the lock for an
    /// instant when it is free; a daemon starting meanwhile waits for it.
    pub fn held_by(path: &Path) -> Option<String> {
        let mut file = std::fs::OpenOptions::new().read(true).open(lock_path(path)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(holder(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let location = self.path.display().to_string();
        let joined = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-written transaction
            // (rusqlite rolls back on drop), so a poisoned lock is still usable.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(StoreError::Backend { location, message: format!("store task failed: {e}") }),
        }
    }

    /// Runs a read with the connection: right here when the connection is free, on
    /// the blocking pool (as [`Self::with_conn`]) when another call holds it. A lookup
    /// by primary key is served from the page cache in microseconds, far less than
    /// handing it to a pool thread and back; an idle daemon does two per poll, and
    /// with a thousand watchers those hand-offs were most of its CPU time
    /// (scripts/bench-idle.sh). Writes, which may sync to disk, always go to the pool.
    async fn read_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Ok(mut guard) = self.conn.try_lock() {
            return f(&mut guard);
        }
        self.with_conn(f).await
    }
}

/// What [`migrate`] did to a file of an earlier version.
struct Migrated {
    from: i64,
    to: i64,
    /// Rows rewritten.
    rows: usize,
    /// The copy taken before (None: the file held no row).
    backup: Option<PathBuf>,
}

/// Brings the file to the newest version, refusing one from a newer release. None when
/// it was up to date.
///
/// Safe to race: two processes opening a new file at once (a daemon and a `state`
/// command, two daemons) must not both create the table. The version is read again
/// inside a write transaction (IMMEDIATE: the write lock first), and only the one that
/// finds it still behind does the work; the other waits (the busy timeout) and then
/// finds nothing to do. Every step runs in that one transaction: a version is all
/// there or not at all.
fn migrate(conn: &mut Connection, path: &Path, upgrades: &[Upgrade]) -> Result<Option<Migrated>, String> {
    let known = MIGRATIONS.len() as i64;
    let version_of = |conn: &Connection| -> Result<i64, String> {
        let current: i64 =
            conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(|e| e.to_string())?;
        if current > known {
            return Err(format!(
                "state version {current} is newer than this highwater knows ({known}); upgrade highwater"
            ));
        }
        Ok(current)
    };
    // Up to date, the common case, takes no write lock: a read-only command must be
    // able to read a store it cannot write.
    if version_of(conn)? == known {
        return Ok(None);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
    let current = version_of(&tx)?;
    if current == known {
        return Ok(None);
    }
    let rows: i64 = if current == 0 {
        0
    } else {
        tx.query_row("SELECT count(*) FROM process_state", [], |r| r.get(0)).map_err(|e| e.to_string())?
    };
    let mut backup = None;
    if rows > 0 {
        let missing = RECORD_VERSIONS
            .iter()
            .find(|v| i64::from(**v) > current && !upgrades.iter().any(|u| u.to == **v));
        if let Some(version) = missing {
            return Err(format!("the state needs the upgrade of its records to version {version}"));
        }
        let name = path.file_name().map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let to = path.with_file_name(format!("{name}.v{current}.{stamp}.bak"));
        // Taken while this transaction holds the write lock: the copy is the file as
        // this version left it, and a second process opening it meanwhile waits instead
        // of copying too. Through a second connection, a reader beside the writer (WAL):
        // SQLite refuses to back up from the connection that is writing.
        let copy = || -> Result<(), rusqlite::Error> {
            let reader = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            reader.busy_timeout(BUSY_TIMEOUT)?;
            reader.backup(rusqlite::MAIN_DB, &to, None::<fn(rusqlite::backup::Progress)>)
        };
        copy().map_err(|e| format!("cannot copy the state to {} before upgrading it: {e}", to.display()))?;
        backup = Some(to);
    }
    let mut rewritten = 0;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        tx.execute_batch(sql).map_err(|e| format!("migration {version} failed: {e}"))?;
        if let Some(upgrade) = upgrades.iter().find(|u| u.to == version) {
            rewritten +=
                rewrite_rows(&tx, upgrade).map_err(|e| format!("migration {version} failed: {e}"))?;
        }
        tx.pragma_update(None, "user_version", i64::from(version)).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(Some(Migrated { from: current, to: known, rows: rewritten, backup }))
}

/// Rewrites, in `tx`, every row `upgrade` has a new value for. Returns how many.
fn rewrite_rows(tx: &rusqlite::Transaction<'_>, upgrade: &Upgrade) -> Result<usize, String> {
    let mut changed = Vec::new();
    {
        let mut stmt = tx
            .prepare("SELECT namespace, name, key, value, version, updated_at FROM process_state")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .map_err(|e| e.to_string())?;
        for row in rows {
            let (a, b, c, d, e, f): RawRow = row.map_err(|e| e.to_string())?;
            let record = to_record(a, b, c, d, e, f).map_err(|e| e.to_string())?;
            if let Some(value) = (upgrade.rewrite)(&record) {
                changed.push((record.namespace, record.name, record.key, value.into_string()));
            }
        }
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for (namespace, name, key, value) in &changed {
        tx.execute(
            "UPDATE process_state SET value = ?4, version = version + 1, updated_at = ?5
             WHERE namespace = ?1 AND name = ?2 AND key = ?3",
            params![namespace, name, key, value, now],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(changed.len())
}

/// Turns a row into a [`Record`]. The value is passed on as the text it was written
/// as; only `updated_at` is read here.
fn to_record(
    namespace: String,
    name: String,
    key: String,
    value: String,
    version: i64,
    updated_at: String,
) -> Result<Record, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        namespace: namespace.clone(),
        name: name.clone(),
        key: key.clone(),
        message,
    };
    let value = Json::from_trusted(value);
    let updated_at = DateTime::parse_from_rfc3339(&updated_at)
        .map_err(|e| corrupt(format!("updated_at is not a timestamp: {e}")))?
        .with_timezone(&Utc);
    Ok(Record { namespace, name, key, value, version, updated_at })
}

type RawRow = (String, String, String, String, i64, String);

fn db_error(location: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Backend { location: location.to_string(), message: e.to_string() }
}

#[async_trait]
impl Store for SqliteStore {
    async fn claim(&self) -> Result<(), StoreError> {
        if self.identity.is_none() {
            return Ok(());
        }
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || Self::lock_file(&path)).await.map_err(|e| {
            StoreError::Backend {
                location: self.path.display().to_string(),
                message: format!("lock task failed: {e}"),
            }
        })??;
        *self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(file);
        Ok(())
    }

    async fn check(&self) -> Result<(), StoreError> {
        same_file(&self.path, self.identity)
    }

    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Option<Record>, StoreError> {
        let (namespace, name, key) = (namespace.to_string(), name.to_string(), key.to_string());
        let location = self.path.display().to_string();
        self.read_conn(move |conn| {
            // Cached: the loop runs this statement twice per poll.
            let row: Option<RawRow> = conn
                .prepare_cached(
                    "SELECT namespace, name, key, value, version, updated_at FROM process_state
                     WHERE namespace = ?1 AND name = ?2 AND key = ?3",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![namespace, name, key], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })
                    .optional()
                })
                .map_err(db_error(&location))?;
            row.map(|(a, b, c, d, e, f)| to_record(a, b, c, d, e, f)).transpose()
        })
        .await
    }

    async fn version(&self, namespace: &str, name: &str, key: &str) -> Result<Option<i64>, StoreError> {
        let (namespace, name, key) = (namespace.to_string(), name.to_string(), key.to_string());
        let location = self.path.display().to_string();
        self.read_conn(move |conn| {
            // Cached: the loop runs it once per poll.
            version_of(conn, &namespace, &name, &key).map_err(db_error(&location))
        })
        .await
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        let (namespace, name) = (namespace.map(str::to_string), name.map(str::to_string));
        let (mode, from, to) = key_range(keys);
        let location = self.path.display().to_string();
        self.with_conn(move |conn| {
            let sql = format!(
                "SELECT namespace, name, key, value, version, updated_at FROM process_state
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR name = ?2) AND {}
                 ORDER BY namespace, name, key",
                KEY_CONDITION[mode]
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_error(&location))?;
            let rows = stmt
                .query_map(params![namespace, name, from, to], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .map_err(db_error(&location))?;
            let mut out = Vec::new();
            for row in rows {
                let (a, b, c, d, e, f): RawRow = row.map_err(db_error(&location))?;
                out.push(to_record(a, b, c, d, e, f)?);
            }
            Ok(out)
        })
        .await
    }

    async fn count(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<BTreeMap<(String, String), u64>, StoreError> {
        let (namespace, name) = (namespace.map(str::to_string), name.map(str::to_string));
        let (mode, from, to) = key_range(keys);
        let location = self.path.display().to_string();
        self.with_conn(move |conn| {
            let sql = format!(
                "SELECT namespace, name, count(*) FROM process_state
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR name = ?2) AND {}
                 GROUP BY namespace, name",
                KEY_CONDITION[mode]
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_error(&location))?;
            let rows = stmt
                .query_map(params![namespace, name, from, to], |r| {
                    Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), r.get::<_, i64>(2)?))
                })
                .map_err(db_error(&location))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (watcher, n) = row.map_err(db_error(&location))?;
                out.insert(watcher, u64::try_from(n).unwrap_or(0));
            }
            Ok(out)
        })
        .await
    }

    async fn backup(&self, to: &Path) -> Result<(), StoreError> {
        let location = self.path.display().to_string();
        let to = to.to_path_buf();
        self.with_conn(move |conn| {
            let failed = |message: String| StoreError::Backend { location: location.clone(), message };
            if to.exists() {
                return Err(failed(format!("cannot back up to {}: the file exists", to.display())));
            }
            // The online backup copies a consistent snapshot page by page, WAL included;
            // a copy of the files of a live WAL database may not be one.
            conn.backup(rusqlite::MAIN_DB, &to, None::<fn(rusqlite::backup::Progress)>)
                .map_err(|e| failed(format!("cannot back up to {}: {e}", to.display())))
        })
        .await
    }

    async fn rename(&self, from: (&str, &str), to: (&str, &str)) -> Result<u64, StoreError> {
        let (from_ns, from_name) = (from.0.to_string(), from.1.to_string());
        let (to_ns, to_name) = (to.0.to_string(), to.1.to_string());
        let location = self.path.display().to_string();
        let (path, identity) = (self.path.clone(), self.identity);
        self.with_conn(move |conn| {
            same_file(&path, identity)?;
            let err = db_error(&location);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
            let taken: i64 = tx
                .query_row(
                    "SELECT count(*) FROM process_state WHERE namespace = ?1 AND name = ?2",
                    params![to_ns, to_name],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            if taken > 0 {
                return Err(StoreError::rename_target_taken(to_ns, to_name, taken));
            }
            let moved = tx
                .execute(
                    "UPDATE process_state SET namespace = ?3, name = ?4 WHERE namespace = ?1 AND name = ?2",
                    params![from_ns, from_name, to_ns, to_name],
                )
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
            Ok(moved as u64)
        })
        .await
    }

    async fn write_fenced(
        &self,
        namespace: &str,
        name: &str,
        fence: Option<&Fence>,
        ops: Vec<Op>,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let location = self.path.display().to_string();
        if fence.is_some() {
            // One daemon holds a SQLite store (its lock file): there are no leases.
            return Err(StoreError::Backend { location, message: "a SQLite store has no leases".into() });
        }
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let (path, identity) = (self.path.clone(), self.identity);
        self.with_conn(move |conn| {
            // Looked at before every write: one that went to a deleted file would be
            // acknowledged and lost.
            same_file(&path, identity)?;
            let err = db_error(&location);
            // IMMEDIATE takes the write lock up front, so the version checks below and
            // the writes that follow them see the same database.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let mut written = Vec::with_capacity(ops.len());
            let mut ops = ops.into_iter().peekable();
            while let Some(op) = ops.next() {
                // A write that expects anything needs no look first: a commit that puts
                // a hundred remembered members does a hundred writes, not two hundred
                // statements.
                // A delete checks the version in its own condition (below): looking
                // first would read the row twice, and a pending batch is megabytes of
                // overflow pages that SQLite reads whole to compare keys.
                let checked_by_delete = op.action == Action::Delete;
                if (op.expect != Expect::Any || op.action == Action::Check) && !checked_by_delete {
                    let current = version_of(&tx, &namespace, &name, &op.key).map_err(&err)?;
                    check_expectation(&namespace, &name, &op, current)?;
                }
                match op.action {
                    Action::Check => written.push(None),
                    Action::Put(value) => {
                        let text = value.into_string();
                        let version: i64 = tx
                            .prepare_cached(PUT)
                            .and_then(|mut stmt| {
                                // SQLite copies a bound text, then copies it again into the
                                // row it builds: the value (a pending batch is megabytes) is
                                // dropped once bound, not held through the step.
                                stmt.raw_bind_parameter(1, &namespace)?;
                                stmt.raw_bind_parameter(2, &name)?;
                                stmt.raw_bind_parameter(3, &op.key)?;
                                stmt.raw_bind_parameter(4, &text)?;
                                stmt.raw_bind_parameter(5, &now)?;
                                drop(text);
                                let mut rows = stmt.raw_query();
                                match rows.next()? {
                                    Some(row) => row.get(0),
                                    None => Err(rusqlite::Error::QueryReturnedNoRows),
                                }
                            })
                            .map_err(&err)?;
                        written.push(Some(version));
                    }
                    Action::PutUntracked(value) => {
                        // The same write without `RETURNING`: SQLite buffers a returned row
                        // in a table of its own, which doubled the cost of each of a
                        // commit's thousands of members. A run of them (a commit's
                        // members) goes in [`PUT_ROWS`] rows to a statement.
                        let mut run = vec![(op.key, value)];
                        while run.len() < PUT_ROWS
                            && let Some(Op { key, action: Action::PutUntracked(value), .. }) =
                                ops.next_if(|op| {
                                    op.expect == Expect::Any && matches!(op.action, Action::PutUntracked(_))
                                })
                        {
                            run.push((key, value));
                        }
                        put_untracked(&tx, &namespace, &name, &now, &run).map_err(&err)?;
                        written.extend(run.iter().map(|_| None));
                    }
                    // Nothing to check: the plain delete (a commit prunes members by the
                    // thousand), without `RETURNING` for the same reason as above.
                    Action::Delete if op.expect == Expect::Any => {
                        tx.prepare_cached(
                            "DELETE FROM process_state WHERE namespace = ?1 AND name = ?2 AND key = ?3",
                        )
                        .and_then(|mut stmt| stmt.execute(params![namespace, name, op.key]))
                        .map_err(&err)?;
                        written.push(None);
                    }
                    // The version expected is part of the delete's condition, so one
                    // statement both checks and deletes. Not `RETURNING version`: SQLite
                    // then reads every column of the old row, and a pending batch's value
                    // is megabytes (6 of 17 ms for an 8.8 MB row).
                    Action::Delete => {
                        let deleted = match op.expect {
                            Expect::Version(version) => tx
                                .prepare_cached(
                                    "DELETE FROM process_state
                                     WHERE namespace = ?1 AND name = ?2 AND key = ?3 AND version = ?4",
                                )
                                .and_then(|mut stmt| stmt.execute(params![namespace, name, op.key, version]))
                                .map_err(&err)?,
                            // Expecting no row, there is nothing to delete; the check
                            // below says whether that held.
                            _ => 0,
                        };
                        if deleted == 0 {
                            let current = version_of(&tx, &namespace, &name, &op.key).map_err(&err)?;
                            // A failed expectation returns before the commit: dropping
                            // the transaction rolls back what it wrote.
                            check_expectation(&namespace, &name, &op, current)?;
                        }
                        written.push(None);
                    }
                    Action::DeleteUnder => {
                        if op.expect != Expect::Any {
                            return Err(StoreError::Backend {
                                location: location.clone(),
                                message: format!("a range delete of {:?} must expect anything", op.key),
                            });
                        }
                        let end = prefix_end(&op.key);
                        tx.prepare_cached(
                            "DELETE FROM process_state WHERE namespace = ?1 AND name = ?2
                             AND key >= ?3 AND (?4 IS NULL OR key < ?4)",
                        )
                        .and_then(|mut stmt| stmt.execute(params![namespace, name, op.key, end]))
                        .map_err(&err)?;
                        written.push(None);
                    }
                }
            }
            tx.commit().map_err(&err)?;
            Ok(written)
        })
        .await
    }
}

/// The key conditions of a listing, by the mode [`key_range`] gives: keys in
/// `[?3, ?4)`; keys outside it (`?4` NULL: no upper end).
const KEY_CONDITION: [&str; 2] =
    ["key >= ?3 AND (?4 IS NULL OR key < ?4)", "(key < ?3 OR (?4 IS NOT NULL AND key >= ?4))"];

/// A listing's key condition ([`KEY_CONDITION`] index) and its bounds.
fn key_range(keys: Keys<'_>) -> (usize, Option<String>, Option<String>) {
    match keys {
        Keys::Under(prefix) => (0, Some(prefix.to_string()), prefix_end(prefix)),
        Keys::NotUnder(prefix) => (1, Some(prefix.to_string()), prefix_end(prefix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The stored text of a JSON value.
    fn j(value: serde_json::Value) -> Json {
        Json::encode(&value).expect("encode")
    }

    /// The behaviour every store shows (`suite.rs`), on a SQLite file.
    #[tokio::test]
    async fn the_shared_suite() {
        let (_dir, s) = store();
        crate::state::suite::run(&s).await;
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("sub/state.db")).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn the_log_stays_bounded_under_a_stream_of_large_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = SqliteStore::open(&path).unwrap();
        let row = Json::encode(&"x".repeat(4 << 20)).unwrap();
        let wal = dir.path().join("state.db-wal");
        let mut largest = 0;
        // What a stream of pending batches does: a large row written, then deleted.
        for _ in 0..25 {
            s.write("n", "w", vec![Op::put("pending", row.clone(), Expect::Any)]).await.unwrap();
            s.write("n", "w", vec![Op::delete("pending", Expect::Any)]).await.unwrap();
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // The checkpoint limit and one row past it.
        let bound = (CHECKPOINT_PAGES as u64 + 1100) * (4096 + 24);
        assert!(largest <= bound, "the log grew to {largest} bytes (bound {bound})");
        assert!(largest > bound / 2, "checkpointed before the limit: the log reached only {largest} bytes");
        assert!(s.get("n", "w", "pending").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = SqliteStore::open(&path).unwrap();
        first.write("n", "w", vec![Op::put("k", j(json!("v")), Expect::Any)]).await.unwrap();
        drop(first);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get("n", "w", "k").await.unwrap().unwrap().value, j(json!("v")));
    }

    /// A rewrite for the tests: the row `a` becomes 10.
    fn ten(record: &Record) -> Option<Json> {
        (record.key == "a").then(|| Json::parse("10").unwrap())
    }

    #[tokio::test]
    async fn an_earlier_version_is_copied_then_upgraded_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A store as version 1 left it.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO process_state VALUES ('ns', 'w', 'a', '1', 1, '2026-01-01T00:00:00Z'),
                                                  ('ns', 'w', 'b', '2', 1, '2026-01-01T00:00:00Z')",
                [],
            )
            .unwrap();
        }
        let refused = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(refused.contains("needs the upgrade of its records to version 2"), "{refused}");
        let s = SqliteStore::open_upgrading(&path, &[Upgrade { to: 2, rewrite: ten }]).unwrap();
        let a = s.get("ns", "w", "a").await.unwrap().unwrap();
        assert_eq!((a.value, a.version), (j(json!(10)), 2));
        assert_eq!(s.get("ns", "w", "b").await.unwrap().unwrap().version, 1);
        // The copy is the file as version 1 left it.
        let copies: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("state.db.v1."))
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        let copy = Connection::open(&copies[0]).unwrap();
        let version: i64 = copy.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        let value: String =
            copy.query_row("SELECT value FROM process_state WHERE key = 'a'", [], |r| r.get(0)).unwrap();
        assert_eq!((version, value.as_str()), (1, "1"));
        drop(s);
        // Up to date: nothing more happens.
        SqliteStore::open_upgrading(&path, &[Upgrade { to: 2, rewrite: ten }]).unwrap();
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.iter().filter(|f| f.ends_with(".bak")).count(), 1, "{files:?}");
    }

    #[tokio::test]
    async fn a_backup_is_a_consistent_copy_and_never_overwrites() {
        let (dir, s) = store();
        s.write("ns", "w", vec![Op::put("a", j(json!(1)), Expect::Any)]).await.unwrap();
        let backup = dir.path().join("copy.db");
        s.backup(&backup).await.unwrap();
        assert!(s.backup(&backup).await.is_err(), "an existing file is not overwritten");
        s.write("ns", "w", vec![Op::put("a", j(json!(2)), Expect::Any)]).await.unwrap();
        let copy = SqliteStore::open(&backup).unwrap();
        assert_eq!(copy.get("ns", "w", "a").await.unwrap().unwrap().value, j(json!(1)));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("state version 99 is newer"), "{err}");
    }
}
