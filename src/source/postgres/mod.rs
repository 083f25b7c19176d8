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
//!   The watermark also records where in the server's history its snapshot was taken,
//!   checked at every poll (`history`), since ids handed out again would look seen.
//! - `cursor`: plain keyset pagination on the cursor columns, with an optional grace
//!   delay; for tables that cannot get the column, with the limits the README states.
//!
//! This file holds the watermark and the poll; `config` the config and its validation,
//! `plan` the catalog checks and the SQL, `rows` rows to events, `values` column values
//! to JSON, `history` the server's history, `connect` the connection.

mod config;
pub mod connect;
mod history;
mod plan;
mod rows;
pub mod values;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::{Client, Statement};

pub use self::config::{Mode, PostgresConfig};
use self::history::{Server, Verdict};
use self::plan::{Args, Plan, Shape};
use super::legacy::{Polled, Source, read_watermark};
use super::{ErrorClass, SourceError};
use crate::value::Kind;

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
        /// Where in the server's history the newest snapshot above was taken (None in
        /// a watermark from before this was recorded: taken as the server's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<Server>,
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

/// A live connection and the plan built for it.
struct Conn {
    client: Client,
    plan: Plan,
    /// Mode `xid`: the snapshot and what identifies the server's history
    /// ([`history::FACTS_SQL`]), prepared so that an idle poll is one round trip.
    facts: Option<Statement>,
    /// Mode `xid`: the cluster's `system_identifier`.
    system: String,
}

/// The runtime `postgres` source.
pub struct Postgres {
    config: PostgresConfig,
    conn: Option<Conn>,
    /// Rows skipped because a cursor column was NULL, since start (for the log).
    skipped_null_cursor: u64,
    /// The same, not yet handed to the watcher's counter.
    skipped_untaken: u64,
    /// Values delivered in Postgres' text form because they could not be decoded,
    /// since start (for the log).
    as_text_total: u64,
}

impl Postgres {
    /// Builds the source; nothing is touched until the first poll or check.
    pub fn new(config: PostgresConfig) -> Self {
        Postgres { config, conn: None, skipped_null_cursor: 0, skipped_untaken: 0, as_text_total: 0 }
    }

