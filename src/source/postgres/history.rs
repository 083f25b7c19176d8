//! The server's history in a watermark of mode `xid`, and the check at every poll that
//! the server still has it.
//!
//! A snapshot watermark says "every transaction id below this one that is not listed
//! as running is announced". That holds only while the server never hands out those
//! ids again, which it does after losing WAL the watermark relied on: a crash that
//! lost asynchronous commits, a failover to a standby that was behind, a restore to an
//! earlier point. So the watermark records where in the server's history its snapshot
//! was taken ([`Server`]), and a poll first compares that with the server ([`check`]):
//!
//! - The source makes its snapshots durable before it announces a row of them
//!   ([`make_durable`]): a crash of the server it reads from then loses nothing the
//!   watermark relies on.
//! - Another timeline (a promoted standby, a point-in-time restore) is looked up in the
//!   timeline's history: a branch after the watermark's position lost nothing; one
//!   before it lost ids, and every id at or above the `next_xid` of a checkpoint the new
//!   timeline still has is announced again ([`cap`]). Where no such checkpoint is
//!   known, and where the history went back on the same timeline or belongs to
//!   another cluster, the watcher stops with an error that names the cause and the
//!   `highwater state` command to go on with.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row, Statement};

use super::query_error;
use crate::source::SourceError;

/// How many checkpoints a watermark remembers: a standby that is further behind than
/// the oldest of them when it is promoted stops the watcher instead of a re-scan.
const CHECKPOINTS_KEPT: usize = 4;

/// A WAL position, written as Postgres writes it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Lsn(pub u64);

impl Lsn {
    fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.split_once('/')?;
        Some(Lsn((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Lsn::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a WAL position")))
    }
}

/// A checkpoint: a server that replayed it has handed out every transaction id below
/// its `next_xid` and will not hand them out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Checkpoint {
    /// Where its record is in the WAL.
    pub lsn: Lsn,
    /// The next transaction id (epoch included) when it was taken.
    pub next_xid: u64,
}

/// Where in the server's history the newest snapshot of a watermark was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Server {
    /// `system_identifier`: which cluster.
    pub system: String,
    /// The timeline the snapshot was taken on.
    pub timeline: u32,
    /// The WAL position just after the snapshot was taken (insert position on a
    /// primary, replay position on a standby). It was durable before any row of the
    /// snapshot was announced.
    pub lsn: Lsn,
    /// Checkpoints of this history before `lsn`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
}

/// What one query tells about the server, with the snapshot of the poll.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    /// `pg_current_snapshot()`.
    pub snapshot: String,
    /// The server is a standby.
    pub standby: bool,
    /// The WAL position read just after the snapshot (insert, or replay on a standby).
    pub lsn: Lsn,
    /// How far the WAL is flushed (on a standby: replayed, which is flushed).
    pub flushed: Lsn,
    /// The current timeline (on a standby: that of its last restartpoint).
    pub timeline: u32,
    /// The last checkpoint (restartpoint on a standby), read before the snapshot.
    pub checkpoint: Checkpoint,
    /// The timeline of that checkpoint.
    pub checkpoint_timeline: u32,
}

/// The query behind [`Facts`]: one round trip, the snapshot first. `pg_control_checkpoint()`
/// in FROM is read before the target list, so its checkpoint precedes the snapshot.
pub(super) const FACTS_SQL: &str = "SELECT pg_current_snapshot()::text, pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text, \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END, \
     c.timeline_id, c.checkpoint_lsn::text, c.next_xid \
     FROM pg_control_checkpoint() c";

/// Reads the cluster's `system_identifier` (once per connection).
pub(super) async fn system(client: &Client, table: &str) -> Result<String, SourceError> {
    let row = client
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
        .map_err(|e| query_error(table, e))?;
    row.try_get(0).map_err(|e| query_error(table, e))
}

/// Runs [`FACTS_SQL`].
pub(super) async fn facts(client: &Client, statement: &Statement, table: &str) -> Result<Facts, SourceError> {
    let row = client.query_one(statement, &[]).await.map_err(|e| query_error(table, e))?;
    read_facts(&row).map_err(|e| match e {
        Unreadable::Driver(e) => query_error(table, e),
        Unreadable::Text(what) => {
            SourceError::transient(format!("{table}: unexpected {what} from the server"))
        }
    })
}

