//! What the `s3` source announces, apart from the network: a [`Scan`] is offered the
//! objects of a listing one by one, in the order the server lists them, and keeps only
//! what one poll may announce (at most `limit` candidates), so memory never grows with
//! the prefix.
//!
//! The watermark ([`Mark`]) is the newest `LastModified` announced, the keys announced
//! within the look-back window before it (with their `LastModified` and ETag), a floor
//! when the cap on remembered keys bit, the scope (bucket, prefix, glob) the remembered
//! keys belong to, whether the server was seen listing out of byte order, and in ordered
//! mode the greatest key announced and when the last full listing finished.
//!
//! - `key_order: any`: every poll lists the whole prefix. An object is a candidate when
//!   its `LastModified` is inside the window and that key with that `LastModified` and
//!   ETag was not announced; the oldest `limit` candidates are announced. Ties and late
//!   objects inside the window are announced exactly once.
//! - `key_order: lexicographic`: a poll lists only the keys after the greatest key
//!   announced (`StartAfter`), and takes them in key order whatever their time. On a
//!   schedule (`full_relist_every`) a poll lists from the start instead, and keys at or
//!   below that cursor are judged as in `any` mode: what arrived out of order inside the
//!   window is caught there.
//!
//! Servers are not trusted blindly:
//! - S3 lists in UTF-8 byte order, and deletes are found by merging the listing with the
//!   remembered keys, which needs that order. A scan that meets a key out of order asks
//!   for the listing to start again ([`Flow::Restart`]) and the watermark remembers the
//!   server as `unordered`: deletes are then judged against the whole listing (a set of
//!   the remembered keys that were listed, bounded by `max_remembered`) and in ordered
//!   mode every poll lists in full. A whole listing in byte order trusts the server again.
//! - The watermark never moves past the server's clock (plus [`FUTURE_TOLERANCE_MS`]):
//!   an object stamped in the future is announced once and does not hide the present.
//! - A changed scope forgets the remembered keys outside it, silently; in ordered mode
//!   the first poll after the change judges every key by the window and then moves the
//!   cursor to the greatest key in the new scope.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::super::window::{self, Smallest};
use crate::event::Change;
use crate::value::Glob;

/// How far past the server's clock a `LastModified` may move the watermark (at most half
/// the look-back window): listings and clocks of a distributed server differ by a
/// little, never by much.
pub const FUTURE_TOLERANCE_MS: i64 = 5_000;

/// One object of a listing, as the scan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The full key.
    pub key: String,
    /// `LastModified`, milliseconds since the epoch.
    pub last_modified_ms: i64,
    /// The ETag without quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// The storage class, when listed.
    pub storage_class: Option<String>,
}

/// What one remembered key holds: (`LastModified` ms, ETag, size). A tuple keeps the
/// stored watermark compact: it may hold many thousands of these.
pub type Seen = (i64, String, u64);

/// What a watermark's remembered keys belong to: a key outside it cannot be listed by
/// this watcher, so it must neither be announced as deleted nor keep its old ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// The bucket.
    pub bucket: String,
    /// The prefix.
    pub prefix: String,
    /// The glob, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

/// The stored watermark of an `s3` watcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// Newest `LastModified` announced, milliseconds since the epoch (never past the
    /// server's clock at the time).
    pub high_ms: i64,
    /// Objects modified at or before this are not looked at again (set when the
    /// remembered set overflowed); None while it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_ms: Option<i64>,
    /// Keys announced inside the look-back window (all remembered keys when deletes are
    /// announced): key → (`LastModified` ms, ETag, size).
    #[serde(default)]
    pub seen: BTreeMap<String, Seen>,
    /// Ordered mode: the greatest key announced in key order; polls list after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Ordered mode: when the last full listing got through every key up to `after`
    /// (milliseconds since the epoch, wall clock). Stored even by a poll that found
    /// nothing, so that a `highwater once` from cron does not list in full every time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at_ms: Option<i64>,
    /// The scope `seen` belongs to; None in a watermark set by hand or written by an
    /// older release (adopted as it is, keys outside the scope forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The server was seen listing keys out of UTF-8 byte order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unordered: bool,
}

/// The settings a scan follows, taken from the source's config.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The bucket (part of the scope).
    pub bucket: String,
    /// Stripped from a key before the glob sees it.
    pub prefix: String,
    /// Only keys (after the prefix) that match.
    pub glob: Option<Glob>,
    /// Smaller objects are skipped.
    pub min_size: u64,
    /// Announce zero-byte keys ending in `/`.
    pub include_folder_markers: bool,
    /// Which changes become events.
    pub events: Vec<Change>,
    /// `key_order: lexicographic`.
    pub ordered: bool,
    /// The look-back window, milliseconds.
    pub lookback_ms: i64,
    /// Ordered mode: time between full listings, milliseconds.
    pub full_relist_every_ms: i64,
    /// Cap on remembered keys.
    pub max_remembered: usize,
}