    /// The open connection, opening it and reading the catalog if needed.
    async fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let target = connect::resolve(&self.config.settings())?;
            let client = connect::connect(&target).await?;
            let plan = plan::prepare(&client, &self.config).await?;
            tracing::info!(
                server = %target.describe(),
                table = %plan.name,
                time_zone = %plan.zone,
                "Connected to Postgres."
            );
            if self.config.mode == Mode::Cursor && !plan.nullable.is_empty() {
                let n = plan.count_null_cursors(&client).await?;
                if n > 0 {
                    self.skipped_null_cursor = self.skipped_null_cursor.max(n);
                    tracing::warn!(table = %plan.name, rows = n, "Rows with a NULL cursor column are skipped.");
                }
            }
            let (facts, system) = match self.config.mode {
                Mode::Xid => (
                    Some(client.prepare(history::FACTS_SQL).await.map_err(|e| query_error(&plan.name, e))?),
                    history::system(&client, &plan.name).await?,
                ),
                Mode::Cursor => (None, String::new()),
            };
            self.conn = Some(Conn { client, plan, facts, system });
        }
        self.conn.as_mut().ok_or_else(|| SourceError::transient("no connection"))
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

    /// Warns about values that went as text, with a running total.
    fn count_as_text(&mut self, table: &str, items: &[super::Found]) {
        let (n, columns) = rows::as_text(items);
        if n > 0 {
            self.as_text_total += n;
            tracing::warn!(
                table,
                values = n,
                columns = %columns.join(", "),
                as_text_total = self.as_text_total,
                "Delivered values that could not be decoded in Postgres' text form."
            );
        }
    }

    async fn poll_inner(&mut self, mark: Option<Mark>, limit: usize) -> Result<Polled, SourceError> {
        let mode = self.config.mode;
        let mark = mark.unwrap_or(match mode {
            Mode::Xid => Mark::Xid { from: None, to: None, after: None, server: None },
            Mode::Cursor => Mark::Cursor { after: None },
        });
        let grace = self.config.grace.map(|g| g.0.as_secs_f64());
        let emit = self.config.emit;
        let limit = limit.max(1);
        let row_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn().await?;
        let Some(conn) = self.conn.as_ref() else { return Err(SourceError::transient("no connection")) };
        let plan = &conn.plan;
        let client = &conn.client;
        match mark {
            Mark::Xid { from, to, after, server } => {
                let facts = conn.facts.as_ref().ok_or_else(|| SourceError::transient("no facts query"))?;
                let facts = history::facts(client, facts, &plan.name).await?;
                let mut queries = 1;
                let (from, to, after, server) = match &server {
                    None => (from, to, after, None),
                    Some(stored) => {
                        let newest = to.as_deref().or(from.as_deref());
                        let verdict =
                            history::check(client, &conn.system, stored, newest, &facts, &plan.name).await?;
                        match verdict {
                            Verdict::Continue(None) => (from, to, after, server),
                            Verdict::Continue(Some(adopted)) => (from, to, after, Some(adopted)),
                            Verdict::Behind => {
                                tracing::debug!(table = %plan.name, "The standby has not replayed up to the watermark yet.");
                                let next = Mark::Xid { from, to, after, server };
                                return Ok(Polled {
                                    items: Vec::new(),
                                    next: mark_value(&next),
                                    more: false,
                                });
                            }
                            Verdict::Rescan { bound, cause } => {
                                // Rows of a pair that was under way are announced again too:
                                // the re-scan starts from the last whole snapshot.
                                let capped = match &from {
                                    Some(f) => Some(history::cap(f, bound).ok_or_else(|| {
                                        SourceError::needs_attention(format!(
                                            "{}: stored snapshot `{f}` is not a snapshot",
                                            plan.name
                                        ))
                                    })?),
                                    None => None,
                                };
                                tracing::warn!(
                                    table = %plan.name,
                                    cause = %cause,
                                    rescan_from_xid = bound,
                                    "The server's history changed; announcing again the rows written by transactions from rescan_from_xid on."
                                );
                                (capped, None, None, None)
                            }
                            Verdict::Stop(cause) => {
                                return Err(history::stop_error(&plan.name, &cause, stored, from.as_deref()));
                            }
                        }
                    }
                };
                let (to, server) = match to {
                    Some(to) => (to, server),
                    None => {
                        let now = facts.snapshot.clone();
                        // No transaction finished since the last poll: nothing can be
                        // new, and one query is all an idle poll costs.
                        if from.as_deref().and_then(snapshot_progress) == snapshot_progress(&now) {
                            tracing::debug!(table = %plan.name, queries, rows = 0, "Polled table.");
                            let next = Mark::Xid { from: Some(now), to: None, after: None, server };
                            return Ok(Polled { items: Vec::new(), next: mark_value(&next), more: false });
                        }
                        // Nothing of the new snapshot is announced before the WAL that
                        // shows it is durable (see `history`).
                        if !facts.standby && facts.flushed < facts.lsn {
                            history::make_durable(client, facts.lsn, &plan.name).await?;
                            queries += 1;
                        }
                        (now, Some(history::record(&conn.system, server.as_ref(), &facts)))
                    }
                };
                let shape = Shape { since: from.is_some(), resume: after.is_some() };
                let position = after.as_deref().unwrap_or_default();
                let args = Args {
                    to: Some(&to),
                    from: from.as_ref(),
                    after: position,
                    grace: None,
                    zone: None,
                    limit: row_limit,
                };
                let rows = plan.page(client, shape, &args).await?;
                queries += 1;
                let more = rows.len() >= limit;
                let last = rows.last().map(|r| rows::position(plan, r, true)).transpose()?;
                let items = rows::found(plan, &rows, emit)?;
                let name = plan.name.clone();
                let next = if more {
                    Mark::Xid { from: from.clone(), to: Some(to), after: last.or(after), server }
                } else {
                    // The pair is done: count the rows it skipped for a NULL cursor (none
                    // can be when the catalog says the cursor columns are NOT NULL).
                    if !plan.nullable.is_empty() {
                        let nulls = plan.count_pair_nulls(client, &args).await?;
                        queries += 1;
                        self.skip_nulls(&name, nulls);
                    }
                    Mark::Xid { from: Some(to), to: None, after: None, server }
                };
                tracing::debug!(table = %name, queries, rows = rows.len(), "Polled table.");
                self.count_as_text(&name, &items);
                Ok(Polled { items, next: mark_value(&next), more })
            }
            Mark::Cursor { after } => {
                let shape = Shape { since: false, resume: after.is_some() };
                let position = after.as_deref().unwrap_or_default();
                let args = Args {
                    to: None,
                    from: None,
                    after: position,
                    grace,
                    zone: Some(&plan.zone),
                    limit: row_limit,
                };
                let rows = plan.page(client, shape, &args).await?;
                let more = rows.len() >= limit;
                let last = rows.last().map(|r| rows::position(plan, r, false)).transpose()?;
                let items = rows::found(plan, &rows, emit)?;
                tracing::debug!(table = %plan.name, queries = 1, rows = rows.len(), "Polled table.");
                let name = plan.name.clone();
                self.count_as_text(&name, &items);
                Ok(Polled { items, next: mark_value(&Mark::Cursor { after: last.or(after) }), more })
            }
        }
    }
}

fn mark_value(mark: &Mark) -> Value {
    serde_json::to_value(mark).unwrap_or(Value::Null)
}

/// A failed query, classified, with the server's message (never a secret: the
/// connection string is not part of any query).
pub(super) fn query_error(table: &str, e: tokio_postgres::Error) -> SourceError {
    let class = connect::classify(&e);
    let message = match class {
        ErrorClass::Waiting => {
            format!("{table}: waiting on a lock another session holds ({})", connect::message(&e))
        }
        _ => format!("{table}: {}", connect::message(&e)),
    };
    SourceError { class, message, source: Some(Box::new(e)) }
}

#[async_trait]
impl Source for Postgres {
    fn kind(&self) -> &'static str {
        PostgresConfig::TAG
    }

    async fn poll(&mut self, watermark: Option<&Value>, limit: usize) -> Result<Polled, SourceError> {
        let mark: Option<Mark> = read_watermark(self.kind(), watermark)?;
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
        match Mark::deserialize(watermark) {
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

    #[test]
    fn idle_snapshots_compare_by_xmax_and_running_list() {
        assert_eq!(snapshot_progress("10:20:12,15"), Some(("20", "12,15")));
        assert_ne!(snapshot_progress("10:20:12,15"), snapshot_progress("10:21:12,15"));
        assert_eq!(snapshot_progress("12:20:"), snapshot_progress("10:20:"));
    }
}
