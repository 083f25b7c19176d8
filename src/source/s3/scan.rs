//! What the `s3` source announces, apart from the network: a [`Scan`] is offered the
//! objects of a listing one by one, in the order the server lists them, keeps what the
//! poll may announce (at most `max_per_poll` candidates, so memory never grows with the
//! prefix), and [`Scan::finish`] cuts them into batches, each with the change its commit
//! makes to the state.
//!
//! The state ([`State`]) is a small head ([`Head`]: the newest `LastModified` announced,
//! a floor when the cap on remembered keys bit, the scope (bucket, prefix, glob) the
//! remembered keys belong to, whether the server was seen listing out of byte order, and
//! in ordered mode the greatest key announced and when the last full listing finished)
//! and the keys announced within the look-back window before it, one member each (key ->
//! `LastModified`, ETag, size). A scan borrows the state and never copies it: an idle poll
//! costs what it lists, not what is remembered.
//!
//! - `key_order: any`: every poll lists the whole prefix. An object is a candidate when
//!   its `LastModified` is inside the window and that key with that `LastModified` and
//!   ETag was not announced; candidates are announced oldest first. Ties and late
//!   objects inside the window are announced exactly once.
//! - `key_order: lexicographic`: a poll lists only the keys after the greatest key
//!   announced (`StartAfter`), and takes them in key order whatever their time. On a
//!   schedule (`full_relist_every`) a poll lists from the start instead, and keys at or
//!   below that cursor are judged as in `any` mode: what arrived out of order inside the
//!   window is caught there.
//!
//! One listing, many batches: the batches are planned only once the listing ended (a key
//! out of byte order found late changes what the poll may rely on), oldest first; the
//! state after batch k is valid on its own (what the later batches hold is newer, or
//! past the cursor, and is found again after a crash).
//!
//! Servers are not trusted blindly:
//! - Deletes are found by marking the remembered keys a full listing met, so they do not
//!   depend on the server's order. Ordered mode does: a scan that meets a key out of
//!   byte order while it relies on the cursor asks for the listing to start again
//!   ([`Flow::Restart`]) and the head remembers the server as `unordered`, after which
//!   ordered mode lists in full on every poll. A whole listing in byte order trusts the
//!   server again.
//! - The newest time never moves past the server's clock (plus [`FUTURE_TOLERANCE_MS`]):
//!   an object stamped in the future is announced once and does not hide the present.
//! - A changed scope forgets the remembered keys outside it, silently; in ordered mode
//!   the first poll after the change judges every key by the window and then moves the
//!   cursor to the greatest key in the new scope.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::super::window::{Smallest, Timed, Window};
use crate::event::Change;
use crate::value::Glob;

/// How far past the server's clock a `LastModified` may move the newest time (at most
/// half the look-back window): listings and clocks of a distributed server differ by a
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

/// What one remembered key holds: (`LastModified` ms, ETag, size), stored as a JSON
/// array: there may be many thousands of them.
pub type Seen = (i64, String, u64);

impl Timed for Seen {
    fn time(&self) -> i64 {
        self.0
    }
}

/// What the remembered keys belong to: a key outside it cannot be listed by this
/// watcher, so it must neither be announced as deleted nor keep its old ids.
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

/// The stored head of an `s3` watcher (its remembered keys are member rows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Newest `LastModified` announced, milliseconds since the epoch (never past the
    /// server's clock at the time).
    pub high_ms: i64,
    /// Objects modified at or before this are not looked at again (set when the
    /// remembered set overflowed, or by `start:`); None while it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_ms: Option<i64>,
    /// Releases up to 0.1 kept the remembered keys in the head; read, never written.
    #[serde(default, skip_serializing)]
    pub seen: Option<BTreeMap<String, Seen>>,
    /// Ordered mode: the greatest key announced in key order; polls list after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// When the last full listing got through every key (up to `after` in ordered
    /// mode), milliseconds since the epoch, wall clock. Stored even by a poll that found
    /// nothing, so that a `highwater once` from cron does not list in full every time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at_ms: Option<i64>,
    /// The scope the members belong to; None in a head set by hand or written by an
    /// older release (adopted as it is, keys outside the scope forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The server was seen listing keys out of UTF-8 byte order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unordered: bool,
}

/// The committed state a source holds: the head's other parts, and the window (newest
/// time, floor, remembered keys).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The head; its `high_ms`, `floor_ms` and `seen` are not used (the window holds
    /// them).
    pub head: Head,
    /// The newest time, the floor and the remembered keys.
    pub window: Window<Seen>,
    /// A head is stored (not a watcher's first poll).
    pub stored: bool,
    /// The stored head still carries the remembered keys (written by a release up to
    /// 0.1): the next batch stores every member as a row and a head without them.
    pub inline: bool,
}

impl State {
    /// The state of a stored head and its members.
    pub fn restore(head: Option<Head>, members: impl IntoIterator<Item = (String, Seen)>) -> State {
        let mut state = State::default();
        if let Some(mut head) = head {
            state.stored = true;
            state.window.high = head.high_ms;
            state.window.floor = head.floor_ms;
            if let Some(seen) = head.seen.take() {
                state.inline = true;
                for (key, seen) in seen {
                    state.window.insert(&key, seen);
                }
            }
            state.head = head;
        }
        for (key, seen) in members {
            state.window.insert(&key, seen);
        }
        state
    }

    /// Applies a committed batch's change: the head (when it changed), members removed,
    /// then members put.
    pub fn apply(
        &mut self,
        head: Option<Head>,
        remove: &[String],
        put: impl IntoIterator<Item = (String, Seen)>,
    ) {
        if head.as_ref().is_some_and(|h| h.seen.is_some()) {
            // A whole watermark of a release up to 0.1 (a batch it left pending).
            *self = State::restore(head, std::iter::empty());
            return;
        }
        for key in remove {
            self.window.remove(key);
        }
        let put = put.into_iter();
        self.window.reserve(put.size_hint().0);
        for (key, seen) in put {
            self.window.insert(&key, seen);
        }
        if let Some(head) = head {
            self.window.high = head.high_ms;
            self.window.floor = head.floor_ms;
            self.head = head;
            self.stored = true;
            self.inline = false;
        }
    }

