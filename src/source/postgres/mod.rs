//! The `postgres` source: new rows of a table, safe against transactions that commit
//! out of order.
//!
//! Two modes (README, "postgres"):
//!
//! - `xid` (default): the table has a column filled by `DEFAULT pg_current_xact_id()`.
//!   The watermark is the snapshot (`pg_current_snapshot()`) of the previous poll; a poll
//!   announces the rows whose writing transaction is visible in the current snapshot and
//!   was not in the previous one. That set is exact whatever order transactions commit
//!   in and however long they stay open, and it is an index range scan on the column.
//!   A snapshot pair with more rows than one batch is walked by keyset on
//!   (xid, cursor…), so the watermark then also holds the pair and the position in it.
//! - `cursor`: plain keyset pagination on the cursor columns, with an optional grace
//!   delay; for tables that cannot get the column, with the limits the README states.

pub mod connect;
pub mod values;

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use self::connect::{ConnectSettings, TlsMode};
use self::values::{Raw, decode, needs_text, quote_ident};
use super::{ErrorClass, Found, Polled, Source, SourceError, SourceKind};
use crate::event::{Change, Item, RowItem, RowsItem};
use crate::value::{HumanDuration, Kind};

/// `source: {type: postgres}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string (`host=db dbname=app user=reader`) or URL
    /// (`postgres://reader@db/app`). What it leaves out comes from the standard
    /// variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE,
    /// PGSSLROOTCERT, PGCONNECT_TIMEOUT). Better without a password: use
    /// `password_env` or `password_file`.
    #[serde(default)]
    pub connection: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (one line; read at every connect, so rotating it
    /// needs no restart).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `disable`, `prefer` (default), `require` or `verify-full`. Overrides the
    /// connection string and PGSSLMODE.
    #[serde(default)]
    pub sslmode: Option<TlsMode>,
    /// PEM file of the certificate authorities `verify-full` trusts (default: the
    /// system's).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// The table, `schema.table` (a bare name means `public`). Names are taken as
    /// written, case included, and always quoted.
    pub table: String,
    /// The column or columns that order the rows (`id`, or `[updated_at, id]`). Their
    /// values together must be unique; they also identify a row in its event id.
    #[serde(deserialize_with = "one_or_many")]
    pub cursor: Vec<String>,
    /// `xid` (default): commit-order safe, needs `xid_column`. `cursor`: plain keyset
    /// on the cursor columns (see README for what it can miss).
    #[serde(default)]
    pub mode: Mode,
    /// The `xid8` column filled by `DEFAULT pg_current_xact_id()`, indexed (mode `xid`).
    #[serde(default)]
    pub xid_column: Option<String>,
    /// Mode `cursor` only: announce a row only once its first cursor column (a
    /// timestamp) is this much older than the server's clock, so that transactions
    /// committing up to this late are not missed.
    #[serde(default)]
    pub grace: Option<HumanDuration>,
    /// The columns identifying a row (default: the primary key, else the cursor).
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub key: Option<Vec<String>>,
    /// More columns to carry into each event (default: none; key and cursor values are
    /// always there).
    #[serde(default)]
    pub columns: Vec<String>,
    /// An SQL condition rows must meet (`status = 'ready'`). It is SQL, taken as
    /// written: the only part of the config that is not quoted. Queries run read-only.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// `row` (default): one event per row. `batch`: one event per poll, listing up to
    /// `batch_size` rows.
    #[serde(default)]
    pub emit: Emit,
}

/// How new rows are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// By writing transaction, using snapshots: exact.
    #[default]
    Xid,
    /// By cursor value alone.
    Cursor,
}

/// One event per row or per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// One event per row.
    #[default]
    Row,
    /// One event per poll batch.
    Batch,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
        OneOrMany::Many(v) => v,
    })
}

fn one_or_many_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(d).map(Some)
}

