//! Per-watcher counters and state that the loop updates and the CLI, logs and metrics
//! read. Atomics only: reading them never blocks a watcher.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

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
}

impl WatcherState {
    /// The lower-case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WatcherState::Ok => "ok",
            WatcherState::Retrying => "retrying",
            WatcherState::Blocked => "blocked",
            WatcherState::Error => "error",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => WatcherState::Retrying,
            2 => WatcherState::Blocked,
            3 => WatcherState::Error,
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
    /// Events the sink acknowledged.
    pub events_delivered: AtomicU64,
    /// Delivery attempts answered "retry later".
    pub delivery_retries: AtomicU64,
    /// Delivery attempts answered "permanent failure".
    pub delivery_permanent_failures: AtomicU64,
    /// Batches moved to a dead-letter key.
    pub batches_dead_lettered: AtomicU64,
    /// Events in the batch waiting for acknowledgement (0 when none).
    pub pending_events: AtomicU64,
    /// Unix milliseconds of the last acknowledged delivery (0: none yet).
    pub last_delivery_ms: AtomicI64,
    /// Unix milliseconds of the last successful poll (0: none yet).
    pub last_poll_ms: AtomicI64,
    state: AtomicU8,
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
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
