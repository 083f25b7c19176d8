//! The `local_dir` source: new and changed files under a directory.
//!
//! A file's place in time is its *change time*: the later of its modification time and
//! its inode change time. The inode change time moves when a file is created, renamed
//! or moved into the directory, and cannot be set by the writer, so a file copied with
//! its old modification time kept (`cp -p`, `rsync -t`, an SFTP client) still counts as
//! new when it lands.
//!
//! Its state is a head (the newest change time announced, and a floor once the cap bit)
//! and the files announced within the look-back window before it, one member each
//! (relative path -> change time, modification time, size, inode, inode change time),
//! so that files sharing a timestamp and files that land late inside the window are
//! announced exactly once. The window's memory is capped; when the cap bites, the
//! oldest part of the window is dropped, its floor recorded, and a warning logged.
//!
//! A file is the same file as remembered only when its inode, inode change time, size
//! and modification time all match: a file deleted and written again with the same size
//! and a preserved modification time is a new inode (and a new change time), so it is
//! announced, with a new id.
//!
//! The source holds its window in memory: a poll walks the directory and looks files
//! up there, and a commit changes only the members its batch added or pruned. One walk
//! hands over up to `max_per_poll` files, in batches.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::window::{Smallest, Timed, Window};
use super::{Batch, ChangeSet, Found, Polled, Source, SourceError, SourceKind, SourceState};
use crate::event::{Change, FileItem, Item, ItemKind};
use crate::json::Json;
use crate::value::{Glob, HumanDuration, Kind, Start};

/// `source: {type: local_dir}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDirConfig {
    /// The directory to watch. It must exist when the watcher polls.
    pub path: PathBuf,
    /// Only files whose path relative to `path` matches (`*.csv`, `**/*.parquet`).
    /// `*` stays within one directory; `**` crosses directories. Default: every file.
    #[serde(default)]
    pub glob: Option<Glob>,
    /// Descend into subdirectories.
    #[serde(default = "yes")]
    pub recursive: bool,
    /// Also announce hidden files and files in hidden directories (names starting with
    /// `.`). Off by default: uploaders (rsync, many SFTP clients) write to a hidden
    /// temporary name and rename when done.
    #[serde(default)]
    pub include_hidden: bool,
    /// A file is announced only once it has not changed for this long, so a file still
    /// being written is not announced half-done.
    #[serde(default = "default_min_age")]
    pub min_age: HumanDuration,
    /// How far behind the newest announced file to keep looking for files that land late.
    #[serde(default = "default_lookback")]
    pub lookback: HumanDuration,
    /// Which changes become events: `created`, `updated` (the same path with a new
    /// inode, inode change time, size or modification time).
    #[serde(default = "default_events")]
    pub events: Vec<Change>,
    /// Most files remembered inside the look-back window (bounds the state's size and
    /// the source's memory).
    #[serde(default = "default_max_remembered")]
    pub max_remembered: usize,
    /// Most files one walk of the directory hands over, in batches of the watcher's
    /// `batch_size`; the rest wait for the next poll. Bounds the memory of a poll.
    #[serde(default = "default_max_per_poll")]
    pub max_per_poll: usize,
}

fn yes() -> bool {
    true
}

fn default_min_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_lookback() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_events() -> Vec<Change> {
    vec![Change::Created, Change::Updated]
}

fn default_max_remembered() -> usize {
    100_000
}

fn default_max_per_poll() -> usize {
    10_000
}

/// Highest `max_remembered`: about 200 bytes of memory each (a million is 200 MB).
pub const MAX_REMEMBERED_CAP: usize = 1_000_000;

/// Highest `max_per_poll`: candidates are held in memory while a poll's batches are
/// delivered.
pub const MAX_PER_POLL_CAP: usize = 100_000;

impl Kind for LocalDirConfig {
    const TAG: &'static str = "local_dir";
}

impl SourceKind for LocalDirConfig {
    fn describe(&self) -> String {
        let glob = self.glob.as_ref().map_or("every file", |g| g.pattern.as_str());
        format!(
            "local_dir {} ({glob}{})",
            self.path.display(),
            if self.recursive { ", recursive" } else { "" }
        )
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(("path".into(), "must not be empty".into()));
        }
        if self.events.contains(&Change::Deleted) {
            errors.push(("events".into(), "local_dir announces `created` and `updated` only".into()));
        }
        if self.events.is_empty() {
            errors.push(("events".into(), "must name at least one of created, updated".into()));
        }
        if !(1..=MAX_REMEMBERED_CAP).contains(&self.max_remembered) {
            errors.push(("max_remembered".into(), format!("must be between 1 and {MAX_REMEMBERED_CAP}")));
        }
        if !(1..=MAX_PER_POLL_CAP).contains(&self.max_per_poll) {
            errors.push(("max_per_poll".into(), format!("must be between 1 and {MAX_PER_POLL_CAP}")));
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(LocalDir::new(self.clone()))
    }

