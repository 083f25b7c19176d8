//! Making sure a delivered batch starts a DAG run: after each batch, a task beside
//! the sink watches the batch's last asset event until every DAG consuming the asset
//! has a run that includes it, or one queued that will.
//!
//! Why: Airflow 3.3 queues a run for a DAG in one row per (asset, DAG) (its
//! `queuedEvents`); the scheduler creates the run from it with every event stamped up
//! to the row's creation time, then deletes the row. An event stamped later that
//! arrives while the row is still there adds no row, and once the row is deleted it
//! waits, with no run, until some later event queues one (a burst's tail, or the last
//! file of the day). Runs tile time: a run includes every event after the previous
//! asset-triggered run of its DAG up to its own `run_after`. So the last event of a
//! batch has a run when a run of the DAG has `run_after` at or after the event's
//! timestamp, or a queued row was created at or after it. When neither holds and no
//! older row is waiting to become a run, the event was left out: the task posts it
//! again (same `extra`, with `requeued: true`), which queues a run that includes it;
//! the DAG drops the repeat by `event_id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::api::{Api, Failed};
use super::events::{self, Posted};

/// How often a waiting check looks again: about a scheduler loop.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long an older queued row may stay before the task stops waiting for it: its DAG
/// waits for something else (another asset of its condition, `max_active_runs`), and
/// the run it becomes will be created later than the event, so it includes it.
const WAIT_FOR_QUEUED: Duration = Duration::from_secs(60);

/// Most re-posts for one batch; beyond them something else keeps the run from being
/// queued, and a warning says so.
const MAX_REQUEUES: u32 = 3;

/// How long what a DAG says about itself (paused, partitioned) is trusted.
const DAG_INFO_FOR: Duration = Duration::from_secs(60);

/// The last asset event of a delivered batch, to be seen into a run.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) asset_id: i64,
    /// highwater's id of it (for logs).
    pub(super) key: String,
    /// Its `extra`, posted again (with `requeued: true`) if it was left out.
    pub(super) extra: Box<RawValue>,
    /// Airflow's copy of it.
    pub(super) posted: Posted,
    /// The DAGs scheduled on the asset when the batch was delivered.
    pub(super) consumers: Vec<String>,
}

/// The handle the sink keeps; dropping it stops the task.
pub(super) struct Coverage {
    tx: watch::Sender<Option<Target>>,
    /// Targets the task is done with (seen into a run, or given up on), for tests to
    /// wait on.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests only"))]
    settled: Arc<AtomicU64>,
}

impl Coverage {
    /// Starts the task with its own handle on the API.
    pub(super) fn start(api: Api) -> Self {
        let (tx, rx) = watch::channel(None);
        let settled = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(api, rx, Arc::clone(&settled)));
        Coverage { tx, settled }
    }

    /// How many targets the task is done with.
    #[cfg(test)]
    pub(super) fn settled(&self) -> u64 {
        self.settled.load(Ordering::Relaxed)
    }

    /// Watches `target` from now on; a batch delivered later replaces it (a run that
    /// includes a later event includes this one too).
    pub(super) fn watch(&self, target: Target) {
        self.tx.send_replace(Some(target));
    }
}

/// What one look found for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Every consuming DAG has, or will have, a run that includes the event.
    Covered,
    /// A DAG has a queued row older than the event that has not become a run yet.
    Waiting,
    /// These DAGs have neither: the event was left out.
    LeftOut(Vec<String>),
}

