//! What the `s3` source announces, apart from the network: a [`Scan`] is offered the
//! objects of a listing one by one, in the order S3 lists them, and keeps only what one
//! poll may announce (at most `limit` candidates), so memory never grows with the
//! prefix.
//!
//! The watermark ([`Mark`]) is the newest `LastModified` announced, the keys announced
//! within the look-back window before it (with their ETags), a floor when the cap on
//! remembered keys bit, and in ordered mode the greatest key announced and when the
//! last full listing finished.
//!
//! - `key_order: any`: every poll lists the whole prefix. An object is a candidate when
//!   its `LastModified` is inside the window and its key (with that ETag) was not
//!   announced; the oldest `limit` candidates are announced. Ties and late objects
//!   inside the window are announced exactly once.
//! - `key_order: lexicographic`: a poll lists only the keys after the greatest key
//!   announced (`StartAfter`), and takes them in key order whatever their time. On a
//!   schedule (`full_relist_every`) a poll lists from the start instead, and keys at or
//!   below that cursor are judged as in `any` mode: what arrived out of order inside the
//!   window is caught there.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::super::window::{self, Smallest};
use crate::event::Change;
use crate::value::Glob;

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

/// The stored watermark of an `s3` watcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// Newest `LastModified` announced, milliseconds since the epoch.
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
    /// (milliseconds since the epoch, wall clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at_ms: Option<i64>,
}

/// The settings a scan follows, taken from the source's config.
#[derive(Debug, Clone)]
pub struct Rules {
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

/// Whether the listing should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Offer the next object.
    Continue,
    /// Enough for this poll: stop listing.
    Stop,
}

/// A listing that came back in an order the scan cannot trust.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server listed key {key:?} after {previous:?}, not in UTF-8 byte order; deletes cannot be detected on it"
)]
pub struct OutOfOrder {
    /// The key listed first.
    pub previous: String,
    /// The key listed after it.
    pub key: String,
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
}

/// One poll's pass over a listing.
#[derive(Debug)]
pub struct Scan<'a> {
    rules: &'a Rules,
    mark: Mark,
    /// Oldest time looked at in the window (None on a watcher's first poll: everything).
    horizon: Option<i64>,
    /// This poll lists the whole prefix from its start.
    full: bool,
    /// Look for remembered keys that are no longer listed.
    detect_deletes: bool,
    limit: usize,
    /// Candidates judged by time and the window.
    window: Smallest<Candidate>,
    /// Ordered mode: keys past the cursor, in key order.
    ordered: Vec<Candidate>,
    /// Ordered mode: the listing was stopped with keys past the cursor left unlisted.
    stopped: bool,
    /// The last key listed, for delete detection and the order check.
    last_key: Option<String>,
}

impl<'a> Scan<'a> {
    /// Starts a poll from `mark` (None on the watcher's first poll) at wall-clock `now_ms`.
    pub fn new(rules: &'a Rules, mark: Option<Mark>, limit: usize, now_ms: i64) -> Self {
        let first = mark.is_none();
        let mark = mark.unwrap_or_default();
        let horizon = (!first).then(|| window::horizon(mark.high_ms, mark.floor_ms, rules.lookback_ms));
        let full = !rules.ordered
            || mark.after.is_none()
            || mark.full_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= rules.full_relist_every_ms);
        let limit = limit.max(1);
        Scan {
            rules,
            horizon,
            full,
            detect_deletes: full && rules.events.contains(&Change::Deleted),
            limit,
            window: Smallest::new(limit),
            ordered: Vec::new(),
            stopped: false,
            last_key: None,
            mark,
        }
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

