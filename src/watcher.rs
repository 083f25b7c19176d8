//! The one loop: the only code that sees a source, a sink and the store together.
//!
//! ```text
//! restore source ─► redeliver pending batch, if any ─► poll source(limit) ─► batches
//!    ▲                                                                          │
//!    │                                                                          ▼
//! commit: change set applied, pending = ∅ ◄── deliver ◄── write pending batch (one per batch)
//!    └──► source.committed(change)
//! ```
//!
//! The source holds its state: the loop restores it from the store at start (and when
//! the stored state changed outside the watcher), and tells it each commit. A poll may
//! hand over several batches; each is written to the store before its first delivery
//! attempt (so a crash redelivers it with the same event ids) and committed on its own
//! acknowledgement, in the transaction that clears it. A poll that finds nothing writes
//! nothing. A source that reads ahead ([`Source::reads_ahead`]) is polled for the next
//! batch while one is staged, delivered and committed; what it read is kept only once
//! that batch is committed.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, jittered, wake_at};
use crate::config::{FailurePolicy, RetryConfig, WatcherConfig};
use crate::event::{Encoded, EventRef, event_id};
use crate::outbox::{Outbox, OutboxError, PendingBatch, Staged, dead_letter_key};
use crate::sink::{Acked, Delivery, Sink};
use crate::source::{Batch, ChangeSet, ErrorClass, Found, Polled, Source, SourceError, SourceState};
use crate::state::{Fence, Store, StoreError};
use crate::telemetry::{WatcherState, WatcherStats, now_ms};
use crate::value::Start;

/// Longest `Retry-After` a receiver can impose; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Acknowledged events that make the loop keep a delivery's progress with its batch (a
/// restart repeats at most this many, with the same ids)...
pub const PROGRESS_EVERY_EVENTS: usize = 1000;
/// ...or the time after which it keeps whatever was acknowledged since.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Failed attempts without progress retried at once, within [`QUICK_WINDOW`] of the sink
/// last taking events, before the backoff applies: a receiver that fails a request now
/// and then costs a request, not a wait; one that went down gets a few quick tries,
/// then the backoff (and one that was down already, the backoff alone).
const QUICK_RETRIES: u32 = 3;

/// How long after the sink last took events a failure still counts as sporadic.
const QUICK_WINDOW: Duration = Duration::from_secs(10);

/// A large batch (its events' bytes): reading ahead ([`Source::reads_ahead`]) holds a
/// second batch in memory, so a batch larger than this is delivered alone and memory
/// stays that of one batch; after it, the loop hands the memory it freed back to the
/// system ([`release_freed_memory`]).
const LARGE_BATCH_BYTES: usize = 16 << 20;

/// Why a cycle did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    /// The source failed.
    #[error("poll failed: {0}")]
    Source(#[from] SourceError),
    /// The store failed or changed underneath, or a batch could not be encoded.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The sink did not acknowledge within the attempts allowed (`highwater once`).
    #[error("delivery failed, batch left pending: {0}")]
    Delivery(String),
    /// Shutdown was asked for while waiting; any batch stays pending.
    #[error("shut down")]
    Shutdown,
}

/// What a cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Events of an earlier pending batch delivered again.
    pub redelivered: usize,
    /// New events delivered.
    pub delivered: usize,
    /// Events set aside under a dead-letter key.
    pub dead_lettered: usize,
    /// More is waiting: batches of the last poll, or items the source left for the
    /// next one.
    pub more: bool,
}

/// One watcher: its source, its sink, its place in the store.
pub struct Watcher {
    /// Turns items into events (shared with a poll that reads ahead).
    encoder: Encoder,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    /// The watcher's keys in the store: every read and write of its state goes there.
    outbox: Outbox,
    poll_interval: Duration,
    batch_size: usize,
    policy: FailurePolicy,
    retry: RetryConfig,
    /// Where a watcher without a watermark begins.
    start: Start,
    stats: Arc<WatcherStats>,
    /// Batches of the last poll not yet written to the outbox, oldest first, with the
    /// summary of the state that poll started from (their events' `watermark`).
    queued: VecDeque<Batch>,
    /// The summary the queued batches' events carry.
    queued_summary: serde_json::Value,
    /// The next batch, read ahead and already turned into events; delivered before the
    /// queued ones.
    built: Option<PendingBatch>,
    /// The last poll said more is waiting beyond its batches.
    more: bool,
    /// Delivery attempts before a cycle gives up (None: never, as the daemon runs).
    attempt_limit: Option<u32>,
    /// The `start:` setting was compared with the one the stored state began from.
    start_checked: bool,
    /// Quick retries left ([`QUICK_RETRIES`]), refilled whenever the sink takes events.
    quick_retries: u32,
    /// When the sink last took events.
    last_taken: Option<Instant>,
    /// Unix milliseconds of the poll that found the queued batches (its age is the lag
    /// of their items).
    queued_found_ms: i64,
    /// The dead letters held were counted since the watcher started.
    dead_letters_counted: bool,
    /// Whether the next batch may be read while one is delivered (not in `highwater
    /// once`, whose one poll is the unit of work).
    read_ahead: bool,
    /// [`LARGE_BATCH_BYTES`] (smaller in tests).
    large_batch_bytes: usize,
    /// The source is lent to a poll that reads ahead: a commit meanwhile keeps its
    /// change in `untold`, handed to the source once it is back.
    lent: bool,
    untold: Option<ChangeSet>,
}

/// Why [`Watcher::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It was told to stop.
    Shutdown,
    /// The store refused a write: the watcher's lease is no longer this instance's.
    Fenced,
}

/// What [`Watcher::dry_run`] found.
#[derive(Debug, Default)]
pub struct DryRun {
    /// The rest of a pending batch, delivered first by the next cycle.
    pub pending: Vec<Encoded>,
    /// The events of the next poll, in delivery order.
    pub new: Vec<Encoded>,
    /// More is waiting after them.
    pub more: bool,
}

impl Watcher {
    /// Assembles a watcher from built parts.
    pub fn new(
        config: &WatcherConfig,
        source: Box<dyn Source>,
        sink: Box<dyn Sink>,
        store: Arc<dyn Store>,
        stats: Arc<WatcherStats>,
    ) -> Self {
        let kind = source.kind();
        stats.poll_interval_ms.store(config.poll_interval.as_millis() as u64, Ordering::Relaxed);
        Watcher {
            encoder: Encoder {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                shared: (
                    Arc::from(config.namespace.as_str()),
                    Arc::from(config.name.as_str()),
                    Arc::from(kind),
                ),
            },
            source,
            sink,
            outbox: Outbox::new(store, config.namespace.clone(), config.name.clone()),
            poll_interval: config.poll_interval,
            batch_size: config.batch_size,
            policy: config.on_permanent_failure,
            retry: config.retry,
            start: config.start,
            stats,
            queued: VecDeque::new(),
            queued_summary: serde_json::Value::Null,
            built: None,
            more: false,
            attempt_limit: None,
            start_checked: false,
            quick_retries: QUICK_RETRIES,
            last_taken: None,
            queued_found_ms: 0,
            dead_letters_counted: false,
            read_ahead: true,
            large_batch_bytes: LARGE_BATCH_BYTES,
            lent: false,
            untold: None,
        }
    }

    /// Limits delivery attempts per batch (for `highwater once`).
    pub fn with_attempt_limit(mut self, attempts: u32) -> Self {
        self.attempt_limit = Some(attempts.max(1));
        self
    }

