//! The query plan of the `postgres` source: what the catalog says about the table, and
//! the SQL built from it.
//!
//! Each query is built together with the list of values its `$n` placeholders stand
//! for ([`Sql`]), and run by binding those values by name ([`Args`]), so that the text
//! and its parameters cannot drift apart. The snapshot-pair condition of mode `xid` is
//! written once ([`pair_clause`]) and shared by the page query and the count of rows
//! skipped for a NULL cursor.

use std::collections::HashMap;

use tokio_postgres::types::{Kind, ToSql, Type};
use tokio_postgres::{Client, Row, RowStream};

use super::config::{Mode, PostgresConfig};
use super::pool::{Lease, next_plan_id};
use super::query_error;
use super::values::{needs_text, quote_ident};
use crate::source::SourceError;

/// A value a query takes: each `$n` of a built query stands for one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    /// The snapshot the pair works towards (text).
    To,
    /// The previous snapshot, whose visible transactions are announced (text).
    From,
    /// Part `i` of the keyset position to resume after (text): in mode `xid` the xid
    /// first, then the cursor values.
    After(usize),
    /// The grace delay in seconds (mode `cursor`).
    Grace,
    /// The server's time zone, for a grace delay or a `start:` time on a local time.
    Zone,
    /// `start:` as an RFC 3339 time (text): rows of the first snapshot pair whose first
    /// cursor column is earlier were there before the watcher started.
    NotBefore,
    /// The row limit.
    Limit,
}

/// SQL text and the values its placeholders stand for, built together.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    fn new(text: impl Into<String>) -> Sql {
        Sql { text: text.into(), params: Vec::new() }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The placeholder for `param`: the same `$n` each time it is asked for.
    fn param(&mut self, param: Param) -> String {
        let n = match self.params.iter().position(|p| *p == param) {
            Some(i) => i + 1,
            None => {
                self.params.push(param);
                self.params.len()
            }
        };
        format!("${n}")
    }
}

/// The values a query run binds, by name.
pub(super) struct Args<'a> {
    /// The snapshot worked towards.
    pub to: Option<&'a String>,
    /// The previous snapshot.
    pub from: Option<&'a String>,
    /// The keyset position to resume after (empty: from the start).
    pub after: &'a [String],
    /// The grace delay in seconds.
    pub grace: Option<f64>,
    /// The server's time zone.
    pub zone: Option<&'a String>,
    /// `start:` as an RFC 3339 time.
    pub not_before: Option<&'a String>,
    /// The row limit.
    pub limit: i64,
}

impl<'a> Args<'a> {
    fn bind(&'a self, params: &[Param]) -> Result<Vec<&'a (dyn ToSql + Sync)>, SourceError> {
        let missing = |what: &str| SourceError::transient(format!("query parameter {what} missing"));
        params
            .iter()
            .map(|param| -> Result<&'a (dyn ToSql + Sync), SourceError> {
                Ok(match param {
                    Param::To => self.to.ok_or_else(|| missing("to"))?,
                    Param::From => self.from.ok_or_else(|| missing("from"))?,
                    Param::After(i) => self.after.get(*i).ok_or_else(|| missing("after"))?,
                    Param::Grace => self.grace.as_ref().ok_or_else(|| missing("grace"))?,
                    Param::Zone => self.zone.ok_or_else(|| missing("zone"))?,
                    Param::NotBefore => self.not_before.ok_or_else(|| missing("not_before"))?,
                    Param::Limit => &self.limit,
                })
            })
            .collect()
    }
}

/// Which page query: mode `xid` has four (and two more for a first pair that starts at
/// a time), mode `cursor` two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// Mode `xid`: a previous snapshot bounds the pair from below (false on a
    /// watcher's first pair).
    pub since: bool,
    /// The page continues after a keyset position.
    pub resume: bool,
    /// Mode `xid`, first pair only: rows whose first cursor column is before the
    /// `start:` time are left out.
    pub floor: bool,
}