impl PostgresConfig {
    /// `(schema, table)`.
    fn names(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((schema, table)) => (schema.to_string(), table.to_string()),
            None => ("public".to_string(), self.table.clone()),
        }
    }

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

impl SourceKind for PostgresConfig {
    /// No connection string: it may hold a password.
    fn describe(&self) -> String {
        let (schema, table) = self.names();
        let mode = match self.mode {
            Mode::Xid => format!("xid column {}", self.xid_column.as_deref().unwrap_or("?")),
            Mode::Cursor => "cursor".into(),
        };
        format!("postgres {schema}.{table} ({mode}; cursor {})", self.cursor.join(", "))
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = connect::validate(&self.settings());
        let (schema, table) = self.names();
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            errors.push(("table".into(), "write `schema.table` or `table`".into()));
        }
        if self.cursor.is_empty() || self.cursor.iter().any(String::is_empty) {
            errors.push(("cursor".into(), "name at least one column".into()));
        }
        if self.key.as_ref().is_some_and(|k| k.is_empty() || k.iter().any(String::is_empty)) {
            errors.push(("key".into(), "name at least one column".into()));
        }
        match self.mode {
            Mode::Xid => {
                if self.xid_column.is_none() {
                    errors.push((
                        "xid_column".into(),
                        "mode xid needs the column filled by `DEFAULT pg_current_xact_id()` \
                         (or set `mode: cursor`; see README for what it can miss)"
                            .into(),
                    ));
                }
                if self.grace.is_some() {
                    errors.push(("grace".into(), "only for `mode: cursor`".into()));
                }
            }
            Mode::Cursor => {
                if self.xid_column.is_some() {
                    errors.push(("xid_column".into(), "only for `mode: xid`".into()));
                }
            }
        }
        if self.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            errors.push(("where".into(), "must not be empty".into()));
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(Postgres::new(self.clone()))
    }
}

/// The stored watermark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum Mark {
    /// Mode `xid`.
    Xid {
        /// Snapshot whose visible transactions are all announced (None: nothing yet).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Snapshot being worked towards, while a pair spans several batches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Last row announced within the pair: its xid and cursor values as text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Vec<String>>,
    },
    /// Mode `cursor`: the last cursor values announced, as text.
    Cursor {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Vec<String>>,
    },
}

/// The parts of `xmin:xmax:xip,…` that tell whether anything finished in between.
fn snapshot_progress(text: &str) -> Option<(&str, &str)> {
    let mut parts = text.splitn(3, ':');
    let _xmin = parts.next()?;
    Some((parts.next()?, parts.next()?))
}

/// What the catalog said, and the SQL built from it. Rebuilt at every connect.
struct Plan {
    /// `"schema"."table"`, quoted.
    from: String,
    /// `schema.table`, for events and messages.
    name: String,
    /// Columns identifying a row (primary key unless configured).
    key: Vec<String>,
    /// Columns ordering the rows.
    cursor: Vec<String>,
    /// Cursor columns the catalog allows NULL in: only these need `IS NOT NULL` and
    /// the count of skipped rows.
    nullable: Vec<String>,
    /// `format_type` of each cursor column: the cast that turns stored text back into
    /// a value of the column's type.
    cursor_types: Vec<String>,
    /// Columns decoded into the event (key ∪ cursor ∪ columns), in select order.
    values: Vec<String>,
    /// The select list: key and cursor as text, the xid as text, then `values`.
    select: String,
    /// Prepared queries by variant: (previous snapshot known, or grace set; resuming
    /// after a position: 1).
    statements: HashMap<(bool, u8), Statement>,
}

/// Where each part sits in a selected row.
impl Plan {
    fn key_text(&self, i: usize) -> usize {
        i
    }
    fn cursor_text(&self, i: usize) -> usize {
        self.key.len() + i
    }
    fn xid_text(&self) -> usize {
        self.key.len() + self.cursor.len()
    }
    fn value(&self, i: usize) -> usize {
        self.key.len() + self.cursor.len() + 1 + i
    }
}