impl Rules {
    /// The scope a watermark of these rules belongs to.
    pub fn scope(&self) -> Scope {
        Scope {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            glob: self.glob.as_ref().map(|g| g.pattern.clone()),
        }
    }

    /// True when `key` (of this bucket) is inside the prefix and matches the glob.
    fn in_scope(&self, key: &str) -> bool {
        let Some(relative) = key.strip_prefix(self.prefix.as_str()) else { return false };
        self.glob.as_ref().is_none_or(|glob| glob.is_match(relative))
    }
}

/// An object (or a remembered one that is gone) that a poll may announce, ordered by
/// (`LastModified`, key): the delivery order of the window's candidates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// `LastModified`, ms (for a deleted object: the remembered one).
    pub time_ms: i64,
    /// The key.
    pub key: String,
    /// The ETag (of the deleted version, for a delete).
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// The storage class, when listed.
    pub storage_class: Option<String>,
    /// What happened.
    pub change: Change,
}

/// A candidate past the ordered cursor, ordered by key: those are taken in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ByKey(Candidate);

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether the listing should go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Offer the next object.
    Continue,
    /// Enough for this poll: stop listing.
    Stop,
    /// The server listed `key` after `previous`, out of byte order, and this scan relied
    /// on that order: discard it, [`Scan::restart`] and list again from the start.
    Restart {
        /// The key listed first.
        previous: String,
        /// The key listed after it.
        key: String,
    },
}

/// A change of scope a poll noticed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeChange {
    /// The scope the watermark belonged to.
    pub from: Scope,
    /// Remembered keys forgotten because they are outside the new scope.
    pub forgotten: usize,
}

/// What a finished scan decided.
#[derive(Debug)]
pub struct Outcome {
    /// What to announce, in delivery order.
    pub items: Vec<Candidate>,
    /// The watermark once they are acknowledged.
    pub next: Mark,
    /// More is waiting: poll again at once.
    pub more: bool,
    /// The watermark changed in a way a restart must not lose although nothing may be
    /// announced (a full listing ran, the server's order or the scope changed): store it
    /// even after an idle poll. At most once per `full_relist_every` in ordered mode.
    pub store_idle: bool,
    /// The server's listing order was found broken (Some) or whole again (None after
    /// `unordered` was set), for the log: `(previous, key)`.
    pub order: OrderNote,
    /// Objects announced whose `LastModified` is past the server's clock, for the log:
    /// `(key, LastModified ms)`.
    pub future: Vec<(String, i64)>,
}

/// What a scan saw of the server's listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderNote {
    /// Nothing new.
    Same,
    /// Keys came out of byte order (the first pair seen).
    Broken {
        /// The key listed first.
        previous: String,
        /// The key listed after it.
        key: String,
    },
    /// A whole listing came back in byte order after the server had been out of order.
    Restored,
}

/// One poll's pass over a listing.
#[derive(Debug)]
pub struct Scan<'a> {
    rules: &'a Rules,
    mark: Mark,
    /// The watcher's first poll (no watermark yet).
    first: bool,
    /// Wall clock at the start of the poll.
    now_ms: i64,
    limit: usize,
    /// Oldest time looked at in the window (None on a watcher's first poll: everything).
    horizon: Option<i64>,
    /// This poll lists the whole prefix from its start.
    full: bool,
    /// The listing is trusted to come in byte order (the server was never seen
    /// otherwise): deletes are merged, and ordered mode may stop early.
    trust_order: bool,
    /// Ordered mode's cursor is in use (not while re-judging after a scope change).
    cursor: bool,
    /// The scope changed in ordered mode: every key is judged by the window this poll,
    /// then the cursor moves to the greatest key of the new scope.
    rejudge: bool,
    /// Look for remembered keys that are no longer listed.
    detect_deletes: bool,
    /// Candidates judged by time and the window.
    window: Smallest<Candidate>,
    /// Ordered mode: keys past the cursor, the smallest keys first.
    past: Smallest<ByKey>,
    /// Ordered mode: the listing was stopped with keys past the cursor left unlisted.
    stopped: bool,
    /// The last key listed: the order check and the delete merge.
    last_key: Option<String>,
    /// The greatest key listed.
    max_key: Option<String>,
    /// The first pair of keys seen out of byte order.
    disorder: Option<(String, String)>,
    /// Remembered keys that were listed (deletes of an untrusted listing).
    listed: HashSet<String>,
    /// The scope change this poll applies, for the log.
    scope_change: Option<ScopeChange>,
    /// The parts of the watermark an idle poll must still store when they change.
    before: (Option<i64>, Option<Scope>, bool),
}