enum Unreadable {
    Driver(tokio_postgres::Error),
    Text(&'static str),
}

fn read_facts(row: &Row) -> Result<Facts, Unreadable> {
    let get_text =
        |i: usize| -> Result<Option<String>, Unreadable> { row.try_get(i).map_err(Unreadable::Driver) };
    let lsn = |i: usize, what: &'static str| -> Result<Lsn, Unreadable> {
        get_text(i)?.as_deref().and_then(Lsn::parse).ok_or(Unreadable::Text(what))
    };
    let standby: bool = row.try_get(1).map_err(Unreadable::Driver)?;
    let checkpoint_timeline: i32 = row.try_get(5).map_err(Unreadable::Driver)?;
    let checkpoint_timeline = u32::try_from(checkpoint_timeline).map_err(|_| Unreadable::Text("timeline"))?;
    // A WAL file name starts with the timeline it belongs to, in 8 hex digits.
    let timeline = match get_text(4)? {
        Some(file) => file
            .get(..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or(Unreadable::Text("WAL file name"))?,
        None => checkpoint_timeline,
    };
    let next_xid = get_text(7)?.as_deref().and_then(epoch_xid).ok_or(Unreadable::Text("next_xid"))?;
    Ok(Facts {
        snapshot: get_text(0)?.ok_or(Unreadable::Text("snapshot"))?,
        standby,
        lsn: lsn(2, "WAL position")?,
        flushed: lsn(3, "WAL flush position")?,
        timeline,
        checkpoint: Checkpoint { lsn: lsn(6, "checkpoint position")?, next_xid },
        checkpoint_timeline,
    })
}

/// `epoch:xid` (as `pg_control_checkpoint()` writes `next_xid`) as one 64-bit id.
fn epoch_xid(text: &str) -> Option<u64> {
    let (epoch, xid) = text.split_once(':')?;
    Some((epoch.parse::<u64>().ok()? << 32) | xid.parse::<u64>().ok()?)
}

/// The `xmax` of a snapshot's text (`xmin:xmax:xip,…`).
pub(super) fn xmax(snapshot: &str) -> Option<u64> {
    snapshot.split(':').nth(1)?.parse().ok()
}

/// `snapshot` with every transaction at or above `bound` counted as not yet seen: the
/// rows those transactions wrote are announced again.
pub(super) fn cap(snapshot: &str, bound: u64) -> Option<String> {
    let mut parts = snapshot.splitn(3, ':');
    let xmin: u64 = parts.next()?.parse().ok()?;
    let xmax: u64 = parts.next()?.parse().ok()?;
    let xip = parts.next()?;
    if bound >= xmax {
        return Some(snapshot.to_string());
    }
    let mut running = Vec::new();
    for x in xip.split(',').filter(|x| !x.is_empty()) {
        let x: u64 = x.parse().ok()?;
        if x < bound {
            running.push(x.to_string());
        }
    }
    Some(format!("{}:{bound}:{}", xmin.min(bound), running.join(",")))
}

/// The server after a new snapshot was made durable: its history up to `facts.lsn`,
/// with the checkpoints kept from `before` (of the same history) and the current one.
pub(super) fn record(system: &str, before: Option<&Server>, facts: &Facts) -> Server {
    let mut checkpoints: Vec<Checkpoint> = before.map(|s| s.checkpoints.clone()).unwrap_or_default();
    if checkpoints.last().is_none_or(|last| last.lsn < facts.checkpoint.lsn)
        && facts.checkpoint.lsn < facts.lsn
    {
        checkpoints.push(facts.checkpoint);
    }
    let excess = checkpoints.len().saturating_sub(CHECKPOINTS_KEPT);
    checkpoints.drain(..excess);
    Server { system: system.to_string(), timeline: facts.timeline, lsn: facts.lsn, checkpoints }
}

/// Makes the WAL durable up to `lsn` on a primary, so that a crash cannot lose what a
/// snapshot taken before `lsn` shows. A transaction that writes one WAL record (an
/// empty logical message, which only logical decoding sees) and commits with
/// `synchronous_commit = local` (set at connect) flushes everything before it. Where
/// the message is not allowed, a transaction id is committed instead (such a commit is
/// asynchronous) and the WAL writer's flush is waited for.
pub(super) async fn make_durable(client: &Client, lsn: Lsn, table: &str) -> Result<(), SourceError> {
    let flushed =
        client.batch_execute("BEGIN; SELECT pg_logical_emit_message(true, 'highwater', ''); COMMIT").await;
    let Err(e) = flushed else { return Ok(()) };
    if e.code() != Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return Err(query_error(table, e));
    }
    // The WAL position is the server's own, written back in its own form.
    let sql = format!(
        "ROLLBACK; BEGIN; SELECT pg_current_xact_id(); COMMIT; \
         DO $$ BEGIN WHILE pg_current_wal_flush_lsn() < '{lsn}'::pg_lsn LOOP PERFORM pg_sleep(0.01); END LOOP; END $$"
    );
    client.batch_execute(&sql).await.map_err(|e| query_error(table, e))
}