/// A live connection and the plan built for it.
struct Conn {
    client: Client,
    plan: Plan,
    /// `SELECT pg_current_snapshot()`, prepared so that an idle poll is one round trip.
    snapshot: Statement,
}

/// The runtime `postgres` source.
pub struct Postgres {
    config: PostgresConfig,
    conn: Option<Conn>,
    /// Rows skipped because a cursor column was NULL, since start (for the log).
    skipped_null_cursor: u64,
    /// The same, not yet handed to the watcher's counter.
    skipped_untaken: u64,
}

impl Postgres {
    /// Builds the source; nothing is touched until the first poll or check.
    pub fn new(config: PostgresConfig) -> Self {
        Postgres { config, conn: None, skipped_null_cursor: 0, skipped_untaken: 0 }
    }

    /// The open connection, opening it and reading the catalog if needed.
    async fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let target = connect::resolve(&self.config.settings())?;
            let client = connect::connect(&target).await?;
            let plan = prepare(&client, &self.config).await?;
            tracing::info!(server = %target.describe(), table = %plan.name, "Connected to Postgres.");
            if self.config.mode == Mode::Cursor && !plan.nullable.is_empty() {
                self.count_null_cursors(&client, &plan).await?;
            }
            let snapshot = client
                .prepare("SELECT pg_current_snapshot()::text")
                .await
                .map_err(|e| query_error(&plan.name, e))?;
            self.conn = Some(Conn { client, plan, snapshot });
        }
        self.conn.as_mut().ok_or_else(|| SourceError::transient("no connection"))
    }

    /// Mode `cursor` cannot place a row with a NULL cursor; it is counted and reported
    /// once per connection instead.
    async fn count_null_cursors(&mut self, client: &Client, plan: &Plan) -> Result<(), SourceError> {
        let nulls = plan.nullable.iter().map(|c| format!("{} IS NULL", quote_ident(c))).collect::<Vec<_>>();
        let sql = format!(
            "SELECT count(*) FROM {} WHERE ({}){}",
            plan.from,
            nulls.join(" OR "),
            filter_sql(&self.config)
        );
        let row = client.query_one(&sql, &[]).await.map_err(|e| query_error(&plan.name, e))?;
        let n: i64 = row.try_get(0).map_err(|e| query_error(&plan.name, e))?;
        if n > 0 {
            self.skipped_null_cursor = self.skipped_null_cursor.max(n as u64);
            tracing::warn!(table = %plan.name, rows = n, "Rows with a NULL cursor column are skipped.");
        }
        Ok(())
    }

    fn skip_nulls(&mut self, table: &str, n: u64) {
        if n > 0 {
            self.skipped_null_cursor += n;
            self.skipped_untaken += n;
            tracing::warn!(
                table,
                rows = n,
                skipped_total = self.skipped_null_cursor,
                "Skipped rows with a NULL cursor column."
            );
        }
    }

    async fn poll_inner(&mut self, mark: Option<Mark>, limit: usize) -> Result<Polled, SourceError> {
        let mode = self.config.mode;
        let mark = mark.unwrap_or(match mode {
            Mode::Xid => Mark::Xid { from: None, to: None, after: None },
            Mode::Cursor => Mark::Cursor { after: None },
        });
        let grace = self.config.grace.map(|g| g.0.as_secs_f64());
        let emit = self.config.emit;
        let limit = limit.max(1);
        self.conn().await?;
        let Some(conn) = self.conn.as_ref() else { return Err(SourceError::transient("no connection")) };
        let config = &self.config;
        let plan = &conn.plan;
        let client = &conn.client;
        match mark {
            Mark::Xid { from, to, after } => {
                let mut queries = 1;
                let to = match to {
                    Some(to) => to,
                    None => {
                        let row = client
                            .query_one(&conn.snapshot, &[])
                            .await
                            .map_err(|e| query_error(&plan.name, e))?;
                        let now: String = row.try_get(0).map_err(|e| query_error(&plan.name, e))?;
                        // No transaction finished since the last poll: nothing can be
                        // new, and one query is all an idle poll costs.
                        if from.as_deref().and_then(snapshot_progress) == snapshot_progress(&now) {
                            tracing::debug!(table = %plan.name, queries, rows = 0, "Polled table.");
                            return Ok(Polled {
                                items: Vec::new(),
                                next: mark_value(&Mark::Xid { from: Some(now), to: None, after: None }),
                                more: false,
                            });
                        }
                        queries += 1;
                        now
                    }
                };
                let variant = (from.is_some(), if after.is_some() { 1 } else { 0 });
                let mut params: Vec<String> = vec![to.clone()];
                params.extend(from.iter().cloned());
                params.extend(after.iter().flatten().cloned());
                let rows = run(client, plan, variant, &params, None, limit).await?;
                let more = rows.len() >= limit;
                let last = rows.last().map(|r| position(plan, r, true)).transpose()?;
                let items = found(plan, &rows, emit)?;
                let name = plan.name.clone();
                let next = if more {
                    Mark::Xid { from: from.clone(), to: Some(to), after: last.or(after) }
                } else {
                    // The pair is done: count the rows it skipped for a NULL cursor (none
                    // can be when the catalog says the cursor columns are NOT NULL).
                    if !plan.nullable.is_empty() {
                        let nulls = count_pair_nulls(client, plan, config, &to, from.as_deref()).await?;
                        queries += 1;
                        self.skip_nulls(&name, nulls);
                    }
                    Mark::Xid { from: Some(to), to: None, after: None }
                };
                tracing::debug!(table = %name, queries, rows = rows.len(), "Polled table.");
                Ok(Polled { items, next: mark_value(&next), more })
            }
            Mark::Cursor { after } => {
                let variant = (grace.is_some(), if after.is_some() { 1 } else { 0 });
                let params: Vec<String> = after.iter().flatten().cloned().collect();
                let rows = run(client, plan, variant, &params, grace, limit).await?;
                let more = rows.len() >= limit;
                let last = rows.last().map(|r| position(plan, r, false)).transpose()?;
                let items = found(plan, &rows, emit)?;
                tracing::debug!(table = %plan.name, queries = 1, rows = rows.len(), "Polled table.");
                Ok(Polled { items, next: mark_value(&Mark::Cursor { after: last.or(after) }), more })
            }
        }
    }
}