/// What the catalog said, and the SQL built from it. Read again after a failure; its
/// statements are prepared on each pooled connection it is used on, under its id.
pub(super) struct Plan {
    /// Names this plan's statements on the pooled connections.
    pub id: u64,
    /// `"schema"."table"`, quoted.
    from: String,
    /// `schema.table`, for events and messages.
    pub name: String,
    /// Columns identifying a row (primary key unless configured).
    pub key: Vec<String>,
    /// Columns ordering the rows.
    pub cursor: Vec<String>,
    /// Cursor columns the catalog allows NULL in: only these need `IS NOT NULL` and
    /// the count of skipped rows.
    pub nullable: Vec<String>,
    /// `format_type` of each cursor column: the cast that turns stored text back into
    /// a value of the column's type.
    cursor_types: Vec<String>,
    /// Mode `cursor`: how the grace delay compares, when one is set.
    grace: Option<Clock>,
    /// Columns decoded into the event (key ∪ cursor ∪ columns), in select order.
    pub values: Vec<String>,
    /// Which of `values` make an item's `key`, `cursor` and `columns` objects, each in
    /// name order (the order events have always had).
    pub key_fields: Vec<usize>,
    pub cursor_fields: Vec<usize>,
    pub column_fields: Vec<usize>,
    /// The select list: key and cursor as text, the xid as text, then `values`.
    select: String,
    /// The quoted xid column (mode `xid`).
    xid: Option<String>,
    /// The `where` condition, ready to append.
    filter: String,
    /// The server's time zone (`TimeZone` of a session that sets none), read at
    /// connect: what a `timestamp without time zone` is compared in.
    pub zone: String,
    /// What the first cursor column holds, when it holds a time: what a grace delay and
    /// a `start:` time compare it with.
    clock: Option<Clock>,
    /// The page queries (prepared on a connection when first used there).
    queries: HashMap<Shape, Sql>,
}

/// Where each part sits in a selected row.
impl Plan {
    pub fn key_text(&self, i: usize) -> usize {
        i
    }
    pub fn cursor_text(&self, i: usize) -> usize {
        self.key.len() + i
    }
    pub fn xid_text(&self) -> usize {
        self.key.len() + self.cursor.len()
    }
    pub fn value(&self, i: usize) -> usize {
        self.key.len() + self.cursor.len() + 1 + i
    }
    /// Mode `xid`: the writing transaction is part of a row's identity.
    pub fn has_xid(&self) -> bool {
        self.xid.is_some()
    }
}

/// The `where` condition, ready to append. On lines of its own, so that a condition
/// ending in a `-- comment` comments out nothing of the query.
fn filter_sql(config: &PostgresConfig) -> String {
    config.filter.as_ref().map_or_else(String::new, |f| format!(" AND (\n{f}\n)"))
}

/// What the catalog says about one column.
struct Column {
    ty: Option<Type>,
    /// `format_type`: the cast that turns text back into a value of the column.
    formatted: String,
    nullable: bool,
    /// The default expression, as `pg_get_expr` writes it.
    default: Option<String>,
    /// Some index has this column first.
    leads_an_index: bool,
}

/// How a time is compared with the first cursor column (a grace delay, a `start:`
/// time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// `timestamptz`: an instant, compared with `now()` or the time as it is.
    Instant,
    /// `timestamp` or `date`: a local time, compared with `now()` or the time read in
    /// the server's zone.
    Local,
}

impl Clock {
    /// The time `param` stands for, as the column's kind of time.
    fn of(self, sql: &mut Sql, param: Param) -> String {
        let time = sql.param(param);
        match self {
            Clock::Instant => format!("{time}::text::timestamptz"),
            Clock::Local => {
                format!("({time}::text::timestamptz AT TIME ZONE {}::text)", sql.param(Param::Zone))
            }
        }
    }
}