async fn run(mut api: Api, mut rx: watch::Receiver<Option<Target>>, settled: Arc<AtomicU64>) {
    let mut dags = DagInfo::default();
    'targets: loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(mut target) = rx.borrow_and_update().clone() else { continue };
        let mut requeues = 0;
        let mut waiting_since: Option<Instant> = None;
        let mut delay = LOOK_EVERY;
        loop {
            match look(&mut api, &mut dags, &target).await {
                Ok(Verdict::Covered) => {
                    tracing::debug!(event = %target.key, covered = true, "The batch's last asset event has a DAG run (or one queued).");
                    settled.fetch_add(1, Ordering::Relaxed);
                    continue 'targets;
                }
                Ok(Verdict::Waiting) => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > WAIT_FOR_QUEUED {
                        tracing::debug!(event = %target.key, "A queued DAG run waits for more than this asset; it will include the event.");
                        settled.fetch_add(1, Ordering::Relaxed);
                        continue 'targets;
                    }
                    delay = LOOK_EVERY;
                }
                Ok(Verdict::LeftOut(left_out)) => {
                    if requeues == MAX_REQUEUES {
                        tracing::warn!(event = %target.key, dags = ?left_out, "Airflow queued no DAG run for this event after {MAX_REQUEUES} re-posts; leaving it.");
                        settled.fetch_add(1, Ordering::Relaxed);
                        continue 'targets;
                    }
                    requeues += 1;
                    let extra = events::requeued(&target.extra);
                    match events::post(&mut api, target.asset_id, &extra, None).await {
                        Ok(posted) => {
                            // `requeued`: a field log queries (and the tests) can match.
                            tracing::info!(event = %target.key, requeued = true, dags = ?left_out,
                                "Airflow queued no DAG run for the batch's last event; posted it again so that one is queued.");
                            target.posted = posted;
                            waiting_since = None;
                            delay = LOOK_EVERY;
                        }
                        Err(e) => {
                            tracing::debug!(event = %target.key, error = ?e, "Could not post the event again; trying later.");
                            delay = (delay * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                Err(failed) => {
                    tracing::debug!(event = %target.key, reason = failed.reason(), "Could not check for a DAG run; trying later.");
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A later batch's event: its run includes this one.
                    if let Some(newer) = rx.borrow_and_update().clone() {
                        target = newer;
                        requeues = 0;
                        waiting_since = None;
                        delay = LOOK_EVERY;
                    }
                }
            }
        }
    }
}

/// Whether each DAG consuming the asset has a run for `target`'s event, or one queued.
async fn look(api: &mut Api, dags: &mut DagInfo, target: &Target) -> Result<Verdict, Failed> {
    let at = target.posted.timestamp;
    let mut queued = queued_rows(api, target.asset_id).await?;
    let mut waiting = false;
    let mut left_out = Vec::new();
    for dag in &target.consumers {
        // A paused DAG starts no run for what arrives meanwhile, and a partitioned one
        // queues its runs by partition: neither is this check's business.
        let Some(info) = dags.get(api, dag).await? else { continue };
        if info.is_paused || info.timetable_partitioned {
            continue;
        }
        match queued.get(dag) {
            Some(created) if *created >= at => continue,
            Some(_) => {
                waiting = true;
                continue;
            }
            None => {}
        }
        if has_run_after(api, dag, at).await? {
            continue;
        }
        // A row may have been queued (by a later event) since the first look.
        queued = queued_rows(api, target.asset_id).await?;
        if queued.get(dag).is_some_and(|created| *created >= at) {
            continue;
        }
        left_out.push(dag.clone());
    }
    Ok(if !left_out.is_empty() {
        Verdict::LeftOut(left_out)
    } else if waiting {
        Verdict::Waiting
    } else {
        Verdict::Covered
    })
}

/// The asset's queued rows: DAG id → when the row was created.
async fn queued_rows(api: &mut Api, asset_id: i64) -> Result<HashMap<String, DateTime<Utc>>, Failed> {
    #[derive(Deserialize)]
    struct Row {
        dag_id: String,
        created_at: DateTime<Utc>,
    }
    #[derive(Deserialize)]
    struct Rows {
        queued_events: Vec<Row>,
    }
    let path = format!("/api/v2/assets/{asset_id}/queuedEvents");
    let what = api.shown(&path);
    let rows = api.get_json::<Rows>(api.url(&path), &what).await?;
    Ok(rows
        .map(|r| r.queued_events.into_iter().map(|q| (q.dag_id, q.created_at)).collect())
        .unwrap_or_default())
}

/// True when `dag` has an asset-triggered run with `run_after` at or after `at`.
async fn has_run_after(api: &mut Api, dag: &str, at: DateTime<Utc>) -> Result<bool, Failed> {
    #[derive(Deserialize)]
    struct Runs {
        total_entries: usize,
    }
    let path = format!("/api/v2/dags/{dag}/dagRuns");
    let what = api.shown(&path);
    let mut url = api.url(&path);
    url.query_pairs_mut()
        .append_pair("run_type", "asset_triggered")
        .append_pair("run_after_gte", &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .append_pair("limit", "1");
    Ok(api.get_json::<Runs>(url, &what).await?.is_some_and(|r| r.total_entries > 0))
}

/// What a DAG says about itself, as this check needs it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Dag {
    #[serde(default)]
    pub(super) is_paused: bool,
    #[serde(default)]
    pub(super) timetable_partitioned: bool,
}

/// DAGs looked up lately.
#[derive(Default)]
struct DagInfo {
    known: HashMap<String, (Option<Dag>, Instant)>,
}

impl DagInfo {
    /// The DAG, None when Airflow does not have it.
    async fn get(&mut self, api: &mut Api, dag_id: &str) -> Result<Option<Dag>, Failed> {
        if let Some((dag, at)) = self.known.get(dag_id)
            && at.elapsed() < DAG_INFO_FOR
        {
            return Ok(dag.clone());
        }
        let dag = fetch_dag(api, dag_id).await?;
        self.known.insert(dag_id.to_string(), (dag.clone(), Instant::now()));
        Ok(dag)
    }
}

/// `GET /api/v2/dags/{dag_id}`; None when Airflow does not have it.
pub(super) async fn fetch_dag(api: &mut Api, dag_id: &str) -> Result<Option<Dag>, Failed> {
    let path = format!("/api/v2/dags/{dag_id}");
    let what = api.shown(&path);
    api.get_json::<Dag>(api.url(&path), &what).await
}
