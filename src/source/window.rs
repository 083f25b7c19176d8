//! The look-back window both time-ordered sources keep in their watermark: the newest
//! time announced, the items announced within `lookback` before it, and a floor when
//! the cap on remembered items bit. Also the bounded candidate heap a poll fills while
//! it streams a listing, so that memory never grows with the size of what is listed.
//!
//! [`Window`] holds the remembered members with an index by time, and a poll plans its
//! batches on a [`Draft`] of it: what each batch adds and prunes, without copying the
//! set. Pruning costs what it removes, not what is remembered.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// The oldest time a poll still looks at, given the newest time announced (`high`),
/// the floor left by an overflow and the look-back window: items before it were either
/// announced already or are too late to be announced.
pub fn horizon(high: i64, floor: Option<i64>, lookback: i64) -> i64 {
    let window = high.saturating_sub(lookback);
    floor.map_or(window, |floor| window.max(floor.saturating_add(1)))
}

/// A remembered member: what the window needs of it is its time.
pub trait Timed {
    /// The member's place in time (the unit of the window's `high` and `lookback`).
    fn time(&self) -> i64;
}

/// The newest time announced, the floor left by the cap, and the members remembered
/// within the look-back window, indexed by name and by time.
#[derive(Debug, Clone)]
pub struct Window<V> {
    /// Newest time announced (0 before anything was).
    pub high: i64,
    /// Items at or before this time are not looked at again (set when the cap bit).
    pub floor: Option<i64>,
    members: HashMap<Arc<str>, V>,
    by_time: BTreeSet<(i64, Arc<str>)>,
}

impl<V> Default for Window<V> {
    fn default() -> Self {
        Window { high: 0, floor: None, members: HashMap::new(), by_time: BTreeSet::new() }
    }
}

impl<V: Timed + Clone> Window<V> {
    /// The oldest time a poll still looks at ([`horizon`]).
    pub fn horizon(&self, lookback: i64) -> i64 {
        horizon(self.high, self.floor, lookback)
    }

    /// The member called `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.members.get(name)
    }

    /// Members remembered.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.members.iter().map(|(name, value)| (&**name, value))
    }

    /// Makes room for `n` more members at once (a commit of thousands).
    pub fn reserve(&mut self, n: usize) {
        self.members.reserve(n);
    }

    /// Remembers `value` under `name`, replacing what was there.
    pub fn insert(&mut self, name: &str, value: V) {
        self.remove(name);
        let name: Arc<str> = Arc::from(name);
        self.by_time.insert((value.time(), Arc::clone(&name)));
        self.members.insert(name, value);
    }

    /// Forgets `name`.
    pub fn remove(&mut self, name: &str) {
        if let Some((name, old)) = self.members.remove_entry(name) {
            self.by_time.remove(&(old.time(), name));
        }
    }

    /// Forgets every member and the floor (a fresh state).
    pub fn clear(&mut self) {
        *self = Window::default();
    }

    /// A draft of the next states, to plan a poll's batches on.
    pub fn draft(&self) -> Draft<'_, V> {
        Draft {
            base: self,
            high: self.high,
            floor: self.floor,
            added: HashMap::new(),
            added_by_time: BTreeSet::new(),
            removed: HashSet::new(),
            batch: Vec::new(),
        }
    }
}

/// The window as a poll's batches will leave it, one batch after another, over an
/// untouched [`Window`]: only what the batches add and remove is held.
pub struct Draft<'a, V> {
    base: &'a Window<V>,
    /// The newest time after the batches so far.
    pub high: i64,
    /// The floor after the batches so far.
    pub floor: Option<i64>,
    /// Members put by the batches so far (they shadow the base). Hashed: a cold poll
    /// puts every key it listed, and nothing reads these in order.
    added: HashMap<String, V>,
    added_by_time: BTreeSet<(i64, String)>,
    /// Base members removed or replaced by the batches so far.
    removed: HashSet<String>,
    /// What the batch being planned does, in order: a value is put, `None` removed. The
    /// last word on each name counts; sorted once when the batch ends (a single pass
    /// for names planned in order), instead of kept in two ordered sets as it goes.
    batch: Vec<(String, Option<V>)>,
}

/// What one batch of a [`Draft`] changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<V> {
    /// Members added or replaced.
    pub put: BTreeMap<String, V>,
    /// Members removed.
    pub remove: Vec<String>,
    /// The window's newest time after the batch.
    pub high: i64,
    /// Its floor after the batch.
    pub floor: Option<i64>,
    /// Members the cap made the window give up (for the warning).
    pub capped: usize,
}