    fn item_kind(&self) -> ItemKind {
        ItemKind::File
    }

    fn check_start(&self, _start: &Start) -> Result<(), String> {
        Ok(())
    }
}

/// The stored head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    /// Newest change time announced, nanoseconds since the epoch.
    high_ns: i64,
    /// Files changed at or before this are not looked at again (set when the
    /// remembered set overflowed, or by `start:`); None while neither happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floor_ns: Option<i64>,
    /// The remembered files, as releases up to 0.1 kept them inside the head. Read,
    /// never written: the next batch stores them as members.
    #[serde(default, skip_serializing)]
    seen: Option<BTreeMap<String, Entry>>,
}

/// A remembered file, stored as an array to keep the row small: `[change time,
/// modification time, size, inode, inode change time]`; an entry of a release up to
/// 0.1 holds only the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    changed_ns: i64,
    mtime_ns: i64,
    size: u64,
    /// (inode, inode change time); None in an entry of an older release.
    inode: Option<(u64, i64)>,
}

impl Entry {
    /// True when the file found is the one remembered. An entry of an older release is
    /// judged by modification time and size, as it was written.
    fn is(&self, found: &Entry) -> bool {
        self.mtime_ns == found.mtime_ns
            && self.size == found.size
            && self.inode.is_none_or(|inode| found.inode == Some(inode))
    }
}

impl Timed for Entry {
    fn time(&self) -> i64 {
        self.changed_ns
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.inode {
            Some((ino, ctime_ns)) => {
                (self.changed_ns, self.mtime_ns, self.size, ino, ctime_ns).serialize(serializer)
            }
            None => (self.changed_ns, self.mtime_ns, self.size).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Now(i64, i64, u64, u64, i64),
            Older(i64, i64, u64),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Now(changed_ns, mtime_ns, size, ino, ctime_ns) => {
                Entry { changed_ns, mtime_ns, size, inode: Some((ino, ctime_ns)) }
            }
            Stored::Older(changed_ns, mtime_ns, size) => Entry { changed_ns, mtime_ns, size, inode: None },
        })
    }
}

/// A file that may be announced, ordered by (change time, path): the delivery order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    changed_ns: i64,
    relative: String,
    mtime_ns: i64,
    size: u64,
    ino: u64,
    ctime_ns: i64,
    change: Change,
}

impl Candidate {
    /// The file as it is remembered once announced.
    fn entry(&self) -> Entry {
        Entry {
            changed_ns: self.changed_ns,
            mtime_ns: self.mtime_ns,
            size: self.size,
            inode: Some((self.ino, self.ctime_ns)),
        }
    }
}

/// How often the cap's warning may repeat while it keeps biting.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(600);

/// The runtime `local_dir` source.
pub struct LocalDir {
    config: LocalDirConfig,
    /// The committed window: head and remembered files. Shared with a walk in progress
    /// (which only reads it); changed only by `restore` and `committed`.
    window: Arc<Window<Entry>>,
    /// The stored head still carries the remembered set (written by a release up to
    /// 0.1): the next batch stores every member as a row and a head without the set.
    inline: bool,
    /// When the cap's warning was last logged, to say it again only now and then.
    cap_warned: Option<Instant>,
}

impl LocalDir {
    /// Builds the source; nothing is touched until the first poll.
    pub fn new(config: LocalDirConfig) -> Self {
        LocalDir { config, window: Arc::default(), inline: false, cap_warned: None }
    }

    fn unreadable(what: &str, error: impl std::fmt::Display) -> SourceError {
        SourceError::unreadable_state(LocalDirConfig::TAG, what, error)
    }

