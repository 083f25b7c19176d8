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