    /// The head as stored: the window's newest time and floor with the rest.
    pub fn stored_head(&self) -> Head {
        Head { high_ms: self.window.high, floor_ms: self.window.floor, seen: None, ..self.head.clone() }
    }
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
    /// Time between full listings (ordered mode, or with notifications), milliseconds.
    pub full_relist_every_ms: i64,
    /// Cap on remembered keys.
    pub max_remembered: usize,
    /// Cap on the candidates one listing hands over (in batches).
    pub max_per_poll: usize,
    /// Notifications announce objects; listings run on the `full_relist_every` schedule
    /// in either key order, so when the last one ran is kept.
    pub notified: bool,
}

impl Rules {
    /// The scope a head of these rules belongs to.
    pub fn scope(&self) -> Scope {
        Scope {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            glob: self.glob.as_ref().map(|g| g.pattern.clone()),
        }
    }

    /// True when `key` (of this bucket) is inside the prefix and matches the glob.
    pub fn in_scope(&self, key: &str) -> bool {
        let Some(relative) = key.strip_prefix(self.prefix.as_str()) else { return false };
        self.glob.as_ref().is_none_or(|glob| glob.is_match(relative))
    }

    /// Filters that do not depend on the state: folder markers, size, scope.
    pub fn wanted(&self, object: &Listed) -> bool {
        if !self.include_folder_markers && object.size == 0 && object.key.ends_with('/') {
            return false;
        }
        if object.size < self.min_size {
            return false;
        }
        self.in_scope(&object.key)
    }

    /// Whether deletes are announced (then keys are remembered beyond the window).
    pub fn deletes(&self) -> bool {
        self.events.contains(&Change::Deleted)
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

impl Candidate {
    /// The listed (or looked-up) `object`, judged as `change`.
    pub fn listed(object: Listed, change: Change) -> Self {
        Candidate {
            time_ms: object.last_modified_ms,
            key: object.key,
            etag: object.etag,
            size: object.size,
            storage_class: object.storage_class,
            change,
        }
    }
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
    /// The scope the head belonged to.
    pub from: Scope,
    /// Remembered keys forgotten because they are outside the new scope.
    pub forgotten: usize,
}

/// One batch a poll hands over: what to announce and what its commit changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// What to announce, in delivery order (none: progress to store all the same).
    pub items: Vec<Candidate>,
    /// The head after the batch.
    pub head: Head,
    /// Members added or replaced.
    pub put: BTreeMap<String, Seen>,
    /// Members removed.
    pub remove: Vec<String>,
}

/// What a finished scan decided.
#[derive(Debug)]
pub struct Outcome {
    /// The batches, oldest first.
    pub batches: Vec<Planned>,
    /// More is waiting: poll again at once.
    pub more: bool,
    /// The server's listing order was found broken or whole again, for the log.
    pub order: OrderNote,
    /// Objects announced whose `LastModified` is past the server's clock, for the log:
    /// `(key, LastModified ms)`.
    pub future: Vec<(String, i64)>,
    /// Remembered keys the cap made the window give up, and the floor after them.
    pub capped: (usize, Option<i64>),
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
    state: &'a State,
    /// The server is taken to list out of byte order (the head says so, or this poll
    /// found it and started again).
    unordered: bool,
    /// Wall clock at the start of the poll.
    now_ms: i64,
    /// Most candidates kept.
    cap: usize,
    /// Oldest time looked at in the window (None on a watcher's first poll: everything).
    horizon: Option<i64>,
    /// This poll lists the whole prefix from its start.
    full: bool,
    /// Ordered mode's cursor is in use (not while re-judging after a scope change).
    cursor: bool,
    /// The scope changed in ordered mode: every key is judged by the window this poll,
    /// then the cursor moves to the greatest key of the new scope.
    rejudge: bool,
    /// The bucket changed: nothing remembered counts.
    forget_all: bool,
    /// Remembered keys outside the scope, removed by the first batch.
    forgotten: Vec<String>,
    /// Look for remembered keys that are no longer listed.
    detect_deletes: bool,
    /// Candidates judged by time and the window.
    window: Smallest<Candidate>,
    /// Ordered mode: keys past the cursor, the smallest keys first.
    past: Smallest<ByKey>,
    /// Ordered mode: the listing was stopped with keys past the cursor left unlisted.
    stopped: bool,
    /// The last key listed: the order check.
    last_key: Option<String>,
    /// The greatest key listed.
    max_key: Option<String>,
    /// The first pair of keys seen out of byte order.
    disorder: Option<(String, String)>,
    /// Remembered keys that a full listing met, for deletes (at most as many as are
    /// remembered).
    listed: HashSet<String>,
    /// The scope change this poll applies, for the log.
    scope_change: Option<ScopeChange>,
}

impl<'a> Scan<'a> {
    /// Starts a poll from `state` at wall-clock `now_ms`, keeping at most
    /// `rules.max_per_poll` candidates.
    pub fn new(rules: &'a Rules, state: &'a State, now_ms: i64) -> Self {
        Scan::build(rules, state, state.head.unordered, now_ms)
    }