    /// Says that the cap made the window give up files: once, then at most every
    /// [`CAP_WARNING_EVERY`] while it keeps biting.
    fn warn_capped(&mut self, capped: usize, floor: Option<i64>) {
        if capped == 0 || self.cap_warned.is_some_and(|at| at.elapsed() < CAP_WARNING_EVERY) {
            return;
        }
        self.cap_warned = Some(Instant::now());
        let floor = floor.map(|f| DateTime::<Utc>::from_timestamp_nanos(f).to_rfc3339());
        tracing::warn!(
            forgotten = capped,
            max_remembered = self.config.max_remembered,
            floor = floor.as_deref().unwrap_or("-"),
            "max_remembered forces the look-back window to shrink: files changed at or before the floor are no longer looked at; raise max_remembered or shorten lookback."
        );
    }
}

fn nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// How far ahead of this machine's clock a modification time is still believed.
const FUTURE_TOLERANCE_NS: i64 = 5_000_000_000;

/// A file's place in time: the later of its modification time and its inode change
/// time. A modification time in the future (an archive from a machine whose clock was
/// ahead, `touch -d`) is not believed: the change time, which the kernel sets, stands
/// instead, so such a file is neither held back as still settling until that time nor
/// lets the watermark jump ahead of the files written after it.
fn changed_at(mtime_ns: i64, ctime_ns: i64, now_ns: i64) -> i64 {
    if mtime_ns > now_ns.saturating_add(FUTURE_TOLERANCE_NS) { ctime_ns } else { mtime_ns.max(ctime_ns) }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn encode(value: &impl Serialize) -> Result<Json, SourceError> {
    Json::encode(value).map_err(|e| SourceError::transient(format!("cannot encode the state: {e}")))
}

#[async_trait]
impl Source for LocalDir {
    fn kind(&self) -> &'static str {
        LocalDirConfig::TAG
    }

    fn restore(&mut self, state: SourceState) -> Result<(), SourceError> {
        let mut window = Window::default();
        self.inline = false;
        if let Some(head) = &state.head {
            let head: Head = head.decode().map_err(|e| Self::unreadable("watermark", e))?;
            window.high = head.high_ns;
            window.floor = head.floor_ns;
            if let Some(seen) = head.seen {
                self.inline = true;
                for (name, entry) in seen {
                    window.insert(&name, entry);
                }
            }
        }
        for (name, value) in &state.members {
            let entry: Entry =
                value.decode().map_err(|e| Self::unreadable(&format!("member {name:?}"), e))?;
            window.insert(name, entry);
        }
        self.window = Arc::new(window);
        Ok(())
    }

    async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
        match start {
            Start::Beginning => Ok(ChangeSet::default()),
            // What is there counts as announced: the files present are remembered as if
            // a batch had carried them. Exact where a time would not be: a file system
            // stamps files with a coarser clock than the one a start time is read from.
            Start::Now => {
                let config = self.config.clone();
                let now_ns = nanos(SystemTime::now());
                tokio::task::spawn_blocking(move || begin_now(&config, now_ns))
                    .await
                    .map_err(|e| SourceError::transient(format!("directory scan task failed: {e}")))?
            }
            // The floor hides every file changed before the time.
            Start::At(at) => {
                let floor = at.timestamp_nanos_opt().unwrap_or(i64::MIN).saturating_sub(1);
                Ok(ChangeSet::head(encode(&Head { high_ns: floor, floor_ns: Some(floor), seen: None })?))
            }
        }
    }

    async fn poll(&mut self, limit: usize) -> Result<Polled, SourceError> {
        let config = self.config.clone();
        let window = Arc::clone(&self.window);
        let inline = self.inline;
        let now_ns = nanos(SystemTime::now());
        let (polled, capped, floor) =
            tokio::task::spawn_blocking(move || plan(&config, &window, inline, limit, now_ns))
                .await
                .map_err(|e| SourceError::transient(format!("directory scan task failed: {e}")))??;
        self.warn_capped(capped, floor);
        Ok(polled)
    }

    fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError> {
        let head: Option<Head> = change
            .head
            .as_ref()
            .map(|h| h.decode())
            .transpose()
            .map_err(|e| Self::unreadable("watermark", e))?;
        let window = Arc::make_mut(&mut self.window);
        if let Some(Head { seen: Some(seen), high_ns, floor_ns }) = head {
            // A whole watermark of a release up to 0.1 (a batch it left pending).
            window.clear();
            for (name, entry) in seen {
                window.insert(&name, entry);
            }
            (window.high, window.floor) = (high_ns, floor_ns);
            self.inline = true;
            return Ok(());
        }
        for name in &change.remove {
            window.remove(name);
        }
        for (name, value) in &change.put {
            let entry: Entry =
                value.decode().map_err(|e| Self::unreadable(&format!("member {name:?}"), e))?;
            window.insert(name, entry);
        }
        if let Some(head) = head {
            (window.high, window.floor) = (head.high_ns, head.floor_ns);
            self.inline = false;
        }
        Ok(())
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        let path = self.config.path.clone();
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(SourceError::needs_attention(format!("{} is not a directory", path.display()))),
            Err(e) => {
                Err(SourceError::needs_attention(format!("cannot read directory {}: {e}", path.display())))
            }
        }
    }

    fn summary(&self) -> serde_json::Value {
        summary_of(self.window.high, self.window.len() as u64)
    }

    fn summarize(&self, head: &Json, remembered: u64) -> serde_json::Value {
        match head.decode::<Head>() {
            Ok(head) => {
                let inline = head.seen.as_ref().map_or(0, |seen| seen.len() as u64);
                summary_of(head.high_ns, remembered + inline)
            }
            Err(_) => serde_json::Value::String(head.as_str().chars().take(60).collect()),
        }
    }
}