    /// Takes the next object of the listing.
    pub fn offer(&mut self, object: Listed) -> Result<Flow, OutOfOrder> {
        if self.detect_deletes {
            if let Some(previous) = &self.last_key
                && object.key.as_str() <= previous.as_str()
            {
                return Err(OutOfOrder { previous: previous.clone(), key: object.key });
            }
            self.gone_before(Some(&object.key));
        }
        self.last_key = Some(object.key.clone());
        if !self.wanted(&object) {
            return Ok(Flow::Continue);
        }
        let past_cursor =
            self.rules.ordered && self.mark.after.as_ref().is_none_or(|after| object.key > *after);
        if !past_cursor && self.horizon.is_some_and(|h| object.last_modified_ms < h) {
            return Ok(Flow::Continue);
        }
        let change = match self.mark.seen.get(&object.key) {
            Some((_, etag, _)) if *etag == object.etag => return Ok(Flow::Continue),
            Some(_) => Change::Updated,
            None => Change::Created,
        };
        if !self.rules.events.contains(&change) {
            return Ok(Flow::Continue);
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
            return Ok(Flow::Continue);
        }
        // Keys past the cursor come after every key at or below it, so the window's
        // candidates are final here and the room left is known.
        let room = self.limit.saturating_sub(self.window.len());
        if self.window.overflowed() || self.ordered.len() >= room {
            self.stopped = true;
            return Ok(Flow::Stop);
        }
        self.ordered.push(candidate);
        if self.ordered.len() >= room {
            self.stopped = true;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// Filters that do not depend on the watermark.
    fn wanted(&self, object: &Listed) -> bool {
        if !self.rules.include_folder_markers && object.size == 0 && object.key.ends_with('/') {
            return false;
        }
        if object.size < self.rules.min_size {
            return false;
        }
        let relative = object.key.strip_prefix(self.rules.prefix.as_str()).unwrap_or(&object.key);
        self.rules.glob.as_ref().is_none_or(|glob| glob.is_match(relative))
    }

    /// Remembered keys after the last listed key and before `upto` (None: to the end)
    /// were not listed: they are gone.
    fn gone_before(&mut self, upto: Option<&str>) {
        let lower = match &self.last_key {
            Some(last) => Bound::Excluded(last.as_str()),
            None => Bound::Unbounded,
        };
        let upper = upto.map_or(Bound::Unbounded, Bound::Excluded);
        for (key, (time_ms, etag, size)) in self.mark.seen.range::<str, _>((lower, upper)) {
            self.window.push(Candidate {
                time_ms: *time_ms,
                key: key.clone(),
                etag: etag.clone(),
                size: *size,
                storage_class: None,
                change: Change::Deleted,
            });
        }
    }

    /// Ends the poll. `complete` says the listing reached its end (it was not stopped).
    pub fn finish(mut self, complete: bool, now_ms: i64) -> Outcome {
        if self.detect_deletes && complete {
            self.gone_before(None);
        }
        let window_overflow = self.window.overflowed();
        let mut items = self.window.into_sorted_vec();
        let room = self.limit.saturating_sub(items.len());
        let ordered_more = self.ordered.len() > room;
        self.ordered.truncate(room);
        let mut next = self.mark;
        for c in &items {
            if c.change == Change::Deleted {
                next.seen.remove(&c.key);
            } else {
                next.high_ms = next.high_ms.max(c.time_ms);
                next.seen.insert(c.key.clone(), (c.time_ms, c.etag.clone(), c.size));
            }
        }
        for c in &self.ordered {
            next.high_ms = next.high_ms.max(c.time_ms);
            next.seen.insert(c.key.clone(), (c.time_ms, c.etag.clone(), c.size));
            next.after = Some(c.key.clone());
        }
        // A listing that reached its end judged every key past the cursor: each was
        // taken above or refused for good (filters, an unwanted change), so the cursor
        // may pass them all and the next poll need not list them again.
        if self.rules.ordered
            && complete
            && !self.stopped
            && let Some(last) = self.last_key.take()
            && next.after.as_ref().is_none_or(|after| last > *after)
        {
            next.after = Some(last);
        }
        if self.rules.ordered && self.full && !window_overflow {
            // Every key up to the cursor was judged: the next full listing is due a
            // whole period from now.
            next.full_at_ms = Some(now_ms);
        }
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
        items.append(&mut self.ordered);
        Outcome { items, next, more: window_overflow || self.stopped || ordered_more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ordered: bool, events: &[Change]) -> Rules {
        Rules {
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
            let mut scan = Scan::new(rules, mark.clone(), limit, now);
            let start = scan.start_after().map(str::to_string);
            let mut complete = true;
            for o in listing.iter().filter(|o| start.as_ref().is_none_or(|s| o.key > *s)) {
                if scan.offer(o.clone()).unwrap() == Flow::Stop {
                    complete = false;
                    break;
                }
            }
            let outcome = scan.finish(complete, now);
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
        let (_, mark) = drain(&r, &listing, None, 100, 0);
        listing.insert(1, obj("in/b-late", 10_000_000 - 600_000, "1"));
        listing.push(obj("in/z-too-late", 10_000_000 - 7_200_000, "1"));
        let (items, mark) = drain(&r, &listing, Some(mark), 100, 0);
        assert_eq!(keys(&items), vec!["in/b-late"]);
        assert_eq!(drain(&r, &listing, Some(mark), 100, 0).0, vec![]);
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
        // Everything gone: deletes to the end of the remembered set.
        let (items, _) = drain(&r, &[], Some(mark), 100, 0);
        assert_eq!(keys(&items), vec!["in/a", "in/c"]);
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
            vec![marker, obj("in/x/a.csv", 1, "1"), obj("in/b.txt", 1, "1"), obj("in/c.csv", 1, "1")];
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
            if scan.offer(o.clone()).unwrap() == Flow::Stop {
                break;
            }
        }
        assert_eq!(offered, 3);
        let outcome = scan.finish(false, 0);
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

    #[test]
    fn an_unordered_listing_is_refused_when_detecting_deletes() {
        let r = rules(false, &[Change::Created, Change::Deleted]);
        let mut scan = Scan::new(&r, None, 10, 0);
        scan.offer(obj("in/b", 1, "1")).unwrap();
        let err = scan.offer(obj("in/a", 1, "1")).unwrap_err();
        assert!(err.to_string().contains("in/a"));
    }

    #[test]
    fn keys_compare_in_utf8_byte_order() {
        // S3 lists in UTF-8 byte order; so do Rust strings and the remembered set.
        let mut keys = vec!["in/é", "in/z", "in/a b", "in/a+b", "in/a%20b", "in/\u{1F600}", "in/Z"];
        keys.sort();
        assert_eq!(keys, vec!["in/Z", "in/a b", "in/a%20b", "in/a+b", "in/z", "in/é", "in/\u{1F600}"]);
    }
}