    fn build(rules: &'a Rules, state: &'a State, unordered: bool, now_ms: i64) -> Self {
        let head = &state.head;
        let scope = rules.scope();
        let mut scope_change = None;
        let mut rejudge = false;
        let mut forget_all = false;
        let mut forgotten = Vec::new();
        if state.stored && head.scope.as_ref() != Some(&scope) {
            // Only on the polls of a changed scope: the members are walked once.
            forget_all = head.scope.as_ref().is_some_and(|old| old.bucket != scope.bucket);
            forgotten = state
                .window
                .iter()
                .filter(|(key, _)| forget_all || !rules.in_scope(key))
                .map(|(key, _)| key.to_string())
                .collect();
            if let Some(from) = head.scope.clone() {
                // A head from a hand or an older release has no scope: it is adopted
                // with its cursor. A real change re-judges the cursor.
                rejudge = rules.ordered;
                scope_change = Some(ScopeChange { from, forgotten: forgotten.len() });
            }
        }
        // An ordered head without a cursor (a start time, or one set by hand): every key
        // is judged by the window once, then the cursor goes past the greatest.
        rejudge |= rules.ordered && state.stored && head.after.is_none();
        let lookback = rules.lookback_ms;
        let horizon = state.stored.then(|| state.window.horizon(lookback));
        let cursor = rules.ordered && !rejudge;
        let full = !cursor
            || unordered
            || head.after.is_none()
            || head.full_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= rules.full_relist_every_ms);
        let cap = rules.max_per_poll.max(1);
        Scan {
            rules,
            state,
            unordered,
            now_ms,
            cap,
            horizon,
            full,
            cursor,
            rejudge,
            forget_all,
            forgotten,
            detect_deletes: full && rules.deletes(),
            window: Smallest::new(cap),
            past: Smallest::new(cap),
            stopped: false,
            last_key: None,
            max_key: None,
            disorder: None,
            listed: HashSet::new(),
            scope_change,
        }
    }

    /// The same poll started again after [`Flow::Restart`], with the server known to
    /// list out of byte order.
    pub fn restart(self) -> Self {
        let mut scan = Scan::build(self.rules, self.state, true, self.now_ms);
        scan.disorder = self.disorder;
        scan
    }

    /// Where the listing starts: after this key (ordered mode between full listings), or
    /// at the start of the prefix.
    pub fn start_after(&self) -> Option<&str> {
        if self.full { None } else { self.state.head.after.as_deref() }
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
        self.cursor && self.state.head.after.as_deref().is_none_or(|after| key > after)
    }

    /// What is remembered of `key` (a key the scope holds).
    fn remembered(&self, key: &str) -> Option<&'a Seen> {
        if self.forget_all { None } else { self.state.window.get(key) }
    }

    /// Takes the next object of the listing.
    pub fn offer(&mut self, object: Listed) -> Flow {
        let previous = self.last_key.as_deref().or(self.start_after());
        if let Some(previous) = previous
            && object.key.as_str() <= previous
        {
            let pair = (previous.to_string(), object.key.clone());
            // Only a scan that moves the cursor by listing order depends on it; any
            // other one goes on and only remembers what it saw.
            if !self.unordered && self.cursor {
                self.disorder = Some(pair.clone());
                return Flow::Restart { previous: pair.0, key: pair.1 };
            }
            self.disorder.get_or_insert(pair);
        }
        if self.max_key.as_ref().is_none_or(|max| object.key > *max) {
            hold(&mut self.max_key, &object.key);
        }
        hold(&mut self.last_key, &object.key);
        let remembered = self.remembered(&object.key);
        if self.detect_deletes && remembered.is_some() {
            // Listed, so not gone, even when the filters now refuse it.
            self.listed.insert(object.key.clone());
        }
        if !self.rules.wanted(&object) {
            return Flow::Continue;
        }
        let past_cursor = self.past_cursor(&object.key);
        if !past_cursor && self.horizon.is_some_and(|h| object.last_modified_ms < h) {
            return Flow::Continue;
        }
        let change = match remembered {
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
        let candidate = Candidate::listed(object, change);
        if !past_cursor {
            self.window.push(candidate);
            return Flow::Continue;
        }
        if self.unordered {
            // Keys past the cursor may come in any order: keep the smallest ones.
            self.past.push(ByKey(candidate));
            return Flow::Continue;
        }
        // Keys past the cursor come after every key at or below it, so the window's
        // candidates are final here and the room left is known.
        let room = self.cap.saturating_sub(self.window.len());
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

    /// Ends the poll and plans its batches of at most `batch` items. `complete` says the
    /// listing reached its end (it was not stopped); `now_ms` is the wall clock,
    /// `clock_ms` the server's (its `Date` header, or the wall clock when it sent none).
    pub fn finish(mut self, complete: bool, batch: usize, now_ms: i64, clock_ms: i64) -> Outcome {
        let state = self.state;
        let rules = self.rules;
        if self.detect_deletes && complete && !self.forget_all {
            for (key, seen) in state.window.iter() {
                if !self.listed.contains(key) && rules.in_scope(key) {
                    self.window.push(gone(key, seen));
                }
            }
        }
        let window_overflow = self.window.overflowed();
        let mut items = self.window.into_sorted_vec();
        let room = self.cap.saturating_sub(items.len());
        let past_overflow = self.past.overflowed();
        let mut past: Vec<Candidate> = self.past.into_sorted_vec().into_iter().map(|c| c.0).collect();
        let past_more = past_overflow || past.len() > room;
        past.truncate(room);
        let from_window = items.len();
        items.append(&mut past);

        // What the last batch's head says besides time: the cursor, the scope, the
        // schedule, the server's order.
        let head = &state.head;
        let mut after_final =
            items[from_window..].last().map(|c| c.key.clone()).or_else(|| head.after.clone());
        // A listing that reached its end judged every key past the cursor: each was
        // taken or refused for good (filters, an unwanted change), so the cursor may
        // pass them all and the next poll need not list them again.
        if self.cursor
            && complete
            && !self.stopped
            && !past_more
            && let Some(max) = &self.max_key
            && after_final.as_ref().is_none_or(|after| max > after)
        {
            after_final = Some(max.clone());
        }
        let scope_settled = !self.rejudge || (complete && !window_overflow);
        if self.rejudge && scope_settled {
            // Every key of the new scope was judged by the window: the cursor goes to the
            // greatest of them, and polls list after it again.
            after_final = self.max_key.clone();
        }
        let scope_final = if scope_settled { Some(rules.scope()) } else { head.scope.clone() };
        let listed_all = self.full && complete && !window_overflow && scope_settled;
        let full_at_final = if listed_all && (rules.notified || (rules.ordered && !self.unordered)) {
            // Every key (up to the cursor) was judged: the next full listing is due a
            // whole period from now. (A server out of order gets a full listing every
            // poll in ordered mode, which needs no schedule and no write.)
            Some(now_ms)
        } else {
            head.full_at_ms
        };
        let (unordered, order) = match self.disorder {
            Some((previous, key)) => {
                (true, if head.unordered { OrderNote::Same } else { OrderNote::Broken { previous, key } })
            }
            None if head.unordered && self.unordered && self.full && complete => (false, OrderNote::Restored),
            None => (self.unordered, OrderNote::Same),
        };

        let changed_idle = |after: &Option<String>, full_at: Option<i64>, scope: &Option<Scope>| {
            // When the last full listing ran matters only once there is a cursor to
            // list after (before that, every ordered poll lists from the start) or when
            // listings run on a schedule beside notifications.
            let full_at_moved = full_at != head.full_at_ms && (after.is_some() || rules.notified);
            full_at_moved
                || *scope != head.scope
                || unordered != head.unordered
                || *after != head.after
                || !self.forgotten.is_empty()
                || state.inline
        };
        // Nothing to announce: what a restart must not lose is stored all the same (a
        // full listing's time in ordered mode or with notifications, at most once per
        // `full_relist_every`; a changed scope or server order, once).
        // Beside notifications even a first listing that found nothing stores when it ran:
        // the queue is read until the next one is due.
        let store_idle = items.is_empty()
            && (state.stored || rules.notified)
            && changed_idle(&after_final, full_at_final, &scope_final);
        let cuts = cut(rules, state, items, from_window, &self.forgotten, batch, clock_ms, store_idle);
        let n = cuts.cuts.len();
        let batches = cuts
            .cuts
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let last = i + 1 == n;
                let head = Head {
                    high_ms: c.high_ms,
                    floor_ms: c.floor_ms,
                    seen: None,
                    after: if last { after_final.clone() } else { c.after.or_else(|| head.after.clone()) },
                    full_at_ms: if last { full_at_final } else { head.full_at_ms },
                    scope: if last || !self.rejudge { scope_final.clone() } else { head.scope.clone() },
                    unordered,
                };
                Planned { items: c.items, head, put: c.put, remove: c.remove }
            })
            .collect();
        Outcome {
            batches,
            more: window_overflow || self.stopped || past_more,
            order,
            future: cuts.future,
            capped: cuts.capped,
        }
    }
}