/// The xid column must be an `xid8` that Postgres fills itself: with any other default
/// (`'0'`), rows would carry an id that no snapshot ever shows as new. Without an
/// index starting with it, every poll reads the whole table: worth a warning.
fn check_xid_column(table: &str, xid: &str, column: &Column, is_table: bool) -> Result<(), SourceError> {
    if column.ty != Some(Type::XID8) {
        return Err(SourceError::needs_attention(format!(
            "xid_column {xid} of {table} must be of type xid8 (DEFAULT pg_current_xact_id())"
        )));
    }
    if !is_table {
        return Ok(());
    }
    if column.default.as_deref() != Some("pg_current_xact_id()") {
        let has = match &column.default {
            Some(default) => format!("it has DEFAULT {default}"),
            None => "it has no default".into(),
        };
        return Err(SourceError::needs_attention(format!(
            "xid_column {xid} of {table} must have DEFAULT pg_current_xact_id() ({has}): \
             rows whose {xid} is not the id of the transaction that wrote them are never announced"
        )));
    }
    if !column.leads_an_index {
        tracing::warn!(
            table,
            column = xid,
            "No index starts with the xid column: every poll reads the whole table (docs/reference/postgres.md: CREATE INDEX ON table (xid_column, cursor…))."
        );
    }
    Ok(())
}

/// Reads the catalog, checks every configured name, builds the queries and prepares the
/// usual ones on `lease` (preparing also checks the `where` filter and the SELECT
/// privilege). The session's timeouts are already set (see `pool`): even reading the
/// catalog can wait on a lock.
pub(super) async fn prepare(lease: &mut Lease, config: &PostgresConfig) -> Result<Plan, SourceError> {
    let (schema, table) = (&config.table.schema, &config.table.table);
    let name = config.table.to_string();
    let err = |e| query_error(&name, e);
    // The zone writers of a `timestamp without time zone` most likely wrote their local
    // times in (see `pool`).
    let zone = lease.zone().to_string();
    let client = lease.client();
    let found = client
        .query_opt(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), c.relkind IN ('r', 'p') FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[schema, table],
        )
        .await
        .map_err(err)?;
    let Some(found) = found else {
        return Err(SourceError::needs_attention(format!("table {name} does not exist")));
    };
    let oid: u32 = found.try_get(0).map_err(err)?;
    let can_read: bool = found.try_get(1).map_err(err)?;
    // Only tables have column defaults and indexes of their own (not views).
    let is_table: bool = found.try_get(2).map_err(err)?;
    if !can_read {
        return Err(SourceError::needs_attention(format!(
            "permission denied: the user cannot SELECT from {name}"
        )));
    }
    let mut types: HashMap<String, Column> = HashMap::new();
    for row in client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             pg_get_expr(d.adbin, d.adrelid), \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .map_err(err)?
    {
        let column: String = row.try_get(0).map_err(err)?;
        let type_oid: u32 = row.try_get(1).map_err(err)?;
        let not_null: bool = row.try_get(3).map_err(err)?;
        types.insert(
            column,
            Column {
                ty: Type::from_oid(type_oid),
                formatted: row.try_get(2).map_err(err)?,
                nullable: !not_null,
                default: row.try_get(4).map_err(err)?,
                leads_an_index: row.try_get(5).map_err(err)?,
            },
        );
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
    if let Some(xid) = &config.xid_column {
        check_xid_column(&name, xid, &types[xid], is_table)?;
    }
    let cursor_types: Vec<String> = config.cursor.iter().map(|c| types[c].formatted.clone()).collect();
    let clock = match types[&config.cursor[0]].ty {
        Some(Type::TIMESTAMPTZ) => Some(Clock::Instant),
        // Local times: compared with the server's clock read in the server's zone.
        Some(Type::TIMESTAMP | Type::DATE) => Some(Clock::Local),
        _ => None,
    };
    let grace = match config.grace {
        None => None,
        Some(_) => Some(clock.ok_or_else(|| {
            SourceError::needs_attention(format!(
                "grace needs the first cursor column ({}) to be a timestamp or date",
                config.cursor[0]
            ))
        })?),
    };
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
        select.push(match &types[column].ty {
            Some(ty) if !needs_text(ty) => quoted,
            Some(ty) if matches!(ty.kind(), Kind::Array(_)) => format!("{quoted}::text[]"),
            _ => format!("{quoted}::text"),
        });
    }
    let nullable: Vec<String> = config.cursor.iter().filter(|c| types[*c].nullable).cloned().collect();
    let key_fields = fields(&values, &key);
    let cursor_fields = fields(&values, &config.cursor);
    let column_fields = fields(&values, &values);
    let mut plan = Plan {
        id: next_plan_id(),
        from: format!("{}.{}", quote_ident(schema), quote_ident(table)),
        name,
        key,
        cursor: config.cursor.clone(),
        nullable,
        cursor_types,
        values,
        key_fields,
        cursor_fields,
        column_fields,
        // Aliased, so that ORDER BY and the keyset name the table's columns, never an
        // output column of the same name.
        select: select
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS hw_{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        xid: config.xid_column.as_deref().map(quote_ident),
        filter: filter_sql(config),
        zone,
        clock,
        grace,
        queries: HashMap::new(),
    };
    let shapes: &[Shape] = match config.mode {
        Mode::Xid => &[
            Shape { since: false, resume: false, floor: false },
            Shape { since: true, resume: false, floor: false },
            Shape { since: false, resume: true, floor: false },
            Shape { since: true, resume: true, floor: false },
            Shape { since: false, resume: false, floor: true },
            Shape { since: false, resume: true, floor: true },
        ],
        Mode::Cursor => &[
            Shape { since: false, resume: false, floor: false },
            Shape { since: false, resume: true, floor: false },
        ],
    };
    for &shape in shapes {
        let sql = match &plan.xid {
            Some(x) => plan.xid_page(x, shape),
            None => plan.cursor_page(shape),
        };
        // The rare shapes (a first pair from a `start:` time) are prepared when used.
        if !shape.floor {
            lease.statement(plan.id, &sql.text, &plan.name).await?;
        }
        plan.queries.insert(shape, sql);
    }
    Ok(plan)
}