/// What a poll does about the server's history.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// The history is the watermark's: go on (with the server as recorded now, when
    /// that changed without losing anything, e.g. a timeline that branched later).
    Continue(Option<Server>),
    /// A standby that has not replayed up to the watermark yet: nothing is new.
    Behind,
    /// Ids at or above `bound` may have been handed out again: announce again what
    /// transactions from `bound` on wrote.
    Rescan { bound: u64, cause: Cause },
    /// No bound is known: stop, naming the cause.
    Stop(Cause),
}

/// Why the history is not the watermark's.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cause {
    /// Another cluster.
    OtherCluster { was: String, now: String },
    /// The same timeline, but behind the watermark: lost WAL (a restored copy of the
    /// data directory, a crash with `fsync` off or storage that lost a flush).
    WentBack { what: String },
    /// Another timeline, which branched off before the watermark's position, or where
    /// is not known.
    Branched { was: u32, now: u32, switch: Option<Lsn>, watermark: Lsn },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::OtherCluster { was, now } => write!(
                f,
                "the table is on another cluster (system identifier {now}; the watermark was made on {was})"
            ),
            Cause::WentBack { what } => write!(f, "{what} on the same timeline"),
            Cause::Branched { was, now, switch: Some(switch), watermark } => write!(
                f,
                "the server is on timeline {now}, which branched off timeline {was} at {switch}, before the \
                 watermark's position {watermark}"
            ),
            Cause::Branched { was, now, switch: None, .. } => write!(
                f,
                "the server is on timeline {now}, the watermark on timeline {was}, and where the new timeline \
                 branched off is not known (reading pg_wal/{now:08X}.history needs pg_read_server_files)"
            ),
        }
    }
}

/// Compares the stored history with the server's (`newest`: the newest snapshot the
/// watermark holds).
pub(super) async fn check(
    client: &Client,
    system: &str,
    stored: &Server,
    newest: Option<&str>,
    facts: &Facts,
    table: &str,
) -> Result<Verdict, SourceError> {
    if stored.system != system {
        return Ok(Verdict::Stop(Cause::OtherCluster {
            was: stored.system.clone(),
            now: system.to_string(),
        }));
    }
    if facts.timeline == stored.timeline {
        let stored_xmax = newest.and_then(xmax);
        let now_xmax = xmax(&facts.snapshot);
        let what = if facts.lsn < stored.lsn {
            format!("the WAL went back (the watermark stands at {}, the server at {})", stored.lsn, facts.lsn)
        } else if let (Some(was), Some(now)) = (stored_xmax, now_xmax)
            && now < was
        {
            format!("the transaction id counter went back (from {was} to {now})")
        } else {
            return Ok(Verdict::Continue(None));
        };
        // A standby replays the same history, only later: wait for it.
        return Ok(if facts.standby { Verdict::Behind } else { Verdict::Stop(Cause::WentBack { what }) });
    }
    let switch = switch_point(client, facts.timeline, stored.timeline, table).await?;
    let branched =
        |switch| Cause::Branched { was: stored.timeline, now: facts.timeline, switch, watermark: stored.lsn };
    let highest = |checkpoints: &mut dyn Iterator<Item = &Checkpoint>| checkpoints.map(|c| c.next_xid).max();
    match switch {
        Some(at) if at >= stored.lsn => {
            Ok(Verdict::Continue(Some(Server { timeline: facts.timeline, ..stored.clone() })))
        }
        Some(at) => Ok(match highest(&mut stored.checkpoints.iter().filter(|c| c.lsn < at)) {
            Some(bound) => Verdict::Rescan { bound, cause: branched(Some(at)) },
            None => Verdict::Stop(branched(Some(at))),
        }),
        // The server's last restartpoint, when it is still of the watermark's
        // timeline, lies before the branch: so do the checkpoints before it.
        None if facts.checkpoint_timeline == stored.timeline => {
            let restartpoint = facts.checkpoint;
            if restartpoint.lsn >= stored.lsn {
                return Ok(Verdict::Continue(Some(Server { timeline: facts.timeline, ..stored.clone() })));
            }
            let kept = stored.checkpoints.iter().filter(|c| c.lsn <= restartpoint.lsn);
            let bound = highest(&mut kept.chain([&restartpoint])).unwrap_or(restartpoint.next_xid);
            Ok(Verdict::Rescan { bound, cause: branched(None) })
        }
        None => Ok(Verdict::Stop(branched(None))),
    }
}