/// One batch cut from a poll's candidates, before its head is written.
#[derive(Debug)]
pub struct Cut {
    /// What to announce.
    pub items: Vec<Candidate>,
    /// The newest time after the batch.
    pub high_ms: i64,
    /// The floor after the batch.
    pub floor_ms: Option<i64>,
    /// Members added or replaced.
    pub put: BTreeMap<String, Seen>,
    /// Members removed.
    pub remove: Vec<String>,
    /// The last key past the ordered cursor taken so far (None: none yet).
    pub after: Option<String>,
}

/// A poll's candidates cut into batches.
#[derive(Debug)]
pub struct Cuts {
    /// The batches, oldest first.
    pub cuts: Vec<Cut>,
    /// Objects whose `LastModified` is past the server's clock: `(key, ms)`.
    pub future: Vec<(String, i64)>,
    /// Remembered keys the cap made the window give up, and the floor after them.
    pub capped: (usize, Option<i64>),
}

/// Cuts `items` (delivery order; those from `from_window` on were taken past the ordered
/// cursor) into batches of `batch`, each with what its commit changes, planned on a
/// draft of `state`. `forgotten` members are removed by the first batch; with
/// `store_idle`, a poll with nothing to announce still gives one batch (its changes
/// only). `clock_ms` is the server's clock: the newest time never moves past it (plus
/// [`FUTURE_TOLERANCE_MS`], at most half the window), so one object stamped in the
/// future does not put the present outside the window.
#[allow(clippy::too_many_arguments)]
pub fn cut(
    rules: &Rules,
    state: &State,
    items: Vec<Candidate>,
    from_window: usize,
    forgotten: &[String],
    batch: usize,
    clock_ms: i64,
    store_idle: bool,
) -> Cuts {
    let limit = clock_ms.saturating_add(FUTURE_TOLERANCE_MS.min(rules.lookback_ms / 2));
    let keep_outside = rules.deletes();
    let batch = batch.max(1);
    let mut chunks = items.len().div_ceil(batch);
    if chunks == 0 && store_idle {
        chunks = 1;
    }
    let mut future = Vec::new();
    let mut draft = state.window.draft();
    draft.reserve(items.len());
    for key in forgotten {
        draft.remove(key);
    }
    let mut cuts = Vec::with_capacity(chunks);
    let mut capped = 0;
    let mut after = None;
    let mut rest = items.into_iter().enumerate();
    for n in 0..chunks {
        let mut taken = Vec::with_capacity(batch.min(rest.len()));
        while taken.len() < batch
            && let Some((i, c)) = rest.next()
        {
            if c.change == Change::Deleted {
                draft.remove(&c.key);
            } else {
                if c.time_ms > limit {
                    future.push((c.key.clone(), c.time_ms));
                }
                let high = draft.high.max(c.time_ms.min(limit));
                draft.put(&c.key, (c.time_ms, c.etag.clone(), c.size));
                draft.high = high;
            }
            if i >= from_window {
                after = Some(c.key.clone());
            }
            taken.push(c);
        }
        let step = draft.finish_batch(rules.lookback_ms, rules.max_remembered, keep_outside);
        capped += step.capped;
        let put = if state.inline && n == 0 {
            // The head carried the set: store all of it as members, once.
            draft.members().map(|(k, v)| (k.to_string(), v.clone())).collect()
        } else {
            step.put
        };
        cuts.push(Cut {
            items: taken,
            high_ms: step.high,
            floor_ms: step.floor,
            put,
            remove: step.remove,
            after: after.clone(),
        });
    }
    Cuts { cuts, future, capped: (capped, draft.floor) }
}