fn mark_value(mark: &Mark) -> Value {
    serde_json::to_value(mark).unwrap_or(Value::Null)
}

fn filter_sql(config: &PostgresConfig) -> String {
    config.filter.as_ref().map_or_else(String::new, |f| format!(" AND ({f})"))
}

/// A failed query, classified, with the server's message (never a secret: the
/// connection string is not part of any query).
fn query_error(table: &str, e: tokio_postgres::Error) -> SourceError {
    let class = connect::classify(&e);
    SourceError { class, message: format!("{table}: {}", connect::message(&e)), source: Some(Box::new(e)) }
}

/// Reads the catalog, checks every configured name, builds and prepares the queries
/// (preparing also checks the `where` filter and the SELECT privilege).
async fn prepare(client: &Client, config: &PostgresConfig) -> Result<Plan, SourceError> {
    let (schema, table) = config.names();
    let name = format!("{schema}.{table}");
    let err = |e| query_error(&name, e);
    client
        .batch_execute(
            "SET default_transaction_read_only = on; SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; \
             SET extra_float_digits = 3",
        )
        .await
        .map_err(err)?;
    let found = client
        .query_opt(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[&schema, &table],
        )
        .await
        .map_err(err)?;
    let Some(found) = found else {
        return Err(SourceError::needs_attention(format!("table {name} does not exist")));
    };
    let oid: u32 = found.try_get(0).map_err(err)?;
    let can_read: bool = found.try_get(1).map_err(err)?;
    if !can_read {
        return Err(SourceError::needs_attention(format!(
            "permission denied: the user cannot SELECT from {name}"
        )));
    }
    let mut types: HashMap<String, (Option<Type>, String, bool)> = HashMap::new();
    for row in client
        .query(
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(err)?
    {
        let column: String = row.try_get(0).map_err(err)?;
        let type_oid: u32 = row.try_get(1).map_err(err)?;
        let formatted: String = row.try_get(2).map_err(err)?;
        let not_null: bool = row.try_get(3).map_err(err)?;
        types.insert(column, (Type::from_oid(type_oid), formatted, !not_null));
    }
    let key = match &config.key {
        Some(key) => key.clone(),
        None => {
            let rows = client
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                    &[&oid],
                )
                .await
                .map_err(err)?;
            let pk: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            if pk.is_empty() { config.cursor.clone() } else { pk }
        }
    };
    let mut wanted: Vec<&String> = key.iter().chain(&config.cursor).chain(&config.columns).collect();
    wanted.extend(config.xid_column.iter());
    for column in &wanted {
        if !types.contains_key(*column) {
            return Err(SourceError::needs_attention(format!("column {column} does not exist in {name}")));
        }
    }
    if let Some(xid) = &config.xid_column
        && types.get(xid).and_then(|t| t.0.clone()) != Some(Type::XID8)
    {
        return Err(SourceError::needs_attention(format!(
            "xid_column {xid} of {name} must be of type xid8 (DEFAULT pg_current_xact_id())"
        )));
    }
    let cursor_types: Vec<String> = config.cursor.iter().map(|c| types[c].1.clone()).collect();
    if config.grace.is_some() {
        let first = types[&config.cursor[0]].0.clone();
        if !matches!(first, Some(Type::TIMESTAMPTZ | Type::TIMESTAMP | Type::DATE)) {
            return Err(SourceError::needs_attention(format!(
                "grace needs the first cursor column ({}) to be a timestamp or date",
                config.cursor[0]
            )));
        }
    }
    let mut values: Vec<String> = Vec::new();
    for column in key.iter().chain(&config.cursor).chain(&config.columns) {
        if !values.contains(column) {
            values.push(column.clone());
        }
    }
    let mut select: Vec<String> = Vec::new();
    for column in key.iter().chain(&config.cursor) {
        select.push(format!("{}::text", quote_ident(column)));
    }
    select.push(match &config.xid_column {
        Some(x) => format!("{}::text", quote_ident(x)),
        None => "NULL::text".into(),
    });
    for column in &values {
        let quoted = quote_ident(column);
        select.push(match &types[column].0 {
            Some(ty) if !needs_text(ty) => quoted,
            Some(ty) if matches!(ty.kind(), tokio_postgres::types::Kind::Array(_)) => {
                format!("{quoted}::text[]")
            }
            _ => format!("{quoted}::text"),
        });
    }
    let nullable: Vec<String> = config.cursor.iter().filter(|c| types[*c].2).cloned().collect();
    let mut plan = Plan {
        from: format!("{}.{}", quote_ident(&schema), quote_ident(&table)),
        name,
        key,
        cursor: config.cursor.clone(),
        nullable,
        cursor_types,
        values,
        // Aliased, so that ORDER BY and the keyset name the table's columns, never an
        // output column of the same name.
        select: select
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS hw_{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        statements: HashMap::new(),
    };
    let variants: &[(bool, u8)] = match config.mode {
        Mode::Xid => &[(false, 0), (true, 0), (false, 1), (true, 1)],
        Mode::Cursor if config.grace.is_some() => &[(true, 0), (true, 1)],
        Mode::Cursor => &[(false, 0), (false, 1)],
    };
    for &variant in variants {
        let sql = match config.mode {
            Mode::Xid => xid_sql(&plan, config, variant),
            Mode::Cursor => cursor_sql(&plan, config, variant),
        };
        tracing::debug!(sql = %sql, "Prepared query.");
        let statement = client.prepare(&sql).await.map_err(|e| query_error(&plan.name, e))?;
        plan.statements.insert(variant, statement);
    }
    Ok(plan)
}

fn cursor_list(plan: &Plan) -> String {
    plan.cursor.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

fn not_null(plan: &Plan) -> String {
    plan.nullable.iter().map(|c| format!(" AND {} IS NOT NULL", quote_ident(c))).collect()
}

/// Mode `xid`. Parameters: `$1` the snapshot worked towards, `$2` the previous one
/// (when `from`), then the position (xid, cursor…) when resuming inside a pair, and
/// the row limit last.
fn xid_sql(plan: &Plan, config: &PostgresConfig, (from, after): (bool, u8)) -> String {
    let x = quote_ident(config.xid_column.as_deref().unwrap_or_default());
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {x} < pg_snapshot_xmax($1::text::pg_snapshot) \
         AND pg_visible_in_snapshot({x}, $1::text::pg_snapshot)",
        plan.select, plan.from
    );
    let mut n = 2;
    if from {
        sql.push_str(&format!(
            " AND {x} >= pg_snapshot_xmin($2::text::pg_snapshot) \
             AND NOT pg_visible_in_snapshot({x}, $2::text::pg_snapshot)"
        ));
        n = 3;
    }
    if after == 1 {
        let mut params = vec![format!("${n}::text::xid8")];
        n += 1;
        for ty in &plan.cursor_types {
            params.push(format!("${n}::text::{ty}"));
            n += 1;
        }
        sql.push_str(&format!(" AND ({x}, {}) > ({})", cursor_list(plan), params.join(", ")));
    }
    sql.push_str(&not_null(plan));
    sql.push_str(&filter_sql(config));
    sql.push_str(&format!(" ORDER BY {x}, {} LIMIT ${n}", cursor_list(plan)));
    sql
}

/// Mode `cursor`. Parameters: the last cursor values (when resuming), the grace in
/// seconds (when set), the row limit last.
fn cursor_sql(plan: &Plan, config: &PostgresConfig, (grace, after): (bool, u8)) -> String {
    let mut sql = format!("SELECT {} FROM {} WHERE true", plan.select, plan.from);
    let mut n = 1;
    if after == 1 {
        let mut params = Vec::new();
        for ty in &plan.cursor_types {
            params.push(format!("${n}::text::{ty}"));
            n += 1;
        }
        sql.push_str(&format!(" AND ({}) > ({})", cursor_list(plan), params.join(", ")));
    }
    sql.push_str(&not_null(plan));
    if grace {
        sql.push_str(&format!(
            " AND {} <= now() - make_interval(secs => ${n}::float8)",
            quote_ident(&plan.cursor[0])
        ));
        n += 1;
    }
    sql.push_str(&filter_sql(config));
    sql.push_str(&format!(" ORDER BY {} LIMIT ${n}", cursor_list(plan)));
    sql
}

/// Runs one of the plan's prepared queries: `params`, then the grace delay when the
/// statement takes one, then the row limit.
async fn run(
    client: &Client,
    plan: &Plan,
    variant: (bool, u8),
    params: &[String],
    grace: Option<f64>,
    limit: usize,
) -> Result<Vec<Row>, SourceError> {
    let statement =
        plan.statements.get(&variant).ok_or_else(|| SourceError::transient("statement missing"))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut args: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    if let Some(grace) = &grace {
        args.push(grace);
    }
    args.push(&limit);
    client.query(statement, &args).await.map_err(|e| query_error(&plan.name, e))
}

/// Rows a finished snapshot pair skipped because a cursor column was NULL.
async fn count_pair_nulls(
    client: &Client,
    plan: &Plan,
    config: &PostgresConfig,
    to: &str,
    from: Option<&str>,
) -> Result<u64, SourceError> {
    let x = quote_ident(config.xid_column.as_deref().unwrap_or_default());
    let nulls = plan.nullable.iter().map(|c| format!("{} IS NULL", quote_ident(c))).collect::<Vec<_>>();
    let mut sql = format!(
        "SELECT count(*) FROM {} WHERE {x} < pg_snapshot_xmax($1::text::pg_snapshot) \
         AND pg_visible_in_snapshot({x}, $1::text::pg_snapshot) AND ({})",
        plan.from,
        nulls.join(" OR ")
    );
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&to];
    if let Some(from) = &from {
        sql.push_str(&format!(
            " AND {x} >= pg_snapshot_xmin($2::text::pg_snapshot) \
             AND NOT pg_visible_in_snapshot({x}, $2::text::pg_snapshot)"
        ));
        args.push(from);
    }
    sql.push_str(&filter_sql(config));
    let row = client.query_one(&sql, &args).await.map_err(|e| query_error(&plan.name, e))?;
    let n: i64 = row.try_get(0).map_err(|e| query_error(&plan.name, e))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The keyset position of a row: (xid,) cursor values as text.
fn position(plan: &Plan, row: &Row, with_xid: bool) -> Result<Vec<String>, SourceError> {
    let mut out = Vec::with_capacity(plan.cursor.len() + 1);
    if with_xid {
        out.push(text(plan, row, plan.xid_text())?);
    }
    for i in 0..plan.cursor.len() {
        out.push(text(plan, row, plan.cursor_text(i))?);
    }
    Ok(out)
}

fn text(plan: &Plan, row: &Row, index: usize) -> Result<String, SourceError> {
    let value: Option<String> = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
    // Cursor and xid columns are never NULL here (the query excludes such rows); a
    // NULL key column is written as an empty marker that no text value can equal.
    Ok(value.unwrap_or_else(|| "\u{0}NULL".into()))
}

/// Turns rows into what the loop delivers: one item per row, or one for the batch.
fn found(plan: &Plan, rows: &[Row], emit: Emit) -> Result<Vec<Found>, SourceError> {
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let mut identity = vec![plan.name.clone()];
        for i in 0..plan.key.len() {
            identity.push(text(plan, row, plan.key_text(i))?);
        }
        for i in 0..plan.cursor.len() {
            identity.push(text(plan, row, plan.cursor_text(i))?);
        }
        let mut decoded = Map::new();
        for (i, column) in plan.values.iter().enumerate() {
            let index = plan.value(i);
            let ty = row.columns()[index].type_().clone();
            let raw: Raw = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
            let value = decode(&ty, raw.0).map_err(|e| {
                SourceError::needs_attention(format!("{}: cannot decode column {column}: {e}", plan.name))
            })?;
            decoded.insert(column.clone(), value);
        }
        let pick = |names: &[String]| -> Map<String, Value> {
            names.iter().map(|n| (n.clone(), decoded.get(n).cloned().unwrap_or(Value::Null))).collect()
        };
        let item = RowItem {
            table: plan.name.clone(),
            key: pick(&plan.key),
            cursor: pick(&plan.cursor),
            columns: decoded.clone(),
        };
        items.push(Found { change: Change::Created, item: Item::Row(item), identity });
    }
    if emit == Emit::Batch && !items.is_empty() {
        let mut identity = vec![plan.name.clone(), "batch".to_string()];
        let mut rows = Vec::with_capacity(items.len());
        for f in items {
            identity.push(f.identity[1..].join("\u{1f}"));
            if let Item::Row(row) = f.item {
                rows.push(row);
            }
        }
        let item = Item::Rows(RowsItem { table: plan.name.clone(), rows });
        return Ok(vec![Found { change: Change::Created, item, identity }]);
    }
    Ok(items)
}

