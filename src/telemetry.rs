//! Per-watcher counters and state that the loop updates and the CLI, logs and metrics
//! read, and the daemon-wide [`Telemetry`] the HTTP endpoints and systemd status read.
//! Atomics only on the watcher side: reading them never blocks a watcher.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where a watcher stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WatcherState {
    /// Polling and delivering normally.
    Ok = 0,
    /// A poll or a delivery failed and is being retried.
    Retrying = 1,
    /// The sink refused a batch for good and the policy is `block`.
    Blocked = 2,
    /// The source needs an operator (missing directory, bucket, table, access).
    Error = 3,
    /// The source waits on another session (a poll timed out waiting for a table
    /// lock) and is retried.
    Waiting = 4,
}

impl WatcherState {
    /// Every state, in the order of their numbers.
    pub const ALL: [WatcherState; 5] = [
        WatcherState::Ok,
        WatcherState::Retrying,
        WatcherState::Blocked,
        WatcherState::Error,
        WatcherState::Waiting,
    ];

    /// The lower-case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WatcherState::Ok => "ok",
            WatcherState::Retrying => "retrying",
            WatcherState::Blocked => "blocked",
            WatcherState::Error => "error",
            WatcherState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => WatcherState::Retrying,
            2 => WatcherState::Blocked,
            3 => WatcherState::Error,
            4 => WatcherState::Waiting,
            _ => WatcherState::Ok,
        }
    }
}

/// Counters of one watcher since the daemon started.
#[derive(Debug, Default)]
pub struct WatcherStats {
    /// Polls that returned (with or without items).
    pub polls: AtomicU64,
    /// Polls that failed.
    pub poll_errors: AtomicU64,
    /// Items found by polls.
    pub items_found: AtomicU64,
    /// Items a source skipped as unusable (a row whose cursor is NULL), each logged.
    pub items_skipped: AtomicU64,
    /// Objects a scheduled listing found that no event notification had announced.
    pub items_unnotified: AtomicU64,
    /// Events the sink acknowledged.
    pub events_delivered: AtomicU64,
    /// Delivery attempts answered "retry later".
    pub delivery_retries: AtomicU64,
    /// Delivery attempts answered "permanent failure".
    pub delivery_permanent_failures: AtomicU64,
    /// Delivery attempts answered "needs attention" (credentials refused, a missing
    /// consumer): retried slowly until an operator acts.
    pub delivery_attention: AtomicU64,
    /// Batches moved to a dead-letter key.
    pub batches_dead_lettered: AtomicU64,
    /// Events in the batch waiting for acknowledgement (0 when none).
    pub pending_events: AtomicU64,
    /// Unix milliseconds of the last acknowledged delivery (0: none yet).
    pub last_delivery_ms: AtomicI64,
    /// Unix milliseconds of the last successful poll (0: none yet).
    pub last_poll_ms: AtomicI64,
    /// How long successful polls took.
    pub poll_duration: DurationHistogram,
    /// Unix milliseconds when the stored watermark last moved (0: not known yet).
    pub watermark_moved_ms: AtomicI64,
    /// Unix milliseconds when the batch waiting for acknowledgement was written (0:
    /// none waiting): how far delivery lags behind detection.
    pub pending_since_ms: AtomicI64,
    /// Items polls found that the sink has not acknowledged (nor were set aside) yet:
    /// the batches of the last poll still queued plus the rest of the pending batch.
    pub backlog_events: AtomicU64,
    /// Unix milliseconds when the oldest of [`Self::backlog_events`] was found (or its
    /// batch written, for one restored from the store); 0 while the backlog is empty.
    /// Now minus this is the watcher's lag: how far delivery is behind detection.
    pub backlog_since_ms: AtomicI64,
    /// Batches held under `dead_letter/*` keys in the store, counted at start and
    /// recounted while any are held (so that `state replay` and purges show).
    pub dead_letters: AtomicU64,
    /// The configured `poll_interval`, in milliseconds, so that an alert can say "no
    /// successful poll for N intervals" of each watcher's own interval.
    pub poll_interval_ms: AtomicU64,
    state: AtomicU8,
    /// The watcher's last cycle failed in the state store (not a conflict: the store
    /// could not be read or written, or its file was deleted or replaced). `/readyz`
    /// names such watchers at once; cleared by the next cycle that goes through.
    pub store_failed: AtomicBool,
    /// Unix milliseconds when the current state began.
    pub state_since_ms: AtomicI64,
}