impl<V: Timed + Clone> Draft<'_, V> {
    /// Members remembered after the batches so far.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.base.len() - self.removed.len() + self.added.len()
    }

    /// Every member as the batches so far leave them, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &V)> {
        let base = self
            .base
            .iter()
            .filter(|(name, _)| !self.removed.contains(*name) && !self.added.contains_key(*name));
        base.chain(self.added.iter().map(|(name, value)| (name.as_str(), value)))
    }

    /// Makes room for `n` more members at once: a cold poll puts every key it listed,
    /// and growing the map by doubling hashed each key again at every step (a fifth of
    /// planning 20,000 new S3 keys).
    pub fn reserve(&mut self, n: usize) {
        self.added.reserve(n);
    }

    /// Remembers `value` under `name` in the batch being planned, and moves the newest
    /// time up to its time.
    pub fn put(&mut self, name: &str, value: V) {
        let time = value.time();
        self.high = self.high.max(time);
        self.batch.push((name.to_string(), Some(value.clone())));
        // One lookup for a name the draft has not put yet (a cold poll's every key).
        match self.added.entry(name.to_string()) {
            Entry::Occupied(mut entry) => {
                let old = entry.insert(value);
                if old.time() != time {
                    self.added_by_time.remove(&(old.time(), name.to_string()));
                    self.added_by_time.insert((time, name.to_string()));
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(value);
                if self.base.get(name).is_some() {
                    self.removed.insert(name.to_string());
                }
                self.added_by_time.insert((time, name.to_string()));
            }
        }
    }

    /// Removes `name` in the batch being planned (a member that is gone, or one a
    /// source no longer looks at).
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.added.remove(name) {
            self.added_by_time.remove(&(old.time(), name.to_string()));
        } else if self.base.get(name).is_some() {
            self.removed.insert(name.to_string());
        }
        self.batch.push((name.to_string(), None));
    }

    /// Members from the oldest, as the batches so far leave them.
    fn oldest(&self) -> impl Iterator<Item = (i64, &str)> {
        let mut base = self
            .base
            .by_time
            .iter()
            .filter(|(_, name)| !self.removed.contains(&**name))
            .map(|(time, name)| (*time, &**name))
            .peekable();
        let mut added = self.added_by_time.iter().map(|(time, name)| (*time, name.as_str())).peekable();
        std::iter::from_fn(move || match (base.peek(), added.peek()) {
            (Some(b), Some(a)) if b <= a => base.next(),
            (Some(_), Some(_)) | (None, Some(_)) => added.next(),
            (Some(_), None) => base.next(),
            (None, None) => None,
        })
    }

    /// Ends the batch being planned: forgets members that fell out of the look-back
    /// window (unless `keep_outside`), then, over `cap`, the oldest times (as
    /// [`prune`]), and returns what the batch changes.
    pub fn finish_batch(&mut self, lookback: i64, cap: usize, keep_outside: bool) -> Step<V> {
        if !keep_outside {
            let window = self.high.saturating_sub(lookback);
            let out: Vec<String> = self
                .oldest()
                .take_while(|(time, _)| *time < window)
                .map(|(_, name)| name.to_string())
                .collect();
            for name in out {
                self.remove(&name);
            }
        }
        let mut capped = 0;
        let len = self.len();
        if len > cap {
            let excess = len - cap;
            let cut = self.oldest().nth(excess - 1).map_or(self.high, |(time, _)| time);
            if cut >= self.high {
                tracing::warn!(
                    remembered = len,
                    cap,
                    "More items share the newest time than max_remembered allows; keeping them all."
                );
            } else {
                let out: Vec<String> = self
                    .oldest()
                    .take_while(|(time, _)| *time <= cut)
                    .map(|(_, name)| name.to_string())
                    .collect();
                capped = out.len();
                for name in out {
                    self.remove(&name);
                }
                self.floor = Some(self.floor.map_or(cut, |f| f.max(cut)));
            }
        }
        let mut batch = std::mem::take(&mut self.batch);
        // Stable, so that of a name's changes the last one stays last.
        batch.sort_by(|a, b| a.0.cmp(&b.0));
        let mut put = Vec::with_capacity(batch.len());
        let mut remove = Vec::new();
        let mut batch = batch.into_iter().peekable();
        while let Some((name, value)) = batch.next() {
            if batch.peek().is_some_and(|(next, _)| *next == name) {
                continue;
            }
            match value {
                Some(value) => put.push((name, value)),
                None => remove.push(name),
            }
        }
        Step {
            // In order and without repeats: built in one pass.
            put: put.into_iter().collect(),
            remove,
            high: self.high,
            floor: self.floor,
            capped,
        }
    }
}

/// The `limit` smallest items offered, without ever holding more than `limit`.
///
/// Until `limit` items came, they are only collected and sorted once at the end: a
/// listing that fits (the usual case) then costs one sort, which is a single pass when
/// the items arrive in order, as a listing of objects written one after another does.
/// A heap took a walk from the bottom to its top for each of them (each new item was
/// the largest) and a heap sort at the end. From the `limit + 1`st item on, the items
/// are a max-heap whose top, the largest kept item, is the first to go.
#[derive(Debug)]
pub struct Smallest<T: Ord> {
    /// The items while there are no more than `limit`, in the order they came.
    collected: Vec<T>,
    /// The items once there were more (`collected` is then empty).
    heap: BinaryHeap<T>,
    limit: usize,
    overflow: bool,
}

impl<T: Ord> Smallest<T> {
    /// An empty selection of at most `limit` items.
    pub fn new(limit: usize) -> Self {
        Smallest { collected: Vec::new(), heap: BinaryHeap::new(), limit, overflow: false }
    }