    /// Makes every store write of this watcher conditional on `fence`, the lease it runs
    /// under when several instances share the store.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.outbox = self.outbox.fenced(fence);
        self
    }

    /// Polls and delivers until `shutdown` fires, or until the store refuses a write
    /// because the watcher's lease is gone ([`Ended::Fenced`]). A failing source or sink
    /// holds back this watcher only; nothing else returns early on an error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Ended {
        let mut backoff = Backoff::new(self.retry.initial.0, self.retry.max.0);
        let mut wait = Duration::ZERO;
        loop {
            if sleep(wait, &shutdown).await.is_err() {
                return Ended::Shutdown;
            }
            wait = match self.cycle(&shutdown).await {
                Ok(report) => {
                    backoff.reset();
                    if self.stats.store_failed.swap(false, Ordering::Relaxed) {
                        tracing::info!(store_failed = false, "State store works again.");
                    }
                    if report.more || report.redelivered > 0 {
                        Duration::ZERO
                    } else {
                        jittered(self.poll_interval, 0.1)
                    }
                }
                Err(WatcherError::Shutdown) => return Ended::Shutdown,
                Err(WatcherError::Outbox(OutboxError::Store(e @ StoreError::Fenced { .. }))) => {
                    // Another instance runs it now (or will): whatever was delivered and
                    // not committed stays pending, for the new owner to send again.
                    tracing::warn!(error = %e, lifecycle = "fenced", "Lease lost; the watcher stops here.");
                    return Ended::Fenced;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.report_error(&e, delay, backoff.attempts());
                    delay
                }
            };
        }
    }

    /// Logs and counts a failed cycle.
    fn report_error(&self, error: &WatcherError, delay: Duration, attempt: u32) {
        if store_failure(error) {
            self.store_failed(error, delay);
            return;
        }
        let state = match error {
            WatcherError::Source(e) if e.class == ErrorClass::NeedsAttention => WatcherState::Error,
            WatcherError::Source(e) if e.class == ErrorClass::Waiting => WatcherState::Waiting,
            _ => WatcherState::Retrying,
        };
        if matches!(error, WatcherError::Source(_)) {
            WatcherStats::add(&self.stats.poll_errors, 1);
        }
        self.stats.set_state(state);
        let retry_in = format!("{:.1}s", delay.as_secs_f64());
        if state == WatcherState::Error {
            tracing::error!(error = %error, attempt, retry_in, "Watcher needs attention; retrying.");
        } else {
            tracing::warn!(error = %error, attempt, retry_in, "Cycle failed; retrying.");
        }
    }

    /// A cycle (or a commit) that failed in the store: the watcher is in state `error`
    /// (an operator is needed: a full disk, a read-only or deleted file), named by
    /// `/readyz`, logged at ERROR; its next cycle that goes through clears it.
    fn store_failed(&self, error: &dyn std::fmt::Display, delay: Duration) {
        self.stats.set_state(WatcherState::Error);
        self.stats.store_failed.store(true, Ordering::Relaxed);
        let retry_in = format!("{:.1}s", delay.as_secs_f64());
        tracing::error!(error = %error, store_failed = true, retry_in, "State store failed; retrying.");
    }

    /// One cycle: redeliver the pending batch if there is one; otherwise take the next
    /// batch of the last poll, or poll; write the batch to the outbox, deliver it and
    /// commit.
    pub async fn cycle(&mut self, shutdown: &CancellationToken) -> Result<CycleReport, WatcherError> {
        let mut report = CycleReport::default();
        self.outbox.check_store().await?;
        if let Some(staged) = self.sync().await? {
            let n = staged.batch().events.len();
            tracing::info!(batch = %staged.batch().batch_id, events = n, "Redelivering pending batch.");
            let delivered = self.deliver_and_commit(staged, shutdown).await?;
            report.redelivered = delivered;
            report.dead_lettered = n - delivered;
            report.more = !self.queued.is_empty() || self.built.is_some();
            return Ok(report);
        }
        if self.queued.is_empty() && self.built.is_none() {
            self.poll().await?;
        }
        let sent = self.send_next(&mut report, shutdown).await;
        if sent.is_err() {
            // A batch taken from the source and not committed is dropped with whatever
            // the source handed out past it (a source that reads ahead goes on from
            // there): the next cycle restores it from the store, so that those items
            // are found again, never skipped. A batch left pending is sent first.
            self.drop_queued();
            self.outbox.reload_next();
        }
        sent
    }

    /// Takes the next batch (read ahead, or queued) and sends it; see [`Self::cycle`].
    async fn send_next(
        &mut self,
        report: &mut CycleReport,
        shutdown: &CancellationToken,
    ) -> Result<CycleReport, WatcherError> {
        let batch = match self.built.take() {
            Some(built) => built,
            None => match self.next_batch(report).await? {
                Some(batch) => batch,
                None => return Ok(*report),
            },
        };
        report.more = self.more || !self.queued.is_empty();
        let n = batch.events.len();
        // The source has more than this batch and reads ahead: the next batch is read
        // while this one is written, delivered and committed.
        let bytes = batch.events.iter().map(|e| e.text().len()).sum::<usize>();
        let ahead = self.read_ahead
            && self.more
            && self.queued.is_empty()
            && self.source.reads_ahead()
            && bytes <= self.large_batch_bytes;
        let delivered = if ahead {
            self.send_reading_ahead(batch, shutdown).await?
        } else {
            self.send(batch, shutdown).await?
        };
        if bytes > self.large_batch_bytes {
            // Off the loop's thread: the walk over the heap need not hold up the next poll.
            tokio::task::spawn_blocking(release_freed_memory);
        }
        report.delivered = delivered;
        report.dead_lettered = n - delivered;
        Ok(*report)
    }

    /// The next queued batch, turned into events. None when nothing is queued, or when
    /// the batch had no items (committed here, without a delivery).
    async fn next_batch(&mut self, report: &mut CycleReport) -> Result<Option<PendingBatch>, WatcherError> {
        let Some(batch) = self.queued.pop_front() else {
            if self.stats.state() != WatcherState::Blocked {
                self.stats.set_state(WatcherState::Ok);
            }
            // A source that waits in its own poll (a long-polled queue) asks to be
            // polled again at once although it found nothing.
            report.more = self.more;
            return Ok(None);
        };
        report.more = self.more || !self.queued.is_empty();
        if batch.items.is_empty() {
            // Progress the source must not lose although nothing was found (rare by the
            // source's contract: an idle poll writes nothing). Refused when the state
            // was changed meanwhile: not an error, the next cycle restores the stored
            // one.
            let change = batch.change;
            match self.outbox.apply(&change).await {
                Ok(()) => {
                    self.tell_source(&change)?;
                    self.stats.watermark_moved_ms.store(now_ms(), Ordering::Relaxed);
                }
                Err(OutboxError::Store(StoreError::Conflict { .. })) => {
                    self.drop_queued();
                    self.outbox.reload_next();
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(None);
        }
        Ok(Some(self.build_batch(batch)?))
    }

    /// Polls the source and queues the batches it hands over.
    async fn poll(&mut self) -> Result<(), WatcherError> {
        let started = Instant::now();
        let summary = self.source.summary();
        let polled = self.source.poll(self.batch_size).await?;
        self.take_polled(polled, summary, started.elapsed(), None);
        Ok(())
    }

    /// Writes `batch` to the outbox, delivers it and commits it.
    async fn send(
        &mut self,
        batch: PendingBatch,
        shutdown: &CancellationToken,
    ) -> Result<usize, WatcherError> {
        let n = batch.events.len();
        let started = Instant::now();
        let staged = self.outbox.stage(batch).await;
        let staged = self.guard(staged)?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(batch = %staged.batch().batch_id, events = n, took_ms, "Wrote pending batch.");
        self.deliver_and_commit(staged, shutdown).await
    }

    /// Sends `batch` ([`Self::send`]) while the source reads the next batch and its
    /// events are encoded. The source is lent to that poll meanwhile: the commit's
    /// change reaches it afterwards, and it polls on from the batch it handed out. What
    /// it read is kept only when the batch before it was committed; otherwise (a failed
    /// delivery or commit, a failed read) it is dropped and the next cycle restores the
    /// source from the store, so that nothing read ahead is skipped.
    async fn send_reading_ahead(
        &mut self,
        batch: PendingBatch,
        shutdown: &CancellationToken,
    ) -> Result<usize, WatcherError> {
        let mut source = std::mem::replace(&mut self.source, Box::new(Lent));
        self.lent = true;
        let summary = source.summary();
        let limit = self.batch_size;
        let encoder = self.encoder.clone();
        let read = async {
            let started = Instant::now();
            let mut polled = source.poll(limit).await;
            let took = started.elapsed();
            // The first batch's events are encoded here too, while the sink works, on a
            // thread of their own: the delivery's steps go on meanwhile.
            let built = match &mut polled {
                Ok(p) if p.batches.first().is_some_and(|b| !b.items.is_empty()) => {
                    let (batch, summary) = (p.batches.remove(0), summary.clone());
                    let (namespace, name) = (encoder.namespace.clone(), encoder.name.clone());
                    // The watcher's span, so that the encoding's log line names it.
                    let span = tracing::Span::current();
                    match tokio::task::spawn_blocking(move || {
                        span.in_scope(|| encoder.build(&summary, batch))
                    })
                    .await
                    {
                        Ok(built) => Some(built),
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        // The runtime is shutting down: what was read is dropped below.
                        Err(e) => Some(Err(OutboxError::Encode {
                            namespace,
                            name,
                            key: "pending".into(),
                            message: e.to_string(),
                        })),
                    }
                }
                _ => None,
            };
            (polled, took, built)
        };
        // The read first: its query is on its way to the server before the batch is
        // written, not after.
        let ((polled, took, built), delivered) = tokio::join!(read, self.send(batch, shutdown));
        self.source = source;
        self.lent = false;
        let untold = self.untold.take();
        // A batch not committed: the cycle drops what was read and restores the source.
        let delivered = delivered?;
        if let Some(change) = untold {
            self.tell_source(&change)?;
        }
        match (polled, built.transpose()) {
            (Ok(polled), Ok(built)) => self.take_polled(polled, summary, took, built),
            (Err(e), _) => {
                tracing::debug!(error = %e, "Reading the next batch ahead failed; polling again.");
                self.outbox.reload_next();
            }
            (_, Err(e)) => {
                tracing::debug!(error = %e, "Encoding the batch read ahead failed; polling again.");
                self.outbox.reload_next();
            }
        }
        Ok(delivered)
    }

    /// Counts a poll that went through and queues its batches (the first already
    /// turned into events, when it was read ahead).
    fn take_polled(
        &mut self,
        polled: Polled,
        summary: serde_json::Value,
        took: Duration,
        built: Option<PendingBatch>,
    ) {
        WatcherStats::add(&self.stats.polls, 1);
        WatcherStats::add(&self.stats.items_skipped, self.source.take_skipped());
        WatcherStats::add(&self.stats.items_unnotified, self.source.take_unnotified());
        self.stats.poll_duration.observe(took);
        self.stats.last_poll_ms.store(now_ms(), Ordering::Relaxed);
        let ahead = built.as_ref().map_or(0, |b| b.events.len());
        let items: usize = polled.batches.iter().map(|b| b.items.len()).sum::<usize>() + ahead;
        tracing::debug!(
            items,
            batches = polled.batches.len() + usize::from(built.is_some()),
            more = polled.more,
            took_ms = took.as_millis() as u64,
            "Polled."
        );
        WatcherStats::add(&self.stats.items_found, items as u64);
        self.queued = polled.batches.into();
        self.built = built;
        self.queued_summary = summary;
        self.more = polled.more;
        if items > 0 {
            self.queued_found_ms = now_ms();
        }
        self.set_pending(0, 0);
    }

    /// Runs one `highwater once` cycle: the pending batch first if there is one, then
    /// one poll, every batch of it delivered and committed.
    pub async fn once(&mut self, shutdown: &CancellationToken) -> Result<CycleReport, WatcherError> {
        self.read_ahead = false;
        let mut total = CycleReport::default();
        let mut polled = false;
        loop {
            let redelivery = self.outbox_has_pending().await?;
            let report = self.cycle(shutdown).await?;
            total.redelivered += report.redelivered;
            total.delivered += report.delivered;
            total.dead_lettered += report.dead_lettered;
            total.more = report.more;
            if redelivery && !polled {
                continue;
            }
            polled = true;
            if self.queued.is_empty() {
                total.more = self.more;
                return Ok(total);
            }
        }
    }

    /// True when a batch is pending (the next cycle redelivers it).
    async fn outbox_has_pending(&mut self) -> Result<bool, WatcherError> {
        Ok(self.outbox.has_pending().await?)
    }

    /// Reads the stored state and the pending batch. A state changed by someone else
    /// (`highwater state set`), or not yet handed to the source, is restored into it; a
    /// watcher without a watermark begins where `start:` says.
    async fn sync(&mut self) -> Result<Option<Staged>, WatcherError> {
        let loaded = self.outbox.load().await?;
        self.count_dead_letters().await?;
        if let Some(committed) = loaded.watermark {
            if committed.replaced {
                tracing::info!("Watermark was changed outside this watcher; continuing from the stored one.");
            }
            if let Some(moved_at) = committed.moved_at {
                self.stats.watermark_moved_ms.store(moved_at.timestamp_millis(), Ordering::Relaxed);
            }
            // Batches planned from the old state are dropped: the next poll finds
            // their items again.
            self.drop_queued();
            let fresh = committed.state.head.is_none();
            if let Err(e) = self.source.restore(committed.state) {
                self.outbox.reload_next();
                return Err(e.into());
            }
            if fresh {
                self.begin().await?;
            } else if !self.start_checked {
                self.check_start().await?;
            }
        }
        Ok(loaded.pending)
    }

    /// Says, once, that a `start:` other than the one the stored state began from is
    /// not applied: a watcher with a watermark goes on from it.
    async fn check_start(&mut self) -> Result<(), WatcherError> {
        let stored = self.outbox.stored_start().await?.unwrap_or_else(|| Start::Beginning.to_string());
        let configured = self.start.to_string();
        if stored != configured {
            tracing::info!(start = %configured, began_from = %stored,
                "`start:` applies to a watcher without a watermark; this one has one and goes on from it (`highwater state reset` applies `start:`).");
        }
        self.start_checked = true;
        Ok(())
    }

    /// What the next cycle would deliver, found without delivering, committing or
    /// writing anything: the rest of a pending batch, else the events of one poll (the
    /// source's state, `start:` included, moves in memory only).
    pub async fn dry_run(&mut self) -> Result<DryRun, WatcherError> {
        let loaded = self.outbox.load().await?;
        if let Some(committed) = loaded.watermark {
            let fresh = committed.state.head.is_none();
            self.source.restore(committed.state)?;
            if fresh {
                let change = self.source.begin(&self.start).await?;
                self.source.committed(&change)?;
            }
        }
        if let Some(staged) = loaded.pending {
            let rest = staged.batch().events[staged.acked()..].to_vec();
            return Ok(DryRun { pending: rest, new: Vec::new(), more: true });
        }
        self.poll().await?;
        let mut new = Vec::new();
        while let Some(batch) = self.queued.pop_front() {
            if !batch.items.is_empty() {
                new.extend(self.build_batch(batch)?.events);
            }
        }
        Ok(DryRun { pending: Vec::new(), new, more: self.more })
    }

    /// Stores the first state `start:` maps to, for a watcher with no watermark.
    async fn begin(&mut self) -> Result<(), WatcherError> {
        let change = match self.source.begin(&self.start).await {
            Ok(change) => change,
            Err(e) => {
                // Asked again at the next cycle.
                self.outbox.reload_next();
                return Err(e.into());
            }
        };
        if change.is_empty() {
            return Ok(());
        }
        let start = self.start.to_string();
        let applied = self.outbox.begin(&change, &start).await;
        self.guard(applied)?;
        tracing::info!(start = %start, "Watcher has no watermark; starting where `start:` says.");
        self.start_checked = true;
        self.tell_source(&change)
    }

    /// Hands a committed change to the source; if it cannot take it, the next cycle
    /// restores it from the store.
    fn tell_source(&mut self, change: &ChangeSet) -> Result<(), WatcherError> {
        if let Err(e) = self.source.committed(change) {
            self.drop_queued();
            self.outbox.reload_next();
            return Err(e.into());
        }
        Ok(())
    }

    /// Passes on an outbox result; a refusal (the state changed underneath) drops the
    /// queued batches and has the next cycle restore the source from the store.
    fn guard<T>(&mut self, result: Result<T, OutboxError>) -> Result<T, WatcherError> {
        if let Err(OutboxError::Store(StoreError::Conflict { .. })) = &result {
            self.drop_queued();
            self.outbox.reload_next();
        }
        result.map_err(WatcherError::from)
    }

    /// Turns a batch's items into events with their ids, each encoded once, and the
    /// pending batch that carries them.
    fn build_batch(&self, batch: Batch) -> Result<PendingBatch, WatcherError> {
        Ok(self.encoder.build(&self.queued_summary, batch)?)
    }

    /// Drops the batches of the last poll (the next cycle polls again, or restores the
    /// source first).
    fn drop_queued(&mut self) {
        self.queued.clear();
        self.built = None;
    }

    /// Delivers `batch` until the sink acknowledges it (then commits) or the policy sets
    /// it aside. Only the events after those the sink acknowledged are sent again; the
    /// count is kept with the pending batch at most every [`PROGRESS_EVERY_EVENTS`]
    /// events or [`PROGRESS_EVERY`], and before a wait. A failure after progress is
    /// retried at once ([`QUICK_RETRIES`]). Returns the number of events acknowledged.
    async fn deliver_and_commit(
        &mut self,
        mut staged: Staged,
        shutdown: &CancellationToken,
    ) -> Result<usize, WatcherError> {
        let n = staged.batch().events.len();
        let batch_id = staged.batch().batch_id.clone();
        // Leading events the receiver has: as kept with the batch, then as counted here.
        let resumed = staged.acked();
        let mut done = resumed;
        let mut kept = resumed;
        let mut kept_at = Instant::now();
        if resumed > 0 {
            tracing::info!(batch = %batch_id, events = n, acked = resumed, "Sending the rest of a batch delivered part-way.");
        }
        self.set_pending(n - done, staged.batch().created_at.timestamp_millis());
        let mut backoff = Backoff::new(self.retry.initial.0, self.retry.max.0);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let acked = Acked::new();
            let tried = Instant::now();
            // Not raced against shutdown: an attempt in flight finishes (the daemon's
            // shutdown deadline is the backstop), so it is either committed or pending.
            let outcome = {
                let delivery = self.sink.deliver(&staged.batch().events[done..], &acked);
                tokio::pin!(delivery);
                loop {
                    tokio::select! {
                        outcome = &mut delivery => break outcome,
                        () = acked.moved() => {
                            let total = done + acked.get();
                            let due = total - kept >= PROGRESS_EVERY_EVENTS
                                || (total > kept && kept_at.elapsed() >= PROGRESS_EVERY);
                            if due && keep_progress(&self.outbox, &staged, total).await {
                                (kept, kept_at) = (total, Instant::now());
                            }
                        }
                    }
                }
            };
            let gained = acked.get().min(n - done);
            done += gained;
            // After a failure that may pass by itself, the sink may say sooner than the
            // backoff that its receiver is back (Airflow's health endpoint answers).
            let probe = matches!(outcome, Delivery::RetryLater { .. });
            let (reason, delay) = match outcome {
                Delivery::Acknowledged => {
                    // How long the sink took and how long the store: which of the two a
                    // slow delivery waits for.
                    let deliver_ms = tried.elapsed().as_millis() as u64;
                    let committing = Instant::now();
                    self.took_events();
                    self.commit(&mut staged, None, shutdown).await?;
                    let commit_ms = committing.elapsed().as_millis() as u64;
                    WatcherStats::add(&self.stats.events_delivered, (n - resumed) as u64);
                    self.stats.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
                    self.set_pending(0, 0);
                    self.stats.set_state(WatcherState::Ok);
                    tracing::info!(batch = %batch_id, events = n, attempts, deliver_ms, commit_ms, "Delivered batch.");
                    return Ok(n);
                }
                Delivery::RetryLater { reason, after } => {
                    WatcherStats::add(&self.stats.delivery_retries, 1);
                    self.stats.set_state(WatcherState::Retrying);
                    self.set_pending(n - done, staged.batch().created_at.timestamp_millis());
                    // A receiver that took events a moment ago and fails now and then is
                    // retried at once: after progress, and a few times more; only a
                    // streak of failures without progress backs off.
                    let delay = match after {
                        Some(after) => after.min(MAX_RETRY_AFTER).max(backoff.next_delay() / 2),
                        None if gained > 0 => {
                            backoff.reset();
                            self.took_events();
                            Duration::ZERO
                        }
                        None if self.quick_retries > 0
                            && self.last_taken.is_some_and(|at| at.elapsed() < QUICK_WINDOW) =>
                        {
                            self.quick_retries -= 1;
                            Duration::ZERO
                        }
                        None => backoff.next_delay(),
                    };
                    tracing::warn!(batch = %batch_id, attempt = attempts, reason = %reason, acked = done, events = n,
                        retry_in = format!("{:.1}s", delay.as_secs_f64()), "Delivery failed; will retry.");
                    (reason, delay)
                }
                Delivery::NeedsAttention { reason, after } => {
                    // Held, never set aside: the batch passes once an operator fixed
                    // what the reason names.
                    WatcherStats::add(&self.stats.delivery_attention, 1);
                    self.stats.set_state(WatcherState::Error);
                    let delay =
                        after.map_or_else(|| jittered(self.retry.max.0, 0.1), |a| a.min(MAX_RETRY_AFTER));
                    tracing::error!(batch = %batch_id, events = n, attempt = attempts, reason = %reason,
                        retry_in = format!("{:.1}s", delay.as_secs_f64()), "Sink needs attention; retrying.");
                    (reason, delay)
                }
                Delivery::Permanent { reason } => {
                    WatcherStats::add(&self.stats.delivery_permanent_failures, 1);
                    match self.policy {
                        FailurePolicy::DeadLetter => {
                            self.commit(&mut staged, Some(&reason), shutdown).await?;
                            WatcherStats::add(&self.stats.batches_dead_lettered, 1);
                            WatcherStats::add(&self.stats.dead_letters, 1);
                            self.set_pending(0, 0);
                            self.stats.set_state(WatcherState::Ok);
                            tracing::error!(batch = %batch_id, events = n, reason = %reason,
                                key = dead_letter_key(&batch_id),
                                "Sink refused the batch for good; kept it as a dead letter and moved on.");
                            return Ok(0);
                        }
                        FailurePolicy::Block => {
                            self.stats.set_state(WatcherState::Blocked);
                            let delay = jittered(self.retry.max.0, 0.1);
                            tracing::error!(batch = %batch_id, events = n, attempt = attempts, reason = %reason,
                                retry_in = format!("{:.1}s", delay.as_secs_f64()),
                                "Sink refused the batch for good; watcher is BLOCKED until it accepts it (on_permanent_failure: block).");
                            (reason, delay)
                        }
                    }
                }
            };
            let give_up = self.attempt_limit.is_some_and(|limit| attempts >= limit);
            let again_now = delay.is_zero() && !give_up && !shutdown.is_cancelled();
            // Before a wait (or giving up, or stopping), what the receiver took is kept:
            // a restart meanwhile sends only the rest.
            if !again_now && done > kept && keep_progress(&self.outbox, &staged, done).await {
                (kept, kept_at) = (done, Instant::now());
            }
            if give_up {
                return Err(WatcherError::Delivery(reason));
            }
            if again_now {
                continue;
            }
            let slept = if probe {
                tokio::select! {
                    slept = sleep(delay, shutdown) => slept,
                    () = self.sink.recovered() => {
                        tracing::info!(batch = %batch_id, recovered = true, "Sink's receiver is back; retrying now.");
                        Ok(())
                    }
                }
            } else {
                sleep(delay, shutdown).await
            };
            if slept.is_err() {
                tracing::info!(batch = %batch_id, "Shutting down; batch stays pending and is delivered first at the next start.");
                return Err(WatcherError::Shutdown);
            }
        }
    }

    /// Records the batch waiting for acknowledgement (`left` events of it, written at
    /// `since_ms`), and with it the backlog: those and the items of the batches still
    /// queued, aged from the oldest.
    fn set_pending(&self, left: usize, since_ms: i64) {
        self.stats.set_pending(left, since_ms);
        let built = self.built.as_ref().map_or(0, |b| b.events.len());
        let queued: usize = self.queued.iter().map(|b| b.items.len()).sum::<usize>() + built;
        let oldest = [(left > 0).then_some(since_ms), (queued > 0).then_some(self.queued_found_ms)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        self.stats.set_backlog(left + queued, oldest);
    }

    /// Counts the dead letters held in the store: at start, and again at each cycle
    /// while any are held, so that a replay or a purge from the command line shows.
    /// Nothing is read while none are held (only this watcher sets batches aside).
    async fn count_dead_letters(&mut self) -> Result<(), WatcherError> {
        if self.dead_letters_counted && self.stats.dead_letters.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let held = self.outbox.dead_letters().await.map_err(OutboxError::Store)?;
        self.stats.dead_letters.store(held, Ordering::Relaxed);
        self.dead_letters_counted = true;
        Ok(())
    }

    /// Notes that the sink took events: failures soon after are retried at once.
    fn took_events(&mut self) {
        self.quick_retries = QUICK_RETRIES;
        self.last_taken = Some(Instant::now());
    }

    /// Commits the batch's state change and clears the outbox, in one transaction; with
    /// `dead_letter`, also keeps the batch under its dead-letter key. Then the source is
    /// told. A store failure is retried until shutdown; a conflict is not (the next
    /// cycle reads the state again).
    async fn commit(
        &mut self,
        staged: &mut Staged,
        dead_letter: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Result<(), WatcherError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let change = loop {
            let result = match dead_letter {
                Some(reason) => self.outbox.set_aside(staged, reason).await,
                None => self.outbox.commit(staged).await,
            };
            match result {
                Ok(change) => break change,
                Err(OutboxError::Store(e @ StoreError::Conflict { .. })) => {
                    // Someone else (an operator's `state set`/`reset`) changed the state:
                    // the next cycle reads it again. The delivered batch may be sent again,
                    // with the same ids.
                    tracing::warn!(error = %e, "Commit refused; re-reading state.");
                    return self.guard(Err(OutboxError::Store(e)));
                }
                // Encoding fails the same way every time; a lease lost stays lost.
                Err(
                    e @ (OutboxError::Encode { .. }
                    | OutboxError::Refused(_)
                    | OutboxError::Store(StoreError::Fenced { .. })),
                ) => return Err(e.into()),
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.store_failed(&e, delay);
                    if sleep(delay, shutdown).await.is_err() {
                        return Err(WatcherError::Shutdown);
                    }
                }
            }
        };
        if let Some(change) = change {
            if change.head.is_some() {
                self.stats.watermark_moved_ms.store(now_ms(), Ordering::Relaxed);
            }
            if self.lent {
                self.untold = Some(change);
            } else {
                self.tell_source(&change)?;
            }
        }
        Ok(())
    }
}