/// The short form of a state: when the newest announced file changed, and how many are
/// remembered.
fn summary_of(high_ns: i64, remembered: u64) -> serde_json::Value {
    if high_ns == 0 && remembered == 0 {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "changed": DateTime::<Utc>::from_timestamp_nanos(high_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "remembered": remembered,
    })
}

/// One poll: walk the directory, then cut what it found into batches of `limit`, each
/// with the change set that its commit makes. Returns the poll, the number of files
/// the cap made the window give up, and the floor after the last batch.
fn plan(
    config: &LocalDirConfig,
    window: &Window<Entry>,
    inline: bool,
    limit: usize,
    now_ns: i64,
) -> Result<(Polled, usize, Option<i64>), SourceError> {
    let limit = limit.max(1);
    let (candidates, more) = scan(config, window, config.max_per_poll.max(limit), now_ns)?;
    let lookback_ns = duration_ns(config.lookback.0);
    let root = &config.path;
    let mut draft = window.draft();
    draft.reserve(candidates.len());
    let mut batches = Vec::with_capacity(candidates.len().div_ceil(limit));
    let mut capped = 0;
    let mut first = true;
    for chunk in candidates.chunks(limit) {
        let mut items = Vec::with_capacity(chunk.len());
        for c in chunk {
            draft.put(&c.relative, c.entry());
            items.push(Found {
                change: c.change,
                // Inode and change time tell generations of a path apart: a file written
                // again, even with the same size and modification time, gets a new id.
                identity: vec![
                    c.relative.clone(),
                    c.size.to_string(),
                    c.mtime_ns.to_string(),
                    c.ino.to_string(),
                    c.ctime_ns.to_string(),
                ],
                item: Item::File(FileItem {
                    path: root.join(&c.relative).to_string_lossy().into_owned(),
                    relative_path: c.relative.clone(),
                    size: c.size,
                    modified: DateTime::<Utc>::from_timestamp_nanos(c.mtime_ns),
                }),
            });
        }
        let step = draft.finish_batch(lookback_ns, config.max_remembered, false);
        capped += step.capped;
        let mut put = BTreeMap::new();
        if inline && first {
            // The head carried the set: store all of it as members, once.
            for (name, entry) in draft.members() {
                put.insert(name.to_string(), encode(entry)?);
            }
        } else {
            for (name, entry) in &step.put {
                put.insert(name.clone(), encode(entry)?);
            }
        }
        let head = Head { high_ns: step.high, floor_ns: step.floor, seen: None };
        let change = ChangeSet { head: Some(encode(&head)?), put, remove: step.remove };
        batches.push(Batch { items, change });
        first = false;
    }
    let floor = draft.floor;
    Ok((Polled { batches, more }, capped, floor))
}

/// The first state of `start: now`: every settled file present remembered (the newest
/// `max_remembered` of them; a floor below them when there are more).
fn begin_now(config: &LocalDirConfig, now_ns: i64) -> Result<ChangeSet, SourceError> {
    let (files, more) = present(config, config.max_remembered, now_ns)?;
    let empty = Window::default();
    let mut draft = empty.draft();
    for file in files.iter().rev() {
        draft.put(&file.relative, file.entry());
    }
    let step = draft.finish_batch(duration_ns(config.lookback.0), config.max_remembered, false);
    // Files left out of the heap are no newer than the oldest one kept: the floor goes
    // there (the files kept at that time are hidden by it too).
    let floor = match (more, files.last()) {
        (true, Some(oldest)) => Some(step.floor.unwrap_or(i64::MIN).max(oldest.changed_ns)),
        _ => step.floor,
    };
    let mut put = BTreeMap::new();
    for (name, entry) in &step.put {
        put.insert(name.clone(), encode(entry)?);
    }
    let head = Head { high_ns: step.high, floor_ns: floor, seen: None };
    Ok(ChangeSet { head: Some(encode(&head)?), put, remove: Vec::new() })
}