    /// Offers an item; the largest one goes when there are more than `limit`.
    pub fn push(&mut self, item: T) {
        if !self.overflow && self.collected.len() < self.limit {
            self.collected.push(item);
            return;
        }
        if !self.overflow {
            // Heapified in one pass, once.
            self.heap = BinaryHeap::from(std::mem::take(&mut self.collected));
        }
        // The new item takes the largest one's place if it is smaller, else it goes.
        if let Some(mut largest) = self.heap.peek_mut()
            && item < *largest
        {
            *largest = item;
        }
        self.overflow = true;
    }

    /// True when some item was left out: more is waiting for the next poll.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// How many items are kept.
    pub fn len(&self) -> usize {
        self.collected.len() + self.heap.len()
    }

    /// The kept items, smallest first.
    pub fn into_sorted_vec(self) -> Vec<T> {
        if self.overflow {
            return self.heap.into_sorted_vec();
        }
        let mut items = self.collected;
        // Stable: it merges the runs the items came in.
        items.sort();
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_the_window_or_above_the_floor() {
        assert_eq!(horizon(100, None, 5), 95);
        assert_eq!(horizon(100, Some(5), 5), 95);
        assert_eq!(horizon(100, Some(97), 5), 98);
    }

    impl Timed for i64 {
        fn time(&self) -> i64 {
            *self
        }
    }

    #[test]
    fn a_draft_plans_batches_without_touching_the_window() {
        let mut window: Window<i64> = Window::default();
        for (name, time) in [("a", 10), ("b", 20), ("c", 30)] {
            window.insert(name, time);
            window.high = time;
        }
        let mut draft = window.draft();
        draft.put("d", 40);
        draft.put("b", 41); // b changed: replaced
        let first = draft.finish_batch(25, 100, false);
        assert_eq!(first.put.keys().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(first.remove, vec!["a".to_string()], "a fell out of the window (41 - 25 = 16)");
        assert_eq!((first.high, first.floor, first.capped), (41, None, 0));
        assert_eq!(draft.len(), 3);
        draft.put("e", 50);
        let second = draft.finish_batch(100, 2, false);
        assert_eq!(second.remove, vec!["c".to_string(), "d".to_string()], "the cap drops the oldest times");
        assert_eq!((second.floor, second.capped), (Some(40), 2));
        let mut left: Vec<(&str, i64)> = draft.members().map(|(n, v)| (n, *v)).collect();
        left.sort();
        assert_eq!(left, [("b", 41), ("e", 50)]);
        // The window itself is untouched until the changes are applied.
        assert_eq!((window.len(), window.get("a")), (3, Some(&10)));
        for step in [first, second] {
            for name in &step.remove {
                window.remove(name);
            }
            for (name, value) in step.put {
                window.insert(&name, value);
            }
            (window.high, window.floor) = (step.high, step.floor);
        }
        let mut names: Vec<&str> = window.iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["b", "e"]);
        assert_eq!(window.horizon(100), 41);
    }

    #[test]
    fn a_draft_keeps_ties_at_the_newest_time() {
        let window: Window<i64> = Window::default();
        let mut draft = window.draft();
        for name in ["x", "y", "z"] {
            draft.put(name, 5);
        }
        let step = draft.finish_batch(10, 1, false);
        assert_eq!((step.put.len(), step.capped, step.floor), (3, 0, None));
    }

    #[test]
    fn smallest_keeps_the_limit_and_says_so() {
        let mut s = Smallest::new(3);
        for x in [5, 1, 4, 2, 3] {
            s.push(x);
        }
        assert!(s.overflowed());
        assert_eq!(s.into_sorted_vec(), vec![1, 2, 3]);
        let mut s = Smallest::new(3);
        for x in [3, 1, 2] {
            s.push(x);
        }
        assert_eq!((s.overflowed(), s.len()), (false, 3), "exactly the limit: nothing left out");
        assert_eq!(s.into_sorted_vec(), vec![1, 2, 3]);
        let mut s = Smallest::new(0);
        s.push(1);
        assert_eq!((s.overflowed(), s.len()), (true, 0));
    }

    #[test]
    fn smallest_is_the_sorted_prefix_of_whatever_came() {
        // Every limit, around the switch from collecting to the heap, over inputs in
        // order, reversed and shuffled.
        let shuffled: Vec<u32> = (0..200u32).map(|i| i.wrapping_mul(7919) % 200).collect();
        let inputs = [(0..200).collect::<Vec<u32>>(), (0..200).rev().collect(), shuffled];
        for input in &inputs {
            for limit in [0, 1, 2, 50, 199, 200, 201, 500] {
                let mut s = Smallest::new(limit);
                for &x in input {
                    s.push(x);
                }
                let mut all = input.clone();
                all.sort();
                all.truncate(limit);
                assert_eq!(s.overflowed(), input.len() > limit, "limit {limit}");
                assert_eq!(s.len(), all.len(), "limit {limit}");
                assert_eq!(s.into_sorted_vec(), all, "limit {limit}");
            }
        }
    }
}