/// What turning a batch's items into events needs: the watcher's names and its source
/// kind (cloned into a poll that reads ahead, which encodes the batch it read).
#[derive(Clone)]
struct Encoder {
    namespace: String,
    name: String,
    /// Namespace, name and source kind, shared by every event the watcher encodes.
    shared: (Arc<str>, Arc<str>, Arc<str>),
}

impl Encoder {
    /// Turns a batch's items into events with their ids, each encoded once, and the
    /// pending batch that carries them; `summary` is their `watermark` field. A large
    /// batch is encoded in two halves at once, the second on a thread of its own: this
    /// runs while the batch before is written, delivered and committed, and on two cores
    /// a ten-thousand-row batch's encoding was otherwise what the next delivery waited
    /// for.
    fn build(&self, summary: &serde_json::Value, batch: Batch) -> Result<PendingBatch, OutboxError> {
        let started = Instant::now();
        let now = Utc::now();
        // One summary serves every event of the batch.
        let watermark = serde_json::value::to_raw_value(summary).map_err(|e| self.encode_error(e))?;
        // So does one time, written once.
        let emitted_at_json = serde_json::value::to_raw_value(&now).map_err(|e| self.encode_error(e))?;
        let shared = Shared { watermark: &watermark, emitted_at_json: &emitted_at_json, now };
        let Batch { mut items, change } = batch;
        let events = if SPLIT_ENCODING.contains(&items.len()) {
            // Taken by the thread when it starts; still here if it could not start.
            let second = Mutex::new(Some(items.split_off(items.len() / 2)));
            let take = || second.lock().ok().and_then(|mut half| half.take()).unwrap_or_default();
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("encode".into())
                    .spawn_scoped(scope, || {
                        let mut events = Vec::new();
                        self.encode(take(), &shared, &mut events).map(|()| events)
                    })
                    .ok();
                // Room for both halves, so that joining them moves each event once.
                let mut events = Vec::with_capacity(items.len() * 2 + 1);
                self.encode(items, &shared, &mut events)?;
                let rest = match other.map(|thread| thread.join()) {
                    Some(Ok(rest)) => rest?,
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    // No thread to spare: the second half here, after the first.
                    None => {
                        let mut rest = Vec::new();
                        self.encode(take(), &shared, &mut rest)?;
                        rest
                    }
                };
                events.extend(rest);
                Ok::<_, OutboxError>(events)
            })?
        } else {
            let mut events = Vec::with_capacity(items.len());
            self.encode(items, &shared, &mut events)?;
            events
        };
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(events = events.len(), took_ms, "Encoded events.");
        Ok(PendingBatch::new(events, change, now))
    }

    /// Encodes `items`, in order, onto `events`. Each item is dropped as soon as it is
    /// encoded, so that a batch is not held twice (as items and as events) at the peak
    /// of its memory.
    fn encode(
        &self,
        items: Vec<Found>,
        shared: &Shared<'_>,
        events: &mut Vec<Encoded>,
    ) -> Result<(), OutboxError> {
        let (namespace, watcher, source) = &self.shared;
        events.reserve(items.len());
        for found in items {
            let parts: Vec<&str> = found.identity.iter().map(String::as_str).collect();
            let id = event_id(&self.namespace, &self.name, &parts);
            let event = EventRef {
                id: &id,
                namespace: &self.namespace,
                watcher: &self.name,
                source,
                change: found.change,
                item: &found.item,
                watermark: shared.watermark,
                emitted_at_json: shared.emitted_at_json,
                emitted_at: shared.now,
            };
            events
                .push(Encoded::encode(&event, namespace, watcher, source).map_err(|e| self.encode_error(e))?);
        }
        Ok(())
    }

    /// An event that could not be encoded, as the outbox reports it.
    fn encode_error(&self, e: serde_json::Error) -> OutboxError {
        OutboxError::Encode {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: "pending".into(),
            message: e.to_string(),
        }
    }
}