/// Walks the directory and returns, oldest first, the files to announce (at most
/// `max` of them) and whether more were left out. Memory is bounded by `max`, not by
/// the size of the directory.
fn scan(
    config: &LocalDirConfig,
    window: &Window<Entry>,
    max: usize,
    now_ns: i64,
) -> Result<(Vec<Candidate>, bool), SourceError> {
    let stored = window.high != 0 || window.floor.is_some() || !window.is_empty();
    let horizon = stored.then(|| window.horizon(duration_ns(config.lookback.0)));
    let mut heap: Smallest<Candidate> = Smallest::new(max);
    walk(config, window, horizon, now_ns, &mut |candidate| {
        if config.events.contains(&candidate.change) {
            heap.push(candidate);
        }
    })?;
    let more = heap.overflowed();
    Ok((heap.into_sorted_vec(), more))
}

/// The settled files present now, newest first, at most `max` of them (what `start:
/// now` counts as announced), and whether older ones were left out.
fn present(config: &LocalDirConfig, max: usize, now_ns: i64) -> Result<(Vec<Candidate>, bool), SourceError> {
    let mut heap: Smallest<std::cmp::Reverse<Candidate>> = Smallest::new(max);
    walk(config, &Window::default(), None, now_ns, &mut |candidate| heap.push(std::cmp::Reverse(candidate)))?;
    let more = heap.overflowed();
    Ok((heap.into_sorted_vec().into_iter().map(|c| c.0).collect(), more))
}

