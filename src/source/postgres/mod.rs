//! The `postgres` source: new rows of a table, safe against transactions that commit
//! out of order.
//!
//! Two modes (docs/reference/postgres.md):
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
//!   delay; for tables that cannot get the column, with the limits docs/reference/postgres.md states.
//!
//! The watermark is the source's whole state (its head; it remembers no members), held
//! in memory between polls. This file holds it, where `start:` puts it, and the poll;
//! `config` the config and its validation, `plan` the catalog checks and the SQL, `rows`
//! rows to events, `values` column values to JSON, `history` the server's history,
//! `connect` a connection, `pool` the connections watchers of one server share.

mod config;
pub mod connect;
mod history;
mod plan;
mod pool;
mod rows;
pub mod values;

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::RowStream;

pub use self::config::{Mode, PostgresConfig};
use self::history::{Facts, Server, Verdict};
use self::plan::{Args, Plan, Shape};
use self::pool::{Lease, Pool, Timeouts};
use super::{Batch, ChangeSet, ErrorClass, Found, Polled, Source, SourceError, SourceState};
use crate::json::Json;
use crate::value::{Kind, Start};

/// The stored head: the whole state of this source (it remembers no members).
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
        /// `start:` with a time: in the first pair (no `from`), rows whose first cursor
        /// column is earlier were there before the watcher started and are left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before: Option<DateTime<Utc>>,
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

impl Mark {
    /// Where a watcher with no watermark starts from the beginning.
    fn empty(mode: Mode) -> Mark {
        match mode {
            Mode::Xid => Mark::Xid { from: None, to: None, after: None, not_before: None, server: None },
            Mode::Cursor => Mark::Cursor { after: None },
        }
    }

    fn mode(&self) -> Mode {
        match self {
            Mark::Xid { .. } => Mode::Xid,
            Mark::Cursor { .. } => Mode::Cursor,
        }
    }

    fn encode(&self) -> Result<Json, SourceError> {
        Json::encode(self).map_err(|e| SourceError::transient(format!("cannot encode the watermark: {e}")))
    }

    /// The short form events and `highwater state list` show.
    fn summary(&self) -> Value {
        match self {
            Mark::Xid { from, to, .. } => {
                let short = |s: &String| s.splitn(3, ':').take(2).collect::<Vec<_>>().join(":");
                serde_json::json!({
                    "snapshot": from.as_ref().map(short),
                    "catching_up_to": to.as_ref().map(short),
                })
            }
            Mark::Cursor { after } => serde_json::json!({ "after": after }),
        }
    }
}

/// The parts of `xmin:xmax:xip,…` that tell whether anything finished in between.
fn snapshot_progress(text: &str) -> Option<(&str, &str)> {
    let mut parts = text.splitn(3, ':');
    let _xmin = parts.next()?;
    Some((parts.next()?, parts.next()?))
}

/// What one poll found: the items, the head they lead to, and whether more is waiting.
struct Outcome {
    items: Vec<Found>,
    next: Mark,
    more: bool,
}

