//! Connections shared by the watchers that read the same server: one small pool per set
//! of connection settings, so that a hundred watchers of one database need a handful of
//! connections, not a hundred.
//!
//! A watcher takes a connection for one poll (a few queries, or the rows of one batch)
//! and gives it back. Each connection keeps what is per session: the server's time
//! zone and `system_identifier`, the timeouts last set (set again only when the next
//! watcher wants others), and the statements each watcher's plan prepared on it, by
//! plan (a plan read again after a failure prepares afresh; the least used plans'
//! statements are closed beyond [`PLANS_PER_CONNECTION`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Statement};

use super::connect::{self, ConnectSettings};
use crate::source::SourceError;

/// Plans whose statements one connection keeps; the least recently used beyond it are
/// closed (a watcher whose plan was closed prepares it again on first use).
const PLANS_PER_CONNECTION: usize = 256;

/// The plan id of statements every watcher shares (the history query).
pub(super) const SHARED: u64 = 0;

/// Gives each plan an id of its own (0 is [`SHARED`]).
pub(super) fn next_plan_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The pools of the process, by connection settings; a pool lives as long as a source
/// holds it.
fn registry() -> &'static Mutex<HashMap<String, Weak<Pool>>> {
    static POOLS: OnceLock<Mutex<HashMap<String, Weak<Pool>>>> = OnceLock::new();
    POOLS.get_or_init(Mutex::default)
}

/// What decides which watchers share a pool: their connection settings as the config
/// gives them, hashed (the connection string may hold a password), plus the `PG*`
/// variables that fill in what it leaves out (the same for all, in one process).
fn key(settings: &ConnectSettings) -> String {
    let mut hasher = Sha256::new();
    let mut part = |text: &str| {
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    };
    part(settings.connection.as_deref().unwrap_or(""));
    part(&settings.password_env.as_ref().map(|e| format!("{e:?}")).unwrap_or_default());
    part(&settings.password_file.as_ref().map(|f| format!("{f:?}")).unwrap_or_default());
    part(&format!("{:?}", settings.sslmode));
    part(&format!("{:?}", settings.sslrootcert));
    hex::encode(&hasher.finalize()[..16])
}

/// The pool for `settings`, made on first use. `max` is the most connections this
/// watcher wants open at once; a pool allows the largest number its watchers ask for.
pub(super) fn join(settings: &ConnectSettings, max: usize) -> Arc<Pool> {
    let key = key(settings);
    let mut pools = registry().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pools.retain(|_, pool| pool.strong_count() > 0);
    if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
        pool.allow(max);
        return pool;
    }
    let pool = Arc::new(Pool {
        settings: settings.clone(),
        permits: Arc::new(Semaphore::new(max.max(1))),
        limit: AtomicUsize::new(max.max(1)),
        idle: Mutex::new(Vec::new()),
        opened: AtomicU64::new(0),
    });
    pools.insert(key, Arc::downgrade(&pool));
    pool
}

/// The connections of one set of settings.
pub(super) struct Pool {
    /// How to connect (the password is read at each connect, so it can rotate).
    settings: ConnectSettings,
    /// One permit per connection that may be open and in use.
    permits: Arc<Semaphore>,
    /// The number of permits: the largest `max_connections` of the pool's watchers.
    limit: AtomicUsize,
    /// Connections not in use, the most recently used last.
    idle: Mutex<Vec<Conn>>,
    /// Connections opened since the pool was made, for the log.
    opened: AtomicU64,
}

impl Pool {
    /// Raises the pool's limit to `max` if it is lower.
    fn allow(&self, max: usize) {
        let before = self.limit.fetch_max(max, Ordering::Relaxed);
        if max > before {
            self.permits.add_permits(max - before);
        }
    }

    /// A connection for one poll, with the session's timeouts set to `timeouts`: an idle
    /// one, or a new one when none is idle and the limit allows; else waits for one to
    /// be given back.
    pub(super) async fn get(self: &Arc<Self>, timeouts: Timeouts) -> Result<Lease, SourceError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| SourceError::transient("the connection pool is closed"))?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
            match next {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let mut lease = Lease { conn: Some(conn), pool: Arc::clone(self), _permit: permit, keep: true };
        lease.set_timeouts(timeouts).await?;
        Ok(lease)
    }

    /// Opens a connection and sets up its session.
    async fn open(&self) -> Result<Conn, SourceError> {
        let target = connect::resolve(&self.settings)?;
        let client = connect::connect(&target).await?;
        let place = target.describe();
        let failed = |e: tokio_postgres::Error| {
            let class = connect::classify(&e);
            SourceError {
                class,
                message: format!("{place}: {}", connect::message(&e)),
                source: Some(Box::new(e)),
            }
        };
        // The zone a session of this server gets unless it sets its own: the one writers
        // of a `timestamp without time zone` most likely wrote their local times in.
        let zone: String =
            client.query_one("SELECT current_setting('TimeZone')", &[]).await.map_err(failed)?.get(0);
        // A commit of this session waits for the local flush, whatever writers use (see
        // `history::make_durable`).
        client
            .batch_execute(
                "SET synchronous_commit = local; SET default_transaction_read_only = on; \
                 SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3",
            )
            .await
            .map_err(failed)?;
        let opened = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            server = %place,
            time_zone = %zone,
            opened,
            pool_size = self.limit.load(Ordering::Relaxed),
            "Connected to Postgres."
        );
        Ok(Conn { client, zone, system: None, timeouts: None, plans: HashMap::new(), uses: 0 })
    }
}