/// What every event of a batch shares: its `watermark` and `emitted_at`, encoded once.
struct Shared<'a> {
    watermark: &'a RawValue,
    emitted_at_json: &'a RawValue,
    now: DateTime<Utc>,
}

/// The batch sizes [`Encoder::build`] encodes in two halves at once. Below, starting a
/// thread costs more than it saves. Above, the second thread's memory came on top of
/// the batch's peak (20 MB more at `batch_size: 100000`, 2 KB a row), at sizes where
/// memory matters more than overlapping a delivery (a batch over 16 MiB of events is
/// not read ahead).
const SPLIT_ENCODING: std::ops::RangeInclusive<usize> = 2048..=32768;
/// Hands the memory a large batch freed back to the system. An allocator keeps freed
/// memory for reuse, and what a batch of tens of megabytes left was not all reused by
/// the next: at `batch_size: 100000` the resident size between batches stayed at
/// 160 MB (mimalloc) or grew from 110 MB to 190 MB (glibc), and each batch's peak came
/// on top of it.
fn release_freed_memory() {
    // SAFETY: mi_collect only works on the allocator's own free lists, and may be
    // called at any time from any thread.
    #[cfg(feature = "mimalloc")]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    // SAFETY: as above, for glibc's malloc_trim.
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What stands in for a watcher's source while a poll that reads ahead has it. Nothing
/// calls it (the commit meanwhile keeps its change for the source's return); were
/// anything to, it answers with an error, never with a state.
struct Lent;

#[async_trait::async_trait]
impl Source for Lent {
    fn kind(&self) -> &'static str {
        "lent"
    }

    fn restore(&mut self, _state: SourceState) -> Result<(), SourceError> {
        Err(Lent::busy())
    }

    async fn poll(&mut self, _limit: usize) -> Result<Polled, SourceError> {
        Err(Lent::busy())
    }

    fn committed(&mut self, _change: &ChangeSet) -> Result<(), SourceError> {
        Err(Lent::busy())
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn summarize(&self, _head: &crate::json::Json, _remembered: u64) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl Lent {
    fn busy() -> SourceError {
        SourceError::transient("the source is busy reading ahead")
    }
}

/// Whether a cycle failed because the store could not be used (a conflict is not
/// that: someone else wrote first, and the next cycle reads again).
fn store_failure(error: &WatcherError) -> bool {
    matches!(
        error,
        WatcherError::Outbox(OutboxError::Store(StoreError::Backend { .. } | StoreError::Unavailable { .. }))
    )
}

/// Keeps the count of acknowledged events with the pending batch; false when that failed
/// (logged: it costs a larger redelivery after a restart, never an event).
async fn keep_progress(outbox: &Outbox, staged: &Staged, acked: usize) -> bool {
    match outbox.save_progress(staged, acked).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(batch = %staged.batch().batch_id, acked, error = %e, "Cannot keep the delivery's progress; a restart would send more again.");
            false
        }
    }
}