impl<'a> Scan<'a> {
    /// Starts a poll from `mark` (None on the watcher's first poll) at wall-clock `now_ms`.
    pub fn new(rules: &'a Rules, mark: Option<Mark>, limit: usize, now_ms: i64) -> Self {
        let first = mark.is_none();
        Scan::build(rules, mark.unwrap_or_default(), first, limit, now_ms)
    }

    fn build(rules: &'a Rules, mut mark: Mark, first: bool, limit: usize, now_ms: i64) -> Self {
        let before = (mark.full_at_ms, mark.scope.clone(), mark.unordered);
        let scope = rules.scope();
        let mut scope_change = None;
        let mut rejudge = false;
        if !first && mark.scope.as_ref() != Some(&scope) {
            let count = mark.seen.len();
            if mark.scope.as_ref().is_some_and(|old| old.bucket != scope.bucket) {
                mark.seen.clear();
            } else {
                mark.seen.retain(|key, _| rules.in_scope(key));
            }
            if let Some(from) = mark.scope.clone() {
                // A watermark from a hand or an older release has no scope: it is
                // adopted with its cursor. A real change re-judges the cursor.
                rejudge = rules.ordered;
                scope_change = Some(ScopeChange { from, forgotten: count - mark.seen.len() });
            }
        }
        let horizon = (!first).then(|| window::horizon(mark.high_ms, mark.floor_ms, rules.lookback_ms));
        let trust_order = !mark.unordered;
        let cursor = rules.ordered && !rejudge;
        let full = !cursor
            || !trust_order
            || mark.after.is_none()
            || mark.full_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= rules.full_relist_every_ms);
        let limit = limit.max(1);
        Scan {
            rules,
            first,
            now_ms,
            limit,
            horizon,
            full,
            trust_order,
            cursor,
            rejudge,
            detect_deletes: full && rules.events.contains(&Change::Deleted),
            window: Smallest::new(limit),
            past: Smallest::new(limit),
            stopped: false,
            last_key: None,
            max_key: None,
            disorder: None,
            listed: HashSet::new(),
            scope_change,
            before,
            mark,
        }
    }

    /// The same poll started again after [`Flow::Restart`], with the server known to
    /// list out of byte order. (Offering objects never changes the watermark, so the
    /// scan still holds the one it started from.)
    pub fn restart(self) -> Self {
        let mut mark = self.mark;
        mark.unordered = true;
        let mut scan = Scan::build(self.rules, mark, self.first, self.limit, self.now_ms);
        scan.before = self.before;
        scan.scope_change = self.scope_change;
        scan.disorder = self.disorder;
        scan
    }

    /// Where the listing starts: after this key (ordered mode between full listings), or
    /// at the start of the prefix.
    pub fn start_after(&self) -> Option<&str> {
        if self.full { None } else { self.mark.after.as_deref() }
    }

    /// True when this poll lists the whole prefix.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The scope change this poll applies, if any.
    pub fn scope_change(&self) -> Option<&ScopeChange> {
        self.scope_change.as_ref()
    }

    /// True when `key` is past the ordered cursor (taken whatever its time).
    fn past_cursor(&self, key: &str) -> bool {
        self.cursor && self.mark.after.as_deref().is_none_or(|after| key > after)
    }

    /// Takes the next object of the listing.
    pub fn offer(&mut self, object: Listed) -> Flow {
        let previous = self.last_key.as_deref().or(self.start_after());
        if let Some(previous) = previous
            && object.key.as_str() <= previous
        {
            let pair = (previous.to_string(), object.key.clone());
            // Only a scan that merges deletes or moves the cursor by listing order
            // depends on it; any other one goes on and only remembers what it saw.
            if self.trust_order && (self.detect_deletes || self.cursor) {
                self.disorder = Some(pair.clone());
                return Flow::Restart { previous: pair.0, key: pair.1 };
            }
            self.disorder.get_or_insert(pair);
        }
        if self.detect_deletes {
            if self.trust_order {
                self.gone_before(Some(&object.key));
            } else if self.mark.seen.contains_key(&object.key) {
                self.listed.insert(object.key.clone());
            }
        }
        if self.max_key.as_ref().is_none_or(|max| object.key > *max) {
            self.max_key = Some(object.key.clone());
        }
        self.last_key = Some(object.key.clone());
        if !self.wanted(&object) {
            return Flow::Continue;
        }
        let past_cursor = self.past_cursor(&object.key);
        if !past_cursor && self.horizon.is_some_and(|h| object.last_modified_ms < h) {
            return Flow::Continue;
        }
        let change = match self.mark.seen.get(&object.key) {
            // The same entry as announced: a repeat. A new `LastModified` with the same
            // ETag is a new write of the same content, as S3's own notifications count it.
            Some((time, etag, _)) if *etag == object.etag && *time == object.last_modified_ms => {
                return Flow::Continue;
            }
            Some(_) => Change::Updated,
            None => Change::Created,
        };
        if !self.rules.events.contains(&change) {
            return Flow::Continue;
        }
        let candidate = Candidate {
            time_ms: object.last_modified_ms,
            key: object.key,
            etag: object.etag,
            size: object.size,
            storage_class: object.storage_class,
            change,
        };
        if !past_cursor {
            self.window.push(candidate);
            return Flow::Continue;
        }
        if !self.trust_order {
            // Keys past the cursor may come in any order: keep the smallest ones.
            self.past.push(ByKey(candidate));
            return Flow::Continue;
        }
        // Keys past the cursor come after every key at or below it, so the window's
        // candidates are final here and the room left is known.
        let room = self.limit.saturating_sub(self.window.len());
        if self.window.overflowed() || self.past.len() >= room {
            self.stopped = true;
            return Flow::Stop;
        }
        self.past.push(ByKey(candidate));
        if self.past.len() >= room {
            self.stopped = true;
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Filters that do not depend on the watermark.
    fn wanted(&self, object: &Listed) -> bool {
        if !self.rules.include_folder_markers && object.size == 0 && object.key.ends_with('/') {
            return false;
        }
        if object.size < self.rules.min_size {
            return false;
        }
        self.rules.in_scope(&object.key)
    }

    /// Remembered keys after the last listed key and before `upto` (None: to the end)
    /// were not listed: they are gone.
    fn gone_before(&mut self, upto: Option<&str>) {
        let lower = match &self.last_key {
            Some(last) => Bound::Excluded(last.as_str()),
            None => Bound::Unbounded,
        };
        let upper = upto.map_or(Bound::Unbounded, Bound::Excluded);
        for (key, seen) in self.mark.seen.range::<str, _>((lower, upper)) {
            self.window.push(gone(key, seen));
        }
    }

    /// Ends the poll. `complete` says the listing reached its end (it was not stopped);
    /// `now_ms` is the wall clock, `clock_ms` the server's (its `Date` header, or the
    /// wall clock when it sent none).
    pub fn finish(mut self, complete: bool, now_ms: i64, clock_ms: i64) -> Outcome {
        if self.detect_deletes && complete {
            if self.trust_order {
                self.gone_before(None);
            } else {
                for (key, seen) in &self.mark.seen {
                    if !self.listed.contains(key) {
                        self.window.push(gone(key, seen));
                    }
                }
            }
        }
        let window_overflow = self.window.overflowed();
        let mut items = self.window.into_sorted_vec();
        let room = self.limit.saturating_sub(items.len());
        let past_overflow = self.past.overflowed();
        let mut past: Vec<Candidate> = self.past.into_sorted_vec().into_iter().map(|c| c.0).collect();
        let past_more = past_overflow || past.len() > room;
        past.truncate(room);
        // The watermark follows `LastModified` up to the server's present, never past it:
        // one object stamped in the future must not put the present outside the window.
        // (Never more than half the window, so that a short `lookback` keeps the
        // present inside it.)
        let cap = clock_ms.saturating_add(FUTURE_TOLERANCE_MS.min(self.rules.lookback_ms / 2));
        let mut future = Vec::new();
        let mut next = self.mark;
        for c in items.iter().chain(&past) {
            if c.change == Change::Deleted {
                next.seen.remove(&c.key);
                continue;
            }
            if c.time_ms > cap {
                future.push((c.key.clone(), c.time_ms));
            }
            next.high_ms = next.high_ms.max(c.time_ms.min(cap));
            next.seen.insert(c.key.clone(), (c.time_ms, c.etag.clone(), c.size));
        }
        if let Some(last) = past.last() {
            next.after = Some(last.key.clone());
        }
        // A listing that reached its end judged every key past the cursor: each was
        // taken above or refused for good (filters, an unwanted change), so the cursor
        // may pass them all and the next poll need not list them again.
        if self.cursor
            && complete
            && !self.stopped
            && !past_more
            && let Some(max) = self.max_key.take()
            && next.after.as_ref().is_none_or(|after| max > *after)
        {
            next.after = Some(max);
        }
        let scope_settled = !self.rejudge || (complete && !window_overflow);
        if self.rejudge && scope_settled {
            // Every key of the new scope was judged by the window: the cursor goes to the
            // greatest of them, and polls list after it again.
            next.after = self.max_key.take();
        }
        if scope_settled {
            next.scope = Some(self.rules.scope());
        }
        if self.rules.ordered && self.full && self.trust_order && !window_overflow && scope_settled {
            // Every key up to the cursor was judged: the next full listing is due a
            // whole period from now. (A server out of order gets a full listing every
            // poll, which needs no schedule and no write.)
            next.full_at_ms = Some(now_ms);
        }
        let order = match self.disorder {
            Some((previous, key)) => {
                next.unordered = true;
                if self.before.2 { OrderNote::Same } else { OrderNote::Broken { previous, key } }
            }
            None if next.unordered && !self.trust_order && self.full && complete => {
                next.unordered = false;
                OrderNote::Restored
            }
            None => OrderNote::Same,
        };
        let keep_outside = self.rules.events.contains(&Change::Deleted);
        let high = next.high_ms;
        window::prune(
            &mut next.seen,
            |(time, _, _)| *time,
            high,
            &mut next.floor_ms,
            self.rules.lookback_ms,
            self.rules.max_remembered,
            keep_outside,
        );
        // When the last full listing ran matters only once there is a cursor to list
        // after (before that, every poll lists from the start): with one, it changes
        // only on schedule, so an idle watcher stores it at most once per period.
        let full_at_moved = next.full_at_ms != self.before.0 && next.after.is_some();
        let store_idle =
            !self.first && (full_at_moved || next.scope != self.before.1 || next.unordered != self.before.2);
        items.append(&mut past);
        Outcome { items, next, more: window_overflow || self.stopped || past_more, store_idle, order, future }
    }
}

/// The delete candidate of a remembered key.
fn gone(key: &str, (time_ms, etag, size): &Seen) -> Candidate {
    Candidate {
        time_ms: *time_ms,
        key: key.to_string(),
        etag: etag.clone(),
        size: *size,
        storage_class: None,
        change: Change::Deleted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ordered: bool, events: &[Change]) -> Rules {
        Rules {
            bucket: "b".into(),
            prefix: "in/".into(),
            glob: None,
            min_size: 0,
            include_folder_markers: false,
            events: events.to_vec(),
            ordered,
            lookback_ms: 3_600_000,
            full_relist_every_ms: 60_000,
            max_remembered: 10_000,
        }
    }

    fn obj(key: &str, time: i64, etag: &str) -> Listed {
        Listed { key: key.into(), last_modified_ms: time, etag: etag.into(), size: 1, storage_class: None }
    }

    /// Offers one listing (as the server gives it: from the start, or after the scan's
    /// `StartAfter` in byte order or not), restarting as the source does.
    fn one_poll(rules: &Rules, listing: &[Listed], mark: Option<Mark>, limit: usize, now: i64) -> Outcome {
        let mut scan = Scan::new(rules, mark, limit, now);
        'listing: loop {
            let start = scan.start_after().map(str::to_string);
            for o in listing.iter().filter(|o| start.as_ref().is_none_or(|s| o.key > *s)) {
                match scan.offer(o.clone()) {
                    Flow::Continue => {}
                    Flow::Stop => return scan.finish(false, now, now),
                    Flow::Restart { .. } => {
                        scan = scan.restart();
                        continue 'listing;
                    }
                }
            }
            return scan.finish(true, now, now);
        }
    }

    /// Runs polls over a fixed listing until nothing is left, as the loop would.
    fn drain(
        rules: &Rules,
        listing: &[Listed],
        mark: Option<Mark>,
        limit: usize,
        now: i64,
    ) -> (Vec<(Change, String)>, Mark) {
        let mut mark = mark;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let outcome = one_poll(rules, listing, mark.clone(), limit, now);
            let done = outcome.items.is_empty();
            out.extend(outcome.items.into_iter().map(|c| (c.change, c.key)));
            mark = Some(outcome.next);
            if done {
                break;
            }
        }
        (out, mark.unwrap_or_default())
    }

    fn keys(items: &[(Change, String)]) -> Vec<&str> {
        items.iter().map(|(_, k)| k.as_str()).collect()
    }

    #[test]
    fn ties_across_batches_are_announced_once() {
        for ordered in [false, true] {
            let r = rules(ordered, &[Change::Created]);
            let listing: Vec<Listed> = (0..25).map(|i| obj(&format!("in/{i:02}"), 1000, "e")).collect();
            let (items, mark) = drain(&r, &listing, None, 7, 0);
            let mut got = keys(&items);
            got.sort();
            let expected: Vec<String> = (0..25).map(|i| format!("in/{i:02}")).collect();
            assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>(), "ordered: {ordered}");
            assert_eq!(drain(&r, &listing, Some(mark), 7, 0).0, vec![]);
        }
    }

    #[test]
    fn a_late_object_inside_the_window_is_announced_once() {
        let r = rules(false, &[Change::Created]);
        let mut listing = vec![obj("in/a", 10_000_000, "1"), obj("in/c", 10_000_000, "1")];
        let (_, mark) = drain(&r, &listing, None, 100, 10_000_000);
        listing.insert(1, obj("in/b-late", 10_000_000 - 600_000, "1"));
        listing.push(obj("in/z-too-late", 10_000_000 - 7_200_000, "1"));
        let (items, mark) = drain(&r, &listing, Some(mark), 100, 10_000_000);
        assert_eq!(keys(&items), vec!["in/b-late"]);
        assert_eq!(drain(&r, &listing, Some(mark), 100, 10_000_000).0, vec![]);
    }

    #[test]
    fn overwrites_and_deletes() {
        let r = rules(false, &[Change::Created, Change::Updated, Change::Deleted]);
        let listing = vec![obj("in/a", 1000, "1"), obj("in/b", 1000, "1"), obj("in/c", 1000, "1")];
        let (_, mark) = drain(&r, &listing, None, 100, 0);
        let listing = vec![obj("in/a", 1000, "1"), obj("in/c", 2000, "2")];
        let (items, mark) = drain(&r, &listing, Some(mark), 100, 0);
        assert_eq!(items, vec![(Change::Deleted, "in/b".into()), (Change::Updated, "in/c".into())]);
        assert!(drain(&r, &listing, Some(mark.clone()), 100, 0).0.is_empty());
        // The same content written again is a new write: S3 announces every PUT.
        let listing = vec![obj("in/a", 3000, "1"), obj("in/c", 2000, "2")];
        let (items, mark) = drain(&r, &listing, Some(mark), 100, 0);
        assert_eq!(items, vec![(Change::Updated, "in/a".into())]);
        // Everything gone: deletes to the end of the remembered set.
        let (items, _) = drain(&r, &[], Some(mark), 100, 0);
        assert_eq!(keys(&items), vec!["in/c", "in/a"]);
    }

    #[test]
    fn updates_are_ignored_unless_asked_for() {
        let r = rules(false, &[Change::Created]);
        let (_, mark) = drain(&r, &[obj("in/a", 1000, "1")], None, 100, 0);
        assert!(drain(&r, &[obj("in/a", 2000, "2")], Some(mark), 100, 0).0.is_empty());
    }

    #[test]
    fn filters() {
        let mut r = rules(false, &[Change::Created]);
        r.glob = Some(Glob::new("**/*.csv").unwrap());
        r.min_size = 1;
        let mut marker = obj("in/dir/", 1, "m");
        marker.size = 0;
        let listing =
            vec![marker, obj("in/b.txt", 1, "1"), obj("in/c.csv", 1, "1"), obj("in/x/a.csv", 1, "1")];
        assert_eq!(keys(&drain(&r, &listing, None, 100, 0).0), vec!["in/c.csv", "in/x/a.csv"]);
    }

    #[test]
    fn ordered_mode_lists_after_the_cursor_and_relists_on_schedule() {
        let r = rules(true, &[Change::Created]);
        let listing = vec![obj("in/2024-01-01", 5000, "1"), obj("in/2024-01-02", 5000, "1")];
        let (items, mark) = drain(&r, &listing, None, 100, 0);
        assert_eq!(items.len(), 2);
        assert_eq!(mark.after.as_deref(), Some("in/2024-01-02"));
        let scan = Scan::new(&r, Some(mark.clone()), 100, 1000);
        assert_eq!(scan.start_after(), Some("in/2024-01-02"));
        // A key below the cursor, arriving late: missed between full listings…
        let mut late = listing.clone();
        late.insert(1, obj("in/2024-01-01b", 4000, "1"));
        late.push(obj("in/2024-01-03", 1, "1"));
        let (items, mark) = drain(&r, &late, Some(mark), 100, 1000);
        assert_eq!(keys(&items), vec!["in/2024-01-03"], "past the cursor, whatever its time");
        // …and caught by the next one.
        let scan = Scan::new(&r, Some(mark.clone()), 100, 61_000);
        assert!(scan.is_full());
        let (items, mark) = drain(&r, &late, Some(mark), 100, 61_000);
        assert_eq!(keys(&items), vec!["in/2024-01-01b"]);
        assert!(drain(&r, &late, Some(mark), 100, 200_000).0.is_empty());
    }

    #[test]
    fn ordered_mode_stops_listing_at_the_limit() {
        let r = rules(true, &[Change::Created]);
        let listing: Vec<Listed> = (0..10).map(|i| obj(&format!("in/{i}"), i, "1")).collect();
        let mut scan = Scan::new(&r, None, 3, 0);
        let mut offered = 0;
        for o in &listing {
            offered += 1;
            if scan.offer(o.clone()) == Flow::Stop {
                break;
            }
        }
        assert_eq!(offered, 3);
        let outcome = scan.finish(false, 0, 0);
        assert!(outcome.more);
        assert_eq!(outcome.next.after.as_deref(), Some("in/2"));
    }

    #[test]
    fn ordered_cursor_passes_keys_the_filters_refuse() {
        let mut r = rules(true, &[Change::Created]);
        r.glob = Some(Glob::new("*.csv").unwrap());
        let listing = vec![obj("in/1.csv", 1, "1"), obj("in/2.tmp", 1, "1"), obj("in/3.tmp", 1, "1")];
        let (items, mark) = drain(&r, &listing, None, 100, 0);
        assert_eq!(keys(&items), vec!["in/1.csv"]);
        assert_eq!(mark.after.as_deref(), Some("in/3.tmp"), "an idle poll lists nothing it judged before");
    }

    /// SeaweedFS's directory-walk order: `a/b` before `a.m`, although `.` < `/`.
    fn walk_order() -> Vec<Listed> {
        vec![obj("in/d/part-0", 1000, "1"), obj("in/d.manifest", 1000, "1"), obj("in/e", 1000, "1")]
    }

    #[test]
    fn an_unordered_listing_restarts_and_deletes_are_judged_against_the_whole_listing() {
        let r = rules(false, &[Change::Created, Change::Deleted]);
        let (items, mark) = drain(&r, &walk_order(), None, 100, 0);
        assert_eq!(keys(&items), vec!["in/d.manifest", "in/d/part-0", "in/e"]);
        assert!(mark.unordered, "remembered, so the next poll does not list twice");
        assert!(drain(&r, &walk_order(), Some(mark.clone()), 100, 0).0.is_empty(), "no false deletes");
        let mut scan = Scan::new(&r, Some(mark.clone()), 100, 0);
        for o in walk_order() {
            assert_eq!(scan.offer(o), Flow::Continue, "an untrusted scan never restarts");
        }
        let mut listing = walk_order();
        listing.remove(2);
        let (items, mark) = drain(&r, &listing, Some(mark), 100, 0);
        assert_eq!(items, vec![(Change::Deleted, "in/e".into())]);
        assert!(mark.unordered);
        // A whole listing in byte order trusts the server again.
        let outcome =
            one_poll(&r, &[obj("in/d/part-0", 1000, "1"), obj("in/e", 1000, "1")], Some(mark), 100, 0);
        assert_eq!(outcome.order, OrderNote::Restored);
        assert!(!outcome.next.unordered && outcome.store_idle);
    }

    #[test]
    fn ordered_mode_on_an_unordered_server_lists_in_full_and_keeps_key_order() {
        let r = rules(true, &[Change::Created]);
        let (items, mark) = drain(&r, &walk_order(), None, 2, 0);
        assert_eq!(keys(&items), vec!["in/d.manifest", "in/d/part-0", "in/e"], "smallest keys first");
        assert!(mark.unordered);
        assert_eq!(mark.after.as_deref(), Some("in/e"));
        let scan = Scan::new(&r, Some(mark.clone()), 100, 1);
        assert!(scan.is_full() && scan.start_after().is_none());
        let mut listing = walk_order();
        listing.insert(0, obj("in/c/late", 10, "1"));
        listing.push(obj("in/f", 10, "1"));
        let outcome = one_poll(&r, &listing, Some(mark), 100, 1);
        let got: Vec<&str> = outcome.items.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(got, vec!["in/c/late", "in/f"], "below the cursor by the window, past it by key");
        assert!(!outcome.store_idle || outcome.items.is_empty());
        assert_eq!(outcome.next.full_at_ms, None, "no schedule to store on such a server");
    }

    #[test]
    fn an_object_from_the_future_is_announced_once_and_hides_nothing() {
        let day = 86_400_000;
        let now = 100 * day;
        for ordered in [false, true] {
            let mut r = rules(ordered, &[Change::Created]);
            r.lookback_ms = 3_600_000;
            let (items, mark) = drain(&r, &[obj("in/m-future", now + 2 * day, "1")], None, 100, now);
            assert_eq!(keys(&items), vec!["in/m-future"]);
            assert_eq!(mark.high_ms, now + FUTURE_TOLERANCE_MS, "never past the server's clock");
            // Objects of the present, below the ordered cursor too, are still inside the window.
            let listing = vec![
                obj("in/a-present", now - 60_000, "1"),
                obj("in/m-future", now + 2 * day, "1"),
                obj("in/z-present", now + 1000, "1"),
            ];
            let later = now + 120_000;
            let (items, mark) = drain(&r, &listing, Some(mark), 100, later);
            let mut got = keys(&items);
            got.sort();
            assert_eq!(got, vec!["in/a-present", "in/z-present"], "ordered: {ordered}");
            assert!(drain(&r, &listing, Some(mark), 100, later).0.is_empty());
        }
    }

    #[test]
    fn a_changed_scope_forgets_what_is_outside_it_silently() {
        let r = rules(false, &[Change::Created, Change::Deleted]);
        let listing = vec![obj("in/a/1", 1000, "1"), obj("in/b/1", 1000, "1")];
        let (_, mark) = drain(&r, &listing, None, 100, 1000);
        assert_eq!(mark.scope, Some(r.scope()));
        let mut narrow = r.clone();
        narrow.prefix = "in/a/".into();
        let scan = Scan::new(&narrow, Some(mark.clone()), 100, 1000);
        assert_eq!(scan.scope_change().map(|c| c.forgotten), Some(1));
        let outcome = one_poll(&narrow, &listing[..1], Some(mark), 100, 1000);
        assert!(outcome.items.is_empty(), "no delete for a key outside the prefix: {:?}", outcome.items);
        assert!(outcome.store_idle);
        let mark = outcome.next;
        assert_eq!(mark.seen.keys().collect::<Vec<_>>(), ["in/a/1"]);
        // Widened back: what comes into scope is judged by the window, with a new id
        // (it was forgotten), and the key that never left keeps its place.
        let (items, _) = drain(&r, &listing, Some(mark.clone()), 100, 1000);
        assert_eq!(items, vec![(Change::Created, "in/b/1".into())]);
        let mut far = mark;
        far.high_ms = 10 * 3_600_000;
        assert!(drain(&r, &listing, Some(far), 100, 1000).0.is_empty(), "outside the window: not announced");
    }

    #[test]
    fn ordered_mode_rejudges_its_cursor_after_a_scope_change() {
        let r = rules(true, &[Change::Created]);
        let listing = [obj("in/a/1", 1000, "1"), obj("in/a/2", 1000, "1"), obj("in/b/1", 1000, "1")];
        let (_, mark) = drain(&r, &listing[2..], None, 100, 1000);
        assert_eq!(mark.after.as_deref(), Some("in/b/1"));
        let mut other = r.clone();
        other.prefix = "in/a/".into();
        // The old cursor lies past every key of the new prefix: judged by the window
        // instead, then the cursor moves into the new prefix.
        let mut recent = mark.clone();
        recent.high_ms = 1000;
        let (items, mark) = drain(&other, &listing[..2], Some(recent), 100, 1000);
        assert_eq!(keys(&items), vec!["in/a/1", "in/a/2"]);
        assert_eq!(mark.after.as_deref(), Some("in/a/2"));
        assert_eq!(mark.scope, Some(other.scope()));
        let scan = Scan::new(&other, Some(mark), 100, 2000);
        assert_eq!(scan.start_after(), Some("in/a/2"));
    }

    #[test]
    fn idle_polls_store_the_last_full_listing_once_per_period() {
        let r = rules(true, &[Change::Created]);
        // An empty prefix: every poll lists from the start, and nothing needs storing.
        let outcome = one_poll(&r, &[], None, 10, 0);
        let outcome = one_poll(&r, &[], Some(outcome.next), 10, 1000);
        assert!(!outcome.store_idle, "nothing to list after yet");
        let listing = [obj("in/a", 1, "1")];
        let (_, mark) = drain(&r, &listing, Some(outcome.next), 10, 2000);
        let between = one_poll(&r, &listing, Some(mark.clone()), 10, 30_000);
        assert!(!between.store_idle && between.next.full_at_ms == mark.full_at_ms);
        let due = one_poll(&r, &listing, Some(mark), 10, 70_000);
        assert!(due.store_idle && due.items.is_empty());
        assert_eq!(due.next.full_at_ms, Some(70_000));
        assert!(!one_poll(&r, &listing, Some(due.next), 10, 80_000).store_idle);
    }

    #[test]
    fn a_hand_written_watermark_is_adopted() {
        let r = rules(true, &[Change::Created]);
        let mark = Mark { high_ms: 10_000_000, after: Some("in/b".into()), ..Mark::default() };
        let scan = Scan::new(&r, Some(mark.clone()), 100, 0);
        assert!(scan.scope_change().is_none());
        let outcome = one_poll(&r, &[obj("in/a", 1, "1"), obj("in/c", 1, "1")], Some(mark), 100, 0);
        assert_eq!(outcome.items.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["in/c"]);
        assert_eq!(outcome.next.scope, Some(r.scope()));
    }

    #[test]
    fn keys_compare_in_utf8_byte_order() {
        // S3 lists in UTF-8 byte order; so do Rust strings and the remembered set.
        let mut keys = vec!["in/é", "in/z", "in/a b", "in/a+b", "in/a%20b", "in/\u{1F600}", "in/Z"];
        keys.sort();
        assert_eq!(keys, vec!["in/Z", "in/a b", "in/a%20b", "in/a+b", "in/z", "in/é", "in/\u{1F600}"]);
    }
}