/// The session timeouts a watcher wants (`statement_timeout`, `lock_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    pub statement: Duration,
    pub lock: Duration,
}

/// One pooled connection and what its session holds.
pub(super) struct Conn {
    pub client: Client,
    /// The server's `TimeZone` before the session set its own.
    pub zone: String,
    /// The cluster's `system_identifier`, once read.
    system: Option<String>,
    /// The timeouts last set on the session.
    timeouts: Option<Timeouts>,
    /// Statements prepared on this session, by plan id and SQL text, with when the plan
    /// was last used (a count of this connection's uses).
    plans: HashMap<u64, (u64, HashMap<String, Statement>)>,
    /// Uses of this connection: the clock of `plans`.
    uses: u64,
}

/// A connection taken from a pool for one poll; given back when dropped, unless
/// discarded.
pub(super) struct Lease {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    /// False once something went wrong on this connection: it is closed rather than
    /// given back (it may be inside a failed transaction, or its statements stale).
    keep: bool,
}

impl Lease {
    fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        self.conn.as_mut().ok_or_else(|| SourceError::transient("connection already given back"))
    }

    /// The connection's client.
    pub(super) fn client(&self) -> &Client {
        match &self.conn {
            Some(conn) => &conn.client,
            // Only `Drop` takes the connection.
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }

    /// The server's time zone (see [`Conn::zone`]).
    pub(super) fn zone(&self) -> &str {
        self.conn.as_ref().map_or("UTC", |c| c.zone.as_str())
    }

    /// Closes the connection instead of giving it back.
    pub(super) fn discard(&mut self) {
        self.keep = false;
    }

    async fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<(), SourceError> {
        let conn = self.conn()?;
        if conn.timeouts == Some(timeouts) {
            return Ok(());
        }
        // Milliseconds are integers written here, never text from the config.
        let sql = format!(
            "SET statement_timeout = {}; SET lock_timeout = {}",
            timeouts.statement.as_millis(),
            timeouts.lock.as_millis()
        );
        if let Err(e) = conn.client.batch_execute(&sql).await {
            self.discard();
            return Err(SourceError::transient(format!(
                "cannot set the session's timeouts: {}",
                connect::message(&e)
            ))
            .with_source(e));
        }
        conn.timeouts = Some(timeouts);
        Ok(())
    }

    /// The cluster's `system_identifier`, read once per connection.
    pub(super) async fn system(&mut self, table: &str) -> Result<String, SourceError> {
        let conn = self.conn()?;
        if let Some(system) = &conn.system {
            return Ok(system.clone());
        }
        let system = super::history::system(&conn.client, table).await?;
        conn.system = Some(system.clone());
        Ok(system)
    }

    /// The statement for `sql` of plan `plan`, prepared on this connection at its first
    /// use there.
    pub(super) async fn statement(
        &mut self,
        plan: u64,
        sql: &str,
        table: &str,
    ) -> Result<Statement, SourceError> {
        let conn = self.conn()?;
        conn.uses += 1;
        let now = conn.uses;
        if let Some((used, statements)) = conn.plans.get_mut(&plan) {
            *used = now;
            if let Some(statement) = statements.get(sql) {
                return Ok(statement.clone());
            }
        }
        let statement = conn.client.prepare(sql).await.map_err(|e| super::query_error(table, e))?;
        tracing::debug!(sql, "Prepared query.");
        if plan != SHARED && !conn.plans.contains_key(&plan) && conn.plans.len() >= PLANS_PER_CONNECTION {
            let oldest =
                conn.plans.iter().filter(|(id, _)| **id != SHARED).min_by_key(|(_, (used, _))| *used);
            if let Some(oldest) = oldest.map(|(id, _)| *id) {
                // Dropping the statements closes them on the server.
                conn.plans.remove(&oldest);
            }
        }
        let entry = conn.plans.entry(plan).or_insert_with(|| (now, HashMap::new()));
        entry.1.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Forgets the statements of `plan` on this connection (the plan is being dropped).
    pub(super) fn forget(&mut self, plan: u64) {
        if let Some(conn) = self.conn.as_mut() {
            conn.plans.remove(&plan);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep && !conn.client.is_closed() {
            self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(conn);
        }
        // The permit goes back with `_permit`, after the connection is idle again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(connection: &str) -> ConnectSettings {
        ConnectSettings {
            connection: Some(connection.into()),
            password_env: None,
            password_file: None,
            sslmode: None,
            sslrootcert: None,
        }
    }

    #[test]
    fn watchers_with_the_same_settings_share_a_pool_of_the_largest_size_asked() {
        let a = join(&settings("host=pool-test-a dbname=x"), 2);
        let b = join(&settings("host=pool-test-a dbname=x"), 5);
        let c = join(&settings("host=pool-test-b dbname=x"), 3);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.permits.available_permits(), 5);
        join(&settings("host=pool-test-a dbname=x"), 1);
        assert_eq!(a.permits.available_permits(), 5, "never lowered while in use");
        drop((a, b));
        let again = join(&settings("host=pool-test-a dbname=x"), 1);
        assert_eq!(again.permits.available_permits(), 1, "a pool no watcher holds is gone");
        assert!(!key(&settings("postgres://u:secret@h/db")).contains("secret"));
    }
}