/// Where timeline `old` ended in the history of timeline `now`, from the timeline's
/// history file (None when it cannot be read or does not list `old`).
async fn switch_point(client: &Client, now: u32, old: u32, table: &str) -> Result<Option<Lsn>, SourceError> {
    let file = format!("pg_wal/{now:08X}.history");
    let text: String = match client.query_one("SELECT pg_read_file($1)", &[&file]).await {
        Ok(row) => row.try_get(0).map_err(|e| query_error(table, e))?,
        Err(e) if matches!(e.code(), Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE || *c == SqlState::UNDEFINED_FILE) =>
        {
            tracing::debug!(table, file = %file, error = %e, "Cannot read the timeline history.");
            return Ok(None);
        }
        Err(e) => return Err(query_error(table, e)),
    };
    Ok(parse_history(&text, old))
}

/// `parentTLI<TAB>switchpoint<TAB>reason` lines; the switch point of `old`.
fn parse_history(text: &str, old: u32) -> Option<Lsn> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split_whitespace();
        let tli: u32 = fields.next()?.parse().ok()?;
        (tli == old).then(|| fields.next().and_then(Lsn::parse)).flatten()
    })
}

/// The error a [`Verdict::Stop`] becomes: the cause, and the commands to go on with.
pub(super) fn stop_error(table: &str, cause: &Cause, stored: &Server, from: Option<&str>) -> SourceError {
    // A suggestion, not a proof: the oldest transaction id the watermark has a
    // checkpoint for, else the oldest its snapshot lists.
    let (n, what) = match stored.checkpoints.first() {
        Some(c) => {
            (c.next_xid, format!("the next id of the oldest checkpoint the watermark knows, at {}", c.lsn))
        }
        None => {
            (from.and_then(|f| f.split(':').next()?.parse().ok()).unwrap_or(0), "the watermark's xmin".into())
        }
    };
    SourceError::needs_attention(format!(
        "{table}: the server's history is not the watermark's: {cause}. Transaction ids the watermark counts as \
         announced may have been handed out again, and rows they write would be skipped, so the watcher stops. \
         To announce again every row written by transaction {n} or later ({what}; take a smaller id if the server \
         lost more), run `highwater state set WATCHER watermark '{{\"mode\":\"xid\",\"from\":\"{n}:{n}:\"}}'`; \
         to announce the whole table again, `highwater state reset WATCHER` (docs/internals.md: \"When the \
         server's history changes\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_read_and_write_as_postgres_does() {
        let lsn = Lsn::parse("16/B374D848").expect("lsn");
        assert_eq!(lsn.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/3000060") < Lsn::parse("1/0"));
        assert_eq!(epoch_xid("1:5"), Some((1 << 32) | 5));
    }

    #[test]
    fn a_capped_snapshot_counts_every_id_from_the_bound_on_as_unseen() {
        assert_eq!(cap("100:120:105,110,115", 112).as_deref(), Some("100:112:105,110"));
        assert_eq!(cap("100:120:105", 90).as_deref(), Some("90:90:"));
        assert_eq!(cap("100:120:", 130).as_deref(), Some("100:120:"));
        assert_eq!(cap("garbage", 5), None);
    }

    #[test]
    fn the_switch_point_of_the_old_timeline_is_read_from_the_history() {
        let text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A28\tbefore 2026-01-01\n";
        assert_eq!(parse_history(text, 1), Lsn::parse("0/3000000"));
        assert_eq!(parse_history(text, 2), Lsn::parse("0/5000A28"));
        assert_eq!(parse_history(text, 3), None);
    }

    #[test]
    fn recorded_checkpoints_are_the_newest_few_before_the_snapshot() {
        let facts = |checkpoint: u64, lsn: u64| Facts {
            snapshot: "1:1:".into(),
            standby: false,
            lsn: Lsn(lsn),
            flushed: Lsn(lsn),
            timeline: 1,
            checkpoint: Checkpoint { lsn: Lsn(checkpoint), next_xid: checkpoint * 10 },
            checkpoint_timeline: 1,
        };
        let mut server = record("s", None, &facts(5, 10));
        for (checkpoint, lsn) in [(5, 20), (7, 30), (8, 40), (9, 50), (11, 60)] {
            server = record("s", Some(&server), &facts(checkpoint, lsn));
        }
        let lsns: Vec<u64> = server.checkpoints.iter().map(|c| c.lsn.0).collect();
        assert_eq!(lsns, vec![7, 8, 9, 11]);
        assert_eq!(server.lsn, Lsn(60));
    }
}