impl WatcherStats {
    /// The current state.
    pub fn state(&self) -> WatcherState {
        WatcherState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves to `state`, remembering when if it changed.
    pub fn set_state(&self, state: WatcherState) {
        let old = self.state.swap(state as u8, Ordering::Relaxed);
        if old != state as u8 {
            self.state_since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the batch waiting for acknowledgement: `events` of them, written at
    /// `since_ms` (0 events: nothing waits).
    pub fn set_pending(&self, events: usize, since_ms: i64) {
        self.pending_events.store(events as u64, Ordering::Relaxed);
        self.pending_since_ms.store(if events == 0 { 0 } else { since_ms }, Ordering::Relaxed);
    }

    /// Records the backlog: `events` found and not yet delivered, the oldest found at
    /// `since_ms` (0 events: none).
    pub fn set_backlog(&self, events: usize, since_ms: i64) {
        self.backlog_events.store(events as u64, Ordering::Relaxed);
        self.backlog_since_ms.store(if events == 0 { 0 } else { since_ms }, Ordering::Relaxed);
    }

    /// Seconds delivery is behind detection at `now_ms`: the age of the oldest item found
    /// and not yet delivered (0 when everything found was delivered).
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        let since = self.backlog_since_ms.load(Ordering::Relaxed);
        if since == 0 { 0.0 } else { now_ms.saturating_sub(since).max(0) as f64 / 1000.0 }
    }
}

/// Upper bounds, in seconds, of the poll duration buckets: from a directory listing
/// of a few files (sub-millisecond) to a slow S3 or Postgres page (tens of seconds).
pub const POLL_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// A fixed-bucket histogram of durations made of atomics, so that the watcher loop
/// never waits for a scrape.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket of [`POLL_BUCKETS`] (not cumulative); the last slot
    /// counts what is above the last bound.
    buckets: [AtomicU64; POLL_BUCKETS.len() + 1],
    /// Sum of all observations, in microseconds.
    sum_us: AtomicU64,
}

impl DurationHistogram {
    /// Records one observation.
    pub fn observe(&self, duration: Duration) {
        let secs = duration.as_secs_f64();
        let slot = POLL_BUCKETS.iter().position(|bound| secs <= *bound).unwrap_or(POLL_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, [(upper bound, count in that bucket)])`, the shape
    /// Prometheus encoders take; the overflow slot is the `+Inf` bucket.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets = Vec::with_capacity(POLL_BUCKETS.len() + 1);
        let mut count = 0;
        for (i, slot) in self.buckets.iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            count += n;
            buckets.push((POLL_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        (self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
    }

    /// Adds every observation of `other` to this one.
    fn absorb(&self, other: &DurationHistogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us.fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// What the daemon as a whole shows to `/metrics`, `/healthz`, `/readyz` and systemd:
/// the running watchers' counters and a few daemon-wide facts. The watcher list is
/// replaced on start and reload only; scrapes take a read lock for as long as they
/// copy it.
#[derive(Debug, Default)]
pub struct Telemetry {
    watchers: RwLock<BTreeMap<String, Arc<WatcherStats>>>,
    /// Every watcher is built and the store is open; false again once shutdown began.
    pub ready: AtomicBool,
    /// Unix milliseconds of the supervisor loop's last turn: `/healthz` fails when it
    /// stops turning.
    pub supervisor_tick_ms: AtomicI64,
    /// Reloads applied.
    pub reloads_applied: AtomicU64,
    /// Reloads rejected (invalid config); the previous config kept running.
    pub reloads_rejected: AtomicU64,
    /// Connections to the HTTP listener closed at once because `http.max_connections`
    /// were open.
    pub http_connections_refused: AtomicU64,
    /// Poll durations of watchers a reload removed: kept in the daemon-wide histogram
    /// so that its counts never go down.
    retired_polls: DurationHistogram,
    /// Leases: the instance shares a store with others (the lease metrics are exported
    /// only then).
    pub leasing: AtomicBool,
    /// Watcher leases this instance holds.
    pub leases_held: AtomicU64,
    /// Leases given up to another instance (rebalancing, a removed watcher, a graceful
    /// stop) or lost (expired, taken over).
    pub lease_handovers: AtomicU64,
    /// Leases this instance took.
    pub lease_acquisitions: AtomicU64,
    /// Renewals that failed (the store could not be reached or refused).
    pub lease_renew_failures: AtomicU64,
    /// The leases could not be renewed within the ttl: every watcher was stopped, and
    /// `/readyz` fails until the store answers again.
    pub store_lost: AtomicBool,
}

impl Telemetry {
    /// Replaces the list of running watchers (`namespace/name` → counters).
    pub fn set_watchers(&self, watchers: BTreeMap<String, Arc<WatcherStats>>) {
        let mut guard = self.watchers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, old) in guard.iter() {
            if !watchers.get(id).is_some_and(|new| Arc::ptr_eq(new, old)) {
                self.retired_polls.absorb(&old.poll_duration);
            }
        }
        *guard = watchers;
    }

    /// The poll durations of every watcher this daemon ran, as one histogram (the
    /// shape of [`DurationHistogram::snapshot`]).
    pub fn poll_duration(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let (mut sum, mut count, mut buckets) = self.retired_polls.snapshot();
        let guard = self.watchers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for stats in guard.values() {
            let (s, c, b) = stats.poll_duration.snapshot();
            sum += s;
            count += c;
            for (total, (_, n)) in buckets.iter_mut().zip(b) {
                total.1 += n;
            }
        }
        (sum, count, buckets)
    }

    /// The running watchers, sorted by `namespace/name`.
    pub fn watchers(&self) -> Vec<(String, Arc<WatcherStats>)> {
        let guard = self.watchers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.iter().map(|(id, stats)| (id.clone(), Arc::clone(stats))).collect()
    }

    /// How many watchers are in each state, in [`WatcherState::ALL`] order.
    pub fn state_counts(&self) -> [usize; WatcherState::ALL.len()] {
        let mut counts = [0; WatcherState::ALL.len()];
        let guard = self.watchers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for stats in guard.values() {
            counts[stats.state() as usize] += 1;
        }
        counts
    }

    /// One line for systemd's `STATUS=` and logs.
    pub fn summary(&self) -> String {
        let counts = self.state_counts();
        let total: usize = counts.iter().sum();
        let mut line = format!("{total} watcher{}", if total == 1 { "" } else { "s" });
        let parts: Vec<String> = WatcherState::ALL
            .iter()
            .zip(counts)
            .filter(|(state, n)| *n > 0 || **state == WatcherState::Ok)
            .map(|(state, n)| format!("{n} {}", state.as_str()))
            .collect();
        line.push_str(": ");
        line.push_str(&parts.join(", "));
        line
    }

    /// Watchers whose last cycle failed in the state store, for `/readyz`.
    pub fn store_failed(&self) -> Vec<String> {
        let guard = self.watchers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard
            .iter()
            .filter(|(_, stats)| stats.store_failed.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Watchers blocked, or needing attention (state `error`), for longer than `max` at
    /// `now_ms`, with how long, for `/readyz`: both wait for an operator.
    pub fn blocked_longer_than(&self, max: Duration, now_ms: i64) -> Vec<(String, WatcherState, Duration)> {
        let guard = self.watchers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard
            .iter()
            .filter(|(_, stats)| matches!(stats.state(), WatcherState::Blocked | WatcherState::Error))
            .filter_map(|(id, stats)| {
                let since = stats.state_since_ms.load(Ordering::Relaxed);
                let blocked = Duration::from_millis(now_ms.saturating_sub(since).max(0) as u64);
                (blocked > max).then(|| (id.clone(), stats.state(), blocked))
            })
            .collect()
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0205).abs() < 1e-9);
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[4], (0.025, 1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn the_daemon_wide_histogram_keeps_the_polls_of_removed_watchers() {
        let telemetry = Telemetry::default();
        let a = Arc::new(WatcherStats::default());
        let b = Arc::new(WatcherStats::default());
        a.poll_duration.observe(Duration::from_millis(2));
        b.poll_duration.observe(Duration::from_secs(2));
        telemetry.set_watchers(BTreeMap::from([("n/a".to_string(), Arc::clone(&a)), ("n/b".to_string(), b)]));
        assert_eq!(telemetry.poll_duration().1, 2);
        // A reload keeps `a` (the same counters) and removes `b`.
        telemetry.set_watchers(BTreeMap::from([("n/a".to_string(), Arc::clone(&a))]));
        a.poll_duration.observe(Duration::from_millis(2));
        let (sum, count, buckets) = telemetry.poll_duration();
        assert_eq!(count, 3);
        assert!((sum - 2.004).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[1], (0.0025, 2));
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_item_not_delivered() {
        let stats = WatcherStats::default();
        assert_eq!(stats.lag_seconds(10_000), 0.0);
        stats.set_backlog(5, 4_000);
        assert_eq!(stats.lag_seconds(10_000), 6.0);
        stats.set_backlog(0, 4_000);
        assert_eq!(stats.lag_seconds(10_000), 0.0);
    }

    #[test]
    fn blocked_watchers_and_summary() {
        let telemetry = Telemetry::default();
        let ok = Arc::new(WatcherStats::default());
        let blocked = Arc::new(WatcherStats::default());
        blocked.set_state(WatcherState::Blocked);
        let since = blocked.state_since_ms.load(Ordering::Relaxed);
        telemetry.set_watchers(BTreeMap::from([("a/ok".to_string(), ok), ("a/stuck".to_string(), blocked)]));
        assert_eq!(telemetry.summary(), "2 watchers: 1 ok, 1 blocked");
        assert!(telemetry.blocked_longer_than(Duration::from_secs(60), since + 59_000).is_empty());
        let late = telemetry.blocked_longer_than(Duration::from_secs(60), since + 61_000);
        assert_eq!(late, vec![("a/stuck".to_string(), WatcherState::Blocked, Duration::from_secs(61))]);
        // A watcher waiting for an operator (state error) counts the same way.
        let stuck = telemetry.watchers().remove(1).1;
        stuck.set_state(WatcherState::Error);
        let since = stuck.state_since_ms.load(Ordering::Relaxed);
        let late = telemetry.blocked_longer_than(Duration::from_secs(60), since + 61_000);
        assert_eq!(late, vec![("a/stuck".to_string(), WatcherState::Error, Duration::from_secs(61))]);
    }
}