/// Sleeps, or returns Err as soon as shutdown is asked for.
async fn sleep(duration: Duration, shutdown: &CancellationToken) -> Result<(), ()> {
    if shutdown.is_cancelled() {
        return Err(());
    }
    if duration.is_zero() {
        return Ok(());
    }
    tokio::select! {
        () = tokio::time::sleep_until(wake_at(duration)) => Ok(()),
        () = shutdown.cancelled() => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::DateTime;
    use serde_json::json;

    use super::*;
    use crate::event::{Change, FileItem, Item};
    use crate::json::Json;
    use crate::outbox::{self, DeadLetter, Replay, Summary};
    use crate::sink::SinkConfig;
    use crate::source::{Found, Polled, SourceConfig, SourceState};
    use crate::state::Keys;
    use crate::state::sqlite::SqliteStore;
    use crate::value::HumanDuration;

    /// A source over a list: the head is the number of items announced, and each
    /// announced item is remembered as a member. A poll hands over up to `per_poll`
    /// batches; with `idle_progress`, a poll that finds nothing hands over an empty
    /// batch that stores a head of its own. With `ahead`, it reads ahead: a poll goes on
    /// from the newest batch handed out.
    struct ListSource {
        items: Arc<Mutex<Vec<String>>>,
        per_poll: usize,
        /// Items announced and committed.
        at: usize,
        restores: Arc<Mutex<usize>>,
        idle_progress: bool,
        ahead: bool,
        /// Where the newest batch handed out and not committed ends.
        handed: Option<usize>,
    }

    #[async_trait]
    impl Source for ListSource {
        fn kind(&self) -> &'static str {
            "list"
        }

        fn restore(&mut self, state: SourceState) -> Result<(), SourceError> {
            *self.restores.lock().unwrap() += 1;
            self.handed = None;
            self.at = match state.head {
                Some(head) => {
                    head.decode::<usize>().map_err(|e| SourceError::needs_attention(e.to_string()))?
                }
                None => 0,
            };
            Ok(())
        }

        async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
            Ok(match start {
                Start::Beginning => ChangeSet::default(),
                // "now": everything already listed counts as announced.
                _ => ChangeSet::head(Json::encode(&self.items.lock().unwrap().len()).unwrap()),
            })
        }

        async fn poll(&mut self, limit: usize) -> Result<Polled, SourceError> {
            let items = self.items.lock().unwrap();
            let mut from = self.handed.unwrap_or(self.at);
            let mut batches = Vec::new();
            while batches.len() < self.per_poll && from < items.len() {
                let take: Vec<String> = items.iter().skip(from).take(limit).cloned().collect();
                from += take.len();
                let mut change = ChangeSet::head(Json::encode(&from).unwrap());
                for name in &take {
                    change.put.insert(name.clone(), Json::encode(&1).unwrap());
                }
                let items = take
                    .into_iter()
                    .map(|name| Found {
                        change: Change::Created,
                        identity: vec![name.clone()],
                        item: Item::File(FileItem {
                            path: name.clone(),
                            relative_path: name,
                            size: 1,
                            modified: DateTime::<Utc>::from_timestamp(0, 0).unwrap(),
                        }),
                    })
                    .collect();
                batches.push(Batch { items, change });
            }
            if self.ahead && !batches.is_empty() {
                self.handed = Some(from);
            }
            if batches.is_empty() && self.idle_progress {
                let change = ChangeSet::head(Json::encode(&self.at).unwrap());
                batches.push(Batch { items: Vec::new(), change });
            }
            Ok(Polled { more: from < items.len(), batches })
        }

        fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError> {
            if let Some(head) = &change.head {
                self.at = head.decode().map_err(|e| SourceError::needs_attention(e.to_string()))?;
                if self.handed == Some(self.at) {
                    self.handed = None;
                }
            }
            Ok(())
        }

        fn reads_ahead(&self) -> bool {
            self.ahead
        }

        fn summary(&self) -> serde_json::Value {
            json!(self.handed.unwrap_or(self.at))
        }

        fn summarize(&self, head: &Json, _remembered: u64) -> serde_json::Value {
            head.decode().unwrap_or_default()
        }
    }

    /// A sink that answers from a script and records what it was given, and whether the
    /// outbox held the batch at the time.
    struct ScriptSink {
        answers: Arc<Mutex<VecDeque<Delivery>>>,
        /// Per call, how many leading events to acknowledge before answering.
        partial: Arc<Mutex<VecDeque<usize>>>,
        received: Arc<Mutex<Vec<Vec<String>>>>,
        store: Arc<dyn Store>,
        pending_seen: Arc<Mutex<Vec<bool>>>,
        /// The receiver is back at once after a failure (a health probe answers).
        recovers: bool,
    }

    #[async_trait]
    impl Sink for ScriptSink {
        async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery {
            let loaded = Outbox::new(Arc::clone(&self.store), "ns", "w").load().await.unwrap();
            let pending = loaded.pending.is_some();
            self.pending_seen.lock().unwrap().push(pending);
            self.received.lock().unwrap().push(events.iter().map(|e| e.id.clone()).collect());
            acked.add(self.partial.lock().unwrap().pop_front().unwrap_or(0));
            self.answers.lock().unwrap().pop_front().unwrap_or(Delivery::Acknowledged)
        }

        async fn recovered(&mut self) {
            if !self.recovers {
                std::future::pending::<()>().await;
            }
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        items: Arc<Mutex<Vec<String>>>,
        restores: Arc<Mutex<usize>>,
        answers: Arc<Mutex<VecDeque<Delivery>>>,
        partial: Arc<Mutex<VecDeque<usize>>>,
        received: Arc<Mutex<Vec<Vec<String>>>>,
        pending_seen: Arc<Mutex<Vec<bool>>>,
        /// Sources built from now on read ahead.
        ahead: std::sync::atomic::AtomicBool,
    }

    impl Rig {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
            Rig {
                _dir: dir,
                store,
                items: Arc::default(),
                restores: Arc::default(),
                answers: Arc::default(),
                partial: Arc::default(),
                received: Arc::default(),
                pending_seen: Arc::default(),
                ahead: Default::default(),
            }
        }

        fn watcher(&self, policy: FailurePolicy, batch_size: usize) -> Watcher {
            self.watcher_with(policy, batch_size, 1, Start::Beginning, false)
        }

        fn watcher_with(
            &self,
            policy: FailurePolicy,
            batch_size: usize,
            per_poll: usize,
            start: Start,
            idle_progress: bool,
        ) -> Watcher {
            let config = WatcherConfig {
                file: "w.yaml".into(),
                namespace: "ns".into(),
                name: "w".into(),
                source: SourceConfig::LocalDir(
                    serde_yaml::from_str("path: /nonexistent").expect("local_dir config"),
                ),
                sink: SinkConfig::Stdout(crate::sink::stdout::StdoutConfig {}),
                poll_interval: Duration::from_millis(10),
                batch_size,
                on_permanent_failure: policy,
                retry: RetryConfig {
                    initial: HumanDuration(Duration::from_millis(1)),
                    max: HumanDuration(Duration::from_millis(5)),
                },
                start,
            };
            let source = Box::new(ListSource {
                items: Arc::clone(&self.items),
                per_poll,
                at: 0,
                restores: Arc::clone(&self.restores),
                idle_progress,
                ahead: self.ahead.load(Ordering::Relaxed),
                handed: None,
            });
            let sink = Box::new(ScriptSink {
                answers: Arc::clone(&self.answers),
                partial: Arc::clone(&self.partial),
                received: Arc::clone(&self.received),
                store: Arc::clone(&self.store),
                pending_seen: Arc::clone(&self.pending_seen),
                recovers: false,
            });
            Watcher::new(&config, source, sink, Arc::clone(&self.store), Arc::default())
        }

        fn add(&self, names: &[impl AsRef<str>]) {
            self.items.lock().unwrap().extend(names.iter().map(|n| n.as_ref().to_string()));
        }

        fn outbox(&self) -> Outbox {
            Outbox::new(Arc::clone(&self.store), "ns", "w")
        }

        async fn summary(&self) -> Summary {
            let mut all = outbox::survey(&*self.store).await.unwrap();
            all.remove(&("ns".to_string(), "w".to_string())).unwrap_or_default()
        }

        async fn watermark(&self) -> Option<serde_json::Value> {
            self.summary().await.watermark.map(|r| r.value.decode().unwrap())
        }

        async fn pending(&self) -> Option<PendingBatch> {
            self.outbox().load().await.unwrap().pending.map(|staged| staged.batch().clone())
        }
    }

    #[tokio::test]
    async fn the_outbox_is_written_before_delivery_and_cleared_with_the_commit() {
        let rig = Rig::new();
        rig.add(&["a", "b", "c"]);
        let mut w = rig.watcher(FailurePolicy::Block, 2);
        let token = CancellationToken::new();
        let report = w.cycle(&token).await.unwrap();
        assert_eq!((report.delivered, report.more), (2, true));
        assert_eq!(*rig.pending_seen.lock().unwrap(), vec![true]);
        assert_eq!(rig.pending().await, None);
        assert_eq!(rig.watermark().await, Some(json!(2)));
        w.cycle(&token).await.unwrap();
        assert_eq!(rig.watermark().await, Some(json!(3)));
        let ids: Vec<String> = rig.received.lock().unwrap().concat();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], event_id("ns", "w", &["a"]));
    }

    #[tokio::test]
    async fn an_idle_poll_writes_nothing() {
        let rig = Rig::new();
        rig.add(&["a"]);
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        let token = CancellationToken::new();
        w.cycle(&token).await.unwrap();
        let before = rig.store.list(None, None, Keys::Under("")).await.unwrap();
        for _ in 0..3 {
            assert_eq!(w.cycle(&token).await.unwrap(), CycleReport::default());
        }
        assert_eq!(rig.store.list(None, None, Keys::Under("")).await.unwrap(), before);
    }

    #[tokio::test]
    async fn retries_keep_the_same_ids_and_commit_once() {
        let rig = Rig::new();
        rig.add(&["a", "b"]);
        rig.answers.lock().unwrap().extend([
            Delivery::retry("down"),
            Delivery::RetryLater { reason: "slow down".into(), after: Some(Duration::from_millis(2)) },
        ]);
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        w.cycle(&CancellationToken::new()).await.unwrap();
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received.len(), 3);
        assert!(received.iter().all(|ids| *ids == received[0]));
        assert_eq!(rig.summary().await.watermark.map(|r| r.version), Some(1), "committed once");
    }

    #[tokio::test]
    async fn a_crash_after_the_outbox_write_redelivers_the_same_batch_first() {
        let rig = Rig::new();
        rig.add(&["a", "b"]);
        // The first watcher gives up before the sink acknowledges: the process "dies".
        rig.answers.lock().unwrap().push_back(Delivery::retry("down"));
        let mut first = rig.watcher(FailurePolicy::Block, 10).with_attempt_limit(1);
        assert!(matches!(first.cycle(&CancellationToken::new()).await, Err(WatcherError::Delivery(_))));
        assert!(rig.pending().await.is_some());
        assert_eq!(rig.watermark().await, None);
        rig.add(&["c"]);
        let mut second = rig.watcher(FailurePolicy::Block, 10);
        let report = second.cycle(&CancellationToken::new()).await.unwrap();
        assert_eq!(report.redelivered, 2);
        second.cycle(&CancellationToken::new()).await.unwrap();
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received[0], received[1], "the redelivery carries the ids of the first attempt");
        assert_eq!(received[2], vec![event_id("ns", "w", &["c"])]);
    }

    #[tokio::test]
    async fn dead_letter_keeps_the_batch_and_moves_on_and_replay_does_not_move_the_watermark() {
        let rig = Rig::new();
        rig.add(&["a"]);
        rig.answers.lock().unwrap().push_back(Delivery::permanent("HTTP 400"));
        let mut w = rig.watcher(FailurePolicy::DeadLetter, 10);
        let token = CancellationToken::new();
        let report = w.cycle(&token).await.unwrap();
        assert_eq!(report.dead_lettered, 1);
        let summary = rig.summary().await;
        assert_eq!(summary.dead_letters.len(), 1);
        let batch_id = &summary.dead_letters[0];
        let dead = rig.store.get("ns", "w", &dead_letter_key(batch_id)).await.unwrap().expect("dead letter");
        let letter: DeadLetter = dead.value.decode_owned().unwrap();
        assert_eq!(letter.reason, "HTTP 400");
        assert_eq!(summary.watermark.map(|r| r.value), Some(Json::encode(&1).unwrap()));
        assert_eq!(rig.pending().await, None);
        let held = || w.stats.dead_letters.load(Ordering::Relaxed);
        assert_eq!(held(), 1, "the dead letter is counted as held");

        // Replay: the batch goes back to `pending` without a state change.
        assert_eq!(rig.outbox().replay(batch_id).await.unwrap(), Replay::Queued { events: 1 });
        assert_eq!(rig.pending().await.map(|p| p.change), Some(None));
        rig.add(&["b"]);
        let report = w.cycle(&token).await.unwrap();
        assert_eq!(report.redelivered, 1);
        assert_eq!(w.stats.dead_letters.load(Ordering::Relaxed), 0, "the replay is seen by the next cycle");
        assert_eq!(rig.watermark().await, Some(json!(1)), "a replay leaves the watermark");
        w.cycle(&token).await.unwrap();
        assert_eq!(rig.watermark().await, Some(json!(2)));
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received[1], received[0], "the replay carries the ids of the first attempt");
    }

    #[tokio::test]
    async fn block_holds_the_watcher_until_the_sink_accepts() {
        let rig = Rig::new();
        rig.add(&["a"]);
        rig.answers
            .lock()
            .unwrap()
            .extend([Delivery::permanent("HTTP 422"), Delivery::permanent("HTTP 422")]);
        let stats: Arc<WatcherStats> = Arc::default();
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        w.stats = Arc::clone(&stats);
        w.cycle(&CancellationToken::new()).await.unwrap();
        assert_eq!(rig.received.lock().unwrap().len(), 3);
        assert_eq!(stats.delivery_permanent_failures.load(Ordering::Relaxed), 2);
        assert_eq!(stats.state(), WatcherState::Ok);
        assert_eq!(rig.watermark().await, Some(json!(1)));
    }

    #[tokio::test]
    async fn a_sink_that_needs_attention_holds_its_batch_whatever_the_policy() {
        let rig = Rig::new();
        rig.add(&["a"]);
        let attention =
            Delivery::NeedsAttention { reason: "HTTP 401".into(), after: Some(Duration::from_millis(1)) };
        rig.answers.lock().unwrap().extend([attention.clone(), attention]);
        let stats: Arc<WatcherStats> = Arc::default();
        let mut w = rig.watcher(FailurePolicy::DeadLetter, 10);
        w.stats = Arc::clone(&stats);
        let report = w.cycle(&CancellationToken::new()).await.unwrap();
        assert_eq!((report.delivered, report.dead_lettered), (1, 0), "held and delivered, never set aside");
        assert_eq!(rig.received.lock().unwrap().len(), 3);
        assert_eq!(stats.delivery_attention.load(Ordering::Relaxed), 2);
        assert_eq!(stats.delivery_permanent_failures.load(Ordering::Relaxed), 0);
        assert_eq!(stats.state(), WatcherState::Ok);
        assert!(rig.summary().await.dead_letters.is_empty());
    }

    #[tokio::test]
    async fn a_receiver_back_from_an_outage_is_retried_at_once() {
        let rig = Rig::new();
        rig.add(&["a"]);
        // A backoff of an hour: only the sink's own "recovered" can end the wait.
        rig.answers.lock().unwrap().push_back(Delivery::RetryLater {
            reason: "connection refused".into(),
            after: Some(Duration::from_secs(3600)),
        });
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        w.sink = Box::new(ScriptSink {
            answers: Arc::clone(&rig.answers),
            partial: Arc::clone(&rig.partial),
            received: Arc::clone(&rig.received),
            store: Arc::clone(&rig.store),
            pending_seen: Arc::clone(&rig.pending_seen),
            recovers: true,
        });
        let report = tokio::time::timeout(Duration::from_secs(10), w.cycle(&CancellationToken::new()))
            .await
            .expect("the retry did not wait for the backoff")
            .unwrap();
        assert_eq!(report.delivered, 1);
        assert_eq!(rig.received.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn shutdown_during_a_retry_wait_leaves_the_batch_pending() {
        let rig = Rig::new();
        rig.add(&["a"]);
        rig.answers.lock().unwrap().push_back(Delivery::retry("down"));
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        let token = CancellationToken::new();
        token.cancel();
        assert!(matches!(w.cycle(&token).await, Err(WatcherError::Shutdown)));
        assert!(rig.pending().await.is_some());
    }

    #[tokio::test]
    async fn a_watermark_set_by_an_operator_is_adopted() {
        let rig = Rig::new();
        rig.add(&["a", "b", "c"]);
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        let token = CancellationToken::new();
        w.cycle(&token).await.unwrap();
        assert_eq!(rig.outbox().set_watermark(Json::encode(&1).unwrap()).await.unwrap(), None);
        let report = w.cycle(&token).await.unwrap();
        assert_eq!(report.delivered, 2, "replays from the rewound watermark");
        assert_eq!(rig.watermark().await, Some(json!(3)));
    }

    #[tokio::test]
    async fn one_poll_many_batches_each_committed_on_its_own() {
        let rig = Rig::new();
        rig.add(&["a", "b", "c", "d", "e"]);
        let token = CancellationToken::new();
        let mut w = rig.watcher_with(FailurePolicy::Block, 2, 10, Start::Beginning, false);
        let report = w.cycle(&token).await.unwrap();
        assert_eq!((report.delivered, report.more), (2, true));
        assert_eq!(rig.watermark().await, Some(json!(2)), "batch 1 committed alone");
        assert_eq!(rig.summary().await.remembered, 2);
        // The second batch fails: a crash with it pending.
        rig.answers.lock().unwrap().push_back(Delivery::retry("down"));
        let mut w = w.with_attempt_limit(1);
        assert!(matches!(w.cycle(&token).await, Err(WatcherError::Delivery(_))));
        assert_eq!(rig.watermark().await, Some(json!(2)), "the state after batch 1 is valid on its own");
        drop(w);
        // A new process: the pending batch first, then the rest is found again.
        let mut w = rig.watcher_with(FailurePolicy::Block, 2, 10, Start::Beginning, false);
        let report = w.once(&token).await.unwrap();
        assert_eq!((report.redelivered, report.delivered, report.more), (2, 1, false));
        assert_eq!(rig.watermark().await, Some(json!(5)));
        assert_eq!(rig.summary().await.remembered, 5);
        let received: Vec<Vec<String>> = rig.received.lock().unwrap().clone();
        assert_eq!(received[1], received[2], "the redelivery carries the ids it had");
        assert_eq!(received.concat().len(), 7);
        assert_eq!(*rig.restores.lock().unwrap(), 2, "restored once per process, not per poll");
    }

    /// Cycles until nothing is waiting; returns the events delivered (again or new).
    async fn drain(w: &mut Watcher, token: &CancellationToken) -> usize {
        let mut delivered = 0;
        for _ in 0..20 {
            let report = w.cycle(token).await.unwrap();
            delivered += report.delivered + report.redelivered;
            if !report.more && report.redelivered == 0 {
                return delivered;
            }
        }
        panic!("still more after 20 cycles ({delivered} delivered)");
    }

    /// The event ids of the test watcher's items `names`.
    fn ids(names: &[impl AsRef<str>]) -> Vec<String> {
        names.iter().map(|n| event_id("ns", "w", &[n.as_ref()])).collect()
    }

    /// A rig whose source reads ahead, holding the backlog `f00`, `f01`, … of `n` items
    /// (returned).
    fn reading_ahead_backlog(n: usize) -> (Rig, Vec<String>) {
        let rig = Rig::new();
        rig.ahead.store(true, Ordering::Relaxed);
        let names: Vec<String> = (0..n).map(|i| format!("f{i:02}")).collect();
        rig.add(&names);
        (rig, names)
    }

    #[tokio::test]
    async fn reading_ahead_delivers_every_batch_once_in_order() {
        let (rig, names) = reading_ahead_backlog(25);
        let token = CancellationToken::new();
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        let first = w.cycle(&token).await.unwrap();
        assert_eq!((first.delivered, first.more), (10, true));
        let ahead = w.built.as_ref().map(|b| b.events.len());
        assert_eq!(ahead, Some(10), "the second batch was read and encoded during the first's delivery");
        assert_eq!(first.delivered + drain(&mut w, &token).await, 25);
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received.concat(), ids(&names), "every item once, in order");
        assert_eq!(received.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        assert!(rig.pending_seen.lock().unwrap().iter().all(|p| *p), "each batch written before delivery");
        assert_eq!(rig.watermark().await, Some(json!(25)));
        assert_eq!(rig.summary().await.remembered, 25);
        assert_eq!(w.stats.items_found.load(Ordering::Relaxed), 25);
        assert_eq!(*rig.restores.lock().unwrap(), 1);
        // `once` does not read ahead: its one poll is its unit of work.
        rig.add(&["g", "h", "i"]);
        let mut once = rig.watcher(FailurePolicy::Block, 2);
        assert_eq!(once.once(&token).await.unwrap().delivered, 2);
        assert!(once.built.is_none() && once.queued.is_empty());
    }

    #[tokio::test]
    async fn a_batch_over_the_read_ahead_limit_is_delivered_alone() {
        let (rig, names) = reading_ahead_backlog(25);
        let token = CancellationToken::new();
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        // Ten events are over this limit (and over the size after which the loop hands
        // freed memory back).
        w.large_batch_bytes = 1000;
        let first = w.cycle(&token).await.unwrap();
        assert_eq!((first.delivered, first.more), (10, true));
        assert!(w.built.is_none(), "nothing was read ahead of a batch over the limit");
        assert_eq!(first.delivered + drain(&mut w, &token).await, 25);
        assert_eq!(rig.received.lock().unwrap().concat(), ids(&names), "every item once, in order");
    }

    #[tokio::test]
    async fn what_was_read_ahead_of_a_failed_delivery_is_read_again_not_skipped() {
        let rig = Rig::new();
        rig.ahead.store(true, Ordering::Relaxed);
        rig.add(&["a", "b", "c", "d", "e", "f"]);
        let token = CancellationToken::new();
        // Batch [a b] goes through (and [c d] is read meanwhile); [c d] fails while
        // [e f] is read ahead, which is then dropped.
        rig.answers.lock().unwrap().extend([Delivery::Acknowledged, Delivery::retry("down")]);
        let mut w = rig.watcher(FailurePolicy::Block, 2).with_attempt_limit(1);
        assert_eq!(w.cycle(&token).await.unwrap().delivered, 2);
        assert!(matches!(w.cycle(&token).await, Err(WatcherError::Delivery(_))));
        assert_eq!(rig.watermark().await, Some(json!(2)));
        assert!(w.built.is_none() && w.queued.is_empty(), "what was read ahead is dropped");
        // The same watcher goes on: [c d] again from the outbox, then [e f] found again.
        assert_eq!(drain(&mut w, &token).await, 4);
        assert_eq!(rig.watermark().await, Some(json!(6)));
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received, [ids(&["a", "b"]), ids(&["c", "d"]), ids(&["c", "d"]), ids(&["e", "f"])]);
    }

    /// A store that refuses the next write of a pending batch, once, as a full disk
    /// would; everything else goes to the SQLite store beneath.
    struct RefusesStaging {
        inner: Arc<dyn Store>,
        armed: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Store for RefusesStaging {
        async fn get(
            &self,
            namespace: &str,
            name: &str,
            key: &str,
        ) -> Result<Option<crate::state::Record>, StoreError> {
            self.inner.get(namespace, name, key).await
        }
        async fn version(&self, namespace: &str, name: &str, key: &str) -> Result<Option<i64>, StoreError> {
            self.inner.version(namespace, name, key).await
        }
        async fn list(
            &self,
            namespace: Option<&str>,
            name: Option<&str>,
            keys: Keys<'_>,
        ) -> Result<Vec<crate::state::Record>, StoreError> {
            self.inner.list(namespace, name, keys).await
        }
        async fn count(
            &self,
            namespace: Option<&str>,
            name: Option<&str>,
            keys: Keys<'_>,
        ) -> Result<std::collections::BTreeMap<(String, String), u64>, StoreError> {
            self.inner.count(namespace, name, keys).await
        }
        async fn backup(&self, to: &std::path::Path) -> Result<(), StoreError> {
            self.inner.backup(to).await
        }
        async fn write_fenced(
            &self,
            namespace: &str,
            name: &str,
            fence: Option<&Fence>,
            ops: Vec<crate::state::Op>,
        ) -> Result<Vec<Option<i64>>, StoreError> {
            let stages =
                ops.iter().any(|op| op.key == "pending" && matches!(op.action, crate::state::Action::Put(_)));
            if stages && self.armed.swap(false, Ordering::Relaxed) {
                return Err(StoreError::Backend { location: "test".into(), message: "disk full".into() });
            }
            self.inner.write_fenced(namespace, name, fence, ops).await
        }
        async fn rename(&self, from: (&str, &str), to: (&str, &str)) -> Result<u64, StoreError> {
            self.inner.rename(from, to).await
        }
    }

    #[tokio::test]
    async fn a_batch_that_could_not_be_written_is_found_again_by_a_source_that_reads_ahead() {
        let mut rig = Rig::new();
        rig.ahead.store(true, Ordering::Relaxed);
        let failing = Arc::new(RefusesStaging { inner: Arc::clone(&rig.store), armed: false.into() });
        rig.store = Arc::clone(&failing) as Arc<dyn Store>;
        rig.add(&["a", "b", "c", "d", "e", "f"]);
        let token = CancellationToken::new();
        let mut w = rig.watcher(FailurePolicy::Block, 2);
        // [a b] goes through, [c d] is read ahead meanwhile and then cannot be written.
        assert_eq!(w.cycle(&token).await.unwrap().delivered, 2);
        failing.armed.store(true, Ordering::Relaxed);
        assert!(w.cycle(&token).await.is_err());
        // The source had handed [c d] out and would go on after it: it is restored, and
        // [c d] comes next.
        assert_eq!(drain(&mut w, &token).await, 4);
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received, [ids(&["a", "b"]), ids(&["c", "d"]), ids(&["e", "f"])]);
        assert_eq!(rig.watermark().await, Some(json!(6)));
        // Without reading ahead the same holds: a batch that could not be written is
        // read again.
        rig.add(&["g", "h", "i", "j"]);
        w.read_ahead = false;
        failing.armed.store(true, Ordering::Relaxed);
        assert!(w.cycle(&token).await.is_err());
        assert_eq!(w.cycle(&token).await.unwrap().delivered, 2);
        assert_eq!(rig.received.lock().unwrap().last(), Some(&ids(&["g", "h"])));
    }

    #[tokio::test]
    async fn a_batch_without_items_is_committed_without_a_delivery() {
        let rig = Rig::new();
        let mut w = rig.watcher_with(FailurePolicy::Block, 10, 1, Start::Beginning, true);
        w.cycle(&CancellationToken::new()).await.unwrap();
        assert!(rig.received.lock().unwrap().is_empty());
        assert_eq!(rig.watermark().await, Some(json!(0)));
    }

    #[tokio::test]
    async fn start_is_stored_for_a_watcher_without_a_watermark_and_reset_returns_to_it() {
        let rig = Rig::new();
        rig.add(&["old-1", "old-2"]);
        let token = CancellationToken::new();
        let mut w = rig.watcher_with(FailurePolicy::Block, 10, 1, Start::Now, false);
        assert_eq!(w.cycle(&token).await.unwrap(), CycleReport::default());
        assert_eq!(rig.watermark().await, Some(json!(2)), "stored before the first poll");
        rig.add(&["new"]);
        assert_eq!(w.cycle(&token).await.unwrap().delivered, 1);
        rig.outbox().reset().await.unwrap();
        rig.add(&["newer"]);
        w.cycle(&token).await.unwrap();
        assert_eq!(rig.watermark().await, Some(json!(4)), "`now` again after the reset");
        let ids: Vec<String> = rig.received.lock().unwrap().concat();
        assert_eq!(ids, vec![event_id("ns", "w", &["new"])]);
    }

    #[tokio::test]
    async fn a_retry_sends_only_what_the_sink_did_not_acknowledge() {
        let rig = Rig::new();
        rig.add(&["a", "b", "c", "d", "e"]);
        // Two taken, then a failure; then one taken and a failure; then the rest.
        rig.partial.lock().unwrap().extend([2, 1]);
        rig.answers.lock().unwrap().extend([Delivery::retry("503"), Delivery::retry("503")]);
        let stats: Arc<WatcherStats> = Arc::default();
        let mut w = rig.watcher(FailurePolicy::Block, 10);
        w.stats = Arc::clone(&stats);
        let report = w.cycle(&CancellationToken::new()).await.unwrap();
        assert_eq!(report.delivered, 5);
        let received = rig.received.lock().unwrap().clone();
        let id = |n: &str| event_id("ns", "w", &[n]);
        assert_eq!(received[0], ["a", "b", "c", "d", "e"].map(id));
        assert_eq!(received[1], ["c", "d", "e"].map(id));
        assert_eq!(received[2], ["d", "e"].map(id));
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 5);
        assert_eq!(rig.watermark().await, Some(json!(5)));
    }

    #[tokio::test]
    async fn progress_kept_before_giving_up_is_where_a_restart_resumes() {
        let rig = Rig::new();
        rig.add(&["a", "b", "c"]);
        rig.partial.lock().unwrap().push_back(2);
        rig.answers.lock().unwrap().push_back(Delivery::retry("503"));
        let mut first = rig.watcher(FailurePolicy::Block, 10).with_attempt_limit(1);
        assert!(matches!(first.cycle(&CancellationToken::new()).await, Err(WatcherError::Delivery(_))));
        assert_eq!(rig.outbox().load().await.unwrap().pending.map(|s| s.acked()), Some(2));
        drop(first);
        let mut second = rig.watcher(FailurePolicy::Block, 10);
        let report = second.cycle(&CancellationToken::new()).await.unwrap();
        assert_eq!(report.redelivered, 3);
        let received = rig.received.lock().unwrap().clone();
        assert_eq!(received[1], vec![event_id("ns", "w", &["c"])], "only the rest, with its id");
        assert_eq!(rig.watermark().await, Some(json!(3)));
        assert!(rig.store.get("ns", "w", "progress").await.unwrap().is_none());
    }

    #[test]
    fn a_batch_encoded_in_two_halves_keeps_its_order_and_every_item() {
        let encoder = Encoder {
            namespace: "ns".into(),
            name: "w".into(),
            shared: (Arc::from("ns"), Arc::from("w"), Arc::from("local_dir")),
        };
        let file = |i: usize| Found {
            change: Change::Created,
            item: Item::File(FileItem {
                path: format!("in/f{i}"),
                relative_path: format!("f{i}"),
                size: i as u64,
                modified: DateTime::<Utc>::UNIX_EPOCH,
            }),
            identity: vec![format!("f{i}")],
        };
        // Both sides of each end of the sizes that are split, and an odd count.
        let (low, high) = (*SPLIT_ENCODING.start(), *SPLIT_ENCODING.end());
        for n in [low - 1, low, low + 1, high, high + 1] {
            let batch = Batch { items: (0..n).map(file).collect(), change: ChangeSet::default() };
            let built = encoder.build(&json!({"changed": null}), batch).unwrap();
            assert_eq!(built.events.len(), n);
            for (i, event) in built.events.iter().enumerate() {
                assert_eq!(event.id, event_id("ns", "w", &[&format!("f{i}")]), "event {i} of {n}");
                assert!(event.text().contains(&format!(r#""relative_path":"f{i}""#)), "event {i} of {n}");
            }
            let times: std::collections::HashSet<_> = built.events.iter().map(|e| e.emitted_at).collect();
            assert_eq!(times.len(), 1, "one time for the batch");
        }
    }
}
