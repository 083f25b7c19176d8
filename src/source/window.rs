//! The look-back window both time-ordered sources keep in their watermark: the newest
//! time announced, the items announced within `lookback` before it, and a floor when
//! the cap on remembered items bit. Also the bounded candidate heap a poll fills while
//! it streams a listing, so that memory never grows with the size of what is listed.

use std::collections::{BTreeMap, BinaryHeap};

/// The oldest time a poll still looks at, given the newest time announced (`high`),
/// the floor left by an overflow and the look-back window: items before it were either
/// announced already or are too late to be announced.
pub fn horizon(high: i64, floor: Option<i64>, lookback: i64) -> i64 {
    let window = high.saturating_sub(lookback);
    floor.map_or(window, |floor| window.max(floor.saturating_add(1)))
}

/// Forgets entries that fell out of the look-back window (unless `keep_outside` asks to
/// keep them, as delete detection does), then, if the set is still over `cap`, the
/// oldest times (whole timestamps at once, never the newest one, so ties at `high` stay
/// exact), raising `floor` to the last time given up.
pub fn prune<V>(
    seen: &mut BTreeMap<String, V>,
    time: impl Fn(&V) -> i64,
    high: i64,
    floor: &mut Option<i64>,
    lookback: i64,
    cap: usize,
    keep_outside: bool,
) {
    if !keep_outside {
        let window = high.saturating_sub(lookback);
        seen.retain(|_, v| time(v) >= window);
    }
    if seen.len() <= cap {
        return;
    }
    let mut times: Vec<i64> = seen.values().map(&time).collect();
    times.sort_unstable();
    let excess = seen.len() - cap;
    // Drop every entry at or below the time of the `excess`-th oldest entry, unless
    // that is the newest time, which must stay to keep its ties exact.
    let cut = times[excess - 1];
    if cut >= high {
        tracing::warn!(
            remembered = seen.len(),
            cap,
            "More items share the newest time than max_remembered allows; keeping them all."
        );
        return;
    }
    seen.retain(|_, v| time(v) > cut);
    *floor = Some(floor.map_or(cut, |f| f.max(cut)));
}

/// The `limit` smallest items offered, without ever holding more than `limit + 1`.
#[derive(Debug)]
pub struct Smallest<T: Ord> {
    /// A max-heap: its top is the largest kept item, the first to go.
    heap: BinaryHeap<T>,
    limit: usize,
    overflow: bool,
}

impl<T: Ord> Smallest<T> {
    /// An empty selection of at most `limit` items.
    pub fn new(limit: usize) -> Self {
        Smallest { heap: BinaryHeap::new(), limit, overflow: false }
    }

    /// Offers an item; the largest one goes when there are more than `limit`.
    pub fn push(&mut self, item: T) {
        self.heap.push(item);
        if self.heap.len() > self.limit {
            self.heap.pop();
            self.overflow = true;
        }
    }

    /// True when some item was left out: more is waiting for the next poll.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// How many items are kept.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The kept items, smallest first.
    pub fn into_sorted_vec(self) -> Vec<T> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_ties_and_records_a_floor() {
        let mut seen = BTreeMap::new();
        for i in 0..5 {
            seen.insert(format!("old{i}"), 50 + i);
        }
        for i in 0..3 {
            seen.insert(format!("new{i}"), 100);
        }
        let mut floor = None;
        prune(&mut seen, |t| *t, 100, &mut floor, 1000, 4, false);
        assert_eq!(seen.len(), 4);
        assert_eq!(floor, Some(53));
        prune(&mut seen, |t| *t, 100, &mut floor, 10, 1, false);
        assert_eq!(seen.len(), 3, "ties at the newest time are never dropped");
    }

    #[test]
    fn keeping_outside_the_window_still_honours_the_cap() {
        let mut seen: BTreeMap<String, i64> = (0..10).map(|i| (format!("k{i}"), i)).collect();
        let mut floor = None;
        prune(&mut seen, |t| *t, 100, &mut floor, 5, 100, true);
        assert_eq!(seen.len(), 10);
        prune(&mut seen, |t| *t, 100, &mut floor, 5, 4, true);
        assert_eq!(seen.len(), 4);
        assert_eq!(floor, Some(5));
        assert_eq!(horizon(100, floor, 5), 95);
        assert_eq!(horizon(100, Some(97), 5), 98);
    }

    #[test]
    fn smallest_keeps_the_limit_and_says_so() {
        let mut s = Smallest::new(3);
        for x in [5, 1, 4, 2, 3] {
            s.push(x);
        }
        assert!(s.overflowed());
        assert_eq!(s.into_sorted_vec(), vec![1, 2, 3]);
    }
}