#[async_trait]
impl Source for Postgres {
    fn kind(&self) -> &'static str {
        PostgresConfig::TAG
    }

    async fn poll(&mut self, watermark: Option<&Value>, limit: usize) -> Result<Polled, SourceError> {
        let mark: Option<Mark> = match watermark {
            None => None,
            Some(value) => Some(serde_json::from_value(value.clone()).map_err(|e| {
                SourceError::needs_attention(format!(
                    "stored watermark is not a postgres watermark ({e}); reset it with `highwater state reset`"
                ))
            })?),
        };
        let expected = match self.config.mode {
            Mode::Xid => matches!(mark, None | Some(Mark::Xid { .. })),
            Mode::Cursor => matches!(mark, None | Some(Mark::Cursor { .. })),
        };
        if !expected {
            return Err(SourceError::needs_attention(
                "stored watermark was written in another mode; reset it with `highwater state reset`",
            ));
        }
        let result = self.poll_inner(mark, limit).await;
        if let Err(e) = &result {
            // A fresh connection re-reads the catalog, so a table fixed by an operator or
            // a restarted server is picked up by the next attempt.
            self.conn = None;
            if e.class == ErrorClass::Transient {
                tracing::debug!(error = %e, "Dropped the Postgres connection; reconnecting at the next poll.");
            }
        }
        result
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        let result = self.conn().await.map(|_| ());
        self.conn = None;
        result
    }

    fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_untaken)
    }

    fn summarize(&self, watermark: &Value) -> Value {
        match serde_json::from_value::<Mark>(watermark.clone()) {
            Ok(Mark::Xid { from, to, .. }) => {
                let short = |s: &String| s.splitn(3, ':').take(2).collect::<Vec<_>>().join(":");
                serde_json::json!({
                    "snapshot": from.as_ref().map(short),
                    "catching_up_to": to.as_ref().map(short),
                })
            }
            Ok(Mark::Cursor { after }) => serde_json::json!({ "after": after }),
            Err(_) => watermark.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> PostgresConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn xid_mode_needs_its_column() {
        let c = config("table: app.orders\ncursor: id\n");
        assert_eq!(c.validate()[0].0, "xid_column");
        let c = config("table: app.orders\ncursor: id\nmode: cursor\ngrace: 5s\n");
        assert!(c.validate().is_empty());
        let c = config("table: app.orders\ncursor: [updated_at, id]\nxid_column: hw_xid\n");
        assert!(c.validate().is_empty());
        assert_eq!(c.cursor, vec!["updated_at", "id"]);
    }

    #[test]
    fn every_identifier_is_quoted() {
        let c = config("table: App.Orders\ncursor: [\"Weird\\\" col\", id]\nxid_column: x\n");
        let plan = Plan {
            from: format!("{}.{}", quote_ident("App"), quote_ident("Orders")),
            name: "App.Orders".into(),
            key: vec!["id".into()],
            cursor: c.cursor.clone(),
            nullable: vec![],
            cursor_types: vec!["text".into(), "bigint".into()],
            values: vec![],
            select: "1".into(),
            statements: HashMap::new(),
        };
        let sql = xid_sql(&plan, &c, (true, 1));
        assert!(sql.contains("FROM \"App\".\"Orders\""), "{sql}");
        assert!(
            sql.contains(
                "(\"x\", \"Weird\"\" col\", \"id\") > ($3::text::xid8, $4::text::text, $5::text::bigint)"
            ),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT $6"), "{sql}");
    }

    #[test]
    fn idle_snapshots_compare_by_xmax_and_running_list() {
        assert_eq!(snapshot_progress("10:20:12,15"), Some(("20", "12,15")));
        assert_ne!(snapshot_progress("10:20:12,15"), snapshot_progress("10:21:12,15"));
        assert_eq!(snapshot_progress("12:20:"), snapshot_progress("10:20:"));
    }
}