/// Walks the directory and offers `visit` every settled file at or after `horizon` that
/// is new or changed against `window`. Memory is bounded by the depth of the tree.
fn walk(
    config: &LocalDirConfig,
    window: &Window<Entry>,
    horizon: Option<i64>,
    now_ns: i64,
    visit: &mut dyn FnMut(Candidate),
) -> Result<(), SourceError> {
    let root = &config.path;
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(SourceError::needs_attention(format!("{} is not a directory", root.display()))),
        Err(e) => {
            return Err(SourceError::needs_attention(format!(
                "cannot read directory {}: {e}",
                root.display()
            )));
        }
    }
    let settled_before = now_ns.saturating_sub(duration_ns(config.min_age.0));
    let mut dirs = vec![PathBuf::new()];
    while let Some(relative_dir) = dirs.pop() {
        let dir = root.join(&relative_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if relative_dir.as_os_str().is_empty() => {
                return Err(SourceError::needs_attention(format!(
                    "cannot read directory {}: {e}",
                    dir.display()
                )));
            }
            Err(e) => {
                // One unreadable subdirectory must not hide the rest of the tree.
                tracing::warn!(directory = %dir.display(), error = %e, "Skipping unreadable directory.");
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(directory = %dir.display(), error = %e, "Skipping unreadable directory entry.");
                    continue;
                }
            };
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                tracing::warn!(directory = %dir.display(), name = ?entry.file_name(), "Skipping a file whose name is not UTF-8.");
                continue;
            };
            if !config.include_hidden && file_name.starts_with('.') {
                continue;
            }
            let relative_path = relative_dir.join(file_name);
            // Follows symlinks: a link to a file is announced as that file.
            let meta = match std::fs::metadata(entry.path()) {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::debug!(path = %entry.path().display(), error = %e, "Skipping a file that vanished or cannot be read.");
                    continue;
                }
            };
            if meta.is_dir() {
                if config.recursive {
                    dirs.push(relative_path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let relative = relative_path.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
            if let Some(glob) = &config.glob
                && !glob.is_match(&relative)
            {
                continue;
            }
            let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
            let ctime_ns = meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec());
            let changed_ns = changed_at(mtime_ns, ctime_ns, now_ns);
            if changed_ns > settled_before {
                continue; // still settling; the next poll sees it
            }
            if horizon.is_some_and(|h| changed_ns < h) {
                continue;
            }
            let found = Entry { changed_ns, mtime_ns, size: meta.len(), inode: Some((meta.ino(), ctime_ns)) };
            let change = match window.get(&relative) {
                Some(entry) if entry.is(&found) => continue,
                Some(_) => Change::Updated,
                None => Change::Created,
            };
            visit(Candidate {
                changed_ns,
                relative,
                mtime_ns,
                size: meta.len(),
                ino: meta.ino(),
                ctime_ns,
                change,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path) -> LocalDirConfig {
        LocalDirConfig {
            path: dir.to_path_buf(),
            glob: None,
            recursive: true,
            include_hidden: false,
            min_age: HumanDuration(Duration::ZERO),
            lookback: HumanDuration(Duration::from_secs(3600)),
            events: default_events(),
            max_remembered: 1000,
            max_per_poll: 10_000,
        }
    }

    /// A poll at the time `now_ns`.
    fn poll_at(source: &LocalDir, limit: usize, now_ns: i64) -> Polled {
        plan(&source.config, &source.window, source.inline, limit, now_ns).unwrap().0
    }

    /// Commits every batch of `polled`, as the loop would after acknowledgements.
    fn commit(source: &mut LocalDir, polled: &Polled) {
        for batch in &polled.batches {
            source.committed(&batch.change).unwrap();
        }
    }

    fn names(p: &Polled) -> Vec<String> {
        p.batches
            .iter()
            .flat_map(|b| &b.items)
            .map(|f| match &f.item {
                Item::File(file) => file.relative_path.clone(),
                other => panic!("not a file: {other:?}"),
            })
            .collect()
    }

    fn later() -> i64 {
        nanos(SystemTime::now()) + 10_000_000_000
    }

    #[test]
    fn ties_and_batches_announce_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..25 {
            std::fs::write(dir.path().join(format!("f{i:02}.csv")), "x").unwrap();
        }
        let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}.csv")).collect();
        // One walk, three batches.
        let mut source = LocalDir::new(config(dir.path()));
        let polled = poll_at(&source, 10, later());
        let sizes: Vec<usize> = polled.batches.iter().map(|b| b.items.len()).collect();
        assert_eq!((sizes, polled.more), (vec![10, 10, 5], false));
        let mut all = names(&polled);
        all.sort();
        assert_eq!(all, expected);
        commit(&mut source, &polled);
        assert!(poll_at(&source, 10, later()).batches.is_empty());

        // Walks of at most 10 files: three polls.
        let mut cfg = config(dir.path());
        cfg.max_per_poll = 10;
        let mut source = LocalDir::new(cfg);
        let mut all = Vec::new();
        loop {
            let polled = poll_at(&source, 10, later());
            assert!(polled.batches.len() <= 1);
            all.extend(names(&polled));
            if polled.batches.is_empty() {
                break;
            }
            commit(&mut source, &polled);
        }
        all.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_batch_changes_the_head_and_its_own_members_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "1").unwrap();
        let mut source = LocalDir::new(config(dir.path()));
        let first = poll_at(&source, 10, later());
        commit(&mut source, &first);
        std::fs::write(dir.path().join("b.csv"), "22").unwrap();
        let second = poll_at(&source, 10, later());
        let change = &second.batches[0].change;
        assert_eq!(change.put.keys().collect::<Vec<_>>(), ["b.csv"]);
        assert!(change.remove.is_empty());
        let entry: Entry = change.put["b.csv"].decode().unwrap();
        assert_eq!(entry.size, 2);
        let head: Head = change.head.as_ref().unwrap().decode().unwrap();
        assert_eq!(head.high_ns, entry.changed_ns.max(source.window.high));
        assert!(!change.head.as_ref().unwrap().as_str().contains("seen"));

        // A restore from what the store would hold gives the same source.
        commit(&mut source, &second);
        let members: Vec<(String, Json)> =
            source.window.iter().map(|(n, e)| (n.to_string(), Json::encode(e).unwrap())).collect();
        let mut again = LocalDir::new(config(dir.path()));
        again.restore(SourceState { head: change.head.clone(), members }).unwrap();
        assert!(poll_at(&again, 10, later()).batches.is_empty());
        assert_eq!(again.summary()["remembered"], 2);
    }

    #[test]
    fn updates_hidden_files_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.csv"), "1").unwrap();
        std::fs::write(dir.path().join("sub/b.csv"), "1").unwrap();
        std::fs::write(dir.path().join(".part.csv"), "1").unwrap();
        std::fs::write(dir.path().join("c.txt"), "1").unwrap();
        let mut cfg = config(dir.path());
        cfg.glob = Some(Glob::new("**/*.csv").unwrap());
        let mut source = LocalDir::new(cfg);
        let first = poll_at(&source, 100, later());
        assert_eq!(names(&first), vec!["a.csv", "sub/b.csv"]);
        commit(&mut source, &first);
        assert!(poll_at(&source, 100, later()).batches.is_empty());
        std::fs::write(dir.path().join("a.csv"), "22").unwrap();
        let second = poll_at(&source, 100, later());
        assert_eq!(names(&second), vec!["a.csv"]);
        assert_eq!(second.batches[0].items[0].change, Change::Updated);
    }

    #[test]
    fn a_late_file_inside_the_window_is_announced_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = LocalDir::new(config(dir.path()));
        std::fs::write(dir.path().join("new.csv"), "x").unwrap();
        let now = later();
        let first = poll_at(&source, 100, now);
        commit(&mut source, &first);
        // A file whose change time is a minute older than the watermark (as a
        // multipart-style late arrival would be) is still inside the window.
        Arc::make_mut(&mut source.window).high += 60_000_000_000;
        std::fs::write(dir.path().join("late.csv"), "x").unwrap();
        let second = poll_at(&source, 100, now + 120_000_000_000);
        assert_eq!(names(&second), vec!["late.csv"]);
        commit(&mut source, &second);
        assert!(poll_at(&source, 100, now + 120_000_000_000).batches.is_empty());
        // Outside the window it is not looked at.
        let mut far = LocalDir::new(config(dir.path()));
        let head = Head { high_ns: source.window.high + 7200 * 1_000_000_000, floor_ns: None, seen: None };
        far.restore(SourceState { head: Some(Json::encode(&head).unwrap()), members: Vec::new() }).unwrap();
        assert!(poll_at(&far, 100, now + 8000 * 1_000_000_000).batches.is_empty());
    }

    #[test]
    fn settling_files_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.min_age = HumanDuration(Duration::from_secs(60));
        std::fs::write(dir.path().join("a"), "x").unwrap();
        let source = LocalDir::new(cfg);
        let now = nanos(SystemTime::now());
        assert!(poll_at(&source, 100, now).batches.is_empty());
        assert_eq!(names(&poll_at(&source, 100, now + 61_000_000_000)).len(), 1);
    }

    #[test]
    fn the_cap_prunes_the_oldest_files_and_raises_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_remembered = 2;
        let mut source = LocalDir::new(cfg);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.path().join(name);
            std::fs::write(&path, "x").unwrap();
            let at = SystemTime::now() + Duration::from_secs(i as u64 + 1);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(at).unwrap();
        }
        let polled = poll_at(&source, 1, later());
        assert_eq!(names(&polled), ["a", "b", "c"]);
        let last = &polled.batches[2].change;
        assert_eq!(last.remove, vec!["a".to_string()], "the third file pushes the oldest out");
        let head: Head = last.head.as_ref().unwrap().decode().unwrap();
        assert!(head.floor_ns.is_some());
        let (_, capped, _) = plan(&source.config, &source.window, false, 1, later()).unwrap();
        assert_eq!(capped, 1);
        commit(&mut source, &polled);
        assert_eq!(source.window.len(), 2);
        assert!(poll_at(&source, 1, later()).batches.is_empty(), "a is below the floor now");
    }

    #[test]
    fn a_head_that_carries_the_set_is_split_into_members_by_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), "x").unwrap();
        let mut source = LocalDir::new(config(dir.path()));
        let first = poll_at(&source, 10, later());
        let entry: Entry = first.batches[0].change.put["old.csv"].decode().unwrap();
        // The whole watermark as a release up to 0.1 stored it.
        let whole = serde_json::json!({"high_ns": entry.changed_ns, "seen": {"old.csv": entry}});
        let whole = Json::encode(&whole).unwrap();
        assert_eq!(source.summarize(&whole, 0)["remembered"], 1);
        source.restore(SourceState { head: Some(whole), members: Vec::new() }).unwrap();
        assert!(poll_at(&source, 10, later()).batches.is_empty(), "nothing new");
        std::fs::write(dir.path().join("new.csv"), "x").unwrap();
        let polled = poll_at(&source, 10, later());
        assert_eq!(names(&polled), ["new.csv"]);
        let change = &polled.batches[0].change;
        assert_eq!(change.put.keys().collect::<Vec<_>>(), ["new.csv", "old.csv"]);
        assert!(!change.head.as_ref().unwrap().as_str().contains("seen"));
        commit(&mut source, &polled);
        assert!(!source.inline);
    }

    #[tokio::test]
    async fn start_now_and_at_a_time_hide_older_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), "x").unwrap();
        let mut source = LocalDir::new(config(dir.path()));
        assert_eq!(source.begin(&Start::Beginning).await.unwrap(), ChangeSet::default());
        let change = source.begin(&Start::Now).await.unwrap();
        assert_eq!(change.put.keys().collect::<Vec<_>>(), ["old.csv"], "what is there counts as announced");
        source.committed(&change).unwrap();
        assert!(poll_at(&source, 10, later()).batches.is_empty());
        std::fs::write(dir.path().join("new.csv"), "x").unwrap();
        assert_eq!(names(&poll_at(&source, 10, later())), ["new.csv"], "written right after the start");

        // More files than max_remembered: the newest are remembered, a floor hides the rest.
        let mut cfg = config(dir.path());
        cfg.max_remembered = 1;
        let mut capped = LocalDir::new(cfg);
        let change = capped.begin(&Start::Now).await.unwrap();
        capped.committed(&change).unwrap();
        assert_eq!(capped.window.len(), 1);
        assert!(capped.window.floor.is_some());
        assert!(poll_at(&capped, 10, later()).batches.is_empty());
        let mut source = LocalDir::new(config(dir.path()));
        let change = source.begin(&Start::At(DateTime::<Utc>::UNIX_EPOCH)).await.unwrap();
        source.committed(&change).unwrap();
        assert_eq!(names(&poll_at(&source, 10, later())), ["old.csv", "new.csv"]);
    }

    #[test]
    fn a_file_written_again_with_the_same_size_and_mtime_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = LocalDir::new(config(dir.path()));
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "same").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let first = poll_at(&source, 100, later());
        commit(&mut source, &first);
        assert!(poll_at(&source, 100, later()).batches.is_empty());
        // Deleted and written again as `cp -p` would: same size, same modification time.
        // A hidden link keeps the old inode taken, so the new file cannot get it back
        // within the same tick of the change-time clock.
        std::fs::hard_link(&path, dir.path().join(".old")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "same").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let second = poll_at(&source, 100, later());
        assert_eq!(names(&second), vec!["a.csv"]);
        let (was, now) = (&first.batches[0].items[0], &second.batches[0].items[0]);
        assert_eq!(now.change, Change::Updated);
        assert_ne!(was.identity, now.identity, "a new generation, a new id");
    }

    #[test]
    fn a_modification_time_in_the_future_neither_waits_nor_hides_the_present() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.min_age = HumanDuration(Duration::from_secs(1));
        let path = dir.path().join("ahead.csv");
        std::fs::write(&path, "x").unwrap();
        let ahead = SystemTime::now() + Duration::from_secs(2 * 86_400);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(ahead).unwrap();
        let mut source = LocalDir::new(cfg);
        let now = nanos(SystemTime::now()) + 2_000_000_000;
        let first = poll_at(&source, 100, now);
        assert_eq!(names(&first), vec!["ahead.csv"], "settled by its change time");
        commit(&mut source, &first);
        assert!(source.window.high <= now, "the watermark stays in the present");
        std::fs::write(dir.path().join("present.csv"), "y").unwrap();
        let later = nanos(SystemTime::now()) + 2_000_000_000;
        assert_eq!(names(&poll_at(&source, 100, later)), vec!["present.csv"]);
    }

    #[test]
    fn entries_of_the_older_format_are_read() {
        let old = serde_json::json!({"high_ns": 5, "seen": {"a.csv": [5, 4, 3]}});
        let head: Head = serde_json::from_value(old).unwrap();
        let entry = head.seen.unwrap()["a.csv"];
        assert_eq!(entry.inode, None);
        assert!(entry.is(&Entry { changed_ns: 9, mtime_ns: 4, size: 3, inode: Some((7, 9)) }));
        let new =
            serde_json::to_value(Entry { changed_ns: 1, mtime_ns: 2, size: 3, inode: Some((4, 5)) }).unwrap();
        assert_eq!(new, serde_json::json!([1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_missing_directory_needs_attention() {
        let source = LocalDir::new(config(Path::new("/nonexistent/highwater-test")));
        let err = plan(&source.config, &source.window, false, 10, 0).err().unwrap();
        assert_eq!(err.class, super::super::ErrorClass::NeedsAttention);
        assert!(err.message.contains("/nonexistent/highwater-test"), "{}", err.message);
    }
}
