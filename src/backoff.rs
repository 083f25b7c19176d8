//! Exponential backoff with jitter, and jittered sleeps, shared by polls and deliveries.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random fraction in [0, 1). Jitter only needs to spread watchers apart, not to be
/// unpredictable, so the standard library's randomly keyed hasher is enough.
pub fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` plus up to `fraction` of it, at random.
pub fn jittered(base: Duration, fraction: f64) -> Duration {
    base.mul_f64(1.0 + fraction * random_fraction())
}

/// Longest wake-up slot; see [`wake_at`].
const WAKE_SLOT: Duration = Duration::from_millis(100);

/// When a sleep of `duration` starting now should end: rounded up to the next multiple
/// of a slot (a tenth of the sleep, at most 100 ms) counted from a fixed point of the
/// process. Watchers due within the same slot then wake the runtime once, together,
/// instead of once each. With a thousand idle watchers the separate wake-ups and the
/// thread hand-offs they cause, not the polls, were most of the daemon's CPU time
/// (scripts/bench-idle.sh: about 3 % of a core, 0.6 % with slots).
pub fn wake_at(duration: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let due = tokio::time::Instant::now() + duration;
    let slot = WAKE_SLOT.min(duration / 10).as_nanos().max(1);
    let rounded = due.duration_since(epoch).as_nanos().div_ceil(slot) * slot;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// Delays that double from `initial` up to `max`, each drawn from the upper half of
/// the current step ("equal jitter") so that retries of many watchers spread out but a
/// retry never comes much sooner than planned.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * random_fraction())
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_are_rounded_up_to_a_slot_of_at_most_a_tenth() {
        for duration in [Duration::from_millis(10), Duration::from_millis(150), Duration::from_secs(10)] {
            let now = tokio::time::Instant::now();
            let at = wake_at(duration);
            let slot = Duration::from_millis(100).min(duration / 10);
            assert!(at >= now + duration, "{duration:?}");
            // Generous bound: `now` above is taken a moment before wake_at's own.
            assert!(at <= now + duration + slot + Duration::from_millis(5), "{duration:?}");
        }
    }

    #[test]
    fn grows_and_caps_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_secs(1u64 << i.min(4)).min(Duration::from_secs(10));
            assert!(*d >= step / 2 && *d <= step, "attempt {i}: {d:?} not in [{:?}, {step:?}]", step / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn fractions_stay_in_range() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