/// Puts `key` in `slot`, in the buffer already there: it is done for every key listed.
fn hold(slot: &mut Option<String>, key: &str) {
    match slot {
        Some(held) => {
            held.clear();
            held.push_str(key);
        }
        None => *slot = Some(key.to_string()),
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
            max_per_poll: 10_000,
            notified: false,
        }
    }

    fn obj(key: &str, time: i64, etag: &str) -> Listed {
        Listed { key: key.into(), last_modified_ms: time, etag: etag.into(), size: 1, storage_class: None }
    }

    /// Offers one listing (as the server gives it: from the start, or after the scan's
    /// `StartAfter` in byte order or not), restarting as the source does.
    fn one_poll(rules: &Rules, listing: &[Listed], state: &State, batch: usize, now: i64) -> Outcome {
        let mut scan = Scan::new(rules, state, now);
        'listing: loop {
            let start = scan.start_after().map(str::to_string);
            for o in listing.iter().filter(|o| start.as_ref().is_none_or(|s| o.key > *s)) {
                match scan.offer(o.clone()) {
                    Flow::Continue => {}
                    Flow::Stop => return scan.finish(false, batch, now, now),
                    Flow::Restart { .. } => {
                        scan = scan.restart();
                        continue 'listing;
                    }
                }
            }
            return scan.finish(true, batch, now, now);
        }
    }

    /// Commits every batch of a poll, as the loop does after each acknowledgement.
    fn commit(state: &mut State, outcome: &Outcome) {
        for b in &outcome.batches {
            state.apply(Some(b.head.clone()), &b.remove, b.put.clone());
        }
    }

    /// What a poll announces.
    fn announced(outcome: &Outcome) -> Vec<(Change, String)> {
        outcome.batches.iter().flat_map(|b| b.items.iter().map(|c| (c.change, c.key.clone()))).collect()
    }

    /// True when a poll stores something although it announces nothing.
    fn stores_idle(outcome: &Outcome) -> bool {
        outcome.batches.iter().any(|b| b.items.is_empty())
    }

    /// Runs polls over a fixed listing until nothing is left, as the loop would.
    fn drain(
        rules: &Rules,
        listing: &[Listed],
        state: Option<State>,
        batch: usize,
        now: i64,
    ) -> (Vec<(Change, String)>, State) {
        let mut state = state.unwrap_or_default();
        let mut out = Vec::new();
        for _ in 0..1000 {
            let outcome = one_poll(rules, listing, &state, batch, now);
            let found = announced(&outcome);
            commit(&mut state, &outcome);
            if found.is_empty() && !outcome.more {
                break;
            }
            out.extend(found);
        }
        (out, state)
    }

    fn keys(items: &[(Change, String)]) -> Vec<&str> {
        items.iter().map(|(_, k)| k.as_str()).collect()
    }

    fn remembered(state: &State) -> Vec<String> {
        let mut keys: Vec<String> = state.window.iter().map(|(k, _)| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn ties_across_batches_and_polls_are_announced_once() {
        for ordered in [false, true] {
            for max_per_poll in [7, 10_000] {
                let mut r = rules(ordered, &[Change::Created]);
                r.max_per_poll = max_per_poll;
                let listing: Vec<Listed> = (0..25).map(|i| obj(&format!("in/{i:02}"), 1000, "e")).collect();
                let (items, state) = drain(&r, &listing, None, 3, 0);
                let mut got = keys(&items);
                got.sort();
                let expected: Vec<String> = (0..25).map(|i| format!("in/{i:02}")).collect();
                assert_eq!(
                    got,
                    expected.iter().map(String::as_str).collect::<Vec<_>>(),
                    "ordered: {ordered}"
                );
                assert_eq!(drain(&r, &listing, Some(state), 3, 0).0, vec![]);
            }
        }
    }

    #[test]
    fn one_listing_hands_over_every_candidate_in_batches_each_valid_on_its_own() {
        for ordered in [false, true] {
            let r = rules(ordered, &[Change::Created]);
            let listing: Vec<Listed> = (0..10).map(|i| obj(&format!("in/{i}"), 1000 + i, "e")).collect();
            let outcome = one_poll(&r, &listing, &State::default(), 4, 0);
            assert_eq!(outcome.batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(), [4, 4, 2]);
            assert!(!outcome.more);
            // A crash after each batch: the state it leaves finds exactly the rest.
            for k in 0..3 {
                let mut state = State::default();
                for b in &outcome.batches[..=k] {
                    state.apply(Some(b.head.clone()), &b.remove, b.put.clone());
                }
                let (rest, _) = drain(&r, &listing, Some(state), 100, 0);
                let expected: Vec<String> = (4 * (k + 1)..10).map(|i| format!("in/{i}")).collect();
                assert_eq!(
                    keys(&rest),
                    expected.iter().map(String::as_str).collect::<Vec<_>>(),
                    "{ordered} {k}"
                );
            }
        }
    }

    #[test]
    fn a_late_object_inside_the_window_is_announced_once() {
        let r = rules(false, &[Change::Created]);
        let mut listing = vec![obj("in/a", 10_000_000, "1"), obj("in/c", 10_000_000, "1")];
        let (_, state) = drain(&r, &listing, None, 100, 10_000_000);
        listing.insert(1, obj("in/b-late", 10_000_000 - 600_000, "1"));
        listing.push(obj("in/z-too-late", 10_000_000 - 7_200_000, "1"));
        let (items, state) = drain(&r, &listing, Some(state), 100, 10_000_000);
        assert_eq!(keys(&items), vec!["in/b-late"]);
        assert_eq!(drain(&r, &listing, Some(state), 100, 10_000_000).0, vec![]);
    }

    #[test]
    fn overwrites_and_deletes() {
        let r = rules(false, &[Change::Created, Change::Updated, Change::Deleted]);
        let listing = vec![obj("in/a", 1000, "1"), obj("in/b", 1000, "1"), obj("in/c", 1000, "1")];
        let (_, state) = drain(&r, &listing, None, 100, 0);
        let listing = vec![obj("in/a", 1000, "1"), obj("in/c", 2000, "2")];
        let (items, state) = drain(&r, &listing, Some(state), 100, 0);
        assert_eq!(items, vec![(Change::Deleted, "in/b".into()), (Change::Updated, "in/c".into())]);
        assert!(drain(&r, &listing, Some(state.clone()), 100, 0).0.is_empty());
        // The same content written again is a new write: S3 announces every PUT.
        let listing = vec![obj("in/a", 3000, "1"), obj("in/c", 2000, "2")];
        let (items, state) = drain(&r, &listing, Some(state), 100, 0);
        assert_eq!(items, vec![(Change::Updated, "in/a".into())]);
        // Everything gone: deletes of every remembered key.
        let (items, state) = drain(&r, &[], Some(state), 100, 0);
        assert_eq!(keys(&items), vec!["in/c", "in/a"]);
        assert!(state.window.is_empty());
    }

    #[test]
    fn a_listed_key_the_filters_now_refuse_is_not_deleted() {
        let mut r = rules(false, &[Change::Created, Change::Deleted]);
        let (_, state) = drain(&r, &[obj("in/a", 1000, "1")], None, 100, 0);
        r.min_size = 10;
        assert!(drain(&r, &[obj("in/a", 1000, "1")], Some(state), 100, 0).0.is_empty());
    }

    #[test]
    fn updates_are_ignored_unless_asked_for() {
        let r = rules(false, &[Change::Created]);
        let (_, state) = drain(&r, &[obj("in/a", 1000, "1")], None, 100, 0);
        assert!(drain(&r, &[obj("in/a", 2000, "2")], Some(state), 100, 0).0.is_empty());
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
        let (items, state) = drain(&r, &listing, None, 100, 0);
        assert_eq!(items.len(), 2);
        assert_eq!(state.head.after.as_deref(), Some("in/2024-01-02"));
        let scan = Scan::new(&r, &state, 1000);
        assert_eq!(scan.start_after(), Some("in/2024-01-02"));
        // A key below the cursor, arriving late: missed between full listings…
        let mut late = listing.clone();
        late.insert(1, obj("in/2024-01-01b", 4000, "1"));
        late.push(obj("in/2024-01-03", 1, "1"));
        let (items, state) = drain(&r, &late, Some(state), 100, 1000);
        assert_eq!(keys(&items), vec!["in/2024-01-03"], "past the cursor, whatever its time");
        // …and caught by the next one.
        let scan = Scan::new(&r, &state, 61_000);
        assert!(scan.is_full());
        let (items, state) = drain(&r, &late, Some(state), 100, 61_000);
        assert_eq!(keys(&items), vec!["in/2024-01-01b"]);
        assert!(drain(&r, &late, Some(state), 100, 200_000).0.is_empty());
    }

    #[test]
    fn ordered_mode_stops_listing_at_the_cap() {
        let mut r = rules(true, &[Change::Created]);
        r.max_per_poll = 3;
        let listing: Vec<Listed> = (0..10).map(|i| obj(&format!("in/{i}"), i, "1")).collect();
        let state = State::default();
        let mut scan = Scan::new(&r, &state, 0);
        let mut offered = 0;
        for o in &listing {
            offered += 1;
            if scan.offer(o.clone()) == Flow::Stop {
                break;
            }
        }
        assert_eq!(offered, 3);
        let outcome = scan.finish(false, 2, 0, 0);
        assert!(outcome.more);
        let afters: Vec<Option<&str>> = outcome.batches.iter().map(|b| b.head.after.as_deref()).collect();
        assert_eq!(afters, [Some("in/1"), Some("in/2")]);
    }

    #[test]
    fn ordered_cursor_passes_keys_the_filters_refuse() {
        let mut r = rules(true, &[Change::Created]);
        r.glob = Some(Glob::new("*.csv").unwrap());
        let listing = vec![obj("in/1.csv", 1, "1"), obj("in/2.tmp", 1, "1"), obj("in/3.tmp", 1, "1")];
        let (items, state) = drain(&r, &listing, None, 100, 0);
        assert_eq!(keys(&items), vec!["in/1.csv"]);
        assert_eq!(
            state.head.after.as_deref(),
            Some("in/3.tmp"),
            "an idle poll lists nothing it judged before"
        );
    }

    /// SeaweedFS's directory-walk order: `a/b` before `a.m`, although `.` < `/`.
    fn walk_order() -> Vec<Listed> {
        vec![obj("in/d/part-0", 1000, "1"), obj("in/d.manifest", 1000, "1"), obj("in/e", 1000, "1")]
    }

    #[test]
    fn an_unordered_listing_is_remembered_and_deletes_do_not_depend_on_order() {
        let r = rules(false, &[Change::Created, Change::Deleted]);
        let (items, state) = drain(&r, &walk_order(), None, 100, 0);
        assert_eq!(keys(&items), vec!["in/d.manifest", "in/d/part-0", "in/e"]);
        assert!(state.head.unordered, "remembered for the log and `state list`");
        assert!(drain(&r, &walk_order(), Some(state.clone()), 100, 0).0.is_empty(), "no false deletes");
        let mut scan = Scan::new(&r, &state, 0);
        for o in walk_order() {
            assert_eq!(scan.offer(o), Flow::Continue, "a scan without a cursor never restarts");
        }
        let mut listing = walk_order();
        listing.remove(2);
        let (items, state) = drain(&r, &listing, Some(state), 100, 0);
        assert_eq!(items, vec![(Change::Deleted, "in/e".into())]);
        assert!(state.head.unordered);
        // A whole listing in byte order trusts the server again.
        let in_order = [obj("in/d.manifest", 1000, "1"), obj("in/d/part-0", 1000, "1")];
        let outcome = one_poll(&r, &in_order, &state, 100, 0);
        assert_eq!(outcome.order, OrderNote::Restored);
        assert!(stores_idle(&outcome) && !outcome.batches[0].head.unordered);
    }

    #[test]
    fn ordered_mode_on_an_unordered_server_lists_in_full_and_keeps_key_order() {
        let mut r = rules(true, &[Change::Created]);
        r.max_per_poll = 2;
        let (items, state) = drain(&r, &walk_order(), None, 1, 0);
        assert_eq!(keys(&items), vec!["in/d.manifest", "in/d/part-0", "in/e"], "smallest keys first");
        assert!(state.head.unordered);
        assert_eq!(state.head.after.as_deref(), Some("in/e"));
        let scan = Scan::new(&r, &state, 1);
        assert!(scan.is_full() && scan.start_after().is_none());
        let mut listing = walk_order();
        listing.insert(0, obj("in/c/late", 10, "1"));
        listing.push(obj("in/f", 10, "1"));
        r.max_per_poll = 100;
        let outcome = one_poll(&r, &listing, &state, 100, 1);
        let got = announced(&outcome);
        assert_eq!(keys(&got), vec!["in/c/late", "in/f"], "below the cursor by the window, past it by key");
        assert_eq!(outcome.batches[0].head.full_at_ms, None, "no schedule to store on such a server");
    }

    #[test]
    fn an_object_from_the_future_is_announced_once_and_hides_nothing() {
        let day = 86_400_000;
        let now = 100 * day;
        for ordered in [false, true] {
            let mut r = rules(ordered, &[Change::Created]);
            r.lookback_ms = 3_600_000;
            let (items, state) = drain(&r, &[obj("in/m-future", now + 2 * day, "1")], None, 100, now);
            assert_eq!(keys(&items), vec!["in/m-future"]);
            assert_eq!(state.window.high, now + FUTURE_TOLERANCE_MS, "never past the server's clock");
            // Objects of the present, below the ordered cursor too, are still inside the window.
            let listing = vec![
                obj("in/a-present", now - 60_000, "1"),
                obj("in/m-future", now + 2 * day, "1"),
                obj("in/z-present", now + 1000, "1"),
            ];
            let later = now + 120_000;
            let (items, state) = drain(&r, &listing, Some(state), 100, later);
            let mut got = keys(&items);
            got.sort();
            assert_eq!(got, vec!["in/a-present", "in/z-present"], "ordered: {ordered}");
            assert!(drain(&r, &listing, Some(state), 100, later).0.is_empty());
        }
    }

    #[test]
    fn a_changed_scope_forgets_what_is_outside_it_silently() {
        let r = rules(false, &[Change::Created, Change::Deleted]);
        let listing = vec![obj("in/a/1", 1000, "1"), obj("in/b/1", 1000, "1")];
        let (_, state) = drain(&r, &listing, None, 100, 1000);
        assert_eq!(state.head.scope, Some(r.scope()));
        let mut narrow = r.clone();
        narrow.prefix = "in/a/".into();
        let scan = Scan::new(&narrow, &state, 1000);
        assert_eq!(scan.scope_change().map(|c| c.forgotten), Some(1));
        let outcome = one_poll(&narrow, &listing[..1], &state, 100, 1000);
        assert!(announced(&outcome).is_empty(), "no delete for a key outside the prefix");
        assert!(stores_idle(&outcome));
        assert_eq!(outcome.batches[0].remove, ["in/b/1"]);
        let mut state = state;
        commit(&mut state, &outcome);
        assert_eq!(remembered(&state), ["in/a/1"]);
        // Widened back: what comes into scope is judged by the window, with a new id
        // (it was forgotten), and the key that never left keeps its place.
        let (items, _) = drain(&r, &listing, Some(state.clone()), 100, 1000);
        assert_eq!(items, vec![(Change::Created, "in/b/1".into())]);
        let mut far = state;
        far.window.high = 10 * 3_600_000;
        assert!(drain(&r, &listing, Some(far), 100, 1000).0.is_empty(), "outside the window: not announced");
        // Another bucket: nothing remembered counts, nothing is deleted.
        let (_, state) = drain(&r, &listing, None, 100, 1000);
        let mut other = r.clone();
        other.bucket = "c".into();
        let outcome = one_poll(&other, &listing, &state, 100, 1000);
        assert_eq!(keys(&announced(&outcome)), ["in/a/1", "in/b/1"]);
    }

    #[test]
    fn ordered_mode_rejudges_its_cursor_after_a_scope_change() {
        let r = rules(true, &[Change::Created]);
        let listing = [obj("in/a/1", 1000, "1"), obj("in/a/2", 1000, "1"), obj("in/b/1", 1000, "1")];
        let (_, state) = drain(&r, &listing[2..], None, 100, 1000);
        assert_eq!(state.head.after.as_deref(), Some("in/b/1"));
        let mut other = r.clone();
        other.prefix = "in/a/".into();
        // The old cursor lies past every key of the new prefix: judged by the window
        // instead, then the cursor moves into the new prefix.
        let (items, state) = drain(&other, &listing[..2], Some(state), 1, 1000);
        assert_eq!(keys(&items), vec!["in/a/1", "in/a/2"]);
        assert_eq!(state.head.after.as_deref(), Some("in/a/2"));
        assert_eq!(state.head.scope, Some(other.scope()));
        let scan = Scan::new(&other, &state, 2000);
        assert_eq!(scan.start_after(), Some("in/a/2"));
    }

    #[test]
    fn idle_polls_store_the_last_full_listing_once_per_period() {
        let r = rules(true, &[Change::Created]);
        // An empty prefix: every poll lists from the start, and nothing needs storing.
        let outcome = one_poll(&r, &[], &State::default(), 10, 0);
        assert!(outcome.batches.is_empty(), "a first poll that finds nothing stores nothing");
        let listing = [obj("in/a", 1, "1")];
        let (_, state) = drain(&r, &listing, None, 10, 2000);
        let between = one_poll(&r, &listing, &state, 10, 30_000);
        assert!(between.batches.is_empty());
        let due = one_poll(&r, &listing, &state, 10, 70_000);
        assert!(stores_idle(&due));
        assert_eq!(due.batches[0].head.full_at_ms, Some(70_000));
        assert!(due.batches[0].put.is_empty() && due.batches[0].remove.is_empty(), "the head only");
        let mut state = state;
        commit(&mut state, &due);
        assert!(one_poll(&r, &listing, &state, 10, 80_000).batches.is_empty());
        // In `any` order the time is kept only beside notifications.
        let mut any = rules(false, &[Change::Created]);
        let (_, state) = drain(&any, &listing, None, 10, 2000);
        assert!(one_poll(&any, &listing, &state, 10, 90_000).batches.is_empty());
        any.notified = true;
        let due = one_poll(&any, &listing, &state, 10, 90_000);
        assert_eq!(due.batches[0].head.full_at_ms, Some(90_000));
    }

    #[test]
    fn an_ordered_head_without_a_cursor_judges_keys_by_time_once() {
        let r = rules(true, &[Change::Created]);
        let head = Head { high_ms: 4_999, floor_ms: Some(4_999), ..Head::default() };
        let state = State::restore(Some(head), std::iter::empty());
        let listing = [obj("in/a", 4_000, "1"), obj("in/b", 5_000, "1"), obj("in/c", 1_000, "1")];
        let (items, state) = drain(&r, &listing, Some(state), 1, 6_000);
        assert_eq!(keys(&items), ["in/b"], "older than the start: not announced, whatever the key");
        assert_eq!(state.head.after.as_deref(), Some("in/c"));
        // An empty prefix stores nothing.
        let head = Head { high_ms: 4_999, floor_ms: Some(4_999), scope: Some(r.scope()), ..Head::default() };
        let state = State::restore(Some(head), std::iter::empty());
        assert!(one_poll(&r, &[], &state, 1, 6_000).batches.is_empty());
    }

    #[test]
    fn a_hand_written_head_is_adopted() {
        let r = rules(true, &[Change::Created]);
        let head = Head { high_ms: 10_000_000, after: Some("in/b".into()), ..Head::default() };
        let state = State::restore(Some(head), std::iter::empty());
        let scan = Scan::new(&r, &state, 0);
        assert!(scan.scope_change().is_none());
        let outcome = one_poll(&r, &[obj("in/a", 1, "1"), obj("in/c", 1, "1")], &state, 100, 0);
        assert_eq!(keys(&announced(&outcome)), ["in/c"]);
        assert_eq!(outcome.batches[0].head.scope, Some(r.scope()));
    }

    #[test]
    fn a_head_that_carries_the_set_is_split_into_members_by_the_next_batch() {
        let r = rules(false, &[Change::Created]);
        let old: serde_json::Value = serde_json::json!({
            "high_ms": 5000, "seen": {"in/a": [5000, "1", 1], "in/b": [4000, "1", 1]},
            "scope": {"bucket": "b", "prefix": "in/"}
        });
        let head: Head = serde_json::from_value(old).unwrap();
        let state = State::restore(Some(head), std::iter::empty());
        assert!(state.inline && state.window.len() == 2);
        let listing = [obj("in/a", 5000, "1"), obj("in/b", 4000, "1"), obj("in/c", 6000, "1")];
        let outcome = one_poll(&r, &listing, &state, 100, 6000);
        assert_eq!(keys(&announced(&outcome)), ["in/c"]);
        let batch = &outcome.batches[0];
        assert_eq!(batch.put.keys().collect::<Vec<_>>(), ["in/a", "in/b", "in/c"]);
        let stored = serde_json::to_value(&batch.head).unwrap();
        assert!(stored.get("seen").is_none(), "{stored}");
        let mut state = state;
        commit(&mut state, &outcome);
        assert!(!state.inline);
        // Idle with the set still in the head: split by an items-less batch.
        let state = State::restore(Some(serde_json::from_value(serde_json::json!({
            "high_ms": 5000, "seen": {"in/a": [5000, "1", 1]}, "scope": {"bucket": "b", "prefix": "in/"}
        })).unwrap()), std::iter::empty());
        let outcome = one_poll(&r, &listing[..1], &state, 100, 6000);
        assert!(stores_idle(&outcome) && outcome.batches[0].put.len() == 1);
    }

    #[test]
    fn the_cap_on_remembered_keys_is_reported() {
        let mut r = rules(false, &[Change::Created]);
        r.max_remembered = 5;
        let listing: Vec<Listed> = (0..10).map(|i| obj(&format!("in/{i}"), 1000 + i, "e")).collect();
        let outcome = one_poll(&r, &listing, &State::default(), 100, 0);
        assert_eq!(outcome.capped, (5, Some(1004)));
    }

    #[test]
    fn keys_compare_in_utf8_byte_order() {
        // S3 lists in UTF-8 byte order; so do Rust strings.
        let mut keys = vec!["in/é", "in/z", "in/a b", "in/a+b", "in/a%20b", "in/\u{1F600}", "in/Z"];
        keys.sort();
        assert_eq!(keys, vec!["in/Z", "in/a b", "in/a%20b", "in/a+b", "in/z", "in/é", "in/\u{1F600}"]);
    }
}