/// The runtime `postgres` source.
pub struct Postgres {
    config: PostgresConfig,
    /// The connections this watcher shares with the others that read the same server
    /// (joined at the first poll).
    pool: Option<Arc<Pool>>,
    /// What the catalog said and the SQL built from it; read again after a failure.
    plan: Option<Plan>,
    /// Where the next poll starts: the committed head (None: none is stored), or where a
    /// poll that found nothing moved it in memory.
    mark: Option<Mark>,
    /// The heads of the batches handed out and not yet committed, oldest first, with
    /// their texts: a commit then costs a comparison of the text instead of a parse. A
    /// poll reads ahead from the newest (the loop may poll again while the batch before
    /// is delivered: [`Source::reads_ahead`]).
    handed_out: VecDeque<(Json, Mark)>,
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
        Postgres {
            config,
            pool: None,
            plan: None,
            mark: None,
            handed_out: VecDeque::new(),
            skipped_null_cursor: 0,
            skipped_untaken: 0,
            as_text_total: 0,
        }
    }

    /// Where the next poll starts: the newest head handed out, else the committed one.
    fn next_start(&self) -> Option<&Mark> {
        self.handed_out.back().map(|(_, mark)| mark).or(self.mark.as_ref())
    }

    /// A connection of the pool for one poll, and the table's plan (read from the
    /// catalog on the first poll and after a failure).
    async fn lease(&mut self) -> Result<(Lease, Plan), SourceError> {
        let settings = self.config.settings();
        let max = self.config.max_connections;
        let pool = Arc::clone(self.pool.get_or_insert_with(|| pool::join(&settings, max)));
        let timeouts =
            Timeouts { statement: self.config.statement_timeout.0, lock: self.config.lock_timeout.0 };
        let mut lease = pool.get(timeouts).await?;
        if let Some(plan) = self.plan.take() {
            return Ok((lease, plan));
        }
        let plan = match self.read_plan(&mut lease).await {
            Ok(plan) => plan,
            Err(e) => {
                lease.discard();
                return Err(e);
            }
        };
        Ok((lease, plan))
    }

    /// Reads the catalog and builds the plan.
    async fn read_plan(&mut self, lease: &mut Lease) -> Result<Plan, SourceError> {
        let plan = plan::prepare(lease, &self.config).await?;
        tracing::info!(table = %plan.name, time_zone = %plan.zone, "Read the table's columns and prepared its queries.");
        if self.config.mode == Mode::Cursor && !plan.nullable.is_empty() {
            let n = plan.count_null_cursors(lease.client()).await?;
            if n > 0 {
                self.skipped_null_cursor = self.skipped_null_cursor.max(n);
                tracing::warn!(table = %plan.name, rows = n, "Rows with a NULL cursor column are skipped.");
            }
        }
        Ok(plan)
    }

    /// Runs `work` with a leased connection and the plan. After a failure the connection
    /// is closed rather than given back (it may be inside a failed transaction) and the
    /// plan is read again at the next try, so a table fixed by an operator or a
    /// restarted server is picked up.
    async fn with_lease<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Self, &mut Lease, &Plan) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let result = match self.lease().await {
            Ok((mut lease, plan)) => {
                let result = work(self, &mut lease, &plan).await;
                match &result {
                    Ok(_) => self.plan = Some(plan),
                    Err(_) => {
                        lease.forget(plan.id);
                        lease.discard();
                    }
                }
                result
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result
            && e.class == ErrorClass::Transient
        {
            tracing::debug!(error = %e, "Closed the Postgres connection; the next poll takes another.");
        }
        result
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
    fn count_as_text(&mut self, table: &str, items: &[Found]) {
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

    /// Mode `xid`: the server's snapshot and what identifies its history, in one round
    /// trip (the statement is prepared once per connection).
    async fn facts(lease: &mut Lease, plan: &Plan) -> Result<Facts, SourceError> {
        let statement = lease.statement(pool::SHARED, history::FACTS_SQL, &plan.name).await?;
        history::facts(lease.client(), &statement, &plan.name).await
    }

    /// The first head for `start:` (see [`Source::begin`]).
    async fn first_mark(
        &mut self,
        lease: &mut Lease,
        plan: &Plan,
        start: &Start,
    ) -> Result<Mark, SourceError> {
        let before = match start {
            Start::Beginning => return Ok(Mark::empty(self.config.mode)),
            Start::Now => None,
            Start::At(time) => Some(*time),
        };
        let grace = self.config.grace.map(|g| g.0.as_secs_f64());
        Ok(match self.config.mode {
            // Every transaction the current snapshot shows counts as announced, and in
            // the first pair, rows from before the time do. The snapshot is made
            // durable like any the source relies on (see `history`).
            Mode::Xid => {
                if before.is_some() {
                    plan.check_time_cursor()?;
                }
                let facts = Self::facts(lease, plan).await?;
                if !facts.standby && facts.flushed < facts.lsn {
                    history::make_durable(lease.client(), facts.lsn, &plan.name).await?;
                }
                let system = lease.system(&plan.name).await?;
                let server = Some(history::record(&system, None, &facts));
                match before {
                    None => Mark::Xid {
                        from: Some(facts.snapshot),
                        to: None,
                        after: None,
                        not_before: None,
                        server,
                    },
                    Some(time) => Mark::Xid {
                        from: None,
                        to: Some(facts.snapshot),
                        after: None,
                        not_before: Some(time),
                        server,
                    },
                }
            }
            // As if every row a poll could announce now (before the time) had been.
            Mode::Cursor => {
                let time = before.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                let last = plan.last_position(lease.client(), grace, time.as_ref()).await?;
                Mark::Cursor { after: last.map(|row| rows::position(plan, &row, false)).transpose()? }
            }
        })
    }

    async fn poll_inner(
        &mut self,
        lease: &mut Lease,
        plan: &Plan,
        mark: Mark,
        limit: usize,
    ) -> Result<Outcome, SourceError> {
        let grace = self.config.grace.map(|g| g.0.as_secs_f64());
        let emit = self.config.emit;
        let limit = limit.max(1);
        let row_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match mark {
            Mark::Xid { from, to, after, not_before, server } => {
                let facts = Self::facts(lease, plan).await?;
                let system = lease.system(&plan.name).await?;
                let mut queries = 1;
                let (from, to, after, server) = match &server {
                    None => (from, to, after, None),
                    Some(stored) => {
                        let newest = to.as_deref().or(from.as_deref());
                        let verdict =
                            history::check(lease.client(), &system, stored, newest, &facts, &plan.name)
                                .await?;
                        match verdict {
                            Verdict::Continue(None) => (from, to, after, server),
                            Verdict::Continue(Some(adopted)) => (from, to, after, Some(adopted)),
                            Verdict::Behind => {
                                tracing::debug!(table = %plan.name, "The standby has not replayed up to the watermark yet.");
                                let next = Mark::Xid { from, to, after, not_before, server };
                                return Ok(Outcome { items: Vec::new(), next, more: false });
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
                // The `start:` time bounds the first pair only.
                let not_before = not_before.filter(|_| from.is_none());
                let (to, server) = match to {
                    Some(to) => (to, server),
                    None => {
                        let now = facts.snapshot.clone();
                        // No transaction finished since the last poll: nothing can be
                        // new, and one query is all an idle poll costs.
                        if from.as_deref().and_then(snapshot_progress) == snapshot_progress(&now) {
                            tracing::debug!(table = %plan.name, queries, rows = 0, "Polled table.");
                            let next =
                                Mark::Xid { from: Some(now), to: None, after: None, not_before, server };
                            return Ok(Outcome { items: Vec::new(), next, more: false });
                        }
                        // Nothing of the new snapshot is announced before the WAL that
                        // shows it is durable (see `history`).
                        if !facts.standby && facts.flushed < facts.lsn {
                            history::make_durable(lease.client(), facts.lsn, &plan.name).await?;
                            queries += 1;
                        }
                        (now, Some(history::record(&system, server.as_ref(), &facts)))
                    }
                };
                let shape =
                    Shape { since: from.is_some(), resume: after.is_some(), floor: not_before.is_some() };
                let zone = plan.zone.clone();
                let position = after.as_deref().unwrap_or_default();
                let floor = not_before.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                let args = Args {
                    to: Some(&to),
                    from: from.as_ref(),
                    after: position,
                    grace: None,
                    zone: Some(&zone),
                    not_before: floor.as_ref(),
                    limit: row_limit,
                };
                let stream = plan.page(lease, shape, &args).await?;
                queries += 1;
                let (items, last) = read_page(plan, stream, limit, true).await?;
                let n = items.len();
                let more = n >= limit;
                let items = rows::emit(plan, items, emit);
                let name = plan.name.clone();
                let next = if more {
                    Mark::Xid { from: from.clone(), to: Some(to), after: last.or(after), not_before, server }
                } else {
                    // The pair is done: count the rows it skipped for a NULL cursor (none
                    // can be when the catalog says the cursor columns are NOT NULL).
                    if !plan.nullable.is_empty() {
                        let nulls = plan.count_pair_nulls(lease.client(), &args).await?;
                        queries += 1;
                        self.skip_nulls(&name, nulls);
                    }
                    Mark::Xid { from: Some(to), to: None, after: None, not_before: None, server }
                };
                tracing::debug!(table = %name, queries, rows = n, "Polled table.");
                self.count_as_text(&name, &items);
                Ok(Outcome { items, next, more })
            }
            Mark::Cursor { after } => {
                let shape = Shape { since: false, resume: after.is_some(), floor: false };
                let zone = plan.zone.clone();
                let position = after.as_deref().unwrap_or_default();
                let args = Args {
                    to: None,
                    from: None,
                    after: position,
                    grace,
                    zone: Some(&zone),
                    not_before: None,
                    limit: row_limit,
                };
                let stream = plan.page(lease, shape, &args).await?;
                let (items, last) = read_page(plan, stream, limit, false).await?;
                let more = items.len() >= limit;
                tracing::debug!(table = %plan.name, queries = 1, rows = items.len(), "Polled table.");
                let items = rows::emit(plan, items, emit);
                let name = plan.name.clone();
                self.count_as_text(&name, &items);
                Ok(Outcome { items, next: Mark::Cursor { after: last.or(after) }, more })
            }
        }
    }

    /// Reads a stored head of this source's mode.
    fn read(&self, head: &Json) -> Result<Mark, SourceError> {
        let mark: Mark =
            head.decode().map_err(|e| SourceError::unreadable_state(self.kind(), "watermark", e))?;
        if mark.mode() != self.config.mode {
            return Err(SourceError::needs_attention(
                "stored watermark was written in another mode; reset it with `highwater state reset`",
            ));
        }
        Ok(mark)
    }
}

/// Reads a page's rows as they arrive, each turned into its item at once (no row is
/// kept beyond its item), and the keyset position of the last one.
async fn read_page(
    plan: &Plan,
    stream: RowStream,
    limit: usize,
    with_xid: bool,
) -> Result<(Vec<Found>, Option<Vec<String>>), SourceError> {
    let mut stream = std::pin::pin!(stream);
    // Grown as rows come: a large limit is often far more than a page holds.
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut last = None;
    while let Some(row) = stream.next().await {
        let row = row.map_err(|e| query_error(&plan.name, e))?;
        items.push(rows::found(plan, &row)?);
        last = Some(row);
    }
    let last = last.map(|row| rows::position(plan, &row, with_xid)).transpose()?;
    Ok((items, last))
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

    fn restore(&mut self, state: SourceState) -> Result<(), SourceError> {
        self.handed_out.clear();
        self.mark = None;
        // Members are not this source's: a state of another kind left them, and they
        // are ignored (a reset removes them).
        self.mark = state.head.as_ref().map(|head| self.read(head)).transpose()?;
        Ok(())
    }

    async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
        if *start == Start::Beginning {
            return Ok(ChangeSet::default());
        }
        let first =
            self.with_lease(async |this, lease, plan| this.first_mark(lease, plan, start).await).await?;
        Ok(ChangeSet::head(first.encode()?))
    }

    async fn poll(&mut self, limit: usize) -> Result<Polled, SourceError> {
        let mark = self.next_start().cloned().unwrap_or_else(|| Mark::empty(self.config.mode));
        let Outcome { items, next, more } = self
            .with_lease(async |this, lease, plan| this.poll_inner(lease, plan, mark, limit).await)
            .await?;
        if items.is_empty() {
            // Nothing to announce, nothing to lose: the next poll starts from here, and
            // nothing is stored. While a batch is out, its commit decides where the next
            // poll starts (this one found nothing past it; the next looks again).
            if self.handed_out.is_empty() {
                self.mark = Some(next);
            }
            return Ok(Polled { batches: Vec::new(), more });
        }
        let text = next.encode()?;
        let batch = Batch { items, change: ChangeSet::head(text.clone()) };
        self.handed_out.push_back((text, next));
        Ok(Polled { batches: vec![batch], more })
    }

    fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError> {
        let Some(head) = &change.head else { return Ok(()) };
        self.mark = Some(match self.handed_out.pop_front() {
            Some((text, mark)) if text == *head => mark,
            _ => {
                // Not the batch handed out first: whatever was read ahead of it is
                // read again from this head.
                self.handed_out.clear();
                self.read(head)?
            }
        });
        Ok(())
    }

    fn reads_ahead(&self) -> bool {
        // Every batch's change is a whole new head, valid once the batch before it is
        // committed: a poll can go on from the newest head handed out.
        true
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        let result = self.with_lease(async |_, _, _| Ok(())).await;
        // Read again at the first poll, as after a restart.
        self.plan = None;
        result
    }

    fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_untaken)
    }

    fn summary(&self) -> Value {
        self.next_start().map_or(Value::Null, Mark::summary)
    }

    fn summarize(&self, head: &Json, _remembered: u64) -> Value {
        match head.decode::<Mark>() {
            Ok(mark) => mark.summary(),
            Err(_) => Value::String(head.as_str().chars().take(60).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(mode: &str) -> Postgres {
        let yaml = format!(
            "table: t\ncursor: id\nmode: {mode}\n{}",
            if mode == "xid" { "xid_column: hx\n" } else { "" }
        );
        Postgres::new(serde_yaml::from_str(&yaml).expect("config"))
    }

    #[test]
    fn the_head_is_the_whole_state_and_a_commit_adopts_what_was_handed_out() {
        let mut pg = source("xid");
        pg.restore(SourceState::default()).expect("empty");
        assert_eq!(pg.summary(), Value::Null);
        let head =
            Json::parse(r#"{"mode":"xid","from":"10:12:11","after":["11","3"],"to":"10:15:"}"#).unwrap();
        pg.restore(SourceState { head: Some(head.clone()), members: Vec::new() }).expect("restore");
        assert_eq!(pg.summary(), serde_json::json!({"snapshot": "10:12", "catching_up_to": "10:15"}));
        assert_eq!(pg.summarize(&head, 0), pg.summary());
        // A batch's head is adopted without a parse; another one is read.
        let next =
            Mark::Xid { from: Some("15:15:".into()), to: None, after: None, not_before: None, server: None };
        pg.handed_out.push_back((next.encode().unwrap(), next.clone()));
        pg.committed(&ChangeSet::head(next.encode().unwrap())).expect("commit");
        assert_eq!(pg.mark, Some(next));
        // A poll reads ahead from the newest head handed out; commits adopt them in order.
        let (a, b) =
            (Mark::Cursor { after: Some(vec!["1".into()]) }, Mark::Cursor { after: Some(vec!["2".into()]) });
        let mut ahead = source("cursor");
        ahead.restore(SourceState::default()).expect("empty");
        ahead.handed_out.push_back((a.encode().unwrap(), a.clone()));
        ahead.handed_out.push_back((b.encode().unwrap(), b.clone()));
        assert_eq!(ahead.summary(), serde_json::json!({"after": ["2"]}));
        ahead.committed(&ChangeSet::head(a.encode().unwrap())).expect("commit a");
        assert_eq!((ahead.mark.as_ref(), ahead.handed_out.len()), (Some(&a), 1));
        ahead.committed(&ChangeSet::head(b.encode().unwrap())).expect("commit b");
        assert_eq!((ahead.mark.as_ref(), ahead.handed_out.len()), (Some(&b), 0));
        // A head out of order (set by an operator) drops what was read ahead.
        ahead.handed_out.push_back((b.encode().unwrap(), b.clone()));
        ahead.committed(&ChangeSet::head(a.encode().unwrap())).expect("commit a again");
        assert_eq!((ahead.mark.as_ref(), ahead.handed_out.len()), (Some(&a), 0));
        pg.committed(&ChangeSet::head(head)).expect("commit");
        assert_eq!(pg.summary()["snapshot"], "10:12");
        pg.committed(&ChangeSet::default()).expect("no head");
        assert_eq!(pg.summary()["snapshot"], "10:12");
        // Another mode's head, or another source's, needs an operator.
        let cursor = Json::parse(r#"{"mode":"cursor","after":["4"]}"#).unwrap();
        let err = pg.restore(SourceState { head: Some(cursor.clone()), members: Vec::new() }).unwrap_err();
        assert!(err.message.contains("another mode"), "{}", err.message);
        assert!(pg.committed(&ChangeSet::head(Json::parse("[1]").unwrap())).is_err());
        let mut by_cursor = source("cursor");
        by_cursor.restore(SourceState { head: Some(cursor), members: Vec::new() }).expect("cursor");
        assert_eq!(by_cursor.summary(), serde_json::json!({"after": ["4"]}));
    }

    #[test]
    fn a_start_time_is_kept_in_the_head_as_rfc_3339() {
        let time = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").unwrap().with_timezone(&Utc);
        let mark = Mark::Xid {
            from: None,
            to: Some("5:9:".into()),
            after: None,
            not_before: Some(time),
            server: None,
        };
        let text = mark.encode().unwrap();
        assert_eq!(text.as_str(), r#"{"mode":"xid","to":"5:9:","not_before":"2026-01-02T00:00:00Z"}"#);
        assert_eq!(text.decode::<Mark>().unwrap(), mark);
    }

    #[test]
    fn idle_snapshots_compare_by_xmax_and_running_list() {
        assert_eq!(snapshot_progress("10:20:12,15"), Some(("20", "12,15")));
        assert_ne!(snapshot_progress("10:20:12,15"), snapshot_progress("10:21:12,15"));
        assert_eq!(snapshot_progress("12:20:"), snapshot_progress("10:20:"));
    }
}