/// The positions in `values` of `names`, in name order, each name once.
fn fields(values: &[String], names: &[String]) -> Vec<usize> {
    let mut picked: Vec<usize> = names.iter().filter_map(|n| values.iter().position(|v| v == n)).collect();
    picked.sort_by(|a, b| values[*a].cmp(&values[*b]));
    picked.dedup();
    picked
}

/// Mode `xid`: the rows whose writing transaction is visible in the snapshot worked
/// towards and (when `since`) was not in the previous one. `x >= xmin(from)` and
/// `x < xmax(to)` bound an index range scan; the visibility tests filter inside it.
fn pair_clause(sql: &mut Sql, x: &str, since: bool) {
    let to = sql.param(Param::To);
    sql.push(&format!(
        " AND {x} < pg_snapshot_xmax({to}::text::pg_snapshot) \
         AND pg_visible_in_snapshot({x}, {to}::text::pg_snapshot)"
    ));
    if since {
        let from = sql.param(Param::From);
        sql.push(&format!(
            " AND {x} >= pg_snapshot_xmin({from}::text::pg_snapshot) \
             AND NOT pg_visible_in_snapshot({x}, {from}::text::pg_snapshot)"
        ));
    }
}

impl Plan {
    fn cursor_list(&self) -> String {
        self.cursor.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    fn not_null(&self) -> String {
        self.nullable.iter().map(|c| format!(" AND {} IS NOT NULL", quote_ident(c))).collect()
    }

    /// `(columns) > (position)`: the keyset condition, each value cast back from text
    /// to its column's type. `first` is a leading column before the cursor (the xid).
    fn keyset(&self, sql: &mut Sql, first: Option<(&str, &str)>) {
        let mut columns = Vec::new();
        let mut params = Vec::new();
        let types = first.iter().map(|(_, ty)| *ty).chain(self.cursor_types.iter().map(String::as_str));
        for (i, ty) in types.enumerate() {
            params.push(format!("{}::text::{ty}", sql.param(Param::After(i))));
        }
        columns.extend(first.map(|(column, _)| column.to_string()));
        columns.push(self.cursor_list());
        sql.push(&format!(" AND ({}) > ({})", columns.join(", "), params.join(", ")));
    }

    /// Mode `xid`: one page of a snapshot pair in `(xid, cursor)` order.
    fn xid_page(&self, x: &str, shape: Shape) -> Sql {
        let mut sql = Sql::new(format!("SELECT {} FROM {} WHERE true", self.select, self.from));
        pair_clause(&mut sql, x, shape.since);
        if shape.resume {
            self.keyset(&mut sql, Some((x, "xid8")));
        }
        if shape.floor
            && let Some(clock) = self.clock
        {
            let time = clock.of(&mut sql, Param::NotBefore);
            sql.push(&format!(" AND {} >= {time}", quote_ident(&self.cursor[0])));
        }
        sql.push(&self.not_null());
        sql.push(&self.filter);
        let limit = sql.param(Param::Limit);
        sql.push(&format!(" ORDER BY {x}, {} LIMIT {limit}", self.cursor_list()));
        sql
    }

    /// Mode `cursor`: the rows a poll may announce (held back by the grace delay when
    /// set), from the position `after` stands for when `shape.resume`.
    fn cursor_rows(&self, sql: &mut Sql, shape: Shape) {
        if shape.resume {
            self.keyset(sql, None);
        }
        sql.push(&self.not_null());
        if let Some(kind) = self.grace {
            let now = match kind {
                Clock::Instant => "now()".to_string(),
                Clock::Local => format!("(now() AT TIME ZONE {}::text)", sql.param(Param::Zone)),
            };
            let grace = sql.param(Param::Grace);
            sql.push(&format!(
                " AND {} <= {now} - make_interval(secs => {grace}::float8)",
                quote_ident(&self.cursor[0])
            ));
        }
        sql.push(&self.filter);
    }

    /// Mode `cursor`: one page in cursor order, held back by the grace delay when set.
    fn cursor_page(&self, shape: Shape) -> Sql {
        let mut sql = Sql::new(format!("SELECT {} FROM {} WHERE true", self.select, self.from));
        self.cursor_rows(&mut sql, shape);
        let limit = sql.param(Param::Limit);
        sql.push(&format!(" ORDER BY {} LIMIT {limit}", self.cursor_list()));
        sql
    }

    /// Runs one of the page queries. Its rows stream in as the server sends them: the
    /// driver holds one network read of them at a time, and the server waits while the
    /// caller has not taken them.
    pub async fn page(
        &self,
        lease: &mut Lease,
        shape: Shape,
        args: &Args<'_>,
    ) -> Result<RowStream, SourceError> {
        let sql = self.queries.get(&shape).ok_or_else(|| SourceError::transient("query missing"))?;
        let statement = lease.statement(self.id, &sql.text, &self.name).await?;
        let params = args.bind(&sql.params)?;
        lease
            .client()
            .query_raw(&statement, params.iter().map(|p| *p as &dyn ToSql))
            .await
            .map_err(|e| query_error(&self.name, e))
    }

    /// Whether a `start:` time can be compared with the first cursor column; the error
    /// says why not.
    pub fn check_time_cursor(&self) -> Result<(), SourceError> {
        match self.clock {
            Some(_) => Ok(()),
            None => Err(SourceError::needs_attention(format!(
                "{}: `start:` with a time needs the first cursor column ({}) to hold one                  (timestamptz, timestamp or date)",
                self.name, self.cursor[0]
            ))),
        }
    }

    /// Mode `cursor`: the last row a poll from the beginning would announce now (and
    /// with `before`, of those whose first cursor column is earlier than that time):
    /// where `start: now` or a time begins. None when there is no such row.
    pub async fn last_position(
        &self,
        client: &Client,
        grace: Option<f64>,
        before: Option<&String>,
    ) -> Result<Option<Row>, SourceError> {
        let mut sql = Sql::new(format!("SELECT {} FROM {} WHERE true", self.select, self.from));
        self.cursor_rows(&mut sql, Shape { since: false, resume: false, floor: false });
        if before.is_some() {
            self.check_time_cursor()?;
            if let Some(clock) = self.clock {
                let time = clock.of(&mut sql, Param::NotBefore);
                sql.push(&format!(" AND {} < {time}", quote_ident(&self.cursor[0])));
            }
        }
        let descending =
            self.cursor.iter().map(|c| format!("{} DESC", quote_ident(c))).collect::<Vec<_>>().join(", ");
        sql.push(&format!(" ORDER BY {descending} LIMIT 1"));
        let args = Args {
            to: None,
            from: None,
            after: &[],
            grace,
            zone: Some(&self.zone),
            not_before: before,
            limit: 1,
        };
        let params = args.bind(&sql.params)?;
        client.query_opt(&sql.text, &params).await.map_err(|e| query_error(&self.name, e))
    }

    /// `(a IS NULL OR b IS NULL …)` over the nullable cursor columns.
    fn any_null(&self) -> String {
        let nulls = self.nullable.iter().map(|c| format!("{} IS NULL", quote_ident(c))).collect::<Vec<_>>();
        format!("({})", nulls.join(" OR "))
    }

    /// Mode `cursor`: rows the keyset can never reach because a cursor column is NULL.
    pub async fn count_null_cursors(&self, client: &Client) -> Result<u64, SourceError> {
        let sql = format!("SELECT count(*) FROM {} WHERE {}{}", self.from, self.any_null(), self.filter);
        let row = client.query_one(&sql, &[]).await.map_err(|e| query_error(&self.name, e))?;
        let n: i64 = row.try_get(0).map_err(|e| query_error(&self.name, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Mode `xid`: rows a finished snapshot pair skipped because a cursor column was NULL.
    pub async fn count_pair_nulls(&self, client: &Client, args: &Args<'_>) -> Result<u64, SourceError> {
        let x = self.xid.as_deref().ok_or_else(|| SourceError::transient("no xid column"))?;
        let mut sql = Sql::new(format!("SELECT count(*) FROM {} WHERE {}", self.from, self.any_null()));
        pair_clause(&mut sql, x, args.from.is_some());
        sql.push(&self.filter);
        let params = args.bind(&sql.params)?;
        let row = client.query_one(&sql.text, &params).await.map_err(|e| query_error(&self.name, e))?;
        let n: i64 = row.try_get(0).map_err(|e| query_error(&self.name, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cursor: &[&str], types: &[&str]) -> Plan {
        Plan {
            id: 1,
            from: format!("{}.{}", quote_ident("App"), quote_ident("Orders")),
            name: "App.Orders".into(),
            key: vec!["id".into()],
            cursor: cursor.iter().map(|c| c.to_string()).collect(),
            nullable: vec![],
            cursor_types: types.iter().map(|t| t.to_string()).collect(),
            values: vec![],
            key_fields: vec![],
            cursor_fields: vec![],
            column_fields: vec![],
            select: "1".into(),
            xid: Some(quote_ident("x")),
            filter: String::new(),
            zone: "UTC".into(),
            clock: Some(Clock::Instant),
            grace: None,
            queries: HashMap::new(),
        }
    }

    #[test]
    fn every_identifier_is_quoted_and_each_placeholder_has_its_value() {
        let plan = plan(&["Weird\" col", "id"], &["text", "bigint"]);
        let sql = plan.xid_page("\"x\"", Shape { since: true, resume: true, floor: false });
        assert!(sql.text.contains("FROM \"App\".\"Orders\""), "{}", sql.text);
        assert!(
            sql.text.contains(
                "(\"x\", \"Weird\"\" col\", \"id\") > ($3::text::xid8, $4::text::text, $5::text::bigint)"
            ),
            "{}",
            sql.text
        );
        assert!(sql.text.ends_with("LIMIT $6"), "{}", sql.text);
        assert_eq!(
            sql.params,
            vec![Param::To, Param::From, Param::After(0), Param::After(1), Param::After(2), Param::Limit]
        );
    }

    #[test]
    fn the_snapshot_worked_towards_is_one_parameter_used_twice() {
        let plan = plan(&["id"], &["bigint"]);
        let sql = plan.xid_page("\"x\"", Shape { since: false, resume: false, floor: false });
        assert_eq!(sql.text.matches("$1::text::pg_snapshot").count(), 2, "{}", sql.text);
        assert_eq!(sql.params, vec![Param::To, Param::Limit]);
    }

    #[test]
    fn cursor_mode_binds_the_grace_delay_between_position_and_limit() {
        let mut plan = plan(&["at", "id"], &["timestamp with time zone", "integer"]);
        plan.grace = Some(Clock::Instant);
        let sql = plan.cursor_page(Shape { since: false, resume: true, floor: false });
        assert_eq!(sql.params, vec![Param::After(0), Param::After(1), Param::Grace, Param::Limit]);
        assert!(sql.text.contains("<= now() - make_interval(secs => $3::float8)"), "{}", sql.text);
        let to = "1:2:".to_string();
        let after = vec!["2026-01-01".to_string(), "4".to_string()];
        let args = Args {
            to: Some(&to),
            from: None,
            after: &after,
            grace: Some(2.0),
            zone: None,
            not_before: None,
            limit: 10,
        };
        assert_eq!(args.bind(&sql.params).expect("bind").len(), 4);
        let args = Args { grace: None, ..args };
        assert!(args.bind(&sql.params).is_err());
        // A local time is compared with the clock read in the server's zone.
        plan.grace = Some(Clock::Local);
        let sql = plan.cursor_page(Shape { since: false, resume: false, floor: false });
        assert_eq!(sql.params, vec![Param::Zone, Param::Grace, Param::Limit]);
        assert!(
            sql.text.contains("<= (now() AT TIME ZONE $1::text) - make_interval(secs => $2::float8)"),
            "{}",
            sql.text
        );
    }

    #[test]
    fn item_objects_list_their_columns_in_name_order_once() {
        let values: Vec<String> = ["id", "at", "note", "amount"].iter().map(|s| s.to_string()).collect();
        assert_eq!(fields(&values, &values), vec![3, 1, 0, 2]);
        assert_eq!(fields(&values, &["note".into(), "id".into(), "id".into()]), vec![0, 2]);
    }

    #[test]
    fn a_first_pair_from_a_time_leaves_out_what_was_written_before_it() {
        let mut plan = plan(&["at", "id"], &["timestamp without time zone", "bigint"]);
        plan.clock = Some(Clock::Local);
        let sql = plan.xid_page("\"x\"", Shape { since: false, resume: true, floor: true });
        assert!(
            sql.text.contains("AND \"at\" >= ($5::text::timestamptz AT TIME ZONE $6::text)"),
            "{}",
            sql.text
        );
        let expected = [
            Param::To,
            Param::After(0),
            Param::After(1),
            Param::After(2),
            Param::NotBefore,
            Param::Zone,
            Param::Limit,
        ];
        assert_eq!(sql.params, expected);
    }
}
